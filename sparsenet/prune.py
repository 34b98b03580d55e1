"""Masks and pruning: pure functions (inputs are never modified, outputs never share their arrays).

Two methods, with the semantics of torch's reference pruning functions (torch is not a dependency):
- weight pruning = ``torch.nn.utils.prune.l1_unstructured(w, amount=s)`` on each weight matrix
  (``scope="global"``: ``global_unstructured`` over all prunable matrices together);
- neuron pruning = ``ln_structured(w, amount=s, n=2, dim=0)`` on each ``(n_out, n_in)`` matrix:
  the rows (neurons) with the smallest L2 norm of incoming weights are removed; their bias is
  masked too.

Counts are exact: ``n_prune = round(s * size)`` with Python's ``round`` (banker's rounding, half to
even, as torch does for float amounts), and ties are broken by a stable sort (among equal values the
lowest flat index is pruned first), never by a quantile threshold. The output layer is not pruned
unless ``prune_output=True``.

A mask is a tuple per layer of ``(keep_weight bool (n_out, n_in), keep_bias bool (n_out,) or None)``.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np

from sparsenet.model import Layer, layer_sizes

SCOPES = ("layer", "global")
NEURON_SCOPES = ("layer",)          # neuron pruning ranks rows within each matrix only


def check_sparsity(sparsity) -> float:
    """Validate a sparsity (a real number, 0 <= s < 1) once, at the entry; return it as a float."""
    if isinstance(sparsity, (bool, np.bool_)) or not isinstance(sparsity, numbers.Real):
        raise ValueError(f"sparsity must be a real number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not math.isfinite(s) or not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


def n_to_prune(sparsity: float, size: int) -> int:
    """How many of `size` items to prune: round(s * size), Python's half-to-even round (as torch)."""
    return int(round(sparsity * size))


def _prunable(params, prune_output: bool) -> list:
    last = len(params) - 1
    return [i for i in range(len(params)) if prune_output or i < last]


def _full_mask(layer: Layer) -> tuple:
    keep_b = None if layer.bias is None else np.ones(layer.bias.shape, dtype=bool)
    return np.ones(layer.weight.shape, dtype=bool), keep_b


def _magnitude(w: np.ndarray) -> np.ndarray:
    """|w| in a type that holds it: for signed integers the unsigned type of the same width
    (np.abs wraps iinfo.min to itself, e.g. |-128| = -128 in int8; as uint8 it reads 128)."""
    a = np.abs(w)
    if a.dtype.kind == "i":
        return a.view(np.dtype(f"u{a.dtype.itemsize}"))
    return a


def _drop_smallest(scores: np.ndarray, n_prune: int) -> np.ndarray:
    """keep mask (flat): False for the n_prune smallest scores; ties go to the lowest index.

    The same set as ``np.argsort(scores, kind="stable")[:n_prune]`` (the tests check it), found in
    O(n): the n_prune-th smallest value v by partition, everything below v, then the first
    remaining entries equal to v in index order.
    """
    keep = np.ones(scores.size, dtype=bool)
    if n_prune <= 0:
        return keep
    if n_prune >= scores.size:
        keep[:] = False
        return keep
    v = np.partition(scores, n_prune - 1)[n_prune - 1]
    if np.isnan(v):                                   # NaN scores: let the sort order them (last)
        keep[np.argsort(scores, kind="stable")[:n_prune]] = False
        return keep
    below = scores < v
    keep[below] = False
    n_ties = n_prune - int(np.count_nonzero(below))
    keep[np.flatnonzero(scores == v)[:n_ties]] = False
    return keep


def weight_mask(params: Sequence[Layer], sparsity, scope: str = "layer",
                prune_output: bool = False) -> tuple:
    """Masks dropping the round(s * size) smallest |w| per matrix (scope="layer") or over all
    prunable matrices ranked together (scope="global"). Biases are kept."""
    s = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    masks = [_full_mask(layer) for layer in params]
    idx = _prunable(params, prune_output)
    if scope == "layer":
        for i in idx:
            w = params[i].weight
            keep = _drop_smallest(_magnitude(w).ravel(), n_to_prune(s, w.size))
            masks[i] = (keep.reshape(w.shape), masks[i][1])
    elif idx:
        # one ranking over the concatenated |w| (layer order, then flat index breaks ties)
        scores = np.concatenate([_magnitude(params[i].weight).ravel() for i in idx])
        keep = _drop_smallest(scores, n_to_prune(s, scores.size))
        offset = 0
        for i in idx:
            shape = params[i].weight.shape
            size = params[i].weight.size
            masks[i] = (keep[offset:offset + size].reshape(shape), masks[i][1])
            offset += size
    return tuple(masks)


def neuron_mask(params: Sequence[Layer], sparsity, prune_output: bool = False) -> tuple:
    """Masks dropping, per prunable matrix, the round(s * n_out) rows with the smallest L2 norm of
    incoming weights (the row and its bias entry). Torch's ln_structured(n=2, dim=0) equivalent."""
    s = check_sparsity(sparsity)
    masks = [_full_mask(layer) for layer in params]
    for i in _prunable(params, prune_output):
        w = params[i].weight                                  # (n_out, n_in)
        norms = np.linalg.norm(w.astype(np.float64), axis=1)  # (n_out,)
        keep_rows = _drop_smallest(norms, n_to_prune(s, w.shape[0]))
        keep_w = np.repeat(keep_rows[:, None], w.shape[1], axis=1)
        keep_b = None if params[i].bias is None else keep_rows.copy()
        masks[i] = (keep_w, keep_b)
    return tuple(masks)


def _check_mask(i: int, name: str, keep, target: np.ndarray) -> None:
    if not isinstance(keep, np.ndarray) or keep.dtype != np.bool_:
        raise ValueError(f"layer {i}: {name} mask must be a bool ndarray, got "
                         f"{getattr(keep, 'dtype', type(keep).__name__)}")
    if keep.shape != target.shape:
        raise ValueError(f"layer {i}: {name} mask shape {keep.shape} != {name} shape {target.shape}")


def _check_masks(params: Sequence[Layer], masks: Sequence[tuple]) -> None:
    """ValueError unless there is one (keep_w, keep_b) per layer: keep_w a bool array of the weight's
    shape, keep_b None or a bool array of the bias's shape (None keeps the whole bias)."""
    if len(masks) != len(params):
        raise ValueError(f"{len(masks)} masks for {len(params)} layers")
    for i, (layer, (keep_w, keep_b)) in enumerate(zip(params, masks)):
        _check_mask(i, "weight", keep_w, layer.weight)
        if keep_b is not None:
            if layer.bias is None:
                raise ValueError(f"layer {i}: a bias mask for a layer without bias")
            _check_mask(i, "bias", keep_b, layer.bias)


def apply_masks(params: Sequence[Layer], masks: Sequence[tuple]) -> tuple:
    """New parameters with masked-out entries set to zero (inputs untouched, arrays not shared).
    Masks as made by weight_mask/neuron_mask (checked: see _check_masks)."""
    _check_masks(params, masks)
    out = []
    for layer, (keep_w, keep_b) in zip(params, masks):
        w = np.where(keep_w, layer.weight, 0).astype(layer.weight.dtype)
        b = layer.bias
        if b is not None:
            b = b.copy() if keep_b is None else np.where(keep_b, b, 0).astype(b.dtype)
        out.append(Layer(w, b))
    return tuple(out)


METHODS = ("weight", "neuron")


def make_masks(params: Sequence[Layer], method: str, sparsity, scope: str = "layer",
               prune_output: bool = False) -> tuple:
    """Masks for one method ("weight" or "neuron") at one sparsity. `scope` is weight pruning's
    (see SCOPES); neuron pruning supports only "layer" (NEURON_SCOPES)."""
    if method == "weight":
        return weight_mask(params, sparsity, scope=scope, prune_output=prune_output)
    if method == "neuron":
        if scope not in NEURON_SCOPES:
            raise ValueError(f"scope for neuron pruning must be one of {NEURON_SCOPES}, got {scope!r}")
        return neuron_mask(params, sparsity, prune_output=prune_output)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def weight_prune(params: Sequence[Layer], sparsity, scope: str = "layer",
                 prune_output: bool = False) -> tuple:
    """Magnitude (L1 unstructured) pruning; see weight_mask."""
    return apply_masks(params, weight_mask(params, sparsity, scope=scope, prune_output=prune_output))


def neuron_prune(params: Sequence[Layer], sparsity, prune_output: bool = False) -> tuple:
    """Neuron (L2 structured, rows) pruning; see neuron_mask."""
    return apply_masks(params, neuron_mask(params, sparsity, prune_output=prune_output))


def _dead_rows(layer: Layer) -> np.ndarray:
    dead = ~np.any(layer.weight != 0, axis=1)                 # (n_out,)
    if layer.bias is not None:
        dead &= layer.bias == 0
    return dead


def shrink(params: Sequence[Layer]) -> tuple:
    """A smaller dense network with the same predictions: hidden neurons whose weight row is all zero
    and whose bias is zero (or None) are removed, i.e. those rows of W[l] (and entries of b[l]) and
    the matching columns of W[l+1]. Input and output units are never removed.

    Layers are processed in order, so a neuron whose only nonzero incoming weights came from removed
    neurons is removed too (its row is all zero once those columns are gone). A hidden layer whose
    neurons are all removed keeps zero width: W[l] is (0, n_in) and W[l+1] is (n_out, 0), which the
    forward pass handles ((B, 0) @ (0, n) gives zeros). Exactness: a removed neuron outputs
    ReLU(0) = 0, so its column contributes nothing downstream.
    """
    out = []
    keep_prev = None                                          # columns to keep in this layer
    last = len(params) - 1
    for i, layer in enumerate(params):
        w, b = layer.weight, layer.bias
        if keep_prev is not None:
            w = w[:, keep_prev]
        layer = Layer(np.array(w, copy=True), None if b is None else b.copy())
        if i < last:
            keep = ~_dead_rows(layer)
            layer = Layer(layer.weight[keep], None if layer.bias is None else layer.bias[keep])
            keep_prev = keep
        out.append(layer)
    return tuple(out)


def describe_shrink(params: Sequence[Layer]) -> dict:
    """Layer sizes before and after shrink, and how many units each layer loses."""
    before = layer_sizes(params)
    after = layer_sizes(shrink(params))
    return {"sizes_before": list(before), "sizes_after": list(after),
            "removed": [int(a - b) for a, b in zip(before, after)]}


def sparsity_of(params: Sequence[Layer]) -> dict:
    """Fraction of zero weights per layer and in total (biases not counted), with size/size_nz."""
    size = [int(layer.weight.size) for layer in params]
    size_nz = [int(np.count_nonzero(layer.weight)) for layer in params]
    per_layer = [1.0 - nz / n if n else 0.0 for n, nz in zip(size, size_nz)]
    total_n = sum(size)
    total = 1.0 - sum(size_nz) / total_n if total_n else 0.0
    return {"layers": per_layer, "total": total, "size": size, "size_nz": size_nz}
