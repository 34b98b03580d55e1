"""MLP parameters (a tuple of layers), initialisation and the plain NumPy forward pass.

The forward pass here is the reference every inference engine is tested against.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

DEFAULT_SIZES = (784, 1000, 1000, 500, 200, 10)


class Layer(NamedTuple):
    """One fully connected layer: y = x @ weight.T + bias (nn.Linear convention)."""

    weight: np.ndarray            # (n_out, n_in) float32
    bias: Optional[np.ndarray]    # (n_out,) float32, or None (the reference net has no biases)


Params = tuple  # tuple[Layer, ...]; hidden layers use ReLU, the last one gives logits


def as_layers(params) -> Params:
    """The parameter chain as a tuple of Layers: each item a Layer (kept as it is) or a (weight, bias)
    pair (made a Layer of those arrays, not copies); else a TypeError naming the first item that is
    neither. What the pruning functions take (engines check more: check_params)."""
    try:
        items = tuple(params)
    except TypeError:
        raise TypeError(f"params must be a sequence of Layer(weight, bias), got {type(params).__name__}") from None
    layers = []
    for i, layer in enumerate(items):
        if not isinstance(layer, Layer):
            if not isinstance(layer, (tuple, list)) or len(layer) != 2 or layer[0] is None:
                raise TypeError(f"params[{i}]: expected a Layer(weight, bias) or a (weight, bias) pair, "
                                f"got {type(layer).__name__}")
            layer = Layer(np.asarray(layer[0]), None if layer[1] is None else np.asarray(layer[1]))
        weight = layer.weight
        if getattr(weight, "ndim", None) != 2 or weight.dtype.kind not in "biuf":
            raise TypeError(f"params[{i}]: weight must be a 2-d real array (n_out, n_in), got "
                            f"{getattr(weight, 'dtype', type(weight).__name__)} of shape {np.shape(weight)}")
        layers.append(layer)
    return tuple(layers)


def layer_sizes(params: Sequence[Layer]) -> tuple:
    """(n_in, n_hidden..., n_out) of a parameter tuple."""
    return (params[0].weight.shape[1],) + tuple(layer.weight.shape[0] for layer in params)


def check_params(params: Sequence[Layer]) -> Params:
    """The parameter chain as float32 Layers, or a ValueError naming the first inconsistent layer.

    Every engine checks its parameters here (a kernel reading a layer of the wrong width would read
    out of bounds): each weight a 2-d real (n_out, n_in) array whose n_in is the previous n_out, each
    bias None or of shape (n_out,), all finite. The layers returned are C-contiguous float32 copies.
    """
    params = tuple(params)
    if not params:
        raise ValueError("params must hold at least one layer")
    checked, n_prev = [], None
    for i, layer in enumerate(params):
        if not isinstance(layer, tuple) or len(layer) != 2:
            raise ValueError(f"layer {i}: expected a Layer(weight, bias), got {type(layer).__name__}")
        weight, bias = (None if a is None else np.asarray(a) for a in layer)
        if weight is None or weight.ndim != 2 or 0 in weight.shape or weight.dtype.kind not in "biuf":
            raise ValueError(f"layer {i}: weight must be a non-empty 2-d real array (n_out, n_in), got "
                             f"{'None' if weight is None else f'{weight.dtype} of shape {weight.shape}'}")
        n_out, n_in = weight.shape
        if n_prev is not None and n_in != n_prev:
            raise ValueError(f"layer {i}: weight has {n_in} inputs but layer {i - 1} has {n_prev} outputs")
        if bias is not None and (bias.shape != (n_out,) or bias.dtype.kind not in "biuf"):
            raise ValueError(f"layer {i}: bias must be None or a real array of shape ({n_out},), got "
                             f"{bias.dtype} of shape {bias.shape}")
        for name, a in (("weight", weight), ("bias", bias)):
            if a is not None and not np.isfinite(a).all():
                raise ValueError(f"layer {i}: {name} holds NaN or inf (a diverged net?); engines that skip pruned "
                                 f"weights and dense BLAS would answer differently")
        # copies of their own: an engine must not change when the caller later writes its arrays
        checked.append(Layer(np.array(weight, dtype=np.float32, order="C"),
                             None if bias is None else np.array(bias, dtype=np.float32)))
        n_prev = n_out
    return tuple(checked)


def he_init(sizes: Sequence[int] = DEFAULT_SIZES, bias: bool = False, seed: int = 0) -> Params:
    """He-normal weights (std = sqrt(2 / n_in)), zero biases if wanted; float32."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"layer sizes must be at least two positive integers, got {sizes}")
    rng = np.random.default_rng(seed)
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        weight = (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        layers.append(Layer(weight, np.zeros(n_out, np.float32) if bias else None))
    return tuple(layers)


def forward(params: Sequence[Layer], X: np.ndarray) -> np.ndarray:
    """Reference forward pass: ReLU hidden layers, linear output. (B, n_in) -> (B, n_out) logits."""
    h = np.asarray(X, dtype=np.float32)
    last = len(params) - 1
    for i, layer in enumerate(params):
        h = h @ layer.weight.T                 # (B, n_in) -> (B, n_out)
        if layer.bias is not None:
            h = h + layer.bias
        if i < last:
            h = np.maximum(h, 0.0)
    return h


def activation_sparsity(params: Sequence[Layer], X: np.ndarray, batch: int = 1) -> list:
    """Per layer input, the fraction of its inputs an engine that skips zero inputs can skip:
    inputs that are zero in every row of a batch of `batch` consecutive rows of X, averaged over the
    batches. [layer 0 (the data), layer 1 (ReLU of layer 0), ...]; (N, n_in) -> list of len(params).
    """
    h = np.asarray(X, dtype=np.float32)
    batch = int(batch)
    if h.ndim != 2 or h.shape[0] < batch or batch < 1:
        raise ValueError(f"need X of shape (N >= {batch}, n_in) and batch >= 1, got {h.shape}, batch {batch}")
    n = h.shape[0] - h.shape[0] % batch
    out = []
    last = len(params) - 1
    for i, layer in enumerate(params):
        zero = (h[:n] == 0).reshape(n // batch, batch, h.shape[1]).all(axis=1)   # (n_batches, n_in)
        out.append(float(zero.mean()))
        if i < last:
            h = h @ layer.weight.T
            if layer.bias is not None:
                h = h + layer.bias
            h = np.maximum(h, 0.0)
    return out


def _forward_cache(params: Sequence[Layer], X: np.ndarray):
    """Forward pass keeping each layer's input for backprop; dtype follows the weights."""
    h = np.asarray(X, dtype=params[0].weight.dtype)
    inputs = []
    last = len(params) - 1
    for i, layer in enumerate(params):
        inputs.append(h)
        h = h @ layer.weight.T                 # (B, n_in) -> (B, n_out)
        if layer.bias is not None:
            h = h + layer.bias
        if i < last:
            h = np.maximum(h, 0.0)
    return inputs, h


def _check_labels(y: np.ndarray, n_rows: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n_rows,):
        raise ValueError(f"labels must have shape ({n_rows},), got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    return y.astype(np.intp, copy=False)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, stable: the row maximum is subtracted before exp. (B, C) -> (B, C)."""
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def loss_and_grads(params: Sequence[Layer], X: np.ndarray, y: np.ndarray):
    """Mean softmax cross-entropy over the batch and its gradient for every layer.

    Plain NumPy, the oracle for the fused training step in `train.py`. Returns
    (loss: float, grads: tuple of Layer) with grads shaped like params (bias None where absent).
    """
    inputs, logits = _forward_cache(params, X)             # logits (B, C)
    n = logits.shape[0]
    y = _check_labels(y, n, logits.shape[1])
    logp = log_softmax(logits)
    rows = np.arange(n)
    loss = -logp[rows, y].mean()
    d = np.exp(logp)                                        # softmax (B, C)
    d[rows, y] -= 1.0
    d /= n                                                  # dL/dlogits
    grads = [None] * len(params)
    for i in range(len(params) - 1, -1, -1):
        layer, a = params[i], inputs[i]
        grads[i] = Layer(d.T @ a,                           # (n_out, B) @ (B, n_in)
                         d.sum(axis=0) if layer.bias is not None else None)
        if i > 0:
            d = (d @ layer.weight) * (a > 0)                # back through the ReLU of layer i-1
    return float(loss), tuple(grads)


def predict(params: Sequence[Layer], X: np.ndarray, batch: int = 10000) -> np.ndarray:
    """Predicted class per row, computed `batch` rows at a time. (N, n_in) -> (N,) int64."""
    X = np.asarray(X)
    out = np.empty(X.shape[0], dtype=np.int64)
    for s in range(0, X.shape[0], batch):
        out[s:s + batch] = forward(params, X[s:s + batch]).argmax(axis=1)
    return out


def evaluate(params: Sequence[Layer], X: np.ndarray, y: np.ndarray, batch: int = 10000):
    """(accuracy, mean cross-entropy loss) over X, computed `batch` rows at a time."""
    X = np.asarray(X)
    n_classes = params[-1].weight.shape[0]
    y = _check_labels(y, X.shape[0], n_classes)
    if X.shape[0] == 0:
        return float("nan"), float("nan")
    n_correct, loss_sum = 0, 0.0
    for s in range(0, X.shape[0], batch):
        logits = forward(params, X[s:s + batch])
        yb = y[s:s + batch]
        n_correct += int((logits.argmax(axis=1) == yb).sum())
        loss_sum -= float(log_softmax(logits.astype(np.float64))[np.arange(len(yb)), yb].sum())
    return n_correct / X.shape[0], loss_sum / X.shape[0]
