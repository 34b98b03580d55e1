"""The BSR format against its definition and scipy.sparse.bsr_array: round trips, edge blocks, checks."""
import re
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from sparsenet.bsr import BSR
from sparsenet.prune import block_prune
from sparsenet.model import he_init


def sparse_matrix(shape, density, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape).astype(np.float32)
    W[rng.random(shape) > density] = 0
    return W


@settings(max_examples=80, deadline=None)
@given(M=st.integers(1, 11), N=st.integers(1, 11), r=st.integers(1, 4), c=st.integers(1, 4),
       density=st.floats(0, 1), seed=st.integers(0, 1000))
def test_round_trip_and_scipy(M, N, r, c, density, seed):
    W = sparse_matrix((M, N), density, seed)
    b = BSR.from_dense(W, (r, c)).check()
    np.testing.assert_array_equal(b.to_dense(), W)
    assert b.block == (r, c) and b.grid == (-(-M // r), -(-N // c))
    S = b.to_scipy()
    assert isinstance(S, sp.bsr_array) and S.blocksize == (r, c)
    assert S.shape == (b.grid[0] * r, b.grid[1] * c)
    np.testing.assert_array_equal(S.toarray()[:M, :N], W)
    assert not S.toarray()[M:].any() and not S.toarray()[:, N:].any()
    # stored blocks are exactly the non-zero ones
    Rb, Cb = b.grid
    P = np.zeros((Rb * r, Cb * c), np.float32)
    P[:M, :N] = W
    assert b.nblocks == int(np.any(P.reshape(Rb, r, Cb, c) != 0, axis=(1, 3)).sum())
    assert b.nnz == b.nblocks * r * c


def test_whole_blocks_are_stored_with_their_zeros():
    W = np.zeros((4, 4), np.float32)
    W[0, 1] = 1.0
    W[3, 3] = 2.0
    b = BSR.from_dense(W, (2, 2)).check()
    assert b.nblocks == 2
    np.testing.assert_array_equal(b.data, [[[0, 1], [0, 0]], [[0, 0], [0, 2]]])
    np.testing.assert_array_equal(b.indices, [0, 1])
    np.testing.assert_array_equal(b.indptr, [0, 1, 2])


def test_all_zero_and_block_pruned():
    b = BSR.from_dense(np.zeros((5, 7), np.float32), (2, 4)).check()
    assert b.nblocks == 0 and b.indptr.tolist() == [0, 0, 0, 0]
    assert not b.to_dense().any() and b.to_dense().shape == (5, 7)
    params = block_prune(he_init((30, 26, 10)), 0.9, (4, 2))
    w = params[0].weight
    b = BSR.from_dense(w, (4, 2)).check()
    assert b.nblocks == round(0.1 * 7 * 15)                    # kept blocks: 1 - round(0.9 * 105)
    np.testing.assert_array_equal(b.to_dense(), w)


def test_check_messages():
    good = BSR.from_dense(sparse_matrix((6, 8), 0.5), (2, 4))
    cases = [
        (replace(good, data=good.data.astype(np.float64)), "data must be float32, got float64"),
        (replace(good, indices=good.indices.astype(np.int64)), "indices must be uint16 for 2 block columns, got int64"),
        (replace(good, indptr=good.indptr[:-1]), "len(indptr) must be block rows + 1 = 4, got 3"),
        (replace(good, indices=np.full_like(good.indices, 2)), "block column index 2 out of range for 2 block columns"),
        (replace(good, shape=(6, 7)), "edge blocks hold non-zeros outside the shape (6, 7)"),
        (replace(good, shape=(6, -1)), "shape must be a pair of non-negative ints, got (6, -1)"),
        (replace(good, indptr=np.array([0, good.nblocks, 1, good.nblocks], np.int32)), "indptr must be non-decreasing"),
        (replace(good, indptr=np.array([1, 1, 1, good.nblocks], np.int32)), "indptr[0] must be 0, got 1"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            bad.check()


def test_from_dense_rejects_bad_input():
    with pytest.raises(ValueError, match=r"^expected a 2-d matrix, got shape \(3,\)$"):
        BSR.from_dense(np.ones(3), (1, 1))
    with pytest.raises(ValueError, match=r"^block rows r must be a positive integer, got 0$"):
        BSR.from_dense(np.ones((3, 3)), (0, 1))
