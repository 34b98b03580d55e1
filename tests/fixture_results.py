"""A small synthetic results folder that follows the schema of `sparsenet.results` (for report, plot and notebook tests).

The numbers are invented but shaped like the real thing: BLAS time scales with the dense flops, the CSR kernel
with nnz (slower per flop than BLAS, so it only wins at high sparsity for large batches), the shrunk net with its
smaller dense flops; accuracy falls off a cliff past ~90% weight sparsity and earlier for neuron pruning.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sparsenet import names
from sparsenet.results import PARTS, save_part

SIZES = (784, 1000, 1000, 500, 200, 10)
SPARSITIES = names.SPARSITIES
SEEDS = (0, 1, 2)
BATCHES = (1, 256)
THREADS = (1, 2)
ENGINES = ("dense", "csr", "csr-scipy", "shrunk")   # the engines the fixture knows how to invent
WIDTHS = (1024, 4096)


def rec(engine, method, k, seconds, batch=1, threads=1):
    """One hand-made TIMING record, for crafted timings with known answers."""
    return {"engine": engine, "method": method, "sparsity": k, "batch": batch, "threads": threads,
            "median_s": seconds, "min_s": seconds, "max_s": seconds, "spread": 1.0, "flagged": False,
            "rounds": 1, "calls": 1, "nbytes": 100, "flops": 1000.0, "nnz": 25, "layer_sizes": [4, 5], "width": None}


def csr_timings(ks, csr_seconds, dense_s=1.0, **kw):
    """Timings of the unpruned dense net (dense_s) and of csr at each k of `ks`."""
    recs = [rec("dense", "none", 0.0, dense_s, **kw)]
    recs += [rec("csr", "weight", k, s, **kw) for k, s in zip(ks, csr_seconds)]
    return {"records": recs}


def _shapes(sizes):
    return [(n_out, n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def _shrunk_sizes(sizes, k):
    # neuron pruning drops round(k * n) neurons of every hidden layer; input and output stay
    return (sizes[0],) + tuple(n - round(k * n) for n in sizes[1:-1]) + (sizes[-1],)


def _record(engine, method, k, batch, threads, seconds, nbytes, flops, nnz, sizes, width=None, rng=None):
    spread = 1.02 + 0.1 * rng.random() if rng is not None else 1.05
    lo, hi = seconds / spread ** 0.5, seconds * spread ** 0.5
    return {"engine": engine, "method": method, "sparsity": float(k), "batch": int(batch),
            "threads": int(threads), "median_s": float(seconds), "min_s": float(lo), "max_s": float(hi),
            "spread": float(hi / lo), "flagged": bool(hi / lo > 1.2), "rounds": 5, "calls": 20,
            "nbytes": int(nbytes), "flops": float(flops), "nnz": int(nnz), "layer_sizes": list(sizes),
            "width": width}


def _timings_for(sizes, ks, engines, method_of, rng, width=None, batches=BATCHES):
    shapes = _shapes(sizes)
    n_params = sum(a * b for a, b in shapes)
    n_rows = sum(a for a, _ in shapes)
    records = []
    for batch in batches:
        for threads in THREADS:
            # BLAS: ~45 GFLOP/s per core at batch 256, memory-bound (~12 GB/s) at batch 1
            par = 1.0 if threads == 1 else 1.85
            dense_s = (2 * batch * n_params / (45e9 * par)) if batch > 1 else (4 * n_params / 12e9 / (1 + 0.3 * (threads - 1)))
            dense_s += 4e-6
            for k in ks:
                nnz = sum(a * b - round(k * a * b) for a, b in shapes)
                for engine in engines:
                    method = method_of[engine]
                    jitter = 1 + 0.03 * rng.standard_normal()
                    if engine == "dense":
                        s, nbytes, flops, n, lsz = dense_s, 4 * n_params, 2 * batch * n_params, n_params, sizes
                    elif engine in ("csr", "csr-scipy"):
                        # per nonzero: ~0.7 ns at batch 1; ~4 GFLOP/s per core at batch 256
                        per = 0.7e-9 if batch == 1 else 2 * batch / (4e9 * par)
                        s = nnz * per + 6e-6
                        if engine == "csr-scipy":  # single-threaded and with Python overhead
                            s = nnz * (per * (1.6 if threads == 1 else 1.6 * par)) + 25e-6
                        nbytes = 8 * nnz + 4 * (n_rows + len(shapes))
                        flops, n, lsz = 2 * batch * nnz, nnz, sizes
                    else:  # shrunk: BLAS on the smaller dense net
                        lsz = _shrunk_sizes(sizes, k)
                        n = sum(a * b for a, b in _shapes(lsz))
                        s = (2 * batch * n / (45e9 * par * (1 - 0.2 * k))) if batch > 1 else (4 * n / 12e9 / (1 + 0.3 * (threads - 1)))
                        s += 4e-6
                        nbytes, flops = 4 * n, 2 * batch * n
                    rec = _record(engine, method, k, batch, threads, s * jitter, nbytes, flops, n, lsz, width, rng)
                    if engine == "csr":
                        rec["index_dtype"] = "int32"
                    rec.update(_plan_fields(engine, batch, threads, len(lsz) - 1))
                    records.append(rec)
    return records


def _plan_fields(engine, batch, threads, n_layers):
    """kernel / isa / plan keys shaped like timing.record's (plan.Plan.summary and to_dict)."""
    if engine in ("dense", "shrunk"):
        layout, split, kernel = "dense", "blas", ("sgemv" if batch == 1 else "sgemm") + ("/par" if threads > 1 else "")
    elif engine == "csr-scipy":
        layout, split, kernel = "scipy-csr", "none", "scipy-csr"
    elif batch == 1:
        layout, split, kernel = "sell", "none", "sell16-avx512" + ("/par" if threads > 1 else "")
    else:
        layout, split, kernel = "csr", f"batch split 32 cols x {threads} threads", "tiles"
    summary = f"{layout}; {split}; {kernel} x{n_layers}"
    return {"kernel": summary, "isa": "avx512",
            "plan": {"engine": engine, "batch": batch, "threads": threads, "isa": "avx512", "layout": layout,
                     "summary": summary}}


def _curve(base, ks, drop_at, steep, rng, n_seeds, finetuned):
    # accuracy stays near `base` until sparsity `drop_at`, then falls towards chance (0.1)
    acc, loss = [], []
    for k in ks:
        x = max(0.0, k - drop_at) / max(1e-9, 1 - drop_at)
        fall = (1 - np.exp(-steep * x)) / (1 - np.exp(-steep))
        if finetuned:
            fall *= 0.35
        mean = base - (base - 0.1) * fall - 0.002 * k
        a = np.clip(mean + 0.002 * rng.standard_normal(n_seeds), 0.05, 1.0)
        acc.append([float(v) for v in a])
        loss.append([float(0.07 + 2.2 * max(0.0, base - v) ** 0.9) for v in a])
    return acc, loss


def make_results(folder, missing=(), batches=BATCHES) -> Path:
    """Write a synthetic results folder at `folder` (all parts but those named in `missing`); return its path.

    `batches`: the batch sizes timed (the real study uses (1, 16, 256, 4096))."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for part in missing:
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}")
    rng = np.random.default_rng(1234)
    ks = list(SPARSITIES)
    parts = {}
    parts["config"] = {"run_id": folder.name, "created": "2026-11-25T22:00:00+00:00", "sparsenet_version": "0.1.0",
                       "study": {"sizes": list(SIZES), "sparsities": ks, "seeds": list(SEEDS),
                                 "batches": list(batches), "threads": list(THREADS), "epochs": 2,
                                 "finetune_epochs": 1, "widths": list(WIDTHS), "quick": True}}
    parts["machine"] = {"cpu": "Synthetic CPU @ 2.0GHz", "n_cores": 2, "platform": "Linux-6.0-x86_64", "python": "3.11.2",
                        "versions": {"numpy": "2.4.6", "scipy": "1.16.0", "numba": "0.62.0", "matplotlib": "3.11.2",
                                     "threadpoolctl": "3.6.0"},
                        "blas": [{"user_api": "blas", "internal_api": "openblas", "num_threads": 2,
                                  "version": "0.3.29", "architecture": "Haswell", "threading_layer": "pthreads",
                                  "prefix": "libscipy_openblas", "filepath": "/synthetic/libopenblas.so"}],
                        "env": {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None},
                        "peaks": {"sgemm_gflops": {"1": 52.0, "2": 98.0}, "bandwidth_gbs": 14.0},
                        "isa": "avx512", "numba_cpu": "znver4", "l1d_bytes": 32768,
                        "l2_bytes": 1048576}
    base = [0.982 + 0.001 * s for s in range(len(SEEDS))]
    curves = []
    for method, drop_at, steep in (("weight", 0.85, 4.0), ("neuron", 0.5, 3.0)):
        for recovery in ("oneshot", "finetuned"):
            acc, loss = _curve(float(np.mean(base)), ks, drop_at if recovery == "oneshot" else drop_at + 0.05,
                               steep, rng, len(SEEDS), recovery == "finetuned")
            curves.append({"method": method, "recovery": recovery, "accuracy": acc, "loss": loss})
    parts["accuracy"] = {"dataset": "mnist", "sparsities": ks, "seeds": list(SEEDS),
                         "dense": {"accuracy": base, "loss": [0.065, 0.063, 0.061]},
                         "curves": curves, "config": {"epochs": 2, "lr": 0.1}}
    # activation sparsity: ~80 % zero pixels, hidden layers sparser as k grows, fewer at batch 16
    parts["activations"] = {"layer_sizes": list(SIZES), "records": [
        {"seed": seed, "method": "weight" if k else "none", "sparsity": k, "batch": b,
         "zero_fraction": [0.8 if b == 1 else 0.45] + [min(0.95, (0.5 + 0.3 * k) / (1 if b == 1 else 4))
                                                       for _ in SIZES[1:-1]]}
        for seed in SEEDS for k in ks for b in (1, 16)]}
    method_of = names.ENGINE_METHOD
    # the sgemm peak timed beside every k (study.run_grid): 1024^3 products at ~50 / ~95 GFLOP/s
    peaks = [{"engine": "sgemm-peak", "method": "none", "sparsity": k, "batch": 1024, "threads": t,
              "median_s": 2.0 * 1024 ** 3 / ((50.0 if t == 1 else 95.0) * (1 + 0.05 * rng.standard_normal()) * 1e9),
              "nbytes": 4 * 1024 ** 2, "flops": 2.0 * 1024 ** 3} for k in ks for t in THREADS]
    parts["timings"] = {"records": _timings_for(SIZES, ks, ENGINES, method_of, rng, batches=batches),
                        "compile_s": {"csr": 1.8}, "peaks": peaks}
    scaling = []
    for width in WIDTHS:
        # like the study: one square (width x width) layer per width, dense vs csr
        scaling += _timings_for((width, width), (0.0, 0.5, 0.8, 0.9, 0.95, 0.99), ("dense", "csr"),
                                method_of, rng, width=width, batches=batches)
    parts["scaling"] = {"records": scaling}
    for part, obj in parts.items():
        if part not in missing:
            save_part(folder, part, obj)
    return folder
