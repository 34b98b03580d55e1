"""SELL-8 with x windows: the batch-1 layout for AVX2 (8 float32 lanes, no AVX-512).

Row i of a layer belongs to chunk i // LANES (one 256-bit register, a lane per row). A chunk's
non-zeros are covered by x windows of `window` = 8 or 16 columns (per layer) that start at any
STEP = 4-column boundary; a window has as many slots as its fullest row needs. A chunk's slots, in
column order, go two by two into *units*. A unit is everything the kernel (sell8_kernels.py) needs
for 2 slots:

    data[u, s, lane]   the value of slot s (0 or 1) in row 8 c + lane (0 in padding)
    meta[u]            uint64: that value's column within its window at bits
                       b lane + 8 b s, b = 3 (8-column windows) or 4 (16-column windows)
    start[u, s]        uint16: the first column / STEP of slot s's window

so a unit costs one metadata word (two 32-bit broadcasts shifted per lane: vpsrlvd), the x
windows (one or two 8-float loads each), two or four permutes (vpermps: a lane picks its x; only
the low 3 index bits count; 16-column windows blend the two halves on the 4th bit) and two FMAs --
no scalar load per non-zero. Chunk c owns the units unit_ptr[c] : unit_ptr[c + 1], in column order.

Two ways to pair slots (`split`, per layer):
- paired (split=False): a window's slots are rounded up to an even count, so both slots of a unit
  read one window (start[u, 0] == start[u, 1]): the kernel loads one window a unit;
- split (split=True): no rounding; a unit's two slots may read two windows (the kernel loads
  both), and a chunk with an odd slot count pads its last unit with one empty slot. Where most
  windows need one slot (high sparsity) the rounding stores a whole padding slot per window.

Where the windows go (`_place`): a greedy sweep over a chunk's 4-column groups puts a window at
group p when some lane still has non-zeros there, with as many slots as the fullest lane needs
(rounded up to even when paired); lanes with slots to spare fill them from the next groups the
window covers, leftmost first (windows overlap; a non-zero goes to exactly one). He-initialised
784-1000-1000-500-200-10 net, pruned per layer, hidden layers, stored lanes per non-zero
(units x 16 / nnz):

    k (%)                                          0     30    50    70    90    95    98    99
    8-column windows, paired                       1.00  1.13  1.27  1.59  2.84  4.63  8.15  10.79
    8-column windows, split                        -     -     1.22  1.45  2.23  3.06  4.58  5.78
    16-column windows, paired                      -     -     1.11  1.25  1.87  2.75  5.07  7.60
    16-column windows, split                       -     -     1.10  1.22  1.66  2.17  3.25  4.38
    8-column, disjoint, exact min-units choice     1.00  1.38  1.56  1.88  2.95  4.60
    fixed 8-column blocks (slots, not units)       -     -     1.49  1.79  2.64  -

Which of the four a layer gets (`layer`): the fewest units weighted by UNIT_COST, what a unit of
each kind costs against a paired 8-column one.

Padding lanes hold 0 at index 0, i.e. their window's first column, a real column (< N): the kernel
multiplies only real inputs, by zeros where it pads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from sparsenet.csr import CSR
from sparsenet.sell import row_order

LANES = 8          # rows per chunk: one 256-bit register of float32
WINDOWS = (8, 16)  # columns of an x window: one vpermps table, or two blended
STEP = 4           # windows start at multiples of STEP columns
SLOTS = 2          # slots per unit (sharing one metadata word; one x window unless split)
MAX_COLUMNS = STEP * (1 << 16)          # start / STEP is a uint16: 262144 columns


def index_bits(window: int) -> int:
    """Bits of a column within a window of `window` columns (3 or 4)."""
    return int(window).bit_length() - 1


def _group_counts(c: CSR) -> np.ndarray:
    """(n_chunks, LANES, n_groups) non-zeros of each row in each 4-column group (what _place sweeps)."""
    M, N = c.shape
    nch, ng = -(-M // LANES), -(-N // STEP)
    row = np.repeat(np.arange(M, dtype=np.int64), np.diff(c.indptr))
    counts = np.zeros((nch * LANES, max(ng, 1)), np.int64)
    np.add.at(counts, (row, c.indices.astype(np.int64) // STEP), 1)
    return counts.reshape(nch, LANES, max(ng, 1))[:, :, :ng]


def _place(counts: np.ndarray, window: int, split: bool) -> tuple:
    """Where the windows go. counts: (n_chunks, LANES, n_groups) non-zeros per row and 4-column group.

    A greedy sweep over the groups: the window at group p (columns 4 p .. 4 p + window - 1) takes
    every non-zero of group p not taken yet, with as many slots as the fullest lane needs, rounded
    up to even (whole units) unless split; lanes with slots to spare fill them from groups p + 1,
    p + 2, ... that the window covers, leftmost first. Returns (slots, take): slots (n_chunks,
    n_groups), 0 where no window starts; take (n_chunks, LANES, n_groups, span), how many of each
    lane's non-zeros in group p + j the window at p took (span = window / STEP groups).
    """
    n_chunks, _, n_groups = counts.shape
    span = window // STEP
    slots = np.zeros((n_chunks, n_groups), np.int64)
    take = np.zeros((n_chunks, LANES, n_groups, span), np.int64)
    rem = np.zeros((n_chunks, LANES, n_groups + span), np.int64)      # not yet taken
    rem[:, :, :n_groups] = counts
    for p in range(n_groups):
        m = rem[:, :, p].max(axis=1)                                  # (n_chunks,)
        slots[:, p] = m if split else m + m % SLOTS
        free = slots[:, p, None] - rem[:, :, p]
        take[:, :, p, 0] = rem[:, :, p]
        rem[:, :, p] = 0
        for j in range(1, span):
            t = np.minimum(free, rem[:, :, p + j])
            take[:, :, p, j] = t
            rem[:, :, p + j] -= t
            free = free - t
    return slots, take


@dataclass(frozen=True, eq=False)
class SELL8:
    """One layer in SELL-8 layout with x windows at 4-column offsets (module docstring)."""

    data: np.ndarray       # (n_units, SLOTS, LANES) float32, zero in padding
    meta: np.ndarray       # (n_units,) uint64: SLOTS x LANES column indices within their windows
    start: np.ndarray      # (n_units, SLOTS) uint16: first column of each slot's window / STEP
    unit_ptr: np.ndarray   # (n_chunks + 1,) int64, unit offsets of the chunks
    window: int            # columns of every window of this layer: 8 or 16
    shape: tuple           # (M, N) of the layer
    nnz: int               # non-zeros stored (padding excluded)
    split: bool = False    # a unit's slots may read two windows (else both read one)

    @property
    def n_chunks(self) -> int:
        return -(-self.shape[0] // LANES)

    @property
    def n_units(self) -> int:
        return int(self.unit_ptr[-1])

    @property
    def x_len(self) -> int:
        """Floats the kernel may read from x: the last window may start at the last 4-column group."""
        return STEP * -(-self.shape[1] // STEP) + self.window - STEP

    @property
    def kind(self) -> str:
        """The layer's window columns, "s" where its units are split ("16s", "8"): what the plan names."""
        return f"{self.window}{'s' if self.split else ''}"

    @property
    def kernel_start(self) -> np.ndarray:
        """The window starts as the kernels read them: SLOTS a unit where split, else one a unit."""
        return self.start.ravel() if self.split else self.start[:, 0].copy()

    @property
    def padding(self) -> float:
        """Stored lanes per non-zero (1.0: no padding; also for an empty matrix)."""
        return self.n_units * SLOTS * LANES / self.nnz if self.nnz else 1.0

    @property
    def nbytes(self) -> int:
        """Bytes the kernels read (window starts as kernel_start: one a unit where paired)."""
        starts = self.n_units * (SLOTS if self.split else 1) * self.start.itemsize
        return int(self.data.nbytes + self.meta.nbytes + starts + self.unit_ptr.nbytes)

    @classmethod
    def from_csr(cls, c: CSR, window: int = 8, split: bool = False) -> "SELL8":
        """The same matrix, rows in their CSR order (columns sorted within a row, as CSR.check wants);
        split: pair a chunk's slots across windows (module docstring)."""
        M, N = c.shape
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
        if N > MAX_COLUMNS:
            raise ValueError(f"SELL8 holds at most {MAX_COLUMNS} columns (16 bits of window start), got {N}")
        span, bits = window // STEP, index_bits(window)
        nch, ng = -(-M // LANES), -(-N // STEP)
        row = np.repeat(np.arange(M, dtype=np.int64), np.diff(c.indptr))
        col = c.indices.astype(np.int64)
        slots, take = _place(_group_counts(c), window, bool(split))
        wc, wp = np.nonzero(slots)                                    # windows by chunk, then column
        ws = slots[wc, wp]                                            # slots of each window
        chunk_slots = np.bincount(wc, weights=ws, minlength=nch).astype(np.int64)
        unit_ptr = np.zeros(nch + 1, np.int64)
        np.cumsum(-(-chunk_slots // SLOTS), out=unit_ptr[1:])
        n_units = int(unit_ptr[-1])
        # a window's first slot, counted within its chunk (the chunk's slots in window order)
        first_slot = np.cumsum(ws) - ws - (np.cumsum(chunk_slots) - chunk_slots)[wc]
        window_of = np.full((nch, max(ng, 1) + span), -1, np.int64)
        window_of[wc, wp + span] = np.arange(wc.size)                 # shifted: p - j >= -span
        k = np.arange(row.size)

        def rank_in_runs(*keys):
            """Place of every non-zero within its run of equal keys (CSR order)."""
            new = np.ones(row.size, bool)
            if row.size > 1:
                new[1:] = np.any([key[1:] != key[:-1] for key in keys], axis=0)
            return k - np.maximum.accumulate(np.where(new, k, 0))

        group, chunk, lane = col // STEP, row // LANES, row % LANES
        q = rank_in_runs(row, group)                                  # place within (row, group)
        # the window of each non-zero: first j (from span - 1 down to 0) whose cumulative take exceeds q
        win = np.full(row.size, -1, np.int64)
        cum = np.zeros(row.size, np.int64)
        for j in range(span - 1, -1, -1):
            p = group - j
            t = np.where(p >= 0, take[chunk, lane, np.maximum(p, 0), j], 0)
            cum += t
            hit = (win < 0) & (q < cum)
            win = np.where(hit, window_of[chunk, p + span], win)
        at = first_slot[win] + rank_in_runs(row, win)                 # slot within the chunk
        unit, slot = unit_ptr[chunk] + at // SLOTS, at % SLOTS
        data = np.zeros((n_units, SLOTS, LANES), np.float32)
        index = np.zeros((n_units, SLOTS, LANES), np.uint64)
        data[unit, slot, lane] = c.data
        index[unit, slot, lane] = col - STEP * wp[win]
        meta = np.zeros(n_units, np.uint64)
        for s in range(SLOTS):
            for l in range(LANES):
                meta |= index[:, s, l] << np.uint64(bits * (LANES * s + l))
        # every slot's window start; a chunk's odd last slot (split only) pads with its unit's first
        start = np.zeros((n_units, SLOTS), np.uint16)
        of = np.repeat(np.arange(wc.size), ws)                        # the window of every slot
        at = first_slot[of] + np.arange(of.size) - np.repeat(np.cumsum(ws) - ws, ws)
        start[unit_ptr[wc[of]] + at // SLOTS, at % SLOTS] = wp[of]
        odd = unit_ptr[1:][chunk_slots % SLOTS == 1] - 1
        start[odd, 1] = start[odd, 0]
        return cls(data, meta, start, unit_ptr, int(window), (int(M), int(N)), int(c.nnz), bool(split))

    @classmethod
    def from_dense(cls, W: np.ndarray, window: int = 8, split: bool = False) -> "SELL8":
        return cls.from_csr(CSR.from_dense(W), window, split)

    def _coordinates(self) -> tuple:
        """(rows, cols) of every stored lane, each (n_units, SLOTS, LANES), in the padded matrix."""
        chunk = np.repeat(np.arange(self.n_chunks), np.diff(self.unit_ptr))
        rows = np.broadcast_to((chunk[:, None, None] * LANES + np.arange(LANES)), self.data.shape)
        bits = index_bits(self.window)
        shifts = (bits * (LANES * np.arange(SLOTS)[:, None] + np.arange(LANES)[None, :])).astype(np.uint64)
        index = ((self.meta[:, None, None] >> shifts) & np.uint64(self.window - 1)).astype(np.int64)
        return rows, self.start.astype(np.int64)[:, :, None] * STEP + index

    def to_dense(self) -> np.ndarray:
        """The (M, N) float32 matrix (padding lanes add zeros)."""
        M, N = self.shape
        W = np.zeros((self.n_chunks * LANES, self.x_len), np.float32)
        np.add.at(W, self._coordinates(), self.data)
        return W[:M, :N]

    def check(self) -> "SELL8":
        """Raise ValueError when the arrays cannot describe a SELL8 matrix of `shape`; else self."""
        M, N = self.shape
        problems = []
        if self.window not in WINDOWS:
            problems.append(f"window must be one of {WINDOWS}, got {self.window!r}")
        if self.unit_ptr.shape != (self.n_chunks + 1,) or self.unit_ptr.dtype != np.int64:
            problems.append(f"unit_ptr must be int64 of n_chunks + 1 = {self.n_chunks + 1} entries, got "
                            f"{self.unit_ptr.dtype} {self.unit_ptr.shape}")
        elif self.unit_ptr[0] != 0 or np.any(np.diff(self.unit_ptr) < 0):
            problems.append("unit_ptr must start at 0 and never decrease")
        n_units = self.n_units if not problems else -1
        if self.data.shape != (n_units, SLOTS, LANES) or self.data.dtype != np.float32 \
                or not self.data.flags.c_contiguous:
            problems.append(f"data must be C-contiguous float32 of shape ({n_units}, {SLOTS}, {LANES}), "
                            f"got {self.data.dtype} {self.data.shape}")
        if self.meta.shape != (n_units,) or self.meta.dtype != np.uint64:
            problems.append(f"meta must be uint64 of shape ({n_units},), got {self.meta.dtype} {self.meta.shape}")
        if self.start.shape != (n_units, SLOTS) or self.start.dtype != np.uint16:
            problems.append(f"start must be uint16 of shape ({n_units}, {SLOTS}), got {self.start.dtype} "
                            f"{self.start.shape}")
        elif self.start.size and int(self.start.max()) * STEP >= max(N, 1):
            problems.append(f"a window starts at or beyond column N = {N}")
        elif not self.split and np.any(self.start[:, 0] != self.start[:, 1]):
            problems.append("a unit's slots read two windows, but split is False (its kernel loads one)")
        if not problems:
            rows, cols = self._coordinates()
            held = self.data != 0
            n_held = np.count_nonzero(self.to_dense())
            if n_held > self.nnz:
                problems.append(f"holds {n_held} non-zeros, more than nnz = {self.nnz}")
            if np.any(rows[held] >= M) or np.any(cols[held] >= N):
                problems.append(f"a non-zero lies outside the {M} x {N} matrix")
        if problems:
            raise ValueError("invalid SELL8: " + "; ".join(problems))
        return self


# What a unit of each kind (window, split) costs against a paired 8-column unit; `layer` takes the
# kind with the fewest units weighted by it. A 16-column unit adds two permutes and a blend, a split
# one a second window load: hot, on the AVX2 target (haswell code on the AVX-512 Xeon), ~1.5x and
# ~1.25x; 16-column windows are weighted 1.25 (not 1.5) because they store as many bytes a unit and
# a whole net at batch 1 streams its weights (sell8_kernels docstring). Whole He net, per layer best
# against this rule's choice: within 2 % at k = 50-99 %.
UNIT_COST = {(8, False): 1.0, (16, False): 1.25, (8, True): 1.2, (16, True): 1.5}


def layer(c: CSR, window=None, split=None) -> SELL8:
    """SELL8 of a CSR matrix with 8- or 16-column windows, paired or split units; None: whichever
    kind costs least (UNIT_COST; ties go to the cheaper unit)."""
    kinds = sorted(((w, sp) for w in ((window,) if window is not None else WINDOWS)
                    for sp in ((bool(split),) if split is not None else (False, True))), key=UNIT_COST.get)
    if len(kinds) > 1:                                  # units from the placement alone: one layout built
        if c.shape[1] > MAX_COLUMNS:
            raise ValueError(f"SELL8 holds at most {MAX_COLUMNS} columns (16 bits of window start), got {c.shape[1]}")
        counts = _group_counts(c)

        def cost(kind):
            slots, _ = _place(counts, *kind)
            return int((-(-slots.sum(axis=1) // SLOTS)).sum()) * UNIT_COST[kind]   # SELL8.n_units of that kind
        kinds = [min(kinds, key=cost)]
    return SELL8.from_csr(c, *kinds[0])


def net_layout(weights: Sequence[np.ndarray], sort_rows: bool = True, window=None, split=None) -> tuple:
    """SELL8 layers of an MLP, as sell.net_layout: hidden rows sorted by non-zero count (sort_rows),
    each next layer's columns permuted to match; input columns and output rows keep their order.
    window (8, 16) and split (False, True): every layer's, or None (per layer, see `layer`). Returns
    (layers, perms): perms[l] maps layer l's stored rows to the original ones."""
    layers, perms = [], []
    prev: Optional[np.ndarray] = None
    for i, W in enumerate(weights):
        W = np.asarray(W, np.float32)
        if prev is not None:
            W = W[:, prev]
        c = CSR.from_dense(W)
        if sort_rows and i < len(weights) - 1:
            perm = row_order(c)
            c = CSR.from_dense(W[perm])
        else:
            perm = np.arange(W.shape[0])
        layers.append(layer(c, window, split))
        perms.append(perm)
        prev = perm
    return tuple(layers), tuple(perms)


def flatten(params, sort_rows: bool = True, window=None, split=None) -> tuple:
    """The arrays of sell8_kernels.sell8_forward for an MLP, the sizes of its buffers, the layers:
    ((data, meta, start, unit_ptr, bias, windows, splits, offsets), (floats of the input buffer, of
    each ping-pong buffer), layers).

    Layers are concatenated; offsets[:, l] = where layer l starts in (units of data/meta, unit_ptr,
    bias, start); its unit_ptr counts from 0 within the layer; bias is padded with zeros to
    8 n_chunks; start holds each layer's kernel_start (SLOTS entries a unit where split, else one:
    a paired layer streams 2 bytes a unit fewer); windows[l] is layer l's window (8 or 16 columns),
    splits[l] 1 where its units are split (else 0).
    """
    layers, perms = net_layout([l.weight for l in params], sort_rows, window, split)
    biases = []
    for s, perm, lay in zip(layers, perms, params):
        b = np.zeros(s.n_chunks * LANES, np.float32)
        if lay.bias is not None:
            b[:s.shape[0]] = np.asarray(lay.bias, np.float32)[perm]
        biases.append(b)
    starts = [s.kernel_start for s in layers]
    sizes = [[s.n_units, s.n_chunks + 1, LANES * s.n_chunks, st.size] for s, st in zip(layers, starts)]
    offsets = np.zeros((4, len(layers) + 1), np.int64)
    np.cumsum(np.array(sizes, np.int64).T, axis=1, out=offsets[:, 1:])
    arrays = (np.concatenate([s.data.ravel() for s in layers]),
              np.concatenate([s.meta for s in layers]),
              np.concatenate(starts),
              np.concatenate([s.unit_ptr for s in layers]),
              np.concatenate(biases),
              np.array([s.window for s in layers], np.int64),
              np.array([s.split for s in layers], np.int64), offsets)
    width = max(max(LANES * s.n_chunks, s.x_len) for s in layers)
    return arrays, (layers[0].x_len, width), layers
