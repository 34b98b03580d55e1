"""One square layer (n_in = n_out = width) at growing widths: dense BLAS vs our CSR kernels.

    python -m pytest bench/bench_scaling.py --benchmark-group-by=group

Cases too large (memory) or predicted too slow per call are skipped with the reason
(grid.scaling_skip); the study's scaling stage uses the same grid, layer builder and rule.
"""
import functools

import pytest

from conftest import BATCHES, MAX_CALL_S, SCALING_THREADS, SPARSITIES, WIDTHS, grid_params, run_case
from sparsenet import grid, names, timing

# width, then k outermost: each layer is built once
GRID = grid.ScalingGrid(names.SCALING_ENGINES, SPARSITIES, BATCHES, SCALING_THREADS, widths=WIDTHS,
                        dense_every_k=True, max_call_s=MAX_CALL_S)


@functools.lru_cache(maxsize=1)
def layer(width, sparsity):
    """The pruned layer of one (width, k), built once (a 16k layer takes seconds to prune)."""
    return grid.scaling_params(width, sparsity)


@pytest.mark.parametrize("point", grid_params(GRID, lambda p: f"width {p.width}, batch {p.batch}"))
def test_scaling(benchmark, point):
    reason = GRID.skip(point)
    if reason:
        pytest.skip(reason)
    case = timing.make_case(point.engine, layer(point.width, point.sparsity), method=GRID.method(point.engine),
                            sparsity=point.sparsity, batch=point.batch, threads=point.threads,
                            width=point.width)
    run_case(benchmark, case)
