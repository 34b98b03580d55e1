"""Batch-1 whole-forward timing of the csr engine with its densest layers in bitmap rows (the plan's
rule, plan.bitmap_layers), with every layer in SELL-16 slots (bitmap=False) and with every layer in
bitmap rows (bitmap=True), against numpy's dense chain: medians of interleaved rounds (not collected
by pytest: no bench_ prefix). Needs a CPU with AVX-512F for the ISA kernels (elsewhere the portable
twins run, which says nothing about speed).

    python bench/bitmap_timing.py                          # He-initialised net, 1 thread
    python bench/bitmap_timing.py --threads 2              # 0.15 s between cases: OpenBLAS's workers
                                                           # spin ~128 ms after a call
    python bench/bitmap_timing.py --model results/<run id>/net.npz --sparsity 0,10,25,40,50

Every round runs each engine for ~`--target-ms` of calls in turn (order rotated per round); a figure
is the median over rounds of the per-call mean, with the 25-75 % range of the per-round ratios to
numpy's dense. Each engine's output is checked against model.forward before timing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsenet import bitmap_kernels                       # noqa: E402
from sparsenet import checkpoint                          # noqa: E402
from sparsenet.cpu import cpu                              # noqa: E402
from sparsenet.engines import make_engine                  # noqa: E402
from sparsenet.model import forward, he_init              # noqa: E402
from sparsenet.prune import weight_prune                  # noqa: E402
from sparsenet.threads import limit                       # noqa: E402


def per_call(engine, X, n) -> float:
    t = time.perf_counter()
    for _ in range(n):
        engine(X)
    return (time.perf_counter() - t) / n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sparsity", default="0,10,25,40,50,70,90", help="percent, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--target-ms", type=float, default=20.0)
    ap.add_argument("--model", help="an .npz checkpoint (default: the He-initialised net, seed 0)")
    a = ap.parse_args(argv)
    T = a.threads
    params = checkpoint.load(a.model)[0] if a.model else he_init(seed=0)
    X = np.random.default_rng(0).random((1, params[0].weight.shape[1]), dtype=np.float32)
    print(f"CPU target {cpu().name} ({cpu().isa}); bitmap kernel: {'AVX-512' if bitmap_kernels.available() else 'portable twin'}; "
          f"{T} thread(s); {'checkpoint ' + a.model if a.model else 'He net seed 0'}")
    dense = make_engine("dense", params, threads=T)
    print("| k | dense (us) | rule (us) | all SELL | all bitmap | dense / rule [25-75 %] | SELL / rule | the rule's layers |")
    print("|---|---|---|---|---|---|---|---|")
    for k in (float(s) / 100 for s in a.sparsity.split(",")):
        net = weight_prune(params, k)
        engines = {"dense": dense, "rule": make_engine("csr", net, threads=T),
                   "sell": make_engine("csr", net, threads=T, bitmap=False),
                   "bitmap": make_engine("csr", net, threads=T, bitmap=True)}
        want = forward(net, X)
        for name, e in engines.items():
            if name != "dense":
                np.testing.assert_allclose(e(X), want, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(want).max())))
        times = {name: [] for name in engines}
        names = list(engines)
        with limit(T):
            held = [e.threads_context() for e in engines.values()]
            for h in held:
                h.__enter__()
            for r in range(a.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    if T > 1:
                        time.sleep(0.15)
                    e = engines[name]
                    n = max(1, int(a.target_ms / 1e3 / max(per_call(e, X, 1), 1e-7)))
                    times[name].append(per_call(e, X, n))
            for h in reversed(held):
                h.__exit__(None, None, None)
        med = {name: float(np.median(v)) for name, v in times.items()}
        ratio = np.array(times["dense"]) / np.array(times["rule"])
        layers = "".join("b" if b else "s" for b in engines["rule"].bitmap) or "-"
        print(f"| {k:.0%} | {med['dense'] * 1e6:.0f} | {med['rule'] * 1e6:.0f} | {med['sell'] * 1e6:.0f} | "
              f"{med['bitmap'] * 1e6:.0f} | x{med['dense'] / med['rule']:.2f} [{np.percentile(ratio, 25):.2f}-"
              f"{np.percentile(ratio, 75):.2f}] | x{med['sell'] / med['rule']:.2f} | {layers} |", flush=True)


if __name__ == "__main__":
    main()
