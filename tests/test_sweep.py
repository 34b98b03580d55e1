"""The sweep on a tiny synthetic problem: schema, k=0 equals dense, fine-tuning keeps the mask,
GMP reaches the final sparsity exactly, the schedule, resume."""
import dataclasses
import json

import numpy as np
import pytest

from sparsenet.files import read_json, write_json
from sparsenet.model import evaluate, forward, he_init
from sparsenet.prune import apply_masks, n_to_prune, neuron_mask, sparsity_of
from sparsenet.sweep import (
    GMPConfig, METHODS, SWEEP_SPARSITIES, finetune, gmp_mask_schedule, gmp_sparsity, gradual_prune,
    evaluate_pruned, make_masks, oneshot_sweep, resolve_gmp, run_and_save, run_sweep,
)
from sparsenet.train import TrainConfig, fit

SIZES = (20, 32, 24, 4)


def toy_data(n=600, seed=0):
    """4 classes from a fixed random linear teacher on 20 features: learnable by a small MLP."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, SIZES[0])).astype(np.float32)
    teacher = np.random.default_rng(99).standard_normal((SIZES[0], SIZES[-1]))
    y = (X @ teacher).argmax(axis=1)
    return X, y


@pytest.fixture(scope="module")
def problem():
    X, y = toy_data(2600)
    Xtr, ytr, Xva, yva, Xte, yte = X[:2000], y[:2000], X[2000:2300], y[2000:2300], X[2300:], y[2300:]
    cfg = TrainConfig(sizes=SIZES, epochs=10, batch_size=50, lr=1e-2, n_val=0)
    models = []
    for seed in (0, 1):
        p, _ = fit(he_init(SIZES, seed=seed), Xtr, ytr, Xva, yva, cfg, progress=False)
        models.append(p)
    return models, (Xtr, ytr, Xva, yva, Xte, yte)


FT = TrainConfig(sizes=SIZES, epochs=2, batch_size=50, lr=1e-3, n_val=0)


def test_oneshot_sweep_k0_is_dense(problem):
    models, (*_, Xte, yte) = problem
    out = oneshot_sweep(models[0], Xte, yte, SWEEP_SPARSITIES, METHODS)
    dense_acc, dense_loss = evaluate(models[0], Xte, yte)
    for m in METHODS:
        assert len(out[m]["accuracy"]) == len(SWEEP_SPARSITIES)
        assert out[m]["accuracy"][0] == dense_acc
        assert out[m]["loss"][0] == pytest.approx(dense_loss)
        assert all(0 <= a <= 1 for a in out[m]["accuracy"])
    assert dense_acc > 0.8     # the toy problem was learnt


def test_bad_method():
    with pytest.raises(ValueError):
        make_masks(he_init(SIZES), "channel", 0.5)


def check_schema(res, n_seeds, sparsities, recoveries):
    json.dumps(res)                                  # JSON-able as is
    assert res["dataset"] == "mnist"
    assert res["sparsities"] == [float(s) for s in sparsities]
    assert res["seeds"] == list(range(n_seeds))
    assert len(res["dense"]["accuracy"]) == n_seeds and len(res["dense"]["loss"]) == n_seeds
    assert {(c["method"], c["recovery"]) for c in res["curves"]} == {
        (m, r) for m in METHODS for r in recoveries}
    for c in res["curves"]:
        ks = c.get("sparsities", res["sparsities"])
        assert len(c["accuracy"]) == len(ks) and len(c["loss"]) == len(ks)
        assert all(len(row) == n_seeds for row in c["accuracy"] + c["loss"])
        assert all(0 <= a <= 1 for row in c["accuracy"] for a in row)
    assert isinstance(res["config"], dict)


def test_run_sweep_schema(problem):
    models, data = problem
    ks = (0, 0.5, 0.9)
    res = run_sweep(models, *data, sparsities=ks, recoveries=("oneshot", "finetuned"),
                    finetune_cfg=FT, finetune_sparsities=(0.5,), progress=False)
    check_schema(res, 2, ks, ("oneshot", "finetuned"))
    for c in res["curves"]:
        if c["recovery"] == "oneshot":
            assert "sparsities" not in c
            assert c["accuracy"][0] == res["dense"]["accuracy"]     # k = 0 equals dense, per seed
        else:
            assert c["sparsities"] == [0.5]
    assert res["complete"] is True


def test_oneshot_only_needs_no_training_data(problem):
    models, (*_, Xte, yte) = problem
    res = run_sweep(models, None, None, None, None, Xte, yte, sparsities=(0, 0.5),
                    methods=("weight",), recoveries=("oneshot",), scope="global", progress=False)
    assert [c["method"] for c in res["curves"]] == ["weight"]
    assert res["config"]["scope"] == "global" and res["config"]["n_train"] is None


def test_finetune_keeps_mask_and_does_not_hurt(problem):
    models, (Xtr, ytr, Xva, yva, Xte, yte) = problem
    for method, s in (("weight", 0.9), ("neuron", 0.7)):
        masks = make_masks(models[0], method, s)
        pruned = apply_masks(models[0], masks)
        tuned = finetune(models[0], masks, Xtr, ytr, Xva, yva, FT, progress=False)
        for layer, (keep_w, _) in zip(tuned, masks):
            assert np.all(layer.weight[~keep_w] == 0)
        before = evaluate(pruned, Xva, yva)[0]
        after = evaluate(tuned, Xva, yva)[0]
        assert after >= before          # best-on-validation includes no worse than the 1st epoch...
        assert sparsity_of(tuned)["layers"][0] >= (s if method == "weight" else 0.0)


def test_finetune_of_neurons_trains_the_shrunk_net_as_the_masked_one(problem):
    """Fine-tuning leaves removed neurons out (prune.shrink_masked); the result is the masked full
    net's training, to float rounding, in the full shapes."""
    models, (Xtr, ytr, Xva, yva, Xte, yte) = problem
    masks = make_masks(models[0], "neuron", 0.7)
    tuned = finetune(models[0], masks, Xtr, ytr, Xva, yva, FT, progress=False)
    full, _ = fit(apply_masks(models[0], masks), Xtr, ytr, Xva, yva, FT, masks=masks, progress=False)
    for a, b in zip(tuned, full):
        assert a.weight.shape == b.weight.shape
    np.testing.assert_allclose(forward(tuned, Xte), forward(full, Xte), rtol=1e-3, atol=1e-3)


def test_finetune_with_biases():
    X, y = toy_data(300)
    cfg = TrainConfig(sizes=SIZES, bias=True, epochs=1, batch_size=50, n_val=0)
    params = he_init(SIZES, bias=True, seed=3)
    masks = neuron_mask(params, 0.5)
    tuned = finetune(params, masks, X, y, X[:50], y[:50], cfg, progress=False)
    for layer, (_keep_w, keep_b) in zip(tuned[:-1], masks[:-1]):
        dead = ~keep_b
        assert np.all(layer.bias[dead] == 0) and np.all(layer.weight[dead] == 0)


# --- GMP --------------------------------------------------------------------------------------

def test_gmp_schedule():
    s_f, s_i, t0, n, dt = 0.9, 0.1, 20, 10, 5
    assert gmp_sparsity(t0, s_f, s_i, t0, n, dt) == s_i
    assert gmp_sparsity(t0 + n * dt, s_f, s_i, t0, n, dt) == s_f
    assert gmp_sparsity(0, s_f, s_i, t0, n, dt) == s_i               # before t0
    assert gmp_sparsity(10 ** 6, s_f, s_i, t0, n, dt) == s_f          # after the ramp
    values = [gmp_sparsity(t, s_f, s_i, t0, n, dt) for t in range(0, 120)]
    assert all(a <= b for a, b in zip(values, values[1:]))          # monotone
    # cubic: the fastest pruning at the start; the increments shrink
    steps = [gmp_sparsity(t0 + j * dt, s_f, s_i, t0, n, dt) for j in range(n + 1)]
    incr = np.diff(steps)
    assert np.all(np.diff(incr) <= 1e-12)
    mid = gmp_sparsity(t0 + n * dt / 2, s_f, s_i, t0, n, dt)
    assert mid == pytest.approx(s_f + (s_i - s_f) * 0.125)


def test_gmp_mask_schedule_steps():
    params = he_init(SIZES)
    sched = gmp_mask_schedule("weight", 0.8, GMPConfig(start_step=4, prune_every=3, n_prunes=2))
    fired = [t for t in range(20) if sched(t, params) is not None]
    assert fired == [4, 7, 10]
    last = sched(10, params)
    assert (~last[0][0]).sum() == round(0.8 * last[0][0].size)
    first = sched(4, params)                                         # s_i = 0: nothing pruned
    assert all(keep.all() for keep, _ in first)


def test_resolve_gmp():
    g = resolve_gmp(GMPConfig(prune_every=10, end_fraction=0.5), total_steps=400)
    assert g.n_prunes == 20 and g.start_step + g.n_prunes * g.prune_every <= 399
    with pytest.raises(ValueError):
        resolve_gmp(GMPConfig(prune_every=500), total_steps=400)     # last update after training
    with pytest.raises(ValueError):
        resolve_gmp(GMPConfig(prune_every=10, n_prunes=50), total_steps=400)


@pytest.mark.parametrize("method", METHODS)
def test_gradual_prune_reaches_final_sparsity(problem, method):
    models, (Xtr, ytr, Xva, yva, Xte, yte) = problem
    cfg = TrainConfig(sizes=SIZES, epochs=3, batch_size=50, lr=1e-3, n_val=0)
    out = gradual_prune(models[0], method, 0.8, Xtr, ytr, Xva, yva, cfg,
                        gmp=GMPConfig(prune_every=2, end_fraction=0.6), progress=False)
    for _i, layer in enumerate(out[:-1]):
        if method == "weight":
            assert np.sum(layer.weight == 0) == round(0.8 * layer.weight.size)
        else:
            assert np.sum(~np.any(layer.weight != 0, axis=1)) == round(0.8 * layer.weight.shape[0])
    assert evaluate(out, Xte, yte)[0] > 0.4


# --- resume -----------------------------------------------------------------------------------

def test_run_and_save_resumes(problem, tmp_path, monkeypatch):
    models, data = problem
    ks = (0, 0.5, 0.9)
    kw = dict(sparsities=ks, recoveries=("oneshot",), progress=False)
    import sparsenet.sweep as sweep

    calls = []
    real = sweep._curve_values

    def counting(recovery, method, *a, **k):
        calls.append((recovery, method, a[-2]))
        if len(calls) == 3:                          # die on the third (recovery, method, seed)
            raise KeyboardInterrupt
        return real(recovery, method, *a, **k)

    monkeypatch.setattr(sweep, "_curve_values", counting)
    with pytest.raises(KeyboardInterrupt):
        run_and_save(tmp_path, models, *data, **kw)
    partial = read_json(tmp_path / "accuracy.json")
    assert partial["complete"] is False
    assert partial["curves"][0]["seeds"] == [0, 1]          # weight, both seeds finished
    assert partial["curves"][1]["seeds"] == []
    calls.clear()
    monkeypatch.setattr(sweep, "_curve_values", lambda r, m, *a, **k: (calls.append((r, m, a[-2])),
                                                                       real(r, m, *a, **k))[1])
    res = run_and_save(tmp_path, models, *data, **kw)
    assert calls == [("oneshot", "neuron", 0), ("oneshot", "neuron", 1)]   # only what was missing
    check_schema(res, 2, ks, ("oneshot",))
    assert read_json(tmp_path / "accuracy.json") == json.loads(json.dumps(res))
    fresh = run_sweep(models, *data, **kw)
    assert fresh["curves"] == res["curves"]


def test_resume_refuses_other_config(problem, tmp_path):
    models, data = problem
    run_and_save(tmp_path, models, *data, sparsities=(0, 0.5), recoveries=("oneshot",),
                 progress=False)
    with pytest.raises(ValueError, match="new output folder"):
        run_and_save(tmp_path, models, *data, sparsities=(0, 0.9), recoveries=("oneshot",),
                     progress=False)
    with pytest.raises(ValueError, match="drop"):
        run_and_save(tmp_path, models[:1], *data, sparsities=(0, 0.5), recoveries=("oneshot",),
                     progress=False)
    with pytest.raises(ValueError, match="other models"):
        run_and_save(tmp_path, models[::-1], *data, sparsities=(0, 0.5), recoveries=("oneshot",),
                     progress=False)


def test_resume_adds_a_recovery(problem, tmp_path, monkeypatch):
    models, data = problem
    first = run_and_save(tmp_path, models, *data, sparsities=(0, 0.5), recoveries=("oneshot",),
                         progress=False)
    import sparsenet.sweep as sweep
    real, calls = sweep._curve_values, []
    monkeypatch.setattr(sweep, "_curve_values", lambda r, m, *a, **k: (calls.append(r),
                                                                       real(r, m, *a, **k))[1])
    res = run_and_save(tmp_path, models, *data, sparsities=(0, 0.5),
                       recoveries=("oneshot", "finetuned"), finetune_cfg=FT,
                       finetune_sparsities=(0.5,), progress=False)
    assert calls == ["finetuned"] * 4                     # one-shot entries were reused
    assert res["curves"][:2] == first["curves"]
    check_schema(res, 2, (0, 0.5), ("oneshot", "finetuned"))


def test_evaluate_pruned_equals_masked(problem):
    models, (*_, Xte, yte) = problem
    for method in METHODS:
        for s in (0.5, 0.9):
            net = apply_masks(models[0], make_masks(models[0], method, s))
            a1, l1 = evaluate(net, Xte, yte)
            a2, l2 = evaluate_pruned(net, Xte, yte)
            assert a1 == a2 and l1 == pytest.approx(l2, rel=1e-5)


def test_resume_from_bare_schema(problem, tmp_path, monkeypatch):
    # a finished file without the extra keys ("complete", per-curve "seeds") is reused as is
    models, data = problem
    kw = dict(sparsities=(0, 0.5), recoveries=("oneshot",), progress=False)
    res = run_and_save(tmp_path, models, *data, **kw)
    bare = json.loads(json.dumps(res))
    del bare["complete"]
    for c in bare["curves"]:
        del c["seeds"]
    write_json(tmp_path / "accuracy.json", bare)
    import sparsenet.sweep as sweep
    monkeypatch.setattr(sweep, "_curve_values", lambda *a, **k: pytest.fail("recomputed"))
    again = sweep.run_sweep(models, *data, previous=bare, **kw)
    assert again["curves"] == res["curves"]


def test_progress_goes_to_stderr(problem, capsys):
    """[sweep] lines join the study's [study] lines on stderr; stdout stays free for results."""
    models, (*_, Xte, yte) = problem
    run_sweep(models[:1], None, None, None, None, Xte, yte, sparsities=(0, 0.5), recoveries=("oneshot",),
              progress=True)
    out, err = capsys.readouterr()
    assert "[sweep] oneshot/weight seed 0" in err and out == ""


# --- the four granularities ---------------------------------------------------------------------

def test_curve_sparsities_per_method_and_recovery():
    from sparsenet.sweep import curve_sparsities
    ks, ft, gr = (0.0, 0.5, 0.6, 0.75, 0.9), (0.8, 0.9), (0.95,)
    assert curve_sparsities("weight", "oneshot", ks, ft, gr) == ks
    assert curve_sparsities("nm", "oneshot", ks, ft, gr) == (0.0, 0.5, 0.75)       # 4:4, 2:4, 1:4
    assert curve_sparsities("block", "finetuned", ks, ft, gr) == ft
    assert curve_sparsities("neuron", "gradual", ks, ft, gr) == gr
    # N:M is recovered at its own patterns (2:4, 1:4), whatever the fine-tuning and gradual k are
    assert curve_sparsities("nm", "finetuned", ks, ft, gr) == curve_sparsities("nm", "gradual", ks, ft, gr) == (0.5, 0.75)


def test_oneshot_sweep_runs_nm_only_where_it_exists(problem):
    models, (*_, Xte, yte) = problem
    out = oneshot_sweep(models[0], Xte, yte, (0.0, 0.5, 0.6, 0.75), ("nm", "block"))
    assert out["nm"]["sparsities"] == [0.0, 0.5, 0.75] and len(out["nm"]["accuracy"]) == 3
    assert out["block"]["sparsities"] == [0.0, 0.5, 0.6, 0.75]
    two_four = apply_masks(models[0], make_masks(models[0], "nm", 0.5))
    assert out["nm"]["accuracy"][1] == evaluate_pruned(two_four, Xte, yte)[0]


def test_run_sweep_covers_every_granularity(problem):
    from sparsenet.names import GRANULARITIES
    models, data = problem
    res = run_sweep(models[:1], *data, sparsities=(0.0, 0.5, 0.9), methods=GRANULARITIES,
                    recoveries=("oneshot", "finetuned", "gradual"), finetune_cfg=FT, finetune_sparsities=(0.9,),
                    gradual_sparsities=(0.8,), gradual_methods=("weight", "nm"), seeds=[0],
                    gmp=GMPConfig(prune_every=10), progress=False)
    ks = {(c["method"], c["recovery"]): c.get("sparsities", res["sparsities"]) for c in res["curves"]}
    assert ks == {("weight", "oneshot"): [0.0, 0.5, 0.9], ("nm", "oneshot"): [0.0, 0.5],
                  ("block", "oneshot"): [0.0, 0.5, 0.9], ("neuron", "oneshot"): [0.0, 0.5, 0.9],
                  ("weight", "finetuned"): [0.9], ("nm", "finetuned"): [0.5, 0.75], ("block", "finetuned"): [0.9],
                  ("neuron", "finetuned"): [0.9], ("weight", "gradual"): [0.8], ("nm", "gradual"): [0.5, 0.75]}
    assert res["complete"] and res["config"]["block"] == [8, 1] and res["config"]["nm_m"] == 4
    # a curve's value is that of its pruned and fine-tuned net (deterministic under the seed)
    *_, Xte, yte = data
    ft = next(c for c in res["curves"] if (c["method"], c["recovery"]) == ("nm", "finetuned"))
    net = finetune(models[0], make_masks(models[0], "nm", 0.75), *data[:4], FT, progress=False)
    assert ft["accuracy"][1] == [evaluate_pruned(net, Xte, yte)[0]]


@pytest.mark.parametrize("method, k, n", [("nm", 0.5, 2), ("nm", 0.75, 1), ("block", 0.8, None)])
def test_gradual_pruning_ends_on_the_granularity_pattern(problem, method, k, n):
    from sparsenet.nm import max_group_nnz
    models, (Xtr, ytr, Xva, yva, *_) = problem
    net = gradual_prune(models[0], method, k, Xtr, ytr, Xva, yva, FT, gmp=GMPConfig(prune_every=10),
                        progress=False)
    for layer in net[:-1]:
        units = layer.weight.size // (1 if n else 8)          # N:M counts weights, block pruning 8x1 blocks
        assert np.count_nonzero(layer.weight) == (units - n_to_prune(k, units)) * (1 if n else 8)
        if n is not None:
            assert max_group_nnz(layer.weight, 4) == n
        else:                                   # whole 8x1 blocks: each block of 8 rows of a column is kept or not
            nz = (layer.weight != 0).reshape(-1, 8, layer.weight.shape[1]).sum(axis=1)
            assert set(np.unique(nz)) <= {0, 8}
    assert np.count_nonzero(net[-1].weight) == net[-1].weight.size         # the output layer is not pruned


def test_gradual_curves_train_with_their_own_config(problem, monkeypatch):
    """gradual_cfg (e.g. longer than fine-tuning) reaches the gradual curves only and is recorded;
    a resume with the same settings runs nothing, one with another gradual_cfg is refused."""
    import sparsenet.sweep as sweep
    models, data = problem
    GR = dataclasses.replace(FT, epochs=3)
    seen = []
    real = sweep._curve_values

    def spy(recovery, method, params, data_, ks, train_cfg, *a):
        seen.append((recovery, train_cfg.epochs))
        return real(recovery, method, params, data_, ks, train_cfg, *a)

    monkeypatch.setattr(sweep, "_curve_values", spy)
    kw = dict(sparsities=(0.0, 0.9), methods=("weight",), recoveries=("oneshot", "finetuned", "gradual"),
              finetune_cfg=FT, finetune_sparsities=(0.9,), gradual_sparsities=(0.9,), seeds=[0],
              gmp=GMPConfig(prune_every=10), progress=False)
    res = run_sweep(models[:1], *data, gradual_cfg=GR, **kw)
    assert sorted(seen) == [("finetuned", 2), ("gradual", 3), ("oneshot", 2)]
    assert res["config"]["gradual"]["epochs"] == 3 and res["config"]["finetune"]["epochs"] == 2
    seen.clear()
    assert run_sweep(models[:1], *data, gradual_cfg=GR, previous=res, **kw)["curves"] == res["curves"]
    assert seen == []
    for other in (dataclasses.replace(GR, epochs=4), None):     # None: fine-tuning's 2 epochs
        with pytest.raises(ValueError, match=r"finished curves \(weight/gradual\)"):
            run_sweep(models[:1], *data, gradual_cfg=other, previous=res, **kw)
    assert seen == []
