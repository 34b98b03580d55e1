"""The timing harness, on cheap fake engines (the real engines have their own tests)."""
import math

import numpy as np
import pytest

from sparsenet import bench
from sparsenet.model import forward, he_init
from sparsenet.results import SPREAD_LIMIT

TIMING_KEYS = {"engine", "method", "sparsity", "batch", "threads", "median_s", "min_s", "max_s",
               "spread", "flagged", "rounds", "calls", "nbytes", "flops", "nnz", "layer_sizes",
               "width", "call_nbytes", "layout"}


class FakeEngine:
    """Computes the reference forward pass and logs each call under its label."""

    def __init__(self, params, label, log, repeat=1):
        self.params, self.label, self.log, self.repeat = params, label, log, repeat
        self.nbytes = sum(layer.weight.nbytes for layer in params)
        self.nnz = sum(int(np.count_nonzero(layer.weight)) for layer in params)
        self.threads = 1

    def flops(self, batch):
        return 2.0 * batch * self.nnz

    def __call__(self, X):
        self.log.append(self.label)
        for _ in range(self.repeat):
            out = forward(self.params, X)
        return out


@pytest.fixture
def small():
    return he_init((16, 8, 4), seed=0)


def fake_case(params, label, log, batch=2, repeat=1, sparsity=0.5):
    eng = FakeEngine(params, label, log, repeat)
    return bench.make_case(label, params, method="weight", sparsity=sparsity, batch=batch,
                           threads=1, engine=eng)


def test_case_id(small):
    case = fake_case(small, "csr", [], batch=256, sparsity=0.9)
    assert bench.case_id(case) == "csr-s90-b256-t1"
    case.width = 4096
    assert bench.case_id(case) == "csr-s90-b256-t1-w4096"
    assert bench.case_id(fake_case(small, "dense", [], batch=1, sparsity=0.0)) == "dense-s0-b1-t1"


def test_time_cases_records(small):
    log = []
    cases = [fake_case(small, "dense", log), fake_case(small, "csr", log, batch=4, repeat=3)]
    recs = bench.time_cases(cases, rounds=5, min_time=0.002, progress=False)
    assert [r["engine"] for r in recs] == ["dense", "csr"]
    for rec, case in zip(recs, cases):
        assert set(rec) == TIMING_KEYS
        assert rec["min_s"] <= rec["median_s"] <= rec["max_s"]
        assert rec["spread"] >= 1.0
        assert rec["flagged"] == (rec["spread"] > SPREAD_LIMIT)
        assert rec["rounds"] == 5 and rec["calls"] >= 1 and rec["calls"] == case.calls
        assert rec["batch"] == case.batch and rec["layer_sizes"] == [16, 8, 4]
        assert rec["nnz"] == case.engine.nnz and rec["flops"] == case.engine.flops(case.batch)
        assert rec["width"] is None and rec["method"] == "weight" and rec["sparsity"] == 0.5
    # cheap calls are looped: a round lasts about min_time (loosely: the machine may be busy)
    assert recs[0]["calls"] > 1
    assert recs[0]["calls"] * recs[0]["median_s"] >= 0.002 / 10


def test_rounds_are_interleaved(small):
    log = []
    cases = [fake_case(small, name, log) for name in ("a", "b", "c")]
    for c in cases:
        c.calls = 2                                  # skip calibration: every round is 2 calls
    bench.time_cases(cases, rounds=4, warmup=1, progress=False, seed=3)
    warm, timed = log[:3], log[3:]
    assert warm == ["a", "b", "c"]
    assert len(timed) == 3 * 4 * 2
    rounds = [timed[i:i + 6] for i in range(0, len(timed), 6)]
    names = ["a", "b", "c"]
    for r, chunk in enumerate(rounds):
        # each round times every case once (its calls in one block), in the seeded order
        expected = [names[i] for i in bench.round_order(3, r, seed=3) for _ in range(2)]
        assert chunk == expected
    assert len({tuple(bench.round_order(3, r, 3)) for r in range(4)}) > 1


def test_calibrate_at_least_one_call(small):
    case = fake_case(small, "slow", [], repeat=1)
    assert bench.calibrate(case, min_time=10.0, max_calls=3) == 3
    assert bench.calibrate(case, min_time=0.0) >= 1
    slow = fake_case(small, "slow", [], batch=64, repeat=2000)
    assert bench.calibrate(slow, min_time=1e-6) == 1


def test_max_case_s_reduces_rounds(small):
    fast = fake_case(small, "fast", [])
    slow = fake_case(small, "slow", [], repeat=300)
    fast.calls = slow.calls = 1
    recs = bench.time_cases([fast, slow], rounds=6, max_case_s=1e-6, min_rounds=2, progress=False)
    assert recs[1]["rounds"] == 2
    assert recs[0]["rounds"] == 2          # also tiny here: both exceed the (absurd) budget


def test_record_flagged():
    class E:
        nbytes, nnz = 10, 5

        def flops(self, b):
            return 10.0 * b
    case = bench.Case(engine=E(), X=np.zeros((3, 4), np.float32), name="csr", method="weight",
                      sparsity=0.9, threads=2, calls=7)
    rec = bench.record(case, [1.0, 1.1, 1.3])
    assert rec["flagged"] and math.isclose(rec["spread"], 1.3)
    assert rec["median_s"] == 1.1 and rec["calls"] == 7 and rec["flops"] == 30.0
    assert not bench.record(case, [1.0, 1.1, 1.2])["flagged"]


def test_check_case(small):
    case = fake_case(small, "dense", [])
    bench.check_case(case)
    bad = bench.make_case("bad", small, method="weight", sparsity=0.0, batch=2, threads=1,
                          engine=lambda X: forward(small, X) + 1.0)
    with pytest.raises(AssertionError, match="bad-s0-b2-t1"):
        bench.check_case(bad)


def test_extra_info_and_pedantic(small):
    case = fake_case(small, "csr", [])
    info = bench.extra_info(case)
    for key in ("nnz", "nbytes", "flops", "threads", "blas", "blas_architecture", "numba",
                "layer_sizes", "batch"):
        assert key in info
    kw = bench.pedantic_kwargs(case, rounds=3, min_time=0.001)
    assert kw["iterations"] == case.calls >= 1 and kw["rounds"] == 3 and kw["warmup_rounds"] == 0
    assert kw["args"][0] is case.X


def test_hold_threads_restores():
    import numba
    before = numba.get_num_threads()
    with bench.hold_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


def test_scaling_skip():
    assert bench.scaling_skip("dense", 0.0, 4096, 16384) is not None      # ~2 TFLOP per call
    assert "GB" in bench.scaling_skip("dense", 0.0, 4096, 32768)
    assert bench.scaling_skip("csr", 0.99, 1, 1024) is None
    assert bench.scaling_skip("dense", 0.5, 16, 1024) is None


def test_make_input_fixed():
    a, b = bench.make_input(4, 10, seed=1), bench.make_input(4, 10, seed=1)
    assert a.dtype == np.float32 and a.shape == (4, 10) and np.array_equal(a, b)


def test_mlp_skip():
    skip = bench.mlp_skip(he_init(seed=0), max_call_s=2.0)
    assert skip("csr-scipy", 0.0, 4096, 1) and "s per call" in skip("csr-scipy", 0.0, 4096, 1)
    assert skip("dense", 0.0, 4096, 1) is None and skip("csr", 0.9, 1, 2) is None


def test_scaling_params_exact_count():
    (layer,) = bench.scaling_params(64, 0.9)
    assert layer.weight.shape == (64, 64) and layer.bias is None
    assert np.count_nonzero(layer.weight) == 64 * 64 - round(0.9 * 64 * 64)
    kept = np.abs(layer.weight[layer.weight != 0]).min()
    base = bench._base_layer(64, 0)
    assert kept >= np.abs(base[layer.weight == 0]).max()     # the smallest |w| went
    assert np.count_nonzero(bench.scaling_params(64, 0.0)[0].weight) == 64 * 64


def test_engines_shared_when_large(small, monkeypatch):
    import sys
    import types
    built = []
    fake = types.ModuleType("sparsenet.engines")
    fake.make_engine = lambda name, params, threads=None: built.append(name) or FakeEngine(params, name, [])
    monkeypatch.setitem(sys.modules, "sparsenet.engines", fake)
    cases = bench.mlp_cases(small, ("dense", "shrunk"), 0.5, (1, 4), (1,))
    assert [bench.case_id(c) for c in cases] == ["dense-s50-b1-t1", "dense-s50-b4-t1",
                                                 "shrunk-s50-b1-t1", "shrunk-s50-b4-t1"]
    assert len(built) == 4 and cases[0].engine is not cases[1].engine   # one engine per batch
    assert cases[2].method == "neuron" and cases[0].method == "weight"
    assert cases[0].X is not cases[1].X and cases[0].X is cases[2].X     # inputs shared by batch
    monkeypatch.setattr(bench, "SHARE_BYTES", 0)
    cases = bench.mlp_cases(small, ("dense",), 0.5, (1, 4), (1,))
    assert cases[0].engine is cases[1].engine


def test_settle_only_between_thread_pools(small, monkeypatch):
    pauses = []
    monkeypatch.setattr(bench.time, "sleep", pauses.append)

    def case(label, blas, numba, threads):
        c = fake_case(small, label, [])
        c.engine.uses_blas, c.engine.uses_numba = blas, numba
        c.threads = threads
        return c

    dense2, csr2 = case("dense", True, False, 2), case("csr", False, True, 2)
    dense1, csr1 = case("dense", True, False, 1), case("csr", False, True, 1)
    bench.settle(dense2, csr2)
    bench.settle(csr2, dense2)
    assert pauses == [bench.SETTLE_S] * 2
    for previous, current in [(None, csr2), (csr2, csr2), (dense2, dense2), (dense1, csr2), (dense2, csr1)]:
        bench.settle(previous, current)
    assert pauses == [bench.SETTLE_S] * 2
