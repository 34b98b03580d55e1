"""The SELL8 kernels (sell8_kernels.py), AVX2 and portable, against NumPy on the same weights; the
typing-time refusals; the AVX2 kernel on an AVX2-only target; the portable twin on aarch64."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from sparsenet import sell8_kernels as K
from sparsenet.model import Layer, forward, he_init
from sparsenet.prune import weight_prune
from sparsenet.sell8 import LANES, SELL8, flatten
from test_csr import sparse_matrix

ROOT = Path(__file__).resolve().parents[1]
AVX2 = pytest.param(True, id="avx2", marks=pytest.mark.skipif(
    not K.available(), reason="the AVX2 kernel needs AVX2 and FMA in Numba's target CPU"))
KERNELS = [AVX2, pytest.param(False, id="portable")]
HASWELL = {"NUMBA_CPU_NAME": "haswell",
           "NUMBA_CPU_FEATURES": "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fsgsbase,+fxsr,"
                                 "+lzcnt,+mmx,+movbe,+pclmul,+popcnt,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,"
                                 "+ssse3,+xsave"}


def _layer_args(W, bias, x, window, split):
    s = SELL8.from_dense(W, window, split).check()
    xb = np.full(s.x_len, np.nan, np.float32)           # beyond N: never multiplied, not even by 0
    xb[:x.size] = x
    b = np.zeros(s.n_chunks * LANES, np.float32)
    b[:bias.size] = bias
    out = np.full(s.n_chunks * LANES, np.nan, np.float32)
    return (s.data.ravel(), s.meta, s.kernel_start, s.unit_ptr, b, xb, out)


@pytest.mark.parametrize("avx2", KERNELS)
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("window", [8, 16])
@pytest.mark.parametrize("M, N, density", [(1, 1, 1.0), (8, 16, 0.5), (17, 33, 0.3), (1000, 784, 0.1),
                                           (10, 203, 0.9), (40, 70, 0.0), (33, 1000, 0.01), (9, 7, 1.0)])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("parts", [None, 1, 3])
def test_matvec(M, N, density, window, split, relu, parts, avx2):
    rng = np.random.default_rng(M * N)
    W = sparse_matrix(M, N, density, seed=N)
    bias = rng.standard_normal(M).astype(np.float32)
    x = rng.standard_normal(N).astype(np.float32)
    args = _layer_args(W, bias, x, window, split)
    data, meta, start, unit_ptr, b, xb, out = args
    if parts is None:
        K.sell8_matvec_bias_relu(*args, window == 16, split, relu, avx2=avx2)
    else:
        K.sell8_matvec_bias_relu(*args, window == 16, split, relu, parts, avx2=avx2)
    want = W.astype(np.float64) @ x + bias
    if relu:
        want = np.maximum(want, 0)
    np.testing.assert_allclose(out[:M], want, rtol=1e-4, atol=1e-4)
    assert np.all(out[M:] == 0)                          # padding rows: no weights, zero bias


def _bufs(n_x, width):
    return [np.full(n, np.nan, np.float32) for n in (n_x, width, width)]   # stale contents must not matter


def _net(sizes, density, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    return [Layer(sparse_matrix(n_out, n_in, density, seed=int(rng.integers(2**16))),
                  rng.standard_normal(n_out).astype(np.float32) if bias else None)
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def _run(net, x, avx2, min_parallel_units, threads, window=None, split=None, bufs=None):
    arrays, (n_x, width), _ = flatten(net, window=window, split=split)
    logits = np.full((1, net[-1].weight.shape[0]), np.nan, np.float32)
    K.sell8_forward(*arrays, x, *(bufs or _bufs(n_x, width)), min_parallel_units, threads, logits, avx2=avx2)
    return logits


THREADS = [pytest.param(10**9, 1, id="1thread"), pytest.param(0, 2, id="2threads")]


@pytest.mark.parametrize("avx2", KERNELS)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("min_parallel_units, threads", THREADS)
def test_forward_he_init_net_equals_dense_reference(sparsity, min_parallel_units, threads, avx2):
    """The 784-1000-1000-500-200-10 net, He-initialised, pruned per layer (output dense), with biases."""
    rng = np.random.default_rng(1)
    net = [Layer(l.weight, 0.1 * rng.standard_normal(l.weight.shape[0]).astype(np.float32))
           for l in weight_prune(he_init(), sparsity)]
    x = rng.random((1, 784)).astype(np.float32)
    np.testing.assert_allclose(_run(net, x, avx2, min_parallel_units, threads), forward(net, x),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("avx2", KERNELS)
@pytest.mark.parametrize("sizes", [(5, 3), (100, 17, 33, 64, 2), (13, 7, 9, 1), (30, 1, 30)])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1])
@pytest.mark.parametrize("window, split", [(None, None), (8, False), (16, False), (8, True), (16, True)])
@pytest.mark.parametrize("min_parallel_units, threads", THREADS)
def test_forward_odd_widths_equal_dense_reference(sizes, density, window, split, min_parallel_units, threads, avx2):
    """Widths not multiples of 8 or 4, biases or none; every kind of layer."""
    net = _net(sizes, density, bias=density != 0.5)
    x = np.random.default_rng(2).standard_normal((1, sizes[0])).astype(np.float32)
    np.testing.assert_allclose(_run(net, x, avx2, min_parallel_units, threads, window, split), forward(net, x),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("avx2", KERNELS)
@pytest.mark.parametrize("min_parallel_units, threads", THREADS)
def test_consecutive_calls_share_buffers(min_parallel_units, threads, avx2):
    net = _net((60, 40, 24, 10), 0.3)
    arrays, (n_x, width), _ = flatten(net)
    bufs = _bufs(n_x, width)
    rng = np.random.default_rng(3)
    for _ in range(4):
        x = rng.standard_normal((1, 60)).astype(np.float32)
        logits = np.empty((1, 10), np.float32)
        K.sell8_forward(*arrays, x, *bufs, min_parallel_units, threads, logits, avx2=avx2)
        np.testing.assert_allclose(logits, forward(net, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("avx2", KERNELS)
@pytest.mark.parametrize("min_parallel_units, threads", THREADS)
def test_all_zero_layer_and_empty_rows(min_parallel_units, threads, avx2):
    net = _net((50, 40, 30, 4), 0.5)
    net[1] = Layer(np.zeros_like(net[1].weight), net[1].bias)            # all zero: bias only
    W = net[0].weight.copy()
    W[[0, 3, 8, 9, 10, 11, 12, 13, 14, 15, 39]] = 0                       # empty rows, an empty chunk
    net[0] = Layer(W, net[0].bias)
    x = np.ones((1, 50), np.float32)
    np.testing.assert_allclose(_run(net, x, avx2, min_parallel_units, threads), forward(net, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not K.available(), reason="the AVX2 kernel needs AVX2 and FMA in Numba's target CPU")
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("window", [8, 16])
def test_avx2_equals_portable(window, split):
    net = [Layer(l.weight, None) for l in weight_prune(he_init((300, 200, 100, 10)), 0.7)]
    x = np.random.default_rng(4).random((1, 300)).astype(np.float32)
    np.testing.assert_allclose(_run(net, x, True, 10**9, 1, window, split),
                               _run(net, x, False, 10**9, 1, window, split), rtol=1e-5, atol=1e-5)


@njit
def _call_chunk(data, meta, start, unit_ptr, x, bias, out):
    K._chunk8_avx2(data, meta, start, unit_ptr, x, bias, out, 0, True)


def _chunk_arrays():
    s = SELL8.from_dense(sparse_matrix(8, 20, 0.5, seed=5))
    return [s.data.ravel(), s.meta, s.kernel_start, s.unit_ptr, np.zeros(24, np.float32), np.zeros(8, np.float32),
            np.zeros(8, np.float32)]


@pytest.mark.parametrize("position, bad, message", [
    (0, lambda a: a.astype(np.float64), "data must be a C-contiguous 1-d float32"),
    (1, lambda a: a.astype(np.int64), "meta must be a C-contiguous 1-d uint64"),
    (2, lambda a: a.astype(np.int32), "start must be a C-contiguous 1-d uint16"),
    (3, lambda a: a.astype(np.int32), "unit_ptr must be a C-contiguous 1-d int64"),
    (4, lambda a: np.zeros(48, np.float32)[::2], "x must be a C-contiguous"),
    (6, lambda a: np.zeros((1, 8), np.float32), "out must be a C-contiguous 1-d"),
])
def test_typer_refuses_wrong_arrays(position, bad, message, monkeypatch):
    """The intrinsic reads raw pointers: a wrong dtype, a strided or 2-d array is refused, not misread."""
    monkeypatch.setattr(K, "available", lambda: True)              # typing only: nothing runs
    args = _chunk_arrays()
    args[position] = bad(args[position])
    with pytest.raises(TypingError, match=message):
        _call_chunk(*args)


def test_avx2_refused_without_avx2(monkeypatch):
    monkeypatch.setattr(K, "available", lambda: False)
    net = _net((10, 4), 1.0)
    with pytest.raises(ValueError, match="AVX2"):
        _run(net, np.ones((1, 10), np.float32), True, 10**9, 1)

    @njit
    def fresh(data, meta, start, unit_ptr, x, bias, out, c):
        K._chunk16_avx2(data, meta, start, unit_ptr, x, bias, out, c, False)

    with pytest.raises(TypingError, match="needs AVX2 and FMA"):   # a signature not typed before
        fresh(*_chunk_arrays(), np.int16(0))
    np.testing.assert_allclose(_run(net, np.ones((1, 10), np.float32), False, 10**9, 1),
                               forward(net, np.ones((1, 10), np.float32)), rtol=1e-5, atol=1e-5)


def _subprocess(code, tmp_path, **env):
    full = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=900)


_TARGET = """
    import numpy as np
    from sparsenet import sell8_kernels as K
    from sparsenet.model import Layer, forward, he_init
    from sparsenet.prune import weight_prune
    from sparsenet.sell8 import flatten
    net = [Layer(l.weight, np.full(l.weight.shape[0], 0.1, np.float32))
           for l in weight_prune(he_init((70, 60, 50, 10)), 0.6)]
    x = np.random.default_rng(0).random((1, 70)).astype(np.float32)
    print("available", K.available())
    for avx2 in ([True, False] if K.available() else [False]):
        for units, threads in ((10**9, 1), (0, 2)):
            for window in (8, 16):
                for split in (False, True):
                    arrays, (n_x, w), _ = flatten(net, window=window, split=split)
                    bufs = [np.zeros(n, np.float32) for n in (n_x, w, w)]
                    logits = np.empty((1, 10), np.float32)
                    K.sell8_forward(*arrays, x, *bufs, units, threads, logits, avx2=avx2)
                    np.testing.assert_allclose(logits, forward(net, x), rtol=1e-4, atol=1e-4)
    if not K.available():
        try:
            K.sell8_forward(*arrays, x, *bufs, 1, 1, logits, avx2=True)
        except ValueError:
            print("refused")
    print("ok")
"""


def test_avx2_kernel_on_an_avx2_only_target(tmp_path):
    """NUMBA_CPU_NAME=haswell with its features: AVX2 code, no AVX-512, on any x86 machine with AVX2."""
    if not K.available():
        pytest.skip("this CPU has no AVX2: the haswell target would emit instructions it lacks")
    r = _subprocess(_TARGET, tmp_path, **HASWELL)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.split() == ["available", "True", "ok"]


def test_no_avx2_target_refuses_the_avx2_kernel(tmp_path):
    """NUMBA_CPU_NAME=generic (no features): available() is False, the AVX2 kernel is refused before
    anything compiles, the portable twin runs."""
    r = _subprocess(_TARGET, tmp_path, NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.split() == ["available", "False", "refused", "ok"]


# Compiles the portable kernels for this CPU (NUMBA_OPT=0: the optimiser would turn some IR into x86
# intrinsics), moves their LLVM IR to an aarch64 target and emits an object from it (as test_portability).
_AARCH64 = """
    import sys
    import numpy as np
    sys.path.insert(0, "tests")
    from aarch64 import aarch64_asm
    from sparsenet import sell8_kernels as K
    from sparsenet.model import he_init
    from sparsenet.prune import weight_prune
    from sparsenet.sell8 import flatten
    arrays, (n_x, w), _ = flatten(weight_prune(he_init((64, 48, 10), bias=True), 0.5))
    x = np.ones((1, 64), np.float32)
    for threads in (1, 2):
        bufs = [np.zeros(n, np.float32) for n in (n_x, w, w)]
        K.sell8_forward(*arrays, x, *bufs, 0, threads, np.empty((1, 10), np.float32), avx2=False)
    for disp in (K._forward_serial, K._forward, K._part_portable):
        aarch64_asm(disp)
        print(disp.__name__)
"""


def test_portable_twin_compiles_for_aarch64(tmp_path):
    r = _subprocess(_AARCH64, tmp_path, NUMBA_OPT="0")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.split() == ["_forward_serial", "_forward", "_part_portable"]


def test_nothing_compiled_at_import(tmp_path):
    r = _subprocess("""
        import numba
        from sparsenet import sell8, sell8_kernels as K
        from sparsenet.cfuncs import Callback
        compiled = [n for n, f in vars(K).items() if isinstance(f, numba.core.registry.CPUDispatcher) and f.signatures]
        compiled += [n for n, f in vars(K).items() if isinstance(f, Callback) and f._compiled]
        print("compiled", compiled)
    """, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["compiled", "[]"]
