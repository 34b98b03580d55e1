"""Every engine against the reference forward pass (model.forward on the masked dense net).

To run the grid on other weights too, point SPARSENET_TEST_PARAMS at a trained checkpoint
(sparsenet.checkpoint.save format): it is added to the `base_params` fixture.
"""
import functools
import os

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sparsenet import csr_engine, plan, sell_kernels
from sparsenet.engines import ENGINES, make_engine
from sparsenet.plan import Tuning, batch_chunk
from sparsenet.model import DEFAULT_SIZES, Layer, forward, he_init
from sparsenet.prune import neuron_prune, weight_prune

SPARSITIES = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
BATCHES = (1, 7, 256)
SMALL = (96, 80, 64, 32, 10)
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
SMALL_PANELS = dict(min_panel_nnz=0, panel_width=16, min_panel_batch=2)


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
@pytest.mark.parametrize("name", ENGINES)
def test_default_sizes(name, k):
    method = "neuron" if name == "shrunk" else "weight"
    eng = check_engine(name, default_net(method, k), batches=(1, 7, 33))
    assert eng.layer_sizes[0] == 784 and eng.layer_sizes[-1] == 10
    if name == "csr":                         # dense-ish layers are column-panelled, sparse ones plain
        d = eng.describe()
        assert d["panels"] == ([64, 64, 64, 64, 200] if k == 0 else [784, 1000, 1000, 500, 200])
        assert (d["panel_nbytes"] > 0) == (k == 0)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_agree(threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("machine has fewer cores")
    params = weight_prune(he_init(SMALL, seed=3), 0.8)
    for name in ENGINES:
        eng = check_engine(name, params, batches=(1, 64, 130), threads=threads)   # 130: padded to 144
        assert eng.threads == threads


# ---- the batch split (kernels.csr_forward_chunks) ----------------------------------------------

def split(chunks, **tuning):
    """Tuning that forces the batch split (chunks=True) or the row split (False) for every batch > 1."""
    force = dict(min_chunk=0, tile_min_chunk=0) if chunks else dict(max_chunk=0, tile_chunk=0)
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
    # the busiest thread (csr_forward_chunks hands out contiguous runs of chunks) does at most 1/8
    # more than an equal share of the padded work, or one chunk more when there are few chunks
    busiest = -(-n_chunks // threads) * Bc
    assert busiest <= max(1.125 * -(-B // threads), (n_chunks // threads + 1) * Bc)


def test_chunk_policy():
    threads_or_skip(2)
    plain = make_engine("csr", default_net("weight", 0.9), threads=2)       # nnz 239k, no panels
    assert plan.chunk_limits(plain.tuning, plain.net)[1] == Tuning().tile_chunk                           # 32-column register tiles
    assert [plain.chunk_width(B) for B in (1, 16, 64, 128, 256, 4096)] == [0, 0, 32, 32, 32, 32]
    dense = make_engine("csr", default_net("weight", 0.0), threads=2)       # panelled, density 1
    assert plan.chunk_limits(dense.tuning, dense.net)[1] == Tuning().max_chunk
    assert [dense.chunk_width(B) for B in (64, 128, 255, 256)] == [0, 0, 128, 128]
    tiny = make_engine("csr", default_net("weight", 0.99), threads=2)       # nnz 24k: short calls
    assert [tiny.chunk_width(B) for B in (16, 32, 64, 128)] == [0, 16, 32, 32]
    one = make_engine("csr", default_net("weight", 0.9), threads=1)         # one thread: always
    assert [one.chunk_width(B) for B in (1, 2, 7, 16, 256, 300)] == [0, 2, 7, 16, 32, 32]
    mid = make_engine("csr", default_net("weight", 0.7), threads=1)         # panels (density 0.3) lose to tiles
    assert mid.panel_nbytes > 0 and plan.chunk_limits(mid.tuning, mid.net)[1] == Tuning().tile_chunk


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
    for name in ENGINES:
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


@pytest.mark.parametrize("name", ENGINES)
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


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("shape", [(3, SMALL[0] + 1), (SMALL[0],), (1, 2, SMALL[0])])
def test_bad_input_shape(small, name, shape):
    with pytest.raises(ValueError, match=rf"expected X of shape \(B, {SMALL[0]}\), got"):
        make_engine(name, small)(np.zeros(shape, np.float32))


@pytest.mark.parametrize("name", ENGINES)
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
@pytest.mark.parametrize("sell", [False, True, "portable"])
def test_batch_one_paths_match_reference(base_params, k, sell, threads):
    threads_or_skip(threads)
    params = prune(base_params, "weight", k)
    eng = make_engine("csr", params, threads=threads, sell=sell,
                      tuning=Tuning(min_parallel_slots=0))   # every layer on every thread
    assert eng.uses_sell is bool(sell) and eng.layout(1) == ("sell" if sell else "csr")
    if sell:
        want = "sell16-avx512" if sell is True and sell_kernels.available() else "sell16-portable"
        assert eng.sell_kernel == want and {l.kernel for l in eng.plan(1).layers} == {want}
        assert all(l.parallel == (threads > 1) for l in eng.plan(1).layers)
    X = np.random.default_rng(3).random((5, params[0].weight.shape[1]), dtype=np.float32)
    for row in range(5):                                 # buffers reused call after call
        assert_matches(eng(X[row:row + 1]), forward(params, X[row:row + 1]))


@pytest.mark.parametrize("k", [0.0, 0.9, 0.99])
def test_sell_default_sizes(k):
    params = _random_bias(default_net("weight", k))
    eng = make_engine("csr", params, threads=1, sell=True)
    assert eng.uses_sell and eng.sell_padding >= 1.0
    X = np.random.default_rng(4).random((1, DEFAULT_SIZES[0]), dtype=np.float32)
    assert_matches(eng(X), forward(params, X))
    assert_matches(eng(X[:, ::-1]), forward(params, np.ascontiguousarray(X[:, ::-1])))   # non-contiguous
    assert_matches(eng(X.astype(np.float64)), forward(params, X))
    assert eng.call_nbytes(1) == eng.sell_nbytes > 0
    assert eng.call_nbytes(256) == eng.nbytes or eng.layout(256) == "csr-panels"
    assert eng.describe()["sell"] is True


def test_sell_all_zero_layer():
    params = list(_random_bias(he_init(SMALL, seed=5)))
    params[2] = Layer(np.zeros_like(params[2].weight), params[2].bias)
    eng = make_engine("csr", params, threads=1, sell=True)
    X = np.random.default_rng(5).random((1, SMALL[0]), dtype=np.float32)
    assert_matches(eng(X), forward(params, X))


def test_sell_demanded_without_avx512(small, monkeypatch):
    monkeypatch.setattr(sell_kernels, "available", lambda: False)
    eng = make_engine("csr", small, sell=True)           # the portable twin
    assert eng.sell_kernel == "sell16-portable" and eng.layout(1) == "sell"
    X = np.ones((1, SMALL[0]), np.float32)
    assert_matches(eng(X), forward(small, X))
    with pytest.raises(ValueError, match="sell must be None, True, False or 'portable', got 'yes'"):
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
_SELL_OPTIONS = [None, False] + ([True] if sell_kernels.available() else [])


def _engines_every_path(params):
    """(label, engine) for every engine, thread count and (csr) batch-1 layout this machine runs."""
    for threads in (1, 2):
        if threads > numba.config.NUMBA_NUM_THREADS:
            continue
        for name in ENGINES:
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
    return [], "params must hold at least one layer"


@pytest.mark.parametrize("kind", ["width", "bias", "1-d", "complex", "not-a-layer", "empty"])
@pytest.mark.parametrize("name", ENGINES)
def test_inconsistent_params_refused_by_every_engine(name, kind):
    params, message = _inconsistent(kind)
    with pytest.raises(ValueError, match=message):
        make_engine(name, params, threads=1)
