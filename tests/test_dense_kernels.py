"""The one-call dense kernels (dense_kernels.py) and the fused dense engines against the reference."""
import numba
import numpy as np
import pytest

from sparsenet import dense_kernels
from sparsenet.engines import make_engine
from sparsenet.model import Layer, forward, he_init
from sparsenet.plan import Tuning
from sparsenet.prune import neuron_prune

TWO = numba.config.NUMBA_NUM_THREADS >= 2


def _close(out, ref):
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max(initial=0))))


def _sparse_input(B, n, zeros, seed=0):
    """Inputs with a fraction `zeros` of exact zeros (like MNIST pixels), some columns zero in every row."""
    rng = np.random.default_rng(seed)
    X = rng.random((B, n), dtype=np.float32)
    X[rng.random((B, n)) < zeros] = 0
    X[:, ::7] = 0
    return X


@pytest.mark.parametrize("n_out", [1, 5, 255, 256, 257, 700])
@pytest.mark.parametrize("B", [1, 3, 16])
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("parallel", [False, True])
def test_layer(n_out, B, skip, parallel):
    rng = np.random.default_rng(n_out + B)
    n_in = 37                                             # not a multiple of the 4-input passes
    W = rng.standard_normal((n_out, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    H = _sparse_input(B, n_in, 0.6, seed=B)
    WT = np.ascontiguousarray(W.T)
    idx = np.full(n_in, -1, np.int64)
    out = np.full((B, n_out), np.nan, np.float32)
    layer = dense_kernels.dense_layer if parallel else dense_kernels.dense_layer_serial
    for relu in (True, False):
        layer(WT, b, H, idx, out, skip, relu)
        ref = H.astype(np.float64) @ W.T + b
        _close(out, np.maximum(ref, 0) if relu else ref)
    if skip:                                              # only the inputs some row needs were listed
        nz = np.flatnonzero((H != 0).any(axis=0))
        np.testing.assert_array_equal(idx[:nz.size], nz)


@pytest.mark.parametrize("n_parts", [1, 2, 3, 5])
@pytest.mark.parametrize("n_in", [1, 9])
@pytest.mark.parametrize("n_out", [1, 17, 1000, 4097])
@pytest.mark.parametrize("B", [1, 4, 17])
def test_layer_parts_sum_every_input(n_parts, n_in, n_out, B):
    """A layer's inputs split over n_parts parts, summed with the bias and ReLU after: more parts than
    inputs (parts with none), several column blocks a part (B * n_out * 4 > TILE_BYTES)."""
    rng = np.random.default_rng(n_out * 7 + B + n_in)
    W = rng.standard_normal((n_out, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    H = rng.standard_normal((B, n_in)).astype(np.float32)
    for relu in (False, True):
        out = np.full((B, n_out), np.nan, np.float32)
        dense_kernels.dense_layer(np.ascontiguousarray(W.T), b, H, np.empty(n_in, np.int64), out, False, relu,
                                  n_threads=n_parts)
        ref = H.astype(np.float64) @ W.T + b
        _close(out, np.maximum(ref, 0) if relu else ref)


def test_relu_keeps_nan():
    WT = np.ones((2, 3), np.float32)
    H = np.array([[np.nan, 1.0]], np.float32)
    out = np.empty((1, 3), np.float32)
    dense_kernels.dense_layer_serial(WT, np.array([0, -5, 0], np.float32), H, np.empty(2, np.int64), out, False, True)
    assert np.isnan(out).all()


def _net(sizes=(96, 80, 64, 10), seed=0):
    rng = np.random.default_rng(seed)
    return tuple(Layer(l.weight, (rng.standard_normal(l.weight.shape[0]) * 0.1).astype(np.float32))
                 for l in he_init(sizes, seed=seed))


@pytest.mark.parametrize("name", ["dense-fused", "shrunk-fused"])
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_engines_match_reference(name, skip, threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("machine has fewer cores")
    params = neuron_prune(_net(), 0.5) if name == "shrunk-fused" else _net()
    eng = make_engine(name, params, threads=threads, skip_zeros=skip,
                      tuning=Tuning(min_parallel_dense=0))    # every layer parallel at 2 threads
    held = []
    for B in (1, 3, 4, 5, 16, 64, 1):                      # above max_fused_batch (4): BLAS
        X = _sparse_input(B, 96, 0.8, seed=B)
        held.append((eng(X), forward(params, X)))
        p = eng.plan(B)
        fused = B <= Tuning().max_fused_batch
        assert p.split == ("none" if threads == 1 else "inputs") if fused else p.split == "blas"
        assert {l.kernel for l in p.layers} == ({"dense-tiles-skip" if skip else "dense-tiles"} if fused
                                                else {"sgemm"})
    for out, ref in held:                                  # results of earlier calls still intact
        assert out.dtype == np.float32
        _close(out, ref)


def test_fused_engine_options_checked():
    with pytest.raises(ValueError, match="skip_zeros must be True or False, got 'yes'"):
        make_engine("dense-fused", _net(), skip_zeros="yes")
    with pytest.raises(ValueError, match="tuning must be a plan.Tuning, got dict"):
        make_engine("dense-fused", _net(), tuning={})


def test_all_zero_input_and_layer():
    params = list(_net())
    params[1] = Layer(np.zeros_like(params[1].weight), params[1].bias)
    eng = make_engine("dense-fused", params, threads=1, skip_zeros=True)
    X = np.zeros((2, 96), np.float32)
    _close(eng(X), forward(params, X))


@pytest.mark.parametrize("B", [1, 5, 16, 17])
@pytest.mark.parametrize("k", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("csc_batch", [1, 16])
def test_csr_engine_skipping_zeros(B, k, csc_batch):
    """csr with skip_zeros: batches up to max_fused_batch on the CSC copy, skipping zero inputs."""
    from sparsenet.prune import weight_prune
    params = list(weight_prune(_net(), k))
    params[1] = Layer(np.zeros_like(params[1].weight), params[1].bias) if k == 0.99 else params[1]
    eng = make_engine("csr", params, threads=1, skip_zeros=True, tuning=Tuning(max_csc_batch=csc_batch))
    X = _sparse_input(B, 96, 0.8, seed=B)
    held = [(eng(X), forward(params, X)), (eng(X[::-1]), forward(params, X[::-1].copy()))]
    for out, ref in held:
        _close(out, ref)
    p = eng.plan(B)
    assert (p.layout == "csc") == (B <= csc_batch)
    if p.layout == "csc":
        assert {l.kernel for l in p.layers} == {"csc-skip"} and p.nbytes == eng.net.nbytes["csc"] > 0
    with pytest.raises(ValueError, match="skip_zeros must be True or False, got 1"):
        make_engine("csr", params, skip_zeros=1)
