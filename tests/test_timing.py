"""The timing harness (timing.py), on cheap fake engines (the real engines have their own tests)."""
import math
import time

import numpy as np
import pytest

from sparsenet import timing
from sparsenet.model import forward, he_init
from sparsenet.results import SPREAD_LIMIT

TIMING_KEYS = {"engine", "method", "sparsity", "batch", "threads", "median_s", "min_s", "max_s",
               "spread", "flagged", "rounds", "calls", "nbytes", "flops", "nnz", "layer_sizes",
               "width", "call_nbytes", "layout", "per_round_s", "timed_at", "round_at_s"}


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
    return timing.make_case(label, params, method="weight", sparsity=sparsity, batch=batch,
                           threads=1, engine=eng)


def test_case_id(small):
    case = fake_case(small, "csr", [], batch=256, sparsity=0.9)
    assert timing.case_id(case) == "csr-s90-b256-t1"
    case.width = 4096
    assert timing.case_id(case) == "csr-s90-b256-t1-w4096"
    assert timing.case_id(fake_case(small, "dense", [], batch=1, sparsity=0.0)) == "dense-s0-b1-t1"


def test_time_cases_records(small):
    log = []
    cases = [fake_case(small, "dense", log), fake_case(small, "csr", log, batch=4, repeat=3)]
    recs = timing.time_cases(cases, rounds=5, min_time=0.002, progress=False)
    assert [r["engine"] for r in recs] == ["dense", "csr"]
    for rec, case in zip(recs, cases):
        assert set(rec) == TIMING_KEYS
        assert rec["min_s"] <= rec["median_s"] <= rec["max_s"]
        assert rec["spread"] >= 1.0
        assert rec["flagged"] == (rec["spread"] > SPREAD_LIMIT)
        assert rec["rounds"] == 5 and rec["calls"] >= 1 and rec["calls"] == case.calls
        assert len(rec["per_round_s"]) == 5 and rec["median_s"] == sorted(rec["per_round_s"])[2]
        assert (min(rec["per_round_s"]), max(rec["per_round_s"])) == (rec["min_s"], rec["max_s"])
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
    timing.time_cases(cases, rounds=4, warmup=1, progress=False, seed=3)
    warm, timed = log[:3], log[3:]
    assert warm == ["a", "b", "c"]
    assert len(timed) == 3 * 4 * 2
    rounds = [timed[i:i + 6] for i in range(0, len(timed), 6)]
    names = ["a", "b", "c"]
    for r, chunk in enumerate(rounds):
        # each round times every case once (its calls in one block), in the seeded order
        expected = [names[i] for i in timing.round_order(3, r, seed=3) for _ in range(2)]
        assert chunk == expected
    assert len({tuple(timing.round_order(3, r, 3)) for r in range(4)}) > 1


def test_calibrate_at_least_one_call(small):
    case = fake_case(small, "slow", [], repeat=1)
    assert timing.calibrate(case, min_time=10.0, max_calls=3) == 3
    assert timing.calibrate(case, min_time=0.0) >= 1
    slow = fake_case(small, "slow", [], batch=64, repeat=2000)
    assert timing.calibrate(slow, min_time=1e-6) == 1


def test_max_case_s_reduces_rounds(small):
    fast = fake_case(small, "fast", [])
    slow = fake_case(small, "slow", [], repeat=300)
    fast.calls = slow.calls = 1
    recs = timing.time_cases([fast, slow], rounds=6, max_case_s=1e-6, min_rounds=2, progress=False)
    assert recs[1]["rounds"] == 2
    assert recs[0]["rounds"] == 2          # also tiny here: both exceed the (absurd) budget


def test_record_flagged():
    class E:
        nbytes, nnz = 10, 5

        def flops(self, b):
            return 10.0 * b
    case = timing.Case(engine=E(), X=np.zeros((3, 4), np.float32), name="csr", method="weight",
                      sparsity=0.9, threads=2, calls=7)
    rec = timing.record(case, [1.0, 1.1, 1.3])
    assert rec["flagged"] and math.isclose(rec["spread"], 1.3)
    assert rec["median_s"] == 1.1 and rec["calls"] == 7 and rec["flops"] == 30.0
    assert not timing.record(case, [1.0, 1.1, 1.2])["flagged"]


def test_check_case(small):
    case = fake_case(small, "dense", [])
    timing.check_case(case)
    bad = timing.make_case("bad", small, method="weight", sparsity=0.0, batch=2, threads=1,
                          engine=lambda X: forward(small, X) + 1.0)
    with pytest.raises(AssertionError, match="bad-s0-b2-t1"):
        timing.check_case(bad)


def test_extra_info_and_pedantic(small):
    case = fake_case(small, "csr", [])
    info = timing.extra_info(case)
    for key in ("nnz", "nbytes", "flops", "threads", "blas", "blas_architecture", "numba",
                "layer_sizes", "batch"):
        assert key in info
    kw = timing.pedantic_kwargs(case, rounds=3, min_time=0.001)
    assert kw["iterations"] == case.calls >= 1 and kw["rounds"] == 3 and kw["warmup_rounds"] == 0
    assert kw["args"][0] is case.X


def test_threads_held_restores(small):
    import numba
    before = numba.get_num_threads()
    case = fake_case(small, "dense", [])               # no threads_context: threads.limit
    with timing.threads_held(case):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


def test_make_input_fixed():
    a, b = timing.make_input(4, 10, seed=1), timing.make_input(4, 10, seed=1)
    assert a.dtype == np.float32 and a.shape == (4, 10) and np.array_equal(a, b)


def test_pool_clock_waits_only_for_the_other_pools(small, monkeypatch):
    """A multi-threaded case waits until SETTLE_S after the last use of a pool it does not run on;
    cases in between count towards the pause; single-threaded cases and the same pool wait for nothing."""
    now = [100.0]
    pauses = []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(timing.time, "sleep", lambda s: (pauses.append(s), now.__setitem__(0, now[0] + s)))

    def case(label, blas, numba, threads):
        c = fake_case(small, label, [])
        c.engine.uses_blas, c.engine.uses_numba = blas, numba
        c.threads = threads
        return c

    dense2, csr2 = case("dense", True, False, 2), case("csr", False, True, 2)
    dense1, scipy2 = case("dense", True, False, 1), case("scipy", False, False, 2)
    clock = timing.PoolClock()
    assert clock.wait(csr2) == 0 and pauses == []                    # nothing used yet
    clock.used(dense2)
    assert clock.wait(dense2) == 0 and clock.wait(dense1) == 0 and pauses == []   # same pool; one thread
    assert clock.wait(csr2) == pytest.approx(timing.SETTLE_S) and pauses == [pytest.approx(timing.SETTLE_S)]
    clock.used(csr2)
    now[0] += 0.1                                                    # 0.1 s of other work since csr's case
    assert clock.wait(dense2) == pytest.approx(timing.SETTLE_S - 0.1)
    clock.used(dense2)
    clock.used(scipy2)                                               # a case on no pool: dense's clock runs on
    assert clock.wait(scipy2) == 0 and clock.wait(csr2) == pytest.approx(timing.SETTLE_S)
    clock.used(dense1)                                               # one thread: no pool's clock moves
    now[0] += 1.0
    assert clock.wait(csr2) == 0 and clock.wait(dense2) == 0


def test_records_name_the_kernel_plan(small):
    """An engine with a plan: its record carries the plan's summary, ISA and the whole plan."""
    from sparsenet.engines import make_engine
    from sparsenet.plan import cpu
    eng = make_engine("csr", small, threads=1)
    case = timing.make_case("csr", small, method="weight", sparsity=0.0, batch=4, threads=1, engine=eng)
    case.calls = 1
    rec = timing.record(case, [1.0, 1.0])
    plan = eng.plan(4)
    assert set(rec) == TIMING_KEYS - {"timed_at", "round_at_s"} | {"kernel", "isa", "plan"}    # no run given
    assert rec["kernel"] == plan.summary() and rec["isa"] == cpu().isa == plan.isa
    assert rec["plan"] == plan.to_dict() and rec["layout"] == plan.layout
    assert timing.extra_info(case)["kernel"] == plan.summary()


def test_round_order_groups_cases_of_one_key():
    groups = ["a", "b", "a", "c", "b", "a", "c"]
    orders = [timing.round_order(7, r, seed=1, groups=groups) for r in range(8)]
    for order in orders:
        assert sorted(order) == list(range(7))                        # every case once
        keys = [groups[i] for i in order]
        runs = [k for j, k in enumerate(keys) if j == 0 or keys[j - 1] != k]
        assert len(runs) == 3                                          # each key in one run
    assert len({tuple(groups[i] for i in o) for o in orders}) > 1      # the groups' order is shuffled
    assert len({tuple(i for i in o if groups[i] == "a") for o in orders}) > 1   # and within a group
    assert timing.round_order(7, 2, 1, groups=["x"] * 7) == timing.round_order(7, 2, 1)


def test_multithreaded_cases_of_one_pool_run_together(small, monkeypatch):
    """The pause between thread pools (PoolClock) is paid at most once per change of pool group in a round."""
    pauses = []
    monkeypatch.setattr(timing.time, "sleep", pauses.append)
    log, cases = [], []
    for j in range(6):
        c = fake_case(small, f"{'blas' if j % 2 else 'numba'}{j}", log)
        c.engine.uses_blas, c.engine.uses_numba = j % 2 == 1, j % 2 == 0
        c.threads, c.calls = 2, 1
        cases.append(c)
    timing.time_cases(cases, rounds=5, warmup=0, progress=False, seed=0)
    # the calibrations a pool at a time (1 change of pool), then at most 2 a round (1 in the first)
    assert 1 <= len(pauses) <= 1 + 2 * 5 and {timing.pool_group(c) for c in cases} == {("blas",), ("numba",)}
    one = fake_case(small, "one", [])
    assert timing.pool_group(one) == ()                               # single-threaded: one group


def test_pool_group_is_the_calls_pool(small):
    """An engine names the pools a call of the case's batch runs on: the fused dense engine is Numba's
    at small batches and BLAS's above max_fused_batch (one flag for both would skip the pause after
    numpy's dense, whose workers spin: 1 call a round, a cold one, at batch 1 on two threads)."""
    from sparsenet.engines import make_engine
    fused, dense, csr = (make_engine(n, small, threads=2) for n in ("dense-fused", "dense", "csr"))
    assert (fused.pools(1), fused.pools(256), dense.pools(1), csr.pools(1)) == (("numba",), ("blas",), ("blas",), ("numba",))
    for batch, want in ((1, ("numba",)), (256, ("blas",))):
        case = timing.make_case("dense-fused", small, method="weight", sparsity=0.0, batch=batch, threads=2, engine=fused)
        assert timing.pool_group(case) == want


def test_calibration_waits_for_the_other_pool(small, monkeypatch):
    """A case is warmed and calibrated only after the previous case's pool has settled: calibrated
    while OpenBLAS's workers still spun, csr on two threads got one call a round (a 20 ms first call)
    and every round timed a cold call (the default study, batch 1, k = 0: x2 slower)."""
    log = []
    monkeypatch.setattr(timing.time, "sleep", lambda s: log.append(("sleep", s)))
    cases = []
    for label, blas in (("dense", True), ("csr", False), ("csr2", False)):
        c = fake_case(small, label, log)
        c.engine.uses_blas, c.engine.uses_numba, c.threads = blas, not blas, 2
        cases.append(c)
    timing.time_cases(cases, rounds=1, warmup=1, progress=False, seed=0)
    first_csr = next(i for i, e in enumerate(log) if e == "csr")
    last_dense = max(i for i, e in enumerate(log[:first_csr]) if e == "dense")
    assert any(isinstance(e, tuple) and e[1] > 0 for e in log[last_dense:first_csr])
    first_csr2 = log.index("csr2")
    assert not any(isinstance(e, tuple) for e in log[first_csr:first_csr2])    # same pool: no pause


def test_check_case_checks_the_last_timed_call(small):
    """The study checks the logits of the last timed call: an engine that goes wrong only after
    many calls (a buffer reused badly) is caught, with no extra call."""
    calls = []

    def drifting(X):
        calls.append(1)
        return forward(small, X) + (0.0 if len(calls) < 4 else 1.0)

    case = timing.make_case("drift", small, method="weight", sparsity=0.0, batch=2, threads=1, engine=drifting)
    case.calls = 3
    timing.time_cases([case], rounds=2, warmup=1, progress=False)
    assert len(calls) == 7 and case.last_out is not None
    with pytest.raises(AssertionError, match="drift-s0-b2-t1"):
        timing.check_case(case)
    assert len(calls) == 7                                            # checked without calling again
    fresh = fake_case(small, "dense", [])
    assert fresh.last_out is None
    timing.check_case(fresh)                                          # not timed: one call of its own
    assert fresh.engine.log == ["dense"]


def test_round_order_times_a_cell_back_to_back():
    """With cells, the cases of one cell come together every round (the cells in shuffled order), the
    pool groups together within a cell, a cell starting with the group the last one ended with."""
    cells = [(1, 1), (2, 256), (1, 1), (2, 256), (1, 16), (2, 256), (1, 16), (2, 256)]
    groups = [(), ("blas",), (), ("numba",), (), ("numba",), (), ("blas",)]
    orders = [timing.round_order(8, r, seed=2, groups=groups, cells=cells) for r in range(12)]
    for order in orders:
        assert sorted(order) == list(range(8))
        keys = [cells[i] for i in order]
        assert len([k for j, k in enumerate(keys) if j == 0 or keys[j - 1] != k]) == 3   # each cell in one run
        pools = [groups[i] for i in order if cells[i] == (2, 256)]
        assert len([g for j, g in enumerate(pools) if j == 0 or pools[j - 1] != g]) == 2  # 1 change of pool
    assert len({tuple(cells[i] for i in o) for o in orders}) > 1           # the cells' order is shuffled
    c2, g2 = [(2, 2), (2, 2), (2, 1), (2, 1)], [("numba",), ("blas",), ("numba",), ("blas",)]
    for r in range(20):                                                    # each cell has both pools: the
        order = timing.round_order(4, r, seed=0, groups=g2, cells=c2)      # second starts with the pool the
        assert g2[order[1]] == g2[order[2]]                                # first ended with: no pause there
    assert timing.round_order(5, 3, 1, cells=[(1, 1)] * 5) == timing.round_order(5, 3, 1)


def test_time_cases_pairs_the_rounds_of_a_cell(small):
    """Every record of one run carries its start (timed_at) and its rounds' starts; the cases of a
    cell are timed back to back in every round, so round r of each pairs with the others'."""
    log = []
    cases = [fake_case(small, f"b2-{j}", log, batch=2, repeat=20) for j in range(3)] + \
            [fake_case(small, f"b4-{j}", log, batch=4, repeat=20) for j in range(3)]
    for c in cases:
        c.calls = 1
    recs = timing.time_cases(cases, rounds=4, warmup=0, progress=False, seed=5)
    assert len({r["timed_at"] for r in recs}) == 1 and recs[0]["timed_at"] <= time.time()
    timed = log
    for r in range(4):
        chunk = [name[:2] for name in timed[6 * r: 6 * r + 6]]
        assert chunk in (["b2"] * 3 + ["b4"] * 3, ["b4"] * 3 + ["b2"] * 3)   # a cell's cases together
    for rec in recs:
        at = rec["round_at_s"]
        assert len(at) == 4 and at == sorted(at) and at[0] >= 0
    # a round's cases start in the order they were timed, each round after the last
    firsts = sorted((rec["round_at_s"][0], rec["engine"]) for rec in recs)
    assert [e for _, e in firsts] == timed[:6]
    assert min(rec["round_at_s"][1] for rec in recs) > max(rec["round_at_s"][0] for rec in recs)


def test_the_peak_is_timed_beside_a_batch():
    assert timing.peak_beside(2048, [1, 16, 256, 4096]) == 256               # the widest batch not above n
    assert timing.peak_beside(64, [128, 256]) == 256 and timing.peak_beside(64, []) is None
    case = timing.peak_case(64, 2, 0.9, beside=8)
    assert case.batch == 64 and timing.cell(case) == (2, 8)
    assert timing.cell(timing.peak_case(64, 1)) == (1, 64)
    rec = timing.record(case, [1.0, 1.0])
    assert rec["beside"] == 8
