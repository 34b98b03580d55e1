"""Numba kernels for N:M inference (nm.py layout): raw arrays in, preallocated output out.

Activations are transposed, HT (n_features, B) C-contiguous as in kernels.py. Every row has the
same K = G * n slots, slot k of row i at column (k // n) * m + idx[i, k]:
    out[i, :] = (relu)(bias[i] + sum_k values[i, k] * HT[(k // n) * m + idx[i, k], :])
No row pointers and one byte of index per value (CSR: 2 bytes and a row pointer). The register
tile `nm_rows{n}` keeps a row's 32 batch columns in 2 x 2 accumulator vectors (2 partial sums over
alternate slots) over the row's slots in one column panel, like simd.csr_rows32; k // n is a
shift for n = 1, 2, 4 (compiled for those), a division otherwise (`nm_rows_any`).

Unlike an r x 1 block (bsr_kernels), a slot's activation row serves one output row only: one
vector load per FMA, as in CSR, so the kernel runs at CSR's speed per non-zero (2:4 at 50%
density does not beat dense BLAS on x86; 1:4 does, by ~1.5x: see the issue 13 note). Column
panels of 128 inputs (a 16 KB slice of a 32-column HT tile, kept in L1 while every row adds its
slots of the panel) measured best of 64..all on one core; the spread under load was wide.
Nothing is compiled at import (cache=True, lazily on first call).
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from sparsenet.kernels import _gather_columns
from sparsenet.simd import IR, LANES, VF, require_arrays

_OPTS = dict(cache=True, boundscheck=False, fastmath={"contract"})
W = 2                       # 16-float vectors per tile row: 32 batch columns
TILE = LANES * W
_ACC = 2

_ROWS_ARGS = (("values", types.float32, 1), ("idx", types.uint8, 1), ("bias", types.float32, 1),
              ("HT", types.float32, 2), ("out", types.float32, 2))


def _make_nm_rows(NT):
    """Intrinsic: rows r0..r1-1, slots ks..ke-1 of each row (a column panel), on columns
    col0..col0+31. first: start from the bias (else from out: an earlier panel's partial sums);
    relu: apply it at the store (the last panel). NT: n compiled in (a shift or a multiply for
    k // n), 0 for n at run time (a division per slot)."""

    @intrinsic
    def nm_rows(typingctx, values, idx, bias, HT, out, r0, r1, K, n, m, ld_h, ld_o, col0, ks, ke, first, relu):
        require_arrays(f"nm_kernels.nm_rows{NT or '_any'}", _ROWS_ARGS, (values, idx, bias, HT, out))
        sig = types.void(values, idx, bias, HT, out, r0, r1, K, n, m, ld_h, ld_o, col0, ks, ke, first, relu)

        def codegen(context, builder, sig, args):
            g = IR(context, builder, sig, args)
            p_val, p_idx, p_bias, p_h, p_out = g.ptr[:5]
            r0, r1, K, n, m, ld_h, ld_o, col0, ks, ke = (g.i64(a) for a in args[5:15])
            nn = g.const(NT) if NT else n
            accs = [g.zeroed(W) for _ in range(_ACC)]
            with cgutils.for_range_slice(builder, r0, r1, g.const(1), inc=True) as (i, _):
                b = g.broadcast(builder.load(builder.gep(p_bias, [i])))
                o = builder.add(builder.mul(i, ld_o), col0)
                for w in range(W):
                    prev = g.vload(p_out, builder.add(o, g.const(LANES * w)))
                    builder.store(builder.select(args[15], b, prev), accs[0][w])
                    builder.store(ir.Constant(VF, None), accs[1][w])
                base = builder.mul(i, K)

                def slot(k, u):
                    grp = builder.udiv(builder.sub(k, base), nn)
                    col = builder.add(builder.mul(grp, m), g.at(p_idx, k, signed=False))
                    d = g.broadcast(builder.load(builder.gep(p_val, [k])))
                    h0 = builder.add(builder.mul(col, ld_h), col0)
                    for w in range(W):
                        h = g.vload(p_h, builder.add(h0, g.const(LANES * w)))
                        builder.store(g.fma(d, h, builder.load(accs[u][w])), accs[u][w])

                g.pairs(builder.add(base, ks), builder.add(base, ke), slot, _ACC)
                for w in range(W):
                    t = g.sum([acc[w] for acc in accs])
                    g.vstore(g.relu_if(args[16], t), p_out, builder.add(o, g.const(LANES * w)))
            return context.get_dummy_value()

        return sig, codegen

    return nm_rows


nm_rows1 = _make_nm_rows(1)
nm_rows2 = _make_nm_rows(2)
nm_rows4 = _make_nm_rows(4)
nm_rows_any = _make_nm_rows(0)


@njit(**_OPTS)
def nm_matmul_bias_relu(values, idx, bias, HT, out, n, m, panel, relu):
    """out = (relu)(W @ HT + bias[:, None]); (n_in, Bc) -> (n_out, Bc), Bc a multiple of 32;
    values/idx flat (n_out * K,). The inputs are cut into column panels of `panel` inputs (a
    multiple of m; >= n_in: one panel): a panel's rows of a 32-column HT tile stay in L1 while
    every row adds its slots of the panel (a row's tile is loaded and stored once per panel)."""
    n_out, Bc = out.shape
    K = values.shape[0] // max(n_out, 1)
    Ps = max(panel // m, 1) * n                      # slots per panel
    for t in range(Bc // 32):
        for ks in range(0, max(K, 1), Ps):
            ke = min(ks + Ps, K)
            first = ks == 0
            last = ke >= K
            rl = relu and last
            if n == 2:
                nm_rows2(values, idx, bias, HT, out, 0, n_out, K, n, m, Bc, Bc, 32 * t, ks, ke, first, rl)
            elif n == 1:
                nm_rows1(values, idx, bias, HT, out, 0, n_out, K, n, m, Bc, Bc, 32 * t, ks, ke, first, rl)
            elif n == 4:
                nm_rows4(values, idx, bias, HT, out, 0, n_out, K, n, m, Bc, Bc, 32 * t, ks, ke, first, rl)
            else:
                nm_rows_any(values, idx, bias, HT, out, 0, n_out, K, n, m, Bc, Bc, 32 * t, ks, ke, first, rl)


@njit(inline="always", **_OPTS)
def _row_dot(v, ix, x, n, m):
    """sum_k v[k] * x[(k // n) * m + ix[k]]: groups in pairs, slots in pairs, 4 partial sums
    (no division, no slices: three slices per group were 5x slower)."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    G = v.shape[0] // n
    G2 = G - G % 2
    n2 = n - n % 2
    if n == 2:                             # 2:M, the common case: straight-line code per group pair
        for grp in range(0, G2, 2):
            b0 = grp * m
            k0 = 2 * grp
            s0 += v[k0] * x[b0 + np.int64(ix[k0])]
            s1 += v[k0 + 1] * x[b0 + np.int64(ix[k0 + 1])]
            s2 += v[k0 + 2] * x[b0 + m + np.int64(ix[k0 + 2])]
            s3 += v[k0 + 3] * x[b0 + m + np.int64(ix[k0 + 3])]
        G2 = G                             # the odd group, if any, below
        for s in range(G - G % 2, G):
            s0 += v[2 * s] * x[s * m + np.int64(ix[2 * s])]
            s1 += v[2 * s + 1] * x[s * m + np.int64(ix[2 * s + 1])]
    elif n == 1:                           # 1:M: one slot a group, 4 groups a pass
        G4 = G - G % 4
        for grp in range(0, G4, 4):
            b0 = grp * m
            s0 += v[grp] * x[b0 + np.int64(ix[grp])]
            s1 += v[grp + 1] * x[b0 + m + np.int64(ix[grp + 1])]
            s2 += v[grp + 2] * x[b0 + 2 * m + np.int64(ix[grp + 2])]
            s3 += v[grp + 3] * x[b0 + 3 * m + np.int64(ix[grp + 3])]
        for grp in range(G4, G):
            s0 += v[grp] * x[grp * m + np.int64(ix[grp])]
        G2 = G
        n2 = 0
    for grp in range(0, G2 if n > 2 else 0, 2):
        b0 = grp * m
        b1 = b0 + m
        k0 = grp * n
        k1 = k0 + n
        for s in range(0, n2, 2):
            s0 += v[k0 + s] * x[b0 + np.int64(ix[k0 + s])]
            s1 += v[k0 + s + 1] * x[b0 + np.int64(ix[k0 + s + 1])]
            s2 += v[k1 + s] * x[b1 + np.int64(ix[k1 + s])]
            s3 += v[k1 + s + 1] * x[b1 + np.int64(ix[k1 + s + 1])]
        if n2 < n:
            s0 += v[k0 + n2] * x[b0 + np.int64(ix[k0 + n2])]
            s2 += v[k1 + n2] * x[b1 + np.int64(ix[k1 + n2])]
    for s in range(G2 * n, G * n):         # n > 2: the odd group
        s1 += v[s] * x[G2 * m + np.int64(ix[s])]
    return (s0 + s1) + (s2 + s3)


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


@njit(**_OPTS)
def _forward_serial(values, idx, bias, sizes, val_off, ns, m, panel, HT, buf0, buf1):
    """Every layer on the calling thread: (n_in, Bc) -> (n_out, Bc), a buffer view. ns[l]: layer l's n."""
    Bc = HT.shape[1]
    h = HT
    for layer in range(sizes.shape[0] - 1):
        n_out, v, ix, b, relu, out = _layer(values, idx, bias, sizes, val_off, layer, buf0, buf1, Bc)
        nm_matmul_bias_relu(v, ix, b, h, out, ns[layer], m, panel, relu)
        h = out
    return h


@njit(parallel=True, **_OPTS)
def nm_forward_chunks(values, idx, bias, sizes, val_off, ns, m, panel, X, HT, buf0, buf1, out):
    """Whole MLP, batch split over threads: X (B, n_in) -> out (B, n_out), one parallel region.

    Layers are concatenated: layer l owns values/idx[val_off[l]:val_off[l+1]] (n_out * K, row-major)
    and bias[sum(sizes[1:l+1]):][:sizes[l+1]], its pattern is ns[l]:m. Worker w owns HT[w] (n_in, Bc) and buf0[w], buf1[w]
    (>= max(hidden sizes) * Bc floats) and runs chunks of Bc columns (a multiple of 32) as
    kernels.csr_forward_chunks does.
    """
    B = X.shape[0]
    n_workers, n_in, Bc = HT.shape
    n_chunks = -(-B // Bc)
    for w in prange(n_workers):
        for ch in range(w * n_chunks // n_workers, (w + 1) * n_chunks // n_workers):
            c0 = ch * Bc
            _gather_columns(X, c0, HT[w])
            o = _forward_serial(values, idx, bias, sizes, val_off, ns, m, panel, HT[w], buf0[w], buf1[w])
            oc = out[c0:c0 + Bc]
            for j in range(oc.shape[0]):
                for i in range(oc.shape[1]):
                    oc[j, i] = o[i, j]


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
