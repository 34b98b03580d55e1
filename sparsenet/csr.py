"""The CSR format: data, indices, indptr, shape (scipy's vocabulary and order), conversions, checks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_INT32_MAX = np.iinfo(np.int32).max


def index_dtype(n_cols: int) -> np.dtype:
    """Narrowest unsigned dtype that holds n_cols itself (so uint16 up to N = 65535, then uint32)."""
    if n_cols <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if n_cols <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    return np.dtype(np.uint64)


def indptr_dtype(nnz: int) -> np.dtype:
    """int32 unless nnz needs more (scipy's rule)."""
    return np.dtype(np.int32) if nnz <= _INT32_MAX else np.dtype(np.int64)


def scipy_index_dtype(n_cols: int, nnz: int) -> np.dtype:
    """The dtype to_scipy gives indices and indptr: int32 while both N and nnz fit it, else int64."""
    return np.dtype(np.int32) if n_cols <= _INT32_MAX and nnz <= _INT32_MAX else np.dtype(np.int64)


@dataclass(frozen=True, eq=False)
class CSR:
    """Compressed sparse rows: row i holds data[indptr[i]:indptr[i+1]] at columns indices[...]."""

    data: np.ndarray      # (nnz,) float32
    indices: np.ndarray   # (nnz,) column of each value, index_dtype(N)
    indptr: np.ndarray    # (M + 1,) int32 (int64 when nnz > 2**31 - 1)
    shape: tuple          # (M, N)

    @classmethod
    def from_dense(cls, W: np.ndarray) -> "CSR":
        """Keep the non-zeros of a 2-d array (exact zeros are dropped), row-major order."""
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(f"expected a 2-d matrix, got shape {W.shape}")
        M, N = W.shape
        rows, cols = np.nonzero(W)                        # row-major, columns sorted per row
        counts = np.bincount(rows, minlength=M)
        indptr = np.zeros(M + 1, indptr_dtype(rows.size))
        np.cumsum(counts, out=indptr[1:])
        return cls(np.ascontiguousarray(W[rows, cols], np.float32),
                   cols.astype(index_dtype(N)), indptr, (int(M), int(N)))

    @classmethod
    def from_scipy(cls, S) -> "CSR":
        """From any scipy.sparse matrix/array; explicit zeros are dropped, duplicates summed."""
        S = S.tocsr(copy=True)
        S.sum_duplicates()
        S.eliminate_zeros()
        S.sort_indices()
        M, N = S.shape
        return cls(np.ascontiguousarray(S.data, np.float32), S.indices.astype(index_dtype(N)),
                   S.indptr.astype(indptr_dtype(S.nnz)), (int(M), int(N)))

    def to_scipy(self):
        """scipy.sparse.csr_matrix view-free copy (scipy wants int32/int64 indices)."""
        import scipy.sparse as sp
        idx = scipy_index_dtype(self.shape[1], self.nnz)
        return sp.csr_matrix((self.data.copy(), self.indices.astype(idx), self.indptr.astype(idx)),
                             shape=self.shape)

    def to_dense(self) -> np.ndarray:
        """(M, N) float32 array."""
        M, N = self.shape
        W = np.zeros((M, N), np.float32)
        rows = np.repeat(np.arange(M), np.diff(self.indptr))
        W[rows, self.indices] = self.data
        return W

    def check(self) -> "CSR":
        """Raise ValueError unless the invariants of scipy's check_format hold; returns self."""
        if not (isinstance(self.shape, tuple) and len(self.shape) == 2
                and all(isinstance(s, int) and s >= 0 for s in self.shape)):
            raise ValueError(f"shape must be a pair of non-negative ints, got {self.shape!r}")
        M, N = self.shape
        for name, arr in (("data", self.data), ("indices", self.indices), ("indptr", self.indptr)):
            if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not arr.flags.c_contiguous:
                raise ValueError(f"{name} must be a 1-d C-contiguous ndarray")
        if self.data.dtype != np.float32:
            raise ValueError(f"data must be float32, got {self.data.dtype}")
        if self.indices.dtype != index_dtype(N):
            raise ValueError(f"indices must be {index_dtype(N)} for N={N}, got {self.indices.dtype}")
        if self.indptr.dtype not in (np.int32, np.int64):
            raise ValueError(f"indptr must be int32 or int64, got {self.indptr.dtype}")
        if self.indptr.size != M + 1:
            raise ValueError(f"len(indptr) must be M + 1 = {M + 1}, got {self.indptr.size}")
        if self.indptr[0] != 0:
            raise ValueError(f"indptr[0] must be 0, got {self.indptr[0]}")
        if np.any(np.diff(self.indptr) < 0):
            raise ValueError("indptr must be non-decreasing")
        if self.data.size != self.indices.size:
            raise ValueError(f"data and indices differ in length: {self.data.size} vs {self.indices.size}")
        if self.indptr[-1] != self.data.size:
            raise ValueError(f"nnz mismatch: indptr[-1] = {self.indptr[-1]}, len(data) = {self.data.size}")
        if self.indices.size and int(self.indices.max()) >= N:
            raise ValueError(f"column index {int(self.indices.max())} out of range for N={N}")
        return self

    @property
    def nnz(self) -> int:
        return int(self.data.size)

    @property
    def density(self) -> float:
        M, N = self.shape
        return self.nnz / (M * N) if M * N else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of data + indices + indptr."""
        return int(self.data.nbytes + self.indices.nbytes + self.indptr.nbytes)
