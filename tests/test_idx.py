"""Tests for sparsenet.idx: IDX parsing and writing, header checks, the gzip size cap."""
import gzip
import re
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fixture_data import tiny_arrays
from sparsenet import idx
from sparsenet.idx import DataError


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_idx_round_trip(tmp_path, gz):
    for a in tiny_arrays():
        path = idx.write_idx(tmp_path / "f", a, gzip=gz)
        assert path.read_bytes().startswith(b"\x1f\x8b") == gz
        back = idx.read_idx(path)
        assert back.dtype == np.uint8 and back.flags.writeable
        np.testing.assert_array_equal(back, a)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=4), st.integers(0, 2**32 - 1))
def test_idx_round_trip_any_shape(shape, seed):
    a = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(idx.parse_idx(idx.idx_bytes(a)), a)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_parse_idx_garbage_gives_data_error_only(raw):
    try:
        idx.parse_idx(raw, "garbage")
    except DataError as exc:
        assert str(exc).startswith("garbage: ")


def test_write_idx_refuses_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        idx.write_idx(tmp_path / "f", np.zeros(3, np.int64))


def test_read_idx_names_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.*cannot read"):
        idx.read_idx(tmp_path / "nope")


def test_idx_with_more_dimensions_than_numpy_holds_names_the_file():
    raw = bytes([0, 0, 8, 255]) + np.ones(255, ">u4").tobytes() + b"x"  # 255 dimensions of size 1
    with pytest.raises(DataError, match=r"^f\.idx: header declares 255 dimensions; numpy cannot hold them"):
        idx.parse_idx(raw, "f.idx")


def test_gzip_bomb_stops_at_the_size_the_header_implies(tmp_path):
    raw = idx.idx_bytes(np.zeros((5, 28, 28), np.uint8))  # 16 + 3920 bytes
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(raw + bytes(32 << 20), mtime=0))  # 32 MiB of zeros in ~32 KB
    bomb = rf"^{re.escape(str(path))}: gzip data decompresses to more than the 3936 bytes its IDX header \(5, 28, 28\)"
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=bomb):
            idx.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # decompression stopped early instead of inflating all 32 MiB


def test_gzip_with_several_members_reads_whole(tmp_path):
    a = tiny_arrays()[0]
    raw = idx.idx_bytes(a)
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(raw[:10]) + gzip.compress(raw[10:]) + bytes(8))  # zero padding is allowed
    np.testing.assert_array_equal(idx.read_idx(path), a)
    path.write_bytes(gzip.compress(raw) + b"junk")
    with pytest.raises(DataError, match=r"f\.gz: bad gzip data"):
        idx.read_idx(path)
