"""bsr (block 8x1, k = 90 %) and nm (1:4, 2:4) against the best dense engine and the sgemm peak, side
by side in one process (not collected by pytest: no bench_ prefix).

    python bench/bsr_timing.py                                   # He-initialised net
    python bench/bsr_timing.py --run /tmp/s5/full/mnist-...      # a study folder's net and images
    python bench/bsr_timing.py --threads 1 2 --batch 256 16 1 --rounds 11

Every round times, per thread count, sgemm 2048 (machine.sgemm_gflops's product) and each engine
for ~`--secs` s of calls, in an order shuffled per round; the thread limits are held around each
engine's loop, and `--settle` s pass between cases on different thread pools (OpenBLAS's idle
threads spin after a call). Figures: median over rounds of the per-call mean, [min-max];
useful GFLOP/s = 2 * batch * non-zeros / time; % of the sgemm peak of the same process and
thread count (its median); speed-up = best dense median / median.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsenet import prune  # noqa: E402
from sparsenet.engines import make_engine  # noqa: E402
from sparsenet.model import he_init  # noqa: E402
from sparsenet.threads import limit  # noqa: E402

SIZES = (784, 1000, 1000, 500, 200, 10)


def _old(e):
    """The same engine on session 6's chunk widths (bsr: up to 128 columns; nm: unchanged)."""
    from sparsenet.structured_engines import chunk_columns
    e._chunk_width = lambda B: chunk_columns(B, e.threads, e.tuning.max_chunk)
    return e


def build(params, threads, which, old=False):
    """name -> engine (useful flops a batch row in .useful, its pruned net in .oracle); old: each
    structured engine also on the previous plan (name + '-old')"""
    engs = {"dense": make_engine("dense", params, threads=threads),
            "dense-fused": make_engine("dense-fused", params, threads=threads)}
    for name, method, k in which:
        p = prune.apply_masks(params, prune.make_masks(params, method, k))
        e = make_engine(name, p, threads=threads)
        e.useful = 2 * sum(int(np.count_nonzero(l.weight)) for l in p)
        e.oracle = p
        engs[f"{name}-{method}{k:g}"] = e
        if old:
            o = _old(make_engine(name, p, threads=threads))
            o.useful, o.oracle = e.useful, p
            engs[f"{name}-{method}{k:g}-old"] = o
    return engs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="study run folder holding net.npz and test-images.npy (timing_inputs)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[256])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--secs", type=float, default=0.12)
    ap.add_argument("--settle", type=float, default=0.15)
    ap.add_argument("--old", action="store_true", help="also time the previous chunk widths (bsr: 128 columns)")
    ap.add_argument("--which", default="bsr:block:0.9,nm:nm:0.75,nm:nm:0.5", help="engine:method:k,...")
    a = ap.parse_args(argv)
    which = [(w.split(":")[0], w.split(":")[1], float(w.split(":")[2])) for w in a.which.split(",")]
    if a.run:
        from sparsenet import timing_inputs
        params, images = timing_inputs.load(a.run)
        X0 = images[:max(a.batch)].astype(np.float32) / 255
        net = "trained"
    else:
        params = he_init(SIZES, bias=True)
        X0 = np.random.default_rng(0).random((max(a.batch), SIZES[0]), np.float32)
        net = "He"
    print(f"net {net}; load {os.getloadavg()[0]:.2f}; NUMBA_CPU_NAME={os.environ.get('NUMBA_CPU_NAME', '-')}")
    n = 2048
    A = np.random.default_rng(0).random((n, n), dtype=np.float32)
    Bm = np.random.default_rng(1).random((n, n), dtype=np.float32)
    C = np.empty_like(A)
    rng = np.random.default_rng(0)
    for B in a.batch:
        X = np.ascontiguousarray(X0[:B])
        cases = {}
        for t in a.threads:
            engs = build(params, t, which, a.old)
            ref = engs["dense"](X)
            for k, e in engs.items():
                out = e(X)
                if hasattr(e, "oracle"):
                    np.testing.assert_allclose(out, make_engine("dense", e.oracle, threads=1)(X), rtol=2e-3, atol=2e-3)
                else:
                    np.testing.assert_allclose(out, ref, rtol=2e-3, atol=2e-3)
                cases[(t, k)] = e
            cases[(t, "sgemm")] = None
        times = {c: [] for c in cases}
        for _ in range(a.rounds):
            order = list(cases)
            rng.shuffle(order)
            order.sort(key=lambda c: (c[0], c[1] in ("sgemm", "dense")))     # pools together per thread count
            prev = None
            for c in order:
                t, k = c
                pool = (t, "blas" if k in ("sgemm", "dense") else "numba")
                if prev is not None and prev != pool and t > 1:
                    time.sleep(a.settle)
                prev = pool
                e = cases[c]
                f = (lambda: np.matmul(A, Bm, out=C)) if e is None else (lambda e=e, X=X: e._forward(X))
                with limit(t):
                    reps = max(1, int(a.secs / min(times[c]))) if times[c] else 2
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        f()
                    times[c].append((time.perf_counter() - t0) / reps)
        print(f"batch {B}, load after {os.getloadavg()[0]:.2f}")
        for t in a.threads:
            med = {k: float(np.median(v)) for (tt, k), v in times.items() if tt == t}
            peak = 2 * n ** 3 / med["sgemm"] / 1e9
            best = min(med["dense"], med["dense-fused"])
            print(f"  {t} thread(s): sgemm peak {peak:.1f} GFLOP/s [{2 * n ** 3 / max(times[(t, 'sgemm')]) / 1e9:.0f}-"
                  f"{2 * n ** 3 / min(times[(t, 'sgemm')]) / 1e9:.0f}]")
            for k in med:
                if k == "sgemm":
                    continue
                v = times[(t, k)]
                e = cases[(t, k)]
                useful = getattr(e, "useful", 2 * sum(a_ * b_ for a_, b_ in zip(SIZES, SIZES[1:]))) * B
                g = useful / med[k] / 1e9
                print(f"    {k:20s} {med[k] * 1e3:8.3f} ms [{min(v) * 1e3:.3f}-{max(v) * 1e3:.3f}] "
                      f"{g:6.1f} GFLOP/s useful = {100 * g / peak:4.0f} % peak, x{best / med[k]:.2f} best dense"
                      + (f"   plan: {e.plan(B).summary()}" if hasattr(e, "plan") and k.startswith(("bsr", "nm")) else ""))


if __name__ == "__main__":
    main()
