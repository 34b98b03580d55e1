"""`sparsenet study`: the stages of the whole study in one resumable run, written to ``results/<run_id>/``.

Stages, each writing its part of the results folder atomically (schema in results.py):
config -> data -> train one net per seed (cached) -> save the timed net and its input images
(timing_inputs.py) -> accuracy sweep (one-shot and fine-tuned) -> activations -> machine info and
peaks -> timings of every engine over the grid (the saved seed-0 net, pruned as names.ENGINE_METHOD
says) -> one-layer scaling -> report.

The stages up to the activations depend on the nets and the data, the rest on the machine:
`run_study(accuracy_only=True)` stops before the machine (say, on a Dask cluster), and
`run_timing_only(folder)` runs the rest on each machine to be measured from what the folder saved,
with neither the data set nor training; the records of two machines never mix in one folder.

What is measured is a StudyConfig (study_config.py); which cases are timed is a grid (grid.py);
the work the stages delegate (loading data, training, the sweep, peaks, timing, engines, the
report) is a `Stages`, which tests replace piece by piece.

Re-running the same configuration resumes: a finished part whose recorded config matches is
skipped; the timing stages save their records after every unit of their grid and pick up from them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

from sparsenet import __version__, names
from sparsenet.files import check_folder_writable, make_dirs, read_json
from sparsenet.grid import MLPGrid, ScalingGrid, pruned, record_key
from sparsenet.model import layer_sizes
from sparsenet.progress import bar, say
from sparsenet.results import part_path, read_part, save_part
from sparsenet.runlock import FolderBusy, run_lock  # noqa: F401  (FolderBusy: what a busy folder raises)
from sparsenet.study_config import (  # noqa: F401  (re-exported: the study's configuration)
    OPTIONS, PLACE_FIELDS, TIMING_FIELDS, StudyConfig, available_threads, finetune_config, gmp_config,
    gradual_config, model_cache, train_config,
)


@dataclass(frozen=True)
class _default:
    """The real `sparsenet.<module>.<name>`, imported when first called (keeps `import study` light);
    it pickles by name, so worker processes (cluster.ProcessRunner) receive it as a task function."""

    module: str
    name: str

    def __call__(self, *args, **kwargs):
        import importlib
        return getattr(importlib.import_module(f"sparsenet.{self.module}"), self.name)(*args, **kwargs)

    @property
    def __name__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Stages:
    """The work the study delegates; each field may be replaced (tests pass stand-ins)."""

    load_data: Callable = _default("data", "load")              # (name, data_dir=, progress=) -> Dataset
    train: Callable = _default("train", "cached_train")         # (ds, TrainConfig, cache_dir, progress=)
                                                                # -> (params, meta)
    sweep: Callable = _default("sweep", "run_and_save")         # (folder, models, X.., **kw) -> accuracy dict
    peaks: Callable = _default("machine", "measure_peaks")      # (threads=, quick=) -> peaks dict
    time_cases: Callable = _default("timing", "time_cases")     # (cases, **kw) -> TIMING records
    make_engine: Optional[Callable] = None                      # (name, params, threads=) -> engine
                                                                # (None: engines.make_engine)
    report: Callable = _default("report", "build_report")       # (folder) -> report path
    runner: Optional[object] = None                             # where training and the sweep run
                                                                # (cluster.LocalRunner / DaskRunner; None: from cfg)


def make_runner(cfg: StudyConfig):
    """The runner of the accuracy work: a Dask cluster when cfg names one, else single-threaded
    worker processes of this machine, one per available thread (cluster.ProcessRunner: two tasks side
    by side do ~1.8x the work of one on two threads), else (one thread) this process. dask is imported
    only for a Dask cluster."""
    from sparsenet import cluster
    if cfg.scheduler or cfg.workers:
        return cluster.DaskRunner(cfg.scheduler, cfg.workers)
    workers = cluster.default_workers(available_threads())
    return cluster.ProcessRunner(workers) if workers > 1 else cluster.LocalRunner()


def _say(progress, msg):
    say("study", msg, progress)


# --- stages --------------------------------------------------------------------------------------

def write_config(cfg: StudyConfig, folder: Path, ds=None) -> None:
    """config.json; an existing one must record the same measured configuration and data."""
    path = part_path(folder, "config")
    study = dataclasses.asdict(cfg)
    data = _data_info(ds)
    if path.exists():
        recorded = read_json(path)
        old = recorded.get("study", {}) if isinstance(recorded, dict) else {}
        same = {k: v for k, v in old.items() if k not in PLACE_FIELDS}
        if json.loads(json.dumps(cfg.measured())) != same:
            raise ValueError(f"{folder} holds results of another configuration; choose another "
                             f"--run-id or results folder")
        old_fp = (recorded.get("data") or {}).get("fingerprint")
        if old_fp is not None and old_fp != data["fingerprint"]:
            raise ValueError(f"{folder} holds results of other data (fingerprint {old_fp or 'unknown'}, "
                             f"this data {data['fingerprint'] or 'unknown'}: {data['source']}); choose "
                             f"another --run-id or results folder")
        return
    save_part(folder, "config", {"run_id": folder.name,
                                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "sparsenet_version": __version__, "study": study, "data": data})


def _data_info(ds) -> dict:
    """What config.json records of the data loaded: its fingerprint, the files' md5 and source."""
    if ds is None:
        return {"fingerprint": "", "md5": [], "source": None}
    return {"fingerprint": ds.fingerprint, "md5": list(ds.md5), "source": ds.source}


def load_data(cfg: StudyConfig, stages: Stages = Stages()):
    """The data set; with train_subset, its first N training images under a distinct name
    (``mnist-sub5000``) so cached models of the subset and of the full set never mix."""
    ds = stages.load_data(cfg.dataset, data_dir=cfg.data_dir, progress=False)
    if cfg.train_subset:
        n = cfg.train_subset
        ds = ds._replace(name=f"{ds.name}-sub{n}", train_images=ds.train_images[:n],
                         train_labels=ds.train_labels[:n])
    return ds


def train_models(cfg: StudyConfig, ds, progress=True, stages: Stages = Stages()) -> list:
    """One trained net per seed (train.cached_train reuses a cached net of the same config), each
    seed a task of the runner (in this process, or on a cluster).

    In worker processes (cluster.ProcessRunner) the stage returns once the first seed's net is
    trained and a worker would otherwise idle: the nets still training (3 seeds on 2 workers: the
    third) come back as cluster.Pending, which the accuracy sweep waits for only when it gets to
    their tasks, so the free worker starts on the trained nets' accuracy work (168 s of one core
    idle in the session-5 study)."""
    from sparsenet.cluster import LocalRunner, ProcessRunner
    runner = stages.runner or LocalRunner()
    local = type(runner) is LocalRunner
    shared = runner.share(ds)
    t0 = time.perf_counter()
    tasks = [(f"train-seed{seed}", (shared, train_config(cfg, seed, len(ds.train_images)), model_cache(cfg),
                                    progress and local)) for seed in cfg.seeds]

    def trained(seed):
        def said(value):
            params, meta = value
            _say(progress, f"seed {seed}: test accuracy {meta.get('test_acc', float('nan')):.4f} "
                           f"({time.perf_counter() - t0:.0f} s)")
            return params
        return said

    if isinstance(runner, ProcessRunner):
        pending = [runner.submit(_train_task(stages.train), key, args, then=trained(seed))
                   for seed, (key, args) in zip(cfg.seeds, tasks)]
        while not pending[0].done() or sum(not p.done() for p in pending) >= runner.workers:
            time.sleep(0.05)
        return [p.result() if p.done() else p for p in pending]
    models = {}
    for key, value in runner.map_unordered(_train_task(stages.train), tasks):
        seed = int(key.rsplit("seed", 1)[1])
        models[seed] = trained(seed)(value)
    return [models[seed] for seed in cfg.seeds]


def _train_task(train):
    """train(ds, cfg, cache, progress=...) as a task taking positional arguments."""
    return functools.partial(_call_train, train)


def _call_train(train, ds, cfg, cache_dir, progress):
    return train(ds, cfg, cache_dir, progress=progress)


def save_timing_inputs(cfg: StudyConfig, folder: Path, ds, params, progress=True, stages: Stages = Stages()) -> None:
    """net.npz, test-images.npy and checksums.json (timing_inputs.py): the first seed's net and the test
    images the timings stage feeds, so that any machine can time them (`--timing-only`). Written once:
    the saved net is the one timed; rewritten only when missing or failing its checks."""
    from sparsenet import timing_inputs
    try:
        timing_inputs.load(folder, _net_meta(cfg.seeds[0], ds.fingerprint))
        _say(progress, "save: done before, skipped")
        return
    except timing_inputs.TimingInputsError as exc:
        if timing_inputs.saved(folder):
            _say(progress, f"save: the saved net fails its checks ({exc}); saving it again")
    timing_inputs.save(folder, params, ds.test_images,
                       meta={**_net_meta(cfg.seeds[0], ds.fingerprint), "dataset": ds.name})


def _net_meta(seed, fingerprint) -> dict:
    """What the saved net's metadata must say to be the run's (timing_inputs.load's `expect`)."""
    return {"seed": seed, "data_fingerprint": fingerprint}


def _recorded_net_meta(recorded: dict) -> dict:
    """_net_meta of a run's config.json (what it does not record is not checked)."""
    seeds = (recorded.get("study") or {}).get("seeds") or [None]
    return _net_meta(seeds[0], (recorded.get("data") or {}).get("fingerprint") or None)


def run_accuracy(cfg: StudyConfig, folder: Path, ds, models, progress=True, stages: Stages = Stages()) -> None:
    """accuracy.json via sweep.run_and_save (resumable on its own)."""
    from sparsenet.data import to_float
    from sparsenet.train import split_train_val
    path = part_path(folder, "accuracy")
    if path.exists() and read_part(path).get("complete"):
        _say(progress, "accuracy: done before, skipped")
        return
    X, y = to_float(ds.train_images), ds.train_labels
    ft = finetune_config(cfg, len(X))
    # one split for every seed's fine-tuning: validation only picks the best fine-tuning epoch,
    # and test accuracy (what the sweep reports) never touches it
    tr, val = split_train_val(len(X), ft.n_val, 0)
    recoveries = ("oneshot",)
    if cfg.finetune_epochs > 0:     # gradual pruning goes with fine-tuning (its lr, gradual_epochs long)
        recoveries += ("finetuned",) + (("gradual",) if cfg.gradual_sparsities and cfg.gradual_methods else ())
    stages.sweep(folder, models, X[tr], y[tr], X[val], y[val],
                 to_float(ds.test_images), ds.test_labels, sparsities=cfg.sparsities,
                 methods=cfg.methods, recoveries=recoveries,
                 finetune_cfg=ft if cfg.finetune_epochs > 0 else None,
                 finetune_sparsities=cfg.finetune_sparsities, gradual_sparsities=cfg.gradual_sparsities,
                 gradual_methods=cfg.gradual_methods, gmp=gmp_config(cfg, len(tr)),
                 gradual_cfg=gradual_config(cfg, len(X)) if cfg.finetune_epochs > 0 else None, seeds=cfg.seeds,
                 dataset=cfg.dataset, progress=progress, runner=stages.runner)


def run_machine(cfg: StudyConfig, folder: Path, progress=True, stages: Stages = Stages()) -> dict:
    """machine.json: the machine (its fingerprint), its BLAS and ISA, and the peaks measured at every
    thread count timed; refused in a folder holding another machine's timings (check_machine)."""
    from sparsenet.machine import fingerprint, machine_info
    check_machine(folder, fingerprint())
    path = part_path(folder, "machine")
    if path.exists():
        _say(progress, "machine: done before, skipped")
        return read_part(path)
    threads = sorted(set(cfg.threads) | set(cfg.scaling_threads))
    info = machine_info(stages.peaks(threads=threads, quick=cfg.is_quick))
    save_part(folder, "machine", info)
    return info


def _timing_config(cfg: StudyConfig, scaling: bool) -> dict:
    """What a timings (scaling) file records it was made with; a resume needs it unchanged."""
    keys = ["engines", "sparsities", "batches", "threads", "rounds", "min_time", "max_case_s",
            "max_call_s", "max_baseline_call_s", "dense_every_k", "seeds", "epochs", "train_subset", "dataset"]
    d = {k: getattr(cfg, k) for k in keys}
    if not scaling:
        d["peak_n"] = cfg.peak_n                        # the scaling stage times no peak
    else:
        d.update(widths=cfg.widths, threads=cfg.scaling_threads, engines=names.SCALING_ENGINES,
                 sparsities=cfg.scaling_ks())
    return json.loads(json.dumps(d))


def timing_grid(cfg: StudyConfig, params, make_engine=None, inputs=None) -> MLPGrid:
    """The grid of the timings stage: cfg's engines x sparsities x batches x threads on `params`,
    inputs cut from `inputs` (the test images) when given."""
    return MLPGrid(params, cfg.engines, cfg.sparsities, cfg.batches, cfg.threads,
                   dense_every_k=cfg.dense_every_k, max_call_s=cfg.max_call_s, make_engine=make_engine,
                   inputs=inputs, max_baseline_call_s=cfg.max_baseline_call_s)


def scaling_grid(cfg: StudyConfig, make_engine=None) -> ScalingGrid:
    """The grid of the scaling stage: one square layer per width, names.SCALING_ENGINES."""
    return ScalingGrid(names.SCALING_ENGINES, cfg.scaling_ks(), cfg.batches, cfg.scaling_threads,
                       widths=cfg.widths, dense_every_k=cfg.dense_every_k, max_call_s=cfg.max_call_s,
                       make_engine=make_engine, max_baseline_call_s=cfg.max_baseline_call_s)


def run_timings(cfg: StudyConfig, folder: Path, params, progress=True, inputs=None,
                stages: Stages = Stages()) -> dict:
    """timings.json: every engine x sparsity x batch x threads on the seed-0 net, saved per k; each
    batch is the first rows of `inputs` (the test images) when given."""
    return run_grid(cfg, folder, "timings", _timing_config(cfg, scaling=False),
                    timing_grid(cfg, params, stages.make_engine, inputs), progress, stages, peak_n=cfg.peak_n)


def run_scaling(cfg: StudyConfig, folder: Path, progress=True, stages: Stages = Stages()) -> dict:
    """scaling.json: one square layer per width, dense vs csr, saved per (width, k)."""
    return run_grid(cfg, folder, "scaling", _timing_config(cfg, scaling=True),
                    scaling_grid(cfg, stages.make_engine), progress, stages)


def run_grid(cfg, folder, part, config, grid, progress=True, stages: Stages = Stages(), peak_n: int = 0) -> dict:
    """Time every point of `grid` not yet in `folder/<part>.json`, unit by unit, saving after each; the
    file and each record carry the machine's fingerprint (its tag in a record).

    peak_n > 0: each unit's cases are timed together with an n x n sgemm per thread count of the
    unit (timing.peak_case), interleaved in the same rounds; those records go to the file's "peaks"
    (analysis.sgemm_peak: a fraction of peak from medians that met the same spells of the machine)."""
    from sparsenet.machine import fingerprint
    from sparsenet.timing import check_case, peak_beside, peak_case
    path = part_path(folder, part)
    machine = fingerprint()
    state = {"records": [], "skipped": [], "compile_s": {}, "config": config, "complete": False,
             "loadavg": [], "machine": machine, "peaks": []}
    if path.exists():
        old = read_part(path)
        if old.get("config") == config:
            if old.get("complete"):
                _say(progress, f"{part}: done before, skipped")
                return old
            state.update({k: old.get(k, state[k]) for k in ("records", "skipped", "compile_s", "loadavg", "peaks")})
        else:
            _say(progress, f"{part}: existing file has another config; starting over")
    done = {record_key(r) for r in state["records"]} | {record_key(s) for s in state["skipped"]}
    units = grid.units()
    todo = [u for u in units if any(p.key() not in done for p in grid.points(u))]
    progress_bar = bar(progress, total=len(units), initial=len(units) - len(todo), desc=part)
    for unit in todo:
        load = _loadavg()
        if load is not None and load > 1.0 * _cores() and not state["loadavg"]:
            _say(progress, f"{part}: the machine is busy (1-min load {load:.1f} on {_cores()} "
                           f"cores): timings will be noisy and many flagged")
        points = []
        for p in grid.points(unit):
            if p.key() in done:
                continue
            reason = grid.skip(p)
            if reason:
                done.add(p.key())
                state["skipped"].append({**p._asdict(), "reason": reason})
            else:
                points.append(p)
        cases = grid.cases(unit, points)
        for case in cases:
            if case.name not in state["compile_s"]:
                state["compile_s"][case.name] = _compile_seconds(case)
        beside = peak_beside(peak_n, {c.batch for c in cases})
        peaks = [peak_case(peak_n, t, unit[1], beside) for t in sorted({c.threads for c in cases})] if peak_n > 0 else []
        recs = _time(stages, cases + peaks, cfg, machine["tag"])
        state["records"] += recs[:len(cases)]
        state["peaks"] += recs[len(cases):]
        for case in cases:
            check_case(case)
        # 1-min load average when each unit started: a busy machine explains flagged timings
        state["loadavg"].append({"width": unit[0], "sparsity": unit[1], "load": load})
        save_part(folder, part, state)
        progress_bar.update(1)
    progress_bar.close()
    if cfg.remeasure_s > 0 and not state.get("remeasured_s"):
        remeasure(cfg, grid, state, stages, progress, part, peak_n)
        save_part(folder, part, state)
    if cfg.remeasure_s > 0 and "steps" not in state:      # last: what follows must not undo the pairs
        state["steps"] = retime_steps(cfg, grid, state, stages, cfg.remeasure_s / 2, peak_n)
        if state["steps"]:
            _say(progress, f"{part}: {len(state['steps'])} step(s) up in k re-timed side by side; "
                           f"{sum(s['after_low'] > 1 for s in state['steps'])} remain")
    state["complete"] = True
    save_part(folder, part, state)
    return state


def _time(stages: Stages, cases, cfg: StudyConfig, tag: str) -> list:
    """stages.time_cases with cfg's budget; each record tagged with the machine that timed it."""
    recs = stages.time_cases(cases, rounds=cfg.rounds, min_time=cfg.min_time, max_case_s=cfg.max_case_s,
                             progress=False)
    return [{**r, "machine": tag} for r in recs]


def _ratio_interval(records, i, j) -> tuple:
    """(ratio, low) of record j's time over record i's: stats.record_ratio_ci over their per-round
    times (paired rounds when the two were timed in one run)."""
    from sparsenet import stats
    ratio, low, _ = stats.record_ratio_ci(records[j], records[i])
    return ratio, low


def steps_up(records) -> list:
    """(i, j) of the records where an engine is slower at a higher k: record j at the next k timed
    after record i's (same engine, batch, threads, width) and the 95 % interval of the time ratio
    j / i over their rounds (stats.ratio_ci) above 1; largest ratio first. The engines whose time
    does not depend on k (names.K_INDEPENDENT) have none."""
    series = {}
    for i, r in enumerate(records):
        if r["engine"] not in names.K_INDEPENDENT:
            series.setdefault((r["engine"], r["batch"], r["threads"], r.get("width")), []).append(i)
    out = []
    for idx in series.values():
        idx.sort(key=lambda i: records[i]["sparsity"])
        for i, j in zip(idx, idx[1:]):
            if records[i].get("per_round_s") and records[j].get("per_round_s"):
                ratio, low = _ratio_interval(records, i, j)
                if low > 1:
                    out.append((ratio, i, j))
    return [(i, j) for _, i, j in sorted(out, key=lambda x: -x[0])]


def _step_chains(pairs, beside=lambda step: ()) -> list:
    """The steps' records joined where they share one (80 -> 90 % and 90 -> 95 %: 80, 90 and 95), or
    one of the records `beside(step)` names (the dense baselines timed at a step's k: _beside), as
    sorted index lists, in the order of their first step; each with its steps."""
    chains = []
    for i, j in pairs:
        members = {i, j} | set(beside((i, j)))
        touching = [c for c in chains if c[0] & members]
        first = touching[0] if touching else None
        if first is None:
            chains.append((members, [(i, j)]))
            continue
        first[0].update(members)
        first[1].append((i, j))
        for c in touching[1:]:            # a step that bridges two chains joins them
            first[0].update(c[0])
            first[1].extend(c[1])
            chains.remove(c)
    return [(sorted(idx), steps) for idx, steps in chains]


def _beside(records, step) -> list:
    """Every record of the cells of the step's two records (the same k, batch, threads and width:
    timing.cell within a unit): the dense baselines its speed-ups are taken against (analysis.speedups)
    and the other engines of those cells, re-timed in the same run so that each cell's records still
    pair round by round (stats.paired; else a re-timed engine at k would be set against a dense record
    of another phase of the machine, and the cell's other engines against a dense record of another run)."""
    at = {_cell_key(records[i]) for i in step}
    return [b for b, r in enumerate(records) if _cell_key(r) in at]


def retime_steps(cfg, grid, state, stages: Stages, seconds: float, peak_n: int = 0) -> list:
    """Time both k of each step up in k (steps_up) again, side by side, with the rest of their cells
    (_beside: the dense baselines and the other engines timed at those k, batch and threads; the sgemm
    peak timed in one of them too): the cases in one interleaved run, within `seconds`; steps that
    share a record (80 -> 90 % and 90 -> 95 %, or a cell) run together, so that no later run undoes an
    earlier pair. A unit's rounds only see the noise within it: a slow spell of the machine while one
    k was timed read as a step (csr, batch 1, 2 threads, 80 -> 90 %: x2.22, alone 1.9x faster at 90 %
    than at 80 %). The records are replaced (with "retimed": "step", or "beside" for the rest of their
    cells, and "retimed_with": the other k of the run); returns one entry per step re-timed: {engine,
    batch, threads, width, k, next_k, before, after, after_low} (ratios of the time at next_k to the
    time at k; after_low > 1: the step is the engine's)."""
    t0, out, records = time.perf_counter(), [], state["records"]
    for idx, steps in _step_chains(steps_up(records), lambda step: _beside(records, step)):
        beside = _peaks_beside(state, idx, peak_n)
        if not _fits(state, idx, beside, seconds - (time.perf_counter() - t0)):
            break
        before = {(i, j): records[j]["median_s"] / records[i]["median_s"] for i, j in steps}
        ks = sorted({records[i]["sparsity"] for i in idx})
        new, new_peaks = _time_again(cfg, grid, state, stages, idx, beside, peak_n)
        for j, rec in zip(beside, new_peaks):
            state["peaks"][j] = rec
        stepped = {i for step in steps for i in step}
        for i, r in zip(idx, new):
            records[i] = {**r, "retimed": "step" if i in stepped else "beside",
                          "retimed_with": [k for k in ks if k != r["sparsity"]]}
        for i, j in steps:
            ratio, low = _ratio_interval(records, i, j)
            a, b = records[i], records[j]
            out.append({"engine": a["engine"], "batch": a["batch"], "threads": a["threads"], "width": a.get("width"),
                        "k": a["sparsity"], "next_k": b["sparsity"], "before": round(before[i, j], 4),
                        "after": round(ratio, 4), "after_low": round(low, 4)})
    return out


def remeasure(cfg, grid, state, stages: Stages, progress, part, peak_n: int = 0) -> None:
    """Re-time the cells (width, k, batch, threads) that hold flagged (noisy) records, a cell at a time
    within cfg.remeasure_s seconds: every record of the cell (and the sgemm peak timed beside it) in
    one run, so that the engines and their dense baselines still pair round by round (stats.paired).
    A cell's records are replaced when the new ones are less noisy in all (the sum of log spreads is
    smaller). state gains "remeasured" (how many records were re-timed), "remeasured_s" and
    "still_noisy" (the keys still flagged): the report lists them."""
    t0 = time.perf_counter()
    records, peaks = state["records"], state.setdefault("peaks", [])
    cells = {}
    for i, r in enumerate(records):
        cells.setdefault(_cell_key(r), []).append(i)
    flagged = list(dict.fromkeys(_cell_key(r) for r in records if r.get("flagged")))
    n = 0
    for key in flagged:
        idx = cells[key]
        beside = _peaks_beside(state, idx, peak_n)
        if not _fits(state, idx, beside, cfg.remeasure_s - (time.perf_counter() - t0)):
            break
        new, new_peaks = _time_again(cfg, grid, state, stages, idx, beside, peak_n)
        n += len(idx)
        old = [records[i] for i in idx] + [peaks[j] for j in beside]
        better = sum(math.log(max(r["spread"], 1.0)) for r in new + new_peaks) < \
            sum(math.log(max(r["spread"], 1.0)) for r in old)
        for i, rec in zip(idx, new):
            records[i] = {**rec, "remeasured": True} if better else {**records[i], "remeasured": True}
        for j, rec in zip(beside, new_peaks):
            if better:
                peaks[j] = rec
    state["remeasured"] = n
    state["remeasured_s"] = round(time.perf_counter() - t0, 3)
    state["still_noisy"] = [list(record_key(r)) for r in records if r.get("flagged")]
    if n:
        _say(progress, f"{part}: re-timed {n} case(s) of noisy cells in {state['remeasured_s']:.0f} s; "
                       f"{len(state['still_noisy'])} still flagged")


def _cell_key(r) -> tuple:
    """(width, k, batch, threads): the unit and timing.cell of a record, the cases timed back to back."""
    return (r.get("width"), r["sparsity"], int(r["batch"]), int(r["threads"]))


def _peaks_beside(state, idx, peak_n: int) -> list:
    """Indices into state["peaks"] of the sgemm peaks timed in the cells of records[idx] (stats.timed_beside,
    at the same k); none when the study times no peak (peak_n 0)."""
    from sparsenet import stats
    if peak_n <= 0:
        return []
    records = state["records"]
    return [j for j, pk in enumerate(state.get("peaks", []))
            if any(stats.timed_beside(pk, records[i]) and pk["sparsity"] == records[i]["sparsity"] for i in idx)]


def _fits(state, idx, beside, seconds: float) -> bool:
    """Whether timing records[idx] and peaks[beside] again is predicted to fit into `seconds` (_within)."""
    todo = idx + [~j for j in beside]
    return len(_within(todo, state["records"], seconds, state.get("peaks", []))) == len(todo)


def _time_again(cfg, grid, state, stages: Stages, idx, beside, peak_n: int) -> tuple:
    """(records, peaks): state's records[idx] and sgemm peaks[beside] timed again in one interleaved run
    (a unit's cases built together, grid.cases), each record's last timed logits checked."""
    from sparsenet.grid import Point
    from sparsenet.timing import check_case, peak_case
    records, peaks = state["records"], state.get("peaks", [])
    by_unit = {}
    for pos, i in enumerate(idx):
        r = records[i]
        by_unit.setdefault((r.get("width"), r["sparsity"]), []).append(
            (pos, Point(r["engine"], r["sparsity"], r["batch"], r["threads"], r.get("width"))))
    cases = [None] * len(idx)
    for unit, items in by_unit.items():
        for (pos, _), case in zip(items, grid.cases(unit, [p for _, p in items])):
            cases[pos] = case
    cases += [peak_case(peak_n, peaks[j]["threads"], peaks[j]["sparsity"], peaks[j]["beside"]) for j in beside]
    new = _time(stages, cases, cfg, state["machine"]["tag"])
    for case in cases[:len(idx)]:
        check_case(case)
    return new[:len(idx)], new[len(idx):]


def _within(idx: list, records: list, seconds: float, peaks: Sequence = ()) -> list:
    """The first of `idx` whose timing again (its rounds of calls, a warm and a calibrating call each)
    is predicted to fit into `seconds`; an index ~j stands for peaks[j]."""
    out, total = [], 0.0
    for i in idx:
        r = records[i] if i >= 0 else peaks[~i]
        total += r["median_s"] * (r["calls"] * r["rounds"] + 2)
        if total > seconds:
            break
        out.append(i)
    return out


def _loadavg():
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _cores() -> int:
    from sparsenet.machine import n_cores
    return n_cores()


def _test_inputs(ds, n: int = 4096):
    """The first n test images as float inputs: what the timing stage feeds the engines."""
    from sparsenet.data import to_float
    return to_float(ds.test_images[:n])


def run_activations(cfg: StudyConfig, folder: Path, ds, models, progress=True, stages: Stages = Stages()) -> dict:
    """activations.json: per seed and batch size, the fraction of each layer's inputs that are zero in
    every row of a batch of the test set (what zero-skipping engines skip), for the unpruned net and
    the weight-pruned nets of the grid."""
    from sparsenet.model import activation_sparsity
    path = part_path(folder, "activations")
    if path.exists():
        _say(progress, "activations: done before, skipped")
        return read_part(path)
    X = _test_inputs(ds, 10000)
    rows = []
    for seed, params in zip(cfg.seeds, models):
        for k in cfg.sparsities:
            net = pruned(params, "weight", k) if k else params
            for batch in sorted({b for b in cfg.batches if b <= 16} | {1}):
                rows.append({"seed": seed, "method": "weight" if k else "none", "sparsity": k, "batch": batch,
                             "zero_fraction": activation_sparsity(net, X, batch)})
    out = {"records": rows, "layer_sizes": list(layer_sizes(models[0]))}
    save_part(folder, "activations", out)
    return out


def _compile_seconds(case) -> float:
    """The engine's first calls (its JIT compile, or a cache load); engine.warmup when it has one.

    One call at batch 1 and one at batch 256: the csr engine compiles a kernel for each (SELL or
    the SpMV at batch 1, the batch split above), so the sum is its whole compile cost."""
    warmup = getattr(case.engine, "warmup", None)
    if callable(warmup):
        return float(warmup(batch=1) + warmup(batch=256))
    from sparsenet.timing import warm
    return warm(case)


def run_report(folder: Path, progress=True, stages: Stages = Stages()) -> Optional[Path]:
    """The report of the run folder; a failure is reported, not raised (results stay)."""
    try:
        return stages.report(folder)
    except ImportError as exc:
        _say(progress, f"report skipped: sparsenet.report not importable ({exc})")
        return None
    except Exception as exc:  # the measurements are saved; the report can be rebuilt alone
        print(f"[study] report failed: {type(exc).__name__}: {exc}; rebuild it with "
              f"`sparsenet report {folder}`", file=sys.stderr)
        return None


# --- the whole study -----------------------------------------------------------------------------

def check_outputs(cfg: StudyConfig) -> None:
    """An OSError naming the folder unless the results folder and the model cache can be written:
    found before the data, training and timings, not when their results are saved."""
    check_folder_writable(cfg.results_dir)
    check_folder_writable(model_cache(cfg))


def _stager(stages: Stages, progress, times: dict) -> Callable:
    """stage(name, fn, *args): fn(*args, stages=stages), its start and duration said, its seconds in `times`."""
    def stage(name, fn, *args):
        t0 = time.perf_counter()
        _say(progress, f"{name} ...")
        out = fn(*args, stages=stages)
        times[name] = time.perf_counter() - t0
        _say(progress, f"{name}: {times[name]:.1f} s")
        return out
    return stage


def run_study(cfg: StudyConfig, progress: bool = True, stages: Stages = Stages(), accuracy_only: bool = False) -> Path:
    """Run (or resume) every stage; returns the run folder.

    accuracy_only: stop after the stages that depend on the nets and the data, not on the machine
    (train, save the timed net, accuracy, activations); time the folder later on each machine to be
    measured with run_timing_only. The accuracy work's runner (a Dask cluster) is closed before timing."""
    check_outputs(cfg)
    t_start = time.perf_counter()
    times = {}
    stage = _stager(stages, progress, times)
    # the data first: the run folder is named after it (and cached nets are keyed by it);
    # loading is a read and an md5 of four files, so a resumed run pays little for it
    ds = stage("data", load_data, cfg)
    folder = make_dirs(cfg.folder(ds.fingerprint))
    if stages.runner is None:
        stages = dataclasses.replace(stages, runner=make_runner(cfg))
        stage = _stager(stages, progress, times)
    report = None
    with run_lock(folder):
        if not accuracy_only:
            from sparsenet.machine import fingerprint
            check_machine(folder, fingerprint())         # before training, not at the machine stage
        with stages.runner:
            write_config(cfg, folder, ds)
            models = stage("train", train_models, cfg, ds, progress)
            stage("save", save_timing_inputs, cfg, folder, ds, models[0], progress)
            stage("accuracy", run_accuracy, cfg, folder, ds, models, progress)
            from sparsenet.cluster import ready
            models = [ready(m) for m in models]          # a net the accuracy stage did not need (done before)
            stage("activations", run_activations, cfg, folder, ds, models, progress)
        if not accuracy_only:
            from sparsenet import timing_inputs
            time_this_machine(cfg, folder, *timing_inputs.load(folder), stage=stage, progress=progress)
            report = stage("report", run_report, folder, progress)
    _finish(folder, report, time.perf_counter() - t_start, times, progress)
    if accuracy_only and progress:
        print(f"time it on each machine to be measured: sparsenet study --timing-only {folder}", file=sys.stderr)
    return folder


def time_this_machine(cfg: StudyConfig, folder: Path, params, images, stage: Callable, progress=True) -> None:
    """The stages that depend on the machine: machine.json, the timings of `params` fed `images` (uint8
    test images, as floats), the one-layer scaling study."""
    from sparsenet.data import to_float
    stage("machine", run_machine, cfg, folder, progress)
    stage("timings", run_timings, cfg, folder, params, progress, to_float(images))
    if cfg.widths:
        stage("scaling", run_scaling, cfg, folder, progress)


def _finish(folder: Path, report, total: float, times: dict, progress) -> None:
    """Where the results are, their summary and how long each stage took (on stderr)."""
    if not progress:
        return
    print(f"results in {folder}" + (f"; report {report}" if report else ""), file=sys.stderr)
    for line in summary(folder):
        print(line, file=sys.stderr)
    print(f"study took {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + ")", file=sys.stderr)


# --- timing only: the saved nets timed on this machine ---------------------------------------------

# the fields only the machine's stages read: `--timing-only` may set them anew (each machine its own
# threads, batches, time budget); every other field defines the nets, the data or the accuracy sweep
# and comes from config.json as recorded
MACHINE_PARTS = ("machine", "timings", "scaling")       # what a machine's run writes
SHARED_PARTS = ("accuracy", "activations")              # what does not depend on the machine


def read_run_config(folder) -> dict:
    """config.json of a results folder; a one-line ValueError when `folder` is not one."""
    folder = Path(folder)
    path = part_path(folder, "config")
    if not path.is_file():
        why = "no such folder" if not folder.exists() else "no config.json"
        raise ValueError(f"{folder} is not a results folder ({why}); give the run folder a `sparsenet study` "
                         f"wrote, e.g. results/<run id>")
    recorded = read_json(path)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("study"), dict):
        raise ValueError(f"{path} is not the config.json of a `sparsenet study` (no study settings)")
    return recorded


def _flag(field: str) -> str:
    return next((o.flag for o in OPTIONS if o.field == field), field)


def check_timing_options(options: dict) -> None:
    """A ValueError naming the options given with --timing-only that are not TIMING_FIELDS."""
    bad = [f for f in options if f not in TIMING_FIELDS]
    if bad:
        raise ValueError(f"--timing-only times the nets and settings saved in the results folder: "
                         f"{', '.join(map(_flag, bad))} cannot be given with it (timing options can: "
                         f"{', '.join(map(_flag, TIMING_FIELDS))})")


def recorded_config(recorded: dict, folder: Path, options: dict) -> StudyConfig:
    """The StudyConfig `recorded` in a config.json, placed at `folder`, the timing `options` replacing
    the recorded ones (checked as any StudyConfig: threads beyond this machine's are refused)."""
    known = {f.name for f in dataclasses.fields(StudyConfig)}
    unknown = sorted(set(recorded["study"]) - known)
    if unknown:
        raise ValueError(f"config.json records settings this sparsenet ({__version__}) does not know: "
                         f"{', '.join(unknown)}; time it with sparsenet {recorded.get('sparsenet_version', '?')}")
    check_timing_options(options)
    fields = {**recorded["study"], **options, "results_dir": str(folder.parent), "run_id": folder.name}
    try:
        return StudyConfig(**fields)
    except ValueError as exc:
        raise ValueError(f"{exc} (settings: those recorded in config.json, with the timing options given "
                         f"to --timing-only)") from None


def recorded_machine(folder) -> Optional[dict]:
    """The fingerprint of the machine whose measurements `folder` holds (machine.json, else the timings
    or scaling file); None when none is recorded (no measurements, or made before fingerprints)."""
    for part, key in (("machine", "fingerprint"), ("timings", "machine"), ("scaling", "machine")):
        path = part_path(folder, part)
        if path.exists():
            fp = read_part(path).get(key)
            if fp:
                return fp
    return None


def has_measurements(folder) -> bool:
    """Whether `folder` holds any machine's measurements (MACHINE_PARTS)."""
    return any(part_path(folder, p).exists() for p in MACHINE_PARTS)


def sibling(folder, fp: dict) -> Path:
    """``<run>@<machine tag>`` beside `folder`: where `--timing-only folder` writes this machine's records
    when `folder` holds another's (a sibling's tag is replaced, not stacked)."""
    folder = Path(folder)
    return folder.parent / f"{folder.name.split('@')[0]}@{fp['tag']}"


def check_machine(folder, fp: dict) -> None:
    """A ValueError when `folder` holds the measurements of another machine than `fp`'s: two machines'
    records never mix in one folder (folders made before fingerprints are not checked)."""
    from sparsenet.machine import same_machine
    rec = recorded_machine(folder)
    if rec is not None and not same_machine(rec, fp):
        raise ValueError(f"{folder} holds the timings of another machine ({rec.get('tag', '?')}; this one is "
                         f"{fp['tag']}); time this one with `sparsenet study --timing-only {folder}`, which "
                         f"writes {sibling(folder, fp)}")


def timing_folder(folder, fp: dict) -> Path:
    """Where this machine's records of `folder`'s nets go: `folder` itself when it holds no measurements
    yet (an --accuracy-only run) or this machine's; else its sibling ``<run>@<tag>`` (also when an older
    folder's measurements name no machine)."""
    from sparsenet.machine import same_machine
    folder = Path(folder)
    rec = recorded_machine(folder)
    if not has_measurements(folder) or (rec is not None and same_machine(rec, fp)):
        return folder
    return sibling(folder, fp)


def _check_same_nets(source: Path, target: Path, src: dict, dst: dict) -> None:
    """A ValueError unless the sibling `target` was made from `source`'s nets (the settings that define
    them, the data, the saved net's checksums)."""
    from sparsenet import timing_inputs
    a, b = src["study"], dst["study"]
    diffs = sorted(k for k in set(a) | set(b) if k not in TIMING_FIELDS + PLACE_FIELDS and a.get(k) != b.get(k))
    if (src.get("data") or {}).get("fingerprint") != (dst.get("data") or {}).get("fingerprint"):
        diffs.append("data")
    sums = [read_json(f / timing_inputs.CHECKSUMS) if (f / timing_inputs.CHECKSUMS).exists() else None
            for f in (source, target)]
    if sums[1] is not None and sums[0] != sums[1]:
        diffs.append("the saved net")
    if diffs:
        raise ValueError(f"{target} holds results of other nets than {source} ({', '.join(diffs)} differ); "
                         f"move it away to time {source} on this machine")


def fill_sibling(source: Path, target: Path, recorded: dict, fp: dict) -> dict:
    """Copy into the sibling `target` what does not depend on the machine: the saved net and images,
    accuracy and activations (again at every run: the source's are the ones kept up to date) and,
    the first time, config.json (placed at target, naming `source` under "timing_only": the report's
    reproduce command is then `--timing-only source`). Returns target's config.json as recorded."""
    from sparsenet import timing_inputs
    if part_path(target, "config").exists():
        here = read_run_config(target)
        _check_same_nets(source, target, recorded, here)
    else:
        here = {**recorded, "run_id": target.name,
                "study": {**recorded["study"], "results_dir": str(target.parent), "run_id": target.name},
                "timing_only": {"from": str(source), "machine": fp["tag"], "options": {}}}
    timing_inputs.copy(source, target)
    for part in SHARED_PARTS:
        if part_path(source, part).exists():
            save_part(target, part, read_json(part_path(source, part)))
    if not part_path(target, "config").exists():
        save_part(target, "config", here)                 # last: a sibling with config.json is whole
    return here


def write_timing_config(target: Path, recorded: dict, options: dict, source: Path, fp: dict) -> StudyConfig:
    """config.json of the folder timed: `recorded` with the timing `options` given replacing the recorded
    ones. Options may change the settings only while `target` holds no measurements; once it does, they
    must be those recorded (a re-run resumes, as in run_study: write_config)."""
    cfg = recorded_config(recorded, target, options)
    study = json.loads(json.dumps(dataclasses.asdict(cfg)))
    old = recorded["study"]
    diffs = [k for k in old if k not in PLACE_FIELDS and old[k] != study.get(k)]
    if not diffs:
        return cfg
    if has_measurements(target):
        raise ValueError(f"{target} holds this machine's timings made with other timing options ("
                         + "; ".join(f"{_flag(k)} {old[k]} there, {study[k]} given" for k in diffs)
                         + "); give those (or none) to resume, or remove its machine.json, timings.json and "
                           "scaling.json to time it afresh")
    save_part(target, "config", {**recorded, "run_id": target.name, "study": study,
                                 "timing_only": {"from": str(source), "machine": fp["tag"], "options": options}})
    return cfg


def run_timing_only(folder, options: Optional[dict] = None, progress: bool = True,
                    stages: Stages = Stages()) -> Path:
    """`sparsenet study --timing-only folder`: the machine, timings, scaling and report stages on this
    machine, from `folder`'s config.json and its saved net and images (timing_inputs.py); neither the data
    set nor training. `options`: timing settings replacing the recorded ones (TIMING_FIELDS).

    The records go to `folder` when it holds no measurements yet (an --accuracy-only run) or this
    machine's (a re-run resumes); else to the sibling ``<run>@<machine tag>`` (timing_folder), made with
    copies of config, accuracy, activations and the saved files, so `sparsenet report` and `sparsenet
    compare` read it as any results folder. Returns the folder written."""
    from sparsenet import timing_inputs
    from sparsenet.machine import fingerprint
    options = dict(options or {})
    check_timing_options(options)
    source = Path(folder)
    recorded = read_run_config(source)
    params, images = timing_inputs.load(source, _recorded_net_meta(recorded))   # every check before anything is written
    recorded_config(recorded, source, options)
    fp = fingerprint()
    target = timing_folder(source, fp)
    check_folder_writable(target)
    t_start = time.perf_counter()
    times = {}
    stage = _stager(stages, progress, times)
    with run_lock(target):
        if target != source:
            _say(progress, f"{source} holds another machine's timings: this one's go to {target}")
            recorded = fill_sibling(source, target, recorded, fp)
        check_machine(target, fp)                        # another machine may have started in between
        cfg = write_timing_config(target, recorded, options, source, fp)
        time_this_machine(cfg, target, params, images, stage=stage, progress=progress)
        report = stage("report", run_report, target, progress)
    _finish(target, report, time.perf_counter() - t_start, times, progress)
    return target


def summary(folder) -> list:
    """Three lines: accuracy at 90% (or the largest k), a speed comparison, timing quality
    (every number from sparsenet.analysis)."""
    from sparsenet import analysis
    from sparsenet.results import load_results
    res = load_results(folder)
    lines = []
    acc = res.get("accuracy")
    if acc:
        s = analysis.accuracy_at(acc)
        parts = [f"dense {s['dense']:.4f}"] + [f"{c['method']}/{c['recovery']} {c['accuracy']:.4f}"
                                               for c in s["curves"]]
        lines.append(f"accuracy at k={s['sparsity']:g}: " + ", ".join(parts))
    tim = res.get("timings")
    if tim and tim.get("records"):
        s = analysis.times_at(tim)
        base = s["dense_s"]
        sel = dict(s["seconds"])
        if "dense" not in sel and base is not None:
            sel = {f"dense (k={s['dense_sparsity']:g})": base, **sel}
        txt = ", ".join(f"{e} {v * 1e6:.0f} us" + (f" ({base / v:.1f}x)" if base else "")
                        for e, v in sel.items())
        lines.append(f"batch {s['batch']}, {s['threads']} thread(s), k={s['sparsity']:g}: {txt}")
        q = analysis.timing_quality(analysis.records_of(tim) + analysis.records_of(res.get("scaling")))
        lines.append(f"{q['n']} timings, {q['flagged']} flagged (spread > 1.2); median spread "
                     f"{q['median_spread']:.3f}, worst {q['worst_spread']:.2f}")
    return lines
