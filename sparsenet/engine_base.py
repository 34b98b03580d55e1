"""The shell every inference engine shares: parameter and input checks, thread limits, the contract.

    eng = make_engine("csr", params, threads=2)
    eng.warmup(batch=256)             # compile (or load the cache); seconds
    with eng.threads_context():       # hold thread limits around many timed calls
        logits = eng(X)               # (B, n_in) -> (B, n_out) float32, a new array
    print(eng.plan(256).describe())   # which kernels that call runs, and why
"""
from __future__ import annotations

import contextlib
import copy as _copy
import threading
import time
from typing import Optional, Sequence

import numpy as np

from sparsenet import kernels, threads as _threads
from sparsenet.checks import is_integer
from sparsenet.model import Layer, check_params
from sparsenet.plan import Plan


def check_batch(batch) -> int:
    """`batch` (rows of X: what `plan` is asked about, what `warmup` calls with) as an int >= 1, else a
    ValueError; an int means an int (numpy's too), not True, 4.0 or "4"."""
    if not is_integer(batch, 1):
        raise ValueError(f"batch must be an integer >= 1 (rows of X), got {batch!r}")
    return int(batch)


class Engine:
    """Common shell: checks, thread limits, counts. Subclasses implement _build, _forward and plan
    (which starts with check_batch)."""

    name = "?"
    uses_blas = False      # which thread pools the forward pass uses
    uses_numba = False
    index_dtype = None
    # scratch buffers a call sizes for its batch (None until the first call): copy() gives a copy its own
    scratch = ("_bufs", "_chunk_bufs")

    def __init__(self, params: Sequence[Layer], threads: Optional[int] = None):
        params = check_params(params)
        self.threads = _threads.max_threads() if threads is None else _threads.check_threads(threads)
        self.n_in = params[0].weight.shape[1]
        self.n_out = params[-1].weight.shape[0]
        self.has_bias = any(l.bias is not None for l in params)
        self._held = 0
        self._busy = threading.Lock()   # held during a call: a call from another thread meanwhile runs on a copy
        self._callbacks = {}        # cfuncs.Callback.address's cache: the kernels' addresses for our arrays
        self._build(params)

    # -- subclass hooks --------------------------------------------------------------------------
    def _build(self, params):
        raise NotImplementedError

    def _forward(self, X: np.ndarray) -> np.ndarray:
        """(B, n_in) float32 C-contiguous, B >= 1 -> (B, n_out) float32, an array nobody else holds."""
        raise NotImplementedError

    def plan(self, batch: int) -> Plan:
        """What a call of this batch size runs (layout, split, per-layer kernels) and why."""
        raise NotImplementedError

    # -- the call --------------------------------------------------------------------------------
    def __call__(self, X) -> np.ndarray:
        """Logits of a batch: (B, n_in) -> (B, n_out) float32, a new array the engine does not keep.

        A row of X holding NaN or +-inf gets NaN logits on every engine: sparse kernels never read
        the inputs their pruned weights skip, so they would otherwise disagree with dense BLAS.
        """
        X = np.asarray(X)
        if X.dtype.kind == "c":
            raise ValueError(f"X must be real, got {X.dtype}")
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise ValueError(f"expected X of shape (B, {self.n_in}), got {X.shape}")
        if X.dtype != np.float32 or not X.flags.c_contiguous:
            X = np.ascontiguousarray(X, dtype=np.float32)
        if X.shape[0] == 0:
            return np.empty((0, self.n_out), np.float32)
        if not self._busy.acquire(blocking=False):
            # another thread is inside a call: its scratch buffers are in use (the bsr and nm kernels
            # release the GIL, and two calls at once returned wrong logits); a copy has its own
            return self.copy()(X)
        try:
            if self._held:
                out = self._forward(X)
            else:
                with _threads.limit(self.threads, self.uses_blas, self.uses_numba):
                    out = self._forward(X)
        finally:
            self._busy.release()
        if not kernels.all_finite(X):
            out[~np.isfinite(X).all(axis=1)] = np.nan
        return out

    @contextlib.contextmanager
    def threads_context(self):
        """Hold this engine's thread limits across many calls (calls inside skip the per-call set)."""
        with _threads.limit(self.threads, True, True):
            self._held += 1
            try:
                yield self
            finally:
                self._held -= 1

    def pools(self, batch: int) -> tuple:
        """The thread pools a call of this batch size runs on ("blas", "numba"): the timing harness
        pauses before a case on another pool (timing.PoolClock) while the other's workers spin."""
        return _threads.pools_of(self)

    def warmup(self, batch: int = 1) -> float:
        """Seconds spent in one call on a zero batch (the compile, or cache load, for Numba)."""
        X = np.zeros((check_batch(batch), self.n_in), np.float32)
        t = time.perf_counter()
        self(X)
        return time.perf_counter() - t

    def copy(self) -> "Engine":
        """Another engine over the same stored weights (shared: nothing writes them after the build)
        with scratch buffers of its own, for calls of another batch size; no layout is built again."""
        new = _copy.copy(self)
        for name in self.scratch:
            if hasattr(new, name):
                setattr(new, name, None)
        new._held = 0
        new._busy = threading.Lock()
        return new

    # -- counts ----------------------------------------------------------------------------------
    def flops(self, batch: int) -> int:
        """Useful flops of a forward pass: 2 * (stored multiply-adds) * batch."""
        return 2 * self.n_weights * int(batch)

    def describe(self) -> dict:
        return {"name": self.name, "layer_sizes": list(self.layer_sizes), "nnz": self.nnz,
                "nbytes": self.nbytes, "index_dtype": self.index_dtype, "threads": self.threads,
                "has_bias": self.has_bias}

    def layout(self, batch: int) -> str:
        """The storage a call of this batch size computes with (recorded with every timing)."""
        return self.plan(batch).layout

    def call_nbytes(self, batch: int) -> int:
        """Bytes of the stored parameters a call of this batch size reads (nbytes: the canonical ones)."""
        return self.plan(batch).nbytes

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} sizes={self.layer_sizes} nnz={self.nnz} threads={self.threads}>"
