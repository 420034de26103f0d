"""The executors on real worker processes: a ``distributed.LocalCluster`` of
three worker processes on 127.0.0.1 and the local process pool. A task kills
its own worker process mid-run; the run still completes (Dask reschedules
it, the pool restarts). A task that always fails comes back as a
``TaskFailure`` with its reason, beside the results of the others."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from engine.config import ExecutorConfig
from engine.core.errors import ConfigError
from engine.executor import DaskExecutor, LocalExecutor, Task, TaskFailure, open_executor
from tests.support import executor_tasks as et

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def dask_ex():
    with DaskExecutor(workers=3, memory_limit="300MiB", retries=2, allowed_failures=2) as ex:
        yield ex


@pytest.fixture(params=["local", "dask"])
def executor(request, dask_ex):
    if request.param == "dask":
        yield dask_ex
    else:
        with LocalExecutor(workers=2, retries=2, allowed_failures=2) as ex:
            yield ex


def test_a_worker_killed_mid_run_is_retried_and_the_run_completes(executor, tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    tasks = [Task(f"sq{i}", (i, 0.05)) for i in range(6)]
    results = executor.run(et.square, tasks[:3])  # the workers are up and busy before the kill
    results += executor.run(et.die_once, [Task("killer", (str(marker), 7))])
    results += executor.run(et.square, tasks[3:])
    assert marker.exists(), "the task never killed its worker"
    killed = int(marker.read_text())
    assert not et.pid_alive(killed), "the worker process that ran the task is gone"
    assert [r.value for r in results] == [0, 1, 4, 49, 9, 16, 25]
    assert results[3].pid != killed  # the retry ran in another (or a restarted) process


def test_a_killed_worker_does_not_lose_the_tasks_running_beside_it(executor, tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    tasks = [Task(f"sq{i}", (i, 0.2)) for i in range(4)] + [Task("killer", (str(marker), 5))]
    fns = {"killer": et.die_once}
    results = executor.run(et.dispatch, [Task(t.key, (fns.get(t.key, et.square).__name__, *t.args)) for t in tasks])
    assert marker.exists()
    assert not [r for r in results if isinstance(r, TaskFailure)]
    assert [r.value for r in results] == [0, 1, 4, 9, 25]


def test_a_task_that_always_fails_comes_back_as_a_typed_failure_with_its_reason(executor) -> None:
    results = executor.run(et.dispatch, [Task("good", ("square", 3)), Task("bad", ("always_raise", 4))])
    assert results[0].value == 9
    bad = results[1]
    assert isinstance(bad, TaskFailure)
    assert (bad.key, bad.kind, bad.reason) == ("bad", "error", "ValueError: no square for 4 today")
    assert bad.attempts == 3  # the first run and two retries
    assert executor.stats.failed == 1 and executor.stats.tasks == 2


def test_a_transient_error_is_retried(executor, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    [res] = executor.run(et.raise_until, [Task("flaky", (str(counter), 2, 6))])
    assert res.value == 36
    assert counter.read_text() == "3"


def test_a_task_that_kills_every_worker_is_lost_not_hung(executor) -> None:
    results = executor.run(et.dispatch, [Task("doomed", ("always_die", 1)), Task("fine", ("square", 2))])
    doomed = results[0]
    assert isinstance(doomed, TaskFailure) and doomed.kind == "lost", doomed
    assert results[1].value == 4
    # the executor still works afterwards
    assert executor.run(et.square, [Task("after", (3,))])[0].value == 9


def test_a_task_past_the_deadline_is_a_timeout_and_its_worker_does_not_linger(executor, tmp_path: Path) -> None:
    marker = tmp_path / "hung"
    tasks = [Task("stuck", ("hang", str(marker), 120))] + [Task(f"sq{i}", ("square", i, 0.1)) for i in range(3)]
    t0 = time.monotonic()
    results = executor.run(et.dispatch, tasks, deadline=4)
    took = time.monotonic() - t0
    stuck = results[0]
    assert isinstance(stuck, TaskFailure) and stuck.kind == "timeout", stuck
    assert "still running at the run's deadline (4 s)" in stuck.reason, stuck.reason
    assert [r.value for r in results[1:]] == [0, 1, 4]  # the others finished as always
    assert took < 40, took  # the run ended at its deadline, not when the task would have
    assert executor.stats.timed_out == 1 and executor.stats.failed == 1
    # the process stuck in the task was stopped (the pool's, or the
    # LocalCluster worker restarted), not left sleeping
    assert et.gone(int(marker.read_text())), "the stuck worker process is still there"
    # the executor still works afterwards, and a run without a deadline waits
    assert executor.run(et.square, [Task("after", (3, 0.2))])[0].value == 9


def _beside_a_stuck_run(ex, marker: Path, squares: list[Task]) -> tuple[dict[str, list], object]:
    """Run a (one task stuck past its 4 s deadline) in a thread and, once
    the stuck task runs, b (``squares``) beside it: both runs' results and
    b's stats."""
    import threading

    got: dict[str, list] = {}
    a = threading.Thread(target=lambda: got.setdefault("a", ex.run(
        et.dispatch, [Task("stuck", ("hang", str(marker), 120))], deadline=4)))
    a.start()
    for _ in range(200):  # the stuck task is running
        if marker.exists():
            break
        time.sleep(0.05)
    got["b"] = ex.run(et.square, squares)
    b_stats = ex.stats
    a.join(60)
    return got, b_stats


def test_runs_from_two_threads_share_the_pool_and_one_stopped_at_its_deadline_costs_the_other_nothing(
        tmp_path: Path) -> None:
    # no worker death allowed: were the other run's tasks, killed with the
    # stopped pool, counted as deaths, they would be run alone and blamed
    with LocalExecutor(workers=2, retries=0, allowed_failures=0) as ex:
        # b's tasks are in flight at a's deadline; b ends after a: its tasks
        # ran again on a fresh pool
        got, b_stats = _beside_a_stuck_run(ex, tmp_path / "hung", [Task(f"sq{i}", (i, 1.5)) for i in range(4)])
    assert got["a"][0].kind == "timeout"
    assert [r.value for r in got["b"]] == [0, 1, 4, 9]
    assert (b_stats.tasks, b_stats.failed, b_stats.lost_workers) == (4, 0, 0)
    assert len({r.pid for r in got["b"]}) >= 2


def test_a_task_run_alone_after_pool_deaths_is_alone_across_runs_too() -> None:
    import threading

    # no death allowed: every task unfinished when the killer breaks the
    # pool is run alone next; were two alone at once, the killer's death
    # would be charged to the other run's task too, and it would be lost
    got: dict[str, list] = {}
    with LocalExecutor(workers=2, retries=0, allowed_failures=0) as ex:
        runs = [threading.Thread(target=lambda: got.setdefault("killer", ex.run(
                    et.dispatch, [Task("doomed", ("always_die", 1))]))),
                threading.Thread(target=lambda: got.setdefault("squares", ex.run(
                    et.square, [Task(f"sq{i}", (i, 0.3)) for i in range(4)])))]
        for t in runs:
            t.start()
        for t in runs:
            t.join(120)
    assert got["killer"][0].kind == "lost" and "running it alone" in got["killer"][0].reason
    assert [r.value for r in got["squares"]] == [0, 1, 4, 9]


def test_a_run_that_cannot_start_before_its_deadline_times_out_every_task() -> None:
    with LocalExecutor(workers=1) as ex:
        results = ex.run(et.square, [Task("a", (2, 0.3)), Task("b", (3,))], deadline=0.1)
    assert results[0].value == 4  # in this process: the running task cannot be stopped
    assert results[1].kind == "timeout" and "not started before the run's deadline" in results[1].reason


def test_shared_history_is_sent_once_and_read_by_every_task(executor) -> None:
    arr = np.arange(10_000, dtype=float)
    h = executor.share(arr)
    results = executor.run(et.total, [Task(f"t{i}", (h, i)) for i in range(4)])
    assert [r for r in results] == [float(arr[i:].sum()) for i in range(4)]


def test_in_process_executor_retries_and_fails_alike() -> None:
    ex = LocalExecutor(workers=1, retries=1)
    results = ex.run(et.dispatch, [Task("a", ("square", 2)), Task("b", ("always_raise", 1))])
    assert results[0].value == 4 and results[0].pid == os.getpid()
    assert results[1] == TaskFailure("b", "error", "ValueError: no square for 1 today", 2)


def test_the_local_cluster_serves_no_dashboard(dask_ex) -> None:
    import urllib.error
    import urllib.request

    port = dask_ex.cluster.scheduler.http_server.port
    assert port != 8787
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5)


def test_task_keys_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        LocalExecutor(workers=1).run(et.square, [Task("a", (1,)), Task("a", (2,))])


@pytest.mark.parametrize("section, message", [
    ({"kind": "dask"}, "needs either address"),
    ({"kind": "dask", "address": "tcp://10.0.0.5:8786", "local_cluster": True}, "needs either address"),
    ({"kind": "local", "address": "tcp://10.0.0.5:8786"}, "for kind: dask"),
    ({"kind": "dask", "address": "http://10.0.0.5:8786"}, "address"),
    ({"kind": "dask", "address": "tcp://10.0.0.5:8786", "workers": 4}, "a remote cluster has its own"),
    ({"kind": "spark"}, "kind"),
    ({"kind": "local", "workers": 0}, "workers"),
    ({"kind": "local", "deadline": "0s"}, "executor.deadline: 0s must be positive"),
    ({"kind": "local", "deadline": "2m"}, "executor.deadline: 2m is not shorter than the timeout of target t (2m)"),
])
def test_executor_section_errors_name_the_field(section, message) -> None:
    from engine.config import parse_config

    doc = {"executor": section, "targets": [{"name": "t", "source": {"type": "csv", "path": "x.csv"},
                                             "policy": {"capacity_per_replica": 1, "max_replicas": 3}}]}
    with pytest.raises(ConfigError, match="executor") as err:
        parse_config(doc)
    assert message in str(err.value)


def test_the_refits_deadline_defaults_to_half_the_shorter_of_the_cycles_interval_and_timeout() -> None:
    from engine.config import parse_config

    def target(**over):
        return {"name": "t", "source": {"type": "csv", "path": "x.csv"},
                "policy": {"capacity_per_replica": 1, "max_replicas": 3}, **over}

    for over, want in (({}, 60), ({"interval": "1m"}, 30), ({"interval": "1h", "timeout": "10m"}, 300)):
        cfg = parse_config({"executor": {"kind": "local"}, "targets": [target(**over)]})
        assert cfg.executor.deadline_for(cfg.targets[0]).total_seconds() == want, over
    cfg = parse_config({"executor": {"kind": "local", "deadline": "45s"}, "targets": [target()]})
    assert cfg.executor.deadline_for(cfg.targets[0]).total_seconds() == 45


def test_an_unreachable_scheduler_is_one_clear_error() -> None:
    cfg = ExecutorConfig(kind="dask", address="tcp://127.0.0.1:9", connect_timeout="1s")
    with pytest.raises(ConfigError, match="executor.address: cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        open_executor(cfg)


def test_pool_processes_get_one_blas_thread_and_the_callers_environment_is_kept(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with LocalExecutor(workers=2) as ex:
        got = ex.run(et.environ, [Task(f"e{i}", ("OMP_NUM_THREADS",)) for i in range(4)])
    assert got == ["1"] * 4
    assert "OMP_NUM_THREADS" not in os.environ


def test_the_pool_blames_only_the_task_that_dies_when_run_alone() -> None:
    # every pool death is charged to all unfinished tasks; with no deaths
    # allowed, both tasks are run alone at once: only the killer is lost
    with LocalExecutor(workers=2, allowed_failures=0) as ex:
        results = ex.run(et.dispatch, [Task("doomed", ("always_die", 1)), Task("slow", ("square", 5, 0.5))])
    assert results[0].kind == "lost" and "running it alone" in results[0].reason
    assert results[1].value == 25


def test_dask_blames_only_the_task_that_kills_its_worker_not_those_beside_it() -> None:
    # Dask charges a death to every task the worker held: with one worker
    # and no death allowed, the squares queued beside the killer come back
    # KilledWorker too; run again alone, they finish and the killer is lost
    with DaskExecutor(workers=1, memory_limit="300MiB", retries=0, allowed_failures=0) as ex:
        results = ex.run(et.dispatch, [Task("doomed", ("always_die", 1))]
                         + [Task(f"sq{i}", ("square", i, 0.3)) for i in range(3)])
        assert [getattr(r, "value", r) for r in results[1:]] == [0, 1, 4]
        assert results[0].kind == "lost" and "running it alone" in results[0].reason, results[0]
        assert (ex.stats.tasks, ex.stats.failed) == (4, 1)


def test_dask_runs_a_task_alone_with_no_other_runs_task_beside_it() -> None:
    import threading

    # the killer dies a second into each attempt, with the other run's
    # square queued beside it: both are lost, and both are run alone next.
    # Were the two alone at once, the square would sit beside the killer again
    got: dict[str, list] = {}
    with DaskExecutor(workers=1, memory_limit="300MiB", retries=0, allowed_failures=0) as ex:
        killer = threading.Thread(target=lambda: got.setdefault("killer", ex.run(
            et.dispatch, [Task("doomed", ("die_after", 1.0))])))
        killer.start()
        time.sleep(0.3)  # the killer is running
        got["square"] = ex.run(et.square, [Task("sq", (3, 0.1))])
        killer.join(120)
    assert getattr(got["square"][0], "value", got["square"][0]) == 9
    assert got["killer"][0].kind == "lost" and "running it alone" in got["killer"][0].reason


def test_dask_a_task_beside_one_restarted_at_its_deadline_is_not_lost(tmp_path: Path) -> None:
    # the worker running the stuck task is restarted at run a's deadline;
    # run b's tasks queued on it are charged that death by Dask
    with DaskExecutor(workers=1, memory_limit="300MiB", retries=0, allowed_failures=0) as ex:
        got, _ = _beside_a_stuck_run(ex, tmp_path / "hung", [Task(f"sq{i}", (i, 0.2)) for i in range(3)])
    assert got["a"][0].kind == "timeout"
    assert [getattr(r, "value", r) for r in got["b"]] == [0, 1, 4]


def test_a_scheduler_without_workers_is_one_clear_error_not_a_hang() -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      scheduler_kwargs={"dashboard": False}) as cluster:
        cfg = ExecutorConfig(kind="dask", address=cluster.scheduler_address, connect_timeout="1s")
        with pytest.raises(ConfigError, match="has no workers"):
            open_executor(cfg)


def test_a_run_on_a_scheduler_that_stopped_answering_returns_at_its_deadline() -> None:
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                              "--port", str(port), "--no-dashboard"], **quiet)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}",
                               "--nthreads", "1", "--no-dashboard"], **quiet)
    try:
        ex = DaskExecutor(address=f"tcp://127.0.0.1:{port}", connect_timeout=60)
        assert ex.run(et.square, [Task("before", (2,))])[0].value == 4
        os.kill(sched.pid, signal.SIGSTOP)  # its connection stays open; nothing answers on it
        t0 = time.monotonic()
        [late] = ex.run(et.square, [Task("after", (3,))], deadline=3)
        took = time.monotonic() - t0
        assert isinstance(late, TaskFailure) and late.kind == "timeout", late
        assert took < 15, took  # at the deadline, not never
        os.kill(sched.pid, signal.SIGCONT)
        ex.close()
    finally:
        worker.kill()
        sched.kill()
        worker.wait(10)
        sched.wait(10)
