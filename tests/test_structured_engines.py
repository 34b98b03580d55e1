"""The bsr, nm and bsr-scipy engines against the reference forward pass (model.forward on the same
weights): sparsities, batch 1/7/256, widths that are not multiples of the block or group, biases,
an all-zero layer, 1 and 2 threads, consecutive calls, float64 and non-contiguous input, plans."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sparsenet import bsr_kernels, nm_kernels
from sparsenet.model import Layer, forward, he_init
from sparsenet.plan import Plan, cpu
from sparsenet.prune import block_prune, nm_prune
from sparsenet.structured_engines import (CHUNK_TILE, ENGINE_CLASSES, BSREngine, NMEngine, ScipyBSREngine,
                                         chunk_columns)

SIZES = (45, 38, 27, 13, 10)                 # no width a multiple of 4 or 8 but the output
BATCHES = (1, 7, 256)
SPARSITIES = (0, 0.5, 0.9, 0.99)
BLOCKS = [(4, 1), (8, 1), (1, 4), (4, 4), (3, 2)]
PATTERNS = [(2, 4), (1, 4), (3, 4), (3, 8)]


def net(bias=True, seed=0, sizes=SIZES):
    params = he_init(sizes, seed=seed)
    if not bias:
        return params
    rng = np.random.default_rng(seed + 1)
    return tuple(Layer(l.weight, (rng.standard_normal(l.weight.shape[0]) * 0.1).astype(np.float32))
                 for l in params)


def assert_matches(out, ref):
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max(initial=0))))


def check(eng, params, batches=BATCHES, seed=0):
    rng = np.random.default_rng(seed)
    for B in batches:
        X = rng.standard_normal((B, params[0].weight.shape[1])).astype(np.float32)
        assert_matches(eng(X), forward(params, X))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("k", SPARSITIES)
def test_bsr_engines_match_forward(k, block, threads):
    params = block_prune(net(), k, block)
    for cls in (BSREngine, ScipyBSREngine):
        check(cls(params, threads=threads, block=block), params)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n, m", PATTERNS)
@pytest.mark.parametrize("bias", [True, False])
def test_nm_engine_matches_forward(n, m, bias, threads):
    params = nm_prune(net(bias), n, m)
    check(NMEngine(params, threads=threads, n=n, m=m), params)
    params = nm_prune(net(bias), n, m, prune_output=True)
    check(NMEngine(params, threads=threads, n=n, m=m, prune_output=True), params)


def tile_name(n, cols):
    """The plan's name of an n:4 tile kernel of `cols` columns (rows per tile by the target's ISA;
    n > 2 in passes of 2 and 1 slots)."""
    passes = {3: " (2+1 slots)", 4: " (2+2 slots)"}.get(n, "")
    return f"nm{n}:4-tile{nm_kernels.rows_per_tile(cols // 16, cpu().isa)}x{cols}{passes}"


@pytest.mark.parametrize("tile", [32, 64, 128])
@pytest.mark.parametrize("panel", [1, 2048, None])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_nm_engine_tiles_and_panels(tile, panel, n):
    # batch 100: one 128-column chunk at 1 thread (a 128 tile, or 64 + 32 + 32), two of 64 at 2
    params = nm_prune(net(), n, 4)
    for threads in (1, 2):
        eng = NMEngine(params, threads=threads, tile=tile, panel=panel)
        check(eng, params, batches=(1, 7, 100, 256))
        # batch 256 at 2 threads: chunks of 64 columns at most (4 to claim, not 2 of 128)
        T = tile if threads == 1 else min(tile, 64)
        assert eng.plan(256).chunk == T
        # the output layer (stored 4:4) runs on the same tiles in two passes of 2 slots
        assert [l.kernel for l in eng.plan(256).layers] == [tile_name(n, T)] * 3 + [tile_name(4, T)]
        assert {l.kernel for l in eng.plan(7).layers} <= {tile_name(n, 32), tile_name(4, 32)}
    with pytest.raises(ValueError, match="tile must be one of"):
        NMEngine(params, tile=16)
    with pytest.raises(ValueError, match="panel must be a positive"):
        NMEngine(params, panel=0)


@pytest.mark.parametrize("k", [0.5, 0.9])
def test_bsr_engine_stores_any_weights(k):
    # weights pruned by another method (or none): whole blocks are stored, results exact
    from sparsenet.prune import weight_prune
    params = weight_prune(net(), k)
    for block in [(4, 1), (2, 2)]:
        check(BSREngine(params, threads=2, block=block), params)


def test_all_zero_layer():
    params = list(net())
    params[1] = Layer(np.zeros_like(params[1].weight), params[1].bias)
    params = tuple(params)
    check(BSREngine(params, threads=2, block=(4, 1)), params)
    check(ScipyBSREngine(params, block=(4, 1)), params)
    pn = nm_prune(params, 2, 4)
    check(NMEngine(pn, threads=2), pn)


def test_nm_engine_refuses_weights_off_pattern():
    params = nm_prune(net(), 1, 4)
    with pytest.raises(ValueError, match=r"^layer 0: not 2:4 sparse: row 0 holds 4 non-zeros"):
        NMEngine(net(), n=2, m=4)
    with pytest.raises(ValueError, match=r"^layer 0: not 1:4 sparse: row \d+ holds 2 non-zeros"):
        NMEngine(nm_prune(net(), 2, 4), n=1, m=4)
    with pytest.raises(ValueError, match=r"^layer 3: not 1:4 sparse"):   # the output layer, when held to it
        NMEngine(params, n=1, m=4, prune_output=True)
    with pytest.raises(ValueError, match=r"^n must be at most m"):
        NMEngine(params, n=5, m=4)
    with pytest.raises(ValueError, match=r"^block rows r must be a positive integer"):
        BSREngine(params, block=(0, 4))


@pytest.mark.parametrize("n, m", PATTERNS + [(4, 4)])
def test_nm_engine_reads_n_off_the_weights(n, m):
    # what the study does: make_engine("nm", net) on a 2:4-, 1:4- or unpruned net runs n:m kernels
    from sparsenet.engines import make_engine
    params = nm_prune(net(), n, m) if n < m else net()
    eng = NMEngine(params, threads=2, m=m)
    assert (eng.n, eng.m, eng.ns) == (n, m, (n, n, n, m))
    check(eng, params)
    if m == 4:
        assert make_engine("nm", params).n == n
    zero = tuple(Layer(np.zeros_like(l.weight), l.bias) for l in params)
    assert NMEngine(zero, m=m).n == 1                # nothing kept: one slot per group, all padding
    check(NMEngine(zero, m=m), zero)


@pytest.mark.parametrize("name", ["bsr", "nm", "bsr-scipy"])
def test_consecutive_calls_and_input_conversion(name):
    params = nm_prune(net(), 2, 4)
    eng = ENGINE_CLASSES[name](params, threads=2)
    rng = np.random.default_rng(5)
    for B in BATCHES:
        X1 = rng.standard_normal((B, SIZES[0])).astype(np.float32)
        X2 = rng.standard_normal((B, SIZES[0])).astype(np.float32)
        out1 = eng(X1)
        out2 = eng(X2)                                     # must not overwrite out1
        assert_matches(out1, forward(params, X1))
        assert_matches(out2, forward(params, X2))
        assert not np.shares_memory(out1, out2)
        X64 = rng.standard_normal((2 * B, SIZES[0]))       # float64, every other row: not contiguous
        assert_matches(eng(X64[::2]), forward(params, X64[::2].astype(np.float32)))
        Xf = np.asfortranarray(X1)
        assert_matches(eng(Xf), forward(params, X1))


def test_stale_non_finite_values_do_not_leak():
    # inf in one call, finite in the next: padded rows of the buffers must not carry 0 * inf = NaN
    params = block_prune(net(), 0.5, (4, 4))
    eng = BSREngine(params, threads=1, block=(4, 4))
    for B in (1, 40):
        X = np.full((B, SIZES[0]), np.inf, np.float32)
        assert np.isnan(eng(X)).all()
        X = np.random.default_rng(0).standard_normal((B, SIZES[0])).astype(np.float32)
        assert_matches(eng(X), forward(params, X))


def test_plans():
    params = nm_prune(net(), 2, 4)
    for eng, layout in ((BSREngine(params, threads=2, block=(8, 1)), "bsr"), (NMEngine(params, threads=2), "nm"),
                        (ScipyBSREngine(params, block=(8, 1)), "scipy-bsr")):
        for B in BATCHES:
            p = eng.plan(B)
            assert isinstance(p, Plan) and p.layout == layout and p.batch == B and len(p.layers) == 4
            assert eng.layout(B) == layout and p.reasons
    bsr = BSREngine(params, threads=2, block=(8, 1))
    assert [l.kernel for l in bsr.plan(1).layers] == ["bsr-spmv"] * 4
    assert bsr.plan(256).split == "batch" and bsr.plan(256).chunk == 32        # one register tile a chunk
    assert {l.kernel for l in bsr.plan(256).layers} == {f"bsr8x1-tile{bsr_kernels.rows_per_tile(8, cpu().isa)}x32"}  # 4 rows without AVX-512
    nm = NMEngine(params, threads=2)
    assert [l.kernel for l in nm.plan(7).layers] == [tile_name(2, 32)] * 3 + [tile_name(4, 32)]
    assert nm.plan(7).chunk == 32
    assert [l.kernel for l in nm.plan(1).layers] == ["nm-spmv16"] * 4                  # N:4: row-interleaved copy
    assert [l.kernel for l in NMEngine(nm_prune(net(), 3, 8), m=8).plan(1).layers] == ["nm-spmv"] * 4
    # every N of N:4 (3:4 on the scalar SpMV was 8x slower than 4:4: a cliff at k = 25 %)
    assert [l.kernel for l in NMEngine(nm_prune(net(), 3, 4)).plan(1).layers] == ["nm-spmv16"] * 4
    # chunks of one 64-column tile on every target (4 rows at a time on AVX-512); with tile=128,
    # 64 columns where 128 would leave a thread fewer than 2 chunks (batch 256 on 2 threads)
    for eng in (nm, NMEngine(params, threads=1)):
        assert eng.tile == 64 and eng.plan(256).chunk == eng.plan(4096).chunk == 64
        assert [l.kernel for l in eng.plan(256).layers] == [tile_name(2, 64)] * 3 + [tile_name(4, 64)]
    wide1, wide2 = NMEngine(params, threads=1, tile=128), NMEngine(params, threads=2, tile=128)
    assert wide1.plan(256).chunk == wide2.plan(512).chunk == 128 and wide2.plan(256).chunk == 64
    assert [l.kernel for l in wide1.plan(256).layers] == [tile_name(2, 128)] * 3 + [tile_name(4, 128)]
    assert nm.describe()["layer_n"] == [2, 2, 2, 4]


def test_chunk_columns():
    assert chunk_columns(256, 2) == 128 and chunk_columns(256, 1) == 128
    assert chunk_columns(7, 2) == 32 and chunk_columns(40, 2) == 32 and chunk_columns(1000, 2) == 128
    assert all(chunk_columns(B, t) % 32 == 0 for B in range(2, 300, 7) for t in (1, 2, 3))
    # chunks are whole tiles of both kernels: bsr's tile and nm's narrowest
    assert CHUNK_TILE == bsr_kernels.TILE == min(nm_kernels.TILES) == 32


def test_counts():
    params = block_prune(net(), 0.9, (4, 1))
    eng = BSREngine(params, block=(4, 1))
    assert eng.n_useful == sum(int(np.count_nonzero(l.weight)) for l in params)
    assert eng.nnz == eng.nblocks * 4 >= eng.n_useful
    assert eng.flops(3) == 2 * eng.nnz * 3
    assert set(ENGINE_CLASSES) == {"bsr", "nm", "bsr-scipy"}


# --- portability: generic LLVM vector IR only ---------------------------------------------------


from sparsenet import sell_kernels                                              # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

_AARCH64 = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, "tests")
    from aarch64 import aarch64_asm
    from sparsenet import bsr_kernels, nm_kernels
    from sparsenet.model import he_init
    from sparsenet.prune import block_prune, nm_prune
    from sparsenet.structured_engines import BSREngine, NMEngine

    from sparsenet.plan import Tuning
    p = he_init((40, 24, 10), bias=True)
    for B in (1, 32):
        BSREngine(block_prune(p, 0.5, (4, 1)), threads=1, block=(4, 1))(np.ones((B, 40), np.float32))
        NMEngine(nm_prune(p, 2, 4), threads=1)(np.ones((B, 40), np.float32))
    for rows in (NMEngine(nm_prune(p, 2, 4), threads=2, tuning=Tuning(min_rows_work=0)),      # the row split
                 BSREngine(block_prune(p, 0.5, (4, 1)), threads=2, block=(4, 1), tuning=Tuning(min_rows_work=0))):
        assert rows.plan(5).split == "rows"
        rows(np.ones((5, 40), np.float32))
    for disp in (bsr_kernels._worker, bsr_kernels._matvec_part, bsr_kernels._forward_vec, nm_kernels.nm_matmul_bias_relu,
                 nm_kernels._vec16_part, nm_kernels._forward_vec16, nm_kernels._forward_rows, nm_kernels._rows_part,
                 bsr_kernels._forward_rows, bsr_kernels._rows_part):
        for asm in aarch64_asm(disp):
            print(disp.__module__.split(".")[-1] + "." + disp.__name__, "fmla" in asm)
""")


def _run(args, **env):
    return subprocess.run(args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=1800)


def test_kernels_compile_for_aarch64(tmp_path):
    """The kernels' LLVM IR (compiled here with NUMBA_OPT=0, so no x86 intrinsic is introduced)
    emits NEON code for aarch64; the register tiles become fmla (in the callbacks the drivers call
    by address, cfuncs)."""
    r = _run([sys.executable, "-c", _AARCH64], NUMBA_OPT="0", NUMBA_CACHE_DIR=str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    lines = dict(line.split() for line in r.stdout.split("\n") if line.strip())
    assert lines["bsr_kernels._worker"] == "True" and lines["nm_kernels.nm_matmul_bias_relu"] == "True"  # batches
    assert lines["nm_kernels._vec16_part"] == "True"                                             # batch 1
    assert {"bsr_kernels._matvec_part", "bsr_kernels._forward_vec", "nm_kernels._forward_vec16",
            "nm_kernels._forward_rows", "bsr_kernels._forward_rows"} <= set(lines)
    assert lines["nm_kernels._rows_part"] == lines["bsr_kernels._rows_part"] == "True"          # the row split


@pytest.mark.skipif(not sell_kernels.available(),
                    reason="runs only where Numba targets AVX-512 (an AVX2 CPU runs these tests itself)")
@pytest.mark.skipif(os.environ.get("SPARSENET_EXPECT_ISA") == "avx2", reason="already on the AVX2 target")
def test_kernel_and_engine_tests_on_an_avx2_target():
    """NUMBA_CPU_NAME=haswell: the kernel and engine tests compiled to AVX2 code, on this machine."""
    tests = ["tests/test_bsr_kernels.py", "tests/test_nm_kernels.py", "tests/test_structured_engines.py"]
    r = _run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not aarch64", *tests],
             NUMBA_CPU_NAME="haswell", SPARSENET_EXPECT_ISA="avx2")
    assert r.returncode == 0, r.stdout[-6000:]
    assert " passed" in r.stdout.splitlines()[-1]


def test_nm_engine_batch_one_reads_its_interleaved_copy():
    """A batch-1 call of an N:4 net runs on the row-interleaved copy: its plan counts that copy's
    bytes (rows padded to 16), batches the canonical N:M arrays; the default M is the study's."""
    from sparsenet import names
    from sparsenet.engines import make_engine
    from sparsenet.prune import apply_masks, make_masks
    params = he_init((40, 37, 10), seed=3)
    net = apply_masks(params, make_masks(params, "nm", 0.5))
    e = make_engine("nm", net, threads=1)
    assert e.m == names.NM_M == 4 and e.plan(1).layers[0].kernel == "nm-spmv16"
    values, idx, bias = e._vec16[:3]
    assert e.plan(1).nbytes == values.nbytes + idx.nbytes + bias.nbytes != e.nbytes
    assert bias.size == 48 + 16                          # 37 and 10 output rows, each padded to 16
    assert e.call_nbytes(1) == e.plan(1).nbytes and e.call_nbytes(64) == e.nbytes


@pytest.mark.parametrize("n, m", PATTERNS)
@pytest.mark.parametrize("bias", [True, False])
def test_nm_small_batches_split_rows_over_threads(n, m, bias):
    """Batch 2-32 at 2 threads: one 32-column chunk would leave a thread idle; every layer's rows are
    split instead (nm_forward_rows), with the same logits, call after call."""
    from sparsenet.plan import Tuning
    params = nm_prune(net(bias), n, m)
    eng = NMEngine(params, threads=2, n=n, m=m, tuning=Tuning(min_rows_work=0))
    for B in (2, 7, 16, 32):
        assert eng.plan(B).split == "rows" and eng.plan(B).padded_batch == 32
        assert all(l.parallel for l in eng.plan(B).layers)
    assert eng.plan(33).split == "batch" and eng.plan(1).split == "none"
    for _ in range(2):                                       # consecutive calls: the buffers are reused
        check(eng, params, batches=(2, 7, 16, 32, 33, 1))
    X = np.random.default_rng(3).standard_normal((9, SIZES[0])).astype(np.float32)
    X[4, 7] = np.nan
    out = eng(X)
    assert np.isnan(out[4]).all() and np.isfinite(np.delete(out, 4, axis=0)).all()
    assert_matches(np.delete(out, 4, axis=0), forward(params, np.delete(X, 4, axis=0)))
    one = NMEngine(params, threads=1, n=n, m=m, tuning=Tuning(min_rows_work=0))
    assert one.plan(16).split == "batch"                     # one thread: nothing to split
    assert_matches(eng(X[::2]), forward(params, X[::2]))      # non-contiguous rows


def test_nm_row_split_all_zero_layer_and_the_default_rule():
    from sparsenet.plan import Tuning
    params = list(nm_prune(net(), 2, 4))
    params[1] = Layer(np.zeros_like(params[1].weight), params[1].bias)
    eng = NMEngine(tuple(params), threads=2, tuning=Tuning(min_rows_work=0))
    assert eng.plan(5).split == "rows"
    check(eng, tuple(params), batches=(5, 16))
    small = NMEngine(nm_prune(net(), 2, 4), threads=2)       # this net's calls are below min_rows_work
    assert small.plan(16).split == "batch"
    big = NMEngine(nm_prune(he_init((784, 1000, 1000, 500, 200, 10), seed=0), 2, 4), threads=2)
    assert big.plan(16).split == "rows" and big.plan(64).split == "batch"
    assert "row split" in big.plan(16).describe()


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("bias", [True, False])
def test_bsr_small_batches_split_rows_over_threads(block, bias):
    """As for nm: batch 2-32 at 2 threads splits every layer's block rows over the threads
    (bsr_forward_rows), same logits call after call, NaN rows, non-contiguous input."""
    from sparsenet.plan import Tuning
    params = block_prune(net(bias), 0.5, block)
    eng = BSREngine(params, threads=2, block=block, tuning=Tuning(min_rows_work=0))
    for B in (2, 7, 16, 32):
        assert eng.plan(B).split == "rows" and eng.plan(B).padded_batch == 32
    assert eng.plan(33).split == "batch" and eng.plan(1).split == "none"
    for _ in range(2):
        check(eng, params, batches=(2, 7, 16, 32, 33, 1))
    X = np.random.default_rng(5).standard_normal((9, SIZES[0])).astype(np.float32)
    X[2, 0] = np.inf
    out = eng(X)
    assert np.isnan(out[2]).all()
    assert_matches(np.delete(out, 2, axis=0), forward(params, np.delete(X, 2, axis=0)))
    assert_matches(eng(X[1::2]), forward(params, X[1::2]))
    zero = list(params)
    zero[2] = Layer(np.zeros_like(zero[2].weight), zero[2].bias)
    check(BSREngine(tuple(zero), threads=2, block=block, tuning=Tuning(min_rows_work=0)), tuple(zero),
          batches=(3, 16))
    he = he_init((784, 1000, 1000, 500, 200, 10), seed=0)
    big = BSREngine(block_prune(he, 0.5, (8, 1)), threads=2, block=(8, 1))
    assert big.plan(16).split == "rows" and big.plan(64).split == "batch"
    sparse = BSREngine(block_prune(he, 0.9, (8, 1)), threads=2, block=(8, 1))   # 7.7M multiply-adds a call
    assert sparse.plan(16).split == "batch"

# --- work claimed by the threads (session 7): bsr chunks of one tile --------------


@pytest.mark.parametrize("B", [1, 7, 33, 256, 300])
def test_claimed_work_matches_forward_on_wide_layers(B):
    """Batches of several chunks claimed by the threads (bsr: 32 columns, nm: up to 128):
    1 and 2 threads give the reference, twice in a row, with an all-zero layer, k = 0 and 99 %."""
    base = net(sizes=(70, 301, 130, 37, 10))
    zero = base[:1] + (Layer(np.zeros_like(base[1].weight), base[1].bias),) + base[2:]
    rng = np.random.default_rng(B)
    X = rng.standard_normal((B, 70)).astype(np.float32)
    for params in (base, zero):
        for k in (0, 0.99):
            p = block_prune(params, k, (8, 1))
            for threads in (1, 2):
                eng = BSREngine(p, threads=threads)
                assert_matches(eng(X), forward(p, X))
                assert_matches(eng(X), forward(p, X))
        for n in (1, 2, 4):
            p = nm_prune(params, n, 4)
            outs = []
            for threads in (1, 2):
                eng = NMEngine(p, threads=threads)
                outs.append(eng(X))
                assert_matches(outs[-1], forward(p, X))
                assert_matches(eng(X), forward(p, X))
            np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_claimed_work_propagates_nan():
    p = nm_prune(net(sizes=(70, 301, 130, 37, 10)), 1, 4)
    X = np.ones((256, 70), np.float32)
    X[5, 3] = np.nan
    for eng in (NMEngine(p, threads=2), BSREngine(block_prune(p, 0.5, (8, 1)), threads=2)):
        out = eng(X)
        assert np.isnan(out[5]).all() and np.isfinite(np.delete(out, 5, axis=0)).all()


def test_claimed_chunk_plans():
    p = nm_prune(net(sizes=(70, 1000, 130, 37, 10)), 1, 4)
    two = NMEngine(p, threads=2)
    # batch 256: 4 chunks of 64 columns for 2 threads (2 of 128 would leave none to rebalance)
    assert two.plan(256).split == "batch" and two.plan(256).chunk == 64 and two.plan(1).split == "none"
    assert NMEngine(p, threads=2, tile=128).plan(256).chunk == 64
    assert BSREngine(block_prune(p, 0.9, (8, 1)), threads=2).plan(4096).chunk == 32
    assert "claim" in " ".join(two.plan(256).reasons)


@pytest.mark.parametrize("cls, pruned", [(BSREngine, lambda p: block_prune(p, 0.5)), (NMEngine, lambda p: nm_prune(p, 2, 4))])
def test_a_call_from_another_thread_meanwhile_runs_on_a_copy(cls, pruned, monkeypatch):
    """The kernels release the GIL, and two threads calling one engine at once shared its scratch
    buffers: wrong logits (1 call in 600 at batch 2 on a 784-512-512-10 net). A call that finds the
    engine busy runs on a copy (Engine.copy: scratch of its own)."""
    import threading
    params = pruned(net())
    eng = cls(params, threads=1)
    X = np.random.default_rng(0).random((7, SIZES[0]), dtype=np.float32)
    inside, go_on, ran_on = threading.Event(), threading.Event(), []
    real = cls._forward

    def forward_(self, X):
        ran_on.append(self)
        if self is eng and not inside.is_set():       # the first call waits inside until the second is done
            inside.set()
            go_on.wait(10)
        return real(self, X)

    monkeypatch.setattr(cls, "_forward", forward_)
    out = {}
    first = threading.Thread(target=lambda: out.update(first=eng(X)))
    first.start()
    assert inside.wait(10)
    out["second"] = eng(X)
    go_on.set()
    first.join(10)
    assert ran_on[0] is eng and ran_on[1] is not eng
    for key in ("first", "second"):
        np.testing.assert_allclose(out[key], forward(params, X), rtol=1e-5, atol=1e-5)
    assert eng(X).shape == (7, SIZES[-1]) and ran_on[-1] is eng      # free again: the engine itself
