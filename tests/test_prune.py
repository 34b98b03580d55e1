"""Pruning against its definition: exact counts, smallest-first, input unchanged, s=0 identity,
masked and shrunk predictions equal."""
import copy
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsenet.model import Layer, forward, he_init, layer_sizes
from sparsenet.prune import (
    ALL_METHODS, DEFAULT_BLOCK, METHODS, SCOPES, STRUCTURED_METHODS, _drop_smallest, apply_masks, block_mask,
    block_norms, block_prune, check_block, check_nm, check_sparsity, describe_shrink, make_masks,
    expand_masked, n_to_prune, neuron_mask, neuron_prune, nm_mask, nm_prune, shrink, shrink_masked, sparsity_of,
    weight_mask, weight_prune,
)

SWEEP = (0, .25, .5, .6, .7, .8, .9, .95, .97, .99)
SIZES = (30, 40, 35, 20, 10)


def small_net(bias=False, seed=0, sizes=SIZES):
    params = he_init(sizes, bias=bias, seed=seed)
    if bias:  # nonzero biases so masking them matters
        rng = np.random.default_rng(seed + 100)
        params = tuple(Layer(l.weight, rng.standard_normal(l.bias.shape).astype(np.float32))
                       for l in params)
    return params


def deep_copy(params):
    return tuple(Layer(l.weight.copy(), None if l.bias is None else l.bias.copy()) for l in params)


def assert_params_equal(a, b):
    assert len(a) == len(b)
    for la, lb in zip(a, b):
        np.testing.assert_array_equal(la.weight, lb.weight)
        assert (la.bias is None) == (lb.bias is None)
        if la.bias is not None:
            np.testing.assert_array_equal(la.bias, lb.bias)


def zero_rows(w):
    return int(np.sum(~np.any(w != 0, axis=1)))


# --- validation -----------------------------------------------------------------------------

NOT_REAL = [True, False, "0.5", None, np.bool_(True), 0.5 + 0j, [0.5]]
OUT_OF_RANGE = [-0.1, 1, 1.0, 1.5, float("nan"), float("inf"), -float("inf"), np.float32(1.0)]


@pytest.mark.parametrize("bad", NOT_REAL + OUT_OF_RANGE)
def test_bad_sparsity(bad):
    what = "a real number in [0, 1)" if any(bad is x for x in NOT_REAL) else "in [0, 1)"
    message = f"^{re.escape(f'sparsity must be {what}, got {bad!r}')}$"
    params = small_net()
    with pytest.raises(ValueError, match=message):
        check_sparsity(bad)
    for fn in (weight_prune, neuron_prune, weight_mask, neuron_mask):
        with pytest.raises(ValueError, match=message):
            fn(params, bad)
    for method in METHODS:
        with pytest.raises(ValueError, match=message):
            make_masks(params, method, bad)


@pytest.mark.parametrize("good", [0, 0.0, 0.5, np.float32(0.25), np.float64(0.99), 0.999999])
def test_good_sparsity(good):
    assert check_sparsity(good) == float(good)


def test_bad_scope():
    for fn in (weight_prune, weight_mask):
        with pytest.raises(ValueError, match=r"^scope must be one of \('layer', 'global'\), got 'net'$"):
            fn(small_net(), 0.5, scope="net")


def test_rounding_is_half_to_even_like_torch():
    # torch: round(amount * size) with Python's round
    assert n_to_prune(0.5, 5) == 2        # 2.5 -> 2
    assert n_to_prune(0.5, 7) == 4        # 3.5 -> 4
    assert n_to_prune(0.25, 10) == 2      # 2.5 -> 2
    assert n_to_prune(0.99, 10) == 10     # 9.9 -> 10


# --- exact counts ---------------------------------------------------------------------------

@pytest.mark.parametrize("s", SWEEP)
def test_weight_prune_exact_count_and_smallest(s):
    params = small_net(bias=True)
    pruned = weight_prune(params, s)
    for i, (old, new) in enumerate(zip(params, pruned)):
        zeros = new.weight == 0
        if i == len(params) - 1:
            np.testing.assert_array_equal(new.weight, old.weight)   # output untouched by default
            continue
        assert zeros.sum() == round(s * old.weight.size)
        # every pruned |w| is <= every kept |w| (definition of l1_unstructured)
        if 0 < zeros.sum() < zeros.size:
            assert np.abs(old.weight[zeros]).max() <= np.abs(old.weight[~zeros]).min()
        np.testing.assert_array_equal(new.weight[~zeros], old.weight[~zeros])
        np.testing.assert_array_equal(new.bias, old.bias)          # weight pruning keeps biases


@pytest.mark.parametrize("s", SWEEP)
def test_neuron_prune_exact_count_and_smallest_norm(s):
    params = small_net(bias=True)
    pruned = neuron_prune(params, s)
    for i, (old, new) in enumerate(zip(params, pruned)):
        if i == len(params) - 1:
            np.testing.assert_array_equal(new.weight, old.weight)
            np.testing.assert_array_equal(new.bias, old.bias)
            continue
        dead = ~np.any(new.weight != 0, axis=1)
        assert dead.sum() == round(s * old.weight.shape[0])
        np.testing.assert_array_equal(new.bias[dead], 0)
        np.testing.assert_array_equal(new.bias[~dead], old.bias[~dead])
        np.testing.assert_array_equal(new.weight[~dead], old.weight[~dead])
        norms = np.linalg.norm(old.weight, axis=1)
        if 0 < dead.sum() < dead.size:
            assert norms[dead].max() <= norms[~dead].min()


@pytest.mark.parametrize("s", SWEEP)
def test_global_scope_count(s):
    params = small_net()
    pruned = weight_prune(params, s, scope="global")
    prunable = pruned[:-1]
    total = sum(l.weight.size for l in prunable)
    n_zero = sum(int(np.sum(l.weight == 0)) for l in prunable)
    assert n_zero == round(s * total)
    np.testing.assert_array_equal(pruned[-1].weight, params[-1].weight)
    if 0 < n_zero < total:
        pruned_abs = np.concatenate([np.abs(o.weight[n.weight == 0])
                                     for o, n in zip(params[:-1], prunable)])
        kept_abs = np.concatenate([np.abs(o.weight[n.weight != 0])
                                   for o, n in zip(params[:-1], prunable)])
        assert pruned_abs.max() <= kept_abs.min()


@pytest.mark.parametrize("s", [0.5, 0.9])
def test_prune_output(s):
    params = small_net(bias=True)
    w = weight_prune(params, s, prune_output=True)[-1]
    assert np.sum(w.weight == 0) == round(s * params[-1].weight.size)
    n = neuron_prune(params, s, prune_output=True)[-1]
    assert zero_rows(n.weight) == round(s * params[-1].weight.shape[0])
    # global scope with the output included
    g = weight_prune(params, s, scope="global", prune_output=True)
    total = sum(l.weight.size for l in params)
    assert sum(int(np.sum(l.weight == 0)) for l in g) == round(s * total)


# --- ties, degenerate shapes ----------------------------------------------------------------

@pytest.mark.parametrize("s", [0.25, 0.5, 0.9])
def test_ties_exact_and_deterministic(s):
    params = (Layer(np.ones((8, 6), np.float32), None), Layer(np.ones((3, 8), np.float32), None))
    a, b = weight_prune(params, s), weight_prune(params, s)
    assert np.sum(a[0].weight == 0) == round(s * 48)
    assert_params_equal(a, b)
    # stable order: the lowest flat indices go first
    flat = a[0].weight.ravel()
    assert np.all(flat[:round(s * 48)] == 0) and np.all(flat[round(s * 48):] == 1)
    n = neuron_prune(params, s)
    assert zero_rows(n[0].weight) == round(s * 8)
    assert np.all(n[0].weight[:round(s * 8)] == 0)


@pytest.mark.parametrize("shape", [(1, 7), (7, 1), (1, 1)])
@pytest.mark.parametrize("s", [0, 0.5, 0.99])
def test_one_row_one_column(shape, s):
    rng = np.random.default_rng(1)
    params = (Layer(rng.standard_normal(shape).astype(np.float32), None),
              Layer(rng.standard_normal((2, shape[0])).astype(np.float32), None))
    w = weight_prune(params, s)
    assert np.sum(w[0].weight == 0) == round(s * w[0].weight.size)
    n = neuron_prune(params, s)
    assert zero_rows(n[0].weight) == round(s * shape[0])
    X = rng.standard_normal((5, shape[1])).astype(np.float32)
    np.testing.assert_allclose(forward(shrink(n), X), forward(n, X), rtol=1e-5, atol=1e-6)


# --- purity ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [weight_prune, neuron_prune])
def test_input_unchanged_and_not_shared(fn):
    params = small_net(bias=True)
    before = deep_copy(params)
    out = fn(params, 0.5)
    assert_params_equal(params, before)
    for o in out:                       # writing into the output leaves the input alone
        o.weight[...] = 123.0
        o.bias[...] = 123.0
    assert_params_equal(params, before)
    shrunk = shrink(params)
    for o in shrunk:
        o.weight[...] = 7.0
    assert_params_equal(params, before)


def test_masks_not_modified():
    params = small_net(bias=True)
    masks = neuron_mask(params, 0.5)
    saved = copy.deepcopy(masks)
    apply_masks(params, masks)
    for (a, b), (c, d) in zip(masks, saved):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


@pytest.mark.parametrize("fn", [weight_prune, neuron_prune])
def test_zero_sparsity_is_identity(fn):
    params = small_net(bias=True)
    out = fn(params, 0)
    assert_params_equal(out, params)
    assert all(o.weight is not p.weight for o, p in zip(out, params))


def test_dtype_kept():
    params = small_net(bias=True)
    for fn in (weight_prune, neuron_prune):
        for o in fn(params, 0.5):
            assert o.weight.dtype == np.float32 and o.bias.dtype == np.float32
    for o in shrink(neuron_prune(params, 0.5)):
        assert o.weight.dtype == np.float32


# --- shrink ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("s", SWEEP)
def test_shrink_matches_masked(s, bias):
    params = small_net(bias=bias)
    pruned = neuron_prune(params, s)
    small = shrink(pruned)
    X = np.random.default_rng(2).standard_normal((16, SIZES[0])).astype(np.float32)
    np.testing.assert_allclose(forward(small, X), forward(pruned, X), rtol=1e-5, atol=1e-5)
    sizes = layer_sizes(small)
    assert sizes[0] == SIZES[0] and sizes[-1] == SIZES[-1]
    for n_old, n_new in zip(SIZES[1:-1], sizes[1:-1]):
        assert n_new == n_old - round(s * n_old)
    d = describe_shrink(pruned)
    assert d["sizes_before"] == list(SIZES) and d["sizes_after"] == list(sizes)


def test_shrink_keeps_neuron_with_nonzero_bias():
    params = small_net(bias=True)
    w0 = params[0].weight.copy()
    w0[3] = 0                                       # zero row but bias nonzero: not removable
    params = (Layer(w0, params[0].bias),) + params[1:]
    assert layer_sizes(shrink(params)) == SIZES


def test_shrink_whole_layer_removed():
    params = small_net()
    w1 = np.zeros_like(params[1].weight)            # every neuron of hidden layer 2 dead
    params = (params[0], Layer(w1, None)) + params[2:]
    small = shrink(params)
    assert layer_sizes(small)[2] == 0
    X = np.random.default_rng(3).standard_normal((4, SIZES[0])).astype(np.float32)
    out = forward(small, X)
    assert out.shape == (4, SIZES[-1])
    np.testing.assert_allclose(out, forward(params, X), atol=1e-6)
    assert layer_sizes(small)[-1] == SIZES[-1]      # never removes output units


def test_shrink_dense_is_copy():
    params = small_net(bias=True)
    assert_params_equal(shrink(params), params)


def test_sparsity_of():
    params = weight_prune(small_net(), 0.5)
    rep = sparsity_of(params)
    assert rep["layers"][:-1] == [0.5] * (len(params) - 1)
    assert rep["layers"][-1] == 0.0
    assert rep["size"] == [l.weight.size for l in params]
    total = sum(rep["size"]) - sum(rep["size_nz"])
    assert rep["total"] == pytest.approx(total / sum(rep["size"]))


# --- properties ----------------------------------------------------------------------------

shapes = st.lists(st.integers(1, 12), min_size=3, max_size=5)
sparsities = st.floats(0, 1, exclude_max=True, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(sizes=shapes, s=sparsities, seed=st.integers(0, 2**16), bias=st.booleans(),
       prune_output=st.booleans(), scope=st.sampled_from(["layer", "global"]))
def test_property_weight(sizes, s, seed, bias, prune_output, scope):
    params = small_net(bias=bias, seed=seed, sizes=sizes)
    before = deep_copy(params)
    out = weight_prune(params, s, scope=scope, prune_output=prune_output)
    assert_params_equal(params, before)
    idx = range(len(params)) if prune_output else range(len(params) - 1)
    if scope == "layer":
        for i in idx:   # he_init weights are nonzero a.s., so zeros are exactly the pruned ones
            assert np.sum(out[i].weight == 0) == round(s * params[i].weight.size)
    else:
        total = sum(params[i].weight.size for i in idx)
        assert sum(int(np.sum(out[i].weight == 0)) for i in idx) == round(s * total)


@settings(max_examples=60, deadline=None)
@given(sizes=shapes, s=sparsities, seed=st.integers(0, 2**16), bias=st.booleans(),
       prune_output=st.booleans())
def test_property_neuron_and_shrink(sizes, s, seed, bias, prune_output):
    params = small_net(bias=bias, seed=seed, sizes=sizes)
    before = deep_copy(params)
    out = neuron_prune(params, s, prune_output=prune_output)
    assert_params_equal(params, before)
    idx = range(len(params)) if prune_output else range(len(params) - 1)
    for i in idx:
        assert zero_rows(out[i].weight) == round(s * params[i].weight.shape[0])
    X = np.random.default_rng(seed).standard_normal((6, sizes[0])).astype(np.float32)
    np.testing.assert_allclose(forward(shrink(out), X), forward(out, X), rtol=1e-4, atol=1e-5)
    assert layer_sizes(shrink(out))[-1] == sizes[-1]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, 4), min_size=1, max_size=40), frac=sparsities)
def test_drop_smallest_equals_stable_argsort(values, frac):
    # many ties: the fast selection must pick exactly the stable sort's first n_prune entries
    scores = np.array(values, dtype=np.float32)
    n_prune = round(frac * scores.size)
    expected = np.ones(scores.size, bool)
    expected[np.argsort(scores, kind="stable")[:n_prune]] = False
    np.testing.assert_array_equal(_drop_smallest(scores, n_prune), expected)


def test_drop_smallest_nan_last():
    scores = np.array([np.nan, 1.0, 0.5, np.nan, 2.0])
    np.testing.assert_array_equal(_drop_smallest(scores, 4), [False, False, False, True, False])
    np.testing.assert_array_equal(_drop_smallest(scores, 2), [True, False, False, True, True])


# --- issue 10: outputs never alias inputs -----------------------------------------------------

def _input_arrays(params, masks=()):
    arrays = [a for layer in params for a in layer if a is not None]
    return arrays + [m for pair in masks for m in pair if m is not None]


def _assert_no_alias(out, inputs):
    for layer in out:
        for a in layer:
            if a is not None:
                assert not any(np.shares_memory(a, x) for x in inputs)


@pytest.mark.parametrize("sizes", [(6, 4), (6, 5, 4)], ids=["one-layer", "two-layer"])
@pytest.mark.parametrize("bias", [False, True])
def test_shrink_output_never_aliases_input(sizes, bias):
    params = small_net(bias=bias, sizes=sizes)
    small = shrink(params)
    for a, b in zip(small, params):
        assert not np.shares_memory(a.weight, b.weight)
        assert b.bias is None or not np.shares_memory(a.bias, b.bias)
    _assert_no_alias(small, _input_arrays(params))


@pytest.mark.parametrize("sizes", [(6, 4), (6, 5, 4)], ids=["one-layer", "two-layer"])
@pytest.mark.parametrize("s", [0, 0.5])
def test_pruning_outputs_never_alias_inputs(sizes, s):
    params = small_net(bias=True, sizes=sizes)
    inputs = _input_arrays(params)
    for prune_output in (False, True):
        _assert_no_alias(weight_prune(params, s, prune_output=prune_output), inputs)
        _assert_no_alias(weight_prune(params, s, scope="global", prune_output=prune_output), inputs)
        _assert_no_alias(neuron_prune(params, s, prune_output=prune_output), inputs)
        for masks in (weight_mask(params, s, prune_output=prune_output),
                      neuron_mask(params, s, prune_output=prune_output)):
            _assert_no_alias(masks, inputs)
            _assert_no_alias(apply_masks(params, masks), _input_arrays(params, masks))
    no_bias_masks = tuple((np.ones(l.weight.shape, bool), None) for l in params)
    _assert_no_alias(apply_masks(params, no_bias_masks), inputs)     # keep_b None: the bias is copied


# --- issue 10: integer weights, magnitudes in a type that holds them --------------------------

@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_weight_prune_signed_int_min_is_largest_magnitude(dtype):
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    w = np.array([[lo, 1, hi, -2], [3, lo, -4, 0]], dtype)
    params = (Layer(w, None), Layer(np.ones((1, 2), dtype), None))
    for scope in SCOPES:
        out = weight_prune(params, 0.75, scope=scope)[0].weight       # 6 of 8: only lo, lo survive
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, [[lo, 0, 0, 0], [0, lo, 0, 0]])
        keep = weight_mask(params, 0.25, scope=scope)[0][0]           # 2 of 8: the 0, then the 1
        np.testing.assert_array_equal(keep, [[True, False, True, True], [True, True, True, False]])


def test_weight_prune_unsigned_and_float16_weights():
    w = np.array([[255, 1, 128, 0]], np.uint8)
    params = (Layer(w, None), Layer(np.ones((1, 1), np.uint8), None))
    np.testing.assert_array_equal(weight_prune(params, 0.5)[0].weight, [[255, 0, 128, 0]])
    w16 = np.array([[-65504, 1, 2, -3]], np.float16)
    params = (Layer(w16, None), Layer(np.ones((1, 1), np.float16), None))
    np.testing.assert_array_equal(weight_prune(params, 0.5)[0].weight, [[-65504, 0, 0, -3]])


# --- issue 10: scope is only for weight pruning -----------------------------------------------

@pytest.mark.parametrize("scope", ["global", "net", None])
def test_make_masks_neuron_rejects_scope(scope):
    with pytest.raises(ValueError, match=r"^scope for neuron pruning must be one of \('layer',\), "
                                         rf"got {re.escape(repr(scope))}$"):
        make_masks(small_net(), "neuron", 0.5, scope=scope)


@pytest.mark.parametrize("scope", ["net", "Layer", None, ""])
def test_make_masks_weight_rejects_scope(scope):
    with pytest.raises(ValueError, match=r"^scope must be one of \('layer', 'global'\), "
                                         rf"got {re.escape(repr(scope))}$"):
        make_masks(small_net(), "weight", 0.5, scope=scope)


# --- issue 10: make_masks, mask contracts, apply_masks validation -----------------------------

def assert_masks_equal(a, b):
    assert len(a) == len(b)
    for (aw, ab), (bw, bb) in zip(a, b):
        np.testing.assert_array_equal(aw, bw)
        assert (ab is None) == (bb is None)
        if ab is not None:
            np.testing.assert_array_equal(ab, bb)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("s", [0, 0.3, 0.8])
def test_make_masks_dispatches(s, bias):
    params = small_net(bias=bias)
    for prune_output in (False, True):
        for scope in SCOPES:
            assert_masks_equal(make_masks(params, "weight", s, scope, prune_output),
                               weight_mask(params, s, scope=scope, prune_output=prune_output))
        assert_masks_equal(make_masks(params, "neuron", s, "layer", prune_output),
                           neuron_mask(params, s, prune_output=prune_output))
    # defaults: scope "layer", output layer not pruned
    assert_masks_equal(make_masks(params, "weight", s), weight_mask(params, s, scope="layer", prune_output=False))
    assert_masks_equal(make_masks(params, "neuron", s), neuron_mask(params, s, prune_output=False))


@pytest.mark.parametrize("method", ["channel", "Weight", "", None])
def test_make_masks_rejects_method(method):
    with pytest.raises(ValueError, match=r"^method must be one of \('weight', 'neuron', 'nm', 'block'\), "
                                         rf"got {re.escape(repr(method))}$"):
        make_masks(small_net(), method, 0.5)


def test_default_leaves_output_layer_unpruned():
    params = small_net(bias=True)
    for masks in (weight_mask(params, 0.9), neuron_mask(params, 0.9),
                  make_masks(params, "weight", 0.9), make_masks(params, "neuron", 0.9),
                  weight_mask(params, 0.9, scope="global")):
        keep_w, keep_b = masks[-1]
        assert keep_w.all() and keep_b.all()
        assert not masks[0][0].all()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("prune_output", [False, True])
def test_masks_are_bool_and_keep_b_none_exactly_when_bias_none(bias, prune_output):
    params = small_net(bias=bias)
    s = 0.5
    for masks in (weight_mask(params, s, prune_output=prune_output),
                  weight_mask(params, s, scope="global", prune_output=prune_output),
                  neuron_mask(params, s, prune_output=prune_output),
                  make_masks(params, "weight", s, prune_output=prune_output),
                  make_masks(params, "neuron", s, prune_output=prune_output)):
        assert isinstance(masks, tuple) and len(masks) == len(params)
        for layer, (keep_w, keep_b) in zip(params, masks):
            assert keep_w.dtype == np.bool_ and keep_w.shape == layer.weight.shape
            assert (keep_b is None) == (layer.bias is None)
            if keep_b is not None:
                assert keep_b.dtype == np.bool_ and keep_b.shape == layer.bias.shape
    for _keep_w, keep_b in weight_mask(params, s, prune_output=prune_output):
        assert keep_b is None or keep_b.all()              # weight pruning keeps every bias
    for keep_w, keep_b in neuron_mask(params, s, prune_output=prune_output):
        assert keep_b is None or np.array_equal(keep_b, keep_w.any(axis=1))   # bias follows its row


def test_apply_masks_keep_b_none_keeps_the_bias():
    params = small_net(bias=True)
    masks = tuple((np.ones(l.weight.shape, bool), None) for l in params)
    out = apply_masks(params, masks)
    assert_params_equal(out, params)
    half = tuple((k, None) for k, _ in neuron_mask(params, 0.5))
    for o, p in zip(apply_masks(params, half), params):
        np.testing.assert_array_equal(o.bias, p.bias)


def _good_masks(params):
    return [(np.ones(l.weight.shape, bool), None if l.bias is None else np.ones(l.bias.shape, bool))
            for l in params]


def _bad_masks(params, layer, weight=None, bias="same"):
    masks = _good_masks(params)
    w, b = masks[layer]
    masks[layer] = (w if weight is None else weight, b if isinstance(bias, str) else bias)
    return tuple(masks)


def test_apply_masks_rejects_wrong_count():
    params = small_net(bias=True)
    masks = _good_masks(params)
    for wrong in (masks[:-1], masks + masks[:1], []):
        with pytest.raises(ValueError, match=rf"^{len(wrong)} masks for 4 layers$"):
            apply_masks(params, wrong)


@pytest.mark.parametrize("layer", [0, 2])
def test_apply_masks_rejects_wrong_shapes(layer):
    params = small_net(bias=True)
    shape = params[layer].weight.shape
    for bad in (np.ones(shape[::-1], bool), np.ones(shape[:1], bool), np.ones((shape[0], shape[1] + 1), bool)):
        with pytest.raises(ValueError, match=rf"^layer {layer}: weight mask shape {re.escape(str(bad.shape))} "
                                             rf"!= weight shape {re.escape(str(shape))}$"):
            apply_masks(params, _bad_masks(params, layer, weight=bad))
    n = params[layer].bias.shape[0]
    for bad in (np.ones(n + 1, bool), np.ones((n, 1), bool)):
        with pytest.raises(ValueError, match=rf"^layer {layer}: bias mask shape {re.escape(str(bad.shape))} "
                                             rf"!= bias shape \({n},\)$"):
            apply_masks(params, _bad_masks(params, layer, bias=bad))


@pytest.mark.parametrize("layer", [0, 3])
def test_apply_masks_rejects_non_bool_masks(layer):
    params = small_net(bias=True)
    shape = params[layer].weight.shape
    n = shape[0]
    for bad, what in ((np.ones(shape), "float64"), (np.ones(shape, np.int8), "int8"),
                      (np.ones(shape, bool).tolist(), "list")):
        with pytest.raises(ValueError, match=rf"^layer {layer}: weight mask must be a bool ndarray, got {what}$"):
            apply_masks(params, _bad_masks(params, layer, weight=bad))
    for bad, what in ((np.ones(n, np.uint8), "uint8"), ([True] * n, "list")):
        with pytest.raises(ValueError, match=rf"^layer {layer}: bias mask must be a bool ndarray, got {what}$"):
            apply_masks(params, _bad_masks(params, layer, bias=bad))


def test_apply_masks_rejects_bias_mask_without_bias():
    params = small_net(bias=False)
    masks = _bad_masks(params, 1, bias=np.ones(params[1].weight.shape[0], bool))
    with pytest.raises(ValueError, match=r"^layer 1: a bias mask for a layer without bias$"):
        apply_masks(params, masks)



def test_apply_masks_rejects_a_mask_that_is_not_a_pair():
    """A mask item that is not a (keep_weight, keep_bias) pair was a TypeError from an unpacking inside."""
    params = small_net(bias=True)
    masks = list(_good_masks(params))
    for bad, what in ((1, "int"), (masks[2][0], "ndarray"), ((masks[2][0],), "tuple")):
        wrong = tuple(masks[:2]) + (bad,) + tuple(masks[3:])
        with pytest.raises(ValueError, match=rf"^layer 2: expected a mask pair \(keep_weight, keep_bias or None\), got {what}$"):
            apply_masks(params, wrong)


@pytest.mark.parametrize("fn, args", [(weight_prune, (0.5,)), (neuron_prune, (0.5,)), (nm_prune, (2, 4)), (block_prune, (0.5,))])
@pytest.mark.parametrize("value", ["no", 1, None])
def test_prune_output_must_be_a_bool(fn, args, value):
    """prune_output="no" is truthy: the output layer was pruned without a word."""
    with pytest.raises(ValueError, match=r"prune_output must be True or False"):
        fn(small_net(), *args, prune_output=value)

# --- issue 10: _drop_smallest past numpy's small-array paths ---------------------------------

def stable_reference(scores, n_prune):
    expected = np.ones(scores.size, bool)
    expected[np.argsort(scores, kind="stable")[:n_prune]] = False
    return expected


@pytest.mark.parametrize("size", [257, 300, 1000])
@pytest.mark.parametrize("ties", [False, True])
def test_drop_smallest_large_equals_stable_argsort(size, ties):
    rng = np.random.default_rng(size)
    scores = rng.integers(0, 7, size).astype(np.float64) if ties else rng.random(size)
    for n_prune in sorted({1, 2, 3, size // 3, size // 2, size - 2, size - 1, size, size + 1}):
        np.testing.assert_array_equal(_drop_smallest(scores, n_prune), stable_reference(scores, n_prune),
                                      err_msg=f"n_prune={n_prune}")


@pytest.mark.parametrize("n_nan", [17, 20, 40])
def test_drop_smallest_nan_ties_equal_stable_argsort(n_nan):
    rng = np.random.default_rng(n_nan)
    scores = np.concatenate([rng.random(10), np.full(n_nan, np.nan)])
    rng.shuffle(scores)
    for n_prune in range(8, scores.size + 1):
        np.testing.assert_array_equal(_drop_smallest(scores, n_prune), stable_reference(scores, n_prune),
                                      err_msg=f"n_prune={n_prune}")


def test_drop_smallest_degenerate_counts():
    scores = np.array([3.0, 1.0, 2.0])
    for n_prune, keep in ((-1, [1, 1, 1]), (0, [1, 1, 1]), (3, [0, 0, 0]), (4, [0, 0, 0])):
        out = _drop_smallest(scores, n_prune)
        assert out.dtype == np.bool_
        np.testing.assert_array_equal(out, np.array(keep, bool))
    assert _drop_smallest(np.zeros(0), 0).shape == (0,)


# --- issue 10: shrink, describe_shrink and sparsity_of on their edges ------------------------

def test_shrink_removes_only_rows_with_zero_weights_and_zero_bias():
    w0 = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, -2.0]], np.float32)
    b0 = np.array([0.0, 0.0, 0.5, 0.0], np.float32)    # row 0 and 3: weights, no bias; row 2: bias only
    w1 = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    params = (Layer(w0, b0), Layer(w1, np.zeros(2, np.float32)))
    small = shrink(params)
    assert layer_sizes(small) == (2, 3, 2)
    np.testing.assert_array_equal(small[0].weight, w0[[0, 2, 3]])
    np.testing.assert_array_equal(small[0].bias, b0[[0, 2, 3]])
    np.testing.assert_array_equal(small[1].weight, w1[:, [0, 2, 3]])
    d = describe_shrink(params)
    assert d == {"sizes_before": [2, 4, 2], "sizes_after": [2, 3, 2], "removed": [0, 1, 0]}


def test_describe_shrink_removed():
    params = neuron_prune(small_net(), 0.5)
    d = describe_shrink(params)
    expected = [0] + [round(0.5 * n) for n in SIZES[1:-1]] + [0]
    assert d["removed"] == expected
    assert d["sizes_after"] == [a - r for a, r in zip(d["sizes_before"], expected)]
    assert all(type(r) is int for r in d["removed"])


def test_sparsity_of_empty_layers():
    params = shrink((Layer(np.ones((2, 3), np.float32), None), Layer(np.zeros((4, 2), np.float32), None),
                     Layer(np.ones((2, 4), np.float32), None)))
    assert layer_sizes(params) == (3, 2, 0, 2)
    rep = sparsity_of(params)
    assert rep["layers"] == [0.0, 0.0, 0.0] and rep["size"] == [6, 0, 0] and rep["size_nz"] == [6, 0, 0]
    assert rep["total"] == 0.0
    empty = sparsity_of((Layer(np.zeros((0, 3), np.float32), None),))
    assert empty == {"layers": [0.0], "total": 0.0, "size": [0], "size_nz": [0]}


# --- issue 13: N:M and block pruning ----------------------------------------------------------

def nm_reference(w, n, m):
    """Brute force: per row and group of m columns (the tail: t < m), keep min(n, t) largest |w|,
    the lowest columns pruned first among equals."""
    keep = np.ones(w.shape, bool)
    for i in range(w.shape[0]):
        for j in range(0, w.shape[1], m):
            cols = list(range(j, min(j + m, w.shape[1])))
            n_drop = len(cols) - min(n, len(cols))
            for c in sorted(cols, key=lambda c: (abs(float(w[i, c])), c))[:n_drop]:
                keep[i, c] = False
    return keep


def block_reference(w, s, r, c):
    """Brute force: blocks in row-major order, norm of their entries, drop round(s * count) smallest
    (lowest block index first among equals)."""
    blocks = []
    for bi in range(0, w.shape[0], r):
        for bj in range(0, w.shape[1], c):
            norm = float(np.sqrt(sum(float(v) ** 2 for v in w[bi:bi + r, bj:bj + c].ravel())))
            blocks.append((norm, len(blocks), bi, bj))
    keep = np.ones(w.shape, bool)
    for _, _, bi, bj in sorted(blocks)[:round(s * len(blocks))]:
        keep[bi:bi + r, bj:bj + c] = False
    return keep


def one_layer(w, bias=None):
    return (Layer(np.asarray(w, np.float32), bias),)


tie_matrices = st.tuples(st.integers(1, 7), st.integers(1, 13)).flatmap(
    lambda s: st.lists(st.integers(-3, 3), min_size=s[0] * s[1], max_size=s[0] * s[1]).map(
        lambda v: np.array(v, np.float32).reshape(s)))


@settings(max_examples=150, deadline=None)
@given(w=tie_matrices, nm=st.integers(1, 6).flatmap(lambda m: st.tuples(st.integers(1, m), st.just(m))))
def test_nm_mask_matches_brute_force(w, nm):
    n, m = nm
    (keep, keep_b), = nm_mask(one_layer(w), n, m, prune_output=True)
    np.testing.assert_array_equal(keep, nm_reference(w, n, m))
    assert keep_b is None


@settings(max_examples=150, deadline=None)
@given(w=tie_matrices, s=sparsities, r=st.integers(1, 4), c=st.integers(1, 5))
def test_block_mask_matches_brute_force(w, s, r, c):
    (keep, _), = block_mask(one_layer(w), s, (r, c), prune_output=True)
    np.testing.assert_array_equal(keep, block_reference(w, s, r, c))


@pytest.mark.parametrize("n_in, n, m, kept_per_row", [
    (8, 2, 4, 4), (7, 2, 4, 4), (6, 2, 4, 4), (5, 2, 4, 3), (9, 1, 4, 3), (3, 2, 4, 2), (2, 2, 4, 2),
    (1, 1, 4, 1), (10, 3, 8, 5), (12, 4, 4, 12)])
def test_nm_exact_counts_and_tail(n_in, n, m, kept_per_row):
    # he_init weights are nonzero a.s.: zeros are exactly the pruned ones. The tail group of
    # t = n_in % m columns keeps min(n, t).
    params = small_net(sizes=(n_in, 6, 3))
    out = nm_prune(params, n, m, prune_output=True)
    for layer, _src in zip(out, params):
        w = layer.weight
        for j in range(0, w.shape[1], m):
            t = min(m, w.shape[1] - j)
            assert (np.count_nonzero(w[:, j:j + m], axis=1) == min(n, t)).all()
    assert (np.count_nonzero(out[0].weight, axis=1) == kept_per_row).all()


def test_nm_ties_prune_the_lowest_columns_first():
    w = np.ones((2, 6), np.float32)
    w[1] = [-2, 2, 2, -2, 1, -1]
    (keep, _), = nm_mask(one_layer(w), 2, 4, prune_output=True)
    np.testing.assert_array_equal(keep, [[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    (keep, _), = nm_mask(one_layer(w[:, :5]), 1, 4, prune_output=True)     # tail of 1 keeps 1
    np.testing.assert_array_equal(keep, [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]])


def test_nm_keeps_the_largest_magnitudes():
    w = np.array([[0.1, -5, 3, 0.2, 7, -8, 0.5, 0.4]], np.float32)
    (keep, _), = nm_mask(one_layer(w), 2, 4, prune_output=True)
    np.testing.assert_array_equal(keep, [[0, 1, 1, 0, 1, 1, 0, 0]])
    (keep, _), = nm_mask(one_layer(w), 1, 4, prune_output=True)
    np.testing.assert_array_equal(keep, [[0, 1, 0, 0, 0, 1, 0, 0]])


@pytest.mark.parametrize("s", SWEEP)
@pytest.mark.parametrize("block", [(1, 4), (4, 1), (8, 1), (3, 5), (4, 4)])
def test_block_exact_count_and_whole_blocks(s, block):
    params = small_net(sizes=(30, 41, 27, 10))       # widths not multiples of the blocks
    out = block_prune(params, s, block)
    r, c = block
    for i, (layer, src) in enumerate(zip(out, params)):
        norms = block_norms(layer.weight, block)
        n_zero = int(np.sum(norms == 0))
        if i == len(params) - 1:
            assert n_zero == 0
            continue
        assert n_zero == round(s * norms.size)
        kept = layer.weight != 0
        np.testing.assert_array_equal(layer.weight[kept], src.weight[kept])  # kept blocks untouched
        full = np.repeat(np.repeat(norms > 0, r, 0), c, 1)[:kept.shape[0], :kept.shape[1]]
        np.testing.assert_array_equal(kept, full)                            # whole blocks


def test_block_ties_and_partial_edge_blocks():
    w = np.ones((3, 5), np.float32)                    # blocks (2, 2): grid 2 x 3, edges partial
    norms = block_norms(w, (2, 2))
    np.testing.assert_allclose(norms, [[2, 2, np.sqrt(2)], [np.sqrt(2), np.sqrt(2), 1]])
    (keep, _), = block_mask(one_layer(w), 0.5, (2, 2), prune_output=True)   # 3 of 6 blocks
    # the corner (norm 1) first, then the sqrt(2) ties in block order: (0, 2), then (1, 0)
    np.testing.assert_array_equal(keep, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [0, 0, 1, 1, 0]])


@pytest.mark.parametrize("fn", [lambda p: nm_prune(p, 2, 4), lambda p: nm_prune(p, 1, 3, prune_output=True),
                                lambda p: block_prune(p, 0.7, (2, 3)),
                                lambda p: block_prune(p, 0.5, (4, 1), prune_output=True)])
def test_structured_input_unchanged_and_not_shared(fn):
    params = small_net(bias=True)
    before = deep_copy(params)
    out = fn(params)
    assert_params_equal(params, before)
    for a, b in zip(out, params):
        assert not np.shares_memory(a.weight, b.weight)
        assert not np.shares_memory(a.bias, b.bias)
        np.testing.assert_array_equal(a.bias, b.bias)      # biases kept


def test_structured_identities():
    params = small_net(bias=True)
    assert_params_equal(nm_prune(params, 4, 4, prune_output=True), params)
    assert_params_equal(nm_prune(params, 3, 3), params)
    assert_params_equal(block_prune(params, 0, (3, 2), prune_output=True), params)


def test_structured_default_leaves_output_layer_unpruned():
    params = small_net(bias=True)
    for masks in (nm_mask(params, 1, 4), block_mask(params, 0.9, (2, 2)),
                  make_masks(params, "nm", 0.5), make_masks(params, "block", 0.9)):
        assert masks[-1][0].all() and not masks[0][0].all()
    for masks in (nm_mask(params, 1, 4, prune_output=True), block_mask(params, 0.9, (2, 2), prune_output=True)):
        assert not masks[-1][0].all()


@pytest.mark.parametrize("n, m, message", [
    (0, 4, "n must be a positive integer, got 0"), (2, 0, "m must be a positive integer, got 0"),
    (True, 4, "n must be a positive integer, got True"), (2.0, 4, "n must be a positive integer, got 2.0"),
    (5, 4, "n must be at most m (keep n of every m weights), got n=5, m=4"),
    (2, "4", "m must be a positive integer, got '4'")])
def test_nm_bad_pattern(n, m, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_nm(n, m)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        nm_prune(small_net(), n, m)


@pytest.mark.parametrize("block, message", [
    ((0, 4), "block rows r must be a positive integer, got 0"), ((2, -1), "block columns c must be a positive integer, got -1"),
    ((2,), "block must be a pair (r, c) of positive integers, got (2,)"), (4, "block must be a pair (r, c) of positive integers, got 4"),
    ((1.5, 2), "block rows r must be a positive integer, got 1.5")])
def test_block_bad_shape(block, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_block(block)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        block_prune(small_net(), 0.5, block)


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.5", float("nan")])
def test_block_bad_sparsity(bad):
    with pytest.raises(ValueError, match="^sparsity must be"):
        block_prune(small_net(), bad, (2, 2))


def test_make_masks_structured():
    params = small_net(bias=True)
    assert STRUCTURED_METHODS == ("nm", "block") and ALL_METHODS == METHODS + STRUCTURED_METHODS
    assert_masks_equal(make_masks(params, "nm", 0.5), nm_mask(params, 2, 4))
    assert_masks_equal(make_masks(params, "nm", 0.75), nm_mask(params, 1, 4))
    assert_masks_equal(make_masks(params, "nm", 0.75, n=1, m=4, prune_output=True), nm_mask(params, 1, 4, True))
    assert_masks_equal(make_masks(params, "nm", 0.5, m=8), nm_mask(params, 4, 8))
    assert_masks_equal(make_masks(params, "nm", 0), nm_mask(params, 4, 4))
    assert_masks_equal(make_masks(params, "block", 0.6), block_mask(params, 0.6, DEFAULT_BLOCK))
    assert_masks_equal(make_masks(params, "block", 0.6, block=(4, 1), prune_output=True),
                       block_mask(params, 0.6, (4, 1), prune_output=True))
    with pytest.raises(ValueError, match=r"^n=2 with m=4 prunes 2 of every 4 weights, but sparsity 0.75 prunes 3"):
        make_masks(params, "nm", 0.75, n=2)
    with pytest.raises(ValueError, match=r"^sparsity 0.9 prunes all 4 weights of every group \(n = 0\)"):
        make_masks(params, "nm", 0.9)
    for bad in (0.3, 0.6, 0.1):                  # no N:M of m = 4 has it: refused, not rounded to 3:4 or 2:4
        with pytest.raises(ValueError, match=rf"^sparsity {bad} is not an N:M sparsity with m=4 .* choose one of "
                                             r"0 \(4:4\), 0.25 \(3:4\), 0.5 \(2:4\), 0.75 \(1:4\)$"):
            make_masks(params, "nm", bad)
    with pytest.raises(ValueError, match=r"^sparsity 0.3 is not an N:M sparsity with m=8"):
        make_masks(params, "nm", 0.3, m=8)
    assert_masks_equal(make_masks(params, "nm", 0.3, nm_nearest=True), nm_mask(params, 3, 4))    # gradual's ramp
    assert_masks_equal(make_masks(params, "nm", 0.6, nm_nearest=True), nm_mask(params, 2, 4))
    for method in STRUCTURED_METHODS:
        with pytest.raises(ValueError, match=f"^scope for {method} pruning must be one of"):
            make_masks(params, method, 0.5, scope="global")
        with pytest.raises(ValueError, match="^sparsity must be in"):
            make_masks(params, method, 1.0)


def test_make_masks_nm_holds_a_sparsity_only_to_float_rounding():
    """A k near an N:M pattern but not at it (0.749: 1:4 prunes 0.75) is refused like 0.3, not built as
    1:4 under another k's name; the study's N:M sparsities (names.has_sparsity, the same test) all pass."""
    from sparsenet import names

    params = small_net()
    for bad in (0.749, 0.26, 0.5 + 1e-4):
        with pytest.raises(ValueError, match=rf"^sparsity {bad:g} is not an N:M sparsity with m=4 "):
            make_masks(params, "nm", bad)
    assert_masks_equal(make_masks(params, "nm", 0.5 + 1e-12), nm_mask(params, 2, 4))    # float rounding
    assert_masks_equal(make_masks(params, "nm", 0.375, m=8), nm_mask(params, 5, 8))
    study_ks = {k for ks in (names.SPARSITIES, names.QUICK_SPARSITIES, names.FINETUNE_SPARSITIES,
                             names.GRADUAL_SPARSITIES) for k in names.method_sparsities("nm", ks)}
    assert study_ks >= {0.5, 0.75}
    for k in study_ks | set(names.NM_RECOVERY_SPARSITIES):
        assert_masks_equal(make_masks(params, "nm", k), nm_mask(params, names.NM_M - round(k * names.NM_M), 4))


def test_nm_matches_torch_2_4():
    """torch's reference 2:4 pruning (WeightNormSparsifier, blocks of 1 x 4 with 2 zeros each)."""
    torch = pytest.importorskip("torch")
    from torch.ao.pruning import WeightNormSparsifier
    w = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)   # no ties
    model = torch.nn.Sequential(torch.nn.Linear(32, 16, bias=False))
    model[0].weight.data = torch.from_numpy(w.copy())
    sp = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sp.prepare(model, [{"tensor_fqn": "0.weight"}])
    sp.step()
    torch_keep = model[0].parametrizations.weight[0].mask.detach().numpy().astype(bool)
    (keep, _), = nm_mask(one_layer(w), 2, 4, prune_output=True)
    np.testing.assert_array_equal(keep, torch_keep)


# --- shrink_masked: training the masked net at the smaller net's cost ---------------------------

def _with_biases(params, seed=5):
    rng = np.random.default_rng(seed)
    return tuple(Layer(l.weight, rng.standard_normal(l.weight.shape[0]).astype(np.float32)) for l in params)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("method, k", [("neuron", 0.5), ("neuron", 0.0), ("weight", 0.9), ("nm", 0.75),
                                       ("block", 0.5)])
def test_shrink_masked_is_the_masked_net(method, k, bias):
    params = he_init((16, 12, 8, 3), seed=1)
    if bias:
        params = _with_biases(params)
    masks = make_masks(params, method, k, block=(2, 2))
    masked = apply_masks(params, masks)
    small, small_masks, kept = shrink_masked(params, masks)
    X = np.random.default_rng(2).standard_normal((9, 16)).astype(np.float32)
    np.testing.assert_allclose(forward(small, X), forward(masked, X), rtol=1e-5, atol=1e-6)
    for layer, (kw, kb), rows in zip(small, small_masks, kept):
        assert kw.shape == layer.weight.shape and kw.dtype == bool and layer.weight.shape[0] == rows.sum()
        assert (kb is None) or kb.shape == layer.bias.shape
        assert np.all(layer.weight[~kw] == 0)
    assert kept[-1].all() and len(kept[-1]) == 3                          # output units never go
    if method == "neuron":                                                 # exactly the pruned rows go
        assert layer_sizes(small) == (16, 12 - round(k * 12), 8 - round(k * 8), 3)
    elif bias:                                                             # an unmasked bias keeps its neuron
        assert layer_sizes(small) == layer_sizes(params)
    back = expand_masked(small, kept, masked)
    for a, b in zip(back, masked):
        np.testing.assert_array_equal(a.weight, b.weight)
        assert (a.bias is None) == (b.bias is None)
        if a.bias is not None:
            np.testing.assert_array_equal(a.bias, b.bias)
    for layer in params:                                                   # input untouched
        assert layer.weight.flags.writeable


def test_shrink_masked_removes_only_silent_neurons():
    """A row with no kept weight goes only when its bias is absent or masked out as well."""
    params = _with_biases(he_init((6, 4, 2), seed=0))
    keep_w0 = np.ones((4, 6), bool)
    keep_w0[1] = keep_w0[3] = False                       # rows 1 and 3: no weight kept
    keep_b0 = np.array([True, True, True, False])         # row 1 keeps its bias, row 3 does not
    masks = ((keep_w0, keep_b0), (np.ones((2, 4), bool), None))
    small, _, kept = shrink_masked(params, masks)
    assert kept[0].tolist() == [True, True, True, False] and layer_sizes(small) == (6, 3, 2)
    np.testing.assert_array_equal(small[1].weight, params[1].weight[:, :3])
    masks = ((keep_w0, None), masks[1])                   # biases unmasked: every neuron stays
    assert layer_sizes(shrink_masked(params, masks)[0]) == (6, 4, 2)


def test_plain_weight_bias_pairs_prune_like_layers():
    """(weight, bias) pairs (what the engines also take) prune exactly like Layers; anything else is a
    TypeError naming the item, not an AttributeError from inside."""
    params = small_net(bias=True)
    pairs = [(layer.weight, layer.bias) for layer in params]
    for fn in (lambda p: weight_prune(p, 0.5), lambda p: neuron_prune(p, 0.5), lambda p: nm_prune(p, 2, 4),
               lambda p: block_prune(p, 0.5, (2, 2)), lambda p: make_masks(p, "weight", 0.5, scope="global")):
        for got, want in zip(fn(pairs), fn(params)):
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match=r"^params\[1\]: expected a Layer\(weight, bias\) or a \(weight, bias\) pair, "
                                        r"got ndarray$"):
        weight_prune([pairs[0], params[1].weight], 0.5)
    with pytest.raises(TypeError, match=r"^params must be a sequence of Layer\(weight, bias\), got int$"):
        neuron_prune(5, 0.5)
    for weight, got in ((np.array([["a", "b"]]), r"<U1 of shape \(1, 2\)"), (np.ones(3), r"float64 of shape \(3,\)")):
        with pytest.raises(TypeError, match=rf"^params\[0\]: weight must be a 2-d real array \(n_out, n_in\), got {got}$"):
            weight_prune([(weight, None)], 0.5)
