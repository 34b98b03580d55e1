"""train.py and train_kernels.py: kernels vs NumPy twins, the step vs loss_and_grads, the loop."""
from types import SimpleNamespace

import numpy as np
import pytest

from sparsenet import train as T
from sparsenet import train_kernels as K
from sparsenet.model import evaluate, he_init, loss_and_grads
from sparsenet.train import TrainConfig, TrainingError, cached_train, fit, lr_at, train

SIZES = (20, 32, 16, 5)
NO = np.zeros(0, np.bool_)


def _blobs(n, seed=0, n_in=SIZES[0], n_cls=SIZES[-1]):
    """Separable Gaussian clusters: a small problem a small net learns in a few epochs."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((n_cls, n_in)).astype(np.float32) * 1.5
    y = rng.integers(0, n_cls, n)
    return (centres[y] + rng.standard_normal((n, n_in)).astype(np.float32)), y


# --- kernels vs their NumPy twins ------------------------------------------------------------

@pytest.mark.parametrize("with_bias", [False, True])
def test_bias_relu(with_bias):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((13, 7), dtype=np.float32)
    z[0, 0] = np.nan                              # propagates, as np.maximum does
    bias = rng.standard_normal(7, dtype=np.float32) if with_bias else np.zeros(0, np.float32)
    a, b = np.empty_like(z), np.empty_like(z)
    K.bias_relu(z, bias, a)
    K.bias_relu_numpy(z, bias, b)
    np.testing.assert_array_equal(a, b)
    K.bias_relu(z, bias, z)                       # in place
    np.testing.assert_array_equal(z, b)


def test_relu_backward():
    rng = np.random.default_rng(1)
    d = rng.standard_normal((13, 7), dtype=np.float32)
    act = np.maximum(rng.standard_normal((13, 7), dtype=np.float32), 0)
    a, b = np.empty_like(d), np.empty_like(d)
    K.relu_backward(d, act, a)
    K.relu_backward_numpy(d, act, b)
    np.testing.assert_array_equal(a, b)


def test_softmax_xent():
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((17, 10)) * 30).astype(np.float32)
    logits[0, 3] = 1e4                            # would overflow exp without the max shift
    y = rng.integers(0, 10, 17)
    da, db = np.empty_like(logits), np.empty_like(logits)
    la, ca = K.softmax_xent(logits, y, da)
    lb, cb = K.softmax_xent_numpy(logits, y, db)
    assert np.isfinite(la) and la == pytest.approx(lb, rel=1e-5) and ca == cb
    np.testing.assert_allclose(da, db, atol=1e-7)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_updates(opt, masked):
    rng = np.random.default_rng(3)
    n = 101
    keep = rng.random(n) > 0.3 if masked else NO
    w, g, m, v = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    a = [x.copy() for x in (w, g, m, v)]
    b = [x.copy() for x in (w, g, m, v)]
    if opt == "adam":
        args = (1e-2, 0.9, 0.999, 1e-8, 0.19, 0.002, 0.01)
        K.adam_update(*a, keep, *args)
        K.adam_update_numpy(*b, keep, *args)
    else:
        K.sgd_update(*a[:3], keep, 1e-2, 0.9, 0.01)
        K.sgd_update_numpy(*b[:3], keep, 1e-2, 0.9, 0.01)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    if masked:
        assert not a[0][~keep].any()


# --- the fused step vs the reference gradients ------------------------------------------------

@pytest.mark.parametrize("bias", [False, True])
def test_step_gradients_match_reference(bias):
    X, y = _blobs(24)
    params = he_init(SIZES, bias=bias, seed=5)
    tr = T._Trainer(params, TrainConfig(sizes=SIZES, batch_size=32))
    loss, _ = tr.step(X, y, np.arange(24), 0.0)
    ref_loss, ref = loss_and_grads(params, X, y)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    ref = [a for layer in ref for a in layer if a is not None]
    assert len(ref) == len(tr.grads)
    for got, want in zip(tr.grads, ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


# --- the loop ---------------------------------------------------------------------------------

def _fit(cfg=None, **kw):
    X, y = _blobs(600)
    Xv, yv = _blobs(200, seed=1)
    cfg = cfg or TrainConfig(sizes=SIZES, epochs=3, batch_size=32, seed=0)
    return fit(he_init(cfg.sizes, cfg.bias, cfg.seed), X, y, Xv, yv, cfg, progress=False, **kw), (Xv, yv)


@pytest.mark.parametrize("optimizer,lr", [("adam", 3e-3), ("sgd", 3e-2)])
def test_short_run_learns(optimizer, lr):
    cfg = TrainConfig(sizes=SIZES, epochs=4, batch_size=32, optimizer=optimizer, lr=lr, bias=True)
    (params, hist), (Xv, yv) = _fit(cfg)
    acc, _ = evaluate(params, Xv, yv)
    assert acc >= 0.95                                   # chance is 0.20
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert set(hist) >= {"train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "lr"}
    assert all(len(v) == 4 for k, v in hist.items() if k != "best_epoch")
    assert hist["val_acc"][hist["best_epoch"] - 1] == max(hist["val_acc"]) == acc


def test_same_seed_same_weights():
    (a, _), _ = _fit()
    (b, _), _ = _fit()
    (c, _), _ = _fit(TrainConfig(sizes=SIZES, epochs=3, batch_size=32, seed=1))
    for la, lb in zip(a, b):
        np.testing.assert_array_equal(la.weight, lb.weight)
    assert not np.array_equal(a[0].weight, c[0].weight)


def test_fit_takes_weight_bias_pairs():
    """Plain (weight, bias) pairs train exactly as the same Layers (as pruning and the engines take them)."""
    params = he_init(SIZES, bias=True, seed=0)
    X, y = _blobs(100)
    cfg = TrainConfig(sizes=SIZES, epochs=1, bias=True)
    (got, _), (want, _) = (fit(p, X, y, None, None, cfg, progress=False)
                           for p in ([(l.weight, l.bias) for l in params], params))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)


def test_input_params_untouched():
    params = he_init(SIZES, seed=0)
    before = [l.weight.copy() for l in params]
    X, y = _blobs(100)
    fit(params, X, y, None, None, TrainConfig(sizes=SIZES, epochs=1), progress=False)
    for l, w in zip(params, before):
        np.testing.assert_array_equal(l.weight, w)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_masks_keep_zeros_zero(optimizer):
    rng = np.random.default_rng(7)
    params = he_init(SIZES, bias=True, seed=0)
    masks = tuple((rng.random(l.weight.shape) > 0.5, rng.random(l.bias.shape) > 0.5) for l in params)
    X, y = _blobs(300)
    cfg = TrainConfig(sizes=SIZES, epochs=2, batch_size=32, optimizer=optimizer, lr=1e-2, bias=True)
    out, _ = fit(params, X, y, None, None, cfg, masks=masks, progress=False)
    for layer, new, (kw, kb) in zip(params, out, masks):
        assert not new.weight[~kw].any() and not new.bias[~kb].any()
        assert np.mean(new.weight[kw] != layer.weight[kw]) > 0.9   # the kept ones did train


def test_mask_schedule():
    params = he_init(SIZES, seed=0)
    keep = tuple((np.abs(l.weight) > np.median(np.abs(l.weight)), None) for l in params)
    calls = []

    def schedule(step, live):
        calls.append(step)
        with pytest.raises(ValueError):                 # read-only during the callback
            live[0].weight[0, 0] = 1.0
        return keep if step == 10 else None

    X, y = _blobs(320)
    cfg = TrainConfig(sizes=SIZES, epochs=2, batch_size=32)
    out, hist = fit(params, X, y, X[:64], y[:64], cfg, mask_schedule=schedule, progress=False)
    assert calls == list(range(20))
    for new, (kw, _) in zip(out, keep):
        assert not new.weight[~kw].any()
    assert hist["best_epoch"] >= 1


def test_bad_masks_rejected():
    params = he_init(SIZES)
    X, y = _blobs(64)
    masks = tuple((np.ones(l.weight.shape, np.float32), None) for l in params)
    with pytest.raises(ValueError, match="bool"):
        fit(params, X, y, None, None, TrainConfig(sizes=SIZES, epochs=1), masks=masks, progress=False)


def test_nan_loss_raises():
    X, y = _blobs(200)
    X[:, 0] = np.nan                                     # poisons the first batch already
    cfg = TrainConfig(sizes=SIZES, epochs=1, batch_size=100)
    with pytest.raises(TrainingError, match=r"nan at epoch 1, step 1 of 2 .*lower learning rate"):
        fit(he_init(SIZES), X, y, None, None, cfg, progress=False)


def test_divergence_with_huge_lr_raises():
    X, y = _blobs(600)
    cfg = TrainConfig(sizes=SIZES, epochs=5, optimizer="sgd", lr=1e6, schedule="constant")
    with pytest.raises(TrainingError, match="lower learning rate"):
        fit(he_init(SIZES), X * 100, y, None, None, cfg, progress=False)


def test_config_validation_and_schedule():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    cfg = TrainConfig(lr=1.0, epochs=2, schedule="cosine")
    assert lr_at(cfg, 0, 10) == 1.0 and lr_at(cfg, 10, 10) == pytest.approx(0.5)
    assert lr_at(TrainConfig(lr=1.0, schedule="exp", lr_decay=0.5), 25, 10) == 0.25
    assert TrainConfig(sizes=[3, 2]).sizes == (3, 2)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match=rf"^seed must be an integer >= 0, got {bad!r}$"):
            TrainConfig(seed=bad)
    # every setting is checked by name: 2.5 epochs or a momentum of 1 used to train (or diverge) silently
    for field, bad, rule in (("lr", 0.0, "a number > 0"), ("lr", "x", "a number > 0"), ("lr", float("nan"), "a number > 0"),
                             ("epochs", 0, "an integer >= 1"), ("epochs", 2.5, "an integer >= 1"),
                             ("epochs", True, "an integer >= 1"), ("batch_size", 0, "an integer >= 1"),
                             ("batch_size", 3.5, "an integer >= 1"), ("n_val", -1, "an integer >= 0"),
                             ("n_val", 1.5, "an integer >= 0"), ("momentum", 1.0, r"a number in \[0, 1\)"),
                             ("beta2", -0.1, r"a number in \[0, 1\)"), ("eps", 0.0, "a number > 0"),
                             ("weight_decay", -1.0, "a number >= 0"), ("lr_decay", 0.0, r"a number in \(0, 1\]"),
                             ("min_lr_frac", 2.0, r"a number in \[0, 1\]"), ("bias", 1, "True or False")):
        with pytest.raises(ValueError, match=rf"^{field} must be {rule}, got {bad!r}$"):   # names the setting
            TrainConfig(**{field: bad})
    for bad in ((784,), (), (784, 0, 10), (784, 2.5, 10), (784, "a", 10), "784,10", 784, (784, True, 10)):
        with pytest.raises(ValueError, match=r"^sizes must be two or more layer widths >= 1"):
            TrainConfig(sizes=bad)


def test_sizes_must_fit_the_data():
    """A net whose first width is not the data's features (or last not its classes) is refused
    before training, in one line (it failed inside numpy's take)."""
    ds = _dataset()
    for sizes in ((100, 5), (SIZES[0], 8, 10), (SIZES[0] + 1, SIZES[-1])):
        with pytest.raises(ValueError, match=rf"^sizes {','.join(map(str, sizes))} do not fit blobs: the first width "
                                             rf"must be its {SIZES[0]} input features and the last its {SIZES[-1]} classes"):
            train(ds, TrainConfig(sizes=sizes, epochs=1), progress=False)
    # the classes count the test labels too: a test label past the net's outputs is refused up front
    high = ds.test_labels.copy()
    high[0] = SIZES[-1]
    with pytest.raises(ValueError, match=rf"^sizes .* do not fit blobs: .* the last its {SIZES[-1] + 1} classes"):
        train(SimpleNamespace(**{**vars(ds), "test_labels": high}), TrainConfig(epochs=1), progress=False)
    empty = SimpleNamespace(**{**vars(ds), "train_images": ds.train_images[:0], "train_labels": ds.train_labels[:0]})
    with pytest.raises(ValueError, match=r"^blobs has no training images$"):      # not numpy's empty max
        train(empty, TrainConfig(epochs=1), progress=False)


def _dataset(name="blobs"):
    Xtr, ytr = _blobs(700)
    Xte, yte = _blobs(200, seed=5)
    to_u8 = lambda X: np.clip(X * 30 + 128, 0, 255).astype(np.uint8)
    return SimpleNamespace(name=name, source="synthetic", train_images=to_u8(Xtr),
                           train_labels=ytr.astype(np.uint8), test_images=to_u8(Xte),
                           test_labels=yte.astype(np.uint8))


def test_train_split_and_meta(capsys):
    ds = _dataset()
    cfg = TrainConfig(sizes=SIZES, epochs=4, batch_size=32, n_val=100, lr=1e-2)
    params, meta = train(ds, cfg, progress=True, threads=1)
    assert "test accuracy" in capsys.readouterr().err
    assert meta["test_acc"] >= 0.9 and meta["dataset"] == "blobs" and meta["sizes"] == list(SIZES)
    assert meta["config"]["epochs"] == 4 and 1 <= meta["best_epoch"] <= 4
    tr, val = T.split_train_val(700, 100, 0)
    assert len(val) == 100 and not np.intersect1d(tr, val).size and len(tr) + len(val) == 700
    assert np.array_equal(val, T.split_train_val(700, 100, 0)[1])
    assert not np.array_equal(val, T.split_train_val(700, 100, 1)[1])


def test_cached_train(tmp_path, monkeypatch):
    ds = _dataset()
    cfg = TrainConfig(sizes=SIZES, epochs=1, batch_size=64, n_val=100)
    a, meta_a = cached_train(ds, cfg, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def no_training(*args, **kw):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(T, "train", no_training)
    b, meta_b = cached_train(ds, cfg, tmp_path, progress=False)
    np.testing.assert_array_equal(a[0].weight, b[0].weight)
    assert meta_b["test_acc"] == meta_a["test_acc"] and meta_b["config_hash"] == meta_a["config_hash"]
    with pytest.raises(AssertionError, match="cache"):             # another config: no reuse
        cached_train(ds, TrainConfig(sizes=SIZES, epochs=1, batch_size=64, n_val=100, seed=1),
                     tmp_path, progress=False)
    with pytest.raises(AssertionError, match="cache"):             # another dataset name
        cached_train(_dataset("other"), cfg, tmp_path, progress=False)


def test_cached_train_keys_by_the_data_not_its_name(tmp_path, monkeypatch):
    """Other files under the same data set name (e.g. other labels) never reuse the official net."""
    from sparsenet.data import Dataset
    blobs = _dataset()
    official = Dataset("mnist", blobs.train_images, blobs.train_labels, blobs.test_images, blobs.test_labels,
                       "synthetic", md5=("a" * 32,) * 4)
    relabelled = official._replace(train_labels=(official.train_labels + 1) % SIZES[-1], md5=("b" * 32,) * 4)
    cfg = TrainConfig(sizes=SIZES, epochs=1, batch_size=64, n_val=100)
    _, meta = cached_train(official, cfg, tmp_path, progress=False)
    assert meta["data_fingerprint"] == official.fingerprint

    def no_training(*args, **kw):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(T, "train", no_training)
    assert cached_train(official, cfg, tmp_path, progress=False)[1]["data_fingerprint"] == official.fingerprint
    with pytest.raises(AssertionError, match="cache"):             # same name, other data: no reuse
        cached_train(relabelled, cfg, tmp_path, progress=False)


def test_a_batch_larger_than_the_data_is_the_whole_data():
    """--batch-size above the training rows sized the buffers for the batch asked (10**8 rows on MNIST: a
    MemoryError for 292 GiB); every step holds the whole data either way."""
    X, y = _blobs(64)
    params = he_init(SIZES, seed=0)
    whole, _ = fit(params, X, y, None, None, TrainConfig(sizes=SIZES, epochs=2, batch_size=64), progress=False)
    huge, _ = fit(params, X, y, None, None, TrainConfig(sizes=SIZES, epochs=2, batch_size=10**12), progress=False)
    for a, b in zip(whole, huge):
        np.testing.assert_array_equal(a.weight, b.weight)
