"""Executors: where the heavy evidence work runs (model selection, per-series
fits, policy replays), in this process's pool or on a Dask cluster.

The engine's cycle does not run here; what runs here is work that grows with
the fleet and can be spread: candidates x folds x fits of a rolling-origin
backtest, one fit per series, one replay per candidate setting. The config's
``executor:`` section picks where::

    executor: {kind: local, workers: 2}                  # default: a process pool
    executor: {kind: dask, address: tcp://10.0.0.5:8786}  # an existing cluster
    executor: {kind: dask, local_cluster: true, workers: 2}  # a LocalCluster here

The interface (what the engine and the commands call)::

    with open_executor(config.executor) as ex:
        h = ex.share(history_arrays)            # sent once per worker (Dask)
        outcomes = ex.run(fn, [Task(key, (h, ...)), ...])
        # outcomes[i] is fn's result (a dataclass) or a TaskFailure

Rules a task follows: ``fn`` is a module-level function (importable on a
worker that has forescale installed), its arguments are plain data (numpy
arrays, names, parameters), never a store, a source or a config (which may
hold secrets), and it returns a typed result (a frozen dataclass).

Failures come back as data, never as an exception out of :meth:`run`:

- a task that raises is run again up to ``retries`` times (Dask's
  ``retries=``; the local pool does the same), then comes back as a
  :class:`TaskFailure` with ``kind="error"`` and the reason;
- a task whose worker process dies (killed, out of memory) is rescheduled on
  another worker; after ``allowed_failures`` such deaths (Dask's
  ``distributed.scheduler.allowed-failures``) it comes back with
  ``kind="lost"``. Dask charges a death to every task the dead worker held,
  so a task it calls lost runs once more alone (below), where dying makes
  it lost and finishing clears it. The local pool restarts itself the same
  way: every task unfinished when a pool process died counts one death (the
  pool cannot tell which one killed it), and one past the limit runs once
  more alone;
- a run given a ``deadline`` (seconds; the daemon's refits, see
  ``executor.deadline``) returns by then: a task still running (a fit stuck
  in a C extension, a scheduler that stopped answering) or not yet started
  comes back with ``kind="timeout"``. The local pool stops its processes
  (terminated, a fresh pool at the next run), so a hung one does not linger;
  Dask's futures are cancelled, and the workers of a ``LocalCluster`` that
  still run one are restarted (a remote cluster's worker cannot be
  interrupted: Dask has no way to stop a running task, so its thread
  finishes the task on its own). A pool of ``workers: 1`` runs the tasks in
  the caller's process: the deadline is checked between tasks only.

Runs from several threads (the daemon's templates and static targets) share
one executor at once: Dask's client is thread-safe, and the local pool's
runs submit to one pool; a pool that breaks or is stopped is replaced by
whichever run needs it next, and the tasks another run's deadline stopped
run again on the fresh pool without counting a death. A task run alone
(on either executor) is alone across runs too: its round waits for the
others' rounds to end and holds off new ones (within its deadline), so a
death then is its own. On a remote Dask cluster that means alone among
this executor's runs; other clients' tasks are not held off.

What a caller does with a failure is its own decision; where it feeds a
decision the engine falls back to reactive for that target with the reason
(never scales down).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, Sequence

from .core.errors import ConfigError, PluginError
from .core.checks import repeated

log = logging.getLogger("forescale.executor")


@dataclass(frozen=True)
class Task:
    """One unit of work: a unique ``key`` (names it in failures and on the
    Dask dashboard) and the positional arguments of the executor's ``fn``."""

    key: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class TaskFailure:
    """A task that did not produce a result: ``kind`` is ``error`` (it raised,
    every retry too), ``lost`` (its worker died ``allowed_failures`` times) or
    ``timeout`` (not finished by the run's deadline); ``reason`` is one line
    (exception type and message)."""

    key: str
    kind: Literal["error", "lost", "timeout"]
    reason: str
    attempts: int = 1
    #: a fit that found too little history: (observations it has, it needs)
    history: tuple[int, int] | None = None


@dataclass
class RunStats:
    """What the last :meth:`Executor.run` cost: tasks, wall seconds, failures."""

    tasks: int = 0
    failed: int = 0
    seconds: float = 0.0
    lost_workers: int = 0
    #: tasks that came back ``timeout`` (past the run's deadline)
    timed_out: int = 0


class Executor(Protocol):
    kind: str
    workers: int
    stats: RunStats

    def share(self, value: Any) -> Any: ...

    def run(self, fn: Callable[..., Any], tasks: Sequence[Task],
            on_done: Callable[[], None] | None = None, deadline: float | None = None) -> list[Any]: ...

    def close(self) -> None: ...


def _star(args: tuple[Any, ...], fn: Callable[..., Any]) -> Any:
    """A Dask task: ``fn(*args)`` (``Client.map`` passes one argument per task)."""
    return fn(*args)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _late(key: str, deadline: float, running: bool, attempts: int, stopped: str = "") -> TaskFailure:
    what = "still running at" if running else "not started before"
    return TaskFailure(key, "timeout", f"{what} the run's deadline ({deadline:g} s){stopped}", attempts)


#: an alone round that could not start before the run's deadline
_NOT_RUN = object()


def _is_lost(value: Any) -> bool:
    return isinstance(value, TaskFailure) and value.kind == "lost"


def _check_unique(tasks: Sequence[Task]) -> None:
    keys = [t.key for t in tasks]
    dup = repeated(keys)
    if dup:
        raise ValueError(f"task keys must be unique; repeated: {dup[:5]}")


class _Closing:
    def __enter__(self) -> "_Closing":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()  # type: ignore[attr-defined]


#: the environment of a pool process: one BLAS/OpenMP thread, as Dask's
#: nanny gives its workers (``distributed.nanny.pre-spawn-environ``). With
#: the default (a thread per core in every process) two pool processes on two
#: cores ran each Holt-Winters fit about 2.5 times slower than one process
#: (benchmarks/executor.py)
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
_ENV_LOCK = threading.Lock()


@contextmanager
def _spawn_env(env: dict[str, str]):
    """``env`` in ``os.environ`` while pool processes may be spawned (a spawned
    process copies the environment when it starts), then as it was."""
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class _Gate:
    """The rounds of an executor's runs (from several threads): any number
    at once, or one task *alone*, which waits for the others to end and
    holds off new ones, so that a worker's death then is its own."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rounds = 0
        self._alone = 0  # alone rounds running (at most 1) or waiting
        self._busy_alone = False  # one runs

    def enter(self, alone: bool, end: float | None) -> bool:
        """Wait until the round may start, at most until ``end``
        (perf_counter); False when it could not start by then."""
        with self._cond:
            if alone:
                self._alone += 1
            while (self._rounds > 0 if alone else self._alone > 0) or (alone and self._busy_alone):
                left = None if end is None else end - time.perf_counter()
                if left is not None and left <= 0:
                    if alone:
                        self._alone -= 1
                        self._cond.notify_all()
                    return False
                self._cond.wait(left)
            if alone:
                self._busy_alone = True
            else:
                self._rounds += 1
            return True

    def leave(self, alone: bool) -> None:
        with self._cond:
            if alone:
                self._alone -= 1
                self._busy_alone = False
            else:
                self._rounds -= 1
            self._cond.notify_all()


class LocalExecutor(_Closing):
    """A process pool on this machine (``workers`` processes, each with one
    BLAS thread; 1 runs the tasks in this process, which is what a test or a
    profile wants)."""

    kind = "local"

    def __init__(self, workers: int | None = None, retries: int = 2, allowed_failures: int = 3) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.retries = retries
        self.allowed_failures = allowed_failures
        self.stats = RunStats()
        self._pool: cf.ProcessPoolExecutor | None = None
        #: guards ``_pool``: runs from several threads (the daemon's
        #: templates and static targets) share it, and a broken or stopped
        #: pool is replaced by whichever run needs it next
        self._pool_lock = threading.Lock()
        #: rounds on the pool: any number at once, or one task alone
        #: (after too many pool deaths)
        self._gate = _Gate()

    def share(self, value: Any) -> Any:
        return value  # pickled with each task; a process pool has no cache

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        import multiprocessing as mp

        # spawn, not fork: the caller may hold threads (the daemon) and locks
        return cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))

    def run(self, fn: Callable[..., Any], tasks: Sequence[Task],
            on_done: Callable[[], None] | None = None, deadline: float | None = None) -> list[Any]:
        """``fn`` on every task (see the module doc); ``deadline``: seconds
        from now after which what is unfinished is a ``timeout`` failure.
        Runs from several threads share the pool's processes at once."""
        _check_unique(tasks)
        t0 = time.perf_counter()
        return self._run(fn, tasks, on_done, t0, None if deadline is None else (deadline, t0 + deadline))

    def _run(self, fn: Callable[..., Any], tasks: Sequence[Task], on_done: Callable[[], None] | None,
             t0: float, deadline: tuple[float, float] | None) -> list[Any]:
        out: dict[str, Any] = {}
        errors = {t.key: 0 for t in tasks}
        deaths = {t.key: 0 for t in tasks}
        lost_workers = 0

        def settle(task: Task, exc: BaseException | None, result: Any = None) -> bool:
            """Record a finished attempt; True when the task is settled."""
            if exc is None:
                out[task.key] = result
            else:
                errors[task.key] += 1
                if errors[task.key] <= self.retries:
                    return False
                out[task.key] = TaskFailure(task.key, "error", _reason(exc), errors[task.key] + deaths[task.key])
            if on_done:
                on_done()
            return True

        def past() -> bool:
            return deadline is not None and time.perf_counter() >= deadline[1]

        def late(task: Task, running: bool, stopped: str = "") -> None:
            assert deadline is not None
            out[task.key] = _late(task.key, deadline[0], running, errors[task.key] + deaths[task.key] + running,
                                  stopped)
            if on_done:
                on_done()

        if self.workers == 1:
            for task in tasks:
                while True:
                    if past():  # in this process: a running task cannot be stopped, only the next not started
                        late(task, False)
                        break
                    try:
                        res, exc = fn(*task.args), None
                    except Exception as e:  # noqa: BLE001 - a task's failure is data
                        res, exc = None, e
                    if settle(task, exc, res):
                        break
        else:
            pending, suspects = list(tasks), []
            while pending:
                if past():
                    for task in pending:
                        late(task, False)
                    break
                unsettled, broke = self._round(fn, pending, settle, deadline)
                for task in [t for t in pending if unsettled.get(t.key) == "timeout"]:
                    late(task, True, "; its worker process was stopped")
                for task in [t for t in pending if unsettled.get(t.key) == "late"]:
                    late(task, False)
                again = [t for t in pending if t.key in unsettled and t.key not in out]
                if broke:
                    lost_workers += 1
                    # the pool cannot tell which task killed it: each one
                    # unfinished counts a death; one past the limit is run
                    # alone below, where a death is its own
                    for task in [t for t in again if unsettled[t.key] == "died"]:
                        deaths[task.key] += 1
                        if deaths[task.key] > self.allowed_failures:
                            suspects.append(task)
                    alone = {t.key for t in suspects}
                    again = [t for t in again if t.key not in alone]
                pending = again
            for task in suspects:
                while True:
                    if past():
                        late(task, False)
                        break
                    unsettled, broke = self._round(fn, [task], settle, deadline, alone=True)
                    if unsettled.get(task.key) in ("timeout", "late"):
                        late(task, unsettled[task.key] == "timeout", "; its worker process was stopped"
                             if unsettled[task.key] == "timeout" else "")
                        break
                    if broke:
                        lost_workers += 1
                        out[task.key] = TaskFailure(task.key, "lost", f"its worker process died {deaths[task.key] + 1} "
                                                    "times, the last time running it alone",
                                                    errors[task.key] + deaths[task.key] + 1)
                        if on_done:
                            on_done()
                    if not unsettled or broke:
                        break
        failures = [v for v in out.values() if isinstance(v, TaskFailure)]
        self.stats = RunStats(len(tasks), len(failures), time.perf_counter() - t0, lost_workers,
                              sum(f.kind == "timeout" for f in failures))
        return [out[t.key] for t in tasks]

    def _round(self, fn: Callable[..., Any], tasks: Sequence[Task], settle: Callable[..., bool],
               deadline: tuple[float, float] | None = None, alone: bool = False) -> tuple[dict[str, str], bool]:
        """Submit ``tasks`` to the pool once (``alone``: with no other run's
        round beside it). Returns the tasks not settled (key -> "raised",
        "died", "stopped": by another run, "timeout", or "late": the deadline
        passed before the round could start) and whether a pool process
        died. At the deadline the pool's processes are stopped (the pool is
        replaced at the next round): a task stuck in one never finishes."""
        if not self._gate.enter(alone, None if deadline is None else deadline[1]):
            return {t.key: "late" for t in tasks}, False
        try:
            return self._round_in(fn, tasks, settle, deadline)
        finally:
            self._gate.leave(alone)

    def _round_in(self, fn: Callable[..., Any], tasks: Sequence[Task], settle: Callable[..., bool],
                  deadline: tuple[float, float] | None) -> tuple[dict[str, str], bool]:
        pool, futures = self._submit(fn, tasks)
        unsettled: dict[str, str] = {}
        broke = False

        def take(fut: cf.Future) -> None:
            nonlocal broke
            task = futures[fut]
            try:
                res, exc = fut.result(), None
            except BrokenProcessPool:
                if getattr(pool, "forescale_stopped", False):
                    # another run stopped the pool at its deadline: not this
                    # task's death; it runs again on a fresh pool
                    unsettled[task.key] = "stopped"
                    return
                broke = True
                unsettled[task.key] = "died"
                return
            except cf.CancelledError:  # another run dropped the pool before it started: again, on a fresh one
                unsettled[task.key] = "stopped"
                return
            except Exception as e:  # noqa: BLE001 - a task's failure is data
                res, exc = None, e
            if not settle(task, exc, res):
                unsettled[task.key] = "raised"

        seen: set[cf.Future] = set()
        try:
            for fut in cf.as_completed(futures, timeout=None if deadline is None else
                                       max(0.0, deadline[1] - time.perf_counter())):
                seen.add(fut)
                take(fut)
        except cf.TimeoutError:
            for fut in [f for f in futures if f not in seen]:
                if fut.done() and not fut.cancelled():
                    take(fut)
                else:
                    unsettled[futures[fut].key] = "timeout"
            self._stop_pool(pool)
            return unsettled, broke
        if broke:
            self._drop(pool)
        return unsettled, broke

    def _submit(self, fn: Callable[..., Any], tasks: Sequence[Task]
                ) -> tuple[cf.ProcessPoolExecutor, dict[cf.Future, Task]]:
        """Submit ``tasks`` to the current pool (a fresh one when another run
        broke or stopped it meanwhile)."""
        for attempt in range(5):
            with self._pool_lock:
                if self._pool is None:
                    self._pool = self._new_pool()
                pool = self._pool
            futures: dict[cf.Future, Task] = {}
            try:
                with _spawn_env(ONE_THREAD_ENV):  # the pool starts its processes on submit
                    for t in tasks:
                        futures[pool.submit(fn, *t.args)] = t
                return pool, futures
            except (BrokenProcessPool, RuntimeError):  # broken, or shut down by another run: take a fresh one
                for f in futures:
                    f.cancel()
                self._drop(pool)
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _drop(self, pool: cf.ProcessPoolExecutor) -> None:
        """Stop using ``pool`` (broken): the next submit starts a fresh one."""
        with self._pool_lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def _stop_pool(self, pool: cf.ProcessPoolExecutor) -> None:
        """Terminate ``pool``'s processes (one may be stuck in a task that
        never returns) and drop it; the next round starts a fresh one. The
        tasks other runs had on it run again there, not counted as deaths."""
        pool.forescale_stopped = True  # type: ignore[attr-defined]
        with self._pool_lock:
            if self._pool is pool:
                self._pool = None
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for p in procs:
            p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        log.warning("local executor: stopped %d pool process(es) at a run's deadline", len(procs))

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(_Closing):
    """A ``distributed.Client`` to a scheduler at ``address``, or to a
    ``LocalCluster`` of ``workers`` processes it starts (and stops on close).

    ``allowed_failures`` is set on a LocalCluster's scheduler; a remote
    scheduler uses its own ``distributed.scheduler.allowed-failures``."""

    kind = "dask"

    def __init__(self, *, address: str | None = None, workers: int | None = None,
                 threads_per_worker: int = 1, memory_limit: str = "2GiB", retries: int = 2,
                 allowed_failures: int = 3, connect_timeout: float = 30.0) -> None:
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise PluginError(f"the dask executor needs distributed: pip install 'forescale[dask]' ({exc})") from None
        self.retries = retries
        self.stats = RunStats()
        #: this executor's rounds: a task lost beside others is run alone
        self._gate = _Gate()
        self.cluster = None
        quiet = logging.getLogger("distributed")
        if quiet.level < logging.WARNING and logging.getLogger().level != logging.DEBUG:
            # its start-up chatter (scheduler at, worker registered, ...: two
            # dozen INFO lines; distributed sets its loggers to INFO) is not
            # forescale's to report; warnings pass, and --log-level DEBUG
            # shows it all
            quiet.setLevel(logging.WARNING)
        if address is None:
            with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
                self.cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1,
                                            threads_per_worker=threads_per_worker, processes=True,
                                            host="127.0.0.1", memory_limit=memory_limit,
                                            silence_logs=logging.CRITICAL,
                                            # no dashboard; the scheduler's HTTP server (health,
                                            # metrics) always starts: on a free loopback port, not 8787
                                            dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False})
            self.client = Client(self.cluster, timeout=connect_timeout)
        else:
            try:
                self.client = Client(address, timeout=connect_timeout)
            except Exception as exc:  # noqa: BLE001 - refused, timed out, or not a Dask scheduler at all
                raise ConfigError(f"cannot reach the Dask scheduler at {address}: {_reason(exc)}",
                                  "executor.address") from None
            try:  # tasks given to a scheduler without workers would wait for ever
                self.client.wait_for_workers(1, timeout=connect_timeout)
            except TimeoutError:
                self.client.close()
                raise ConfigError(f"the Dask scheduler at {address} has no workers (waited "
                                  f"{connect_timeout:g} s)", "executor.address") from None
        self.workers = len(self.client.scheduler_info(n_workers=-1)["workers"])

    def share(self, value: Any) -> Any:
        # sent to the workers once, then referenced by every task that takes it
        return self.client.scatter(value, broadcast=False, hash=False)

    def run(self, fn: Callable[..., Any], tasks: Sequence[Task],
            on_done: Callable[[], None] | None = None, deadline: float | None = None) -> list[Any]:
        """``fn`` on every task (see the module doc); ``deadline``: seconds
        from now after which the unfinished tasks' futures are cancelled and
        each comes back as a ``timeout`` failure.

        Dask charges a worker's death to every task that worker held, so a
        task lost in the run (``KilledWorker``) may only have sat beside the
        one that killed it: each is run once more alone (no other round of
        this executor's runs beside it, one at a time), where a death is its
        own. Finishing there clears it; dying there makes it lost."""
        _check_unique(tasks)
        t0 = time.perf_counter()
        end = None if deadline is None else t0 + deadline
        stamp = f"{os.getpid()}-{time.monotonic_ns()}"

        def settled(value: Any) -> None:
            if on_done and not _is_lost(value):
                on_done()

        out = self._round(fn, tasks, stamp, deadline, end, alone=False, settled=settled)
        for task in [t for t in tasks if _is_lost(out[t.key])]:
            first = out[task.key]
            again = self._round(fn, [task], f"{stamp}-alone", deadline, end, alone=True)[task.key]
            if again is _NOT_RUN:
                again = TaskFailure(task.key, "lost", f"{first.reason}; not run alone before the run's deadline",
                                    first.attempts)
            elif _is_lost(again):
                again = TaskFailure(task.key, "lost", f"{again.reason}; the last time running it alone",
                                    first.attempts + again.attempts)
            out[task.key] = again
            if on_done:
                on_done()
        failures = [v for v in out.values() if isinstance(v, TaskFailure)]
        self.stats = RunStats(len(tasks), len(failures), time.perf_counter() - t0,
                              timed_out=sum(f.kind == "timeout" for f in failures))
        return [out[t.key] for t in tasks]

    def _round(self, fn: Callable[..., Any], tasks: Sequence[Task], stamp: str, deadline: float | None,
               end: float | None, alone: bool, settled: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """Submit ``tasks`` once and wait for them until ``end``: key -> the
        result or a :class:`TaskFailure` (``_NOT_RUN`` for an alone round
        that could not start before ``end``; a round beside others that
        could not, ``timeout``). ``settled`` is called with each value."""
        from distributed import KilledWorker, as_completed

        if not self._gate.enter(alone, end):
            assert deadline is not None
            return {t.key: _NOT_RUN if alone else _late(t.key, deadline, False, 0) for t in tasks}
        try:
            name = getattr(fn, "__name__", "task")
            # one map call, not a submit per task: about 1 ms less per task on
            # the client (benchmarks/executor.py measures what is left)
            futures = self.client.map(_star, [t.args for t in tasks], fn=fn, retries=self.retries, pure=False,
                                      key=[f"{name}-{t.key}-{stamp}" for t in tasks]) if tasks else []
            by_key = {f.key: t for f, t in zip(futures, tasks)}
            out: dict[str, Any] = {}

            def left() -> float | None:
                return None if end is None else max(0.0, end - time.perf_counter())

            try:
                for fut in as_completed(futures, timeout=left()):
                    task = by_key[fut.key]
                    # result(), not a look at fut.status: a finished task whose worker
                    # then died is "lost" for a moment, until the scheduler has run it
                    # again; result() waits for that instead of calling it a failure
                    try:
                        out[task.key] = fut.result(timeout=left())
                    except KilledWorker as exc:
                        # Dask's message is a paragraph; its first sentence is the reason
                        first = str(exc).split(". ")[0]
                        out[task.key] = TaskFailure(task.key, "lost", f"KilledWorker: {first}")
                    except TimeoutError:
                        continue  # past the deadline: settled with the others below
                    except Exception as exc:  # noqa: BLE001 - the task's own error, after its retries
                        out[task.key] = TaskFailure(task.key, "error", _reason(exc), self.retries + 1)
                    if settled:
                        settled(out[task.key])
                    fut.release()
            except TimeoutError:
                pass
            late = [f for f in futures if by_key[f.key].key not in out]
            if late:
                assert deadline is not None
                stopped = self._cancel(late)
                for fut in late:
                    key = by_key[fut.key].key
                    out[key] = _late(key, deadline, True, 1, stopped)
                    if settled:
                        settled(out[key])
            return out
        finally:
            self._gate.leave(alone)

    def _cancel(self, futures: list[Any]) -> str:
        """Cancel the futures of a run past its deadline; on this executor's
        own LocalCluster, restart the workers still running one of them (a
        running task cannot be interrupted otherwise). Returns what was done,
        for the tasks' reason."""
        keys = {f.key for f in futures}
        busy: list[str] = []
        try:
            if self.cluster is not None:
                busy = [w for w, ks in self.client.processing().items() if keys & set(ks)]
            self.client.cancel(futures, force=True)
        except Exception as exc:  # noqa: BLE001 - e.g. the scheduler stopped answering: the futures are dropped
            log.warning("dask executor: cancelling %d task(s) past the deadline failed: %s", len(futures),
                        _reason(exc))
            return "; cancelling it failed"
        if not busy:
            return "; cancelled"
        try:
            self.client.restart_workers(busy, timeout=30, raise_for_error=False)
        except Exception as exc:  # noqa: BLE001 - the worker finishes the task on its own, then is free
            log.warning("dask executor: restarting %d worker(s) past the deadline failed: %s", len(busy),
                        _reason(exc))
            return "; cancelled (its worker could not be restarted)"
        log.warning("dask executor: restarted %d worker(s) still running a task past the deadline", len(busy))
        return "; cancelled and its worker restarted"

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def open_executor(cfg: Any) -> LocalExecutor | DaskExecutor:
    """The executor an ``executor:`` config section (``ExecutorConfig``) asks for."""
    if cfg.kind == "local":
        return LocalExecutor(cfg.workers, retries=cfg.retries, allowed_failures=cfg.allowed_failures)
    return DaskExecutor(address=None if cfg.local_cluster else cfg.address, workers=cfg.workers,
                        threads_per_worker=cfg.threads_per_worker, memory_limit=cfg.memory_limit,
                        retries=cfg.retries, allowed_failures=cfg.allowed_failures,
                        connect_timeout=cfg.connect_timeout.total_seconds())


__all__ = ["DaskExecutor", "Executor", "LocalExecutor", "RunStats", "Task", "TaskFailure", "open_executor"]
