"""Which kernel runs for a call, and why: the csr engine's tuning record and its kernel plan.

One place answers "which kernel runs for this call": `plan_csr` turns (the net's layers, batch
size, threads, CPU features, Tuning) into a `Plan` — the layout, how the batch is split, chunk
widths, and per layer the kernel and whether it runs on several threads — with one line of
reason per decision. The engine computes a plan once per batch size and executes it; kernels get
the per-layer kernel codes (kernels.SPMV, ...) as an argument and never re-decide. Every timing
record stores its plan (`Plan.to_dict`), and `sparsenet plan` prints one.

Measurements behind the thresholds: docs/perf-notes.md (dated, with CPU, BLAS kernel, threads).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from sparsenet import kernels
from sparsenet.bitmap import layer_groups
from sparsenet.checks import is_integer, is_real
from sparsenet.cpu import CPU, L1D_FALLBACK, cpu, l1d_bytes, l2_bytes  # noqa: F401  (CPU re-exported: the plan's view of the target)

CSR_TILE = 16    # columns of the narrowest csr register tile: batches and chunks are padded to a multiple
PANEL_TILE = 32  # columns of the tile the csr-panels layout is sized for (simd.csr_rows32: batches below chunks of 64)
WIDE_TILE = 64   # columns of the widest tile (simd.csr_rows64, chunks of 64): panels of its own (wide_panel_width)


@dataclass(frozen=True)
class Tuning:
    """The csr engine's thresholds; each field's rule in one line (figures: docs/perf-notes.md)."""

    # a plain layer's rows run on all threads when nnz * batch reaches this (a parallel region
    # costs ~1.4 us: below ~6 us of one core's work it eats the gain)
    min_parallel_work: int = 20_000
    # a layer is cut into column panels only from this many non-zeros (small layers: no time to win)
    min_panel_nnz: int = 32_768
    # inputs per column panel (0: by the L1d, plan.panel_bytes: a panel of a 32-column chunk's
    # activations fills the largest power of two of bytes within it, 256 inputs for 32-63 KB)
    panel_width: int = 0
    # density from which a layer's register tiles run over column panels (1000 x 1000, 32 columns,
    # AVX-512: x1.45 at density 0.5, x1.25 at 0.3, even at 0.2, whole rows better at 0.15)
    dense_panels: float = 0.25
    # 64-column tiles: a column panel holds at least this many non-zeros of a row (expected), its
    # L1-sized width doubled until it does (wide_panel_width; 1000 x 1000, AVX-512, against whole rows:
    # density 0.1 x1.10 in panels of 256 inputs, x0.96 of 128; 0.05 best at 512; 0.3-0.5 best at 128)
    min_pass_nnz: int = 24
    # widest chunk of the bsr / nm batch split (0: no batch split; the csr engine's: tile_chunk)
    max_chunk: int = 128
    # ... or whenever nnz * batch is at most this (short calls: the row split's regions cost more)
    small_work: int = 2_500_000
    # bsr and nm split every layer's rows over the threads at batches of one chunk (2-32) only from this
    # many multiply-adds per call (stored x 32 padded columns): 8x1 blocks at 90 % (7.7M) ran 0.15 ms on
    # one thread, 0.18-0.25 ms split (one region a layer); at 50 % (38M) 2.0 -> 0.7 ms, 1:4 (19M) x1.6
    min_rows_work: int = 12_000_000
    # widest chunk of the csr batch split: one 64-column register tile (over column panels or not); a
    # multiple of 16 (0: no batch split). Narrower (32, or 16 where those give each thread at most
    # one) where wide chunks would pad more columns or leave a thread without one (chunk_width)
    tile_chunk: int = 64
    # at several threads the batch split needs this many columns per thread (16: one register tile;
    # 2x that with panelled layers), else the row split, unless the call is short (small_work)
    tile_min_chunk: int = 16
    # batch 1 on SELL: a layer runs on all threads from this many slots
    min_parallel_slots: int = 3000
    # batch 1 on SELL8 (AVX2): a layer runs on all threads from this many units (AVX2 target, one layer
    # in 1 and 2 parts side by side: x0.5-0.9 below ~3000 units, x0.96-1.24 at 3000-7000, x1.5-2.7 from
    # ~9000; docs/perf-notes.md, session 13)
    min_parallel_units: int = 4000
    # SELL is kept for batch 1 while its bytes fit this cache budget or are at most twice CSR's
    sell_cache_bytes: int = 8 * 2 ** 20
    # SELL-16 stores packed values (sell.SELL.packed) where its padded form needs more bytes a thread
    # than 7/8 of this (0: the core's L2, cpu.l2_bytes; sell_packs)
    sell_l2_bytes: int = 0
    # batch 1 on SELL-16 holds a layer in bitmap rows where its groups cost at most its slots, a group
    # costing this many hundredths of a slot (bitmap_layers: 1.3-2.2 groups a slot cost the same)
    bitmap_group_cost: int = 60
    # the dense engines' one-call Numba forward (and its zero skipping) runs batches up to this size,
    # numpy's BLAS chain above it
    max_fused_batch: int = 4
    # the csr engine's zero skipping (its CSC copy) runs batches up to this size: scattered rows cost
    # a load and a store per non-zero, which only pays while a batch is a handful of rows
    max_csc_batch: int = 1
    # a dense layer's inputs split over all threads (the parts summed) when n_in * n_out * batch reaches this
    min_parallel_dense: int = 65_536

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name == "dense_panels":          # a density; every other field counts something
                if not is_real(value, 0, 1):
                    raise ValueError(f"Tuning.{name} must be a density in [0, 1], got {value!r}")
            elif not is_integer(value, 0):
                raise ValueError(f"Tuning.{name} must be an integer >= 0, got {value!r}")
        if self.tile_chunk % CSR_TILE:
            raise ValueError(f"Tuning.tile_chunk must be a multiple of {CSR_TILE} columns (a register tile), "
                             f"got {self.tile_chunk}")


@dataclass(frozen=True)
class LayerPlan:
    """One layer of a plan: its kernel and whether it runs on several threads."""

    kernel: str        # spmv, tiles, tile-panels, sell16-avx512, sell8-avx2, nm2:4-tile4x64, bsr8x1, sgemm, ...
    parallel: bool     # the layer's rows are split over the engine's threads
    panel: int = 0     # inputs per column panel (0: the layer is not panelled)
    code: int = -1     # kernels.<KERNEL> code passed to the csr kernels (-1: not a csr kernel)


@dataclass(frozen=True)
class Plan:
    """What one engine call of a given batch size runs, and why."""

    engine: str
    batch: int
    threads: int
    isa: str                         # CPU.isa of the target
    layout: str                      # storage read: dense, csr, csr-panels, csr-wide-panels, sell, scipy-csr
    split: str                       # none (one thread or batch 1), batch (column chunks), rows, blas,
                                     # inputs (dense-fused: a layer's inputs over the threads)
    chunk: int = 0                   # columns per chunk of the batch split (split == 'batch')
    padded_batch: int = 0            # the row split pads the batch to aligned rows
    layers: tuple = ()               # LayerPlan per layer
    reasons: tuple = ()              # one line per decision
    nbytes: int = 0                  # parameter bytes a call reads (the layout's)

    def codes(self):
        """Per layer kernels.<KERNEL> code | kernels.PARALLEL: the argument the csr kernels take."""
        import numpy as np
        return np.asarray([l.code | (kernels.PARALLEL if l.parallel else 0) for l in self.layers], np.int64)

    def summary(self) -> str:
        """One line: layout, split, and the layers' kernels (runs of the same kernel folded)."""
        runs: list = []
        for l in self.layers:
            name = l.kernel + ("/par" if l.parallel else "")
            if runs and runs[-1][0] == name:
                runs[-1][1] += 1
            else:
                runs.append([name, 1])
        kernels_ = ", ".join(n if c == 1 else f"{n} x{c}" for n, c in runs)
        split = {"batch": f"batch split {self.chunk} cols x {self.threads} threads",
                 "rows": f"row split over {self.threads} threads"}.get(self.split, self.split)
        return f"{self.layout}; {split}; {kernels_}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [asdict(l) for l in self.layers]
        d["reasons"] = list(self.reasons)
        d["summary"] = self.summary()
        return d

    def describe(self) -> str:
        """A few lines for people: the summary, the layers, and why."""
        lines = [f"{self.engine} at batch {self.batch}, {self.threads} thread(s), {self.isa}: {self.summary()}"]
        for i, l in enumerate(self.layers):
            extra = f", panels of {l.panel} inputs" if l.panel else ""
            lines.append(f"  layer {i}: {l.kernel}{' (parallel)' if l.parallel else ''}{extra}")
        lines += [f"  why: {r}" for r in self.reasons]
        return "\n".join(lines)


def blas_plan(engine: str, batch: int, threads: int, n_layers: int, nbytes: int) -> Plan:
    """The plan of a BLAS engine (dense, shrunk): one sgemm (sgemv at batch 1) per layer."""
    kernel = "sgemv" if batch == 1 else "sgemm"
    return Plan(engine=engine, batch=batch, threads=threads, isa=cpu().isa, layout="dense", split="blas",
                layers=tuple(LayerPlan(kernel, threads > 1) for _ in range(n_layers)),
                reasons=(f"numpy matmul per layer on {threads} BLAS thread(s)",), nbytes=nbytes)


def fused_dense_plan(engine: str, batch: int, threads: int, shapes: Sequence[tuple], nbytes: int,
                     t: Tuning, skip_zeros: bool) -> Plan:
    """The plan of a one-call dense engine: dense_kernels tiles (skipping zero inputs if asked) at
    small batches, numpy's BLAS chain above tuning.max_fused_batch."""
    B = int(batch)
    if B > t.max_fused_batch:
        p = blas_plan(engine, B, threads, len(shapes), nbytes)
        return Plan(**{**asdict(p), "layers": p.layers, "reasons": (
            f"batch > {t.max_fused_batch}: numpy matmul per layer (BLAS)",) + p.reasons})
    kernel = "dense-tiles-skip" if skip_zeros else "dense-tiles"
    layers = tuple(LayerPlan(kernel, threads > 1 and m * n * B >= t.min_parallel_dense) for m, n in shapes)
    reasons = ["the whole net in one compiled call (no per-layer numpy overhead)"]
    if skip_zeros:
        reasons.append("inputs that are zero in every row of the batch are skipped (their weight rows never read)")
    if threads > 1:
        reasons.append(f"a layer's inputs split over {threads} threads (each streams whole weight rows; the parts "
                       f"summed after) when n_in * n_out * batch >= "
                       f"{t.min_parallel_dense}")
    return Plan(engine=engine, batch=B, threads=threads, isa=cpu().isa, layout="dense",
                split="inputs" if any(l.parallel for l in layers) else "none", layers=layers,
                reasons=tuple(reasons), nbytes=nbytes)


def scipy_plan(batch: int, threads: int, n_layers: int, nbytes: int) -> Plan:
    """The plan of the scipy.sparse baseline: scipy's CSR matmul per layer, single-threaded."""
    return Plan(engine="csr-scipy", batch=batch, threads=threads, isa=cpu().isa, layout="scipy-csr",
                split="none", layers=tuple(LayerPlan("scipy-csr", False) for _ in range(n_layers)),
                reasons=("scipy.sparse CSR @ dense per layer (scipy's own loop, one thread)",), nbytes=nbytes)


@dataclass(frozen=True)
class NetShape:
    """What the csr plan reads of a net: per layer nnz, density, (n_out, n_in); SELL slots if built."""

    nnz: tuple
    shape: tuple
    sell_slots: Optional[tuple] = None   # per layer, when a SELL copy exists: its slots (SELL-16) or units (SELL8)
    sell_kinds: tuple = field(default=())   # per SELL8 layer: its window columns, "s" where its units are split
    bitmap: tuple = field(default=())    # per SELL-16 layer: held in bitmap rows (sell_slots then counts its groups)
    panels: tuple = field(default=())    # inputs per column panel per layer (n_in: not panelled)
    wide_panels: tuple = field(default=())   # the same for chunks of 64 columns (empty: as panels)
    nbytes: dict = field(default_factory=dict)   # layout name -> parameter bytes a call on it reads


def panel_bytes(l1d: Optional[int] = None) -> int:
    """Bytes of activations a column panel holds: the largest power of two within the L1d (l1d, else
    the host's, cpu.l1d_bytes; 32 KB when unknown), at least 4 KB. Measured: on a 32 KB L1d (Zen 4)
    panels of ~32 KB of HT were best, on a 48 KB one (Xeon) 32 KB (64 KB lost 4-10 %, 16 KB 7-17 %),
    with AVX-512 and AVX2 code alike (docs/perf-notes.md, sessions 1, 8 and 9)."""
    size = l1d or l1d_bytes() or L1D_FALLBACK
    return max(4096, 1 << (int(size).bit_length() - 1))


def panel_width(t: Tuning, density: float, n_in: int, nnz: int, l1d: Optional[int] = None) -> int:
    """Inputs per column panel of a layer (Tuning.panel_width, 0: panel_bytes of a 32-column chunk's
    activations, 256 inputs for an L1d of 32-63 KB); n_in (one panel: plain CSR) when sparser than
    dense_panels or small."""
    width = t.panel_width or panel_bytes(l1d) // (4 * PANEL_TILE)
    return _panelled(t, width if density >= t.dense_panels else n_in, n_in, nnz)


def wide_panel_width(t: Tuning, density: float, n_in: int, nnz: int, l1d: Optional[int] = None) -> int:
    """Inputs per column panel of a layer for 64-column tiles: panel_bytes of a 64-column chunk's
    activations (128 inputs for an L1d of 32-63 KB), doubled while a row would hold fewer than
    min_pass_nnz non-zeros in it, or Tuning.panel_width as set; n_in (plain CSR) for a small layer
    (fewer than two panels of inputs, or min_panel_nnz non-zeros)."""
    P = t.panel_width
    if not P:
        P = panel_bytes(l1d) // (4 * WIDE_TILE)
        while density * P < t.min_pass_nnz and 2 * P <= n_in:
            P *= 2
    return _panelled(t, P, n_in, nnz)


def _panelled(t: Tuning, P: int, n_in: int, nnz: int) -> int:
    """P, or n_in (one panel: plain CSR) for a layer too small for panels: fewer than two panels of
    inputs or min_panel_nnz non-zeros (both panel rules)."""
    return P if 2 * P <= n_in and nnz >= t.min_panel_nnz else n_in


def batch_chunk(B: int, threads: int, max_chunk: int = Tuning.max_chunk) -> int:
    """Columns per chunk when B columns are cut into equal shares for `threads`; 0 for B <= 1.

    The number of chunks is a multiple of threads, each <= max_chunk (max_chunk <= 0: no chunks);
    the width is rounded up to a multiple of 16 floats (64-byte aligned rows) when that costs
    <= 1/8 extra work.
    """
    if B <= 1 or max_chunk <= 0:
        return 0
    n_chunks = threads * -(-B // (threads * max_chunk))
    Bc = -(-B // n_chunks)
    Bc16 = -(-Bc // 16) * 16
    return Bc16 if (Bc16 - Bc) * 8 <= Bc else Bc


def padded_batch(B: int) -> int:
    """The row split's batch: padded to a multiple of 16 columns (register tiles, aligned rows); 1 stays 1."""
    return B if B <= 1 else -(-B // CSR_TILE) * CSR_TILE


def chunk_width(t: Tuning, net: NetShape, B: int, threads: int) -> int:
    """Columns per chunk of the csr batch split (a multiple of 16; the last chunk is zero-padded), or 0:
    split each layer's rows over the threads instead.

    Chunks of tile_chunk (64) columns where they pad no more columns than 32-column chunks would and
    give every thread one; else of 32, or of 16 while there are at most `threads` of those (each thread
    one). A 64-column tile cost 0.8-0.9x a 32-column one per column at k = 50-95 % (1000 x 1000
    layers, its own panels; AVX-512 and the AVX2 target; docs/perf-notes.md, session 12), a 16-column
    one ~1.5x (session 9). Unpadded chunks (widths such as 25) ran whole-row kernels 2-5x slower than
    the padded tiles until session 9. At several threads the batch split needs tile_min_chunk columns
    a thread (twice that with panelled layers), or a short call.
    """
    if B <= 1 or t.tile_chunk == 0:
        return 0
    narrow = min(t.tile_chunk, PANEL_TILE)
    Bc = CSR_TILE if -(-B // CSR_TILE) <= threads else narrow
    wide = t.tile_chunk
    if wide > narrow and -(-B // wide) >= threads and -(-B // wide) * wide <= -(-B // narrow) * narrow:
        Bc = wide
    if threads == 1:
        return Bc
    panelled = any(P < n for (_, n), P in zip(net.shape, net.panels))
    least = 2 * t.tile_min_chunk if panelled else t.tile_min_chunk
    if B >= threads * least or sum(net.nnz) * B <= t.small_work:
        return Bc
    return 0


L2_FALLBACK = 2 ** 20          # when the host does not say: the L2 of Zen 4 and Skylake-X cores
SELL_L2_SHARE = 7 / 8          # of the L2, what batch 1's padded SELL may take a thread (sell_packs)


def sell_l2_budget(t: Tuning) -> int:
    """Bytes a core's L2 holds for batch 1's SELL: Tuning.sell_l2_bytes, else the host's L2."""
    return t.sell_l2_bytes or l2_bytes() or L2_FALLBACK


def sell_packs(padded_nbytes: int, packed_nbytes: int, threads: int, t: Tuning) -> bool:
    """Whether SELL-16 should hold packed values (sell.SELL.packed) rather than padded slots.

    Beyond the core's L2, batch 1 streams the SELL from L3 and its time follows its bytes; within it
    a slot's expand (vexpandps) and running offset cost more than its padding. So: packed where the
    padded bytes a thread exceed 7/8 of the L2 (sell_l2_budget; the SELL shares it with the
    activations and everything else, and a cyclic read of about its size already misses) and
    packing saves bytes. Measured on the Xeon (AVX-512, L2 2 MB), whole forward at batch 1, He net,
    padded / packed side by side, medians of 15 rounds: one thread k = 50 / 70 / 80 / 90 % (padded
    7.9 / 5.4 / 4.0 / 2.4 MB) x1.20 / x1.30 / x1.43 / x1.17, k = 95 % (1.5 MB) x0.85; two threads
    (half a layer's slots a thread) k = 50 / 70 / 80 % x1.18 / x1.31 / x1.46, 90 % (1.2 MB a thread)
    x0.83; k = 25 % x1.06 (one thread), x0.98 (two)."""
    return packed_nbytes < padded_nbytes and padded_nbytes / max(int(threads), 1) > sell_l2_budget(t) * SELL_L2_SHARE


def bitmap_layers(shapes: Sequence[tuple], slots: Sequence[int], t: Tuning) -> tuple:
    """Per layer, whether SELL-16's batch 1 holds it in bitmap rows (bitmap.py) rather than SELL slots.

    A bitmap row costs a group (16 columns) whatever it holds, a SELL slot 16 lanes whatever they
    hold, so the denser a layer the fewer groups it has against slots: bitmap where
    groups * t.bitmap_group_cost <= 100 * slots (60: at most ~1.67 groups a slot). Measured on the Xeon
    (AVX-512), whole forward at batch 1, every layer in bitmap rows against every layer in SELL-16,
    He and trained nets: the two cost the same at 1.3-2.2 groups a slot on one thread (lower in slow
    phases of the VM, where both are compute-bound and a group costs about a slot), at 1.5-1.9 on two;
    at k = 50 % (1.5-1.6) bitmap rows won 7 of 12 side-by-side runs (x1.07-1.27) and lost 4 (x0.93-0.95).
    So the default net's hidden layers go to bitmap rows up to k = 50 %, to SELL from 60 %
    (docs/perf-notes.md, session 17)."""
    return tuple(layer_groups(s) * t.bitmap_group_cost <= 100 * n for s, n in zip(shapes, slots))


def _bitmap_reason(net: NetShape, t: Tuning) -> str:
    """Which layers batch 1 holds in bitmap rows, and why (bitmap_layers)."""
    held = [i for i, b in enumerate(net.bitmap) if b]
    return (f"layer{'s' if len(held) > 1 else ''} {', '.join(map(str, held))} in bitmap rows (16-column masks, vexpandps): their groups x "
            f"{t.bitmap_group_cost / 100:g} <= their SELL slots ("
            + ", ".join(f"{layer_groups(net.shape[i])} groups" for i in held) + "; plan.bitmap_layers)")


def _packing_reason(net: NetShape, threads: int, t: Tuning, sell: str) -> str:
    """Why SELL-16 holds packed values or padded slots (sell_packs), from the bytes of both forms."""
    padded, packed, mb = net.nbytes["sell-padded"], net.nbytes["sell-packed"], 2 ** 20
    budget = sell_l2_budget(t)
    return (f"{'packed' if sell.startswith('sell16p') else 'padded'} values: the padded SELL is {padded / mb:.1f} MB"
            f"{' (bitmap rows included)' if any(net.bitmap) else ''}, "
            f"{padded / max(threads, 1) / mb:.2f} MB a thread against {SELL_L2_SHARE:g} of an L2 of {budget / mb:.1f} MB (packed: "
            f"{packed / mb:.1f} MB; plan.sell_packs)")


def plan_csr(net: NetShape, batch: int, threads: int, t: Tuning, sell: Optional[str],
             isa: Optional[str] = None, skip_zeros: bool = False, engine: str = "csr") -> Plan:
    """The csr engine's plan for one batch size. `sell`: the SELL kernel the engine holds for batch 1
    ('sell16-avx512', 'sell16-portable', on packed values 'sell16p-avx512', 'sell16p-portable',
    'sell8-avx2', 'sell8-portable'), None when batch 1 runs on the CSR SpMV. skip_zeros: batches up
    to tuning.max_csc_batch run on the CSC copy, skipping zero inputs."""
    isa = isa or cpu().isa
    B = int(batch)
    common = dict(engine=engine, batch=B, threads=threads, isa=isa)
    if skip_zeros and B <= t.max_csc_batch:
        return Plan(layout="csc", split="none", layers=tuple(LayerPlan("csc-skip", False) for _ in net.nnz),
                    reasons=(f"skip_zeros, batch <= {t.max_csc_batch}: the net by columns (CSC), inputs that are "
                             "zero in every row of the batch skipped (their weights never read), one thread",),
                    nbytes=net.nbytes.get("csc", 0), **common)
    if B == 1 and sell:
        eight = sell.startswith("sell8")
        least = t.min_parallel_units if eight else t.min_parallel_slots
        bitmap = tuple(net.bitmap) or (False,) * len(net.sell_slots)
        rows = "bitmap16-avx512" if sell.endswith("avx512") else "bitmap16-portable"
        layers = tuple(LayerPlan(rows if b else sell, threads > 1 and s >= least) for s, b in zip(net.sell_slots, bitmap))
        how = {"sell16-avx512": "SELL-16x32 (AVX-512F permutes)", "sell16-portable": "SELL-16x32 (portable twin)",
               "sell16p-avx512": "SELL-16x32 with packed values (AVX-512F permutes, vexpandps)",
               "sell16p-portable": "SELL-16x32 with packed values (portable twin)",
               "sell8-avx2": "SELL8 (AVX2 permutes over 8/16-column windows; no AVX-512F)",
               "sell8-portable": "SELL8 (portable twin)"}[sell]
        if all(bitmap):                 # no layer in SELL slots: neither permutes nor packing run
            how = "bitmap rows alone (" + ("AVX-512F vexpandps)" if sell.endswith("avx512") else "portable twin)")
        why = (f"batch 1 on {how}",) + ((f"SELL8 windows per layer (columns; s: split units, a window a slot): "
                                         f"{', '.join(net.sell_kinds)}",) if eight and net.sell_kinds else ()) + (
               (_packing_reason(net, threads, t, sell),) if not eight and "sell-padded" in net.nbytes
               and not all(bitmap) else ()) + (
               (_bitmap_reason(net, t),) if any(bitmap) else ()) + (
               f"a layer runs on {threads} threads from {least} {'units' if eight else 'slots'}"
               + (" (bitmap rows: groups)" if any(bitmap) else "") if threads > 1
               else "one thread",)
        return Plan(layout="sell", split="none", layers=layers, reasons=why, nbytes=net.nbytes.get("sell", 0), **common)
    Bc = chunk_width(t, net, B, threads)
    reasons = []
    if B == 1:
        reasons.append({"avx512": "batch 1 on the CSR SpMV (SELL not kept: it does not pay for this net, "
                                  "or sell=False)"}.get(isa, f"no AVX-512F ({isa}): batch 1 on the CSR SpMV"))
    if Bc:
        wide = Bc >= WIDE_TILE and bool(net.wide_panels) and net.wide_panels != net.panels   # their own panels
        panels = net.wide_panels if wide else net.panels
        layers = tuple(LayerPlan("tile-panels", False, P, kernels.TILE_PANELS) if P < n
                       else LayerPlan("tiles", False, 0, kernels.TILES) for (_, n), P in zip(net.shape, panels))
        n_chunks = -(-B // Bc)
        pad = n_chunks * Bc - B
        reasons.append(f"batch split: {n_chunks} chunk(s) of {Bc} columns" + (f" (the last with {pad} zero "
                       f"columns)" if pad else "") + ", each through every layer on one thread, claimed by "
                       f"{threads} thread(s)")
        if Bc >= WIDE_TILE:
            reasons.append(f"{WIDE_TILE}-column register tiles" + (
                f" on column panels of their own (a {WIDE_TILE}-column chunk's activations within the L1d, "
                f"wider where a row would hold fewer than {t.min_pass_nnz} non-zeros in one)" if wide else ""))
        layout = ("csr-wide-panels" if wide else "csr-panels") if any(l.panel for l in layers) else "csr"
        return Plan(layout=layout, split="batch", chunk=Bc, layers=layers,
                    reasons=tuple(reasons), nbytes=net.nbytes.get(layout, 0), **common)
    Bp = padded_batch(B)
    layers = []
    for nnz, (_, n), P in zip(net.nnz, net.shape, net.panels):
        par = threads > 1 and nnz * Bp >= t.min_parallel_work
        if B == 1:
            layers.append(LayerPlan("spmv", par, 0, kernels.SPMV))
        else:
            layers.append(LayerPlan("tile-panels", par, P, kernels.TILE_PANELS) if P < n
                          else LayerPlan("tiles", par, 0, kernels.TILES))
    if Bp > B:
        reasons.append(f"batch padded to {Bp} columns (register tiles of 64, 32 and 16 columns)")
    if threads > 1:
        if B > 1:
            reasons.append(f"row split: chunks of this batch would be too narrow for {threads} threads")
        reasons.append(f"a layer runs on {threads} threads when nnz * batch >= {t.min_parallel_work}")
    layout = "csr-panels" if any(l.panel for l in layers) else "csr"
    return Plan(layout=layout, split="rows" if threads > 1 else "none", padded_batch=Bp,
                layers=tuple(layers), reasons=tuple(reasons), nbytes=net.nbytes.get(layout, 0), **common)


def fold(plans: Sequence[Plan]) -> str:
    """One line per distinct summary of several plans (for reports)."""
    return "; ".join(sorted({p.summary() for p in plans}))
