"""The csr engine: our Numba CSR kernels, the whole forward pass in one compiled call.

What a call runs is its plan (plan.plan_csr, computed once per batch size): batch 1 on a SELL copy
of the net (sell_kernels: the AVX-512 kernel where the CPU has AVX-512F, its portable twin when
asked for; SELL-16's densest layers in bitmap rows, bitmap_kernels, by plan.bitmap_layers) or on
the CSR SpMV; batches > 1 split into column chunks, one thread running a chunk through every layer
(kernels.csr_forward_chunks), or each layer's rows split over the threads (kernels.csr_forward).
This module builds the layouts and buffers and executes the plan.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from sparsenet import kernels, sell8, sell8_kernels, sell_kernels
from sparsenet.csr import CSR, index_dtype
from sparsenet.engine_base import Engine, check_batch
from sparsenet.model import Layer, layer_sizes
from sparsenet.bitmap import layer_groups
from sparsenet.plan import (NetShape, Plan, Tuning, bitmap_layers, chunk_width, padded_batch, panel_width, plan_csr,
                            sell_packs, wide_panel_width)
from sparsenet.sell import LANES, flatten as sell_flatten, form_nbytes, net_layout

SELL_AVX512, SELL_PORTABLE = "sell16-avx512", "sell16-portable"
PACKED = {SELL_AVX512: "sell16p-avx512", SELL_PORTABLE: "sell16p-portable"}     # the same on packed values
SELL8_AVX2, SELL8_PORTABLE = "sell8-avx2", "sell8-portable"
SELL_CHOICES = (None, True, False, "portable", "sell8", SELL8_PORTABLE, "packed", "padded")


class CSREngine(Engine):
    """Our Numba CSR kernels, executing plan.plan_csr's plan.

    sell: None (batch 1 on this CPU's SELL where it pays: SELL-16x32 with AVX-512F, SELL8 with AVX2,
    else the CSR SpMV), False (always the SpMV), True (SELL: the ISA kernel where the CPU has one,
    else the SELL-16 portable twin), "portable" (SELL-16's portable twin), "sell8" (SELL8's AVX2
    kernel) or "sell8-portable" (SELL8's portable twin); SELL-16 holds packed values or padded slots
    by plan.sell_packs, or as "packed" / "padded" say (SELL-16 on this CPU's kernel). bitmap: which
    layers of SELL-16's batch 1 are held in bitmap rows instead (bitmap.py): None (plan.bitmap_layers),
    True (every layer), False (none) or one bool a layer; it has no effect where batch 1 does not run
    on SELL-16 (SELL8, the SpMV: `bitmap` is then empty). skip_zeros: small batches run on a
    column-major (CSC) copy that skips the inputs that are zero in every row (activation
    sparsity). tuning: the plan's thresholds.
    """

    name = "csr"
    uses_numba = True

    def __init__(self, params: Sequence[Layer], threads: Optional[int] = None,
                 sell: Union[None, bool, str] = None, tuning: Optional[Tuning] = None, skip_zeros: bool = False,
                 bitmap: Union[None, bool, Sequence[bool]] = None):
        if not isinstance(skip_zeros, bool):
            raise ValueError(f"skip_zeros must be True or False, got {skip_zeros!r}")
        self.skip_zeros = skip_zeros
        if sell not in SELL_CHOICES:
            raise ValueError(f"sell must be one of {', '.join(map(repr, SELL_CHOICES))}, got {sell!r}")
        if tuning is not None and not isinstance(tuning, Tuning):
            raise ValueError(f"tuning must be a plan.Tuning, got {type(tuning).__name__}")
        self.tuning = tuning or Tuning()
        self._sell_choice = sell
        if not (bitmap is None or isinstance(bitmap, bool) or (isinstance(bitmap, (tuple, list))
                                                                 and all(isinstance(b, bool) for b in bitmap))):
            raise ValueError(f"bitmap must be None, True, False or one bool a layer, got {bitmap!r}")
        self._bitmap_choice = bitmap
        self._plans = {}
        super().__init__(params, threads)

    def _build(self, params):
        t = self.tuning
        self.csr = tuple(CSR.from_dense(l.weight).check() for l in params)
        sizes = layer_sizes(params)
        self.layer_sizes = sizes
        idx = index_dtype(max(sizes[:-1]))               # one dtype for the concatenated indices
        # batches run their register tiles over column panels where a layer is dense enough
        # (plan.Tuning.dense_panels; a second, panel-major copy of those layers)
        self.panels = tuple(panel_width(t, c.density, c.shape[1], c.nnz) for c in self.csr)
        self._plain = _flatten([(c.data, c.indices, c.indptr) for c in self.csr], idx, sizes[:-1])
        self._paneled = self._layout(self.panels, idx)
        # chunks of 64 columns: panels of their own (plan.wide_panel_width), a third copy where they differ
        self.wide_panels = tuple(wide_panel_width(t, c.density, c.shape[1], c.nnz) for c in self.csr)
        self._wide = self._paneled if self.wide_panels == self.panels else self._layout(self.wide_panels, idx)
        self._bias = np.concatenate([np.zeros(n, np.float32) if l.bias is None else l.bias
                                     for n, l in zip(sizes[1:], params)]).astype(np.float32)
        self._sizes = np.asarray(sizes, np.int64)
        self._nnz_off = np.concatenate([[0], np.cumsum([c.nnz for c in self.csr])]).astype(np.int64)
        self.nnz = int(self._nnz_off[-1])
        self.n_weights = self.nnz
        bias_nbytes = sum(l.bias.nbytes for l in params if l.bias is not None)
        self.nbytes = int(sum(c.nbytes for c in self.csr) + bias_nbytes)
        # bytes of the panel-major copies of data/indices/indptr held for batches > 1 (0: none)
        copies = {id(c): c for c in (self._paneled, self._wide) if c is not self._plain}
        self.panel_nbytes = sum(_nbytes(c) for c in copies.values())
        self.index_dtype = str(idx)
        self._width = max(sizes[1:])
        self._bufs = None                                # (B, Bp, HT, buf0, buf1), see _buffers
        self._chunk_bufs = None                          # (Bc, HT, buf0, buf1, counter), see _chunk_buffers
        self._build_sell(params)
        self._csc, csc_nbytes = None, 0
        if self.skip_zeros:                              # the columns of every layer: CSR of W.T
            cols = [CSR.from_dense(l.weight.T) for l in params]
            self._csc = _flatten([(c.data, c.indices, c.indptr) for c in cols], index_dtype(max(sizes[1:])),
                                 sizes[:-1])
            csc_nbytes = int(sum(c.nbytes for c in cols) + bias_nbytes)
        csr_arrays = sum(c.nbytes for c in self.csr)
        nbytes = {"csr": self.nbytes, "sell": self.sell_nbytes, "csc": csc_nbytes, **self._sell_forms,
                  "csr-panels": self.nbytes + _nbytes(self._paneled) - csr_arrays,
                  "csr-wide-panels": self.nbytes + _nbytes(self._wide) - csr_arrays}
        self.net = NetShape(nnz=tuple(c.nnz for c in self.csr), shape=tuple(c.shape for c in self.csr),
                            sell_slots=self._sell_slots, sell_kinds=self._sell_kinds, bitmap=self.bitmap,
                            panels=self.panels,
                            wide_panels=self.wide_panels, nbytes=nbytes)

    def _layout(self, panels, idx) -> tuple:
        """The concatenated layers (_flatten) cut into column panels of panels[l] inputs; the plain
        layout where no layer is panelled."""
        if all(P >= c.shape[1] for P, c in zip(panels, self.csr)):
            return self._plain
        return _flatten([panel_layout(c, P) for c, P in zip(self.csr, panels)], idx, panels)

    def _sell_layout(self, params) -> Optional[str]:
        """The SELL kernel batch 1 should run on (before the pays rule), or None for the CSR SpMV."""
        choice = self._sell_choice
        if choice is False:
            return None
        if choice in ("portable", SELL_PORTABLE):
            return SELL_PORTABLE
        if choice in ("sell8", SELL8_AVX2):
            if not sell8_kernels.available():
                raise ValueError("sell='sell8' needs a CPU with AVX2 and FMA (as Numba targets it); "
                                 "use sell='sell8-portable' or leave sell unset")
            return SELL8_AVX2
        if choice == SELL8_PORTABLE:
            return SELL8_PORTABLE
        if choice in ("packed", "padded"):
            return SELL_AVX512 if sell_kernels.available() else SELL_PORTABLE
        if sell_kernels.available():                     # None or True: this CPU's best SELL
            return SELL_AVX512
        fits = max(l.weight.shape[1] for l in params) <= sell8.MAX_COLUMNS
        if sell8_kernels.available() and fits:
            return SELL8_AVX2
        return SELL_PORTABLE if choice is True else None

    def _build_sell(self, params):
        """The SELL copy for batch 1, when the engine runs batch 1 on it (see the class docstring)."""
        self.sell_kernel, self.sell_nbytes, self.sell_padding, self._sell_slots = None, 0, None, None
        self._sell_kinds, self._sell_forms, self.bitmap = (), {}, ()
        kernel = self._sell_layout(params)
        if kernel is None:
            return
        if kernel.startswith("sell8"):
            self._sell, (n_x, width), layers = sell8.flatten(params)
            self._sell_slots = tuple(s.n_units for s in layers)
            self._sell_kinds = tuple(s.kind for s in layers)
            self.sell_padding = sum(s.n_units for s in layers) * sell8.SLOTS * sell8.LANES / max(self.nnz, 1)
            bias = self._sell[4]
            self.sell_nbytes = int(sum(s.nbytes for s in layers) + bias.nbytes)      # + padded biases
        else:
            layout = net_layout([l.weight for l in params])
            self.bitmap = self._bitmaps(layout[0])
            self._sell_forms = form_nbytes(layout[0], self.bitmap)
            packed = self._packs()
            self._sell, (n_x, width), layers = sell_flatten(params, packed, layout, self.bitmap)
            self._sell_slots = tuple(layer_groups(s.shape) if b else s.n_slots for s, b in zip(layers, self.bitmap))
            held = [s for s, b in zip(layers, self.bitmap) if not b]           # the layers in SELL slots
            nnz = sum(s.nnz for s in held)
            self.sell_padding = sum(s.n_slots for s in held) * LANES / nnz if nnz else 1.0
            kernel = PACKED[kernel] if packed else kernel
            self.sell_nbytes = self._sell_forms["sell-packed" if packed else "sell-padded"]
        if self._sell_choice is None and not sell_pays(self.sell_nbytes, self.nbytes, self.tuning):
            self._sell, self.bitmap = None, ()
            return
        self._sell = tuple(aligned(a) if isinstance(a, np.ndarray) else a for a in self._sell)
        self._sell_bufs = (_aligned_zeros(n_x), _aligned_zeros(width), _aligned_zeros(width))
        self.sell_kernel = kernel

    def _bitmaps(self, layers) -> tuple:
        """Per SELL-16 layer, whether batch 1 holds it in bitmap rows: the caller's choice, else
        plan.bitmap_layers on the layers' shapes and slots."""
        choice = self._bitmap_choice
        if isinstance(choice, bool):
            return (choice,) * len(layers)
        if choice is not None:
            if len(choice) != len(layers):
                raise ValueError(f"bitmap needs one bool a layer ({len(layers)}), got {len(choice)}")
            return tuple(choice)
        return bitmap_layers([s.shape for s in layers], [s.n_slots for s in layers], self.tuning)

    def _packs(self) -> bool:
        """Whether SELL-16 holds packed values: the caller's choice, else plan.sell_packs on the bytes
        of both forms (self._sell_forms)."""
        if self._sell_choice in ("packed", "padded"):
            return self._sell_choice == "packed"
        return sell_packs(self._sell_forms["sell-padded"], self._sell_forms["sell-packed"], self.threads, self.tuning)

    @property
    def uses_sell(self) -> bool:
        """Whether batch 1 runs on the SELL copy."""
        return self.sell_kernel is not None

    def plan(self, batch: int) -> Plan:
        return self._plan_codes(check_batch(batch))[0]

    def _plan_codes(self, B: int) -> tuple:
        """(plan, its kernel codes) for batch B: computed once per batch size."""
        pc = self._plans.get(B)
        if pc is None:
            p = plan_csr(self.net, B, self.threads, self.tuning, self.sell_kernel, skip_zeros=self.skip_zeros,
                         engine=self.name)
            pc = self._plans[B] = (p, p.codes())
        return pc

    def chunk_width(self, B) -> int:
        """Columns per chunk of the batch split for a batch of B, or 0: the row split."""
        return chunk_width(self.tuning, self.net, int(B), self.threads)

    def describe(self) -> dict:
        return dict(super().describe(), panels=list(self.panels), wide_panels=list(self.wide_panels),
                    panel_nbytes=self.panel_nbytes,
                    sell=self.uses_sell, sell_kernel=self.sell_kernel, sell_nbytes=self.sell_nbytes,
                    sell_padding=self.sell_padding, bitmap=list(self.bitmap))

    # -- buffers ---------------------------------------------------------------------------------
    def _buffers(self, B):
        """(padded batch, HT, buf0, buf1) of the row split: 64-byte aligned, zeroed, cached for the
        last batch size (an AVX-512 load that straddles two cache lines halves load throughput)."""
        if self._bufs is None or self._bufs[0] != B:
            Bp = padded_batch(B)
            self._bufs = (B, Bp, _aligned_zeros((self.n_in, Bp)), _aligned_zeros(self._width * Bp),
                          _aligned_zeros(self._width * Bp))
        return self._bufs[1:]

    def _chunk_buffers(self, Bc):
        """The batch split's scratch (chunk_scratch), cached for the last chunk width."""
        if self._chunk_bufs is None or self._chunk_bufs[0] != Bc:
            self._chunk_bufs = chunk_scratch(self.threads, self.n_in, self._width, Bc)
        return self._chunk_bufs[1:]

    # -- the call --------------------------------------------------------------------------------
    def _forward(self, X):
        B = X.shape[0]
        p, codes = self._plans.get(B) or self._plan_codes(B)
        if p.layout == "sell":                           # batch 1 first: microseconds count
            logits = np.empty((1, self.n_out), np.float32)
            if self.sell_kernel.startswith("sell8"):
                units = self.tuning.min_parallel_units if self.threads > 1 else kernels.NEVER
                sell8_kernels.sell8_forward(*self._sell, X, *self._sell_bufs, units, self.threads, logits,
                                            avx2=self.sell_kernel == SELL8_AVX2,
                                            callbacks=self._callbacks.setdefault("sell8", {}))
                return logits
            forward = sell_kernels.sell_forward if self.sell_kernel in (SELL_AVX512, PACKED[SELL_AVX512]) \
                else sell_kernels.sell_forward_portable
            slots = self.tuning.min_parallel_slots if self.threads > 1 else kernels.NEVER
            forward(*self._sell, X, *self._sell_bufs, slots, self.threads, logits)
            return logits
        if p.layout == "csc":
            return self._forward_csc(X)
        data, indices, indptr, ptr_off, panels = {"csr-panels": self._paneled, "csr-wide-panels": self._wide}.get(
            p.layout, self._plain)
        if p.split == "batch":
            HT, buf0, buf1, counter = self._chunk_buffers(p.chunk)
            out = np.empty((B, self.n_out), np.float32)
            kernels.csr_forward_chunks(data, indices, indptr, self._bias, self._sizes, self._nnz_off,
                                       ptr_off, panels, X, HT, buf0, buf1, out, counter,
                                       self._callbacks.setdefault(("batch", p.layout), {}))
            return out
        Bp, HT, buf0, buf1 = self._buffers(B)
        if B == 1:
            HT = X.reshape(self.n_in, 1)                 # (1, n_in) is already (n_in, 1) in memory
        else:
            np.copyto(HT[:, :B], X.T)                    # (B, n_in) -> (n_in, Bp); pad columns stay 0
        outT = kernels.csr_forward(data, indices, indptr, self._bias, self._sizes, self._nnz_off,
                                   ptr_off, panels, HT, buf0, buf1, codes, self.threads,
                                   self._callbacks.setdefault(("rows", p.layout), {}))    # (n_out, Bp)
        out = np.empty((B, self.n_out), np.float32)     # outT is a view of buf0/buf1: never return it
        out[:] = outT[:, :B].T
        return out

    def _forward_csc(self, X):
        B = X.shape[0]
        Bp, HT, buf0, buf1 = self._buffers(B)
        HT = X.reshape(self.n_in, 1) if B == 1 else np.ascontiguousarray(X.T)      # (n_in, B)
        data, indices, indptr, ptr_off, _ = self._csc
        outT = kernels.csc_forward_skip(data, indices, indptr, self._bias, self._sizes, self._nnz_off, ptr_off,
                                        HT, buf0, buf1)                           # (n_out, B), a buffer view
        out = np.empty((B, self.n_out), np.float32)
        out[:] = outT.T
        return out


def sell_pays(sell_nbytes: int, csr_nbytes: int, tuning: Optional[Tuning] = None) -> bool:
    """Whether batch 1 should run on SELL rather than the CSR SpMV (unless the caller chose).

    SELL reads its padding: it is bandwidth-bound where the SpMV is bound by its loads per non-zero.
    It wins while its bytes stay in the caches (tuning.sell_cache_bytes) or are at most twice CSR's.
    """
    return sell_nbytes <= max((tuning or Tuning()).sell_cache_bytes, 2 * csr_nbytes)


def chunk_scratch(threads: int, rows: int, width: int, Bc: int) -> tuple:
    """(Bc, HT, buf0, buf1, counter) of a batch split over `threads`: HT (threads, rows, Bc) and the
    ping-pong buffers buf0/buf1 (threads, width * Bc), 64-byte aligned and zeroed, and the int64
    counter the threads claim chunks from (simd.claim). The csr, bsr and nm engines keep one."""
    return (Bc, _aligned_zeros((threads, rows, Bc)), _aligned_zeros((threads, width * Bc)),
            _aligned_zeros((threads, width * Bc)), np.zeros(1, np.int64))


def _nbytes(layout) -> int:
    """Bytes of a concatenated layout's data, indices and indptr."""
    return int(sum(a.nbytes for a in layout[:3]))


def _flatten(layout, idx_dtype, panels) -> tuple:
    """Concatenate per-layer (data, indices, indptr) for kernels.csr_forward (+ ptr_off, panels)."""
    indptr = [p for _, _, p in layout]
    return (np.concatenate([d for d, _, _ in layout]),
            np.concatenate([i for _, i, _ in layout]).astype(idx_dtype, copy=False),
            np.concatenate(indptr),
            np.concatenate([[0], np.cumsum([p.size for p in indptr])]).astype(np.int64),
            np.asarray(panels, np.int64))


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


def _aligned_empty(shape, dtype, align: int) -> np.ndarray:
    """An uninitialised C-contiguous array whose first element sits on an `align`-byte boundary."""
    shape, dtype = (tuple(shape) if np.ndim(shape) else (int(shape),)), np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    off = -raw.ctypes.data % align
    return raw[off:off + nbytes].view(dtype).reshape(shape)


def _aligned_zeros(shape, align: int = 64) -> np.ndarray:
    """float32 zeros whose first element sits on an `align`-byte boundary."""
    out = _aligned_empty(shape, np.float32, align)
    out[...] = 0
    return out


def aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of `a` whose first element sits on an `align`-byte boundary: a layout
    whose rows the kernels load as whole vectors (SELL: 64 bytes a slot) splits none of those loads
    over two cache lines (numpy's large arrays start 16 bytes past a page: x0.92-0.97 at batch 1)."""
    out = _aligned_empty(a.shape, a.dtype, align)
    out[...] = a
    return out
