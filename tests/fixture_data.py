"""Tiny data sets shaped like the official files, for the tests of data, cache and offline (fixtures
in conftest.py: no_data_sources, tiny_data, debian).

Nothing here touches the network: the fixtures replace the download and pip steps.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from sparsenet import cache
from sparsenet.idx import idx_bytes, write_idx
from sparsenet.sources import FILES, DatasetSpec


def tiny_arrays(seed=0, n_train=5, n_test=3):
    """Small images and labels shaped like the official files, in FILES order."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n_train, dtype=np.uint8),
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n_test, dtype=np.uint8))


def raws(arrays):
    """The uncompressed IDX payloads of four arrays, keyed by official file name."""
    return {file: idx_bytes(a) for file, a in zip(FILES, arrays)}


def spec(arrays, offline="debian", urls=("https://a.invalid/", "https://b.invalid/")):
    """A data set spec whose checksums are those of `arrays`."""
    md5 = {file: hashlib.md5(raw).hexdigest() for file, raw in raws(arrays).items()}
    return DatasetSpec(md5=md5, urls=urls, offline=offline, fix="make the tiny files appear")


def write_folder(folder, arrays, gz=False):
    """Write four arrays as the official files into `folder`."""
    for file, a in zip(FILES, arrays):
        write_idx(Path(folder) / (file + (".gz" if gz else "")), a, gzip=gz)
    return Path(folder)


def write_cache(folder, arrays):
    """Four arrays written to a cache folder the way sparsenet fills it (files and marker)."""
    assert cache.store(Path(folder), raws(arrays), "test").startswith("cached in")
    return Path(folder)


def assert_equal(dataset, arrays):
    """The dataset holds `arrays`, flattened to 784 pixels."""
    tri, trl, tei, tel = arrays
    np.testing.assert_array_equal(dataset.train_images, tri.reshape(len(tri), 784))
    np.testing.assert_array_equal(dataset.train_labels, trl)
    np.testing.assert_array_equal(dataset.test_images, tei.reshape(len(tei), 784))
    np.testing.assert_array_equal(dataset.test_labels, tel)
