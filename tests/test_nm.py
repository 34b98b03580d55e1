"""The N:M format against its definition: round trips, tails, padding slots, refusals, checks."""
import re
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsenet.model import Layer
from sparsenet.nm import NM
from sparsenet.prune import nm_prune


def nm_matrix(shape, n, m, seed=0, zero_frac=0.3):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape).astype(np.float32)
    W[rng.random(shape) < zero_frac] = 0                     # some groups hold fewer than n
    return nm_prune((Layer(W, None),), n, m, prune_output=True)[0].weight


@settings(max_examples=80, deadline=None)
@given(M=st.integers(1, 9), N=st.integers(1, 17), nm=st.integers(1, 8).flatmap(
    lambda m: st.tuples(st.integers(1, m), st.just(m))), seed=st.integers(0, 1000))
def test_round_trip(M, N, nm, seed):
    n, m = nm
    W = nm_matrix((M, N), n, m, seed)
    a = NM.from_dense(W, n, m).check()
    G = -(-N // m)
    assert a.values.shape == a.idx.shape == (M, G * n) and a.idx.dtype == np.uint8
    np.testing.assert_array_equal(a.to_dense(), W)
    cols = a.columns()
    assert (cols < N).all()                                  # tails never index past n_in
    filled = a.values != 0                                   # padding slots: value 0
    np.testing.assert_array_equal(a.values[filled], np.take_along_axis(W, cols, axis=1)[filled])
    assert int(filled.sum()) == np.count_nonzero(W)


def test_slots_in_column_order_and_padding():
    W = np.array([[0, 3, 0, 4, 5, 0, 0, 0, 0, 7]], np.float32)   # 2:4, tail of 2 columns
    a = NM.from_dense(W, 2, 4).check()
    np.testing.assert_array_equal(a.values, [[3, 4, 5, 0, 7, 0]])
    np.testing.assert_array_equal(a.idx, [[1, 3, 0, 0, 1, 0]])
    np.testing.assert_array_equal(a.columns(), [[1, 3, 4, 4, 9, 8]])


def test_refuses_more_than_n_per_group():
    W = np.ones((3, 9), np.float32)
    W[:2] = nm_matrix((2, 9), 2, 4)
    with pytest.raises(ValueError, match=re.escape("not 2:4 sparse: row 2 holds 4 non-zeros in columns 0..3 "
                                                   "(at most 2 per group of 4); prune it with "
                                                   "prune.nm_prune(params, 2, 4) first")):
        NM.from_dense(W, 2, 4)
    W[2] = 0
    W[2, 8] = 1
    np.testing.assert_array_equal(NM.from_dense(W, 2, 4).check().to_dense(), W)


def test_tail_group_refusal_names_its_columns():
    W = np.zeros((1, 7), np.float32)
    W[0, 4:] = 1                                             # tail of 3 holds 3 > 2
    with pytest.raises(ValueError, match=re.escape("row 0 holds 3 non-zeros in columns 4..6")):
        NM.from_dense(W, 2, 4)


def test_all_zero():
    a = NM.from_dense(np.zeros((4, 6), np.float32), 1, 4).check()
    assert not a.values.any() and not a.to_dense().any()


def test_check_messages():
    good = NM.from_dense(nm_matrix((3, 7), 2, 4), 2, 4)
    idx = good.idx.copy()
    idx[1, 2] = 3                                            # tail group of 3 columns: index 3 too big
    dup = good.idx.copy()
    v = good.values.copy()
    v[0, :2] = 1.0
    dup[0, :2] = 1
    cases = [
        (replace(good, values=good.values.astype(np.float64)), "values must be float32, got float64"),
        (replace(good, idx=good.idx.astype(np.int32)), "idx must be uint8, got int32"),
        (replace(good, idx=good.idx[:, :3].copy()), "idx must be a C-contiguous array of shape (3, 4), got (3, 3)"),
        (replace(good, idx=idx), "row 1, slot 2: in-group index 3 >= group width 3"),
        (replace(good, values=v, idx=dup), "row 0, slot 1: column 1 stored twice"),
        (replace(good, m=300), "m must be at most 256 (in-group indices are uint8), got 300"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            bad.check()


def test_max_group_nnz_is_the_smallest_n_that_stores_the_matrix():
    from sparsenet.nm import max_group_nnz
    W = np.zeros((3, 10), np.float32)                 # groups of 4: columns 0-3, 4-7 and the tail 8-9
    assert max_group_nnz(W, 4) == 0 and max_group_nnz(np.zeros((0, 5)), 4) == 0
    W[1, [4, 6, 7]] = 1.0
    W[2, [8, 9]] = -2.0
    assert max_group_nnz(W, 4) == 3 and max_group_nnz(W, 2) == 2 and max_group_nnz(W, 10) == 3   # one group per row
    NM.from_dense(W, 3, 4)                            # stores at n = max_group_nnz
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        NM.from_dense(W, 2, 4)
    with pytest.raises(ValueError, match="2-d"):
        max_group_nnz(np.zeros(4), 4)
