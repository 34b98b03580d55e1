"""csr and dense at batch sizes between the study's (1, 16, 256, 4096): no cliff between neighbours.

    python -m pytest bench/bench_batches.py --benchmark-group-by=group \
        --benchmark-columns=min,median,max,rounds,iterations

Until session 9 a batch that was not a multiple of 16 columns (7, 25 or 130 rows) ran csr on whole-row
kernels 2-5x slower than the padded register tiles its neighbours ran (docs/perf-notes.md): compare a
group's csr time with the batch sizes around it. Dense is timed beside csr at every k.
"""
import pytest

from conftest import MAX_CALL_S, QUICK, THREADS, grid_params, mlp_params, run_mlp_point
from sparsenet import grid

ODD_BATCHES = (7, 130) if QUICK else (2, 7, 24, 25, 40, 100, 128, 130, 200)
GRID = grid.MLPGrid(mlp_params(), ("dense", "csr"), (0.5, 0.9), ODD_BATCHES, THREADS, dense_every_k=True,
                    max_call_s=MAX_CALL_S)


@pytest.mark.parametrize("point", grid_params(GRID, lambda p: f"batch {p.batch}, k {p.sparsity:g}"))
def test_batches_between_the_studys(benchmark, point):
    run_mlp_point(benchmark, GRID, point)
