"""N:M kernels against numpy: n = 1, 2 (a pass), 3, 4 and 5 (passes of 2 and 1 slots), tails, column panels
narrower than a row, register tiles of 32, 64 and 128 columns, relu on/off, NaN inputs, batch 1,
typing checks."""
import numpy as np
import pytest
from numba.core.errors import TypingError

from sparsenet import nm_kernels as nk
from sparsenet.model import Layer
from sparsenet.nm import NM
from sparsenet.prune import nm_prune

PATTERNS = [(1, 4), (2, 4), (3, 4), (4, 4), (3, 8), (5, 8), (1, 2), (2, 5)]


def layer(shape, n, m, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape).astype(np.float32)
    W[rng.random(shape) < 0.2] = 0
    W = nm_prune((Layer(W, None),), n, m, prune_output=True)[0].weight
    return W, NM.from_dense(W, n, m).check(), rng.standard_normal(shape[0]).astype(np.float32)


@pytest.mark.parametrize("n, m", PATTERNS)
@pytest.mark.parametrize("n_in", [29, 32])
@pytest.mark.parametrize("panel", [4, 8, 1000])
@pytest.mark.parametrize("relu", [True, False])
def test_matmul_against_numpy(n, m, n_in, panel, relu):
    W, a, bias = layer((37, n_in), n, m)
    HT = np.random.default_rng(1).standard_normal((n_in, 64)).astype(np.float32)
    out = np.full((37, 64), np.nan, np.float32)
    nk.nm_matmul_bias_relu(*nk.pass_major(a.values, a.idx, a.n), bias, HT, out, n, m, panel, relu)
    ref = W @ HT + bias[:, None]
    if relu:
        ref = np.maximum(ref, 0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, m", PATTERNS)
@pytest.mark.parametrize("tile", nk.TILES)
@pytest.mark.parametrize("panel", [1, 8 * 128, 1 << 20])
@pytest.mark.parametrize("relu", [True, False])
def test_tiles_against_numpy(n, m, tile, panel, relu):
    # 224 = 128 + 64 + 32 columns: a call with tile=128 runs all three tile widths, one after another
    W, a, bias = layer((37, 30), n, m, seed=4)
    for Bc in (32, 96, 224):
        HT = np.random.default_rng(Bc).standard_normal((30, Bc)).astype(np.float32)
        out = np.full((37, Bc), np.nan, np.float32)
        nk.nm_matmul_bias_relu(*nk.pass_major(a.values, a.idx, a.n), bias, HT, out, n, m, panel, relu, tile)
        ref = W @ HT + bias[:, None]
        np.testing.assert_allclose(out, np.maximum(ref, 0) if relu else ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 9])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("tile", [128, 64])
def test_rows_not_a_multiple_of_a_tiles_rows(rows, n, tile):
    # wide tiles take rows_per_tile rows at a time (2 or 4 on AVX-512): fewer rows than that, and
    # the rows past a multiple of it, run one at a time; over two column panels (first / later)
    W, a, bias = layer((rows, 40), n, 4, seed=rows)
    HT = np.random.default_rng(rows).standard_normal((40, tile)).astype(np.float32)
    for panel in (20 * tile, 1 << 20):
        out = np.full((rows, tile), np.nan, np.float32)
        nk.nm_matmul_bias_relu(*nk.pass_major(a.values, a.idx, a.n), bias, HT, out, n, 4, panel, True, tile)
        np.testing.assert_allclose(out, np.maximum(W @ HT + bias[:, None], 0), rtol=1e-5, atol=1e-5)


def test_rows_per_tile_keeps_accumulators_within_the_registers():
    # 16 accumulator vectors on AVX-512's 32 zmm; one row elsewhere (64 columns are 8 of AVX2's 16 ymm)
    assert [nk.rows_per_tile(W, "avx512") for W in (8, 4, 2)] == [2, 4, 1]
    assert {nk.rows_per_tile(W, isa) for W in (8, 4, 2) for isa in ("avx2", "neon", "generic")} == {1}


@pytest.mark.parametrize("tile", nk.TILES)
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 8)])
def test_nan_input_propagates(tile, n, m):
    # a NaN activation reaches every row that stores a weight on it (relu keeps NaN, as numpy.maximum
    # does), and no row that never reads it
    W, a, bias = layer((37, 30), n, m, seed=6)
    HT = np.random.default_rng(7).standard_normal((30, 224)).astype(np.float32)
    HT[13, 5] = HT[2, 200] = np.nan
    out = np.zeros((37, 224), np.float32)
    nk.nm_matmul_bias_relu(*nk.pass_major(a.values, a.idx, a.n), bias, HT, out, n, m, 256, True, tile)
    cols = a.columns()
    for j, c in ((13, 5), (2, 200)):
        assert np.isnan(out[W[:, j] != 0, c]).all()
        clean = ~(cols == j).any(axis=1)
        assert np.isfinite(out[clean, c]).all()
        HT0 = HT.copy()
        HT0[~np.isfinite(HT0)] = 0
        np.testing.assert_allclose(out[clean, c], np.maximum(W @ HT0 + bias[:, None], 0)[clean, c], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, m", PATTERNS)
@pytest.mark.parametrize("parallel", [True, False])
def test_matvec_against_numpy(n, m, parallel):
    W, a, bias = layer((37, 29), n, m, seed=2)
    x = np.random.default_rng(3).standard_normal(29).astype(np.float32)
    out = np.full(37, np.nan, np.float32)
    fn = nk.nm_matvec_bias_relu if parallel else nk.nm_matvec_bias_relu_serial
    fn(*nk.pass_major(a.values, a.idx, a.n), bias, x, out, n, m, True)
    np.testing.assert_allclose(out, np.maximum(W @ x + bias, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile", nk.TILES)
def test_all_zero_layer(tile):
    a = NM.from_dense(np.zeros((5, 9), np.float32), 2, 4)
    bias = np.arange(5, dtype=np.float32) - 2
    for Bc in (32, 224):
        out = np.full((5, Bc), np.nan, np.float32)
        nk.nm_matmul_bias_relu(*nk.pass_major(a.values, a.idx, a.n), bias, np.ones((9, Bc), np.float32), out, 2, 4,
                               128, True, tile)
        np.testing.assert_array_equal(out, np.repeat(np.maximum(bias, 0)[:, None], Bc, 1))


def test_rows_refuse_wrong_arrays():
    W, a, bias = layer((8, 8), 2, 4)
    out = np.zeros((8, 32), np.float32)
    with pytest.raises(TypingError, match="idx must be a C-contiguous 1-d uint8 array"):
        nk.nm_matmul_bias_relu(a.values.ravel(), a.idx.ravel().astype(np.int32), bias,
                               np.zeros((8, 32), np.float32), out, 2, 4, 128, True)


@pytest.mark.parametrize("n", nk.VEC16_N)
@pytest.mark.parametrize("shape", [(37, 29), (16, 32), (3, 5), (40, 1)])
@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("relu", [True, False])
def test_matvec16_against_numpy(n, shape, parallel, relu):
    # row-interleaved N:4 at batch 1: rows not a multiple of 16, inputs not a multiple of 4
    W, a, bias = layer(shape, n, 4, seed=8)
    v, ix = nk.interleave(a.values, a.idx, n, 4)
    RB = -(-shape[0] // nk.ROWS)
    assert v.shape == ix.shape == (RB * nk.ROWS * a.slots,)
    bp = np.zeros(RB * nk.ROWS, np.float32)
    bp[:shape[0]] = bias
    x = np.zeros(4 * a.groups, np.float32)
    x[:shape[1]] = np.random.default_rng(9).standard_normal(shape[1])
    out = np.full(RB * nk.ROWS, np.nan, np.float32)
    nk.nm_matvec16(v, ix, bp, x, out, n, relu, parallel)
    ref = W @ x[:shape[1]] + bias
    np.testing.assert_allclose(out[:shape[0]], np.maximum(ref, 0) if relu else ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[shape[0]:], 0)                 # padding rows: zero weights, zero bias


def test_matvec16_nan_and_zero_layer():
    W, a, bias = layer((37, 30), 2, 4, seed=10)
    v, ix = nk.interleave(a.values, a.idx, 2, 4)
    bp = np.zeros(48, np.float32)
    bp[:37] = bias
    x = np.random.default_rng(11).standard_normal(32).astype(np.float32)
    x[13] = np.nan
    x[30:] = np.nan                     # past n_in: never selected (tail indices < 2), never read into a sum
    out = np.zeros(48, np.float32)
    nk.nm_matvec16(v, ix, bp, x, out, 2, True, False)
    assert np.isnan(out[:37][W[:, 13] != 0]).all()
    clean = ~(a.columns() == 13).any(axis=1)
    x0 = np.where(np.isnan(x), 0, x)[:30]
    np.testing.assert_allclose(out[:37][clean], np.maximum(W @ x0 + bias, 0)[clean], rtol=1e-5, atol=1e-5)
    z = NM.from_dense(np.zeros((5, 9), np.float32), 1, 4)
    v, ix = nk.interleave(z.values, z.idx, 1, 4)
    bp = np.zeros(16, np.float32)
    bp[:5] = np.arange(5) - 2
    out = np.full(16, np.nan, np.float32)
    nk.nm_matvec16(v, ix, bp, np.ones(12, np.float32), out, 1, True, True)
    np.testing.assert_array_equal(out, np.maximum(bp, 0))


@pytest.mark.parametrize("n, m", [(1, 4), (2, 4), (3, 4), (4, 4), (5, 8)])
def test_pass_major_orders_each_rows_slots_by_pass(n, m):
    # slots 0-1 of every group, then 2-3, ... (an odd n's last pass one slot a group); n <= 2: unchanged
    W, a, _ = layer((3, 2 * m + 1), n, m, seed=9)
    v, ix = nk.pass_major(a.values, a.idx, n)
    G = a.values.shape[1] // n
    for i in range(3):
        order = [(g, s) for s0 in range(0, n, 2) for g in range(G) for s in range(s0, min(s0 + 2, n))]
        row = slice(i * G * n, (i + 1) * G * n)
        assert v[row].tolist() == [a.values[i, g * n + s] for g, s in order]
        assert ix[row].tolist() == [a.idx[i, g * n + s] for g, s in order]
    if n <= 2:
        assert np.shares_memory(v, a.values) and np.shares_memory(ix, a.idx)
