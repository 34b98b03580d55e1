"""The CSR type against its definition and against scipy.sparse (the oracle)."""
import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from sparsenet.csr import CSR, index_dtype, indptr_dtype


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
    with pytest.raises(ValueError, match="2-d"):
        CSR.from_dense(np.zeros(3))


@pytest.mark.parametrize("change, message", [
    (dict(indptr=np.array([0, 1, 3], np.int32)), "len\\(indptr\\)"),
    (dict(indptr=np.array([1, 2, 3, 3], np.int32)), "indptr\\[0\\]"),
    (dict(indptr=np.array([0, 2, 1, 3], np.int32)), "non-decreasing"),
    (dict(indptr=np.array([0, 1, 2, 2], np.int32)), "nnz mismatch"),
    (dict(indices=np.array([0, 1, 9], np.uint16)), "out of range"),
    (dict(indices=np.array([0, 1, 2], np.int32)), "indices must be uint16"),
    (dict(data=np.array([1, 2, 3], np.float64)), "float32"),
    (dict(indptr=np.array([0, 1, 2, 3], np.uint8)), "int32 or int64"),
    (dict(data=np.array([1, 2], np.float32)), "differ in length"),
    (dict(shape=(3, -1)), "shape"),
])
def test_check_rejects_broken_invariants(change, message):
    good = CSR(np.array([1, 2, 3], np.float32), np.array([0, 1, 2], np.uint16),
               np.array([0, 1, 2, 3], np.int32), (3, 4)).check()
    with pytest.raises(ValueError, match=message):
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
