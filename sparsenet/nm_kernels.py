"""Numba kernels for N:M inference (nm.py layout): raw arrays in, preallocated output out.

Activations are transposed, HT (n_features, B) C-contiguous as in kernels.py. Every row has the
same K = G * n slots, slot s of group g of row i at column g * m + idx[i, g, s]:
    out[i, :] = (relu)(bias[i] + sum_{g,s} values[i, g, s] * HT[g * m + idx[i, g, s], :])
No row pointers and one byte of index per value (CSR: 2 bytes and a row pointer). The kernels read
each row pass-major (`pass_major`: slots 0-1 of every group, then 2-3, ...; for n <= 2 that is the
group-major order of nm.NM).

Batches (`nm_matmul_bias_relu`): register tiles `nm_tile{n}_{cols}` keep one row's 128, 64 or 32
batch columns (8, 4 or 2 vectors of 16 floats) in registers while the row's slots of one column
panel are added; a slot costs a value broadcast, an index byte, one multiply for its HT row and
then one vector load + FMA per vector, so the wider the tile the smaller that overhead per FMA
(128 columns: 10 loads per 8 FMAs; 32 columns: 4 per 2). A tile's slots a group (1 or 2) are
compiled in, unrolled (no division; >= 4 slots a loop pass); an n:M layer with n > 2 runs in passes
of 2 slots (and 1 for an odd n) over each column panel, each pass a 2:M (1:M) tile adding to the
last one's sums. (Until session 14 such layers ran on 32-column tiles, n = 4 compiled in, other n a
run-time loop of 2 accumulator chains: 3:4 at batch 256 ran 1.2-1.8x slower than 4:4 and 3-4x
slower than dense, so the study's nm line rose from k = 0 to 25 %.)
Why these choices (issue 13, Xeon AVX-512, one thread, the machine loaded by another job, so
ratios measured side by side against sgemm on the same layer):
- 1000 x 1000, 128 columns, 2:4 ~x1.4 and 1:4 ~x2.3..2.9 of sgemm at 128-column tiles; the
  32-column tiles of the first version were ~x0.8 and ~x1.5 (4 accumulator chains for 2 FMA
  ports of latency 4, and 2 extra loads per 2 FMAs).
- The panel (inputs per pass over the rows) holds ~32 KB of HT (`panel` floats, 8192: 64 inputs
  of a 128-column tile): 16 KB and 64 KB were slower, no panel ~1.6x slower.
- HT must be 64-byte aligned with rows a multiple of 16 floats (the engines' buffers are): an
  unaligned HT split every vector load over two lines and cost ~1.7x. A tile must span the whole
  HT row (chunks of 128 columns for 128-column tiles): a 128-column tile of a 256-column HT (1 KB
  row stride) uses half the L1 sets and ran ~2x slower; a 256-column tile was no faster.
- 2 partial sums per vector only on 32-column tiles: at 64/128 columns the 4/8 accumulator
  vectors are enough independent chains (1 and 2 sums measured the same).
Widest tile by target: one row's accumulators take a quarter of the vector registers at most:
128 columns on AVX-512 (8 of 32 zmm), 64 on AVX2 (a <16 x float> is 2 ymm: 8 of 16) and NEON (16
of 32 q); plain LLVM vector IR, so every target compiles it (tests/test_structured_engines.py).
On AVX-512 a wide tile takes several rows at a time (`rows_per_tile`: 128 columns x 2 rows, 64 x 4,
16 zmm accumulators; session 8, one 1000 x 1000 layer against sgemm side by side, one thread:
2:4 x1.39 -> x1.46..1.49, 1:4 x2.52 -> x2.56..2.64; 64 x 1 row was x1.19 / x2.46): more
independent FMA chains, and the 64-column tile's panel twice as deep for the same 32 KB.

Unlike an r x 1 block (bsr_kernels), a slot's activation row serves one output row only: one
vector load per FMA, as in CSR, so N:M can only approach dense BLAS's FMA rate, never exceed it:
its gain is the FMAs it skips (2:4 at most ~2x, 1:4 ~4x).

Batch 1 (`nm_matvec16`, N:4, every N): the scalar SpMV (`nm_matvec_bias_relu`: a byte load, an
address and a scalar load per slot) ran at x0.4 (2:4) and x0.7 (1:4) of dense sgemv. On a
row-interleaved copy (`interleave`: 16 rows' slot s of group g contiguous) a vector of 16 output
rows takes, per group, 4 input broadcasts and per slot one 16-byte index load, 3 selects on the
index's two bits and one FMA: x1.5 (2:4) and x3.1..3.5 (1:4) of dense on one core, where the
layer's bytes (5 per slot) rather than the arithmetic bound it. Selects, not a gather or an x86
permute: generic vector IR that every target compiles (AVX2, NEON); other m keep the scalar SpMV.
The batch split's worker, the row split's blocks and batch 1's parts of a layer are C callbacks
the drivers call by address (cfuncs): compiled once, not again in every parallel driver's modules
(cold, 2 threads, this VM: batch 256 6.9-10.1 -> 3.3-5.2 s, batch 1 3.5-4.1 -> 1.6 s, batch 16 on
the row split 5.7 -> 3.6 s). The worker inlines the layer loop
(_forward_serial) and calls nm_matmul_bias_relu as a jitted function linked into it: with the tiles
inlined into the worker, or a layer called by address, the chain ran 5-9 % slower at batch 256 on
one thread (one layer alone as fast); linked, as fast as before (and one link fewer than a separate
_forward_serial: ~0.2-0.4 s of cold compile, session 12).
Nothing is compiled at import (cache=True, lazily on first call).
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from sparsenet.cfuncs import callback, run, run_parts, threads
from sparsenet.cpu import cpu
from sparsenet.kernels import _claim_chunk, _gather_columns, _store_columns
from sparsenet.simd import IR, LANES, VF, require_arrays

_OPTS = dict(cache=True, boundscheck=False, fastmath={"contract"})
TILES = (128, 64, 32)       # batch columns of a register tile (8, 4, 2 vectors of LANES floats)
_ACC = 2                    # partial sums (alternate slots) per accumulator vector

_ROWS_ARGS = (("values", types.float32, 1), ("idx", types.uint8, 1), ("bias", types.float32, 1),
              ("HT", types.float32, 2), ("out", types.float32, 2))


def rows_per_tile(W: int, isa: str) -> int:
    """Rows a register tile of W vectors (LANES * W columns) takes at a time: on AVX-512 (32 zmm)
    as many as make 16 accumulator vectors (128 columns x 2 rows, 64 x 4), elsewhere 1 (a <16 x
    float> is 2 ymm of AVX2's 16 or 4 q of NEON's 32: 64 columns already fill half of them)."""
    return 16 // W if isa == "avx512" and W >= 4 else 1


def passes(n: int) -> list:
    """(first slot, slots) of each pass an n:M layer's rows take on the register tiles: 2 slots a
    group at a time, 1 for an odd n's last (the loops of _matmul_rows and _row_dot follow it)."""
    return [(s0, min(2, n - s0)) for s0 in range(0, n, 2)]


def pass_major(values: np.ndarray, idx: np.ndarray, n: int) -> tuple:
    """(values, idx) of an N:M layer, (n_out, G * n) group-major (nm.NM), as the kernels read them:
    each row pass-major, its groups' slots 0-1 first (G * 2), then 2-3, ... (an odd n's last pass
    one slot a group), so that a pass of a register tile steps a constant 1 or 2 slots a group (a
    run-time stride of n cost 3-13 % at 1:4 and 2:4). n <= 2: the same arrays. Returns 1-d arrays."""
    v, ix = np.asarray(values), np.asarray(idx)
    if n <= 2:
        return v.ravel(), ix.ravel()
    M, K = v.shape
    G = K // n
    v3, i3 = v.reshape(M, G, n), ix.reshape(M, G, n)
    return (np.concatenate([v3[:, :, s0:s0 + nt].reshape(M, -1) for s0, nt in passes(n)], axis=1).ravel(),
            np.concatenate([i3[:, :, s0:s0 + nt].reshape(M, -1) for s0, nt in passes(n)], axis=1).ravel())


def _make_nm_tile(NT, W):
    """Intrinsic: rows r0..r1-1, groups gs..ge-1 of each row (a column panel), on columns
    col0..col0 + LANES * W - 1 (W accumulator vectors per row), NT slots a group from the start of
    each row of K slots (a pass: the caller passes values and idx from the pass's first slot of
    row 0 on; rows are pass-major, see pass_major). first: start from
    the bias (else from out: an earlier panel's or pass's partial sums); relu: apply it at the store
    (the last panel's last pass). NT (1 or 2) is compiled in: the pass's slots unrolled.
    Rows go rows_per_tile(W) at a time (R * W accumulators: R independent chains per vector; the
    last pass repeats the last row where the rows are not a multiple of R), decided for the CPU
    Numba compiles for. On tiles of W < 4 vectors a row has 2 partial sums instead."""
    n_acc = 1 if W >= 4 else _ACC    # >= 8 independent accumulator vectors (FMA latency)

    @intrinsic
    def nm_tile(typingctx, values, idx, bias, HT, out, r0, r1, K, n, m, ld_h, ld_o, col0, gs, ge, first, relu):
        require_arrays(f"nm_kernels.nm_tile{NT}x{LANES * W}", _ROWS_ARGS, (values, idx, bias, HT, out))
        sig = types.void(values, idx, bias, HT, out, r0, r1, K, n, m, ld_h, ld_o, col0, gs, ge, first, relu)

        def codegen(context, builder, sig, args):
            R = rows_per_tile(W, cpu().isa)
            g = IR(context, builder, sig, args)
            p_val, p_idx, p_bias, p_h, p_out = g.ptr[:5]
            r0, r1, K, n, m, ld_h, ld_o, col0, gs, ge = (g.i64(a) for a in args[5:15])
            accs = [[g.zeroed(W) for _ in range(n_acc)] for _ in range(R)]      # [row][partial sum][vector]
            mh = builder.mul(m, ld_h)                         # HT offset of one group

            def slot(k, hg, acc):
                """acc += values[k] * HT[hg + idx[k] * ld_h:][:LANES * W]"""
                d = g.broadcast(builder.load(builder.gep(p_val, [k])))
                h0 = builder.add(hg, builder.mul(g.at(p_idx, k, signed=False), ld_h))
                hp = g.opaque(builder.gep(p_h, [h0]))
                for w in range(W):
                    h = g.vload(hp, g.const(LANES * w))
                    builder.store(g.fma(d, h, builder.load(acc[w])), acc[w])

            def rows(lo, hi, RR):
                """Rows lo..hi-1, RR at a time; past hi - 1 a pass takes row hi - 1 again (every copy loads
                out before any stores, so each stores the same sums: one body, not a second for the rest)."""
                last = builder.sub(hi, g.const(1))
                with cgutils.for_range_slice(builder, lo, hi, g.const(RR), inc=True) as (i0, _):
                    offs, bases = [], []
                    for u in range(RR):
                        i = builder.add(i0, g.const(u))
                        i = builder.select(builder.icmp_signed(">", i, last), last, i)
                        b = g.broadcast(builder.load(builder.gep(p_bias, [i])))
                        o = builder.add(builder.mul(i, ld_o), col0)
                        for w in range(W):
                            prev = g.vload(p_out, builder.add(o, g.const(LANES * w)))
                            builder.store(builder.select(args[15], b, prev), accs[u][0][w])
                            for acc in accs[u][1:]:
                                builder.store(ir.Constant(VF, None), acc[w])
                        offs.append(o)
                        bases.append(builder.mul(i, K))

                    def group(grp, v):
                        hg = builder.add(builder.mul(grp, mh), col0)
                        for s in range(NT):
                            for u in range(RR):
                                k = builder.add(bases[u], builder.add(builder.mul(grp, g.const(NT)), g.const(s)))
                                slot(k, hg, accs[u][(v * NT + s) % n_acc])

                    g.pairs(gs, ge, group, max(4 // (NT * RR), n_acc, 1))     # >= 4 slots a pass
                    for u in range(RR):
                        for w in range(W):
                            t = g.sum([acc[w] for acc in accs[u]])
                            g.vstore(g.relu_if(args[16], t), p_out, builder.add(offs[u], g.const(LANES * w)))

            rows(r0, r1, R)
            return context.get_dummy_value()

        return sig, codegen

    return nm_tile


# nm_tile{slots a pass}_{columns}: passes of 1 and 2 slots a group serve every n (n > 2 in passes)
nm_tile1_128, nm_tile2_128 = (_make_nm_tile(n, 8) for n in (1, 2))
nm_tile1_64, nm_tile2_64 = (_make_nm_tile(n, 4) for n in (1, 2))
nm_tile1_32, nm_tile2_32 = (_make_nm_tile(n, 2) for n in (1, 2))


@njit(inline="always", **_OPTS)
def _tile(values, idx, bias, HT, out, r0, r1, K, n, m, nt, col0, cols, gs, ge, first, relu):
    """One register tile of `cols` (128, 64 or 32) columns over groups gs..ge-1 of every row, a pass
    of nt (1 or 2) slots a group (values, idx: from the pass's first slot of row 0 on)."""
    Bc = HT.shape[1]
    if cols == 128:
        if nt == 2:
            nm_tile2_128(values, idx, bias, HT, out, r0, r1, K, n, m, Bc, Bc, col0, gs, ge, first, relu)
        else:
            nm_tile1_128(values, idx, bias, HT, out, r0, r1, K, n, m, Bc, Bc, col0, gs, ge, first, relu)
    elif cols == 64:
        if nt == 2:
            nm_tile2_64(values, idx, bias, HT, out, r0, r1, K, n, m, Bc, Bc, col0, gs, ge, first, relu)
        else:
            nm_tile1_64(values, idx, bias, HT, out, r0, r1, K, n, m, Bc, Bc, col0, gs, ge, first, relu)
    else:
        if nt == 2:
            nm_tile2_32(values, idx, bias, HT, out, r0, r1, K, n, m, Bc, Bc, col0, gs, ge, first, relu)
        else:
            nm_tile1_32(values, idx, bias, HT, out, r0, r1, K, n, m, Bc, Bc, col0, gs, ge, first, relu)


@njit(**_OPTS)
def nm_matmul_bias_relu(values, idx, bias, HT, out, n, m, panel, relu, tile=32):
    """out = (relu)(W @ HT + bias[:, None]); (n_in, Bc) -> (n_out, Bc), Bc a multiple of 32;
    values/idx flat (n_out * K,), each row pass-major (pass_major). Columns go in register tiles of up to `tile` (128, 64 or 32)
    columns, the widest that fits the columns left. The inputs are cut into column panels of
    about `panel` floats of HT (panel // cols inputs, a multiple of m; >= n_in * cols: one panel):
    a panel's HT rows stay in L1 while every row adds its slots of the panel (a row's tile is
    loaded and stored once per panel)."""
    _matmul_rows(values, idx, bias, HT, out, 0, out.shape[0], n, m, panel, relu, tile)


@njit(inline="always", **_OPTS)
def _matmul_rows(values, idx, bias, HT, out, r0, r1, n, m, panel, relu, tile):
    """nm_matmul_bias_relu on rows r0..r1-1 of out only."""
    n_out, Bc = out.shape
    K = values.shape[0] // max(n_out, 1)
    G = K // n
    c = 0
    while c < Bc:
        cols = 32
        for t in (128, 64):
            if t <= tile and c + t <= Bc:
                cols = t
                break
        Pg = max(panel // cols // m, 1)                 # groups per panel
        for gs in range(0, max(G, 1), Pg):
            ge = min(gs + Pg, G)
            for s0 in range(0, max(n, 1), 2):          # passes(n): 2 slots a group (1 for an odd n's last)
                nt = min(2, n - s0)
                _tile(values[s0 * G:], idx[s0 * G:], bias, HT, out, r0, r1, K, n, m, nt, c, cols, gs, ge,
                      gs == 0 and s0 == 0, relu and ge >= G and s0 + nt >= n)
        c += cols


@njit(inline="always", **_OPTS)
def _pass_dot(v, ix, x, nt, m):
    """sum_k v[k] * x[(k // nt) * m + ix[k]] for a pass of nt (1 or 2) slots a group: straight-line
    code over 2 (2 slots) or 4 (1 slot) groups a loop pass, 4 partial sums (no division, no slices:
    three slices per group were 5x slower)."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    G = v.shape[0] // nt
    if nt == 2:
        G2 = G - G % 2
        for grp in range(0, G2, 2):
            b0 = grp * m
            k0 = 2 * grp
            s0 += v[k0] * x[b0 + np.int64(ix[k0])]
            s1 += v[k0 + 1] * x[b0 + np.int64(ix[k0 + 1])]
            s2 += v[k0 + 2] * x[b0 + m + np.int64(ix[k0 + 2])]
            s3 += v[k0 + 3] * x[b0 + m + np.int64(ix[k0 + 3])]
        for grp in range(G2, G):
            s0 += v[2 * grp] * x[grp * m + np.int64(ix[2 * grp])]
            s1 += v[2 * grp + 1] * x[grp * m + np.int64(ix[2 * grp + 1])]
    else:
        G4 = G - G % 4
        for grp in range(0, G4, 4):
            b0 = grp * m
            s0 += v[grp] * x[b0 + np.int64(ix[grp])]
            s1 += v[grp + 1] * x[b0 + m + np.int64(ix[grp + 1])]
            s2 += v[grp + 2] * x[b0 + 2 * m + np.int64(ix[grp + 2])]
            s3 += v[grp + 3] * x[b0 + 3 * m + np.int64(ix[grp + 3])]
        for grp in range(G4, G):
            s0 += v[grp] * x[grp * m + np.int64(ix[grp])]
    return (s0 + s1) + (s2 + s3)


@njit(inline="always", **_OPTS)
def _row_dot(v, ix, x, n, m):
    """One pass-major row (pass_major) times x: its passes of 2 (and 1) slots a group."""
    if n <= 2:                                 # one pass: the row as it is
        return _pass_dot(v, ix, x, n, m)
    G = v.shape[0] // n
    s = np.float32(0.0)
    for s0 in range(0, n, 2):                  # passes(n)
        nt = min(2, n - s0)
        s += _pass_dot(v[s0 * G:(s0 + nt) * G], ix[s0 * G:(s0 + nt) * G], x, nt, m)
    return s


@njit(parallel=True, **_OPTS)
def nm_matvec_bias_relu(values, idx, bias, x, out, n, m, relu):
    """out = (relu)(W @ x + bias); (n_in,) -> (n_out,); rows split over threads."""
    K = values.shape[0] // max(out.shape[0], 1)
    for i in prange(out.shape[0]):
        s = bias[i] + _row_dot(values[i * K:(i + 1) * K], idx[i * K:(i + 1) * K], x, n, m)
        out[i] = max(s, np.float32(0.0)) if relu else s


@njit(**_OPTS)
def nm_matvec_bias_relu_serial(values, idx, bias, x, out, n, m, relu):
    """Single-threaded nm_matvec_bias_relu."""
    K = values.shape[0] // max(out.shape[0], 1)
    for i in range(out.shape[0]):
        s = bias[i] + _row_dot(values[i * K:(i + 1) * K], idx[i * K:(i + 1) * K], x, n, m)
        out[i] = max(s, np.float32(0.0)) if relu else s


@njit(inline="always", **_OPTS)
def _layer(values, idx, bias, sizes, val_off, layer, buf0, buf1, Bc):
    """Layer `layer` of the concatenated net: (n_out, values, idx, bias, relu, out (n_out, Bc))."""
    n_out = sizes[layer + 1]
    r = 0
    for l in range(layer):
        r += sizes[l + 1]
    buf = buf0 if layer % 2 == 0 else buf1
    lo, hi = val_off[layer], val_off[layer + 1]
    return (n_out, values[lo:hi], idx[lo:hi], bias[r:r + n_out], layer < sizes.shape[0] - 2,
            buf[:n_out * Bc].reshape((n_out, Bc)))


@njit(inline="always", **_OPTS)
def _forward_serial(values, idx, bias, sizes, val_off, ns, m, panel, tile, HT, buf0, buf1):
    """Every layer on the calling thread: (n_in, Bc) -> (n_out, Bc), a buffer view. ns[l]: layer l's n."""
    Bc = HT.shape[1]
    h = HT
    for layer in range(sizes.shape[0] - 1):
        n_out, v, ix, b, relu, out = _layer(values, idx, bias, sizes, val_off, layer, buf0, buf1, Bc)
        nm_matmul_bias_relu(v, ix, b, h, out, ns[layer], m, panel, relu, tile)
        h = out
    return h


def nm_forward_chunks(values, idx, bias, sizes, val_off, ns, m, panel, tile, X, HT, buf0, buf1, out, counter,
                      callbacks=None):
    """Whole MLP, batch split over threads: X (B, n_in) -> out (B, n_out), one parallel region.

    Layers are concatenated: layer l owns values/idx[val_off[l]:val_off[l+1]] (n_out * K, row-major)
    and bias[sum(sizes[1:l+1]):][:sizes[l+1]], its pattern is ns[l]:m. Worker w owns HT[w] (n_in, Bc) and buf0[w], buf1[w]
    (>= max(hidden sizes) * Bc floats) and runs chunks of Bc columns (a multiple of 32) as
    kernels.csr_forward_chunks does, claimed from `counter` (int64 (1,), reset here): a worker on
    a slower core runs fewer chunks. (A row split, each layer's rows in claimed blocks over 128-column
    tiles, was no faster on a quiet machine and 4x slower with a third process on the 2 cores: a
    parallel region a layer waits for a descheduled thread at every layer; docs/perf-notes.md, session 7.)
    The worker is a callback (cfuncs); the layer kernel it calls stays a jitted function linked into
    it (as fast as before; with the tiles inlined into the worker it ran 5-9 % slower). callbacks: the caller's cache
    of callback addresses.
    """
    args = (values, idx, bias, sizes, val_off, ns, int(m), int(panel), int(tile), X, HT, buf0, buf1, out, counter)
    counter[0] = 0
    run(_worker.address(*args, 0, cache=callbacks), HT.shape[0], *args)


@callback
def _worker(values, idx, bias, sizes, val_off, ns, m, panel, tile, X, HT, buf0, buf1, out, counter, w):
    """Worker w of nm_forward_chunks: claims chunks until none is left."""
    B = X.shape[0]
    Bc = HT.shape[2]
    c0 = _claim_chunk(counter, B, Bc)
    while c0 >= 0:
        _gather_columns(X, c0, HT[w])
        o = _forward_serial(values, idx, bias, sizes, val_off, ns, m, panel, tile, HT[w], buf0[w], buf1[w])
        _store_columns(out, c0, o, out.shape[1])
        c0 = _claim_chunk(counter, B, Bc)


@callback
def _rows_part(values, idx, bias, HT, out, n, m, panel, relu, n_parts, w):
    """Part w of n_parts of one layer's rows in the row split (nm_forward_rows): its block of rows
    on 32-column register tiles."""
    n_out = out.shape[0]
    _matmul_rows(values, idx, bias, HT, out, w * n_out // n_parts, (w + 1) * n_out // n_parts, n, m, panel, relu, 32)


def nm_forward_rows(values, idx, bias, sizes, val_off, ns, m, panel, X, HT, buf0, buf1, out, n_blocks, callbacks=None):
    """Whole MLP on a batch narrower than one tile per thread: X (B, n_in) -> out (B, n_out) through
    HT (n_in, Bp) (zero-padded to Bp, a multiple of 32 columns), every layer's rows split into
    `n_blocks` blocks over the threads (one parallel region per layer: its outputs are the next
    layer's inputs). The batch split would leave all but one thread idle at batch 2-32. A block is
    a C callback (`_rows_part`) the driver calls by address, compiled once (cold, 2 threads, batch
    16, this VM: 5.7 -> 3.6 s, session 13); callbacks: the caller's cache of its address."""
    part = _rows_part.address(values, idx, bias, HT, HT, 2, int(m), int(panel), True, 1, 0, cache=callbacks)
    _forward_rows(part, values, idx, bias, sizes, val_off, ns, m, panel, X, HT, buf0, buf1, out, n_blocks)


@njit(parallel=True, **_OPTS)
def _forward_rows(part, values, idx, bias, sizes, val_off, ns, m, panel, X, HT, buf0, buf1, out, n_blocks):
    """nm_forward_rows' layers: each in min(n_blocks, n_out) parts of `part` over the threads."""
    B = X.shape[0]
    Bp = HT.shape[1]
    _gather_columns(X, 0, HT)
    h = HT
    for layer in range(sizes.shape[0] - 1):
        n_out, v, ix, b, relu, o = _layer(values, idx, bias, sizes, val_off, layer, buf0, buf1, Bp)
        run_parts(part, min(n_blocks, n_out), (v, ix, b, h, o, ns[layer], np.int64(m), np.int64(panel), relu))
        h = o
    for j in range(B):
        for i in range(out.shape[1]):
            out[j, i] = h[i, j]


@njit(**_OPTS)
def nm_forward_vec(values, idx, bias, sizes, val_off, ns, m, x, buf0, buf1, parallel):
    """Whole MLP at batch 1: x (n_in,) -> (n_out,), a view of buf0/buf1. parallel[l]: layer l's rows
    are split over the threads."""
    h = x
    for layer in range(sizes.shape[0] - 1):
        n_out, v, ix, b, relu, out = _layer(values, idx, bias, sizes, val_off, layer, buf0, buf1, 1)
        o = out.reshape(n_out)
        if parallel[layer]:
            nm_matvec_bias_relu(v, ix, b, h, o, ns[layer], m, relu)
        else:
            nm_matvec_bias_relu_serial(v, ix, b, h, o, ns[layer], m, relu)
        h = o
    return h


# --- batch 1 on row-interleaved N:4 (nm_vec16): lanes over 16 output rows -----------------------

ROWS = LANES                # output rows per lane block of the interleaved copy
_I8V = ir.VectorType(ir.IntType(8), LANES)

_VEC_ARGS = (("values", types.float32, 1), ("idx", types.uint8, 1), ("bias", types.float32, 1),
             ("x", types.float32, 1), ("out", types.float32, 1))


def interleave(values: np.ndarray, idx: np.ndarray, n: int, m: int) -> tuple:
    """(values, idx) of an N:M layer (n_out, G * n) as row blocks of ROWS rows, slot-major within a
    block: element ((rb * G + g) * n + s) * ROWS + lane is row rb * ROWS + lane, slot s of group g.
    Rows past n_out are padding (value 0, index 0). Returns flat copies."""
    M, K = values.shape
    G = K // n
    RB = -(-M // ROWS)
    v = np.zeros((RB * ROWS, K), np.float32)
    ix = np.zeros((RB * ROWS, K), np.uint8)
    v[:M], ix[:M] = values, idx
    order = (0, 2, 3, 1)                                               # (RB, G, n, ROWS)
    return (np.ascontiguousarray(v.reshape(RB, ROWS, G, n).transpose(order)).ravel(),
            np.ascontiguousarray(ix.reshape(RB, ROWS, G, n).transpose(order)).ravel())


def _make_nm_vec16(NT):
    """Intrinsic: row blocks rb0..rb1-1 of an interleaved N:4 layer (m = 4, n = NT compiled in):
    out[rb * 16:][:16] = (relu)(bias[rb * 16:][:16] + sum_g,s values * x[4 g + idx]). Each group's
    4 inputs are broadcast once and every slot picks its lane's input by the index's two bits
    (3 selects: generic vector IR, no gather and no target permute)."""
    n_acc = 2 if NT == 1 else 1

    @intrinsic
    def nm_vec16(typingctx, values, idx, bias, x, out, rb0, rb1, G, relu):
        require_arrays(f"nm_kernels.nm_vec16_{NT}", _VEC_ARGS, (values, idx, bias, x, out))
        sig = types.void(values, idx, bias, x, out, rb0, rb1, G, relu)

        def codegen(context, builder, sig, args):
            g = IR(context, builder, sig, args)
            p_val, p_idx, p_bias, p_x, p_out = g.ptr[:5]
            rb0, rb1, G = (g.i64(a) for a in args[5:8])
            accs = [g.zeroed(1)[0] for _ in range(max(n_acc, NT))]
            one = ir.Constant(_I8V, 1)
            two = ir.Constant(_I8V, 2)
            zero8 = ir.Constant(_I8V, 0)
            with cgutils.for_range_slice(builder, rb0, rb1, g.const(1), inc=True) as (rb, _):
                for a in accs:
                    builder.store(ir.Constant(VF, None), a)
                blk = builder.mul(builder.mul(rb, G), g.const(NT * LANES))

                def group(grp, u):
                    xs = [g.broadcast(builder.load(builder.gep(p_x, [builder.add(builder.mul(grp, g.const(4)), g.const(j))])))
                          for j in range(4)]
                    e0 = builder.add(blk, builder.mul(grp, g.const(NT * LANES)))
                    for s in range(NT):
                        e = builder.add(e0, g.const(s * LANES))
                        ix = g.vload(p_idx, e, _I8V)
                        b0 = builder.icmp_unsigned("!=", builder.and_(ix, one), zero8)
                        b1 = builder.icmp_unsigned("!=", builder.and_(ix, two), zero8)
                        xsel = builder.select(b1, builder.select(b0, xs[3], xs[2]), builder.select(b0, xs[1], xs[0]))
                        a = accs[(u * NT + s) % len(accs)]
                        builder.store(g.fma(g.vload(p_val, e), xsel, builder.load(a)), a)

                g.pairs(g.const(0), G, group, n_acc)
                r = builder.mul(rb, g.const(LANES))
                t = builder.fadd(g.sum(accs), g.vload(p_bias, r))
                g.vstore(g.relu_if(args[8], t), p_out, r)
            return context.get_dummy_value()

        return sig, codegen

    return nm_vec16


nm_vec16_1, nm_vec16_2, nm_vec16_3, nm_vec16_4 = (_make_nm_vec16(n) for n in (1, 2, 3, 4))
VEC16_N = (1, 2, 3, 4)      # every N of N:4 (3:4 on the scalar SpMV ran 5 ms, 8x its 4:4 here: a cliff in k)


@njit(inline="always", **_OPTS)
def _vec16(values, idx, bias, x, out, rb0, rb1, G, n, relu):
    if n == 2:
        nm_vec16_2(values, idx, bias, x, out, rb0, rb1, G, relu)
    elif n == 1:
        nm_vec16_1(values, idx, bias, x, out, rb0, rb1, G, relu)
    elif n == 3:
        nm_vec16_3(values, idx, bias, x, out, rb0, rb1, G, relu)
    else:
        nm_vec16_4(values, idx, bias, x, out, rb0, rb1, G, relu)


def nm_matvec16(values, idx, bias, x, out, n, relu, parallel):
    """out = (relu)(W @ x + bias) on an interleaved N:4 layer (`interleave`), n in VEC16_N:
    x (>= 4 G,) -> out (16 RB,); bias padded to 16 RB. parallel: row blocks split over the threads.
    The engine's layers run the same callback."""
    k = threads(None) if parallel else 1
    args = (values, idx, bias, x, out, int(n), bool(relu))
    run(_vec16_part.address(*args, 1, 0), k, *args, k)


def nm_forward_vec16(values, idx, bias, sizes, val_off, bias_off, ns, x, buf0, buf1, parallel, callbacks=None,
                     n_threads=None):
    """Whole MLP at batch 1 on interleaved N:4 layers: x (>= 4 G_0,) -> a view of buf0/buf1 of
    the output layer's 16 RB rows (rows past sizes[-1] are padding). Layer l: values/idx
    [val_off[l]:val_off[l+1]], bias[bias_off[l]:bias_off[l+1]] (padded to 16 RB), n = ns[l]; the
    buffers hold >= max 16 RB + 4 floats, zero past what a layer writes. parallel[l]: layer l's row
    blocks split over n_threads threads (Numba's count by default). callbacks: the caller's cache of
    callback addresses (cfuncs.Callback.address)."""
    part = _vec16_part.cached(callbacks)
    if not part:
        part = _vec16_part.address(values, idx, bias, x, buf0, 2, True, 1, 0, cache=callbacks)
    n = threads(n_threads)
    return _forward_vec16(part, values, idx, bias, sizes, val_off, bias_off, ns, x, buf0, buf1, parallel, n)


@callback
def _vec16_part(values, idx, bias, x, out, n, relu, n_parts, w):
    """Part w of n_parts of an interleaved layer's row blocks (nm_matvec16's)."""
    RB = out.shape[0] // LANES
    G = values.shape[0] // max(RB * n * LANES, 1)
    _vec16(values, idx, bias, x, out, w * RB // n_parts, (w + 1) * RB // n_parts, G, n, relu)


@njit(parallel=True, **_OPTS)
def _forward_vec16(part, values, idx, bias, sizes, val_off, bias_off, ns, x, buf0, buf1, parallel, n_threads):
    """nm_forward_vec16's layers; part: _vec16_part compiled for these arguments, on n_threads
    threads for a parallel layer."""
    h = x
    L = sizes.shape[0] - 1
    for layer in range(L):
        buf = buf0 if layer % 2 == 0 else buf1
        b = bias[bias_off[layer]:bias_off[layer + 1]]
        o = buf[:b.shape[0]]
        v, ix = values[val_off[layer]:val_off[layer + 1]], idx[val_off[layer]:val_off[layer + 1]]
        relu = layer < L - 1
        run_parts(part, n_threads if parallel[layer] else 1, (v, ix, b, h, o, ns[layer], relu))
        h = buf
    return h
