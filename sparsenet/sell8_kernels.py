"""Numba kernels for SELL8 (sell8.py) at batch 1: an AVX2 permute-and-FMA SpMV, its portable twin,
and the whole MLP in one call.

AVX2 (`_chunk_avx2`, an LLVM-IR Numba intrinsic; Numba has no SIMD types): per unit of a chunk,
    two 32-bit broadcasts of the metadata word (bytes 0..3 and 3..6) shifted right by 3 lane bits
    (vpsrlvd), the window start (bytes 6..7), one 8-float x-window load, two vpermps
    (llvm.x86.avx2.permps: only the low 3 bits of each lane's index count, so no mask), two
    8-float data loads, two FMAs;
four accumulators (two units in flight) against the FMA latency. No scalar load per non-zero.
`available()` says whether the CPU Numba targets has AVX2 and FMA; the intrinsic's typer refuses
to compile otherwise, and refuses arrays of the wrong dtype or layout.

Portable twin (`_chunk_portable`, plain Numba, no ISA intrinsic): the same layout and arithmetic
lane by lane, so any CPU (aarch64 included) tests the layout and the driver.

`sell8_forward` runs the net (sell8.flatten's arrays) on either. Nothing is compiled at import;
cache=True keeps the compiled code.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from sparsenet.sell8 import INDEX_BITS, LANES, SLOTS, START_SHIFT, STEP
from sparsenet.simd import IR, require_arrays

_OPTS = dict(cache=True, boundscheck=False)
_UNIT = SLOTS * LANES            # floats of data per unit
_F32, _I16, _I32, _I64 = ir.FloatType(), ir.IntType(16), ir.IntType(32), ir.IntType(64)
V8F = ir.VectorType(_F32, LANES)
V8I = ir.VectorType(_I32, LANES)


def available() -> bool:
    """True when the CPU Numba compiles for has AVX2 and FMA (plan.cpu(): NUMBA_CPU_NAME and
    NUMBA_CPU_FEATURES when set, else the host; computed once)."""
    from sparsenet.plan import cpu
    c = cpu()
    return bool(c.avx2 and c.fma)


_CHUNK_ARGS = (("data", types.float32, 1), ("meta", types.uint64, 1), ("unit_ptr", types.int64, 1),
               ("x", types.float32, 1), ("bias", types.float32, 1), ("out", types.float32, 1))


def _check_scalars(c, relu):
    if not isinstance(c, types.Integer):
        raise TypingError(f"sell8_kernels._chunk_avx2: the chunk must be an integer, got {c}")
    if not isinstance(relu, types.Boolean):
        raise TypingError(f"sell8_kernels._chunk_avx2: relu must be a boolean, got {relu}")


def _relu_if(builder, flag, v):
    """max(v, 0) where the i1 `flag` is set, else v; NaN stays NaN (as simd.IR.relu_if)."""
    zero = ir.Constant(v.type, None)
    return builder.select(flag, builder.select(builder.fcmp_ordered("<", v, zero), zero, v), v)


@intrinsic
def _chunk_avx2(typingctx, data, meta, unit_ptr, x, bias, out, c, relu):
    """out[8 c : 8 c + 8] = (relu)(bias[8 c:][:8] + SELL8 chunk c @ x); raw 1-d arrays (AVX2)."""
    if not available():
        raise TypingError("sell8 AVX2 kernel: Numba's target CPU has no AVX2+FMA "
                          "(sell8_kernels.available() is False); use the portable kernel")
    require_arrays("sell8_kernels._chunk_avx2", _CHUNK_ARGS, (data, meta, unit_ptr, x, bias, out))
    _check_scalars(c, relu)
    sig = types.void(data, meta, unit_ptr, x, bias, out, c, relu)

    def codegen(context, builder, sig, args):
        g = IR(context, builder, sig, args)
        p_data, p_meta, p_ptr, p_x, p_bias, p_out = g.ptr[:6]
        permute = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V8F, [V8F, V8I]),
                                                 "llvm.x86.avx2.permps")
        shifts = ir.Constant(V8I, [INDEX_BITS * lane for lane in range(LANES)])
        words = builder.bitcast(p_meta, ir.IntType(8).as_pointer())
        accs = [cgutils.alloca_once_value(builder, ir.Constant(V8F, None)) for _ in range(2 * SLOTS)]

        def field(word, byte, ty, align):
            return builder.load(builder.bitcast(builder.gep(word, [g.const(byte)]), ty.as_pointer()), align=align)

        def indices(word, byte):
            """Lane l's index in bits 3 l.. of the i32 at `byte` (vpbroadcastd, vpsrlvd)."""
            v = builder.insert_element(ir.Constant(V8I, ir.Undefined), field(word, byte, _I32, 1),
                                       ir.Constant(_I32, 0))
            return builder.lshr(builder.shuffle_vector(v, v, ir.Constant(V8I, None)), shifts)

        def unit(u, k):
            word = builder.gep(words, [builder.mul(u, g.const(8))])
            start = builder.zext(field(word, START_SHIFT // 8, _I16, 2), _I64)
            window = g.vload(p_x, builder.mul(start, g.const(STEP)), V8F)
            off = builder.mul(u, g.const(_UNIT))
            for s in range(SLOTS):
                picked = builder.call(permute, [window, indices(word, 3 * s)])
                values = g.vload(p_data, builder.add(off, g.const(LANES * s)), V8F)
                acc = accs[SLOTS * k + s]
                builder.store(g.fma(values, picked, builder.load(acc)), acc)

        chunk = g.i64(args[6])
        g.pairs(g.at(p_ptr, chunk), g.at(p_ptr, builder.add(chunk, g.const(1))), unit, 2)
        total = builder.fadd(builder.fadd(builder.load(accs[0]), builder.load(accs[1])),
                             builder.fadd(builder.load(accs[2]), builder.load(accs[3])))
        row0 = builder.mul(chunk, g.const(LANES))
        total = builder.fadd(total, g.vload(p_bias, row0, V8F))
        g.vstore(_relu_if(builder, args[7], total), p_out, row0)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always", **_OPTS)
def _chunk_portable(data, meta, unit_ptr, x, bias, out, c, relu):
    """_chunk_avx2 in plain Numba, lane by lane (any CPU)."""
    r0 = c * 8
    o = out[r0:r0 + 8]
    for lane in range(8):
        o[lane] = np.float32(0.0)
    for u in range(unit_ptr[c], unit_ptr[c + 1]):
        m = meta[u]
        w = (m >> np.uint64(48)) * np.uint64(4)
        xw = x[w:w + np.uint64(8)]
        d = data[u * 16:u * 16 + 16]
        for lane in range(8):
            a = (m >> np.uint64(3 * lane)) & np.uint64(7)
            b = (m >> np.uint64(24 + 3 * lane)) & np.uint64(7)
            o[lane] += d[lane] * xw[a] + d[8 + lane] * xw[b]
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


@njit(**_OPTS)
def sell8_matvec_bias_relu_serial(data, meta, unit_ptr, bias, x, out, relu):
    """out[:8 n_chunks] = (relu)(W @ x + bias) for one SELL8 layer (AVX2); x holds >= x_len floats."""
    for c in range(unit_ptr.shape[0] - 1):
        _chunk_avx2(data, meta, unit_ptr, x, bias, out, c, relu)


@njit(parallel=True, **_OPTS)
def sell8_matvec_bias_relu(data, meta, unit_ptr, bias, x, out, relu, n_parts):
    """sell8_matvec_bias_relu_serial on n_parts threads (contiguous chunks of about equal units)."""
    for t in prange(n_parts):
        c0, c1 = _part(unit_ptr, t, n_parts)
        for c in range(c0, c1):
            _chunk_avx2(data, meta, unit_ptr, x, bias, out, c, relu)


@njit(fastmath={"contract"}, **_OPTS)
def sell8_matvec_bias_relu_portable_serial(data, meta, unit_ptr, bias, x, out, relu):
    """sell8_matvec_bias_relu_serial on the portable twin."""
    for c in range(unit_ptr.shape[0] - 1):
        _chunk_portable(data, meta, unit_ptr, x, bias, out, c, relu)


@njit(parallel=True, fastmath={"contract"}, **_OPTS)
def sell8_matvec_bias_relu_portable(data, meta, unit_ptr, bias, x, out, relu, n_parts):
    """sell8_matvec_bias_relu on the portable twin."""
    for t in prange(n_parts):
        c0, c1 = _part(unit_ptr, t, n_parts)
        for c in range(c0, c1):
            _chunk_portable(data, meta, unit_ptr, x, bias, out, c, relu)


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
def _store_logits(out, logits):
    for j in range(logits.shape[1]):
        logits[0, j] = out[j]


@njit(inline="always", **_OPTS)
def _layer(data, meta, unit_ptr, bias, offsets, layer):
    """Layer `layer`'s (data, meta, unit_ptr, bias, units) in the concatenated arrays."""
    u0, u1 = offsets[0, layer], offsets[0, layer + 1]
    return (data[u0 * 16:u1 * 16], meta[u0:u1], unit_ptr[offsets[1, layer]:offsets[1, layer + 1]],
            bias[offsets[2, layer]:offsets[2, layer + 1]], u1 - u0)


# The drivers, one per (kernel, threaded): a driver compiles every kernel it may call, so the serial
# ones spare a one-thread caller the parallel kernel's compile (~2 s of ~4 s cold).
@njit(**_OPTS)
def sell8_forward_avx2(data, meta, unit_ptr, bias, offsets, X, xbuf, buf0, buf1, min_parallel_units,
                       n_threads, logits):
    """sell8_forward on the AVX2 kernel, layers from min_parallel_units on n_threads threads."""
    _load_input(X, xbuf)
    h = xbuf
    out = buf0
    n_layers = offsets.shape[1] - 1
    for layer in range(n_layers):
        out = buf0 if layer % 2 == 0 else buf1
        d, m, p, b, units = _layer(data, meta, unit_ptr, bias, offsets, layer)
        if units >= min_parallel_units and n_threads > 1:
            sell8_matvec_bias_relu(d, m, p, b, h, out, layer < n_layers - 1, n_threads)
        else:
            sell8_matvec_bias_relu_serial(d, m, p, b, h, out, layer < n_layers - 1)
        h = out
    _store_logits(out, logits)


@njit(**_OPTS)
def sell8_forward_avx2_serial(data, meta, unit_ptr, bias, offsets, X, xbuf, buf0, buf1, logits):
    """sell8_forward on the AVX2 kernel, on the calling thread."""
    _load_input(X, xbuf)
    h = xbuf
    out = buf0
    n_layers = offsets.shape[1] - 1
    for layer in range(n_layers):
        out = buf0 if layer % 2 == 0 else buf1
        d, m, p, b, units = _layer(data, meta, unit_ptr, bias, offsets, layer)
        sell8_matvec_bias_relu_serial(d, m, p, b, h, out, layer < n_layers - 1)
        h = out
    _store_logits(out, logits)


@njit(**_OPTS)
def sell8_forward_portable(data, meta, unit_ptr, bias, offsets, X, xbuf, buf0, buf1, min_parallel_units,
                           n_threads, logits):
    """sell8_forward on the portable twin, layers from min_parallel_units on n_threads threads."""
    _load_input(X, xbuf)
    h = xbuf
    out = buf0
    n_layers = offsets.shape[1] - 1
    for layer in range(n_layers):
        out = buf0 if layer % 2 == 0 else buf1
        d, m, p, b, units = _layer(data, meta, unit_ptr, bias, offsets, layer)
        if units >= min_parallel_units and n_threads > 1:
            sell8_matvec_bias_relu_portable(d, m, p, b, h, out, layer < n_layers - 1, n_threads)
        else:
            sell8_matvec_bias_relu_portable_serial(d, m, p, b, h, out, layer < n_layers - 1)
        h = out
    _store_logits(out, logits)


@njit(**_OPTS)
def sell8_forward_portable_serial(data, meta, unit_ptr, bias, offsets, X, xbuf, buf0, buf1, logits):
    """sell8_forward on the portable twin, on the calling thread."""
    _load_input(X, xbuf)
    h = xbuf
    out = buf0
    n_layers = offsets.shape[1] - 1
    for layer in range(n_layers):
        out = buf0 if layer % 2 == 0 else buf1
        d, m, p, b, units = _layer(data, meta, unit_ptr, bias, offsets, layer)
        sell8_matvec_bias_relu_portable_serial(d, m, p, b, h, out, layer < n_layers - 1)
        h = out
    _store_logits(out, logits)


def sell8_forward(data, meta, unit_ptr, bias, offsets, X, xbuf, buf0, buf1, min_parallel_units, n_threads,
                  logits, avx2=True):
    """Logits of one input through the whole MLP (ReLU on hidden layers): X (1, n_in) -> logits
    (1, n_out), written in place (the caller allocates it).

    The arrays are sell8.flatten's (layers concatenated, offsets[:, l] where layer l starts); xbuf
    holds the first layer's x_len floats (receives x, zero-padded), buf0/buf1 the max over layers of
    8 n_chunks and x_len (flatten returns both sizes). A layer with at least min_parallel_units units
    runs on n_threads threads (set Numba's thread count to at least that; n_threads = 1 runs a
    driver without the parallel kernel). avx2 picks the AVX2 kernel (ValueError where available()
    is False) or the portable twin.
    """
    threaded = n_threads > 1
    if avx2:
        if not available():
            raise ValueError("the SELL8 AVX2 kernel needs a CPU with AVX2 and FMA (as Numba targets it); "
                             "pass avx2=False for the portable kernel")
        if threaded:
            sell8_forward_avx2(data, meta, unit_ptr, bias, offsets, X, xbuf, buf0, buf1, min_parallel_units,
                               n_threads, logits)
        else:
            sell8_forward_avx2_serial(data, meta, unit_ptr, bias, offsets, X, xbuf, buf0, buf1, logits)
    elif threaded:
        sell8_forward_portable(data, meta, unit_ptr, bias, offsets, X, xbuf, buf0, buf1, min_parallel_units,
                               n_threads, logits)
    else:
        sell8_forward_portable_serial(data, meta, unit_ptr, bias, offsets, X, xbuf, buf0, buf1, logits)
