"""The command line: argument parsing and clear errors (no traceback) on bad input."""
import sys

import pytest

from sparsenet import cli


@pytest.mark.parametrize("text, expected", [("0", 0.0), ("0.9", 0.9), ("90", 0.9), ("97.5%", 0.975),
                                            ("99", 0.99), ("1", 0.01), ("2.0", 0.02), ("1%", 0.01)])
def test_sparsity_forms(text, expected):
    assert cli._sparsity(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["1.5", "1.0", "100", "-0.1", "abc", "99.9999%0"])
def test_bad_sparsities_are_refused(text, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["study", "--sparsities", f"0,{text}"])
    assert exc.value.code == 2
    assert "--sparsities" in capsys.readouterr().err


@pytest.mark.parametrize("option, values, named", [("--sparsities", "50,0.5", "sparsities has duplicates: 0.5"),
                                                    ("--engines", "csr,dense,csr", "engines has duplicates: csr")])
def test_study_refuses_duplicates(option, values, named, capsys):
    """The same k (or engine) twice would be swept and timed twice and doubled in every table."""
    assert cli.main(["study", option, values, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


@pytest.mark.parametrize("option, values, named", [("--batches", "1,256,1", "batches has duplicates: 1"),
                                                    ("--threads", "1,1", "threads has duplicates: 1"),
                                                    ("--seeds", "0,0", "seeds has duplicates: 0"),
                                                    ("--widths", "1024,1024", "widths has duplicates: 1024"),
                                                    ("--scaling-threads", "1,1", "scaling_threads has duplicates: 1")])
def test_study_refuses_duplicate_counts(option, values, named, capsys, monkeypatch):
    """A batch, thread count, seed or width given twice is refused, naming it, before any stage (a width
    twice started the study and timed its layer twice; the others named the whole tuple, "(1, 1)")."""
    from sparsenet import study
    monkeypatch.setattr(study, "run_study", lambda *a, **k: pytest.fail("the study started"))
    assert cli.main(["study", option, values, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"sparsenet study: error: {named}\n" in err and "Traceback" not in err


def test_ambiguous_one_is_named():
    with pytest.raises(Exception, match=r"ambiguous sparsity '1\.0': give a fraction in \[0, 1\) or a percentage"):
        cli._sparsity("1.0")


@pytest.mark.parametrize("batch", ["0", "-5", "1,0"])
def test_plan_refuses_batches_below_one(batch, capsys):
    assert cli.main(["plan", "--batch", batch, "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "--batch: batch sizes must be positive integers" in err and "Traceback" not in err


def test_study_options_reach_the_config(monkeypatch):
    from sparsenet import study

    seen = {}
    monkeypatch.setattr(study, "run_study", lambda cfg, progress, accuracy_only: seen.setdefault("cfg", cfg))
    assert cli.main(["study", "--quick", "--sparsities", "0,50,90", "--engines", "dense,csr",
                     "--batches", "1,16", "--results-dir", "/tmp/x", "--quiet"]) == 0
    cfg = seen["cfg"]
    assert cfg.is_quick and cfg.sparsities == (0.0, 0.5, 0.9)
    assert cfg.engines == ("dense", "csr") and cfg.batches == (1, 16) and cfg.results_dir == "/tmp/x"


def test_unknown_engine_is_a_clear_error(capsys):
    assert cli.main(["study", "--engines", "dense,gpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown engines" in err and "gpu" in err and "Traceback" not in err


def test_report_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_of_a_file_says_it_wants_the_folder(tmp_path, capsys):
    (tmp_path / "timings.json").write_text("{}")
    assert cli.main(["report", str(tmp_path / "timings.json")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'timings.json'} is a file; give the study's results folder" in err
    assert f"e.g. {tmp_path}" in err and "does not exist" not in err and "Traceback" not in err


def test_report_of_a_folder_without_results_names_the_run_folders_in_it(tmp_path, capsys):
    # `sparsenet report results` for `results/<run id>`: no all-"Unknown" report written into results/
    run = tmp_path / "results" / "mnist-abc"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (tmp_path / "results" / "other").mkdir()                  # not a run folder: not named
    assert cli.main(["report", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "holds none of a results folder's files" in err and "timings.json" in err
    assert f"the run folders in it: {run};" in err and "other" not in err and "Traceback" not in err
    assert not (tmp_path / "results" / "report").exists()
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    assert "run folders" not in capsys.readouterr().err
    assert not (tmp_path / "empty" / "report").exists()


def test_report_command_builds_a_report(results_folder, capsys):
    assert cli.main(["report", str(results_folder)]) == 0
    assert (results_folder / "report" / "report.md").exists()
    assert "report written to" in capsys.readouterr().out


def test_fetch_from_a_data_dir(tmp_path, capsys):
    import numpy as np

    from sparsenet import data

    rng = np.random.default_rng(0)
    for name, shape in [("train-images-idx3-ubyte", (20, 28, 28)), ("t10k-images-idx3-ubyte", (5, 28, 28))]:
        data.write_idx(tmp_path / name, rng.integers(0, 256, shape, dtype=np.uint8))
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 20).astype(np.uint8))
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 5).astype(np.uint8))
    assert cli.main(["fetch", "--data-dir", str(tmp_path)]) == 0
    assert "20 training and 5 test images" in capsys.readouterr().out


def test_fetch_from_a_broken_data_dir_names_the_problem(tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03truncated")
    assert cli.main(["fetch", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "data directory" in err and "Traceback" not in err


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "inf%", "1e400"])
def test_non_finite_sparsities_say_finite(text, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["study", "--sparsities", f"0,{text}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "sparsity must be a finite number: a fraction in [0, 1) or a percentage in [0, 100)" in err
    assert "ambiguous" not in err


def _idx_dir(folder, n_train=300, n_test=50, seed=0, labels=None):
    """The four IDX files of a small synthetic data set in `folder`."""
    import numpy as np

    from sparsenet import data

    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        data.write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        y = rng.integers(0, 10, n).astype(np.uint8) if labels is None else np.full(n, labels, np.uint8)
        data.write_idx(folder / f"{prefix}-labels-idx1-ubyte", y)
    return folder


def test_train_on_a_small_data_set_holds_out_a_tenth(tmp_path, capsys):
    from sparsenet import checkpoint

    _idx_dir(tmp_path / "data")
    out = tmp_path / "m.npz"
    assert cli.main(["train", "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--sizes", "784,16,10",
                     "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert checkpoint.load(out)[1]["config"]["n_val"] == 30              # min(5000, 300 // 10)
    assert cli.main(["train", "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--sizes", "784,16,10",
                     "--val", "0", "--out", str(out), "--quiet"]) == 0
    assert checkpoint.load(out)[1]["config"]["n_val"] == 0


def test_train_val_leaving_no_training_images_is_a_clear_error(tmp_path, capsys):
    _idx_dir(tmp_path / "data")
    assert cli.main(["train", "--data-dir", str(tmp_path / "data"), "--val", "300",
                     "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert "--val 300 leaves no training images (the training set has 300); choose --val below 300" in err
    assert "Traceback" not in err and not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "seed must be an integer >= 0, got -1"),
    (["--sizes", "784"], "sizes must be two or more layer widths >= 1, input first, classes last (e.g. 784,1000,10), got 784"),
    (["--sizes", "784,0,10"], "sizes must be two or more layer widths >= 1, input first, classes last (e.g. 784,1000,10), "
                              "got 784,0,10"),
])
def test_train_checks_its_settings_before_the_data(tmp_path, capsys, monkeypatch, argv, message):
    """A bad --seed or --sizes is one line before the data set is loaded (or downloaded) and before the
    output folder is made (models/ was left behind, named after seed -1)."""
    from sparsenet import data
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data loaded before the settings were checked"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"sparsenet train: error: {message}\n" and not (tmp_path / "models").exists()


def test_train_sizes_that_do_not_fit_the_data_say_what_fits(tmp_path, capsys, monkeypatch):
    """--sizes 100,10 on 784-pixel images: the first width must be the input features, the last the classes."""
    _idx_dir(tmp_path / "data")
    assert cli.main(["train", "--data-dir", str(tmp_path / "data"), "--sizes", "100,10",
                     "--out", str(tmp_path / "m.npz"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert ("sparsenet train: error: sizes 100,10 do not fit mnist: the first width must be its 784 input features "
            "and the last its 10 classes (e.g. 784,1000,10)") in err
    assert "Traceback" not in err and not (tmp_path / "m.npz").exists()


def test_report_with_an_unmeasured_thread_count_is_refused(tmp_path, capsys, monkeypatch):
    from fixture_results import make_results

    from sparsenet import plots
    monkeypatch.setattr(plots, "_save", lambda fig, path: path.write_bytes(b"\x89PNG stub"))
    folder = make_results(tmp_path / "run", missing=("scaling", "accuracy"))
    assert cli.main(["report", str(folder), "--threads", "99"]) == 2
    err = capsys.readouterr().err
    assert "threads 99 were not measured" in err and "measured: 1, 2" in err
    assert not (folder / "report").exists()


def _round_trip(cfg):
    """The report's reproduce command for `cfg`, parsed back by the CLI into a StudyConfig."""
    import dataclasses
    import json
    import shlex

    from sparsenet.report import reproduce_command

    config = json.loads(json.dumps({"study": dataclasses.asdict(cfg)}))     # as config.json holds it
    argv = shlex.split(reproduce_command(config, cfg.folder()))
    assert argv[:2] == ["sparsenet", "study"]
    return cli.study_config(cli.build_parser().parse_args(argv[1:]))


def test_reproduce_command_gives_back_every_setting(tmp_path, monkeypatch):
    import numba

    from sparsenet import study
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 4)
    cfg = study.StudyConfig.quick(
        dataset="fashion-mnist", data_dir=str(tmp_path / "my data"), seeds=(3, 5), sparsities=(0.0, 0.3, 0.975),
        methods=("weight",), engines=("csr", "shrunk"), batches=(1, 7), threads=(1, 3), widths=(),
        scaling_threads=(2,), scaling_sparsities=(0.5, 0.95), epochs=None, train_subset=None, finetune_epochs=3,
        finetune_sparsities=None, finetune_lr=2.5e-4, rounds=4, min_time=0.003, max_case_s=0.7,
        max_call_s=0.25, dense_every_k=True, results_dir=str(tmp_path / "res"), run_id="run 1",
        cache_dir=str(tmp_path / "models"))
    assert _round_trip(cfg) == cfg


def test_reproduce_command_of_a_full_study(tmp_path):
    from sparsenet import study
    cfg = study.StudyConfig(seeds=(0,), widths=(256, 512), scaling_sparsities=None, epochs=3, train_subset=20000,
                            finetune_sparsities=(0.9,), results_dir=str(tmp_path))
    got = _round_trip(cfg)
    assert got == __import__("dataclasses").replace(cfg, run_id=cfg.folder().name)


def _no_training(monkeypatch):
    from sparsenet import train

    def refuse(*a, **k):
        raise AssertionError("training started although the output cannot be written")
    monkeypatch.setattr(train, "train", refuse)


@pytest.mark.parametrize("out, strerror", [
    (lambda tmp: tmp, "Is a directory"),
    (lambda tmp: tmp / "afile" / "m.npz", "Not a directory"),
    (lambda tmp: tmp / ("x" * 300 + ".npz"), "File name too long"),
])
def test_train_checks_its_output_before_training(tmp_path, capsys, monkeypatch, out, strerror):
    _idx_dir(tmp_path / "data")
    (tmp_path / "afile").write_text("a file, not a folder")
    _no_training(monkeypatch)
    path = out(tmp_path)
    assert cli.main(["train", "--data-dir", str(tmp_path / "data"), "--out", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert ": error: " in err and f"{strerror}" in err and str(path)[:40] in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("option", ["--results-dir", "--model-cache"])
def test_study_checks_its_folders_before_any_stage(tmp_path, capsys, monkeypatch, option):
    from sparsenet import data
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data loaded before the folders were checked"))
    (tmp_path / "afile").write_text("a file, not a folder")
    assert cli.main(["study", "--quick", option, str(tmp_path / "afile"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"sparsenet study: error: {tmp_path / 'afile'}: Not a directory" in err and "Traceback" not in err


def test_an_os_error_of_the_report_is_one_line(tmp_path, capsys, monkeypatch):
    from fixture_results import make_results
    folder = make_results(tmp_path / "run", missing=("scaling", "accuracy"))
    (folder / "report").write_text("a file where the report folder goes")
    assert cli.main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"sparsenet report: error: {folder / 'report'}: Not a directory" in err and "Traceback" not in err


# --- the study's options: one table ------------------------------------------------------------

def test_every_study_config_field_has_an_option():
    import dataclasses

    from sparsenet.study_config import OPTIONS, QUICK_FIELD, StudyConfig
    fields = [f.name for f in dataclasses.fields(StudyConfig)]
    assert sorted(o.field for o in OPTIONS) == sorted(set(fields) - {QUICK_FIELD})
    parser = cli.build_parser()
    study = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("study"))
    dests = {a.dest for a in study._actions}
    assert set(fields) - {QUICK_FIELD} <= dests and {o.kind for o in OPTIONS} <= set(cli.KINDS) | {"bool"}


# --- sparsenet plan --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from sparsenet import checkpoint
    from sparsenet.model import he_init
    return checkpoint.save(tmp_path_factory.mktemp("plan") / "net.npz", he_init((784, 64, 32, 10), seed=1))


def test_plan_prints_the_plan_and_why(small_checkpoint, capsys):
    from sparsenet import plan
    from sparsenet.plan import cpu
    assert cli.main(["plan", "--checkpoint", str(small_checkpoint), "--sparsity", "90", "--batch", "1,256",
                     "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "layers 784-64-32-10, weight-pruned to k=90%" in out and f"kernels for {cpu().isa}" in out
    assert f"column panels of {plan.panel_bytes() // 1024} KB" in out
    assert "; L2 " + (f"{plan.l2_bytes() // 1024} KB" if plan.l2_bytes() else "unknown") in out
    assert "csr at batch 1, 1 thread(s)" in out and "csr at batch 256, 1 thread(s)" in out
    assert out.count("  why: ") >= 2 and "  layer 2: " in out


def test_plan_json_is_the_engines_plans(small_checkpoint, capsys):
    import json

    from sparsenet import checkpoint, plan
    from sparsenet.engines import make_engine
    from sparsenet.grid import pruned
    assert cli.main(["plan", "--checkpoint", str(small_checkpoint), "--engine", "shrunk", "--sparsity", "0.5",
                     "--batch", "16", "--threads", "1", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["net"]["method"] == "neuron" and got["net"]["layer_sizes"] == [784, 64, 32, 10]
    assert got["cpu"]["panel_bytes"] >= 4096 and got["cpu"]["l1d_bytes"] in (None, plan.l1d_bytes())
    assert got["cpu"]["l2_bytes"] == plan.l2_bytes()
    net = pruned(checkpoint.load(small_checkpoint)[0], "neuron", 0.5)
    assert got["plans"] == [json.loads(json.dumps(make_engine("shrunk", net, threads=1).plan(16).to_dict()))]


def test_plan_of_the_default_net(capsys):
    import numba
    assert cli.main(["plan", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "He-initialised default net" in out and "layers 784-1000-1000-500-200-10" in out
    threads = sorted({1, numba.config.NUMBA_NUM_THREADS})
    assert [f"csr at batch 4, {t} thread(s)" in out for t in threads] == [True] * len(threads)


def test_plan_refuses_a_sparsity_n_m_does_not_have(capsys):
    """`plan --engine nm --sparsity 0.3` would have planned 3:4 (k = 25 %) and printed k=30 %."""
    assert cli.main(["plan", "--engine", "nm", "--sparsity", "0.3", "--batch", "1", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "sparsity 0.3 is not an N:M sparsity with m=4" in err and "0.75 (1:4)" in err and "Traceback" not in err
    assert cli.main(["plan", "--engine", "nm", "--sparsity", "75", "--batch", "1", "--threads", "1"]) == 0
    assert "k=75%" in capsys.readouterr().out


def test_plan_refuses_too_many_threads(capsys):
    assert cli.main(["plan", "--threads", "999"]) == 2
    err = capsys.readouterr().err
    assert "--threads must be in 1.." in err and "Traceback" not in err


# --- accuracy on the cluster, timing on each machine -------------------------------------------

def test_accuracy_only_reaches_the_study(monkeypatch):
    from sparsenet import study
    seen = {}
    monkeypatch.setattr(study, "run_study", lambda cfg, progress, accuracy_only: seen.update(acc=accuracy_only))
    assert cli.main(["study", "--accuracy-only", "--quiet"]) == 0 and seen == {"acc": True}
    assert cli.main(["study", "--quiet"]) == 0 and seen == {"acc": False}


def test_timing_only_takes_a_folder_and_timing_options(monkeypatch):
    from sparsenet import study
    seen = {}
    monkeypatch.setattr(study, "run_timing_only", lambda folder, options, progress: seen.update(
        folder=folder, options=options, progress=progress))
    assert cli.main(["study", "--timing-only", "results/run", "--threads", "1", "--no-dense-every-k",
                     "--quiet"]) == 0
    assert seen == {"folder": "results/run", "options": {"threads": (1,), "dense_every_k": False}, "progress": False}


@pytest.mark.parametrize("argv, message", [
    (["--timing-only", "{folder}", "--accuracy-only"], "not allowed with argument"),
    (["--timing-only", "{folder}", "--seeds", "1"], "--seeds cannot be given with it"),
    (["--timing-only", "{folder}", "--quick"], "--quick cannot be given with --timing-only"),
    (["--timing-only", "{folder}/nope"], "nope is not a results folder (no such folder)"),
    (["--timing-only", "{folder}"], "is not a results folder (no config.json)"),
])
def test_timing_only_errors_are_one_line(tmp_path, capsys, argv, message):
    argv = ["study"] + [a.format(folder=tmp_path) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exc:                                  # argparse: exclusive options
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_timing_only_from_the_command_line(tiny, monkeypatch, capsys):
    """An --accuracy-only run, then `sparsenet study --timing-only` on it: no data set loaded, timings written."""
    import dataclasses
    import functools

    from sparsenet import study
    from sparsenet.files import read_json
    cfg, calls, stages = tiny
    cfg = dataclasses.replace(cfg, engines=("dense", "csr"), widths=(), run_id="acc")
    folder = study.run_study(cfg, progress=False, stages=stages, accuracy_only=True)

    def no_data(*a, **k):
        raise AssertionError("timing-only loaded the data set")
    monkeypatch.setattr(study, "run_timing_only", functools.partial(
        study.run_timing_only, stages=dataclasses.replace(stages, load_data=no_data)))
    assert cli.main(["study", "--timing-only", str(folder), "--batches", "1", "--quiet"]) == 0
    assert calls["time_cases"] == len(cfg.sparsities) and {r["batch"] for r in read_json(folder / "timings.json")["records"]} == {1}
    (folder / "net.npz").write_bytes(b"tampered")
    assert cli.main(["study", "--timing-only", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sparsenet study: error: " in err and "net.npz fails its checksum" in err and len(err.splitlines()) == 1



@pytest.mark.parametrize("where, given", [(".", "."), ("report", "..")])
def test_timing_only_of_the_folder_we_are_in(tiny, monkeypatch, capsys, where, given):
    """`sparsenet study --timing-only .` inside the run folder was refused: "run_id must be a plain folder
    name, got ''" (the run id is the folder's name, and "." has none)."""
    import dataclasses
    import functools

    from sparsenet import study
    from sparsenet.files import read_json
    cfg, calls, stages = tiny
    cfg = dataclasses.replace(cfg, engines=("dense",), widths=(), run_id="acc")
    folder = study.run_study(cfg, progress=False, stages=stages, accuracy_only=True)
    monkeypatch.setattr(study, "run_timing_only", functools.partial(study.run_timing_only, stages=stages))
    (folder / "report").mkdir(exist_ok=True)
    monkeypatch.chdir(folder / where)
    assert cli.main(["study", "--timing-only", given, "--batches", "1", "--quiet"]) == 0, capsys.readouterr().err
    assert {r["batch"] for r in read_json(folder / "timings.json")["records"]} == {1}
    assert read_json(folder / "config.json")["study"]["run_id"] == "acc"

# --- SIGTERM: unwound as an interrupt -------------------------------------------------------------

SIGTERM_SCRIPT = """
import os, signal, sys, time
from sparsenet import cli

def cmd_report(args):
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    finally:
        print("cleaned up", flush=True)       # the run lock, the worker processes, their temporary files
    return 0

cli.cmd_report = cmd_report
code = cli.main(["report", "somewhere"])
print("handler restored", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
sys.exit(code)
"""


def test_sigterm_unwinds_the_command_as_an_interrupt():
    """`kill`, `timeout` or a batch scheduler's SIGTERM ended the study at once: its worker processes then
    waited forever for tasks, holding the data (and its copy in the temporary folder)."""
    import subprocess
    proc = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["cleaned up", "handler restored True"]
    assert "interrupted; completed steps are saved" in proc.stderr and "Traceback" not in proc.stderr
