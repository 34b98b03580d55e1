"""Inference time of the MLP: engine x sparsity x batch x threads, one table per batch size.

    python -m pytest bench/bench_inference.py --benchmark-group-by=group \
        --benchmark-columns=min,median,max,rounds,iterations

Each engine runs the net of its pruning method (names.ENGINE_METHOD: shrunk the neuron-pruned net,
the others the weight-pruned one); dense is timed at every k here (the study times it at k = 0).
"""
import pytest

from conftest import BATCHES, MAX_CALL_S, SPARSITIES, THREADS, grid_params, mlp_params, run_mlp_point
from sparsenet import grid, names

GRID = grid.MLPGrid(mlp_params(), names.STUDY_ENGINES, SPARSITIES, BATCHES, THREADS, dense_every_k=True,
                    max_call_s=MAX_CALL_S)


@pytest.mark.parametrize("point", grid_params(GRID, lambda p: f"batch {p.batch}"))
def test_inference(benchmark, point):
    run_mlp_point(benchmark, GRID, point)
