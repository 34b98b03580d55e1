"""Bitmap rows (bitmap.py): exact round trips, sizes, and a check that catches broken arrays."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings

from sparsenet.bitmap import GROUP, ROWS, Bitmap, layer_groups, layer_nbytes
from test_csr import matrices, sparse_matrix


@settings(max_examples=60, deadline=None)
@given(matrices())
def test_round_trip_is_exact(W):
    if 0 in W.shape:
        W = np.zeros((3, 5), np.float32)
    b = Bitmap.from_dense(W).check()
    np.testing.assert_array_equal(b.to_dense(), W)
    assert b.nnz == np.count_nonzero(W)
    assert b.n_rows % ROWS == 0 and b.n_rows >= W.shape[0] and b.n_groups * GROUP >= W.shape[1]
    assert b.nbytes == layer_nbytes(W.shape, b.nnz) and b.masks.size == layer_groups(W.shape)


def test_layout_of_a_small_matrix():
    W = np.zeros((2, 20), np.float32)
    W[0, [1, 17]] = [3, 4]
    W[1, 15] = 5
    b = Bitmap.from_dense(W).check()
    assert (b.n_rows, b.n_groups) == (16, 2)
    np.testing.assert_array_equal(b.values, [3, 4, 5] + [0] * GROUP)       # row by row, GROUP zeros after
    assert list(b.masks[:4]) == [1 << 1, 1 << 1, 1 << 15, 0] and not b.masks[4:].any()
    assert list(b.rptr[:4]) == [0, 2, 3, 3] and b.rptr[-1] == 3


def test_all_zero_and_dense_tails():
    for W in (np.zeros((17, 33), np.float32), sparse_matrix(17, 33, 1.0, seed=3)):
        b = Bitmap.from_dense(W).check()
        np.testing.assert_array_equal(b.to_dense(), W)
        assert b.nnz == np.count_nonzero(W)


def test_input_untouched_and_rejects_other_shapes():
    W = sparse_matrix(20, 30, 0.5)
    before = W.copy()
    Bitmap.from_dense(W)
    np.testing.assert_array_equal(W, before)
    with pytest.raises(ValueError, match="2-d"):
        Bitmap.from_dense(np.ones(4, np.float32))


@pytest.mark.parametrize("breakage, message", [
    (lambda b: dict(rptr=b.rptr[:-1]), "rptr must be int64"),
    (lambda b: dict(rptr=b.rptr[::-1].copy()), "start at 0"),
    (lambda b: dict(masks=b.masks.astype(np.int32)), "masks must be uint16"),
    (lambda b: dict(masks=b.masks ^ np.uint16(1)), "another number of non-zeros"),
    (lambda b: dict(values=b.values[:-1]), "values must be float32"),
    (lambda b: dict(values=np.concatenate([b.values[:-1], [1.0]]).astype(np.float32)), "end in 16 zeros"),
])
def test_check_catches(breakage, message):
    b = Bitmap.from_dense(sparse_matrix(20, 30, 0.5))
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(b, **breakage(b)).check()


def test_check_catches_columns_and_rows_outside():
    b = Bitmap.from_dense(np.ones((3, 20), np.float32))
    wide = dataclasses.replace(b, shape=(3, 18))                         # the last group's bits 2, 3 set
    with pytest.raises(ValueError, match="beyond the 18 columns"):
        wide.check()
    tall = Bitmap.from_dense(np.ones((5, 16), np.float32))
    with pytest.raises(ValueError, match="beyond the 3 rows"):
        dataclasses.replace(tall, shape=(3, 16)).check()
