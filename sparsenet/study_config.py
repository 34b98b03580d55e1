"""What a study measures: StudyConfig (validated, frozen), its run id, and its command-line options.

`OPTIONS` names the `sparsenet study` option of every field: the CLI builds its parser from it and
the report's reproduce command writes it back (report.reproduce_command), so a field added here
is reachable from the command line and reproduced without further edits.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sparsenet import __version__, names
from sparsenet.checks import is_integer, is_real, is_sequence
from sparsenet.hashing import short_hash

# fields that say where things go, not what is measured: left out of the run id and config checks
MAX_RUN_ID = 190      # 255 bytes of a file name, less "@" and a machine tag (machine.machine_tag: <= 64)
PLACE_FIELDS = ("data_dir", "results_dir", "run_id", "cache_dir", "scheduler", "workers")
# the settings of the timing stages alone: what `--timing-only` may set for the machine it runs on
TIMING_FIELDS = ("engines", "batches", "threads", "widths", "scaling_threads", "scaling_sparsities", "rounds",
                 "min_time", "max_case_s", "max_call_s", "max_baseline_call_s", "dense_every_k", "remeasure_s", "peak_n")


MAX_PEAK_N = 16384      # the largest sgemm peak case: 3 GiB of float32 operands


@dataclass(frozen=True)
class StudyConfig:
    dataset: str = "mnist"                   # data set name: one of names.DATASETS
    data_dir: Optional[str] = None           # folder with the four IDX files (None: cache, download, offline copy)
    seeds: tuple = (0, 1, 2)                 # one trained net per seed; seed 0's net is the one timed
    sparsities: tuple = names.SPARSITIES     # k: fraction of weights / neurons removed, each in [0, 1)
    methods: tuple = names.GRANULARITIES     # pruning methods of the accuracy sweep: weight | nm | block | neuron
    engines: tuple = names.STUDY_ENGINES     # inference engines timed (names.ENGINES)
    batches: tuple = names.BATCHES           # batch sizes timed
    threads: tuple = names.THREADS           # thread limits timed (BLAS and Numba alike)
    widths: tuple = names.WIDTHS             # scaling study: one square layer of each width (empty: skip)
    scaling_threads: tuple = names.SCALING_THREADS  # thread limits of the scaling study
    scaling_sparsities: Optional[tuple] = names.SCALING_SPARSITIES  # k of the scaling study
                                             # (None: the sparsities above); a 16k layer costs ~20 s per k
    epochs: Optional[int] = None             # training epochs per seed (None: TrainConfig's default, the net
                                             # that reaches >= 98.2% on MNIST)
    train_subset: Optional[int] = None       # train on the first N training images (None: all 60000)
    finetune_epochs: int = 2                 # fine-tuning epochs with the mask fixed (0: one-shot only)
    finetune_sparsities: Optional[tuple] = names.FINETUNE_SPARSITIES  # k fine-tuned (None: all); each
                                             # costs finetune_epochs x seeds x methods epochs
    finetune_lr: float = 3e-3                # peak learning rate of fine-tuning and gradual pruning (weight
                                             # pruning at 95 %, seed 0, 2 epochs: 98.22 % at 1e-3, 98.52 % at 3e-3)
    gradual_sparsities: tuple = names.GRADUAL_SPARSITIES  # k reached by gradual magnitude pruning over
                                             # gradual_epochs (empty: none); N:M at its own patterns
    gradual_methods: tuple = names.GRADUAL_METHODS  # the methods pruned gradually (empty: none)
    gradual_epochs: int = 4                  # epochs of gradual pruning: it ramps k over the first 3/4 and
                                             # needs the rest to recover (weight 98 %, seed 0: 97.32 % in 2, 98.32 % in 4)
    results_dir: str = "results"             # parent folder of the run folders
    run_id: Optional[str] = None             # run folder name; None: dataset + config hash (re-run resumes)
    cache_dir: Optional[str] = None          # trained-model cache; None: <data cache>/models
    is_quick: bool = False                   # the small first-look study (set by StudyConfig.quick())
    rounds: int = 7                          # timing rounds per case (interleaved across engines)
    min_time: float = 0.02                   # seconds per round per case (cheap calls are looped)
    max_case_s: float = 1.5                  # a slow case gets fewer rounds (>= 3) to stay near this budget
    max_call_s: float = 2.0                  # skip a case predicted slower than this per call (reason kept)
    max_baseline_call_s: float = 0.2         # the same for scipy's engines (names.LIBRARY_BASELINES): they
                                             # show what our kernels gain; their slow cases (scipy BSR at
                                             # batch 256-4096) were half of the timing stage
    dense_every_k: bool = True               # time dense beside every k's engines: its time does not depend
                                             # on k, but this VM drifted +-15 % over seconds, and a speed-up
                                             # against a dense timed minutes earlier took that drift in
                                             # (analysis.dense_reference); False: at the smallest k only
    peak_n: int = 2048                       # the timings stage times an n x n sgemm (the peak) beside each k's
                                             # engines, per thread count (0: none; machine.json's peak only)
    remeasure_s: float = 30.0                # seconds spent re-timing flagged (noisy) cases before the verdict,
                                             # and up to half as many more on steps up in k (study.retime_steps)
    scheduler: Optional[str] = None          # a Dask scheduler (tcp://host:8786) for the accuracy work
    workers: Optional[int] = None            # a LocalCluster of this many single-threaded workers instead

    def __post_init__(self):
        from sparsenet.prune import check_sparsity
        if self.dataset not in names.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {', '.join(names.DATASETS)}")
        for name in ("seeds", "batches", "threads", "widths", "scaling_threads"):
            value = names.check_unique(name, _int_tuple(name, getattr(self, name), minimum=0 if name == "seeds" else 1))
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
        for name in ("sparsities", "finetune_sparsities", "scaling_sparsities", "gradual_sparsities"):
            value = getattr(self, name)
            if value is None:
                continue
            value = names.check_unique(name, tuple(check_sparsity(s) for s in _seq(name, value)))
            if name == "sparsities" and not value:
                raise ValueError("sparsities must not be empty")
            object.__setattr__(self, name, value)
        for name, allowed in (("methods", names.ALL_METHODS), ("engines", names.STUDY_ENGINES)):
            object.__setattr__(self, name, names.check_names(name, getattr(self, name), allowed))
        if self.gradual_sparsities is None:
            raise ValueError("gradual_sparsities must be a sequence (empty: no gradual pruning), got None")
        gradual = _seq("gradual_methods", self.gradual_methods)
        if gradual:
            gradual = names.check_names("gradual_methods", gradual, self.methods)
        object.__setattr__(self, "gradual_methods", tuple(gradual))
        if self.epochs is not None and not is_integer(self.epochs, 1):
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not is_integer(self.finetune_epochs, 0):
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs!r}")
        if not is_integer(self.gradual_epochs, 1):
            raise ValueError(f"gradual_epochs must be an integer >= 1, got {self.gradual_epochs!r}")
        if self.train_subset is not None and not is_integer(self.train_subset, 100, 60000):
            raise ValueError(f"train_subset must be an integer in [100, 60000], got {self.train_subset!r}")
        if not is_integer(self.peak_n, 0, MAX_PEAK_N):
            raise ValueError(f"peak_n must be an integer in 0..{MAX_PEAK_N} (0: no sgemm peak in the timings; "
                             f"an n x n sgemm holds 12 n^2 bytes), got {self.peak_n!r}")
        if not is_integer(self.rounds, 1):
            raise ValueError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        if not is_real(self.finetune_lr, 0, low_open=True):
            raise ValueError(f"finetune_lr must be a finite number > 0, got {self.finetune_lr!r}")
        for name in ("min_time", "max_case_s", "max_call_s", "max_baseline_call_s", "remeasure_s"):
            v = getattr(self, name)
            if not is_real(v, 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.workers is not None and not is_integer(self.workers, 1):
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")
        if self.scheduler is not None and self.workers is not None:
            raise ValueError("give --scheduler (an existing cluster) or --workers (a local one), not both")
        if self.run_id is not None and (not self.run_id or "/" in self.run_id or self.run_id in (".", "..")):
            raise ValueError(f"run_id must be a plain folder name, got {self.run_id!r}")
        if self.run_id is not None and len(self.run_id.encode()) > MAX_RUN_ID:
            raise ValueError(f"run_id must be at most {MAX_RUN_ID} bytes (another machine's timings go to "
                             f"<run id>@<machine tag>, which must fit a file name), got {len(self.run_id.encode())}")

    @classmethod
    def quick(cls, **overrides) -> "StudyConfig":
        """A first look in about 2 minutes: one seed, 1 epoch on 5000 images, a small timing grid."""
        base = dict(seeds=(0,), sparsities=names.QUICK_SPARSITIES, batches=names.QUICK_BATCHES,
                    threads=names.QUICK_THREADS, widths=names.QUICK_WIDTHS, scaling_sparsities=None, epochs=1,
                    train_subset=5000, finetune_epochs=1, finetune_sparsities=(0.9,), gradual_sparsities=(0.9,),
                    gradual_methods=("weight",), gradual_epochs=1, rounds=3, min_time=0.01,
                    max_case_s=1.0, max_call_s=0.5, remeasure_s=5.0, peak_n=1024)
        base.update(overrides)
        base.pop("quick", None)
        base["is_quick"] = True
        return cls(**base)

    def measured(self) -> dict:
        """The fields that define what is measured (the run id hashes these)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k not in PLACE_FIELDS}

    def config_hash(self, data_fingerprint: str = "") -> str:
        """Short hash of the measured fields, the data's fingerprint and the sparsenet version."""
        return short_hash({"study": self.measured(), "data": data_fingerprint, "version": __version__}, 10)

    def folder(self, data_fingerprint: str = "") -> Path:
        """results_dir / run_id (default run id: dataset[-quick]-<hash of the config and the data>).

        data_fingerprint: that of the data loaded (data.Dataset.fingerprint), so other files under
        the same data set name (say, a --data-dir with other labels) get their own folder."""
        run_id = self.run_id or (f"{self.dataset}{'-quick' if self.is_quick else ''}-"
                                 f"{self.config_hash(data_fingerprint)}")
        return Path(self.results_dir) / run_id

    def scaling_ks(self) -> tuple:
        """k of the scaling study (scaling_sparsities, else the sparsities)."""
        return self.sparsities if self.scaling_sparsities is None else self.scaling_sparsities


def available_threads() -> int:
    """The most threads Numba (and so a timed engine) can use in this process."""
    from sparsenet.threads import max_threads
    return max_threads()


def _seq(name, value):
    if not is_sequence(value):
        raise ValueError(f"{name} must be a sequence, got {value!r}")
    return list(value)


def _int_tuple(name, value, minimum) -> tuple:
    out = []
    for v in _seq(name, value):
        if not is_integer(v, minimum):
            raise ValueError(f"{name} must hold integers >= {minimum}, got {v!r}")
        out.append(int(v))
    return tuple(out)


# --- derived settings ----------------------------------------------------------------------------

def train_config(cfg: StudyConfig, seed: int, n_train: int):
    """The TrainConfig of one seed's net; n_train: training images loaded (the split holds out a tenth)."""
    from sparsenet.train import TrainConfig, default_n_val
    epochs = {} if cfg.epochs is None else {"epochs": cfg.epochs}
    return TrainConfig(seed=int(seed), n_val=default_n_val(n_train), **epochs)


def finetune_config(cfg: StudyConfig, n_train: int):
    """The TrainConfig of fine-tuning (its seed is set per net by the sweep)."""
    from sparsenet.train import TrainConfig, default_n_val
    return TrainConfig(epochs=max(cfg.finetune_epochs, 1), lr=cfg.finetune_lr, n_val=default_n_val(n_train))


def gradual_config(cfg: StudyConfig, n_train: int):
    """The TrainConfig of gradual pruning: fine-tuning's, over gradual_epochs."""
    return dataclasses.replace(finetune_config(cfg, n_train), epochs=cfg.gradual_epochs)


def gmp_config(cfg: StudyConfig, n_fit: int):
    """The schedule of gradual pruning (gradual_config) on n_fit images: a mask update every 100
    steps (Zhu & Gupta's spacing), or every tenth of the run when that is shorter (a small study),
    ending three quarters into training (sweep.GMPConfig's default)."""
    import math

    from sparsenet.sweep import GMPConfig
    gr = gradual_config(cfg, n_fit)
    steps = math.ceil(n_fit / gr.batch_size) * gr.epochs
    return GMPConfig(prune_every=max(1, min(100, steps // 10)))


def model_cache(cfg: StudyConfig) -> Path:
    """Where trained nets are cached: cache_dir, else <data cache>/models."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    from sparsenet.data import cache_root
    return cache_root() / "models"


# --- the command line ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """The `sparsenet study` option of one StudyConfig field."""

    field: str            # StudyConfig field
    flag: str             # the option
    kind: str             # how its text parses (cli.KINDS): str, int, float, ints, names, sparsities, bool, dataset
    unset: Optional[str] = None   # the option's word for None (a field whose default is not None)
    help: Optional[str] = None


# in the order the reproduce command writes them (--quick first, --results-dir and --run-id last)
OPTIONS = (
    Option("dataset", "--dataset", "dataset"),
    Option("data_dir", "--data-dir", "str"),
    Option("seeds", "--seeds", "ints", help="comma-separated seeds (default 0,1,2)"),
    Option("sparsities", "--sparsities", "sparsities", help="e.g. 0,25,50,90 (percent) or 0,0.5,0.9"),
    Option("methods", "--methods", "names", help="pruning methods of the accuracy sweep, e.g. weight,neuron"),
    Option("engines", "--engines", "names", help="engines to time, e.g. dense,csr,shrunk"),
    Option("batches", "--batches", "ints", help="batch sizes to time, e.g. 1,256"),
    Option("threads", "--threads", "ints", help="thread counts to time, e.g. 1,2"),
    Option("widths", "--widths", "ints", help="scaling study layer widths, e.g. 1024,4096 ('' skips it)"),
    Option("scaling_threads", "--scaling-threads", "ints", help="thread counts of the scaling study, e.g. 1"),
    Option("scaling_sparsities", "--scaling-sparsities", "sparsities", "same",
           "k of the scaling study ('same': those of --sparsities)"),
    Option("epochs", "--epochs", "int", "default", "training epochs per seed ('default': the trainer's)"),
    Option("train_subset", "--train-subset", "int", "all",
           "train on the first N training images ('all': every one)"),
    Option("finetune_epochs", "--finetune-epochs", "int", help="fine-tuning epochs (0: one-shot only)"),
    Option("finetune_sparsities", "--finetune-sparsities", "sparsities", "all",
           "k that are fine-tuned ('all': every k of --sparsities)"),
    Option("finetune_lr", "--finetune-lr", "float", help="fine-tuning peak learning rate"),
    Option("gradual_sparsities", "--gradual-sparsities", "sparsities",
           help="k reached by gradual magnitude pruning, e.g. 95,98 ('' for none)"),
    Option("gradual_methods", "--gradual-methods", "names",
           help="methods pruned gradually, e.g. weight,block ('' for none)"),
    Option("gradual_epochs", "--gradual-epochs", "int", help="epochs of gradual pruning"),
    Option("rounds", "--rounds", "int", help="timing rounds per case"),
    Option("min_time", "--min-time", "float", help="seconds per timing round per case"),
    Option("max_case_s", "--max-case-s", "float", help="time budget of one case (a slow case gets fewer rounds)"),
    Option("max_call_s", "--max-call-s", "float", help="skip a case predicted slower than this per call"),
    Option("max_baseline_call_s", "--max-baseline-call-s", "float",
           help="skip a scipy baseline case predicted slower than this per call"),
    Option("remeasure_s", "--remeasure-s", "float", help="seconds re-timing noisy cases, and up to half that on steps up in k (0: none)"),
    Option("peak_n", "--peak-n", "int", help="time an n x n sgemm (the peak) beside every k's engines (0: none)"),
    Option("cache_dir", "--model-cache", "str", help="trained-model cache folder"),
    Option("dense_every_k", "--dense-every-k", "bool",
           help="time dense beside every k's engines (speed-ups side by side), not only at the smallest k"),
    Option("scheduler", "--scheduler", "str", help="run the accuracy work on this Dask scheduler, e.g. "
                                                   "tcp://host:8786 (timing stays on this machine)"),
    Option("workers", "--workers", "int", help="run the accuracy work on a local Dask cluster of N workers"),
    Option("results_dir", "--results-dir", "str", help="parent folder of the run folders (default results/)"),
    Option("run_id", "--run-id", "str", help="name of the run folder (default: from the configuration, so a "
                                             "re-run resumes)"),
)
QUICK_FIELD = "is_quick"      # set by --quick (StudyConfig.quick), not an option of its own

assert {o.field for o in OPTIONS} | {QUICK_FIELD} == {f.name for f in dataclasses.fields(StudyConfig)}
