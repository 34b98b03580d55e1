"""BSR kernels against numpy on the padded matrices: every block shape the tiles dispatch on
(8, 4, 2, 1 rows per tile; c == 1 and c > 1), relu on/off, several tiles, batch 1, typing checks."""
import numpy as np
import pytest
from numba.core.errors import TypingError

from sparsenet import bsr_kernels as bk
from sparsenet.bsr import BSR

BLOCKS = [(1, 1), (1, 4), (2, 3), (3, 1), (4, 1), (4, 4), (8, 1), (8, 2), (6, 1)]


def layer(shape, block, density, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape).astype(np.float32)
    b = BSR.from_dense(W, block)
    keep = rng.random(b.nblocks) < density                       # drop whole blocks
    W = BSR(b.data * keep[:, None, None], b.indices, b.indptr, b.shape).to_dense()
    b = BSR.from_dense(W, block).check()
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    return W, b, bias


def padded(b, bias):
    r, c = b.block
    Rb, Cb = b.grid
    bp = np.zeros(Rb * r, np.float32)
    bp[:bias.size] = bias
    return b.data.ravel(), b.indices, b.indptr, bp, Rb * r, Cb * c


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("density", [0, 0.5, 1])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("Bc", [32, 96])
def test_matmul_against_numpy(block, density, relu, Bc):
    W, b, bias = layer((37, 29), block, density)
    data, indices, indptr, bp, rows, cols = padded(b, bias)
    rng = np.random.default_rng(1)
    HT = np.zeros((cols, Bc), np.float32)
    HT[:29] = rng.standard_normal((29, Bc))
    out = np.full((rows, Bc), np.nan, np.float32)
    bk.bsr_matmul_bias_relu(data, indices, indptr, bp, HT, out, block[0], block[1], relu)
    ref = W @ HT[:29] + bias[:, None]
    if relu:
        ref = np.maximum(ref, 0)
    np.testing.assert_allclose(out[:37], ref, rtol=1e-5, atol=1e-5)
    assert not out[37:].any()                                   # padded rows: zero weights, zero bias


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("parallel", [True, False])
def test_matvec_against_numpy(block, parallel):
    W, b, bias = layer((37, 29), block, 0.5, seed=2)
    data, indices, indptr, bp, rows, cols = padded(b, bias)
    x = np.zeros(cols, np.float32)
    x[:29] = np.random.default_rng(3).standard_normal(29)
    out = np.full(rows, np.nan, np.float32)
    fn = bk.bsr_matvec_bias_relu if parallel else bk.bsr_matvec_bias_relu_serial
    fn(data, indices, indptr, bp, x, out, block[0], block[1], True)
    np.testing.assert_allclose(out[:37], np.maximum(W @ x[:29] + bias, 0), rtol=1e-5, atol=1e-5)


def test_rows_per_tile():
    assert [bk.rows_per_tile(r) for r in (1, 2, 3, 4, 6, 8, 12, 16)] == [1, 2, 1, 4, 2, 8, 4, 8]
    # without AVX-512 a tile takes 4 rows at most (its accumulators in 16 ymm: 8 spilled)
    for isa in ("avx2", "neon", "generic"):
        assert [bk.rows_per_tile(r, isa) for r in (1, 2, 3, 4, 6, 8, 12, 16)] == [1, 2, 1, 4, 2, 4, 4, 4]


def test_tile_refuses_wrong_arrays():
    W, b, bias = layer((8, 8), (4, 1), 1)
    data, indices, indptr, bp, rows, cols = padded(b, bias)
    HT = np.zeros((cols, 32), np.float64)
    out = np.zeros((rows, 32), np.float32)
    with pytest.raises(TypingError, match="HT must be a C-contiguous 2-d float32 array"):
        bk.bsr_matmul_bias_relu(data, indices, indptr, bp, HT, out, 4, 1, True)
