"""Confidence intervals for timings: bootstrap over the per-round times a timing record keeps.

A timing record (results.py) holds `per_round_s`, the per-call time of each interleaved round.
`median_ci` resamples those rounds; `ratio_ci` resamples two records' rounds independently and
gives the interval of the ratio of their medians (a speed-up); `decide` turns an interval into
"holds", "fails" or "undecided within noise" for a claim "ratio > 1". Seeded: the same records give
the same intervals.
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


def decide(low: float, high: float, threshold: float = 1.0) -> str:
    """'holds' when the whole interval is above threshold, 'fails' when below, else 'undecided within noise'."""
    if low > threshold:
        return "holds"
    if high < threshold:
        return "fails"
    return "undecided within noise"


def speedup_ci(dense_record, record, level: float = LEVEL, seed: int = 0) -> Optional[tuple]:
    """(speed-up, low, high) of `record` over `dense_record` (dense time / engine time), or None
    when either record lacks its per-round times."""
    d, e = rounds_of(dense_record), rounds_of(record)
    if d is None or e is None:
        return None
    return ratio_ci(d, e, level=level, seed=seed)


def break_even_ci(ks: Sequence[float], dense: Sequence, engine: Sequence, level: float = LEVEL,
                  n_boot: int = 500, seed: int = 0) -> Optional[tuple]:
    """(k, low, high): the break-even sparsity (as analysis.break_even: interpolated crossing of the
    speed-up through 1, staying above it up the grid) and its bootstrap interval, from per-round
    times of dense and engine at each k. A resample that never breaks even counts as k = 1 (beyond
    the grid); None when any record lacks rounds."""
    d = [rounds_of(r) for r in dense]
    e = [rounds_of(r) for r in engine]
    if any(x is None for x in d + e) or not ks:
        return None
    point = _crossing(ks, [np.median(a) / np.median(b) for a, b in zip(d, e)])
    rng = np.random.default_rng(seed)
    boot_d = [_boot_medians(a, rng, n_boot) for a in d]
    boot_e = [_boot_medians(b, rng, n_boot) for b in e]
    sims = [_crossing(ks, [bd[i] / be[i] for bd, be in zip(boot_d, boot_e)]) for i in range(n_boot)]
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
