"""Batch-1 whole-forward timing of the SELL8 AVX2 kernel against numpy's dense chain, the CSR SpMV
and scipy.sparse: medians of interleaved rounds (not collected by pytest: no bench_ prefix).

    python bench/sell8_timing.py                       # host CPU (AVX2 kernel if available())
    python bench/sell8_timing.py --haswell             # re-run under NUMBA_CPU_NAME=haswell,
                                                       # AVX2-only features, OPENBLAS_CORETYPE=Haswell
    python bench/sell8_timing.py --model ckpt.npz      # a trained net as well as the He-initialised one
    python bench/sell8_timing.py --compile             # cold compile times (fresh cache, subprocesses)

Every round runs each method for ~`--target-ms` of calls in turn (order rotated per round); a
method's figure is the median over rounds of the per-call mean, with the 10th percentile and the
25-75 % range (on a loaded machine the low percentiles are the undisturbed rounds).
Each method's output is checked against model.forward before timing.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HASWELL_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fsgsbase,+fxsr,+invpcid,"
                    "+lzcnt,+mmx,+movbe,+pclmul,+popcnt,+rdrnd,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,"
                    "+ssse3,+xsave,+xsaveopt")
HASWELL_ENV = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": HASWELL_FEATURES,
               "OPENBLAS_CORETYPE": "Haswell"}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        f = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}
        return f"{f['Model name']} (family {f['CPU family']}, model {f['Model']})"
    except Exception:                                    # noqa: BLE001 - a label only
        return platform.processor() or platform.machine()


def compile_times() -> None:
    """Seconds of the first sell8_forward call in a fresh process with an empty Numba cache (cold),
    then in another process with that cache (cached), per kernel and thread count."""
    code = ("import time, numpy as np\n"
            "from sparsenet.model import he_init\nfrom sparsenet.sell8 import flatten\n"
            "from sparsenet import sell8_kernels as K\n"
            "a,(nx,w),_=flatten(he_init((20,30,10)))\n"
            "b=[np.zeros(n,np.float32) for n in (nx,w,w)]\nlg=np.zeros((1,10),np.float32)\n"
            "t,c=time.perf_counter(),time.process_time()\n"
            "K.sell8_forward(*a,np.zeros((1,20),np.float32),*b,100,{t},lg,avx2={avx2})\n"
            "print(f'{{time.perf_counter()-t:.2f}} s wall, {{time.process_time()-c:.2f}} s CPU')\n")
    for avx2 in (True, False):
        for t in (1, 2):
            with tempfile.TemporaryDirectory() as cache:            # cold: an empty cache per case
                env = dict(os.environ, NUMBA_CACHE_DIR=cache)
                for state in ("cold", "cached"):
                    r = subprocess.run([sys.executable, "-c", code.format(t=t, avx2=avx2)], env=env,
                                       capture_output=True, text=True)
                    out = r.stdout.strip() or r.stderr.strip().splitlines()[-1]
                    print(f"compile {state:6s} {'avx2' if avx2 else 'portable':8s} threads={t}: {out} "
                          f"(load average {os.getloadavg()[0]:.1f})", flush=True)


CLOCK = time.perf_counter


def timeit(fn, n) -> float:
    t = CLOCK()
    for _ in range(n):
        fn()
    return (CLOCK() - t) / n


def _methods(net, X, threads, args) -> tuple:
    """{name: callable} of the methods timed on `net`, and the SELL8 layers (padding, bytes, windows)."""
    import numpy as np
    import scipy.sparse as sp

    from sparsenet import sell8_kernels as K
    from sparsenet.engines import make_engine
    from sparsenet.sell8 import flatten

    Ws = [l.weight for l in net]
    bs = [l.bias for l in net]
    S = [sp.csr_matrix(W) for W in Ws]
    last = len(Ws) - 1
    avx2 = K.available() and not args.portable

    def dense():                                         # numpy's chain: h @ W.T per layer, ReLU
        h = X
        for i, (W, b) in enumerate(zip(Ws, bs)):
            h = h @ W.T
            if b is not None:
                h = h + b
            if i < last:
                h = np.maximum(h, 0)
        return h

    def scipy_chain():                                   # scipy.sparse CSR times a vector per layer
        h = X[0]
        for i, (M, b) in enumerate(zip(S, bs)):
            h = M @ h
            if b is not None:
                h = h + b
            if i < last:
                h = np.maximum(h, 0)
        return h[None, :]

    def sell8(window, split=None):
        arrays, (n_x, width), layers = flatten(net, window=window, split=split)
        bufs = [np.zeros(n, np.float32) for n in (n_x, width, width)]
        logits = np.zeros((1, Ws[-1].shape[0]), np.float32)
        cache = {}                                       # the part callback's address, found once

        def call():
            K.sell8_forward(*arrays, X, *bufs, args.min_parallel_units, threads, logits, avx2=avx2, callbacks=cache)
            return logits
        return call, layers

    engine = make_engine("csr", net, threads=threads, sell=False)
    main, layers = sell8(args.window)
    methods = {"dense": dense, "csr": lambda: engine(X), "scipy": scipy_chain, "sell8": main}
    if args.variants:
        methods["sell8/8"] = sell8(8)[0]
        methods["sell8/16"] = sell8(16)[0]
        methods["sell8/paired"] = sell8(args.window, False)[0]     # every layer's units paired (sell8 docstring)
        methods["sell8/split"] = sell8(args.window, True)[0]
    return methods, layers, engine


def _time(methods, rounds, target_ms) -> dict:
    """{name: per-call microseconds of every round}: rounds interleaved, order rotated per round."""
    calls = {n: max(1, int(target_ms * 1e-3 / max(timeit(fn, 3), 1e-7))) for n, fn in methods.items()}
    times = {n: [] for n in methods}
    names = list(methods)
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            times[n].append(timeit(methods[n], calls[n]) * 1e6)
    return times


def run(args) -> None:
    import numpy as np

    from sparsenet import sell8_kernels as K
    from sparsenet.model import forward, he_init
    from sparsenet.plan import cpu
    from sparsenet.prune import weight_prune
    from sparsenet.threads import blas_library, limit

    c = cpu()
    print(f"CPU: {cpu_name()}; Numba target {c.name} (avx512f={c.avx512f}, avx2={c.avx2}, fma={c.fma}); "
          f"BLAS {blas_library()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    print(f"SELL8 kernel: {'AVX2' if K.available() and not args.portable else 'portable twin'}; "
          f"min_parallel_units={args.min_parallel_units}; rounds={args.rounds}; medians of per-call means (us)")
    nets = [("he_init", he_init())]
    if args.model:
        from sparsenet.checkpoint import load
        nets.append((Path(args.model).stem, load(args.model)[0]))
    X = np.random.default_rng(0).random((1, nets[0][1][0].weight.shape[1])).astype(np.float32)
    for net_name, params in nets:
        for k in args.sparsity:
            net = weight_prune(params, k)
            ref = forward(net, X)
            for threads in args.threads:
                methods, layers, engine = _methods(net, X, threads, args)
                with limit(threads), engine.threads_context():
                    for name, fn in methods.items():
                        np.testing.assert_allclose(fn(), ref, rtol=1e-3, atol=1e-3, err_msg=name)
                    times = _time(methods, args.rounds, args.target_ms)
                med = {n: float(np.median(v)) for n, v in times.items()}
                iqr = {n: np.percentile(v, [10, 25, 75]) for n, v in times.items()}
                nnz = sum(s.nnz for s in layers)
                pad = sum(s.n_units for s in layers) * 16 / max(nnz, 1)
                mb = sum(s.nbytes for s in layers) / 1e6
                wins = ",".join(s.kind for s in layers)                # s: split units
                s8 = med["sell8"]
                cells = "  ".join(f"{n} {med[n]:.1f} [p10 {iqr[n][0]:.0f}, {iqr[n][1]:.0f}-{iqr[n][2]:.0f}]"
                                  for n in methods)
                print(f"{net_name} k={k * 100:.0f} threads={threads} ({args.clock}): {cells} | "
                      f"dense/sell8 {med['dense'] / s8:.2f} "
                      f"csr/sell8 {med['csr'] / s8:.2f} scipy/sell8 {med['scipy'] / s8:.2f} | padding {pad:.2f} "
                      f"{mb:.1f} MB windows {wins} | load {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--haswell", action="store_true",
                    help="re-run under an AVX2-only Numba target and OpenBLAS Haswell kernels")
    ap.add_argument("--model", help="a checkpoint (sparsenet train) to time besides he_init")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.3, 0.4, 0.5, 0.7, 0.9, 0.95])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--target-ms", type=float, default=3.0)
    ap.add_argument("--min-parallel-units", type=int, default=4000)
    ap.add_argument("--window", type=int, choices=(8, 16), help="every layer's window (default: per layer)")
    ap.add_argument("--variants", action="store_true", help="also time all-8 and all-16-column windows, all-paired and all-split units")
    ap.add_argument("--portable", action="store_true", help="time the portable twin instead of the AVX2 kernel")
    ap.add_argument("--compile", action="store_true", help="print cold and cached compile times, then stop")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="thread: CPU time of the calling thread (a loaded machine; 1 thread only)")
    args = ap.parse_args()
    if args.clock == "thread":
        if args.threads != [1]:
            ap.error("--clock thread measures the calling thread only: use it with --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    if args.haswell and os.environ.get("NUMBA_CPU_NAME") != "haswell":
        env = dict(os.environ, **HASWELL_ENV)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.compile:
        compile_times()
        return
    run(args)


if __name__ == "__main__":
    main()
