"""SELL: sliced ELLPACK in 16-row chunks and 32-column blocks, the CSR engine's batch-1 layout.

Row i of a layer belongs to chunk i // LANES (one AVX-512 register of float32, a lane per row) and
its non-zeros in columns [32 b, 32 b + 32) to block b. A chunk lists its non-empty blocks as
entries chunk_ptr[c] : chunk_ptr[c + 1]; entry e is block[e] and owns the slots
slot_ptr[e] : slot_ptr[e + 1]; slot s holds one non-zero per lane:

    data[s, lane]    its value (0 where the lane's row has fewer non-zeros in the block: padding)
    indices[s, lane] its column within the block, 0..31 (uint8)

so the kernel (sell_kernels.py) loads x[32 b : 32 b + 32] into two registers once per entry and
turns every slot into one in-register permute (vpermt2ps) and one FMA: no scalar load per
non-zero, the limit of a CSR SpMV (3 loads per non-zero). The price is the padding: an entry has
as many slots as its fullest row needs. Two orderings keep it and its cost down (figures:
docs/perf-notes.md):
- rows of a layer sorted by their non-zero count put rows of similar density in a chunk;
  `net_layout` sorts every hidden layer and permutes the next layer's columns to match, so the
  forward pass never permutes at run time;
- a chunk's entries are sorted by slot count (then block), so the slot loop's trip count
  changes rarely and its exit branch is predicted.

Packed values (`SELL.packed`): the padding lanes cost 4 bytes each (at k = 90 % a slot holds ~8
non-zeros of its 16 lanes), and where the net's SELL bytes do not fit the core's L2 batch 1 streams
them from L3 at ~25 GB/s. The packed form keeps the same slots, indices and entries but stores only
the non-zeros, in slot order, with a 16-bit mask per slot (lane l set where it holds one): the AVX-512
kernel loads 16 floats from the running offset and spreads them over the mask's lanes (vexpandps),
the offset moving by the mask's popcount; `vptr[c]` is where chunk c's values start. 4 bytes a
non-zero plus 18 a slot against 80 a slot (plan.sell_packs says when it pays).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from sparsenet.bitmap import GROUP, Bitmap, layer_nbytes as bitmap_nbytes
from sparsenet.csr import CSR, indptr_dtype

LANES = 16    # rows per chunk: one 512-bit register of float32
BLOCK = 32    # columns per block: the 32-entry table of one two-register permute


@dataclass(frozen=True, eq=False)
class SELL:
    """One layer in SELL-16 x 32 layout (see the module docstring); rows may be permuted by the caller."""

    data: np.ndarray       # (n_slots, LANES) float32, zero in padding
    indices: np.ndarray    # (n_slots, LANES) uint8, column within the block
    block: np.ndarray      # (n_entries,) int32, the column block of each entry
    slot_ptr: np.ndarray   # (n_entries + 1,) slot offsets of the entries
    chunk_ptr: np.ndarray  # (n_chunks + 1,) int32, entry offsets of the chunks
    shape: tuple           # (M, N) of the layer
    nnz: int               # non-zeros stored (padding excluded)

    @property
    def n_chunks(self) -> int:
        return -(-self.shape[0] // LANES)

    @property
    def n_blocks(self) -> int:
        return -(-self.shape[1] // BLOCK)

    @property
    def n_slots(self) -> int:
        return int(self.slot_ptr[-1])

    @property
    def n_entries(self) -> int:
        return int(self.block.size)

    @property
    def padding(self) -> float:
        """Stored lanes per non-zero (1.0: no padding; also for an empty matrix)."""
        return self.n_slots * LANES / self.nnz if self.nnz else 1.0

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.data, self.indices, self.block, self.slot_ptr, self.chunk_ptr)))

    @classmethod
    def from_csr(cls, c: CSR) -> "SELL":
        """The same matrix, rows in their CSR order (columns sorted within a row, as CSR.check wants)."""
        M, N = c.shape
        nch, nb = -(-M // LANES), -(-N // BLOCK)
        row = np.repeat(np.arange(M, dtype=np.int64), np.diff(c.indptr))
        col = c.indices.astype(np.int64)
        group = row * nb + col // BLOCK                 # non-decreasing along CSR order
        count = np.bincount(group, minlength=M * nb)
        rank = np.arange(group.size) - np.concatenate([[0], np.cumsum(count)])[group]
        padded = np.zeros((nch * LANES, nb), np.int64)
        padded[:M] = count.reshape(M, nb)
        slots = padded.reshape(nch, LANES, nb).max(axis=1).ravel()   # per (chunk, block)
        chunk_of = np.repeat(np.arange(nch, dtype=np.int64), nb)
        block_of = np.tile(np.arange(nb, dtype=np.int64), nch)
        entries = np.lexsort((block_of, -slots, chunk_of))            # chunk, most slots first, block
        entries = entries[slots[entries] > 0]
        entry_of = np.full(nch * nb, -1, np.int64)
        entry_of[entries] = np.arange(entries.size)
        slot_ptr = np.zeros(entries.size + 1, indptr_dtype(int(slots.sum()) * LANES))
        np.cumsum(slots[entries], out=slot_ptr[1:])
        chunk_ptr = np.zeros(nch + 1, np.int32)
        np.cumsum(np.bincount(chunk_of[entries], minlength=nch), out=chunk_ptr[1:])
        n_slots = int(slot_ptr[-1])
        data = np.zeros((n_slots, LANES), np.float32)
        indices = np.zeros((n_slots, LANES), np.uint8)
        s = slot_ptr[entry_of[(row // LANES) * nb + col // BLOCK]] + rank
        data[s, row % LANES] = c.data
        indices[s, row % LANES] = col % BLOCK
        return cls(data, indices, block_of[entries].astype(np.int32), slot_ptr, chunk_ptr,
                   (int(M), int(N)), int(c.nnz))

    def packed(self) -> tuple:
        """(values, masks, vptr): the non-zero lanes' values in slot order followed by LANES zeros
        (the kernel loads 16 floats from any offset), each slot's uint16 mask of the lanes that hold
        one, and int64 vptr (n_chunks + 1,): the offset of chunk c's first value (module docstring).
        A stored zero is padding here as in the padded form: it adds nothing either way."""
        held = self.data != 0
        masks = (held.astype(np.uint32) << np.arange(LANES, dtype=np.uint32)).sum(axis=1).astype(np.uint16)
        values = np.concatenate([self.data[held], np.zeros(LANES, np.float32)]).astype(np.float32)
        before = np.zeros(self.n_slots + 1, np.int64)
        np.cumsum(held.sum(axis=1), out=before[1:])
        vptr = before[np.asarray(self.slot_ptr, np.int64)[np.asarray(self.chunk_ptr, np.int64)]]
        return values, masks, vptr

    def _coordinates(self) -> tuple:
        """(rows, cols) of every stored lane, each (n_slots, LANES), in the padded matrix."""
        entry = np.repeat(np.arange(self.n_entries), np.diff(self.slot_ptr))
        chunk = np.repeat(np.arange(self.n_chunks), np.diff(self.chunk_ptr))[entry]
        rows = chunk[:, None] * LANES + np.arange(LANES)
        cols = self.block.astype(np.int64)[entry][:, None] * BLOCK + self.indices.astype(np.int64)
        return rows, cols

    def to_dense(self) -> np.ndarray:
        """The (M, N) float32 matrix (padding lanes add zeros)."""
        M, N = self.shape
        W = np.zeros((self.n_chunks * LANES, self.n_blocks * BLOCK), np.float32)
        np.add.at(W, self._coordinates(), self.data)
        return W[:M, :N]

    def check(self) -> "SELL":
        """Raise ValueError when the arrays cannot describe a SELL matrix of `shape`; else self."""
        M, N = self.shape
        problems = []
        if self.chunk_ptr.shape != (self.n_chunks + 1,):
            problems.append(f"chunk_ptr has {self.chunk_ptr.size} entries, expected n_chunks + 1 = {self.n_chunks + 1}")
        elif self.chunk_ptr[0] != 0 or np.any(np.diff(self.chunk_ptr) < 0) or self.chunk_ptr[-1] != self.n_entries:
            problems.append("chunk_ptr must start at 0, never decrease and end at the number of entries")
        if self.slot_ptr.shape != (self.n_entries + 1,):
            problems.append(f"slot_ptr has {self.slot_ptr.size} entries, expected n_entries + 1 = {self.n_entries + 1}")
        elif self.slot_ptr[0] != 0 or np.any(np.diff(self.slot_ptr) < 0):
            problems.append("slot_ptr must start at 0 and never decrease")
        elif self.block.size and (self.block.min() < 0 or self.block.max() >= self.n_blocks):
            problems.append(f"block must lie in 0..{self.n_blocks - 1}")
        n_slots = self.n_slots if self.slot_ptr.size else -1
        if self.data.shape != (n_slots, LANES) or self.data.dtype != np.float32:
            problems.append(f"data must be float32 of shape ({n_slots}, {LANES}), got {self.data.dtype} {self.data.shape}")
        if self.indices.shape != (n_slots, LANES) or self.indices.dtype != np.uint8:
            problems.append(f"indices must be uint8 of shape ({n_slots}, {LANES}), got "
                            f"{self.indices.dtype} {self.indices.shape}")
        elif self.indices.size and self.indices.max() >= BLOCK:
            problems.append(f"indices must be < {BLOCK}")
        if not problems:
            rows, cols = self._coordinates()
            held = self.data != 0
            n_held = np.count_nonzero(self.to_dense())
            if n_held > self.nnz:
                problems.append(f"holds {n_held} non-zeros, more than nnz = {self.nnz}")
            if np.any(rows[held] >= M) or np.any(cols[held] >= N):
                problems.append(f"a non-zero lies outside the {M} x {N} matrix")
        if problems:
            raise ValueError("invalid SELL: " + "; ".join(problems))
        return self


def row_order(c: CSR) -> np.ndarray:
    """Rows by decreasing non-zero count (stable): similar rows share a chunk, less padding."""
    return np.argsort(-np.diff(c.indptr).astype(np.int64), kind="stable")


def net_layout(weights: Sequence[np.ndarray], sort_rows: bool = True) -> tuple:
    """SELL layers of an MLP whose hidden rows are sorted (row_order), each next layer's columns
    permuted to match, so layer l's output order is layer l + 1's input order. The input columns
    and the output rows keep their order. Returns (layers, perms): perms[l] maps layer l's stored
    rows to the original ones (bias of layer l must be taken as bias[perms[l]]).
    """
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
        layers.append(SELL.from_csr(c))
        perms.append(perm)
        prev = perm
    return tuple(layers), tuple(perms)


def flatten(params, packed: bool = False, layout: Optional[tuple] = None, bitmap: Sequence[bool] = ()) -> tuple:
    """The arrays of sell_kernels.sell_forward for an MLP (net_layout: hidden rows sorted), the
    sizes of its buffers, and the layers: ((data, masks, vptr, indices, block, slot_ptr, chunk_ptr,
    bias, n_chunks, n_blocks, offsets, packed, values, bitmasks, rptr), (floats of the input
    buffer, floats of each ping-pong buffer), layers).

    Layers are concatenated; offsets[:, l] = where layer l starts in (slots of indices, block,
    slot_ptr, chunk_ptr and vptr, bias, data, values, bitmasks, rptr); its slot_ptr/chunk_ptr/vptr
    count from 0 within the layer. `packed`: data holds SELL.packed's values (LANES zeros at the
    end), masks one uint16 a slot, vptr n_chunks + 1 offsets a layer; else data is the padded
    (n_slots * LANES,) values and masks, vptr are empty. `bitmap[l]` true: layer l is held in bitmap
    rows (bitmap.Bitmap of the same stored rows and columns: values, bitmasks, rptr; GROUP zeros at
    the end of values) and none of its SELL arrays; a layer with rptr entries is a bitmap layer.
    `layout`: net_layout's (layers, perms) of these params when the caller has it already (the
    engine decides `packed` and `bitmap` from the layers).
    """
    layers, perms = layout or net_layout([l.weight for l in params])
    bitmap = tuple(bool(b) for b in bitmap) or (False,) * len(layers)
    if len(bitmap) != len(layers):
        raise ValueError(f"bitmap needs one flag a layer ({len(layers)}), got {len(bitmap)}")
    biases = []
    for s, perm, layer in zip(layers, perms, params):
        b = np.zeros(s.n_chunks * LANES, np.float32)
        if layer.bias is not None:
            b[:s.shape[0]] = layer.bias[perm]
        biases.append(b)
    n_chunks = np.array([s.n_chunks for s in layers], np.int64)
    n_blocks = np.array([s.n_blocks for s in layers], np.int64)
    rows = [Bitmap.from_dense(s.to_dense()) if b else None for s, b in zip(layers, bitmap)]
    kept = [None if b else s for s, b in zip(layers, bitmap)]           # the layers held in SELL
    if packed:
        parts = [s.packed() if s else _NO_PACKED for s in kept]
        data = np.concatenate([v[:-LANES] for v, _, _ in parts] + [np.zeros(LANES, np.float32)])
        masks = np.concatenate([m for _, m, _ in parts])
        vptr = np.concatenate([p for _, _, p in parts])
        n_data = [v.size - LANES for v, _, _ in parts]
    else:
        data = np.concatenate([s.data.ravel() if s else np.zeros(0, np.float32) for s in kept])
        masks, vptr = np.zeros(0, np.uint16), np.zeros(0, np.int64)
        n_data = [s.n_slots * LANES if s else 0 for s in kept]
    sizes = [[s.n_slots, s.n_entries, s.n_entries + 1, s.n_chunks + 1] if s else [0, 0, 0, 0] for s in kept]
    sizes = [z + [LANES * s.n_chunks, nd] + ([r.nnz, r.masks.size, r.rptr.size] if r else [0, 0, 0])
             for z, s, nd, r in zip(sizes, layers, n_data, rows)]
    offsets = np.zeros((9, len(layers) + 1), np.int64)
    np.cumsum(np.array(sizes, np.int64).T, axis=1, out=offsets[:, 1:])
    held = [r for r in rows if r]
    arrays = (data, masks, vptr,
              np.concatenate([s.indices.ravel() for s in kept if s] + [np.zeros(0, np.uint8)]),
              np.concatenate([s.block for s in kept if s] + [np.zeros(0, np.int32)]),
              np.concatenate([s.slot_ptr.astype(np.int64) for s in kept if s] + [np.zeros(0, np.int64)]),
              np.concatenate([s.chunk_ptr for s in kept if s] + [np.zeros(0, np.int32)]),
              np.concatenate(biases), n_chunks, n_blocks, offsets, bool(packed),
              np.concatenate([r.values[:r.nnz] for r in held] + [np.zeros(GROUP, np.float32)]),
              np.concatenate([r.masks for r in held] + [np.zeros(0, np.uint16)]),
              np.concatenate([r.rptr for r in held] + [np.zeros(0, np.int64)]))
    width = int(max(max(LANES * c, BLOCK * b) for c, b in zip(n_chunks, n_blocks)))
    return arrays, (max(int(BLOCK * n_blocks[0]), 1), max(width, 1)), layers


_NO_PACKED = (np.zeros(LANES, np.float32), np.zeros(0, np.uint16), np.zeros(0, np.int64))   # a bitmap layer's


def form_nbytes(layers, bitmap: Sequence[bool] = ()) -> dict:
    """Bytes flatten's arrays of `layers` take in each form, biases included: {"sell-padded": ...,
    "sell-packed": ...} (packed: SELL.packed's values, masks and vptr instead of the padded data); a
    layer flagged in `bitmap` counts its bitmap rows in both."""
    padded = packed = 0
    for s, b in zip(layers, tuple(bitmap) or (False,) * len(layers)):
        bias = 4 * LANES * s.n_chunks
        if b:
            rows = bitmap_nbytes(s.shape, s.nnz) + bias
            padded, packed = padded + rows, packed + rows
            continue
        padded += s.nbytes + bias
        packed += 4 * int(np.count_nonzero(s.data)) + 2 * s.n_slots + 8 * (s.n_chunks + 1) + s.nbytes - s.data.nbytes + bias
    return {"sell-padded": int(padded), "sell-packed": int(packed)}
