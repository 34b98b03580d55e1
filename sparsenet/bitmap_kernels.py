"""Numba kernels for bitmap rows (bitmap.py) at batch 1: an AVX-512 expand-and-FMA row kernel and its
portable twin.

Per row (`_rows`): two <16 x float> accumulators; per group g of 16 columns, load the uint16 mask,
load 16 floats at the row's running offset and spread them over the mask's lanes (vexpandps,
register form: the load goes through an empty asm so that LLVM does not fold it into the memory
form, whose cost differs between cores), one FMA with x[16 g : 16 g + 16] (a plain vector load: no
index, no permute), the offset moving by the mask's popcount; then a tree of shuffles and adds, the
bias and the ReLU. Numba has no SIMD types, so the row loop is LLVM IR (a Numba intrinsic); its
typer refuses a target without AVX-512F and arrays of the wrong dtype or layout.

`_rows_portable` computes the same in plain Numba (a lane at a time): it runs on every CPU, so CI
everywhere tests the layout and the forward pass that mixes it with SELL-16 (sell_kernels.sell_forward).
Nothing is compiled at import; cache=True keeps the compiled code. Measurements: docs/perf-notes.md.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from sparsenet.bitmap import GROUP, ROWS
from sparsenet.cpu import cpu
from sparsenet.simd import IR, VF, require_arrays

_OPTS = dict(cache=True, boundscheck=False)
_ROWS = 4            # rows a pass: as many running offsets and FMA chains, each x group loaded once
_AHEAD = 1024        # values prefetched this many floats ahead of each row's offset (4 KB: the stream is
                     # bandwidth-bound beyond the L2; session 17 measured x1.1-1.25 over none)
_ROWS_ARGS = (("values", types.float32, 1), ("masks", types.uint16, 1), ("rptr", types.int64, 1),
              ("x", types.float32, 1), ("bias", types.float32, 1), ("out", types.float32, 1))


def available() -> bool:
    """True when Numba targets a CPU with AVX-512F (vexpandps)."""
    return cpu().avx512f


def _make_rows(n_rows: int, ahead: int = 0):
    """The row kernel for passes of n_rows rows, prefetching values `ahead` floats ahead of each row's
    offset (0: none); _rows is _make_rows(_ROWS, _AHEAD)."""
    @intrinsic
    def rows(typingctx, values, masks, rptr, x, bias, out, r0, r1, n_groups, relu):
        return _typer(n_rows, ahead, values, masks, rptr, x, bias, out, r0, r1, n_groups, relu)

    return rows


def _typer(R, ahead, values, masks, rptr, x, bias, out, r0, r1, n_groups, relu):
    """out[i] = (relu)(bias[i] + row i @ x[:16 n_groups]) for rows r0 <= i < r1 (r1 - r0 a multiple of
    4: rows are padded to 16); raw 1-d arrays."""
    if not available():
        raise TypingError("bitmap_kernels._rows needs a CPU with AVX-512F (vexpandps) as Numba's target; "
                          "use the portable twin on this one")
    arrays = (values, masks, rptr, x, bias, out)
    require_arrays("bitmap_kernels._rows", _ROWS_ARGS, arrays)
    sig = types.void(*arrays, r0, r1, n_groups, relu)

    def codegen(context, builder, sig, args):
        g = IR(context, builder, sig, args)
        p_val, p_mask, p_rptr, p_x, p_bias, p_out = g.ptr[:6]
        r0, r1, ng = (g.i64(a) for a in args[6:9])
        vm = ir.VectorType(ir.IntType(1), GROUP)
        module = builder.module
        expand = cgutils.get_or_insert_function(module, ir.FunctionType(VF, [VF, VF, vm]), "llvm.x86.avx512.mask.expand.v16f32")
        popcount = cgutils.get_or_insert_function(module, ir.FunctionType(ir.IntType(16), [ir.IntType(16)]), "llvm.ctpop.i16")
        i8p = ir.IntType(8).as_pointer()
        prefetch = cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), [i8p] + [ir.IntType(32)] * 3),
                                                  "llvm.prefetch.p0i8")
        accs = g.zeroed(R)
        ats = [cgutils.alloca_once_value(builder, g.const(0)) for _ in range(R)]
        with cgutils.for_range_slice(builder, r0, r1, g.const(R), inc=True) as (i, _):
            rows = [builder.add(i, g.const(r)) for r in range(R)]
            for a, at, row in zip(accs, ats, rows):
                builder.store(ir.Constant(VF, None), a)
                builder.store(g.at(p_rptr, row), at)
            firsts = [builder.mul(row, ng) for row in rows]
            with cgutils.for_range_slice(builder, g.const(0), ng, g.const(1), inc=True) as (j, _):
                xv = g.vload(p_x, builder.mul(j, g.const(GROUP)))
                for a, at, first in zip(accs, ats, firsts):
                    m = builder.load(builder.gep(p_mask, [builder.add(first, j)]))
                    o = builder.load(at)
                    if ahead:
                        builder.call(prefetch, [builder.bitcast(builder.gep(p_val, [builder.add(o, g.const(ahead))]), i8p),
                                               ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3),
                                               ir.Constant(ir.IntType(32), 1)])
                    raw = builder.asm(ir.FunctionType(VF, [VF]), "", "=v,0", [g.vload(p_val, o)], False, name="values")
                    w = builder.call(expand, [raw, ir.Constant(VF, None), builder.bitcast(m, vm)])
                    builder.store(builder.add(o, builder.zext(builder.call(popcount, [m]), o.type)), at)
                    builder.store(g.fma(w, xv, builder.load(a)), a)
            zero = ir.Constant(ir.FloatType(), 0.0)
            for a, row in zip(accs, rows):
                total = builder.fadd(_hsum(builder, builder.load(a)), builder.load(builder.gep(p_bias, [row])))
                negative = builder.and_(args[9], builder.fcmp_ordered("<", total, zero))
                builder.store(builder.select(negative, zero, total), builder.gep(p_out, [row]))
        return context.get_dummy_value()

    return sig, codegen


_rows = _make_rows(_ROWS, _AHEAD)


def _hsum(builder, v):
    """The sum of v's 16 lanes by halves (8 + 8, 4 + 4, ...): four shuffles and adds, not 16 in a chain."""
    i32 = ir.IntType(32)
    n = v.type.count
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, n), [ir.Constant(i32, k) for k in range(n)]))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, n), [ir.Constant(i32, n + k) for k in range(n)]))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(i32, 0))


@njit(inline="always", **_OPTS)
def _rows_portable(values, masks, rptr, x, bias, out, r0, r1, n_groups, relu):
    """_rows in plain Numba: the same sums over the same layout, a lane at a time."""
    for i in range(r0, r1):
        at = rptr[i]
        acc = np.float32(0.0)
        for j in range(n_groups):
            m = np.int64(masks[i * n_groups + j])
            for lane in range(GROUP):
                if (m >> lane) & 1:
                    acc += values[at] * x[j * GROUP + lane]
                    at += 1
        v = acc + bias[i]
        out[i] = np.float32(0.0) if relu and v < 0 else v


@njit(inline="always", **_OPTS)
def _span(n_rows, part, n_parts):
    """Rows [r0, r1) of part `part` of n_parts: contiguous, in whole ROWS (a row's cost is its groups'
    whatever it holds, so equal row counts are equal work)."""
    blocks = n_rows // ROWS
    return ROWS * (blocks * part // n_parts), ROWS * (blocks * (part + 1) // n_parts)


@njit(**_OPTS)
def bitmap_matvec_serial(values, masks, rptr, bias, x, out, n_groups, relu):
    """out[:n_rows] = (relu)(W @ x + bias) for one bitmap layer; x holds >= 16 n_groups floats."""
    _rows(values, masks, rptr, x, bias, out, 0, rptr.shape[0] - 1, n_groups, relu)


@njit(parallel=True, **_OPTS)
def bitmap_matvec(values, masks, rptr, bias, x, out, n_groups, relu, n_parts):
    """bitmap_matvec_serial with the rows cut into n_parts contiguous parts, one a thread."""
    for t in prange(n_parts):
        r0, r1 = _span(rptr.shape[0] - 1, t, n_parts)
        _rows(values, masks, rptr, x, bias, out, r0, r1, n_groups, relu)


@njit(**_OPTS)
def bitmap_matvec_portable_serial(values, masks, rptr, bias, x, out, n_groups, relu):
    """bitmap_matvec_serial on the portable twin."""
    _rows_portable(values, masks, rptr, x, bias, out, 0, rptr.shape[0] - 1, n_groups, relu)


@njit(parallel=True, **_OPTS)
def bitmap_matvec_portable(values, masks, rptr, bias, x, out, n_groups, relu, n_parts):
    """bitmap_matvec on the portable twin."""
    for t in prange(n_parts):
        r0, r1 = _span(rptr.shape[0] - 1, t, n_parts)
        _rows_portable(values, masks, rptr, x, bias, out, r0, r1, n_groups, relu)
