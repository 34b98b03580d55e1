"""The CSR type against its definition and against scipy.sparse (the oracle)."""
import dataclasses
import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from sparsenet.csr import CSR, index_dtype, indptr_dtype, scipy_index_dtype


def sparse_matrix(M, N, density, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((M, N)).astype(np.float32)
    W[rng.random((M, N)) >= density] = 0
    return W


@st.composite
def matrices(draw):
    M = draw(st.integers(0, 40))
    N = draw(st.integers(0, 40))
    density = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 0.9, 1.0]))
    return sparse_matrix(M, N, density, seed=draw(st.integers(0, 2**16)))


@settings(max_examples=60, deadline=None)
@given(matrices())
def test_dense_round_trip_and_scipy_agree(W):
    c = CSR.from_dense(W).check()
    np.testing.assert_array_equal(c.to_dense(), W)
    S = sp.csr_matrix(W)                                   # scipy also drops exact zeros
    assert c.nnz == S.nnz == np.count_nonzero(W)
    np.testing.assert_array_equal(c.data, S.data)
    np.testing.assert_array_equal(c.indices, S.indices)
    np.testing.assert_array_equal(c.indptr, S.indptr)
    np.testing.assert_array_equal(c.to_scipy().toarray(), W)
    c2 = CSR.from_scipy(S).check()
    np.testing.assert_array_equal(c2.to_dense(), W)
    assert c.density == (np.count_nonzero(W) / W.size if W.size else 0.0)


def test_dtypes_and_sizes():
    c = CSR.from_dense(sparse_matrix(30, 20, 0.3))
    assert c.data.dtype == np.float32 and c.indices.dtype == np.uint16 and c.indptr.dtype == np.int32
    assert c.nbytes == c.nnz * (4 + 2) + 31 * 4
    assert c.shape == (30, 20) and all(type(s) is int for s in c.shape)


def test_index_dtype_switches_at_uint16_boundary():
    assert index_dtype(1) == np.uint16
    assert index_dtype(65535) == np.uint16
    assert index_dtype(65536) == np.uint32
    assert index_dtype(2**32 - 1) == np.uint32
    assert index_dtype(2**32) == np.uint64
    assert indptr_dtype(2**31 - 1) == np.int32 and indptr_dtype(2**31) == np.int64


@pytest.mark.parametrize("N, dtype", [(65535, np.uint16), (65536, np.uint32)])
def test_wide_matrix_keeps_last_column(N, dtype):
    W = np.zeros((2, N), np.float32)
    W[0, N - 1] = 3.0
    W[1, 0] = -1.0
    c = CSR.from_dense(W).check()
    assert c.indices.dtype == dtype and list(c.indices) == [N - 1, 0]
    np.testing.assert_array_equal(c.to_dense(), W)
    np.testing.assert_array_equal(c.to_scipy().toarray(), W)


def test_edge_matrices():
    for W in (np.zeros((5, 7), np.float32), np.zeros((0, 3), np.float32), np.zeros((3, 0), np.float32)):
        c = CSR.from_dense(W).check()
        assert c.nnz == 0 and c.indptr.size == W.shape[0] + 1
        np.testing.assert_array_equal(c.to_dense(), W)
    W = np.zeros((4, 4), np.float32)
    W[2, 1] = 5.0                                           # a single non-zero; rows 0, 1, 3 empty
    c = CSR.from_dense(W).check()
    assert list(c.indptr) == [0, 0, 0, 1, 1] and c.nnz == 1


def test_from_scipy_drops_explicit_zeros_and_sums_duplicates():
    S = sp.csr_matrix((np.array([1.0, 0.0, 2.0, 3.0]), np.array([0, 1, 2, 2]), np.array([0, 2, 4])),
                      shape=(2, 3))
    c = CSR.from_scipy(S).check()
    assert c.nnz == 2
    np.testing.assert_array_equal(c.to_dense(), [[1, 0, 0], [0, 0, 5]])
    c2 = CSR.from_scipy(sp.coo_matrix(c.to_dense())).check()
    np.testing.assert_array_equal(c2.to_dense(), c.to_dense())


def test_from_dense_rejects_non_matrix():
    for W in (np.zeros(3), np.zeros((2, 2, 2)), 5.0):
        with pytest.raises(ValueError, match=f"^{re.escape(f'expected a 2-d matrix, got shape {np.shape(W)}')}$"):
            CSR.from_dense(W)


@pytest.mark.parametrize("change, message", [
    (dict(indptr=np.array([0, 1, 3], np.int32)), "len(indptr) must be M + 1 = 4, got 3"),
    (dict(indptr=np.array([1, 2, 3, 3], np.int32)), "indptr[0] must be 0, got 1"),
    (dict(indptr=np.array([0, 2, 1, 3], np.int32)), "indptr must be non-decreasing"),
    (dict(indptr=np.array([0, 1, 2, 4], np.int32)), "nnz mismatch: indptr[-1] = 4, len(data) = 3"),
    (dict(indices=np.array([0, 1, 9], np.uint16)), "column index 9 out of range for N=4"),
    (dict(indices=np.array([0, 4, 1], np.uint16)), "column index 4 out of range for N=4"),   # = N
    (dict(indices=np.array([0, 1, 2], np.int32)), "indices must be uint16 for N=4, got int32"),
    (dict(data=np.array([1, 2, 3], np.float64)), "data must be float32, got float64"),
    (dict(indptr=np.array([0, 1, 2, 3], np.uint8)), "indptr must be int32 or int64, got uint8"),
    (dict(data=np.array([1, 2], np.float32)), "data and indices differ in length: 2 vs 3"),
    (dict(shape=(3, -1)), "shape must be a pair of non-negative ints, got (3, -1)"),
    (dict(shape=(3, 4.0)), "shape must be a pair of non-negative ints, got (3, 4.0)"),
    (dict(shape=[3, 4]), "shape must be a pair of non-negative ints, got [3, 4]"),
    (dict(shape=(3, 4, 1)), "shape must be a pair of non-negative ints, got (3, 4, 1)"),
])
def test_check_rejects_broken_invariants(change, message):
    good = CSR(np.array([1, 2, 3], np.float32), np.array([0, 1, 2], np.uint16),
               np.array([0, 1, 2, 3], np.int32), (3, 4)).check()
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        dataclasses.replace(good, **change).check()


def test_frozen():
    c = CSR.from_dense(np.eye(3, dtype=np.float32))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.shape = (1, 1)


# --- issue 10: from_scipy never modifies its input ------------------------------------------

def _messy_csr(kind):
    """Duplicates, an explicit zero and unsorted columns: everything from_scipy has to clean up."""
    data = np.array([1.0, 0.0, 2.0, 3.0, 4.0])
    indices = np.array([2, 1, 0, 0, 1])
    indptr = np.array([0, 2, 5])
    return kind((data, indices, indptr), shape=(2, 3))


def _snapshot(S):
    arrays = {name: getattr(S, name).copy() for name in ("data", "indices", "indptr", "row", "col")
              if hasattr(S, name)}
    return arrays, S.nnz, getattr(S, "has_canonical_format", None), getattr(S, "has_sorted_indices", None)


@pytest.mark.parametrize("make", [
    lambda: _messy_csr(sp.csr_matrix),
    lambda: _messy_csr(sp.csr_array),
    lambda: _messy_csr(sp.csr_matrix).tocsc(),
    lambda: sp.coo_matrix((np.array([1.0, 0.0, 2.0, 3.0]), (np.array([1, 0, 1, 1]), np.array([2, 1, 0, 0]))),
                          shape=(2, 3)),
], ids=["csr_matrix", "csr_array", "csc_matrix", "coo_matrix"])
def test_from_scipy_never_modifies_its_input(make):
    S = make()
    arrays, nnz, canonical, sorted_ = _snapshot(S)
    c = CSR.from_scipy(S).check()
    np.testing.assert_array_equal(c.to_dense(), make().toarray())
    after_arrays, after_nnz, after_canonical, after_sorted = _snapshot(S)
    assert after_nnz == nnz and after_canonical == canonical and after_sorted == sorted_
    assert after_arrays.keys() == arrays.keys()
    for name, before in arrays.items():
        np.testing.assert_array_equal(after_arrays[name], before, err_msg=name)
        for out in (c.data, c.indices, c.indptr):
            assert not np.shares_memory(out, getattr(S, name))


# --- issue 10: dtype contracts, the 1-d contiguity check ----------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.float32])
def test_float32_out_of_from_dense_from_scipy_and_to_dense(dtype):
    W = (sparse_matrix(6, 5, 0.5) * 4).astype(dtype)
    for c in (CSR.from_dense(W), CSR.from_scipy(sp.csr_matrix(W))):
        c.check()
        assert c.data.dtype == np.float32 and c.data.flags.c_contiguous
        dense = c.to_dense()
        assert dense.dtype == np.float32 and dense.shape == W.shape
        np.testing.assert_array_equal(dense, W.astype(np.float32))


def test_to_scipy_index_dtypes():
    S = CSR.from_dense(sparse_matrix(7, 9, 0.4)).to_scipy()
    assert S.indices.dtype == np.int32 and S.indptr.dtype == np.int32 and S.data.dtype == np.float32
    assert scipy_index_dtype(2**31 - 1, 2**31 - 1) == np.int32
    assert scipy_index_dtype(2**31, 0) == np.int64
    assert scipy_index_dtype(0, 2**31) == np.int64
    assert scipy_index_dtype(2**31 - 1, 2**31) == np.int64
    # a matrix wider than int32 (empty, so cheap): scipy gets int64 indices
    wide = CSR(np.zeros(0, np.float32), np.zeros(0, np.uint32), np.zeros(2, np.int32), (1, 2**31)).check()
    S = wide.to_scipy()
    assert S.shape == (1, 2**31) and S.indices.dtype == np.int64 and S.indptr.dtype == np.int64


def test_index_dtype_follows_columns_when_only_a_hidden_layer_is_wide():
    # a net 10 -> 70000 -> 3: the first matrix has 70000 rows but 10 columns (uint16 indices), the
    # second 70000 columns (uint32); the row count never widens the index type
    rng = np.random.default_rng(4)
    W0 = np.zeros((70000, 10), np.float32)
    W0[rng.integers(0, 70000, 50), rng.integers(0, 10, 50)] = 1.0
    W1 = np.zeros((3, 70000), np.float32)
    W1[[0, 1, 2], [0, 65536, 69999]] = [1.0, 2.0, 3.0]
    for make in (CSR.from_dense, lambda W: CSR.from_scipy(sp.csr_matrix(W))):
        c0, c1 = make(W0).check(), make(W1).check()
        assert c0.indices.dtype == np.uint16 and c1.indices.dtype == np.uint32
        assert list(c1.indices) == [0, 65536, 69999]
        np.testing.assert_array_equal(c1.to_dense(), W1)
        np.testing.assert_array_equal(c0.to_dense(), W0)


@pytest.mark.parametrize("name", ["data", "indices", "indptr"])
@pytest.mark.parametrize("broken", ["strided", "2-d", "list"])
def test_check_rejects_arrays_not_1d_contiguous(name, broken):
    good = CSR(np.array([1, 2, 3], np.float32), np.array([0, 1, 2], np.uint16),
               np.array([0, 1, 2, 3], np.int32), (3, 4)).check()
    arr = getattr(good, name)
    if broken == "strided":
        bad = np.repeat(arr, 2)[::2]                   # same values, 1-d, not contiguous
        assert bad.ndim == 1 and not bad.flags.c_contiguous
    elif broken == "2-d":
        bad = arr[None, :].copy()                      # contiguous but 2-d
    else:
        bad = arr.tolist()
    with pytest.raises(ValueError, match=f"^{name} must be a 1-d C-contiguous ndarray$"):
        dataclasses.replace(good, **{name: bad}).check()
