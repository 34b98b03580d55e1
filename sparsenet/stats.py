"""Confidence intervals for timings: bootstrap over the per-round times a timing record keeps.

A timing record (results.py) holds `per_round_s`, the per-call time of each interleaved round.
`median_ci` resamples those rounds; `ratio_ci` resamples two records' rounds independently and
gives the interval of the ratio of their medians (a speed-up); `decide` turns an interval into
"holds", "fails" or "undecided within noise" for a claim "ratio > 1". Seeded: the same records give
the same intervals.

Two records timed in one run (`paired`: the same "timed_at") pair round by round: round r of two
cases of one cell (timing.round_order: an engine and its dense baselines at one batch and thread
count) was timed back to back. Their ratio is then the median of the per-round ratios
(`record_ratio_ci`): a slow spell of the machine that lasts a few seconds hits both sides of a pair,
where it moves a ratio of medians (on our VM, whose speed flips between two levels ~1.5x apart, the
median of one record could fall in the fast level and the other's in the slow one).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

LEVEL = 0.95          # confidence level of every interval
N_BOOT = 2000         # bootstrap resamples


def rounds_of(record) -> Optional[np.ndarray]:
    """The per-round times of a record, or None for records written before they were kept."""
    t = record.get("per_round_s")
    return None if not t else np.asarray(t, dtype=float)


def _boot_medians(t: np.ndarray, rng, n_boot: int) -> np.ndarray:
    idx = rng.integers(0, t.size, size=(n_boot, t.size))
    return np.median(t[idx], axis=1)


def median_ci(samples: Sequence[float], level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0) -> tuple:
    """(median, low, high): the median of `samples` and its percentile-bootstrap interval."""
    t = np.asarray(samples, dtype=float)
    if t.size == 0:
        raise ValueError("median_ci needs at least one sample")
    meds = _boot_medians(t, np.random.default_rng(seed), n_boot)
    a = (1 - level) / 2
    return float(np.median(t)), float(np.quantile(meds, a)), float(np.quantile(meds, 1 - a))


def ratio_ci(num: Sequence[float], den: Sequence[float], level: float = LEVEL, n_boot: int = N_BOOT,
             seed: int = 0) -> tuple:
    """(ratio, low, high) of median(num) / median(den), each side resampled on its own."""
    a_t, b_t = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a_t.size == 0 or b_t.size == 0:
        raise ValueError("ratio_ci needs samples on both sides")
    rng = np.random.default_rng(seed)
    ratios = _boot_medians(a_t, rng, n_boot) / _boot_medians(b_t, rng, n_boot)
    a = (1 - level) / 2
    return (float(np.median(a_t) / np.median(b_t)), float(np.quantile(ratios, a)),
            float(np.quantile(ratios, 1 - a)))


def paired(a, b) -> bool:
    """Whether two timing records pair round by round: timed in one run of timing.time_cases (the same
    "timed_at" and machine), each with its per-round times."""
    at = a.get("timed_at")
    return (at is not None and at == b.get("timed_at") and a.get("machine") == b.get("machine")
            and bool(a.get("per_round_s")) and bool(b.get("per_round_s")))


def timed_beside(peak, record) -> bool:
    """Whether the sgemm peak record `peak` was timed back to back with `record`: in its run (paired),
    at its thread count, in the cell of its batch (the peak's "beside", timing.peak_case)."""
    return (peak.get("beside") == record["batch"] and int(peak["threads"]) == int(record["threads"])
            and paired(peak, record))


def round_ratios(num, den) -> np.ndarray:
    """The per-round ratios num / den of two paired records, over the rounds both were timed in (a
    case given fewer rounds sits out the last ones: timing.time_cases)."""
    a, b = rounds_of(num), rounds_of(den)
    n = min(a.size, b.size)
    return a[:n] / b[:n]


def record_ratio_ci(num, den, level: float = LEVEL, seed: int = 0) -> Optional[tuple]:
    """(ratio, low, high) of record `num`'s time over record `den`'s: the median of their per-round
    ratios and its bootstrap interval when they pair (paired), else the ratio of their medians with
    each side resampled on its own (ratio_ci); None when either lacks its per-round times."""
    if paired(num, den):
        return median_ci(round_ratios(num, den), level=level, seed=seed)
    a, b = rounds_of(num), rounds_of(den)
    if a is None or b is None:
        return None
    return ratio_ci(a, b, level=level, seed=seed)


def _speedup_samples(dense, engine, rng, n_boot: int) -> tuple:
    """(speed-up, its bootstrap resamples) of record `engine` over record `dense`, paired when they pair."""
    if paired(dense, engine):
        r = round_ratios(dense, engine)
        return float(np.median(r)), _boot_medians(r, rng, n_boot)
    d, e = rounds_of(dense), rounds_of(engine)
    return float(np.median(d) / np.median(e)), _boot_medians(d, rng, n_boot) / _boot_medians(e, rng, n_boot)


def decide(low: float, high: float, threshold: float = 1.0) -> str:
    """'holds' when the whole interval is above threshold, 'fails' when below, else 'undecided within noise'."""
    if low > threshold:
        return "holds"
    if high < threshold:
        return "fails"
    return "undecided within noise"


def speedup_ci(dense_record, record, level: float = LEVEL, seed: int = 0) -> Optional[tuple]:
    """(speed-up, low, high) of `record` over `dense_record` (dense time / engine time; paired
    rounds when the two pair: record_ratio_ci), or None when either record lacks its per-round times."""
    return record_ratio_ci(dense_record, record, level=level, seed=seed)


def break_even_ci(ks: Sequence[float], dense: Sequence, engine: Sequence, level: float = LEVEL,
                  n_boot: int = 500, seed: int = 0) -> Optional[tuple]:
    """(k, low, high): the break-even sparsity (as analysis.break_even: interpolated crossing of the
    speed-up through 1, staying above it up the grid) and its bootstrap interval, from per-round
    times of dense and engine at each k (paired rounds where the two records at a k pair). A resample
    that never breaks even counts as k = 1 (beyond the grid); None when any record lacks rounds."""
    if any(rounds_of(r) is None for r in list(dense) + list(engine)) or not ks:
        return None
    rng = np.random.default_rng(seed)
    samples = [_speedup_samples(d, e, rng, n_boot) for d, e in zip(dense, engine)]
    point = _crossing(ks, [s for s, _ in samples])
    sims = [_crossing(ks, [boot[i] for _, boot in samples]) for i in range(n_boot)]
    sims = np.asarray([1.0 if s is None else s for s in sims])
    a = (1 - level) / 2
    return (point, float(np.quantile(sims, a)), float(np.quantile(sims, 1 - a)))


def _crossing(ks, speedups):
    """Smallest k from which the speed-up is >= 1 and stays so up the grid (interpolated); None: never."""
    below = [i for i, s in enumerate(speedups) if s < 1.0]
    if not below:
        return float(ks[0])
    i = below[-1]
    if i == len(ks) - 1:
        return None
    a, b = speedups[i], speedups[i + 1]
    return float(ks[i] + (1.0 - a) / (b - a) * (ks[i + 1] - ks[i]))
