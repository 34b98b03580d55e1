"""Numba kernels for CSR inference: raw arrays in, preallocated output out.

Activations are kept transposed, HT of shape (n_features, B), C-contiguous, so output row i is
    out[i, :] = relu(bias[i] + sum_k data[k] * HT[indices[k], :])
and the inner loop is a contiguous axpy over the batch. At batch 1 the same formula is a sparse
dot product per row (SpMV).

Which kernel runs for a layer is decided by the plan (plan.py) and passed in as a code (SPMV, TILES,
TILE_PANELS | PARALLEL); nothing here re-decides. Batches reach the kernels padded to a multiple of 16
columns (the engine's buffers; pad columns zero). Rules the loops follow (figures: docs/perf-notes.md):
- rows are sliced (d = data[lo:hi]) and walked from 0, indices are unsigned: Numba adds a
  wraparound select to data[k] when it cannot prove k >= 0;
- SpMM keeps a row's 64, 32 or 16 batch columns in registers (simd.csr_rows64/32/16) from its first
  non-zero to its store;
- column panels keep a panel's slice of HT in L1 for dense-ish layers;
- callers pass 64-byte aligned HT/out rows;
- SpMV keeps 4 partial sums; only FMA contraction is allowed (no reassociation: results stay
  within float32 rounding of the reference and NaN/inf propagate);
- csr_forward_chunks splits the batch into chunks the threads claim one at a time (simd.claim),
  each chunk through every layer on one thread, transposing its own columns (contiguous writes,
  strided reads); a worker is a C callback called by address from a parallel region whose body is
  that call (cfuncs: compiled once, not again in every parallel driver's modules).
Nothing is compiled at import: every kernel compiles lazily on first call (cache=True keeps it).
"""
import numpy as np
from numba import njit

from sparsenet.cfuncs import callback, run, run_parts, threads
from sparsenet.simd import claim, csr_rows16, csr_rows32, csr_rows64

_OPTS = dict(cache=True, boundscheck=False, fastmath={"contract"})

# Per-layer kernel codes of csr_forward / csr_forward_chunks, chosen by the plan (plan.py), never here.
# (codes 1-3, whole-row kernels on unpadded batches, were removed in session 9: padded register tiles ran
# 2-5x faster at every batch size they had served; docs/perf-notes.md)
SPMV = 0          # batch 1: csr_matvec_bias_relu(_serial)
TILES = 4         # register tiles (simd.py): 32 columns, then 16; a batch (or chunk) of a multiple of 16 columns
TILE_PANELS = 5   # TILES over column panels (csr_engine.panel_layout): dense-ish layers (same kernel, several panels)
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


def csr_matvec_bias_relu(data, indices, indptr, bias, x, out, relu, n_threads=None):
    """out = (relu)(W @ x + bias); (n_in,) -> (n_out,); rows split over n_threads threads (Numba's
    count by default). csr_forward's layers run the same callback."""
    n = threads(n_threads)
    args = (data, indices, indptr, bias, x, out, bool(relu))
    run(_spmv_part.address(*args, 1, 0), n, *args, n)


def csr_matvec_bias_relu_serial(data, indices, indptr, bias, x, out, relu):
    """Single-threaded csr_matvec_bias_relu: no parallel-region cost for small layers."""
    csr_matvec_bias_relu(data, indices, indptr, bias, x, out, relu, 1)


@callback
def _spmv_part(data, indices, indptr, bias, x, out, relu, n_parts, w):
    """Rows of part w of n_parts of a layer at batch 1 (SPMV)."""
    n_out = out.shape[0]
    for i in range(w * n_out // n_parts, (w + 1) * n_out // n_parts):
        lo, hi = indptr[i], indptr[i + 1]
        s = bias[i] + _row_dot(data[lo:hi], indices[lo:hi], x)
        out[i] = max(s, np.float32(0.0)) if relu else s


@njit(inline="always", **_OPTS)
def _tile_panels(d, c, ip, panel, b, h, out, r0, r1, relu):
    """Rows r0:r1 of out = (relu)(W @ h + b) on register tiles (64 columns while 64 are left, then 32,
    then 16; B % 16 == 0) over column panels of `panel` inputs (csr_engine.panel_layout: panel p is
    a CSR block with local column indices, its row pointers at ip[p * (n_out + 1):][:n_out + 1]; a
    plain CSR layer is one panel, panel >= n_in): for each tile the rows add their segment of one
    panel after another, that panel's rows of h staying in L1 (a row's tile loaded and stored once a
    panel; the first panel starts from 0 and the last adds the bias and applies relu). The plan
    sizes the panels for the tiles a call runs (plan.panel_width, plan.wide_panel_width). Codes TILES
    and TILE_PANELS both run it."""
    n_out, B = out.shape
    n_panels = ip.shape[0] // (n_out + 1)
    col = 0
    while col < B:
        left = B - col
        cols = 64 if left >= 64 else (32 if left >= 32 else 16)
        for p in range(n_panels):
            H = h[p * panel:(p + 1) * panel]
            q = ip[p * (n_out + 1):(p + 1) * (n_out + 1)]
            last = relu and p == n_panels - 1
            if cols == 64:
                csr_rows64(d, c, q, b, H, out, r0, r1, B, B, col, p == 0, last)
            elif cols == 32:
                csr_rows32(d, c, q, b, H, out, r0, r1, B, B, col, p == 0, last)
            else:
                csr_rows16(d, c, q, b, H, out, r0, r1, B, B, col, p == 0, last)
        col += cols


def csr_tile_panels_bias_relu(data, indices, indptr, panel, bias, HT, out, relu, n_blocks):
    """out = (relu)(W @ HT + bias[:, None]) on register tiles over column panels (_tile_panels), rows
    cut into n_blocks blocks over the threads (one parallel region); (n_in, B) -> (n_out, B), B >= 16.
    csr_forward's layers run the same callback."""
    nb = max(1, min(int(n_blocks), out.shape[0]))
    args = (data, indices, indptr, int(panel), bias, HT, out, bool(relu))
    run(_tiles_part.address(*args, 1, 0), nb, *args, nb)


@callback
def _tiles_part(data, indices, indptr, panel, bias, HT, out, relu, n_parts, w):
    """Row block w of n_parts of a layer on register tiles over column panels (TILES, TILE_PANELS)."""
    n_out = out.shape[0]
    _tile_panels(data, indices, indptr, panel, bias, HT, out, w * n_out // n_parts, (w + 1) * n_out // n_parts,
                 relu)


@njit(inline="always", **_OPTS)
def _layer(data, indices, indptr, bias, sizes, nnz_off, ptr_off, layer, r, buf0, buf1, B):
    """Layer `layer` of the concatenated net (layout: csr_forward) and its output block in the
    ping-pong buffers: (n_out, data, indices, indptr, bias, relu, out (n_out, B))."""
    n_out = sizes[layer + 1]
    buf = buf0 if layer % 2 == 0 else buf1
    lo, hi = nnz_off[layer], nnz_off[layer + 1]
    return (n_out, data[lo:hi], indices[lo:hi], indptr[ptr_off[layer]:ptr_off[layer + 1]],
            bias[r:r + n_out], layer < sizes.shape[0] - 2, buf[:n_out * B].reshape((n_out, B)))


def csr_forward(data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, HT, buf0, buf1, codes, n_threads,
                callbacks=None):
    """Whole MLP in one call: ReLU on hidden layers, linear last layer. (n_in, B) -> (n_out, B).

    Layers are concatenated: layer l owns data/indices[nnz_off[l]:nnz_off[l+1]], row pointers
    indptr[ptr_off[l]:ptr_off[l+1]] (offsets into its own data, starting at 0) and
    bias[sum(sizes[1:l+1]):][:sizes[l+1]]. A layer is plain CSR when it has one column panel
    (panels[l] >= n_in, ptr_off[l+1] - ptr_off[l] == n_out + 1), else column-panelled (see
    _tile_panels). buf0/buf1 hold >= max(hidden sizes) * B floats (ping-pong); the result is a view
    into one of them. codes[l] is layer l's kernel (SPMV at B == 1, else TILES or TILE_PANELS, B a
    multiple of 16) | PARALLEL when its rows run on all threads (n_threads row blocks): the plan decides.
    callbacks: the caller's cache of callback addresses (cfuncs.Callback.address).
    """
    key = (csr_forward, (int(codes[0]) & (PARALLEL - 1)) == SPMV)    # one kind for every layer: the usual case
    pair = callbacks.get(key) if callbacks is not None else None
    if pair is None:
        kinds = codes & (PARALLEL - 1)
        spmv = tiles = 0                        # the address of a kind no layer runs is never called
        if (kinds == SPMV).any():
            spmv = _spmv_part.address(data, indices, indptr, bias, buf0, buf1, True, 1, 0, cache=callbacks)
        if (kinds != SPMV).any():
            tiles = _tiles_part.address(data, indices, indptr, 0, bias, HT, HT, True, 1, 0, cache=callbacks)
        pair = (spmv, tiles)
        if callbacks is not None and ((kinds == SPMV).all() or (kinds != SPMV).all()):
            callbacks[key] = pair
    spmv, tiles = pair
    return _forward(spmv, tiles, data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, HT, buf0, buf1,
                    codes, int(n_threads))


@njit(parallel=True, **_OPTS)
def _forward(spmv, tiles, data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, HT, buf0, buf1, codes,
             n_threads):
    """csr_forward's layers; spmv, tiles: _spmv_part and _tiles_part compiled for these arguments."""
    B = HT.shape[1]
    n_layers = sizes.shape[0] - 1
    h = HT
    out = HT
    r = 0
    for layer in range(n_layers):
        n_out, d, c, ip, b, relu, out = _layer(data, indices, indptr, bias, sizes, nnz_off, ptr_off,
                                               layer, r, buf0, buf1, B)
        kind, parallel = codes[layer] & (PARALLEL - 1), codes[layer] & PARALLEL
        n = max(1, min(n_threads, n_out)) if parallel else 1
        if kind == SPMV:
            run_parts(spmv, n, (d, c, ip, b, h.reshape(h.shape[0]), out.reshape(n_out), relu))
        else:                                   # TILES or TILE_PANELS: a plain layer is one panel
            run_parts(tiles, n, (d, c, ip, panels[layer], b, h, out, relu))
        h = out
        r += n_out
    return out


@njit(inline="always", **_OPTS)
def _forward_serial(data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, HT, buf0, buf1):
    """csr_forward on the calling thread alone, every layer on register tiles (TILES or TILE_PANELS:
    panels[l] says which; Bc a multiple of 16); (n_in, Bc) -> the last layer's (n_out, Bc) in buf0 or
    buf1 (_layer's view)."""
    Bc = HT.shape[1]
    n_layers = sizes.shape[0] - 1
    h = HT
    r = 0
    for layer in range(n_layers):
        n_out, d, c, ip, b, relu, out = _layer(data, indices, indptr, bias, sizes, nnz_off, ptr_off,
                                               layer, r, buf0, buf1, Bc)
        _tile_panels(d, c, ip, panels[layer], b, h, out, 0, n_out, relu)     # TILES or TILE_PANELS
        h = out
        r += n_out


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
def _store_logits(out, logits):
    """logits[0, :] = out[:n_out] of a batch-1 forward, as a loop: a slice assignment compiles Numba's
    generic setitem (~3 s cold). The SELL drivers (sell_kernels, sell8_kernels) share it."""
    for j in range(logits.shape[1]):
        logits[0, j] = out[j]


@njit(inline="always", **_OPTS)
def _claim_chunk(counter, B, Bc):
    """First column of the next chunk of Bc columns of a batch of B, claimed (simd.claim); -1: none left."""
    c0 = claim(counter) * Bc
    return c0 if c0 < B else -1


@njit(inline="always", **_OPTS)
def _store_columns(out, c0, o, n_out):
    """out[c0:c0 + w, :n_out] = o[:n_out, :w].T, w = min(Bc, B - c0): a chunk's logits written back."""
    oc = out[c0:c0 + o.shape[1]]
    for j in range(oc.shape[0]):
        for i in range(n_out):
            oc[j, i] = o[i, j]


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


def csr_forward_chunks(data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, X, HT, buf0, buf1,
                       out, counter, callbacks=None):
    """Whole MLP, batch split over threads: X (B, n_in) -> out (B, n_out), one parallel region.

    Layers as in csr_forward. The batch is cut into n_chunks = ceil(B / Bc) chunks of Bc columns (a
    multiple of 16: every layer runs register tiles; the last chunk's pad columns are zero); worker w
    (one per thread) owns HT[w] (n_in, Bc) and buf0[w], buf1[w] (>= max(hidden sizes) * Bc floats
    each), and claims chunks from `counter` (int64 (1,), reset here) until none is left, so
    a worker on a slower core runs fewer (this VM's two vCPUs ran up to 1.7x apart): transpose the
    chunk's rows of X into HT[w] (zero pad columns), run every layer on one thread, write the
    chunk's logits back. No barrier between layers, and a thread reads only its own activations (a
    32-column chunk of a 1000-wide layer: 128 KB, not the 1 MB of a 256 batch that both threads read
    under a row split).
    """
    args = (data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, X, HT, buf0, buf1, out, counter)
    counter[0] = 0
    run(_worker.address(*args, 0, cache=callbacks), HT.shape[0], *args)


@callback
def _worker(data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, X, HT, buf0, buf1, out, counter, w):
    """Worker w of csr_forward_chunks: claims chunks until none is left."""
    B = X.shape[0]
    Bc = HT.shape[2]
    c0 = _claim_chunk(counter, B, Bc)
    while c0 >= 0:
        _gather_columns(X, c0, HT[w])
        _forward_serial(data, indices, indptr, bias, sizes, nnz_off, ptr_off, panels, HT[w], buf0[w], buf1[w])
        o = _layer(data, indices, indptr, bias, sizes, nnz_off, ptr_off, sizes.shape[0] - 2, 0, buf0[w], buf1[w],
                   Bc)[6]                                                   # (n_out, Bc)
        _store_columns(out, c0, o, out.shape[1])
        c0 = _claim_chunk(counter, B, Bc)
