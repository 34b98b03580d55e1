"""Inference time of the MLP: engine x sparsity x batch x threads, one table per batch size.

    python -m pytest bench/bench_inference.py --benchmark-group-by=group \
        --benchmark-columns=min,median,max,rounds,iterations

Each engine runs the net of its pruning method (names.ENGINE_METHOD: shrunk the neuron-pruned net,
the others the weight-pruned one); dense is timed at every k here (the study times it at k = 0).
"""
import pytest

from conftest import BATCHES, MAX_CALL_S, SPARSITIES, THREADS, grid_params, mlp_params, pruned_net, run_case
from sparsenet import grid, names, timing

GRID = grid.MLPGrid(mlp_params(), names.STUDY_ENGINES, SPARSITIES, BATCHES, THREADS, dense_every_k=True,
                    max_call_s=MAX_CALL_S)


@pytest.mark.parametrize("point", grid_params(GRID, lambda p: f"batch {p.batch}"))
def test_inference(benchmark, point):
    reason = GRID.skip(point)
    if reason:
        pytest.skip(reason)
    method = GRID.method(point.engine)
    case = timing.make_case(point.engine, pruned_net(method, point.sparsity), method=method,
                            sparsity=point.sparsity, batch=point.batch, threads=point.threads)
    run_case(benchmark, case)
