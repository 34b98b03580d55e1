"""Engines for structured sparsity: BSR blocks (bsr), N:M groups (nm) and the scipy BSR baseline.

    eng = BSREngine(params, threads=2, block=(8, 1))   # any weights: whole blocks are stored
    eng = NMEngine(params, threads=2, n=2, m=4)        # weights with <= n non-zeros per group of m
    logits = eng(X)                                    # (B, n_in) -> (B, n_out)
    print(eng.plan(256).describe())

Batch 1 runs one matrix-vector kernel per layer (rows split over the threads for big layers);
batches > 1 are cut into chunks of a multiple of 32 columns, each chunk run through every layer on
one thread on register tiles (bsr_kernels / nm_kernels), like the csr engine's batch split.
"""
from __future__ import annotations

from functools import cached_property
from typing import Optional

import numpy as np

from sparsenet import bsr_kernels, nm_kernels
from sparsenet.bsr import BSR
from sparsenet.csr_engine import _aligned_zeros, chunk_scratch
from sparsenet.engine_base import Engine, check_batch
from sparsenet.model import layer_sizes
from sparsenet.names import NM_M
from sparsenet.nm import NM, check_nm, max_group_nnz
from sparsenet.plan import LayerPlan, Plan, Tuning, batch_chunk, cpu, panel_bytes
from sparsenet.prune import DEFAULT_BLOCK, check_block

CHUNK_TILE = bsr_kernels.TILE   # columns of the narrowest bsr / nm register tile: chunk widths are multiples of it


def chunk_columns(B: int, threads: int, max_chunk: int = Tuning.max_chunk) -> int:
    """Columns per chunk of the batch split (a multiple of CHUNK_TILE; the last chunk is zero-padded)."""
    Bc = max(batch_chunk(B, threads, max_chunk), 1)
    return -(-Bc // CHUNK_TILE) * CHUNK_TILE


class _Chunked(Engine):
    """What bsr and nm share: the batch split's per-thread buffers and the plan."""

    uses_numba = True
    layout_name = "?"

    def __init__(self, params, threads: Optional[int] = None, tuning: Optional[Tuning] = None):
        if tuning is not None and not isinstance(tuning, Tuning):
            raise ValueError(f"tuning must be a plan.Tuning, got {type(tuning).__name__}")
        self.tuning = tuning or Tuning()
        self._plans = {}
        self._chunk_bufs = None
        super().__init__(params, threads)

    def _chunk_buffers(self, Bc):
        """The batch split's scratch (csr_engine.chunk_scratch, HT over the padded in_rows), cached
        for the last chunk width."""
        if self._chunk_bufs is None or self._chunk_bufs[0] != Bc:
            self._chunk_bufs = chunk_scratch(self.threads, self._in_rows, self._width, Bc)
        return self._chunk_bufs[1:]

    def _chunk_width(self, B: int) -> int:
        """Columns per chunk of the batch split."""
        return chunk_columns(B, self.threads, self.tuning.max_chunk)

    @cached_property
    def _parallel_layers(self) -> np.ndarray:
        """Batch 1: which layers split their rows over the threads (enough stored multiply-adds);
        computed once (threads, tuning and the stored weights are fixed): ~1 us of a 20 us call."""
        return np.asarray([self.threads > 1 and s >= self.tuning.min_parallel_work for s in self._stored], np.bool_)

    def plan(self, batch: int) -> Plan:
        B = check_batch(batch)
        p = self._plans.get(B)
        if p is None:
            p = self._plans[B] = self._make_plan(B)
        return p

    def _make_plan(self, B: int) -> Plan:
        common = dict(engine=self.name, batch=B, threads=self.threads, isa=cpu().isa,
                      layout=self.layout_name, nbytes=self.nbytes)
        if B == 1:
            common["nbytes"] = self._spmv_nbytes()
            par = self._parallel_layers
            layers = tuple(LayerPlan(self._spmv_kernel(), bool(p)) for p in par)
            why = (f"batch 1: one matrix-vector kernel per layer; rows split over {self.threads} threads "
                   f"from {self.tuning.min_parallel_work} stored multiply-adds" if self.threads > 1
                   else "batch 1: one matrix-vector kernel per layer, one thread",)
            return Plan(split="none", layers=layers, reasons=why, **common)
        Bc = self._chunk_width(B)
        Bp = -(-B // CHUNK_TILE) * CHUNK_TILE
        if self._rows_pay(B, Bc, Bp):
            layers = tuple(LayerPlan(k, True) for k in self._tile_kernels(Bp))
            why = (f"row split: the batch ({B} columns, padded to {Bp}) is one {CHUNK_TILE}-column chunk, so every "
                   f"layer's rows are split over the {self.threads} threads instead (the batch split would "
                   "run on one)", f"register tiles of {CHUNK_TILE} columns: {self._tile_reason(Bp)}")
            return Plan(split="rows", padded_batch=Bp, layers=layers, reasons=why, **common)
        layers = tuple(LayerPlan(k, False) for k in self._tile_kernels(Bc))
        why = (f"batch split: {-(-B // Bc)} chunk(s) of {Bc} columns (multiples of {CHUNK_TILE}, the last "
               f"zero-padded), each through every layer on one thread; threads claim chunks one at a "
               f"time (a slower core runs fewer)", self._chunk_reason(Bc),
               f"register tiles of {self._tile_columns(Bc)} columns: {self._tile_reason(Bc)}")
        return Plan(split="batch", chunk=Bc, layers=layers, reasons=why, **common)

    def _rows_pay(self, B: int, Bc: int, Bp: int) -> bool:
        """Rows split over the threads instead of the batch (chunks of Bc columns; Bp: the batch
        padded to whole tiles): when the batch split would leave a thread idle (fewer chunks of >= 32
        columns than threads: batch 2-32 on 2 threads) and the call has enough work to pay a
        parallel region per layer (Tuning.min_rows_work)."""
        return (1 < B and self.threads > 1 and -(-B // Bc) < self.threads
                and sum(self._stored) * Bp >= self.tuning.min_rows_work)

    def _chunk_reason(self, Bc: int) -> str:
        return (f"chunks <= {self.tuning.max_chunk} columns, their number a multiple of the threads "
                f"(plan.batch_chunk)")

    def _spmv_kernel(self) -> str:
        return f"{self.layout_name}-spmv"

    def _spmv_nbytes(self) -> int:
        """Parameter bytes a batch-1 call reads (its layout's; nbytes: the canonical one's)."""
        return self.nbytes

    def _tile_columns(self, Bc: int) -> int:
        return CHUNK_TILE


class BSREngine(_Chunked):
    """Our Numba BSR kernels. block=(r, c): any weights are stored, as whole r x c blocks."""

    name = "bsr"
    layout_name = "bsr"

    def __init__(self, params, threads: Optional[int] = None, block=DEFAULT_BLOCK,
                 tuning: Optional[Tuning] = None):
        self.block = check_block(block)
        super().__init__(params, threads, tuning)

    def _build(self, params):
        r, c = self.block
        self.bsr = tuple(BSR.from_dense(l.weight, self.block).check() for l in params)
        sizes = layer_sizes(params)
        self.layer_sizes = sizes
        out_rows = [-(-n // r) * r for n in sizes]                     # padded as an output
        in_rows = [-(-n // c) * c for n in sizes]                      # padded as an input
        self._rows = np.asarray([max(o, i) for o, i in zip(out_rows, in_rows)], np.int64)
        self._in_rows = int(self._rows[0])
        self._width = int(self._rows[1:].max())
        self._data = np.concatenate([b.data.ravel() for b in self.bsr]).astype(np.float32)
        self._indices = np.concatenate([b.indices.astype(np.int32) for b in self.bsr])
        self._indptr = np.concatenate([b.indptr.astype(np.int64) for b in self.bsr])
        self._blk_off = np.concatenate([[0], np.cumsum([b.nblocks for b in self.bsr])]).astype(np.int64)
        self._ptr_off = np.concatenate([[0], np.cumsum([b.indptr.size for b in self.bsr])]).astype(np.int64)
        biases = []
        for n, o, l in zip(sizes[1:], out_rows[1:], params):
            b = np.zeros(o, np.float32)
            if l.bias is not None:
                b[:n] = l.bias
            biases.append(b)
        self._bias = np.concatenate(biases)
        self._bias_off = np.concatenate([[0], np.cumsum(out_rows[1:])]).astype(np.int64)
        self._sizes = np.asarray(sizes, np.int64)
        self._stored = [b.nnz for b in self.bsr]
        self.nblocks = int(self._blk_off[-1])
        self.nnz = int(sum(self._stored))                            # stored entries (whole blocks)
        self.n_weights = self.nnz                                    # multiply-adds a call does
        self.n_useful = int(sum(np.count_nonzero(l.weight) for l in params))
        self.nbytes = int(sum(b.nbytes for b in self.bsr) + sum(l.bias.nbytes for l in params if l.bias is not None))
        self.index_dtype = str(self.bsr[0].indices.dtype)
        self._vec = (_aligned_zeros(self._in_rows), _aligned_zeros(self._width), _aligned_zeros(self._width))

    def _chunk_width(self, B: int) -> int:
        """One register tile (CHUNK_TILE columns): a chunk's weights stream once per 32-column tile
        whatever its width, so narrow chunks cost nothing (k = 0 / 50 / 90 %, 1 thread: 32 columns
        as fast as 128 or faster, the chunk's activations fit L2) and give the threads many
        pieces to share (docs/perf-notes.md, session 7)."""
        return CHUNK_TILE

    def _chunk_reason(self, Bc: int) -> str:
        return (f"chunks of one register tile ({CHUNK_TILE} columns): the blocks stream once per tile at any chunk "
                f"width, and many chunks let a faster core take more")

    def _tile_kernels(self, Bc):
        RT = bsr_kernels.rows_per_tile(self.block[0], cpu().isa)
        return [f"bsr{self.block[0]}x{self.block[1]}-tile{RT}x{CHUNK_TILE}"] * len(self.bsr)

    def _tile_reason(self, Bc):
        RT = bsr_kernels.rows_per_tile(self.block[0], cpu().isa)
        return f"{RT} block row(s) x {CHUNK_TILE} columns in registers, each loaded activation row used {RT} times"

    def describe(self) -> dict:
        return dict(super().describe(), block=list(self.block), nblocks=self.nblocks, n_useful=self.n_useful)

    def _args(self):
        r, c = self.block
        return (self._data, self._indices, self._indptr, self._bias, self._sizes, self._blk_off,
                self._ptr_off, self._bias_off, self._rows, r, c)

    def _forward(self, X):
        B = X.shape[0]
        p = self._plans.get(B) or self.plan(B)
        out = np.empty((B, self.n_out), np.float32)
        if p.split == "none":
            x, buf0, buf1 = self._vec
            x[:self.n_in] = X[0]                                    # rows past n_in stay zero
            o = bsr_kernels.bsr_forward_vec(*self._args(), x, buf0, buf1, self._parallel_layers, self._callbacks,
                                            self.threads)
            out[0] = o[:self.n_out]
            return out
        if p.split == "rows":
            HT, buf0, buf1, _ = self._chunk_buffers(p.padded_batch)
            bsr_kernels.bsr_forward_rows(*self._args(), X, HT[0], buf0[0], buf1[0], out, 4 * self.threads,
                                         self._callbacks)
            return out
        HT, buf0, buf1, counter = self._chunk_buffers(p.chunk)
        bsr_kernels.bsr_forward_chunks(*self._args(), X, HT, buf0, buf1, out, counter, self._callbacks)
        return out


class NMEngine(_Chunked):
    """Our Numba N:M kernels. n, m: the weights must hold at most n non-zeros in every group of m
    consecutive inputs (prune.nm_prune); others are refused naming the layer, row and group. n=None
    reads n off the weights (the most non-zeros of any group of the pruned layers, at least 1): a
    1:4-pruned net runs on 1:4 kernels. As in prune, the output layer is not held to the pattern
    unless prune_output=True: it is stored m:m (every weight; it is small)."""

    name = "nm"
    layout_name = "nm"

    def __init__(self, params, threads: Optional[int] = None, n: Optional[int] = None, m: int = NM_M,
                 prune_output: bool = False, tuning: Optional[Tuning] = None, panel: Optional[int] = None,
                 tile: Optional[int] = None):
        self.n, self.m = check_nm(1 if n is None else n, m)
        self._infer_n = n is None
        # register tiles of 64 columns on every target (AVX-512: 4 rows at a time, as fast as 128 x 2
        # and twice the chunks for the threads to claim; AVX2 / NEON: one row, 8 of 16 ymm / 16 of 32 q);
        # see nm_kernels
        self.tile = 64 if tile is None else int(tile)
        if self.tile not in nm_kernels.TILES:
            raise ValueError(f"tile must be one of {nm_kernels.TILES} columns, got {tile!r}")
        # activation floats per column panel: plan.panel_bytes (32 KB for an L1d of 32-63 KB; on the
        # Xeon's 48 KB, 16 KB and 64 KB were slower: nm_kernels)
        self.panel = panel_bytes() // 4 if panel is None else int(panel)
        if self.panel < 1:
            raise ValueError(f"panel must be a positive number of floats, got {panel!r}")
        self.prune_output = bool(prune_output)
        super().__init__(params, threads, tuning)

    def _build(self, params):
        last = len(params) - 1
        if self._infer_n:
            pruned = params if self.prune_output else params[:last]
            self.n = max([1] + [max_group_nnz(layer.weight, self.m) for layer in pruned])
        self.ns = tuple(self.n if i < last or self.prune_output else self.m for i in range(len(params)))
        self._ns = np.asarray(self.ns, np.int64)
        layers = []
        for i, l in enumerate(params):
            try:
                layers.append(NM.from_dense(l.weight, self.ns[i], self.m).check())
            except ValueError as e:
                raise ValueError(f"layer {i}: {e}") from None
        self.nm = tuple(layers)
        sizes = layer_sizes(params)
        self.layer_sizes = sizes
        self._in_rows = sizes[0]
        self._width = max(sizes[1:])
        rows = [nm_kernels.pass_major(a.values, a.idx, a.n) for a in self.nm]      # n > 2: passes of 2 slots
        self._values = np.concatenate([v for v, _ in rows])
        self._idx = np.concatenate([i for _, i in rows])
        self._val_off = np.concatenate([[0], np.cumsum([a.nnz for a in self.nm])]).astype(np.int64)
        self._bias = np.concatenate([np.zeros(n, np.float32) if l.bias is None else l.bias
                                     for n, l in zip(sizes[1:], params)]).astype(np.float32)
        self._sizes = np.asarray(sizes, np.int64)
        self._stored = [a.nnz for a in self.nm]
        self.nnz = int(sum(self._stored))                            # slots (padding included)
        self.n_weights = self.nnz
        self.n_useful = int(sum(np.count_nonzero(l.weight) for l in params))
        self.nbytes = int(sum(a.nbytes for a in self.nm) + sum(l.bias.nbytes for l in params if l.bias is not None))
        self.index_dtype = "uint8"
        self._vec = (_aligned_zeros(self._width), _aligned_zeros(self._width))
        # batch 1 on N:4: a row-interleaved copy, lanes over 16 output rows (nm_kernels.nm_vec16)
        self._vec16 = None
        if self.m == 4 and all(n in nm_kernels.VEC16_N for n in self.ns):
            R = nm_kernels.ROWS
            inter = [nm_kernels.interleave(a.values, a.idx, a.n, a.m) for a in self.nm]
            pad = [-(-n // R) * R for n in sizes[1:]]
            bias = np.zeros(sum(pad), np.float32)
            bias_off = np.concatenate([[0], np.cumsum(pad)]).astype(np.int64)
            for o, n, l in zip(bias_off[:-1], sizes[1:], params):
                if l.bias is not None:
                    bias[o:o + n] = l.bias
            width = max(max(pad), 4 * max(a.groups for a in self.nm))
            self._vec16 = (np.concatenate([v for v, _ in inter]), np.concatenate([i for _, i in inter]), bias,
                           np.concatenate([[0], np.cumsum([v.size for v, _ in inter])]).astype(np.int64), bias_off,
                           _aligned_zeros(width), _aligned_zeros(width), _aligned_zeros(width))

    def _spmv_kernel(self) -> str:
        return "nm-spmv16" if self._vec16 is not None else "nm-spmv"

    def _spmv_nbytes(self) -> int:
        if self._vec16 is None:
            return self.nbytes
        values, idx, bias = self._vec16[:3]            # the interleaved copy: rows padded to 16
        return int(values.nbytes + idx.nbytes + bias.nbytes)

    def _chunk_width(self, B: int) -> int:
        """Chunks of one register tile: a tile spans its chunk's HT rows (a 128-column tile of a
        256-column HT leaves half of L1's sets unused and ran ~2x slower, nm_kernels). With tile=128,
        64 columns where 128 would give the threads fewer than 2 chunks each, so that a thread on a
        faster core claims more of them (this VM's two vCPUs ran up to 1.7x apart)."""
        Bc = chunk_columns(B, self.threads, min(self.tile, self.tuning.max_chunk))
        if self.threads > 1 and Bc > 64 and -(-B // Bc) < 2 * self.threads:
            Bc = 64
        return Bc

    def _chunk_reason(self, Bc: int) -> str:
        return (f"chunks of one register tile (<= {min(self.tile, self.tuning.max_chunk)} columns; 64 when "
                f"wider ones would leave a thread fewer than 2 chunks to claim)")

    def _tile_columns(self, Bc: int) -> int:
        """The widest register tile the kernel runs on a chunk of Bc columns (nm_matmul_bias_relu's rule)."""
        return next(t for t in nm_kernels.TILES if t == CHUNK_TILE or (t <= self.tile and t <= Bc))

    def _tile_kernels(self, Bc):
        T = self._tile_columns(Bc)
        R = nm_kernels.rows_per_tile(T // nm_kernels.LANES, cpu().isa)
        # n > 2: the groups' slots in passes of 2 (and 1), each a 2:M (1:M) tile
        return [f"nm{n}:{self.m}-tile{R}x{T}" + (f" ({'+'.join(str(nt) for _, nt in nm_kernels.passes(n))} slots)" if n > 2 else "")
                for n in self.ns]

    def _tile_reason(self, Bc):
        T = self._tile_columns(Bc)
        R = nm_kernels.rows_per_tile(T // nm_kernels.LANES, cpu().isa)
        return (f"{R} row(s) x {T} columns in registers over their {self.n} of every {self.m} slots (tiles up "
                f"to {self.tile} columns on {cpu().isa}), in column panels of "
                f"{max(self.panel // T // self.m, 1) * self.m} inputs (~{self.panel * 4 // 1024} KB of "
                "activations kept in L1)")

    def describe(self) -> dict:
        return dict(super().describe(), n=self.n, m=self.m, layer_n=list(self.ns), n_useful=self.n_useful)

    def _forward(self, X):
        B = X.shape[0]
        p = self._plans.get(B) or self.plan(B)
        out = np.empty((B, self.n_out), np.float32)
        args = (self._values, self._idx, self._bias, self._sizes, self._val_off, self._ns, self.m)
        if p.split == "none" and self._vec16 is not None:
            values, idx, bias, val_off, bias_off, x, buf0, buf1 = self._vec16
            x[:self.n_in] = X[0]                                    # inputs past n_in stay zero
            o = nm_kernels.nm_forward_vec16(values, idx, bias, self._sizes, val_off, bias_off, self._ns, x, buf0,
                                            buf1, self._parallel_layers, self._callbacks, self.threads)
            out[0] = o[:self.n_out]
            return out
        if p.split == "none":
            buf0, buf1 = self._vec
            out[0] = nm_kernels.nm_forward_vec(*args, X.reshape(self.n_in), buf0, buf1, self._parallel_layers)
            return out
        if p.split == "rows":
            HT, buf0, buf1, _ = self._chunk_buffers(p.padded_batch)
            nm_kernels.nm_forward_rows(*args, self.panel, X, HT[0], buf0[0], buf1[0], out, 4 * self.threads,
                                       self._callbacks)
            return out
        HT, buf0, buf1, counter = self._chunk_buffers(p.chunk)
        nm_kernels.nm_forward_chunks(*args, self.panel, self.tile, X, HT, buf0, buf1, out, counter, self._callbacks)
        return out


class ScipyBSREngine(Engine):
    """The baseline: scipy.sparse.bsr_array @ dense per layer (transposed activations, padded shapes)."""

    name = "bsr-scipy"

    def __init__(self, params, threads: Optional[int] = None, block=DEFAULT_BLOCK):
        self.block = check_block(block)
        super().__init__(params, threads)

    def _build(self, params):
        self.bsr = tuple(BSR.from_dense(l.weight, self.block).check() for l in params)
        self._S = [b.to_scipy() for b in self.bsr]
        self._b = [None if l.bias is None else l.bias[:, None] for l in params]
        self.layer_sizes = layer_sizes(params)
        self.nnz = int(sum(b.nnz for b in self.bsr))
        self.n_weights = self.nnz
        self.nbytes = int(sum(S.data.nbytes + S.indices.nbytes + S.indptr.nbytes for S in self._S)
                          + sum(b.nbytes for b in self._b if b is not None))
        self.index_dtype = str(self._S[0].indices.dtype)

    def plan(self, batch: int) -> Plan:
        return Plan(engine=self.name, batch=check_batch(batch), threads=self.threads, isa=cpu().isa, layout="scipy-bsr",
                    split="none", layers=tuple(LayerPlan("scipy-bsr", False) for _ in self._S),
                    reasons=(f"scipy.sparse BSR ({self.block[0]}x{self.block[1]}) @ dense per layer "
                             "(scipy's own loop, one thread)",), nbytes=self.nbytes)

    def _forward(self, X):
        last = len(self._S) - 1
        h = X.T                                                     # (n_in, B)
        for i, (S, b) in enumerate(zip(self._S, self._b)):
            n_out = self.layer_sizes[i + 1]
            if S.shape[1] != h.shape[0]:                            # pad the inputs to whole blocks
                hp = np.zeros((S.shape[1], h.shape[1]), np.float32)
                hp[:h.shape[0]] = h
                h = hp
            h = (S @ np.ascontiguousarray(h))[:n_out]               # (n_in_p, B) -> (n_out, B)
            if b is not None:
                h = h + b
            if i < last:
                h = np.maximum(h, 0.0)
        return np.ascontiguousarray(h.T, dtype=np.float32)


ENGINE_CLASSES = {"bsr": BSREngine, "nm": NMEngine, "bsr-scipy": ScipyBSREngine}
