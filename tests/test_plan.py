"""The kernel plan (plan.py): which kernel runs for a call, and that the engine runs what it plans."""
import json
import os

import numba
import numpy as np
import pytest

from sparsenet import kernels, plan, sell_kernels
from sparsenet.engines import ENGINES, make_engine
from sparsenet.model import DEFAULT_SIZES, forward, he_init
from sparsenet.plan import CPU, Tuning
from sparsenet.prune import weight_prune

TWO = numba.config.NUMBA_NUM_THREADS >= 2


@pytest.fixture(scope="module")
def nets():
    base = he_init(DEFAULT_SIZES, seed=0)
    return {k: weight_prune(base, k) for k in (0.0, 0.5, 0.9, 0.99)}


def test_tuning_refuses_negative_values():
    with pytest.raises(ValueError, match="Tuning.min_chunk must be >= 0, got -1"):
        Tuning(min_chunk=-1)


@pytest.mark.parametrize("flags, machine, isa", [
    ((True, True, True), "x86_64", "avx512"), ((False, True, True), "x86_64", "avx2"),
    ((False, True, False), "x86_64", "generic"), ((False, False, False), "aarch64", "neon"),
    ((False, False, False), "x86_64", "generic")])
def test_isa_level(flags, machine, isa):
    assert CPU("x", machine, *flags).isa == isa


def test_cpu_follows_numbas_target(monkeypatch):
    """NUMBA_CPU_NAME=haswell (how CI forces AVX2 code on an AVX-512 machine) gives the AVX2 plan."""
    from numba.core import config
    monkeypatch.setattr(config, "CPU_NAME", "haswell")
    monkeypatch.setattr(config, "CPU_FEATURES", "")
    plan.cpu.cache_clear()
    try:
        c = plan.cpu()
        assert (c.name, c.avx512f, c.avx2, c.fma, c.isa) == ("haswell", False, True, True, "avx2")
        assert not sell_kernels.available()
        monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,+avx512f")
        plan.cpu.cache_clear()
        assert plan.cpu().isa == "avx512"
        monkeypatch.setattr(config, "CPU_NAME", "some-future-cpu")
        monkeypatch.setattr(config, "CPU_FEATURES", "")
        plan.cpu.cache_clear()
        assert plan.cpu().isa in ("generic", "neon")      # unknown: no ISA kernels
    finally:
        plan.cpu.cache_clear()


def test_the_plan_follows_the_target(nets):
    """Under SPARSENET_EXPECT_ISA (set by test_portability's AVX2 run) the plan is that ISA's."""
    expected = os.environ.get("SPARSENET_EXPECT_ISA")
    if expected:
        assert plan.cpu().isa == expected
    eng = make_engine("csr", nets[0.9], threads=1)
    assert eng.uses_sell == (plan.cpu().isa == "avx512")
    want = "sell16-avx512" if plan.cpu().isa == "avx512" else "spmv"
    assert {l.kernel for l in eng.plan(1).layers} == {want}


def test_batch_one_plans(nets):
    eng = make_engine("csr", nets[0.9], threads=1, sell=False)
    p = eng.plan(1)
    assert (p.layout, p.split, p.chunk) == ("csr", "none", 0)
    assert [l.kernel for l in p.layers] == ["spmv"] * 5 and not any(l.parallel for l in p.layers)
    assert p.nbytes == eng.nbytes and "CSR SpMV" in p.describe()
    sell = make_engine("csr", nets[0.9], threads=1, sell="portable")
    assert sell.plan(1).layout == "sell" and sell.plan(1).nbytes == sell.sell_nbytes
    assert {l.kernel for l in sell.plan(1).layers} == {"sell16-portable"}


@pytest.mark.skipif(not TWO, reason="needs 2 threads")
def test_two_thread_plans(nets):
    sparse = make_engine("csr", nets[0.9], threads=2, sell=False)
    p1 = sparse.plan(1)                                   # big layers parallel, 500x200 and 200x10 not
    assert [l.parallel for l in p1.layers] == [True, True, True, False, False]   # nnz >= 20000
    assert p1.split == "rows"
    p16 = sparse.plan(16)
    assert p16.split == "rows" and [l.kernel for l in p16.layers] == ["tiles"] * 5      # register tiles
    p256 = sparse.plan(256)
    assert (p256.split, p256.chunk, p256.layout) == ("batch", 32, "csr")
    assert [l.kernel for l in p256.layers] == ["tiles"] * 5 and not any(l.parallel for l in p256.layers)
    assert p256.summary() == "csr; batch split 32 cols x 2 threads; tiles x5"
    dense = make_engine("csr", nets[0.0], threads=2, sell=False)
    p = dense.plan(256)                                   # density 1: panels, 128-column chunks
    assert (p.layout, p.chunk) == ("csr-panels", 128)
    assert [l.kernel for l in p.layers] == ["panels"] * 4 + ["tiles"]
    assert [l.panel for l in p.layers] == [64, 64, 64, 64, 0]
    assert p.nbytes == dense.nbytes + dense.panel_nbytes - sum(c.nbytes for c in dense.csr)
    sell = make_engine("csr", nets[0.9], threads=2, sell="portable")
    assert [l.parallel for l in sell.plan(1).layers] == [s >= Tuning().min_parallel_slots
                                                         for s in sell.net.sell_slots]


def test_plan_is_cached_and_serialisable(nets):
    eng = make_engine("csr", nets[0.5], threads=1)
    assert eng.plan(7) is eng.plan(7)
    d = json.loads(json.dumps(eng.plan(7).to_dict()))
    assert d["batch"] == 7 and d["summary"] == eng.plan(7).summary() and len(d["layers"]) == 5
    assert d["isa"] == plan.cpu().isa


@pytest.mark.parametrize("name", ENGINES)
def test_every_engine_has_a_plan(name, nets):
    eng = make_engine(name, nets[0.5], threads=1)
    for B in (1, 16):
        p = eng.plan(B)
        assert p.engine == name and p.batch == B and len(p.layers) == 5 and p.reasons
        assert eng.layout(B) == p.layout and eng.call_nbytes(B) == p.nbytes
    if name in ("dense", "shrunk"):
        assert [l.kernel for l in eng.plan(1).layers] == ["sgemv"] * 5
        assert eng.plan(16).nbytes == eng.nbytes


def _spy(monkeypatch, name):
    """Record the arrays a csr kernel driver is called with, and still run it."""
    calls = []
    real = getattr(kernels, name)

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(kernels, name, spy)
    return calls


def test_engine_runs_the_planned_layout(nets, monkeypatch):
    """Column panels planned are column panels run (equal outputs alone would not show it)."""
    eng = make_engine("csr", nets[0.0], threads=1, sell=False)
    calls = _spy(monkeypatch, "csr_forward_chunks")
    X = np.random.default_rng(0).random((256, 784), dtype=np.float32)
    out = eng(X)
    assert eng.plan(256).layout == "csr-panels"
    assert calls and calls[0][2] is eng._paneled[2]       # indptr of the panel-major copy
    np.testing.assert_array_equal(calls[0][-2], eng.plan(256).codes())
    np.testing.assert_allclose(out, forward(nets[0.0], X), rtol=1e-4, atol=1e-3)
    calls.clear()
    eng(X[:64])                                           # 64 columns: whole rows, plain arrays
    assert eng.plan(64).layout == "csr" and calls[0][2] is eng._plain[2]


def test_codes_carry_the_parallel_flag(nets):
    p = plan.plan_csr(make_engine("csr", nets[0.9], threads=1).net, 1, 2, Tuning(), None, isa="avx2")
    codes = p.codes()
    assert list(codes & ~kernels.PARALLEL) == [kernels.SPMV] * 5
    assert list((codes & kernels.PARALLEL) > 0) == [l.parallel for l in p.layers]
    assert "no AVX-512F (avx2): batch 1 on the CSR SpMV" in p.reasons
