"""N:M kernels against numpy: n = 1, 2, 4 (compiled in) and 3 (at run time), tails, column panels
narrower than a row, relu on/off, batch 1, typing checks."""
import numpy as np
import pytest
from numba.core.errors import TypingError

from sparsenet import nm_kernels as nk
from sparsenet.model import Layer
from sparsenet.nm import NM
from sparsenet.prune import nm_prune

PATTERNS = [(1, 4), (2, 4), (4, 4), (3, 8), (1, 2), (2, 5)]


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
    nk.nm_matmul_bias_relu(a.values.ravel(), a.idx.ravel(), bias, HT, out, n, m, panel, relu)
    ref = W @ HT + bias[:, None]
    if relu:
        ref = np.maximum(ref, 0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, m", PATTERNS)
@pytest.mark.parametrize("parallel", [True, False])
def test_matvec_against_numpy(n, m, parallel):
    W, a, bias = layer((37, 29), n, m, seed=2)
    x = np.random.default_rng(3).standard_normal(29).astype(np.float32)
    out = np.full(37, np.nan, np.float32)
    fn = nk.nm_matvec_bias_relu if parallel else nk.nm_matvec_bias_relu_serial
    fn(a.values.ravel(), a.idx.ravel(), bias, x, out, n, m, True)
    np.testing.assert_allclose(out, np.maximum(W @ x + bias, 0), rtol=1e-5, atol=1e-5)


def test_all_zero_layer():
    a = NM.from_dense(np.zeros((5, 9), np.float32), 2, 4)
    bias = np.arange(5, dtype=np.float32) - 2
    out = np.full((5, 32), np.nan, np.float32)
    nk.nm_matmul_bias_relu(a.values.ravel(), a.idx.ravel(), bias, np.ones((9, 32), np.float32), out, 2, 4, 128, True)
    np.testing.assert_array_equal(out, np.repeat(np.maximum(bias, 0)[:, None], 32, 1))


def test_rows_refuse_wrong_arrays():
    W, a, bias = layer((8, 8), 2, 4)
    out = np.zeros((8, 32), np.float32)
    with pytest.raises(TypingError, match="idx must be a C-contiguous 1-d uint8 array"):
        nk.nm_matmul_bias_relu(a.values.ravel(), a.idx.ravel().astype(np.int32), bias,
                               np.zeros((8, 32), np.float32), out, 2, 4, 128, True)
