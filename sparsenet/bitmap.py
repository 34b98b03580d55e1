"""Bitmap rows: the csr engine's batch-1 layout for its densest layers (AVX-512).

A row is cut into groups of GROUP = 16 consecutive columns; each group stores a uint16 mask (bit l
set where column 16 g + l holds a non-zero) and the row's non-zeros are packed in column order:

    values[rptr[i] : rptr[i + 1]]   row i's non-zeros, then GROUP zeros after the last row
    masks[i * n_groups + g]         row i's group g

The kernel (bitmap_kernels.py) loads x[16 g : 16 g + 16] whole (no index, no permute), loads 16
floats at the row's running offset and spreads them over the mask's lanes (vexpandps), one FMA a
group, the offset moving by the mask's popcount; a horizontal sum a row. 4 bytes a non-zero plus
1/8 a weight: fewer bytes than the dense matrix from ~3 % sparsity, and, where a layer is dense
enough, fewer than SELL-16 (sell.py), whose slots pay 18-80 bytes for 16 lanes and an index a
non-zero. Its time is a group's, whatever the group holds: it pays at the dense end of the sweep
(plan.bitmap_layers says where; figures: docs/perf-notes.md).

Rows are padded to a multiple of ROWS (16: SELL-16's chunk, so the batch-1 buffers are the same
whichever layout a layer has); padded rows have empty masks and give bias (0) alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUP = 16    # columns per mask: one 512-bit register of float32
ROWS = 16     # rows are padded to a multiple of this (SELL-16's chunk)


@dataclass(frozen=True, eq=False)
class Bitmap:
    """One layer in bitmap rows (see the module docstring)."""

    values: np.ndarray   # (nnz + GROUP,) float32: the non-zeros row by row, GROUP zeros at the end
    masks: np.ndarray    # (n_rows * n_groups,) uint16
    rptr: np.ndarray     # (n_rows + 1,) int64: where each row's values start
    shape: tuple         # (M, N) of the layer

    @property
    def n_rows(self) -> int:
        """Rows stored: M padded to a multiple of ROWS."""
        return -(-self.shape[0] // ROWS) * ROWS

    @property
    def n_groups(self) -> int:
        return -(-self.shape[1] // GROUP)

    @property
    def nnz(self) -> int:
        return int(self.rptr[-1])

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.masks.nbytes + self.rptr.nbytes)

    @classmethod
    def from_dense(cls, W: np.ndarray) -> "Bitmap":
        """The non-zeros of the (M, N) float32 matrix W (a stored zero is not kept: it adds nothing)."""
        W = np.asarray(W, np.float32)
        if W.ndim != 2:
            raise ValueError(f"Bitmap.from_dense needs a 2-d matrix, got shape {W.shape}")
        M, N = W.shape
        rows, groups = -(-M // ROWS) * ROWS, -(-N // GROUP)
        padded = np.zeros((rows, groups * GROUP), np.float32)
        padded[:M, :N] = W
        held = padded != 0
        bits = (held.reshape(rows, groups, GROUP).astype(np.uint32) << np.arange(GROUP, dtype=np.uint32)).sum(axis=2)
        rptr = np.zeros(rows + 1, np.int64)
        np.cumsum(held.sum(axis=1), out=rptr[1:])
        values = np.concatenate([padded[held], np.zeros(GROUP, np.float32)]).astype(np.float32)
        return cls(values, bits.astype(np.uint16).ravel(), rptr, (int(M), int(N)))

    def to_dense(self) -> np.ndarray:
        """The (M, N) float32 matrix."""
        M, N = self.shape
        bits = (self.masks.reshape(self.n_rows, self.n_groups, 1).astype(np.uint32) >> np.arange(GROUP, dtype=np.uint32)) & 1
        held = bits.reshape(self.n_rows, self.n_groups * GROUP).astype(bool)
        W = np.zeros(held.shape, np.float32)
        W[held] = self.values[:self.nnz]
        return W[:M, :N]

    def check(self) -> "Bitmap":
        """Raise ValueError when the arrays cannot describe a bitmap matrix of `shape`; else self."""
        M, N = self.shape
        problems = []
        if self.rptr.shape != (self.n_rows + 1,) or self.rptr.dtype != np.int64:
            problems.append(f"rptr must be int64 of shape ({self.n_rows + 1},), got {self.rptr.dtype} {self.rptr.shape}")
        elif self.rptr[0] != 0 or np.any(np.diff(self.rptr) < 0):
            problems.append("rptr must start at 0 and never decrease")
        if self.masks.shape != (self.n_rows * self.n_groups,) or self.masks.dtype != np.uint16:
            problems.append(f"masks must be uint16 of shape ({self.n_rows * self.n_groups},), got "
                            f"{self.masks.dtype} {self.masks.shape}")
        if not problems:
            counts = _popcount(self.masks).reshape(self.n_rows, self.n_groups).sum(axis=1)
            if np.any(counts != np.diff(self.rptr)):
                problems.append("a row's masks hold another number of non-zeros than rptr gives it")
            if self.values.shape != (self.nnz + GROUP,) or self.values.dtype != np.float32:
                problems.append(f"values must be float32 of shape ({self.nnz + GROUP},), got "
                                f"{self.values.dtype} {self.values.shape}")
            elif np.any(self.values[self.nnz:] != 0):
                problems.append(f"values must end in {GROUP} zeros (the kernel loads {GROUP} floats from any offset)")
            tail = N % GROUP
            if tail and np.any(self.masks.reshape(self.n_rows, self.n_groups)[:, -1] >> tail):
                problems.append(f"a mask holds a column beyond the {N} columns")
            if np.any(self.masks.reshape(self.n_rows, self.n_groups)[M:]):
                problems.append(f"a padding row beyond the {M} rows holds a non-zero")
        if problems:
            raise ValueError("invalid Bitmap: " + "; ".join(problems))
        return self


def _popcount(masks: np.ndarray) -> np.ndarray:
    """Set bits of each uint16."""
    m = masks.astype(np.uint32)
    return ((m[:, None] >> np.arange(GROUP, dtype=np.uint32)) & 1).sum(axis=1)


def layer_nbytes(shape: tuple, nnz: int) -> int:
    """Bytes Bitmap.from_dense of an (M, N) matrix with nnz non-zeros takes (what the plan weighs)."""
    M, N = shape
    rows, groups = -(-M // ROWS) * ROWS, -(-N // GROUP)
    return 4 * (nnz + GROUP) + 2 * rows * groups + 8 * (rows + 1)


def layer_groups(shape: tuple) -> int:
    """Groups a bitmap copy of an (M, N) layer holds in all (rows padded; Bitmap.n_groups is a row's):
    the kernel's trip count."""
    M, N = shape
    return -(-M // ROWS) * ROWS * -(-N // GROUP)
