"""The results folder: what a study writes and a report reads (JSON only, so a report can be rebuilt anywhere).

Layout of ``results/<run_id>/`` (every file written atomically, each optional to the reader):

config.json    {"run_id": str, "created": ISO time, "sparsenet_version": str,
                "study": {...the StudyConfig fields...},
                "data": {"fingerprint": str, "md5": [4 x str], "source": str}}  # the data loaded
machine.json   {"cpu": str, "n_cores": int, "platform": str, "python": str,
                "versions": {"numpy": ..., "scipy": ..., "numba": ..., ...},
                "blas": [threadpoolctl.threadpool_info() entries],
                "env": {"OPENBLAS_CORETYPE": str|None, "OPENBLAS_L2_SIZE": str|None},
                "peaks": {"sgemm_gflops": {"1": float, "2": float}, "bandwidth_gbs": float},
                "isa": "avx512"|"avx2"|"neon"|"generic",  # kernels the plans choose (plan.CPU.isa)
                "numba_cpu": str,                          # the CPU Numba compiles for
                "l1d_bytes": int|None,                     # the host's L1d (sizes the column panels)
                "l2_bytes": int|None,                      # the host's L2 (SELL-16 packed beyond it)
                "fingerprint": {"hostname": str, "cpu": str, "isa": str, "n_cores": int,
                                "tag": str}}               # which machine timed (machine.fingerprint)
accuracy.json  {"dataset": str, "sparsities": [k...], "seeds": [int...],
                "dense": {"accuracy": [per seed], "loss": [per seed]},
                "curves": [{"method": "weight"|"neuron", "recovery": "oneshot"|"finetuned"|"gradual",
                            "sparsities": [k...] (optional, overrides the top-level list),
                            "accuracy": [[per seed] per k], "loss": [[per seed] per k]}],
                "config": {...}}
activations.json {"records": [{"seed": int, "method": "none"|"weight", "sparsity": float, "batch": int,
                              "zero_fraction": [per layer input: fraction of inputs zero in every row of
                                                a batch of the test set]}], "layer_sizes": [int...]}
timings.json   {"records": [TIMING...], "compile_s": {"csr": float, ...}, "machine": {...fingerprint},
                "peaks": [TIMING of engine "sgemm-peak", method "none", batch n: an n x n float32 sgemm
                          timed in the rounds of k = "sparsity"'s cases, one per thread count]}
scaling.json   {"records": [TIMING... with "width" set and "method" "weight"], "machine": {...fingerprint}}
net.npz, test-images.npy, checksums.json
               the timed net (first seed) and the test images the timings feed, checksummed
               (timing_inputs.py): `sparsenet study --timing-only` times them on another machine

TIMING = {"engine": "dense"|"csr"|"csr-scipy"|"shrunk",   # names.ENGINES
          "method": "weight"|"neuron"|"none",   # how the timed net was pruned (names.ENGINE_METHOD)
          "sparsity": float, "batch": int, "threads": int,
          "median_s": float,                    # median over rounds of the per-round median call time
          "min_s": float, "max_s": float,       # min/max of the per-round medians
          "spread": float,                      # max_s / min_s
          "flagged": bool,                      # spread > SPREAD_LIMIT
          "rounds": int, "calls": int,          # rounds, calls per round
          "per_round_s": [float...],            # per-call time of each round (bootstrap intervals: stats.py)
          "nbytes": int, "flops": float,        # stored parameter bytes; useful flops per call
          "call_nbytes": int, "layout": str,    # bytes of the layout this call computes with, its
                                                # name (plan.Plan.layout: dense, csr, csr-panels, csr-wide-panels, sell...)
          "kernel": str,                        # the call's kernel plan in one line (Plan.summary():
                                                # layout; batch split; per-layer kernels)
          "isa": str,                           # ISA level of those kernels (plan.CPU.isa)
          "plan": {...},                        # the whole plan (Plan.to_dict(): layers, reasons, ...)
          "nnz": int, "layer_sizes": [int...], "width": int|None,
          "timed_at": float,                    # wall-clock start of the run (timing.time_cases) that timed it:
                                                # records with the same one pair round by round (stats.paired)
          "round_at_s": [float...],             # when each round of it started, seconds after timed_at
          "machine": str}                       # the fingerprint's tag of the machine that timed it
(a sgemm peak record also has "beside": the batch whose cell it was timed in)
(kernel, isa and plan are absent from records written before plans were recorded, machine and the
fingerprints from those written before fingerprints, timed_at and round_at_s from those written before
session 18: their ratios are ratios of medians.)

Writers may add keys the reader does not need: accuracy/timings/scaling carry "config" (what produced
them, checked on resume), "complete" (false while a stage is partly done), timings/scaling also
"skipped" (cases left out, with reasons), "loadavg", "steps" (study.retime_steps: each step up in k
re-timed side by side, its ratio before and after; a re-timed record has "retimed": "step" (the dense
baselines at those k, timed in the same run: "beside") and "retimed_with": the other k of the run) and
"remeasured" / "remeasured_s" / "still_noisy" (flagged records re-timed); machine.json "cpu_flags", "numba_threads";
config.json of a folder timed by `--timing-only` with timing options "timing_only": {"from": folder,
"machine": tag, "options": {field: value}}.

One machine's measurements per folder: `sparsenet study --timing-only` writes another machine's into
a sibling folder ``<run>@<machine tag>`` holding copies of config, accuracy, activations and the saved net.

Accuracy values are fractions in [0, 1]; sparsities are fractions in [0, 1); times are seconds.
"""
from __future__ import annotations

from pathlib import Path

from sparsenet.files import read_json, write_json

PARTS = ("config", "machine", "accuracy", "activations", "timings", "scaling")
SPREAD_LIMIT = 1.2


def part_path(folder, part: str) -> Path:
    """Path of one part (``accuracy`` -> ``folder/accuracy.json``)."""
    if part not in PARTS:
        raise ValueError(f"unknown results part {part!r}; expected one of {', '.join(PARTS)}")
    return Path(folder) / f"{part}.json"


def save_part(folder, part: str, obj) -> Path:
    """Write one part atomically."""
    return write_json(part_path(folder, part), obj)


def read_part(path) -> dict:
    """A part file of a results folder (files.read_json): ValueError naming the file unless it holds a
    JSON object (a file holding [] or a number would fail deep inside the stage or report reading it)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a results file of a `sparsenet study` (a JSON {type(data).__name__}, "
                         "not an object); move it away to re-run that stage")
    return data


def load_results(folder) -> dict:
    """Every part present in `folder` as {part: obj}; missing parts are simply absent.

    Raises a clear error when the folder itself does not exist.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; give the study's results folder (the one holding "
                                 f"{part_path(folder, PARTS[0]).name}), e.g. {folder.parent}")
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder {folder} does not exist (run `sparsenet study` first)")
    out = {}
    for part in PARTS:
        path = part_path(folder, part)
        if path.exists():
            out[part] = read_part(path)
    return out


def has_parts(folder) -> bool:
    """Whether `folder` holds any part of a results folder (one of its JSON files), without reading it."""
    return any(part_path(folder, part).exists() for part in PARTS)


def missing_parts(results: dict) -> list:
    """Names of the parts a results dict lacks."""
    return [p for p in PARTS if p not in results]
