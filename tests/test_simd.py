"""The register-tile CSR kernels (simd.py) against NumPy, through a small Numba caller."""
import numpy as np
import pytest
from numba import njit

from sparsenet.csr import CSR
from sparsenet.simd import csr_rows16, csr_rows32
from test_csr import sparse_matrix


@njit
def _call16(d, c, p, b, HT, out, r0, r1, ld_h, ld_o, col0, relu):
    csr_rows16(d, c, p, b, HT, out, r0, r1, ld_h, ld_o, col0, True, relu)


@njit
def _call32(d, c, p, b, HT, out, r0, r1, ld_h, ld_o, col0, relu):
    csr_rows32(d, c, p, b, HT, out, r0, r1, ld_h, ld_o, col0, True, relu)


@pytest.mark.parametrize("width, call", [(16, _call16), (32, _call32)])
@pytest.mark.parametrize("M, N, density", [(1, 1, 1.0), (40, 70, 0.3), (33, 1000, 0.01), (20, 30, 0.0),
                                           (64, 65536, 0.001)])
@pytest.mark.parametrize("relu", [True, False])
def test_rows_on_a_tile_of_a_wider_block(width, call, M, N, density, relu):
    rng = np.random.default_rng(M + N)
    W = sparse_matrix(M, N, density, seed=N)
    c = CSR.from_dense(W)                                # uint16 indices up to N = 65535, then uint32
    b = rng.standard_normal(M).astype(np.float32)
    Bc, col0 = 3 * width, width                          # the middle tile of a (N, 3 * width) block
    HT = rng.standard_normal((N, Bc)).astype(np.float32)
    out = np.full((M, Bc), np.nan, np.float32)
    r0, r1 = (1, M - 1) if M > 2 else (0, M)             # a row range
    call(c.data, c.indices, c.indptr, b, HT, out, r0, r1, Bc, Bc, col0, relu)
    want = W[r0:r1].astype(np.float64) @ HT[:, col0:col0 + width] + b[r0:r1, None]
    if relu:
        want = np.maximum(want, 0)
    np.testing.assert_allclose(out[r0:r1, col0:col0 + width], want, rtol=1e-4, atol=1e-4)
    untouched = np.ones(out.shape, bool)
    untouched[r0:r1, col0:col0 + width] = False
    assert np.isnan(out[untouched]).all()                # nothing written outside the tile


@pytest.mark.parametrize("width, call", [(16, _call16), (32, _call32)])
def test_relu_keeps_nan(width, call):
    """ReLU on the tile is numpy.maximum(x, 0): NaN stays NaN (it used to become 0), -x becomes 0."""
    W = np.ones((2, 3), np.float32)
    c = CSR.from_dense(W)
    HT = np.ones((3, width), np.float32)
    HT[1, 0] = np.nan
    HT[:, 1] = -1
    out = np.empty((2, width), np.float32)
    call(c.data, c.indices, c.indptr, np.zeros(2, np.float32), HT, out, 0, 2, width, width, 0, True)
    want = np.maximum(W @ HT, 0)
    assert np.isnan(out[:, 0]).all() and (out[:, 1] == 0).all()
    np.testing.assert_array_equal(out, want)
