"""The bitmap row kernels (bitmap_kernels.py) against NumPy on the same weights.

Every test runs the portable twin (any CPU) and, where Numba targets AVX-512F, the AVX-512 kernel;
the whole forward that mixes bitmap and SELL-16 layers is tested in test_sell_kernels.py.
"""
import numpy as np
import pytest
from numba.core.errors import TypingError

from sparsenet import bitmap_kernels as bk
from sparsenet.bitmap import GROUP, Bitmap
from test_csr import sparse_matrix

KERNELS = {"portable": (bk.bitmap_matvec_portable_serial, bk.bitmap_matvec_portable)}
if bk.available():
    KERNELS["avx512"] = (bk.bitmap_matvec_serial, bk.bitmap_matvec)


def _args(W, bias, x, fill=7.0):
    """(Bitmap, the matvec's arguments up to n_groups): x padded to whole groups with `fill` where the
    weights are zero (it must not matter while finite), out pre-filled with NaN."""
    b = Bitmap.from_dense(W).check()
    xb = np.full(b.n_groups * GROUP, fill, np.float32)
    xb[:x.size] = x
    bb = np.zeros(b.n_rows, np.float32)
    bb[:bias.size] = bias
    return b, (b.values, b.masks, b.rptr, bb, xb, np.full(b.n_rows, np.nan, np.float32), b.n_groups)


def _call(kernel, parallel, args, relu, parts=2):
    kernel(*args, relu, parts) if parallel else kernel(*args, relu)
    return args[5]


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("M, N, density", [(1, 1, 1.0), (16, 16, 0.5), (17, 33, 0.3), (1000, 784, 0.1),
                                           (200, 1000, 1.0), (40, 70, 0.01), (33, 17, 0.0)])
@pytest.mark.parametrize("relu", [True, False])
def test_matvec_equals_dense(name, parallel, M, N, density, relu):
    rng = np.random.default_rng(M * N)
    W = sparse_matrix(M, N, density, seed=M + N)
    x, bias = rng.standard_normal(N).astype(np.float32), rng.standard_normal(M).astype(np.float32)
    b, args = _args(W, bias, x)
    out = _call(KERNELS[name][parallel], parallel, args, relu)
    want = W.astype(np.float64) @ x + bias
    want = np.maximum(want, 0) if relu else want
    np.testing.assert_allclose(out[:M], want, rtol=1e-4, atol=1e-4)
    assert not out[M:].any()                                  # padded rows: bias 0, no weights


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_empty_rows_consecutive_calls_and_parts(name):
    W = sparse_matrix(64, 50, 0.4, seed=5)
    W[[0, 17, 63]] = 0
    x = np.random.default_rng(1).standard_normal(50).astype(np.float32)
    bias = np.arange(64, dtype=np.float32) - 32
    _, args = _args(W, bias, x)
    first = _call(KERNELS[name][0], False, args, True).copy()
    np.testing.assert_allclose(first[:64], np.maximum(W @ x + bias, 0), rtol=1e-5, atol=1e-5)
    assert first[0] == 0 and first[17] == 0 and first[63] == 31          # bias alone
    for parts in (1, 2, 3, 8):                                # more parts than 16-row blocks: some idle
        args[5][:] = np.nan
        np.testing.assert_array_equal(_call(KERNELS[name][1], True, args, True, parts), first)
    np.testing.assert_array_equal(_call(KERNELS[name][0], False, args, True), first)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_non_finite_input_propagates_where_dense_does(name):
    W = sparse_matrix(20, 40, 0.5, seed=2)
    W[4, :] = 0
    W[4, 7] = 1.0
    x = np.random.default_rng(3).standard_normal(40).astype(np.float32)
    x[7] = np.nan
    _, args = _args(W, np.zeros(20, np.float32), x, fill=0.0)
    out = _call(KERNELS[name][0], False, args, False)
    assert np.isnan(out[4])                                   # row 4 reads the NaN
    dense = W @ np.nan_to_num(x, nan=0.0)
    # the kernels may also spread a NaN to rows whose weight at column 7 is zero (0 * NaN), as
    # BLAS's dense product does; rows that never see it stay finite and right
    finite = np.isfinite(out[:20])
    np.testing.assert_allclose(out[:20][finite], dense[finite], rtol=1e-5, atol=1e-5)
    if name == "portable":                                    # a lane at a time: the rows that read it
        np.testing.assert_array_equal(finite, W[:, 7] == 0)


@pytest.mark.skipif(not bk.available(), reason="needs Numba targeting AVX-512F")
def test_avx512_rejects_wrong_arrays():
    b, args = _args(sparse_matrix(16, 16, 0.5), np.zeros(16, np.float32), np.ones(16, np.float32))
    with pytest.raises(TypingError, match="masks must be a C-contiguous 1-d uint16"):
        bk.bitmap_matvec_serial(args[0], args[1].astype(np.int32), *args[2:], True)


@pytest.mark.skipif(bk.available(), reason="this CPU has AVX-512F")
def test_avx512_kernel_refuses_a_target_without_it():
    _, args = _args(sparse_matrix(16, 16, 0.5), np.zeros(16, np.float32), np.ones(16, np.float32))
    with pytest.raises(TypingError, match="needs a CPU with AVX-512F"):
        bk.bitmap_matvec_serial(*args, True)
