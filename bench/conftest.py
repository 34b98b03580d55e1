"""pytest-benchmark suites (bench_*.py): collection, shared fixtures, and one way to run a case.

    python -m pytest bench/ --benchmark-group-by=group            # full grids, a table per batch
    SPARSENET_BENCH_QUICK=1 python -m pytest bench/ --benchmark-disable   # CI: a small grid, once

Env knobs: SPARSENET_BENCH_QUICK=1 (k {0, 90}, batch {1, 256}, threads {1}, width {1024}),
SPARSENET_MODEL=<checkpoint.npz> (time a trained net instead of a He-initialised one).
The grids are sparsenet.grid's (names.py holds their defaults), and every case is timed by
sparsenet.timing, as the study times it: one warm call outside the timer, calls per round from its
calibration, thread limits held around the rounds, result checked after.
"""
from __future__ import annotations

import fnmatch
import functools
import os
import sys
from pathlib import Path

import pytest

try:
    import sparsenet  # noqa: F401
except ImportError:          # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsenet import grid, names, timing  # noqa: E402

QUICK = os.environ.get("SPARSENET_BENCH_QUICK", "") not in ("", "0")
SPARSITIES = (0.0, 0.9) if QUICK else names.SPARSITIES
BATCHES = names.QUICK_BATCHES if QUICK else names.BATCHES
THREADS = names.QUICK_THREADS if QUICK else names.THREADS
WIDTHS = names.QUICK_WIDTHS if QUICK else names.WIDTHS
SCALING_THREADS = names.SCALING_THREADS   # as the study's scaling stage
ROUNDS = 3 if QUICK else timing.ROUNDS
MAX_CALL_S = 2.0          # cases predicted slower than this per call are skipped (grid.skip_reason)


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py here without touching the project's python_files setting."""
    if file_path.suffix != ".py" or not fnmatch.fnmatch(file_path.name, "bench_*.py"):
        return None
    patterns = parent.config.getini("python_files")
    if parent.session.isinitpath(file_path) or any(fnmatch.fnmatch(file_path.name, p) for p in patterns):
        return None                  # pytest collects it already
    return pytest.Module.from_parent(parent, path=file_path)


@functools.lru_cache(maxsize=1)
def mlp_params():
    """The timed MLP: the checkpoint named by SPARSENET_MODEL, else He-initialised default sizes."""
    path = os.environ.get("SPARSENET_MODEL")
    if path:
        from sparsenet import checkpoint
        params, _meta = checkpoint.load(path)
        return params
    from sparsenet.model import he_init
    return he_init(seed=0)


@functools.lru_cache(maxsize=32)
def pruned_net(method: str, sparsity: float):
    """The pruned MLP of one (method, k), built once (2 methods x 10 k x ~10 MB)."""
    return grid.pruned(mlp_params(), method, sparsity)


def grid_params(g, group):
    """pytest params of every point of grid `g` (ids like csr-s90-b256-t2), grouped by group(point);
    engines that only differ from another at small batches are left out above them (not skipped)."""
    from sparsenet.grid import small_batch_skip
    return [pytest.param(p, id=p.id, marks=pytest.mark.benchmark(group=group(p))) for p in g.all_points()
            if not small_batch_skip(p.engine, p.batch)]


def run_case(benchmark, case, rounds: int = ROUNDS, min_time: float = timing.MIN_TIME):
    """Warm call, calibration, pedantic timing with threads held and GC off, context, check."""
    timing.warm(case)
    benchmark.extra_info.update(timing.extra_info(case))
    if benchmark.disabled:            # --benchmark-disable: one call, still checked
        kwargs = {"args": (case.X,), "iterations": 1, "rounds": 1}
    else:
        kwargs = timing.pedantic_kwargs(case, rounds=rounds, min_time=min_time)
    benchmark.extra_info["calls"] = kwargs["iterations"]
    with timing.threads_held(case), timing.gc_off():
        out = benchmark.pedantic(case.engine, **kwargs)
    timing.check_case(case, out)
    return out


def run_mlp_point(benchmark, g, point):
    """Time one point of an MLP grid (grid.MLPGrid) on the pruned net of its engine's method, or skip it
    with the grid's reason (too slow, too large, a small-batch twin)."""
    reason = g.skip(point)
    if reason:
        pytest.skip(reason)
    method = g.method(point.engine)
    case = timing.make_case(point.engine, pruned_net(method, point.sparsity), method=method,
                            sparsity=point.sparsity, batch=point.batch, threads=point.threads)
    return run_case(benchmark, case)
