"""The accuracy work on a Dask LocalCluster (2 worker processes) against the same work in this process."""
import dataclasses

import pytest

from sparsenet import cluster, names, study
from sparsenet.files import read_json

distributed = pytest.importorskip("dask.distributed")


def _boom(x):
    if x == 2:
        raise ValueError("no twos")
    return x * 10


def test_local_runner_yields_every_task_and_names_a_failure():
    r = cluster.LocalRunner(threads=1)
    assert dict(r.map_unordered(_boom, [("a", (1,)), ("b", (3,))])) == {"a": 10, "b": 30}
    with pytest.raises(cluster.TaskError, match=r"task two failed: ValueError: no twos"):
        list(r.map_unordered(_boom, [("one", (1,)), ("two", (2,))]))


@pytest.mark.parametrize("address", ["foo", "tcp://host", "host:http"])
def test_a_scheduler_address_without_a_port_is_a_clear_error(address):
    with pytest.raises(ValueError, match=rf"--scheduler '{address}' is not a Dask scheduler address \(.*\); "
                                         r"give one such as tcp://host:8786"):
        cluster.DaskRunner(address)


@pytest.fixture(scope="module")
def dask_runner():
    with cluster.DaskRunner(workers=2) as runner:
        yield runner


def test_a_task_failing_on_a_worker_names_the_task(dask_runner):
    assert dict(dask_runner.map_unordered(_boom, [(f"t{i}", (i,)) for i in (1, 3, 4)])) == {
        "t1": 10, "t3": 30, "t4": 40}
    with pytest.raises(cluster.TaskError, match=r"task t2 failed on a worker: ValueError: no twos"):
        list(dask_runner.map_unordered(_boom, [(f"t{i}", (i,)) for i in (1, 2, 3)]))


def _total(a):
    return float(a.sum())


def test_sharing_equal_data_again_after_dropping_it_keeps_the_tasks_fed(dask_runner):
    """Each share has a key of its own: equal data scattered right after an earlier share was dropped
    must not race with that key's release (dask/distributed#8576, a lost dependency)."""
    import numpy as np
    x = np.arange(1000, dtype=np.float32)
    first = dask_runner.share(x)
    second = dask_runner.share(x.copy())
    assert first.key != second.key
    for _ in range(20):                     # drop a share and scatter equal data at once, then use it
        shared = dask_runner.share(x)
        assert dict(dask_runner.map_unordered(_total, [("t", (shared,))])) == {"t": float(x.sum())}
        del shared


def test_accuracy_stage_on_the_cluster_equals_the_local_run(tiny, dask_runner, tmp_path):
    """Same seeds, one thread per task on both sides: exactly the same accuracy records."""
    cfg, calls, stages = tiny
    cfg = dataclasses.replace(cfg, widths=(), batches=(1,), sparsities=(0.0, 0.9))
    local = study.run_study(dataclasses.replace(cfg, results_dir=str(tmp_path / "local")), progress=False,
                            stages=dataclasses.replace(stages, runner=cluster.LocalRunner(threads=1)))
    remote = study.run_study(dataclasses.replace(cfg, results_dir=str(tmp_path / "dask")), progress=False,
                             stages=dataclasses.replace(stages, runner=dask_runner))
    a, b = read_json(local / "accuracy.json"), read_json(remote / "accuracy.json")
    assert a["complete"] and b["complete"]
    assert a["curves"] == b["curves"] and a["dense"] == b["dense"]
    assert {c["method"] for c in b["curves"]} == set(names.GRANULARITIES)

