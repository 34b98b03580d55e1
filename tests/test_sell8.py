"""The SELL8 layout (sell8.py) against the dense matrix it stores; its windows, checks, net layout."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsenet.csr import CSR
from sparsenet.model import Layer, he_init
from sparsenet.prune import weight_prune
from sparsenet.sell8 import LANES, MAX_COLUMNS, SLOTS, STEP, SELL8, UNIT_COST, flatten, index_bits, layer, net_layout
from test_csr import matrices, sparse_matrix


@settings(max_examples=60, deadline=None)
@given(matrices(), st.sampled_from([8, 16]), st.booleans())
def test_round_trip(W, window, split):
    s = SELL8.from_dense(W, window, split).check()
    np.testing.assert_array_equal(s.to_dense(), W)
    assert s.nnz == np.count_nonzero(W)
    assert s.n_units * SLOTS * LANES >= s.nnz
    assert s.data.dtype == np.float32 and s.meta.dtype == np.uint64 and s.start.dtype == np.uint16
    assert s.split == split and s.start.shape == (s.n_units, SLOTS)


def _windows(s):
    """(first column of its window, column within it) of every stored lane, each (n_units, SLOTS, LANES)."""
    bits = index_bits(s.window)
    shifts = (bits * (LANES * np.arange(SLOTS)[:, None] + np.arange(LANES))).astype(np.uint64)
    index = (s.meta[:, None, None] >> shifts) & np.uint64(s.window - 1)
    first = np.broadcast_to(s.start.astype(np.int64)[:, :, None] * STEP, index.shape)
    return first, index.astype(np.int64)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("window", [8, 16])
@pytest.mark.parametrize("M, N, density", [(1, 1, 1.0), (8, 8, 1.0), (9, 5, 1.0), (17, 33, 0.3), (1000, 784, 0.1),
                                           (10, 200, 0.9), (40, 70, 0.0), (33, 1003, 0.01), (3, 70001, 0.001)])
def test_shapes_windows_and_padding(M, N, density, window, split):
    W = sparse_matrix(M, N, density, seed=M + N)
    s = SELL8.from_dense(W, window, split).check()
    np.testing.assert_array_equal(s.to_dense(), W)
    assert s.unit_ptr.shape == (-(-M // LANES) + 1,) and s.window == window
    first, index = _windows(s)
    assert np.all(first % STEP == 0) and np.all(first < max(N, 1))          # a real column
    assert np.all(index < window) and s.x_len >= first.max(initial=0) + window
    held = s.data != 0
    assert np.all(index[~held] == 0)                                          # padding reads column `first`
    for c in range(s.n_chunks):                                               # a chunk's slots in column order
        assert np.all(np.diff(s.start[s.unit_ptr[c]:s.unit_ptr[c + 1]].ravel().astype(np.int64)) >= 0)
    if not split:
        np.testing.assert_array_equal(s.start[:, 0], s.start[:, 1])           # one window a unit
    assert s.padding >= 1.0
    assert s.nbytes == s.data.nbytes + s.meta.nbytes + s.kernel_start.nbytes + s.unit_ptr.nbytes


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("window", [8, 16])
def test_empty_rows_and_all_zero(window, split):
    W = sparse_matrix(30, 45, 0.4, seed=3)
    W[[0, 5, 6, 29]] = 0                                          # empty rows
    W[8:16] = 0                                                   # a whole empty chunk
    s = SELL8.from_dense(W, window, split).check()
    np.testing.assert_array_equal(s.to_dense(), W)
    assert s.unit_ptr[2] == s.unit_ptr[1]                          # chunk 1 holds no unit
    z = SELL8.from_dense(np.zeros((20, 13), np.float32), window, split).check()
    assert z.n_units == 0 and z.padding == 1.0 and np.all(z.to_dense() == 0)


def test_dense_matrix_needs_no_padding():
    s = SELL8.from_dense(np.ones((16, 64), np.float32)).check()
    assert s.padding == 1.0 and s.n_units == 16 * 64 // (SLOTS * LANES)


@pytest.mark.parametrize("sparsity, most", [(0.0, 1.01), (0.3, 1.15), (0.5, 1.3), (0.7, 1.62), (0.9, 2.9)])
def test_padding_of_he_init_net(sparsity, most):
    """Stored lanes per non-zero with 8-column windows (sell8 docstring) -- a regression guard."""
    net = weight_prune(he_init(), sparsity)
    layers = [SELL8.from_dense(l.weight) for l in net[:3]]
    padding = sum(s.n_units for s in layers) * SLOTS * LANES / sum(s.nnz for s in layers)
    assert padding <= most


@pytest.mark.parametrize("sparsity, most", [(0.5, 1.23), (0.9, 2.25), (0.95, 3.1), (0.99, 5.9)])
def test_split_units_pad_less(sparsity, most):
    """Stored lanes per non-zero with 8-column windows and split units (sell8 docstring), and never
    more units than paired."""
    net = weight_prune(he_init(), sparsity)
    split = [SELL8.from_dense(l.weight, 8, True) for l in net[:3]]
    paired = [SELL8.from_dense(l.weight, 8, False) for l in net[:3]]
    assert sum(s.n_units for s in split) * SLOTS * LANES / sum(s.nnz for s in split) <= most
    assert all(s.n_units <= p.n_units for s, p in zip(split, paired))


def test_layer_takes_the_cheapest_kind():
    W = weight_prune(he_init((500, 200, 10)), 0.9)[0].weight
    narrow, wide = SELL8.from_dense(W, 8), SELL8.from_dense(W, 16)
    assert wide.n_units < 0.75 * narrow.n_units
    c = CSR.from_dense(W)
    kinds = {(w, sp): SELL8.from_csr(c, w, sp).n_units * UNIT_COST[w, sp] for w in (8, 16) for sp in (False, True)}
    chosen = layer(c)
    assert kinds[chosen.window, chosen.split] == min(kinds.values())
    assert layer(c, window=16).window == 16 and layer(c, split=False).split is False
    assert (layer(c, 8, True).window, layer(c, 8, True).split) == (8, True)
    dense = layer(CSR.from_dense(np.ones((40, 40), np.float32)))
    assert (dense.window, dense.split) == (8, False)               # same units: the cheapest kernel
    very_sparse = layer(CSR.from_dense(weight_prune(he_init((500, 200, 10)), 0.99)[0].weight))
    assert very_sparse.split                                        # a padding slot a window otherwise


def test_refuses_too_many_columns_and_bad_window():
    with pytest.raises(ValueError, match="at most"):
        SELL8.from_csr(CSR.from_dense(np.zeros((1, MAX_COLUMNS + 1), np.float32)))
    with pytest.raises(ValueError, match="window"):
        SELL8.from_dense(np.ones((2, 2), np.float32), 32)


def _broken(s, **changes):
    return dataclasses.replace(s, **changes)


def test_check_catches_corruption():
    s = SELL8.from_dense(sparse_matrix(20, 30, 0.5, seed=1)).check()
    bad_ptr = s.unit_ptr.copy()
    bad_ptr[1] = bad_ptr[2] + 1
    cases = {
        "unit_ptr must start at 0": _broken(s, unit_ptr=bad_ptr),
        "unit_ptr must be int64": _broken(s, unit_ptr=s.unit_ptr.astype(np.int32)),
        "data must be": _broken(s, data=s.data.astype(np.float64)),
        "meta must be": _broken(s, meta=s.meta[:-1]),
        "start must be": _broken(s, start=s.start.astype(np.int32)),
        "start must be uint16 of shape": _broken(s, start=s.start[:, 0].copy()),
        "starts at or beyond": _broken(s, start=np.full_like(s.start, 8)),
        "split is False": _broken(s, start=np.stack([s.start[:, 0], s.start[:, 0] ^ 1], axis=1)),
        "more than nnz": _broken(s, nnz=s.nnz - 1),
        "outside": _broken(s, shape=(17, s.shape[1])),               # rows 17..19 hold values
        "window must be": _broken(s, window=12),
    }
    for message, broken in cases.items():
        with pytest.raises(ValueError, match=message):
            broken.check()


def _net(sizes, density, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    return [Layer(sparse_matrix(n_out, n_in, density, seed=int(rng.integers(2**16))),
                  rng.standard_normal(n_out).astype(np.float32) if bias else None)
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


@pytest.mark.parametrize("window", [None, 8, 16])
def test_net_layout_permutes_rows_and_next_columns(window):
    net = _net((30, 21, 13, 5), 0.4)
    layers, perms = net_layout([l.weight for l in net], window=window)
    x = np.random.default_rng(0).random(30).astype(np.float32)
    h, h_sorted = x, x
    for i, (s, perm, l) in enumerate(zip(layers, perms, net)):
        h = l.weight @ h
        h_sorted = s.to_dense() @ h_sorted
        np.testing.assert_allclose(h_sorted, h[perm], rtol=1e-5, atol=1e-5)
        counts = np.count_nonzero(s.to_dense(), axis=1)
        if i < len(net) - 1:
            assert np.all(np.diff(counts) <= 0)                      # hidden rows by decreasing count
        else:
            np.testing.assert_array_equal(perm, np.arange(5))        # output rows keep their order


@pytest.mark.parametrize("split", [None, False, True])
def test_flatten_offsets_and_biases(split):
    net = _net((70, 50, 9), 0.3)
    (data, meta, start, unit_ptr, bias, windows, splits, offsets), (n_x, width), layers = flatten(net, split=split)
    _, perms = net_layout([l.weight for l in net])
    if split is not None:
        assert all(s.split == split for s in layers)
    assert offsets[0, -1] * SLOTS * LANES == data.size and offsets[0, -1] == meta.size
    assert offsets[1, -1] == unit_ptr.size and offsets[2, -1] == bias.size and offsets[3, -1] == start.size
    assert list(windows) == [s.window for s in layers] and list(splits) == [int(s.split) for s in layers]
    for l, s in enumerate(layers):
        np.testing.assert_array_equal(unit_ptr[offsets[1, l]:offsets[1, l + 1]], s.unit_ptr)
        np.testing.assert_array_equal(meta[offsets[0, l]:offsets[0, l + 1]], s.meta)
        np.testing.assert_array_equal(start[offsets[3, l]:offsets[3, l + 1]], s.kernel_start)
        assert offsets[3, l + 1] - offsets[3, l] == s.n_units * (SLOTS if s.split else 1)
    np.testing.assert_array_equal(bias[:50], net[0].bias[perms[0]])
    assert np.all(bias[50:56] == 0)                                  # chunk padding: zero bias
    assert n_x == layers[0].x_len and width >= max(max(8 * s.n_chunks, s.x_len) for s in layers)
