"""The analysis functions on crafted data with known answers (and on the fixture folder)."""
import pytest

from fixture_results import csr_timings, rec
from sparsenet import analysis, names
from sparsenet.analysis import (
    above_peak, accuracy_at, break_even, candidates, dense_reference, kernels_used, pareto_front, speedup_curves,
    speedups, times_at, timing_quality, verdict,
)


# ---------------------------------------------------------------- break-even and speed-ups

def test_break_even_interpolates_the_crossing():
    # speed-ups 0.25, 0.5, 0.8, 2.0: crosses 1 one sixth of the way from k=0.8 to k=0.9
    t = csr_timings([0.0, 0.5, 0.8, 0.9], [4.0, 2.0, 1.25, 0.5])
    assert break_even(t, "csr", "weight", 1, 1) == pytest.approx(0.8 + 0.1 / 6)


def test_break_even_is_where_it_stays_faster():
    # faster at 0.5, slower again at 0.8: the break-even is the last crossing
    t = csr_timings([0.0, 0.5, 0.8, 0.9], [2.0, 1 / 1.2, 1 / 0.9, 1 / 1.5])
    assert break_even(t, "csr", "weight", 1, 1) == pytest.approx(0.8 + 0.1 / 6)


def test_break_even_never_and_always():
    assert break_even(csr_timings([0.0, 0.5, 0.9], [3.0, 2.0, 1.01]), "csr", "weight", 1, 1) is None
    assert break_even(csr_timings([0.25, 0.5], [0.9, 0.5]), "csr", "weight", 1, 1) == 0.25
    assert break_even(csr_timings([0.5], [0.5]), "csr", "weight", 256, 1) is None  # nothing at that batch


def test_break_even_exact_grid_point():
    t = csr_timings([0.0, 0.5, 0.9], [2.0, 1.0, 0.5])
    assert break_even(t, "csr", "weight", 1, 1) == pytest.approx(0.5)


def test_speedups_use_paired_dense_when_timed():
    t = csr_timings([0.5], [0.5])
    t["records"].append(rec("dense", "weight", 0.5, 2.0))
    (row,) = speedups(t, "csr", "weight", 1, 1)
    assert row["dense_s"] == 2.0 and row["speedup"] == pytest.approx(4.0)
    assert dense_reference(t, 1, 1) == 1.0  # the unpruned ("none") record is the reference


def test_default_threads_is_the_largest():
    t = {"records": csr_timings([0.5], [2.0], threads=1)["records"] + csr_timings([0.5], [0.5], threads=2)["records"]}
    assert speedups(t, "csr", "weight", 1)[0]["speedup"] == pytest.approx(2.0)


# ---------------------------------------------------------------- verdict

def crafted(shrunk_s, csr_s, weight_acc=0.98, neuron_acc=0.98):
    """Two pruned sparsities (25%, 90%), one batch, one thread; dense takes 1 s."""
    recs = [rec("dense", "none", 0.0, 1.0)]
    for k in (0.25, 0.9):
        recs += [rec("csr", "weight", k, csr_s[k]), rec("shrunk", "neuron", k, shrunk_s[k])]
    accuracy = {"sparsities": [0.25, 0.9], "seeds": [0, 1], "dense": {"accuracy": [0.98, 0.98], "loss": [0.1, 0.1]},
                "curves": [{"method": "weight", "recovery": "oneshot", "accuracy": [[0.98, 0.98], [weight_acc] * 2],
                            "loss": [[0.1, 0.1], [0.1, 0.1]]},
                           {"method": "neuron", "recovery": "oneshot", "accuracy": [[0.98, 0.98], [neuron_acc] * 2],
                            "loss": [[0.1, 0.1], [0.1, 0.1]]}]}
    return {"timings": {"records": recs}, "accuracy": accuracy}


def test_verdict_true_when_neuron_pruning_wins_everywhere():
    v = verdict(crafted({0.25: 0.6, 0.9: 0.05}, {0.25: 3.0, 0.9: 0.4}))
    assert v["equal_k"]["answer"] == "true"
    (row,) = v["equal_k"]["rows"]  # only k=25% is below 50%
    assert row["weight_engine"] == "dense" and row["ratio"] == pytest.approx(1 / 0.6)
    assert v["equal_accuracy"]["answer"] == "true"
    assert v["answer"] == "true" and v["sentence"].startswith("True")


def test_verdict_false_when_weight_pruning_wins():
    v = verdict(crafted({0.25: 1.2, 0.9: 0.5}, {0.25: 3.0, 0.9: 0.1}))
    assert v["equal_k"]["answer"] == "false"
    assert v["equal_accuracy"]["answer"] == "false"
    best = v["equal_accuracy"]["rows"][0]["best"]
    assert (best["method"], best["engine"], best["sparsity"]) == ("weight", "csr", 0.9)
    assert best["speedup"] == pytest.approx(10.0)
    assert v["answer"] == "false" and v["sentence"].startswith("False")


def test_verdict_respects_the_accuracy_budget():
    # neuron pruning is faster at k=90% but loses 2 points there: not allowed within 0.5 or 1 point
    v = verdict(crafted({0.25: 0.6, 0.9: 0.01}, {0.25: 3.0, 0.9: 0.1}, neuron_acc=0.96))
    for row in v["equal_accuracy"]["rows"]:
        assert row["best_neuron"]["sparsity"] == 0.25
        assert row["best"]["method"] == "weight"
    v = verdict(crafted({0.25: 0.6, 0.9: 0.01}, {0.25: 3.0, 0.9: 0.1}, neuron_acc=0.96), budgets=(0.03,))
    assert v["equal_accuracy"]["rows"][0]["best"]["method"] == "neuron"


def granular(bsr_s, nm_s, block_acc=0.98, nm_acc=0.98):
    """crafted() plus block pruning (bsr) at 25% and 90% and 2:4 N:M (nm) at 50%, two batch sizes."""
    res = crafted({0.25: 0.9, 0.9: 0.5}, {0.25: 3.0, 0.9: 0.4})
    recs = [dict(r, batch=b) for r in res["timings"]["records"] for b in (1, 256)]
    for b in (1, 256):
        recs += [rec("bsr", "block", k, bsr_s[b][k], batch=b) for k in (0.25, 0.9)]
        recs.append(rec("nm", "nm", 0.5, nm_s[b], batch=b))
    acc = res["accuracy"]
    acc["curves"] += [
        {"method": "block", "recovery": "finetuned", "accuracy": [[0.98, 0.98], [block_acc] * 2],
         "loss": [[0.1, 0.1], [0.1, 0.1]]},
        {"method": "nm", "recovery": "oneshot", "sparsities": [0.5], "accuracy": [[nm_acc] * 2], "loss": [[0.1, 0.1]]}]
    return {"timings": {"records": recs}, "accuracy": acc}


def test_equal_accuracy_names_the_fastest_granularity_per_batch_and_budget():
    # block at 90% is fastest at batch 1; at batch 256 2:4 N:M beats it; neuron pruning loses everywhere
    res = granular({1: {0.25: 2.0, 0.9: 0.2}, 256: {0.25: 2.0, 0.9: 0.6}}, {1: 0.5, 256: 0.3})
    v = verdict(res)
    ea = v["equal_accuracy"]
    assert ea["methods"] == ["weight", "nm", "block", "neuron"]          # finest to coarsest
    by = {(r["budget"], r["batch"]): r for r in ea["rows"]}
    assert {k: r["granularity"] for k, r in by.items()} == {(0.005, 1): "block", (0.005, 256): "nm",
                                                            (0.01, 1): "block", (0.01, 256): "nm"}
    row = by[0.005, 1]
    assert row["by_method"]["block"]["engine"] == "bsr" and row["by_method"]["block"]["sparsity"] == 0.9
    assert row["by_method"]["nm"]["seconds"] == 0.5 and row["by_method"]["weight"]["engine"] == "csr"
    assert row["best_weight"] is row["by_method"]["weight"] and row["best_neuron"] is row["by_method"]["neuron"]
    line = analysis.headline(v)[1]
    assert "fastest granularity within 0.5 | 1 point(s)" in line
    assert "batch 1: block (bsr ×5.0) | block (bsr ×5.0); batch 256: N:M (nm ×3.3) | N:M (nm ×3.3)" in line


def test_a_granularity_that_loses_accuracy_does_not_win():
    # block at 90% is the fastest but loses 0.8 points: within 0.5 points weight wins, within 1 point block
    res = granular({1: {0.25: 2.0, 0.9: 0.1}, 256: {0.25: 2.0, 0.9: 0.1}}, {1: 0.5, 256: 0.5}, block_acc=0.972)
    by = {(r["budget"], r["batch"]): r for r in verdict(res)["equal_accuracy"]["rows"]}
    assert by[0.005, 1]["granularity"] == "weight" and by[0.005, 1]["by_method"]["block"]["sparsity"] == 0.25
    assert by[0.01, 1]["granularity"] == "block"


def test_verdict_partly_and_unknown():
    v = verdict(crafted({0.25: 0.6, 0.9: 0.5}, {0.25: 3.0, 0.9: 0.1}))
    assert (v["equal_k"]["answer"], v["equal_accuracy"]["answer"], v["answer"]) == ("true", "false", "partly")
    v = verdict({"accuracy": crafted({0.25: 1, 0.9: 1}, {0.25: 1, 0.9: 1})["accuracy"]})
    assert v["answer"] == "unknown" and "timings" in v["sentence"]


def test_equal_sparsity_flags_a_win_within_timing_noise():
    v = crafted({0.25: 0.98, 0.9: 0.05}, {0.25: 3.0, 0.9: 0.4})
    for r in v["timings"]["records"]:
        r["spread"] = 1.1
    row = verdict(v)["equal_k"]["rows"][0]
    assert row["neuron_faster"] and row["within_noise"]
    assert "within timing noise" in verdict(v)["sentence"]


def test_coarse_grid_uses_the_50_percent_boundary():
    recs = [rec("dense", "weight", k, 1.0) for k in (0.0, 0.5, 0.9)]
    recs += [rec("shrunk", "neuron", k, s) for k, s in ((0.0, 1.0), (0.5, 0.4), (0.9, 0.1))]
    ek = verdict({"timings": {"records": recs}})["equal_k"]
    assert [r["sparsity"] for r in ek["rows"]] == [0.5] and "strictly" in ek["note"]


# ---------------------------------------------------------------- Pareto front

def test_pareto_front_hand_made():
    pts = [{"name": n, "seconds": s, "accuracy": a} for n, s, a in
           [("a", 1.0, 0.90), ("b", 2.0, 0.95), ("c", 2.0, 0.93), ("d", 3.0, 0.94), ("e", 0.5, 0.80),
            ("f", 4.0, 0.99), ("g", 0.5, 0.70)]]
    front = pareto_front(None, None, 1, points=pts)
    assert [p["name"] for p in front] == ["e", "a", "b", "f"]


def test_pareto_front_of_fixture_is_non_dominated(results_folder):
    from sparsenet.results import load_results
    res = load_results(results_folder)
    pts = candidates(res["accuracy"], res["timings"], 256)
    front = pareto_front(res["accuracy"], res["timings"], 256)
    for p in front:
        assert not any(q["seconds"] < p["seconds"] and q["accuracy"] >= p["accuracy"] for q in pts)
    assert [p["seconds"] for p in front] == sorted(p["seconds"] for p in front)


# ---------------------------------------------------------------- speed-up curves and peaks

def test_speedup_curves_pair_every_engine_with_its_break_even():
    t = csr_timings([0.0, 0.5, 0.9], [2.0, 1.0, 0.5])
    (c,) = speedup_curves(t)
    assert (c["engine"], c["batch"], c["threads"]) == ("csr", 1, 1)
    assert c["speedups"] == speedups(t, "csr", "weight", 1, 1)
    assert c["break_even"] == break_even(t, "csr", "weight", 1, 1)
    assert speedup_curves(None) == []


def test_above_peak_counts_records_faster_than_the_measured_peak():
    t = csr_timings([0.5], [0.5])  # 1000 flops in 1 s and in 0.5 s: 1e-6 and 2e-6 GFLOP/s
    machine = {"peaks": {"sgemm_gflops": {"1": 1.5e-6}}}
    assert above_peak(t, machine, 1) == 1
    assert above_peak(t, None, 1) == 0 and above_peak(t, machine, 2) == 0


# ---------------------------------------------------------------- the study's summary numbers

def test_accuracy_and_times_at_the_preferred_sparsity():
    res = crafted({0.25: 0.6, 0.9: 0.05}, {0.25: 3.0, 0.9: 0.4}, weight_acc=0.9, neuron_acc=0.5)
    a = accuracy_at(res["accuracy"])
    assert a["sparsity"] == 0.9 and a["dense"] == pytest.approx(0.98)
    assert [(c["method"], c["accuracy"]) for c in a["curves"]] == [("weight", 0.9), ("neuron", 0.5)]
    assert accuracy_at(res["accuracy"], 0.25)["curves"][1]["accuracy"] == pytest.approx(0.98)
    t = times_at(res["timings"])
    assert (t["sparsity"], t["batch"], t["threads"]) == (0.9, 1, 1)
    assert t["seconds"] == {"csr": 0.4, "shrunk": 0.05}
    assert t["dense_s"] == 1.0 and t["dense_sparsity"] == 0.0       # dense timed at k = 0 only
    only_low = {"records": [r for r in res["timings"]["records"] if r["sparsity"] < 0.5]}
    assert times_at(only_low)["sparsity"] == 0.25                     # no 90%: the largest k


def test_timing_quality_counts_flags_and_spreads():
    recs = [dict(rec("csr", "weight", 0.5, 1.0), spread=s, flagged=s > 1.2) for s in (1.0, 1.1, 1.3, 1.5)]
    assert timing_quality(recs) == {"n": 4, "flagged": 2, "median_spread": 1.3, "worst_spread": 1.5}


def test_kernels_used_groups_plans_by_engine_batch_threads(results_folder):
    from sparsenet.results import load_results
    used = kernels_used(load_results(results_folder)["timings"])
    assert {u["engine"] for u in used} == {"dense", "csr", "csr-scipy", "shrunk"}
    sell = [u for u in used if u["engine"] == "csr" and u["batch"] == 1 and u["threads"] == 1]
    assert len(sell) == 1 and sell[0]["kernel"].startswith("sell;") and len(sell[0]["sparsities"]) == len(names.SPARSITIES)
    assert kernels_used({"records": [rec("csr", "weight", 0.5, 1.0)]}) == []      # records without plans


def test_break_even_against_the_fastest_dense():
    """Our one-call dense (dense-fused) twice as fast as numpy's chain moves csr's break-even up."""
    from sparsenet import analysis
    t = csr_timings([0.0, 0.5, 0.9], [2.0, 1.0, 0.25])          # numpy dense 1.0 s
    assert analysis.fastest_dense(t, 1, 1) == ("dense", 1.0)
    assert analysis.break_even(t, "csr", "weight", 1, 1) == 0.5
    t["records"].append(rec("dense-fused", "weight", 0.0, 0.5))
    assert analysis.fastest_dense(t, 1, 1) == ("dense-fused", 0.5)
    # vs 0.5 s: speed-ups 0.25, 0.5, 2.0 -> crossing halfway between k = 0.5 and 0.9
    assert analysis.break_even(t, "csr", "weight", 1, 1, "fastest") == pytest.approx(0.5 + 0.5 / 1.5 * 0.4)
    assert analysis.break_even(t, "csr", "weight", 1, 1) == 0.5  # numpy's baseline unchanged
    rows = analysis.speedups(t, "csr", "weight", 1, 1, "fastest")
    assert [r["dense_s"] for r in rows] == [0.5, 0.5, 0.5]
    assert analysis.fastest_dense({"records": []}, 1, 1) is None
    assert analysis.speedups(t, "csr", "weight", 256, 1, "fastest") == []


def test_activation_rows_and_skip_gains():
    from sparsenet import analysis
    act = {"records": [{"seed": s, "method": "none", "sparsity": 0.0, "batch": 1, "zero_fraction": [0.8, 0.5 + s / 10]}
                       for s in (0, 1)] + [{"seed": 0, "method": "weight", "sparsity": 0.9, "batch": 1,
                                            "zero_fraction": [0.8, 0.9]}]}
    assert analysis.activation_rows(act) == [{"batch": 1, "zero_fraction": [0.8, pytest.approx(0.55)]}]
    assert analysis.activation_rows(act, 0.9) == [{"batch": 1, "zero_fraction": [0.8, 0.9]}]
    t = {"records": [rec("dense-fused", "weight", 0.0, 2.0), rec("dense-skip", "weight", 0.0, 1.0),
                     rec("csr", "weight", 0.9, 0.3), rec("csr-skip", "weight", 0.9, 0.2)]}
    gains = analysis.skip_gains(t)
    assert [(g["engine"], g["base"], g["sparsity"], g["speedup"]) for g in gains] == [
        ("dense-skip", "dense-fused", 0.0, 2.0), ("csr-skip", "csr", 0.9, pytest.approx(1.5))]


def test_equal_sparsity_decisions_from_rounds():
    """With per-round times the equal-k rows carry a 95 % interval and say holds / fails / undecided."""
    from sparsenet import analysis

    def r(engine, method, k, rounds, batch):
        x = rec(engine, method, k, sorted(rounds)[len(rounds) // 2], batch=batch)
        x["per_round_s"] = list(rounds)
        return x
    t = {"records": [
        r("dense", "none", 0.0, [1.0, 1.01, 0.99, 1.0, 1.02], 1), r("shrunk", "neuron", 0.25, [0.5, 0.51, 0.49, 0.5, 0.5], 1),
        r("dense", "none", 0.0, [1.0, 1.01, 0.99, 1.0, 1.02], 256), r("shrunk", "neuron", 0.25, [2.0, 2.1, 1.9, 2.0, 2.0], 256),
        r("dense", "none", 0.0, [1.0, 1.3, 0.7, 1.0, 1.2], 16), r("shrunk", "neuron", 0.25, [1.0, 0.8, 1.25, 0.95, 1.1], 16)]}
    ek = analysis.equal_sparsity(t, [1, 16, 256], 1)
    by = {row["batch"]: row["ci"]["decision"] for row in ek["rows"]}
    assert by == {1: "holds", 16: "undecided within noise", 256: "fails"}
    row1 = next(row for row in ek["rows"] if row["batch"] == 1)
    assert row1["ci"]["low"] < row1["ratio"] == 2.0 < row1["ci"]["high"] or row1["ci"]["low"] <= 2.0 <= row1["ci"]["high"]
    v = {"equal_k": ek, "equal_accuracy": {"rows": []}, "threads": 1, "batches": [1, 16, 256]}
    lines = analysis.headline(v)
    assert lines == ["At equal sparsity (k < 50%) the claim that neuron pruning is faster holds at batch 1; "
                     "is undecided within noise at batch 16; fails at batch 256."]
    # the answer and the noise flags follow the same intervals: batch 16's medians say "neuron faster"
    # but its interval spans 1 (once "true", "within noise" by the spread only)
    assert ek["answer"] == "partly"                               # holds at 1, fails at 256; 16 undecided
    assert {row["batch"]: row["within_noise"] for row in ek["rows"]} == {1: False, 16: True, 256: False}
    assert analysis.decision_detail(ek["rows"]) == ("holds at batch 1; is undecided within noise at batch 16; "
                                                    "fails at batch 256")
    only16 = [row for row in ek["rows"] if row["batch"] == 16]
    assert analysis._decided_answer(only16) == "undecided" and analysis.decision_detail(only16) == ""
    assert analysis._decided_answer([row for row in ek["rows"] if row["batch"] != 256]) == "true"
    # a row where neither side was timed (equal accuracy: no weight- nor neuron-pruned net in the
    # budget) decides nothing: it once counted as "fails"
    untimed = {"batch": 4096, "ci": None, "neuron_faster": None}
    assert analysis._decisions(ek["rows"] + [untimed]) == analysis._decisions(ek["rows"])
    assert analysis._decisions([untimed]) == {} and analysis._decided_answer([untimed]) == "unknown"
    v16 = {"equal_k": {**ek, "rows": only16, "answer": "undecided"}, "threads": 1, "batches": [16],
           "equal_accuracy": {"rows": [], "answer": "unknown", "missing": "accuracy.json missing"}}
    assert analysis.verdict_sentence({**v16, "answer": "undecided"}).startswith("Undecided within noise (1 thread): ")


def test_within_noise_without_an_interval_uses_the_spread():
    from sparsenet import analysis
    assert analysis._within_noise(None, 1.2, 1.3) and not analysis._within_noise(None, 1.4, 1.3)
    assert analysis._within_noise({"decision": "undecided within noise"}, 3.0, 1.1)
    assert not analysis._within_noise({"decision": "holds"}, 1.01, 1.5)
    assert analysis._decided_answer([]) == "unknown"
    assert analysis._decided_answer([{"ci": None, "neuron_faster": False}]) == "false"


def test_speed_ups_pair_each_k_with_the_dense_timed_beside_it():
    """Dense timed at every k (the study's default): each k's speed-up uses the dense record of that k,
    timed in the same unit (a slow spell of the machine hits both); without one, the reference."""
    recs = [rec("dense", "weight", 0.0, 1.0), rec("dense", "weight", 0.5, 2.0),     # k = 0.5: a slow spell
            rec("csr", "weight", 0.5, 1.0), rec("bsr", "block", 0.5, 0.5), rec("csr", "weight", 0.9, 0.25),
            rec("dense-fused", "weight", 0.0, 0.8), rec("dense-fused", "weight", 0.5, 1.6)]
    t = {"records": recs}
    assert dense_reference(t, 1, 1, 0.5) == 2.0 and dense_reference(t, 1, 1, 0.9) == 1.5     # 0.9: the median
    assert dense_reference(t, 1, 1) == 1.5
    assert [(r["sparsity"], r["speedup"]) for r in speedups(t, "csr", "weight", 1, 1)] == [(0.5, 2.0), (0.9, 6.0)]
    assert [r["speedup"] for r in speedups(t, "bsr", "block", 1, 1)] == [4.0]            # other methods too
    fastest = speedups(t, "csr", "weight", 1, 1, baseline="fastest")
    assert [(r["sparsity"], r["dense_s"]) for r in fastest] == [(0.5, 1.6), (0.9, 0.8)]   # fused at k, else at 0
    acc = {"sparsities": [0.0, 0.5], "seeds": [0], "dense": {"accuracy": [0.98]},
           "curves": [{"method": "weight", "recovery": "oneshot", "accuracy": [[0.98], [0.97]]}]}
    row = next(c for c in candidates(acc, t, 1, 1) if c["engine"] == "csr")
    assert row["speedup"] == 2.0


def test_the_sgemm_peak_is_at_least_the_fastest_dense_call():
    """A dense call is sgemm too: when the machine stage caught a slow spell, the timings' fastest dense
    call is the peak fractions are taken of; other engines' calls never raise it."""
    from sparsenet.analysis import sgemm_peak
    machine = {"peaks": {"sgemm_gflops": {"1": 1.0, "2": 5.0}}}
    # rec's flops are 1000: 1e-7 s is 10 GFLOP/s, 4e-7 s 2.5, 1e-9 s 1000
    t = {"records": [rec("dense", "weight", 0.0, 4e-7), rec("dense-fused", "weight", 0.5, 1e-7),
                     rec("csr", "weight", 0.9, 1e-9), rec("dense", "weight", 0.0, 4e-7, threads=2)]}
    assert sgemm_peak(machine, 1) == 1.0                                      # the machine stage's alone
    assert sgemm_peak(machine, 1, t) == pytest.approx(10.0)                  # dense-fused's 10 beats it
    assert sgemm_peak(machine, 2, t) == 5.0                                  # dense's 2.5 does not
    assert sgemm_peak({}, 1, t) == pytest.approx(10.0) and sgemm_peak({}, 1, {"records": []}) is None
    assert sgemm_peak(machine, 1, {"records": [rec("csr", "weight", 0.9, 1e-9)]}) == 1.0


def test_the_sgemm_peak_timed_beside_a_k_is_the_one_its_records_are_divided_by():
    """timings.json "peaks" (an sgemm timed in the rounds of each k): a record's peak is the one timed
    beside it, or a dense call of those rounds where faster; without k the median over k; the machine
    stage's peak and other ks' dense calls do not enter; the other thread count falls back."""
    from sparsenet.analysis import run_peak, sgemm_peak
    machine = {"peaks": {"sgemm_gflops": {"1": 500.0, "2": 5.0}}}
    peaks = [rec("sgemm-peak", "none", k, s) for k, s in ((0.0, 1e-7), (0.5, 2e-7), (0.9, 4e-7))]   # 10, 5, 2.5 GFLOP/s
    t = {"records": [rec("dense", "weight", 0.0, 5e-8), rec("dense", "weight", 0.9, 8e-7),       # 20, 1.25
                     rec("csr", "weight", 0.5, 1e-9), rec("dense", "weight", 0.0, 4e-7, threads=2)], "peaks": peaks}
    assert run_peak(t, 1, 0.5) == pytest.approx(5.0) and run_peak(t, 1, 0.9) == pytest.approx(2.5)
    assert run_peak(t, 1) == pytest.approx(5.0)                                # the median over k
    assert run_peak(t, 1, 0.7) == pytest.approx(5.0)                           # a k without one: the median
    assert run_peak(t, 2) is None and run_peak({"records": []}, 1) is None and run_peak(None, 1) is None
    assert sgemm_peak(machine, 1, t, 0.9) == pytest.approx(2.5)                # not machine.json's 500
    assert sgemm_peak(machine, 1, t, 0.5) == pytest.approx(5.0)                # csr's 1000 is no dense call
    assert sgemm_peak(machine, 1, t, 0.0) == pytest.approx(20.0)               # dense beside it was faster
    assert sgemm_peak(machine, 1, t) == pytest.approx(20.0)                    # no k: every dense call
    assert sgemm_peak(machine, 2, t, 0.9) == 5.0                               # no peak timed at 2 threads


def test_speedups_pair_the_rounds_of_one_run():
    """An engine and its dense baseline timed in one run pair round by round (speedup_at "paired")."""
    t = csr_timings([0.5], [0.5])
    phase = [1.0, 1.5, 1.5, 1.0, 1.5]

    def timed(r, rounds, at):
        return {**r, "per_round_s": rounds, "median_s": sorted(rounds)[2], "timed_at": at, "machine": "m"}

    t["records"] = [timed(rec("dense", "weight", 0.5, 1.0), [2.0 * p for p in phase], 7.0),
                    timed(rec("csr", "weight", 0.5, 1.0), [1.0 * p for p in phase], 7.0)]
    (row,) = speedups(t, "csr", "weight", 1, 1)
    assert row["paired"] and row["speedup"] == 2.0 and row["dense_s"] == 3.0
    # csr timed in another run, in a faster spell: the ratio of medians, 3.0 / 1.0
    t["records"][1] = timed(rec("csr", "weight", 0.5, 1.0), [1.0, 1.0, 1.0, 1.0, 1.5], 8.0)
    (row,) = speedups(t, "csr", "weight", 1, 1)
    assert not row["paired"] and row["speedup"] == 3.0
    assert analysis.ratio_interval(t, ("csr", "weight", 0.5, 1, 1), ("dense", "weight", 0.5, 1, 1))["ratio"] == 1 / 3
    assert analysis.speedup_at(t, "csr", "weight", 0.9, 1, 1) is None
