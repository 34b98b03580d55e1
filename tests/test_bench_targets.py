"""bench/targets.py: the issues' speed targets read off a results folder."""
import subprocess
import sys
from pathlib import Path

from fixture_results import rec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import targets  # noqa: E402


def test_table_of_a_results_folder(results_folder):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "targets.py"), str(results_folder)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "CPU Synthetic CPU @ 2.0GHz, kernel ISA avx512, Numba target znver4, BLAS openblas 0.3.29 (Haswell)" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 | 1 |")]
    assert len(rows) == 1 and rows[0].count("|") == 8                    # batch 1, 1 thread: one row, 7 cells


def test_no_timings_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "targets.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr


def _rounds(engine, k, seconds, spread):
    x = rec(engine, "weight", k, seconds)
    x["per_round_s"] = [seconds * (1 + spread * (i - 3) / 3) for i in range(7)]
    return x


def test_rises_only_where_the_interval_clears_1():
    # csr slower at 70 % than at 50 % by 30 % with tight rounds: a step; 70 -> 90 % faster; a 2 % rise
    # inside +-10 % rounds is noise
    t = {"records": [_rounds("dense", k, 1.0, 0.01) for k in (0.5, 0.7, 0.9, 0.95)]
         + [_rounds("csr", 0.5, 0.50, 0.01), _rounds("csr", 0.7, 0.65, 0.01), _rounds("csr", 0.9, 0.20, 0.1),
            _rounds("csr", 0.95, 0.204, 0.1)]}
    steps = targets.rises(t, "csr", "weight", 1, 1)
    assert [(a, b) for a, b, _, _ in steps] == [(0.5, 0.7)] and abs(steps[0][2] - 1.3) < 0.01
    # the same rise with the dense net beside k = 70 % as much slower: the machine's phase, not a step
    slow = {"records": [r for r in t["records"] if not (r["engine"] == "dense" and r["sparsity"] == 0.7)]
            + [_rounds("dense", 0.7, 1.4, 0.01)]}
    assert targets.rises(slow, "csr", "weight", 1, 1) == []
    # unless the study timed csr's two k side by side (study.retime_steps): then dense's move is not csr's
    beside = {0.5: [0.7], 0.7: [0.5]}
    pair = {"records": [{**r, "retimed": "step", "retimed_with": beside[r["sparsity"]]}
                        if r["engine"] == "csr" and r["sparsity"] in beside else r for r in slow["records"]]}
    assert [(a, b) for a, b, _, _ in targets.rises(pair, "csr", "weight", 1, 1)] == [(0.5, 0.7)]
    # two records re-timed, but each beside another k: not side by side, dense's move counts again
    apart = {"records": [{**r, "retimed": "step", "retimed_with": [0.25 if r["sparsity"] == 0.5 else 0.9]}
                         if r["engine"] == "csr" and r["sparsity"] in beside else r for r in slow["records"]]}
    assert targets.rises(apart, "csr", "weight", 1, 1) == []


def test_steps_of_an_engine_independent_of_k_are_marked():
    # dense-fused multiplies every zero: its step is the noise left, and the table says so
    t = {"records": [_rounds("dense", k, 1.0, 0.01) for k in (0.5, 0.7)]
         + [_rounds("dense-fused", 0.5, 1.0, 0.01), _rounds("dense-fused", 0.7, 1.3, 0.01),
            _rounds("csr", 0.5, 0.5, 0.01), _rounds("csr", 0.7, 0.65, 0.01)]}
    rows = {r[0]: r for r in targets.steps_rows(t)}
    assert set(rows) == {"dense-fused (time independent of k)", "csr"}
    assert rows["csr"][1:3] == [1, 1] and rows["csr"][3].startswith("50%->70% x1.30")
