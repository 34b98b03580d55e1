"""The N:M format: at most n non-zeros in every group of m consecutive columns of a row, stored as
values (n_out, G * n) and in-group column indices (n_out, G * n) uint8, G = ceil(n_in / m) groups.

Slot s of group g in row i holds values[i, g * n + s] at column g * m + idx[i, g * n + s]. A group
with fewer than n non-zeros fills its first slots in column order and pads the rest with value 0 at
in-group index 0. A width that is not a multiple of m ends in a tail group of t < m columns: it has
n slots too, and its indices are < t (check enforces it), so a kernel never reads past n_in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_M = 256   # in-group indices are uint8


def check_nm(n, m) -> tuple:
    """(n, m) as ints, 1 <= n <= m <= MAX_M, or a ValueError."""
    from sparsenet.prune import check_nm as check
    n, m = check(n, m)
    if m > MAX_M:
        raise ValueError(f"m must be at most {MAX_M} (in-group indices are uint8), got {m}")
    return n, m


def max_group_nnz(W: np.ndarray, m: int) -> int:
    """The most non-zeros any group of m consecutive columns of a row of W holds (0 for an all-zero
    or empty W): the smallest n that stores W as N:M."""
    W = np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"expected a 2-d matrix, got shape {W.shape}")
    M, N = W.shape
    G = -(-N // m)
    nz = np.zeros((M, G * m), bool)
    nz[:, :N] = W != 0
    return int(nz.reshape(M, G, m).sum(axis=-1).max(initial=0))


@dataclass(frozen=True, eq=False)
class NM:
    """N:M semi-structured rows: n value slots per group of m columns."""

    values: np.ndarray    # (n_out, G * n) float32
    idx: np.ndarray       # (n_out, G * n) uint8, column within the group
    n: int
    m: int
    shape: tuple          # (n_out, n_in)

    @classmethod
    def from_dense(cls, W: np.ndarray, n: int = 2, m: int = 4) -> "NM":
        """Store a 2-d array whose rows hold at most n non-zeros in every group of m consecutive
        columns; ValueError naming the first row and group that hold more."""
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(f"expected a 2-d matrix, got shape {W.shape}")
        n, m = check_nm(n, m)
        M, N = W.shape
        G = -(-N // m)
        padded = np.zeros((M, G * m), np.float32)
        padded[:, :N] = W
        groups = padded.reshape(M, G, m)                                   # (M, G, m)
        nz = groups != 0
        counts = nz.sum(axis=-1)                                           # (M, G)
        if counts.size and counts.max() > n:
            i, g = np.argwhere(counts > n)[0]
            raise ValueError(f"not {n}:{m} sparse: row {i} holds {counts[i, g]} non-zeros in columns "
                             f"{g * m}..{min(g * m + m, N) - 1} (at most {n} per group of {m}); "
                             f"prune it with prune.nm_prune(params, {n}, {m}) first")
        order = np.argsort(~nz, axis=-1, kind="stable")[..., :n]           # non-zeros first, by column
        vals = np.take_along_axis(groups, order, axis=-1)                  # (M, G, n)
        idx = np.where(np.arange(n) < counts[..., None], order, 0)         # empty slots: index 0
        return cls(np.ascontiguousarray(vals.reshape(M, G * n)),
                   np.ascontiguousarray(idx.reshape(M, G * n), np.uint8), int(n), int(m), (int(M), int(N)))

    @property
    def groups(self) -> int:
        return -(-self.shape[1] // self.m)

    @property
    def slots(self) -> int:
        """Slots per row: groups * n."""
        return self.groups * self.n

    def columns(self) -> np.ndarray:
        """(n_out, G * n) int64 column of every slot."""
        g = np.arange(self.slots) // self.n
        return g * self.m + self.idx.astype(np.int64)

    def to_dense(self) -> np.ndarray:
        """(n_out, n_in) float32 array (padding slots add zero)."""
        M, N = self.shape
        W = np.zeros((M, N), np.float32)
        rows = np.repeat(np.arange(M), self.slots)
        np.add.at(W, (rows, self.columns().ravel()), self.values.ravel())
        return W

    def check(self) -> "NM":
        """Raise ValueError unless the arrays fit the shape and pattern; returns self."""
        if not (isinstance(self.shape, tuple) and len(self.shape) == 2
                and all(isinstance(s, int) and s >= 1 for s in self.shape)):
            raise ValueError(f"shape must be a pair of positive ints, got {self.shape!r}")
        check_nm(self.n, self.m)
        want = (self.shape[0], self.slots)
        for name, arr, dtype in (("values", self.values, np.float32), ("idx", self.idx, np.uint8)):
            if not isinstance(arr, np.ndarray) or arr.shape != want or not arr.flags.c_contiguous:
                raise ValueError(f"{name} must be a C-contiguous array of shape {want}, got "
                                 f"{getattr(arr, 'shape', type(arr).__name__)}")
            if arr.dtype != dtype:
                raise ValueError(f"{name} must be {np.dtype(dtype)}, got {arr.dtype}")
        if self.idx.size:
            g = np.arange(self.slots) // self.n
            width = np.minimum(self.m, self.shape[1] - g * self.m)              # m, or the tail's t
            bad = self.idx >= width
            if bad.any():
                i, k = np.argwhere(bad)[0]
                raise ValueError(f"row {i}, slot {k}: in-group index {self.idx[i, k]} >= group width {width[k]}")
            cols = self.columns()
            dup = (self.values != 0) & _duplicate_slots(cols, self.values)
            if dup.any():
                i, k = np.argwhere(dup)[0]
                raise ValueError(f"row {i}, slot {k}: column {cols[i, k]} stored twice")
        return self

    @property
    def nnz(self) -> int:
        """Stored slots (padding included)."""
        return int(self.values.size)

    @property
    def density(self) -> float:
        M, N = self.shape
        return self.nnz / (M * N)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.idx.nbytes)


def _duplicate_slots(cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """True at non-zero slots whose column an earlier non-zero slot of the same row also holds."""
    key = np.where(values != 0, cols, -1 - np.arange(cols.shape[1]))  # zero slots never collide
    order = np.argsort(key, axis=1, kind="stable")
    s = np.take_along_axis(key, order, axis=1)
    dup_sorted = np.zeros(s.shape, bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    dup = np.zeros(s.shape, bool)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup
