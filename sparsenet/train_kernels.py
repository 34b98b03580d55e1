"""Numba kernels for the training step: raw arrays in, preallocated out; matmuls stay in BLAS.

Each kernel has a NumPy twin with the same signature (`*_numpy`): the twin is the oracle in the
tests and the baseline in `bench/bench_train.py`. Nothing is compiled at import; the first call
compiles (or loads from Numba's on-disk cache). An empty `bias` / `keep` array (size 0) means
"no bias" / "no mask".

error_model="numpy": Numba's default ("python") checks every division for zero to raise
ZeroDivisionError, and that branch stops LLVM from vectorising the loop (Adam: 5.7 -> 1.1 ms
per 2.4M weights, measured). Kernels are serial: at these sizes (128 x 1000 activations, 1M-weight
updates) a second thread gains little on an idle machine and loses badly on a shared one, where
it fights BLAS's threads for the cores.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["bias_relu", "relu_backward", "softmax_xent", "adam_update", "sgd_update"]


# --- forward: z + bias, then ReLU --------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def bias_relu(z, bias, out):
    """out = max(z + bias, 0). z, out (B, n) float32; bias (n,) or (0,).

    out may be z, but an aliased output does not vectorise; the trainer passes a separate one."""
    n_rows, n_cols = z.shape
    has_bias = bias.size > 0
    for i in range(n_rows):
        for j in range(n_cols):
            t = z[i, j] + bias[j] if has_bias else z[i, j]
            out[i, j] = 0.0 if t < 0 else t            # NaN passes through, as in np.maximum


def bias_relu_numpy(z, bias, out):
    if bias.size:
        np.add(z, bias, out=out)
        np.maximum(out, 0.0, out=out)
    else:
        np.maximum(z, 0.0, out=out)


# --- backward: gradient through the ReLU ------------------------------------------------------

@njit(cache=True, error_model="numpy")
def relu_backward(dout, act, out):
    """out = dout where act > 0 else 0; act is the ReLU output. All (B, n); out may be dout
    (correct, but an aliased output does not vectorise: 30x slower measured)."""
    n_rows, n_cols = dout.shape
    for i in range(n_rows):
        for j in range(n_cols):
            out[i, j] = dout[i, j] * np.float32(act[i, j] > 0)    # branch-free: vectorises


def relu_backward_numpy(dout, act, out):
    np.multiply(dout, act > 0, out=out)


# --- loss: softmax cross-entropy and its gradient in one pass ---------------------------------

@njit(cache=True, error_model="numpy")
def softmax_xent(logits, labels, dlogits):
    """Mean cross-entropy of softmax(logits) against labels; writes dL/dlogits (already / B).

    logits, dlogits (B, C) float32; labels (B,) integer. Returns (loss, n_correct).
    The row maximum is subtracted before exp, so large logits do not overflow.
    """
    n_rows, n_cls = logits.shape
    inv_n = 1.0 / n_rows
    loss = 0.0
    n_correct = 0
    for i in range(n_rows):
        m = logits[i, 0]
        arg = 0
        for j in range(1, n_cls):
            if logits[i, j] > m:
                m = logits[i, j]
                arg = j
        s = 0.0
        for j in range(n_cls):
            e = math.exp(logits[i, j] - m)
            dlogits[i, j] = e
            s += e
        yi = labels[i]
        loss += math.log(s) - (logits[i, yi] - m)
        n_correct += arg == yi
        scale = inv_n / s
        for j in range(n_cls):
            dlogits[i, j] *= scale
        dlogits[i, yi] -= inv_n
    return loss * inv_n, n_correct


def softmax_xent_numpy(logits, labels, dlogits):
    n = logits.shape[0]
    rows = np.arange(n)
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=dlogits)
    s = dlogits.sum(axis=1, keepdims=True)
    loss = float(np.log(s[:, 0]).sum() - z[rows, labels].sum()) / n
    dlogits /= s * n
    dlogits[rows, labels] -= 1.0 / n
    return loss, int((logits.argmax(axis=1) == labels).sum())


# --- optimiser updates (flat views of one parameter array) ------------------------------------

@njit(cache=True, error_model="numpy")
def adam_update(w, g, m, v, keep, lr, beta1, beta2, eps, bc1, bc2, wd):
    """One Adam(W) step in place on flat arrays. bc1, bc2 = 1 - beta**t; wd is decoupled decay.

    Where keep is False the gradient is dropped and w, m, v are set to exactly zero.
    """
    masked = keep.size > 0
    b1, b2 = np.float32(beta1), np.float32(beta2)        # float32 arithmetic: vectorises wider
    c1, c2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
    step = np.float32(lr / bc1)
    inv_bc2 = np.float32(1.0 / bc2)
    decay = np.float32(1.0 - lr * wd)
    eps32 = np.float32(eps)
    one = np.float32(1.0)
    for i in range(w.size):
        k = (one if keep[i] else np.float32(0.0)) if masked else one   # branch-free: vectorises
        gi = g[i] * k
        mi = (b1 * m[i] + c1 * gi) * k
        vi = (b2 * v[i] + c2 * gi * gi) * k
        m[i] = mi
        v[i] = vi
        w[i] = (decay * w[i] - step * mi / (np.sqrt(vi * inv_bc2) + eps32)) * k


def adam_update_numpy(w, g, m, v, keep, lr, beta1, beta2, eps, bc1, bc2, wd):
    if keep.size:
        g = g * keep
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    if wd:
        w -= (lr * wd) * w
    w -= (lr / bc1) * m / (np.sqrt(v / bc2) + eps)
    if keep.size:
        w *= keep
        m *= keep
        v *= keep


@njit(cache=True, error_model="numpy")
def sgd_update(w, g, buf, keep, lr, momentum, wd):
    """One SGD step with heavy-ball momentum (buf = momentum * buf + g; w -= lr * buf), in place."""
    masked = keep.size > 0
    mu, lr32, decay = np.float32(momentum), np.float32(lr), np.float32(1.0 - lr * wd)
    one = np.float32(1.0)
    for i in range(w.size):
        k = (one if keep[i] else np.float32(0.0)) if masked else one
        b = (mu * buf[i] + g[i]) * k
        buf[i] = b
        w[i] = (decay * w[i] - lr32 * b) * k


def sgd_update_numpy(w, g, buf, keep, lr, momentum, wd):
    if keep.size:
        g = g * keep
    buf *= momentum
    buf += g
    if wd:
        w -= (lr * wd) * w
    w -= lr * buf
    if keep.size:
        w *= keep
        buf *= keep
