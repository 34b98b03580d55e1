"""Every engine against the reference forward pass (model.forward on the masked dense net).

To run the grid on other weights too, point SPARSENET_TEST_PARAMS at a trained checkpoint
(sparsenet.checkpoint.save format): it is added to the `base_params` fixture.
"""
import functools
import os
import re

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sparsenet import csr_engine, plan, sell_kernels
from sparsenet.engines import ENGINES, make_engine
from sparsenet.plan import Tuning, batch_chunk
from sparsenet.model import DEFAULT_SIZES, Layer, forward, he_init
from sparsenet.prune import block_prune, neuron_prune, nm_prune, weight_prune

SPARSITIES = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
BATCHES = (1, 7, 256)
SMALL = (96, 80, 64, 32, 10)
# the engines of engines.py that run any pruned net (bsr, nm: tests/test_structured_engines.py)
UNSTRUCTURED = ("dense", "csr", "csr-scipy", "shrunk", "dense-fused", "shrunk-fused", "dense-skip", "csr-skip",
                "shrunk-skip")
# which pruning each engine is checked on (csr also runs neuron-pruned nets)
CASES = [("dense", "weight"), ("csr", "weight"), ("csr-scipy", "weight"), ("shrunk", "neuron"),
         ("csr", "neuron")]


def _random_bias(params, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(l._replace(bias=(rng.standard_normal(l.weight.shape[0]) * 0.1).astype(np.float32))
                 for l in params)


_BASE = ["small", "small-bias"] + (["file"] if os.environ.get("SPARSENET_TEST_PARAMS") else [])


@pytest.fixture(scope="module", params=_BASE)
def base_params(request):
    """Unpruned weights the grid runs on: he_init nets, plus a checkpoint when given."""
    if request.param == "small":
        return he_init(SMALL, seed=1)
    if request.param == "small-bias":
        return _random_bias(he_init(SMALL, seed=2))
    from sparsenet import checkpoint
    params, _meta = checkpoint.load(os.environ["SPARSENET_TEST_PARAMS"])
    return params


def prune(params, method, k):
    return weight_prune(params, k) if method == "weight" else neuron_prune(params, k)


def assert_matches(out, ref):
    """float32 agreement, with the absolute tolerance scaled to the logits."""
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max(initial=0))))


def check_engine(name, params, batches=BATCHES, seed=0, threads=None, **options):
    eng = make_engine(name, params, threads=threads, **options)
    for c in getattr(eng, "csr", ()):
        c.check()
    rng = np.random.default_rng(seed)
    for B in batches:
        X = rng.random((B, params[0].weight.shape[1]), dtype=np.float32)
        assert_matches(eng(X), forward(params, X))
    return eng


@pytest.mark.parametrize("k", SPARSITIES)
@pytest.mark.parametrize("name, method", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_engine_matches_reference(base_params, name, method, k):
    check_engine(name, prune(base_params, method, k))


# Panel every dense-enough layer of the small nets (16 inputs a panel), at every batch > 1.
SMALL_PANELS = dict(min_panel_nnz=0, panel_width=16)


def threads_or_skip(threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("machine has fewer cores")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", SPARSITIES)
@pytest.mark.parametrize("method", ["weight", "neuron"])
def test_csr_panels_match_reference(base_params, method, k, threads):
    threads_or_skip(threads)
    eng = check_engine("csr", prune(base_params, method, k), threads=threads, tuning=Tuning(**SMALL_PANELS))
    density = 1 - k                                    # of the hidden layers, either method
    hidden = [P < n for P, n in zip(eng.panels[:-1], eng.layer_sizes[:-2])]
    if density >= 0.45:                                # P = 16: panels in every layer with >= 32 inputs
        assert hidden == [n >= 32 for n in eng.layer_sizes[:-2]] and eng.panel_nbytes > 0
    if density < 0.25:
        assert not any(hidden)


@functools.lru_cache(maxsize=None)
def default_net(method, k):
    return prune(he_init(DEFAULT_SIZES, seed=0), method, k)


@pytest.mark.parametrize("k", [0.0, 0.9])
@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_default_sizes(name, k):
    method = "neuron" if name.startswith("shrunk") else "weight"
    eng = check_engine(name, default_net(method, k), batches=(1, 7, 33))
    assert eng.layer_sizes[0] == 784 and eng.layer_sizes[-1] == 10
    if name == "csr":                         # dense-ish layers are column-panelled, sparse ones plain
        d = eng.describe()
        P = plan.panel_width(Tuning(), 1.0, 10**6, 10**9)          # the host's: 256 inputs for an L1d of 32-63 KB
        assert d["panels"] == ([P, P, P, P if 2 * P <= 500 else 500, 200] if k == 0 else [784, 1000, 1000, 500, 200])
        W = [plan.wide_panel_width(Tuning(), c.density, c.shape[1], c.nnz) for c in eng.csr]
        assert d["wide_panels"] == W and W[0] < 784                  # 64-column chunks: panels at k = 0.9 too
        assert d["panel_nbytes"] > 0


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_agree(threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("machine has fewer cores")
    params = weight_prune(he_init(SMALL, seed=3), 0.8)
    for name in UNSTRUCTURED:
        eng = check_engine(name, params, batches=(1, 64, 130), threads=threads)   # 130: padded to 144
        assert eng.threads == threads


# ---- the batch split (kernels.csr_forward_chunks) ----------------------------------------------

def split(chunks, **tuning):
    """Tuning that forces the batch split (chunks=True) or the row split (False) for every batch > 1."""
    force = dict(tile_min_chunk=0) if chunks else dict(max_chunk=0, tile_chunk=0)
    return Tuning(**{**tuning, **force})


UNEVEN = (2, 7, 17, 255, 257, 300, 300)   # 300 twice: the second call reuses the scratch


@pytest.mark.parametrize("max_chunk", [Tuning().max_chunk, 16])
@pytest.mark.parametrize("panels", [False, True], ids=["plain", "panels"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", [0.0, 0.5, 0.9, 0.99])
def test_batch_split_matches_reference(base_params, k, threads, panels, max_chunk):
    threads_or_skip(threads)
    params = weight_prune(base_params, k)
    tuning = split(True, max_chunk=max_chunk, tile_chunk=max_chunk, **(SMALL_PANELS if panels else {}))
    eng = make_engine("csr", params, threads=threads, tuning=tuning)
    assert all(eng.chunk_width(B) > 0 for B in UNEVEN)
    check_engine_on(eng, params, UNEVEN)
    if k <= 0.5 or not panels:
        assert (eng.panel_nbytes > 0) == panels


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", [0.0, 0.5, 0.75])
def test_register_tiles_over_column_panels(base_params, k, threads):
    # tile-panels in both splits: the batch split's 32-column chunks (16 + 16 when a chunk is 16 wide)
    # and the row split's padded batch, a panelled layer's rows in blocks over the threads (parallel);
    # panels of 16 inputs, so every layer has several, the last one narrower
    threads_or_skip(threads)
    params = weight_prune(base_params, k)
    small = dict(min_panel_nnz=0, panel_width=16, min_parallel_work=0)
    for tuning, batches in ((Tuning(**small), (16, 32, 64, 300)), (split(False, **small), (16, 31, 32))):
        eng = make_engine("csr", params, threads=threads, tuning=tuning)
        for B in batches:
            p = eng.plan(B)
            assert p.layout == "csr-panels" and all(l.kernel == "tile-panels" and l.panel == 16 for l in p.layers)
            assert all(l.parallel == (p.split == "rows" and threads > 1) for l in p.layers)
        check_engine_on(eng, params, batches)


def check_engine_on(eng, params, batches, seed=0):
    rng = np.random.default_rng(seed)
    for B in batches:
        X = rng.random((B, params[0].weight.shape[1]), dtype=np.float32)
        assert_matches(eng(X), forward(params, X))


@pytest.mark.parametrize("chunks", [True, False], ids=["batch-split", "row-split"])
@pytest.mark.parametrize("threads", [1, 2])
def test_split_all_zero_layer(threads, chunks):
    threads_or_skip(threads)
    params = list(he_init(SMALL, bias=True, seed=5))
    params[1] = Layer(np.zeros_like(params[1].weight), params[1].bias)
    params[2] = Layer(params[2].weight, np.full_like(params[2].bias, 0.5))
    eng = make_engine("csr", tuple(params), threads=threads, tuning=split(chunks))
    assert all((eng.plan(B).split == "batch") == chunks for B in (4, 33, 300))
    check_engine_on(eng, params, (4, 33, 300))


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_split_input_conversion(small, threads):
    threads_or_skip(threads)
    eng = make_engine("csr", small, threads=threads, tuning=split(True))
    for B in (9, 300):
        X = np.random.default_rng(B).random((B, 2 * SMALL[0]))
        ref = forward(small, X[:, ::2].astype(np.float32))
        assert_matches(eng(X[:, ::2]), ref)                  # float64, non-contiguous
        assert_matches(eng(np.asfortranarray(X[:, ::2])), ref)


def test_batch_chunk():
    assert batch_chunk(0, 2) == batch_chunk(1, 1) == 0 and batch_chunk(256, 2, max_chunk=0) == 0
    assert batch_chunk(256, 1) == batch_chunk(256, 2) == batch_chunk(4096, 2) == 128
    assert batch_chunk(300, 2) == 80     # 4 chunks of 75 -> 80 (aligned; the last holds 60)
    assert batch_chunk(130, 2) == 65     # 80 would cost 23% more: left unaligned
    assert batch_chunk(7, 1) == 7 and batch_chunk(17, 2) == 9


@settings(max_examples=200, deadline=None)
@given(B=st.integers(2, 5000), threads=st.integers(1, 4), max_chunk=st.sampled_from([16, 64, 128]))
def test_batch_chunk_shares(B, threads, max_chunk):
    Bc = batch_chunk(B, threads, max_chunk)
    n_chunks = -(-B // Bc)
    assert 1 <= Bc <= max_chunk
    assert Bc % 16 == 0 or (-(-Bc // 16) * 16 - Bc) * 8 > Bc      # aligned unless that costs > 1/8
    # with equal threads, the busiest (they claim chunks one at a time) does at most 1/8 more than an
    # equal share of the padded work, or one chunk more when there are few chunks
    busiest = -(-n_chunks // threads) * Bc
    assert busiest <= max(1.125 * -(-B // threads), (n_chunks // threads + 1) * Bc)


def test_chunk_policy():
    threads_or_skip(2)
    plain = make_engine("csr", default_net("weight", 0.9), threads=2)       # nnz 239k, no panels
    assert [plain.chunk_width(B) for B in (1, 16, 64, 96, 128, 256, 4096)] == [0, 0, 32, 32, 64, 64, 64]
    dense = make_engine("csr", default_net("weight", 0.0), threads=2)       # panelled, density 1: tile chunks too
    assert [dense.chunk_width(B) for B in (32, 56, 64, 100, 128, 256)] == [0, 0, 32, 64, 64, 64]
    tiny = make_engine("csr", default_net("weight", 0.99), threads=2)       # nnz 24k: short calls
    assert [tiny.chunk_width(B) for B in (2, 16, 32, 33, 64, 128)] == [16, 16, 16, 32, 32, 64]
    one = make_engine("csr", default_net("weight", 0.9), threads=1)         # one thread: always
    assert [one.chunk_width(B) for B in (1, 2, 7, 16, 17, 256, 300)] == [0, 16, 16, 16, 32, 64, 64]
    mid = make_engine("csr", default_net("weight", 0.7), threads=1)         # density 0.3: tiles over panels
    assert mid.panel_nbytes > 0 and "tile-panels" in mid.plan(256).summary()


# ---- hypothesis: random shapes, sparsities and batches -----------------------------------------

@st.composite
def nets(draw):
    sizes = draw(st.lists(st.integers(1, 40), min_size=2, max_size=5))
    params = he_init(sizes, seed=draw(st.integers(0, 999)))
    if draw(st.booleans()):
        params = _random_bias(params, seed=1)
    rng = np.random.default_rng(draw(st.integers(0, 999)))
    out = []
    for layer in params:
        kind = draw(st.sampled_from(["random", "random", "zero", "single", "empty-rows"]))
        w = layer.weight.copy()
        if kind == "random":
            w *= rng.random(w.shape) >= draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
        elif kind == "zero":
            w[:] = 0
        elif kind == "single":
            i, j = rng.integers(w.shape[0]), rng.integers(w.shape[1])
            v = w[i, j]
            w[:] = 0
            w[i, j] = v
        else:
            w[rng.random(w.shape[0]) < 0.5] = 0
        out.append(layer._replace(weight=w))
    return tuple(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=nets(), B=st.sampled_from([0, 1, 2, 3, 5, 8, 9, 17, 31, 33, 100]))
def test_random_nets(params, B):
    X = np.random.default_rng(B).random((B, params[0].weight.shape[1]), dtype=np.float32)
    ref = forward(params, X)
    for name in UNSTRUCTURED:
        eng = make_engine(name, params)
        for c in getattr(eng, "csr", ()):
            c.check()
        out = eng(X)
        assert out.shape == (B, params[-1].weight.shape[0])
        assert_matches(out, ref)


@pytest.mark.parametrize("n_in, dtype", [(65535, "uint16"), (65536, "uint32")])
def test_index_dtype_boundary(n_in, dtype):
    params = weight_prune(he_init((n_in, 6, 3), seed=0), 0.99)
    # make sure the last input column is used, so a wrong index dtype would wrap it to 0
    w = params[0].weight.copy()
    w[0, n_in - 1] = 5.0
    params = (params[0]._replace(weight=w),) + params[1:]
    X = np.zeros((3, n_in), np.float32)
    X[:, n_in - 1] = 1.0
    X[1, 0] = 2.0
    for name in ("csr", "csr-scipy"):
        eng = check_engine(name, params, batches=(1, 3))
        assert_matches(eng(X), forward(params, X))
    assert make_engine("csr", params).describe()["index_dtype"] == dtype


# ---- inputs -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    return weight_prune(he_init(SMALL, seed=4), 0.7)


@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_input_conversion(small, name):
    eng = make_engine(name, small)
    X = np.random.default_rng(0).random((9, 2 * SMALL[0]))
    ref = forward(small, X[:, ::2].astype(np.float32))
    assert_matches(eng(X[:, ::2]), ref)                  # float64, non-contiguous
    assert_matches(eng(np.asfortranarray(X[:, ::2])), ref)
    assert_matches(eng(X[:1, ::2]), ref[:1])             # batch of one
    assert_matches(eng(X[:, ::2].T.copy().T), ref)      # Fortran-ordered float64
    empty = eng(np.zeros((0, SMALL[0]), np.float32))
    assert empty.shape == (0, SMALL[-1]) and empty.dtype == np.float32


@pytest.mark.parametrize("name", UNSTRUCTURED)
@pytest.mark.parametrize("shape", [(3, SMALL[0] + 1), (SMALL[0],), (1, 2, SMALL[0])])
def test_bad_input_shape(small, name, shape):
    with pytest.raises(ValueError, match=rf"expected X of shape \(B, {SMALL[0]}\), got"):
        make_engine(name, small)(np.zeros(shape, np.float32))


@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_complex_input_refused(small, name):
    eng = make_engine(name, small)
    with pytest.raises(ValueError, match=r"^X must be real, got complex128$"):
        eng(np.ones((2, SMALL[0])) + 5j)       # not its real part, silently
    with pytest.raises(ValueError, match=r"^batch must be an integer >= 1 \(rows of X\), got 0$"):
        eng.warmup(0)


@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_all_zero_layer(name):
    params = list(he_init(SMALL, bias=True, seed=5))
    params[1] = Layer(np.zeros_like(params[1].weight), params[1].bias)
    params[2] = Layer(params[2].weight, np.full_like(params[2].bias, 0.5))   # bias gets through
    check_engine(name, tuple(params), batches=(1, 4))


def test_unknown_engine(small):
    with pytest.raises(ValueError, match="valid engines: dense, csr, csr-scipy, shrunk"):
        make_engine("cuda", small)


def test_bad_threads(small):
    with pytest.raises(ValueError, match="threads"):
        make_engine("csr", small, threads=0)


# ---- counts and context -------------------------------------------------------------------------

def test_counts(small):
    n_weights = sum(l.weight.size for l in small)
    nnz = sum(int(np.count_nonzero(l.weight)) for l in small)
    dense, csr, sci = (make_engine(n, small) for n in ("dense", "csr", "csr-scipy"))
    assert dense.nnz == csr.nnz == sci.nnz == nnz
    assert dense.flops(10) == 2 * n_weights * 10 and csr.flops(10) == sci.flops(10) == 2 * nnz * 10
    assert dense.nbytes == 4 * n_weights
    n_rows = sum(l.weight.shape[0] for l in small)
    assert csr.nbytes == nnz * 6 + 4 * (n_rows + len(small))     # float32 + uint16, int32 indptr
    assert sci.nbytes == nnz * 8 + 4 * (n_rows + len(small))     # scipy needs int32 indices
    d = csr.describe()
    assert d["name"] == "csr" and d["nnz"] == nnz and d["index_dtype"] == "uint16"
    assert d["layer_sizes"] == list(SMALL)


def test_shrunk_counts():
    params = neuron_prune(he_init(SMALL, seed=6), 0.5)
    eng = make_engine("shrunk", params)
    sizes = eng.layer_sizes
    assert sizes[0] == SMALL[0] and sizes[-1] == SMALL[-1]
    assert all(s == round(n / 2) for s, n in zip(sizes[1:-1], SMALL[1:-1]))
    assert eng.flops(3) == 2 * 3 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def test_warmup_and_threads_context(small):
    eng = make_engine("csr", small, threads=1)
    assert eng.warmup(batch=1) >= 0 and eng.warmup(batch=16) >= 0
    before = numba.get_num_threads()
    with eng.threads_context():
        assert numba.get_num_threads() == 1
        X = np.ones((4, SMALL[0]), np.float32)
        assert_matches(eng(X), forward(small, X))
    assert numba.get_num_threads() == before


# -- batch 1: SELL (AVX-512) and the CSR SpMV ---------------------------------------------------
needs_sell = pytest.mark.skipif(not sell_kernels.available(), reason="SELL needs a CPU with AVX-512F")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", SPARSITIES)
@pytest.mark.parametrize("sell", [False, True, "portable", "packed", "padded"])
@pytest.mark.parametrize("bitmap", [None, True])
def test_batch_one_paths_match_reference(base_params, k, sell, threads, bitmap):
    threads_or_skip(threads)
    params = prune(base_params, "weight", k)
    eng = make_engine("csr", params, threads=threads, sell=sell, bitmap=bitmap,    # every layer on every thread
                      tuning=Tuning(min_parallel_slots=0, min_parallel_units=0, sell_l2_bytes=2 ** 40))
    assert eng.uses_sell is bool(sell) and eng.layout(1) == ("sell" if sell else "csr")
    if sell:
        from sparsenet import sell8_kernels
        best = ("sell16-avx512" if sell_kernels.available() else "sell8-avx2" if sell8_kernels.available()
                else "sell16-portable")
        sixteen = "sell16-avx512" if sell_kernels.available() else "sell16-portable"
        want = {True: best, "portable": "sell16-portable", "packed": sixteen.replace("sell16", "sell16p"),
                "padded": sixteen}[sell]
        rows = ("bitmap16-avx512" if want.endswith("avx512") else "bitmap16-portable") if "sell16" in want else None
        assert eng.bitmap == ((bool(bitmap),) * len(params) if bitmap and rows else eng.bitmap)
        assert eng.sell_kernel == want and [l.kernel for l in eng.plan(1).layers] == [
            rows if b else want for b in eng.bitmap or (False,) * len(params)]
        assert all(l.parallel == (threads > 1) for l in eng.plan(1).layers)
    X = np.random.default_rng(3).random((5, params[0].weight.shape[1]), dtype=np.float32)
    for row in range(5):                                 # buffers reused call after call
        assert_matches(eng(X[row:row + 1]), forward(params, X[row:row + 1]))


@pytest.mark.parametrize("k", [0.0, 0.9, 0.99])
@pytest.mark.parametrize("sell", [True, "packed"])
def test_sell_default_sizes(k, sell):
    params = _random_bias(default_net("weight", k))
    eng = make_engine("csr", params, threads=1, sell=sell)
    assert eng.uses_sell and eng.sell_padding >= 1.0
    X = np.random.default_rng(4).random((1, DEFAULT_SIZES[0]), dtype=np.float32)
    assert_matches(eng(X), forward(params, X))
    assert_matches(eng(X[:, ::-1]), forward(params, np.ascontiguousarray(X[:, ::-1])))   # non-contiguous
    assert_matches(eng(X.astype(np.float64)), forward(params, X))
    assert eng.call_nbytes(1) == eng.sell_nbytes > 0
    assert eng.call_nbytes(256) == eng.nbytes or eng.layout(256) in ("csr-panels", "csr-wide-panels")
    assert eng.describe()["sell"] is True


def test_sell_all_zero_layer():
    params = list(_random_bias(he_init(SMALL, seed=5)))
    params[2] = Layer(np.zeros_like(params[2].weight), params[2].bias)
    eng = make_engine("csr", params, threads=1, sell=True)
    X = np.random.default_rng(5).random((1, SMALL[0]), dtype=np.float32)
    assert_matches(eng(X), forward(params, X))


def test_sell_demanded_without_avx512(small, monkeypatch):
    from sparsenet import sell8_kernels
    monkeypatch.setattr(sell_kernels, "available", lambda: False)
    monkeypatch.setattr(sell8_kernels, "available", lambda: False)   # no AVX2 either (AVX2: see test_csr_engine)
    eng = make_engine("csr", small, sell=True)           # the portable twin
    assert eng.sell_kernel == "sell16-portable" and eng.layout(1) == "sell"
    X = np.ones((1, SMALL[0]), np.float32)
    assert_matches(eng(X), forward(small, X))
    with pytest.raises(ValueError, match="sell must be one of None, True, False, 'portable', .* got 'yes'"):
        make_engine("csr", small, sell="yes")
    eng = make_engine("csr", small)                      # falls back to the CSR SpMV
    assert not eng.uses_sell and eng.layout(1) == "csr" and eng.call_nbytes(1) == eng.nbytes
    X = np.ones((1, SMALL[0]), np.float32)
    assert_matches(eng(X), forward(small, X))


def test_sell_pays_rule():
    assert csr_engine.sell_pays(4 * 2 ** 20, 10**6)             # in the caches
    assert csr_engine.sell_pays(8 * 2 ** 20, 10**6)             # the cache budget itself
    assert csr_engine.sell_pays(50 * 2 ** 20, 25 * 2 ** 20)     # exactly twice CSR
    assert not csr_engine.sell_pays(50 * 2 ** 20 + 1, 25 * 2 ** 20)
    assert not csr_engine.sell_pays(65 * 2 ** 20, 16 * 2 ** 20)  # padding-heavy and out of cache
    assert not csr_engine.sell_pays(4 * 2 ** 20, 10**6, Tuning(sell_cache_bytes=2 ** 20))


@needs_sell
def test_sell_dropped_when_it_does_not_pay(monkeypatch):
    params = _random_bias(he_init(SMALL, seed=6))
    monkeypatch.setattr(csr_engine, "sell_pays", lambda sell_nbytes, csr_nbytes, tuning: False)
    eng = make_engine("csr", params)
    assert not eng.uses_sell and eng.layout(1) == "csr" and eng.sell_nbytes > 0
    X = np.ones((1, SMALL[0]), np.float32)
    assert_matches(eng(X), forward(params, X))
    assert make_engine("csr", params, sell=True).uses_sell     # an explicit choice stands


# -- the engine contract: results owned by the caller, non-finite rows, consistent params -----------
# "packed" / "padded": SELL-16's two forms (sell.SELL.packed) on this CPU's kernel
_SELL_OPTIONS = [None, False, "packed", "padded"] + ([True] if sell_kernels.available() else [])


def _engines_every_path(params):
    """(label, engine) for every engine, thread count and (csr) batch-1 layout this machine runs."""
    for threads in (1, 2):
        if threads > numba.config.NUMBA_NUM_THREADS:
            continue
        for name in UNSTRUCTURED:
            for sell in (_SELL_OPTIONS if name == "csr" else [None]):
                options = {} if sell is None else {"sell": sell}
                yield f"{name}-t{threads}-sell{sell}", make_engine(name, params, threads=threads, **options)


@pytest.mark.parametrize("sizes", [(784, 300, 10), (96, 80, 1)], ids=["mlp", "one-output"])
def test_results_survive_later_calls(sizes):
    """Every engine returns an array it does not keep: results of earlier calls stay as they were."""
    params = _random_bias(weight_prune(he_init(sizes, seed=7), 0.5))
    rng = np.random.default_rng(8)
    inputs = [rng.random((B, sizes[0]), dtype=np.float32) for B in (1, 1, 7, 1, 64, 256, 1, 7)]
    for label, eng in _engines_every_path(params):
        held = [eng(X) for X in inputs]                      # consecutive calls, results held
        held += [eng(X[None]) for X in inputs[-1]]           # one row at a time
        refs = [forward(params, X) for X in inputs] + [forward(params, X[None]) for X in inputs[-1]]
        for out, ref in zip(held, refs):
            assert_matches(out, ref)
        assert not any(np.shares_memory(a, b) for i, a in enumerate(held) for b in held[i + 1:]), label


def _net_with_dead_input():
    """A 90 %-pruned net whose input 5 no kept weight reads (as dead border pixels in MNIST)."""
    params = list(weight_prune(he_init((96, 80, 64, 10), seed=9), 0.9))
    weight = params[0].weight.copy()
    weight[:, 5] = 0
    params[0] = Layer(weight, None)
    return tuple(params), 5


@pytest.mark.parametrize("B", [1, 7, 64, 256])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_give_nan_on_every_engine(B, bad):
    """A row with NaN or +-inf, in a live or a pruned-away input, has NaN logits on every engine;
    the other rows keep the reference logits."""
    params, dead = _net_with_dead_input()
    X = np.random.default_rng(10).random((B, 96), dtype=np.float32)
    X[0, 3] = bad                                         # a live input (row 0)
    if B > 1:
        X[B - 1, dead] = bad                              # an input no kept weight reads
    rows = [0, B - 1]
    ok = np.setdiff1d(np.arange(B), rows)
    for label, eng in _engines_every_path(params):
        with np.errstate(invalid="ignore", over="ignore"):
            out = eng(X)
        assert np.isnan(out[rows]).all(), label
        assert_matches(out[ok], forward(params, X[ok]))


def _inconsistent(kind):
    params = list(he_init((12, 8, 6, 4), bias=True, seed=11))
    if kind == "width":
        params[1] = Layer(np.ones((6, 9), np.float32), params[1].bias)
        return params, r"layer 1: weight has 9 inputs but layer 0 has 8 outputs"
    if kind == "bias":
        params[2] = Layer(params[2].weight, np.zeros(5, np.float32))
        return params, r"layer 2: bias must be None or a real array of shape \(4,\), got float32 of shape \(5,\)"
    if kind == "1-d":
        params[0] = Layer(np.ones(12, np.float32), None)
        return params, r"layer 0: weight must be a non-empty 2-d real array \(n_out, n_in\), got float32 of shape \(12,\)"
    if kind == "complex":
        params[0] = Layer(params[0].weight.astype(np.complex64), params[0].bias)
        return params, r"layer 0: weight must be a non-empty 2-d real array"
    if kind == "not-a-layer":
        params[1] = params[1].weight
        return params, r"layer 1: expected a Layer\(weight, bias\), got ndarray"
    if kind == "nan-weight":                       # dense BLAS would answer NaN, a sparse kernel skip it
        w = params[1].weight.copy()
        w[2, 3] = np.nan
        params[1] = Layer(w, params[1].bias)
        return params, r"layer 1: weight holds NaN or inf \(a diverged net\?\)"
    if kind == "inf-bias":
        b = params[0].bias.copy()
        b[0] = -np.inf
        params[0] = Layer(params[0].weight, b)
        return params, r"layer 0: bias holds NaN or inf"
    return [], "params must hold at least one layer"


@pytest.mark.parametrize("kind", ["width", "bias", "1-d", "complex", "not-a-layer", "nan-weight", "inf-bias",
                                  "empty"])
@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_inconsistent_params_refused_by_every_engine(name, kind):
    params, message = _inconsistent(kind)
    with pytest.raises(ValueError, match=message):
        make_engine(name, params, threads=1)


@pytest.mark.parametrize("name", ENGINES)
def test_engines_keep_their_own_copy_of_the_params(name):
    """Writing the caller's arrays after the build changes no engine (bias and weight, C or Fortran)."""
    params = list(he_init((12, 8, 6, 4), bias=True, seed=3))
    params[0] = Layer(np.asfortranarray(params[0].weight), params[0].bias + 0.1)
    params = (nm_prune(params, 2, 4) if name == "nm" else block_prune(params, 0.5) if name.startswith("bsr")
              else prune(tuple(params), "neuron" if name.startswith("shrunk") else "weight", 0.5))
    X = np.random.default_rng(0).random((3, 12), dtype=np.float32)
    eng = make_engine(name, params, threads=1)
    before = eng(X)
    for layer in params:
        layer.weight[...] = 7.0
        layer.bias[...] = 100.0
    np.testing.assert_array_equal(eng(X), before)


@pytest.mark.parametrize("name", ENGINES)
def test_plan_refuses_a_batch_that_is_not_a_row_count(name):
    """eng.plan(batch) says what a call of `batch` rows runs: 0, negative, float, boolean or string
    batches are refused with one line, by the check warmup makes too (engine_base.check_batch)."""
    params = he_init((12, 8, 6, 4), bias=True, seed=3)
    params = (nm_prune(params, 2, 4) if name == "nm" else block_prune(params, 0.5) if name.startswith("bsr")
              else prune(tuple(params), "neuron" if name.startswith("shrunk") else "weight", 0.5))
    eng = make_engine(name, params, threads=1)
    for bad in (0, -5, 1.5, 4.0, np.float64(2.0), True, "2", None):
        with pytest.raises(ValueError, match=rf"^batch must be an integer >= 1 \(rows of X\), got {re.escape(repr(bad))}$"):
            eng.plan(bad)
    assert eng.plan(3).batch == 3 and eng.plan(np.int64(2)).batch == 2 and type(eng.plan(np.int64(2)).batch) is int


@pytest.mark.parametrize("bad", [0, 1.5, 16.0, True, "2", None])
def test_warmup_refuses_what_plan_refuses(small, bad):
    """warmup(1.5) ran a 1-row call, warmup(True) one of 1 row and warmup("2") one of 2 rows; None was a
    TypeError from int(): each is now plan's one-line ValueError (engine_base.check_batch)."""
    eng = make_engine("dense", small, threads=1)
    with pytest.raises(ValueError, match=rf"^batch must be an integer >= 1 \(rows of X\), got {re.escape(repr(bad))}$"):
        eng.warmup(bad)


# -- exact contracts: messages, counts, describe(), dtypes, buffers, the kernels the plan names ------
N_THREADS = numba.config.NUMBA_NUM_THREADS
CSR_LIKE = ("csr", "csr-skip")


def test_bad_threads_message(small):
    for bad in (0, N_THREADS + 1):
        with pytest.raises(ValueError, match=rf"^threads must be in 1\.\.{N_THREADS} \(this machine's threads\), "
                                             rf"got {bad}$"):
            make_engine("csr", small, threads=bad)
    with pytest.raises(ValueError, match=rf"^threads must be an integer in 1\.\.{N_THREADS}, got 'two'$"):
        make_engine("dense", small, threads="two")
    with pytest.raises(ValueError, match=rf"^threads must be an integer in 1\.\.{N_THREADS}, got True$"):
        make_engine("csr", small, threads=True)                    # int(True) == 1: refused, not read as 1
    for bad in (1.0, 2.0):                                          # a float count: refused, not read as an int
        with pytest.raises(ValueError, match=rf"^threads must be an integer in 1\.\.{N_THREADS}, got {bad}$"):
            make_engine("dense", small, threads=bad)
    assert make_engine("dense", small).threads == N_THREADS        # None: every thread


def test_unknown_engine_message(small):
    assert ENGINES[:4] == ("dense", "csr", "csr-scipy", "shrunk")
    with pytest.raises(ValueError, match=r"^unknown engine 'cuda'; valid engines: " + ", ".join(ENGINES) + "$"):
        make_engine("cuda", small)


def test_csr_refuses_a_tuning_that_is_not_one(small):
    with pytest.raises(ValueError, match=r"^tuning must be a plan\.Tuning, got dict$"):
        make_engine("csr", small, tuning={"tile_min_chunk": 0})
    assert make_engine("csr", small).tuning == Tuning()
    t = Tuning(tile_min_chunk=3)
    assert make_engine("csr", small, tuning=t).tuning is t


def _biased_net():
    """SMALL, 70 % pruned, with biases on layers 0 and 2 only (rows 96 -> 80 -> 64 -> 32 -> 10)."""
    params = list(weight_prune(he_init(SMALL, seed=4), 0.7))
    rng = np.random.default_rng(1)
    for i in (0, 2):
        params[i] = params[i]._replace(bias=rng.standard_normal(params[i].weight.shape[0]).astype(np.float32))
    return tuple(params)


def test_nbytes_count_the_biases():
    params = _biased_net()
    nnz = sum(int(np.count_nonzero(l.weight)) for l in params)
    n_weights = sum(l.weight.size for l in params)
    bias_bytes = 4 * (80 + 32)
    indptr_bytes = 4 * (80 + 64 + 32 + 10 + 4)
    dense, csr, sci = (make_engine(n, params, threads=1) for n in ("dense", "csr", "csr-scipy"))
    assert dense.nbytes == 4 * n_weights + bias_bytes
    assert csr.nbytes == 6 * nnz + indptr_bytes + bias_bytes
    assert sci.nbytes == 8 * nnz + indptr_bytes + bias_bytes
    assert dense.has_bias and csr.has_bias and sci.has_bias
    assert not make_engine("csr", weight_prune(he_init(SMALL, seed=4), 0.7)).has_bias


@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_describe_is_exact(name):
    params = _biased_net()
    eng = make_engine(name, params, threads=1, **({"sell": "portable", "bitmap": False} if name in CSR_LIKE else {}))
    d = eng.describe()
    base = {"name": name, "layer_sizes": list(eng.layer_sizes), "nnz": eng.nnz, "nbytes": eng.nbytes,
            "index_dtype": {"csr": "uint16", "csr-skip": "uint16", "csr-scipy": "int32"}.get(name), "threads": 1,
            "has_bias": True}
    if name in CSR_LIKE:
        base.update(panels=[96, 80, 64, 32], wide_panels=[96, 80, 64, 32], panel_nbytes=0, sell=True, sell_kernel="sell16-portable",
                    sell_nbytes=eng.sell_nbytes, sell_padding=eng.sell_padding, bitmap=[False] * 4)
        slots = eng.net.sell_slots
        assert eng.sell_padding == sum(slots) * 16 / eng.nnz and eng.sell_padding >= 1
        assert eng.sell_nbytes == sum(s * 16 * 5 + 4 * 0 for s in slots) + eng._sell[5].nbytes \
            or eng.sell_nbytes > eng._sell[5].nbytes
    assert d == base
    assert repr(eng) == (f"<{type(eng).__name__} {name} sizes={eng.layer_sizes} nnz={eng.nnz} threads=1>")
    assert eng.index_dtype == base["index_dtype"]


def test_csr_describe_without_sell(small):
    eng = make_engine("csr", small, threads=1, sell=False)
    d = eng.describe()
    assert (d["sell"], d["sell_kernel"], d["sell_nbytes"], d["sell_padding"], d["bitmap"]) == (False, None, 0, None, [])
    assert eng.net.sell_slots is None


def test_csr_arrays_dtypes_and_offsets():
    params = _biased_net()
    eng = make_engine("csr", params, threads=1)
    data, indices, indptr, ptr_off, panels = eng._plain
    nnz = [int(np.count_nonzero(l.weight)) for l in params]
    assert (data.dtype, indices.dtype, indptr.dtype, ptr_off.dtype, panels.dtype) == \
        (np.float32, np.uint16, np.int32, np.int64, np.int64)
    assert data.size == indices.size == sum(nnz) and indptr.size == 80 + 64 + 32 + 10 + 4
    assert list(ptr_off) == [0, 81, 146, 179, 190] and list(panels) == [96, 80, 64, 32]
    assert eng._nnz_off.dtype == np.int64 and list(eng._nnz_off) == list(np.cumsum([0] + nnz))
    assert eng._sizes.dtype == np.int64 and list(eng._sizes) == list(SMALL)
    assert eng._bias.dtype == np.float32 and eng._bias.shape == (80 + 64 + 32 + 10,)
    np.testing.assert_array_equal(eng._bias[:80], params[0].bias)
    np.testing.assert_array_equal(eng._bias[80:144], 0)
    np.testing.assert_array_equal(eng._bias[144:176], params[2].bias)
    assert eng._paneled is eng._plain and eng.panel_nbytes == 0 and eng._width == 80


def _panelled(reference):
    """CSR of a random 24 x 70 matrix, and its layout in P-column panels built the slow way."""
    from sparsenet.csr import CSR
    rng = np.random.default_rng(12)
    W = (rng.standard_normal((24, 70)) * (rng.random((24, 70)) < 0.6)).astype(np.float32)
    return W, CSR.from_dense(W)


@pytest.mark.parametrize("P", [16, 32, 35, 64])
def test_panel_layout_is_panel_major(P):
    W, c = _panelled(None)
    data, local, indptr = csr_engine.panel_layout(c, P)
    n_panels = -(-70 // P)
    assert local.dtype == c.indices.dtype and indptr.dtype == c.indptr.dtype and data.dtype == np.float32
    assert indptr.size == n_panels * 25
    want_d, want_i, want_p = [], [], []
    for p in range(n_panels):
        want_p.append(len(want_d))
        for r in range(24):
            cols = [j for j in range(p * P, min(70, (p + 1) * P)) if W[r, j] != 0]   # ascending
            want_d += [W[r, j] for j in cols]
            want_i += [j - p * P for j in cols]
            want_p.append(len(want_d))
        want_p.pop()
    blocks = indptr.reshape(n_panels, 25)
    starts = [list(b) for b in blocks]
    np.testing.assert_array_equal(data, np.asarray(want_d, np.float32))
    np.testing.assert_array_equal(local, want_i)
    flat = []
    for p in range(n_panels):
        rows = [want_p[p * 24]]
        acc = want_p[p * 24]
        for r in range(24):
            cols = [j for j in range(p * P, min(70, (p + 1) * P)) if W[r, j] != 0]
            acc += len(cols)
            rows.append(acc)
        flat.append(rows)
    assert starts == flat


@pytest.mark.parametrize("P", [70, 71, 500])
def test_panel_layout_one_panel_is_the_csr_itself(P):
    _, c = _panelled(None)
    data, local, indptr = csr_engine.panel_layout(c, P)
    assert data is c.data and local is c.indices and indptr is c.indptr


def test_paneled_copy_of_the_engine():
    """The panel-major copy the engine holds: one indptr block per panel of every panelled layer."""
    params = weight_prune(he_init(SMALL, seed=1), 0.0)
    eng = make_engine("csr", params, threads=1, tuning=Tuning(**SMALL_PANELS))
    assert eng.panels == (16, 16, 16, 16)
    data, indices, indptr, ptr_off, panels = eng._paneled
    blocks = [6 * 81, 5 * 65, 4 * 33, 2 * 11]              # ceil(n_in / 16) panels of M + 1
    assert list(ptr_off) == list(np.cumsum([0] + blocks)) and list(panels) == [16] * 4
    assert indices.dtype == np.uint16 and int(indices.max()) == 15
    assert eng.panel_nbytes == data.nbytes + indices.nbytes + indptr.nbytes == \
        6 * eng.nnz + 4 * sum(blocks)
    assert eng.describe()["panel_nbytes"] == eng.panel_nbytes and eng.describe()["panels"] == [16] * 4
    assert eng.call_nbytes(300) == eng.nbytes + eng.panel_nbytes - sum(c.nbytes for c in eng.csr)
    assert eng.layout(300) == "csr-panels" and eng.layout(1) in ("csr", "sell")


@pytest.mark.parametrize("shape", [5, 17, (3, 7), (2, 5, 3)])
@pytest.mark.parametrize("align", [64, 128])
def test_aligned_zeros(shape, align):
    for _ in range(4):                                    # different allocations, different offsets
        a = csr_engine._aligned_zeros(shape, align)
        assert a.dtype == np.float32 and a.shape == np.zeros(shape).shape
        assert a.ctypes.data % align == 0 and not a.any()
    assert csr_engine._aligned_zeros(shape).ctypes.data % 64 == 0


def test_aligned_zeros_at_every_offset():
    """Wherever an allocation lands (malloc: 16-byte steps), the aligned view fits in it: many live
    allocations of growing sizes cover the offsets a 256-byte boundary can need."""
    held = [csr_engine._aligned_zeros(n, 256) for n in range(1, 200)]
    for n, a in enumerate(held, 1):
        assert a.shape == (n,) and a.ctypes.data % 256 == 0 and not a.any()


def test_a_hidden_layer_wider_than_uint16_gets_wide_indices():
    """The concatenated indices take the dtype of the widest layer input (csr) or output (the CSC
    copy), here the hidden layer's 65537 units: uint16 would wrap unit 65536 to 0."""
    rng = np.random.default_rng(13)
    w0 = np.zeros((65537, 3), np.float32)
    w0[65536] = 1.0                                        # only the last hidden unit is live
    w0[0] = -1.0
    w1 = np.zeros((2, 65537), np.float32)
    w1[:, 65536] = (2.0, -3.0)
    w1[:, 0] = (7.0, 5.0)
    params = (Layer(w0, None), Layer(w1, rng.standard_normal(2).astype(np.float32)))
    X = rng.random((3, 3), dtype=np.float32)
    for name in ("csr", "csr-skip"):
        eng = make_engine(name, params, threads=1, sell=False)
        assert eng.index_dtype == "uint32" and eng._plain[1].dtype == np.uint32
        if name == "csr-skip":
            assert eng._csc[1].dtype == np.uint32 and eng.layout(1) == "csc"
        for B in (1, 3):
            assert_matches(eng(X[:B]), forward(params, X[:B]))


def test_only_the_last_layer_panelled():
    """A net whose last layer alone is dense enough for panels still gets its panel-major copy."""
    rng = np.random.default_rng(14)
    w0 = (rng.standard_normal((80, 96)) * (rng.random((80, 96)) < 0.1)).astype(np.float32)   # sparse: plain
    w1 = rng.standard_normal((10, 80)).astype(np.float32)                                    # dense: panels
    params = (Layer(w0, None), Layer(w1, None))
    eng = make_engine("csr", params, threads=1, tuning=Tuning(**SMALL_PANELS))
    assert eng.panels == (96, 16) and eng._paneled is not eng._plain and eng.panel_nbytes > 0
    assert list(eng._paneled[4]) == [96, 16] and eng.layout(32) == "csr-panels"
    assert eng.wide_panels == (16, 16) and eng.layout(64) == "csr-wide-panels"   # panel_width as set, at any density
    for B in (32, 64):
        X = rng.random((B, 96), dtype=np.float32)
        assert_matches(eng(X), forward(params, X))


def test_row_split_buffers_are_aligned_and_cached(small):
    eng = make_engine("csr", small, threads=1)
    for B, Bp in ((15, 16), (7, 16), (130, 144)):
        first = eng._buffers(B)
        Bp_, HT, buf0, buf1 = first
        assert Bp_ == Bp and HT.shape == (SMALL[0], Bp) and buf0.shape == buf1.shape == (80 * Bp,)
        assert all(a.dtype == np.float32 and a.ctypes.data % 64 == 0 and not a.any() for a in (HT, buf0, buf1))
        second = eng._buffers(B)
        assert all(a is b for a, b in zip(first[1:], second[1:]))     # kept for the same batch
    assert eng._buffers(15)[1] is not HT


def test_chunk_buffers_are_per_thread_aligned_and_cached(small):
    eng = make_engine("csr", small, threads=N_THREADS)
    for Bc in (16, 9, 32):
        first = eng._chunk_buffers(Bc)
        HT, buf0, buf1, counter = first
        assert HT.shape == (N_THREADS, SMALL[0], Bc) and buf0.shape == buf1.shape == (N_THREADS, 80 * Bc)
        assert all(a.dtype == np.float32 and a.ctypes.data % 64 == 0 and not a.any() for a in first[:3])
        assert counter.shape == (1,) and counter.dtype == np.int64
        assert all(a is b for a, b in zip(first, eng._chunk_buffers(Bc)))
        assert buf0 is not buf1 and not np.shares_memory(buf0, buf1)


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize("threads", [1, 2])
def test_row_split_call_arguments(small, threads, monkeypatch):
    """The row split gets the padded transposed batch (batch 1: X itself) and the plan's codes."""
    threads_or_skip(threads)
    eng = make_engine("csr", small, threads=threads, sell=False, tuning=split(False))
    calls = _spy(monkeypatch, csr_engine.kernels, "csr_forward")
    X = np.random.default_rng(2).random((15, SMALL[0]), dtype=np.float32)
    assert_matches(eng(X), forward(small, X))
    HT = calls[0][8]
    assert HT.shape == (SMALL[0], 16) and not HT[:, 15].any()
    np.testing.assert_array_equal(HT[:, :15], X.T)
    np.testing.assert_array_equal(calls[0][11], eng.plan(15).codes())
    assert calls[0][12] == threads and calls[0][2] is eng._plain[2]
    x1 = X[:1].copy()
    assert_matches(eng(x1), forward(small, x1))
    assert np.shares_memory(calls[1][8], x1) and calls[1][8].shape == (SMALL[0], 1)
    np.testing.assert_array_equal(calls[1][11], eng.plan(1).codes())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sell", [True, "portable"])
def test_sell_call_arguments(small, threads, sell, monkeypatch):
    """Batch 1 on SELL runs the kernel the plan names, with the parallel threshold only at > 1 thread."""
    threads_or_skip(threads)
    if sell is True and not sell_kernels.available():
        pytest.skip("SELL needs a CPU with AVX-512F")
    avx = _spy(monkeypatch, sell_kernels, "sell_forward")
    portable = _spy(monkeypatch, sell_kernels, "sell_forward_portable")
    eng = make_engine("csr", small, threads=threads, sell=sell, tuning=Tuning(min_parallel_slots=7))
    X = np.random.default_rng(3).random((1, SMALL[0]), dtype=np.float32)
    assert_matches(eng(X), forward(small, X))
    calls, other = (avx, portable) if sell is True else (portable, avx)
    assert len(calls) == 1 and other == []
    assert eng.plan(1).layers[0].kernel == ("bitmap16" if eng.bitmap[0] else "sell16") + (
        "-avx512" if sell is True else "-portable")
    args = calls[0]          # (the SELL arrays ... offsets, packed, the bitmap rows' 3), X, 3 buffers, least, threads, logits
    assert args[19] == (7 if threads > 1 else csr_engine.kernels.NEVER) and args[20] == threads
    assert args[15] is X and args[21].shape == (1, SMALL[-1]) and args[21].dtype == np.float32
    assert all(b.ctypes.data % 64 == 0 for b in args[16:19]) and args[11] is False     # small: padded slots


def test_warmup_calls_with_a_zero_float32_batch(small, monkeypatch):
    from sparsenet.engine_base import Engine
    seen = []
    real = Engine.__call__

    def spy(self, X):
        seen.append(X)
        return real(self, X)

    monkeypatch.setattr(Engine, "__call__", spy)
    eng = make_engine("dense", small, threads=1)
    t = eng.warmup()
    assert 0 <= t < 5
    assert eng.warmup(batch=np.int64(16)) < 5
    assert [(x.shape, x.dtype) for x in seen] == [((1, SMALL[0]), np.float32), ((16, SMALL[0]), np.float32)]
    assert not any(x.any() for x in seen)


class _BlasPool:
    """A BLAS controller (threadpoolctl's interface) at 3 threads, recording what it is set to."""

    def __init__(self):
        self.threads, self.calls = 3, []

    def get_num_threads(self):
        return self.threads

    def set_num_threads(self, n):
        self.calls.append(n)
        self.threads = n


@pytest.mark.skipif(N_THREADS < 2, reason="needs 2 Numba threads to see the Numba limit")
@pytest.mark.parametrize("name, blas, numba_", [("dense", True, False), ("csr", False, True)])
def test_a_call_limits_only_the_pools_its_engine_uses(small, name, blas, numba_, monkeypatch):
    """A call (outside threads_context) runs at the engine's threads on the pools the engine uses
    (numpy's BLAS for dense, Numba for csr), leaves the other pool as it was, and restores both."""
    from sparsenet import threads as _threads
    pool = _BlasPool()
    monkeypatch.setattr(_threads, "_blas", [pool])
    eng = make_engine(name, small, threads=1)
    assert (eng.uses_blas, eng.uses_numba) == (blas, numba_)
    seen, real = [], eng._forward

    def forward_spy(X):
        seen.append((pool.threads, numba.get_num_threads()))
        return real(X)

    monkeypatch.setattr(eng, "_forward", forward_spy)
    X = np.random.default_rng(4).random((5, SMALL[0]), dtype=np.float32)
    with _threads.limit(2, blas=False):                   # Numba at 2 threads around the call
        assert_matches(eng(X), forward(small, X))
        assert seen == [(1 if blas else 3, 1 if numba_ else 2)]
        assert (pool.threads, numba.get_num_threads()) == (3, 2)
    assert pool.calls == ([1, 3] if blas else [])


@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_forward_hook_gets_c_contiguous_float32_rows(small, name, monkeypatch):
    """_forward's contract: (B, n_in) float32, C-contiguous, B >= 1, whatever the caller passes
    (float64, strided or Fortran-ordered float32); an empty batch never reaches it."""
    eng = make_engine(name, small, threads=1)
    seen, real = [], eng._forward

    def forward_spy(X):
        seen.append((X.dtype, X.flags.c_contiguous, X.shape))
        return real(X)

    monkeypatch.setattr(eng, "_forward", forward_spy)
    base = np.random.default_rng(6).random((4, 2 * SMALL[0]))
    strided = base.astype(np.float32)[:, ::2]
    ref = forward(small, np.ascontiguousarray(strided))
    for X in (strided, np.asfortranarray(strided), np.ascontiguousarray(base[:, ::2])):
        assert_matches(eng(X), ref)
    assert seen == [(np.float32, True, (4, SMALL[0]))] * 3
    empty = eng(np.zeros((0, SMALL[0]), np.float32))
    assert empty.shape == (0, SMALL[-1]) and empty.dtype == np.float32 and len(seen) == 3


def test_nan_rows_only(small):
    """Only the rows holding a non-finite value become NaN; the output is a fresh float32 array."""
    for name in UNSTRUCTURED:
        eng = make_engine(name, small, threads=1)
        X = np.ones((3, SMALL[0]), np.float32)
        X[1, 0] = np.nan
        with np.errstate(invalid="ignore"):
            out = eng(X)
        assert out.dtype == np.float32 and out.shape == (3, SMALL[-1])
        assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all(), name


# -- the one-call dense engines and the csr engine's CSC copy (zero skipping) ---------------------------

@pytest.mark.parametrize("name, skip", [("dense-fused", False), ("shrunk-fused", False), ("dense-skip", True),
                                        ("shrunk-skip", True)])
def test_fused_engines_run_the_planned_path(small, name, skip, monkeypatch):
    """Batches up to max_fused_batch run dense_kernels.dense_forward (skipping zeros if asked), larger
    ones numpy's BLAS chain; the plan says so and is computed once per batch size."""
    from sparsenet import dense_kernels
    calls = _spy(monkeypatch, dense_kernels, "dense_forward")
    t = Tuning(max_fused_batch=3)
    eng = make_engine(name, small, threads=1, tuning=t)
    assert eng.tuning is t and eng.skip_zeros is skip
    X = np.random.default_rng(5).random((5, SMALL[0]), dtype=np.float32)
    X[:, :10] = 0                                           # zero inputs the skip engines skip
    for B, fused in ((3, True), (1, True), (2, True), (4, False), (5, False)):
        calls.clear()
        assert_matches(eng(X[:B]), forward(small, X[:B]))
        assert bool(calls) is fused, B
        p = eng.plan(B)
        assert p is eng.plan(B) and eng.call_nbytes(B) == eng.nbytes == p.nbytes
        assert p.split == ("none" if fused else "blas") and p.threads == 1
        want = ("dense-tiles-skip" if skip else "dense-tiles") if fused else "sgemm"
        assert {l.kernel for l in p.layers} == {want}
        if fused:
            assert calls[0][9] is skip and calls[0][8].dtype == np.bool_ and calls[0][1].dtype == np.int64
    assert eng._bufs[0] == 3
    kept = eng._bufs
    eng(X[:3])
    eng(X[:1])
    assert eng._bufs is kept                                # scratch kept for batches up to its size


def test_fused_engines_refuse_bad_options(small):
    with pytest.raises(ValueError, match=r"^skip_zeros must be True or False, got 1$"):
        make_engine("dense-fused", small, skip_zeros=1)
    with pytest.raises(ValueError, match=r"^tuning must be a plan\.Tuning, got dict$"):
        make_engine("dense-fused", small, tuning={})
    with pytest.raises(ValueError, match=r"^skip_zeros must be True or False, got 'yes'$"):
        make_engine("csr", small, skip_zeros="yes")
    assert make_engine("dense-fused", small).tuning == Tuning() and make_engine("dense-skip", small).tuning == Tuning()


@pytest.mark.parametrize("B", [1, 2, 3])
def test_csc_copy_runs_small_batches(B, monkeypatch):
    """csr-skip runs batches up to max_csc_batch on its CSC copy (batch 1: X itself, no copy)."""
    params = _biased_net()
    calls = _spy(monkeypatch, csr_engine.kernels, "csc_forward_skip")
    eng = make_engine("csr-skip", params, threads=1, tuning=Tuning(max_csc_batch=3))
    assert eng.skip_zeros is True and eng.layout(B) == "csc" and eng.layout(4) != "csc"
    cols = [int(np.count_nonzero(l.weight)) for l in params]
    data, indices, indptr, ptr_off, _ = eng._csc
    assert indices.dtype == np.uint16 and indptr.size == 96 + 80 + 64 + 32 + 4 and data.size == sum(cols)
    assert eng.call_nbytes(B) == 6 * sum(cols) + 4 * (96 + 80 + 64 + 32 + 4) + 4 * (80 + 32)
    X = np.random.default_rng(6).random((B, 96), dtype=np.float32)
    X[:, 5:40] = 0
    assert_matches(eng(X), forward(params, X))
    HT = calls[0][7]
    assert HT.shape == (96, B) and HT.flags.c_contiguous
    np.testing.assert_array_equal(HT, X.T)
    assert np.shares_memory(HT, X) == (B == 1)
    calls.clear()
    X4 = np.ones((4, 96), np.float32)
    assert_matches(eng(X4), forward(params, X4))
    assert calls == []
    assert make_engine("csr", params, threads=1).net.nbytes["csc"] == 0


def test_fused_engine_arrays():
    params = _biased_net()
    eng = make_engine("dense-fused", params, threads=1)
    assert eng._weights.dtype == eng._bias.dtype == np.float32 and eng._bias.shape == (80 + 64 + 32 + 10,)
    assert eng._w_off.dtype == eng._sizes.dtype == np.int64 and list(eng._sizes) == list(SMALL)
    assert list(eng._w_off) == list(np.cumsum([0, 96 * 80, 80 * 64, 64 * 32, 32 * 10]))
    np.testing.assert_array_equal(eng._bias[144:176], params[2].bias)
    np.testing.assert_array_equal(eng._bias[80:144], 0)
    assert eng._width == 80 and eng._idx.shape == (96,) and eng._idx.dtype == np.int64


@pytest.mark.parametrize("name", ["dense-fused", "dense-skip"])
def test_fused_engine_scratch_fits_a_hidden_layer_wider_than_the_input(name):
    """The skip list (_idx) holds the widest layer input, a hidden one here (16 -> 48 -> 40 -> 10)."""
    params = _random_bias(weight_prune(he_init((16, 48, 40, 10), seed=9), 0.5))
    eng = make_engine(name, params, threads=1)
    assert eng._idx.shape == (48,) and eng._width == 48
    X = np.random.default_rng(9).random((4, 16), dtype=np.float32)
    X[:, :5] = 0
    for B in (1, 4):
        assert eng.plan(B).split == "none"
        assert_matches(eng(X[:B]), forward(params, X[:B]))


@pytest.mark.parametrize("name", ENGINES)
def test_copy_shares_the_weights_not_the_scratch(name):
    """Engine.copy (what the study times other batch sizes on): the same logits at every batch, its own
    per-batch scratch buffers, so calls of one batch on the copy leave the original's untouched."""
    from sparsenet import names
    from sparsenet.prune import apply_masks, make_masks
    params = he_init(SMALL, seed=4)
    net = apply_masks(params, make_masks(params, names.method_of(name), 0.75 if name == "nm" else 0.5,
                                         block=(8, 1)))
    rng = np.random.default_rng(1)
    big, one = rng.random((256, SMALL[0]), dtype=np.float32), rng.random((1, SMALL[0]), dtype=np.float32)
    eng = make_engine(name, net, threads=min(2, numba.config.NUMBA_NUM_THREADS))
    first = eng(big)
    scratch = {s: getattr(eng, s, None) for s in eng.scratch}
    twin = eng.copy()
    assert type(twin) is type(eng) and twin.threads == eng.threads and twin.nnz == eng.nnz
    for _ in range(2):
        assert_matches(twin(one), forward(net, one))
        assert_matches(twin(big[:7]), forward(net, big[:7]))
    for s, buf in scratch.items():
        assert getattr(eng, s, None) is buf                   # the original's buffers: as they were
        if buf is not None:
            assert getattr(twin, s) is not buf
    np.testing.assert_array_equal(eng(big), first)
