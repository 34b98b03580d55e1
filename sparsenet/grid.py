"""The case grid: which (engine, sparsity, batch, threads[, width]) points a timing stage times, which
are skipped and why, and the cases (engines, nets, inputs) built for them.

One source for building and resuming: a stage walks `grid.units()` (the pieces timed and saved
together: one sparsity of the MLP, or one (width, sparsity) of the scaling study), asks
`grid.points(unit)` for that unit's points, leaves out those already recorded (`Point.key` equals
`record_key` of their record) or skipped (`grid.skip`), and times `grid.cases(unit, points)`.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from sparsenet.model import Layer, layer_sizes
from sparsenet import names
from sparsenet.names import method_of
from sparsenet.timing import make_case, make_input


class Point(NamedTuple):
    """One timing of a grid (a TIMING record's labels)."""

    engine: str
    sparsity: float
    batch: int
    threads: int
    width: Optional[int] = None   # scaling study: n_in = n_out = width; None for the MLP

    def key(self) -> tuple:
        """What identifies the point in saved records (sparsity rounded: it went through JSON)."""
        return (self.engine, round(self.sparsity, 6), self.batch, self.threads, self.width)

    @property
    def id(self) -> str:
        """Readable id, as timing.case_id: ``csr-s90-b256-t2`` (``-w4096`` for scaling points)."""
        s = f"{self.engine}-s{round(self.sparsity * 100):d}-b{self.batch}-t{self.threads}"
        return s if self.width is None else f"{s}-w{self.width}"


def record_key(rec: dict) -> tuple:
    """Point.key of a saved TIMING (or skipped) record."""
    return Point(rec["engine"], rec["sparsity"], rec["batch"], rec["threads"], rec.get("width")).key()


def engines_at(engines: Sequence[str], sparsity: float, sparsities: Sequence[float],
               dense_every_k: bool = False) -> tuple:
    """The engines timed at one k of `sparsities`: the dense ones whose time does not depend on k
    (names.K_INDEPENDENT: they multiply the zeros) only at the smallest k, unless `dense_every_k`."""
    if dense_every_k or sparsity == min(sparsities):
        return tuple(engines)
    return tuple(e for e in engines if e not in names.K_INDEPENDENT)


# --- nets ----------------------------------------------------------------------------------------

def pruned(params, method: str, sparsity: float):
    """The net an engine is built from: weight-pruned, neuron-pruned, or as is (method none)."""
    from sparsenet import prune
    if method == "none":
        return tuple(params)
    return prune.apply_masks(params, prune.make_masks(params, method, sparsity))


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


# --- what not to time ----------------------------------------------------------------------------

RATES_GFLOPS = {"dense": 40.0, "csr": 8.0, "csr-scipy": 4.0, "shrunk": 40.0, "bsr": 8.0, "bsr-scipy": 1.0, "nm": 8.0}
# conservative 1-thread rates, used only to predict (and skip) very slow cases (figures behind
# them: docs/perf-notes.md; scipy's BSR ran at 0.6-1.1 GFLOP/s on the Xeon at batch 4096, so its
# slowest cases, 2.5-8.5 s per call at k <= 90 %, were a third of the default study's timing stage)


def skip_reason(engine: str, n_weights: int, sparsity: float, batch: int, n_io: int,
                max_bytes: float = 2e9, max_call_s: float = 2.0,
                max_baseline_call_s: Optional[float] = None) -> Optional[str]:
    """Why a case should not be timed (too much memory, or a call predicted too slow), or None.

    Memory: weights (dense 4 B/entry; CSR 8 B/nonzero) + input and output (n_io floats per row);
    the limit leaves room for the temporaries of building an engine (a dense copy, CSR indices).
    Time: flops (all weights for dense/shrunk, nonzeros for CSR) over RATES_GFLOPS, against
    `max_call_s`, or `max_baseline_call_s` (when given) for a library baseline (names.LIBRARY_BASELINES:
    scipy's slow cases at large batches were half of the default study's timing stage).
    """
    baseline = max_baseline_call_s is not None and engine in names.LIBRARY_BASELINES
    if baseline:
        max_call_s = min(max_call_s, max_baseline_call_s)
    nnz = round((1.0 - sparsity) * n_weights)
    dense = engine in names.DENSE_ENGINES
    mem = (4 * n_weights if dense else 8 * nnz) + 4 * batch * n_io
    if mem > max_bytes:
        return f"{mem / 1e9:.1f} GB > {max_bytes / 1e9:.1f} GB"
    rate = RATES_GFLOPS.get(engine) or RATES_GFLOPS.get(names.SMALL_BATCH_ENGINES.get(engine, ("",))[0], 1.0)
    secs = 2.0 * batch * (n_weights if dense else nnz) / (rate * 1e9)
    if secs > max_call_s:
        limit = "the library baseline limit " if baseline else ""
        return f"predicted {secs:.2g} s per call > {limit}{max_call_s:g} s"
    return None


def small_batch_skip(engine: str, batch: int) -> Optional[str]:
    """Why an engine that differs from another only at small batches is not timed at `batch`, or None."""
    if engine not in names.SMALL_BATCH_ENGINES:
        return None
    from sparsenet.plan import Tuning
    base, field = names.SMALL_BATCH_ENGINES[engine]
    limit = getattr(Tuning(), field)
    return None if batch <= limit else f"runs {base}'s kernels above batch {limit} (plan.Tuning.{field})"


def scaling_skip(engine: str, sparsity: float, batch: int, width: int, max_bytes: float = 1.2e9,
                 max_call_s: float = 2.0, max_baseline_call_s: Optional[float] = None) -> Optional[str]:
    """skip_reason for one square layer of `width`."""
    return skip_reason(engine, width * width, sparsity, batch, 2 * width, max_bytes, max_call_s,
                       max_baseline_call_s)


# --- engines -------------------------------------------------------------------------------------

SHARE_BYTES = 256 * 2 ** 20   # engines above this size are shared across batch sizes


def _estimate_nbytes(params) -> int:
    return sum(8 * int(np.count_nonzero(layer.weight)) for layer in params)


def _engines_for(make_engine, name, params, threads, batches) -> dict:
    """{batch: engine}: one engine per batch size (an engine may keep buffers sized for the last
    batch it ran, and interleaved rounds would otherwise re-allocate them inside the timer), built
    once and copied (Engine.copy: the stored weights shared, scratch buffers its own; building the
    layouts again for every batch took a sixth of the timing stage), or one shared engine when it is
    too large to hold several scratch sets."""
    engine = make_engine(name, params, threads=threads)
    if _estimate_nbytes(params) > SHARE_BYTES or not hasattr(engine, "copy"):
        return {b: engine for b in batches}
    return {b: engine if i == 0 else engine.copy() for i, b in enumerate(batches)}


def _default_make_engine(name, params, threads=None):
    from sparsenet.engines import make_engine
    return make_engine(name, params, threads=threads)


# --- grids ---------------------------------------------------------------------------------------

class Grid:
    """engines x sparsities x batches x threads (x widths), dense at the smallest k only unless
    `dense_every_k`; subclasses say which net a unit times and what to skip."""

    def __init__(self, engines: Sequence[str], sparsities: Sequence[float], batches: Sequence[int],
                 threads: Sequence[int], widths: Sequence[Optional[int]] = (None,),
                 dense_every_k: bool = False, max_call_s: float = 2.0, max_bytes: float = 1.2e9,
                 seed: int = 0, make_engine: Optional[Callable] = None,
                 max_baseline_call_s: Optional[float] = None):
        self.engines, self.sparsities = tuple(engines), tuple(sparsities)
        self.batches, self.threads, self.widths = tuple(batches), tuple(threads), tuple(widths)
        self.dense_every_k, self.max_call_s, self.max_bytes = dense_every_k, max_call_s, max_bytes
        self.max_baseline_call_s = max_baseline_call_s
        self.seed = seed
        self.make_engine = make_engine or _default_make_engine   # (name, params, threads=) -> engine

    def units(self) -> list:
        """(width, k) pieces, in the order they are timed and saved."""
        return [(w, k) for w in self.widths for k in self.sparsities]

    def points(self, unit) -> list:
        """The unit's points: engine, then threads, then batch (the order of its cases); an engine
        whose pruning has no net at k (N:M at k * M not whole) has none."""
        width, k = unit
        engines = [e for e in engines_at(self.engines, k, self.sparsities, self.dense_every_k)
                   if names.has_sparsity(self.method(e), k)]
        return [Point(e, k, b, t, width) for e in engines for t in self.threads for b in self.batches]

    def all_points(self) -> list:
        return [p for u in self.units() for p in self.points(u)]

    def method(self, engine: str) -> str:
        """How the net `engine` times is pruned (names.ENGINE_METHOD)."""
        return method_of(engine)

    def skip(self, point: Point) -> Optional[str]:
        """Why `point` is not timed (memory, or a call predicted too slow), or None."""
        raise NotImplementedError

    def net(self, unit, method: str) -> tuple:
        """The (unshrunk) pruned net of a unit's `method` cases."""
        raise NotImplementedError

    def input(self, batch: int, n_in: int) -> np.ndarray:
        """The input of every case of `batch` rows: seeded uniform [0, 1) floats."""
        return make_input(batch, n_in, self.seed)

    def cases(self, unit, points: Sequence[Point]) -> list:
        """Built cases of `points` (all of `unit`), in their order: one engine per (engine, threads,
        batch) (see _engines_for), one net per method and one input per batch, shared."""
        nets, inputs, built, out = {}, {}, {}, []
        for p in points:
            method = self.method(p.engine)
            if method not in nets:
                nets[method] = self.net(unit, method)
            net = nets[method]
            if (p.engine, p.threads) not in built:
                batches = [q.batch for q in points if (q.engine, q.threads) == (p.engine, p.threads)]
                built[p.engine, p.threads] = _engines_for(self.make_engine, p.engine, net, p.threads, batches)
            if p.batch not in inputs:
                inputs[p.batch] = self.input(p.batch, layer_sizes(net)[0])
            out.append(make_case(p.engine, net, method=method, sparsity=p.sparsity, batch=p.batch,
                                 threads=p.threads, width=p.width,
                                 engine=built[p.engine, p.threads][p.batch], X=inputs[p.batch]))
        return out


class MLPGrid(Grid):
    """The timing grid of a trained net: weight-pruned for dense/csr/csr-scipy, neuron-pruned for shrunk."""

    def __init__(self, params, *args, inputs: Optional[np.ndarray] = None, **kw):
        super().__init__(*args, **kw)
        self.params = tuple(params)
        # the rows a case's batch is cut from (e.g. the test images: zero-skipping engines depend on
        # the data); None: seeded uniform [0, 1) inputs (timing.make_input)
        self.inputs = None if inputs is None else np.ascontiguousarray(inputs, dtype=np.float32)
        sizes = layer_sizes(self.params)
        self._n_weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        self._n_io = sizes[0] + sizes[-1] + 2 * max(sizes)

    def skip(self, point: Point) -> Optional[str]:
        return small_batch_skip(point.engine, point.batch) or skip_reason(
            point.engine, self._n_weights, point.sparsity, point.batch, self._n_io, self.max_bytes, self.max_call_s,
            self.max_baseline_call_s)

    def input(self, batch: int, n_in: int) -> np.ndarray:
        if self.inputs is None:
            return super().input(batch, n_in)
        reps = -(-batch // self.inputs.shape[0])
        return np.ascontiguousarray(np.tile(self.inputs, (reps, 1))[:batch])

    def net(self, unit, method: str) -> tuple:
        return pruned(self.params, method, unit[1])


class ScalingGrid(Grid):
    """One square He-normal layer per width, magnitude-pruned (scaling_params), for every engine."""

    def method(self, engine: str) -> str:
        return "weight"

    def skip(self, point: Point) -> Optional[str]:
        return scaling_skip(point.engine, point.sparsity, point.batch, point.width, self.max_bytes,
                            self.max_call_s, self.max_baseline_call_s)

    def net(self, unit, method: str) -> tuple:
        width, k = unit
        return scaling_params(width, k, self.seed)


def make_cases(grid: Grid, unit=None) -> list:
    """Every case of a grid (or of one unit) that is not skipped; for tests and scripts."""
    out: list = []
    for u in grid.units() if unit is None else [unit]:
        out += grid.cases(u, [p for p in grid.points(u) if not grid.skip(p)])
    return out

