"""The speed targets of the open issues (12: csr on every CPU; 13: N:M and blocks), read off a study's
results folder: one table a machine, so that a re-measurement on another CPU is one command
(not collected by pytest: no bench_ prefix).

    sparsenet study --timing-only results/<run id> ...   # on the machine to be measured
    python bench/targets.py results/<run id>

Every figure comes from timings.json through sparsenet.analysis (the study's interleaved rounds; the
dense baselines timed beside each k): a ratio of two records timed back to back in one run is the
median of their per-round ratios ("paired rounds"), else the ratio of their medians; nothing is timed here. "met" compares the figure with
the issue's target as written; a ratio inside its records' noise can fall either side on a re-run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsenet import analysis as A                          # noqa: E402
from sparsenet.results import load_results                   # noqa: E402

K90, NM_KS = 0.9, {"2:4": (0.5, 1.4), "1:4": (0.75, 2.5)}    # (k, the target over the best dense)


def _pct(k) -> str:
    return "never" if k is None else A.pct(k)


def _how(paired) -> str:
    return " (paired rounds)" if paired else " (medians)"


def _at(rows, k):
    return next((r for r in rows if A.sparsity_key(r["sparsity"]) == A.sparsity_key(k)), None)


def rises(timings, engine, method, batch, threads) -> list:
    """(k, next k, time ratio, that ratio over dense's) where `engine` is slower at the next k timed
    and the 95 % interval of the time ratio (analysis.ratio_interval) lies above the ratio of the
    dense net timed beside each k (a slow spell of the machine hits both; 1 where dense did not
    move, or where the study timed the two k side by side): a step up in k that is neither noise nor
    the machine's phase."""
    rows = A.speedups(timings, engine, method, batch, threads)
    out = []
    for a, b in zip(rows, rows[1:]):
        ka, kb = a["sparsity"], b["sparsity"]
        ci = A.ratio_interval(timings, (engine, method, kb, batch, threads), (engine, method, ka, batch, threads))
        dense = max(b["dense_s"] / a["dense_s"], 1.0)
        ra, rb = (A.engine_records(timings, engine, method, k, batch, threads) for k in (ka, kb))
        if ra and rb and all(kb in x.get("retimed_with", ()) for x in ra) and all(ka in x.get("retimed_with", ()) for x in rb):
            dense = 1.0          # the two k timed side by side (study.retime_steps): one phase hit both
        relative = (b["seconds"] / a["seconds"]) / dense
        if ci and ci["low"] > dense:
            out.append((ka, kb, ci["ratio"], relative))
    return out


def csr_rows(timings) -> list:
    rows = []
    for b in A.batch_sizes(timings):
        for t in A.thread_counts(timings):
            if not A.select(A.records_of(timings), engine="csr", batch=b, threads=t):
                continue
            numpy_be = A.break_even(timings, "csr", "weight", b, t)
            best_be = A.break_even(timings, "csr", "weight", b, t, baseline="fastest")
            at90 = _at(A.speedups(timings, "csr", "weight", b, t), K90)
            scipy = []
            for k in sorted({A.sparsity_key(r["sparsity"]) for r in A.select(
                    A.records_of(timings), engine="csr-scipy", batch=b, threads=t)}):
                ratio = A.time_ratio(timings, ("csr-scipy", "weight", k, b, t), ("csr", "weight", k, b, t))
                if k >= 0.5 and ratio:
                    scipy.append((ratio, k))
            worst = min(scipy) if scipy else None
            steps = rises(timings, "csr", "weight", b, t)
            rows.append([b, t, _pct(numpy_be), _pct(best_be), f"x{at90['speedup']:.2f}" if at90 else "–",
                         f"x{worst[0]:.2f} at {A.pct(worst[1])}" if worst else "–",
                         "; ".join(f"{A.pct(a)}->{A.pct(c)} x{r:.2f} (x{rel:.2f} of dense's)" for a, c, r, rel in steps)
                         or "none"])
    return rows


def structured_rows(timings) -> list:
    rows = []
    for t in A.thread_counts(timings):
        for name, (k, target) in NM_KS.items():
            row = A.speedup_at(timings, "nm", "nm", k, 256, t, baseline="fastest")
            best = A.fastest_dense(timings, 256, t, k)
            if row and best:
                ratio = row["speedup"]
                rows.append([f"nm {name}, batch 256", t, f"x{ratio:.2f} over {best[0]}{_how(row['paired'])}",
                             f">= x{target}", "met" if ratio >= target else "not met"])
        bsr = A.select(A.records_of(timings), engine="bsr", method="block", sparsity=K90, batch=256, threads=t)
        peak = A.run_peak(timings, t, K90)
        if bsr and peak and A.has_rate(bsr[0]):
            frac = A.peak_fraction(timings, None, bsr[0], peak)
            paired = A.peak_pair(timings, bsr[0]) is not None
            rows.append(["bsr 90 %, batch 256, useful GFLOP/s", t, f"{100 * frac:.0f} % of the sgemm peak timed "
                         f"beside it ({peak:.0f} GFLOP/s){_how(paired)}", ">= 70 %", "met" if frac >= 0.7 else "not met"])
        for engine, method, base in (("bsr", "block", "bsr-scipy"),):     # nm has no scipy baseline
            ratios = []
            for b in A.batch_sizes(timings):
                for k in sorted({A.sparsity_key(r["sparsity"]) for r in A.select(
                        A.records_of(timings), engine=base, batch=b, threads=t)}):
                    ratio = A.time_ratio(timings, (base, method, k, b, t), (engine, method, k, b, t))
                    if k > 0 and ratio:
                        ratios.append((ratio, k, b))
            if ratios:
                r, k, b = min(ratios)
                rows.append([f"{engine} vs {base} (lowest, k > 0)", t, f"x{r:.2f} at k={A.pct(k)}, batch {b}",
                             ">= x3", "met" if r >= 3 else "not met"])
    return rows


def steps_rows(timings) -> list:
    """Every engine's steps up in k (rises), per batch and threads; engines with none are left out. An
    engine whose time does not depend on k (names.K_INDEPENDENT) is marked: its steps show the noise
    that is left, not a cliff."""
    from sparsenet.names import ENGINE_METHOD, K_INDEPENDENT
    rows = []
    for engine in A.engines_present(timings):
        method = ENGINE_METHOD.get(engine)
        if engine == "dense" or method is None:
            continue
        for b in A.batch_sizes(timings):
            for t in A.thread_counts(timings):
                steps = rises(timings, engine, method, b, t)
                if steps:
                    name = engine + (" (time independent of k)" if engine in K_INDEPENDENT else "")
                    rows.append([name, b, t, "; ".join(f"{A.pct(k0)}->{A.pct(k1)} x{r:.2f} (x{rel:.2f} of dense's)"
                                                         for k0, k1, r, rel in steps)])
    return rows


def table(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="a study's results folder (holding timings.json)")
    args = ap.parse_args()
    res = load_results(args.folder)
    timings, machine = res.get("timings"), res.get("machine") or {}
    if not timings:
        ap.error(f"{args.folder} holds no timings.json")
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})"
                     for b in machine.get("blas") or [] if b.get("user_api") == "blas")
    print(f"# Targets: {args.folder}\n\nCPU {machine.get('cpu', '?')}, kernel ISA {machine.get('isa', '?')}, "
          f"Numba target {machine.get('numba_cpu', '?')}, BLAS {blas or '?'}\n")
    print("## csr (issue 12): break-even against numpy's dense and the fastest dense; x dense at 90 %; the "
          "lowest csr / scipy at k >= 50 %; steps up in k beyond noise and beyond the dense net timed beside them\n")
    print(table(["batch", "threads", "break-even (numpy)", "break-even (fastest)", "x dense at 90 %",
                 "csr / scipy (lowest)", "slower at a higher k (95 % interval above 1, beyond dense's)"], csr_rows(timings)))
    steps = steps_rows(timings)
    print("\n## Every engine: steps up in k (issue 12: monotone in k within noise)\n")
    print(table(["engine", "batch", "threads", "slower at a higher k"], steps) if steps else "none")
    rows = structured_rows(timings)
    if rows:
        print("\n## N:M and blocks (issue 13)\n")
        print(table(["figure", "threads", "measured", "target", ""], rows))


if __name__ == "__main__":
    main()
