"""Numba kernels for the dense net in one call, optionally skipping zero activations.

Weights are stored transposed, WT of shape (n_in, n_out) row-major, and activations row-major
(B, n), so a layer is

    out[:, c0:c1] = (relu)(bias[c0:c1] + sum_j H[:, j] (outer) WT[j, c0:c1])

summed over the inputs j in `idx`: every input, or (skipping) only those j where some row of
the batch has H[r, j] != 0 — MNIST pixels are ~80 % zeros and ReLU outputs often more than half,
and a skipped input is a row of WT never read. Output columns are cut into blocks of BLOCK
(a (B, BLOCK) tile stays in L1 while weight rows stream past it); blocks run on all threads when
the plan says so. Four inputs per pass over the tile (one load/store of out per 4 FMAs).

Which of these runs, and with how many threads, is the plan's decision (plan.py); nothing is
compiled at import; cache=True keeps the compiled code. A layer's blocks are a C callback the
driver calls by address (cfuncs), on the calling thread or from its parallel region: compiled once
(cold, batch 1, 2 threads: 7.3 -> 2.8 s on this VM).
"""
import numpy as np
from numba import njit

from sparsenet.cfuncs import callback, run, run_parts, threads

_OPTS = dict(cache=True, boundscheck=False, fastmath={"contract"})
BLOCK = 256         # output columns per tile: 16 rows x 1 KB in L1


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
def _tile(WT, b, H, idx, n_idx, out, c0, c1, relu):
    """out[:, c0:c1] = (relu)(b[c0:c1] + sum over idx[:n_idx] of H[:, j] (outer) WT[j, c0:c1])."""
    B = H.shape[0]
    bb = b[c0:c1]
    for r in range(B):
        o = out[r, c0:c1]
        for c in range(c1 - c0):
            o[c] = bb[c]
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
    """One layer: H (B, n_in) -> out (B, n_out), see the module docstring; the output blocks split
    over n_threads threads (Numba's count by default). The engine's layers run the same callback."""
    n = threads(n_threads)
    n_idx = _count_inputs(H, bool(skip), idx)
    run(_blocks_part.address(WT, b, H, idx, 0, out, True, 1, 0), n, WT, b, H, idx, n_idx, out, bool(relu), n)


def dense_layer_serial(WT, b, H, idx, out, skip, relu):
    """dense_layer on the calling thread."""
    dense_layer(WT, b, H, idx, out, skip, relu, 1)


@njit(**_OPTS)
def _count_inputs(H, skip, idx):
    return _inputs(H, skip, idx)


def dense_forward(weights, w_off, bias, sizes, X, buf0, buf1, idx, parallel, skip, logits, callbacks=None,
                  n_threads=None):
    """Whole MLP in one call (ReLU on hidden layers): X (B, n_in) -> logits (B, n_out), in place.

    Layer l's WT (sizes[l], sizes[l+1]) is weights[w_off[l]:w_off[l+1]] row-major, its bias
    bias[sum(sizes[1:l+1]):][:sizes[l+1]]. buf0/buf1 hold >= B * max(hidden sizes) floats, idx
    >= max(sizes[:-1]) int64. parallel[l]: layer l splits its output blocks over n_threads threads
    (Numba's count by default); skip: only inputs nonzero in some row of the batch are summed.
    callbacks: the caller's cache of callback addresses (cfuncs.Callback.address).
    """
    if not X.flags.writeable:
        X = X.copy()                    # every layer's input of one type (the callback's signature)
    part = _blocks_part.cached(callbacks)
    if not part:
        WT = weights[:sizes[0] * sizes[1]].reshape((sizes[0], sizes[1]))
        part = _blocks_part.address(WT, bias, X, idx, 0, logits, True, 1, 0, cache=callbacks)
    n = threads(n_threads)
    _forward(part, weights, w_off, bias, sizes, X, buf0, buf1, idx, parallel, bool(skip), logits, n)


@callback
def _blocks_part(WT, b, H, idx, n_idx, out, relu, n_parts, w):
    """Part w of n_parts of a layer's output blocks (dense_layer's), over the inputs idx[:n_idx]."""
    n_out = out.shape[1]
    n_blocks = -(-n_out // BLOCK)
    for blk in range(w * n_blocks // n_parts, (w + 1) * n_blocks // n_parts):
        c0 = blk * BLOCK
        _tile(WT, b, H, idx, n_idx, out, c0, min(c0 + BLOCK, n_out), relu)


@njit(parallel=True, **_OPTS)
def _forward(part, weights, w_off, bias, sizes, X, buf0, buf1, idx, parallel, skip, logits, n_threads):
    """dense_forward's layers; part: _blocks_part compiled for these arguments, on n_threads threads
    for a parallel layer."""
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
        run_parts(part, n_threads if parallel[layer] else 1, (WT, b, h, idx, n_idx, out, relu))
        h = out
        r += n_out
