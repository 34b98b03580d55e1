"""The csr engine's batch-1 layouts: which SELL it picks on which CPU, and SELL8 against the reference."""
import numba
import numpy as np
import pytest

from sparsenet import csr_engine, sell, sell8, sell8_kernels, sell_kernels
from sparsenet.engines import make_engine
from sparsenet.model import Layer, forward, he_init
from sparsenet.plan import Tuning
from sparsenet.prune import weight_prune

needs_avx2 = pytest.mark.skipif(not sell8_kernels.available(), reason="SELL8's kernel needs AVX2 and FMA")
SIZES = (100, 80, 64, 33, 10)


def _net(k, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(Layer(l.weight, (rng.standard_normal(l.weight.shape[0]) * 0.1).astype(np.float32))
                 for l in weight_prune(he_init(SIZES, seed=seed), k))


def _close(out, ref):
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max(initial=0))))


@pytest.mark.parametrize("sell", [pytest.param("sell8", marks=needs_avx2), "sell8-portable"])
@pytest.mark.parametrize("k", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("threads", [1, 2])
def test_sell8_paths_match_reference(sell, k, threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("machine has fewer cores")
    params = _net(k)
    eng = make_engine("csr", params, threads=threads, sell=sell, tuning=Tuning(min_parallel_units=0))
    want = "sell8-avx2" if sell == "sell8" else "sell8-portable"
    p = eng.plan(1)
    assert eng.sell_kernel == want and p.layout == "sell" and {l.kernel for l in p.layers} == {want}
    assert all(l.parallel == (threads > 1) for l in p.layers) and p.nbytes == eng.sell_nbytes > 0
    X = np.random.default_rng(1).random((6, SIZES[0]), dtype=np.float32)
    held = [eng(X[i:i + 1]) for i in range(6)]            # consecutive calls, results held
    for i, out in enumerate(held):
        _close(out, forward(params, X[i:i + 1]))
    _close(eng(X), forward(params, X))                     # larger batches leave SELL
    kinds = [f"{s.window}{'s' if s.split else ''}" for s in sell8.flatten(params)[2]]
    assert eng.net.sell_kinds == tuple(kinds) and ", ".join(kinds) in p.describe()
    if k == 0.99:
        assert any(kind.endswith("s") for kind in kinds)    # split units where paired ones pad a slot


def test_default_batch_one_layout_follows_the_cpu(monkeypatch):
    params = _net(0.9)
    eng = make_engine("csr", params, threads=1)
    want = "sell16-avx512" if sell_kernels.available() else "sell8-avx2" if sell8_kernels.available() else None
    assert eng.sell_kernel == want
    monkeypatch.setattr(sell_kernels, "available", lambda: False)       # an AVX2-only CPU
    if sell8_kernels.available():
        assert make_engine("csr", params, threads=1).sell_kernel == "sell8-avx2"
        assert make_engine("csr", params, threads=1, sell=True).sell_kernel == "sell8-avx2"
    monkeypatch.setattr(sell8_kernels, "available", lambda: False)      # no AVX2 either
    assert make_engine("csr", params, threads=1).sell_kernel is None    # the SpMV
    assert make_engine("csr", params, threads=1, sell=True).sell_kernel == "sell16-portable"
    with pytest.raises(ValueError, match=r"^sell='sell8' needs a CPU with AVX2 and FMA \(as Numba targets it\); "
                                         r"use sell='sell8-portable' or leave sell unset$"):
        make_engine("csr", params, sell="sell8")
    with pytest.raises(ValueError, match="sell must be one of None, True, False, 'portable', 'sell8', "
                                         "'sell8-portable', 'packed', 'padded', got 'fast'"):
        make_engine("csr", params, sell="fast")


def test_sell8_dropped_when_it_does_not_pay(monkeypatch):
    monkeypatch.setattr(sell_kernels, "available", lambda: False)
    monkeypatch.setattr(csr_engine, "sell_pays", lambda sell_nbytes, csr_nbytes, tuning: False)
    eng = make_engine("csr", _net(0.5), threads=1)
    assert eng.sell_kernel is None and eng.sell_nbytes > 0 and eng.plan(1).layout == "csr"


@pytest.mark.parametrize("sell", [pytest.param("sell8", marks=needs_avx2), "sell8-portable", "portable"])
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_one_sell_call_gets_the_planned_threshold(sell, threads, monkeypatch):
    """The SELL driver gets the tuning's threshold on several threads, kernels.NEVER on one."""
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("machine has fewer cores")
    eight = sell.startswith("sell8")
    module, name = (sell8_kernels, "sell8_forward") if eight else (sell_kernels, "sell_forward_portable")
    calls, real = [], getattr(module, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    params = _net(0.9)
    eng = make_engine("csr", params, threads=threads, sell=sell,
                      tuning=Tuning(min_parallel_units=123, min_parallel_slots=456))
    X = np.random.default_rng(2).random((1, SIZES[0]), dtype=np.float32)
    _close(eng(X), forward(params, X))
    (args, kwargs), = calls
    least = (123 if eight else 456) if threads > 1 else csr_engine.kernels.NEVER
    assert args[-3] == least and args[-2] == threads and args[-1].shape == (1, SIZES[-1])
    assert kwargs == ({"avx2": sell == "sell8", "callbacks": eng._callbacks["sell8"]} if eight else {})


@pytest.mark.parametrize("choice", ["sell8-portable", "portable"])
def test_sell_copy_counts_are_exact(choice):
    params = _net(0.9)
    eng = make_engine("csr", params, threads=1, sell=choice, bitmap=False)
    if choice == "portable":                               # SELL-16: slots of 16 rows, bias at [7]
        arrays, _, layers = sell.flatten(params)
        units, per, bias = [s.n_slots for s in layers], sell.LANES, arrays[7]
        if eng.sell_kernel == "sell16p-portable":          # packed values (plan.sell_packs): their bytes
            assert eng.sell_nbytes == sell.form_nbytes(layers)["sell-packed"] == eng.plan(1).nbytes
            eng = make_engine("csr", params, threads=1, sell="padded", bitmap=False)
            assert eng.sell_kernel in ("sell16-portable", "sell16-avx512")
    else:                                                  # SELL8: units of 2 slots x 8 rows, bias at [4]
        arrays, _, layers = sell8.flatten(params)
        units, per, bias = [s.n_units for s in layers], sell8.SLOTS * sell8.LANES, arrays[4]
    assert eng.net.sell_slots == tuple(units) and eng.nnz == sum(int(np.count_nonzero(l.weight)) for l in params)
    assert eng.sell_padding == sum(units) * per / eng.nnz
    assert eng.sell_nbytes == sum(s.nbytes for s in layers) + bias.nbytes == eng.plan(1).nbytes
    d = eng.describe()
    assert (d["sell"], d["sell_nbytes"], d["sell_padding"]) == (True, eng.sell_nbytes, eng.sell_padding)


def test_default_sell8_needs_the_columns_to_fit(monkeypatch):
    """Without AVX-512F the default batch 1 takes SELL8 only when the widest layer input fits it."""
    monkeypatch.setattr(sell_kernels, "available", lambda: False)
    monkeypatch.setattr(sell8_kernels, "available", lambda: True)    # the choice only: nothing runs
    params = _net(0.9)                                     # widest input: SIZES[0] = 100 columns
    monkeypatch.setattr(sell8, "MAX_COLUMNS", SIZES[0])
    assert make_engine("csr", params, threads=1).sell_kernel == "sell8-avx2"
    monkeypatch.setattr(sell8, "MAX_COLUMNS", SIZES[0] - 1)
    assert make_engine("csr", params, threads=1).sell_kernel is None
    assert make_engine("csr", params, threads=1, sell=True).sell_kernel == "sell16-portable"


def _padding_heavy_net():
    """16 x 100 with one full row and 15 single weights, then 4 x 16: each slice of rows pads to the
    long row, so the SELL copy holds more than twice CSR's bytes."""
    rng = np.random.default_rng(3)
    w0 = np.zeros((16, 100), np.float32)
    w0[0] = rng.standard_normal(100).astype(np.float32)
    w0[np.arange(1, 16), np.arange(1, 16)] = 1.0
    return (Layer(w0, None), Layer(rng.standard_normal((4, 16)).astype(np.float32), None))


def test_default_sell_obeys_the_engines_cache_budget():
    """The pays rule reads the engine's tuning: a SELL copy over twice CSR's bytes is kept within the
    default cache budget, dropped at sell_cache_bytes=0; an explicit choice stands either way."""
    params = _padding_heavy_net()
    want = "sell16-avx512" if sell_kernels.available() else "sell8-avx2" if sell8_kernels.available() else None
    if want is None:
        pytest.skip("this CPU has no SELL kernel for the default batch 1")
    kept = make_engine("csr", params, threads=1, bitmap=False)
    assert kept.sell_kernel == want and kept.sell_nbytes > 2 * kept.nbytes and kept.plan(1).layout == "sell"
    dropped = make_engine("csr", params, threads=1, bitmap=False, tuning=Tuning(sell_cache_bytes=0))
    assert dropped.sell_kernel is None and dropped.sell_nbytes == kept.sell_nbytes
    assert dropped.plan(1).layout == "csr" and dropped.describe()["bitmap"] == []
    X = np.random.default_rng(4).random((1, 100), dtype=np.float32)
    _close(dropped(X), forward(params, X))
    for choice, kernel in (("sell8-portable", "sell8-portable"), ("portable", "sell16-portable")):
        eng = make_engine("csr", params, threads=1, sell=choice, tuning=Tuning(sell_cache_bytes=0))
        assert eng.sell_kernel == kernel and eng.plan(1).layout == "sell"
        _close(eng(X), forward(params, X))


@pytest.mark.parametrize("choice", ["sell8-portable", "portable"])
def test_sell_padding_of_a_one_weight_net(choice):
    """sell_padding is stored slots per kept weight: with a single weight, all the slots the copy holds."""
    w0 = np.zeros((4, 8), np.float32)
    w0[2, 5] = 1.5
    params = (Layer(w0, None), Layer(np.zeros((3, 4), np.float32), None))
    eng = make_engine("csr", params, threads=1, sell=choice)
    per = sell8.SLOTS * sell8.LANES if choice == "sell8-portable" else sell.LANES
    assert eng.nnz == 1 and sum(eng.net.sell_slots) > 0
    assert eng.sell_padding == sum(eng.net.sell_slots) * per
    X = np.ones((1, 8), np.float32)
    _close(eng(X), forward(params, X))


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16, np.int64])
@pytest.mark.parametrize("shape", [(0,), (5,), (3, 7), (2, 5, 16)])
def test_aligned_copy(shape, dtype):
    a = np.arange(int(np.prod(shape))).astype(dtype).reshape(shape)[..., ::-1]   # strided: any layout
    for _ in range(4):                                    # different allocations, different offsets
        b = csr_engine.aligned(a)
        assert (b.ctypes.data % 64 == 0 or not b.size) and b.flags.c_contiguous and b.dtype == dtype
        np.testing.assert_array_equal(b, a)
    assert csr_engine.aligned(a, 256).ctypes.data % 256 == 0 or not a.size


@pytest.mark.parametrize("sell", [pytest.param("sell8", marks=needs_avx2), "sell8-portable", "portable"])
def test_sell_arrays_start_on_a_cache_line(sell):
    """Every SELL array starts on a 64-byte boundary: no vector load of a slot splits over two lines."""
    eng = make_engine("csr", _net(0.9), threads=1, sell=sell)
    arrays = [a for a in eng._sell if isinstance(a, np.ndarray) and a.size]     # (padded SELL-16: no masks)
    assert len(arrays) >= 7 and all(a.ctypes.data % 64 == 0 for a in arrays)
    assert all(b.ctypes.data % 64 == 0 for b in eng._sell_bufs)
