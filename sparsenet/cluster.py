"""Where the study's accuracy work runs: in this process, or as tasks on a Dask cluster.

The accuracy stage (training per seed, one-shot sweeps, fine-tuning and gradual pruning per method x
seed) is a set of independent tasks. A runner executes them and yields each result as it finishes,
so the study saves it at once: a re-run skips finished tasks, an interrupted one loses only the
tasks in flight. Timing never runs here (it belongs on the machine being measured).

    LocalRunner()                               # in this process, one task after another
    DaskRunner("tcp://host:8786")               # an existing scheduler (`dask scheduler`)
    DaskRunner(workers=2)                       # a LocalCluster of 2 single-threaded workers

dask is imported only by DaskRunner (the optional extra `pip install sparsenet[cluster]`).
"""
from __future__ import annotations

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
            self.client = Client(address, timeout=30)
        else:
            self._cluster = LocalCluster(n_workers=int(workers or 1), threads_per_worker=1, processes=True,
                                         dashboard_address=None)
            self.client = Client(self._cluster)

    def share(self, obj):
        """Scatter a large argument once to every worker; tasks receive it by reference."""
        return self.client.scatter(obj, broadcast=True)

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
