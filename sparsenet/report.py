"""Results in, Markdown and PNG out: the report of a results folder, its figures and summary.json.

Every number comes from `sparsenet.analysis` (and every figure from `sparsenet.plots`); this module only lays
them out as Markdown tables and text, and names any missing part of the results with how to produce it.
"""
from __future__ import annotations

import json
import platform
import shlex
from collections import Counter
from pathlib import Path
from statistics import mean

from sparsenet import plots
from sparsenet.analysis import (
    above_peak, activation_rows, baseline_accuracy, batch_sizes, call_bytes, curve_stats, decision_detail,
    default_threads, describe,
    GRANULARITY_WORDS, has_rate, headline, skip_gains,
    kernels_used, pareto_front, pct, peak_fraction, records_of, run_peak, select, sgemm_peak, sparsity_key, speedup_curves, thread_counts,
    threads_word, verdict,
)
from sparsenet.files import atomic_write_bytes, make_dirs, named_folder, write_json
from sparsenet.names import engine_rank
from sparsenet.results import load_results, missing_parts
from sparsenet.study_config import OPTIONS, TIMING_FIELDS

HOW_TO = {
    "accuracy": "the study's training and pruning sweep writes it",
    "timings": "the study's timing sweep writes it",
    "scaling": "the study's width-scaling sweep writes it (needs at least one width)",
    "machine": "the study writes it with the measured sgemm and bandwidth peaks",
    "config": "the study writes it when it starts",
    "activations": "the study measures it on the test set after training",
}


def _option_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_option_text(v) for v in value)
    if isinstance(value, float):
        # ":g" reads best but keeps 6 digits; repr when that would not parse back to the same float
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    return str(value)


_FROM_FOLDER = ("results_dir", "run_id")   # given as the folder the command writes


def reproduce_command(config, folder) -> str:
    """The `sparsenet study` command that (re)creates `folder`; re-running it resumes and fills missing parts.

    Every recorded setting is given explicitly (not left to defaults, which may change), so the command
    reproduces the configuration exactly; a setting missing from an older config.json is left out. The
    options are study_config.OPTIONS, which the CLI parses back (tests/test_cli.py)."""
    folder = named_folder(folder)            # `sparsenet report .`: the run id is the name of the folder it is
    study = (config or {}).get("study") or {}
    args = ["sparsenet", "study"]
    source = ((config or {}).get("timing_only") or {}).get("from")
    timing_only = source is not None and Path(source) != folder
    if timing_only:
        # a sibling folder timed from `source` (study.run_timing_only): this machine's timings of its nets;
        # the command, run here again, resumes it (on another machine it makes that machine's sibling)
        args += ["--timing-only", source]
    elif study.get("is_quick"):
        args.append("--quick")
    for opt in OPTIONS:
        value = study.get(opt.field)
        if opt.field in _FROM_FOLDER or opt.field not in study or (value is None and opt.unset is None):
            continue
        if timing_only and opt.field not in TIMING_FIELDS:
            continue
        if opt.kind == "bool":
            args.append(opt.flag if value else "--no-" + opt.flag[2:])
        else:
            args += [opt.flag, opt.unset if value is None else _option_text(value)]
    if not timing_only:
        args += ["--results-dir", str(folder.parent), "--run-id", folder.name]
    return " ".join(shlex.quote(a) for a in args)


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


def _noise_note(r) -> str:
    """Why a row's answer is within noise: its 95 % interval spans 1, else the records' spread."""
    return " (within noise: the 95 % interval spans 1)" if r.get("ci") else f" (within noise, spread {r['noise']:.2f})"


def verdict_markdown(v) -> str:
    """The verdict as Markdown: the claim, the one-sentence answer, and a table per question (the
    report opens with analysis.headline's three short sentences above it)."""
    out = [f"> Claim (original experiment, not measured there): *\"{v['claim']}\"*\n",
           f"**Answer: {v['sentence']}**\n",
           f"All timings in this section at {threads_word(v['threads']) if v['threads'] else '– threads'} (the largest count measured unless chosen "
           f"otherwise); batch sizes {', '.join(map(str, v['batches'])) or '–'}.\n"]
    ek = v["equal_k"]
    detail = decision_detail(ek["rows"])                     # per batch, where they differ: as the headline
    detail = f" where the timings decide; the claim {detail}" if detail else ""
    out.append(f"**At equal sparsity (0 < k < {pct(ek['below'])}): {ek['answer']}{detail}.** Neuron pruning is timed on the "
               "shrunk net; weight pruning on the faster of dense and our CSR kernel. Note that k counts weights for "
               "weight pruning but neurons for neuron pruning, so at equal k neuron pruning removes more weights "
               "(about 1 - (1 - k)² of a hidden-to-hidden matrix).\n")
    if ek.get("note"):
        out.append(f"Note: {ek['note']}.\n")
    if ek["rows"]:
        out.append(_table(["batch", "k", "neuron: shrunk (ms)", "weight: best (ms)", "weight engine",
                           "weight time / neuron time", "neuron faster?"],
                          [[r["batch"], pct(r["sparsity"]), _ms(r["neuron_s"]), _ms(r["weight_s"]),
                            r["weight_engine"], _ratio_cell(r), ("yes" if r["neuron_faster"] else "no")
                            + (_noise_note(r) if r.get("within_noise") else "")]
                           for r in ek["rows"]]))
    else:
        out.append(f"Cannot be answered: {ek['missing']}.\n")
    ea = v["equal_accuracy"]
    base = ea.get("baseline_accuracy")
    out.append(f"\n**At equal accuracy: {ea['answer']}.** For each budget (a drop from the unpruned mean accuracy"
               + (f", {pct(base, 2)}" if base is not None else "") + "), the fastest model whose mean accuracy "
               "over seeds stays within it, overall and per pruning granularity (single weights, N:M groups, "
               "blocks, whole neurons).\n")
    if ea["rows"]:
        def cell(p):
            return "–" if p is None else f"{describe(p)}: {_ms(p['seconds'])} ms, {pct(p['accuracy'], 2)}"
        methods = ea.get("methods") or ["weight", "neuron"]
        out.append(_table(["budget (points)", "batch", "fastest overall", "speed-up over dense"]
                          + [f"fastest {GRANULARITY_WORDS.get(m, m)}-pruned" for m in methods] + ["neuron faster?"],
                          [[f"{100 * r['budget']:g}", r["batch"], cell(r["best"]), f"×{r['best']['speedup']:.2f}"]
                           + [cell((r.get("by_method") or {}).get(m, r.get(f"best_{m}"))) for m in methods]
                           + [{True: "yes", False: "no", None: "–"}[r["neuron_faster"]]] for r in ea["rows"]]))
    else:
        out.append(f"Cannot be answered: {ea['missing']}.\n")
    return "\n".join(out)


def _ratio_cell(r) -> str:
    """The ratio with its 95 % interval and decision when the records kept their rounds."""
    ci = r.get("ci")
    if not ci:
        return f"{r['ratio']:.2f}"
    return f"{r['ratio']:.2f} [{ci['low']:.2f}, {ci['high']:.2f}] {ci['decision']}"


def front_markdown(front) -> str:
    """A Pareto front as a latency-budget table: for a budget, the most accurate model+engine."""
    return _table(["latency budget (ms)", "most accurate model", "accuracy", "speed-up over dense"],
                  [[f"≥ {_ms(p['seconds'])}", describe(p), pct(p["accuracy"], 2),
                    "–" if p.get("speedup") is None else f"×{p['speedup']:.2f}"] for p in front])


def activation_markdown(activations, timings) -> str:
    """Per layer input, the fraction of inputs zero in every row of a batch (unpruned net, test set,
    mean over seeds), and the speed-up of the zero-skipping engines over the same engines without it."""
    rows = activation_rows(activations)
    sizes = activations.get("layer_sizes") or []
    head = ["batch"] + [f"layer {i} ({n} inputs)" for i, n in enumerate(sizes[:-1])]
    text = ("Inputs an engine that skips zero inputs can skip (zero in every row of the batch; layer 0's inputs are "
            "the pixels, the others ReLU outputs), unpruned net, test set:\n\n")
    text += _table(head, [[r["batch"]] + [pct(z, 1) for z in r["zero_fraction"]] for r in rows])
    gains = skip_gains(timings) if timings else []
    if gains:
        text += "\n\nSpeed-up of skipping zero inputs over the same engine without it:\n\n"
        text += _table(["engine", "over", "k", "batch", "threads", "speed-up"],
                       [[g["engine"], g["base"], pct(g["sparsity"]), g["batch"], g["threads"], f"×{g['speedup']:.2f}"]
                        for g in gains])
    return text + "\n"


def break_even_markdown(timings) -> str:
    """Break-even sparsity of every non-dense engine, per batch and thread count, against numpy's dense
    chain and against the fastest dense baseline (numpy's or our one-call forward), as a Markdown table."""
    out = []
    for c in speedup_curves(timings):
        first = c["speedups"][0]["sparsity"]

        def cell(be, first=first):
            if be is None:
                return "never (slower at the largest k)"
            if be == first and first > 0:
                return f"≤ {pct(be, 1)} (faster at the lowest k timed; lower k not timed)"
            return pct(be, 1)
        out.append([c["engine"], c["batch"], c["threads"], cell(c["break_even"]), cell(c["break_even_fastest"])])
    return _table(["engine", "batch", "threads", "break-even k (vs numpy dense)", "(vs fastest dense)"], out)


def _accuracy_rows(accuracy) -> list:
    rows = []
    base = baseline_accuracy(accuracy)
    if base is not None:
        losses = [v for v in accuracy.get("dense", {}).get("loss") or [] if v is not None]
        rows.append(["unpruned", "-", "0%", pct(base, 2), "–", f"{mean(losses):.4f}" if losses else "–",
                     sum(a is not None for a in accuracy["dense"]["accuracy"])])
    for curve in accuracy.get("curves", []):
        for r in curve_stats(accuracy, curve):
            rows.append([curve["method"], curve["recovery"], pct(r["sparsity"]), pct(r["accuracy"], 2),
                         f"{100 * r['acc_std']:.2f}", "–" if r["loss"] is None else f"{r['loss']:.4f}", r["n_seeds"]])
    return rows


def _skipped_markdown(timings) -> str:
    """The cases the timing stage left out, by engine and reason (their k and batches), or ''."""
    groups: dict = {}
    for sk in timings.get("skipped") or []:
        reason = sk.get("reason", "")
        kind = reason.split(" > ", 1)[-1] if reason.startswith("predicted ") else reason
        groups.setdefault((sk["engine"], kind), []).append(sk)
    if not groups:
        return ""
    lines = ["\nNot timed (grid.skip_reason; a call predicted slower than the limit, or too large):\n"]
    for (engine, kind), cases in groups.items():
        ks = sorted({round(c["sparsity"], 6) for c in cases})
        batches = sorted({c["batch"] for c in cases})
        prefix = "predicted > " if cases[0].get("reason", "").startswith("predicted ") else ""
        lines.append(f"- {engine}: {len(cases)} case(s), {prefix}{kind}; k {', '.join(pct(k) for k in ks)}; "
                     f"batch {', '.join(map(str, batches))}")
    return "\n".join(lines) + "\n"


def _latency_rows(timings) -> tuple:
    combos = [(b, t) for b in batch_sizes(timings) for t in thread_counts(timings)]
    keys = sorted({(r["engine"], r["method"], sparsity_key(r["sparsity"])) for r in records_of(timings)},
                  key=lambda k: (engine_rank(k[0]), k[1], k[2]))
    headers = ["engine", "method", "k"] + [f"b{b} t{t} (ms)" for b, t in combos]
    rows = []
    for engine, method, k in keys:
        cells = []
        for b, t in combos:
            recs = select(records_of(timings), engine=engine, method=method, sparsity=k, batch=b, threads=t)
            cells.append("–" if not recs else _ms(recs[0]["median_s"]) + (" ⚠" if recs[0].get("flagged") else ""))
        rows.append([engine, method, pct(k)] + cells)
    return headers, rows


def _speedup_text(rows) -> str:
    return ", ".join(f"{pct(r['sparsity'])}: ×{r['speedup']:.2f}" for r in rows)


def _memory_rows(timings) -> list:
    """A row per (engine, method, k): stored MB, and the MB each layout a call ran on reads."""
    layouts, first = {}, {}
    for r in sorted(records_of(timings), key=lambda r: (engine_rank(r["engine"]), r["sparsity"], r["batch"])):
        key = (r["engine"], r["method"], sparsity_key(r["sparsity"]))
        first.setdefault(key, r)
        if "layout" in r:
            layouts.setdefault(key, {}).setdefault(r["layout"], call_bytes(r))
    rows = []
    for key, r in first.items():
        read = ", ".join(f"{name} {b / 1e6:.3f}" for name, b in layouts.get(key, {}).items()) or "–"
        rows.append([r["engine"], r["method"], pct(r["sparsity"]), f"{r['nbytes'] / 1e6:.3f}", read,
                     r.get("nnz", "–"), "-".join(map(str, r.get("layer_sizes") or [])) or "–"])
    return rows


def _roofline_rows(timings, machine, threads) -> list:
    rows, peaks = [], {}
    for r in filter(has_rate, select(records_of(timings), threads=threads)):
        k = sparsity_key(r["sparsity"])                                  # the peak timed beside r, if any
        peak = peaks[k] if k in peaks else peaks.setdefault(k, sgemm_peak(machine, threads, timings, k))
        g = r["flops"] / r["median_s"] / 1e9
        frac = peak_fraction(timings, machine, r, peak) if peak else None
        rows.append([r["engine"], r["method"], pct(r["sparsity"]), r["batch"], r.get("layout", "–"),
                     r.get("kernel", "–"), f"{r['flops'] / call_bytes(r):.3g}", f"{g:.3g}",
                     "–" if frac is None else pct(frac, 1)])
    return rows


def kernels_markdown(timings) -> str:
    """Which kernels produced the timings: per engine, batch and thread count, each kernel plan summary
    (layout; split; per-layer kernels) with the k it ran at."""
    rows = [[u["engine"], u["batch"], u["threads"], u["kernel"], ", ".join(pct(k) for k in u["sparsities"])]
            for u in kernels_used(timings)]
    if not rows:
        return "_(the records name no kernel plan: made before plans were recorded)_\n"
    return _table(["engine", "batch", "threads", "kernel plan", "k"], rows)


def _scaling_rows(scaling) -> list:
    rows = []
    recs = records_of(scaling)
    for width in sorted({r.get("width") for r in recs if r.get("width") is not None}):
        sub = {"records": [r for r in recs if r.get("width") == width]}
        for c in speedup_curves(sub, method="weight"):  # the scaling study times weight-pruned layers only
            be = c["break_even"]
            rows.append([width, c["engine"], c["batch"], c["threads"], "never" if be is None else pct(be, 1),
                         _speedup_text(c["speedups"])])
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
            ["kernel ISA (sparsenet plans)", f"{machine['isa']} (Numba target {machine.get('numba_cpu', '?')})"
             if machine.get("isa") else "–"],
            ["L1 data cache (sizes the column panels)", f"{machine['l1d_bytes'] // 1024} KB"
             if machine.get("l1d_bytes") else "–"],
            ["L2 cache (batch 1's SELL-16 packed beyond it)", f"{machine['l2_bytes'] // 1024} KB"
             if machine.get("l2_bytes") else "–"],
            ["thread counts timed", ", ".join(map(str, thread_counts(timings))) or "–"],
            ["measured sgemm peak (machine stage, best of a few)",
             ", ".join(f"{v:.1f} GFLOP/s at {k} thread(s)" for k, v in sg.items()) or "–"],
            ["sgemm peak timed beside the engines (median over k)",
             ", ".join(f"{p:.1f} GFLOP/s at {t} thread(s)" for t, p in ((t, run_peak(timings, t)) for t in
                                                                       thread_counts(timings)) if p) or "–"],
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


def check_measured(folder, name, value, measured) -> None:
    """A clear error when a selector (threads, ...) names a value the results do not hold."""
    if value is None or value in measured:
        return
    have = ", ".join(map(str, measured)) or "none (no timings.json records)"
    raise ValueError(f"{name} {value} were not measured in {folder}; measured: {have}")


def steps_markdown(steps) -> str:
    """What study.retime_steps found: the steps up in k timed again side by side, those that remain
    (the engine's) and those that went (the machine's)."""
    kept = [st for st in steps if st["after_low"] > 1]
    gone = [st for st in steps if st["after_low"] <= 1]
    return (f"{len(steps)} step(s) up in k (an engine slower at a higher k beyond its rounds' noise) were timed "
            "again with both k side by side, the dense net at those k beside them (a slow spell of the machine "
            "during one k reads as a step): "
            f"{len(kept)} remain" + ("".join(f"; {_step_text(st)}" for st in kept) if kept else "")
            + (f" (gone: {'; '.join(_step_text(st) for st in gone)})" if gone else "") + ".\n")


def _step_text(st) -> str:
    """One step as the report names it: csr batch 1, 2 threads, 80% -> 90%: x2.22, side by side x0.52."""
    width = f", width {st['width']}" if st.get("width") else ""
    return (f"{st['engine']} batch {st['batch']}, {threads_word(st['threads'])}{width}, {pct(st['k'])} -> "
            f"{pct(st['next_k'])}: x{st['before']:.2f}, side by side x{st['after']:.2f}")


def _still_noisy(still, most: int = 12) -> str:
    """The cases still noisy after re-timing: each named when there are at most `most`, else counted
    per engine (a list of hundreds is not read; 8.2 marks each with ⚠)."""
    if not still:
        return "none stayed noisy"
    if len(still) <= most:
        return f"{len(still)} stayed noisy: " + ", ".join(f"{e} k={pct(k)} b{b} t{t}" for e, k, b, t, *_ in still)
    per = Counter(e for e, *_ in still)
    return (f"{len(still)} stayed noisy (marked ⚠ in 8.2), by engine: "
            + ", ".join(f"{e} {n}" for e, n in per.most_common()))


def build_report(folder, out_dir=None, threads=None) -> Path:
    """Write `<folder>/report/report.md` (or into `out_dir`), its PNG figures and `summary.json`; return the .md path.

    Built from the results JSON alone; a missing part is named, with how to produce it, in the sections it
    affects. `threads` (default: the largest count measured) is used for the verdict and the main figures."""

    folder = Path(folder)
    out_dir = folder / "report" if out_dir is None else Path(out_dir)
    res = load_results(folder)          # a clear error when the folder does not exist
    acc, tim, sca, mac, cfg = (res.get(p) for p in ("accuracy", "timings", "scaling", "machine", "config"))
    # before writing anything: an unmeasured count would replace a good report with an "Unknown" one
    check_measured(folder, "threads", threads, thread_counts(tim) if tim else [])
    make_dirs(out_dir)
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

    opening = headline(v, res.get("timings"), (res.get("machine") or {}).get("isa"))
    md = [f"# sparsenet report: {cfg.get('run_id', folder.name) if cfg else folder.name}\n"]
    if opening:
        md.append("**" + " ".join(opening) + "**\n")
    md.append(f"Results folder `{folder}`. Built from its JSON files alone by `sparsenet report`. "
              f"Parts missing: {', '.join(missing_parts(res)) or 'none'}.\n")
    md.append("## 1. Verdict\n")
    md.append(verdict_markdown(v))
    lacking = [p for p in ("accuracy", "timings") if not res.get(p)]
    if lacking:
        md.append("\n" + miss(lacking, "the verdict (in full)"))

    md.append("\n## 2. Accuracy and loss vs sparsity\n")
    if acc:
        n = len(acc.get("seeds", []))
        md.append(f"One-shot pruning solid, fine-tuned dashed, gradual dotted; weight pruning red, N:M olive, block "
                  f"purple, neuron pruning blue. Line: mean over "
                  f"{n} seed{'s' if n != 1 else ''}, band: min–max over seeds. Dataset: {acc.get('dataset', '?')}.\n")
        shapes = acc.get("config") or {}
        if any(c["method"] in ("block", "nm") for c in acc.get("curves", [])):
            block, m = shapes.get("block"), shapes.get("nm_m")
            md.append("Granularities: single weights; N:M groups" + (f" (M = {m}: 2:4 is k=50%, 1:4 is k=75%; N:M "
                      "exists only at k = 1 - N/M)" if m else "") + "; blocks" + (
                      f" of {block[0]}×{block[1]} weights (rows × inputs; the shape our block kernel runs best, "
                      "chosen by measurement: docs/perf-notes.md)" if block else "") + "; whole neurons.\n")
        md.append(fig("accuracy.png", plots.plot_accuracy, acc))
        for method in sorted({c["method"] for c in acc.get("curves", [])}):
            md.append(fig(f"accuracy_{method}.png", plots.plot_accuracy_method, acc, method))
        md.append("Table: section 8.1.\n")
    else:
        md.append(miss(["accuracy"], "the accuracy and loss curves"))

    md.append("\n## 3. Latency and speed-up vs sparsity\n")
    if tim:
        md.append("Median time per call; dense is the reference line. Weight-pruned nets run on dense, csr (our Numba "
                  "kernel) and csr-scipy (baseline); neuron-pruned nets on shrunk; block-pruned nets on bsr (ours) and "
                  "bsr-scipy (baseline); N:M-pruned nets on nm (ours, at the k where N:M exists). Break-even: the smallest sparsity "
                  "from which the engine is at least as fast as dense and stays so (linear interpolation).\n")
        dense_ks = {sparsity_key(r["sparsity"]) for r in select(records_of(tim), engine="dense")}
        if len(dense_ks) > 1:
            paired = any(r.get("timed_at") is not None for r in records_of(tim))
            md.append("Speed-ups at each k divide by dense timed at that k: in the same unit as that k's engines, "
                      "their rounds interleaved, so a slow spell of the machine hits both sides of the ratio"
                      + (" (each round times an engine and the dense baselines at its batch size and thread count "
                         "back to back; a speed-up is the median of the per-round ratios).\n" if paired else ".\n"))
        layouts = sorted({r["layout"] for r in select(records_of(tim), engine="csr", batch=1) if "layout" in r})
        if layouts:
            md.append(f"At batch 1, csr ran on: {', '.join(layouts)} (sell: the SELL-16x32 AVX-512 permute "
                      "kernel; csr: the CSR SpMV, used where the CPU lacks AVX-512F or SELL's padding does not pay).\n")
        for t in thread_counts(tim):
            md.append(f"**{threads_word(t)}**\n")
            md.append(fig(f"latency_t{t}.png", plots.plot_latency, tim, threads=t))
            md.append(fig(f"speedup_t{t}.png", plots.plot_speedup, tim, threads=t))
        md.append("Break-even sparsity:\n\n" + break_even_markdown(tim))
        md.append("\nThe kernels that produced each line are listed under 8.2.\n")
        flagged = [r for r in records_of(tim) if r.get("flagged")]
        md.append(f"\n{len(flagged)} of {len(records_of(tim))} timing records are flagged as noisy (max/min of per-round "
                  "medians above the spread limit; marked ⚠ in 8.2). Tables: 8.2, 8.3.\n")
        if tim.get("steps"):
            md.append(steps_markdown(tim["steps"]))
        if tim.get("remeasured"):
            still = tim.get("still_noisy") or []
            md.append(f"Before the verdict, {tim['remeasured']} noisy case(s) were re-timed ({tim.get('remeasured_s', 0):.0f} s; "
                      f"the steadier record kept); {_still_noisy(still)}.\n")
    else:
        md.append(miss(["timings"], "latency, speed-up and break-even"))

    act = res.get("activations")
    md.append("\n### 3.1 Activation sparsity and what skipping zero inputs gains\n")
    if act:
        md.append(activation_markdown(act, tim))
    else:
        md.append(_missing(["activations"], "activation sparsity") + "\n")
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
        md.append(f"Every (method, k, recovery, engine) at {threads_word(threads)}. Read the front as a latency "
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
        in_run = run_peak(tim, threads) is not None      # the timings hold an sgemm peak timed beside the engines
        md.append("Achieved GFLOP/s = useful flops / median time; arithmetic intensity = flops / stored parameter bytes "
                  "(an approximation: activations, repeated index reads and caches are ignored, so true intensity is "
                  "lower for large batches). Roofs: the sgemm peak (below) and the bandwidth measured by the machine stage. "
                  + ("The fractions of peak in 8.5 divide by the sgemm peak timed in the same rounds as the "
                     "record's engines (an n x n float32 product beside every k, timings.json `peaks`): at the "
                     "batch it was timed beside (the widest not above n), the median of the per-round fractions "
                     "against the peak timed back to back with the record; elsewhere medians of both, or a dense "
                     "call of those rounds where one was faster. The line in the plot is its median over k.\n"
                     if in_run else
                     "The fractions of peak in 8.5 divide by machine.json's sgemm peak, or by the fastest dense "
                     "call of the timings where that was faster (a dense call is sgemm too).\n"))
        if not mac:
            md.append(miss(["machine"], "the roofs (measured peaks)"))
        above = above_peak(tim, mac, threads)
        if above:
            own, used = sgemm_peak(mac, threads), sgemm_peak(mac, threads, tim)
            md.append(f"> **Note:** {above} timing record(s) exceed the sgemm peak machine.json measured at "
                      f"{threads_word(threads)} (a quick measurement, or a slow spell of the machine); "
                      + ("fractions of peak in 8.5 use the peak timed beside the engines instead.\n" if in_run
                         else f"fractions of peak in 8.5 use the fastest dense call's {used:.0f} GFLOP/s instead.\n"
                         if used and own and used > own else "fractions of peak in 8.5 are overstated.\n"))
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
        md.append("\nKernels behind these timings (the plan each record names: layout; how the batch is split; "
                  "per-layer kernels, `/par` on several threads; `sparsenet plan` explains one):\n")
        md.append(kernels_markdown(tim))
        md.append(_skipped_markdown(tim))
    else:
        md.append(miss(["timings"], "this table"))
    md.append("\n### 8.3 Speed-up over dense\n")
    if tim:
        md.append(_table(["engine", "batch", "threads", "speed-up by k"],
                         [[c["engine"], c["batch"], c["threads"], _speedup_text(c["speedups"])]
                          for c in speedup_curves(tim)]))
    else:
        md.append(miss(["timings"], "this table"))
    md.append("\n### 8.4 Memory\n")
    md.append("MB: the stored format (for csr: CSR). A call reads the layout it runs on: csr keeps a "
              "column-panelled copy of dense-ish layers for wide batches and, with AVX-512, a SELL copy for "
              "batch 1.\n")
    md.append(_table(["engine", "method", "k", "MB", "MB read per call, by layout", "nnz / params", "layer sizes"],
                     _memory_rows(tim))
              if tim else miss(["timings"], "this table"))
    md.append(f"\n### 8.5 Roofline ({threads_word(threads) if threads else '–'})\n")
    md.append(_table(["engine", "method", "k", "batch", "layout", "kernel", "flop/byte", "GFLOP/s", "of sgemm peak"],
                     _roofline_rows(tim, mac, threads)) if tim else miss(["timings"], "this table"))
    md.append("\n### 8.6 Scaling\n")
    md.append(_table(["width", "engine", "batch", "threads", "break-even k", "speed-up by k"], _scaling_rows(sca))
              if sca else miss(["scaling"], "this table"))
    md.append("\n### 8.7 Machine and software\n")
    md.append(_machine_md(mac, tim, cfg, miss))
    md.append("\n### 8.8 How to reproduce\n")
    md.append(f"```sh\n{cmd}\n# writes config, machine, accuracy, timings (and scaling) JSON into {folder}\n"
              f"sparsenet report {folder}\n# this report, from the JSON alone\n```\n"
              "The command gives every recorded setting explicitly, so it reproduces the configuration of "
              "8.7 exactly (and, run again, resumes).\n"
              f"Report built on Python {platform.python_version()}.\n")

    md_path = atomic_write_bytes(out_dir / "report.md", "\n".join(md).encode())
    summary = {"folder": str(folder), "threads": threads, "missing": missing_parts(res), "verdict": v,
               "break_even": [{f: c[f] for f in ("engine", "batch", "threads", "break_even")}
                              for c in speedup_curves(tim)],
               "pareto": {str(b): f for b, f in fronts.items()}, "figures": figures}
    write_json(out_dir / "summary.json", summary)
    return md_path
