"""The timing harness: how every inference time in sparsenet is measured (study and bench/ alike).

Method (one place, so the study and the pytest-benchmark suites agree):
- one warm call per case outside the timer (the first call of a Numba engine compiles it; the study
  records compile time separately via ``engine.warmup``);
- calibration, once per case: the number of calls per round is chosen so one round lasts at least
  ``min_time`` (a batch-1 call of a few microseconds is timed in a loop; per-call time = loop / calls);
- rounds are interleaved: round r times every case once, in an order shuffled by (seed, r), so slow
  drift (turbo, a neighbour's load) hits all engines alike; the cases of one cell (threads, batch:
  an engine and the dense baselines it is set against) are timed back to back, the cells in shuffled
  order, so round r of two cases of a cell is a pair timed within a second or so (analysis sets
  paired rounds against each other: a VM whose speed flips between two levels every few seconds,
  as ours did by x1.5, moved a ratio of medians by as much and a median of paired ratios by ~1 %);
  within a cell the multi-threaded cases of one thread pool come together, so the pause between
  pools (PoolClock) is paid about once per cell, not at every other case;
- thread limits (threads.limit, or the engine's threads_context) are held around each case's
  timing loop, not per call; the garbage collector is off inside a loop;
- ``median_s`` is the median over rounds of the per-call time, ``min_s``/``max_s`` the extremes,
  ``spread = max_s / min_s`` and ``flagged = spread > SPREAD_LIMIT``; every record also names the
  kernel plan of the timed call (results.py has the schema), and ``timed_at`` (the run's start, the
  same for every case of one time_cases call: records with equal ``timed_at`` pair round by round,
  stats.paired) with ``round_at_s`` (when each of its rounds started, seconds after ``timed_at``).

Which cases to time is grid.py's job; this module times whatever cases it is given.
"""
from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from sparsenet.model import forward, layer_sizes
from sparsenet.progress import bar as progress_bar
from sparsenet.results import SPREAD_LIMIT
from sparsenet.threads import blas_library, limit, pools_of

ROUNDS = 7          # default rounds per case
MIN_TIME = 0.02     # default seconds per round (per case)
SETTLE_S = 0.15     # pause after a thread pool's last use before a case on another pool (PoolClock)
MAX_CALLS = 100_000  # a round never makes more calls than this


@dataclass
class Case:
    """One thing to time: a built engine, its fixed input, and the labels of its TIMING record."""

    engine: Callable              # engine(X) -> logits
    X: np.ndarray                 # (batch, n_in) float32, fixed by seed
    name: str                     # engine name: dense | csr | csr-scipy | shrunk
    method: str                   # how the net was pruned: weight | neuron | none
    sparsity: float               # fraction removed, in [0, 1)
    threads: int                  # thread limit held while timing
    params: tuple = field(repr=False, default=())  # the (unshrunk) pruned net, the oracle's input
    width: Optional[int] = None   # scaling cases: n_in = n_out = width; None for the MLP
    calls: Optional[int] = None   # calls per round, set by calibrate()
    round_s: Optional[float] = field(default=None, repr=False)  # estimated seconds of one round
    last_out: Optional[np.ndarray] = field(default=None, repr=False)  # the last timed call's logits
    beside: Optional[int] = None  # timed in the cell of this batch size (the sgemm peak: beside batch 256)

    @property
    def batch(self) -> int:
        return int(self.X.shape[0])


def case_id(case) -> str:
    """Readable id: ``csr-s90-b256-t2`` (``-w4096`` appended for scaling cases)."""
    s = f"{case.name}-s{round(case.sparsity * 100):d}-b{case.batch}-t{case.threads}"
    return s if case.width is None else f"{s}-w{case.width}"


def make_input(batch: int, n_in: int, seed: int = 0) -> np.ndarray:
    """A fixed input batch, (batch, n_in) float32 in [0, 1) like scaled MNIST pixels."""
    return np.random.default_rng(seed).random((batch, n_in), dtype=np.float32)


def make_case(name: str, params, *, method: str, sparsity: float, batch: int, threads: int,
              width: Optional[int] = None, seed: int = 0, engine=None, X=None) -> Case:
    """Build (or wrap an already built) engine over `params` with a seeded input of `batch` rows.

    `params` is the pruned, unshrunk net (the "shrunk" engine shrinks it itself); `engine` and `X`
    may be passed to share them between cases.
    """
    if engine is None:
        from sparsenet.engines import make_engine
        engine = make_engine(name, params, threads=threads)
    if X is None:
        X = make_input(batch, layer_sizes(params)[0], seed)
    if X.shape[0] != batch:
        raise ValueError(f"input has {X.shape[0]} rows, expected batch {batch}")
    return Case(engine=engine, X=X, name=name, method=method, sparsity=float(sparsity),
                threads=int(threads), params=tuple(params), width=width)


def peak_case(n: int, threads: int, sparsity: float = 0.0, beside: Optional[int] = None) -> Case:
    """The sgemm peak (machine.SgemmPeak, n x n) as a case, labelled with the k of the cases it is
    timed beside (study.run_grid times one per thread count with every k's cases) and timed in the
    cell of batch `beside` (peak_beside: the useful GFLOP/s of those cases pair with it round by round)."""
    from sparsenet.machine import PEAK_NAME, SgemmPeak
    X = np.random.default_rng(1).random((int(n), int(n)), dtype=np.float32)
    return Case(engine=SgemmPeak(n), X=X, name=PEAK_NAME, method="none", sparsity=float(sparsity),
                threads=int(threads), beside=None if beside is None else int(beside))


def peak_beside(n: int, batches: Sequence[int]) -> Optional[int]:
    """The batch size whose cell an n x n sgemm peak is timed in: the largest batch not above n (the
    largest of all when every batch is): the batches whose useful GFLOP/s are set against the peak."""
    batches = sorted(int(b) for b in batches)
    if not batches:
        return None
    return max((b for b in batches if b <= n), default=batches[-1])


def cell(case) -> tuple:
    """The cell a case is timed in: (threads, batch, or the batch it is timed beside). The cases of a
    cell are timed back to back in every round (round_order), so round r of two of them pairs up."""
    return (int(case.threads), int(case.batch if case.beside is None else case.beside))


# --- thread limits and the loop ------------------------------------------------------------------

def threads_held(case):
    """Context holding a case's thread limits: the engine's own threads_context when it has one,
    else threads.limit (the one owner of BLAS and Numba thread limits)."""
    ctx = getattr(case.engine, "threads_context", None)
    return ctx() if callable(ctx) else limit(case.threads)


@contextlib.contextmanager
def gc_off():
    """The garbage collector off inside the block (as in a timing loop)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _loop(case, calls: int) -> float:
    """Seconds for `calls` calls of case.engine(case.X) (caller holds threads and disables GC); the
    last call's output is kept in case.last_out (check_case can check the timed call itself)."""
    fn, X = case.engine, case.X
    t0 = time.perf_counter()
    for _ in range(calls - 1):
        fn(X)                       # discarded at once, as a caller would (its memory reused)
    out = fn(X) if calls > 0 else None
    t = time.perf_counter() - t0
    case.last_out = out
    return t


# --- calibration and timing ----------------------------------------------------------------------

def calibrate(case: Case, min_time: float = MIN_TIME, max_calls: int = MAX_CALLS) -> int:
    """Calls per round so that one round lasts at least `min_time`; stored in ``case.calls``.

    Like timeit's autorange: 1, 2, 5, 10, ... calls until a loop takes >= min_time / 5, then scale.
    ``case.round_s`` keeps the estimated seconds of one round.
    """
    n = 1
    with threads_held(case), gc_off():
        while True:
            t = _loop(case, n)
            if t >= min_time / 5 or n >= max_calls:
                break
            n = n * 5 // 2 if str(n)[0] == "2" else n * 2
    calls = n if t <= 0 else math.ceil(n * min_time / t)
    case.calls = int(min(max(calls, 1), max_calls))
    case.round_s = t / n * case.calls
    return case.calls


def warm(case: Case) -> float:
    """One call outside the timer (the compile, for a Numba engine); its seconds."""
    with threads_held(case):
        t0 = time.perf_counter()
        case.engine(case.X)
        return time.perf_counter() - t0


def round_order(n_cases: int, r: int, seed: int = 0, groups: Optional[Sequence] = None,
                cells: Optional[Sequence] = None) -> list:
    """The order in which round `r` times the cases: a permutation fixed by (seed, r). With `groups`
    (a key per case), the cases of one key come together: the keys in a shuffled order, the cases
    shuffled within each. With `cells` (a key per case, as cell()), the cases of one cell come
    together first, the cells in a shuffled order, and `groups` orders the cases within each cell,
    a cell starting with the group the one before it ended with where it has that group (one pause
    between pools fewer)."""
    rng = np.random.default_rng([seed, r])
    order = [int(i) for i in rng.permutation(n_cases)]
    if cells is None:
        return _grouped(order, groups)
    out = []
    for key in dict.fromkeys(cells[i] for i in order):
        members = [i for i in order if cells[i] == key]
        if groups is not None and out:
            last = groups[out[-1]]
            members.sort(key=lambda i: groups[i] != last)          # stable: the group timed last first
        out += _grouped(members, groups)
    return out


def _grouped(order: list, groups: Optional[Sequence]) -> list:
    """`order` with the cases of one group key together, the keys in order of first appearance."""
    if groups is None:
        return order
    keys = list(dict.fromkeys(groups[i] for i in order))          # in order of first appearance
    rank = {key: j for j, key in enumerate(keys)}
    return sorted(order, key=lambda i: rank[groups[i]])          # stable: shuffled within a group


def pool_group(case) -> tuple:
    """The key round_order groups by: the thread pools a multi-threaded case runs on (PoolClock pauses
    between pools); single-threaded cases form one group."""
    if case.threads < 2:
        return ()
    pools = getattr(case.engine, "pools", None)           # an Engine says per batch size (engine_base)
    if callable(pools):
        return tuple(pools(case.batch))
    return pools_of(case.engine)


def record(case: Case, per_call: Sequence[float], timed_at: Optional[float] = None,
           round_at: Sequence[float] = ()) -> dict:
    """The TIMING record (results.py) of a case from its per-round per-call times; `timed_at` (the
    run's wall-clock start) and `round_at` (each round's start, seconds after it) when known."""
    t = np.asarray(per_call, dtype=float)
    lo, hi = float(t.min()), float(t.max())
    spread = hi / lo if lo > 0 else math.inf
    eng = case.engine
    flops = getattr(eng, "flops", None)
    return {
        "engine": case.name, "method": case.method, "sparsity": case.sparsity,
        "batch": case.batch, "threads": case.threads,
        "median_s": float(np.median(t)), "min_s": lo, "max_s": hi,
        "spread": spread, "flagged": bool(spread > SPREAD_LIMIT),
        "rounds": int(t.size), "calls": int(case.calls or 1),
        "per_round_s": [float(x) for x in t],
        "nbytes": int(getattr(eng, "nbytes", 0) or 0),
        "call_nbytes": int(eng.call_nbytes(case.batch)) if hasattr(eng, "call_nbytes")
        else int(getattr(eng, "nbytes", 0) or 0),
        "layout": eng.layout(case.batch) if hasattr(eng, "layout") else case.name,
        **_plan_fields(eng, case.batch),
        "flops": float(flops(case.batch)) if callable(flops) else float("nan"),
        "nnz": int(getattr(eng, "nnz", 0) or 0),
        "layer_sizes": list(_engine_sizes(case)),
        "width": case.width,
        **({} if case.beside is None else {"beside": int(case.beside)}),
        **({} if timed_at is None else {"timed_at": round(float(timed_at), 6),
                                        "round_at_s": [round(float(x), 6) for x in round_at]}),
    }


def _plan_fields(eng, batch: int) -> dict:
    """The kernel plan of the timed call (plan.Plan): its one-line summary, the ISA level, and the
    whole plan, so every figure can be traced to the kernels that produced it."""
    plan = getattr(eng, "plan", None)
    if not callable(plan):
        return {}
    p = plan(batch)
    return {"kernel": p.summary(), "isa": p.isa, "plan": p.to_dict()}


def _engine_sizes(case: Case) -> tuple:
    sizes = getattr(case.engine, "layer_sizes", None)
    if sizes is not None:
        return tuple(int(s) for s in (sizes() if callable(sizes) else sizes))
    if case.name == "shrunk" and case.params:
        from sparsenet.prune import shrink
        return layer_sizes(shrink(case.params))
    return layer_sizes(case.params) if case.params else ()


def time_cases(cases: Sequence[Case], rounds: int = ROUNDS, min_time: float = MIN_TIME,
               warmup: int = 1, seed: int = 0, max_case_s: Optional[float] = None,
               min_rounds: int = 3, progress: bool = True) -> list:
    """Time every case (interleaved round by round); one TIMING record per case, in input order.

    `max_case_s` caps a slow case's total timed seconds by giving it fewer rounds (never fewer
    than `min_rounds`); a case with fewer rounds simply sits out the later rounds.
    """
    cases = list(cases)
    if rounds < 1 or min_time < 0:
        raise ValueError(f"need rounds >= 1 and min_time >= 0, got {rounds}, {min_time}")
    bar = progress_bar(progress, total=len(cases) * (rounds + 1), desc="timing", leave=False)
    n_rounds = [rounds] * len(cases)
    groups = [pool_group(c) for c in cases]
    cells = [cell(c) for c in cases]
    pools = PoolClock()
    # warmed and calibrated a pool at a time, after the other pools have settled: the calibration is
    # timed too, and a case calibrated while the other pool's idle workers still spun got 1 call a
    # round (a 20 ms first call on two threads), so every round timed a cold call
    for i in sorted(range(len(cases)), key=lambda j: groups[j]):
        case = cases[i]
        pools.wait(case)
        for _ in range(warmup):
            warm(case)                      # may include a compile: not used to calibrate
        if case.calls is None:
            calibrate(case, min_time)       # a slow case costs one call here
        if max_case_s is not None:
            per_round = case.round_s if case.round_s is not None else _probe(case)
            n_rounds[i] = max(min(rounds, min_rounds), min(rounds, int(max_case_s / max(per_round, 1e-12))))
        pools.used(case)
        bar.update(1 + rounds - n_rounds[i])
    per_call = [[] for _ in cases]
    round_at = [[] for _ in cases]
    timed_at, t0 = time.time(), time.perf_counter()
    for r in range(max(n_rounds, default=0)):
        for i in round_order(len(cases), r, seed, groups, cells):
            if r >= n_rounds[i]:
                continue
            case = cases[i]
            pools.wait(case)
            with threads_held(case), gc_off():
                round_at[i].append(time.perf_counter() - t0)
                t = _loop(case, case.calls)
            pools.used(case)
            per_call[i].append(t / case.calls)
            bar.update(1)
    bar.close()
    return [record(c, t, timed_at, at) for c, t, at in zip(cases, per_call, round_at)]


class PoolClock:
    """Lets the other thread pools' idle workers fall asleep before a multi-threaded case: `wait(case)`
    sleeps until SETTLE_S after the last multi-threaded case on a pool `case` does not run on ended
    (`used(case)` notes when a case's pools were last used); a single-threaded case, or one on no pool
    of ours (scipy's), waits for nothing.

    OpenBLAS workers spin for a while (2**28 cycles, ~0.1 s) after each call, and so do OpenMP's
    after a Numba parallel region; a region of the other pool started in that window shares the
    cores with them (csr, batch 256, 2 threads: 7 ms alone, 14 ms right after a dense call; dense:
    6.6 ms alone, 9.3 ms right after csr). Interleaving must not charge one engine for another's
    idle threads. Counted from each pool's last use, not from the case before: cases in between (a
    single-threaded library, the same pool) count towards the pause, and a pool used two cases ago
    is waited for too.
    """

    def __init__(self):
        self.last = {}                  # pool -> perf_counter when a multi-threaded case on it ended

    def wait(self, case) -> float:
        """Sleep until the pools `case` does not run on have settled; the seconds slept."""
        mine = set(pool_group(case))
        if case.threads < 2 or not mine:    # one thread, or a library with no pool of ours: the other
            return 0.0                      # core's spinning workers do not take its core
        others = [pool for pool in self.last if pool not in mine]
        pause = max(self.last[pool] for pool in others) + SETTLE_S - time.perf_counter() if others else 0.0
        if pause > 0:
            time.sleep(pause)
        for pool in others:             # settled: not waited for again until used again
            del self.last[pool]
        return max(pause, 0.0)

    def used(self, case) -> None:
        if case.threads >= 2:
            now = time.perf_counter()
            for pool in pool_group(case):
                self.last[pool] = now


def _probe(case: Case) -> float:
    """Seconds of one round of `case` (calibrated calls), measured once."""
    with threads_held(case), gc_off():
        return _loop(case, case.calls)


# --- checking and context ------------------------------------------------------------------------

def reference(case: Case, rows: Optional[int] = None) -> np.ndarray:
    """The oracle: the plain NumPy forward pass of the case's (unshrunk) net on (the first `rows`
    rows of) its input."""
    return forward(case.params, case.X if rows is None else case.X[:rows])


def check_case(case: Case, out: Optional[np.ndarray] = None, rtol: float = 1e-4,
               atol: float = 1e-4, rows: Optional[int] = 64) -> None:
    """Raise AssertionError unless the engine's logits equal the dense reference (float32 tolerance).

    `out`: the logits to check; None: the last timed call's (case.last_out), or a new call when the
    case was not timed. Rows are independent, so the first `rows` rows (None: all) are compared, which
    keeps the check cheap at batch 4096. The tolerance scales with the size of the logits (a sum's
    rounding grows with its terms).
    """
    if out is None:
        out = case.last_out
    if out is None:
        with threads_held(case):
            out = case.engine(case.X)
    out = np.asarray(out)
    if out.shape[0] != case.batch:
        raise AssertionError(f"{case_id(case)}: output has {out.shape[0]} rows, batch {case.batch}")
    ref = reference(case, rows)
    out = out[:ref.shape[0]]
    if out.shape != ref.shape:
        raise AssertionError(f"{case_id(case)}: output shape {out.shape} != reference {ref.shape}")
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = float(np.abs(out - ref).max(initial=0.0))
    if not err <= (atol + rtol) * scale:
        raise AssertionError(f"{case_id(case)}: max |engine - reference| = {err:.3g} "
                             f"(scale {scale:.3g})")


def extra_info(case: Case) -> dict:
    """Context for pytest-benchmark's extra_info: sizes, counts, threads, BLAS kernel, numba."""
    import numba
    rec = record(case, [1.0])
    info = {k: rec[k] for k in ("engine", "method", "sparsity", "batch", "threads", "nnz",
                                "nbytes", "call_nbytes", "layout", "flops", "layer_sizes", "width")}
    info.update({k: rec[k] for k in ("kernel", "isa") if k in rec})
    info["calls"] = case.calls
    info.update(blas_library())
    info["numba"] = numba.__version__
    return info


def pedantic_kwargs(case: Case, rounds: int = ROUNDS, min_time: float = MIN_TIME) -> dict:
    """Arguments for ``benchmark.pedantic(case.engine, **kw)`` timed like time_cases.

    Call after the warm call (``warm(case)``); iterations come from the same calibration.
    """
    if case.calls is None:
        calibrate(case, min_time)
    return {"args": (case.X,), "iterations": case.calls, "rounds": rounds, "warmup_rounds": 0}
