"""pytest-benchmark suites (bench_*.py): collection, shared fixtures, and one way to run a case.

    python -m pytest bench/ --benchmark-group-by=group            # full grids, a table per batch
    SPARSENET_BENCH_QUICK=1 python -m pytest bench/ --benchmark-disable   # CI: a small grid, once

Env knobs: SPARSENET_BENCH_QUICK=1 (k {0, 90}, batch {1, 256}, threads {1}, width {1024}),
SPARSENET_MODEL=<checkpoint.npz> (time a trained net instead of a He-initialised one).
Every case is timed by sparsenet.bench, as the study times it: one warm call outside the timer,
calls per round from its calibration, thread limits held around the rounds, result checked after.
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

from sparsenet import bench  # noqa: E402

QUICK = os.environ.get("SPARSENET_BENCH_QUICK", "") not in ("", "0")
SPARSITIES = (0.0, 0.9) if QUICK else (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
BATCHES = (1, 256) if QUICK else (1, 16, 256, 4096)
THREADS = (1,) if QUICK else (1, 2)
WIDTHS = (1024,) if QUICK else (1024, 4096, 16384)
SCALING_THREADS = (1,)    # as the study's scaling stage (StudyConfig.scaling_threads)
ROUNDS = 3 if QUICK else bench.ROUNDS
MAX_CALL_S = 2.0          # cases predicted slower than this per call are skipped (bench.skip_reason)


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
    return bench.pruned(mlp_params(), method, sparsity)


def run_case(benchmark, case, rounds: int = ROUNDS, min_time: float = bench.MIN_TIME):
    """Warm call, calibration, pedantic timing with threads held and GC off, context, check."""
    bench.warm(case)
    benchmark.extra_info.update(bench.extra_info(case))
    if benchmark.disabled:            # --benchmark-disable: one call, still checked
        kwargs = {"args": (case.X,), "iterations": 1, "rounds": 1}
    else:
        kwargs = bench.pedantic_kwargs(case, rounds=rounds, min_time=min_time)
    benchmark.extra_info["calls"] = kwargs["iterations"]
    with bench.threads_held(case), bench.gc_off():
        out = benchmark.pedantic(case.engine, **kwargs)
    bench.check_case(case, out)
    return out
