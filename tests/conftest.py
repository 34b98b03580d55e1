"""Shared pytest fixtures."""
import pytest

from fixture_results import make_results


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
