"""Results in, Markdown and PNG out: pure analysis of a results folder and the report built from it.

The analysis functions take the plain JSON dicts of `sparsenet.results` and return plain values; the notebook
and the figures call them, so no number in the report is computed anywhere else.

Timing conventions: a weight-pruned net is run by `dense`, `csr` and `csr-scipy`; a neuron-pruned net by
`shrunk` (BLAS on the physically smaller net). "Speed-up" is dense time / engine time, with the dense time
taken from the same (method, sparsity) when the study timed it, else from the unpruned dense net.
"""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from statistics import mean, median, pstdev

CLAIM = ("below 50% sparsity neuron pruning is more computationally efficient [than weight pruning], "
         "as we always deal with dense matrices")
SPARSE_ENGINES = ("csr", "csr-scipy")
ENGINE_ORDER = ("dense", "csr", "csr-scipy", "shrunk")
METHOD_ENGINES = {"weight": ("dense", "csr", "csr-scipy"), "neuron": ("shrunk",), "none": ("dense",)}


# ---------------------------------------------------------------- timing queries

def _key(k) -> float:
    # sparsities come from JSON floats; compare them rounded so 0.95 == 0.9500000001
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
                ok = got is not None and _key(got) == _key(value)
            else:
                ok = got == value
            if not ok:
                break
        if ok:
            out.append(r)
    return out


def _records(timings) -> list:
    return list((timings or {}).get("records", []))


def thread_counts(timings) -> list:
    """Sorted thread counts present in the timings."""
    return sorted({int(r["threads"]) for r in _records(timings)})


def batch_sizes(timings) -> list:
    """Sorted batch sizes present in the timings."""
    return sorted({int(r["batch"]) for r in _records(timings)})


def default_threads(timings):
    """The thread count the verdict uses unless told otherwise: the largest one measured (None if no timings)."""
    counts = thread_counts(timings)
    return counts[-1] if counts else None


def engines_present(timings) -> list:
    """Engines with at least one record, in the canonical order (unknown engines last)."""
    seen = {r["engine"] for r in _records(timings)}
    return [e for e in ENGINE_ORDER if e in seen] + sorted(seen - set(ENGINE_ORDER))


def dense_reference(timings, batch, threads):
    """Median seconds of the unpruned dense net at (batch, threads): of the method "none" records if there are
    any, else of every dense record (dense time does not depend on the zeros, and one record can be noisy)."""
    dense = select(_records(timings), engine="dense", batch=batch, threads=threads)
    for pick in (select(dense, method="none"), dense):
        if pick:
            return float(median(r["median_s"] for r in pick))
    return None


def engine_time(timings, engine, method, sparsity, batch, threads):
    """Median seconds of `engine` on the `method`-pruned net at `sparsity` (None if not timed).

    The dense engine's time does not depend on the zeros, so it falls back to the dense reference."""
    recs = select(_records(timings), engine=engine, method=method, sparsity=sparsity, batch=batch, threads=threads)
    if recs:
        return float(median(r["median_s"] for r in recs))
    if engine == "dense":
        return dense_reference(timings, batch, threads)
    return None


def speedups(timings, engine, method, batch, threads=None) -> list:
    """[{"sparsity", "seconds", "dense_s", "speedup"}] of `engine` on the `method`-pruned net, sorted by sparsity.

    speedup = dense seconds / engine seconds (> 1: faster than dense)."""
    threads = default_threads(timings) if threads is None else threads
    ks = sorted({_key(r["sparsity"]) for r in select(_records(timings), engine=engine, method=method,
                                                        batch=batch, threads=threads)})
    out = []
    for k in ks:
        t = engine_time(timings, engine, method, k, batch, threads)
        d = engine_time(timings, "dense", method, k, batch, threads)
        if t and d:
            out.append({"sparsity": k, "seconds": t, "dense_s": d, "speedup": d / t})
    return out


def break_even(timings, engine, method, batch, threads=None):
    """Smallest sparsity from which `engine` is at least as fast as dense and stays so up the grid.

    Linear interpolation of the speed-up between the last grid point below 1 and the next one; the first
    grid point when the engine is never slower; None when it is slower at the last grid point (never)."""
    rows = speedups(timings, engine, method, batch, threads)
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
        out.append({"sparsity": _key(k), "accuracy": mean(accs), "acc_std": pstdev(accs),
                    "acc_min": min(accs), "acc_max": max(accs), "n_seeds": len(accs),
                    "loss": mean(losses) if losses else None, "loss_std": pstdev(losses) if losses else None,
                    "loss_min": min(losses) if losses else None, "loss_max": max(losses) if losses else None})
    return out


def baseline_accuracy(accuracy):
    """Mean over seeds of the unpruned net's accuracy (None if absent)."""
    accs = [a for a in ((accuracy or {}).get("dense", {}).get("accuracy") or []) if a is not None]
    return mean(accs) if accs else None


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
        out.append({"method": "none", "recovery": "-", "sparsity": 0.0, "engine": "dense", "accuracy": base,
                    "seconds": ref, "speedup": 1.0})
    for curve in (accuracy or {}).get("curves", []):
        for row in curve_stats(accuracy, curve):
            if row["sparsity"] == 0:
                continue
            for engine in METHOD_ENGINES.get(curve["method"], ()):
                if engine == "dense" and not include_dense:
                    continue
                t = engine_time(timings, engine, curve["method"], row["sparsity"], batch, threads)
                if t is None:
                    continue
                out.append({"method": curve["method"], "recovery": curve["recovery"], "sparsity": row["sparsity"],
                            "engine": engine, "accuracy": row["accuracy"], "seconds": t,
                            "speedup": ref / t if ref else None})
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


# ---------------------------------------------------------------- the verdict

def _answer(flags) -> str:
    flags = [f for f in flags if f is not None]
    if not flags:
        return "unknown"
    return "true" if all(flags) else "false" if not any(flags) else "partly"


def _pct(x, digits=0) -> str:
    return f"{100 * x:.{digits}f}%"


def _describe(p) -> str:
    if p["method"] == "none":
        return "the unpruned net on dense"
    return f"{p['method']} k={_pct(p['sparsity'])} ({p['recovery']}) on {p['engine']}"


def equal_sparsity(timings, batches, threads, below=0.5) -> dict:
    """Part 1: at each pruned sparsity 0 < k < `below`, is shrunk (neuron) faster than the best of csr/dense
    on the weight-pruned net?"""
    rows = []
    timed = sorted({_key(r["sparsity"]) for r in select(_records(timings), engine="shrunk", method="neuron",
                                                           threads=threads)})
    ks = [k for k in timed if 0 < k < below]
    note = None
    if not ks and _key(below) in timed:
        # a coarse grid (the quick study: 0, 50%, 90%) has nothing strictly below 50%: use the boundary, and say so
        ks, note = [_key(below)], f"no sparsity strictly between 0 and {_pct(below)} was timed; k={_pct(below)} is used"
    for batch in batches:
        for k in ks:
            neuron = engine_time(timings, "shrunk", "neuron", k, batch, threads)
            weights = {e: engine_time(timings, e, "weight", k, batch, threads) for e in ("dense", "csr")}
            weights = {e: t for e, t in weights.items() if t is not None}
            if neuron is None or not weights:
                continue
            engine = min(weights, key=weights.get)
            ratio = weights[engine] / neuron
            # timing noise: the larger max/min spread of the two records; a ratio inside it is not a clear win
            noise = max([1.0] + [r.get("spread", 1.0) for e, m in (("shrunk", "neuron"), (engine, "weight"))
                                 for r in select(_records(timings), engine=e, method=m, sparsity=k, batch=batch,
                                                 threads=threads) if math.isfinite(r.get("spread", 1.0))])
            rows.append({"sparsity": k, "batch": batch, "neuron_s": neuron, "weight_s": weights[engine],
                         "weight_engine": engine, "ratio": ratio, "neuron_faster": neuron < weights[engine],
                         "noise": noise, "within_noise": 1 / noise < ratio < noise})
    missing = None if rows else (f"no shrunk and weight-pruned timings at 0 < k < {_pct(below)} "
                                 "(time e.g. `--sparsities 0,25,50,90`)")
    return {"answer": _answer([r["neuron_faster"] for r in rows]), "below": below, "rows": rows,
            "missing": missing, "note": note}


def equal_accuracy(accuracy, timings, batches, threads, budgets=(0.005, 0.01)) -> dict:
    """Part 2: for each accuracy budget (a drop from the unpruned mean accuracy) and batch, the fastest point
    overall and per method among the points whose mean accuracy stays within the budget."""
    base = baseline_accuracy(accuracy)
    rows = []
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
                for method in ("weight", "neuron"):
                    mine = [p for p in ok if p["method"] == method]
                    per[method] = min(mine, key=lambda p: p["seconds"]) if mine else None
                w, n = per["weight"], per["neuron"]
                faster = None if (w is None and n is None) else (n is not None and (w is None or n["seconds"] < w["seconds"]))
                rows.append({"budget": budget, "batch": batch, "best": best, "best_weight": w, "best_neuron": n,
                             "neuron_faster": faster,
                             "ratio": (w["seconds"] / n["seconds"]) if (w and n) else None})
    missing = None
    if base is None:
        missing = "accuracy.json (with the unpruned accuracy) is needed"
    elif not rows:
        missing = "no timed model for the batch sizes and thread count"
    return {"answer": _answer([r["neuron_faster"] for r in rows]), "baseline_accuracy": base, "rows": rows,
            "missing": missing}


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
    answers = {eq_k["answer"], eq_a["answer"]} - {"unknown"}
    answer = "unknown" if not answers else answers.pop() if len(answers) == 1 else "partly"
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
        parts.append("at equal sparsity below 50% the shrunk neuron-pruned net, against the best engine (dense or "
                     "csr) for the weight-pruned net, is " + "; ".join(
                         f"at k={_pct(k)} " + ", ".join(bits) for k, bits in by_k.items()))
    else:
        parts.append(f"at equal sparsity it cannot be answered ({v['equal_k']['missing']})")
    rows = v["equal_accuracy"]["rows"]
    if rows:
        by_budget = {}
        for r in rows:
            b = r["best"]
            by_budget.setdefault(r["budget"], []).append(
                f"the unpruned net at batch {r['batch']} (no pruned model within the budget is faster)"
                if b["method"] == "none" else f"{_describe(b)} at batch {r['batch']} (×{b['speedup']:.2f} over dense)")
        parts.append("at equal accuracy the fastest model " + "; ".join(
            f"within {100 * budget:g} point{'' if 100 * budget == 1 else 's'} is " + ", ".join(bits)
            for budget, bits in by_budget.items()))
    else:
        parts.append(f"at equal accuracy it cannot be answered ({v['equal_accuracy']['missing']})")
    label = {"true": "True", "false": "False", "partly": "Partly true", "unknown": "Unknown"}[v["answer"]]
    known = [name for name, part in (("equal sparsity", "equal_k"), ("equal accuracy", "equal_accuracy"))
             if v[part]["answer"] != "unknown"]
    if len(known) == 1:
        label += f" at {known[0]} only"
    threads = "threads unknown" if v["threads"] is None else f"{v['threads']} thread{'s' if v['threads'] != 1 else ''}"
    return f"{label} ({threads}): " + "; ".join(parts) + "."


# ---------------------------------------------------------------- the Markdown report

HOW_TO = {
    "accuracy": "the study's training and pruning sweep writes it",
    "timings": "the study's timing sweep writes it",
    "scaling": "the study's width-scaling sweep writes it (needs at least one width)",
    "machine": "the study writes it with the measured sgemm and bandwidth peaks",
    "config": "the study writes it when it starts",
}


def reproduce_command(config, folder) -> str:
    """The `sparsenet study` command that (re)creates `folder`; re-running it resumes and fills missing parts."""
    folder = Path(folder)
    study = (config or {}).get("study") or {}
    args = ["sparsenet", "study"]
    if study.get("is_quick"):
        args.append("--quick")
    if study.get("dataset"):
        args += ["--dataset", str(study["dataset"])]
    for name in ("seeds", "sparsities", "batches", "threads"):
        if study.get(name):
            args += [f"--{name}", ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in study[name])]
    args += ["--results-dir", str(folder.parent), "--run-id", folder.name]
    return " ".join(args)


def _missing(parts, what, cmd="sparsenet study ...") -> str:
    names = ", ".join(f"`{p}.json`" for p in parts)
    how = "; ".join(f"`{p}.json`: {HOW_TO[p]}" for p in parts)
    return (f"> **Missing:** {names} {'is' if len(parts) == 1 else 'are'} not in this results folder, so {what} "
            f"cannot be shown. To produce it ({how}), run the study into this folder: `{cmd}` (it resumes, "
            f"skipping finished parts); then rebuild with `sparsenet report RESULTS`.\n")


def _table(headers, rows) -> str:
    if not rows:
        return "_(no rows)_\n"
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _ms(seconds) -> str:
    return "–" if seconds is None else f"{1e3 * seconds:.3g}"


def _threads_word(t) -> str:
    return f"{t} thread{'s' if t != 1 else ''}"


def verdict_markdown(v) -> str:
    """The verdict as Markdown: the claim, the one-sentence answer, and a table per question."""
    out = [f"> Claim (original experiment, not measured there): *\"{v['claim']}\"*\n",
           f"**Answer: {v['sentence']}**\n",
           f"All timings in this section at {_threads_word(v['threads']) if v['threads'] else '– threads'} (the largest count measured unless chosen "
           f"otherwise); batch sizes {', '.join(map(str, v['batches'])) or '–'}.\n"]
    ek = v["equal_k"]
    out.append(f"**At equal sparsity (0 < k < {_pct(ek['below'])}): {ek['answer']}.** Neuron pruning is timed on the "
               "shrunk net; weight pruning on the faster of dense and our CSR kernel. Note that k counts weights for "
               "weight pruning but neurons for neuron pruning, so at equal k neuron pruning removes more weights "
               "(about 1 - (1 - k)² of a hidden-to-hidden matrix).\n")
    if ek.get("note"):
        out.append(f"Note: {ek['note']}.\n")
    if ek["rows"]:
        out.append(_table(["batch", "k", "neuron: shrunk (ms)", "weight: best (ms)", "weight engine",
                           "weight time / neuron time", "neuron faster?"],
                          [[r["batch"], _pct(r["sparsity"]), _ms(r["neuron_s"]), _ms(r["weight_s"]),
                            r["weight_engine"], f"{r['ratio']:.2f}", ("yes" if r["neuron_faster"] else "no")
                            + (f" (within noise, spread {r['noise']:.2f})" if r.get("within_noise") else "")]
                           for r in ek["rows"]]))
    else:
        out.append(f"Cannot be answered: {ek['missing']}.\n")
    ea = v["equal_accuracy"]
    base = ea.get("baseline_accuracy")
    out.append(f"\n**At equal accuracy: {ea['answer']}.** For each budget (a drop from the unpruned mean accuracy"
               + (f", {_pct(base, 2)}" if base is not None else "") + "), the fastest model whose mean accuracy "
               "over seeds stays within it, overall and per method.\n")
    if ea["rows"]:
        def cell(p):
            return "–" if p is None else f"{_describe(p)}: {_ms(p['seconds'])} ms, {_pct(p['accuracy'], 2)}"
        out.append(_table(["budget (points)", "batch", "fastest overall", "speed-up over dense", "fastest weight-pruned",
                           "fastest neuron-pruned", "neuron faster?"],
                          [[f"{100 * r['budget']:g}", r["batch"], cell(r["best"]), f"×{r['best']['speedup']:.2f}",
                            cell(r["best_weight"]), cell(r["best_neuron"]),
                            {True: "yes", False: "no", None: "–"}[r["neuron_faster"]]] for r in ea["rows"]]))
    else:
        out.append(f"Cannot be answered: {ea['missing']}.\n")
    return "\n".join(out)


def front_markdown(front) -> str:
    """A Pareto front as a latency-budget table: for a budget, the most accurate model+engine."""
    return _table(["latency budget (ms)", "most accurate model", "accuracy", "speed-up over dense"],
                  [[f"≥ {_ms(p['seconds'])}", _describe(p), _pct(p["accuracy"], 2),
                    "–" if p.get("speedup") is None else f"×{p['speedup']:.2f}"] for p in front])


def break_even_markdown(timings) -> str:
    """Break-even sparsity of every non-dense engine, per batch and thread count, as a Markdown table."""
    _, rows = _speedup_rows(timings)
    out = []
    for engine, b, t, be in rows:
        first = speedups(timings, engine, "neuron" if engine == "shrunk" else "weight", b, t)[0]["sparsity"]
        if be is None:
            cell = "never (slower at the largest k)"
        elif be == first and first > 0:
            cell = f"≤ {_pct(be, 1)} (faster at the lowest k timed; lower k not timed)"
        else:
            cell = _pct(be, 1)
        out.append([engine, b, t, cell])
    return _table(["engine", "batch", "threads", "break-even k"], out)


def _accuracy_rows(accuracy) -> list:
    rows = []
    base = baseline_accuracy(accuracy)
    if base is not None:
        losses = [v for v in accuracy.get("dense", {}).get("loss") or [] if v is not None]
        rows.append(["unpruned", "-", "0%", _pct(base, 2), "–", f"{mean(losses):.4f}" if losses else "–",
                     sum(a is not None for a in accuracy["dense"]["accuracy"])])
    for curve in accuracy.get("curves", []):
        for r in curve_stats(accuracy, curve):
            rows.append([curve["method"], curve["recovery"], _pct(r["sparsity"]), _pct(r["accuracy"], 2),
                         f"{100 * r['acc_std']:.2f}", "–" if r["loss"] is None else f"{r['loss']:.4f}", r["n_seeds"]])
    return rows


def _latency_rows(timings) -> tuple:
    combos = [(b, t) for b in batch_sizes(timings) for t in thread_counts(timings)]
    keys = sorted({(r["engine"], r["method"], _key(r["sparsity"])) for r in _records(timings)},
                  key=lambda k: (ENGINE_ORDER.index(k[0]) if k[0] in ENGINE_ORDER else 99, k[1], k[2]))
    headers = ["engine", "method", "k"] + [f"b{b} t{t} (ms)" for b, t in combos]
    rows = []
    for engine, method, k in keys:
        cells = []
        for b, t in combos:
            recs = select(_records(timings), engine=engine, method=method, sparsity=k, batch=b, threads=t)
            cells.append("–" if not recs else _ms(recs[0]["median_s"]) + (" ⚠" if recs[0].get("flagged") else ""))
        rows.append([engine, method, _pct(k)] + cells)
    return headers, rows


def _speedup_rows(timings) -> tuple:
    rows, be_rows = [], []
    for engine in engines_present(timings):
        if engine == "dense":
            continue
        method = "neuron" if engine == "shrunk" else "weight"
        for b in batch_sizes(timings):
            for t in thread_counts(timings):
                sp = speedups(timings, engine, method, b, t)
                if not sp:
                    continue
                be = break_even(timings, engine, method, b, t)
                be_rows.append([engine, b, t, be])
                rows.append([engine, b, t] + [f"{_pct(r['sparsity'])}: ×{r['speedup']:.2f}" for r in sp])
    return rows, be_rows


def _memory_rows(timings) -> list:
    seen, rows = set(), []
    for r in sorted(_records(timings), key=lambda r: (ENGINE_ORDER.index(r["engine"]) if r["engine"] in ENGINE_ORDER
                                                      else 99, r["sparsity"])):
        key = (r["engine"], r["method"], _key(r["sparsity"]))
        if key in seen:
            continue
        seen.add(key)
        rows.append([r["engine"], r["method"], _pct(r["sparsity"]), f"{r['nbytes'] / 1e6:.3f}", r.get("nnz", "–"),
                     r.get("index_dtype", "–"), "-".join(map(str, r.get("layer_sizes") or [])) or "–"])
    return rows


def _roofline_rows(timings, machine, threads) -> list:
    peak = ((machine or {}).get("peaks", {}).get("sgemm_gflops") or {}).get(str(threads))
    rows = []
    for r in select(_records(timings), threads=threads):
        if not all(isinstance(r.get(f), (int, float)) and math.isfinite(r[f]) and r[f] > 0
                   for f in ("flops", "nbytes", "median_s")):
            continue
        g = r["flops"] / r["median_s"] / 1e9
        rows.append([r["engine"], r["method"], _pct(r["sparsity"]), r["batch"], f"{r['flops'] / r['nbytes']:.3g}",
                     f"{g:.3g}", "–" if not peak else _pct(g / peak, 1)])
    return rows


def _above_peak(timings, machine, threads) -> int:
    peak = ((machine or {}).get("peaks", {}).get("sgemm_gflops") or {}).get(str(threads))
    if not peak:
        return 0
    return sum(1 for r in select(_records(timings), threads=threads)
               if isinstance(r.get("flops"), (int, float)) and math.isfinite(r["flops"]) and r.get("median_s")
               and r["flops"] / r["median_s"] / 1e9 > peak)


def _scaling_rows(scaling) -> list:
    rows = []
    recs = _records(scaling)
    for width in sorted({r.get("width") for r in recs if r.get("width") is not None}):
        sub = {"records": [r for r in recs if r.get("width") == width]}
        for engine in [e for e in engines_present(sub) if e != "dense"]:
            for b in batch_sizes(sub):
                for t in thread_counts(sub):
                    sp = speedups(sub, engine, "weight", b, t)
                    if sp:
                        be = break_even(sub, engine, "weight", b, t)
                        rows.append([width, engine, b, t, "never" if be is None else _pct(be, 1),
                                     ", ".join(f"{_pct(r['sparsity'])}: ×{r['speedup']:.2f}" for r in sp)])
    return rows


def _machine_md(machine, timings, config, miss) -> str:
    out = []
    if machine:
        blas = machine.get("blas") or []
        kernels = ", ".join(f"{b.get('internal_api', '?')} {b.get('version', '')} (architecture "
                            f"{b.get('architecture', '?')}, {b.get('num_threads', '?')} threads, "
                            f"{b.get('threading_layer', '?')})" for b in blas) or "–"
        peaks = machine.get("peaks", {})
        sg = peaks.get("sgemm_gflops") or {}
        out.append(_table(["field", "value"], [
            ["CPU", machine.get("cpu", "–")], ["cores", machine.get("n_cores", "–")],
            ["platform", machine.get("platform", "–")], ["Python", machine.get("python", "–")],
            ["BLAS kernel (threadpoolctl)", kernels],
            ["thread counts timed", ", ".join(map(str, thread_counts(timings))) or "–"],
            ["measured sgemm peak", ", ".join(f"{v:.1f} GFLOP/s at {k} thread(s)" for k, v in sg.items()) or "–"],
            ["measured bandwidth", f"{peaks['bandwidth_gbs']:.1f} GB/s" if peaks.get("bandwidth_gbs") else "–"],
            ["environment", ", ".join(f"{k}={v}" for k, v in (machine.get("env") or {}).items()) or "–"],
        ]))
        versions = machine.get("versions") or {}
        out.append("\nSoftware versions:\n")
        out.append(_table(["package", "version"], sorted(versions.items())))
    else:
        out.append(miss(["machine"], "the machine, BLAS kernel and software versions"))
    if timings and timings.get("compile_s"):
        out.append("\nNumba compile time (first call, outside the timers): "
                   + ", ".join(f"{k} {v:.2f} s" for k, v in timings["compile_s"].items()) + "\n")
    if config:
        out.append(f"\nRun `{config.get('run_id', '?')}`, created {config.get('created', '?')}, sparsenet "
                   f"{config.get('sparsenet_version', '?')}. Study configuration:\n\n```json\n"
                   f"{json.dumps(config.get('study', {}), indent=2)}\n```\n")
    else:
        out.append("\n" + miss(["config"], "the study configuration"))
    return "\n".join(out)


def build_report(folder, out_dir=None, threads=None) -> Path:
    """Write `<folder>/report/report.md` (or into `out_dir`), its PNG figures and `summary.json`; return the .md path.

    Built from the results JSON alone; a missing part is named, with how to produce it, in the sections it
    affects. `threads` (default: the largest count measured) is used for the verdict and the main figures."""
    from sparsenet import plots  # plots imports this module's analysis; import here to avoid a cycle
    from sparsenet.files import atomic_write_bytes, write_json
    from sparsenet.results import load_results, missing_parts

    folder = Path(folder)
    out_dir = folder / "report" if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = load_results(folder)
    acc, tim, sca, mac, cfg = (res.get(p) for p in ("accuracy", "timings", "scaling", "machine", "config"))
    threads = default_threads(tim) if threads is None else threads
    v = verdict(res, threads=threads)
    figures = []
    cmd = reproduce_command(cfg, folder)

    def miss(parts, what):
        return _missing(parts, what, cmd)

    def fig(name, fn, *args, **kw):
        fn(*args, path=out_dir / name, **kw)
        figures.append(name)
        return f"![{name}]({name})\n"

    md = [f"# sparsenet report: {cfg.get('run_id', folder.name) if cfg else folder.name}\n",
          f"Results folder `{folder}`. Built from its JSON files alone by `sparsenet report`. "
          f"Parts missing: {', '.join(missing_parts(res)) or 'none'}.\n"]
    md.append("## 1. Verdict\n")
    md.append(verdict_markdown(v))
    lacking = [p for p in ("accuracy", "timings") if not res.get(p)]
    if lacking:
        md.append("\n" + miss(lacking, "the verdict (in full)"))

    md.append("\n## 2. Accuracy and loss vs sparsity\n")
    if acc:
        n = len(acc.get("seeds", []))
        md.append(f"One-shot pruning solid, fine-tuned dashed; weight pruning red, neuron pruning blue. Line: mean over "
                  f"{n} seed{'s' if n != 1 else ''}, band: min–max over seeds. Dataset: {acc.get('dataset', '?')}.\n")
        md.append(fig("accuracy.png", plots.plot_accuracy, acc))
        for method in sorted({c["method"] for c in acc.get("curves", [])}):
            md.append(fig(f"accuracy_{method}.png", plots.plot_accuracy_method, acc, method))
        md.append("Table: section 8.1.\n")
    else:
        md.append(miss(["accuracy"], "the accuracy and loss curves"))

    md.append("\n## 3. Latency and speed-up vs sparsity\n")
    if tim:
        md.append("Median time per call; dense is the reference line. Weight-pruned nets run on dense, csr (our Numba "
                  "kernel) and csr-scipy (baseline); neuron-pruned nets on shrunk. Break-even: the smallest sparsity "
                  "from which the engine is at least as fast as dense and stays so (linear interpolation).\n")
        for t in thread_counts(tim):
            md.append(f"**{_threads_word(t)}**\n")
            md.append(fig(f"latency_t{t}.png", plots.plot_latency, tim, threads=t))
            md.append(fig(f"speedup_t{t}.png", plots.plot_speedup, tim, threads=t))
        md.append("Break-even sparsity:\n\n" + break_even_markdown(tim))
        flagged = [r for r in _records(tim) if r.get("flagged")]
        md.append(f"\n{len(flagged)} of {len(_records(tim))} timing records are flagged as noisy (max/min of per-round "
                  "medians above the spread limit; marked ⚠ in 8.2). Tables: 8.2, 8.3.\n")
    else:
        md.append(miss(["timings"], "latency, speed-up and break-even"))

    md.append("\n## 4. Memory\n")
    if tim:
        md.append("Stored parameter bytes of each representation (CSR: data + indices + indptr).\n")
        md.append(fig("memory.png", plots.plot_memory, tim))
        md.append("Table: 8.4.\n")
    else:
        md.append(miss(["timings"], "the memory of each representation (recorded with the timings)"))

    md.append("\n## 5. Accuracy vs latency: the Pareto front\n")
    fronts = {}
    if acc and tim:
        md.append(f"Every (method, k, recovery, engine) at {_threads_word(threads)}. Read the front as a latency "
                  "budget table: for a budget T, the most accurate choice is the last row with latency ≤ T.\n")
        for b in batch_sizes(tim):
            md.append(f"**batch {b}**\n")
            md.append(fig(f"pareto_b{b}.png", plots.plot_pareto, acc, tim, batch=b, threads=threads))
            fronts[b] = pareto_front(acc, tim, b, threads)
            md.append(front_markdown(fronts[b]))
    else:
        md.append(miss([p for p in ("accuracy", "timings") if not res.get(p)], "the accuracy-vs-latency front"))

    md.append("\n## 6. Roofline vs measured peaks\n")
    if tim:
        md.append("Achieved GFLOP/s = useful flops / median time; arithmetic intensity = flops / stored parameter bytes "
                  "(an approximation: activations, repeated index reads and caches are ignored, so true intensity is "
                  "lower for large batches). Roofs: the measured sgemm peak and bandwidth from machine.json.\n")
        if not mac:
            md.append(miss(["machine"], "the roofs (measured peaks)"))
        above = _above_peak(tim, mac, threads)
        if above:
            md.append(f"> **Note:** {above} timing record(s) exceed the measured sgemm peak at {_threads_word(threads)}; "
                      "the peak was probably measured low (a quick measurement, or a busy machine), so fractions of "
                      "peak in 8.5 are overstated.\n")
        md.append(fig("roofline.png", plots.plot_roofline, tim, mac, threads=threads))
        md.append("Table: 8.5.\n")
    else:
        md.append(miss(["timings"], "the roofline"))

    md.append("\n## 7. Scaling with width and batch\n")
    if sca:
        md.append("Speed-up of the CSR kernel over dense for wider layers, per batch size.\n")
        md.append(fig("scaling.png", plots.plot_scaling, sca, threads=threads if threads in thread_counts(sca) else None))
        md.append("Table: 8.6.\n")
    else:
        md.append(miss(["scaling"], "the width/batch scaling"))

    md.append("\n## 8. Tables, machine and reproduction\n")
    md.append("### 8.1 Accuracy\n")
    md.append(_table(["method", "recovery", "k", "accuracy (mean)", "std (points)", "loss (mean)", "seeds"],
                     _accuracy_rows(acc)) if acc else miss(["accuracy"], "this table"))
    md.append("\n### 8.2 Latency (median ms per call; b = batch, t = threads; ⚠ = noisy)\n")
    if tim:
        headers, rows = _latency_rows(tim)
        md.append(_table(headers, rows))
    else:
        md.append(miss(["timings"], "this table"))
    md.append("\n### 8.3 Speed-up over dense\n")
    if tim:
        sp_rows, _ = _speedup_rows(tim)
        md.append(_table(["engine", "batch", "threads", "speed-up by k"],
                         [r[:3] + [", ".join(r[3:])] for r in sp_rows]))
    else:
        md.append(miss(["timings"], "this table"))
    md.append("\n### 8.4 Memory\n")
    md.append(_table(["engine", "method", "k", "MB", "nnz / params", "index dtype", "layer sizes"], _memory_rows(tim))
              if tim else miss(["timings"], "this table"))
    md.append(f"\n### 8.5 Roofline ({_threads_word(threads) if threads else '–'})\n")
    md.append(_table(["engine", "method", "k", "batch", "flop/byte", "GFLOP/s", "of sgemm peak"],
                     _roofline_rows(tim, mac, threads)) if tim else miss(["timings"], "this table"))
    md.append("\n### 8.6 Scaling\n")
    md.append(_table(["width", "engine", "batch", "threads", "break-even k", "speed-up by k"], _scaling_rows(sca))
              if sca else miss(["scaling"], "this table"))
    md.append("\n### 8.7 Machine and software\n")
    md.append(_machine_md(mac, tim, cfg, miss))
    md.append("\n### 8.8 How to reproduce\n")
    md.append(f"```sh\n{cmd}\n# writes config, machine, accuracy, timings (and scaling) JSON into {folder}\n"
              f"sparsenet report {folder}\n# this report, from the JSON alone\n```\n"
              "Settings without a command-line flag (epochs, widths, rounds, ...) are in the study configuration "
              "above (8.7).\n"
              f"Report built on Python {platform.python_version()}.\n")

    md_path = atomic_write_bytes(out_dir / "report.md", "\n".join(md).encode())
    summary = {"folder": str(folder), "threads": threads, "missing": missing_parts(res), "verdict": v,
               "break_even": [dict(zip(["engine", "batch", "threads", "break_even"], r))
                              for r in (_speedup_rows(tim)[1] if tim else [])],
               "pareto": {str(b): f for b, f in fronts.items()}, "figures": figures}
    write_json(out_dir / "summary.json", summary)
    return md_path
