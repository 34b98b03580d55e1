"""Tests for sparsenet.cache: the cache folder, atomic writes, and what sparsenet may delete there.

Nothing here touches the network: the fixture no_data_sources (conftest.py) replaces the download
and pip steps in every test.
"""
import hashlib
import os
import re
from pathlib import Path

import pytest

from fixture_data import assert_equal, tiny_arrays, write_cache, write_folder
from sparsenet import cache, data, offline
from sparsenet.data import FILES, DataError

pytestmark = pytest.mark.usefixtures("no_data_sources")


def test_cache_used(tmp_path, tiny_data, monkeypatch):
    write_folder(tmp_path / "xdg" / "sparsenet" / "tiny", tiny_data)
    dataset = data.load("tiny", progress=False)
    assert_equal(dataset, tiny_data)
    assert dataset.source.startswith(f"cache {tmp_path / 'xdg' / 'sparsenet' / 'tiny'}")
    monkeypatch.setenv("SPARSENET_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache.cache_root() == tmp_path / "elsewhere"
    assert cache.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_cached_file_with_bad_checksum_is_fetched_again(tmp_path, debian, tiny_data):
    folder = write_cache(tmp_path / "cache" / "tiny", tiny_data)
    bad = folder / FILES[0]
    raw = bytearray(bad.read_bytes())
    raw[-1] ^= 0xFF  # still a valid IDX file, but not the registered one
    bad.write_bytes(bytes(raw))
    dataset = data.load("tiny", cache_dir=tmp_path / "cache", progress=False)
    assert_equal(dataset, tiny_data)
    assert dataset.source.startswith("offline copy") and f"cached in {folder}" in dataset.source
    assert hashlib.md5(bad.read_bytes()).hexdigest() == data.DATASETS["tiny"].md5[FILES[0]]
    again = data.load("tiny", cache_dir=tmp_path / "cache", progress=False)
    assert again.source.startswith("cache") and "filled from offline copy" in again.source


def test_interrupted_cache_write_leaves_no_valid_looking_file(tmp_path, debian, tiny_data, monkeypatch):
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
        cache.from_cache(folder, data.DATASETS["tiny"])
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)  # fetched again, whole
    assert_equal(dataset, tiny_data)
    assert dataset.source.startswith("offline copy")


def test_truncated_cache_file_is_deleted(tmp_path, tiny_data):
    folder = write_cache(tmp_path / "c" / "tiny", tiny_data)
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
def test_unreadable_cache_folder_falls_through(tmp_path, debian, tiny_data, monkeypatch, capsys, where):
    folder = write_cache(tmp_path / "c" / "tiny", tiny_data)
    _deny(monkeypatch, "stat", (lambda p: p.parent == folder) if where == "inside" else (lambda p: p == folder))
    dataset = data.load("tiny", cache_dir=tmp_path / "c")
    assert_equal(dataset, tiny_data)
    assert dataset.source.startswith("offline copy")
    assert re.search(rf"tiny: cache {re.escape(str(folder))}: .*cannot read \(Permission denied\)",
                     capsys.readouterr().err)


def test_unreadable_cache_folder_is_listed_among_sources_tried(tmp_path, tiny_data, monkeypatch):
    folder = write_cache(tmp_path / "c" / "tiny", tiny_data)
    _deny(monkeypatch, "stat", lambda p: p.parent == folder)
    tried = rf"- cache {re.escape(str(folder))}: {re.escape(str(folder / FILES[0]))}: cannot read \(Permission denied\)"
    with pytest.raises(DataError, match=tried):
        data.load("tiny", cache_dir=tmp_path / "c", progress=False)


def test_unreadable_cache_file_is_called_unreadable_and_kept(tmp_path, tiny_data, monkeypatch):
    folder = write_cache(tmp_path / "c" / "tiny", tiny_data)
    _deny(monkeypatch, "read_bytes", lambda p: p == folder / FILES[1])
    unreadable = r"train-labels-idx1-ubyte is unreadable \(left in place\): .*cannot read \(Permission denied\)"
    with pytest.raises(DataError, match=unreadable):
        data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert (folder / FILES[1]).exists()


def test_foreign_files_in_the_cache_are_left_alone(tmp_path, tiny_data, monkeypatch):
    folder = write_folder(tmp_path / "c" / "tiny", tiny_arrays(seed=4))  # the user's own files, no marker
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    left = "train-images-idx3-ubyte differs from the official md5 and was left alone"
    with pytest.raises(DataError, match=left):
        data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.setattr(offline, "DEBIAN_FASHION_DIR", write_folder(tmp_path / "debian", tiny_data, gz=True))
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert_equal(dataset, tiny_data)  # loaded from the offline copy, but not written over the user's files
    assert re.search(r"not cached \(.* holds files sparsenet did not write: .*; left alone\)", dataset.source)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_foreign_gzipped_files_in_the_cache_are_not_shadowed(tmp_path, debian, tiny_data):
    folder = write_folder(tmp_path / "c" / "tiny", tiny_arrays(seed=4), gz=True)  # the user's own
    names = sorted(p.name for p in folder.iterdir())
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert_equal(dataset, tiny_data)
    assert re.search(r"not cached \(.* did not write: train-images-idx3-ubyte\.gz, .*; left alone\)", dataset.source)
    assert sorted(p.name for p in folder.iterdir()) == names  # no official raw files put in front of them


@pytest.mark.parametrize("below", [(), ("sub",)], ids=["file", "parent-is-file"])
def test_cache_dir_that_is_a_file_is_one_clear_error(tmp_path, tiny_data, monkeypatch, below):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    path = blocker.joinpath(*below)
    monkeypatch.setenv("SPARSENET_CACHE_DIR", str(path))
    clear = rf"^SPARSENET_CACHE_DIR={re.escape(str(path))}: {re.escape(str(blocker))} is not a folder$"
    with pytest.raises(DataError, match=clear):
        cache.cache_root()
    with pytest.raises(DataError, match=clear):
        data.load("tiny", progress=False)
    with pytest.raises(DataError, match=rf"^cache folder {re.escape(str(path))}: .* is not a folder$"):
        cache.cache_root(path)


def test_unwritable_cache_keeps_the_loaded_data(tmp_path, debian, tiny_data, monkeypatch):
    def denied(path, payload):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache, "atomic_write_bytes", denied)
    dataset = data.load("tiny", cache_dir=tmp_path / "c", progress=False)
    assert_equal(dataset, tiny_data)
    assert dataset.source.endswith(f"not cached ({tmp_path / 'c' / 'tiny'}: Permission denied)")
