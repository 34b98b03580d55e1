"""checkpoint.py: round trip, and a clear CheckpointError for each kind of mismatch."""
import io
import json

import numpy as np
import pytest

from sparsenet import __version__
from sparsenet.checkpoint import CheckpointError, load, save
from sparsenet.model import Layer, he_init

SIZES = (8, 6, 4, 3)


def _rewrite(path, change):
    """Load the raw arrays of a checkpoint, let `change` edit the dict, write it back."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_round_trip(tmp_path, bias):
    params = he_init(SIZES, bias=bias, seed=4)
    meta = {"dataset": "mnist", "seed": 4, "test_acc": 0.98, "config": {"sizes": SIZES}}
    path = save(tmp_path / "m.npz", params, meta)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]            # no temporary left behind
    got, got_meta = load(path, expect={"dataset": "mnist", "sizes": SIZES, "bias": bias})
    for a, b in zip(params, got):
        np.testing.assert_array_equal(a.weight, b.weight)
        assert b.weight.dtype == np.float32
        assert (a.bias is None) == (b.bias is None)
        if bias:
            np.testing.assert_array_equal(a.bias, b.bias)
    assert got_meta["sizes"] == list(SIZES) and got_meta["bias"] is bias
    assert got_meta["sparsenet_version"] == __version__
    assert got_meta["seed"] == 4 and got_meta["config"] == {"sizes": list(SIZES)}


@pytest.fixture
def saved(tmp_path):
    return save(tmp_path / "m.npz", he_init(SIZES, bias=True), {"dataset": "mnist"})


def test_missing_array(saved):
    _rewrite(saved, lambda a: a.pop("b1"))
    with pytest.raises(CheckpointError, match=r"m\.npz.*'b1' is missing"):
        load(saved)


def test_wrong_dtype(saved):
    _rewrite(saved, lambda a: a.update(w0=a["w0"].astype(np.float64)))
    with pytest.raises(CheckpointError, match="'w0' has dtype float64"):
        load(saved)


def test_wrong_shape(saved):
    _rewrite(saved, lambda a: a.update(w2=a["w2"][:, :-1]))
    with pytest.raises(CheckpointError, match=r"'w2' has shape \(3, 3\), expected \(3, 4\)"):
        load(saved)


def test_unexpected_array(saved):
    _rewrite(saved, lambda a: a.update(w9=np.zeros(2, np.float32)))
    with pytest.raises(CheckpointError, match="unexpected arrays"):
        load(saved)


def test_metadata_missing_or_broken(saved):
    _rewrite(saved, lambda a: a.update(meta_json=np.array("{not json")))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load(saved)
    _rewrite(saved, lambda a: a.update(meta_json=np.array(json.dumps({"bias": True}))))
    with pytest.raises(CheckpointError, match="lacks 'sizes'"):
        load(saved)


def test_expect_mismatch(saved):
    with pytest.raises(CheckpointError, match="'dataset' is 'mnist', expected 'fashion'"):
        load(saved, expect={"dataset": "fashion"})
    with pytest.raises(CheckpointError, match="'sizes'"):
        load(saved, expect={"sizes": (8, 6, 4, 2)})
    with pytest.raises(CheckpointError, match="lacks 'seed'"):
        load(saved, expect={"seed": 0})


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.npz: not a readable"):
        load(junk)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, meta_json=np.array([{"a": 1}], dtype=object))       # needs pickle to read
    with pytest.raises(CheckpointError, match="not a readable"):
        load(pickled)


def test_mixed_biases_are_refused(tmp_path):
    params = he_init(SIZES, bias=True)
    params = (Layer(params[0].weight, None),) + params[1:]
    with pytest.raises(ValueError, match="bias"):
        save(tmp_path / "m.npz", params, {})


@pytest.mark.parametrize("meta, match", [
    ([1, 2, 3], "metadata is not a JSON object"),
    ("a string", "metadata is not a JSON object"),
    (None, "metadata is not a JSON object"),
    ({"sizes": 5, "bias": True, "n_layers": 3}, "'sizes' must be a list of integers >= 1"),
    ({"sizes": [8, "6", 4, 3], "bias": True, "n_layers": 3}, "'sizes' must be a list of integers >= 1"),
    ({"sizes": [8, 6.0, 4, 3], "bias": True, "n_layers": 3}, "'sizes' must be a list of integers >= 1"),
    ({"sizes": [8, -6, 4, 3], "bias": True, "n_layers": 3}, "'sizes' must be a list of integers >= 1"),
    ({"sizes": [8, 6, 4, 3], "bias": "yes", "n_layers": 3}, "'bias' must be true or false"),
    ({"sizes": [8, 6, 4, 3], "bias": True, "n_layers": "3"}, "'n_layers' must be an integer >= 1"),
    ({"sizes": [8], "bias": True, "n_layers": 0}, "'n_layers' must be an integer >= 1"),
    ({"sizes": [8, 6, 4, 3], "bias": True, "n_layers": None}, "'n_layers' must be an integer >= 1"),
])
def test_malformed_metadata_is_a_checkpoint_error(saved, meta, match):
    """Valid JSON of the wrong shape or types: a CheckpointError (the study then retrains), never TypeError."""
    _rewrite(saved, lambda a: a.update(meta_json=np.array(json.dumps(meta))))
    with pytest.raises(CheckpointError, match=r"m\.npz: .*" + match):
        load(saved, expect={"dataset": "mnist"})



def test_deeply_nested_metadata_is_a_checkpoint_error(saved):
    _rewrite(saved, lambda a: a.update(meta_json=np.array("[" * 100000)))
    with pytest.raises(CheckpointError, match="metadata is not valid JSON .*RecursionError"):
        load(saved)
