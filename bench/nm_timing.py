"""N:M engine against the best dense engine (numpy BLAS chain, fused dense) on one net, 2:4 and 1:4:
medians of interleaved rounds (not collected by pytest: no bench_ prefix).

    python bench/nm_timing.py                                  # He-initialised net, 1 thread
    python bench/nm_timing.py --run /tmp/s4/default/mnist-...  # a study folder's saved net and images
    python bench/nm_timing.py --threads 2 --batch 256 1

Every round runs each engine for ~0.15 s of calls in turn; an engine's figure is the median over
rounds of the per-call mean with the 25-75 % range. Each nm engine's logits are checked against
the dense engine on the same pruned weights first. Speed-up = best dense median / nm median.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsenet.engines import make_engine  # noqa: E402
from sparsenet.model import he_init  # noqa: E402
from sparsenet.prune import nm_prune  # noqa: E402

SIZES = (784, 1000, 1000, 500, 200, 10)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="study run folder holding net.npz and test-images.npy (timing_inputs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 1])
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args(argv)
    if a.run:
        from sparsenet import timing_inputs
        params, images = timing_inputs.load(a.run)
        X0 = images[:max(a.batch)].astype(np.float32) / 255
    else:
        params = he_init(SIZES, bias=True)
        X0 = np.random.default_rng(0).random((max(a.batch), SIZES[0]), np.float32)
    for B in a.batch:
        X = np.ascontiguousarray(X0[:B])
        engs = {"dense": make_engine("dense", params, threads=a.threads),
                "dense-fused": make_engine("dense-fused", params, threads=a.threads)}
        for n in (2, 1):
            p = nm_prune(params, n, 4)
            engs[f"nm{n}:4"] = make_engine("nm", p, threads=a.threads)
            np.testing.assert_allclose(engs[f"nm{n}:4"](X), make_engine("dense", p, threads=1)(X), rtol=2e-3, atol=2e-3)
        times = {k: [] for k in engs}
        for e in engs.values():
            e(X)
        with engs["dense"].threads_context():
            for _ in range(a.rounds):
                for k, e in engs.items():
                    reps = max(1, int(0.15 / min(times[k]))) if times[k] else 3
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        e._forward(X)
                    times[k].append((time.perf_counter() - t0) / reps)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        best = min(med["dense"], med["dense-fused"])
        print(f"batch {B}, {a.threads} thread(s): " + ", ".join(
            f"{k} {med[k]:.3f} ms [{np.percentile(times[k], 25) * 1e3:.2f}-{np.percentile(times[k], 75) * 1e3:.2f}]"
            for k in med) + " | " + ", ".join(f"{k} x{best / med[k]:.2f}" for k in med if k.startswith("nm")))
        print("  plan:", engs["nm2:4"].plan(B).summary())


if __name__ == "__main__":
    main()
