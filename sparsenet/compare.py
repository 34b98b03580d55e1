"""`sparsenet compare`: the results folders of several machines in one Markdown + PNG report.

Regenerable from the JSON alone, like `sparsenet report`. It opens with the verdict per machine
(CPU, ISA level, BLAS kernel, threads), then break-even sparsities and speed-ups per engine and batch
side by side, a figure with one colour per machine, and what differs in the configurations. Folders
whose trained nets or sparsity grids are not comparable are refused, naming what differs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from sparsenet.analysis import (
    batch_sizes, break_even, default_threads, pct, records_of, speedups, verdict,
)
from sparsenet.files import atomic_write_bytes, named_folder, write_json
from sparsenet.plots import _save
from sparsenet.results import load_results

# configuration fields that define the trained nets and the pruning grid: they must agree
NET_FIELDS = ("dataset", "sizes", "seeds", "epochs", "train_subset", "finetune_epochs", "finetune_lr")
GRID_FIELDS = ("sparsities",)
MACHINE_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink",
                  "tab:olive", "tab:cyan", "#333333")


class NotComparable(ValueError):
    """The folders hold results of different trained nets or sparsity grids."""


def _study(results) -> dict:
    return (results.get("config") or {}).get("study") or {}


def _fingerprint(results):
    return ((results.get("config") or {}).get("data") or {}).get("fingerprint")


def machine_label(results) -> dict:
    """CPU model, ISA level, BLAS library and kernel of one results folder."""
    m = results.get("machine") or {}
    isa = m.get("isa") or next((r.get("isa") for r in records_of(results.get("timings")) if r.get("isa")), None)
    blas = (m.get("blas") or [{}])[0] if m.get("blas") else {}
    blas_text = " ".join(str(x) for x in (blas.get("internal_api"), blas.get("version")) if x)
    if blas.get("architecture"):
        blas_text += f" ({blas['architecture']})"
    return {"cpu": m.get("cpu") or "unknown CPU", "isa": isa or "unknown ISA", "blas": blas_text or "unknown BLAS",
            "cores": m.get("n_cores")}


def check_comparable(runs: Sequence[tuple]) -> None:
    """NotComparable naming the folders and fields that differ in the trained nets or sparsity grids."""
    if len(runs) < 2:
        raise NotComparable("compare needs at least two results folders")
    problems = []
    (name0, r0) = runs[0]
    for name, r in runs[1:]:
        for field in NET_FIELDS + GRID_FIELDS:
            a, b = _study(r0).get(field), _study(r).get(field)
            if a != b:
                problems.append(f"{field}: {a!r} in {name0}, {b!r} in {name}")
        fa, fb = _fingerprint(r0), _fingerprint(r)
        if fa and fb and fa != fb:
            problems.append(f"data: fingerprint {fa} in {name0}, {fb} in {name} (other data files)")
    for name, r in runs:
        if not records_of(r.get("timings")):
            problems.append(f"{name} has no timings (run `sparsenet study` there first)")
    if problems:
        raise NotComparable("these results are not comparable (their trained nets or sparsity grids differ):\n  - "
                            + "\n  - ".join(problems))


def config_differences(runs: Sequence[tuple]) -> list:
    """[(field, {folder: value})] of the study settings that differ (timing settings, threads, ...)."""
    fields = sorted(set().union(*(_study(r).keys() for _, r in runs)))
    out = []
    for field in fields:
        values = {name: _study(r).get(field) for name, r in runs}
        if len({repr(v) for v in values.values()}) > 1:
            out.append((field, values))
    return out


def _engines_methods(runs) -> list:
    """(engine, method) pairs timed in every folder, dense excluded, in a stable order."""
    pairs = None
    for _, r in runs:
        here = {(x["engine"], x["method"]) for x in records_of(r.get("timings")) if x["engine"] != "dense"}
        pairs = here if pairs is None else pairs & here
    return sorted(pairs or ())


def _fmt_k(k) -> str:
    return "never" if k is None else pct(k)


def compare_tables(runs, threads=None) -> dict:
    """{"batches", "pairs", "break_even": {(engine, method, batch): [k or None per run]}, "speedup_90": ...}."""
    batches = sorted(set.intersection(*(set(batch_sizes(r.get("timings"))) for _, r in runs)))
    pairs = _engines_methods(runs)
    be, s90 = {}, {}
    for engine, method in pairs:
        for batch in batches:
            be[(engine, method, batch)] = []
            s90[(engine, method, batch)] = []
            for _, r in runs:
                t = r.get("timings")
                th = default_threads(t) if threads is None else threads
                be[(engine, method, batch)].append(break_even(t, engine, method, batch, th))
                rows = [x for x in speedups(t, engine, method, batch, th) if abs(x["sparsity"] - 0.9) < 1e-9]
                s90[(engine, method, batch)].append(rows[0]["speedup"] if rows else None)
    return {"batches": batches, "pairs": pairs, "break_even": be, "speedup_90": s90}


def plot_compare(runs, path, threads=None) -> Path:
    """Speed-up over dense against sparsity for the csr engine on the weight-pruned net, one panel per
    batch size, one colour per machine (the same colour in every panel)."""
    batches = sorted(set.intersection(*(set(batch_sizes(r.get("timings"))) for _, r in runs)))
    n = max(1, len(batches))
    fig = Figure(figsize=(5.2 * min(n, 2), 4.0 * -(-n // 2)), layout="constrained")
    axes = list(fig.subplots(-(-n // 2), min(n, 2), squeeze=False).ravel())
    for ax in axes[len(batches):]:
        ax.set_visible(False)
    for ax, batch in zip(axes, batches):
        for i, (name, r) in enumerate(runs):
            t = r.get("timings")
            th = default_threads(t) if threads is None else threads
            rows = speedups(t, "csr", "weight", batch, th)
            if rows:
                ax.plot([100 * x["sparsity"] for x in rows], [x["speedup"] for x in rows], "o-",
                        color=MACHINE_COLORS[i % len(MACHINE_COLORS)], label=f"{name} ({th} thr)")
        ax.axhline(1.0, color="#999999", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"csr vs dense, batch {batch}", fontsize=10)
        ax.set_xlabel("sparsity k (%)")
        ax.set_ylabel("speed-up over dense (×)")
        ax.legend(fontsize=8)
    return _save(fig, path)


def compare(folders: Sequence, out_dir, threads=None) -> Path:
    """Write out_dir/compare.md (+ compare_speedup.png, compare.json); return the Markdown's path."""
    _check_distinct(folders)
    runs = []
    for folder in folders:
        folder = Path(folder)
        runs.append((named_folder(folder).name, load_results(folder)))
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        runs = [(str(Path(f)), r) for f, (_, r) in zip(folders, runs)]
    check_comparable(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    verdicts = [verdict(r, threads=threads) for _, r in runs]
    labels = [machine_label(r) for _, r in runs]
    tables = compare_tables(runs, threads)

    answers = {v["answer"] for v in verdicts}
    isas = sorted({lab["isa"] for lab in labels})
    md = ["# sparsenet: machines compared", ""]
    md.append(f"The claim is **{answers.pop() if len(answers) == 1 else 'machine-dependent'}** across "
              f"{len(runs)} machines ({', '.join(isas)}). "
              + _depends_sentence(tables, runs))
    md.append("")
    md.append("| folder | CPU | ISA | BLAS | threads | verdict |")
    md.append("| --- | --- | --- | --- | --- | --- |")
    for (name, _), lab, v in zip(runs, labels, verdicts):
        md.append(f"| {name} | {lab['cpu']} | {lab['isa']} | {lab['blas']} | {v['threads']} | {v['answer']} |")
    md += ["", "Each machine's verdict in full:", ""]
    md += [f"- {name}: {v['sentence']}" for (name, _), v in zip(runs, verdicts)]
    md += ["", "## Break-even sparsity (engine as fast as dense from here up)", ""]
    md += _side_by_side(tables, runs, "break_even", _fmt_k)
    md += ["", "## Speed-up over dense at k = 90 %", ""]
    md += _side_by_side(tables, runs, "speedup_90", lambda s: "–" if s is None else f"×{s:.2f}")
    png = plot_compare(runs, out_dir / "compare_speedup.png", threads)
    md += ["", f"![speed-up per machine]({png.name})", ""]
    diffs = config_differences(runs)
    md += ["## What differs in the configurations", ""]
    if diffs:
        md += [f"- `{field}`: " + ", ".join(f"{name} = {value!r}" for name, value in values.items())
               for field, values in diffs]
    else:
        md.append("- nothing: the same study settings on every machine")
    path = out_dir / "compare.md"
    atomic_write_bytes(path, ("\n".join(md) + "\n").encode())
    write_json(out_dir / "compare.json", {
        "folders": [str(f) for f in folders], "machines": labels,
        "verdicts": [{"answer": v["answer"], "threads": v["threads"], "sentence": v["sentence"]} for v in verdicts],
        "break_even": {f"{e}/{m}/b{b}": ks for (e, m, b), ks in tables["break_even"].items()},
        "speedup_90": {f"{e}/{m}/b{b}": s for (e, m, b), s in tables["speedup_90"].items()}})
    return path


def _check_distinct(folders: Sequence) -> None:
    """NotComparable when a folder is given twice (say `.` and its path): its machine would count as two."""
    seen = {}
    for folder in folders:
        key = Path(folder).resolve()
        if key in seen:
            raise NotComparable(f"{folder} and {seen[key]} are the same results folder: give each machine's once")
        seen[key] = folder


def _depends_sentence(tables, runs) -> str:
    """What the answer depends on: the spread of csr's break-even sparsity across machines and batches."""
    ks = {b: tables["break_even"].get(("csr", "weight", b)) for b in tables["batches"]}
    bits = []
    for b, values in ks.items():
        if values and any(v is not None for v in values):
            lo = min(v for v in values if v is not None)
            hi = max(v for v in values if v is not None)
            never = sum(v is None for v in values)
            span = pct(lo) if pct(lo) == pct(hi) else f"{pct(lo)}–{pct(hi)}"
            bits.append(f"batch {b}: {span}" + (f" ({never} machine(s) never)" if never else ""))
    if not bits:
        return "The csr engine never breaks even with dense on these machines."
    return "csr breaks even with dense at " + "; ".join(bits) + " depending on the machine."


def _side_by_side(tables, runs, key, fmt) -> list:
    head = "| engine | method | batch | " + " | ".join(name for name, _ in runs) + " |"
    rows = [head, "| --- | --- | --- | " + " | ".join("---" for _ in runs) + " |"]
    for (engine, method, batch), values in tables[key].items():
        rows.append(f"| {engine} | {method} | {batch} | " + " | ".join(fmt(v) for v in values) + " |")
    return rows
