"""Numba kernels for SELL8 (sell8.py) at batch 1: an AVX2 permute-and-FMA SpMV, its portable twin,
and the whole MLP in one call.

AVX2 (`_chunk8_avx2`, `_chunk16_avx2`: LLVM-IR Numba intrinsics; Numba has no SIMD types): per
unit of a chunk, the window start (uint16), the x window (one 8-float load, two for 16 columns;
split units, `_chunk8s_avx2` / `_chunk16s_avx2`: a start and a window per slot), and per slot: a
32-bit broadcast of its metadata bits shifted right per lane (vpsrlvd), one vpermps
(llvm.x86.avx2.permps: only the low 3 bits of each lane's index count, so no mask; 16-column
windows permute both halves and blend on the 4th bit, shifted to the sign), one FMA with the
slot's 8 values. Four accumulators (two units in flight) against the FMA latency. No scalar load
per non-zero. `available()` says whether the CPU Numba targets has AVX2 and FMA; the intrinsics'
typer refuses to compile otherwise, and refuses arrays of the wrong dtype or layout.

Portable twin (`_chunk_portable`, plain Numba, no ISA intrinsic): the same layout and arithmetic
lane by lane, so any CPU (aarch64 included) tests the layout and the driver.

A layer's parts (`_part_avx2`, `_part_portable`: contiguous chunks of about equal units) are C
callbacks (cfuncs) that `sell8_forward`'s two drivers (one thread; a parallel region) and
`sell8_matvec_bias_relu` call by address, so the chunk kernels compile once (cold, 2 threads, the
AVX2 target: 3.5-5.7 s before, when the parallel driver compiled them again in its modules).
Nothing is compiled at import; cache=True keeps the compiled code.

Measured (bench/sell8_timing.py) on a 2-core Intel Xeon VM (family 6 model 207, AVX-512 host) with
Numba's target forced to haswell (AVX2 code) and OPENBLAS_CORETYPE=Haswell, 1 thread, the whole
784-1000-1000-500-200-10 He-initialised net pruned per layer, machine shared (load 3-5), us:

    k (%)                     0     30    40    50    70    90    95
    numpy dense chain         690   703   955   781   656   656   508
    CSR SpMV (csr engine)     2469  1684  1809  1562  884   347   176
    scipy.sparse CSR chain    3104  2307  2260  1767  1162  376   194
    SELL8 (this)              915   787   816   636   310   154   95
    windows per layer         8     8     8     8     16    16    16

A 16-column unit costs ~1.8x an 8-column one on that core (four vpermps on one shuffle port, not
two), hot in L2; it pays where it saves bytes (k >= ~60 %: the whole net then fits in L2 or streams
a third less).

Split units (`_chunk8s_avx2`, `_chunk16s_avx2`: each slot loads its own window; sell8 docstring)
cost ~1.25x a paired unit hot but drop the padding slot a paired window rounds up to: the whole He
net at batch 1, one thread, same target, side by side with paired-only layers (session 13, both
engines' thread limits held): k = 95 % x1.18-1.25, 99 % x1.31-1.38 (30-32 -> 22-23 us); k <= 90 %
keeps paired layers (docs/perf-notes.md).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from sparsenet.cfuncs import callback, run, run_parts
from sparsenet.cpu import cpu
from sparsenet.kernels import NEVER, _store_logits
from sparsenet.sell8 import LANES, SLOTS, STEP, index_bits
from sparsenet.simd import IR, require_arrays

_OPTS = dict(cache=True, boundscheck=False)
_UNIT = SLOTS * LANES            # floats of data per unit
_F32, _I16, _I32, _I64 = ir.FloatType(), ir.IntType(16), ir.IntType(32), ir.IntType(64)
V8F = ir.VectorType(_F32, LANES)
V8I = ir.VectorType(_I32, LANES)


def available() -> bool:
    """True when the CPU Numba compiles for has AVX2 and FMA (plan.cpu(): NUMBA_CPU_NAME and
    NUMBA_CPU_FEATURES when set, else the host; computed once)."""
    c = cpu()
    return bool(c.avx2 and c.fma)


_CHUNK_ARGS = (("data", types.float32, 1), ("meta", types.uint64, 1), ("start", types.uint16, 1),
               ("unit_ptr", types.int64, 1), ("x", types.float32, 1), ("bias", types.float32, 1),
               ("out", types.float32, 1))


def _relu_if(builder, flag, v):
    """max(v, 0) where the i1 `flag` is set, else v; NaN stays NaN (as simd.IR.relu_if)."""
    zero = ir.Constant(v.type, None)
    return builder.select(flag, builder.select(builder.fcmp_ordered("<", v, zero), zero, v), v)


def _make_chunk(window, split):
    bits = index_bits(window)
    name = f"sell8_kernels._chunk{window}{'s' if split else ''}"

    @intrinsic
    def chunk_avx2(typingctx, data, meta, start, unit_ptr, x, bias, out, c, relu):
        """out[8 c : 8 c + 8] = (relu)(bias[8 c:][:8] + SELL8 chunk c @ x), windows of `window`
        columns, a window a slot (split) or a unit; raw 1-d arrays (AVX2)."""
        if not available():
            raise TypingError(f"{name} needs AVX2 and FMA in Numba's target CPU (sell8_kernels.available() "
                              "is False); use the portable kernel (sell8_forward(..., avx2=False))")
        require_arrays(name, _CHUNK_ARGS, (data, meta, start, unit_ptr, x, bias, out))
        if not isinstance(c, types.Integer):
            raise TypingError(f"{name}: the chunk must be an integer, got {c}")
        if not isinstance(relu, types.Boolean):
            raise TypingError(f"{name}: relu must be a boolean, got {relu}")
        sig = types.void(data, meta, start, unit_ptr, x, bias, out, c, relu)

        def codegen(context, builder, sig, args):
            g = IR(context, builder, sig, args)
            p_data, p_meta, p_start, p_ptr, p_x, p_bias, p_out = g.ptr[:7]
            permute = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V8F, [V8F, V8I]),
                                                     "llvm.x86.avx2.permps")
            right = ir.Constant(V8I, [bits * lane for lane in range(LANES)])
            left = ir.Constant(V8I, [31 - 3 - bits * lane for lane in range(LANES)])   # bit 3 -> sign
            words = builder.bitcast(p_meta, ir.IntType(8).as_pointer())
            accs = [cgutils.alloca_once_value(builder, ir.Constant(V8F, None)) for _ in range(2 * SLOTS)]

            def broadcast_i32(word, byte):
                p = builder.bitcast(builder.gep(word, [g.const(byte)]), _I32.as_pointer())
                v = builder.insert_element(ir.Constant(V8I, ir.Undefined), builder.load(p, align=1),
                                           ir.Constant(_I32, 0))
                return builder.shuffle_vector(v, v, ir.Constant(V8I, None))

            def x_window(u, s):
                """The 8-float halves of the x window of unit u's slot s (split: a start a slot)."""
                at = builder.add(builder.mul(u, g.const(SLOTS)), g.const(s)) if split else u
                x0 = builder.mul(builder.zext(builder.load(builder.gep(p_start, [at])), _I64), g.const(STEP))
                return [g.vload(p_x, builder.add(x0, g.const(LANES * h)), V8F) for h in range(window // LANES)]

            def unit(u, k):
                word = builder.gep(words, [builder.mul(u, g.const(8))])
                halves = x_window(u, 0)
                off = builder.mul(u, g.const(_UNIT))
                for s in range(SLOTS):
                    if split and s:
                        halves = x_window(u, s)
                    b = broadcast_i32(word, bits * LANES * s // 8)      # slot s: bits * 8 s .. (byte-aligned)
                    idx = builder.lshr(b, right)
                    picked = builder.call(permute, [halves[0], idx])
                    if window == 16:                                   # 4th index bit picks the upper half
                        upper = builder.call(permute, [halves[1], idx])
                        high = builder.icmp_signed("<", builder.shl(b, left), ir.Constant(V8I, None))
                        picked = builder.select(high, upper, picked)
                    values = g.vload(p_data, builder.add(off, g.const(LANES * s)), V8F)
                    acc = accs[SLOTS * k + s]
                    builder.store(g.fma(values, picked, builder.load(acc)), acc)

            chunk = g.i64(args[7])
            g.pairs(g.at(p_ptr, chunk), g.at(p_ptr, builder.add(chunk, g.const(1))), unit, 2)
            total = builder.fadd(builder.fadd(builder.load(accs[0]), builder.load(accs[1])),
                                 builder.fadd(builder.load(accs[2]), builder.load(accs[3])))
            row0 = builder.mul(chunk, g.const(LANES))
            total = builder.fadd(total, g.vload(p_bias, row0, V8F))
            g.vstore(_relu_if(builder, args[8], total), p_out, row0)
            return context.get_dummy_value()

        return sig, codegen

    return chunk_avx2


_chunk8_avx2, _chunk16_avx2 = _make_chunk(8, False), _make_chunk(16, False)
_chunk8s_avx2, _chunk16s_avx2 = _make_chunk(8, True), _make_chunk(16, True)


@njit(inline="always", **_OPTS)
def _chunk_portable(data, meta, start, unit_ptr, x, bias, out, c, wide, split, relu):
    """The AVX2 chunk kernels in plain Numba, lane by lane (any CPU); wide: 16-column windows;
    split: a window start a slot (else one a unit)."""
    bits = np.uint64(4) if wide else np.uint64(3)
    mask = np.uint64(15) if wide else np.uint64(7)
    r0 = c * 8
    o = out[r0:r0 + 8]
    for lane in range(8):
        o[lane] = np.float32(0.0)
    for u in range(unit_ptr[c], unit_ptr[c + 1]):
        m = meta[u]
        x0 = x[np.int64(start[2 * u if split else u]) * 4:]
        x1 = x[np.int64(start[2 * u + 1 if split else u]) * 4:]
        d = data[u * 16:u * 16 + 16]
        for lane in range(8):
            a = (m >> (bits * np.uint64(lane))) & mask
            b = (m >> (bits * np.uint64(8 + lane))) & mask
            o[lane] += d[lane] * x0[a] + d[8 + lane] * x1[b]
    for lane in range(8):
        v = o[lane] + bias[r0 + lane]
        if relu and v < np.float32(0.0):
            v = np.float32(0.0)
        o[lane] = v


@njit(inline="always", **_OPTS)
def _part(unit_ptr, t, n_parts):
    """Chunks [c0, c1) of part t of n_parts: contiguous, about equal units (rows may be sorted)."""
    n_chunks = unit_ptr.shape[0] - 1
    total = unit_ptr[n_chunks]
    starts = unit_ptr[:n_chunks]
    c0 = 0 if t == 0 else np.searchsorted(starts, t * total // n_parts)
    c1 = n_chunks if t == n_parts - 1 else np.searchsorted(starts, (t + 1) * total // n_parts)
    return c0, c1


# A layer's parts are C callbacks (cfuncs) that the drivers call by address: the chunk kernels are
# compiled once, not again in every module of a parallel driver (cold, 2 threads: see the docstring).
@callback
def _part_avx2(data, meta, start, unit_ptr, bias, x, out, wide, split, relu, n_parts, w):
    """Part w of n_parts of one layer (contiguous chunks of about equal units) on the AVX2 kernel
    of its windows (wide: 16 columns) and units (split: a window a slot)."""
    c0, c1 = _part(unit_ptr, w, n_parts)
    if wide and split:
        for c in range(c0, c1):
            _chunk16s_avx2(data, meta, start, unit_ptr, x, bias, out, c, relu)
    elif wide:
        for c in range(c0, c1):
            _chunk16_avx2(data, meta, start, unit_ptr, x, bias, out, c, relu)
    elif split:
        for c in range(c0, c1):
            _chunk8s_avx2(data, meta, start, unit_ptr, x, bias, out, c, relu)
    else:
        for c in range(c0, c1):
            _chunk8_avx2(data, meta, start, unit_ptr, x, bias, out, c, relu)


@callback
def _part_portable(data, meta, start, unit_ptr, bias, x, out, wide, split, relu, n_parts, w):
    """_part_avx2 on the portable twin."""
    c0, c1 = _part(unit_ptr, w, n_parts)
    for c in range(c0, c1):
        _chunk_portable(data, meta, start, unit_ptr, x, bias, out, c, wide, split, relu)


def _kernel(avx2: bool):
    """The part callback of the AVX2 kernel (ValueError where available() is False) or the twin."""
    if not avx2:
        return _part_portable
    if not available():
        raise ValueError("the SELL8 AVX2 kernel needs a CPU with AVX2 and FMA (as Numba targets it); "
                         "pass avx2=False for the portable kernel")
    return _part_avx2


def sell8_matvec_bias_relu(data, meta, start, unit_ptr, bias, x, out, wide, split, relu, n_parts=1, avx2=True):
    """out[:8 n_chunks] = (relu)(W @ x + bias) for one SELL8 layer (wide: 16-column windows; split:
    split units; start: its kernel_start; x holds >= x_len floats) on n_parts threads
    (contiguous chunks of about equal units; 1: this thread), on the AVX2 kernel or (avx2=False)
    the portable twin."""
    args = (data, meta, start, unit_ptr, bias, x, out, bool(wide), bool(split), bool(relu))
    run(_kernel(avx2).address(*args, 1, 0), int(n_parts), *args, int(n_parts))


@njit(inline="always", **_OPTS)
def _load_input(X, xbuf):
    """xbuf = X[0], zero-padded."""
    x = X[0]
    n_in = x.shape[0]
    for j in range(n_in):
        xbuf[j] = x[j]
    for j in range(n_in, xbuf.shape[0]):
        xbuf[j] = np.float32(0.0)


@njit(inline="always", **_OPTS)
def _layers(part, data, meta, start, unit_ptr, bias, windows, splits, offsets, X, xbuf, buf0, buf1,
            min_parallel_units, n_threads, logits):
    """The net through the part callback at `part`: a layer of at least min_parallel_units units in
    n_threads parts over the threads (inlined into a parallel driver), else in one on this thread."""
    _load_input(X, xbuf)
    h = xbuf
    out = buf0
    n_layers = offsets.shape[1] - 1
    for layer in range(n_layers):
        out = buf0 if layer % 2 == 0 else buf1
        u0, u1 = offsets[0, layer], offsets[0, layer + 1]
        n = n_threads if u1 - u0 >= min_parallel_units and n_threads > 1 else 1
        run_parts(part, n, (data[u0 * 16:u1 * 16], meta[u0:u1], start[offsets[3, layer]:offsets[3, layer + 1]],
                            unit_ptr[offsets[1, layer]:offsets[1, layer + 1]],
                            bias[offsets[2, layer]:offsets[2, layer + 1]], h, out,
                            windows[layer] == 16, splits[layer] != 0, layer < n_layers - 1))
        h = out
    _store_logits(out, logits)


# Two drivers: a driver compiles what it may call, so the serial one spares a one-thread caller the
# parallel region's compile.
@njit(parallel=True, **_OPTS)
def _forward(part, data, meta, start, unit_ptr, bias, windows, splits, offsets, X, xbuf, buf0, buf1,
             min_parallel_units, n_threads, logits):
    """sell8_forward with layers from min_parallel_units units on n_threads threads."""
    _layers(part, data, meta, start, unit_ptr, bias, windows, splits, offsets, X, xbuf, buf0, buf1,
            min_parallel_units, n_threads, logits)


@njit(**_OPTS)
def _forward_serial(part, data, meta, start, unit_ptr, bias, windows, splits, offsets, X, xbuf, buf0, buf1,
                    logits):
    """sell8_forward on the calling thread."""
    _layers(part, data, meta, start, unit_ptr, bias, windows, splits, offsets, X, xbuf, buf0, buf1,
            NEVER, 1, logits)


def sell8_forward(data, meta, start, unit_ptr, bias, windows, splits, offsets, X, xbuf, buf0, buf1, min_parallel_units,
                  n_threads, logits, avx2=True, callbacks=None):
    """Logits of one input through the whole MLP (ReLU on hidden layers): X (1, n_in) -> logits
    (1, n_out), written in place (the caller allocates it).

    The arrays are sell8.flatten's (layers concatenated, offsets[:, l] where layer l starts); xbuf
    holds the first layer's x_len floats (receives x, zero-padded), buf0/buf1 the max over layers of
    8 n_chunks and x_len (flatten returns both sizes). A layer with at least min_parallel_units units
    runs on n_threads threads (set Numba's thread count to at least that; n_threads = 1 runs a
    driver without a parallel region). avx2 picks the AVX2 kernel (ValueError where available()
    is False) or the portable twin. callbacks: the caller's cache of callback addresses
    (cfuncs.Callback.address).
    """
    part = _kernel(avx2).address(data, meta, start, unit_ptr, bias, xbuf, buf0, True, True, True, 1, 0,
                                 cache=callbacks)
    net = (data, meta, start, unit_ptr, bias, windows, splits, offsets, X, xbuf, buf0, buf1)
    if n_threads > 1:
        _forward(part, *net, min_parallel_units, n_threads, logits)
    else:
        _forward_serial(part, *net, logits)
