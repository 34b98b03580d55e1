"""Inference engines behind one call: engine(X) -> logits, for dense, CSR, scipy CSR and shrunk nets.

    eng = make_engine("csr", params, threads=2)
    eng.warmup(batch=256)             # compile (or load the cache); seconds
    with eng.threads_context():       # hold thread limits around many timed calls
        logits = eng(X)               # (B, n_in) -> (B, n_out) float32
"""
from __future__ import annotations

import contextlib
import time
from typing import Optional, Sequence

import numba
import numpy as np

from sparsenet import kernels, sell_kernels
from sparsenet.csr import CSR, index_dtype
from sparsenet.model import Layer, check_params, layer_sizes
from sparsenet.sell import LANES, flatten as sell_flatten

ENGINES = ("dense", "csr", "csr-scipy", "shrunk")

# A CSR layer runs on all threads when nnz * batch reaches this much work (~6 us of one core); below
# it the ~1.4 us launch of a parallel region (measured, idle machine) eats the gain. Not tuned yet.
MIN_PARALLEL_WORK = 20_000
# A CSR layer is cut into column panels for batch > 1 only from this many non-zeros (panel_width).
MIN_PANEL_NNZ = 32_768
# Inputs per column panel at density >= 0.45 (twice as many at 0.25-0.45), for 128-column chunks.
PANEL_WIDTH = 64

# Batch split (kernels.csr_forward_chunks): a batch > 1 is cut into chunks of <= MAX_CHUNK columns,
# each run through the whole net by one thread. Always on one thread; with more, only when a thread's
# chunk is >= MIN_CHUNK columns (2 * MIN_CHUNK if the net has column panels: a chunk that narrow
# loses the panels' L1 reuse), or >= 16 columns when nnz * batch <= SMALL_WORK. Otherwise the rows
# of each layer are split (kernels.csr_forward). Measured at 2 threads on the trained MNIST net, see
# CSREngine.chunk_width. MAX_CHUNK: 128 columns with 64-input panels beat 256 with 32-input ones at
# batch 256 (k=0.5, 2 threads: 5.8 vs 6.5 ms) and lose 5-8% at batch 4096; plain layers ran the
# same at 64, 128 and 256 (within 3%).
MIN_CHUNK = 64
MAX_CHUNK = 128
SMALL_WORK = 2_500_000
# Column panels (the panel-major copy) are used by kernel calls over at least this many columns:
# at 64 columns whole rows are 1.05-1.1x faster, at 96 panels are (1000x1000 layer, density 0.3-0.5).
MIN_PANEL_BATCH = 96
# Chunks of TILE_CHUNK columns (contiguous (n_in, 32) activation blocks, simd.csr_rows32 register tiles)
# unless a layer has density >= DENSE_PANELS (its panels pay more). Trained net, ms, 128-column
# chunks vs 32 (1 / 2 threads): k=0.9 b256 2.54 vs 1.91 / 1.31 vs 0.98, b4096 41.3 vs 31.2 / 21.0
# vs 16.1; k=0.7 b256 7.51 vs 6.73 / 3.79 vs 3.44; k=0.99 b256 0.37 vs 0.30; but k=0.5 b256 11.8 vs
# 12.4 / 5.98 vs 6.27, b4096 183 vs 196. (In a 128-column block, 32-column tiles run at a 512-byte
# stride and thrash the cache sets: k=0.9 b256 stays at 2.54 ms.)
TILE_CHUNK = 32
DENSE_PANELS = 0.45
# Batch 1 on SELL (sell.py, sell_kernels.py, AVX-512): a layer runs on all threads from this many
# slots. Trained net at 2 threads, whole forward pass (us) for thresholds 1500 / 3000 / 6000 / never:
# k=0.5 65 / 63 / 68 / 94, k=0.9 29.0 / 27.6 / 27.9 / 36.6, k=0.99 11.7 / 11.5 / 10.7 / 11.1.
MIN_PARALLEL_SLOTS = 3000
# SELL is kept for batch 1 while its arrays take at most this many bytes, or twice CSR's (sell_pays)
SELL_CACHE_BYTES = 8 * 2 ** 20
_NEVER = np.iinfo(np.int64).max

_blas = None


def _blas_libs() -> list:
    """threadpoolctl controllers of the loaded BLAS libraries (scanned once)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


def blas_library() -> dict:
    """Name, version and kernel (`architecture`) of the BLAS that numpy uses, for bench records."""
    libs = _blas_libs()
    if not libs:
        return {"blas": None, "blas_version": None, "blas_architecture": None}
    info = libs[0].info()
    return {"blas": info.get("internal_api"), "blas_version": info.get("version"),
            "blas_architecture": info.get("architecture")}


@contextlib.contextmanager
def _limit_threads(n: int, blas: bool, numba_threads: bool):
    """Set BLAS (via threadpoolctl's per-library controllers) and Numba thread counts, restore after.

    Measured per use: ~4 us BLAS + ~1-3 us Numba (threadpool_limits() rescans the loaded libraries
    each time: ~0.8 ms; ThreadpoolController.limit: ~14 us). Engine.threads_context() pays it once.
    """
    old_numba = numba.get_num_threads() if numba_threads else None
    libs = _blas_libs() if blas else []
    old_blas = [lib.get_num_threads() for lib in libs]
    try:
        if numba_threads and old_numba != n:
            numba.set_num_threads(n)
        for lib, old in zip(libs, old_blas):
            if old != n:
                lib.set_num_threads(n)
        yield
    finally:
        if numba_threads and old_numba != n:
            numba.set_num_threads(old_numba)
        for lib, old in zip(libs, old_blas):
            if old != n:
                lib.set_num_threads(old)


class Engine:
    """Common shell: input checks, thread limits, counts. Subclasses implement _forward and _build."""

    name = "?"
    uses_blas = False      # which thread pools the forward pass uses
    uses_numba = False

    def __init__(self, params: Sequence[Layer], threads: Optional[int] = None):
        params = check_params(params)
        max_threads = numba.config.NUMBA_NUM_THREADS
        threads = max_threads if threads is None else int(threads)
        if not 1 <= threads <= max_threads:
            raise ValueError(f"threads must be in 1..{max_threads}, got {threads}")
        self.threads = threads
        self.n_in = params[0].weight.shape[1]
        self.n_out = params[-1].weight.shape[0]
        self.has_bias = any(l.bias is not None for l in params)
        self._held = 0
        self._build(params)

    # -- subclass hooks --------------------------------------------------------------------------
    def _build(self, params):
        raise NotImplementedError

    def _forward(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- the call --------------------------------------------------------------------------------
    def __call__(self, X) -> np.ndarray:
        """Logits of a batch: (B, n_in) -> (B, n_out) float32, a new array the engine does not keep.

        A row of X holding NaN or +-inf gets NaN logits on every engine: sparse kernels never read
        the inputs their pruned weights skip, so they would otherwise disagree with dense BLAS.
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise ValueError(f"expected X of shape (B, {self.n_in}), got {X.shape}")
        if X.dtype != np.float32 or not X.flags.c_contiguous:
            X = np.ascontiguousarray(X, dtype=np.float32)
        if X.shape[0] == 0:
            return np.empty((0, self.n_out), np.float32)
        if self._held:
            out = self._forward(X)
        else:
            with _limit_threads(self.threads, self.uses_blas, self.uses_numba):
                out = self._forward(X)
        if not kernels.all_finite(X):
            out[~np.isfinite(X).all(axis=1)] = np.nan
        return out

    @contextlib.contextmanager
    def threads_context(self):
        """Hold this engine's thread limits across many calls (calls inside skip the per-call set)."""
        with _limit_threads(self.threads, True, True):
            self._held += 1
            try:
                yield self
            finally:
                self._held -= 1

    def warmup(self, batch: int = 1) -> float:
        """Seconds spent in one call on a zero batch (the compile, or cache load, for Numba)."""
        X = np.zeros((int(batch), self.n_in), np.float32)
        t = time.perf_counter()
        self(X)
        return time.perf_counter() - t

    # -- counts ----------------------------------------------------------------------------------
    def flops(self, batch: int) -> int:
        """Useful flops of a forward pass: 2 * (stored multiply-adds) * batch."""
        return 2 * self.n_weights * int(batch)

    def describe(self) -> dict:
        return {"name": self.name, "layer_sizes": list(self.layer_sizes), "nnz": self.nnz,
                "nbytes": self.nbytes, "index_dtype": self.index_dtype, "threads": self.threads,
                "has_bias": self.has_bias}

    index_dtype = None

    def layout(self, batch: int) -> str:
        """The storage a call of this batch size computes with (recorded with every timing)."""
        return self.name

    def call_nbytes(self, batch: int) -> int:
        """Bytes of the stored parameters a call of this batch size reads (nbytes: the canonical ones)."""
        return self.nbytes

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} sizes={self.layer_sizes} nnz={self.nnz} threads={self.threads}>"


class DenseEngine(Engine):
    """BLAS (numpy matmul) on the full, masked weight matrices."""

    name = "dense"
    uses_blas = True

    def _build(self, params):
        # store W.T contiguous so every layer is a plain (B, n_in) @ (n_in, n_out) GEMM
        self._WT = [np.ascontiguousarray(l.weight.T) for l in params]
        self._b = [l.bias for l in params]
        self.layer_sizes = layer_sizes(params)
        self.nnz = int(sum(np.count_nonzero(l.weight) for l in params))
        self.n_weights = int(sum(l.weight.size for l in params))
        self.nbytes = int(sum(w.nbytes for w in self._WT) + sum(b.nbytes for b in self._b if b is not None))

    def _forward(self, X):
        h = X
        last = len(self._WT) - 1
        for i, (WT, b) in enumerate(zip(self._WT, self._b)):
            h = h @ WT                                   # (B, n_in) -> (B, n_out)
            if b is not None:
                h += b
            if i < last:
                np.maximum(h, 0.0, out=h)
        return h


class ShrunkEngine(DenseEngine):
    """BLAS on prune.shrink(params): dead hidden neurons physically removed."""

    name = "shrunk"

    def _build(self, params):
        from sparsenet.prune import shrink
        super()._build(shrink(params))


class ScipyCSREngine(Engine):
    """The baseline: the CSR engine's structure (transposed activations) with scipy.sparse matmuls."""

    name = "csr-scipy"
    uses_numba = False

    def _build(self, params):
        self.csr = tuple(CSR.from_dense(l.weight).check() for l in params)
        self._S = [c.to_scipy() for c in self.csr]
        self._b = [None if l.bias is None else l.bias[:, None] for l in params]
        self.layer_sizes = layer_sizes(params)
        self.nnz = int(sum(c.nnz for c in self.csr))
        self.n_weights = self.nnz
        self.nbytes = int(sum(S.data.nbytes + S.indices.nbytes + S.indptr.nbytes for S in self._S)
                          + sum(b.nbytes for b in self._b if b is not None))
        self.index_dtype = str(self._S[0].indices.dtype)

    def _forward(self, X):
        h = np.ascontiguousarray(X.T)                    # (n_in, B)
        last = len(self._S) - 1
        for i, (S, b) in enumerate(zip(self._S, self._b)):
            h = S @ h                                    # (n_in, B) -> (n_out, B)
            if b is not None:
                h += b
            if i < last:
                np.maximum(h, 0.0, out=h)
        return np.ascontiguousarray(h.T)


class CSREngine(Engine):
    """Our Numba CSR kernels; the whole forward pass is one compiled call.

    Batches > 1 are split into column chunks, one thread running a chunk through every layer
    (kernels.csr_forward_chunks), unless the chunks would be too narrow at threads > 1: then each
    layer's rows are split over the threads (kernels.csr_forward). Batch 1 runs on a SELL copy of
    the net (sell_kernels.sell_forward) where the CPU has AVX-512F, else on the CSR SpMV;
    `sell=False` forces the SpMV, `sell=True` demands SELL.
    """

    name = "csr"
    uses_numba = True

    def __init__(self, params: Sequence[Layer], threads: Optional[int] = None, sell: Optional[bool] = None):
        available = sell_kernels.available()
        if sell and not available:
            raise ValueError("sell=True needs a CPU with AVX-512F (as Numba targets it); this one has "
                             "none: leave sell unset to run batch 1 on the CSR SpMV")
        self.uses_sell = available if sell is None else bool(sell)
        self._sell_auto = sell is None
        super().__init__(params, threads)

    def _build(self, params):
        self.csr = tuple(CSR.from_dense(l.weight).check() for l in params)
        sizes = layer_sizes(params)
        self.layer_sizes = sizes
        idx = index_dtype(max(sizes[:-1]))               # one dtype for the concatenated indices
        # kernel calls over >= MIN_PANEL_BATCH columns run on column panels where a layer is dense
        # enough (a second, panel-major copy of those layers: SpMV over panels was 5-10x slower)
        self.panels = tuple(panel_width(c.density, c.shape[1], c.nnz) for c in self.csr)
        self._plain = _flatten([(c.data, c.indices, c.indptr) for c in self.csr], idx, sizes[:-1])
        if all(P >= n for P, n in zip(self.panels, sizes[:-1])):
            self._paneled = self._plain
        else:
            self._paneled = _flatten([panel_layout(c, P) for c, P in zip(self.csr, self.panels)],
                                     idx, self.panels)
        self._bias = np.concatenate([np.zeros(n, np.float32) if l.bias is None else l.bias
                                     for n, l in zip(sizes[1:], params)]).astype(np.float32)
        self._sizes = np.asarray(sizes, np.int64)
        self._nnz_off = np.concatenate([[0], np.cumsum([c.nnz for c in self.csr])]).astype(np.int64)
        self.nnz = int(self._nnz_off[-1])
        self.n_weights = self.nnz
        self.nbytes = int(sum(c.nbytes for c in self.csr)
                          + sum(l.bias.nbytes for l in params if l.bias is not None))
        # bytes of the second (panel-major) copy of data/indices/indptr held for batches > 1;
        # 0 when no layer is panelled (with the default net: sparsity >= ~75%)
        self.panel_nbytes = 0 if self._paneled is self._plain else int(
            sum(a.nbytes for a in self._paneled[:3]))
        self.index_dtype = str(idx)
        self._width = max(sizes[1:])
        self._bufs = None                                # (B, Bp, HT, buf0, buf1), see _buffers
        self.min_parallel_work = MIN_PARALLEL_WORK
        self.min_chunk, self.max_chunk, self.small_work = MIN_CHUNK, MAX_CHUNK, SMALL_WORK
        if not any(c.density >= DENSE_PANELS for c, P, n in zip(self.csr, self.panels, sizes[:-1]) if P < n):
            # no layer dense enough for panels to pay: 32-column chunks, run on register tiles
            self.min_chunk, self.max_chunk = 16, TILE_CHUNK
        self.min_panel_batch = MIN_PANEL_BATCH
        self._chunk_bufs = None                          # (Bc, HT, buf0, buf1), see _chunk_buffers
        self.sell_nbytes, self.sell_padding = 0, None
        if self.uses_sell:
            self._sell, (n_x, width), layers = sell_flatten(params)
            self._sell_bufs = (_aligned_zeros(n_x), _aligned_zeros(width), _aligned_zeros(width))
            # the SELL copy (batch 1): its arrays and its padded biases
            self.sell_nbytes = int(sum(s.nbytes for s in layers) + self._sell[5].nbytes)
            self.sell_padding = sum(s.n_slots for s in layers) * LANES / max(self.nnz, 1)
            if self._sell_auto and not sell_pays(self.sell_nbytes, self.nbytes):
                self.uses_sell, self._sell, self._sell_bufs = False, None, None
        self.min_parallel_slots = MIN_PARALLEL_SLOTS

    def describe(self) -> dict:
        return dict(super().describe(), panels=list(self.panels), panel_nbytes=self.panel_nbytes,
                    sell=self.uses_sell, sell_nbytes=self.sell_nbytes, sell_padding=self.sell_padding)

    def layout(self, batch: int) -> str:
        if batch == 1:
            return "sell" if self.uses_sell else "csr"
        return "csr-panels" if self._layout(self.chunk_width(batch) or batch) is not self._plain else "csr"

    def call_nbytes(self, batch: int) -> int:
        if batch == 1 and self.uses_sell:
            return self.sell_nbytes
        if self.layout(batch) == "csr-panels":
            return self.nbytes + self.panel_nbytes - sum(c.nbytes for c in self.csr)
        return self.nbytes

    def _buffers(self, B):
        """(padded batch, HT, buf0, buf1): 64-byte aligned, zeroed, cached for the last batch size.

        Aligned rows matter: an AVX-512 load that straddles two cache lines halves load throughput
        (measured: SpMM 36 -> 46 GFLOP/s on one core). Rows are aligned when the padded batch is a
        multiple of 16 floats; the batch is padded (with zero columns) when that costs <= 1/8 extra work.
        """
        if self._bufs is None or self._bufs[0] != B:
            Bp = -(-B // 16) * 16
            if (Bp - B) * 8 > B:
                Bp = B
            self._bufs = (B, Bp, _aligned_zeros((self.n_in, Bp)), _aligned_zeros(self._width * Bp),
                          _aligned_zeros(self._width * Bp))
        return self._bufs[1:]

    def _chunk_buffers(self, Bc):
        """Per-thread scratch of csr_forward_chunks: HT (threads, n_in, Bc), buf0/1 (threads, width * Bc).

        64-byte aligned (as _buffers) and cached for the last chunk width.
        """
        if self._chunk_bufs is None or self._chunk_bufs[0] != Bc:
            n = self.threads
            self._chunk_bufs = (Bc, _aligned_zeros((n, self.n_in, Bc)),
                                _aligned_zeros((n, self._width * Bc)), _aligned_zeros((n, self._width * Bc)))
        return self._chunk_bufs[1:]

    def chunk_width(self, B) -> int:
        """Columns per chunk of the batch split, or 0: split each layer's rows instead.

        Measured at 2 threads, medians over 3-5 processes (rows vs chunks, ms): k=0.9: b64 0.45 vs
        0.53, b128 0.84 vs 0.74, b256 1.6 vs 1.5; k=0.99: b32 0.105 vs 0.074, b128 0.23 vs 0.135;
        k=0.95: b32 0.21 vs 0.24, b96 0.39 vs 0.36 (left on rows); k=0.5 (panelled): b192 4.5 vs
        4.7, b256 6.3-6.7 vs 5.8-6.0. Narrow chunks run the kernels at 16-32 columns (18-29 GFLOP/s
        a core against 41 at 64); the row split pays its serial transposition and a parallel region
        per layer (at b64, k=0.99, two threads take 0.14 ms, one thread 0.13).
        """
        Bc = batch_chunk(B, self.threads, self.max_chunk)
        if self.threads == 1 or Bc == 0:
            return Bc
        min_chunk = 2 * self.min_chunk if self.panel_nbytes else self.min_chunk
        if Bc >= min_chunk or (Bc >= 16 and self.nnz * B <= self.small_work):
            return Bc
        return 0

    def _layout(self, n_columns):
        """Plain or column-panelled arrays for kernel calls over n_columns batch columns."""
        return self._paneled if n_columns >= self.min_panel_batch else self._plain

    def _forward(self, X):
        B = X.shape[0]
        if B == 1 and self.uses_sell:                    # the batch-1 path first: microseconds count
            slots = self.min_parallel_slots if self.threads > 1 else _NEVER
            logits = np.empty((1, self.n_out), np.float32)
            sell_kernels.sell_forward(*self._sell, X, *self._sell_bufs, slots, self.threads, logits)
            return logits
        Bc = self.chunk_width(B)
        if Bc:
            HT, buf0, buf1 = self._chunk_buffers(Bc)
            out = np.empty((B, self.n_out), np.float32)
            data, indices, indptr, ptr_off, panels = self._layout(Bc)
            kernels.csr_forward_chunks(data, indices, indptr, self._bias, self._sizes, self._nnz_off,
                                       ptr_off, panels, X, HT, buf0, buf1, out)
            return out
        Bp, HT, buf0, buf1 = self._buffers(B)
        if B == 1:
            HT = X.reshape(self.n_in, 1)                 # (1, n_in) is already (n_in, 1) in memory
        else:
            np.copyto(HT[:, :B], X.T)                    # (B, n_in) -> (n_in, Bp); pad columns stay 0
        work = self.min_parallel_work if self.threads > 1 else _NEVER
        data, indices, indptr, ptr_off, panels = self._layout(B)
        outT = kernels.csr_forward(data, indices, indptr, self._bias, self._sizes, self._nnz_off,
                                   ptr_off, panels, HT, buf0, buf1, work, self.threads)  # (n_out, Bp)
        out = np.empty((B, self.n_out), np.float32)     # outT is a view of buf0/buf1: never return it
        out[:] = outT[:, :B].T
        return out


def sell_pays(sell_nbytes: int, csr_nbytes: int) -> bool:
    """Whether batch 1 should run on SELL rather than the CSR SpMV (unless the caller chose).

    SELL reads its padding: it is bandwidth-bound where the SpMV is bound by its loads per non-zero.
    It wins while its bytes stay in the caches (SELL_CACHE_BYTES) or are at most twice CSR's. One
    core, one square layer (scaling_params), ms SELL vs SpMV, padding: 1024 at 99 %: 0.007 vs 0.011
    (4.8); 4096 at 99 %: 0.092 vs 0.075 (4.8, 4 MB, SELL kept: the one loss, by 1.2x); 16384 at
    99 %: 4.0 vs 1.25 (4.8, 65 MB, dropped); 16384 at 90 %: 9.0 vs 20.0 (2.0, 271 MB, kept).
    """
    return sell_nbytes <= max(SELL_CACHE_BYTES, 2 * csr_nbytes)


def batch_chunk(B: int, threads: int, max_chunk: int = MAX_CHUNK) -> int:
    """Columns per chunk when B columns are cut into equal shares for `threads`; 0 for B <= 1.

    The number of chunks is a multiple of threads, each <= max_chunk (max_chunk <= 0: no chunks);
    the width is rounded up to a multiple of 16 floats (64-byte aligned rows) when that costs
    <= 1/8 extra work, as CSREngine._buffers pads the batch.
    """
    if B <= 1 or max_chunk <= 0:
        return 0
    n_chunks = threads * -(-B // (threads * max_chunk))
    Bc = -(-B // n_chunks)
    Bc16 = -(-Bc // 16) * 16
    return Bc16 if (Bc16 - Bc) * 8 <= Bc else Bc


def _flatten(layout, idx_dtype, panels) -> tuple:
    """Concatenate per-layer (data, indices, indptr) for kernels.csr_forward (+ ptr_off, panels)."""
    indptr = [p for _, _, p in layout]
    return (np.concatenate([d for d, _, _ in layout]),
            np.concatenate([i for _, i, _ in layout]).astype(idx_dtype, copy=False),
            np.concatenate(indptr),
            np.concatenate([[0], np.cumsum([p.size for p in indptr])]).astype(np.int64),
            np.asarray(panels, np.int64))


def panel_width(density: float, n_in: int, nnz: int) -> int:
    """Inputs per column panel for a layer; n_in (one panel: plain CSR) when sparse or small.

    Small layers (< 32768 non-zeros, e.g. the 200 x 10 output layer) stay plain: no time to win,
    and a panelled layer makes the engine hold a second, panel-major copy of the net for batch > 1.

    Measured on one core, 1000x1000 layer, 128 columns (a batch chunk, see MAX_CHUNK;
    kernels.csr_panels_matmul_bias_relu_serial vs whole rows): density 1.0: 1.22x (P=64),
    0.5: 1.15x (P=64), 0.3: 1.13x (P=128), 0.2: 1.08x (P=128), 0.1: 0.98x (P=128). The best P
    keeps a panel's slice of HT near 32 KB (L1) at density >= 0.5: at 256 columns P=32 was best
    (1.14x at 0.5) and P=64 only 1.06x; at <= 64 columns whole rows win (MIN_PANEL_BATCH).
    """
    P = PANEL_WIDTH if density >= 0.45 else 2 * PANEL_WIDTH if density >= 0.25 else n_in
    return P if 2 * P <= n_in and nnz >= MIN_PANEL_NNZ else n_in


def panel_layout(c: CSR, P: int) -> tuple:
    """(data, local indices, indptr) of CSR `c` cut into column panels of P inputs, panel-major.

    indptr holds n_panels blocks of M + 1 offsets into data (block p: the rows' segments in panel p).
    With P >= N it is c's own arrays (one panel, plain CSR).
    """
    M, N = c.shape
    n_panels = max(1, -(-N // P))
    if n_panels == 1:
        return c.data, c.indices, c.indptr
    rows = np.repeat(np.arange(M), np.diff(c.indptr))
    panel = c.indices.astype(np.int64) // P
    order = np.argsort(panel * M + rows, kind="stable")   # panel-major, row, then column
    counts = np.bincount(panel * M + rows, minlength=n_panels * M)
    starts = np.concatenate([[0], np.cumsum(counts)])     # (n_panels * M + 1,)
    indptr = np.concatenate([starts[p * M:p * M + M + 1] for p in range(n_panels)])
    local = (c.indices.astype(np.int64) - panel * P)[order]
    return c.data[order], local.astype(c.indices.dtype), indptr.astype(c.indptr.dtype)


def _aligned_zeros(shape, align: int = 64) -> np.ndarray:
    """float32 zeros whose first element sits on an `align`-byte boundary."""
    n = int(np.prod(shape))
    raw = np.zeros(n + align // 4, np.float32)
    off = (-raw.ctypes.data % align) // 4
    return raw[off:off + n].reshape(shape)


_CLASSES = {"dense": DenseEngine, "csr": CSREngine, "csr-scipy": ScipyCSREngine, "shrunk": ShrunkEngine}


def make_engine(name: str, params: Sequence[Layer], threads: Optional[int] = None, **options) -> Engine:
    """Build the named engine over `params` (already pruned; "shrunk" shrinks them itself).

    options go to the engine (the csr engine takes `sell`)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)}")
    return _CLASSES[name](params, threads=threads, **options)
