"""Inference time of the MLP: engine x sparsity x batch x threads, one table per batch size.

    python -m pytest bench/bench_inference.py --benchmark-group-by=group \
        --benchmark-columns=min,median,max,rounds,iterations

dense, csr and csr-scipy run the weight-pruned net, shrunk the neuron-pruned one (see bench.py).
"""
import pytest

from conftest import BATCHES, MAX_CALL_S, SPARSITIES, THREADS, mlp_params, pruned_net, run_case
from sparsenet import bench

ENGINES = ("dense", "csr", "csr-scipy", "shrunk")


def _params():
    for engine in ENGINES:
        for k in SPARSITIES:
            for b in BATCHES:
                for t in THREADS:
                    yield pytest.param(engine, k, b, t, id=f"{engine}-s{round(k * 100)}-b{b}-t{t}",
                                       marks=pytest.mark.benchmark(group=f"batch {b}"))


@pytest.mark.parametrize("engine, sparsity, batch, threads", list(_params()))
def test_inference(benchmark, engine, sparsity, batch, threads):
    reason = bench.mlp_skip(mlp_params(), max_call_s=MAX_CALL_S)(engine, sparsity, batch, threads)
    if reason:
        pytest.skip(reason)
    method = bench.method_for(engine)
    case = bench.make_case(engine, pruned_net(method, sparsity), method=method, sparsity=sparsity,
                           batch=batch, threads=threads)
    run_case(benchmark, case)
