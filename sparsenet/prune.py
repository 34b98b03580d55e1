"""Masks and pruning: pure functions (inputs are never modified, outputs never share their arrays).

Four methods, from the finest granularity to the coarsest. The first two have the semantics of
torch's reference pruning functions (torch is not a dependency):
- weight pruning = ``torch.nn.utils.prune.l1_unstructured(w, amount=s)`` on each weight matrix
  (``scope="global"``: ``global_unstructured`` over all prunable matrices together);
- neuron pruning = ``ln_structured(w, amount=s, n=2, dim=0)`` on each ``(n_out, n_in)`` matrix:
  the rows (neurons) with the smallest L2 norm of incoming weights are removed; their bias is
  masked too;
- N:M pruning (nm_mask): in every group of m consecutive weights of a row (along the input
  dimension) the n largest |w| are kept (2:4 is PyTorch's semi-structured sparsity). A width that
  is not a multiple of m ends in a tail group of t < m weights, treated as a group of m padded with
  zero columns that are never kept: it keeps min(n, t) weights (all of them when t <= n);
- block pruning (block_mask): each matrix is cut into r x c blocks (row-major from (0, 0); blocks
  on the bottom and right edges are partial when n_out % r or n_in % c != 0) and the
  round(s * n_blocks) blocks with the smallest L2 norm are removed, partial blocks ranked by the
  norm of the entries they hold (equal to the norm of the block zero-padded to r x c, which is
  what a BSR layout stores). Biases are kept.

Counts are exact: ``n_prune = round(s * size)`` with Python's ``round`` (banker's rounding, half to
even, as torch does for float amounts), and ties are broken by a stable sort (among equal values the
lowest flat index is pruned first; for N:M, the lowest column within the group; for blocks, the
lowest row-major block index), never by a quantile threshold. The output layer is not pruned
unless ``prune_output=True``.

A mask is a tuple per layer of ``(keep_weight bool (n_out, n_in), keep_bias bool (n_out,) or None)``.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Sequence

import numpy as np

from sparsenet.model import Layer, as_layers, layer_sizes
from sparsenet.names import NM_M, has_sparsity

SCOPES = ("layer", "global")
NEURON_SCOPES = ("layer",)          # neuron pruning ranks rows within each matrix only
DEFAULT_BLOCK = (8, 1)              # block shape of block_mask, make_masks("block") and the bsr engines: the
                                    # fastest of 8x1, 4x4, 4x1, 1x4 in the bsr kernels at batch 256 (issue 13 note)


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
    if not isinstance(prune_output, (bool, np.bool_)):      # "no" is truthy: it would prune the output layer
        raise ValueError(f"prune_output must be True or False, got {prune_output!r}")
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


def _takes_layers(fn):
    """fn's first argument (params) as Layers (model.as_layers): a (weight, bias) pair per layer works
    too, anything else is a TypeError naming the item, not an AttributeError from inside."""
    @functools.wraps(fn)
    def wrapper(params, *args, **kwargs):
        return fn(as_layers(params), *args, **kwargs)
    return wrapper


@_takes_layers
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


@_takes_layers
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


def _positive_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_nm(n, m) -> tuple:
    """Validate an N:M pattern (integers, 1 <= n <= m) once, at the entry; return (n, m) as ints."""
    n, m = _positive_int("n", n), _positive_int("m", m)
    if n > m:
        raise ValueError(f"n must be at most m (keep n of every m weights), got n={n}, m={m}")
    return n, m


def check_block(block) -> tuple:
    """Validate a block shape (a pair of positive integers (r, c)); return it as a tuple of ints."""
    if not isinstance(block, (tuple, list)) or len(block) != 2:
        raise ValueError(f"block must be a pair (r, c) of positive integers, got {block!r}")
    return _positive_int("block rows r", block[0]), _positive_int("block columns c", block[1])


def nm_keep(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """keep mask (n_out, n_in) of one matrix: per row, the n largest |w| of every m consecutive
    columns (ties: the lower column is pruned first); a tail group of t < m columns keeps min(n, t)."""
    n_out, n_in = w.shape
    mag = _magnitude(w)
    keep = np.ones(w.shape, dtype=bool)
    full = n_in - n_in % m
    if full and n < m:
        groups = mag[:, :full].reshape(n_out, full // m, m)              # (n_out, G, m)
        drop = np.argsort(groups, axis=-1, kind="stable")[..., :m - n]   # m - n smallest, stable
        kg = np.ones(groups.shape, dtype=bool)
        np.put_along_axis(kg, drop, False, axis=-1)
        keep[:, :full] = kg.reshape(n_out, full)
    t = n_in - full
    if t > n:                                                           # tail: keep min(n, t)
        drop = np.argsort(mag[:, full:], axis=-1, kind="stable")[:, :t - n]
        kt = np.ones((n_out, t), dtype=bool)
        np.put_along_axis(kt, drop, False, axis=-1)
        keep[:, full:] = kt
    return keep


@_takes_layers
def nm_mask(params: Sequence[Layer], n: int = 2, m: int = 4, prune_output: bool = False) -> tuple:
    """Masks keeping, per prunable matrix, the n largest |w| in every group of m consecutive weights
    of a row (N:M semi-structured sparsity; tail groups: see nm_keep). Biases are kept."""
    n, m = check_nm(n, m)
    masks = [_full_mask(layer) for layer in params]
    for i in _prunable(params, prune_output):
        masks[i] = (nm_keep(params[i].weight, n, m), masks[i][1])
    return tuple(masks)


def block_norms(w: np.ndarray, block: tuple) -> np.ndarray:
    """L2 norm of each r x c block of w, (ceil(n_out / r), ceil(n_in / c)) float64; edge blocks
    are partial (the norm of the entries they hold)."""
    r, c = block
    n_out, n_in = w.shape
    Rb, Cb = -(-n_out // r), -(-n_in // c)
    padded = np.zeros((Rb * r, Cb * c), np.float64)
    padded[:n_out, :n_in] = w
    return np.sqrt(np.square(padded).reshape(Rb, r, Cb, c).sum(axis=(1, 3)))


def block_keep(w: np.ndarray, sparsity: float, block: tuple) -> np.ndarray:
    """keep mask (n_out, n_in) of one matrix dropping the round(s * n_blocks) blocks of smallest L2
    norm (ties: the lowest row-major block index first)."""
    r, c = block
    norms = block_norms(w, block)                                      # (Rb, Cb)
    keep_blocks = _drop_smallest(norms.ravel(), n_to_prune(sparsity, norms.size)).reshape(norms.shape)
    keep = np.repeat(np.repeat(keep_blocks, r, axis=0), c, axis=1)
    return np.ascontiguousarray(keep[:w.shape[0], :w.shape[1]])


@_takes_layers
def block_mask(params: Sequence[Layer], sparsity, block=DEFAULT_BLOCK, prune_output: bool = False) -> tuple:
    """Masks dropping, per prunable matrix, the round(s * n_blocks) r x c blocks with the smallest
    L2 norm (partial edge blocks ranked by the norm of their entries). Biases are kept."""
    s = check_sparsity(sparsity)
    block = check_block(block)
    masks = [_full_mask(layer) for layer in params]
    for i in _prunable(params, prune_output):
        masks[i] = (block_keep(params[i].weight, s, block), masks[i][1])
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
    for i, mask in enumerate(masks):
        if not isinstance(mask, (tuple, list)) or len(mask) != 2:
            raise ValueError(f"layer {i}: expected a mask pair (keep_weight, keep_bias or None), got {type(mask).__name__}")
    for i, (layer, (keep_w, keep_b)) in enumerate(zip(params, masks)):
        _check_mask(i, "weight", keep_w, layer.weight)
        if keep_b is not None:
            if layer.bias is None:
                raise ValueError(f"layer {i}: a bias mask for a layer without bias")
            _check_mask(i, "bias", keep_b, layer.bias)


@_takes_layers
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


METHODS = ("weight", "neuron")          # the claim's two methods (any sparsity in [0, 1))
# the semi-structured and block methods; N:M fixes its sparsity by (n, m), so it exists only at
# some k of a sweep (names.has_sparsity); the study sweeps all four (names.GRANULARITIES)
STRUCTURED_METHODS = ("nm", "block")
ALL_METHODS = METHODS + STRUCTURED_METHODS


def nm_from_sparsity(sparsity, m: int) -> int:
    """n of an N:M pattern pruning round(s * m) of every m weights: m - round(s * m) (>= 1)."""
    s = check_sparsity(sparsity)
    _, m = check_nm(1, m)
    n = m - n_to_prune(s, m)
    if n < 1:
        raise ValueError(f"sparsity {s} prunes all {m} weights of every group (n = 0); "
                         f"choose a larger m or a sparsity below {(m - 0.5) / m}")
    return n


@_takes_layers
def make_masks(params: Sequence[Layer], method: str, sparsity, scope: str = "layer",
               prune_output: bool = False, *, n=None, m: int = NM_M, block=DEFAULT_BLOCK,
               nm_nearest: bool = False) -> tuple:
    """Masks for one method (see ALL_METHODS) at one sparsity. `scope` is weight pruning's
    (see SCOPES); the other methods rank within each matrix only ("layer").

    "nm": keep n of every m, n = m - s * m (2:4 at s=0.5, 1:4 at s=0.75; an explicit n must agree
    with the sparsity); a sparsity no N:M of this m has (0.3 with m = 4) is refused, unless
    nm_nearest (gradual pruning's ramp: the nearest pattern, m - round(s * m)). "block": r x c
    blocks, block=(r, c).
    """
    if method == "weight":
        return weight_mask(params, sparsity, scope=scope, prune_output=prune_output)
    if method not in ALL_METHODS:
        raise ValueError(f"method must be one of {ALL_METHODS}, got {method!r}")
    if scope not in NEURON_SCOPES:
        raise ValueError(f"scope for {method} pruning must be one of {NEURON_SCOPES}, got {scope!r}")
    if method == "neuron":
        return neuron_mask(params, sparsity, prune_output=prune_output)
    if method == "block":
        return block_mask(params, sparsity, block=block, prune_output=prune_output)
    n_s = nm_from_sparsity(sparsity, m)
    if not nm_nearest and not has_sparsity(method, check_sparsity(sparsity), m):   # 0.749 is not 1:4's 0.75
        allowed = ", ".join(f"{(m - k) / m:g} ({k}:{m})" for k in range(m, 0, -1))
        raise ValueError(f"sparsity {check_sparsity(sparsity):g} is not an N:M sparsity with m={m} (N:M prunes "
                         f"m - n of every m weights): choose one of {allowed}")
    if n is not None and check_nm(n, m)[0] != n_s:
        raise ValueError(f"n={n} with m={m} prunes {m - n} of every {m} weights, but sparsity "
                         f"{check_sparsity(sparsity)} prunes {m - n_s}; pass n or the sparsity that matches")
    return nm_mask(params, n_s, m, prune_output=prune_output)


@_takes_layers
def weight_prune(params: Sequence[Layer], sparsity, scope: str = "layer",
                 prune_output: bool = False) -> tuple:
    """Magnitude (L1 unstructured) pruning; see weight_mask."""
    return apply_masks(params, weight_mask(params, sparsity, scope=scope, prune_output=prune_output))


@_takes_layers
def neuron_prune(params: Sequence[Layer], sparsity, prune_output: bool = False) -> tuple:
    """Neuron (L2 structured, rows) pruning; see neuron_mask."""
    return apply_masks(params, neuron_mask(params, sparsity, prune_output=prune_output))


@_takes_layers
def nm_prune(params: Sequence[Layer], n: int = 2, m: int = 4, prune_output: bool = False) -> tuple:
    """N:M semi-structured pruning; see nm_mask."""
    return apply_masks(params, nm_mask(params, n, m, prune_output=prune_output))


@_takes_layers
def block_prune(params: Sequence[Layer], sparsity, block=DEFAULT_BLOCK, prune_output: bool = False) -> tuple:
    """Block pruning (r x c blocks by L2 norm); see block_mask."""
    return apply_masks(params, block_mask(params, sparsity, block=block, prune_output=prune_output))


@_takes_layers
def shrink_masked(params: Sequence[Layer], masks: Sequence[tuple]) -> tuple:
    """(small, small_masks, kept): apply_masks(params, masks) without the hidden neurons the masks
    remove, for training with the masks held fixed at the smaller net's cost (neuron pruning at 90 %
    trains a net of a tenth the width).

    A hidden neuron is removed when its mask keeps none of its weights and its bias is absent or
    masked out: it outputs ReLU(0) = 0 before and during training (its weights stay zero), so its
    column in the next layer never counts and gets no gradient. `kept` holds the kept rows of each
    layer (all for the output layer): expand_masked(small, kept, apply_masks(params, masks)) puts a
    trained small net back into the original shapes.
    """
    _check_masks(params, masks)
    small, small_masks, kept = [], [], []
    cols = None                                              # the kept columns of this layer
    last = len(params) - 1
    for i, (layer, (keep_w, keep_b)) in enumerate(zip(params, masks)):
        keep_w = np.asarray(keep_w, bool)
        rows = np.ones(keep_w.shape[0], bool)
        if i < last:
            if layer.bias is None or keep_b is not None:
                rows = keep_w.any(axis=1) | (False if keep_b is None else np.asarray(keep_b, bool))
        net = apply_masks((layer,), ((keep_w, keep_b),))[0]
        w, kw = net.weight[rows], keep_w[rows]
        if cols is not None:
            w, kw = w[:, cols], kw[:, cols]
        kb = None if keep_b is None else np.asarray(keep_b, bool)[rows]
        small.append(Layer(np.ascontiguousarray(w), None if net.bias is None else net.bias[rows]))
        small_masks.append((np.ascontiguousarray(kw), kb))
        kept.append(rows)
        cols = rows
    return tuple(small), tuple(small_masks), tuple(kept)


def expand_masked(small: Sequence[Layer], kept: Sequence[np.ndarray], like: Sequence[Layer]) -> tuple:
    """shrink_masked's `small` net (e.g. trained) in the shapes of `like`, the masked net it came from:
    the kept rows and columns from `small`, every other entry as in `like` (the removed neurons' zero
    rows and biases, and their columns downstream, which never count): the same predictions as
    `small`, and what training the masked net itself would leave there."""
    out, cols = [], None
    for layer, rows, ref in zip(small, kept, like):
        w = np.array(ref.weight, copy=True)
        w[np.ix_(rows, cols if cols is not None else np.ones(ref.weight.shape[1], bool))] = layer.weight
        b = None
        if ref.bias is not None:
            b = np.array(ref.bias, copy=True)
            b[rows] = layer.bias
        out.append(Layer(w, b))
        cols = rows
    return tuple(out)


def _dead_rows(layer: Layer) -> np.ndarray:
    dead = ~np.any(layer.weight != 0, axis=1)                 # (n_out,)
    if layer.bias is not None:
        dead &= layer.bias == 0
    return dead


@_takes_layers
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


@_takes_layers
def describe_shrink(params: Sequence[Layer]) -> dict:
    """Layer sizes before and after shrink, and how many units each layer loses."""
    before = layer_sizes(params)
    after = layer_sizes(shrink(params))
    return {"sizes_before": list(before), "sizes_after": list(after),
            "removed": [int(a - b) for a, b in zip(before, after)]}


@_takes_layers
def sparsity_of(params: Sequence[Layer]) -> dict:
    """Fraction of zero weights per layer and in total (biases not counted), with size/size_nz."""
    size = [int(layer.weight.size) for layer in params]
    size_nz = [int(np.count_nonzero(layer.weight)) for layer in params]
    per_layer = [1.0 - nz / n if n else 0.0 for n, nz in zip(size, size_nz)]
    total_n = sum(size)
    total = 1.0 - sum(size_nz) / total_n if total_n else 0.0
    return {"layers": per_layer, "total": total, "size": size, "size_nz": size_nz}
