"""The kernel plan (plan.py): which kernel runs for a call, and that the engine runs what it plans."""
import dataclasses
import json
import os

import numba
import numpy as np
import pytest

from sparsenet import kernels, plan, sell_kernels
from sparsenet.engines import make_engine
from sparsenet.model import DEFAULT_SIZES, forward, he_init
from sparsenet.plan import CPU, Tuning
from sparsenet.prune import weight_prune

TWO = numba.config.NUMBA_NUM_THREADS >= 2
# the engines of engines.py that run any pruned net (bsr, nm: tests/test_structured_engines.py)
UNSTRUCTURED = ("dense", "csr", "csr-scipy", "shrunk", "dense-fused", "shrunk-fused", "dense-skip", "csr-skip",
                "shrunk-skip")


@pytest.fixture(scope="module")
def nets():
    base = he_init(DEFAULT_SIZES, seed=0)
    return {k: weight_prune(base, k) for k in (0.0, 0.5, 0.9, 0.99)}


def test_tuning_refuses_negative_values():
    with pytest.raises(ValueError, match="Tuning.tile_min_chunk must be an integer >= 0, got -1"):
        Tuning(tile_min_chunk=-1)


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
    eng = make_engine("csr", nets[0.9], threads=1, tuning=Tuning(sell_l2_bytes=2 ** 40))    # SELL-16 padded
    want = {"avx512": "sell16-avx512", "avx2": "sell8-avx2"}.get(plan.cpu().isa, "spmv")
    assert eng.uses_sell == (want != "spmv")
    rows = ["bitmap16-avx512" if b else want for b in eng.bitmap or (False,) * 5]     # the unpruned output layer
    assert [l.kernel for l in eng.plan(1).layers] == rows and eng.bitmap == ((False,) * 4 + (True,) if eng.bitmap else ())
    if want == "sell16-avx512":                            # beyond a 1 MB L2: packed values
        packed = make_engine("csr", nets[0.9], threads=1, tuning=Tuning(sell_l2_bytes=2 ** 20))
        assert [l.kernel for l in packed.plan(1).layers] == ["sell16p-avx512"] * 4 + ["bitmap16-avx512"]
        dense = make_engine("csr", nets[0.0], threads=1)   # the dense end: every layer in bitmap rows
        assert {l.kernel for l in dense.plan(1).layers} == {"bitmap16-avx512"}


def test_sell_packs_beyond_the_l2_a_thread():
    """Packed SELL-16 values where the padded form's bytes a thread exceed the L2 and packing saves
    bytes; the plan says which and why."""
    t = Tuning(sell_l2_bytes=2 * 2 ** 20)                              # 7/8 of it: 1.75 MB
    assert plan.sell_packs(3 * 2 ** 20, 2 * 2 ** 20, 1, t)
    assert plan.sell_packs(4 * 2 ** 20, 2 * 2 ** 20, 2, t)               # 2 MB a thread
    assert not plan.sell_packs(3 * 2 ** 20, 2 * 2 ** 20, 2, t)          # 1.5 MB a thread: stays in the L2
    assert not plan.sell_packs(int(3.5 * 2 ** 20), 2 * 2 ** 20, 2, t)   # 1.75 MB: at the bound, not above
    assert not plan.sell_packs(3 * 2 ** 20, 3 * 2 ** 20, 1, t)          # nothing saved
    assert plan.sell_l2_budget(Tuning()) == (plan.l2_bytes() or plan.L2_FALLBACK)
    net = he_init(DEFAULT_SIZES, seed=0)
    for l2, kernel in ((2 ** 40, "sell16-portable"), (2 ** 10, "sell16p-portable")):
        eng = make_engine("csr", weight_prune(net, 0.9), threads=1, sell="portable", bitmap=False,
                          tuning=Tuning(sell_l2_bytes=l2))
        p = eng.plan(1)
        assert {l.kernel for l in p.layers} == {kernel} and p.nbytes == eng.sell_nbytes
        padded, packed = eng.net.nbytes["sell-padded"], eng.net.nbytes["sell-packed"]
        assert packed < padded and eng.sell_nbytes == (packed if "sell16p" in kernel else padded)
        assert f"{'packed' if 'sell16p' in kernel else 'padded'} values: the padded SELL is {padded / 2 ** 20:.1f} MB" \
            in p.describe()


def test_batch_one_plans(nets):
    eng = make_engine("csr", nets[0.9], threads=1, sell=False)
    p = eng.plan(1)
    assert (p.layout, p.split, p.chunk) == ("csr", "none", 0)
    assert [l.kernel for l in p.layers] == ["spmv"] * 5 and not any(l.parallel for l in p.layers)
    assert p.nbytes == eng.nbytes and "CSR SpMV" in p.describe()
    sell = make_engine("csr", nets[0.9], threads=1, sell="portable", tuning=Tuning(sell_l2_bytes=2 ** 40))
    assert sell.plan(1).layout == "sell" and sell.plan(1).nbytes == sell.sell_nbytes
    assert [l.kernel for l in sell.plan(1).layers] == ["sell16-portable"] * 4 + ["bitmap16-portable"]


def test_bitmap_layers_where_groups_cost_at_most_the_slots():
    """plan.bitmap_layers: bitmap rows where groups x bitmap_group_cost / 100 <= SELL slots; a (17, 33)
    layer has 32 rows x 3 groups = 96 groups."""
    t = Tuning(bitmap_group_cost=80)
    assert plan.bitmap_layers([(17, 33)] * 3, [77, 76, 10 ** 6], t) == (True, False, True)
    assert plan.bitmap_layers([(17, 33)], [0], Tuning(bitmap_group_cost=0)) == (True,)
    net = NetShape(nnz=(10, 10), shape=((17, 33), (4, 17)), sell_slots=(3000, 2999), bitmap=(True, False), panels=(33, 17),
                   nbytes={"sell": 77, "csr": 5})
    p = plan.plan_csr(net, 1, 2, t, "sell16p-avx512", isa="avx512")
    assert p.layers == (LayerPlan("bitmap16-avx512", True), LayerPlan("sell16p-avx512", False))
    assert p.reasons[1:] == ("layer 0 in bitmap rows (16-column masks, vexpandps): their groups x 0.8 <= their SELL "
                             "slots (96 groups; plan.bitmap_layers)",
                             "a layer runs on 2 threads from 3000 slots (bitmap rows: groups)")
    assert plan.plan_csr(net, 1, 1, t, "sell16-portable").layers[0].kernel == "bitmap16-portable"
    both = dataclasses.replace(net, bitmap=(True, True), nbytes={"sell": 77, "sell-padded": 77, "sell-packed": 77})
    p = plan.plan_csr(both, 1, 1, t, "sell16-avx512", isa="avx512")
    assert p.reasons[:2] == ("batch 1 on bitmap rows alone (AVX-512F vexpandps)",     # no packing line: no slots
                             "layers 0, 1 in bitmap rows (16-column masks, vexpandps): their groups x 0.8 <= their SELL "
                             "slots (96 groups, 32 groups; plan.bitmap_layers)")
    mixed = dataclasses.replace(both, bitmap=(False, True))
    assert "(bitmap rows included)" in plan.plan_csr(mixed, 1, 1, t, "sell16-avx512", isa="avx512").reasons[1]
    with pytest.raises(ValueError, match="bitmap must be None, True, False or one bool a layer"):
        make_engine("csr", he_init((20, 10, 4)), bitmap="yes")
    with pytest.raises(ValueError, match="one bool a layer"):
        make_engine("csr", he_init((20, 10, 4)), sell="portable", bitmap=(True,))


@pytest.mark.skipif(not TWO, reason="needs 2 threads")
def test_two_thread_plans(nets):
    sparse = make_engine("csr", nets[0.9], threads=2, sell=False)
    p1 = sparse.plan(1)                                   # big layers parallel, 500x200 and 200x10 not
    assert [l.parallel for l in p1.layers] == [True, True, True, False, False]   # nnz >= 20000
    assert p1.split == "rows"
    p16 = sparse.plan(16)
    assert p16.split == "rows" and [l.kernel for l in p16.layers] == ["tiles"] * 5      # register tiles
    p64 = sparse.plan(64)                                 # one 64-column chunk would idle a thread: two of 32
    assert (p64.split, p64.chunk, p64.layout) == ("batch", 32, "csr")
    assert [l.kernel for l in p64.layers] == ["tiles"] * 5 and not any(l.parallel for l in p64.layers)
    assert p64.summary() == "csr; batch split 32 cols x 2 threads; tiles x5"
    p256 = sparse.plan(256)                               # 64-column chunks on their own panels
    W = [wide_panel_width(Tuning(), c.density, c.shape[1], c.nnz) for c in sparse.csr]
    assert W[0] < 784 and W[3:] == [500, 200]            # density 0.1: deepened panels; small layers plain
    assert (p256.split, p256.chunk, p256.layout) == ("batch", 64, "csr-wide-panels")
    assert [l.panel for l in p256.layers] == [P if P < n else 0 for P, n in zip(W, (784, 1000, 1000, 500, 200))]
    assert p256.nbytes == sparse.net.nbytes["csr-wide-panels"]
    dense = make_engine("csr", nets[0.0], threads=2, sell=False)
    p = dense.plan(96)                                    # density 1: tiles over column panels, 32-column chunks
    P = panel_width(Tuning(), 1.0, 10**6, 10**9)          # the host's width: 256 inputs for an L1d of 32-63 KB
    panelled = [2 * P <= n for n in (784, 1000, 1000, 500)] + [False]        # 200 x 10: too few non-zeros
    assert (p.layout, p.chunk) == ("csr-panels", 32)      # 64-column chunks would pad 32 columns more
    assert [l.kernel for l in p.layers] == ["tile-panels" if q else "tiles" for q in panelled]
    assert [l.panel for l in p.layers] == [P if q else 0 for q in panelled]
    assert p.nbytes == dense.net.nbytes["csr-panels"]
    p = dense.plan(256)                                   # 64-column chunks: panels half as wide
    Pw = wide_panel_width(Tuning(), 1.0, 10**6, 10**9)
    assert Pw == P // 2 and (p.layout, p.chunk) == ("csr-wide-panels", 64)
    assert [l.panel for l in p.layers] == [Pw if 2 * Pw <= n else 0 for n in (784, 1000, 1000, 500)] + [0]
    assert dense.panel_nbytes == sum(a.nbytes for a in dense._paneled[:3]) + sum(a.nbytes for a in dense._wide[:3])
    sell = make_engine("csr", nets[0.9], threads=2, sell="portable")
    assert [l.parallel for l in sell.plan(1).layers] == [s >= Tuning().min_parallel_slots
                                                         for s in sell.net.sell_slots]


def test_plan_is_cached_and_serialisable(nets):
    eng = make_engine("csr", nets[0.5], threads=1)
    assert eng.plan(7) is eng.plan(7)
    d = json.loads(json.dumps(eng.plan(7).to_dict()))
    assert d["batch"] == 7 and d["summary"] == eng.plan(7).summary() and len(d["layers"]) == 5
    assert d["isa"] == plan.cpu().isa


@pytest.mark.parametrize("name", UNSTRUCTURED)
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
    assert eng.plan(256).layout == "csr-wide-panels"      # 64-column chunks: their own panels
    assert calls and calls[0][2] is eng._wide[2]          # indptr of that panel-major copy
    layers = eng.plan(256).layers                         # each layer's panels as planned (n_in: one panel)
    assert [int(P) for P in calls[0][7]] == [l.panel or n for l, (_, n) in zip(layers, eng.net.shape)]
    assert [l.kernel for l in layers] == ["tile-panels" if l.panel else "tiles" for l in layers]
    assert layers[0].kernel == "tile-panels" and layers[-1].kernel == "tiles"   # the 200 x 10 layer: whole rows
    np.testing.assert_allclose(out, forward(nets[0.0], X), rtol=1e-4, atol=1e-3)
    calls.clear()
    X = X[:96]                                            # 32-column chunks: the other panels
    np.testing.assert_allclose(eng(X), forward(nets[0.0], X), rtol=1e-4, atol=1e-3)
    assert eng.plan(96).layout == "csr-panels" and calls[-1][2] is eng._paneled[2]
    assert [int(P) for P in calls[-1][7]] == [l.panel or n for l, (_, n) in zip(eng.plan(96).layers, eng.net.shape)]
    calls.clear()
    sparse = make_engine("csr", nets[0.9], threads=1, sell=False)    # density 0.1: whole rows, plain arrays
    calls = _spy(monkeypatch, "csr_forward_chunks")
    sparse(X)
    assert sparse.plan(96).layout == "csr" and calls[0][2] is sparse._plain[2]


def test_codes_carry_the_parallel_flag(nets):
    p = plan.plan_csr(make_engine("csr", nets[0.9], threads=1).net, 1, 2, Tuning(), None, isa="avx2")
    codes = p.codes()
    assert list(codes & ~kernels.PARALLEL) == [kernels.SPMV] * 5
    assert list((codes & kernels.PARALLEL) > 0) == [l.parallel for l in p.layers]
    assert "no AVX-512F (avx2): batch 1 on the CSR SpMV" in p.reasons


# -- exact values at the thresholds: NetShape by hand, every boundary at equality --------------------
from sparsenet.plan import (LayerPlan, NetShape, Plan, batch_chunk, chunk_width, padded_batch,  # noqa: E402
                            panel_width, wide_panel_width)


def test_panel_width_boundaries():
    t = Tuning()                                          # panel_width 0 (by the L1d), dense_panels 0.25, min_panel_nnz 32768
    for l1d, P in ((32768, 256), (49152, 256), (65535, 256), (65536, 512), (16384, 128), (131072, 1024)):
        assert panel_width(t, 1.0, 4096, 32768, l1d) == P, l1d      # a power of two of bytes within the L1d
        assert panel_width(t, 0.25, 4096, 32768, l1d) == P          # density == dense_panels
        assert panel_width(t, 0.2499, 4096, 32768, l1d) == 4096     # below: whole rows
        assert panel_width(t, 1.0, 2 * P, 32768, l1d) == P          # 2 P == n_in: still two panels
        assert panel_width(t, 1.0, 2 * P - 1, 32768, l1d) == 2 * P - 1
        assert panel_width(t, 1.0, 4096, 32767, l1d) == 4096        # nnz one short of min_panel_nnz
    assert plan.panel_bytes(1000) == 4096 and plan.panel_bytes(48 * 1024) == 32768
    assert panel_width(Tuning(panel_width=16, min_panel_nnz=0), 0.5, 32, 0, 49152) == 16
    assert panel_width(t, 1.0, 4096, 32768) == panel_width(t, 1.0, 4096, 32768, plan.l1d_bytes() or plan.L1D_FALLBACK)


def test_l1d_is_read_from_sysfs(tmp_path):
    from sparsenet.cpu import _cache_from, _l1d_from
    for i, (level, kind, size) in enumerate((("1", "Instruction", "32K"), ("1", "Data", "48K"), ("2", "Unified", "2048K"))):
        d = tmp_path / f"index{i}"
        d.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(value + "\n")
    assert _l1d_from(tmp_path) == 48 * 1024
    assert _cache_from(tmp_path, "2") == 2 * 2 ** 20 and _cache_from(tmp_path, "3") is None      # the L2 (sell_packs)
    (tmp_path / "index1" / "size").write_text("junk\n")
    assert _l1d_from(tmp_path) is None                     # unreadable: unknown, never a guess
    assert _l1d_from(tmp_path / "missing") is None


def test_panel_width_follows_dense_panels():
    """Tuning.dense_panels sets the density from which a layer is panelled (its documented rule)."""
    t = Tuning(dense_panels=0.6)
    assert panel_width(t, 0.6, 1024, 10**6, 49152) == 256
    assert panel_width(t, 0.5999, 1024, 10**6, 49152) == 1024


@pytest.mark.parametrize("B, Bp", [(1, 1), (2, 16), (14, 16), (15, 16), (16, 16), (17, 32), (113, 128),
                                   (128, 128), (129, 144), (255, 256)])
def test_padded_batch(B, Bp):
    assert padded_batch(B) == Bp


def test_batch_chunk_exact():
    assert batch_chunk(2, 1) == 2 and batch_chunk(1, 4) == 0 and batch_chunk(5, 1, max_chunk=-1) == 0
    assert batch_chunk(113, 1) == 113 and batch_chunk(120, 1) == 128 and batch_chunk(127, 1) == 128
    assert batch_chunk(129, 1) == 65                      # two chunks of <= 128: 65, left unaligned
    assert batch_chunk(240, 2) == 128 and batch_chunk(256, 2, max_chunk=64) == 64
    assert batch_chunk(257, 2, max_chunk=128) == 65       # 4 chunks of 65: 80 would cost 23 % more
    assert batch_chunk(30, 2, max_chunk=16) == 16         # 2 chunks of 15 -> 16


def _net(nnz, shape, panels=None, **nbytes):
    return NetShape(nnz=tuple(nnz), shape=tuple(shape), panels=tuple(panels or [n for _, n in shape]),
                    nbytes=nbytes)


def test_chunk_width_boundaries():
    plain = _net([1000], [(100, 100)])                      # no panels: a thread needs tile_min_chunk columns
    t = Tuning(small_work=0)
    for B, Bc in ((2, 16), (7, 16), (16, 16), (17, 32), (25, 32), (33, 64), (65, 32), (96, 32), (97, 64),
                  (100, 64), (4096, 64)):
        assert chunk_width(t, plain, B, 1) == Bc, B         # one thread: 16 columns only for B <= 16; 64 where
                                                            # they pad no more than 32 (65: 128 vs 96 columns)
    assert chunk_width(Tuning(tile_chunk=32, small_work=0), plain, 4096, 1) == 32   # 64 only if tile_chunk says
    assert chunk_width(t, plain, 128, 2) == 64 and chunk_width(t, plain, 127, 3) == 32   # a 64 chunk a thread
    assert chunk_width(t, plain, 32, 2) == 16               # 2 chunks of 16: each thread one (B == 2 * 16)
    assert chunk_width(t, plain, 33, 2) == 32               # 3 chunks of 16 would make a second round
    assert chunk_width(t, plain, 31, 2) == 0                # 15.5 columns a thread: the row split
    assert chunk_width(t, plain, 48, 3) == 16 and chunk_width(t, plain, 49, 3) == 32
    assert chunk_width(Tuning(tile_min_chunk=17, small_work=32_000), plain, 32, 2) == 16   # short: 1000 * 32
    assert chunk_width(Tuning(tile_min_chunk=17, small_work=31_999), plain, 32, 2) == 0
    assert chunk_width(Tuning(tile_min_chunk=0, small_work=0), plain, 4, 2) == 16          # always the batch split
    assert chunk_width(Tuning(tile_chunk=64, small_work=0), plain, 100, 2) == 64
    assert chunk_width(Tuning(tile_chunk=0), plain, 100, 1) == 0                         # no batch split
    dense = _net([6000], [(100, 100)], [50])                # panelled: 2 * tile_min_chunk columns a thread
    assert chunk_width(t, dense, 256, 2) == 64 and chunk_width(t, dense, 64, 2) == 32   # B == 2 * 2 * 16
    assert chunk_width(t, dense, 63, 2) == 0                # 31.5 < 32: the row split
    assert chunk_width(t, dense, 100, 2) == 64              # 2 chunks, the last with 28 zero columns (as 4 of 32)
    assert chunk_width(t, dense, 90, 2) == 32               # 3 chunks of 32 pad 6 columns, 2 of 64 would pad 38
    assert chunk_width(Tuning(small_work=0, tile_min_chunk=14), dense, 56, 2) == 32
    assert chunk_width(Tuning(small_work=10**9), dense, 30, 2) == 16     # short call
    assert chunk_width(t, dense, 1, 2) == 0 and chunk_width(t, dense, 1, 1) == 0
    with pytest.raises(ValueError, match="Tuning.tile_chunk must be a multiple of 16 columns"):
        Tuning(tile_chunk=24)


def test_row_split_parallel_threshold():
    net = _net([100, 50], [(10, 20), (5, 10)])
    for B, Bp in ((1, 1), (7, 16), (15, 16), (17, 32)):
        t = Tuning(min_parallel_work=100 * Bp, max_chunk=0, tile_chunk=0)
        assert [l.parallel for l in plan.plan_csr(net, B, 2, t, None, isa="avx2").layers] == [True, False]
        t = Tuning(min_parallel_work=100 * Bp + 1, max_chunk=0, tile_chunk=0)
        assert [l.parallel for l in plan.plan_csr(net, B, 2, t, None, isa="avx2").layers] == [False, False]
        t = Tuning(min_parallel_work=0, max_chunk=0, tile_chunk=0)
        assert [l.parallel for l in plan.plan_csr(net, B, 1, t, None, isa="avx2").layers] == [False, False]


def test_row_split_plan_is_exact():
    net = _net([100, 50], [(10, 20), (5, 10)], csr=1234)
    t = Tuning(max_chunk=0, tile_chunk=0, min_parallel_work=0)
    p = plan.plan_csr(net, 32, 2, t, None, isa="avx2")
    assert p == Plan(engine="csr", batch=32, threads=2, isa="avx2", layout="csr", split="rows", padded_batch=32,
                     layers=(LayerPlan("tiles", True, 0, plan.kernels.TILES),) * 2,
                     reasons=("row split: chunks of this batch would be too narrow for 2 threads",
                              "a layer runs on 2 threads when nnz * batch >= 0"), nbytes=1234)
    assert p.summary() == "csr; row split over 2 threads; tiles/par x2"
    p = plan.plan_csr(net, 7, 1, t, None, isa="avx2")          # tile_chunk=0: no batch split at one thread
    assert (p.split, p.padded_batch) == ("none", 16)
    assert p.reasons == ("batch padded to 16 columns (register tiles of 64, 32 and 16 columns)",)
    assert [(l.kernel, l.code) for l in p.layers] == [("tiles", plan.kernels.TILES)] * 2
    assert p.summary() == "csr; none; tiles x2"
    p = plan.plan_csr(net, 1, 1, t, None, isa="avx512", engine="csr-skip")
    assert p.engine == "csr-skip" and p.reasons == (
        "batch 1 on the CSR SpMV (SELL not kept: it does not pay for this net, or sell=False)",)
    assert [(l.kernel, l.code, l.parallel) for l in p.layers] == [("spmv", plan.kernels.SPMV, False)] * 2


def test_row_split_runs_register_tiles_over_the_panels():
    net = _net([150, 50], [(10, 20), (5, 10)], [10, 10], csr=1, **{"csr-panels": 2})
    t = Tuning(max_chunk=0, tile_chunk=0, min_parallel_work=150 * 16)     # layer 0 on both threads
    for B in (2, 31, 32):                                    # padded to 16 / 32: register tiles (over the panels)
        p = plan.plan_csr(net, B, 2, t, None, isa="avx2")
        assert [(l.kernel, l.panel, l.parallel) for l in p.layers] == [("tile-panels", 10, True), ("tiles", 0, False)]
        assert (p.layout, p.nbytes, p.padded_batch) == ("csr-panels", 2, 16 if B == 2 else 32)
    p = plan.plan_csr(net, 31, 2, Tuning(max_chunk=0, tile_chunk=0, dense_panels=0.8), None, isa="avx2")
    assert p.layers[0].kernel == "tile-panels"               # the panels the engine holds, whatever dense_panels says
    p = plan.plan_csr(net, 1, 2, Tuning(), None, isa="avx2")          # batch 1: the SpMV on the plain layout
    assert [(l.kernel, l.code, l.parallel) for l in p.layers] == [
        ("spmv", plan.kernels.SPMV, False), ("spmv", plan.kernels.SPMV, False)]
    assert (p.layout, p.nbytes) == ("csr", 1)


def test_batch_split_plan_is_exact():
    net = _net([6000, 500], [(100, 100), (10, 100)], [50, 100], csr=10, **{"csr-panels": 20})
    t = Tuning(small_work=0)
    p = plan.plan_csr(net, 256, 2, t, None, isa="avx512")      # no wide panels in this net: 64 columns on its panels
    assert (p.layout, p.split, p.chunk, p.padded_batch, p.nbytes) == ("csr-panels", "batch", 64, 0, 20)
    assert p.layers == (LayerPlan("tile-panels", False, 50, plan.kernels.TILE_PANELS),
                        LayerPlan("tiles", False, 0, plan.kernels.TILES))
    assert p.reasons == ("batch split: 4 chunk(s) of 64 columns, each through every layer on one thread, "
                         "claimed by 2 thread(s)", "64-column register tiles")
    p = plan.plan_csr(net, 90, 1, t, None, isa="avx512")        # 3 chunks of 32, the last with 6 zero columns
    assert (p.chunk, p.layers[0]) == (32, LayerPlan("tile-panels", False, 50, plan.kernels.TILE_PANELS))
    assert p.reasons == ("batch split: 3 chunk(s) of 32 columns (the last with 6 zero columns), each through "
                         "every layer on one thread, claimed by 1 thread(s)",)
    p = plan.plan_csr(net, 7, 1, t, None, isa="avx512")         # 7 columns: one padded 16-column chunk
    assert [l.code for l in p.layers] == [plan.kernels.TILE_PANELS, plan.kernels.TILES] and p.chunk == 16
    assert p.summary() == "csr-panels; batch split 16 cols x 1 threads; tile-panels, tiles"
    wide = NetShape(nnz=net.nnz, shape=net.shape, panels=net.panels, wide_panels=(25, 100),
                    nbytes={"csr-panels": 20, "csr-wide-panels": 30})
    p = plan.plan_csr(wide, 256, 2, t, None, isa="avx512")     # 64-column chunks on the wide panels
    assert (p.layout, p.chunk, p.nbytes) == ("csr-wide-panels", 64, 30)
    assert p.reasons[-1] == ("64-column register tiles on column panels of their own (a 64-column chunk's "
                             "activations within the L1d, wider where a row would hold fewer than 24 non-zeros in one)")
    assert p.layers == (LayerPlan("tile-panels", False, 25, plan.kernels.TILE_PANELS),
                        LayerPlan("tiles", False, 0, plan.kernels.TILES))
    p = plan.plan_csr(wide, 90, 1, t, None, isa="avx512")      # 32-column chunks on the others
    assert (p.layout, p.chunk, p.layers[0].panel) == ("csr-panels", 32, 50)
    plain_wide = NetShape(nnz=net.nnz, shape=net.shape, panels=(100, 100), wide_panels=(100, 100), nbytes={"csr": 10})
    assert plan.plan_csr(plain_wide, 256, 2, t, None, isa="avx512").layout == "csr"


def test_sell_plan_is_exact():
    net = NetShape(nnz=(10, 10), shape=((4, 4), (4, 4)), sell_slots=(3000, 2999), panels=(4, 4),
                   nbytes={"sell": 77, "csr": 5})
    p = plan.plan_csr(net, 1, 2, Tuning(), "sell16-avx512", isa="avx512")
    assert (p.layout, p.split, p.nbytes) == ("sell", "none", 77)
    assert p.layers == (LayerPlan("sell16-avx512", True), LayerPlan("sell16-avx512", False))
    assert p.reasons == ("batch 1 on SELL-16x32 (AVX-512F permutes)", "a layer runs on 2 threads from 3000 slots")
    p = plan.plan_csr(net, 1, 1, Tuning(), "sell16-portable", isa="avx2")
    assert p.layers == (LayerPlan("sell16-portable", False),) * 2
    assert p.reasons == ("batch 1 on SELL-16x32 (portable twin)", "one thread")
    assert p.summary() == "sell; none; sell16-portable x2"
    assert plan.plan_csr(net, 2, 1, Tuning(), "sell16-avx512", isa="avx512").layout == "csr"


def test_csc_plan_is_exact():
    net = NetShape(nnz=(10, 10), shape=((4, 4), (4, 4)), sell_slots=(1, 1), panels=(4, 4), nbytes={"csc": 9})
    t = Tuning(max_csc_batch=2)
    p = plan.plan_csr(net, 2, 2, t, "sell16-avx512", isa="avx512", skip_zeros=True, engine="csr-skip")
    assert (p.engine, p.layout, p.split, p.nbytes) == ("csr-skip", "csc", "none", 9)
    assert p.layers == (LayerPlan("csc-skip", False),) * 2
    assert p.reasons == ("skip_zeros, batch <= 2: the net by columns (CSC), inputs that are zero in every row of "
                         "the batch skipped (their weights never read), one thread",)
    assert plan.plan_csr(net, 3, 2, t, None, isa="avx512", skip_zeros=True).layout == "csr"
    assert plan.plan_csr(net, 1, 2, t, "sell16-avx512", isa="avx512").layout == "sell"


def test_plan_text():
    p = Plan(engine="e", batch=3, threads=2, isa="avx2", layout="csr", split="rows",
             layers=(LayerPlan("a", True, 16), LayerPlan("a", True), LayerPlan("b", False), LayerPlan("a", True)),
             reasons=("r1", "r2"))
    assert p.summary() == "csr; row split over 2 threads; a/par x2, b, a/par"
    assert p.describe() == ("e at batch 3, 2 thread(s), avx2: csr; row split over 2 threads; a/par x2, b, a/par\n"
                            "  layer 0: a (parallel), panels of 16 inputs\n"
                            "  layer 1: a (parallel)\n"
                            "  layer 2: b\n"
                            "  layer 3: a (parallel)\n"
                            "  why: r1\n"
                            "  why: r2")
    d = p.to_dict()
    assert d["layers"][0] == {"kernel": "a", "parallel": True, "panel": 16, "code": -1}
    assert d["reasons"] == ["r1", "r2"] and d["summary"] == p.summary() and d["padded_batch"] == 0
    assert set(d) == {"engine", "batch", "threads", "isa", "layout", "split", "chunk", "padded_batch",
                      "layers", "reasons", "nbytes", "summary"}
    q = Plan(engine="e", batch=3, threads=2, isa="avx2", layout="dense", split="blas", layers=(), reasons=())
    assert q.summary() == "dense; blas; "
    assert plan.fold([p, q, p]) == "csr; row split over 2 threads; a/par x2, b, a/par; dense; blas; "
    assert list(Plan("e", 1, 1, "x", "csr", "none", layers=(LayerPlan("s", True, 0, 3), LayerPlan("s", False, 0, 2)))
                .codes()) == [3 | plan.kernels.PARALLEL, 2]
    assert Plan("e", 1, 1, "x", "csr", "none", layers=(LayerPlan("s", True, 0, 3),)).codes().dtype == np.int64


@pytest.mark.parametrize("threads", [1, 2])
def test_blas_and_scipy_plans_are_exact(threads):
    isa = plan.cpu().isa
    for B, kernel in ((1, "sgemv"), (2, "sgemm")):
        assert plan.blas_plan("dense", B, threads, 2, 99) == Plan(
            engine="dense", batch=B, threads=threads, isa=isa, layout="dense", split="blas",
            layers=(LayerPlan(kernel, threads > 1),) * 2,
            reasons=(f"numpy matmul per layer on {threads} BLAS thread(s)",), nbytes=99)
    assert plan.scipy_plan(4, threads, 3, 98) == Plan(
        engine="csr-scipy", batch=4, threads=threads, isa=isa, layout="scipy-csr", split="none",
        layers=(LayerPlan("scipy-csr", False),) * 3,
        reasons=("scipy.sparse CSR @ dense per layer (scipy's own loop, one thread)",), nbytes=98)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["dense", "shrunk", "csr-scipy"])
def test_library_engines_plan_with_their_threads_and_bytes(nets, name, threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs 2 threads")
    eng = make_engine(name, nets[0.5], threads=threads)
    for B in (1, 16):
        p = eng.plan(B)
        assert (p.threads, p.batch, p.nbytes, len(p.layers)) == (threads, B, eng.nbytes, 5)
        assert eng.call_nbytes(B) == eng.nbytes
    assert eng.layout(16) == ("scipy-csr" if name == "csr-scipy" else "dense")
    if name != "csr-scipy":
        assert all(l.parallel == (threads > 1) for l in eng.plan(16).layers)
        assert [l.kernel for l in eng.plan(16).layers] == ["sgemm"] * 5


def test_fused_dense_plan_is_exact():
    t = Tuning(max_fused_batch=4, min_parallel_dense=200)
    shapes = [(10, 10), (5, 10)]
    p = plan.fused_dense_plan("dense-fused", 2, 2, shapes, 55, t, False)
    assert (p.layout, p.split, p.nbytes, p.engine, p.batch) == ("dense", "inputs", 55, "dense-fused", 2)
    assert (p.threads, p.isa) == (2, plan.cpu().isa)
    assert p.layers == (LayerPlan("dense-tiles", True), LayerPlan("dense-tiles", False))   # 200 >= 200, 100 < 200
    assert p.reasons == ("the whole net in one compiled call (no per-layer numpy overhead)",
                         "a layer's inputs split over 2 threads (each streams whole weight rows; the parts summed after) "
                         "when n_in * n_out * batch >= 200")
    p = plan.fused_dense_plan("dense-skip", 4, 1, shapes, 55, t, True)
    assert p.split == "none" and p.layers == (LayerPlan("dense-tiles-skip", False),) * 2
    assert p.reasons[1] == ("inputs that are zero in every row of the batch are skipped "
                            "(their weight rows never read)") and len(p.reasons) == 2
    p = plan.fused_dense_plan("dense-fused", 5, 2, shapes, 55, t, False)     # batch > max_fused_batch: BLAS
    assert (p.split, p.layout, p.nbytes) == ("blas", "dense", 55)
    assert p.layers == (LayerPlan("sgemm", True),) * 2
    assert p.reasons == ("batch > 4: numpy matmul per layer (BLAS)", "numpy matmul per layer on 2 BLAS thread(s)")


def test_tuning_refuses_every_negative_field():
    from dataclasses import fields
    for f in fields(Tuning):
        rule = r"a density in \[0, 1\]" if f.name == "dense_panels" else "an integer >= 0"
        with pytest.raises(ValueError, match=rf"^Tuning\.{f.name} must be {rule}, got -1$"):
            Tuning(**{f.name: -1})
    assert Tuning(**{f.name: 0 for f in fields(Tuning)}).tile_min_chunk == 0


@pytest.mark.parametrize("field, value", [("max_chunk", 2.5), ("panel_width", 2.5), ("max_chunk", "a"),
                                          ("min_pass_nnz", True), ("tile_chunk", float("nan"))])
def test_tuning_refuses_counts_that_are_not_integers(field, value):
    with pytest.raises(ValueError, match=rf"^Tuning\.{field} must be an integer >= 0, got "):
        Tuning(**{field: value})


@pytest.mark.parametrize("value", [1.5, float("nan"), "0.3", None])
def test_tuning_refuses_a_density_outside_0_1(value):
    with pytest.raises(ValueError, match=r"^Tuning\.dense_panels must be a density in \[0, 1\], got "):
        Tuning(dense_panels=value)
    assert Tuning(dense_panels=1).dense_panels == 1 and Tuning(dense_panels=0.5).dense_panels == 0.5


def test_plan_nbytes_default_to_zero_for_a_layout_without_bytes():
    # a NetShape whose nbytes names no layout: every plan_csr path reads 0 bytes (an int), not None
    net = NetShape(nnz=(100, 50), shape=((10, 20), (5, 10)), sell_slots=(1, 1), panels=(10, 10))
    t = Tuning(small_work=0, max_csc_batch=2)
    plans = {"csc": plan.plan_csr(net, 2, 1, t, None, isa="avx2", skip_zeros=True),
             "sell": plan.plan_csr(net, 1, 1, t, "sell8-portable", isa="avx2"),
             "batch": plan.plan_csr(net, 32, 1, t, None, isa="avx2"),
             "rows": plan.plan_csr(net, 32, 2, Tuning(max_chunk=0, tile_chunk=0), None, isa="avx2")}
    assert {k: (p.layout, p.split) for k, p in plans.items()} == {
        "csc": ("csc", "none"), "sell": ("sell", "none"), "batch": ("csr-panels", "batch"),
        "rows": ("csr-panels", "rows")}
    for p in plans.values():
        assert p.nbytes == 0 and type(p.nbytes) is int


def test_sell8_plan_is_exact():
    net = NetShape(nnz=(10, 10), shape=((4, 4), (4, 4)), sell_slots=(4000, 3999), panels=(4, 4),
                   nbytes={"sell": 66, "csr": 5})
    t = Tuning(min_parallel_slots=0)                        # SELL8 reads min_parallel_units, not the slots
    p = plan.plan_csr(net, 1, 2, t, "sell8-avx2", isa="avx2")
    assert (p.layout, p.split, p.nbytes, p.isa) == ("sell", "none", 66, "avx2")
    assert p.layers == (LayerPlan("sell8-avx2", True), LayerPlan("sell8-avx2", False))
    assert p.reasons == ("batch 1 on SELL8 (AVX2 permutes over 8/16-column windows; no AVX-512F)",
                         "a layer runs on 2 threads from 4000 units")
    p = plan.plan_csr(net, 1, 1, t, "sell8-portable", isa="avx2")
    assert p.layers == (LayerPlan("sell8-portable", False),) * 2
    assert p.reasons == ("batch 1 on SELL8 (portable twin)", "one thread")
    p = plan.plan_csr(net, 1, 2, Tuning(min_parallel_units=0, min_parallel_slots=10**9), "sell8-portable", isa="avx2")
    assert p.layers == (LayerPlan("sell8-portable", True),) * 2
    assert p.reasons[1] == "a layer runs on 2 threads from 0 units"
    p = plan.plan_csr(net, 1, 2, Tuning(min_parallel_units=0, min_parallel_slots=4000), "sell16-portable", isa="avx2")
    assert p.layers == (LayerPlan("sell16-portable", True), LayerPlan("sell16-portable", False))
    assert p.reasons[1] == "a layer runs on 2 threads from 4000 slots"
    kinds = dataclasses.replace(net, sell_kinds=("16s", "8"))              # the layers' SELL8 windows, named
    assert plan.plan_csr(kinds, 1, 1, t, "sell8-avx2", isa="avx2").reasons == (
        "batch 1 on SELL8 (AVX2 permutes over 8/16-column windows; no AVX-512F)",
        "SELL8 windows per layer (columns; s: split units, a window a slot): 16s, 8", "one thread")


def test_batch_one_csr_reason_names_the_isa():
    net = _net([100], [(10, 20)])
    assert plan.plan_csr(net, 1, 1, Tuning(), None, isa="avx2").reasons == (
        "no AVX-512F (avx2): batch 1 on the CSR SpMV",)
    assert plan.plan_csr(net, 1, 1, Tuning(), None, isa="avx512").reasons == (
        "batch 1 on the CSR SpMV (SELL not kept: it does not pay for this net, or sell=False)",)


def test_row_split_kernels_and_reasons_at_small_batches():
    net = _net([100, 50], [(10, 20), (5, 10)], csr=3)
    t = Tuning(max_chunk=0, tile_chunk=0, min_parallel_work=0)
    rows = ("row split: chunks of this batch would be too narrow for 2 threads",
            "a layer runs on 2 threads when nnz * batch >= 0")
    for B, Bp in ((2, 16), (15, 16), (16, 16), (17, 32)):
        p = plan.plan_csr(net, B, 2, t, None, isa="avx2")
        pad = ("batch padded to %d columns (register tiles of 64, 32 and 16 columns)" % Bp,) if Bp > B else ()
        assert (p.split, p.padded_batch, p.reasons, p.nbytes) == ("rows", Bp, pad + rows, 3), B
        assert [(l.kernel, l.parallel) for l in p.layers] == [("tiles", True)] * 2, B
    p = plan.plan_csr(net, 1, 2, t, None, isa="avx2")
    assert (p.split, p.padded_batch) == ("rows", 1)
    assert p.reasons == ("no AVX-512F (avx2): batch 1 on the CSR SpMV", rows[1])
    assert p.layers == (LayerPlan("spmv", True, 0, plan.kernels.SPMV),) * 2


def test_codes_are_int64_even_without_layers():
    codes = Plan("e", 1, 1, "x", "csr", "none").codes()
    assert codes.dtype == np.int64 and codes.shape == (0,)


def test_row_split_layer_plans_are_exact_on_one_thread():
    """On one thread no layer of the row path is parallel, panelled or not; unpanelled layers carry
    panel 0 (what the plan records)."""
    net = _net([150, 50], [(10, 20), (5, 10)], [10, 10], csr=1, **{"csr-panels": 2})
    t = Tuning(max_chunk=0, tile_chunk=0, min_parallel_work=0)
    p = plan.plan_csr(net, 32, 1, t, None, isa="avx2")
    assert (p.split, p.layout, p.nbytes) == ("none", "csr-panels", 2)
    assert p.layers == (LayerPlan("tile-panels", False, 10, kernels.TILE_PANELS),
                        LayerPlan("tiles", False, 0, kernels.TILES))
    p = plan.plan_csr(net, 1, 1, t, None, isa="avx2")
    assert p.layers == (LayerPlan("spmv", False, 0, kernels.SPMV),) * 2
    assert [d["panel"] for d in p.to_dict()["layers"]] == [0, 0]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_batch_runs_register_tiles_on_a_multiple_of_16_columns(threads):
    """No batch size falls between the kernels (session 9: batches such as 7, 25 or 130 ran whole-row
    kernels 2-5x slower than their neighbours): every plan of a batch > 1 runs tiles on padded columns,
    its chunk or padded batch covers the batch, and the padding stays under one tile per chunk."""
    nets = (_net([6000, 500], [(100, 100), (10, 100)], [50, 100]),        # panelled
            _net([1000, 500], [(100, 100), (10, 100)]),                   # plain
            _net([10**6, 10**5], [(1000, 1000), (10, 1000)], [256, 1000]))  # long calls: no short-call rule
    for net in nets:
        for B in range(2, 300):
            p = plan.plan_csr(net, B, threads, Tuning(), None, isa="avx2")
            assert {l.kernel for l in p.layers} <= {"tiles", "tile-panels"}, (B, p.summary())
            if p.split == "batch":
                assert p.chunk in (16, 32, 64) and p.padded_batch == 0
                n_chunks = -(-B // p.chunk)
                assert n_chunks * p.chunk - B < p.chunk and (p.chunk != 16 or n_chunks <= threads)
                if p.chunk == 64:                            # wide chunks: one a thread at least, no extra padding
                    assert n_chunks >= threads and n_chunks * 64 - B < 32
            else:
                assert p.split in ("rows", "none") and p.padded_batch % 16 == 0 and 0 <= p.padded_batch - B < 16
