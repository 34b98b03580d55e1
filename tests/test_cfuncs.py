"""cfuncs: callbacks compiled on first use per argument types, called by address from parallel regions;
a driver cached by one process runs the callbacks another process compiled."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import get_num_threads, get_thread_id, njit

from sparsenet.cfuncs import Callback, callback, invoke, run_parts, run_workers


@callback
def _fill(out, scale, w):
    """out[w] = scale * (w + 1): each worker writes its own slot."""
    out[w] = scale * (w + 1)


@callback
def _gather(values, index, out, w):
    """out[w] = values[index[w]]: an index array whose dtype varies."""
    out[w] = values[np.int64(index[w])]


@njit(cache=True)
def _invoke_each(addr, out, scale):
    for w in range(out.shape[0]):
        invoke(addr, (out, scale, np.int64(w)))


@callback
def _part(seen, thread, n_parts, w):
    """seen[w] = n_parts, thread[w] = the thread that ran part w."""
    seen[w] = n_parts
    thread[w] = get_thread_id()


@njit(parallel=True, cache=True)
def _layers_of_parts(addr, seen, thread, n_parts):
    for layer in range(2):                   # a driver's layer loop, one run_parts a layer
        run_parts(addr, n_parts, (seen[layer], thread[layer]))


@pytest.mark.parametrize("n_parts", [1, 2, 3])
def test_run_parts_runs_every_part_once_with_its_count(n_parts):
    seen = np.full((2, 4), -1, np.int64)
    thread = np.full((2, 4), -1, np.int64)
    get_thread_id()      # loads the threading layer, whose symbol a cached _part links to when loaded
    _layers_of_parts(_part.address(seen[0], thread[0], 1, 0), seen, thread, np.int64(n_parts))
    np.testing.assert_array_equal(seen[:, :n_parts], n_parts)
    assert (seen[:, n_parts:] == -1).all()
    if n_parts == 1:
        assert (thread[:, 0] == 0).all()     # one part: on the calling thread, no region
    else:                                    # a prange: the parts spread over the threads
        for layer in range(2):
            assert len(set(thread[layer, :n_parts])) == min(n_parts, get_num_threads())


def test_nothing_compiled_until_asked():
    cb = Callback(_fill.py_func)
    assert cb._compiled == {} and cb.inspect_llvm() == {}
    assert cb.__name__ == "_fill" and cb.__module__ == __name__


@pytest.mark.parametrize("n_workers", [1, 2, 3, 7])
def test_run_workers_calls_every_worker_once(n_workers):
    out = np.zeros(n_workers, np.float64)
    run_workers(_fill.address(out, 2.0, 0), n_workers, out, 2.0)
    np.testing.assert_array_equal(out, 2.0 * np.arange(1, n_workers + 1))


def test_invoke_on_the_calling_thread():
    out = np.zeros(5, np.float64)
    _invoke_each(_fill.address(out, 0.5, 0), out, 0.5)
    np.testing.assert_array_equal(out, 0.5 * np.arange(1, 6))


def test_one_compile_per_argument_types():
    values = np.arange(10, dtype=np.float32) * 3
    out = np.zeros(4, np.float32)
    addrs = {}
    for dtype in (np.uint16, np.uint32, np.uint16):
        index = np.array([9, 0, 4, 2], dtype)
        addr = _gather.address(values, index, out, 0)
        assert addrs.setdefault(np.dtype(dtype), addr) == addr         # the same types: the same callback
        out[:] = 0
        run_workers(addr, 4, values, index, out)
        np.testing.assert_array_equal(out, values[[9, 0, 4, 2]])
    assert addrs[np.dtype(np.uint16)] != addrs[np.dtype(np.uint32)]
    assert len(_gather._compiled) == 2       # (inspect_llvm's IR is there only when not loaded from the cache)


def test_cache_dict_keeps_the_address():
    out = np.zeros(3, np.float64)
    cache = {}
    addr = _fill.address(out, 1.0, 0, cache=cache)
    assert cache == {_fill: addr}
    cache[_fill] = 12345                    # a cache hit does not look at the arguments again
    assert _fill.address(out, 1.0, 0, cache=cache) == 12345


_CACHED_RUN = textwrap.dedent("""
    import numpy as np
    from sparsenet import cfuncs, model, prune
    from sparsenet.engines import make_engine
    from sparsenet.plan import Tuning
    p0 = model.he_init((40, 48, 32, 10), bias=True, seed=1)
    X = np.random.default_rng(0).standard_normal((70, 40)).astype(np.float32)
    ref = model.forward(p0, X)
    rows = Tuning(min_rows_work=0)                    # batches 2-32 on the row split too
    for name, p, opts in (("csr", prune.weight_prune(p0, 0.6), {}), ("csr", prune.weight_prune(p0, 0.6), {"sell": "sell8-portable"}),
                          ("bsr", prune.block_prune(p0, 0.5, (8, 1)), {}), ("bsr", prune.block_prune(p0, 0.5, (8, 1)), {"tuning": rows}),
                          ("nm", prune.nm_prune(p0, 2, 4), {}), ("nm", prune.nm_prune(p0, 3, 4), {"tuning": rows}),
                          ("dense-fused", p0, {}), ("csr-skip", prune.weight_prune(p0, 0.6), {})):
        for threads in (1, 2):
            e = make_engine(name, p, threads=threads, **opts)
            for B in (1, 16, 70):
                np.testing.assert_allclose(e(X[:B]), model.forward(p, X[:B]), rtol=1e-4, atol=1e-4)
    # every call by address a driver was compiled with (here, on a fresh cache) has the argument types
    # a callback was compiled for: else the call would be undefined behaviour
    unmatched = cfuncs.TYPED_CALLS - cfuncs.COMPILED
    assert not unmatched, sorted(map(str, unmatched))
    print("ok", len(cfuncs.TYPED_CALLS), len(cfuncs.COMPILED))
""")


def test_cached_drivers_take_this_process_addresses(tmp_path):
    """A driver loaded from Numba's cache holds no address: the second process compiles nothing of
    the drivers and its callbacks live elsewhere in memory, and every engine still matches dense."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    typed = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _CACHED_RUN], cwd=root, env=env, capture_output=True, text=True,
                           timeout=1200)
        assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]
        typed.append(int(r.stdout.split()[1]))
    assert any(p.suffix == ".nbc" and "cfuncs" in p.name for p in tmp_path.rglob("*"))
    # the first run typed the calls by address (and checked them), the second loaded every driver
    assert typed[0] >= 8 and typed[1] == 0, typed


@pytest.mark.parametrize("name", ["csr", "bsr", "nm", "dense-fused"])
def test_engine_keeps_its_addresses_across_inputs(name):
    """An engine finds its callbacks' addresses once (Engine._callbacks) and reuses them for read-only
    and writable inputs, batch 1 and batches, one and two threads, call after call."""
    from sparsenet import model, prune
    from sparsenet.engines import make_engine
    p0 = model.he_init((40, 48, 32, 10), bias=True, seed=2)
    p = {"csr": lambda: prune.weight_prune(p0, 0.7), "bsr": lambda: prune.block_prune(p0, 0.5, (8, 1)),
         "nm": lambda: prune.nm_prune(p0, 2, 4), "dense-fused": lambda: p0}[name]()
    X = np.random.default_rng(3).standard_normal((70, 40)).astype(np.float32)
    for threads in (1, 2):
        e = make_engine(name, p, threads=threads)
        for B in (1, 16, 70, 1, 16):
            for writeable in (False, True):
                x = X[:B].copy()
                x.flags.writeable = writeable
                np.testing.assert_allclose(e(x), model.forward(p, x), rtol=1e-4, atol=1e-4)
        found = [a for v in e._callbacks.values() for a in (v.values() if isinstance(v, dict) else [v])]
        found = [x for a in found for x in (a if isinstance(a, tuple) else [a])]   # csr_forward keeps a pair
        assert found and all(isinstance(a, int) and a >= 0 for a in found) and any(a > 0 for a in found)


@callback
def _first(out, w):
    out[0] = 1.0


@njit                                        # not cached: typed in this process, so the registry sees it
def _strided_driver(addr, out):
    invoke(addr, (out[::2], np.int64(0)))   # an 'A' array where the callback was compiled for a 'C' one


def test_registry_catches_a_call_with_other_argument_types():
    """cfuncs.TYPED_CALLS - cfuncs.COMPILED names a driver that calls a callback with argument types it
    was not compiled for (undefined behaviour at run time): what test_cached_drivers_... checks."""
    from numba import types

    from sparsenet import cfuncs
    out = np.zeros(8)
    addr = _first.address(out, 0)
    assert (types.float64[::1], types.int64) in cfuncs.COMPILED
    _strided_driver.compile((types.int64, types.float64[::1]))     # typed and compiled, never run
    assert addr and (types.Array(types.float64, 1, "A"), types.int64) in cfuncs.TYPED_CALLS - cfuncs.COMPILED
