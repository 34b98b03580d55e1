"""Numba kernels for the dense net in one call, optionally skipping zero activations.

Weights are stored transposed, WT of shape (n_in, n_out) row-major, and activations row-major
(B, n), so a layer is

    out[:, c0:c1] = (relu)(bias[c0:c1] + sum_j H[:, j] (outer) WT[j, c0:c1])

summed over the inputs j in `idx`: every input, or (skipping) only those j where some row of the
batch has H[r, j] != 0 — MNIST pixels are ~80 % zeros and ReLU outputs often more than half, and a
skipped input is a row of WT never read. A layer's output columns are cut into as few equal blocks
as keep a (B, block) tile within TILE_BYTES of L1 while the weight rows stream past it: at batch 1 a
block is a whole row of WT (1000 columns, 4 KB read contiguously), where 256-column blocks read 1 KB
pieces 4 KB apart. Where the plan splits a layer over the threads, it splits its inputs (each thread
streams whole rows of WT into a (B, n_out) part of its own; `_reduce` adds the parts, the bias and
the ReLU), not its output columns (each thread then reads pieces of every row, and at B > 1 the
rows' borders share cache lines both threads write). Four inputs per pass over the tile (one
load/store of out per 4 FMAs).

Measured against the previous kernel (256-column blocks, split by columns), the engine's whole
forward on the He-initialised 784-1000-1000-500-200-10 net, paired rounds (40) in one process, Intel
Xeon VM (family 6 model 207), AVX-512 code / AVX2 code (NUMBA_CPU_NAME=haswell), batch 1, 2, 4:
one thread x1.16, x1.12, x1.07 / x1.19, x1.15, x1.10 faster; two threads x1.40, x1.36, x1.33 /
x1.41, x1.33, x1.39 (the column split with whole-row blocks had been x0.77-0.86 at batch 2-4).

Which of these runs, and with how many threads, is the plan's decision (plan.py); nothing is
compiled at import; cache=True keeps the compiled code. A layer's blocks are a C callback the
driver calls by address (cfuncs), on the calling thread or from its parallel region: compiled once
(cold, batch 1, 2 threads: 7.3 -> 2.8 s on this VM).
"""
import numpy as np
from numba import njit

from sparsenet.cfuncs import callback, run, run_parts, threads

_OPTS = dict(cache=True, boundscheck=False, fastmath={"contract"})
TILE_BYTES = 16 * 1024   # an output tile (B rows x its columns) stays in the L1 (>= 32 KB on x86 cores)


@njit(inline="always", **_OPTS)
def _inputs(H, skip, idx):
    """Fill idx with the inputs to sum (all, or those nonzero in some row); their count."""
    B, n_in = H.shape
    n = np.int64(0)                     # not a literal 0: typing would compile the callee for one
    for j in range(n_in):
        keep = not skip
        if skip:
            for r in range(B):
                if H[r, j] != 0:
                    keep = True
                    break
        if keep:
            idx[n] = j
            n += 1
    return n


@njit(inline="always", **_OPTS)
def _tile(WT, b, H, idx, n_idx, out, c0, c1, relu, with_bias):
    """out[:, c0:c1] = (relu)(b[c0:c1] + sum over idx[:n_idx] of H[:, j] (outer) WT[j, c0:c1]); no
    bias (0) unless with_bias."""
    B = H.shape[0]
    bb = b[c0:c1]
    for r in range(B):
        o = out[r, c0:c1]
        for c in range(c1 - c0):
            o[c] = bb[c] if with_bias else np.float32(0.0)
    n4 = n_idx - n_idx % 4
    for k in range(0, n4, 4):
        j0, j1, j2, j3 = idx[k], idx[k + 1], idx[k + 2], idx[k + 3]
        w0, w1, w2, w3 = WT[j0, c0:c1], WT[j1, c0:c1], WT[j2, c0:c1], WT[j3, c0:c1]
        for r in range(B):
            h = H[r]
            h0, h1, h2, h3 = h[j0], h[j1], h[j2], h[j3]
            o = out[r, c0:c1]
            for c in range(c1 - c0):
                o[c] += (h0 * w0[c] + h1 * w1[c]) + (h2 * w2[c] + h3 * w3[c])
    for k in range(n4, n_idx):
        j = idx[k]
        w = WT[j, c0:c1]
        for r in range(B):
            hj = H[r, j]
            o = out[r, c0:c1]
            for c in range(c1 - c0):
                o[c] += hj * w[c]
    if relu:
        for r in range(B):
            o = out[r, c0:c1]
            for c in range(c1 - c0):
                if o[c] < 0:            # NaN stays NaN, as numpy.maximum(x, 0) keeps it
                    o[c] = np.float32(0.0)


def dense_layer(WT, b, H, idx, out, skip, relu, n_threads=None):
    """One layer: H (B, n_in) -> out (B, n_out), see the module docstring; its inputs split over
    n_threads threads (Numba's count by default). The engine's layers run the same callback."""
    n = threads(n_threads)
    n_idx = _count_inputs(H, bool(skip), idx)
    partial = parts_buffer(n, out.shape[0], WT.shape)
    run(_layer_part.address(WT, b, H, idx, 0, out, True, partial, 1, 0), n, WT, b, H, idx, n_idx, out, bool(relu),
        partial, n)
    if n > 1:
        _reduce_parts(partial, n, b, out, bool(relu))


def dense_layer_serial(WT, b, H, idx, out, skip, relu):
    """dense_layer on the calling thread."""
    dense_layer(WT, b, H, idx, out, skip, relu, 1)


@njit(**_OPTS)
def _count_inputs(H, skip, idx):
    return _inputs(H, skip, idx)


def dense_forward(weights, w_off, bias, sizes, X, buf0, buf1, idx, parallel, skip, logits, callbacks=None,
                  n_threads=None, partial=None):
    """Whole MLP in one call (ReLU on hidden layers): X (B, n_in) -> logits (B, n_out), in place.

    Layer l's WT (sizes[l], sizes[l+1]) is weights[w_off[l]:w_off[l+1]] row-major, its bias
    bias[sum(sizes[1:l+1]):][:sizes[l+1]]. buf0/buf1 hold >= B * max(hidden sizes) floats, idx
    >= max(sizes[:-1]) int64. parallel[l]: layer l splits its inputs over n_threads threads (Numba's
    count by default), each part summed into `partial` (>= n_threads * B * max(sizes[1:]) float32;
    allocated here when None); skip: only inputs nonzero in some row of the batch are summed.
    callbacks: the caller's cache of callback addresses (cfuncs.Callback.address).
    """
    if not X.flags.writeable:
        X = X.copy()                    # every layer's input of one type (the callback's signature)
    n = threads(n_threads)
    if partial is None:
        partial = parts_buffer(n, X.shape[0], sizes)
    part = _layer_part.cached(callbacks)
    if not part:
        WT = weights[:sizes[0] * sizes[1]].reshape((sizes[0], sizes[1]))
        part = _layer_part.address(WT, bias, X, idx, 0, logits, True, partial, 1, 0, cache=callbacks)
    _forward(part, weights, w_off, bias, sizes, X, buf0, buf1, idx, parallel, bool(skip), logits, n, partial)


def parts_buffer(n_threads: int, B: int, sizes) -> np.ndarray:
    """The scratch a parallel layer's parts are summed in (dense_forward's `partial`): one (B, n_out)
    part a thread for the widest layer; empty on one thread."""
    return np.empty(n_threads * B * int(max(sizes[1:])) if n_threads > 1 else 0, np.float32)


@njit(inline="always", **_OPTS)
def _blocks(WT, b, H, idx, n_idx, out, relu, with_bias):
    """out = (relu)((b) + sum over idx[:n_idx] of H[:, j] (outer) WT[j, :]), in as few equal column
    blocks as keep a (B, block) tile within TILE_BYTES."""
    B, n_out = out.shape
    n_blocks = max(1, -(-(n_out * B * 4) // TILE_BYTES))
    for blk in range(n_blocks):
        c0, c1 = n_out * blk // n_blocks, n_out * (blk + 1) // n_blocks
        if c1 > c0:
            _tile(WT, b, H, idx, n_idx, out, c0, c1, relu, with_bias)


@callback
def _layer_part(WT, b, H, idx, n_idx, out, relu, partial, n_parts, w):
    """Part w of n_parts of a layer (dense_layer's): all of it into out when n_parts is 1, else the
    inputs idx[k0:k1] of part w into partial[w] (B, n_out), no bias, no ReLU (_reduce adds the parts)."""
    if n_parts == 1:
        _blocks(WT, b, H, idx, n_idx, out, relu, True)
        return
    B, n_out = out.shape
    k0, k1 = w * n_idx // n_parts, (w + 1) * n_idx // n_parts
    own = partial[w * B * n_out:(w + 1) * B * n_out].reshape((B, n_out))
    _blocks(WT, b, H, idx[k0:], k1 - k0, own, False, False)


@njit(inline="always", **_OPTS)
def _reduce(partial, n_parts, b, out, relu):
    """out = (relu)(b + the sum of the n_parts (B, n_out) parts at the head of partial)."""
    B, n_out = out.shape
    size = B * n_out
    for r in range(B):
        o = out[r]
        for c in range(n_out):
            v = b[c]
            for w in range(n_parts):
                v += partial[w * size + r * n_out + c]
            o[c] = np.float32(0.0) if relu and v < 0 else v     # NaN stays NaN


@njit(**_OPTS)
def _reduce_parts(partial, n_parts, b, out, relu):
    _reduce(partial, n_parts, b, out, relu)


@njit(parallel=True, **_OPTS)
def _forward(part, weights, w_off, bias, sizes, X, buf0, buf1, idx, parallel, skip, logits, n_threads, partial):
    """dense_forward's layers; part: _layer_part compiled for these arguments, a layer's inputs on
    n_threads threads for a parallel layer (then the parts summed)."""
    B = X.shape[0]
    n_layers = sizes.shape[0] - 1
    h = X
    r = 0
    for layer in range(n_layers):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        WT = weights[w_off[layer]:w_off[layer + 1]].reshape((n_in, n_out))
        b = bias[r:r + n_out]
        last = layer == n_layers - 1
        if last:
            out = logits
        else:
            out = (buf0 if layer % 2 == 0 else buf1)[:B * n_out].reshape((B, n_out))
        n_idx = _inputs(h, skip, idx)
        relu = not last
        n = n_threads if parallel[layer] else 1
        run_parts(part, n, (WT, b, h, idx, n_idx, out, relu, partial))
        if n > 1:
            _reduce(partial, n, b, out, relu)
        h = out
        r += n_out
