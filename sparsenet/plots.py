"""All figures: plain JSON dicts in, one PNG out (written atomically), its path returned.

Figures are drawn on `matplotlib.figure.Figure` objects (the Agg canvas), never through pyplot's global state,
so they need no display and leave no open windows behind. Colours are fixed per engine and per method so the
figures read alike: dense grey/black, csr green, csr-scipy orange, shrunk blue; weight pruning red, neuron
pruning blue (as in the original experiment). Seed bands are min–max over seeds around the mean.
"""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from sparsenet.files import atomic_write_bytes
from sparsenet.analysis import (
    baseline_accuracy, batch_sizes, break_even, call_bytes, candidates, curve_stats, default_threads,
    dense_reference, engines_present, has_rate, pareto_front, records_of, select,
    run_peak, sgemm_peak, sparsity_key, speedups, threads_word,
)
from sparsenet.names import GRANULARITIES, engine_rank, engines_of, method_of

DPI = 120
ENGINE_COLORS = {"dense": "#333333", "csr": "tab:green", "csr-scipy": "tab:orange", "shrunk": "tab:blue",
                 "bsr": "tab:purple", "bsr-scipy": "tab:pink", "nm": "tab:olive"}
ENGINE_MARKERS = {"dense": "s", "csr": "o", "csr-scipy": "v", "shrunk": "D", "bsr": "P", "bsr-scipy": "X", "nm": "^"}
METHOD_COLORS = {"weight": "tab:red", "nm": "tab:olive", "block": "tab:purple", "neuron": "tab:blue", "none": "#333333"}
RECOVERY_STYLES = {"oneshot": "-", "finetuned": "--", "gradual": ":"}
METHOD_NAMES = {"weight": "weight pruning", "nm": "N:M pruning", "block": "block pruning", "neuron": "neuron pruning",
                "none": "unpruned"}


def _save(fig, path) -> Path:
    # render to memory, then one atomic write: a crash never leaves half a PNG
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # constrained layout already fits the labels
    return atomic_write_bytes(path, buf.getvalue())


def _figure(n_panels, width=5.2, height=4.0):
    # up to 3 panels in a row; more wrap onto a grid of 2 columns (4 batch sizes -> 2 x 2)
    ncols = n_panels if n_panels <= 3 else 2
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _per_batch(timings, threads):
    """(threads, fig, [(ax, batch)]): one titled panel per batch size measured, threads None meaning the largest
    count measured; fig is None when nothing was timed."""
    threads = default_threads(timings) if threads is None else threads
    batches = batch_sizes(timings)
    if not batches:
        return threads, None, []
    fig, axes = _figure(len(batches))
    for ax, batch in zip(axes, batches):
        ax.set_title(f"batch {batch}, {threads_word(threads)}", fontsize=10)
    return threads, fig, list(zip(axes, batches))


def _empty(path, message) -> Path:
    fig, (ax,) = _figure(1, height=2.0)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return _save(fig, path)


def _log_x(ax):
    # log x with plain labels at 1-2-5 steps: readable over a fraction of a decade as over many
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _log_y(ax):
    # log y with plain 1-2-3-5 labels (0.5, 1, 2 rather than 5x10^-1): for axes spanning a decade or two
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _pct_axis(ax, label="sparsity k (% of weights or neurons removed)"):
    ax.set_xlabel(label)
    ax.set_xlim(-2, 101)
    ax.grid(True, alpha=0.3)


# ---------------------------------------------------------------- accuracy

def _accuracy_panels(accuracy, axes, methods):
    acc_ax, loss_ax = axes
    n = len(accuracy.get("seeds", []))
    n_seeds = f"{n} seed{'s' if n != 1 else ''}" if n else "the seeds"
    for curve in accuracy.get("curves", []):
        if curve["method"] not in methods:
            continue
        rows = curve_stats(accuracy, curve)
        if not rows:
            continue
        ks = [100 * r["sparsity"] for r in rows]
        color = METHOD_COLORS.get(curve["method"], "k")
        style = RECOVERY_STYLES.get(curve["recovery"], "-.")
        label = f"{METHOD_NAMES.get(curve['method'], curve['method'])}, {curve['recovery']}"
        acc_ax.plot(ks, [100 * r["accuracy"] for r in rows], style, color=color, marker="o", ms=3, label=label)
        acc_ax.fill_between(ks, [100 * r["acc_min"] for r in rows], [100 * r["acc_max"] for r in rows],
                            color=color, alpha=0.15, lw=0)
        if all(r["loss"] is not None for r in rows):
            loss_ax.plot(ks, [r["loss"] for r in rows], style, color=color, marker="o", ms=3, label=label)
            loss_ax.fill_between(ks, [r["loss_min"] for r in rows], [r["loss_max"] for r in rows],
                                 color=color, alpha=0.15, lw=0)
    base = baseline_accuracy(accuracy)
    if base is not None:
        acc_ax.axhline(100 * base, color="#333333", lw=0.8, ls=":", label=f"unpruned ({100 * base:.2f}%)")
    dense_loss = accuracy.get("dense", {}).get("loss") or []
    if dense_loss:
        loss_ax.axhline(sum(dense_loss) / len(dense_loss), color="#333333", lw=0.8, ls=":", label="unpruned")
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.set_title(f"Accuracy vs sparsity (line: mean, band: min–max over {n_seeds})", fontsize=10)
    loss_ax.set_ylabel("test loss (cross-entropy, log scale)")
    _log_y(loss_ax)
    loss_ax.set_title("Loss vs sparsity", fontsize=10)
    for ax in axes:
        _pct_axis(ax)
        ax.legend(fontsize=8)


def plot_accuracy(accuracy, path) -> Path:
    """Accuracy and loss vs sparsity, every method (granularity); one-shot solid, fine-tuned dashed, gradual
    dotted, min–max seed bands."""
    fig, axes = _figure(2)
    _accuracy_panels(accuracy, axes, GRANULARITIES)
    return _save(fig, path)


def plot_accuracy_method(accuracy, method, path) -> Path:
    """Accuracy and loss vs sparsity for one method (names.GRANULARITIES)."""
    fig, axes = _figure(2)
    _accuracy_panels(accuracy, axes, (method,))
    fig.suptitle(METHOD_NAMES.get(method, method))
    return _save(fig, path)


# ---------------------------------------------------------------- latency and speed-up

def plot_latency(timings, path, threads=None) -> Path:
    """Median latency vs sparsity per engine, one panel per batch size, dense as a reference line; log y.

    Bands: min–max of the per-round medians."""
    threads, fig, panels = _per_batch(timings, threads)
    if fig is None:
        return _empty(path, "no timings")
    for ax, batch in panels:
        ref = dense_reference(timings, batch, threads)
        if ref is not None:
            ax.axhline(1e3 * ref, color=ENGINE_COLORS["dense"], ls="--", lw=1.2, label=f"dense reference ({1e3 * ref:.3g} ms)")
        for engine in engines_present(timings):
            recs = select(records_of(timings), engine=engine, batch=batch, threads=threads)
            if engine != "dense":
                recs = [r for r in recs if r["method"] != "none"]
            if not recs:
                continue
            recs = sorted(recs, key=lambda r: r["sparsity"])
            ks = [100 * r["sparsity"] for r in recs]
            label = f"{engine} ({recs[0]['method']}-pruned net)" if engine != "dense" else "dense (measured per k)"
            ax.plot(ks, [1e3 * r["median_s"] for r in recs], marker=ENGINE_MARKERS.get(engine, "o"), ms=4,
                    color=ENGINE_COLORS.get(engine), label=label, lw=1.5 if engine != "dense" else 0.8)
            ax.fill_between(ks, [1e3 * r["min_s"] for r in recs], [1e3 * r["max_s"] for r in recs],
                            color=ENGINE_COLORS.get(engine), alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_ylabel("latency per call (ms, log scale)")
        _pct_axis(ax)
        ax.legend(fontsize=8)
    fig.suptitle("Inference latency vs sparsity (median; band: min–max over rounds)")
    return _save(fig, path)


def plot_speedup(timings, path, threads=None) -> Path:
    """Speed-up over dense vs sparsity per engine and batch size; y=1 line; break-even sparsity marked."""
    threads, fig, panels = _per_batch(timings, threads)
    if fig is None:
        return _empty(path, "no timings")
    for ax, batch in panels:
        ax.axhline(1.0, color=ENGINE_COLORS["dense"], ls="--", lw=1.2, label="dense (= 1)")
        for engine in (e for e in engines_present(timings) if e != "dense"):
            method = method_of(engine)
            rows = speedups(timings, engine, method, batch, threads)
            if not rows:
                continue
            color = ENGINE_COLORS.get(engine)
            be = break_even(timings, engine, method, batch, threads)
            label = f"{engine} ({method}-pruned net)"
            if be is None:
                label += ", never breaks even"
            elif be == rows[0]["sparsity"]:
                label += ", never slower" if rows[0]["sparsity"] == 0 else f", faster from {100 * be:.0f}% (lowest k timed)"
            else:
                label += f", break-even {100 * be:.0f}%"
            ax.plot([100 * r["sparsity"] for r in rows], [r["speedup"] for r in rows], color=color,
                    marker=ENGINE_MARKERS.get(engine, "o"), ms=4, label=label)
            if be is not None and be > rows[0]["sparsity"]:
                ax.axvline(100 * be, color=color, ls=":", lw=1.4)
        _log_y(ax)
        ax.set_ylabel("speed-up over dense (×, log scale; > 1 is faster)")
        _pct_axis(ax)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Speed-up over the dense net (dotted vertical line: break-even sparsity, value in legend)")
    return _save(fig, path)


def plot_memory(timings, path) -> Path:
    """Stored parameter bytes of each representation vs sparsity (dense, CSR with its index dtype, shrunk)."""
    recs = records_of(timings)
    if not recs:
        return _empty(path, "no timings")
    fig, (ax,) = _figure(1, width=6.5)
    for engine in engines_present(timings):
        by_k = {}
        for r in recs:
            if r["engine"] == engine and (engine == "dense" or r["method"] != "none"):
                by_k.setdefault(sparsity_key(r["sparsity"]), r)
        if not by_k:
            continue
        ks = sorted(by_k)
        first = by_k[ks[0]]
        label = engine
        if "index_dtype" in first:
            label += f" (indices {first['index_dtype']})"
        if engine == "csr-scipy":
            label += " (scipy)"
        ax.plot([100 * k for k in ks], [by_k[k]["nbytes"] / 1e6 for k in ks], color=ENGINE_COLORS.get(engine),
                marker=ENGINE_MARKERS.get(engine, "o"), ms=4, label=label,
                ls="--" if engine == "csr-scipy" else "-")
    ax.set_yscale("log")
    ax.set_ylabel("stored parameter bytes (MB, log scale)")
    ax.set_title("Memory of each representation vs sparsity", fontsize=10)
    _pct_axis(ax)
    ax.legend(fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------- accuracy x latency

def plot_pareto(accuracy, timings, path, batch, threads=None) -> Path:
    """Accuracy vs latency of every (method, k, engine, recovery), the Pareto front highlighted.

    Left: all points; right: zoom on the points within 3 accuracy points of the unpruned net.
    Colour = method, marker = engine, filled = fine-tuned, hollow = one-shot."""
    threads = default_threads(timings) if threads is None else threads
    pts = candidates(accuracy, timings, batch, threads)
    if not pts:
        return _empty(path, f"no timed models at batch {batch}")
    front = pareto_front(accuracy, timings, batch, threads)
    base = baseline_accuracy(accuracy)
    fig, axes = _figure(2, width=5.6)
    for j, ax in enumerate(axes):
        shown = pts if j == 0 or base is None else [p for p in pts if p["accuracy"] >= base - 0.03]
        for p in shown:
            color = METHOD_COLORS.get(p["method"], "k")
            filled = p["recovery"] != "oneshot"     # fine-tuned or gradual
            ax.scatter(1e3 * p["seconds"], 100 * p["accuracy"], marker=ENGINE_MARKERS.get(p["engine"], "o"), s=28,
                       facecolors=color if filled else "none", edgecolors=color, linewidths=1.0, zorder=3)
        fr = front if j == 0 or base is None else [p for p in front if p["accuracy"] >= base - 0.03]
        ax.step([1e3 * p["seconds"] for p in fr], [100 * p["accuracy"] for p in fr], where="post", color="k",
                lw=1.2, zorder=2, label="Pareto front")
        ax.scatter([1e3 * p["seconds"] for p in fr], [100 * p["accuracy"] for p in fr], s=90, facecolors="none",
                   edgecolors="k", linewidths=1.2, zorder=4)
        if base is not None:
            ax.axhline(100 * base, color="#333333", ls=":", lw=0.8)
        _log_x(ax)
        ax.set_xlabel("latency per call (ms, log scale)")
        ax.set_ylabel("test accuracy (%, mean over seeds)")
        ax.grid(True, alpha=0.3)
        ax.set_title("all models" if j == 0 else "zoom: within 3 points of unpruned", fontsize=10)
    # a legend for the encodings, built from proxy artists
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color="k", lw=1.2, label="Pareto front")]
    handles += [Line2D([], [], ls="", marker="o", color=METHOD_COLORS[m], label=METHOD_NAMES[m])
                for m in GRANULARITIES if any(p["method"] == m for p in pts)]
    handles += [Line2D([], [], ls="", marker=ENGINE_MARKERS.get(e, "o"), color="grey", label=f"engine {e}")
                for e in sorted({p["engine"] for p in pts}, key=engine_rank)]
    handles += [Line2D([], [], ls="", marker="o", color="grey", label="fine-tuned or gradual (filled)"),
                Line2D([], [], ls="", marker="o", markerfacecolor="none", color="grey", label="one-shot (hollow)")]
    axes[0].legend(handles=handles, fontsize=7, loc="lower right")
    fig.suptitle(f"Accuracy vs latency, batch {batch}, {threads_word(threads)}")
    return _save(fig, path)


# ---------------------------------------------------------------- roofline and scaling

def plot_roofline(timings, machine, path, threads=None) -> Path:
    """Achieved GFLOP/s (flops / median_s) vs arithmetic intensity (flops / call_bytes) per engine, with the
    measured sgemm peak and the bandwidth roof.

    Approximation: the intensity counts only the stored parameter bytes read once per call (activations,
    CSR index re-reads and cache effects are ignored), so it is an upper bound on the true intensity."""
    threads = default_threads(timings) if threads is None else threads
    # flops may be NaN (an engine that does not count them) and nbytes 0: such records have no roofline point
    recs = [r for r in select(records_of(timings), threads=threads) if has_rate(r)]
    if not recs:
        return _empty(path, "no timings with flops and bytes")
    fig, (ax,) = _figure(1, width=7.0, height=4.8)
    batches = batch_sizes(timings)
    fills = {b: i for i, b in enumerate(batches)}
    for engine in engines_present(timings):
        mine = [r for r in recs if r["engine"] == engine]
        for batch in batches:
            pts = [r for r in mine if r["batch"] == batch]
            if not pts:
                continue
            x = [r["flops"] / call_bytes(r) for r in pts]
            y = [r["flops"] / r["median_s"] / 1e9 for r in pts]
            ax.scatter(x, y, color=ENGINE_COLORS.get(engine), marker=ENGINE_MARKERS.get(engine, "o"), s=26,
                       alpha=0.85 if fills[batch] else 0.5, label=f"{engine}, batch {batch}")
    peak = sgemm_peak(machine, threads, timings)
    bw = (machine or {}).get("peaks", {}).get("bandwidth_gbs")
    xs = [r["flops"] / call_bytes(r) for r in recs]
    lo, hi = min(xs) / 2, max(xs) * 2
    if peak:
        where = "timed beside the engines, median over k" if run_peak(timings, threads) else "measured"
        ax.axhline(peak, color="k", lw=1.2, label=f"sgemm peak {peak:.0f} GFLOP/s ({where})")
    if bw:
        ridge = peak / bw if peak else hi
        ax.plot([lo, min(hi, ridge)], [bw * lo, bw * min(hi, ridge)], color="k", ls="--", lw=1.2,
                label=f"bandwidth roof {bw:.0f} GB/s")
    if not (peak or bw):
        ax.text(0.02, 0.98, "machine.json missing: no roofs drawn", transform=ax.transAxes, va="top", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (flop per stored parameter byte, log scale)")
    ax.set_ylabel("achieved GFLOP/s (useful flops / median time, log scale)")
    ax.set_title(f"Roofline, {threads_word(threads)} (intensity counts parameter bytes only)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    return _save(fig, path)


def plot_scaling(scaling, path, threads=None) -> Path:
    """Speed-up of csr over dense vs sparsity, one line per width, one panel per batch size."""
    threads, fig, panels = _per_batch(scaling, threads)
    if fig is None:
        return _empty(path, "no scaling records")
    recs = records_of(scaling)
    widths = sorted({r.get("width") for r in recs if r.get("width") is not None})
    styles = ["-", "--", "-.", ":"]
    for ax, batch in panels:
        ax.axhline(1.0, color=ENGINE_COLORS["dense"], ls="--", lw=1.0, label="dense (= 1)")
        for i, width in enumerate(widths):
            sub = {"records": [r for r in recs if r.get("width") == width]}
            for engine in (e for e in engines_of("weight") if e != "dense"):
                rows = speedups(sub, engine, "weight", batch, threads)
                if rows:
                    ax.plot([100 * r["sparsity"] for r in rows], [r["speedup"] for r in rows],
                            color=ENGINE_COLORS[engine], ls=styles[i % len(styles)], marker="o", ms=3 + 1.5 * i,
                            label=f"{engine}, width {width}")
        _log_y(ax)
        ax.set_ylabel("speed-up over dense (×, log scale)")
        _pct_axis(ax, "weight sparsity k (%)")
        ax.legend(fontsize=8)
    fig.suptitle("Scaling: CSR speed-up over dense by layer width")
    return _save(fig, path)
