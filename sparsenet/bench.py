"""The timing harness: how every inference time in sparsenet is measured (study and bench/ alike).

Method (one place, so the study and the pytest-benchmark suites agree):
- one warm call per case outside the timer (the first call of a Numba engine compiles it; the study
  records compile time separately via ``engine.warmup``);
- calibration, once per case: the number of calls per round is chosen so one round lasts at least
  ``min_time`` (a batch-1 call of a few microseconds is timed in a loop; per-call time = loop / calls);
- rounds are interleaved: round r times every case once, in an order shuffled by (seed, r), so slow
  drift (turbo, a neighbour's load) hits all engines alike;
- thread limits (BLAS through threadpoolctl, Numba through ``numba.set_num_threads``) are held around
  each case's timing loop, not per call; the garbage collector is off inside a loop;
- ``median_s`` is the median over rounds of the per-call time, ``min_s``/``max_s`` the extremes,
  ``spread = max_s / min_s`` and ``flagged = spread > SPREAD_LIMIT`` (results.py has the schema).
"""
from __future__ import annotations

import contextlib
import functools
import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from sparsenet.model import Layer, forward, layer_sizes
from sparsenet.results import SPREAD_LIMIT

ROUNDS = 7          # default rounds per case
MIN_TIME = 0.02     # default seconds per round (per case)
SETTLE_S = 0.15     # pause between multi-threaded cases on different thread pools (see settle)
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


# --- thread limits -------------------------------------------------------------------------------

def hold_threads(n: int):
    """Limit BLAS and Numba to `n` threads inside the block (threads.limit: the one owner)."""
    from sparsenet.threads import limit
    return limit(int(n))


def threads_held(case):
    """Context holding a case's thread limits: the engine's own threads_context when it has one."""
    ctx = getattr(case.engine, "threads_context", None)
    return ctx() if callable(ctx) else hold_threads(case.threads)


_hold = threads_held


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


def _loop(fn, X, calls: int) -> float:
    """Seconds for `calls` calls of fn(X) (caller holds threads and disables GC)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(X)
    return time.perf_counter() - t0


# --- calibration and timing ----------------------------------------------------------------------

def calibrate(case: Case, min_time: float = MIN_TIME, max_calls: int = MAX_CALLS) -> int:
    """Calls per round so that one round lasts at least `min_time`; stored in ``case.calls``.

    Like timeit's autorange: 1, 2, 5, 10, ... calls until a loop takes >= min_time / 5, then scale.
    ``case.round_s`` keeps the estimated seconds of one round.
    """
    n = 1
    with _hold(case), gc_off():
        while True:
            t = _loop(case.engine, case.X, n)
            if t >= min_time / 5 or n >= max_calls:
                break
            n = n * 5 // 2 if str(n)[0] == "2" else n * 2
    calls = n if t <= 0 else math.ceil(n * min_time / t)
    case.calls = int(min(max(calls, 1), max_calls))
    case.round_s = t / n * case.calls
    return case.calls
def warm(case: Case) -> float:
    """One call outside the timer (the compile, for a Numba engine); its seconds."""
    with _hold(case):
        t0 = time.perf_counter()
        case.engine(case.X)
        return time.perf_counter() - t0


def round_order(n_cases: int, r: int, seed: int = 0) -> list:
    """The order in which round `r` times the cases: a permutation fixed by (seed, r)."""
    return [int(i) for i in np.random.default_rng([seed, r]).permutation(n_cases)]


def record(case: Case, per_call: Sequence[float]) -> dict:
    """The TIMING record (results.py) of a case from its per-round per-call times."""
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
        "nbytes": int(getattr(eng, "nbytes", 0) or 0),
        "call_nbytes": int(eng.call_nbytes(case.batch)) if hasattr(eng, "call_nbytes")
        else int(getattr(eng, "nbytes", 0) or 0),
        "layout": eng.layout(case.batch) if hasattr(eng, "layout") else case.name,
        **_plan_fields(eng, case.batch),
        "flops": float(flops(case.batch)) if callable(flops) else float("nan"),
        "nnz": int(getattr(eng, "nnz", 0) or 0),
        "layer_sizes": list(_engine_sizes(case)),
        "width": case.width,
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
    bar = _bar(progress, total=len(cases) * (rounds + 1), desc="timing")
    n_rounds = []
    for case in cases:
        for _ in range(warmup):
            warm(case)                      # may include a compile: not used to calibrate
        if case.calls is None:
            calibrate(case, min_time)       # a slow case costs one call here
        n = rounds
        if max_case_s is not None:
            per_round = case.round_s if case.round_s is not None else _probe(case)
            n = max(min(rounds, min_rounds), min(rounds, int(max_case_s / max(per_round, 1e-12))))
        n_rounds.append(n)
        bar.update(1 + rounds - n)
    per_call = [[] for _ in cases]
    previous = None
    for r in range(max(n_rounds, default=0)):
        for i in round_order(len(cases), r, seed):
            if r >= n_rounds[i]:
                continue
            case = cases[i]
            settle(previous, case)
            previous = case
            with _hold(case), gc_off():
                t = _loop(case.engine, case.X, case.calls)
            per_call[i].append(t / case.calls)
            bar.update(1)
    bar.close()
    return [record(c, t) for c, t in zip(cases, per_call)]


def settle(previous: Optional[Case], case: Case) -> None:
    """Let the previous case's idle worker threads fall asleep before a multi-threaded case that
    runs on another thread pool.

    OpenBLAS workers spin for a while (2**28 cycles, ~0.1 s) after each call, and so do OpenMP's
    after a Numba parallel region; a region of the other pool started in that window shares the
    cores with them (csr, batch 256, 2 threads: 7 ms alone, 14 ms right after a dense call; dense:
    6.6 ms alone, 9.3 ms right after csr). Interleaving must not charge one engine for another's
    idle threads.
    """
    if previous is None or previous.threads < 2 or case.threads < 2:
        return
    pools = lambda c: {pool for pool in ("blas", "numba") if getattr(c.engine, f"uses_{pool}", False)}
    if pools(previous) - pools(case):
        time.sleep(SETTLE_S)


def _probe(case: Case) -> float:
    """Seconds of one round of `case` (calibrated calls), measured once."""
    with _hold(case), gc_off():
        return _loop(case.engine, case.X, case.calls)


def _bar(progress, total, desc):
    if progress:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, leave=False)

    class _Null:
        def update(self, n=1):
            pass

        def close(self):
            pass
    return _Null()


# --- checking and context ------------------------------------------------------------------------

def reference(case: Case, rows: Optional[int] = None) -> np.ndarray:
    """The oracle: the plain NumPy forward pass of the case's (unshrunk) net on (the first `rows`
    rows of) its input."""
    return forward(case.params, case.X if rows is None else case.X[:rows])


def check_case(case: Case, out: Optional[np.ndarray] = None, rtol: float = 1e-4,
               atol: float = 1e-4, rows: Optional[int] = 64) -> None:
    """Raise AssertionError unless the engine's logits equal the dense reference (float32 tolerance).

    Rows are independent, so the first `rows` rows (None: all) are compared, which keeps the check
    cheap at batch 4096. The tolerance scales with the size of the logits (a sum's rounding grows
    with its terms).
    """
    if out is None:
        with _hold(case):
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


def blas_info() -> dict:
    """The BLAS library threadpoolctl sees: its name, version and `architecture` (kernel)."""
    from threadpoolctl import threadpool_info
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            return {"blas": lib.get("internal_api"), "blas_version": lib.get("version"),
                    "blas_architecture": lib.get("architecture")}
    return {"blas": None, "blas_version": None, "blas_architecture": None}


def extra_info(case: Case) -> dict:
    """Context for pytest-benchmark's extra_info: sizes, counts, threads, BLAS kernel, numba."""
    import numba
    rec = record(case, [1.0])
    info = {k: rec[k] for k in ("engine", "method", "sparsity", "batch", "threads", "nnz",
                                "nbytes", "call_nbytes", "layout", "flops", "layer_sizes", "width")}
    info.update({k: rec[k] for k in ("kernel", "isa") if k in rec})
    info["calls"] = case.calls
    info.update(blas_info())
    info["numba"] = numba.__version__
    return info


def pedantic_kwargs(case: Case, rounds: int = ROUNDS, min_time: float = MIN_TIME) -> dict:
    """Arguments for ``benchmark.pedantic(case.engine, **kw)`` timed like time_cases.

    Call after the warm call (``warm(case)``); iterations come from the same calibration.
    """
    if case.calls is None:
        calibrate(case, min_time)
    return {"args": (case.X,), "iterations": case.calls, "rounds": rounds, "warmup_rounds": 0}


# --- grids of cases ------------------------------------------------------------------------------

def pruned(params, method: str, sparsity: float):
    """The net an engine is built from: weight-pruned, neuron-pruned, or as is (k = 0 / none)."""
    from sparsenet import prune
    if method == "none":
        return tuple(params)
    return prune.apply_masks(params, prune.make_masks(params, method, sparsity))


def method_for(engine: str) -> str:
    """Neuron pruning feeds the shrunk engine; weight pruning feeds every other one."""
    return "neuron" if engine == "shrunk" else "weight"


SHARE_BYTES = 256 * 2 ** 20   # engines above this size are shared across batch sizes


def _engines_for(name, params, threads, batches, nbytes_estimate):
    """{batch: engine}: one engine per batch size (an engine may keep buffers sized for the last
    batch it ran, and interleaved rounds would otherwise re-allocate them inside the timer), or one
    shared engine when it is too large to build several times."""
    from sparsenet.engines import make_engine
    if nbytes_estimate > SHARE_BYTES:
        engine = make_engine(name, params, threads=threads)
        return {b: engine for b in batches}
    return {b: make_engine(name, params, threads=threads) for b in batches}


def _estimate_nbytes(params) -> int:
    return sum(8 * int(np.count_nonzero(layer.weight)) for layer in params)


def mlp_cases(params, engines: Iterable[str], sparsity: float, batches: Iterable[int],
              threads: Iterable[int], seed: int = 0, skip: Optional[Callable] = None) -> list:
    """Cases for one sparsity: every engine x threads x batch, one input per batch size.

    `skip(engine, sparsity, batch, threads, width)` may return a reason to leave a case out.
    """
    batches, threads = list(batches), list(threads)
    n_in = layer_sizes(params)[0]
    inputs = {b: make_input(b, n_in, seed) for b in batches}
    nets, out = {}, []
    for name in engines:
        method = method_for(name)
        for t in threads:
            keep = [b for b in batches if not (skip and skip(name, sparsity, b, t, None))]
            if not keep:
                continue
            if method not in nets:
                nets[method] = pruned(params, method, sparsity)
            net = nets[method]
            built = _engines_for(name, net, t, keep, _estimate_nbytes(net))
            out += [make_case(name, net, method=method, sparsity=sparsity, batch=b, threads=t,
                              engine=built[b], X=inputs[b]) for b in keep]
    return out


@functools.lru_cache(maxsize=1)
def _base_layer(width: int, seed: int) -> np.ndarray:
    """He-normal (width, width) float32 weights, kept for the sparsities of one width."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((width, width), dtype=np.float32)
    w *= np.float32(np.sqrt(2.0 / width))
    w.flags.writeable = False
    return w


EXACT_PRUNE_SIZE = 2 ** 25      # above this many weights, the threshold comes from a sample


def scaling_params(width: int, sparsity: float, seed: int = 0) -> tuple:
    """One layer, n_in = n_out = width, He-normal and magnitude-pruned to `sparsity` (linear, no ReLU).

    prune.weight_prune's stable argsort would take minutes at width 16384 (268M weights), so this
    prunes below a threshold: from np.partition of all |w| up to EXACT_PRUNE_SIZE weights (exact
    count up to ties, which random float32 normals almost never have), beyond that from a sorted
    random sample of 2^24 |w| (sparsity within ~0.0003 of the target; records carry the real nnz).
    The weights of a width are generated once (cached).
    """
    w = _base_layer(int(width), int(seed))
    n_prune = round(float(sparsity) * w.size)
    if n_prune == 0:
        return (Layer(w.copy(), None),)
    a = np.abs(w).ravel()
    if w.size <= EXACT_PRUNE_SIZE:
        threshold = np.partition(a, n_prune - 1)[n_prune - 1]     # the largest pruned magnitude
    else:
        sample = np.sort(a[np.random.default_rng(seed).integers(0, a.size, 2 ** 24)])
        threshold = sample[min(round(sparsity * sample.size), sample.size - 1)]
    del a
    return (Layer(np.where(np.abs(w) > threshold, w, np.float32(0)), None),)


RATES_GFLOPS = {"dense": 40.0, "csr": 8.0, "csr-scipy": 4.0, "shrunk": 40.0}
# conservative 1-thread rates: measured on the MLP at batch 4096 on a busy Zen4 core dense 42,
# csr 10-12, csr-scipy 6 GFLOP/s; used only to predict (and skip) very slow cases


def skip_reason(engine: str, n_weights: int, sparsity: float, batch: int, n_io: int,
                max_bytes: float = 2e9, max_call_s: float = 2.0) -> Optional[str]:
    """Why a case should not be timed (too much memory, or a call predicted too slow), or None.

    Memory: weights (dense 4 B/entry; CSR 8 B/nonzero) + input and output (n_io floats per row);
    the limit leaves room for the temporaries of building an engine (a dense copy, CSR indices).
    Time: flops (all weights for dense/shrunk, nonzeros for CSR) over RATES_GFLOPS.
    """
    nnz = round((1.0 - sparsity) * n_weights)
    dense = engine in ("dense", "shrunk")
    mem = (4 * n_weights if dense else 8 * nnz) + 4 * batch * n_io
    if mem > max_bytes:
        return f"{mem / 1e9:.1f} GB > {max_bytes / 1e9:.1f} GB"
    secs = 2.0 * batch * (n_weights if dense else nnz) / (RATES_GFLOPS.get(engine, 1.0) * 1e9)
    if secs > max_call_s:
        return f"predicted {secs:.1f} s per call > {max_call_s:g} s"
    return None


def scaling_skip(engine: str, sparsity: float, batch: int, width: int, max_bytes: float = 1.2e9,
                 max_call_s: float = 2.0) -> Optional[str]:
    """skip_reason for one square layer of `width`."""
    return skip_reason(engine, width * width, sparsity, batch, 2 * width, max_bytes, max_call_s)


def mlp_skip(params, max_call_s: float = 2.0, max_bytes: float = 1.2e9) -> Callable:
    """skip(engine, sparsity, batch, threads, width) for the MLP grid (csr-scipy and csr at batch
    4096 and low k, mainly)."""
    sizes = layer_sizes(params)
    n_weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))

    def skip(engine, sparsity, batch, threads, width=None):
        return skip_reason(engine, n_weights, sparsity, batch, sizes[0] + sizes[-1] + 2 * max(sizes),
                           max_bytes, max_call_s)
    return skip


def scaling_cases(width: int, sparsity: float, engines: Iterable[str], batches: Iterable[int],
                  threads: Iterable[int], seed: int = 0, skip: Optional[Callable] = None) -> list:
    """Cases for one (width, sparsity) of the one-layer scaling study; skip(...) as in mlp_cases."""
    batches, threads = list(batches), list(threads)
    params = None
    inputs, out = {}, []
    for name in engines:
        for t in threads:
            keep = [b for b in batches if not (skip and skip(name, sparsity, b, t, width))]
            if not keep:
                continue
            if params is None:
                params = scaling_params(width, sparsity, seed)
            built = _engines_for(name, params, t, keep, _estimate_nbytes(params))
            for b in keep:
                if b not in inputs:
                    inputs[b] = make_input(b, width, seed)
                out.append(make_case(name, params, method="weight", sparsity=sparsity, batch=b,
                                     threads=t, width=width, engine=built[b], X=inputs[b]))
    return out
