"""Pure analysis of a results folder: the plain JSON dicts of `sparsenet.results` in, plain values out.

No file I/O, Markdown or figures here: `sparsenet.report`, `sparsenet.plots` and the notebook all call these
functions, so no number in the report is computed anywhere else.

Timing conventions: each engine runs the net of its method (names.ENGINE_METHOD: a weight-pruned net on
`dense`, `csr` and `csr-scipy`, a neuron-pruned one on `shrunk`, BLAS on the physically smaller
net, a block-pruned one on `bsr` and `bsr-scipy`, an N:M-pruned one on `nm`). "Speed-up" is dense time / engine time, with the dense time
taken from the same (method, sparsity) when the study timed it, else from the unpruned dense net. Where
the engine's record and the dense one were timed in one run (stats.paired: their rounds back to back,
timing.round_order), the speed-up is the median of their per-round ratios (`paired_ratio`), else the
ratio of their medians.
"""
from __future__ import annotations

import math
from statistics import mean, median, median_high, pstdev

from sparsenet.names import DENSE_BASELINES, ENGINES, GRANULARITIES, UNPRUNED, engine_rank, engines_of, method_of

CLAIM = ("below 50% sparsity neuron pruning is more computationally efficient [than weight pruning], "
         "as we always deal with dense matrices")

# ---------------------------------------------------------------- timing queries

def sparsity_key(k) -> float:
    """A sparsity rounded for comparison: JSON floats, so 0.95 == 0.9500000001."""
    return round(float(k), 6)


def select(records, **where) -> list:
    """The records whose fields equal every given value (`sparsity` compared rounded); None means any."""
    out = []
    for r in records:
        ok = True
        for field, value in where.items():
            if value is None:
                continue
            got = r.get(field)
            if field == "sparsity":
                ok = got is not None and sparsity_key(got) == sparsity_key(value)
            else:
                ok = got == value
            if not ok:
                break
        if ok:
            out.append(r)
    return out


def records_of(timings) -> list:
    """The timing records of a timings (or scaling) dict; [] when it is None."""
    return list((timings or {}).get("records", []))


def thread_counts(timings) -> list:
    """Sorted thread counts present in the timings."""
    return sorted({int(r["threads"]) for r in records_of(timings)})


def batch_sizes(timings) -> list:
    """Sorted batch sizes present in the timings."""
    return sorted({int(r["batch"]) for r in records_of(timings)})


def default_threads(timings):
    """The thread count the verdict uses unless told otherwise: the largest one measured (None if no timings)."""
    counts = thread_counts(timings)
    return counts[-1] if counts else None


def engines_present(timings) -> list:
    """Engines with at least one record, in the canonical order (unknown engines last)."""
    seen = {r["engine"] for r in records_of(timings)}
    return [e for e in ENGINES if e in seen] + sorted(seen - set(ENGINES))


def dense_reference(timings, batch, threads, sparsity=None):
    """Median seconds of the unpruned dense net at (batch, threads). With `sparsity`: of the dense records
    at that k when there are any (timed in the same unit as that k's engines, interleaved with them: a
    slow spell of the machine hits both sides of the ratio; the study's --dense-every-k). Otherwise of
    the method "none" records if there are any, else of every dense record (dense time does not depend on
    the zeros, and one record can be noisy)."""
    pick = dense_records(timings, batch, threads, sparsity)
    return float(median(r["median_s"] for r in pick)) if pick else None


def dense_records(timings, batch, threads, sparsity=None) -> list:
    """The records dense_reference takes its median from ([] if none)."""
    dense = select(records_of(timings), engine="dense", batch=batch, threads=threads)
    for pick in (select(dense, sparsity=sparsity) if sparsity is not None else [], select(dense, method="none"), dense):
        if pick:
            return pick
    return []


def _fused_records(timings, batch, threads, sparsity=None) -> list:
    fused = select(records_of(timings), engine="dense-fused", batch=batch, threads=threads)
    return (select(fused, sparsity=sparsity) if sparsity is not None else []) or select(fused, sparsity=0.0)


def fastest_dense(timings, batch, threads, sparsity=None):
    """(engine, seconds) of the fastest dense baseline on the unpruned net at (batch, threads):
    numpy's chain (dense) or our one-call forward (dense-fused, timed at small batches); None if neither.
    With `sparsity`: each timed at that k when it was (see dense_reference), else at k = 0."""
    times = {e: float(median(r["median_s"] for r in recs)) for e, recs in _dense_baselines(timings, batch, threads, sparsity).items()}
    return min(times.items(), key=lambda kv: kv[1]) if times else None


def _dense_baselines(timings, batch, threads, sparsity=None) -> dict:
    """{baseline: its records} of the dense baselines timed at (batch, threads) (fastest_dense's choice)."""
    found = {"dense": dense_records(timings, batch, threads, sparsity),
             "dense-fused": _fused_records(timings, batch, threads, sparsity)}
    return {e: recs for e, recs in found.items() if recs}


def engine_time(timings, engine, method, sparsity, batch, threads):
    """Median seconds of `engine` on the `method`-pruned net at `sparsity` (None if not timed).

    The dense engine's time does not depend on the zeros, so it falls back to the dense reference."""
    recs = select(records_of(timings), engine=engine, method=method, sparsity=sparsity, batch=batch, threads=threads)
    if recs:
        return float(median(r["median_s"] for r in recs))
    if engine == "dense":
        return dense_reference(timings, batch, threads, sparsity)
    return None


def engine_records(timings, engine, method, sparsity, batch, threads) -> list:
    """The records engine_time takes its median from (with the dense engine's fallback)."""
    recs = select(records_of(timings), engine=engine, method=method, sparsity=sparsity, batch=batch, threads=threads)
    if recs or engine != "dense":
        return recs
    dense = select(records_of(timings), engine="dense", batch=batch, threads=threads)
    return select(dense, sparsity=sparsity) or select(dense, method="none") or dense


def ratio_interval(timings, num: tuple, den: tuple):
    """(ratio, low, high, decision) of time(num) / time(den), each (engine, method, k, batch, threads),
    from the records' per-round times (95 %): paired rounds when each side is one record and the two
    pair (stats.record_ratio_ci), else every record's rounds pooled per side (stats.ratio_ci); None
    when a record lacks them."""
    from sparsenet import stats
    num_recs, den_recs = engine_records(timings, *num), engine_records(timings, *den)
    if len(num_recs) == 1 and len(den_recs) == 1:
        ci = stats.record_ratio_ci(num_recs[0], den_recs[0])
    else:
        a = [t for r in num_recs for t in (r.get("per_round_s") or [])]
        b = [t for r in den_recs for t in (r.get("per_round_s") or [])]
        ci = stats.ratio_ci(a, b) if a and b else None
    if ci is None:
        return None
    ratio, lo, hi = ci
    return {"ratio": ratio, "low": lo, "high": hi, "decision": stats.decide(lo, hi)}


def paired_ratio(num_recs, den_recs):
    """The median of the per-round ratios num / den when each side is one record and the two were
    timed in one run (stats.paired), else None (the caller takes the ratio of medians)."""
    from sparsenet import stats
    if len(num_recs) == 1 and len(den_recs) == 1 and stats.paired(num_recs[0], den_recs[0]):
        return float(median(stats.round_ratios(num_recs[0], den_recs[0]).tolist()))
    return None


def time_ratio(timings, num: tuple, den: tuple):
    """time(num) / time(den), each (engine, method, k, batch, threads): the median of paired rounds
    where the two records pair (paired_ratio), else the ratio of engine_time's medians; None when
    either was not timed."""
    a, b = engine_time(timings, *num), engine_time(timings, *den)
    if not a or not b:
        return None
    paired = paired_ratio(engine_records(timings, *num), engine_records(timings, *den))
    return a / b if paired is None else paired


def speedup_at(timings, engine, method, sparsity, batch, threads, baseline="dense"):
    """{"sparsity", "seconds", "dense_s", "speedup", "paired"} of `engine` at one k (None when either
    side was not timed): the speed-up over the baseline (speedups) from paired rounds where the two
    records pair (paired_ratio), else dense_s / seconds."""
    t = engine_time(timings, engine, method, sparsity, batch, threads)
    if baseline == "fastest":
        fastest = fastest_dense(timings, batch, threads, sparsity)
        d = fastest[1] if fastest else None
        base = _dense_baselines(timings, batch, threads, sparsity)[fastest[0]] if fastest else []
    else:
        d = engine_time(timings, "dense", method, sparsity, batch, threads)
        base = engine_records(timings, "dense", method, sparsity, batch, threads)
    if not t or not d:
        return None
    paired = paired_ratio(base, engine_records(timings, engine, method, sparsity, batch, threads))
    return {"sparsity": sparsity, "seconds": t, "dense_s": d, "speedup": d / t if paired is None else paired,
            "paired": paired is not None}


def speedups(timings, engine, method, batch, threads=None, baseline="dense") -> list:
    """[{"sparsity", "seconds", "dense_s", "speedup"}] of `engine` on the `method`-pruned net, sorted by sparsity.

    speedup = dense seconds / engine seconds (> 1: faster than dense; from paired rounds where the two
    records pair: speedup_at, "paired" True). baseline "dense": numpy's dense chain at the same k;
    "fastest": the fastest dense baseline on the unpruned net (fastest_dense)."""
    threads = default_threads(timings) if threads is None else threads
    timed = select(records_of(timings), engine=engine, method=method, batch=batch, threads=threads)
    ks = sorted({sparsity_key(r["sparsity"]) for r in timed})
    rows = (speedup_at(timings, engine, method, k, batch, threads, baseline) for k in ks)
    return [r for r in rows if r is not None]


def break_even(timings, engine, method, batch, threads=None, baseline="dense"):
    """Smallest sparsity from which `engine` is at least as fast as dense and stays so up the grid.

    Linear interpolation of the speed-up between the last grid point below 1 and the next one; the first
    grid point when the engine is never slower; None when it is slower at the last grid point (never).
    baseline: as in speedups (numpy's dense, or the fastest dense)."""
    rows = speedups(timings, engine, method, batch, threads, baseline)
    if not rows:
        return None
    below = [i for i, r in enumerate(rows) if r["speedup"] < 1.0]
    if not below:
        return rows[0]["sparsity"]
    i = below[-1]
    if i == len(rows) - 1:
        return None
    a, b = rows[i], rows[i + 1]
    frac = (1.0 - a["speedup"]) / (b["speedup"] - a["speedup"])
    return a["sparsity"] + frac * (b["sparsity"] - a["sparsity"])


def speedup_curves(timings, method=None) -> list:
    """[{"engine", "batch", "threads", "speedups", "break_even"}] of every non-dense engine, batch and thread
    count with at least one speed-up, in that order. `method` None: the engine's own (names.method_of)."""
    out = []
    for engine in engines_present(timings):
        if engine == "dense":
            continue
        m = method_of(engine) if method is None else method
        for b in batch_sizes(timings):
            for t in thread_counts(timings):
                sp = speedups(timings, engine, m, b, t)
                if sp:
                    out.append({"engine": engine, "batch": b, "threads": t, "speedups": sp,
                                "break_even": break_even(timings, engine, m, b, t),
                                "break_even_fastest": break_even(timings, engine, m, b, t, "fastest")})
    return out


# ---------------------------------------------------------------- accuracy queries

def curve_stats(accuracy, curve) -> list:
    """[{"sparsity", "accuracy", "acc_std", "acc_min", "acc_max", "loss", "loss_std", "n_seeds"}] of one curve."""
    ks = curve.get("sparsities") or accuracy.get("sparsities", [])
    out = []
    for k, accs, losses in zip(ks, curve.get("accuracy", []), curve.get("loss", [[]] * len(ks))):
        accs = [a for a in accs if a is not None and not math.isnan(a)]
        losses = [v for v in (losses or []) if v is not None and not math.isnan(v)]
        if not accs:
            continue
        out.append({"sparsity": sparsity_key(k), "accuracy": mean(accs), "acc_std": pstdev(accs),
                    "acc_min": min(accs), "acc_max": max(accs), "n_seeds": len(accs),
                    "loss": mean(losses) if losses else None, "loss_std": pstdev(losses) if losses else None,
                    "loss_min": min(losses) if losses else None, "loss_max": max(losses) if losses else None})
    return out


def baseline_accuracy(accuracy):
    """Mean over seeds of the unpruned net's accuracy (None if absent)."""
    accs = [a for a in ((accuracy or {}).get("dense", {}).get("accuracy") or []) if a is not None]
    return mean(accs) if accs else None


def preferred_sparsity(ks, preferred=0.9) -> float:
    """`preferred` when it is among `ks` (compared rounded), else the largest k."""
    return preferred if any(sparsity_key(k) == sparsity_key(preferred) for k in ks) else max(ks)


def accuracy_at(accuracy, sparsity=None) -> dict:
    """{"sparsity", "dense", "curves": [{"method", "recovery", "accuracy"}]}: mean accuracies over seeds
    of the unpruned net and of every curve that has `sparsity` (default: 90%, else the largest k)."""
    k = preferred_sparsity(accuracy["sparsities"]) if sparsity is None else sparsity
    base = baseline_accuracy(accuracy)
    curves = []
    for curve in accuracy.get("curves", []):
        row = next((r for r in curve_stats(accuracy, curve) if r["sparsity"] == sparsity_key(k)), None)
        if row is not None:
            curves.append({"method": curve["method"], "recovery": curve["recovery"], "accuracy": row["accuracy"]})
    return {"sparsity": k, "dense": math.nan if base is None else base, "curves": curves}


# ---------------------------------------------------------------- accuracy x latency

def candidates(accuracy, timings, batch, threads=None, include_dense=False) -> list:
    """Every (method, recovery, sparsity, engine) with a mean accuracy and a time at (batch, threads).

    Includes the unpruned net on the dense engine (method "none"), which stands for k=0 of every method.
    A pruned net on the dense engine costs what the unpruned net costs: left out unless `include_dense`."""
    threads = default_threads(timings) if threads is None else threads
    out = []
    base = baseline_accuracy(accuracy)
    ref = dense_reference(timings, batch, threads)
    if base is not None and ref is not None:
        out.append({"method": UNPRUNED, "recovery": "-", "sparsity": 0.0, "engine": "dense", "accuracy": base,
                    "seconds": ref, "speedup": 1.0})
        for engine in engines_of("weight"):              # the unpruned net on our dense and skipping engines
            t = engine_time(timings, engine, "weight", 0.0, batch, threads) if engine != "dense" else None
            if t is not None and engine != "csr-scipy":
                out.append({"method": UNPRUNED, "recovery": "-", "sparsity": 0.0, "engine": engine,
                            "accuracy": base, "seconds": t, "speedup": ref / t})
    for curve in (accuracy or {}).get("curves", []):
        for row in curve_stats(accuracy, curve):
            if row["sparsity"] == 0:
                continue
            for engine in engines_of(curve["method"]):
                if engine == "dense" and not include_dense:
                    continue
                t = engine_time(timings, engine, curve["method"], row["sparsity"], batch, threads)
                if t is None:
                    continue
                d = dense_reference(timings, batch, threads, row["sparsity"])     # side by side when timed at k
                paired = paired_ratio(dense_records(timings, batch, threads, row["sparsity"]), engine_records(
                    timings, engine, curve["method"], row["sparsity"], batch, threads))
                out.append({"method": curve["method"], "recovery": curve["recovery"], "sparsity": row["sparsity"],
                            "engine": engine, "accuracy": row["accuracy"], "seconds": t,
                            "speedup": paired if paired is not None else d / t if d else None})
    return out


def pareto_front(accuracy, timings, batch, threads=None, points=None) -> list:
    """The non-dominated points (no other point is both faster and at least as accurate), fastest first.

    Read it as a latency budget table: for a budget T the most accurate choice is the last point with
    seconds <= T. `points` overrides the candidates (for tests and custom sets)."""
    pts = candidates(accuracy, timings, batch, threads) if points is None else list(points)
    front, best = [], -math.inf
    for p in sorted(pts, key=lambda p: (p["seconds"], -p["accuracy"])):
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    return front


def times_at(timings, sparsity=None, batch=None, threads=None) -> dict:
    """Median seconds of every engine (on its own method's net) at one (k, batch, threads), with the dense
    reference: {"sparsity", "batch", "threads", "seconds": {engine: s}, "dense_s", "dense_sparsity"}.

    Defaults: k = 90% (else the largest timed), the smallest batch and thread count. `dense_s` is dense at
    that k when timed there, else the dense reference (dense_reference) timed at k = `dense_sparsity`."""
    recs = records_of(timings)
    batch = min(batch_sizes(timings)) if batch is None else batch
    threads = min(thread_counts(timings)) if threads is None else threads
    k = preferred_sparsity({r["sparsity"] for r in recs}) if sparsity is None else sparsity
    at = select(recs, sparsity=k, batch=batch, threads=threads)
    seconds = {}
    for r in at:
        if r["engine"] not in seconds:
            seconds[r["engine"]] = engine_time(timings, r["engine"], r["method"], k, batch, threads)
    dense = select(recs, engine="dense", batch=batch, threads=threads)
    dense_s = seconds.get("dense", dense_reference(timings, batch, threads, k))
    return {"sparsity": k, "batch": batch, "threads": threads, "seconds": seconds, "dense_s": dense_s,
            "dense_sparsity": min((r["sparsity"] for r in dense), default=None)}


def timing_quality(records) -> dict:
    """{"n", "flagged", "median_spread", "worst_spread"} of timing records (median: the upper one)."""
    spreads = [r["spread"] for r in records]
    return {"n": len(records), "flagged": sum(bool(r.get("flagged")) for r in records),
            "median_spread": median_high(spreads) if spreads else math.nan,
            "worst_spread": max(spreads, default=math.nan)}


def kernels_used(timings) -> list:
    """[{"engine", "batch", "threads", "kernel", "sparsities"}]: the kernel plan summary of every timed call
    (records' "kernel"; records without one are left out), with the k it ran at, in engine, batch, threads order."""
    groups = {}
    for r in records_of(timings):
        if r.get("kernel"):
            key = (r["engine"], r["batch"], r["threads"], r["kernel"])
            groups.setdefault(key, set()).add(sparsity_key(r["sparsity"]))
    return [{"engine": e, "batch": b, "threads": t, "kernel": k, "sparsities": sorted(ks)}
            for (e, b, t, k), ks in sorted(groups.items(), key=lambda kv: (engine_rank(kv[0][0]), kv[0][1],
                                                                           kv[0][2], min(kv[1])))]


# ---------------------------------------------------------------- roofline

def has_rate(r) -> bool:
    """Whether a record has finite, positive flops, nbytes and median_s (a point on the roofline)."""
    return all(isinstance(r.get(f), (int, float)) and math.isfinite(r[f]) and r[f] > 0
               for f in ("flops", "nbytes", "median_s"))


def call_bytes(r) -> float:
    """Parameter bytes one call of a record reads: the layout it ran on (call_nbytes, e.g. the csr
    engine's SELL copy at batch 1), or the stored bytes for records written before that key."""
    return r.get("call_nbytes") or r["nbytes"]


def peaks_of(timings) -> list:
    """The sgemm peak records timed in the timing rounds (timings.json "peaks"; [] before they were)."""
    return list((timings or {}).get("peaks", []))


def run_peak(timings, threads, sparsity=None):
    """GFLOP/s of the sgemm peak timed in the timing rounds at `threads` (timing.peak_case): the one
    timed beside the records of k = `sparsity` when given (and timed), else the median over every k;
    None when the timings hold none at `threads`."""
    recs = [r for r in peaks_of(timings) if int(r["threads"]) == int(threads) and has_rate(r)]
    if sparsity is not None:
        recs = [r for r in recs if sparsity_key(r["sparsity"]) == sparsity_key(sparsity)] or recs
    rates = [r["flops"] / r["median_s"] / 1e9 for r in recs]
    return float(median(rates)) if rates else None


def sgemm_peak(machine, threads, timings=None, sparsity=None):
    """The measured sgemm peak in GFLOP/s at `threads` (None if not measured).

    With `timings` that timed the peak in their rounds (run_peak): that peak, beside k = `sparsity`
    when given (a median against medians of the same rounds), or a dense-engine call of those rounds
    where one was faster (a dense call is BLAS sgemm too). Else the machine stage's best-of-a-few, or,
    with `timings`, the fastest dense-engine call there when that was faster (the machine stage's few
    seconds can catch a slow spell of a VM: 76 GFLOP/s measured in a run whose dense engine ran 123)."""
    run = run_peak(timings, threads, sparsity)
    peak = run if run is not None else \
        ((machine or {}).get("peaks", {}).get("sgemm_gflops") or {}).get(str(threads))
    if timings is not None:
        dense = [r for r in select(records_of(timings), threads=threads)
                 if r.get("engine") in DENSE_BASELINES and has_rate(r)]
        if run is not None and sparsity is not None:
            dense = [r for r in dense if sparsity_key(r["sparsity"]) == sparsity_key(sparsity)]
        peak = max([r["flops"] / r["median_s"] / 1e9 for r in dense] + ([peak] if peak else []), default=None)
    return peak


def peak_pair(timings, record):
    """The sgemm peak record timed in `record`'s cell of its run (timing.peak_case "beside" its
    batch, at its thread count; stats.paired), or None."""
    from sparsenet import stats
    return next((p for p in peaks_of(timings) if has_rate(p) and stats.timed_beside(p, record)), None)


def peak_fraction(timings, machine, record, peak=None):
    """Useful GFLOP/s of `record` as a fraction of the sgemm peak: the median of its per-round
    fractions of the peak timed back to back with it (peak_pair: a spell of the machine hits both),
    else its median rate over `peak` (GFLOP/s; by default sgemm_peak at its k); None without a peak."""
    if not has_rate(record):
        return None
    pair = peak_pair(timings, record)
    if pair is not None:
        from sparsenet import stats
        fractions = stats.round_ratios(pair, record) * (record["flops"] / pair["flops"])
        return float(median(fractions.tolist()))
    peak = sgemm_peak(machine, record["threads"], timings, record["sparsity"]) if peak is None else peak
    return record["flops"] / record["median_s"] / 1e9 / peak if peak else None


def above_peak(timings, machine, threads) -> int:
    """How many records at `threads` achieve more GFLOP/s than the machine stage's sgemm peak (0 without a peak)."""
    peak = sgemm_peak(machine, threads)
    if not peak:
        return 0
    return sum(1 for r in select(records_of(timings), threads=threads)
               if isinstance(r.get("flops"), (int, float)) and math.isfinite(r["flops"]) and r.get("median_s")
               and r["flops"] / r["median_s"] / 1e9 > peak)


# ---------------------------------------------------------------- the verdict

def _answer(flags) -> str:
    flags = [f for f in flags if f is not None]
    if not flags:
        return "unknown"
    return "true" if all(flags) else "false" if not any(flags) else "partly"


def _row_decision(r):
    """One row's "holds" (neuron faster) / "fails" / "undecided within noise": its 95 % interval where
    the records allow one, else its medians (neuron_faster); None where neither side was timed."""
    if r.get("ci"):
        return r["ci"]["decision"]
    return None if r["neuron_faster"] is None else "holds" if r["neuron_faster"] else "fails"


def _decided_answer(rows) -> str:
    """true / false / partly over the rows the timings decide (_row_decision); "undecided" when every
    row with an interval is within noise, "unknown" without rows. (The medians alone said "true"
    where the headline, from the same intervals, said "undecided within noise".)"""
    decisions = [_row_decision(r) for r in rows]
    answer = _answer([d == "holds" for d in decisions if d in ("holds", "fails")])
    return "undecided" if answer == "unknown" and any(r.get("ci") for r in rows) else answer


def _within_noise(ci, ratio, spread) -> bool:
    """A ratio that is no clear win: its 95 % interval spans 1 where the records allow one, else it
    lies within the records' max/min spread."""
    if ci is not None:
        return ci["decision"] not in ("holds", "fails")
    return 1 / spread < ratio < spread


def pct(x, digits=0) -> str:
    """A fraction as a percentage: pct(0.25) == "25%"."""
    return f"{100 * x:.{digits}f}%"


def threads_word(t) -> str:
    """The thread count in words: 1 thread, 4 threads."""
    return f"{t} thread{'s' if t != 1 else ''}"


def describe(p) -> str:
    """One candidate point in words: "weight k=90% (oneshot) on csr"."""
    if p["method"] == "none":
        return f"the unpruned net on {p.get('engine', 'dense')}"
    return f"{p['method']} k={pct(p['sparsity'])} ({p['recovery']}) on {p['engine']}"


def equal_sparsity(timings, batches, threads, below=0.5) -> dict:
    """Part 1: at each pruned sparsity 0 < k < `below`, is shrunk (neuron) faster than the best of csr/dense
    on the weight-pruned net?"""
    rows = []
    shrunk = select(records_of(timings), engine="shrunk", method="neuron", threads=threads)
    timed = sorted({sparsity_key(r["sparsity"]) for r in shrunk})
    ks = [k for k in timed if 0 < k < below]
    note = None
    if not ks and sparsity_key(below) in timed:
        # a coarse grid (the quick study: 0, 50%, 90%) has nothing strictly below 50%: use the boundary, and say so
        ks = [sparsity_key(below)]
        note = f"no sparsity strictly between 0 and {pct(below)} was timed; k={pct(below)} is used"
    for batch in batches:
        for k in ks:
            neurons = {e: engine_time(timings, e, "neuron", k, batch, threads) for e in engines_of("neuron")}
            neurons = {e: t for e, t in neurons.items() if t is not None}
            weights = {e: engine_time(timings, e, "weight", k, batch, threads) for e in engines_of("weight")
                       if e != "csr-scipy"}
            weights = {e: t for e, t in weights.items() if t is not None}
            if not neurons or not weights:
                continue
            engine = min(weights, key=weights.get)
            n_engine = min(neurons, key=neurons.get)
            neuron = neurons[n_engine]
            ci = ratio_interval(timings, (engine, "weight", k, batch, threads), (n_engine, "neuron", k, batch, threads))
            ratio = ci["ratio"] if ci else weights[engine] / neuron       # paired rounds where the two pair
            # timing noise: the larger max/min spread of the two records; a ratio inside it is not a clear win
            noise = max([1.0] + [r.get("spread", 1.0) for e, m in ((n_engine, "neuron"), (engine, "weight"))
                                 for r in select(records_of(timings), engine=e, method=m, sparsity=k, batch=batch,
                                                 threads=threads) if math.isfinite(r.get("spread", 1.0))])
            rows.append({"sparsity": k, "batch": batch, "neuron_s": neuron, "weight_s": weights[engine],
                         "weight_engine": engine, "neuron_engine": n_engine, "ci": ci, "ratio": ratio, "neuron_faster": ratio > 1,
                         "noise": noise, "within_noise": _within_noise(ci, ratio, noise)})
    missing = None if rows else (f"no shrunk and weight-pruned timings at 0 < k < {pct(below)} "
                                 "(time e.g. `--sparsities 0,25,50,90`)")
    return {"answer": _decided_answer(rows), "below": below, "rows": rows,
            "missing": missing, "note": note}


def equal_accuracy(accuracy, timings, batches, threads, budgets=(0.005, 0.01)) -> dict:
    """Part 2: for each accuracy budget (a drop from the unpruned mean accuracy) and batch, the fastest point
    overall and per method (granularity) among the points whose mean accuracy stays within the budget.

    Rows: {"budget", "batch", "best", "by_method": {method: fastest point or None}, "granularity" (the method
    of "best", "none" for the unpruned net), "best_weight", "best_neuron", "neuron_faster", "ci", "ratio"}."""
    base = baseline_accuracy(accuracy)
    rows = []
    methods = [m for m in GRANULARITIES if any(c["method"] == m for c in (accuracy or {}).get("curves", []))]
    if base is not None:
        for budget in budgets:
            for batch in batches:
                # the weight-pruned net may run on dense (as in part 1); "overall" ignores that duplicate of
                # the unpruned net's cost
                ok = [p for p in candidates(accuracy, timings, batch, threads, include_dense=True)
                      if p["accuracy"] >= base - budget]
                if not ok:
                    continue
                best = min((p for p in ok if p["engine"] != "dense" or p["method"] == "none"),
                           key=lambda p: p["seconds"])
                per = {}
                for method in methods:
                    mine = [p for p in ok if p["method"] == method]
                    per[method] = min(mine, key=lambda p: p["seconds"]) if mine else None
                w, n = per.get("weight"), per.get("neuron")
                faster = (None if (w is None and n is None)
                          else (n is not None and (w is None or n["seconds"] < w["seconds"])))
                ci = None
                if w and n:
                    ci = ratio_interval(timings, (w["engine"], _timed_method(w), w["sparsity"], batch, threads),
                                        (n["engine"], _timed_method(n), n["sparsity"], batch, threads))
                rows.append({"budget": budget, "batch": batch, "best": best, "by_method": per,
                             "granularity": best["method"], "best_weight": w, "best_neuron": n,
                             "neuron_faster": faster, "ci": ci,
                             "ratio": (w["seconds"] / n["seconds"]) if (w and n) else None})
    missing = None
    if base is None:
        missing = "accuracy.json (with the unpruned accuracy) is needed"
    elif not rows:
        missing = "no timed model for the batch sizes and thread count"
    return {"answer": _decided_answer(rows), "baseline_accuracy": base, "rows": rows,
            "methods": methods, "missing": missing}


GRANULARITY_WORDS = {"weight": "weight", "nm": "N:M", "block": "block", "neuron": "neuron", UNPRUNED: "unpruned"}


def _timed_method(p) -> str:
    """The method of the records a candidate's time came from (the unpruned net is timed as weight k=0)."""
    return "weight" if p["method"] == UNPRUNED and p["engine"] != "dense" else p["method"]


def _decisions(rows) -> dict:
    """{decision: [batch...]} of the rows the timings decide: 'holds' (neuron faster), 'fails',
    'undecided within noise'; a row with neither side timed is left out (it counted as 'fails')."""
    out = {}
    for r in rows:
        d = _row_decision(r)
        if d is None:
            continue
        out.setdefault(d, [])
        if r["batch"] not in out[d]:
            out[d].append(r["batch"])
    return out


def _decision_text(decisions) -> str:
    """What follows "the claim ...": holds, fails or is undecided within noise (per batch where they differ)."""
    verb = {d: "is " + d if d.startswith("undecided") else d for d in decisions}
    if len(decisions) == 1:
        return verb[next(iter(decisions))]
    return "; ".join(f"{verb[d]} at batch {', '.join(map(str, bs))}" for d, bs in decisions.items())


def decision_detail(rows) -> str:
    """Where the rows' decisions differ by batch, what each batch decides ("holds at batch 16, 256;
    is undecided within noise at batch 1"), else ""."""
    decisions = _decisions(rows)
    return _decision_text(decisions) if len(decisions) > 1 else ""


def headline(v, timings=None, isa=None) -> list:
    """At most three short sentences: the answer at equal k, at equal accuracy, and what it depends on,
    each saying holds / fails / undecided within noise (95 % bootstrap intervals where records allow)."""
    out = []
    ek, ea = v["equal_k"], v["equal_accuracy"]
    if ek["rows"]:
        out.append(f"At equal sparsity (k < {pct(ek['below'])}) the claim that neuron pruning is faster "
                   f"{_decision_text(_decisions(ek['rows']))}.")
    if ea["rows"]:
        tight = min(r["budget"] for r in ea["rows"])
        decided = _decisions([r for r in ea["rows"] if r["budget"] == tight and r["best_weight"] and r["best_neuron"]])
        answer = _decision_text(decided) if decided else "cannot be decided (no neuron-pruned net is that accurate)"
        budgets = sorted({r["budget"] for r in ea["rows"]})
        by = {(r["batch"], r["budget"]): r["best"] for r in ea["rows"]}

        def fastest(p):
            if p is None:
                return "–"
            return GRANULARITY_WORDS.get(p["method"], p["method"]) + (
                "" if p["method"] == UNPRUNED else f" ({p['engine']} ×{p['speedup']:.1f})")
        per_batch = "; ".join(f"batch {b}: " + " | ".join(fastest(by.get((b, u))) for u in budgets)
                              for b in sorted({r["batch"] for r in ea["rows"]}))
        out.append(f"At equal accuracy (within {100 * tight:g} points) the claim {answer}; the fastest granularity "
                   f"within {' | '.join(f'{100 * u:g}' for u in budgets)} point(s), over dense: {per_batch}.")
    if timings:
        be = {b: break_even(timings, "csr", "weight", b, v["threads"]) for b in v["batches"]
              if select(records_of(timings), engine="csr", batch=b, threads=v["threads"])}
        if be:
            out.append("It depends on the batch size and the CPU" + (f" ({isa})" if isa else "") + ": csr breaks even "
                       "with dense at " + ", ".join(f"{'never' if k is None else pct(k)} (batch {b})"
                                                   for b, k in be.items()) + " here.")
    return out[:3]


def verdict(results, batch=None, threads=None, budgets=(0.005, 0.01)) -> dict:
    """Is the claim true? Answered at equal sparsity (k < 50%) and at equal accuracy, per batch size.

    `results` is `load_results(folder)`; batch None means every batch measured; threads None the largest
    count measured. Returns {"claim", "threads", "batches", "equal_k", "equal_accuracy", "answer", "sentence"}
    where answers are "true" / "false" / "partly" / "unknown"."""
    timings, accuracy = results.get("timings"), results.get("accuracy")
    threads = default_threads(timings) if threads is None else threads
    batches = batch_sizes(timings) if batch is None else [batch]
    eq_k = equal_sparsity(timings, batches, threads) if timings else {
        "answer": "unknown", "rows": [], "below": 0.5, "missing": "timings.json is missing"}
    eq_a = equal_accuracy(accuracy, timings, batches, threads, budgets) if (timings and accuracy) else {
        "answer": "unknown", "rows": [], "baseline_accuracy": baseline_accuracy(accuracy),
        "missing": " and ".join(f"{p}.json" for p in ("accuracy", "timings") if not results.get(p)) + " missing"}
    answers = {eq_k["answer"], eq_a["answer"]} - {"unknown", "undecided"}
    if not answers:
        answer = "undecided" if "undecided" in (eq_k["answer"], eq_a["answer"]) else "unknown"
    else:
        answer = answers.pop() if len(answers) == 1 else "partly"
    out = {"claim": CLAIM, "threads": threads, "batches": batches, "budgets": list(budgets),
           "equal_k": eq_k, "equal_accuracy": eq_a, "answer": answer}
    out["sentence"] = verdict_sentence(out)
    return out


def verdict_sentence(v) -> str:
    """The verdict in one sentence, with numbers."""
    parts = []
    rows = v["equal_k"]["rows"]
    if rows:
        by_k = {}
        for r in rows:
            word = "faster" if r["neuron_faster"] else "slower"
            ratio = r["ratio"] if r["neuron_faster"] else 1 / r["ratio"]
            by_k.setdefault(r["sparsity"], []).append(f"×{ratio:.2f} {word} at batch {r['batch']}"
                                                      + (" (within timing noise)" if r.get("within_noise") else ""))
        parts.append("at equal sparsity below 50% the neuron-pruned net on its best engine (shrunk, BLAS or ours), "
                     "against the best engine (dense or sparse) for the weight-pruned net, is " + "; ".join(
                         f"at k={pct(k)} " + ", ".join(bits) for k, bits in by_k.items()))
    else:
        parts.append(f"at equal sparsity it cannot be answered ({v['equal_k']['missing']})")
    rows = v["equal_accuracy"]["rows"]
    if rows:
        by_budget = {}
        for r in rows:
            b = r["best"]
            by_budget.setdefault(r["budget"], []).append(
                f"the unpruned net at batch {r['batch']} (no pruned model within the budget is faster)"
                if b["method"] == "none" else f"{describe(b)} at batch {r['batch']} (×{b['speedup']:.2f} over dense)")
        parts.append("at equal accuracy the fastest model " + "; ".join(
            f"within {100 * budget:g} point{'' if 100 * budget == 1 else 's'} is " + ", ".join(bits)
            for budget, bits in by_budget.items()))
    else:
        parts.append(f"at equal accuracy it cannot be answered ({v['equal_accuracy']['missing']})")
    label = {"true": "True", "false": "False", "partly": "Partly true", "unknown": "Unknown",
             "undecided": "Undecided within noise"}[v["answer"]]
    known = [name for name, part in (("equal sparsity", "equal_k"), ("equal accuracy", "equal_accuracy"))
             if v[part]["answer"] not in ("unknown", "undecided")]
    if len(known) == 1:
        label += f" at {known[0]} only"
    threads = "threads unknown" if v["threads"] is None else threads_word(v["threads"])
    return f"{label} ({threads}): " + "; ".join(parts) + "."


# ---------------------------------------------------------------- activation sparsity

SKIP_PAIRS = (("dense-skip", "dense-fused", "weight"), ("shrunk-skip", "shrunk-fused", "neuron"),
              ("csr-skip", "csr", "weight"))   # (engine skipping zero inputs, the same engine without it, method)


def activation_rows(activations, sparsity=0.0) -> list:
    """[{"batch", "zero_fraction": [per layer, mean over seeds]}] of the net at `sparsity` (0: unpruned)."""
    recs = [r for r in (activations or {}).get("records", []) if sparsity_key(r["sparsity"]) == sparsity_key(sparsity)]
    out = []
    for batch in sorted({r["batch"] for r in recs}):
        fr = [r["zero_fraction"] for r in recs if r["batch"] == batch]
        out.append({"batch": batch, "zero_fraction": [float(sum(c) / len(c)) for c in zip(*fr)]})
    return out


def skip_gains(timings, threads=None) -> list:
    """[{"engine", "base", "sparsity", "batch", "threads", "speedup"}]: what skipping zero inputs gains over
    the same engine without it, wherever both were timed."""
    threads = default_threads(timings) if threads is None else threads
    out = []
    for engine, base, method in SKIP_PAIRS:
        for r in select(records_of(timings), engine=engine, threads=threads):
            k, b = sparsity_key(r["sparsity"]), r["batch"]
            gain = time_ratio(timings, (base, method, k, b, threads), (engine, method, k, b, threads))
            if gain:
                out.append({"engine": engine, "base": base, "sparsity": k, "batch": b, "threads": threads,
                            "speedup": gain})
    return sorted(out, key=lambda x: (engine_rank(x["engine"]), x["batch"], x["sparsity"]))
