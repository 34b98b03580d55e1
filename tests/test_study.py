"""The study runner: config validation, a tiny end-to-end run on synthetic data, resuming."""
import numpy as np
import pytest

from sparsenet import bench, study
from sparsenet.files import read_json
from sparsenet.model import he_init, layer_sizes

SIZES = (784, 48, 32, 10)


# --- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(engines=("dense", "gpu")), "unknown engines"),
    (dict(sparsities=(0.5, 1.0)), r"\[0, 1\)"),
    (dict(sparsities=(-0.1,)), r"\[0, 1\)"),
    (dict(sparsities=()), "empty"),
    (dict(methods=("random",)), "unknown methods"),
    (dict(dataset="cifar"), "unknown dataset"),
    (dict(batches=(0, 16)), "batches"),
    (dict(threads=(1, 1)), "duplicates"),
    (dict(seeds=()), "empty"),
    (dict(epochs=0), "epochs"),
    (dict(finetune_epochs=-1), "finetune_epochs"),
    (dict(rounds=0), "rounds"),
    (dict(train_subset=10), "train_subset"),
    (dict(run_id="a/b"), "run_id"),
    (dict(batches="1,2"), "sequence"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        study.StudyConfig(**kwargs)


def test_config_defaults_and_quick(tmp_path):
    cfg = study.StudyConfig()
    assert cfg.seeds == (0, 1, 2) and len(cfg.sparsities) == 10 and cfg.batches == (1, 16, 256, 4096)
    q = study.StudyConfig.quick(results_dir=str(tmp_path), sparsities=[0, 0.9])
    assert q.is_quick and q.sparsities == (0.0, 0.9) and q.threads == (1,) and q.train_subset
    # the run id follows the measured config, not where results go
    assert study.StudyConfig(results_dir="x").folder().name == study.StudyConfig().folder().name
    assert study.StudyConfig(seeds=(0,)).folder().name != cfg.folder().name
    assert study.StudyConfig(run_id="mine").folder().name == "mine"


# --- a tiny study ------------------------------------------------------------------------------

@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """Synthetic data, a small untrained net instead of training, quick peaks; call counters."""
    from sparsenet import data, machine, train
    calls = {"train": 0, "sweep": 0, "peaks": 0, "time_cases": 0, "report": 0}
    rng = np.random.default_rng(0)
    ds = data.Dataset("mnist", rng.integers(0, 256, (600, 784), dtype=np.uint8),
                      rng.integers(0, 10, 600).astype(np.uint8),
                      rng.integers(0, 256, (200, 784), dtype=np.uint8),
                      rng.integers(0, 10, 200).astype(np.uint8), "synthetic")
    monkeypatch.setattr(data, "load", lambda *a, **k: ds)

    def cached_train(dataset, cfg, cache_dir, progress=True):
        calls["train"] += 1
        return he_init(SIZES, seed=cfg.seed), {"test_acc": 0.1}
    monkeypatch.setattr(train, "cached_train", cached_train)

    from sparsenet import sweep
    real_sweep = sweep.run_and_save

    def run_and_save(*a, **k):
        calls["sweep"] += 1
        return real_sweep(*a, **k)
    monkeypatch.setattr(sweep, "run_and_save", run_and_save)

    def peaks(threads=(1,), quick=False):
        calls["peaks"] += 1
        return {"sgemm_gflops": {str(t): 1.0 for t in threads}, "bandwidth_gbs": 1.0}
    monkeypatch.setattr(machine, "measure_peaks", peaks)

    from sparsenet import report

    def build_report(folder):
        calls["report"] += 1                    # the report has its own tests; here: it is called
        return folder / "report" / "report.md"
    monkeypatch.setattr(report, "build_report", build_report)

    real_time = bench.time_cases

    def time_cases(cases, **k):
        calls["time_cases"] += 1
        return real_time(cases, **k)
    monkeypatch.setattr(bench, "time_cases", time_cases)
    cfg = study.StudyConfig(seeds=(0, 1), sparsities=(0.0, 0.5, 0.9), batches=(1, 8), threads=(1,),
                            widths=(64,), scaling_sparsities=None, epochs=1, train_subset=600,
                            finetune_epochs=1,
                            finetune_sparsities=(0.5,), rounds=2, min_time=0.0005,
                            results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "models"))
    return cfg, calls


def test_tiny_study_writes_all_parts_and_resumes(tiny):
    cfg, calls = tiny
    folder = study.run_study(cfg, progress=False)
    for part in ("config", "machine", "accuracy", "timings", "scaling"):
        assert (folder / f"{part}.json").exists(), part
    assert read_json(folder / "config.json")["study"]["seeds"] == [0, 1]
    timings = read_json(folder / "timings.json")
    assert timings["complete"] and set(timings["compile_s"]) == set(cfg.engines)
    recs = timings["records"]
    n_engines = sum(len(study.engines_at(cfg, cfg.engines, k)) for k in cfg.sparsities)
    assert n_engines == 4 + 3 + 3                          # dense at k = 0 only by default
    assert len(recs) == n_engines * 2                       # engines x batches (1 thread)
    by = {(r["engine"], r["sparsity"], r["batch"]): r for r in recs}
    assert by[("shrunk", 0.5, 8)]["method"] == "neuron" and by[("csr", 0.5, 8)]["method"] == "weight"
    assert by[("shrunk", 0.5, 8)]["layer_sizes"] == [784, 24, 16, 10]
    assert all(r["min_s"] <= r["median_s"] <= r["max_s"] for r in recs)
    scaling = read_json(folder / "scaling.json")
    assert {r["width"] for r in scaling["records"]} == {64}
    assert len(scaling["records"]) == (2 + 1 + 1) * 2
    acc = read_json(folder / "accuracy.json")
    assert acc["seeds"] == [0, 1] and acc["complete"]
    assert {(c["method"], c["recovery"]) for c in acc["curves"]} == {
        (m, r) for m in ("weight", "neuron") for r in ("oneshot", "finetuned")}
    assert calls["sweep"] == 1 and calls["peaks"] == 1 and calls["time_cases"] == 3 + 3
    assert calls["report"] == 1
    assert len(study.summary(folder)) == 3

    study.run_study(cfg, progress=False)                    # everything done: nothing re-measured
    assert calls["sweep"] == 1 and calls["peaks"] == 1 and calls["time_cases"] == 6


def test_interrupted_timings_resume(tiny, monkeypatch):
    cfg, calls = tiny
    real = bench.time_cases

    def failing(cases, **k):
        if calls["time_cases"] >= 1:
            raise KeyboardInterrupt
        calls["time_cases"] += 1
        return real(cases, **k)
    monkeypatch.setattr(bench, "time_cases", failing)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(cfg, progress=False)
    part = read_json(cfg.folder() / "timings.json")
    assert not part["complete"] and {r["sparsity"] for r in part["records"]} == {0.0}

    monkeypatch.setattr(bench, "time_cases", real)
    calls["time_cases"] = 0
    timed = []
    monkeypatch.setattr(bench, "time_cases",
                        lambda cases, **k: timed.append({c.sparsity for c in cases}) or real(cases, **k))
    study.run_study(cfg, progress=False)
    assert timed[:2] == [{0.5}, {0.9}]                        # k = 0 was not timed again
    part = read_json(cfg.folder() / "timings.json")
    assert part["complete"] and len(part["records"]) == (4 + 3 + 3) * 2


def test_engines_at():
    cfg = study.StudyConfig(sparsities=(0.0, 0.5))
    assert study.engines_at(cfg, cfg.engines, 0.0) == cfg.engines
    assert "dense" not in study.engines_at(cfg, cfg.engines, 0.5)
    every = study.StudyConfig(sparsities=(0.0, 0.5), dense_every_k=True)
    assert study.engines_at(every, every.engines, 0.5) == every.engines


def test_other_config_in_folder_is_refused(tiny):
    cfg, _ = tiny
    folder = cfg.folder()
    folder.mkdir(parents=True)
    study.write_config(cfg, folder)
    import dataclasses
    other = dataclasses.replace(cfg, rounds=5, run_id=folder.name)
    with pytest.raises(ValueError, match="another configuration"):
        study.write_config(other, folder)


def test_scaling_cases_skip_reasons():
    cases = bench.scaling_cases(64, 0.5, ("dense", "csr"), (1, 4), (1,),
                                skip=lambda e, k, b, t, w: "too big" if e == "dense" and b == 4 else None)
    assert [(c.name, c.batch) for c in cases] == [("dense", 1), ("csr", 1), ("csr", 4)]
    assert layer_sizes(cases[0].params) == (64, 64) and cases[0].width == 64


@pytest.mark.slow
def test_quick_study_end_to_end(quick_study_folder):
    """The real quick study (no stand-ins): every part, a finished report, a learnt net."""
    folder = quick_study_folder
    for part in ("config", "machine", "accuracy", "timings", "scaling"):
        assert (folder / f"{part}.json").exists(), part
    acc = read_json(folder / "accuracy.json")
    assert acc["complete"] and acc["dense"]["accuracy"][0] > 0.9      # the synthetic classes are learnable
    timings = read_json(folder / "timings.json")
    assert {r["engine"] for r in timings["records"]} == set(study.ENGINES)
    assert all(r["median_s"] > 0 and r["spread"] >= 1 for r in timings["records"])
    summary = read_json(folder / "report" / "summary.json")
    assert summary["verdict"]["answer"] in ("true", "false", "partly")
    assert "## 1." in (folder / "report" / "report.md").read_text()


@pytest.mark.parametrize("kwargs, match", [
    (dict(threads=(1, 3)), r"threads 3 exceed the 2 threads available"),
    (dict(threads=(1,), scaling_threads=(1, 99)), r"scaling_threads 99 exceed the 2 threads available"),
])
def test_threads_beyond_the_available_are_refused_in_the_config(monkeypatch, kwargs, match):
    import numba
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)
    with pytest.raises(ValueError, match=match + r" \(NUMBA_NUM_THREADS\)"):
        study.StudyConfig(**kwargs)


def test_too_many_threads_stop_the_study_before_any_stage(tiny, monkeypatch):
    """Not after data, training, the sweep and a 99-thread 'peak' in machine.json."""
    import dataclasses
    import numba
    cfg, calls = tiny
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)
    with pytest.raises(ValueError, match="threads 99 exceed"):
        study.run_study(dataclasses.replace(cfg, threads=(1, 99)), progress=False)
    assert calls == {"train": 0, "sweep": 0, "peaks": 0, "time_cases": 0, "report": 0}
    assert not (tiny[0].folder().parent).exists()


def test_other_data_under_the_same_name_gets_its_own_run_folder(tiny, monkeypatch):
    """A --data-dir of non-official files (other labels) does not share the official run's folder."""
    import dataclasses
    from sparsenet import data
    cfg, calls = tiny
    official = data.load()
    other = official._replace(train_labels=(official.train_labels + 1) % 10, md5=("b" * 32,) * 4)
    official = official._replace(md5=("a" * 32,) * 4)
    seen = []
    monkeypatch.setattr(data, "load", lambda name, data_dir=None, **k: other if data_dir else official)
    from sparsenet import train
    real = train.cached_train
    monkeypatch.setattr(train, "cached_train", lambda ds, *a, **k: seen.append(ds.fingerprint) or real(ds, *a, **k))
    a = study.run_study(cfg, progress=False)
    b = study.run_study(dataclasses.replace(cfg, data_dir="/elsewhere"), progress=False)
    assert a != b and calls["sweep"] == 2                                  # b measured afresh
    assert read_json(a / "config.json")["data"]["fingerprint"] == official.fingerprint
    assert read_json(b / "config.json")["data"]["fingerprint"] == other.fingerprint
    assert seen == [official.fingerprint] * 2 + [other.fingerprint] * 2    # the nets see their own data
    with pytest.raises(ValueError, match="holds results of other data .*fingerprint"):
        study.run_study(dataclasses.replace(cfg, data_dir="/elsewhere", run_id=a.name), progress=False)


# --- one study per run folder ------------------------------------------------------------------

def _hold_lock(path, pid):
    """Hold an flock on `path` (as a running study would) with `pid` written in it."""
    import fcntl
    import json
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.truncate(0)
    f.write(json.dumps({"pid": pid, "started": "2024-01-01T00:00:00+00:00"}))
    f.flush()
    return f


def _dead_pid() -> int:
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_second_study_on_the_same_folder_is_refused(tiny):
    import os
    cfg, calls = tiny
    lock = _hold_lock(cfg.folder() / ".lock", os.getpid())
    try:
        with pytest.raises(RuntimeError, match=rf"in use by another study \(pid {os.getpid()}, started "
                                               r"2024-01-01T00:00:00\+00:00\)"):
            study.run_study(cfg, progress=False)
    finally:
        lock.close()
    assert calls["train"] == 0 and not (cfg.folder() / "config.json").exists()


def test_the_lock_names_the_holder_and_is_released(tiny):
    import json
    import os
    cfg, _ = tiny
    seen = {}
    real = study.write_config

    def spy(cfg, folder, ds=None):
        seen.update(json.loads((folder / ".lock").read_text()))
        return real(cfg, folder, ds)
    import unittest.mock
    with unittest.mock.patch.object(study, "write_config", spy):
        folder = study.run_study(cfg, progress=False)
    assert seen["pid"] == os.getpid() and seen["started"]
    _hold_lock(folder / ".lock", os.getpid()).close()                   # released after the run


def test_a_stale_lock_is_taken_over(tiny):
    cfg, calls = tiny
    dead = _dead_pid()
    # holder gone, flock not held: only the file is left
    _hold_lock(cfg.folder() / ".lock", dead).close()
    study.run_study(cfg, progress=False)
    # flock still held (say, by a child that inherited it), but the pid written is dead
    lock = _hold_lock(cfg.folder() / ".lock", dead)
    try:
        study.run_study(cfg, progress=False)
    finally:
        lock.close()
    assert calls["train"] == 2 * len(cfg.seeds)
