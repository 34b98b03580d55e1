"""The report: Markdown and figures built from fixture folders, and its tables on crafted data."""
import json

import pytest

from fixture_results import csr_timings, make_results
from sparsenet.report import break_even_markdown, build_report, reproduce_command

SECTIONS = ("## 1. Verdict", "## 2. Accuracy and loss", "## 3. Latency and speed-up", "## 4. Memory",
            "## 5. Accuracy vs latency", "## 6. Roofline", "## 7. Scaling", "## 8. Tables",
            "### 8.1", "### 8.2", "### 8.3", "### 8.4", "### 8.5", "### 8.6", "### 8.7", "### 8.8")
FIGURES = ("accuracy.png", "accuracy_weight.png", "accuracy_neuron.png", "latency_t1.png", "latency_t2.png",
           "speedup_t1.png", "speedup_t2.png", "memory.png", "pareto_b1.png", "pareto_b256.png", "roofline.png",
           "scaling.png")


@pytest.fixture
def fast_figures(monkeypatch):
    """Draw the figures but skip rasterising them (the slow part); full PNGs are checked in test_report_from_fixture."""
    from sparsenet import plots
    from sparsenet.files import atomic_write_bytes
    monkeypatch.setattr(plots, "_save", lambda fig, path: atomic_write_bytes(path, b"\x89PNG stub"))


# ---------------------------------------------------------------- the built report

def test_report_from_fixture(results_folder, tmp_path):
    md_path = build_report(results_folder, out_dir=tmp_path)
    text = md_path.read_text()
    assert md_path == tmp_path / "report.md"
    assert "**Answer:" in text and "below 50% sparsity" in text
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions), "sections out of order"
    assert "Missing" not in text
    for name in FIGURES:
        assert f"]({name})" in text
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"]["answer"] in ("true", "false", "partly")
    assert summary["threads"] == 2 and "2 threads" in text
    assert set(summary["figures"]) == set(FIGURES)
    # which kernel produced each figure: the plan summaries of the records, and the ISA of machine.json
    assert "Kernels behind these timings" in text and "| csr | 1 | 1 | sell; none; sell16-avx512 x5 |" in text
    assert "| flop/byte |" in text and "| kernel |" in text and "csr; batch split 32 cols x 2 threads; tiles x5" in text
    assert "kernel ISA (sparsenet plans) | avx512 (Numba target znver4)" in text
    assert "L1 data cache (sizes the column panels) | 32 KB" in text
    assert "L2 cache (batch 1's SELL-16 packed beyond it) | 1024 KB" in text


def test_report_default_location(tmp_path, fast_figures):
    folder = make_results(tmp_path / "run", missing=("scaling", "accuracy"))  # fewer figures: faster
    path = build_report(folder)
    assert path == folder / "report" / "report.md" and (folder / "report" / "summary.json").exists()


@pytest.mark.parametrize("part", ["accuracy", "timings", "scaling", "machine", "config"])
def test_report_names_a_missing_part(part, tmp_path, fast_figures):
    folder = make_results(tmp_path / "run", missing=(part,))
    text = build_report(folder, out_dir=tmp_path / "out").read_text()
    assert f"**Missing:** `{part}.json`" in text
    assert "sparsenet study" in text
    for heading in SECTIONS:
        assert heading in text


def test_report_from_an_empty_folder(tmp_path):
    (tmp_path / "run").mkdir()
    text = build_report(tmp_path / "run").read_text()
    assert "Unknown" in text and text.count("**Missing:**") >= 7


def test_break_even_table_says_when_low_k_was_not_timed():
    text = break_even_markdown(csr_timings([0.5, 0.9], [0.5, 0.2]))  # faster at the lowest k timed
    assert "≤ 50.0%" in text and "not timed" in text
    assert "never" in break_even_markdown(csr_timings([0.0, 0.9], [3.0, 2.0]))


def test_reproduce_command():
    cfg = {"study": {"is_quick": True, "dataset": "mnist", "sparsities": [0.0, 0.25], "batches": [1, 256],
                     "threads": [1], "seeds": [0]}}
    cmd = reproduce_command(cfg, "/tmp/results/run1")
    assert cmd == ("sparsenet study --quick --dataset mnist --seeds 0 --sparsities 0,0.25 --batches 1,256 "
                   "--threads 1 --results-dir /tmp/results --run-id run1")


@pytest.mark.parametrize("where, given", [("run1", "."), ("run1/report", "..")])
def test_reproduce_command_of_the_folder_we_are_in(tmp_path, monkeypatch, where, given):
    """`sparsenet report .` inside the run folder wrote `--results-dir . --run-id ''`, which the study refuses."""
    (tmp_path / "run1" / "report").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / where)
    cmd = reproduce_command({"study": {"seeds": [0]}}, given)
    assert cmd == f"sparsenet study --seeds 0 --results-dir {tmp_path.resolve()} --run-id run1"


def _rec(batch, layout=None, call_nbytes=None):
    r = {"engine": "csr", "method": "weight", "sparsity": 0.9, "batch": batch, "threads": 1, "median_s": 1e-4,
         "nbytes": 1_500_000, "flops": 2.0 * 240_000 * batch, "nnz": 240_000, "layer_sizes": [784, 10]}
    if layout:
        r.update(layout=layout, call_nbytes=call_nbytes)
    return r


def test_memory_and_roofline_tables_use_the_layout_a_call_read():
    from sparsenet.report import _memory_rows, _roofline_rows
    timings = {"records": [_rec(256, "csr", 1_500_000), _rec(1, "sell", 2_600_000)]}
    (row,) = _memory_rows(timings)
    assert row[3] == "1.500" and row[4] == "sell 2.600, csr 1.500"
    rows = {r[3]: r for r in _roofline_rows(timings, {}, 1)}
    assert rows[1][4] == "sell" and rows[1][6] == f"{2 * 240_000 / 2_600_000:.3g}"
    assert rows[256][4] == "csr" and rows[256][6] == f"{2 * 240_000 * 256 / 1_500_000:.3g}"
    (old,) = _memory_rows({"records": [_rec(1)]})         # results written before the layout keys
    assert old[4] == "–"
    assert _roofline_rows({"records": [_rec(1)]}, {}, 1)[0][4:7] == ["–", "–", f"{2 * 240_000 / 1_500_000:.3g}"]


def test_roofline_fractions_divide_by_the_peak_timed_beside_the_record():
    from sparsenet.report import _roofline_rows
    r = _rec(256)                                           # 2 * 240_000 * 256 flops in 1e-4 s: 1228.8 GFLOP/s
    peak = {"engine": "sgemm-peak", "method": "none", "sparsity": 0.9, "batch": 64, "threads": 1,
            "median_s": 1e-3, "nbytes": 4, "flops": 2.0 * 1e12 * 1e-3}                 # 2000 GFLOP/s
    other = dict(peak, sparsity=0.5, median_s=2e-3)                                    # 1000 GFLOP/s, another k
    machine = {"peaks": {"sgemm_gflops": {"1": 4000.0}}}
    (row,) = _roofline_rows({"records": [r], "peaks": [peak, other]}, machine, 1)
    assert row[-1] == "61.4%"                                                          # 1228.8 / 2000
    (old,) = _roofline_rows({"records": [r]}, machine, 1)                              # no peaks timed: machine.json's
    assert old[-1] == "30.7%"


def test_report_refuses_an_unmeasured_thread_count_before_writing(tmp_path, fast_figures):
    folder = make_results(tmp_path / "run", missing=("scaling", "accuracy"))
    build_report(folder, threads=1)
    summary = (folder / "report" / "summary.json").read_bytes()
    report = (folder / "report" / "report.md").read_bytes()
    with pytest.raises(ValueError, match=r"threads 3 were not measured in .*run; measured: 1, 2"):
        build_report(folder, threads=3)
    assert (folder / "report" / "summary.json").read_bytes() == summary      # the good report stays
    assert (folder / "report" / "report.md").read_bytes() == report


def test_report_threads_without_timings_are_refused(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match=r"threads 2 were not measured in .*run; measured: none \(no timings"):
        build_report(tmp_path / "run", threads=2)
    assert not (tmp_path / "run" / "report").exists()


def test_report_opens_with_three_short_sentences(results_folder, tmp_path):
    text = build_report(results_folder, out_dir=tmp_path).read_text()
    opening = text.split("\n\n")[1]
    assert opening.startswith("**At equal sparsity") and opening.endswith("**")
    sentences = [x for x in opening.strip("*").split(". ") if x]
    assert len(sentences) <= 3 and len(opening.split()) < 90
    assert "At equal accuracy (within 0.5 points)" in opening and "csr breaks even with dense at" in opening


def test_cases_not_timed_are_listed_with_their_reason():
    from sparsenet import grid
    from sparsenet.report import _skipped_markdown
    n = 784 * 1000 + 1000 * 1000 + 1000 * 500 + 500 * 200 + 200 * 10
    skipped = [{"engine": e, "sparsity": k, "batch": b, "threads": t, "width": None,
                "reason": grid.skip_reason(e, n, k, b, 3000, max_baseline_call_s=0.2)}
               for e, k, b in (("bsr-scipy", 0.5, 256), ("bsr-scipy", 0.0, 4096), ("csr", 0.0, 4096))
               for t in (1, 2)]
    skipped.append({"engine": "csr-skip", "sparsity": 0.5, "batch": 16, "threads": 1, "width": None,
                    "reason": grid.small_batch_skip("csr-skip", 16)})
    text = _skipped_markdown({"skipped": skipped})
    lines = [line for line in text.splitlines() if line.startswith("- ")]
    assert lines == [
        "- bsr-scipy: 4 case(s), predicted > the library baseline limit 0.2 s; k 0%, 50%; batch 256, 4096",
        "- csr: 2 case(s), predicted > 2 s; k 0%; batch 4096",
        f"- csr-skip: 1 case(s), {grid.small_batch_skip('csr-skip', 16)}; k 50%; batch 16"]
    assert _skipped_markdown({"skipped": []}) == "" and _skipped_markdown({}) == ""


def test_cases_still_noisy_are_named_when_few_and_counted_per_engine_when_many():
    from sparsenet.report import _still_noisy
    assert _still_noisy([]) == "none stayed noisy"
    few = [("csr", 0.5, 1, 2), ("dense", 0.0, 256, 1)]
    assert _still_noisy(few) == "2 stayed noisy: csr k=50% b1 t2, dense k=0% b256 t1"
    many = [("csr", 0.1 * i, 1, 1) for i in range(9)] + [("dense", 0.1 * i, 16, 2) for i in range(5)]
    assert _still_noisy(many) == "14 stayed noisy (marked ⚠ in 8.2), by engine: csr 9, dense 5"


def test_steps_markdown_names_what_remains_and_what_went():
    from sparsenet.report import steps_markdown
    steps = [{"engine": "csr", "batch": 1, "threads": 2, "width": None, "k": 0.8, "next_k": 0.9, "before": 2.22,
              "after": 0.52, "after_low": 0.47},
             {"engine": "bsr", "batch": 16, "threads": 2, "width": 4096, "k": 0.5, "next_k": 0.6, "before": 1.3,
              "after": 1.25, "after_low": 1.1}]
    text = steps_markdown(steps)
    assert text.startswith("2 step(s) up in k") and "1 remain; bsr batch 16, 2 threads, width 4096, 50% -> 60%: " \
        "x1.30, side by side x1.25 (gone: csr batch 1, 2 threads, 80% -> 90%: x2.22, side by side x0.52)." in text
