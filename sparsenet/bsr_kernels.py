"""Numba kernels for BSR inference (bsr.py layout): raw arrays in, preallocated output out.

Activations are transposed, HT (n_features, B) C-contiguous as in kernels.py. Block k of block row
ib (r x c entries at block column indices[k]) adds, for its rows ib*r + rr,
    out[ib*r + rr, :] += sum_cc data[k, rr, cc] * HT[indices[k]*c + cc, :]
so a block of r rows reuses every HT row it loads r times: an r x 1 block is r FMAs per load where
CSR does one (register tiles below, `bsr_tile{RT}`: RT rows of a block x 32 columns in registers;
on AVX-512 8 rows x 32 columns at once, 16 of 32 zmm; without it at most 4 rows (`max_tile_rows`), in
two passes of 16 columns (`_passes`): 8 x 32 needed 32 ymm of AVX2's 16 and spilled, and on the
AVX2 target a 1000 x 1000 layer at 90 % ran 37 GFLOP/s against 61 now, the engine x1.31-1.52).
Hence the block shape: 8x1 ran fastest at batch 256 (then 4x4 and 4x1, ~15% behind; 1x4 3-4x
slower: one FMA per load, as CSR), so prune.DEFAULT_BLOCK is (8, 1). Batch 1 (bsr_matvec_*): an 8 x 1
block is one input load times its 8 contiguous weights into 8 register accumulators; other shapes a
strided dot product per row of a block, no faster than CSR's SpMV.

Edge blocks: the kernels compute on the padded shape (rows ceil(n_out / r) * r, columns
ceil(n_in / c) * c); the stored padding is zero (bsr.BSR.check), the padded biases are zero, and
the drivers zero the activation rows past n_out that the next layer's padded columns read, so
the padding never leaks (not even a stale inf from an earlier call: 0 * inf would be NaN).
The batch split's workers and batch 1's parts of a layer are C callbacks the drivers call by address
(cfuncs), so the register tiles are compiled once, not again in every parallel driver's modules.
Nothing is compiled at import (cache=True, lazily on first call).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, register_jitable

from sparsenet.cpu import cpu
from sparsenet.cfuncs import callback, run, run_parts, threads
from sparsenet.kernels import _claim_chunk, _gather_columns, _store_columns
from sparsenet.simd import IR, LANES, VF, require_arrays

_OPTS = dict(cache=True, boundscheck=False, fastmath={"contract"})
W = 2                       # 16-float vectors per tile row: 32 batch columns
TILE = LANES * W            # columns per register tile; chunk widths are multiples of it

_TILE_ARGS = (("data", types.float32, 1), ("indices", types.Integer, 1), ("indptr", types.Integer, 1),
              ("bias", types.float32, 1), ("HT", types.float32, 2), ("out", types.float32, 2))


def _passes() -> list:
    """(first vector, vectors) of the tile's columns a pass over a block row's blocks takes, for the
    CPU Numba compiles for: all W vectors at once where 32 registers hold RT x W of them (AVX-512),
    else one 16-float vector a pass (AVX2's 16 ymm: a <16 x float> is two; 8 rows x 32 columns
    spilled its accumulators)."""
    return [(0, W)] if cpu().isa == "avx512" else [(w, 1) for w in range(W)]


def _make_bsr_tile(RT):
    """Intrinsic: rows rs0..rs0+RT-1 of every block of block rows br0..br1-1, on columns
    col0..col0+31 in passes of _passes() vectors; RT x (vectors a pass) accumulators (x2 partial
    sums over alternate blocks where fewer would be independent chains than the FMA latency hides).
    r, c at run time, with a c == 1 fast path (no column loop)."""

    @intrinsic
    def bsr_tile(typingctx, data, indices, indptr, bias, HT, out, br0, br1, r, c, rs0, ld_h, ld_o,
                 col0, relu):
        require_arrays(f"bsr_kernels.bsr_tile{RT}", _TILE_ARGS, (data, indices, indptr, bias, HT, out))
        sig = types.void(data, indices, indptr, bias, HT, out, br0, br1, r, c, rs0, ld_h, ld_o, col0, relu)

        def codegen(context, builder, sig, args):
            g = IR(context, builder, sig, args)
            p_data, p_idx, p_ptr, p_bias, p_h, p_out = g.ptr[:6]
            br0, br1, r, c, rs0, ld_h, ld_o, col0 = (g.i64(a) for a in args[6:14])
            rc = builder.mul(r, c)
            passes = _passes()
            Wp = passes[0][1]
            n_acc = 2 if RT * Wp < 8 // len(passes) else 1       # AVX-512 8, else 4 chains at least
            accs = [[g.zeroed(Wp) for _ in range(RT)] for _ in range(n_acc)]    # [u][rr][w]
            with cgutils.for_range_slice(builder, br0, br1, g.const(1), inc=True) as (ib, _):
                for w0, _ in passes:
                    for acc in accs:
                        for row in acc:
                            for a in row:
                                builder.store(ir.Constant(VF, None), a)

                    def column(k, u, cc, w0=w0):
                        col = builder.add(builder.mul(g.at(p_idx, k, signed=False), c), cc)
                        h0 = builder.add(builder.mul(col, ld_h), col0)
                        hs = [g.vload(p_h, builder.add(h0, g.const(LANES * (w0 + w)))) for w in range(Wp)]
                        d0 = builder.add(builder.add(builder.mul(k, rc), builder.mul(rs0, c)), cc)
                        for rr in range(RT):
                            d = g.broadcast(builder.load(builder.gep(p_data, [builder.add(d0, builder.mul(g.const(rr), c))])))
                            for w in range(Wp):
                                a = accs[u][rr][w]
                                builder.store(g.fma(d, hs[w], builder.load(a)), a)

                    def block_c1(k, u, column=column):
                        column(k, u, g.const(0))

                    def block(k, u, column=column):
                        with cgutils.for_range_slice(builder, g.const(0), c, g.const(1), inc=True) as (cc, _):
                            column(k, u, cc)

                    lo, hi = g.at(p_ptr, ib), g.at(p_ptr, builder.add(ib, g.const(1)))
                    with builder.if_else(builder.icmp_signed("==", c, g.const(1))) as (then, other):
                        with then:
                            g.pairs(lo, hi, block_c1, n_acc)
                        with other:
                            g.pairs(lo, hi, block, n_acc)
                    for rr in range(RT):
                        row = builder.add(builder.add(builder.mul(ib, r), rs0), g.const(rr))
                        b = g.broadcast(builder.load(builder.gep(p_bias, [row])))
                        o = builder.add(builder.mul(row, ld_o), col0)
                        for w in range(Wp):
                            t = builder.fadd(g.sum([acc[rr][w] for acc in accs]), b)
                            g.vstore(g.relu_if(args[14], t), p_out, builder.add(o, g.const(LANES * (w0 + w))))
            return context.get_dummy_value()

        return sig, codegen

    return bsr_tile


bsr_tile1 = _make_bsr_tile(1)
bsr_tile2 = _make_bsr_tile(2)
bsr_tile4 = _make_bsr_tile(4)
bsr_tile8 = _make_bsr_tile(8)


def max_tile_rows(isa: str) -> int:
    """The most block rows a register tile takes on `isa`: 8 on AVX-512 (8 x 2 of 32 zmm), 4 elsewhere
    (a pass of one 16-float vector, _passes: 4 x 2 of AVX2's 16 ymm, 4 x 4 of NEON's 32 q)."""
    return 8 if isa == "avx512" else 4


@register_jitable
def _rows_for(r, cap):
    """The largest of 8, 4, 2, 1 dividing r, at most cap (4 or 8): the rule of rows_per_tile and of
    _matmul_block_rows (a plain function Numba also compiles)."""
    return 8 if r % 8 == 0 and cap >= 8 else 4 if r % 4 == 0 else 2 if r % 2 == 0 else 1


def rows_per_tile(r: int, isa: str = "avx512") -> int:
    """Rows of a block one register tile holds: the largest of 8, 4, 2, 1 dividing r, at most
    max_tile_rows(isa)."""
    return _rows_for(r, max_tile_rows(isa))


@intrinsic
def _tile_rows_cap(typingctx):
    """max_tile_rows of the CPU Numba compiles for, as a constant."""
    def codegen(context, builder, sig, args):
        return context.get_constant(types.int64, max_tile_rows(cpu().isa))
    return types.int64(), codegen


@njit(**_OPTS)
def bsr_matmul_bias_relu(data, indices, indptr, bias, HT, out, r, c, relu):
    """out = (relu)(W @ HT + bias[:, None]) on padded shapes; (n_in_p, Bc) -> (n_out_p, Bc), Bc a
    multiple of 32. data flat (nblocks * r * c,), bias padded to n_out_p = (len(indptr) - 1) * r."""
    _matmul_block_rows(data, indices, indptr, bias, HT, out, 0, indptr.shape[0] - 1, r, c, relu)


@njit(inline="always", **_OPTS)
def _matmul_block_rows(data, indices, indptr, bias, HT, out, br0, br1, r, c, relu):
    """bsr_matmul_bias_relu on block rows br0..br1-1 only."""
    Bc = HT.shape[1]
    RT = _rows_for(r, _tile_rows_cap())
    for t in range(Bc // 32):
        for rs0 in range(0, r, RT):
            if RT == 8:
                bsr_tile8(data, indices, indptr, bias, HT, out, br0, br1, r, c, rs0, Bc, Bc, 32 * t, relu)
            elif RT == 4:
                bsr_tile4(data, indices, indptr, bias, HT, out, br0, br1, r, c, rs0, Bc, Bc, 32 * t, relu)
            elif RT == 2:
                bsr_tile2(data, indices, indptr, bias, HT, out, br0, br1, r, c, rs0, Bc, Bc, 32 * t, relu)
            else:
                bsr_tile1(data, indices, indptr, bias, HT, out, br0, br1, r, c, rs0, Bc, Bc, 32 * t, relu)


@njit(inline="always", **_OPTS)
def _matvec_rows(data, indices, indptr, bias, x, out, r, c, relu, ib):
    """Rows of block row ib: out[ib*r:(ib+1)*r] = (relu)(bias + blocks @ x).

    One strided dot product per row of the block (4 partial sums): accumulating the r rows of a
    block at once kept them in memory, a store-to-load round trip per block (4x slower).
    """
    lo, hi = indptr[ib], indptr[ib + 1]
    d = data[lo * r * c:hi * r * c]
    ix = indices[lo:hi]
    nb = hi - lo
    rc = r * c
    nb4 = nb - nb % 4
    for rr in range(r):
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        s3 = np.float32(0.0)
        for cc in range(c):
            dr = d[rr * c + cc:]
            xr = x[cc:]
            for k in range(0, nb4, 4):
                s0 += dr[k * rc] * xr[np.int64(ix[k]) * c]
                s1 += dr[(k + 1) * rc] * xr[np.int64(ix[k + 1]) * c]
                s2 += dr[(k + 2) * rc] * xr[np.int64(ix[k + 2]) * c]
                s3 += dr[(k + 3) * rc] * xr[np.int64(ix[k + 3]) * c]
            for k in range(nb4, nb):
                s0 += dr[k * rc] * xr[np.int64(ix[k]) * c]
        v = bias[ib * r + rr] + ((s0 + s1) + (s2 + s3))
        out[ib * r + rr] = max(v, np.float32(0.0)) if relu else v


@njit(inline="always", **_OPTS)
def _matvec_rows8x1(data, indices, indptr, bias, x, out, relu, ib):
    """_matvec_rows of an 8 x 1 block row (prune.DEFAULT_BLOCK): a block's 8 weights are contiguous,
    so each block is one input load times 8 weights into 8 accumulators that stay in registers
    (plain locals; LLVM packs them into one 8-float vector): ~5x the strided dot products above."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
    for k in range(indptr[ib], indptr[ib + 1]):
        xv = x[np.int64(indices[k])]
        j = k * 8
        a0 += data[j] * xv
        a1 += data[j + 1] * xv
        a2 += data[j + 2] * xv
        a3 += data[j + 3] * xv
        a4 += data[j + 4] * xv
        a5 += data[j + 5] * xv
        a6 += data[j + 6] * xv
        a7 += data[j + 7] * xv
    o = ib * 8
    z = np.float32(0.0)
    for rr, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7)):
        v = bias[o + rr] + a
        out[o + rr] = max(v, z) if relu else v


@njit(inline="always", **_OPTS)
def _matvec_block_row(data, indices, indptr, bias, x, out, r, c, relu, ib):
    if r == 8 and c == 1:
        _matvec_rows8x1(data, indices, indptr, bias, x, out, relu, ib)
    else:
        _matvec_rows(data, indices, indptr, bias, x, out, r, c, relu, ib)


def bsr_matvec_bias_relu(data, indices, indptr, bias, x, out, r, c, relu, n_threads=None):
    """out = (relu)(W @ x + bias) on padded shapes; (n_in_p,) -> (n_out_p,); block rows split over
    n_threads threads (Numba's count by default). The engine's layers run the same callback."""
    n = threads(n_threads)
    args = (data, indices, indptr, bias, x, out, int(r), int(c), bool(relu))
    run(_matvec_part.address(*args, 1, 0), n, *args, n)


def bsr_matvec_bias_relu_serial(data, indices, indptr, bias, x, out, r, c, relu):
    """Single-threaded bsr_matvec_bias_relu."""
    bsr_matvec_bias_relu(data, indices, indptr, bias, x, out, r, c, relu, 1)


@callback
def _matvec_part(data, indices, indptr, bias, x, out, r, c, relu, n_parts, w):
    """Part w of n_parts of a layer's block rows at batch 1."""
    Rb = indptr.shape[0] - 1
    for ib in range(w * Rb // n_parts, (w + 1) * Rb // n_parts):
        _matvec_block_row(data, indices, indptr, bias, x, out, r, c, relu, ib)


@njit(inline="always", **_OPTS)
def _layer(data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c, layer, buf0, buf1, Bc):
    """Layer `layer` of the concatenated net (layout: bsr_forward_chunks) and its output block:
    (n_out, data, indices, indptr, bias, relu, out (rows[layer + 1], Bc))."""
    n_out = sizes[layer + 1]
    buf = buf0 if layer % 2 == 0 else buf1
    lo, hi = blk_off[layer], blk_off[layer + 1]
    return (n_out, data[lo * r * c:hi * r * c], indices[lo:hi], indptr[ptr_off[layer]:ptr_off[layer + 1]],
            bias[bias_off[layer]:bias_off[layer + 1]], layer < sizes.shape[0] - 2,
            buf[:rows[layer + 1] * Bc].reshape((rows[layer + 1], Bc)))


@njit(inline="always", **_OPTS)
def _forward_serial(data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c, HT, buf0, buf1):
    """Every layer on the calling thread: (rows[0], Bc) -> the last layer's (rows[-1], Bc) in buf0 or
    buf1 (_layer's view)."""
    Bc = HT.shape[1]
    h = HT
    for layer in range(sizes.shape[0] - 1):
        n_out, d, ix, ip, b, relu, out = _layer(data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off,
                                                rows, r, c, layer, buf0, buf1, Bc)
        _matmul_block_rows(d, ix, ip, b, h, out, 0, ip.shape[0] - 1, r, c, relu)
        for i in range(n_out, out.shape[0]):   # the next layer's padded columns read zeros (a loop: a
            for j in range(Bc):                # slice assignment compiles Numba's generic setitem)
                out[i, j] = np.float32(0.0)
        h = out


def bsr_forward_chunks(data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c,
                       X, HT, buf0, buf1, out, counter, callbacks=None):
    """Whole MLP, batch split over threads: X (B, n_in) -> out (B, n_out), one parallel region.

    Layers are concatenated: layer l owns blocks blk_off[l]:blk_off[l+1] (data flat, r * c floats a
    block), its row pointers indptr[ptr_off[l]:ptr_off[l+1]] (offsets into its own blocks) and
    bias[bias_off[l]:bias_off[l+1]] (padded to its block rows * r with zeros). rows[l] is the
    activation rows layer l reads or writes: >= sizes[l] rounded up to r (as an output) and to c
    (as an input). Worker w owns HT[w] (rows[0], Bc: its rows past n_in stay zero) and buf0[w],
    buf1[w] (>= max(rows) * Bc floats) and runs chunks of Bc columns (a multiple of 32) as
    kernels.csr_forward_chunks does: transpose, every layer on one thread, write the logits back.
    Chunks are claimed from `counter` (int64 (1,), reset here), not dealt out in equal shares: a
    worker on a slower core runs fewer of them.
    """
    args = (data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, int(r), int(c),
            X, HT, buf0, buf1, out, counter)
    counter[0] = 0
    run(_worker.address(*args, 0, cache=callbacks), HT.shape[0], *args)


@callback
def _worker(data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c, X, HT, buf0, buf1, out,
            counter, w):
    """Worker w of bsr_forward_chunks: claims chunks until none is left."""
    B = X.shape[0]
    Bc = HT.shape[2]
    last = sizes.shape[0] - 2
    n_out = sizes[last + 1]
    c0 = _claim_chunk(counter, B, Bc)
    while c0 >= 0:
        _gather_columns(X, c0, HT[w][:sizes[0]])
        _forward_serial(data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c, HT[w], buf0[w],
                        buf1[w])
        o = _layer(data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c, last,
                   buf0[w], buf1[w], Bc)[6]
        _store_columns(out, c0, o, n_out)
        c0 = _claim_chunk(counter, B, Bc)


@callback
def _rows_part(data, indices, indptr, bias, HT, out, r, c, relu, n_parts, w):
    """Part w of n_parts of one layer's block rows in the row split (bsr_forward_rows)."""
    Rb = indptr.shape[0] - 1
    _matmul_block_rows(data, indices, indptr, bias, HT, out, w * Rb // n_parts, (w + 1) * Rb // n_parts, r, c, relu)


def bsr_forward_rows(data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c,
                     X, HT, buf0, buf1, out, n_blocks, callbacks=None):
    """Whole MLP on a batch narrower than one tile per thread (layout: bsr_forward_chunks): X (B, n_in)
    -> out (B, n_out) through HT (rows[0], Bp), Bp a multiple of 32; every layer's block rows split
    into `n_blocks` ranges over the threads (one parallel region per layer). A range is a C callback
    (`_rows_part`) the driver calls by address, so the register tiles compile once (cold, 2 threads,
    batch 16: 4.5 s before, when the parallel region compiled them again); callbacks: the caller's
    cache of its address."""
    part = _rows_part.address(data, indices, indptr, bias, HT, HT, int(r), int(c), True, 1, 0, cache=callbacks)
    _forward_rows(part, data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c, X, HT, buf0,
                  buf1, out, n_blocks)


@njit(parallel=True, **_OPTS)
def _forward_rows(part, data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c,
                  X, HT, buf0, buf1, out, n_blocks):
    """bsr_forward_rows' layers: each in min(n_blocks, block rows) parts of `part` over the threads."""
    B = X.shape[0]
    Bp = HT.shape[1]
    n_last = sizes[sizes.shape[0] - 1]
    _gather_columns(X, 0, HT[:sizes[0]])
    h = HT
    for layer in range(sizes.shape[0] - 1):
        n_out, d, ix, ip, b, relu, o = _layer(data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off,
                                              rows, r, c, layer, buf0, buf1, Bp)
        nb = max(min(n_blocks, ip.shape[0] - 1), 1)
        run_parts(part, nb, (d, ix, ip, b, h, o, np.int64(r), np.int64(c), relu))
        for i in range(n_out, o.shape[0]):     # the next layer's padded columns read zeros
            for j in range(Bp):
                o[i, j] = np.float32(0.0)
        h = o
    for j in range(B):
        for i in range(n_last):
            out[j, i] = h[i, j]


def bsr_forward_vec(data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c, x, buf0, buf1,
                    parallel, callbacks=None, n_threads=None):
    """Whole MLP at batch 1: x (rows[0],) zero past n_in -> (rows[-1],) a view of buf0/buf1 (logits
    first). parallel[l]: layer l's block rows are split over n_threads threads (Numba's count by
    default). callbacks: the caller's cache of callback addresses (cfuncs.Callback.address)."""
    part = _matvec_part.cached(callbacks)
    if not part:
        part = _matvec_part.address(data, indices, indptr, bias, x, buf0, int(r), int(c), True, 1, 0, cache=callbacks)
    n = threads(n_threads)
    return _forward_vec(part, data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c, x, buf0,
                        buf1, parallel, n)


@njit(parallel=True, **_OPTS)
def _forward_vec(part, data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off, rows, r, c, x, buf0, buf1,
                 parallel, n_threads):
    """bsr_forward_vec's layers; part: _matvec_part compiled for these arguments, on n_threads
    threads for a parallel layer (numba.get_num_threads() inside would make the driver uncacheable:
    a dynamic global)."""
    h = x
    for layer in range(sizes.shape[0] - 1):
        n_out, d, ix, ip, b, relu, out = _layer(data, indices, indptr, bias, sizes, blk_off, ptr_off, bias_off,
                                                rows, r, c, layer, buf0, buf1, 1)
        o = out.reshape(out.shape[0])
        run_parts(part, n_threads if parallel[layer] else 1, (d, ix, ip, b, h, o, r, c, relu))
        for i in range(n_out, o.shape[0]):
            o[i] = np.float32(0.0)
        h = o
    return h
