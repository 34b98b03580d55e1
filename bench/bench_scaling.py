"""One square layer (n_in = n_out = width) at growing widths: dense BLAS vs our CSR kernels.

    python -m pytest bench/bench_scaling.py --benchmark-group-by=group

Cases too large (memory) or predicted too slow per call are skipped with the reason
(bench.scaling_skip); the study's scaling stage uses the same layer builder and rule.
"""
import functools

import pytest

from conftest import BATCHES, MAX_CALL_S, SCALING_THREADS, SPARSITIES, WIDTHS, run_case
from sparsenet import bench

ENGINES = ("dense", "csr")


@functools.lru_cache(maxsize=1)
def layer(width, sparsity):
    """The pruned layer of one (width, k), built once (a 16k layer takes seconds to prune)."""
    return bench.scaling_params(width, sparsity)


def _params():
    for w in WIDTHS:                  # width, then k outermost: each layer is built once
        for k in SPARSITIES:
            for engine in ENGINES:
                for b in BATCHES:
                    for t in SCALING_THREADS:
                        yield pytest.param(w, engine, k, b, t,
                                           id=f"{engine}-s{round(k * 100)}-b{b}-t{t}-w{w}",
                                           marks=pytest.mark.benchmark(group=f"width {w}, batch {b}"))


@pytest.mark.parametrize("width, engine, sparsity, batch, threads", list(_params()))
def test_scaling(benchmark, width, engine, sparsity, batch, threads):
    reason = bench.scaling_skip(engine, sparsity, batch, width, max_call_s=MAX_CALL_S)
    if reason:
        pytest.skip(reason)
    case = bench.make_case(engine, layer(width, sparsity), method="weight", sparsity=sparsity,
                           batch=batch, threads=threads, width=width)
    run_case(benchmark, case)
