"""The study runner: config validation, a tiny end-to-end run on synthetic data, resuming."""
import pytest

import dataclasses

from sparsenet import grid, names, report, study, timing
from sparsenet.files import read_json
from sparsenet.model import he_init
from sparsenet.study_config import StudyConfig

SIZES = (784, 48, 32, 10)


# --- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(engines=("dense", "gpu")), "unknown engines"),
    (dict(sparsities=(0.5, 1.0)), r"\[0, 1\)"),
    (dict(sparsities=(-0.1,)), r"\[0, 1\)"),
    (dict(sparsities=()), "empty"),
    (dict(methods=("random",)), "unknown methods"),
    (dict(dataset="cifar"), "unknown dataset"),
    (dict(batches=(0, 16)), "batches"),
    (dict(threads=(1, 1)), "duplicates"),
    (dict(seeds=()), "empty"),
    (dict(epochs=0), "epochs"),
    (dict(finetune_epochs=-1), "finetune_epochs"),
    (dict(rounds=0), "rounds"),
    (dict(train_subset=10), "train_subset"),
    (dict(run_id="a/b"), "run_id"),
    (dict(run_id="r" * 191), r"run_id must be at most 190 bytes .* got 191"),
    (dict(batches="1,2"), "sequence"),
    (dict(methods=("weight", "channel")), r"unknown methods \['channel'\]"),
    (dict(methods=("nm", "neuron")), r"unknown gradual_methods \['weight'\]; expected some of nm, neuron"),
    (dict(gradual_epochs=0), "gradual_epochs must be an integer >= 1"),
    (dict(gradual_methods=("nm", "pixel")), r"unknown gradual_methods \['pixel'\]"),
    (dict(gradual_sparsities=None), "gradual_sparsities must be a sequence"),
    (dict(gradual_sparsities=(0.95, 1.0)), "sparsity"),
    (dict(peak_n=-1), r"peak_n must be an integer in 0\.\.16384"),
    (dict(peak_n=16385), r"peak_n must be an integer in 0\.\.16384 \(0: no sgemm peak"),
    (dict(peak_n=True), "peak_n"),
    (dict(epochs=True), r"^epochs must be an integer >= 1, got True$"),             # a bool is not a count
    (dict(rounds=2.0), r"^rounds must be an integer >= 1, got 2\.0$"),
    (dict(workers=True), r"^workers must be an integer >= 1, got True$"),
    (dict(finetune_lr=0.0), r"^finetune_lr must be a finite number > 0, got 0\.0$"),  # failed after training
    (dict(min_time=True), r"^min_time must be a finite number >= 0, got True$"),
    (dict(sparsities=(0.5, 0.9, 0.5)), r"^sparsities has duplicates: 0\.5$"),
    (dict(finetune_sparsities=(0.9, 0.9)), r"^finetune_sparsities has duplicates: 0\.9$"),
    (dict(engines=("dense", "csr", "dense")), r"^engines has duplicates: dense$"),
    (dict(methods=("weight", "weight")), r"^methods has duplicates: weight$"),
    (dict(batches=(1, 256, 1)), r"^batches has duplicates: 1$"),           # named the value, not the tuple
    (dict(threads=(1, 1)), r"^threads has duplicates: 1$"),
    (dict(seeds=(0, 1, 0)), r"^seeds has duplicates: 0$"),
    (dict(widths=(1024, 1024)), r"^widths has duplicates: 1024$"),         # were accepted: one layer timed twice
    (dict(scaling_threads=(1, 1)), r"^scaling_threads has duplicates: 1$"),
    (dict(scaling_sparsities=(0.5, 0.5)), r"^scaling_sparsities has duplicates: 0\.5$"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StudyConfig(**kwargs)


def test_gradual_pruning_can_be_switched_off(tiny):
    cfg, _, stages = tiny
    seen = []
    stages = dataclasses.replace(stages, sweep=lambda *a, **k: seen.append(k))
    for overrides, recoveries in [({}, ("oneshot", "finetuned", "gradual")),
                                  (dict(gradual_methods=()), ("oneshot", "finetuned")),
                                  (dict(gradual_sparsities=()), ("oneshot", "finetuned")),
                                  (dict(finetune_epochs=0), ("oneshot",))]:
        c = dataclasses.replace(cfg, **overrides)
        study.run_accuracy(c, c.folder(), stages.load_data(), [he_init(SIZES)], progress=False, stages=stages)
        assert seen[-1]["recoveries"] == recoveries
        assert (seen[-1]["gradual_sparsities"], seen[-1]["gradual_methods"]) == (c.gradual_sparsities, c.gradual_methods)
    # gradual pruning trains gradual_epochs (2), fine-tuning finetune_epochs (1), at the same lr;
    # a mask update every tenth of the tiny run's 2 x 5 steps (every 100 on MNIST)
    assert (seen[0]["gradual_cfg"].epochs, seen[0]["finetune_cfg"].epochs) == (2, 1)
    assert seen[0]["gradual_cfg"].lr == seen[0]["finetune_cfg"].lr == cfg.finetune_lr
    assert seen[0]["gmp"].prune_every == 1
    c = dataclasses.replace(cfg, gradual_epochs=40)
    study.run_accuracy(c, c.folder(), stages.load_data(), [he_init(SIZES)], progress=False, stages=stages)
    assert seen[-1]["gradual_cfg"].epochs == 40 and seen[-1]["gmp"].prune_every == 20


def test_config_defaults_and_quick(tmp_path):
    cfg = StudyConfig()
    assert cfg.seeds == (0, 1, 2) and cfg.sparsities == names.SPARSITIES and cfg.batches == (1, 16, 256, 4096)
    assert cfg.methods == ("weight", "nm", "block", "neuron") and cfg.engines == names.ENGINES
    q = StudyConfig.quick(results_dir=str(tmp_path), sparsities=[0, 0.9])
    assert q.is_quick and q.sparsities == (0.0, 0.9) and q.threads == (1,) and q.train_subset
    # the run id follows the measured config, not where results go
    assert StudyConfig(results_dir="x").folder().name == StudyConfig().folder().name
    assert StudyConfig(seeds=(0,)).folder().name != cfg.folder().name
    assert StudyConfig(run_id="mine").folder().name == "mine"


# --- a tiny study ------------------------------------------------------------------------------

def test_tiny_study_writes_all_parts_and_resumes(tiny):
    cfg, calls, stages = tiny
    folder = study.run_study(cfg, progress=False, stages=stages)
    for part in ("config", "machine", "accuracy", "timings", "scaling"):
        assert (folder / f"{part}.json").exists(), part
    assert read_json(folder / "config.json")["study"]["seeds"] == [0, 1]
    timings = read_json(folder / "timings.json")
    assert timings["complete"] and set(timings["compile_s"]) == set(cfg.engines)
    recs = timings["records"]
    n_engines = sum(len([e for e in grid.engines_at(cfg.engines, k, cfg.sparsities, cfg.dense_every_k)
                         if names.has_sparsity(names.method_of(e), k)]) for k in cfg.sparsities)
    # dense and dense-fused at every k by default (side by side); nm where N:M exists (k = 0 and 0.5, not 0.9)
    assert cfg.dense_every_k and n_engines == 12 + 12 + 11
    assert {r["sparsity"] for r in recs if r["engine"] == "dense"} == set(cfg.sparsities)
    # engines x batches (1 thread), less the small-batch engines at batch 8 (5 at each k)
    assert len(recs) == n_engines * 2 - 3 * 5 == 55
    assert {r["sparsity"] for r in recs if r["engine"] == "nm"} == {0.0, 0.5}
    assert {r["method"] for r in recs if r["engine"] in ("bsr", "bsr-scipy")} == {"block"}
    assert all(grid.small_batch_skip(r["engine"], r["batch"]) is None for r in recs)
    by = {(r["engine"], r["sparsity"], r["batch"]): r for r in recs}
    assert by[("shrunk", 0.5, 8)]["method"] == "neuron" and by[("csr", 0.5, 8)]["method"] == "weight"
    assert by[("shrunk", 0.5, 8)]["layer_sizes"] == [784, 24, 16, 10]
    assert all(r["min_s"] <= r["median_s"] <= r["max_s"] for r in recs)
    # the sgemm peak timed with every k's cases (one per thread count), kept apart from the engines' records
    peaks = timings["peaks"]
    assert [(p["engine"], p["sparsity"], p["threads"], p["batch"]) for p in peaks] == [
        ("sgemm-peak", k, 1, cfg.peak_n) for k in cfg.sparsities]
    assert all(p["flops"] == 2.0 * cfg.peak_n ** 3 and p["median_s"] > 0 for p in peaks)
    assert "sgemm-peak" not in {r["engine"] for r in recs}
    scaling = read_json(folder / "scaling.json")
    assert scaling["peaks"] == []                                           # the scaling stage times none
    assert {r["width"] for r in scaling["records"]} == {64}
    assert len(scaling["records"]) == (2 + 2 + 2) * 2                     # dense and csr at every k
    acc = read_json(folder / "accuracy.json")
    assert acc["seeds"] == [0, 1] and acc["complete"]
    # every granularity one-shot and fine-tuned; weight also pruned gradually (the default)
    assert {(c["method"], c["recovery"]) for c in acc["curves"]} == {
        (m, r) for m in names.GRANULARITIES for r in ("oneshot", "finetuned")} | {("weight", "gradual")}
    ks = {(c["method"], c["recovery"]): c.get("sparsities", acc["sparsities"]) for c in acc["curves"]}
    assert ks["nm", "oneshot"] == [0.0, 0.5] and ks["nm", "finetuned"] == [0.5, 0.75]    # 2:4 and 1:4
    assert ks["block", "finetuned"] == [0.5] and ks["weight", "gradual"] == [0.95, 0.98]
    assert acc["config"]["block"] == [8, 1] and acc["config"]["nm_m"] == 4
    assert calls["sweep"] == 1 and calls["peaks"] == 1 and calls["time_cases"] == 3 + 3
    assert calls["report"] == 1
    assert len(study.summary(folder)) == 3

    study.run_study(cfg, progress=False, stages=stages)                    # everything done: nothing re-measured
    assert calls["sweep"] == 1 and calls["peaks"] == 1 and calls["time_cases"] == 6


def test_interrupted_timings_resume(tiny):
    cfg, calls, stages = tiny
    from sparsenet import timing

    def failing(cases, **k):
        if calls["time_cases"] >= 1:
            raise KeyboardInterrupt
        calls["time_cases"] += 1
        return timing.time_cases(cases, **k)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(cfg, progress=False, stages=dataclasses.replace(stages, time_cases=failing))
    part = read_json(cfg.folder() / "timings.json")
    assert not part["complete"] and {r["sparsity"] for r in part["records"]} == {0.0}

    timed = []
    resumed = dataclasses.replace(stages, time_cases=lambda cases, **k: timed.append({c.sparsity for c in cases})
                                  or timing.time_cases(cases, **k))
    study.run_study(cfg, progress=False, stages=resumed)
    assert timed[:2] == [{0.5}, {0.9}]                        # k = 0 was not timed again
    part = read_json(cfg.folder() / "timings.json")
    assert part["complete"] and len(part["records"]) == 55        # as in the uninterrupted run
    assert [p["sparsity"] for p in part["peaks"]] == [0.0, 0.5, 0.9]  # k = 0's peak kept, none timed twice


def test_peak_n_0_times_no_peak(tiny):
    cfg, _, stages = tiny
    cfg = dataclasses.replace(cfg, peak_n=0, sparsities=(0.5,), engines=("dense", "csr"), widths=())
    study.run_timings(cfg, cfg.folder(), he_init(SIZES), progress=False, stages=stages)
    timings = read_json(cfg.folder() / "timings.json")
    assert timings["peaks"] == [] and {r["engine"] for r in timings["records"]} == {"dense", "csr"}


def test_the_grid_builds_and_resumes_from_one_source(tiny):
    """The grid the timings stage walks is the one its records are checked against on resume."""
    cfg, _, stages = tiny
    smallest = study.timing_grid(dataclasses.replace(cfg, dense_every_k=False), he_init(SIZES))
    assert [p.key() for p in smallest.all_points()] == [
        (e, k, b, 1, None) for k in cfg.sparsities for e in grid.engines_at(cfg.engines, k, cfg.sparsities)
        if names.has_sparsity(names.method_of(e), k) for b in cfg.batches]
    assert {p.sparsity for p in smallest.all_points() if p.engine == "dense"} == {0.0}
    every = study.timing_grid(cfg, he_init(SIZES))                   # the default: dense beside every k
    # every engine at every k, but N:M only where it exists (k = 0 and 0.5 of 0, 0.5, 0.9)
    assert len(every.all_points()) == (len(names.STUDY_ENGINES) * 3 - 1) * 2
    assert {p.sparsity for p in every.all_points() if p.engine == "nm"} == {0.0, 0.5}
    s = study.scaling_grid(cfg)
    assert s.units() == [(64, k) for k in cfg.sparsities] and s.engines == ("dense", "csr")


def test_other_config_in_folder_is_refused(tiny):
    cfg, _, stages = tiny
    folder = cfg.folder()
    folder.mkdir(parents=True)
    study.write_config(cfg, folder)
    other = dataclasses.replace(cfg, rounds=5, run_id=folder.name)
    with pytest.raises(ValueError, match="another configuration"):
        study.write_config(other, folder)


@pytest.mark.slow
def test_quick_study_end_to_end(quick_study_folder):
    """The real quick study (no stand-ins): every part, a finished report, a learnt net."""
    folder = quick_study_folder
    for part in ("config", "machine", "accuracy", "timings", "scaling"):
        assert (folder / f"{part}.json").exists(), part
    acc = read_json(folder / "accuracy.json")
    assert acc["complete"] and acc["dense"]["accuracy"][0] > 0.9      # the synthetic classes are learnable
    timings = read_json(folder / "timings.json")
    assert {r["engine"] for r in timings["records"]} == set(names.STUDY_ENGINES)
    assert all(r["kernel"] and r["isa"] and r["plan"]["layers"] for r in timings["records"])
    assert read_json(folder / "machine.json")["isa"] == timings["records"][0]["isa"]
    assert all(r["median_s"] > 0 and r["spread"] >= 1 for r in timings["records"])
    summary = read_json(folder / "report" / "summary.json")
    assert summary["verdict"]["answer"] in ("true", "false", "partly")
    assert "## 1." in (folder / "report" / "report.md").read_text()


@pytest.mark.parametrize("kwargs, match", [
    (dict(threads=(1, 3)), r"threads 3 exceed the 2 threads available"),
    (dict(threads=(1,), scaling_threads=(1, 99)), r"scaling_threads 99 exceed the 2 threads available"),
])
def test_threads_beyond_the_available_are_refused_in_the_config(monkeypatch, kwargs, match):
    import numba
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)
    with pytest.raises(ValueError, match=match + r" \(NUMBA_NUM_THREADS\)"):
        StudyConfig(**kwargs)


def test_too_many_threads_stop_the_study_before_any_stage(tiny, monkeypatch):
    """Not after data, training, the sweep and a 99-thread 'peak' in machine.json."""
    import numba
    cfg, calls, stages = tiny
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)
    with pytest.raises(ValueError, match="threads 99 exceed"):
        study.run_study(dataclasses.replace(cfg, threads=(1, 99)), progress=False, stages=stages)
    assert calls == {"train": 0, "sweep": 0, "peaks": 0, "time_cases": 0, "report": 0}
    assert not (tiny[0].folder().parent).exists()


def test_other_data_under_the_same_name_gets_its_own_run_folder(tiny):
    """A --data-dir of non-official files (other labels) does not share the official run's folder."""
    cfg, calls, stages = tiny
    official = stages.load_data("mnist")
    other = official._replace(train_labels=(official.train_labels + 1) % 10, md5=("b" * 32,) * 4)
    official = official._replace(md5=("a" * 32,) * 4)
    seen, base = [], stages
    stages = dataclasses.replace(
        base, load_data=lambda name, data_dir=None, **k: other if data_dir else official,
        train=lambda ds, *a, **k: seen.append(ds.fingerprint) or base.train(ds, *a, **k))
    a = study.run_study(cfg, progress=False, stages=stages)
    b = study.run_study(dataclasses.replace(cfg, data_dir="/elsewhere"), progress=False, stages=stages)
    assert a != b and calls["sweep"] == 2                                  # b measured afresh
    assert read_json(a / "config.json")["data"]["fingerprint"] == official.fingerprint
    assert read_json(b / "config.json")["data"]["fingerprint"] == other.fingerprint
    assert seen == [official.fingerprint] * 2 + [other.fingerprint] * 2    # the nets see their own data
    with pytest.raises(ValueError, match="holds results of other data .*fingerprint"):
        study.run_study(dataclasses.replace(cfg, data_dir="/elsewhere", run_id=a.name), progress=False,
                        stages=stages)


# --- one study per run folder ------------------------------------------------------------------

def _hold_lock(path, pid):
    """Hold an flock on `path` (as a running study would) with `pid` written in it."""
    import fcntl
    import json
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.truncate(0)
    f.write(json.dumps({"pid": pid, "started": "2024-01-01T00:00:00+00:00"}))
    f.flush()
    return f


def _dead_pid() -> int:
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_second_study_on_the_same_folder_is_refused(tiny):
    import os
    cfg, calls, stages = tiny
    lock = _hold_lock(cfg.folder() / ".lock", os.getpid())
    try:
        with pytest.raises(RuntimeError, match=rf"in use by another study \(pid {os.getpid()}, started "
                                               r"2024-01-01T00:00:00\+00:00\)"):
            study.run_study(cfg, progress=False, stages=stages)
    finally:
        lock.close()
    assert calls["train"] == 0 and not (cfg.folder() / "config.json").exists()


@pytest.mark.parametrize("part", ["machine", "accuracy", "activations", "timings"])
def test_a_part_file_that_is_not_an_object_is_named(tiny, part):
    """A results file holding [] (not a study's JSON object) is refused by name, not with a traceback."""
    cfg, _, stages = tiny
    folder = study.run_study(cfg, progress=False, stages=stages)
    (folder / f"{part}.json").write_text("[]")
    with pytest.raises(ValueError, match=rf"{part}\.json: not a results file of a `sparsenet study` \(a JSON list"):
        study.run_study(cfg, progress=False, stages=stages)


def test_the_lock_names_the_holder_and_is_released(tiny):
    import json
    import os
    cfg, _, stages = tiny
    seen = {}

    def train(ds, train_cfg, cache_dir, progress=True):        # runs inside the lock
        seen.update(json.loads((cfg.folder(ds.fingerprint) / ".lock").read_text()))
        return stages.train(ds, train_cfg, cache_dir, progress=progress)
    folder = study.run_study(cfg, progress=False, stages=dataclasses.replace(stages, train=train))
    assert seen["pid"] == os.getpid() and seen["started"]
    _hold_lock(folder / ".lock", os.getpid()).close()                   # released after the run


def test_a_stale_lock_is_taken_over(tiny):
    cfg, calls, stages = tiny
    dead = _dead_pid()
    # holder gone, flock not held: only the file is left
    _hold_lock(cfg.folder() / ".lock", dead).close()
    study.run_study(cfg, progress=False, stages=stages)
    # flock still held (say, by a child that inherited it), but the pid written is dead
    lock = _hold_lock(cfg.folder() / ".lock", dead)
    try:
        study.run_study(cfg, progress=False, stages=stages)
    finally:
        lock.close()
    assert calls["train"] == 2 * len(cfg.seeds)


def test_noisy_cases_are_remeasured_within_the_budget(tiny):
    """Flagged records are re-timed before the verdict; the steadier one is kept, the rest listed."""
    cfg, calls, stages = tiny
    cfg = dataclasses.replace(cfg, widths=(), remeasure_s=30.0, sparsities=(0.0, 0.9))
    seen = []

    def noisy_first(cases, **k):
        recs = timing.time_cases(cases, **k)
        first = len(seen) < 2                 # the timing pass: one call per k; then the re-runs
        seen.append(len(cases))
        for r in recs:                       # first pass: csr looks noisy; the re-run: steady but at batch 8
            noisy = r["engine"] == "csr" and (first or r["batch"] == 8)
            r["spread"], r["flagged"] = (3.0, True) if noisy else (1.05, False)
            # times set to fall with k: no step up in k for retime_steps to take (the tiny net's real
            # times may step under load)
            r["median_s"] = 1e-4 * (1 - r["sparsity"])
            r["per_round_s"] = [r["median_s"]] * len(r["per_round_s"])
        return recs

    study.run_study(cfg, progress=False, stages=dataclasses.replace(stages, time_cases=noisy_first))
    t = read_json(cfg.folder() / "timings.json")
    csr = [r for r in t["records"] if r["engine"] == "csr"]
    # csr's cells (k 0 and 0.9, batches 1 and 8, one thread count) re-timed whole, a cell a run: every
    # record of the cell, so that csr and its dense baselines still pair round by round
    cells = {(r["sparsity"], r["batch"], r["threads"]) for r in csr}
    in_cells = [r for r in t["records"] if (r["sparsity"], r["batch"], r["threads"]) in cells]
    assert len(cells) == 4 and t["remeasured"] == len(in_cells) and t["remeasured_s"] >= 0
    assert all(r["remeasured"] for r in in_cells)
    assert not any(r.get("remeasured") for r in t["records"] if r not in in_cells)
    # batch 1's re-run was steadier and replaced the cell; batch 8's was not (csr still noisy there)
    assert {(r["batch"], r["flagged"]) for r in csr} == {(1, False), (8, True)}
    assert sorted(tuple(x[:3]) for x in t["still_noisy"]) == [("csr", 0.0, 8), ("csr", 0.9, 8)]
    peaks_beside = {(p["sparsity"], p["threads"]) for p in t["peaks"] if p.get("beside") == 8}
    sizes = sorted(sum((r["sparsity"], r["batch"], r["threads"]) == c for r in t["records"])
                   + (c[1] == 8 and (c[0], c[2]) in peaks_beside) for c in cells)
    assert sorted(seen[2:]) == sizes                              # one run per cell (batch 8's with its peak)
    for b in (1, 8):                                              # a cell's records: one run, paired rounds
        runs = {r["timed_at"] for r in in_cells if r["batch"] == b and r["sparsity"] == 0.0}
        assert len(runs) == 1


def test_steps_up_in_k_are_retimed_side_by_side(tiny):
    """An engine slower at a higher k beyond its rounds' noise is timed again at both k in one run;
    a step made by a slow spell of the machine goes, the records are replaced, the report says so."""
    cfg, calls, stages = tiny
    cfg = dataclasses.replace(cfg, widths=(), remeasure_s=30.0, sparsities=(0.0, 0.5, 0.9))
    runs = []

    steady = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.03]

    def slow_spell_at_90(cases, **k):
        recs = timing.time_cases(cases, **k)
        ks = {c.sparsity for c in cases}
        runs.append(sorted((c.name, c.sparsity) for c in cases))
        for r in recs:                   # csr's times set: 90 % twice as fast as 50 %, but 3x slower
            if r["engine"] == "csr":     # than that in the grid's unit at 90 % (a slow spell)
                scale = {0.0: 2e-4, 0.5: 1e-4, 0.9: 0.5e-4}[r["sparsity"]] * (3 if ks == {0.9} else 1)
                r["per_round_s"] = [scale * x for x in steady[:len(r["per_round_s"])]]
                r["median_s"] = scale
        return recs

    study.run_study(cfg, progress=False, stages=dataclasses.replace(stages, time_cases=slow_spell_at_90))
    t = read_json(cfg.folder() / "timings.json")
    steps = [st for st in t["steps"] if st["engine"] == "csr"]     # (the tiny net's other engines may step)
    assert {(st["k"], st["next_k"]) for st in steps} == {(0.5, 0.9)} and len(steps) == 2     # batches 1 and 8
    csr_runs = [r for r in runs if len({k for _, k in r}) > 1 and ("csr", 0.9) in r]     # (other steps may join)
    assert len(csr_runs) == 2                                      # both k in one run, a run per batch,
    for r in csr_runs:                                             # with the dense baselines at both k
        assert {k for name, k in r if name == "csr"} >= {0.5, 0.9}   # (a step of another engine in a cell may join)
        assert {(name, k) for name, k in r if name in ("dense", "dense-fused")} >= {("dense", 0.5), ("dense", 0.9)}
    assert all(st["before"] > 1.2 and st["after_low"] <= 1 for st in steps)   # the spell is gone
    csr90 = [r for r in t["records"] if r["engine"] == "csr" and r["sparsity"] == 0.9]
    assert csr90 and all(r["retimed"] == "step" for r in csr90)
    for r90 in csr90:                       # the two k's cells re-timed whole, in one run: still paired
        cell = [r for r in t["records"] if (r["batch"], r["threads"]) == (r90["batch"], r90["threads"])
                and r["sparsity"] in (0.5, 0.9)]
        assert len(cell) > 4 and len({r["timed_at"] for r in cell}) == 1 and all(r.get("retimed") for r in cell)
    assert all(t["records"][i]["engine"] != "csr" for pair in study.steps_up(t["records"]) for i in pair)
    text = report.steps_markdown(t["steps"])
    assert text.startswith(f"{len(t['steps'])} step(s) up in k") and "csr batch 1, 1 thread, 50% -> 90%: x" in text


def test_steps_that_share_a_record_are_retimed_together(tiny):
    """80 -> 90 % and 90 -> 95 % both steps: the three k in one run (a second run of 90 % beside 95 %
    would undo its pair with 80 %), each record naming the k timed beside it."""
    cfg, calls, stages = tiny
    cfg = dataclasses.replace(cfg, widths=(), remeasure_s=30.0, sparsities=(0.0, 0.5, 0.9, 0.95),
                              engines=("dense", "csr"), batches=(1,))
    steady, runs = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.03], []

    def spells(cases, **k):
        recs = timing.time_cases(cases, **k)
        ks = {c.sparsity for c in cases}
        runs.append(sorted(c.sparsity for c in cases if c.name == "csr"))
        for r in recs:                   # csr 0.5x as slow per step up in k; 3x during the grid's
            if r["engine"] == "csr":     # units at 90 and 95 % (two steps sharing 90 %)
                base = {0.0: 8e-4, 0.5: 4e-4, 0.9: 2e-4, 0.95: 1e-4}[r["sparsity"]]
                scale = base * (3 if len(ks) == 1 and r["sparsity"] == 0.9 else 1) * (
                    9 if len(ks) == 1 and r["sparsity"] == 0.95 else 1)
                r["per_round_s"] = [scale * x for x in steady[:len(r["per_round_s"])]]
                r["median_s"] = scale
        return recs

    study.run_study(cfg, progress=False, stages=dataclasses.replace(stages, time_cases=spells))
    t = read_json(cfg.folder() / "timings.json")
    assert {(st["k"], st["next_k"]) for st in t["steps"]} == {(0.5, 0.9), (0.9, 0.95)}
    assert [0.5, 0.9, 0.95] in runs and [0.9, 0.95] not in runs               # one run for the chain
    by_k = {r["sparsity"]: r for r in t["records"] if r["engine"] == "csr"}
    assert by_k[0.9]["retimed_with"] == [0.5, 0.95] and by_k[0.5]["retimed_with"] == [0.9, 0.95]
    assert all(st["after_low"] <= 1 for st in t["steps"])
    # the dense net at the chain's k timed in the same run: the speed-ups at those k stay side by side
    dense = {r["sparsity"]: r for r in t["records"] if r["engine"] == "dense"}
    assert {k: r.get("retimed") for k, r in dense.items()} == {0.0: None, 0.5: "beside", 0.9: "beside", 0.95: "beside"}
    assert dense[0.9]["retimed_with"] == [0.5, 0.95] and all(r.get("retimed") == "step" for r in by_k.values() if r["sparsity"])
    assert study._step_chains([(1, 2), (5, 6), (2, 3), (4, 5), (3, 4)]) == [([1, 2, 3, 4, 5, 6],
                                                                            [(1, 2), (2, 3), (3, 4), (5, 6), (4, 5)])]


def test_steps_that_share_a_dense_record_are_retimed_together():
    """Two engines' steps at the same k, batch and threads share their cells (the dense baselines and
    every other engine timed there): one run, so that the second does not re-time dense apart from the
    first engine's records, and every record of a cell stays paired with the others."""
    def rec(engine, k, batch=1, threads=1):
        return {"engine": engine, "sparsity": k, "batch": batch, "threads": threads, "width": None}
    records = [rec("dense", 0.5), rec("dense", 0.9), rec("csr", 0.5), rec("csr", 0.9), rec("nm", 0.5),
               rec("nm", 0.9), rec("dense", 0.9, batch=8), rec("dense-fused", 0.5), rec("bsr", 0.9, batch=8)]
    assert study._beside(records, (2, 3)) == [0, 1, 2, 3, 4, 5, 7]   # every record at 50 and 90 %, batch 1
    assert study._beside(records, (8, 8)) == [6, 8]
    chains = study._step_chains([(2, 3), (4, 5)], lambda step: study._beside(records, step))
    assert chains == [([0, 1, 2, 3, 4, 5, 7], [(2, 3), (4, 5)])]
    assert study._step_chains([(2, 3), (4, 5)]) == [([2, 3], [(2, 3)]), ([4, 5], [(4, 5)])]


def test_steps_up_needs_the_interval_above_one():
    """steps_up: the next k's rounds against this k's, 95 % interval above 1; k-independent engines
    (dense) are left out; the largest step first."""
    def rec(engine, k, rounds, batch=1):
        return {"engine": engine, "sparsity": k, "batch": batch, "threads": 1, "width": None,
                "per_round_s": rounds, "median_s": sorted(rounds)[len(rounds) // 2]}
    steady = [1.0, 1.01, 0.99, 1.0, 1.02]
    records = [rec("csr", 0.5, steady), rec("csr", 0.7, [2 * x for x in steady]), rec("csr", 0.9, steady),
               rec("dense", 0.5, steady), rec("dense", 0.7, [2 * x for x in steady]),
               rec("nm", 0.5, steady), rec("nm", 0.75, [1.0, 1.3, 0.8, 1.2, 0.9]),            # noise, no step
               rec("bsr", 0.5, steady), rec("bsr", 0.9, [1.5 * x for x in steady])]
    assert study.steps_up(records) == [(0, 1), (7, 8)]


def test_remeasure_takes_the_flagged_cases_that_fit_its_budget():
    """The budget is checked per case before timing it (a unit's re-run took 101 s of a 60 s budget)."""
    records = [{"median_s": 0.01, "calls": 1, "rounds": 7}, {"median_s": 0.001, "calls": 10, "rounds": 7},
               {"median_s": 1.0, "calls": 1, "rounds": 3}, {"median_s": 0.001, "calls": 1, "rounds": 7}]
    # predicted seconds: 0.01 * 9 = 0.09, 0.001 * 72 = 0.072, 1.0 * 5 = 5, ...
    assert study._within([0, 1, 2, 3], records, 10.0) == [0, 1, 2, 3]
    assert study._within([0, 1, 2, 3], records, 1.0) == [0, 1]              # the first that fit, in order
    assert study._within([1, 0], records, 0.1) == [1]
    assert study._within([2], records, 4.9) == [] and study._within([0], records, -1.0) == []


# --- accuracy on the cluster, timing on each machine -------------------------------------------

def _refuse(what):
    def refuse(*a, **k):
        raise AssertionError(f"timing-only {what}")
    return refuse


def _timing_only_stages(stages):
    """The tiny stages with stand-ins that raise if timing-only loads the data set or trains."""
    return dataclasses.replace(stages, load_data=_refuse("loaded the data set"), train=_refuse("trained"))


def _keys(folder, part="timings"):
    """(record keys, skipped keys) of a timings or scaling file."""
    t = read_json(folder / f"{part}.json")
    return sorted(grid.record_key(r) for r in t["records"]), sorted(grid.record_key(s) for s in t["skipped"])


def _elsewhere(monkeypatch, host="elsewhere"):
    """Make this process another machine (another host name) from now on; returns its fingerprint."""
    from sparsenet import machine
    fp = {**machine.fingerprint(), "hostname": host}
    fp["tag"] = machine.machine_tag(fp)
    monkeypatch.setattr(machine, "fingerprint", lambda: dict(fp))
    return fp


def test_accuracy_only_then_timing_only_times_what_a_full_run_times(tiny):
    from sparsenet import machine, timing_inputs
    cfg, calls, stages = tiny
    full = study.run_study(dataclasses.replace(cfg, run_id="full"), progress=False, stages=stages)
    split = study.run_study(dataclasses.replace(cfg, run_id="split"), progress=False, stages=stages,
                            accuracy_only=True)
    assert calls["peaks"] == 1 and calls["time_cases"] == 6 and calls["report"] == 1    # the full run's only
    for name in ("config", "accuracy", "activations"):
        assert (split / f"{name}.json").exists(), name
    assert {"net.npz", "test-images.npy", "checksums.json"} <= {p.name for p in split.iterdir()}
    assert not any((split / f"{p}.json").exists() for p in ("machine", "timings", "scaling"))
    assert read_json(split / "accuracy.json")["curves"] == read_json(full / "accuracy.json")["curves"]

    assert study.run_timing_only(split, progress=False, stages=_timing_only_stages(stages)) == split   # in place
    assert calls["peaks"] == 2 and calls["time_cases"] == 12 and calls["report"] == 2
    assert _keys(split) == _keys(full) and _keys(split, "scaling") == _keys(full, "scaling")
    assert read_json(split / "timings.json")["config"] == read_json(full / "timings.json")["config"]
    # the same nets: the saved one is the seed-0 net, so every pruned net of the grid is the full run's
    params, images = timing_inputs.load(split)
    assert images.dtype == "uint8" and images.shape == (200, 784)
    trained = he_init(SIZES, seed=0)
    for k in cfg.sparsities:
        for method in ("weight", "neuron"):
            for a, b in zip(grid.pruned(params, method, k), grid.pruned(trained, method, k)):
                assert (a.weight == b.weight).all()
    # the machine's fingerprint: in machine.json, the timings file and each record
    fp = machine.fingerprint()
    assert read_json(split / "machine.json")["fingerprint"] == fp
    t = read_json(split / "timings.json")
    assert t["machine"] == fp and {r["machine"] for r in t["records"]} == {fp["tag"]}

    study.run_timing_only(split, progress=False, stages=_timing_only_stages(stages))       # resumes: all done
    assert calls["peaks"] == 2 and calls["time_cases"] == 12


def test_timing_only_on_another_machine_writes_a_sibling_folder(tiny, monkeypatch, tmp_path):
    from sparsenet import compare, plots
    from sparsenet.results import load_results
    cfg, calls, stages = tiny
    cfg = dataclasses.replace(cfg, engines=("dense", "csr", "shrunk"), widths=(), run_id="run")
    here = study.run_study(cfg, progress=False, stages=stages)
    before = (here / "timings.json").read_bytes()
    fp = _elsewhere(monkeypatch)
    there = study.run_timing_only(here, progress=False, stages=_timing_only_stages(stages))
    assert there == here.parent / f"run@{fp['tag']}" and there.name == "run@elsewhere-" + fp["tag"].split("-", 1)[1]
    assert (here / "timings.json").read_bytes() == before                  # the other machine's untouched
    for part in ("accuracy", "activations"):
        assert read_json(there / f"{part}.json") == read_json(here / f"{part}.json")
    config = read_json(there / "config.json")
    assert config["run_id"] == there.name and config["study"]["run_id"] == there.name
    assert config["data"] == read_json(here / "config.json")["data"]
    assert read_json(there / "machine.json")["fingerprint"]["hostname"] == "elsewhere"
    assert {r["machine"] for r in read_json(there / "timings.json")["records"]} == {fp["tag"]}
    assert _keys(there) == _keys(here) and calls["report"] == 2
    # its reproduce command times `here`'s nets again with the recorded timing options (run here: resumes)
    import shlex

    from sparsenet import cli
    from sparsenet.report import reproduce_command
    argv = shlex.split(reproduce_command(config, there))
    assert argv[:4] == ["sparsenet", "study", "--timing-only", str(here)] and "--run-id" not in argv
    assert cli.study_options(cli.build_parser().parse_args(argv[1:])) == {
        k: tuple(v) if isinstance(v, list) else v for k, v in config["study"].items() if k in study.TIMING_FIELDS}
    assert "--timing-only" not in reproduce_command(read_json(here / "config.json"), here)
    # report and compare read it as any results folder
    monkeypatch.setattr(plots, "_save", lambda fig, path: path.write_bytes(b"\x89PNG stub"))
    compare.check_comparable([(f.name, load_results(f)) for f in (here, there)])
    assert compare.compare([here, there], tmp_path / "cmp").exists()

    n = calls["time_cases"]
    assert study.run_timing_only(here, progress=False, stages=_timing_only_stages(stages)) == there   # resumes
    assert study.run_timing_only(there, progress=False, stages=_timing_only_stages(stages)) == there
    assert calls["time_cases"] == n and calls["peaks"] == 2
    _elsewhere(monkeypatch, "third")                                       # a third machine, from the sibling
    assert study.run_timing_only(there, progress=False,
                                 stages=_timing_only_stages(stages)).name.startswith("run@third-")


def test_a_study_does_not_add_to_another_machines_timings(tiny, monkeypatch):
    cfg, calls, stages = tiny
    cfg = dataclasses.replace(cfg, engines=("dense", "csr"), widths=())
    folder = study.run_study(cfg, progress=False, stages=stages)
    _elsewhere(monkeypatch)
    with pytest.raises(ValueError, match=r"holds the timings of another machine .*--timing-only"):
        study.run_study(cfg, progress=False, stages=stages)
    assert calls["peaks"] == 1 and calls["train"] == len(cfg.seeds)                 # refused before training
    assert read_json(folder / "machine.json")["fingerprint"]["hostname"] != "elsewhere"
    study.run_study(cfg, progress=False, stages=stages, accuracy_only=True)   # the nets' work is no machine's


@pytest.fixture
def accuracy_only(tiny):
    """An --accuracy-only run folder of the tiny study (dense and csr only, no scaling) and its stages."""
    cfg, calls, stages = tiny
    cfg = dataclasses.replace(cfg, engines=("dense", "csr"), widths=(), run_id="acc")
    return study.run_study(cfg, progress=False, stages=stages, accuracy_only=True), calls, stages


def test_timing_only_refuses_what_it_cannot_time(accuracy_only, tmp_path):
    from sparsenet import checkpoint
    folder, calls, stages = accuracy_only
    stages = _timing_only_stages(stages)
    with pytest.raises(ValueError, match=r"nope is not a results folder \(no such folder\)"):
        study.run_timing_only(tmp_path / "nope", stages=stages)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is not a results folder \(no config.json\)"):
        study.run_timing_only(tmp_path / "empty", stages=stages)
    checkpoint.save(folder / "net.npz", he_init(SIZES, seed=1))                  # another net, a valid file
    with pytest.raises(ValueError, match=r"net.npz fails its checksum in checksums.json"):
        study.run_timing_only(folder, stages=stages)
    from sparsenet import timing_inputs                  # ... and with checksums to match (copied from another run)
    import numpy as np
    fingerprint = read_json(folder / "config.json")["data"]["fingerprint"]
    timing_inputs.save(folder, he_init(SIZES, seed=1), np.load(folder / "test-images.npy"),
                       meta={"seed": 7, "data_fingerprint": fingerprint})
    with pytest.raises(ValueError, match=r"net.npz is not this run's net: its seed is 7, the run's 0"):
        study.run_timing_only(folder, stages=stages)
    (folder / "net.npz").unlink()
    with pytest.raises(ValueError, match=r"net.npz is missing"):
        study.run_timing_only(folder, stages=stages)
    with pytest.raises(ValueError, match=r"--seeds, --model-cache cannot be given with it"):
        study.run_timing_only(folder, {"seeds": (0,), "cache_dir": "x", "threads": (1,)}, stages=stages)
    assert calls["peaks"] == 0 and not (folder / "machine.json").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["acc"]            # no sibling made


def test_timing_options_replace_the_recorded_until_timings_exist(accuracy_only):
    folder, calls, stages = accuracy_only
    stages = _timing_only_stages(stages)
    study.run_timing_only(folder, {"batches": (1,), "rounds": 1}, progress=False, stages=stages)
    config = read_json(folder / "config.json")
    assert config["study"]["batches"] == [1] and config["study"]["rounds"] == 1
    assert config["timing_only"]["options"] == {"batches": [1], "rounds": 1}
    assert {r["batch"] for r in read_json(folder / "timings.json")["records"]} == {1}
    n = calls["time_cases"]
    study.run_timing_only(folder, progress=False, stages=stages)                   # none given: resumes
    study.run_timing_only(folder, {"batches": (1,)}, progress=False, stages=stages)  # the same: resumes
    assert calls["time_cases"] == n
    with pytest.raises(ValueError, match=r"other timing options \(--batches \[1\] there, \[1, 8\] given\)"):
        study.run_timing_only(folder, {"batches": (1, 8)}, progress=False, stages=stages)
