"""Where the study's accuracy work runs: in this process, or as tasks on a Dask cluster.

The accuracy stage (training per seed, one-shot sweeps, fine-tuning and gradual pruning per method x
seed) is a set of independent tasks. A runner executes them and yields each result as it finishes,
so the study saves it at once: a re-run skips finished tasks, an interrupted one loses only the
tasks in flight. Timing never runs here (it belongs on the machine being measured).

    LocalRunner()                               # in this process, one task after another
    ProcessRunner(workers=2)                    # 2 single-threaded worker processes on this machine
    DaskRunner("tcp://host:8786")               # an existing scheduler (`dask scheduler`)
    DaskRunner(workers=2)                       # a LocalCluster of 2 single-threaded workers

ProcessRunner is the study's default on a machine with several cores: training a batch of 128 rows
keeps a second BLAS thread mostly idle (the default net, 15 epochs: 155 s of wall time for 310 s of
CPU on 2 threads), so two single-threaded tasks side by side finish almost twice the work. It needs
only the standard library; dask is imported only by DaskRunner (`pip install sparsenet[cluster]`).
"""
from __future__ import annotations

import os
import pickle
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from sparsenet.threads import limit


class TaskError(RuntimeError):
    """A task raised on a worker; the message names the task."""


def _run(fn: Callable, threads: Optional[int], args: tuple):
    """fn(*args) under a thread limit (a worker shares its cores with the others)."""
    if threads is None:
        return fn(*args)
    with limit(threads):
        return fn(*args)


class LocalRunner:
    """Tasks in this process, in order. threads: the thread limit of each task (None: as set)."""

    def __init__(self, threads: Optional[int] = None):
        self.threads = threads

    def share(self, obj):
        """A handle to pass large arguments (data arrays) to many tasks: here the object itself."""
        return obj

    def map_unordered(self, fn: Callable, tasks: Iterable[tuple]) -> Iterator[tuple]:
        """(key, fn(*args)) for each (key, args) of tasks, as they finish."""
        for key, args in tasks:
            try:
                yield key, _run(fn, self.threads, args)
            except Exception as exc:
                raise TaskError(f"task {key} failed: {type(exc).__name__}: {exc}") from exc

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_FED, _FEED_FAILED = object(), object()     # ProcessRunner.map_unordered: all tasks submitted / the list failed


class Pending:
    """A task started in a worker (ProcessRunner.submit); result() waits for it and returns its value
    (passed through `then` once, when given), raising TaskError (naming the task) if it failed."""

    def __init__(self, key: str, future, then: Optional[Callable] = None):
        import threading
        self.key, self._future, self._then = key, future, then
        self._value, self._has_value, self._lock = None, False, threading.Lock()

    def done(self) -> bool:
        return self._future.done()

    def result(self):
        with self._lock:                    # the sweep's task feeder and the study's thread may both ask
            if not self._has_value:
                try:
                    value = self._future.result()
                except Exception as exc:
                    raise TaskError(f"task {self.key} failed in a worker process: "
                                    f"{type(exc).__name__}: {exc}") from exc
                self._value = value if self._then is None else self._then(value)
                self._has_value = True
            return self._value


def ready(obj):
    """obj, or the value of a Pending obj (waited for)."""
    return obj.result() if isinstance(obj, Pending) else obj


class _Shared:
    """A large argument stored once in a file by ProcessRunner.share; a worker loads it at its first
    task and keeps it for the others (the path is the key)."""

    def __init__(self, path: str):
        self.path = path


_LOADED: dict = {}          # in a worker process: path -> the object of a _Shared


def _resolve(arg):
    if not isinstance(arg, _Shared):
        return arg
    if arg.path not in _LOADED:
        with open(arg.path, "rb") as f:
            _LOADED[arg.path] = pickle.load(f)
    return _LOADED[arg.path]


def _run_shared(fn: Callable, threads: Optional[int], args: tuple):
    return _run(fn, threads, tuple(_resolve(a) for a in args))


def _init_worker(parent: int, every_s: float = 0.5) -> None:
    """Worker initializer. A daemon thread ends this worker once the process that started it is gone
    (killed: SIGKILL, the OOM killer): the pool cannot tell it so, and an orphan would wait for tasks
    forever, holding its copy of the training data. tqdm's bars take a thread lock: its default
    inter-process lock is a semaphore that a worker stopped on an interrupt (ProcessRunner.__exit__)
    leaves behind, with a "leaked semaphore" warning at exit."""
    from tqdm import tqdm
    tqdm.set_lock(threading.RLock())

    def watch():
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)
    threading.Thread(target=watch, name="sparsenet-parent-watch", daemon=True).start()


def default_workers(available: int, limit: int = 8) -> int:
    """Worker processes of the study's default runner: one per available thread, at most `limit`
    (each holds the training data, ~0.3 GB for MNIST, and the nets of its task)."""
    return max(1, min(int(available), int(limit)))


class ProcessRunner(LocalRunner):
    """Tasks in `workers` processes of this machine (the standard library's process pool, started
    with spawn), each task under a limit of `threads` threads (default 1). Task functions and
    arguments must pickle; share() writes a large argument to a private temporary folder once."""

    def __init__(self, workers: int, threads: int = 1):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        super().__init__(threads)
        self.workers = workers
        self._tmp = tempfile.TemporaryDirectory(prefix="sparsenet-share-")
        self._n_shared = 0
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker, initargs=(os.getpid(),))

    def share(self, obj):
        self._n_shared += 1
        path = Path(self._tmp.name) / f"shared-{os.getpid()}-{self._n_shared}.pickle"
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        return _Shared(str(path))

    def submit(self, fn: Callable, key: str, args: tuple, then: Optional[Callable] = None) -> Pending:
        """Start fn(*args) in a worker now; Pending.result() waits for it (see Pending for `then`)."""
        return Pending(key, self._pool.submit(_run_shared, fn, self.threads, args), then)

    def map_unordered(self, fn: Callable, tasks: Iterable[tuple]) -> Iterator[tuple]:
        """As LocalRunner.map_unordered. `tasks` is read in a thread of its own while finished tasks
        are handed back, so a lazy iterable may wait (say, for a net still training in a worker) with
        its earlier tasks running and their results saved meanwhile."""
        import queue
        import threading
        done: queue.Queue = queue.Queue()
        futures, stop = [], threading.Event()

        def feed():
            n = 0
            try:
                for key, args in tasks:
                    if stop.is_set():
                        return
                    fut = self._pool.submit(_run_shared, fn, self.threads, args)
                    futures.append(fut)
                    fut.add_done_callback(lambda f, key=key: done.put((key, f)))
                    n += 1
            except BaseException as exc:            # the task list itself failed: raise it in the caller
                done.put((_FEED_FAILED, exc))
                return
            done.put((_FED, n))

        threading.Thread(target=feed, name="sparsenet-feed", daemon=True).start()
        expected, got = None, 0
        try:
            while expected is None or got < expected:
                key, item = done.get()
                if key is _FEED_FAILED:
                    raise item
                if key is _FED:
                    expected = item
                    continue
                got += 1
                try:
                    result = item.result()
                except Exception as exc:
                    raise TaskError(f"task {key} failed in a worker process: {type(exc).__name__}: {exc}") from exc
                yield key, result
        finally:                    # an error, an interrupt or a caller that stops early: drop the rest
            stop.set()
            for fut in list(futures):
                fut.cancel()

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._tmp.cleanup()

    def __exit__(self, exc_type, *exc):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._stop_workers()
        self.close()

    def _stop_workers(self):
        """End the worker processes now: on an interrupt (Ctrl-C, SIGTERM) the results of the tasks in
        flight would be dropped, and close() would wait for them (minutes for a fine-tuning task)."""
        for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
            proc.terminate()


def _check_address(address: str) -> None:
    """ValueError naming --scheduler when a tcp/tls/ws address has no valid host:port, checked before a
    Client is made (a Client failing on its address leaves its IO loop behind: the next LocalCluster
    of the process then failed to start its own)."""
    from distributed.comm import get_address_host_port, parse_address
    try:
        if parse_address(address)[0] in ("tcp", "tls", "ws", "wss"):
            get_address_host_port(address)
    except ValueError as exc:
        raise ValueError(f"--scheduler {address!r} is not a Dask scheduler address ({exc}); give one such as "
                         "tcp://host:8786") from None


class DaskRunner(LocalRunner):
    """Tasks on a Dask cluster: an existing scheduler (address) or a LocalCluster of `workers`
    single-threaded worker processes. Each task runs with `threads` threads (default 1)."""

    def __init__(self, address: Optional[str] = None, workers: Optional[int] = None, threads: int = 1):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise RuntimeError("running on a cluster needs dask.distributed: pip install 'sparsenet[cluster]'") \
                from None
        super().__init__(threads)
        self._cluster = None
        if address:
            _check_address(address)
            self.client = Client(address, timeout=30)
        else:
            self._cluster = LocalCluster(n_workers=int(workers or 1), threads_per_worker=1, processes=True,
                                         dashboard_address=None)
            self.client = Client(self._cluster)

    def share(self, obj):
        """Scatter a large argument once to every worker; tasks receive it by reference. Each call gets a
        key of its own (hash=False): with the default content-hash key, scattering data equal to an
        earlier share whose future was just dropped can race with that key's release and leave the new
        tasks with a lost dependency (dask/distributed#8576; seen here as FutureCancelledError)."""
        return self.client.scatter(obj, broadcast=True, hash=False)

    def map_unordered(self, fn: Callable, tasks: Iterable[tuple]) -> Iterator[tuple]:
        from dask.distributed import as_completed
        futures = {}
        for key, args in tasks:
            fut = self.client.submit(_run, fn, self.threads, args, pure=False, key=f"sparsenet-{key}-{id(args)}")
            futures[fut] = key
        for fut in as_completed(futures):
            key = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:
                for other in futures:
                    other.cancel()
                raise TaskError(f"task {key} failed on a worker: {type(exc).__name__}: {exc}") from exc
            yield key, result

    def close(self):
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()
