"""Inference engines behind one call, engine(X) -> logits: dense BLAS, our CSR kernels, scipy CSR, shrunk.

The shell (checks, threads, the contract) is engine_base.Engine; the csr engine lives in
csr_engine.py; which kernels a call runs is its plan (plan.py, `eng.plan(batch)`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from sparsenet.csr import CSR
from sparsenet.csr_engine import CSREngine
from sparsenet.engine_base import Engine, check_batch
from sparsenet.model import Layer, layer_sizes
from sparsenet import dense_kernels
from sparsenet.plan import Plan, Tuning, blas_plan, fused_dense_plan, scipy_plan
from sparsenet.names import ENGINES
from sparsenet.structured_engines import ENGINE_CLASSES as _STRUCTURED   # bsr, nm, bsr-scipy
from sparsenet.threads import blas_library  # noqa: F401  (re-exported: records name the BLAS)


class DenseEngine(Engine):
    """BLAS (numpy matmul) on the full, masked weight matrices."""

    name = "dense"
    uses_blas = True

    def _build(self, params):
        # store W.T contiguous so every layer is a plain (B, n_in) @ (n_in, n_out) GEMM
        self._WT = [np.ascontiguousarray(l.weight.T) for l in params]
        self._b = [l.bias for l in params]
        self.layer_sizes = layer_sizes(params)
        self.nnz = int(sum(np.count_nonzero(l.weight) for l in params))
        self.n_weights = int(sum(l.weight.size for l in params))
        self.nbytes = int(sum(w.nbytes for w in self._WT) + sum(b.nbytes for b in self._b if b is not None))

    def plan(self, batch: int) -> Plan:
        return blas_plan(self.name, check_batch(batch), self.threads, len(self._WT), self.nbytes)

    def _forward(self, X):
        h = X
        last = len(self._WT) - 1
        for i, (WT, b) in enumerate(zip(self._WT, self._b)):
            h = h @ WT                                   # (B, n_in) -> (B, n_out), a new array
            if b is not None:
                h += b
            if i < last:
                np.maximum(h, 0.0, out=h)
        return h


class ShrunkEngine(DenseEngine):
    """BLAS on prune.shrink(params): dead hidden neurons physically removed."""

    name = "shrunk"

    def _build(self, params):
        from sparsenet.prune import shrink
        super()._build(shrink(params))


class FusedDenseEngine(DenseEngine):
    """Our fastest dense: the whole net in one compiled call at small batches (dense_kernels), numpy's
    BLAS chain above tuning.max_fused_batch. skip_zeros: there, sum only the inputs that are nonzero
    in some row of the batch (activation sparsity: zero pixels, ReLU zeros)."""

    name = "dense-fused"
    uses_numba = True

    def __init__(self, params: Sequence[Layer], threads: Optional[int] = None, skip_zeros: bool = False,
                 tuning: Optional[Tuning] = None):
        if not isinstance(skip_zeros, bool):
            raise ValueError(f"skip_zeros must be True or False, got {skip_zeros!r}")
        if tuning is not None and not isinstance(tuning, Tuning):
            raise ValueError(f"tuning must be a plan.Tuning, got {type(tuning).__name__}")
        self.skip_zeros, self.tuning, self._plans, self._bufs = skip_zeros, tuning or Tuning(), {}, None
        super().__init__(params, threads)

    def _build(self, params):
        super()._build(params)
        sizes = self.layer_sizes
        self._weights = np.concatenate([WT.ravel() for WT in self._WT])
        self._w_off = np.concatenate([[0], np.cumsum([WT.size for WT in self._WT])]).astype(np.int64)
        # the BLAS path reads the same weights: views into the one concatenated copy, not a second one
        self._WT = [self._weights[a:b].reshape(WT.shape) for a, b, WT in zip(self._w_off[:-1], self._w_off[1:], self._WT)]
        self._bias = np.concatenate([np.zeros(WT.shape[1], np.float32) if b is None else b
                                     for WT, b in zip(self._WT, self._b)]).astype(np.float32)
        self._sizes = np.asarray(sizes, np.int64)
        self._width = max(sizes[1:-1], default=1)
        self._idx = np.empty(max(sizes[:-1]), np.int64)

    def plan(self, batch: int) -> Plan:
        B = check_batch(batch)
        pc = self._plans.get(B)
        if pc is None:
            p = fused_dense_plan(self.name, B, self.threads, [WT.shape for WT in self._WT], self.nbytes,
                                 self.tuning, self.skip_zeros)
            pc = self._plans[B] = (p, np.asarray([l.parallel for l in p.layers], np.bool_))
        return pc[0]

    def pools(self, batch: int) -> tuple:
        """numpy's BLAS chain above tuning.max_fused_batch, our Numba kernel up to it."""
        return ("blas",) if self.plan(batch).split == "blas" else ("numba",)

    def _forward(self, X):
        B = X.shape[0]
        if B not in self._plans:
            self.plan(B)
        p, parallel = self._plans[B]
        if p.split == "blas":
            return super()._forward(X)
        if self._bufs is None or self._bufs[0] < B:
            # activations of the hidden layers (two, alternating); a parallel layer's parts (one a thread)
            self._bufs = (B, np.empty(B * self._width, np.float32), np.empty(B * self._width, np.float32),
                          dense_kernels.parts_buffer(self.threads, B, self._sizes))
        logits = np.empty((B, self.n_out), np.float32)
        dense_kernels.dense_forward(self._weights, self._w_off, self._bias, self._sizes, X, self._bufs[1],
                                    self._bufs[2], self._idx, parallel, self.skip_zeros, logits, self._callbacks,
                                    self.threads, self._bufs[3])
        return logits


class FusedShrunkEngine(FusedDenseEngine):
    """FusedDenseEngine on prune.shrink(params)."""

    name = "shrunk-fused"

    def _build(self, params):
        from sparsenet.prune import shrink
        super()._build(shrink(params))


class SkipDenseEngine(FusedDenseEngine):
    """FusedDenseEngine skipping zero inputs (activation sparsity) at small batches."""

    name = "dense-skip"

    def __init__(self, params: Sequence[Layer], threads: Optional[int] = None, tuning: Optional[Tuning] = None):
        super().__init__(params, threads, skip_zeros=True, tuning=tuning)


class SkipShrunkEngine(SkipDenseEngine):
    """SkipDenseEngine on prune.shrink(params)."""

    name = "shrunk-skip"

    def _build(self, params):
        from sparsenet.prune import shrink
        super()._build(shrink(params))


class SkipCSREngine(CSREngine):
    """CSREngine skipping zero inputs at batch 1 (its CSC copy; see plan.plan_csr)."""

    name = "csr-skip"

    def __init__(self, params: Sequence[Layer], threads: Optional[int] = None, **options):
        super().__init__(params, threads, skip_zeros=True, **options)


class ScipyCSREngine(Engine):
    """The baseline: the CSR engine's structure (transposed activations) with scipy.sparse matmuls."""

    name = "csr-scipy"

    def _build(self, params):
        self.csr = tuple(CSR.from_dense(l.weight).check() for l in params)
        self._S = [c.to_scipy() for c in self.csr]
        self._b = [None if l.bias is None else l.bias[:, None] for l in params]
        self.layer_sizes = layer_sizes(params)
        self.nnz = int(sum(c.nnz for c in self.csr))
        self.n_weights = self.nnz
        self.nbytes = int(sum(S.data.nbytes + S.indices.nbytes + S.indptr.nbytes for S in self._S)
                          + sum(b.nbytes for b in self._b if b is not None))
        self.index_dtype = str(self._S[0].indices.dtype)

    def plan(self, batch: int) -> Plan:
        return scipy_plan(check_batch(batch), self.threads, len(self._S), self.nbytes)

    def _forward(self, X):
        h = np.ascontiguousarray(X.T)                    # (n_in, B)
        last = len(self._S) - 1
        for i, (S, b) in enumerate(zip(self._S, self._b)):
            h = S @ h                                    # (n_in, B) -> (n_out, B), a new array
            if b is not None:
                h += b
            if i < last:
                np.maximum(h, 0.0, out=h)
        return np.ascontiguousarray(h.T)


_CLASSES = {**_STRUCTURED, "dense": DenseEngine, "csr": CSREngine, "csr-scipy": ScipyCSREngine, "shrunk": ShrunkEngine,
            "dense-fused": FusedDenseEngine, "shrunk-fused": FusedShrunkEngine, "dense-skip": SkipDenseEngine,
            "csr-skip": SkipCSREngine, "shrunk-skip": SkipShrunkEngine}
assert set(_CLASSES) == set(ENGINES), "names.ENGINES and the engine classes must agree"


def make_engine(name: str, params: Sequence[Layer], threads: Optional[int] = None, **options) -> Engine:
    """Build the named engine over `params` (already pruned; "shrunk" shrinks them itself).

    options go to the engine (the csr engine takes `sell` and `tuning`)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)}")
    return _CLASSES[name](params, threads=threads, **options)
