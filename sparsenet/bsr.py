"""The BSR format (block sparse rows): data (nblocks, r, c), indices, indptr, shape, in scipy's
vocabulary (scipy.sparse.bsr_array), conversions and checks.

Block row i holds the blocks data[indptr[i]:indptr[i+1]], block k at block column indices[k], i.e.
rows i*r:(i+1)*r and columns indices[k]*c:(indices[k]+1)*c of the matrix. A block is stored whole,
zeros inside included. Unlike scipy, the shape need not be a multiple of the block: the block grid
covers the padded shape (ceil(M / r) * r, ceil(N / c) * c) and the entries of edge blocks that fall
outside `shape` are stored as zeros (check enforces it); to_scipy returns the padded matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsenet.csr import index_dtype, indptr_dtype


def check_block(block) -> tuple:
    """A block shape (r, c) of positive ints, or a ValueError."""
    from sparsenet.prune import check_block as check
    return check(block)


@dataclass(frozen=True, eq=False)
class BSR:
    """Block sparse rows: blocks of r x c entries, whole blocks stored."""

    data: np.ndarray      # (nblocks, r, c) float32
    indices: np.ndarray   # (nblocks,) block column of each block, index_dtype(number of block columns)
    indptr: np.ndarray    # (n_block_rows + 1,) int32 (int64 when nblocks > 2**31 - 1)
    shape: tuple          # (M, N), not necessarily multiples of the block

    @classmethod
    def from_dense(cls, W: np.ndarray, block=(1, 4)) -> "BSR":
        """Keep every block of a 2-d array holding a non-zero (whole, its zeros included),
        row-major block order; edge blocks are padded with zeros."""
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(f"expected a 2-d matrix, got shape {W.shape}")
        r, c = check_block(block)
        M, N = W.shape
        Rb, Cb = -(-M // r), -(-N // c)
        padded = np.zeros((Rb * r, Cb * c), np.float32)
        padded[:M, :N] = W
        blocks = padded.reshape(Rb, r, Cb, c).transpose(0, 2, 1, 3)       # (Rb, Cb, r, c)
        keep = np.any(blocks != 0, axis=(2, 3))                            # (Rb, Cb)
        rows, cols = np.nonzero(keep)                                      # row-major
        indptr = np.zeros(Rb + 1, indptr_dtype(rows.size))
        np.cumsum(np.bincount(rows, minlength=Rb), out=indptr[1:])
        return cls(np.ascontiguousarray(blocks[rows, cols], np.float32),
                   cols.astype(index_dtype(Cb)), indptr, (int(M), int(N)))

    @property
    def block(self) -> tuple:
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def grid(self) -> tuple:
        """(block rows, block columns) of the padded shape."""
        r, c = self.block
        return -(-self.shape[0] // r), -(-self.shape[1] // c)

    def to_dense(self) -> np.ndarray:
        """(M, N) float32 array."""
        r, c = self.block
        Rb, Cb = self.grid
        padded = np.zeros((Rb, Cb, r, c), np.float32)
        rows = np.repeat(np.arange(Rb), np.diff(self.indptr))
        padded[rows, self.indices.astype(np.int64)] = self.data
        M, N = self.shape
        return np.ascontiguousarray(padded.transpose(0, 2, 1, 3).reshape(Rb * r, Cb * c)[:M, :N])

    def to_scipy(self):
        """scipy.sparse.bsr_array of the padded shape (ceil(M / r) * r, ceil(N / c) * c): scipy wants
        a shape that is a multiple of the block; the padding rows and columns are zero."""
        import scipy.sparse as sp
        r, c = self.block
        Rb, Cb = self.grid
        idx = np.int32 if max(Cb, self.nblocks) <= np.iinfo(np.int32).max else np.int64
        return sp.bsr_array((self.data.copy(), self.indices.astype(idx), self.indptr.astype(idx)),
                            shape=(Rb * r, Cb * c), blocksize=(r, c))

    def check(self) -> "BSR":
        """Raise ValueError unless the invariants of scipy's check_format hold (and the padding of edge
        blocks is zero); returns self."""
        if not (isinstance(self.shape, tuple) and len(self.shape) == 2
                and all(isinstance(s, int) and s >= 0 for s in self.shape)):
            raise ValueError(f"shape must be a pair of non-negative ints, got {self.shape!r}")
        if not isinstance(self.data, np.ndarray) or self.data.ndim != 3 or not self.data.flags.c_contiguous:
            raise ValueError("data must be a 3-d (nblocks, r, c) C-contiguous ndarray")
        if self.data.dtype != np.float32:
            raise ValueError(f"data must be float32, got {self.data.dtype}")
        r, c = self.block
        if r < 1 or c < 1:
            raise ValueError(f"block shape must be positive, got {(r, c)}")
        for name, arr in (("indices", self.indices), ("indptr", self.indptr)):
            if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not arr.flags.c_contiguous:
                raise ValueError(f"{name} must be a 1-d C-contiguous ndarray")
        Rb, Cb = self.grid
        if self.indices.dtype != index_dtype(Cb):
            raise ValueError(f"indices must be {index_dtype(Cb)} for {Cb} block columns, got {self.indices.dtype}")
        if self.indptr.dtype not in (np.int32, np.int64):
            raise ValueError(f"indptr must be int32 or int64, got {self.indptr.dtype}")
        if self.indptr.size != Rb + 1:
            raise ValueError(f"len(indptr) must be block rows + 1 = {Rb + 1}, got {self.indptr.size}")
        if self.indptr[0] != 0:
            raise ValueError(f"indptr[0] must be 0, got {self.indptr[0]}")
        if np.any(np.diff(self.indptr) < 0):
            raise ValueError("indptr must be non-decreasing")
        if self.indptr[-1] != self.nblocks or self.indices.size != self.nblocks:
            raise ValueError(f"block count mismatch: indptr[-1] = {self.indptr[-1]}, "
                             f"len(indices) = {self.indices.size}, len(data) = {self.nblocks}")
        if self.indices.size and int(self.indices.max()) >= Cb:
            raise ValueError(f"block column index {int(self.indices.max())} out of range for {Cb} block columns")
        M, N = self.shape
        rows = np.repeat(np.arange(Rb), np.diff(self.indptr))
        out_rows = rows * r + np.arange(r)[:, None] >= M                   # (r, nblocks)
        out_cols = self.indices.astype(np.int64) * c + np.arange(c)[:, None] >= N   # (c, nblocks)
        pad = out_rows.T[:, :, None] | out_cols.T[:, None, :]              # (nblocks, r, c)
        if np.any(self.data[pad] != 0):
            raise ValueError(f"edge blocks hold non-zeros outside the shape {self.shape}")
        return self

    @property
    def nblocks(self) -> int:
        return int(self.data.shape[0])

    @property
    def nnz(self) -> int:
        """Stored entries (whole blocks, their zeros included), as scipy's bsr nnz."""
        return int(self.data.size)

    @property
    def density(self) -> float:
        """Stored entries over M * N (edge blocks count whole)."""
        M, N = self.shape
        return self.nnz / (M * N) if M * N else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of data + indices + indptr."""
        return int(self.data.nbytes + self.indices.nbytes + self.indptr.nbytes)
