"""Thread limits for BLAS (threadpoolctl) and Numba: the one owner, used by engines, timing and training."""
from __future__ import annotations

import contextlib

import numba

from sparsenet.checks import is_integer

_blas = None


def blas_controllers() -> list:
    """threadpoolctl controllers of the loaded BLAS libraries (scanned once: a rescan costs ~0.8 ms)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


def blas_library() -> dict:
    """Name, version and kernel (`architecture`) of the BLAS that numpy uses, for records."""
    libs = blas_controllers()
    if not libs:
        return {"blas": None, "blas_version": None, "blas_architecture": None}
    info = libs[0].info()
    return {"blas": info.get("internal_api"), "blas_version": info.get("version"),
            "blas_architecture": info.get("architecture")}


def max_threads() -> int:
    """Threads Numba may use in this process (NUMBA_NUM_THREADS: the cores, unless set lower)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def check_threads(threads, what: str = "threads") -> int:
    """`threads` (an int, numpy's too) as an int in 1..max_threads(), else a ValueError saying the range.
    None (every thread, in Engine) is the caller's to handle."""
    n = max_threads()
    if not is_integer(threads):
        raise ValueError(f"{what} must be an integer in 1..{n}, got {threads!r}") from None
    if not 1 <= threads <= n:
        raise ValueError(f"{what} must be in 1..{n} (this machine's threads), got {threads!r}")
    return int(threads)


def pools_of(obj) -> tuple:
    """The thread pools ("blas", "numba") an object says it uses (its uses_blas, uses_numba flags)."""
    return tuple(pool for pool in ("blas", "numba") if getattr(obj, f"uses_{pool}", False))


@contextlib.contextmanager
def limit(n: int, blas: bool = True, numba_threads: bool = True):
    """Set BLAS (per-library controllers) and Numba thread counts to n inside the block, restore after.

    ~4 us for BLAS + ~1-3 us for Numba per use (threadpool_limits() would rescan the libraries,
    ~0.8 ms); an engine's threads_context() pays it once around many calls.
    """
    n = min(int(n), max_threads())
    old_numba = numba.get_num_threads() if numba_threads else None
    libs = blas_controllers() if blas else []
    old_blas = [lib.get_num_threads() for lib in libs]
    try:
        if numba_threads and old_numba != n:
            numba.set_num_threads(n)
        for lib, old in zip(libs, old_blas):
            if old != n:
                lib.set_num_threads(n)
        yield
    finally:
        if numba_threads and old_numba != n:
            numba.set_num_threads(old_numba)
        for lib, old in zip(libs, old_blas):
            if old != n:
                lib.set_num_threads(old)
