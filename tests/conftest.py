"""Shared pytest fixtures."""
import numpy as np
import pytest

from fixture_data import spec, tiny_arrays, write_folder
from fixture_results import make_results
from sparsenet import study
from sparsenet.cluster import LocalRunner
from sparsenet.model import he_init
from sparsenet.study_config import StudyConfig


@pytest.fixture(scope="session")
def results_folder(tmp_path_factory):
    """A synthetic, complete results folder (see tests/fixture_results.py); treat it as read-only."""
    return make_results(tmp_path_factory.mktemp("results") / "fixture-run")


@pytest.fixture(scope="session")
def quick_study_folder(tmp_path_factory):
    """A results folder made by the real `--quick` study (training, sweep, timings, report) on
    synthetic IDX files, so no test needs MNIST or the network; treat it as read-only."""
    import numpy as np

    from sparsenet import data, study

    root = tmp_path_factory.mktemp("quick-study")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6000), ("t10k", 1000)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        # a learnable signal: each class lights its own band of pixels
        images = rng.integers(0, 64, (n, 784)).astype(np.uint8)
        for c in range(10):
            images[labels == c, c * 78:(c + 1) * 78] += 150
        data.write_idx(root / "data" / f"{prefix}-images-idx3-ubyte", images.reshape(n, 28, 28))
        data.write_idx(root / "data" / f"{prefix}-labels-idx1-ubyte", labels)
    cfg = study.StudyConfig.quick(data_dir=str(root / "data"), results_dir=str(root / "results"),
                                  cache_dir=str(root / "models"))
    return study.run_study(cfg, progress=False)


SIZES = (784, 48, 32, 10)   # the tiny study's net


@pytest.fixture
def tiny(tmp_path):
    """Synthetic data, a small untrained net instead of training, quick peaks, no report; call
    counters. Returns (cfg, calls, stages): pass `stages` to run_study."""
    from sparsenet import data, sweep, timing
    calls = {"train": 0, "sweep": 0, "peaks": 0, "time_cases": 0, "report": 0}
    rng = np.random.default_rng(0)
    ds = data.Dataset("mnist", rng.integers(0, 256, (600, 784), dtype=np.uint8),
                      rng.integers(0, 10, 600).astype(np.uint8),
                      rng.integers(0, 256, (200, 784), dtype=np.uint8),
                      rng.integers(0, 10, 200).astype(np.uint8), "synthetic")

    def cached_train(dataset, cfg, cache_dir, progress=True):
        calls["train"] += 1
        return he_init(SIZES, seed=cfg.seed), {"test_acc": 0.1}

    def run_and_save(*a, **k):
        calls["sweep"] += 1
        return sweep.run_and_save(*a, **k)

    def peaks(threads=(1,), quick=False):
        calls["peaks"] += 1
        return {"sgemm_gflops": {str(t): 1.0 for t in threads}, "bandwidth_gbs": 1.0}

    def build_report(folder):
        calls["report"] += 1                    # the report has its own tests; here: it is called
        return folder / "report" / "report.md"

    def time_cases(cases, **k):
        calls["time_cases"] += 1
        return timing.time_cases(cases, **k)

    stages = study.Stages(load_data=lambda *a, **k: ds, train=cached_train, sweep=run_and_save, peaks=peaks,
                          time_cases=time_cases, report=build_report,
                          runner=LocalRunner())     # in this process: counters and monkeypatches see the work
    cfg = StudyConfig(seeds=(0, 1), sparsities=(0.0, 0.5, 0.9), batches=(1, 8), threads=(1,),
                      widths=(64,), scaling_sparsities=None, epochs=1, train_subset=600,
                      finetune_epochs=1, gradual_epochs=2,
                      finetune_sparsities=(0.5,), rounds=2, min_time=0.0005, remeasure_s=0.0, peak_n=64,
                      results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "models"))
    return cfg, calls, stages


# ---------------------------------------------------------------- data sets (tests of data, cache, offline)

@pytest.fixture
def no_data_sources(monkeypatch, tmp_path):
    """No network, no pip, no user environment, no real Debian folder, a private cache."""
    import urllib.error

    from sparsenet import offline, sources
    from sparsenet.idx import DataError

    def no_network(url, timeout):
        raise urllib.error.URLError("network disabled in tests")

    def no_pip(requirement, dest):
        raise DataError("pip disabled in tests")

    monkeypatch.setattr(sources, "_fetch_url", no_network)
    monkeypatch.setattr(offline, "_pip_download", no_pip)
    monkeypatch.setattr(offline, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    for var in ("SPARSENET_DATA_DIR", "SPARSENET_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def tiny_data(monkeypatch, no_data_sources):
    """A registered data set 'tiny' (offline copy: a Debian-style folder); returns its arrays."""
    from sparsenet.sources import DATASETS
    arrays = tiny_arrays()
    monkeypatch.setitem(DATASETS, "tiny", spec(arrays))
    return arrays


@pytest.fixture
def debian(monkeypatch, tmp_path, tiny_data):
    """The tiny files installed as gzipped files where the Debian package would put them."""
    from sparsenet import offline
    folder = write_folder(tmp_path / "debian", tiny_data, gz=True)
    monkeypatch.setattr(offline, "DEBIAN_FASHION_DIR", folder)
    return folder
