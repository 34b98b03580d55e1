"""Numba kernels for SELL (sell.py) at batch 1: an AVX-512 permute-and-FMA SpMV, the MLP in one call.

Per (16-row chunk, 32-column block) the kernel loads x[32 b : 32 b + 32] into two zmm registers,
then every slot is: load 16 values, load 16 uint8 column indices (zero-extended), one vpermt2ps
that picks each lane's x from the two registers, one FMA into the chunk's accumulator. There is
no scalar load per non-zero, so it is not load-port bound as the CSR SpMV is (kernels._row_dot,
3 loads per non-zero, ~1 cycle each on Zen4); AVX-512 gathers were slower than that SpMV.

Numba has no SIMD types, so the chunk loop is written in LLVM IR (`_chunk`, a Numba intrinsic);
the loops over chunks and layers around it are plain Numba. Measured on one Zen4 core, one
1000 x 1000 layer of the trained net (slots and padding: see sell.py), per call:

    sparsity   CSR SpMV   SELL, 1 accumulator   2 accumulators   4 accumulators
    50 %       159 us     50 us                 43 us            40 us
    90 %        34 us     18 us                 16 us            17 us

A single accumulator is bound by the FMA latency (4 cycles per slot); two alternate by slot.
`available()` says whether the CPU Numba compiles for has AVX-512F; the engine falls back to the
CSR SpMV when it does not. Nothing is compiled at import; cache=True keeps the compiled code.
"""
from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from sparsenet.sell import BLOCK, LANES
from sparsenet.simd import IR, VF

_OPTS = dict(cache=True, boundscheck=False)
_ACCUMULATORS = 2


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when Numba targets a CPU with AVX-512F (the intrinsic would not compile otherwise)."""
    import llvmlite.binding as llvm
    from numba.core import config
    if config.CPU_NAME and config.CPU_NAME != "host":
        return "+avx512f" in (config.CPU_FEATURES or "")
    return bool(llvm.get_host_cpu_features().get("avx512f", False))


@intrinsic
def _chunk(typingctx, data, indices, block, slot_ptr, chunk_ptr, x, bias, out, c, relu):
    """out[16 c : 16 c + 16] = (relu)(bias[16 c:][:16] + SELL chunk c @ x); raw 1-d arrays."""
    sig = types.void(data, indices, block, slot_ptr, chunk_ptr, x, bias, out, c, relu)

    def codegen(context, builder, sig, args):
        g = IR(context, builder, sig, args)
        p_data, p_idx, p_block, p_slot, p_chunk, p_x, p_bias, p_out = g.ptr[:8]
        vi = ir.VectorType(ir.IntType(32), LANES)
        vb = ir.VectorType(ir.IntType(8), LANES)
        permute = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(VF, [VF, vi, VF]), "llvm.x86.avx512.vpermi2var.ps.512")
        accs = g.zeroed(_ACCUMULATORS)
        table = [None, None]

        def slot(s, u):
            off = builder.mul(s, g.const(LANES))
            lanes = builder.zext(g.vload(p_idx, off, vb), vi)
            picked = builder.call(permute, [table[0], lanes, table[1]])
            builder.store(g.fma(g.vload(p_data, off), picked, builder.load(accs[u])), accs[u])

        chunk = g.i64(args[8])
        e0, e1 = g.at(p_chunk, chunk), g.at(p_chunk, builder.add(chunk, g.const(1)))
        with cgutils.for_range_slice(builder, e0, e1, g.const(1), inc=True) as (e, _):
            xo = builder.mul(g.at(p_block, e), g.const(BLOCK))
            table[0] = g.vload(p_x, xo)
            table[1] = g.vload(p_x, builder.add(xo, g.const(LANES)))
            g.pairs(g.at(p_slot, e), g.at(p_slot, builder.add(e, g.const(1))), slot, _ACCUMULATORS)
        row0 = builder.mul(chunk, g.const(LANES))
        total = builder.fadd(g.sum(accs), g.vload(p_bias, row0))
        g.vstore(g.relu_if(args[9], total), p_out, row0)
        return context.get_dummy_value()

    return sig, codegen


@njit(**_OPTS)
def sell_matvec_bias_relu_serial(data, indices, block, slot_ptr, chunk_ptr, bias, x, out, relu):
    """out[:16 n_chunks] = (relu)(W @ x + bias) for one SELL layer; x holds >= 32 n_blocks floats."""
    for c in range(chunk_ptr.shape[0] - 1):
        _chunk(data, indices, block, slot_ptr, chunk_ptr, x, bias, out, c, relu)


@njit(parallel=True, **_OPTS)
def sell_matvec_bias_relu(data, indices, block, slot_ptr, chunk_ptr, bias, x, out, relu, n_parts):
    """sell_matvec_bias_relu_serial with chunks dealt round-robin to n_parts threads (rows are sorted
    by density, so contiguous halves would give one thread the dense half)."""
    n_chunks = chunk_ptr.shape[0] - 1
    for t in prange(n_parts):
        for c in range(t, n_chunks, n_parts):
            _chunk(data, indices, block, slot_ptr, chunk_ptr, x, bias, out, c, relu)


@njit(**_OPTS)
def sell_forward(data, indices, block, slot_ptr, chunk_ptr, bias, n_chunks, n_blocks, offsets,
                 X, xbuf, buf0, buf1, min_parallel_slots, n_threads, logits):
    """Logits of one input through the whole MLP (ReLU on hidden layers): X (1, n_in) -> logits
    (1, n_out), written in place (the caller allocates it: cheaper than slicing a buffer after).

    The arrays are sell.flatten's (layers concatenated, offsets[:, l] where layer l starts). xbuf
    (>= 32 n_blocks[0] floats) receives x, zero-padded; buf0/buf1 hold >= 16 n_chunks and
    >= 32 n_blocks of every layer. A layer with at least min_parallel_slots slots runs on
    n_threads threads.
    """
    x = X[0]
    n_in = x.shape[0]
    for j in range(n_in):
        xbuf[j] = x[j]
    for j in range(n_in, 32 * n_blocks[0]):
        xbuf[j] = np.float32(0.0)
    h = xbuf
    out = buf0
    n_layers = n_chunks.shape[0]
    for layer in range(n_layers):
        out = buf0 if layer % 2 == 0 else buf1
        s0, s1 = offsets[0, layer], offsets[0, layer + 1]
        d = data[s0 * LANES:s1 * LANES]
        c = indices[s0 * LANES:s1 * LANES]
        blk = block[offsets[1, layer]:offsets[1, layer + 1]]
        sp = slot_ptr[offsets[2, layer]:offsets[2, layer + 1]]
        cp = chunk_ptr[offsets[3, layer]:offsets[3, layer + 1]]
        b = bias[offsets[4, layer]:offsets[4, layer + 1]]
        relu = layer < n_layers - 1
        if s1 - s0 >= min_parallel_slots and n_threads > 1:
            sell_matvec_bias_relu(d, c, blk, sp, cp, b, h, out, relu, n_threads)
        else:
            sell_matvec_bias_relu_serial(d, c, blk, sp, cp, b, h, out, relu)
        h = out
    for j in range(logits.shape[1]):
        logits[0, j] = out[j]
