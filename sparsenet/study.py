"""`sparsenet study`: the whole study in one resumable run, written to ``results/<run_id>/``.

Stages, each writing its part of the results folder atomically (schema in results.py):
config -> data -> train one net per seed (cached) -> accuracy sweep (one-shot and fine-tuned) ->
machine info and peaks -> timings of every engine over the grid (seed-0 net: weight-pruned for
dense/csr/csr-scipy, neuron-pruned for shrunk) -> one-layer scaling -> report.

Re-running the same configuration resumes: a finished part whose recorded config matches is
skipped; the timing stages save their records after every sparsity (or width, sparsity) and pick
up from them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from sparsenet import __version__
from sparsenet.results import part_path, save_part
from sparsenet.files import check_folder_writable, make_dirs, read_json
from sparsenet.prune import METHODS

SPARSITIES = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
ENGINES = ("dense", "csr", "csr-scipy", "shrunk")
DATASETS = ("mnist", "fashion-mnist")
SCALING_ENGINES = ("dense", "csr")

# fields that say where things go, not what is measured: left out of the run id and config checks
_PLACE_FIELDS = ("data_dir", "results_dir", "run_id", "cache_dir")


@dataclass(frozen=True)
class StudyConfig:
    dataset: str = "mnist"                   # data set name: mnist | fashion-mnist
    data_dir: Optional[str] = None           # folder with the four IDX files (None: cache, download, offline copy)
    seeds: tuple = (0, 1, 2)                 # one trained net per seed; seed 0's net is the one timed
    sparsities: tuple = SPARSITIES           # k: fraction of weights / neurons removed, each in [0, 1)
    methods: tuple = METHODS                 # pruning methods of the accuracy sweep: weight | neuron
    engines: tuple = ENGINES                 # inference engines timed: dense | csr | csr-scipy | shrunk
    batches: tuple = (1, 16, 256, 4096)      # batch sizes timed
    threads: tuple = (1, 2)                  # thread limits timed (BLAS and Numba alike)
    widths: tuple = (1024, 4096, 16384)      # scaling study: one square layer of each width (empty: skip)
    scaling_threads: tuple = (1,)            # thread limits of the scaling study
    scaling_sparsities: Optional[tuple] = (0.0, 0.5, 0.7, 0.9, 0.95, 0.99)  # k of the scaling study
                                             # (None: the sparsities above); a 16k layer costs ~20 s per k
    epochs: Optional[int] = None             # training epochs per seed (None: TrainConfig's default, the net
                                             # that reaches >= 98.2% on MNIST)
    train_subset: Optional[int] = None       # train on the first N training images (None: all 60000)
    finetune_epochs: int = 2                 # fine-tuning epochs with the mask fixed (0: one-shot only)
    finetune_sparsities: Optional[tuple] = (0.8, 0.9, 0.95)  # k fine-tuned (None: all); each costs
                                             # finetune_epochs x seeds x methods epochs
    finetune_lr: float = 1e-3                # fine-tuning peak learning rate (3e-4 recovers too little in 1-2 epochs)
    results_dir: str = "results"             # parent folder of the run folders
    run_id: Optional[str] = None             # run folder name; None: dataset + config hash (re-run resumes)
    cache_dir: Optional[str] = None          # trained-model cache; None: <data cache>/models
    is_quick: bool = False                   # the small first-look study (set by StudyConfig.quick())
    rounds: int = 7                          # timing rounds per case (interleaved across engines)
    min_time: float = 0.02                   # seconds per round per case (cheap calls are looped)
    max_case_s: float = 1.5                  # a slow case gets fewer rounds (>= 3) to stay near this budget
    max_call_s: float = 2.0                  # skip a case predicted slower than this per call (reason kept)
    dense_every_k: bool = False              # time dense at every k (its time does not depend on k:
                                             # BLAS multiplies the zeros); False: at k = 0 only

    def __post_init__(self):
        from sparsenet.prune import check_sparsity
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {', '.join(DATASETS)}")
        for name in ("seeds", "batches", "threads", "widths", "scaling_threads"):
            value = _int_tuple(name, getattr(self, name), minimum=0 if name == "seeds" else 1)
            object.__setattr__(self, name, value)
        available = available_threads()
        for name in ("threads", "scaling_threads"):
            over = [t for t in getattr(self, name) if t > available]
            if over:
                # checked here, not at the timing stage: after training, the sweep and a peak
                # "measured" at an impossible thread count
                raise ValueError(f"{name} {', '.join(map(str, over))} exceed the {available} threads "
                                 f"available (NUMBA_NUM_THREADS); use at most {available}")
        for name in ("seeds", "batches", "threads"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise ValueError(f"{name} has duplicates: {getattr(self, name)}")
        for name in ("sparsities", "finetune_sparsities", "scaling_sparsities"):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(check_sparsity(s) for s in _seq(name, value))
            if name == "sparsities" and not value:
                raise ValueError("sparsities must not be empty")
            object.__setattr__(self, name, value)
        for name, allowed in (("methods", METHODS), ("engines", ENGINES)):
            value = tuple(_seq(name, getattr(self, name)))
            bad = [v for v in value if v not in allowed]
            if bad or not value:
                raise ValueError(f"unknown {name} {bad or value}; expected some of {', '.join(allowed)}")
            object.__setattr__(self, name, value)
        if self.epochs is not None and not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not (isinstance(self.finetune_epochs, int) and self.finetune_epochs >= 0):
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs!r}")
        if self.train_subset is not None and not (isinstance(self.train_subset, int)
                                                  and 100 <= self.train_subset <= 60000):
            raise ValueError(f"train_subset must be an integer in [100, 60000], got {self.train_subset!r}")
        if not (isinstance(self.rounds, int) and self.rounds >= 1):
            raise ValueError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        for name in ("min_time", "max_case_s", "max_call_s", "finetune_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.run_id is not None and (not self.run_id or "/" in self.run_id or self.run_id in (".", "..")):
            raise ValueError(f"run_id must be a plain folder name, got {self.run_id!r}")

    @classmethod
    def quick(cls, **overrides) -> "StudyConfig":
        """A first look in about 2 minutes: one seed, 1 epoch on 5000 images, a small timing grid."""
        base = dict(seeds=(0,), sparsities=(0.0, 0.5, 0.9), batches=(1, 256), threads=(1,),
                    widths=(1024,), scaling_sparsities=None, epochs=1, train_subset=5000, finetune_epochs=1,
                    finetune_sparsities=(0.9,), rounds=3, min_time=0.01, max_case_s=1.0,
                    max_call_s=0.5)
        base.update(overrides)
        base.pop("quick", None)
        base["is_quick"] = True
        return cls(**base)

    def measured(self) -> dict:
        """The fields that define what is measured (the run id hashes these)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k not in _PLACE_FIELDS}

    def config_hash(self, data_fingerprint: str = "") -> str:
        """Short hash of the measured fields, the data's fingerprint and the sparsenet version."""
        text = json.dumps({"study": self.measured(), "data": data_fingerprint, "version": __version__},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def folder(self, data_fingerprint: str = "") -> Path:
        """results_dir / run_id (default run id: dataset[-quick]-<hash of the config and the data>).

        data_fingerprint: that of the data loaded (data.Dataset.fingerprint), so other files under
        the same data set name (say, a --data-dir with other labels) get their own folder."""
        run_id = self.run_id or (f"{self.dataset}{'-quick' if self.is_quick else ''}-"
                                 f"{self.config_hash(data_fingerprint)}")
        return Path(self.results_dir) / run_id


def available_threads() -> int:
    """The most threads Numba (and so a timed engine) can use in this process."""
    import numba
    return int(numba.config.NUMBA_NUM_THREADS)


def _seq(name, value):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a sequence, got {value!r}")
    return list(value)


def _int_tuple(name, value, minimum) -> tuple:
    out = []
    for v in _seq(name, value):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{name} must hold integers >= {minimum}, got {v!r}")
        out.append(int(v))
    return tuple(out)


# --- stages --------------------------------------------------------------------------------------

def _say(progress, msg):
    if progress:
        print(f"[study] {msg}", file=sys.stderr, flush=True)


def write_config(cfg: StudyConfig, folder: Path, ds=None) -> None:
    """config.json; an existing one must record the same measured configuration and data."""
    path = part_path(folder, "config")
    study = dataclasses.asdict(cfg)
    data = _data_info(ds)
    if path.exists():
        recorded = read_json(path)
        old = recorded.get("study", {}) if isinstance(recorded, dict) else {}
        same = {k: v for k, v in old.items() if k not in _PLACE_FIELDS}
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


def train_config(cfg: StudyConfig, seed: int, n_train: int):
    """The TrainConfig of one seed's net; n_train: training images loaded (the split holds out a tenth)."""
    from sparsenet.train import TrainConfig, default_n_val
    epochs = {} if cfg.epochs is None else {"epochs": cfg.epochs}
    return TrainConfig(seed=int(seed), n_val=default_n_val(n_train), **epochs)


def finetune_config(cfg: StudyConfig, n_train: int):
    from sparsenet.train import TrainConfig, default_n_val
    return TrainConfig(epochs=max(cfg.finetune_epochs, 1), lr=cfg.finetune_lr, n_val=default_n_val(n_train))


def load_data(cfg: StudyConfig):
    """The data set; with train_subset, its first N training images under a distinct name
    (``mnist-sub5000``) so cached models of the subset and of the full set never mix."""
    from sparsenet import data
    ds = data.load(cfg.dataset, data_dir=cfg.data_dir, progress=False)
    if cfg.train_subset:
        n = cfg.train_subset
        ds = ds._replace(name=f"{ds.name}-sub{n}", train_images=ds.train_images[:n],
                         train_labels=ds.train_labels[:n])
    return ds


def model_cache(cfg: StudyConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    from sparsenet.data import cache_root
    return cache_root() / "models"


def train_models(cfg: StudyConfig, ds, progress=True) -> list:
    """One trained net per seed (train.cached_train reuses a cached net of the same config)."""
    from sparsenet.train import cached_train
    models = []
    for seed in cfg.seeds:
        t0 = time.perf_counter()
        params, meta = cached_train(ds, train_config(cfg, seed, len(ds.train_images)), model_cache(cfg),
                                    progress=progress)
        _say(progress, f"seed {seed}: test accuracy {meta.get('test_acc', float('nan')):.4f} "
                       f"({time.perf_counter() - t0:.0f} s)")
        models.append(params)
    return models


def run_accuracy(cfg: StudyConfig, folder: Path, ds, models, progress=True) -> None:
    """accuracy.json via sweep.run_and_save (resumable on its own)."""
    from sparsenet import sweep
    from sparsenet.data import to_float
    from sparsenet.train import split_train_val
    path = part_path(folder, "accuracy")
    if path.exists() and read_json(path).get("complete"):
        _say(progress, "accuracy: done before, skipped")
        return
    X, y = to_float(ds.train_images), ds.train_labels
    ft = finetune_config(cfg, len(X))
    # one split for every seed's fine-tuning: validation only picks the best fine-tuning epoch,
    # and test accuracy (what the sweep reports) never touches it
    tr, val = split_train_val(len(X), ft.n_val, 0)
    recoveries = ("oneshot", "finetuned") if cfg.finetune_epochs > 0 else ("oneshot",)
    sweep.run_and_save(folder, models, X[tr], y[tr], X[val], y[val],
                       to_float(ds.test_images), ds.test_labels, sparsities=cfg.sparsities,
                       methods=cfg.methods, recoveries=recoveries,
                       finetune_cfg=ft if cfg.finetune_epochs > 0 else None,
                       finetune_sparsities=cfg.finetune_sparsities, seeds=cfg.seeds,
                       dataset=cfg.dataset, progress=progress)


def run_machine(cfg: StudyConfig, folder: Path, progress=True) -> dict:
    from sparsenet.machine import machine_info, measure_peaks
    path = part_path(folder, "machine")
    if path.exists():
        _say(progress, "machine: done before, skipped")
        return read_json(path)
    threads = sorted(set(cfg.threads) | set(cfg.scaling_threads))
    info = machine_info(measure_peaks(threads=threads, quick=cfg.is_quick))
    save_part(folder, "machine", info)
    return info


def _timing_config(cfg: StudyConfig, scaling: bool) -> dict:
    keys = ["engines", "sparsities", "batches", "threads", "rounds", "min_time", "max_case_s",
            "max_call_s", "dense_every_k", "seeds", "epochs", "train_subset", "dataset"]
    d = {k: getattr(cfg, k) for k in keys}
    if scaling:
        d.update(widths=cfg.widths, threads=cfg.scaling_threads, engines=SCALING_ENGINES,
                 sparsities=scaling_ks(cfg))
    return json.loads(json.dumps(d))


def _key(rec) -> tuple:
    return (rec["engine"], round(rec["sparsity"], 6), rec["batch"], rec["threads"], rec.get("width"))


def scaling_ks(cfg: StudyConfig) -> tuple:
    return cfg.sparsities if cfg.scaling_sparsities is None else cfg.scaling_sparsities


def engines_at(cfg: StudyConfig, engines, sparsity, ks=None) -> tuple:
    """The engines timed at one k of `ks` (default cfg.sparsities): dense only at the smallest k
    (normally 0) unless cfg.dense_every_k."""
    first = min(cfg.sparsities if ks is None else ks)
    if cfg.dense_every_k or sparsity == first:
        return tuple(engines)
    return tuple(e for e in engines if e != "dense")


def run_timings(cfg: StudyConfig, folder: Path, params, progress=True) -> dict:
    """timings.json: every engine x sparsity x batch x threads on the seed-0 net, saved per k."""
    from sparsenet import bench
    config = _timing_config(cfg, scaling=False)
    return _run_grid(cfg, folder, "timings", config, progress,
                     units=[(None, k) for k in cfg.sparsities],
                     build=lambda w, k, skip: bench.mlp_cases(params, engines_at(cfg, cfg.engines, k),
                                                              k, cfg.batches,
                                                              cfg.threads, skip=skip),
                     skip=bench.mlp_skip(params, cfg.max_call_s), grid=lambda: [
                         (e, k, b, t, None) for k in cfg.sparsities for e in engines_at(cfg, cfg.engines, k)
                         for t in cfg.threads for b in cfg.batches])


def run_scaling(cfg: StudyConfig, folder: Path, progress=True) -> dict:
    """scaling.json: one square layer per width, dense vs csr, saved per (width, k)."""
    from sparsenet import bench
    config = _timing_config(cfg, scaling=True)

    def skip(engine, sparsity, batch, threads, width):
        return bench.scaling_skip(engine, sparsity, batch, width, max_call_s=cfg.max_call_s)
    ks = scaling_ks(cfg)
    return _run_grid(cfg, folder, "scaling", config, progress,
                     units=[(w, k) for w in cfg.widths for k in ks],
                     build=lambda w, k, skip: bench.scaling_cases(
                         w, k, engines_at(cfg, SCALING_ENGINES, k, ks), cfg.batches,
                         cfg.scaling_threads, skip=skip),
                     skip=skip, grid=lambda: [
                         (e, k, b, t, w) for w in cfg.widths for k in ks
                         for e in engines_at(cfg, SCALING_ENGINES, k, ks) for t in cfg.scaling_threads
                         for b in cfg.batches])


def _run_grid(cfg, folder, part, config, progress, units, build, skip, grid) -> dict:
    from sparsenet import bench
    path = part_path(folder, part)
    state = {"records": [], "skipped": [], "compile_s": {}, "config": config, "complete": False,
             "loadavg": []}
    if path.exists():
        old = read_json(path)
        if old.get("config") == config:
            if old.get("complete"):
                _say(progress, f"{part}: done before, skipped")
                return old
            state.update({k: old.get(k, state[k]) for k in ("records", "skipped", "compile_s", "loadavg")})
        else:
            _say(progress, f"{part}: existing file has another config; starting over")
    done = {_key(r) for r in state["records"]} | {_key(s) for s in state["skipped"]}
    skipped_keys = {_key(s) for s in state["skipped"]}

    def skip_and_log(engine, sparsity, batch, threads, width):
        reason = skip(engine, sparsity, batch, threads, width)
        key = (engine, round(sparsity, 6), batch, threads, width)
        if reason and key not in skipped_keys:
            skipped_keys.add(key)
            state["skipped"].append({"engine": engine, "sparsity": sparsity, "batch": batch,
                                     "threads": threads, "width": width, "reason": reason})
        return reason or key in done

    todo = [u for u in units
            if any((e, round(k, 6), b, t, w) not in done for e, k, b, t, w in grid()
                   if (w, k) == u)]
    bar = _tqdm(progress, total=len(units), initial=len(units) - len(todo), desc=part)
    state.setdefault("loadavg", [])
    for width, k in todo:
        load = _loadavg()
        if load is not None and load > 1.0 * _cores() and not state["loadavg"]:
            _say(progress, f"{part}: the machine is busy (1-min load {load:.1f} on {_cores()} "
                           f"cores): timings will be noisy and many flagged")
        cases = build(width, k, skip_and_log)
        for case in cases:
            if case.name not in state["compile_s"]:
                state["compile_s"][case.name] = _compile_seconds(case)
        state["records"] += bench.time_cases(cases, rounds=cfg.rounds, min_time=cfg.min_time,
                                             max_case_s=cfg.max_case_s, progress=False)
        for case in cases:
            bench.check_case(case)
        # 1-min load average when each unit started: a busy machine explains flagged timings
        state["loadavg"].append({"width": width, "sparsity": k, "load": load})
        save_part(folder, part, state)
        bar.update(1)
    bar.close()
    state["complete"] = True
    save_part(folder, part, state)
    return state


def _loadavg():
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _cores() -> int:
    from sparsenet.machine import n_cores
    return n_cores()


def _compile_seconds(case) -> float:
    """The engine's first calls (its JIT compile, or a cache load); engine.warmup when it has one.

    One call at batch 1 and one at batch 256: the csr engine compiles a kernel for each (SELL or
    the SpMV at batch 1, the batch split above), so the sum is its whole compile cost."""
    warmup = getattr(case.engine, "warmup", None)
    if callable(warmup):
        return float(warmup(batch=1) + warmup(batch=256))
    from sparsenet.bench import warm
    return warm(case)


def _tqdm(progress, **kw):
    from tqdm.auto import tqdm
    return tqdm(disable=not progress, **kw)


def run_report(folder: Path, progress=True) -> Optional[Path]:
    """report.build_report on the run folder; a failure is reported, not raised (results stay)."""
    try:
        from sparsenet.report import build_report
    except ImportError as exc:
        _say(progress, f"report skipped: sparsenet.report not importable ({exc})")
        return None
    try:
        return build_report(folder)
    except Exception as exc:  # the measurements are saved; the report can be rebuilt alone
        print(f"[study] report failed: {type(exc).__name__}: {exc}; rebuild it with "
              f"`sparsenet report {folder}`", file=sys.stderr)
        return None


# --- the whole study -----------------------------------------------------------------------------

class FolderBusy(RuntimeError):
    """Another study is running in the same run folder."""


@contextmanager
def run_lock(folder: Path):
    """Hold an flock on ``<folder>/.lock`` for the run, the holder's pid and start time written in it:
    two studies in one folder would write the same files and time on the same cores at once."""
    try:
        import fcntl
    except ImportError:                    # no flock (Windows): run unlocked, as before
        yield
        return
    f = _take_lock(Path(folder) / ".lock", fcntl)
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _take_lock(path: Path, fcntl):
    """The open, flocked lock file; FolderBusy naming the holder when a live process holds it."""
    for _ in range(5):
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(f)
            f.close()
            if holder.get("pid") is None or _alive(holder["pid"]):
                raise FolderBusy(f"{path.parent} is in use by another study (pid {holder.get('pid', '?')}, "
                                 f"started {holder.get('started', '?')}); wait for it to end, or give this "
                                 f"run another --run-id or --results-dir") from None
            # held, but its study is gone (a child process kept the file open): a fresh file takes over
            path.unlink(missing_ok=True)
            continue
        try:
            same = os.fstat(f.fileno()).st_ino == path.stat().st_ino
        except FileNotFoundError:
            same = False
        if not same:                       # replaced by a take-over between open and flock: retry
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(),
                            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
        f.flush()
        return f
    raise FolderBusy(f"{path.parent}: could not take the lock {path}; try again")


def _lock_holder(f) -> dict:
    """What the lock file says of its holder ({} when unreadable: it may be writing it just now)."""
    try:
        f.seek(0)
        holder = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                # alive, another user's
        return True
    return True


def check_outputs(cfg: StudyConfig) -> None:
    """An OSError naming the folder unless the results folder and the model cache can be written:
    found before the data, training and timings, not when their results are saved."""
    check_folder_writable(cfg.results_dir)
    check_folder_writable(model_cache(cfg))


def run_study(cfg: StudyConfig, progress: bool = True) -> Path:
    """Run (or resume) every stage; returns the run folder."""
    check_outputs(cfg)
    t_start = time.perf_counter()
    times = {}

    def stage(name, fn, *args):
        t0 = time.perf_counter()
        _say(progress, f"{name} ...")
        out = fn(*args)
        times[name] = time.perf_counter() - t0
        _say(progress, f"{name}: {times[name]:.1f} s")
        return out

    # the data first: the run folder is named after it (and cached nets are keyed by it);
    # loading is a read and an md5 of four files, so a resumed run pays little for it
    ds = stage("data", load_data, cfg)
    folder = make_dirs(cfg.folder(ds.fingerprint))
    with run_lock(folder):
        write_config(cfg, folder, ds)
        models = stage("train", train_models, cfg, ds, progress)
        stage("accuracy", run_accuracy, cfg, folder, ds, models, progress)
        stage("machine", run_machine, cfg, folder, progress)
        stage("timings", run_timings, cfg, folder, models[0], progress)
        if cfg.widths:
            stage("scaling", run_scaling, cfg, folder, progress)
        report = stage("report", run_report, folder, progress)
    total = time.perf_counter() - t_start
    if progress:
        print(f"results in {folder}" + (f"; report {report}" if report else ""), file=sys.stderr)
        for line in summary(folder):
            print(line, file=sys.stderr)
        print(f"study took {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
              + ")", file=sys.stderr)
    return folder


def summary(folder) -> list:
    """Three lines: accuracy at 90% (or the largest k), a speed comparison, timing quality."""
    from sparsenet.results import load_results
    res = load_results(folder)
    lines = []
    acc = res.get("accuracy")
    if acc:
        dense = [a for a in acc["dense"]["accuracy"] if a is not None]
        ks = acc["sparsities"]
        k = 0.9 if any(abs(x - 0.9) < 1e-9 for x in ks) else max(ks)
        parts = [f"dense {_mean(dense):.4f}"]
        for c in acc["curves"]:
            cks = c.get("sparsities", ks)
            j = next((i for i, x in enumerate(cks) if abs(x - k) < 1e-9), None)
            if j is not None:
                vals = [a for a in c["accuracy"][j] if a is not None]
                if vals:
                    parts.append(f"{c['method']}/{c['recovery']} {_mean(vals):.4f}")
        lines.append(f"accuracy at k={k:g}: " + ", ".join(parts))
    tim = res.get("timings")
    if tim and tim.get("records"):
        recs = tim["records"]
        b, t = min(r["batch"] for r in recs), min(r["threads"] for r in recs)
        ks = sorted({r["sparsity"] for r in recs})
        k = 0.9 if any(abs(x - 0.9) < 1e-9 for x in ks) else max(ks)
        sel = {r["engine"]: r["median_s"] for r in recs
               if r["batch"] == b and r["threads"] == t and abs(r["sparsity"] - k) < 1e-9}
        dense = sorted((r["sparsity"], r["median_s"]) for r in recs if r["engine"] == "dense"
                       and r["batch"] == b and r["threads"] == t)
        base = sel.get("dense") or (dense[0][1] if dense else None)
        if "dense" not in sel and dense:
            sel = {f"dense (k={dense[0][0]:g})": base, **sel}
        txt = ", ".join(f"{e} {v * 1e6:.0f} us" + (f" ({base / v:.1f}x)" if base else "")
                        for e, v in sel.items())
        lines.append(f"batch {b}, {t} thread(s), k={k:g}: {txt}")
        all_recs = recs + (res.get("scaling") or {}).get("records", [])
        flagged = sum(r["flagged"] for r in all_recs)
        spreads = sorted(r["spread"] for r in all_recs)
        lines.append(f"{len(all_recs)} timings, {flagged} flagged (spread > 1.2); median spread "
                     f"{spreads[len(spreads) // 2]:.3f}, worst {spreads[-1]:.2f}")
    return lines


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")
