"""Engines side by side: dense / csr / csr-scipy / shrunk x sparsity x batch {1, 256} x threads {1, 2}.

    python -m pytest bench/bench_engines.py --benchmark-group-by=group --benchmark-columns=median,iqr,rounds
    python -m pytest bench/bench_engines.py --benchmark-disable      # every case once, checked
    python bench/bench_engines.py [--rounds 15]                      # interleaved medians, break-even, % of peak

dense, csr and csr-scipy run the weight-pruned He-initialised default net, shrunk the neuron-pruned one.
The script mode interleaves all engines round by round in one process, so a noisy neighbour hits
them alike, and reports medians, speed-ups, break-even sparsities and the SpMM fraction of sgemm peak.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import pytest

try:
    import sparsenet  # noqa: F401
except ImportError:                                  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsenet.engines import ENGINES, blas_library, make_engine  # noqa: E402
from sparsenet.model import forward, he_init  # noqa: E402

SPARSITIES = (0.0, 0.5, 0.7, 0.9, 0.99)
BATCHES = (1, 256)
THREADS = (1, 2)


@functools.lru_cache(maxsize=None)
def pruned(method: str, k: float):
    from sparsenet.prune import neuron_prune, weight_prune
    params = he_init(seed=0)
    return weight_prune(params, k) if method == "weight" else neuron_prune(params, k)


def method_for(name: str) -> str:
    return "neuron" if name == "shrunk" else "weight"


def make_input(batch: int, n_in: int = 784, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, n_in), dtype=np.float32)


def max_threads() -> int:
    import numba
    return numba.config.NUMBA_NUM_THREADS


def _cases():
    for name in ENGINES:
        for k in SPARSITIES:
            for b in BATCHES:
                for t in THREADS:
                    yield pytest.param(name, k, b, t, id=f"{name}-s{round(k * 100)}-b{b}-t{t}",
                                       marks=pytest.mark.benchmark(group=f"batch {b}"))


@pytest.mark.parametrize("name, k, batch, threads", list(_cases()))
def test_engine(benchmark, name, k, batch, threads):
    if threads > max_threads():
        pytest.skip(f"{threads} threads > {max_threads()} cores")
    import numba
    params = pruned(method_for(name), k)
    eng = make_engine(name, params, threads=threads)
    X = make_input(batch)
    compile_s = eng.warmup(batch)                    # the warm call, outside the timer
    benchmark.extra_info.update(eng.describe())
    benchmark.extra_info.update(flops=eng.flops(batch), batch=batch, sparsity=k, compile_s=compile_s,
                                numba=numba.__version__, **blas_library())
    with eng.threads_context():
        out = benchmark(eng, X)
    np.testing.assert_allclose(out, forward(params, X), rtol=1e-4,
                               atol=1e-4 * max(1.0, float(np.abs(out).max())))


# ---- script mode: interleaved side-by-side medians -----------------------------------------------

def _per_call(eng, X, calls: int, clock=time.perf_counter) -> float:
    t = clock()
    for _ in range(calls):
        eng(X)
    return (clock() - t) / calls


def sgemm_peak(threads: int, repeats: int = 20, clock=time.perf_counter) -> float:
    """GFLOP/s of (256, 1000) @ (1000, 1000) with `threads` BLAS threads (best of repeats)."""
    from threadpoolctl import threadpool_limits
    A = make_input(256, 1000)
    B = np.random.default_rng(1).random((1000, 1000), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        A @ B
        best = min(_timed(lambda: A @ B, clock) for _ in range(repeats))
    return 2 * 256 * 1000 * 1000 / best / 1e9


def _timed(fn, clock=time.perf_counter) -> float:
    t = clock()
    fn()
    return clock() - t


def break_even(ks, dense_t, csr_t):
    """Lowest sparsity from which csr stays faster than dense (linear interpolation), or None."""
    faster = [c < d for c, d in zip(csr_t, dense_t)]
    if not faster[-1]:
        return None
    i = len(faster) - 1
    while i > 0 and faster[i - 1]:
        i -= 1
    if i == 0:
        return ks[0]
    r0 = csr_t[i - 1] / dense_t[i - 1]                 # > 1
    r1 = csr_t[i] / dense_t[i]                         # < 1
    return ks[i - 1] + (ks[i] - ks[i - 1]) * (r0 - 1) / (r0 - r1)


def side_by_side(ks, batches, threads_list, rounds: int, target_s: float = 0.05, cpu_clock=False):
    """Median per-call seconds of every engine x k, interleaved round by round.

    cpu_clock: time single-threaded runs with time.thread_time (CPU time of the calling thread,
    where 1-thread BLAS, Numba and scipy all run): robust to a loaded machine's time-sharing.
    """
    rows = []
    for threads in threads_list:
        clock = time.thread_time if cpu_clock and threads == 1 else time.perf_counter
        peak = sgemm_peak(threads, clock=clock)
        for batch in batches:
            X = make_input(batch)
            engs = {(n, k): make_engine(n, pruned(method_for(n), k), threads=threads)
                    for n in ENGINES for k in ks}
            compile_s = {key: e.warmup(batch) for key, e in engs.items()}
            calls = {}
            for key, e in engs.items():
                with e.threads_context():
                    once = _per_call(e, X, 3)
                calls[key] = max(1, min(2000, int(target_s / max(once, 1e-7))))
            times = {key: [] for key in engs}
            for _ in range(rounds):
                for key, e in engs.items():
                    with e.threads_context():
                        times[key].append(_per_call(e, X, calls[key], clock))
            for key, e in engs.items():
                out = e(X)
                ref = forward(pruned(method_for(key[0]), key[1]), X)
                np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
                t = float(np.median(times[key]))
                rows.append(dict(engine=key[0], k=key[1], batch=batch, threads=threads, median_s=t,
                                 clock="cpu" if clock is time.thread_time else "wall",
                                 spread=max(times[key]) / min(times[key]), gflops=e.flops(batch) / t / 1e9,
                                 peak_gflops=peak, compile_s=compile_s[key], nnz=e.nnz, nbytes=e.nbytes))
    return rows


def summarize(rows, ks):
    print(f"{'batch':>5} {'thr':>3} {'k':>5} " + " ".join(f"{n:>11}" for n in ENGINES)
          + "   dense/csr  scipy/csr  csr GF/s  %peak")
    groups = sorted({(r["batch"], r["threads"]) for r in rows})
    t = {(r["engine"], r["k"], r["batch"], r["threads"]): r for r in rows}
    for b, th in groups:
        for k in ks:
            cells = " ".join(f"{t[(n, k, b, th)]['median_s'] * 1e3:9.4f}ms" for n in ENGINES)
            d, c, s = (t[(n, k, b, th)] for n in ("dense", "csr", "csr-scipy"))
            print(f"{b:5d} {th:3d} {k:5.2f} {cells}   {d['median_s'] / c['median_s']:8.2f}x "
                  f"{s['median_s'] / c['median_s']:8.2f}x {c['gflops']:8.1f}  {100 * c['gflops'] / c['peak_gflops']:5.1f}")
        be = break_even(ks, [t[("dense", k, b, th)]["median_s"] for k in ks],
                        [t[("csr", k, b, th)]["median_s"] for k in ks])
        peak = t[("dense", ks[0], b, th)]["peak_gflops"]
        print(f"      batch {b}, {th} thread(s): break-even sparsity csr vs dense = "
              f"{'never' if be is None else f'{100 * be:.0f}%'}; sgemm peak {peak:.0f} GFLOP/s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--k", type=float, nargs="+", default=list(SPARSITIES) + [0.6, 0.8])
    ap.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--threads", type=int, nargs="+", default=[t for t in THREADS if t <= max_threads()])
    ap.add_argument("--cpu-clock", action="store_true",
                    help="time 1-thread runs in thread CPU time (for a loaded machine)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    a = ap.parse_args(argv)
    ks = sorted(set(a.k))
    rows = side_by_side(ks, a.batch, a.threads, a.rounds, cpu_clock=a.cpu_clock)
    summarize(rows, ks)
    if a.json:
        import json
        a.json.write_text(json.dumps(dict(rows=rows, blas=blas_library()), indent=1))


if __name__ == "__main__":
    main()
