"""Bootstrap intervals of timings (stats.py)."""
import numpy as np
import pytest

from sparsenet import stats


def test_median_ci_contains_the_median_and_narrows_with_data():
    rng = np.random.default_rng(0)
    few = rng.normal(1.0, 0.1, 7)
    many = rng.normal(1.0, 0.1, 200)
    m, lo, hi = stats.median_ci(few)
    assert lo <= m <= hi and m == np.median(few)
    m2, lo2, hi2 = stats.median_ci(many)
    assert hi2 - lo2 < hi - lo and lo2 < 1.0 < hi2
    assert stats.median_ci(few) == stats.median_ci(few)          # seeded
    with pytest.raises(ValueError, match="at least one sample"):
        stats.median_ci([])


def test_ratio_ci_and_decisions():
    rng = np.random.default_rng(1)
    slow = rng.normal(2.0, 0.05, 9)
    fast = rng.normal(1.0, 0.05, 9)
    r, lo, hi = stats.ratio_ci(slow, fast)
    assert lo < r < hi and 1.7 < lo and hi < 2.3
    assert stats.decide(lo, hi) == "holds"
    assert stats.decide(*stats.ratio_ci(fast, slow)[1:]) == "fails"
    noisy = rng.normal(1.0, 0.3, 9)
    assert stats.decide(*stats.ratio_ci(noisy, rng.normal(1.0, 0.3, 9))[1:]) == "undecided within noise"
    assert stats.decide(0.9, 1.0) == "undecided within noise" and stats.decide(1.0, 1.1) == "undecided within noise"


def test_speedup_ci_needs_rounds():
    assert stats.speedup_ci({"median_s": 1.0}, {"per_round_s": [1.0]}) is None
    r = stats.speedup_ci({"per_round_s": [2.0, 2.0, 2.0]}, {"per_round_s": [1.0, 1.0, 1.0]})
    assert r == (2.0, 2.0, 2.0)


def test_break_even_ci():
    ks = [0.0, 0.5, 0.9]
    dense = [{"per_round_s": [1.0] * 5}] * 3
    engine = [{"per_round_s": [2.0] * 5}, {"per_round_s": [1.0] * 5}, {"per_round_s": [0.5] * 5}]
    k, lo, hi = stats.break_even_ci(ks, dense, engine)
    assert k == lo == hi == 0.5                                   # exact crossing at 0.5, no noise
    never = [{"per_round_s": [2.0] * 5}] * 3
    assert stats.break_even_ci(ks, dense, never)[0] is None
    assert stats.break_even_ci(ks, dense, never)[1] == 1.0        # resamples beyond the grid
    assert stats.break_even_ci(ks, [{"median_s": 1}] * 3, engine) is None
    rng = np.random.default_rng(2)
    noisy = [{"per_round_s": list(rng.normal(s, 0.05 * s, 7))} for s in (2.0, 1.0, 0.5)]
    k, lo, hi = stats.break_even_ci(ks, dense, noisy)
    assert lo <= k <= hi and 0.3 < lo < 0.5 < hi < 0.7


def _run(rounds, at=1.0, machine="m"):
    return {"per_round_s": list(rounds), "timed_at": at, "machine": machine}


def test_paired_records_give_the_median_of_round_ratios():
    """Two records of one run pair round by round: a machine whose speed flips between two levels
    (x1.5, as our VM did) hits both sides of each pair, while the medians can fall in different levels."""
    fast, slow = 1.0, 1.5
    phase = [fast, slow, slow, fast, slow, fast, fast]                    # the machine's level each round
    dense = _run([4.0 * p for p in phase])
    engine = _run([1.0 * p for p in phase])
    assert stats.paired(dense, engine)
    assert stats.round_ratios(dense, engine).tolist() == [4.0] * 7
    assert stats.record_ratio_ci(dense, engine) == (4.0, 4.0, 4.0)
    assert stats.speedup_ci(dense, engine) == (4.0, 4.0, 4.0)
    # the same rounds from two runs (or records without a run) are set against each other as medians
    other = _run(engine["per_round_s"], at=2.0)
    assert not stats.paired(dense, other) and not stats.paired(dense, _run(phase, machine="n"))
    assert not stats.paired({"per_round_s": [1.0]}, {"per_round_s": [1.0]})
    shifted = _run([1.0 * p for p in phase[3:] + phase[:3]], at=2.0)   # timed in another phase
    r, lo, hi = stats.record_ratio_ci(dense, shifted)
    assert r == pytest.approx(np.median(dense["per_round_s"]) / np.median(shifted["per_round_s"]))
    assert stats.record_ratio_ci(dense, {"median_s": 1.0}) is None
    # a case given fewer rounds: the rounds both were timed in
    assert stats.round_ratios(dense, _run([2.0, 3.0])).tolist() == [2.0, 2.0]


def test_break_even_ci_pairs_rounds_where_it_can():
    ks = [0.0, 0.5, 0.9]
    phase = [1.0, 1.5, 1.5, 1.0, 1.5]
    dense = [_run([p for p in phase], at=k) for k in ks]
    engine = [_run([s * p for p in phase], at=k) for k, s in zip(ks, (2.0, 1.0, 0.5))]
    assert stats.break_even_ci(ks, dense, engine) == (0.5, 0.5, 0.5)     # exact per round: no noise left
