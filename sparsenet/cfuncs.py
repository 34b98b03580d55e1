"""Kernels compiled once and called by address: what keeps a parallel driver's cold compile short.

Numba links the LLVM module of every function a jitted function calls into the caller's module and
optimises and generates machine code for all of it again (`CodeLibrary.add_linking_library`,
`_optimize_final_module`). A parallel driver (a prange) is four such modules: the parfor's gufunc,
its two wrappers and the driver. So a chain of register tiles called from a parallel region was
compiled five or six times over: the nm engine at batch 256 spent 6.9 s of LLVM on six copies of the
same tiles, 10 s cold in all (session 11, Xeon AVX-512, a slow phase of the VM).

`Callback(py_func)` compiles py_func as a C callback (`numba.cfunc`) for the types of the arguments
it is first asked for, on first use (nothing at import) and cached on disk like every kernel. A
driver takes the callback's address (an int) and calls it through `run_workers` (the batch split:
one worker a thread) or, inside a driver that runs every layer, `run_parts` (a layer's parts over
the threads, or one part on this thread): the driver's modules hold a call, not the kernel, and the
kernel is compiled once. The address is an argument
at every call, so a cached driver never holds a stale one. An int, not the CFunc object: Numba's
dispatcher types a CFunc argument in Python (~20 us a call), an int in C. The call costs an
indirect jump, made once per worker. The types are exact: the driver passes what the callback was
compiled for (arrays of the same dtypes and dimensions, int64 scalars); `run_workers` builds the
function type from the arguments it is given.
"""
from typing import Optional

import numpy as np
from numba import cfunc, get_num_threads, njit, prange, typeof, types
from numba.core import cgutils
from numba.extending import intrinsic

OPTS = dict(cache=True, boundscheck=False, fastmath={"contract"})

# The argument types of every call by address Numba has typed in this process (a driver compiled, not
# loaded from the cache) and of every callback compiled: a driver passing other types than its
# callback was compiled for would be undefined behaviour, so a test (tests/test_cfuncs.py) compiles
# every engine's drivers afresh and checks the first set lies in the second.
TYPED_CALLS: set = set()
COMPILED: set = set()


class Callback:
    """py_func, compiled as a C callback (void result) per distinct argument types, lazily."""

    def __init__(self, py_func):
        self.py_func = py_func
        self.__name__, self.__module__ = py_func.__name__, py_func.__module__
        self.__doc__ = py_func.__doc__
        self._compiled = {}

    def address(self, *args, cache: Optional[dict] = None) -> int:
        """The address of the callback compiled for arguments of these types (what drivers take: a
        Python int is typed in C by Numba's dispatcher; a CFunc argument costs ~20 us a call).
        Finding it from the arguments costs ~5 us; a caller whose arguments never change type (an
        engine: its own arrays, float32 C-contiguous inputs) passes a dict it keeps as `cache`."""
        if cache is not None:
            addr = cache.get(self)
            if addr is None:
                addr = cache[self] = self.of(*args).address
            return addr
        return self.of(*args).address

    def cached(self, cache: Optional[dict]) -> int:
        """The address `cache` holds for this callback, 0 if none (a check before packing arguments)."""
        return cache.get(self, 0) if cache is not None else 0

    def of(self, *args):
        """The compiled callback for arguments of these types (numpy arrays and Python scalars)."""
        key = tuple((a.dtype.char, a.ndim, a.flags.c_contiguous, a.flags.f_contiguous, a.flags.writeable)
                    if isinstance(a, np.ndarray) else type(a) for a in args)
        fn = self._compiled.get(key)
        if fn is None:
            sig = tuple(typeof(a) for a in args)
            fn = self._compiled[key] = cfunc(types.void(*sig), **OPTS)(self.py_func)
            COMPILED.add(sig)
        return fn

    def inspect_llvm(self) -> dict:
        """LLVM IR of every compiled signature (as a dispatcher's inspect_llvm)."""
        return {fn._sig: fn.inspect_llvm() for fn in self._compiled.values()}


def threads(n_threads: Optional[int]) -> int:
    """n_threads, or Numba's current thread count when None (what a prange would use)."""
    return get_num_threads() if n_threads is None else int(n_threads)


def callback(py_func) -> Callback:
    """Decorator: py_func becomes a Callback (see the module docstring)."""
    return Callback(py_func)


@intrinsic
def _function(typingctx, addr, args):
    """The C callback at `addr` as a first-class function taking args' types (a tuple): the caller
    passes exactly the dtypes and dimensions Callback.address was asked for."""
    fnty = types.FunctionType(types.void(*args.types))
    TYPED_CALLS.add(tuple(types.unliteral(t) for t in args.types))

    def codegen(context, builder, sig, llargs):
        f = cgutils.create_struct_proxy(fnty)(context, builder)
        f.c_addr = builder.inttoptr(llargs[0], cgutils.voidptr_t)
        f.py_addr = cgutils.get_null_value(cgutils.voidptr_t)
        f.jit_addr = cgutils.get_null_value(cgutils.voidptr_t)
        return f._getvalue()

    return fnty(addr, args), codegen


@njit(inline="always", **OPTS)
def invoke(addr, args):
    """The callback at addr called with the tuple args (inline: for a prange body)."""
    _function(addr, args)(*args)


@njit(inline="always", **OPTS)
def run_parts(addr, n_parts, args):
    """The callback at addr called as (*args, n_parts, w) for w in 0..n_parts - 1 over the threads
    of the parallel driver it is inlined into (a prange), or as (*args, 1, 0) on this thread when
    n_parts is 1: one layer's parts in a driver that runs every layer."""
    if n_parts > 1:
        for w in prange(n_parts):
            invoke(addr, args + (n_parts, np.int64(w)))
    else:
        invoke(addr, args + (np.int64(1), np.int64(0)))


def run(addr, n_workers, *args):
    """The callback at addr called as (*args, w) for w in 0..n_workers - 1: one worker on the calling
    thread (a parallel region of one thread cost 3-5 % of a csr batch of 16 on one thread), more on
    the threads (run_workers)."""
    if n_workers == 1:
        _run_one(addr, *args)
    else:
        run_workers(addr, n_workers, *args)


@njit(**OPTS)
def _run_one(addr, *args):
    a = args + (np.int64(0),)
    _function(addr, a)(*a)


@njit(parallel=True, **OPTS)
def run_workers(addr, n_workers, *args):
    """The callback at addr called as (*args, w) for w in 0..n_workers - 1, one a thread: a parallel
    region whose body is a call."""
    for w in prange(n_workers):
        a = args + (np.int64(w),)
        _function(addr, a)(*a)
