"""The accuracy work in worker processes of this machine (cluster.ProcessRunner, the study's default
with several threads) against the same work in this process."""
import dataclasses

import numpy as np
import pytest

from sparsenet import cluster, names, study
from sparsenet.files import read_json


def _boom(x):
    if x == 2:
        raise ValueError("no twos")
    return x * 10


def _sum_shared(shared, i):
    import os
    return int(shared[i].sum()), os.getpid()


@pytest.fixture(scope="module")
def runner():
    with cluster.ProcessRunner(workers=2) as r:
        yield r


def test_every_task_runs_and_a_failure_names_its_task(runner):
    assert dict(runner.map_unordered(_boom, [(f"t{i}", (i,)) for i in (1, 3, 4)])) == {"t1": 10, "t3": 30, "t4": 40}
    with pytest.raises(cluster.TaskError, match=r"task t2 failed in a worker process: ValueError: no twos"):
        list(runner.map_unordered(_boom, [(f"t{i}", (i,)) for i in (1, 2, 3)]))
    assert dict(runner.map_unordered(_boom, [("again", (5,))])) == {"again": 50}     # the pool survives


def test_shared_arguments_reach_every_task_in_other_processes(runner):
    import os
    data = np.arange(12.0).reshape(3, 4)
    shared = runner.share(data)
    out = dict(runner.map_unordered(_sum_shared, [(i, (shared, i)) for i in range(3)]))
    assert {i: s for i, (s, _) in out.items()} == {i: int(data[i].sum()) for i in range(3)}
    assert os.getpid() not in {pid for _, pid in out.values()}


def test_process_runner_refuses_a_bad_worker_count():
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        cluster.ProcessRunner(workers=0)


def test_default_workers_follow_the_threads_up_to_a_limit():
    assert [cluster.default_workers(n) for n in (1, 2, 7, 64)] == [1, 2, 7, 8]


def test_the_study_runs_its_accuracy_work_in_processes_when_it_has_threads(monkeypatch):
    monkeypatch.setattr(study, "available_threads", lambda: 2)
    with study.make_runner(study.StudyConfig()) as r:
        assert type(r) is cluster.ProcessRunner and r.workers == 2
    monkeypatch.setattr(study, "available_threads", lambda: 1)
    assert type(study.make_runner(study.StudyConfig())) is cluster.LocalRunner


def test_accuracy_stage_in_processes_equals_the_local_run(tiny, runner, tmp_path):
    """Same seeds, one thread per task on both sides: exactly the same accuracy records."""
    from sparsenet.train import cached_train
    cfg, calls, stages = tiny
    stages = dataclasses.replace(stages, train=cached_train)     # tiny's counting wrapper does not pickle
    cfg = dataclasses.replace(cfg, widths=(), batches=(1,), sparsities=(0.0, 0.9))
    local = study.run_study(dataclasses.replace(cfg, results_dir=str(tmp_path / "local")), progress=False,
                            stages=dataclasses.replace(stages, runner=cluster.LocalRunner(threads=1)))
    procs = study.run_study(dataclasses.replace(cfg, results_dir=str(tmp_path / "procs"), cache_dir=str(tmp_path / "m2")),
                            progress=False, stages=dataclasses.replace(stages, runner=runner))
    a, b = read_json(local / "accuracy.json"), read_json(procs / "accuracy.json")
    assert a["complete"] and b["complete"]
    assert a["curves"] == b["curves"] and a["dense"] == b["dense"]
    assert {c["method"] for c in b["curves"]} == set(names.GRANULARITIES)


def test_the_default_stages_pickle_for_worker_processes():
    """The study hands Stages().train to the workers (a closure did not pickle: the default study
    failed at its first task)."""
    import pickle

    from sparsenet import train
    stage = pickle.loads(pickle.dumps(study.Stages().train))
    assert stage == study.Stages().train and stage.__name__ == "train.cached_train"
    with pytest.raises(TypeError, match="cached_train"):
        stage()                                           # calls the real function (missing arguments)
    assert train.cached_train.__name__ == "cached_train"


# --- a lazy task list: the accuracy work starts while a net still trains ---------------------------

@pytest.fixture(scope="module")
def pool():
    """A runner of their own: run_study closes the runner it is given (the `runner` above)."""
    with cluster.ProcessRunner(workers=2) as r:
        yield r


def _square(x):
    return x * x


def _sleepy_train(ds, cfg, cache_dir, progress=False):
    """A stand-in for train.cached_train (module level: it must pickle): the last seed takes longer."""
    import time

    from sparsenet.model import he_init
    time.sleep(2.0 if cfg.seed == 2 else 0.0)
    return he_init(cfg.sizes, seed=cfg.seed), {"test_acc": 0.5}


def test_a_lazy_task_list_may_wait_while_earlier_results_come_back(pool):
    import threading
    first_back = threading.Event()

    def tasks():
        yield "a", (2,)
        if not first_back.wait(30):            # eager consumption in the caller's thread would stall here
            raise AssertionError("no result came back while the task list waited")
        yield "b", (3,)

    out = []
    for key, value in pool.map_unordered(_square, tasks()):
        out.append((key, value))
        first_back.set()
    assert out == [("a", 4), ("b", 9)]


def test_a_failing_task_list_raises_in_the_caller(pool):
    def tasks():
        yield "a", (2,)
        raise RuntimeError("the list broke")

    with pytest.raises(RuntimeError, match="the list broke"):
        list(pool.map_unordered(_square, tasks()))
    assert dict(pool.map_unordered(_square, [("c", (4,))])) == {"c": 16}         # the pool survives


def test_submit_hands_back_a_pending_result(pool):
    calls = []
    p = pool.submit(_square, "sq", (5,), then=lambda v: calls.append(v) or v + 1)
    assert p.result() == 26 and p.result() == 26 and calls == [25] and p.done()
    assert cluster.ready(p) == 26 and cluster.ready(7) == 7
    bad = pool.submit(_boom, "boom", (2,))
    with pytest.raises(cluster.TaskError, match="task boom failed in a worker process: ValueError: no twos"):
        bad.result()


def test_training_hands_on_the_nets_still_training_and_the_sweep_waits(tiny, pool):
    """3 seeds on 2 workers: the stage returns with the third net still training (cluster.Pending);
    the accuracy sweep runs the trained nets' tasks first and the same records come out."""
    from sparsenet import sweep
    from sparsenet.data import to_float
    cfg, _calls, stages = tiny
    cfg = dataclasses.replace(cfg, seeds=(0, 1, 2))
    ds = stages.load_data(cfg)
    models = study.train_models(cfg, ds, progress=False,
                                stages=dataclasses.replace(stages, train=_sleepy_train, runner=pool))
    assert [isinstance(m, cluster.Pending) for m in models] == [False, False, True]
    assert not models[2].done()
    X, y = to_float(ds.train_images[:300]), ds.train_labels[:300]
    Xt, yt = to_float(ds.test_images), ds.test_labels
    kw = dict(sparsities=(0.0, 0.5), methods=("weight", "neuron"), recoveries=("oneshot",), seeds=(0, 1, 2))
    waited = sweep.run_sweep(models, X, y, X, y, Xt, yt, runner=pool, progress=False, **kw)
    ready = [cluster.ready(m) for m in models]
    assert models[2].done() and not isinstance(ready[2], cluster.Pending)
    direct = sweep.run_sweep(ready, X, y, X, y, Xt, yt, progress=False, runner=cluster.LocalRunner(threads=1), **kw)
    assert waited["complete"] and waited["curves"] == direct["curves"] and waited["dense"] == direct["dense"]


# --- interrupted: the workers stop at once, and never outlive the study --------------------------

def test_an_interrupt_stops_the_workers_without_waiting_for_their_tasks():
    """Ctrl-C or SIGTERM (cli.Terminated) in the study: close() waited for the tasks in flight (minutes
    of fine-tuning) whose results were dropped anyway."""
    import time
    r = cluster.ProcessRunner(workers=2)
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with r:
            r.submit(time.sleep, "slow", (60,))
            r.submit(time.sleep, "slow too", (60,))
            time.sleep(2.0)                    # both tasks running
            raise KeyboardInterrupt
    assert time.perf_counter() - started < 20


ORPHAN_SCRIPT = """
import os, signal, time
from sparsenet import cluster

r = cluster.ProcessRunner(workers=2)
r.submit(time.sleep, "a", (0,)).result()
print(" ".join(map(str, r._pool._processes)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_workers_end_when_the_study_process_is_killed(tmp_path):
    """A study killed outright (SIGKILL, the OOM killer) left its idle workers waiting for tasks forever."""
    import os
    import subprocess
    import sys
    import time
    env = {**os.environ, "TMPDIR": str(tmp_path)}          # the killed runner's temporary folder stays there
    proc = subprocess.run([sys.executable, "-c", ORPHAN_SCRIPT], capture_output=True, text=True, timeout=60, env=env)
    pids = [int(p) for p in proc.stdout.split()]
    assert proc.returncode == -9 and pids, proc.stderr

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + 15
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:                              # without the fix: end them here, not at the machine's next boot
        os.kill(pid, 9)
    assert not left
