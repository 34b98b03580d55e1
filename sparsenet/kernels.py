"""Numba kernels for CSR inference: raw arrays in, preallocated output out.

Activations are kept transposed, HT of shape (n_features, B), C-contiguous, so output row i is
    out[i, :] = relu(bias[i] + sum_k data[k] * HT[indices[k], :])
and the inner loop is a contiguous axpy over the batch. At batch 1 the same formula is a sparse
dot product per row (SpMV).

Which kernel runs for a layer is decided by the plan (plan.py) and passed in as a code (SPMV,
SPMV_PANELS, ROWS8, PANELS, TILES, TILE_PANELS | PARALLEL); nothing here re-decides. Rules the loops follow
(figures: docs/perf-notes.md):
- rows are sliced (d = data[lo:hi]) and walked from 0, indices are unsigned: Numba adds a
  wraparound select to data[k] when it cannot prove k >= 0;
- SpMM sums 8 non-zeros per pass over the output row (one load/store of out[i, :] per 8 FMAs);
- column panels keep a panel's slice of HT in L1 for dense-ish layers;
- callers pass 64-byte aligned HT/out rows;
- SpMV keeps 4 partial sums; only FMA contraction is allowed (no reassociation: results stay
  within float32 rounding of the reference and NaN/inf propagate);
- csr_forward_chunks splits the batch into chunks the threads claim one at a time (simd.claim),
  each chunk through every layer on one thread, transposing its own columns (contiguous writes,
  strided reads).
Nothing is compiled at import: every kernel compiles lazily on first call (cache=True keeps it).
"""
import numpy as np
from numba import njit, prange

from sparsenet.simd import claim, csr_rows16, csr_rows32

_OPTS = dict(cache=True, boundscheck=False, fastmath={"contract"})

# Per-layer kernel codes of csr_forward / csr_forward_chunks, chosen by the plan (plan.py), never here.
SPMV = 0          # batch 1: csr_matvec_bias_relu(_serial)
SPMV_PANELS = 1   # batch 1 on column panels: csr_panels_matvec_bias_relu
ROWS8 = 2         # csr_matmul_bias_relu(_serial): 8 non-zeros per pass over an output row
PANELS = 3        # column panels: csr_panels_matmul_bias_relu(_serial)
TILES = 4         # register tiles (simd.py): 32 columns, then 16; needs a batch (or chunk) of >= 16 columns
TILE_PANELS = 5   # TILES over column panels (panel layout as PANELS): dense-ish layers (same kernel, several panels)
PARALLEL = 16     # flag: the layer's rows are split over the threads (row split only)
NEVER = np.iinfo(np.int64).max   # a work threshold no layer reaches: never parallel


@njit(**_OPTS)
def all_finite(X):
    """True when the C-contiguous float32 (B, n) X holds no NaN and no +-inf.

    A float is non-finite when its 8 exponent bits are all ones; adding 1 to that field then carries
    into bit 31, so one OR over the masked words answers for the whole array (vectorised, no branch).
    """
    bits = X.view(np.uint32)
    acc = np.uint32(0)
    for i in range(bits.shape[0]):
        row = bits[i]
        for j in range(row.shape[0]):
            acc |= (row[j] & np.uint32(0x7F800000)) + np.uint32(0x00800000)
    return (acc & np.uint32(0x80000000)) == 0


@njit(inline="always", **_OPTS)
def _row_dot(d, c, x):
    """sum_k d[k] * x[c[k]] with 4 partial sums."""
    n = d.shape[0]
    n4 = n - n % 4
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    for k in range(0, n4, 4):
        s0 += d[k] * x[c[k]]
        s1 += d[k + 1] * x[c[k + 1]]
        s2 += d[k + 2] * x[c[k + 2]]
        s3 += d[k + 3] * x[c[k + 3]]
    for k in range(n4, n):
        s0 += d[k] * x[c[k]]
    return (s0 + s1) + (s2 + s3)


@njit(parallel=True, **_OPTS)
def csr_matvec_bias_relu(data, indices, indptr, bias, x, out, relu):
    """out = (relu)(W @ x + bias); (n_in,) -> (n_out,); rows split over threads."""
    for i in prange(out.shape[0]):
        lo, hi = indptr[i], indptr[i + 1]
        s = bias[i] + _row_dot(data[lo:hi], indices[lo:hi], x)
        out[i] = max(s, np.float32(0.0)) if relu else s


@njit(**_OPTS)
def csr_matvec_bias_relu_serial(data, indices, indptr, bias, x, out, relu):
    """Single-threaded csr_matvec_bias_relu: no parallel-region cost for small layers."""
    for i in range(out.shape[0]):
        lo, hi = indptr[i], indptr[i + 1]
        s = bias[i] + _row_dot(data[lo:hi], indices[lo:hi], x)
        out[i] = max(s, np.float32(0.0)) if relu else s


@njit(inline="always", **_OPTS)
def _row_acc8(d, c, HT, o):
    """o[:] += sum_k d[k] * HT[c[k], :], 8 non-zeros per pass over o.

    (Finishing the remainder in passes of 4, 2, 1 instead of 1s measured no better.)
    """
    B = o.shape[0]
    n = d.shape[0]
    n8 = n - n % 8
    for k in range(0, n8, 8):
        d0, d1, d2, d3 = d[k], d[k + 1], d[k + 2], d[k + 3]
        d4, d5, d6, d7 = d[k + 4], d[k + 5], d[k + 6], d[k + 7]
        h0, h1, h2, h3 = HT[c[k]], HT[c[k + 1]], HT[c[k + 2]], HT[c[k + 3]]
        h4, h5, h6, h7 = HT[c[k + 4]], HT[c[k + 5]], HT[c[k + 6]], HT[c[k + 7]]
        for j in range(B):
            o[j] += ((d0 * h0[j] + d1 * h1[j]) + (d2 * h2[j] + d3 * h3[j])) + (
                (d4 * h4[j] + d5 * h5[j]) + (d6 * h6[j] + d7 * h7[j]))
    for k in range(n8, n):
        dk = d[k]
        h = HT[c[k]]
        for j in range(B):
            o[j] += dk * h[j]


@njit(inline="always", **_OPTS)
def _row_axpy8(d, c, HT, o, b, relu):
    """o[:] = (relu)(b + sum_k d[k] * HT[c[k], :])."""
    B = o.shape[0]
    for j in range(B):
        o[j] = b
    _row_acc8(d, c, HT, o)
    if relu:
        for j in range(B):
            o[j] = max(o[j], np.float32(0.0))


@njit(parallel=True, **_OPTS)
def csr_matmul_bias_relu(data, indices, indptr, bias, HT, out, relu):
    """out = (relu)(W @ HT + bias[:, None]); (n_in, B) -> (n_out, B); rows split over threads."""
    for i in prange(out.shape[0]):
        lo, hi = indptr[i], indptr[i + 1]
        _row_axpy8(data[lo:hi], indices[lo:hi], HT, out[i], bias[i], relu)


@njit(**_OPTS)
def csr_matmul_bias_relu_serial(data, indices, indptr, bias, HT, out, relu):
    """Single-threaded csr_matmul_bias_relu."""
    for i in range(out.shape[0]):
        lo, hi = indptr[i], indptr[i + 1]
        _row_axpy8(data[lo:hi], indices[lo:hi], HT, out[i], bias[i], relu)


@njit(inline="always", **_OPTS)
def _panels_rows(data, indices, indptr, panel, bias, HT, out, relu, r0, r1):
    """Rows r0:r1 of csr_panels_matmul_bias_relu (layout described there)."""
    n_out, B = out.shape
    n_panels = indptr.shape[0] // (n_out + 1)
    for i in range(r0, r1):
        for j in range(B):
            out[i, j] = bias[i]
    for p in range(n_panels):
        H = HT[p * panel:(p + 1) * panel]
        ip = indptr[p * (n_out + 1):(p + 1) * (n_out + 1)]
        for i in range(r0, r1):
            lo, hi = ip[i], ip[i + 1]
            _row_acc8(data[lo:hi], indices[lo:hi], H, out[i])
    if relu:
        for i in range(r0, r1):
            for j in range(B):
                out[i, j] = max(out[i, j], np.float32(0.0))


@njit(parallel=True, **_OPTS)
def csr_panels_matmul_bias_relu(data, indices, indptr, panel, bias, HT, out, relu, n_blocks):
    """Column-panelled CSR: out = (relu)(W @ HT + bias[:, None]); (n_in, B) -> (n_out, B).

    W's columns are cut into panels of `panel` inputs; panel p is a CSR block with local column
    indices, its row pointers at indptr[p * (n_out + 1):(p + 1) * (n_out + 1)] (offsets into data).
    A panel's slice of HT (panel * B floats, 32 KB for 32 x 256) stays in L1 while every row
    adds its segment: 1.2-1.4x faster than whole rows at density >= 0.45, slower below ~0.25.
    Rows are split into n_blocks blocks (pass the thread count), one parallel region in all: a
    region per panel cost 30 regions per layer, ruinous when a loaded machine delays a thread.
    """
    n_out = out.shape[0]
    n_blocks = max(1, min(n_blocks, n_out))
    for blk in prange(n_blocks):                 # one parallel region: each thread owns a row block
        _panels_rows(data, indices, indptr, panel, bias, HT, out, relu,
                     blk * n_out // n_blocks, (blk + 1) * n_out // n_blocks)


@njit(**_OPTS)
def csr_panels_matmul_bias_relu_serial(data, indices, indptr, panel, bias, HT, out, relu):
    """Single-threaded csr_panels_matmul_bias_relu."""
    _panels_rows(data, indices, indptr, panel, bias, HT, out, relu, 0, out.shape[0])


@njit(parallel=True, **_OPTS)
def csr_panels_matvec_bias_relu(data, indices, indptr, panel, bias, x, out, relu):
    """Column-panelled CSR times a vector (layout as csr_panels_matmul_bias_relu); (n_in,) -> (n_out,)."""
    n_out = out.shape[0]
    n_panels = indptr.shape[0] // (n_out + 1)
    for i in prange(n_out):
        s = bias[i]
        for p in range(n_panels):
            lo, hi = indptr[p * (n_out + 1) + i], indptr[p * (n_out + 1) + i + 1]
            s += _row_dot(data[lo:hi], indices[lo:hi], x[p * panel:(p + 1) * panel])
        out[i] = max(s, np.float32(0.0)) if relu else s


@njit(inline="always", **_OPTS)
def _tile_panels(d, c, ip, panel, b, h, out, r0, r1, relu):
    """Rows r0:r1 of out = (relu)(W @ h + b) on register tiles (32 columns, then 16: B % 16 == 0, or
    B >= 16 and the last 16-column tile overlaps the one before it) over column panels (layout:
    csr_panels_matmul_bias_relu; a plain CSR layer is one panel, panel >= n_in): for each tile the
    rows add their segment of one panel after another, that panel's rows of h staying in L1 (a
    row's tile loaded and stored once a panel; the first panel starts from 0 and the last adds the
    bias and applies relu). Codes TILES and TILE_PANELS both run it."""
    n_out, B = out.shape
    n_panels = ip.shape[0] // (n_out + 1)
    n_tiles = B // 32 + (1 if B % 32 else 0)
    for t in range(n_tiles):
        for p in range(n_panels):
            H = h[p * panel:(p + 1) * panel]
            q = ip[p * (n_out + 1):(p + 1) * (n_out + 1)]
            last = p == n_panels - 1
            if t < B // 32:
                csr_rows32(d, c, q, b, H, out, r0, r1, B, B, 32 * t, p == 0, relu and last)
            else:
                csr_rows16(d, c, q, b, H, out, r0, r1, B, B, B - 16, p == 0, relu and last)


@njit(parallel=True, **_OPTS)
def csr_tile_panels_bias_relu(data, indices, indptr, panel, bias, HT, out, relu, n_blocks):
    """out = (relu)(W @ HT + bias[:, None]) on register tiles over column panels (_tile_panels), rows
    cut into n_blocks blocks over the threads (one parallel region); (n_in, B) -> (n_out, B), B >= 16."""
    n_out = out.shape[0]
    n_blocks = max(1, min(n_blocks, n_out))
    for blk in prange(n_blocks):
        _tile_panels(data, indices, indptr, panel, bias, HT, out, blk * n_out // n_blocks,
                     (blk + 1) * n_out // n_blocks, relu)


@njit(inline="always", **_OPTS)
def _layer(data, indices, indptr, bias, sizes, nnz_off, ptr_off, layer, r, buf0, buf1, B):
    """Layer `layer` of the concatenated net (layout: csr_forward) and its output block in the
    ping-pong buffers: (n_out, data, indices, indptr, bias, relu, out (n_out, B))."""
    n_out = sizes[layer + 1]
    buf = buf0 if layer % 2 == 0 else buf1
    lo, hi = nnz_off[layer], nnz_off[layer + 1]
    return (n_out, data[lo:hi], indices[lo:hi], indptr[ptr_off[layer]:ptr_off[layer + 1]],
            bias[r:r + n_out], layer < sizes.shape[0] - 2, buf[:n_out * B].reshape((n_out, B)))


@njit(**_OPTS)
def csr_forward(data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, HT, buf0, buf1, codes, n_threads):
    """Whole MLP in one call: ReLU on hidden layers, linear last layer. (n_in, B) -> (n_out, B).

    Layers are concatenated: layer l owns data/indices[nnz_off[l]:nnz_off[l+1]], row pointers
    indptr[ptr_off[l]:ptr_off[l+1]] (offsets into its own data, starting at 0) and
    bias[sum(sizes[1:l+1]):][:sizes[l+1]]. A layer is plain CSR when it has one column panel
    (panels[l] >= n_in, ptr_off[l+1] - ptr_off[l] == n_out + 1), else column-panelled (see
    csr_panels_matmul_bias_relu). buf0/buf1 hold >= max(hidden sizes) * B floats (ping-pong); the
    result is a view into one of them. codes[l] is layer l's kernel (SPMV, SPMV_PANELS, ROWS8,
    PANELS, TILES, TILE_PANELS) | PARALLEL when its rows run on all threads: the plan decides; n_threads is the
    caller's Numba thread count (panelled layers split their rows that many ways).
    """
    B = HT.shape[1]
    n_layers = sizes.shape[0] - 1
    h = HT
    out = HT
    r = 0
    for layer in range(n_layers):
        n_out, d, c, ip, b, relu, out = _layer(data, indices, indptr, bias, sizes, nnz_off, ptr_off,
                                               layer, r, buf0, buf1, B)
        kind, parallel = codes[layer] & (PARALLEL - 1), codes[layer] & PARALLEL
        if kind == PANELS:
            csr_panels_matmul_bias_relu(d, c, ip, panels[layer], b, h, out, relu, n_threads)
        elif kind == SPMV_PANELS:
            csr_panels_matvec_bias_relu(d, c, ip, panels[layer], b, h.reshape(h.shape[0]),
                                        out.reshape(n_out), relu)
        elif kind == SPMV:
            x = h.reshape(h.shape[0])
            o = out.reshape(n_out)
            if parallel:
                csr_matvec_bias_relu(d, c, ip, b, x, o, relu)
            else:
                csr_matvec_bias_relu_serial(d, c, ip, b, x, o, relu)
        elif kind == TILES or kind == TILE_PANELS:          # a plain layer: one panel (panels[layer] = n_in)
            csr_tile_panels_bias_relu(d, c, ip, panels[layer], b, h, out, relu, n_threads if parallel else 1)
        elif parallel:
            csr_matmul_bias_relu(d, c, ip, b, h, out, relu)
        else:
            csr_matmul_bias_relu_serial(d, c, ip, b, h, out, relu)
        h = out
        r += n_out
    return out


@njit(**_OPTS)
def _forward_serial(data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, HT, buf0, buf1, codes):
    """csr_forward on the calling thread alone (layout as there; codes PANELS, TILES, TILE_PANELS or ROWS8);
    (n_in, Bc) -> (n_out, Bc), a buffer view."""
    Bc = HT.shape[1]
    n_layers = sizes.shape[0] - 1
    h = HT
    r = 0
    for layer in range(n_layers):
        n_out, d, c, ip, b, relu, out = _layer(data, indices, indptr, bias, sizes, nnz_off, ptr_off,
                                               layer, r, buf0, buf1, Bc)
        kind = codes[layer] & (PARALLEL - 1)
        if kind == PANELS:
            csr_panels_matmul_bias_relu_serial(d, c, ip, panels[layer], b, h, out, relu)
        elif kind == TILES or kind == TILE_PANELS:  # register tiles (simd.py), a plain layer one panel
            _tile_panels(d, c, ip, panels[layer], b, h, out, 0, n_out, relu)
        else:
            csr_matmul_bias_relu_serial(d, c, ip, b, h, out, relu)
        h = out
        r += n_out
    return h


@njit(inline="always", **_OPTS)
def _csc_skip(d, c, ip, b, h, out, relu):
    """out = (relu)(W @ h + b[:, None]) from W's columns (CSC: ip over the inputs, c the output rows),
    skipping every input whose row of h is zero in all B columns; (n_in, B) -> (n_out, B)."""
    n_in, B = h.shape
    n_out = out.shape[0]
    for i in range(n_out):
        for q in range(B):
            out[i, q] = b[i]
    for j in range(n_in):
        hj = h[j]
        live = False
        for q in range(B):
            if hj[q] != 0:
                live = True
                break
        if not live:
            continue
        lo, hi = ip[j], ip[j + 1]
        dj, cj = d[lo:hi], c[lo:hi]
        if B == 1:
            x = hj[0]
            for k in range(hi - lo):
                out[cj[k], 0] += dj[k] * x
        else:
            for k in range(hi - lo):
                o = out[cj[k]]
                v = dj[k]
                for q in range(B):
                    o[q] += v * hj[q]
    if relu:
        for i in range(n_out):
            for q in range(B):
                if out[i, q] < 0:       # NaN stays NaN
                    out[i, q] = np.float32(0.0)


@njit(**_OPTS)
def csc_forward_skip(data, indices, indptr, bias, sizes, nnz_off, ptr_off, HT, buf0, buf1):
    """Whole MLP on CSC layers (activation sparsity): (n_in, B) -> (n_out, B), a buffer view.

    Layers are concatenated as in csr_forward, but each layer is stored by columns (indptr over its
    n_in inputs, indices the output rows): an input that is zero in every batch column costs one
    check, its weights are never read. One thread.
    """
    B = HT.shape[1]
    n_layers = sizes.shape[0] - 1
    h = HT
    r = 0
    for layer in range(n_layers):
        n_out, d, c, ip, b, relu, out = _layer(data, indices, indptr, bias, sizes, nnz_off, ptr_off,
                                               layer, r, buf0, buf1, B)
        _csc_skip(d, c, ip, b, h, out, relu)
        h = out
        r += n_out
    return h


@njit(inline="always", **_OPTS)
def _gather_columns(X, c0, HT):
    """HT[:, :w] = X[c0:c0 + w].T, zeros in HT[:, w:]; w = min(Bc, B - c0). (w, n_in) -> (n_in, Bc)."""
    n_in, Bc = HT.shape
    w = min(Bc, X.shape[0] - c0)
    Xc = X[c0:c0 + w]                 # slice first: X[c0 + j, i] pays a wraparound select (2x slower)
    for i in range(n_in):             # contiguous writes, strided reads: ~0.3 ns a float, as numpy's copy
        h = HT[i]
        for j in range(w):
            h[j] = Xc[j, i]
    for i in range(n_in):
        for j in range(w, Bc):
            HT[i, j] = np.float32(0.0)


@njit(parallel=True, **_OPTS)
def csr_forward_chunks(data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, X, HT, buf0, buf1,
                       codes, out, counter):
    """Whole MLP, batch split over threads: X (B, n_in) -> out (B, n_out), one parallel region.

    Layers as in csr_forward. The batch is cut into n_chunks = ceil(B / Bc) chunks of Bc columns;
    worker w (one per thread) owns HT[w] (n_in, Bc) and buf0[w], buf1[w] (>= max(hidden sizes) * Bc
    floats each), and claims chunks from `counter` (int64 (1,), reset here) until none is left, so
    a worker on a slower core runs fewer (this VM's two vCPUs ran up to 1.7x apart): transpose the
    chunk's rows of X into HT[w] (zero pad columns), run every layer on one thread, write the
    chunk's logits back. No barrier between layers, and a thread
    reads only its own activations (a 128-column chunk of a 1000-wide layer: 512 KB, not the 1 MB
    of a 256 batch that both threads read under a row split).
    """
    B = X.shape[0]
    n_workers, n_in, Bc = HT.shape
    n_chunks = -(-B // Bc)
    counter[0] = 0
    for w in prange(n_workers):
        while True:
            ch = claim(counter)
            if ch >= n_chunks:
                break
            c0 = ch * Bc
            _gather_columns(X, c0, HT[w])
            o = _forward_serial(data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, HT[w],
                                buf0[w], buf1[w], codes)                        # (n_out, Bc)
            oc = out[c0:c0 + Bc]                                                # (<= Bc, n_out)
            for j in range(oc.shape[0]):
                for i in range(oc.shape[1]):
                    oc[j, i] = o[i, j]
