"""Training speed: Numba kernels vs their NumPy twins, the whole step, an epoch, and PyTorch.

    pytest bench/bench_train.py --benchmark-group-by=group --benchmark-columns=min,median,max

Threads are set per case with sparsenet.threads.limit (BLAS and Numba) and
torch.set_num_threads; `threads` is in extra_info. Inputs are random arrays of MNIST's shape
(dense matmul time does not depend on the values). One warm call (the compile) runs outside
the timer; compile times are measured in a fresh process with an empty Numba cache.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from sparsenet import train_kernels as K
from sparsenet.model import DEFAULT_SIZES, he_init
from sparsenet.threads import limit as threads_limited
from sparsenet.train import KERNELS, TrainConfig, _Trainer, fit

QUICK = os.environ.get("SPARSENET_BENCH_QUICK", "") not in ("", "0")   # CI: one thread, a short "epoch"
THREADS = [int(t) for t in os.environ.get("SPARSENET_BENCH_THREADS", "1" if QUICK else "1,2").split(",")]
BATCH = 128
N_EPOCH = 2048 if QUICK else 55000   # the default training split: 60000 - n_val
IMPLS = ["numpy", "numba"]


def _op_inputs(op, rng):
    """Arguments of one kernel call at the default net's largest shapes, batch 128."""
    z = rng.standard_normal((BATCH, 1000), dtype=np.float32)
    if op == "bias_relu":
        return (z, rng.standard_normal(1000, dtype=np.float32), np.empty_like(z))
    if op == "relu_backward":
        return (z, np.maximum(rng.standard_normal((BATCH, 1000), dtype=np.float32), 0), np.empty_like(z))
    if op == "softmax_xent":
        logits = rng.standard_normal((BATCH, 10), dtype=np.float32)
        return (logits, rng.integers(0, 10, BATCH), np.empty_like(logits))
    n = 1000 * 1000                  # the 1000x1000 layer, flat
    w, g = (rng.standard_normal(n, dtype=np.float32) for _ in range(2))
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    no_mask = np.zeros(0, np.bool_)
    if op == "adam_update":
        return (w, g, m, v, no_mask, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, 0.0)
    return (w, g, m, no_mask, 1e-3, 0.9, 0.0)


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", K.__all__)
def test_kernel(benchmark, op, impl, threads):
    benchmark.group = f"op-{op}-t{threads}"
    args = _op_inputs(op, np.random.default_rng(0))
    fn = KERNELS[impl][op]
    with threads_limited(threads):
        fn(*args)                                              # warm: compile / load cache
        benchmark(fn, *args)
    benchmark.extra_info.update(threads=threads, impl=impl, op=op)


def _synthetic(n, rng):
    return rng.random((n, DEFAULT_SIZES[0]), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("impl", IMPLS)
def test_step(benchmark, impl, threads):
    """One Adam step of the default net at batch 128: forward, backward, update."""
    benchmark.group = f"step-t{threads}"
    rng = np.random.default_rng(0)
    X, y = _synthetic(1024, rng)
    tr = _Trainer(he_init(), TrainConfig(), kernels=impl)
    idx = np.arange(BATCH)
    with threads_limited(threads):
        tr.step(X, y, idx, 1e-4)
        benchmark(tr.step, X, y, idx, 1e-4)
    benchmark.extra_info.update(threads=threads, impl=impl, batch=BATCH)


@pytest.fixture(scope="module")
def epoch_data():
    return _synthetic(N_EPOCH, np.random.default_rng(0))


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
def test_epoch_sparsenet(benchmark, epoch_data, threads):
    """One epoch of fit() over 55000 rows (no validation), default net and config."""
    benchmark.group = f"epoch-t{threads}"
    X, y = epoch_data
    cfg = TrainConfig(epochs=1)
    params = he_init()
    fit(params, X[:BATCH], y[:BATCH], None, None, cfg, progress=False, threads=threads)   # warm
    benchmark.pedantic(fit, args=(params, X, y, None, None, cfg),
                       kwargs=dict(progress=False, threads=threads), rounds=2, iterations=1)
    benchmark.extra_info.update(threads=threads, rows=N_EPOCH, batch=BATCH)


def _torch_loop(torch, X, y):
    """PyTorch twin of fit()'s inner loop: same net without biases, batch 128, Adam lr 1e-3."""
    layers = []
    n_layers = len(DEFAULT_SIZES) - 1
    for i, (n_in, n_out) in enumerate(zip(DEFAULT_SIZES[:-1], DEFAULT_SIZES[1:])):
        layers += [torch.nn.Linear(n_in, n_out, bias=False)] + ([torch.nn.ReLU()] if i < n_layers - 1 else [])
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X, y = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(0)

    def step(idx):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(X[idx]), y[idx])
        loss.backward()
        opt.step()
        return loss

    def epoch(n=None):
        n = len(X) if n is None else n
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, BATCH):
            loss = step(order[s:s + BATCH])
        return loss.item()

    return step, epoch


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
def test_step_torch(benchmark, threads):
    """The same Adam step in PyTorch (CPU), same threads."""
    torch = pytest.importorskip("torch")
    benchmark.group = f"step-t{threads}"
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step, _ = _torch_loop(torch, *_synthetic(1024, np.random.default_rng(0)))
        idx = torch.arange(BATCH)
        step(idx)                                              # warm
        benchmark(step, idx)
    finally:
        torch.set_num_threads(old)
    benchmark.extra_info.update(threads=threads, impl="torch", batch=BATCH, torch=torch.__version__)


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
def test_epoch_torch(benchmark, epoch_data, threads):
    """The same epoch in PyTorch (CPU), same threads."""
    torch = pytest.importorskip("torch")
    benchmark.group = f"epoch-t{threads}"
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, epoch = _torch_loop(torch, *epoch_data)
        epoch(BATCH * 4)                                       # warm
        loss = benchmark.pedantic(epoch, rounds=2, iterations=1)
        assert np.isfinite(loss)
    finally:
        torch.set_num_threads(old)
    benchmark.extra_info.update(threads=threads, rows=N_EPOCH, batch=BATCH, torch=torch.__version__)


_COMPILE = """
import json, time, numpy as np
from sparsenet import train_kernels as K
import sys; sys.path.insert(0, {bench!r})
from bench_train import _op_inputs
out = {{}}
for op in K.__all__:
    args = _op_inputs(op, np.random.default_rng(0))
    t0 = time.perf_counter(); getattr(K, op)(*args); out[op] = time.perf_counter() - t0
print(json.dumps(out))
"""


def test_compile_time(benchmark):
    """First call of each kernel in a fresh process with an empty Numba cache (compile time)."""
    benchmark.group = "compile"

    def run():
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            code = _COMPILE.format(bench=os.path.dirname(os.path.abspath(__file__)))
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])

    seconds = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({f"compile_s_{k}": round(v, 3) for k, v in seconds.items()})
    print("compile seconds:", {k: round(v, 2) for k, v in seconds.items()})
