"""Numba kernels for SELL (sell.py) at batch 1: an AVX-512 permute-and-FMA SpMV, and its portable twin.

Per (16-row chunk, 32-column block) the AVX-512 kernel (`_chunk`) loads x[32 b : 32 b + 32] into two
zmm registers, then every slot is: load 16 values, load 16 uint8 column indices (zero-extended), one
vpermt2ps that picks each lane's x from the two registers, one FMA into one of two alternating
accumulators (one is bound by the FMA latency). No scalar load per non-zero, so it is not load-port
bound as the CSR SpMV is (kernels._row_dot). On packed values (sell.SELL.packed; `packed` at run
time) a slot loads 16 floats from a running offset and spreads them over its mask's lanes
(vexpandps, register form), the offset moving by the mask's popcount. Numba has no SIMD types, so that chunk loop is LLVM IR
(a Numba intrinsic); the loops over chunks and layers around it are plain Numba. The whole forward
(`sell_forward`) runs a layer that sell.flatten holds in bitmap rows on bitmap_kernels instead.

`_chunk_portable` computes the same over the same layout in plain Numba (a gather per lane): it
runs on any CPU, so CI everywhere tests the layout and drivers, and the AVX-512 kernel is tested
against it where the CPU has AVX-512F. The intrinsic refuses, at typing time, a target without
AVX-512F and arrays of the wrong dtype or layout. Measurements: docs/perf-notes.md.
Nothing is compiled at import; cache=True keeps the compiled code.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from sparsenet.bitmap_kernels import (bitmap_matvec, bitmap_matvec_portable, bitmap_matvec_portable_serial,
                                       bitmap_matvec_serial)
from sparsenet.cpu import cpu
from sparsenet.kernels import _store_logits
from sparsenet.sell import BLOCK, LANES
from sparsenet.simd import IR, VF, require_arrays

_OPTS = dict(cache=True, boundscheck=False)
_ACCUMULATORS = 2


def available() -> bool:
    """True when Numba targets a CPU with AVX-512F (the intrinsic would not compile otherwise)."""
    return cpu().avx512f


_CHUNK_ARGS = (("data", types.float32, 1), ("masks", types.uint16, 1), ("vptr", types.int64, 1),
               ("indices", types.uint8, 1), ("block", types.Integer, 1), ("slot_ptr", types.Integer, 1),
               ("chunk_ptr", types.Integer, 1), ("x", types.float32, 1), ("bias", types.float32, 1),
               ("out", types.float32, 1))


@intrinsic
def _chunk(typingctx, data, masks, vptr, indices, block, slot_ptr, chunk_ptr, x, bias, out, c, relu, packed):
    """out[16 c : 16 c + 16] = (relu)(bias[16 c:][:16] + SELL chunk c @ x); raw 1-d arrays. `packed`
    (run time): data holds the packed values (sell.SELL.packed), masks and vptr say where; else data
    is the padded slots and masks, vptr are not read."""
    if not available():
        raise TypingError("sell_kernels._chunk needs a CPU with AVX-512F (vpermt2ps) as Numba's target; "
                          "use sell_forward_portable on this one")
    arrays = (data, masks, vptr, indices, block, slot_ptr, chunk_ptr, x, bias, out)
    require_arrays("sell_kernels._chunk", _CHUNK_ARGS, arrays)
    sig = types.void(*arrays, c, relu, packed)

    def codegen(context, builder, sig, args):
        g = IR(context, builder, sig, args)
        p_data, p_mask, p_vptr, p_idx, p_block, p_slot, p_chunk, p_x, p_bias, p_out = g.ptr[:10]
        vi = ir.VectorType(ir.IntType(32), LANES)
        vb = ir.VectorType(ir.IntType(8), LANES)
        vm = ir.VectorType(ir.IntType(1), LANES)
        module = builder.module
        permute = cgutils.get_or_insert_function(
            module, ir.FunctionType(VF, [VF, vi, VF]), "llvm.x86.avx512.vpermi2var.ps.512")
        expand = cgutils.get_or_insert_function(module, ir.FunctionType(VF, [VF, VF, vm]), "llvm.x86.avx512.mask.expand.v16f32")
        popcount = cgutils.get_or_insert_function(module, ir.FunctionType(ir.IntType(16), [ir.IntType(16)]), "llvm.ctpop.i16")
        accs = g.zeroed(_ACCUMULATORS)
        chunk = g.i64(args[10])
        table = [None, None]
        at = cgutils.alloca_once_value(builder, g.const(0))       # packed: the next slot's first value

        def picked(s):
            lanes = builder.zext(g.vload(p_idx, builder.mul(s, g.const(LANES)), vb), vi)
            return builder.call(permute, [table[0], lanes, table[1]])

        def padded_slot(s, u):
            w = g.vload(p_data, builder.mul(s, g.const(LANES)))
            builder.store(g.fma(w, picked(s), builder.load(accs[u])), accs[u])

        def packed_slot(s, u):
            # 16 floats from the running offset, spread over the mask's lanes (zero elsewhere); the
            # load goes through an empty asm so that LLVM keeps vexpandps's register form (one
            # shuffle, also where the memory form is slow) and the plain load
            m = builder.load(builder.gep(p_mask, [s]))
            o = builder.load(at)
            raw = builder.asm(ir.FunctionType(VF, [VF]), "", "=v,0", [g.vload(p_data, o)], False, name="values")
            w = builder.call(expand, [raw, ir.Constant(VF, None), builder.bitcast(m, vm)])
            builder.store(builder.add(o, builder.zext(builder.call(popcount, [m]), o.type)), at)
            builder.store(g.fma(w, picked(s), builder.load(accs[u])), accs[u])

        def entries(slot):
            e0, e1 = g.at(p_chunk, chunk), g.at(p_chunk, builder.add(chunk, g.const(1)))
            with cgutils.for_range_slice(builder, e0, e1, g.const(1), inc=True) as (e, _):
                xo = builder.mul(g.at(p_block, e), g.const(BLOCK))
                table[0] = g.vload(p_x, xo)
                table[1] = g.vload(p_x, builder.add(xo, g.const(LANES)))
                g.pairs(g.at(p_slot, e), g.at(p_slot, builder.add(e, g.const(1))), slot, _ACCUMULATORS)

        with builder.if_else(args[12]) as (then, other):
            with then:
                builder.store(g.at(p_vptr, chunk), at)
                entries(packed_slot)
            with other:
                entries(padded_slot)
        row0 = builder.mul(chunk, g.const(LANES))
        total = builder.fadd(g.sum(accs), g.vload(p_bias, row0))
        g.vstore(g.relu_if(args[11], total), p_out, row0)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always", **_OPTS)
def _chunk_portable(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, x, bias, out, c, relu, packed):
    """_chunk in plain Numba: the same sums over the same layout, one gathered x per lane."""
    acc = np.zeros(LANES, np.float32)
    at = vptr[c] if packed else 0
    for e in range(chunk_ptr[c], chunk_ptr[c + 1]):
        xb = x[block[e] * BLOCK:block[e] * BLOCK + BLOCK]
        for s in range(slot_ptr[e], slot_ptr[e + 1]):
            idx = indices[s * LANES:(s + 1) * LANES]
            if packed:
                m = np.int64(masks[s])
                for lane in range(LANES):
                    if (m >> lane) & 1:
                        acc[lane] += data[at] * xb[idx[lane]]
                        at += 1
            else:
                d = data[s * LANES:(s + 1) * LANES]
                for lane in range(LANES):
                    acc[lane] += d[lane] * xb[idx[lane]]
    for lane in range(LANES):
        v = acc[lane] + bias[c * LANES + lane]
        out[c * LANES + lane] = np.float32(0.0) if relu and v < 0 else v


@njit(**_OPTS)
def sell_matvec_bias_relu_serial(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, x, out, relu, packed):
    """out[:16 n_chunks] = (relu)(W @ x + bias) for one SELL layer, padded or packed (sell.flatten);
    x holds >= 32 n_blocks floats."""
    for c in range(chunk_ptr.shape[0] - 1):
        _chunk(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, x, bias, out, c, relu, packed)


@njit(parallel=True, **_OPTS)
def sell_matvec_bias_relu(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, x, out, relu, packed, n_parts):
    """sell_matvec_bias_relu_serial with chunks dealt round-robin to n_parts threads (rows are sorted
    by density, so contiguous halves would give one thread the dense half)."""
    n_chunks = chunk_ptr.shape[0] - 1
    for t in prange(n_parts):
        for c in range(t, n_chunks, n_parts):
            _chunk(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, x, bias, out, c, relu, packed)


@njit(**_OPTS)
def sell_matvec_portable_serial(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, x, out, relu, packed):
    """sell_matvec_bias_relu_serial on the portable twin."""
    for c in range(chunk_ptr.shape[0] - 1):
        _chunk_portable(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, x, bias, out, c, relu, packed)


@njit(parallel=True, **_OPTS)
def sell_matvec_portable(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, x, out, relu, packed, n_parts):
    """sell_matvec_bias_relu on the portable twin."""
    n_chunks = chunk_ptr.shape[0] - 1
    for t in prange(n_parts):
        for c in range(t, n_chunks, n_parts):
            _chunk_portable(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, x, bias, out, c, relu, packed)


@njit(inline="always", **_OPTS)
def _load_x(X, xbuf, n_blocks):
    """xbuf[:n_in] = X[0], zeros up to 32 n_blocks[0] (the first layer's blocks); returns xbuf."""
    x = X[0]
    n_in = x.shape[0]
    for j in range(n_in):
        xbuf[j] = x[j]
    for j in range(n_in, BLOCK * n_blocks[0]):
        xbuf[j] = np.float32(0.0)
    return xbuf


@njit(inline="always", **_OPTS)
def _sell_layer(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, offsets, layer):
    """Layer `layer`'s arrays of the concatenated net: (data, masks, vptr, indices, block, slot_ptr,
    chunk_ptr, bias, n_slots); masks and vptr are empty (and so their slices) unless packed."""
    s0, s1 = offsets[0, layer], offsets[0, layer + 1]
    c0, c1 = offsets[3, layer], offsets[3, layer + 1]
    return (data[offsets[5, layer]:offsets[5, layer + 1]], masks[s0:s1], vptr[c0:c1], indices[s0 * LANES:s1 * LANES],
            block[offsets[1, layer]:offsets[1, layer + 1]], slot_ptr[offsets[2, layer]:offsets[2, layer + 1]],
            chunk_ptr[c0:c1], bias[offsets[4, layer]:offsets[4, layer + 1]], s1 - s0)


@njit(inline="always", **_OPTS)
def _bitmap_layer(values, bitmasks, rptr, offsets, layer):
    """Layer `layer`'s bitmap arrays (values, masks, rptr, groups a row, groups in all); rptr is empty
    where the layer is held in SELL (sell.flatten)."""
    r0, r1 = offsets[8, layer], offsets[8, layer + 1]
    m0, m1 = offsets[7, layer], offsets[7, layer + 1]
    n_rows = max(r1 - r0 - 1, 1)
    return (values[offsets[6, layer]:offsets[6, layer + 1]], bitmasks[m0:m1], rptr[r0:r1], (m1 - m0) // n_rows,
            m1 - m0)


@njit(inline="always", **_OPTS)
def _forward(sell_serial, sell_parallel, rows_serial, rows_parallel, data, masks, vptr, indices, block, slot_ptr,
             chunk_ptr, bias, n_chunks, n_blocks, offsets, packed, values, bitmasks, rptr, X, xbuf, buf0, buf1,
             min_parallel_slots, n_threads, logits):
    """sell_forward's body on the given layer kernels (the ISA's or the portable twins)."""
    h = _load_x(X, xbuf, n_blocks)
    out = buf0
    n_layers = n_chunks.shape[0]
    for layer in range(n_layers):
        out = buf0 if layer % 2 == 0 else buf1
        relu = layer < n_layers - 1
        if offsets[8, layer + 1] > offsets[8, layer]:
            bv, bm, br, n_groups, work = _bitmap_layer(values, bitmasks, rptr, offsets, layer)
            b = bias[offsets[4, layer]:offsets[4, layer + 1]]
            if work >= min_parallel_slots and n_threads > 1:
                rows_parallel(bv, bm, br, b, h, out, n_groups, relu, n_threads)
            else:
                rows_serial(bv, bm, br, b, h, out, n_groups, relu)
        else:
            d, m, v, c, blk, sp, cp, b, n_slots = _sell_layer(data, masks, vptr, indices, block, slot_ptr, chunk_ptr,
                                                              bias, offsets, layer)
            if n_slots >= min_parallel_slots and n_threads > 1:
                sell_parallel(d, m, v, c, blk, sp, cp, b, h, out, relu, packed, n_threads)
            else:
                sell_serial(d, m, v, c, blk, sp, cp, b, h, out, relu, packed)
        h = out
    _store_logits(out, logits)


@njit(**_OPTS)
def sell_forward(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, n_chunks, n_blocks, offsets, packed,
                 values, bitmasks, rptr, X, xbuf, buf0, buf1, min_parallel_slots, n_threads, logits):
    """Logits of one input through the whole MLP (ReLU on hidden layers): X (1, n_in) -> logits
    (1, n_out), written in place (the caller allocates it: cheaper than slicing a buffer after).

    The arrays are sell.flatten's (layers concatenated, offsets[:, l] where layer l starts; packed
    or padded values; a layer with rptr entries in bitmap rows, bitmap_kernels). xbuf (>= 32
    n_blocks[0] floats) receives x, zero-padded; buf0/buf1 hold >= 16 n_chunks and >= 32 n_blocks
    of every layer. A layer with at least min_parallel_slots slots (bitmap: groups) runs on
    n_threads threads.
    """
    _forward(sell_matvec_bias_relu_serial, sell_matvec_bias_relu, bitmap_matvec_serial, bitmap_matvec,
             data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, n_chunks, n_blocks, offsets, packed,
             values, bitmasks, rptr, X, xbuf, buf0, buf1, min_parallel_slots, n_threads, logits)


@njit(**_OPTS)
def sell_forward_portable(data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, n_chunks, n_blocks, offsets,
                          packed, values, bitmasks, rptr, X, xbuf, buf0, buf1, min_parallel_slots, n_threads, logits):
    """sell_forward on the portable twins (same arguments): runs on any CPU."""
    _forward(sell_matvec_portable_serial, sell_matvec_portable, bitmap_matvec_portable_serial, bitmap_matvec_portable,
             data, masks, vptr, indices, block, slot_ptr, chunk_ptr, bias, n_chunks, n_blocks, offsets, packed,
             values, bitmasks, rptr, X, xbuf, buf0, buf1, min_parallel_slots, n_threads, logits)
