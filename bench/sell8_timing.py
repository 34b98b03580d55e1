"""Batch-1 whole-forward timing of the SELL8 AVX2 kernel against numpy's dense chain, the CSR SpMV
and scipy.sparse: medians of interleaved rounds (not collected by pytest: no bench_ prefix).

    python bench/sell8_timing.py                       # host CPU (AVX2 kernel if available())
    python bench/sell8_timing.py --haswell             # re-run under NUMBA_CPU_NAME=haswell,
                                                       # AVX2-only features, OPENBLAS_CORETYPE=Haswell
    python bench/sell8_timing.py --model ckpt.npz      # a trained net as well as the He-initialised one
    python bench/sell8_timing.py --compile             # cold compile times (fresh cache, subprocesses)

Every round runs each method for ~`--target-ms` of calls in turn (order rotated per round); a
method's figure is the median over rounds of the per-call mean, its spread the 25-75 % range.
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
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return f"{fields['Model name'].strip()} (family {fields['CPU family'].strip()}, model {fields['Model'].strip()})"
    except Exception:                                    # noqa: BLE001 - a label only
        return platform.processor() or platform.machine()


def compile_times() -> None:
    """Cold compile (empty Numba cache) of the AVX2 and portable drivers, 1 and 2 threads, each in a
    fresh process; then the same again with the cache warm."""
    code = ("import time, numpy as np\n"
            "from sparsenet.model import he_init\nfrom sparsenet.sell8 import flatten\n"
            "from sparsenet import sell8_kernels as K\n"
            "a,(nx,w),_=flatten(he_init((20,30,10)))\n"
            "b=[np.zeros(n,np.float32) for n in (nx,w,w)]\nlg=np.zeros((1,10),np.float32)\n"
            "t=time.perf_counter(); K.sell8_forward(*a,np.zeros((1,20),np.float32),*b,100,{t},lg,avx2={avx2})\n"
            "print(round(time.perf_counter()-t,2))\n")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for state in ("cold", "cached"):
            for avx2 in (True, False):
                for t in (1, 2):
                    r = subprocess.run([sys.executable, "-c", code.format(t=t, avx2=avx2)], env=env,
                                       capture_output=True, text=True)
                    out = r.stdout.strip() or r.stderr.strip().splitlines()[-1]
                    print(f"compile {state:6s} {'avx2' if avx2 else 'portable':8s} threads={t}: {out} s")


def timeit(fn, n) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def run(args) -> None:
    import numba
    import numpy as np
    import scipy.sparse as sp

    from sparsenet import sell8_kernels as K
    from sparsenet.engines import make_engine
    from sparsenet.model import forward, he_init
    from sparsenet.plan import cpu
    from sparsenet.prune import weight_prune
    from sparsenet.sell8 import flatten
    from sparsenet.threads import blas_library, limit

    c = cpu()
    print(f"CPU: {cpu_name()}; Numba target {c.name} (avx512f={c.avx512f}, avx2={c.avx2}, fma={c.fma}); "
          f"BLAS {blas_library()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    avx2 = K.available() and not args.portable
    print(f"SELL8 kernel: {'AVX2' if avx2 else 'portable twin'}; min_parallel_units={args.min_parallel_units}; "
          f"rounds={args.rounds}")
    nets = [("he_init", he_init())]
    if args.model:
        from sparsenet.checkpoint import load
        loaded = load(args.model)
        nets.append((Path(args.model).name, loaded[0] if isinstance(loaded, tuple) else loaded))
    rng = np.random.default_rng(0)
    X = rng.random((1, nets[0][1][0].weight.shape[1])).astype(np.float32)
    header = (f"{'net':10s} {'k':>4s} {'thr':>3s} | {'dense':>7s} {'csr':>7s} {'scipy':>7s} {'sell8':>7s} "
              f"(25-75% range) | dense/sell8 csr/sell8 scipy/sell8 | pad  MB windows (n 8, w 16 columns)")
    for net_name, params in nets:
        print(header)
        for k in args.sparsity:
            net = weight_prune(params, k)
            ref = forward(net, X)
            Ws = [l.weight for l in net]
            bs = [l.bias for l in net]
            S = [sp.csr_matrix(W) for W in Ws]
            arrays, (nx, width), layers = flatten(net, window=args.window)
            bufs = [np.zeros(n, np.float32) for n in (nx, width, width)]
            logits = np.zeros((1, Ws[-1].shape[0]), np.float32)
            nnz = sum(s.nnz for s in layers)
            pad = sum(s.n_units for s in layers) * 16 / max(nnz, 1)
            mb = (sum(s.nbytes for s in layers) + arrays[4].nbytes) / 1e6
            wins = "".join("w" if s.window == 16 else "n" for s in layers)

            def dense():
                h = X
                for i, (W, b) in enumerate(zip(Ws, bs)):
                    h = h @ W.T
                    if b is not None:
                        h = h + b
                    if i < len(Ws) - 1:
                        h = np.maximum(h, 0)
                return h

            def scipy_chain():
                h = X[0]
                for i, (M, b) in enumerate(zip(S, bs)):
                    h = M @ h
                    if b is not None:
                        h = h + b
                    if i < len(S) - 1:
                        h = np.maximum(h, 0)
                return h[None, :]

            for threads in args.threads:
                engine = make_engine("csr", net, threads=threads, sell=False)

                def sell8():
                    K.sell8_forward(*arrays, X, *bufs, args.min_parallel_units, threads, logits, avx2=avx2)
                    return logits

                methods = {"dense": dense, "csr": lambda: engine(X), "scipy": scipy_chain, "sell8": sell8}
                with limit(threads), engine.threads_context():
                    for name, fn in methods.items():
                        got = fn()
                        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3, err_msg=name)
                    calls = {name: max(1, int(args.target_ms * 1e-3 / max(timeit(fn, 3), 1e-7)))
                             for name, fn in methods.items()}
                    times = {name: [] for name in methods}
                    names = list(methods)
                    for r in range(args.rounds):
                        for name in names[r % 4:] + names[:r % 4]:
                            times[name].append(timeit(methods[name], calls[name]) * 1e6)
                med = {n: float(np.median(v)) for n, v in times.items()}
                q = {n: np.percentile(v, [25, 75]) for n, v in times.items()}
                s8 = med["sell8"]
                print(f"{net_name:10s} {k * 100:4.0f} {threads:3d} | {med['dense']:7.1f} {med['csr']:7.1f} "
                      f"{med['scipy']:7.1f} {s8:7.1f} ({q['sell8'][0]:.0f}-{q['sell8'][1]:.0f}; dense "
                      f"{q['dense'][0]:.0f}-{q['dense'][1]:.0f}) | {med['dense'] / s8:10.2f} "
                      f"{med['csr'] / s8:10.2f} {med['scipy'] / s8:11.2f} | {pad:.2f} {mb:.1f} {wins}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--haswell", action="store_true", help="re-run under an AVX2-only Numba target and OpenBLAS Haswell kernels")
    ap.add_argument("--model", help="a checkpoint (sparsenet train) to time besides he_init")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.3, 0.4, 0.5, 0.7, 0.9, 0.95])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--target-ms", type=float, default=3.0)
    ap.add_argument("--min-parallel-units", type=int, default=4000)
    ap.add_argument("--window", type=int, choices=(8, 16), help="every layer's window (default: per layer)")
    ap.add_argument("--portable", action="store_true", help="time the portable twin instead of the AVX2 kernel")
    ap.add_argument("--compile", action="store_true", help="print cold and cached compile times, then stop")
    args = ap.parse_args()
    if args.haswell and os.environ.get("NUMBA_CPU_NAME") != "haswell":
        env = dict(os.environ, **HASWELL_ENV)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.compile:
        compile_times()
        return
    run(args)


if __name__ == "__main__":
    main()
