"""Inference engines behind one call, engine(X) -> logits: dense BLAS, our CSR kernels, scipy CSR, shrunk.

The shell (checks, threads, the contract) is engine_base.Engine; the csr engine lives in
csr_engine.py; which kernels a call runs is its plan (plan.py, `eng.plan(batch)`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from sparsenet.csr import CSR
from sparsenet.csr_engine import CSREngine
from sparsenet.engine_base import Engine
from sparsenet.model import Layer, layer_sizes
from sparsenet.plan import Plan, blas_plan, scipy_plan
from sparsenet.threads import blas_library  # noqa: F401  (re-exported: records name the BLAS)

ENGINES = ("dense", "csr", "csr-scipy", "shrunk")


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
        return blas_plan(self.name, int(batch), self.threads, len(self._WT), self.nbytes)

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
        return scipy_plan(int(batch), self.threads, len(self._S), self.nbytes)

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


_CLASSES = {"dense": DenseEngine, "csr": CSREngine, "csr-scipy": ScipyCSREngine, "shrunk": ShrunkEngine}


def make_engine(name: str, params: Sequence[Layer], threads: Optional[int] = None, **options) -> Engine:
    """Build the named engine over `params` (already pruned; "shrunk" shrinks them itself).

    options go to the engine (the csr engine takes `sell` and `tuning`)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)}")
    return _CLASSES[name](params, threads=threads, **options)
