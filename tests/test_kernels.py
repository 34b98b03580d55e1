"""Numba kernels against NumPy on the same raw arrays (the oracle is W @ HT + b, then ReLU)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsenet import kernels
from sparsenet.csr import CSR
from sparsenet.csr_engine import panel_layout
from sparsenet.model import forward, he_init

MATVEC = [kernels.csr_matvec_bias_relu, kernels.csr_matvec_bias_relu_serial]


def ragged(M=21, N=40, seed=0):
    """Row i holds i non-zeros (every remainder of the 4- and 8-way unrolls, and an empty row)."""
    rng = np.random.default_rng(seed)
    W = np.zeros((M, N), np.float32)
    for i in range(M):
        W[i, rng.choice(N, size=min(i, N), replace=False)] = rng.standard_normal(min(i, N))
    return W


def reference(W, HT, b, relu):
    out = W.astype(np.float64) @ HT + b[:, None]
    return np.maximum(out, 0) if relu else out


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b).max(initial=0.0)))


@pytest.mark.parametrize("n_blocks", [1, 3, 40], ids=["serial", "3-blocks", "more-blocks-than-rows"])
@pytest.mark.parametrize("B", [16, 32, 48, 64, 80, 112, 256])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("idx", [np.uint16, np.uint32])
def test_matmul(n_blocks, B, relu, idx):
    """Register tiles on a plain layer (one panel of every input); B a multiple of 16, as the engine pads
    (64-column tiles while 64 columns are left, then 32, then 16: 80 = 64 + 16, 112 = 64 + 32 + 16)."""
    W = ragged()
    c = CSR.from_dense(W).check()
    rng = np.random.default_rng(B)
    HT = rng.standard_normal((W.shape[1], B)).astype(np.float32)
    b = rng.standard_normal(W.shape[0]).astype(np.float32)
    out = np.full((W.shape[0], B), np.nan, np.float32)
    kernels.csr_tile_panels_bias_relu(c.data, c.indices.astype(idx), c.indptr, W.shape[1], b, HT, out, relu, n_blocks)
    close(out, reference(W, HT, b, relu))


@pytest.mark.parametrize("kernel", MATVEC, ids=["parallel", "serial"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("idx", [np.uint16, np.uint32, np.int32])
def test_matvec(kernel, relu, idx):
    W = ragged()
    c = CSR.from_dense(W)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(W.shape[1]).astype(np.float32)
    b = rng.standard_normal(W.shape[0]).astype(np.float32)
    out = np.full(W.shape[0], np.nan, np.float32)
    kernel(c.data, c.indices.astype(idx), c.indptr, b, x, out, relu)
    close(out, reference(W, x[:, None], b, relu)[:, 0])


def flat(params, panel=None):
    """The concatenated arrays csr_forward takes (what csr_engine.CSREngine builds)."""
    cs = [CSR.from_dense(l.weight).check() for l in params]
    panels = [c.shape[1] if panel is None else panel for c in cs]
    layout = [panel_layout(c, P) for c, P in zip(cs, panels)]
    sizes = np.array([params[0].weight.shape[1]] + [l.weight.shape[0] for l in params], np.int64)
    bias = np.concatenate([np.zeros(l.weight.shape[0], np.float32) if l.bias is None else l.bias
                           for l in params])
    nnz_off = np.concatenate([[0], np.cumsum([c.nnz for c in cs])]).astype(np.int64)
    ptr_off = np.concatenate([[0], np.cumsum([p.size for _, _, p in layout])]).astype(np.int64)
    return (np.concatenate([d for d, _, _ in layout]), np.concatenate([i for _, i, _ in layout]),
            np.concatenate([p for _, _, p in layout]), bias, sizes, nnz_off, ptr_off,
            np.array(panels, np.int64))


def chain_params(seed):
    """A 30-25-21-4 MLP, 40% dense, with biases."""
    params = he_init((30, 25, 21, 4), bias=True, seed=seed)
    rng = np.random.default_rng(0)
    return tuple(l._replace(weight=l.weight * (rng.random(l.weight.shape) < 0.4),
                            bias=rng.standard_normal(l.bias.shape).astype(np.float32) * 0.1)
                 for l in params)


@pytest.mark.parametrize("B, panel", [(1, None), (16, None), (16, 4), (16, 7), (64, None), (64, 4), (64, 7)])
@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
def test_forward_chain(B, parallel, panel):
    # (batch 1 runs the SpMV on the plain layout: the plan never pairs it with panels)
    params = chain_params(seed=B)
    X = np.random.default_rng(0).standard_normal((B, 30)).astype(np.float32)
    width = 25
    HT = np.ascontiguousarray(X.T)
    buf0, buf1 = np.full(width * B, np.nan, np.float32), np.full(width * B, np.nan, np.float32)
    kind = kernels.SPMV if B == 1 else kernels.TILES if panel is None else kernels.TILE_PANELS
    codes = np.full(len(params), kind | (kernels.PARALLEL if parallel else 0), np.int64)
    outT = kernels.csr_forward(*flat(params, panel), HT, buf0, buf1, codes, 2)
    close(outT.T, forward(params, X))


@pytest.mark.parametrize("panel", [None, 4, 7], ids=["plain", "panel4", "panel7"])
@pytest.mark.parametrize("B, Bc, n_workers", [
    (1, 16, 1), (5, 16, 1), (16, 16, 2), (17, 16, 2), (17, 32, 3), (7, 16, 4), (64, 32, 2), (33, 16, 2),
    (100, 32, 2), (100, 48, 3), (100, 64, 2), (256, 64, 3), (70, 80, 2)])
def test_forward_chunks(B, Bc, n_workers, panel):
    # uneven splits (a padded last chunk, more workers than chunks, an odd chunk count); scratch
    # full of NaN: pad columns must be zeroed and nothing stale may reach the logits
    params = chain_params(seed=B)
    X = np.random.default_rng(1).standard_normal((B, 30)).astype(np.float32)
    width = 25
    HT = np.full((n_workers, 30, Bc), np.nan, np.float32)
    buf0, buf1 = (np.full((n_workers, width * Bc), np.nan, np.float32) for _ in range(2))
    out = np.full((B, 4), np.nan, np.float32)
    kernels.csr_forward_chunks(*flat(params, panel), X, HT, buf0, buf1, out, np.full(1, 99, np.int64))
    close(out, forward(params, X))


@settings(max_examples=40, deadline=None)
@given(M=st.integers(0, 30), N=st.integers(1, 30), B=st.sampled_from([16, 32, 48, 64, 80]), P=st.integers(1, 31),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), seed=st.integers(0, 999))
def test_random_shapes(M, N, B, P, density, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((M, N)).astype(np.float32) * (rng.random((M, N)) < density)
    c = CSR.from_dense(W).check()
    HT = rng.standard_normal((N, B)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    ref = reference(W, HT, b, True)
    out = np.full((M, B), np.nan, np.float32)
    kernels.csr_tile_panels_bias_relu(c.data, c.indices, c.indptr, N, b, HT, out, True, 1 + seed % 4)
    close(out, ref)
    o1 = np.empty(M, np.float32)
    kernels.csr_matvec_bias_relu(c.data, c.indices, c.indptr, b, HT[:, 0].copy(), o1, True)
    close(o1, ref[:, 0])
    data, indices, indptr = panel_layout(c, P)
    out[:] = np.nan
    kernels.csr_tile_panels_bias_relu(data, indices, indptr, P, b, HT, out, True, 1 + seed % 4)
    close(out, ref)


@pytest.mark.parametrize("P", [1, 3, 8, 16, 40])
@pytest.mark.parametrize("B", [16, 32, 48, 64, 112])
def test_panels(P, B):
    W = ragged()
    c = CSR.from_dense(W).check()
    data, indices, indptr = panel_layout(c, P)
    n_panels = -(-W.shape[1] // P)
    assert indptr.size == n_panels * (W.shape[0] + 1) and data.size == c.nnz
    assert indices.dtype == c.indices.dtype and (indices < P).all()
    rng = np.random.default_rng(P)
    HT = rng.standard_normal((W.shape[1], B)).astype(np.float32)
    b = rng.standard_normal(W.shape[0]).astype(np.float32)
    for relu, n_blocks in ((True, 3), (False, 1)):
        out = np.full((W.shape[0], B), np.nan, np.float32)
        kernels.csr_tile_panels_bias_relu(data, indices, indptr, P, b, HT, out, relu, n_blocks)
        close(out, reference(W, HT, b, relu))


def test_fastmath_contract_only():
    # FMA contraction is the only fast-math flag: no reassociation, so results stay within
    # float32 rounding of the float64 reference (checked above) and NaN/inf propagate.
    W = np.array([[1.0, 1.0]], np.float32)
    c = CSR.from_dense(W)
    out = np.empty(1, np.float32)
    kernels.csr_matvec_bias_relu_serial(c.data, c.indices, c.indptr, np.zeros(1, np.float32),
                                        np.array([np.inf, 1.0], np.float32), out, False)
    assert out[0] == np.inf
