"""The unattended loop: each target's cycle on its own interval.

- Targets are independent: each cycle runs in its own thread, with the
  target's own store connection, source and actuator, so one target's failure
  or slowness never blocks another. At most one cycle of a target runs at a
  time.
- Each cycle starts on the target's interval grid plus a random jitter
  (``jitter``), so many targets do not hit one metric backend at once.
- A cycle that outlives its ``timeout`` is *abandoned*: reported at once as
  an error (log line, ``on_result`` callback, metrics). The next start comes
  on schedule all the same, beside it, on a fresh LiveTarget (its own store
  connection, a fresh fetch, the model restored from its checkpoint): a
  thread cannot be killed safely, but it need not hold its target. The two
  share the target's *acting* lock and the abandoned one is told it was
  superseded, so they never act at once (the newer records ``skipped``
  while the older is inside the actuator; the older acts no more). While an
  abandoned cycle and the one started beside it both run, further starts
  are skipped. Whatever a late cycle finally does is still recorded.
- SIGTERM/SIGINT: stop starting cycles, give running ones ``grace`` seconds
  to finish, then exit. A cycle still running then is abandoned with the
  process; if it was acting, its intent is in the store and the next start
  reconciles it (:meth:`engine.cycle.LiveTarget.reconcile`).
- SIGHUP, or a change of the config file's modification time: reload. The
  new file is validated first and replaces the running config only if valid;
  a mode change takes effect at the target's next cycle, without a restart.
- Templates (``templates[]``, :mod:`engine.fleet`): the targets of one
  template run together in one thread, one batched cycle per interval
  (:class:`TemplateWorker`: one range query, the global model's forecasts
  in one batched call, the records in one transaction per part), each
  target still deciding alone; the template's query is asked every
  ``discover_every`` which series exist, adding and retiring targets
  (their state stays in the store under their names). The file's targets
  that share a global model (:func:`engine.fleet.shared_model_key`) run the
  same way, one :class:`StaticBatch` each, each target keeping its own
  store, source and actuator. A batched cycle past its timeout is abandoned
  as one target's is: the next starts beside it (:class:`BatchWorker`).
- One daemon per SQLite state file (:meth:`engine.store.Store.lock`). On a
  PostgreSQL state several replicas run, each leading the shards of
  targets whose lease it holds (:mod:`engine.leases`): a target's cycle
  starts only on the replica that holds its lease, and recording an intent
  to act checks the lease in the same transaction (the fence), so two
  replicas never act on one target. A replica that gains a shard starts its
  targets' cycles at once; their first step reconciles what the previous
  leader left unfinished.
- Once an hour (``HOUSEKEEPING_EVERY``): the state file is pruned as the
  config's ``retention`` says (:func:`prune_cutoffs`), with the model
  checkpoints of targets retired longer than ``retention.models``
  (:meth:`Daemon.prune_models`), and a summary of the
  cycles that fell back to reactive, by reason, is logged (the same counts
  are the ``forescale_fallback_cycles_total{target,reason}`` metric): a
  prediction that quietly switched itself off shows up there.

The scheduler reads ``monotonic`` for timing and the injected ``clock`` once
per cycle for ``now``; tests drive both by hand (:meth:`Daemon.tick`).
"""

from __future__ import annotations

import hashlib
import logging
import random
import sqlite3
import signal
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from . import audit
from .build import build_actuator as default_build_actuator, build_source as default_build_source, check_actuator
from .build import build_resources
from .core.clock import Clock, SystemClock
from .config import Config, TargetConfig, TargetTemplate, load_config
from .cycle import CycleResult, LiveTarget
from .fleet import (BatchReport, Discovery, TemplateFetch, claimed, discover, member_target, run_batch,
                    run_refitting_elsewhere, shared_model_key)
from .core.errors import ConfigError, StateError
from .core.units import format_duration
from .store import Store, open_store

log = logging.getLogger("forescale.daemon")

Monotonic = Callable[[], float]

#: how often the daemon prunes the state file and logs the fallback summary
HOUSEKEEPING_EVERY = timedelta(hours=1)


def prune_cutoffs(config: Config, now: datetime) -> dict[str, datetime | None]:
    """What :meth:`engine.store.Store.prune` drops, from the config's
    ``retention``: never the predicted-versus-actual records a target's
    conformal window still reads, nor the samples its history needs."""
    r = config.retention
    shapes = config.target_shapes
    need_forecasts = max((t.policy.margin.conformal_window for t in shapes if t.policy.margin.conformal),
                         default=timedelta(0))
    need_samples = max(t.forecaster.history + t.interval for t in shapes)
    return {
        "forecasts_before": None if r.forecasts is None else now - max(r.forecasts, need_forecasts),
        "samples_before": None if r.samples is None else now - max(r.samples, need_samples),
        "decisions_before": None if r.decisions is None else now - r.decisions,
    }


def next_on_grid(due: float, mono: float, interval: float) -> float:
    """The start after ``due`` on its interval grid, after ``mono``: one that
    fell behind (a stuck cycle, a suspended host) skips the missed starts."""
    due += interval
    if due <= mono:
        due += (int((mono - due) // interval) + 1) * interval
    return due


class TargetWorker:
    """One target's schedule and its (at most one) running cycle."""

    def __init__(self, daemon: "Daemon", target: TargetConfig) -> None:
        self.daemon = daemon
        self.target = target
        self.store = daemon.open_store()
        #: held by whichever cycle of this target is acting (shared by every
        #: LiveTarget this worker builds)
        self.acting = threading.Lock()
        self.live = self._build(target)
        self.thread: threading.Thread | None = None
        self.stuck: threading.Thread | None = None  # an abandoned cycle the current one started beside
        self.started: float | None = None  # monotonic start of the running cycle
        self.abandoned = False  # the running cycle passed its timeout
        self.retired = False  # removed by a reload: close when the cycle ends
        self.base_due: float | None = None  # next start on the interval grid (monotonic)
        self.next_due: float | None = None  # base_due plus this start's jitter
        self.last_success: datetime | None = None
        self.last_result: CycleResult | None = None
        self.leading = False  # this replica held the target's lease at the last tick
        #: the static batch that runs this target's cycles (it shares a
        #: global model with other targets of the file); None: its own
        self.batch: StaticBatch | None = None

    def _build(self, target: TargetConfig) -> LiveTarget:
        d = self.daemon
        return LiveTarget(target, source=d.build_source(target, d.config), store=self.store,
                          actuator=d.build_actuator(target, d.config),
                          covariates={n: d.build_source(target, d.config, n) for n in target.covariates},
                          resources=build_resources(target, d.config, d.build_source), acting=self.acting)

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def reconfigure(self, target: TargetConfig) -> None:
        """Take a new config for this target; used from its next cycle on."""
        if target == self.target:
            return
        old = self.live
        live = self._build(target)
        # keep the fitted model and the history when neither the forecaster
        # nor the interval changed (a mode or policy change needs no refit)
        if old.target.forecaster == target.forecaster and old.target.interval == target.interval:
            live.runner.primary.carry_fits(old.runner.primary)  # the model, and its fits' back-off
            live.history = old.history
            live.covariate_history = old.covariate_history
            # the model in memory is the newest: no checkpoint to restore
            live.checkpoint = old.checkpoint
        if old.target.actuator == target.actuator and old.target.policy.ladder == target.policy.ladder:
            # the same platform: keep its adapter, with what it remembers of a
            # change in progress (a stepwise resize it stopped the VM for)
            live.actuator = old.actuator
        if target.interval != self.target.interval:
            self.base_due = self.next_due = None  # start on the new grid
        if target.mode != self.target.mode:
            log.info("target %s: mode %s -> %s", target.name, self.target.mode, target.mode,
                     extra={"target": target.name, "mode": target.mode})
        self.target, self.live = target, live

    # ------------------------------------------------------------- schedule
    def tick(self, mono: float) -> None:
        interval = self.target.interval.total_seconds()
        leases = self.daemon.leases
        if self.batch is not None and not self.busy:
            self.base_due = self.next_due = None  # its batch starts its cycles
            if leases is not None and not leases.holds(self.target.name):
                self.leading = False  # the batch looks for newer models when it leads again
            return
        if leases is not None and not self.busy and not leases.holds(self.target.name):
            # another replica leads this target: when this one gains the
            # lease, the target's cycle starts at once (plus jitter)
            self.base_due = self.next_due = None
            self.leading = False
            return
        if leases is not None and not self.leading:
            # taken over: the model the previous leader saved may be newer
            # than the one this replica last had in memory
            self.leading = True
            self.live.rearm_checkpoints()
        if self.busy:
            assert self.started is not None
            timeout = self.target.timeout.total_seconds()
            if not self.abandoned and mono - self.started > timeout:
                self.abandoned = True
                self.daemon.cycle_timed_out(self, mono - self.started)
            if self.next_due is not None and mono >= self.next_due:
                if self.abandoned and not (self.stuck is not None and self.stuck.is_alive()):
                    self._start_beside(mono)
                else:
                    log.warning("target %s: previous cycle still running; skipping this start", self.target.name,
                                extra={"target": self.target.name})
                self._schedule_next(mono, interval)
            return
        if self.next_due is None:
            self.base_due = mono
            self.next_due = mono + self.daemon.jitter(self.target)
        if mono < self.next_due:
            return
        self.start(mono)
        self._schedule_next(mono, interval)

    def _schedule_next(self, mono: float, interval: float) -> None:
        assert self.base_due is not None
        self.base_due = next_on_grid(self.base_due, mono, interval)
        self.next_due = self.base_due + self.daemon.jitter(self.target)

    def _start_beside(self, mono: float) -> None:
        """Start the next cycle beside the abandoned one, on a fresh
        LiveTarget: the abandoned cycle keeps its objects (and its store
        connection, closed when it ends) and acts no more."""
        self.stuck = self.thread
        self.renew()
        log.warning("target %s: the abandoned cycle is still running; starting this one beside it (the "
                    "abandoned one will not act)", self.target.name, extra={"target": self.target.name})
        self.start(mono)

    def renew(self) -> None:
        """A fresh LiveTarget (its own store connection, the model restored
        from its checkpoint, the same acting lock) for a cycle started
        beside an abandoned one, which is told it was superseded."""
        self.live.superseded.set()
        self.store = self.daemon.open_store()
        self.live = self._build(self.target)

    def start(self, mono: float) -> None:
        self.started, self.abandoned = mono, False
        self.thread = threading.Thread(target=self._cycle, args=(self.live,), daemon=True,
                                       name=f"cycle-{self.target.name}")
        self.thread.start()

    def _cycle(self, live: LiveTarget) -> None:
        try:
            now = self.daemon.clock.now()  # read once per cycle
            cfg = self.daemon.config.cycle_executor
            if cfg is None:
                res = live.run(now)
            else:  # its per-series model's refits go to the executor, as a template's do
                res = run_refitting_elsewhere(live, now, self.daemon.executor,
                                              cfg.deadline_for(self.target).total_seconds())
            self.done(live, res, now, self.abandoned)
        except Exception:  # noqa: BLE001 - never let a cycle thread die silently
            log.exception("target %s: cycle crashed", self.target.name, extra={"target": self.target.name})
        finally:
            self.release(live)

    def done(self, live: LiveTarget, res: CycleResult, now: datetime, abandoned: bool) -> None:
        """A cycle's result: noted abandoned when it was (or a newer one was
        started beside it), kept, handed to the daemon."""
        if abandoned or live is not self.live:
            res.details["abandoned"] = True
            log.warning("target %s: abandoned cycle finished after all (status %s)", self.target.name,
                        res.status, extra={"target": self.target.name})
        self.last_result = res
        if res.ok:
            self.last_success = now
        self.daemon.on_result(res)

    def release(self, live: LiveTarget) -> None:
        """After a cycle of ``live``: close its store if it is no longer this
        worker's (started beside: the abandoned cycle's connection was its
        own), or this worker's if it was retired meanwhile."""
        if live.store is not self.store:
            live.store.close()
        elif self.retired:
            self.store.close()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the running cycle (and an abandoned
        one it started beside); True if none runs."""
        deadline = time.monotonic() + timeout
        for t in (self.thread, self.stuck):
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        return not self.busy and not (self.stuck is not None and self.stuck.is_alive())

    def close(self) -> None:
        self.retired = True
        if not self.busy and not (self.batch is not None and self.batch.busy):
            self.store.close()


class _Member:
    """One target of a template, as the daemon's bookkeeping sees it (the
    fields a :class:`TargetWorker` has): its label set, and the acting lock
    its LiveTargets share (one built beside an abandoned cycle too)."""

    def __init__(self, target: TargetConfig, live: LiveTarget, labels: Any, acting: threading.Lock) -> None:
        self.target, self.live, self.labels, self.acting = target, live, labels, acting
        self.last_success: datetime | None = None

    @property
    def store(self) -> Store:
        return self.live.store


class BatchWorker:
    """One batched cycle of many targets per interval, in one thread
    (:func:`engine.fleet.run_batch`); a template's (:class:`TemplateWorker`)
    or the file's targets on one global model (:class:`StaticBatch`).

    A cycle that outlives the targets' ``timeout`` is *abandoned*, as one
    target's is (:class:`TargetWorker`): the next start comes on schedule
    beside it, on fresh LiveTargets (:meth:`renew`: a store connection of
    their own, the models restored from their checkpoints, each target's
    acting lock shared), and the abandoned cycle's targets are told they
    were superseded: they act no more, so no target is acted on twice.
    While an abandoned cycle and the one beside it both run, further
    starts are skipped."""

    def __init__(self, daemon: "Daemon", name: str, shape: TargetConfig) -> None:
        self.daemon, self.name = daemon, name
        self.shape = shape  # interval, timeout: the same for every target of the batch
        self.thread: threading.Thread | None = None
        self.stuck: threading.Thread | None = None  # an abandoned cycle the current one started beside
        self.started: float | None = None
        self.abandoned = False
        self.retired = False
        self.base_due: float | None = None
        self.last_report: BatchReport | None = None
        #: counts the starts beside an abandoned cycle (a cycle that sees it
        #: changed while it discovered was abandoned meanwhile)
        self.generation = 0

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def tick(self, mono: float) -> None:
        interval = self.shape.interval.total_seconds()
        if self.busy:
            assert self.started is not None
            if not self.abandoned and mono - self.started > self.shape.timeout.total_seconds():
                self.abandoned = True
                log.error("%s: the batched cycle is running %.1fs, past the timeout %s; abandoned (the next "
                          "starts on schedule beside it; it acts no more once that one runs)", self.name,
                          mono - self.started, self.shape.timeout)
            if self.base_due is not None and mono >= self.base_due:
                if self.abandoned and not (self.stuck is not None and self.stuck.is_alive()):
                    self.stuck = self.thread
                    self.generation += 1
                    self.renew()
                    log.warning("%s: the abandoned batched cycle is still running; starting this one beside it "
                                "(the abandoned one will not act)", self.name)
                    self._start(mono)
                else:
                    log.warning("%s: the previous batched cycle is still running; skipping this start", self.name)
                self.base_due = next_on_grid(self.base_due, mono, interval)
            return
        if self.base_due is None:
            self.base_due = mono
        if mono < self.base_due:
            return
        self._start(mono)
        self.base_due = next_on_grid(self.base_due, mono, interval)

    def _start(self, mono: float) -> None:
        self.started, self.abandoned = mono, False
        self.thread = threading.Thread(target=self._run, args=(self.generation, *self.starting(mono)), daemon=True,
                                       name=f"batch-{self.name}")
        self.thread.start()

    def _run(self, generation: int, *args: Any) -> None:
        try:
            self.cycle(generation, *args)
        except (StateError, sqlite3.Error) as exc:
            # the state went away (a PostgreSQL server restarting): a known
            # fault, said in one line; the next cycle tries again
            log.error("%s: batched cycle failed: state: %s", self.name, exc)
        except Exception:  # noqa: BLE001 - never let the batch thread die silently
            log.exception("%s: batched cycle crashed", self.name)

    def report(self, report: BatchReport, n: int) -> None:
        self.last_report = report
        log.info("%s: %d target(s) in %.2fs (%s); %d forecast in %d batched call(s); %d refit(s) on the "
                 "executor, %d failed (%d past the deadline)", self.name, n, sum(report.seconds.values()),
                 ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items()), report.batched, report.calls,
                 report.refits, report.refit_failures, report.refit_timeouts)

    def refit_deadline(self) -> float | None:
        """Seconds this batch's refits may take on the executor
        (``executor.deadline``, else half the interval or the timeout)."""
        cfg = self.daemon.config.cycle_executor
        return None if cfg is None else cfg.deadline_for(self.shape).total_seconds()

    # what a kind of batch does
    def starting(self, mono: float) -> tuple[Any, ...]:
        """The arguments of this start's :meth:`cycle` (read in the scheduler's thread)."""
        return ()

    def cycle(self, generation: int, *args: Any) -> None:
        raise NotImplementedError

    def renew(self) -> None:
        """Fresh LiveTargets for a start beside the abandoned cycle."""
        raise NotImplementedError

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for t in (self.thread, self.stuck):
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        return not self.busy and not (self.stuck is not None and self.stuck.is_alive())


class TemplateWorker(BatchWorker):
    """The targets of one template (:mod:`engine.fleet`): discovered from
    its query every ``discover_every``, and run together, one batched cycle
    per interval (:class:`BatchWorker`), with one store connection and one
    range query."""

    def __init__(self, daemon: "Daemon", template: TargetTemplate) -> None:
        assert template.prototype is not None
        super().__init__(daemon, f"template {template.name}", template.prototype)
        self.template = template
        self.store = daemon.open_store()
        self.source = daemon.build_source(self.shape.model_copy(update={"source": template.source}),
                                          daemon.config)
        self.fetch = TemplateFetch(self.source)
        self.members: dict[str, _Member] = {}
        #: every name the last discovery found (a name another template has
        #: too goes to the one earlier in the file: see rediscover)
        self.claims: set[str] = set()
        self.discovered_at: float | None = None  # monotonic
        self.last_discovery: Discovery | None = None
        self.leading: set[str] = set()  # the members this replica led at the last cycle

    def _member(self, target: TargetConfig, labels: Any, acting: threading.Lock) -> LiveTarget:
        d = self.daemon
        return member_target(target, labels, self.fetch, self.store, d.config, build_source=d.build_source,
                             build_actuator=d.build_actuator, acting=acting)

    # ------------------------------------------------------------ discovery
    def rediscover(self, now: datetime) -> Discovery | None:
        """Ask the query which series exist; add their targets, retire those
        whose series went away (their state stays in the store under their
        name). A failed query keeps the targets as they are."""
        d, t = self.daemon, self.template
        try:
            found = discover(t, self.source, now, d.config.base_dir)
        except Exception as exc:  # noqa: BLE001 - keep what we have, try again next time
            log.error("template %s: discovery failed, keeping %d target(s): %s: %s", t.name, len(self.members),
                      type(exc).__name__, exc)
            return None
        for err in found.errors:
            log.error("template %s: %s", t.name, err)
        self.claims = set(found.targets)
        # a name two templates make is the one's earlier in the file: a
        # later one hands it over at its next discovery and the earlier one
        # takes it at its next; never run by both (each would decide and
        # apply it every cycle, with its own policy)
        others = list(d.templates.values())
        earlier = others[:others.index(self)] if self in others else []
        wanted = {n: o.template.name for o in earlier for n in o.claims}
        for name in [n for n in self.members if n not in found.targets or n in wanted]:
            del self.members[name]
            why = (f"template {wanted[name]}, earlier in the file, has it too; handed over" if name in wanted
                   else "its series is gone; its state is kept")
            log.info("template %s: target %s retired (%s)", t.name, name, why, extra={"target": name})
            d._forget(name)
        after = others[others.index(self) + 1:] if self in others else []
        later = {n: o.template.name for o in after for n in o.members}
        for name, target in found.targets.items():
            if name in self.members:
                continue
            _, clash = claimed(t.name, [name], d.workers, wanted)
            if clash:
                log.error("%s", clash[0], extra={"target": name})
                continue
            if name in later:  # this template is earlier in the file: it takes it once handed over
                log.info("template %s: target %s waits for template %s to hand it over", t.name, name,
                         later[name], extra={"target": name})
                continue
            acting = threading.Lock()
            live = self._member(target, found.labels[name], acting)
            # checked as the file's targets are at startup: a permanent
            # problem (the labels name no such platform object, a credential
            # that does not resolve) leaves the target out, said once
            try:
                warning = check_actuator(target, live.actuator)
            except ConfigError as exc:
                log.error("template %s: target %s left out: %s", t.name, name, exc, extra={"target": name})
                continue
            if warning:
                log.warning(warning, extra={"target": name})
            self.members[name] = _Member(target, live, found.labels[name], acting)
            d._register(target)
            log.info("template %s: target %s discovered", t.name, name, extra={"target": name})
        self.last_discovery = found
        return found

    # ------------------------------------------------------------- schedule
    def starting(self, mono: float) -> tuple[Any, ...]:
        rediscover = self.discovered_at is None or \
            mono - self.discovered_at >= self.template.discover_every.total_seconds()
        if rediscover:
            self.discovered_at = mono
        return rediscover, self.store, self.fetch

    def renew(self) -> None:
        """A store connection and a fetch of the new cycle's own; each
        target a fresh LiveTarget on them (its acting lock kept)."""
        self.store = self.daemon.open_store()
        self.fetch = TemplateFetch(self.source)
        for m in self.members.values():
            m.live.superseded.set()
            m.live = self._member(m.target, m.labels, m.acting)

    def cycle(self, generation: int, rediscover: bool,  # type: ignore[override]
              store: Store, fetch: TemplateFetch) -> None:
        try:
            now = self.daemon.clock.now()  # read once per cycle
            if rediscover:
                self.rediscover(now)
            if generation != self.generation:
                log.warning("%s: abandoned while discovering; a newer cycle decides", self.name)
                return
            leases = self.daemon.leases
            # on a PostgreSQL state: only the targets whose lease this replica holds
            members = [m for n, m in list(self.members.items()) if leases is None or leases.holds(n)]
            if leases is not None:  # taken over: look for the previous leader's newer models
                for m in members:
                    if m.target.name not in self.leading:
                        m.live.rearm_checkpoints()
                self.leading = {m.target.name for m in members}
            lives = [m.live for m in members]
            report = run_batch(lives, now, store, fetch, executor=self.daemon.lazy_executor(),
                               deadline=self.refit_deadline())
            self.report(report, len(members))
            late = generation != self.generation
            for m, live, res in zip(members, lives, report.results):
                if late:
                    res.details["abandoned"] = True
                if res.ok:
                    m.last_success = now
                self.daemon.on_result(res)
            if late:
                log.warning("%s: the abandoned batched cycle finished after all", self.name)
        finally:
            if store is not self.store or self.retired:
                store.close()  # started beside: the abandoned cycle's connection was its own

    def close(self) -> None:
        self.retired = True
        if not self.busy:
            self.store.close()


class StaticBatch(BatchWorker):
    """The file's targets that share one global model (the same
    :func:`engine.fleet.shared_model_key`: zero-shot on one checkpoint, one
    interval and timeout): forecast in one batched call per interval. Each
    keeps its :class:`TargetWorker` (its store, source, actuator, acting
    lock, what a reload changes); their gathering and recording run side by
    side (:func:`engine.fleet.run_batch` without a shared store), so a slow
    source or platform holds up none of the others."""

    def __init__(self, daemon: "Daemon", key: tuple[Any, ...], names: list[str]) -> None:
        first = daemon.workers[names[0]].target
        super().__init__(daemon, f"batch {first.forecaster.name}@{key[-1]}", first)
        self.key, self.names = key, names

    def _workers(self) -> list[TargetWorker]:
        leases = self.daemon.leases
        ws = [self.daemon.workers.get(n) for n in self.names]
        # (not one whose own cycle still runs: it joined this batch at a
        # reload, and its LiveTarget is in use until that cycle ends)
        return [w for w in ws if w is not None and w.batch is self and not w.busy
                and (leases is None or leases.holds(w.target.name))]

    def starting(self, mono: float) -> tuple[Any, ...]:
        ws = self._workers()
        if self.daemon.leases is not None:
            for w in ws:  # taken over: the previous leader's saved model may be newer
                if not w.leading:
                    w.leading = True
                    w.live.rearm_checkpoints()
        return ws, [w.live for w in ws]

    def renew(self) -> None:
        for w in self._workers():
            w.renew()

    def cycle(self, generation: int, workers: list[TargetWorker],  # type: ignore[override]
              lives: list[LiveTarget]) -> None:
        try:
            now = self.daemon.clock.now()  # read once per cycle
            report = run_batch(lives, now, None, executor=self.daemon.lazy_executor(), deadline=self.refit_deadline())
            self.report(report, len(lives))
            for w, live, res in zip(workers, lives, report.results):
                w.done(live, res, now, generation != self.generation)
        finally:
            for w, live in zip(workers, lives):
                w.release(live)


class Daemon:
    """Every target's cycle on its interval (see the module doc).

    ``build_source`` / ``build_actuator`` default to the registry-driven
    builders; tests pass their own to inject faults. ``metrics`` is an
    :class:`engine.metrics.EngineMetrics` (or None); ``on_result`` is called
    with every :class:`CycleResult`, including the error results of
    timed-out cycles.
    """

    def __init__(self, config_path: str | Path, *, clock: Clock | None = None,
                 on_result: Callable[[CycleResult], None] | None = None, metrics: Any = None,
                 build_source: Callable[[TargetConfig, Config], Any] = default_build_source,
                 build_actuator: Callable[[TargetConfig, Config], Any] = default_build_actuator,
                 monotonic: Monotonic = time.monotonic, rng: random.Random | None = None) -> None:
        self.config_path = Path(config_path)
        self.config: Config = load_config(self.config_path)
        self.clock = clock or SystemClock()
        self.metrics = metrics
        self.build_source = build_source
        self.build_actuator = build_actuator
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self._on_result = on_result
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        #: errors per target and kind (fetch, actuation, forecast, state, timeout, ...)
        self.errors: dict[str, dict[str, int]] = {}
        #: decided cycles per target, and those that fell back by reason, since the last summary
        self.cycles: dict[str, int] = {}
        self.fallbacks: dict[str, dict[str, int]] = {}
        self._next_housekeeping: float | None = None
        self._lock = threading.Lock()
        #: this replica's leases (PostgreSQL state; None: the file lock)
        self.leases: Any = None
        #: called at shutdown before the leases are handed back (the
        #: notifier's last cursors are written under them)
        self.before_release: list[Callable[[], None]] = []
        #: the executor of the batched cycles' refits (opened on first use)
        self._executor: Any = None
        self._executor_cfg: Any = None
        self._executor_lock = threading.Lock()
        self.lock_store = open_store(self.config)
        try:
            if self.lock_store.shared:
                from .leases import Leases

                ha = self.config.ha
                self.leases = Leases(self.lock_store, shards=ha.shards, lease_s=ha.lease.total_seconds(),
                                     renew_s=ha.renew_every.total_seconds(), dedicated=True)
                self.lock_store.replica, self.lock_store.replica_ttl = self.leases.holder, self.leases.lease_s
                log.info("replica %s: %d shard(s), lease %s, renewed every %s", self.leases.holder, ha.shards,
                         ha.lease, ha.renew_every)
            else:
                self.lock_store.lock()
            # the tail of the audit chain is checked before anything is
            # appended to it; a broken chain is reported, never repaired
            self.audit_status = audit.verify_tail(self.lock_store, 1000)
            (log.info if self.audit_status.ok else log.error)("audit chain: %s", self.audit_status.summary())
            if self.metrics is not None:
                self.metrics.set_audit_status(self.audit_status.ok)
            audit.record_config(self.lock_store, None, self.config, self.clock.now(), source=str(self.config_path))
            self._mtime = self.config_path.stat().st_mtime
            self._digest = self._file_digest()
            self.workers: dict[str, TargetWorker] = {}
            for t in self.config.targets:
                self.workers[t.name] = TargetWorker(self, t)
                self._register(t)
            #: the templates' workers; their targets appear at the first discovery
            self.templates: dict[str, TemplateWorker] = {tp.name: TemplateWorker(self, tp)
                                                         for tp in self.config.templates}
            #: the file's targets on one global model, by shared_model_key
            self.batches: dict[tuple[Any, ...], StaticBatch] = {}
            self._regroup()
            # a missing credential or a target that does not exist is one clear
            # error now, not at the first action
            for w in self.workers.values():
                warning = check_actuator(w.target, w.live.actuator)
                if warning:
                    log.warning(warning, extra={"target": w.target.name})
            if self.leases is not None:
                self.leases.renew()  # the first pass before the first tick
                self.leases.start()
        except BaseException:
            for w in [*getattr(self, "workers", {}).values(), *getattr(self, "templates", {}).values()]:
                w.close()
            if self.leases is not None:
                self.leases.stop()
            self.lock_store.close()
            raise

    def open_store(self) -> Store:
        """A store for one target's cycles (on a shared store, fenced by
        this replica's leases)."""
        store = open_store(self.config)
        if self.leases is not None:
            store.fence = self.leases.check
            store.replica, store.replica_ttl = self.leases.holder, self.leases.lease_s
        return store

    def _regroup(self) -> None:
        """Put the file's targets that share a global model (two or more on
        one :func:`engine.fleet.shared_model_key`) in one static batch each;
        the others run alone. After a reload, a target whose forecaster
        changed moves at its next cycle (a running cycle ends where it is)."""
        groups: dict[tuple[Any, ...], list[str]] = {}
        for name, w in self.workers.items():
            key = shared_model_key(w.target)
            if key is not None:
                groups.setdefault(key, []).append(name)
        groups = {k: names for k, names in groups.items() if len(names) > 1}
        for key in [k for k in self.batches if k not in groups]:
            del self.batches[key]
        for key, names in groups.items():
            b = self.batches.get(key)
            if b is None:
                b = self.batches[key] = StaticBatch(self, key, names)
                log.info("%s: %d targets forecast in one batched call per cycle (%s)", b.name, len(names),
                         ", ".join(names))
            b.names = names
        member = {n: b for b in self.batches.values() for n in b.names}
        for name, w in self.workers.items():
            w.batch = member.get(name)

    def lazy_executor(self) -> Any:
        """:meth:`executor` to be opened when a refit is due (a callable
        :func:`engine.fleet.refits_elsewhere` calls only then), or None
        without an ``executor:`` section (the refits run in the cycle)."""
        return self.executor if self.config.cycle_executor is not None else None

    def executor(self) -> Any:
        """Where the per-series refits go (the templates' batched cycles',
        and the cycles of the file's targets that run alone):
        the ``executor:`` section's executor, opened at its first use and
        kept until shutdown (a changed section takes effect at a restart).
        None without the section, or while it cannot be opened (logged, tried
        again next cycle): the refits then run in the cycle's own thread."""
        cfg = self.config.cycle_executor
        if cfg is None:
            return None
        with self._executor_lock:
            if self._executor is None:
                from .executor import open_executor

                try:
                    self._executor, self._executor_cfg = open_executor(cfg), cfg
                except Exception as exc:  # noqa: BLE001 - the cycle goes on without it
                    log.error("executor %s could not be opened (the refits run in the cycle meanwhile): %s: %s",
                              cfg.kind, type(exc).__name__, exc)
                    return None
                log.info("executor %s: %d worker(s) for the batched cycles' refits", cfg.kind,
                         self._executor.workers)
            elif cfg != self._executor_cfg:
                log.warning("the executor section changed; the open %s executor is kept until a restart",
                            self._executor_cfg.kind)
                self._executor_cfg = cfg
            return self._executor

    # -------------------------------------------------------------- callbacks
    def jitter(self, target: TargetConfig) -> float:
        j = target.jitter.total_seconds()
        return self.rng.uniform(0.0, j) if j > 0 else 0.0

    def _register(self, t: TargetConfig) -> None:
        if self.metrics is not None:
            try:
                from .metrics import export_horizons

                self.metrics.register_target(t.name, mode=t.mode, interval=t.interval,
                                             horizons=export_horizons(t), alerts=t.alerts,
                                             signals=(t.resource, *t.resources) if t.resources else ("",))
            except Exception:  # noqa: BLE001
                log.exception("metrics registration failed for %s", t.name)

    def _forget(self, name: str) -> None:
        """A target no longer run: its metric series go (their frozen
        values would keep its alerts firing)."""
        if self.metrics is not None:
            try:
                self.metrics.forget_target(name)
            except Exception:  # noqa: BLE001 - the metrics must not stop a reload
                log.exception("metrics removal failed for %s", name)

    def _count(self, target: str, kind: str) -> None:
        with self._lock:
            per = self.errors.setdefault(target, {})
            per[kind] = per.get(kind, 0) + 1

    def discovered_targets(self) -> list[TargetConfig]:
        """The targets the templates expand to now (for the API)."""
        return [m.target for tw in list(self.templates.values()) for m in list(tw.members.values())]

    def member(self, name: str) -> _Member | None:
        """A template's target by name (None if no template has it now)."""
        for tw in list(self.templates.values()):
            m = tw.members.get(name)
            if m is not None:
                return m
        return None

    def on_result(self, res: CycleResult) -> None:
        """Log, count and export one cycle's result."""
        extra = {"target": res.target, "decision_id": res.decision.id if res.decision else None,
                 "status": res.status}
        if res.status == "handed-over":  # rebalanced mid-cycle: another replica's target now
            log.info("target %s: handed over mid-cycle, nothing written: %s", res.target,
                     res.details.get("handed_over"), extra=extra)
            return
        for kind, msg in (("fetch", res.fetch_error), ("actuation", res.actuation_error),
                          ("forecast", res.details.get("forecast_error")),
                          ("timeout" if res.details.get("timeout") else "cycle", res.error)):
            if msg:
                self._count(res.target, kind)
                log.log(logging.INFO if kind == "forecast" else logging.ERROR, "target %s: %s error: %s",
                        res.target, kind, msg, extra=extra)
        if res.decision is not None:
            d = res.decision
            with self._lock:
                self.cycles[res.target] = self.cycles.get(res.target, 0) + 1
                if d.fallback:
                    per = self.fallbacks.setdefault(res.target, {})
                    per[d.steps[0].reason] = per.get(d.steps[0].reason, 0) + 1
            log.info("target %s: %s %d -> %d (%s)%s", res.target, res.status, d.current, d.desired,
                     ", ".join(d.reasons) or "Unchanged", " FALLBACK" if d.fallback else "", extra=extra)
        m = self.metrics
        if m is not None:
            try:
                w = self.workers.get(res.target) or self.member(res.target)
                last = w.live.history.last_valid() if w is not None and w.live.history is not None else None
                m.observe_cycle(res.target, res.decision, res.forecast, res.duration_s, res.ok, res.now,
                                observed=last[1] if last else None)
                if res.decision is not None and "resources" in res.decision.extra:
                    m.observe_resources(res.target, res.decision, res.resource_forecasts)
                if res.decision is not None and res.decision.fallback:
                    m.fallback_cycle(res.target, res.decision.steps[0].reason)
                if res.fetch_error:
                    m.fetch_error(res.target)
                if res.actuation_error:
                    m.actuation_error(res.target)
                if res.details.get("forecast_error"):
                    m.forecast_failure(res.target)
                if w is not None and res.decision is not None and w.live.runner.forecaster is not None:
                    fit = res.decision.extra.get("fit") or {}
                    m.observe_fit(res.target, w.live.runner.last_fit, fit.get("status") == "failed")
                # (not for a timeout report: the stuck cycle still uses that connection)
                if w is not None and w.target.mode == "approve" and not res.details.get("timeout"):
                    from .core.types import PlanStatus

                    m.set_plans_pending(res.target, len(w.store.plans(res.target, PlanStatus.PENDING)))
                gateway = self.config.server.pushgateway
                if gateway and res.forecast is not None:
                    try:
                        m.push_forecasts(gateway, res.target, res.forecast, timeout=5.0)
                    except OSError as exc:  # the gateway being down must not touch the loop
                        self._count(res.target, "push")
                        m.push_errors.labels(target=res.target).inc()
                        log.warning("target %s: pushing the forecast to %s failed: %s", res.target, gateway,
                                    exc, extra=extra)
                if w is not None and res.forecast is not None and not res.details.get("timeout"):
                    from .accuracy import live_accuracy

                    acc = live_accuracy(w.live.runner.feedback, w.live.history, w.target, res.now, lead=res.window)
                    if acc:
                        m.set_accuracy(res.target, acc)
            except Exception:  # noqa: BLE001 - metrics must never break the loop
                log.exception("metrics update failed")
        if self._on_result is not None:
            self._on_result(res)

    def cycle_timed_out(self, worker: TargetWorker, elapsed: float) -> None:
        t = worker.target
        res = CycleResult(t.name, self.clock.now(), status="error", duration_s=elapsed,
                          error=f"cycle timed out: running {elapsed:.1f}s, timeout {t.timeout}; abandoned "
                                "(the next cycle starts on schedule beside it; it acts no more once that one runs)")
        res.details["timeout"] = True
        self.on_result(res)

    # ----------------------------------------------------------------- reload
    def reload(self) -> bool:
        """Validate the file, then swap it in. An invalid file is logged and
        the running config stays."""
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            return False
        if (new.state_url or new.state_path) != (self.config.state_url or self.config.state_path) \
                or new.ha != self.config.ha:
            log.error("config reload rejected: the state (and ha) cannot change while running (%s -> %s)",
                      self.config.state_shown, new.state_shown)
            return False
        fresh = {t.name: t for t in new.targets}
        try:
            # build the plugins of every new or changed target first: a
            # failure (say, a missing SDK) leaves everything as it was
            for t in new.targets:
                w = self.workers.get(t.name)
                if w is None or w.target != t:
                    self.build_source(t, new)
                    warning = check_actuator(t, self.build_actuator(t, new))
                    if warning:
                        log.warning(warning, extra={"target": t.name})
        except Exception as exc:  # noqa: BLE001
            log.error("config reload rejected, keeping the running config: %s: %s", type(exc).__name__, exc)
            return False
        old, self.config = self.config, new
        try:
            audit.record_config(self.lock_store, old, new, self.clock.now(), source=str(self.config_path))
        except Exception:  # noqa: BLE001 - the reload stands; the audit gap is logged loudly
            log.exception("config reload: could not record it in the audit log")
        for name in list(self.workers):
            if name not in fresh:
                self.workers.pop(name).close()
                self._forget(name)
                log.info("target %s removed", name)
        for t in new.targets:
            try:
                if t.name in self.workers:
                    self.workers[t.name].reconfigure(t)
                else:
                    self.workers[t.name] = TargetWorker(self, t)
                    log.info("target %s added", t.name)
                self._register(t)
            except Exception:  # noqa: BLE001 - one target's trouble must not stop the others
                log.exception("target %s: could not apply the reloaded config", t.name)
        self._regroup()
        fresh_templates = {tp.name: tp for tp in new.templates}
        for name in list(self.templates):
            if name not in fresh_templates or fresh_templates[name] != self.templates[name].template:
                gone = self.templates.pop(name)
                gone.close()
                for member in list(gone.members):  # (a changed template registers them again as it finds them)
                    self._forget(member)
                log.info("template %s %s", name, "removed" if name not in fresh_templates else "changed")
        for tp in new.templates:
            if tp.name not in self.templates:
                try:
                    self.templates[tp.name] = TemplateWorker(self, tp)
                except Exception:  # noqa: BLE001 - one template's trouble must not stop the others
                    log.exception("template %s: could not apply the reloaded config", tp.name)
        log.info("config reloaded from %s", self.config_path)
        return True

    def _file_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.config_path.read_bytes()).hexdigest()
        except OSError:
            return None

    def _check_file(self) -> None:
        """Reload when the file's contents change (a new mtime with the same
        bytes, as an editor's save in two writes leaves it, reloaded twice)."""
        try:
            mtime = self.config_path.stat().st_mtime
        except OSError:
            return
        if mtime != self._mtime:
            self._mtime = mtime
            digest = self._file_digest()
            if digest != self._digest:
                self._digest = digest
                self.reload_event.set()

    # -------------------------------------------------------------------- run
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_event.set())

    def stop(self) -> None:
        self.stop_event.set()

    def ready(self) -> dict[str, str | None]:
        """Per target: ``None`` if a cycle succeeded within the last three
        intervals, else why not (the ``/readyz`` answer). A target another
        replica leads counts as ready while this replica's leases are
        renewed (a standby is ready to take over)."""
        now = self.clock.now()
        out: dict[str, str | None] = {}
        standby = self.leases.trouble() if self.leases is not None else None
        members = [(n, m) for tw in list(self.templates.values()) for n, m in list(tw.members.items())]
        for n, w in [*list(self.workers.items()), *members]:
            if self.leases is not None and not self.leases.holds(n):
                out[n] = standby
            elif w.last_success is None:
                out[n] = "no successful cycle yet"
            elif now - w.last_success > 3 * w.target.interval:
                out[n] = f"last successful cycle at {w.last_success:%Y-%m-%d %H:%M:%S}Z"
            else:
                out[n] = None
        return out

    def tick(self) -> None:
        """One scheduler pass: reload if asked, start what is due, flag what
        is stuck."""
        self._check_file()
        if self.reload_event.is_set():
            self.reload_event.clear()
            try:
                self.reload()
            except Exception:  # noqa: BLE001 - a failed reload must not stop the daemon
                log.exception("config reload failed, keeping the running config")
        mono = self.monotonic()
        if self._next_housekeeping is None or mono >= self._next_housekeeping:
            self._next_housekeeping = mono + HOUSEKEEPING_EVERY.total_seconds()
            self.housekeeping()
        for w in list(self.workers.values()):
            try:
                w.tick(mono)
            except Exception:  # noqa: BLE001 - never let one target stop the loop
                log.exception("target %s: scheduling failed", w.target.name)
        for tw in [*list(self.templates.values()), *list(self.batches.values())]:
            try:
                tw.tick(mono)
            except Exception:  # noqa: BLE001 - never let one batch stop the loop
                log.exception("%s: scheduling failed", tw.name)

    def housekeeping(self) -> None:
        """Prune the state file (retention) and log the fallback summary.
        With several replicas, the one that leads shard 0 prunes."""
        try:
            if self.leases is None or 0 in self.leases.held():
                now = self.clock.now()
                gone = self.lock_store.prune(**prune_cutoffs(self.config, now))
                if any(gone.values()):
                    log.info("state file pruned (retention): %s",
                             ", ".join(f"{n} {table}" for table, n in gone.items() if n))
                self.prune_models(now)
        except Exception:  # noqa: BLE001 - housekeeping must not stop the loop
            log.exception("pruning the state file failed; trying again in %s", HOUSEKEEPING_EVERY)
        for target, share, reasons in self.fallback_summary(reset=True):
            log.log(logging.WARNING if share > 0.05 else logging.INFO,
                    "target %s: %.0f%% of cycles fell back to reactive since the last summary (%s)", target,
                    100 * share, ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none",
                    extra={"target": target})

    def prune_models(self, now: datetime) -> list[str]:
        """Delete the model checkpoints of targets retired longer than
        ``retention.models`` (:func:`engine.checkpoints.prune_checkpoints`):
        never one of a target live now (the file's, or discovered by a
        template), and not before every template has discovered its targets
        once (until then a live one could look retired)."""
        keep_for = self.config.retention.models
        if keep_for is None or any(tw.last_discovery is None for tw in self.templates.values()):
            return []
        from .checkpoints import prune_checkpoints

        keep = set(self.workers) | {n for tw in self.templates.values() for n in tw.members}
        gone = prune_checkpoints(self.lock_store, now - keep_for, keep)
        if gone:
            log.info("model checkpoints of %d retired target(s) pruned (retention.models %s): %s", len(gone),
                     format_duration(keep_for), ", ".join(gone[:20]) + (" ..." if len(gone) > 20 else ""))
        return gone

    def fallback_summary(self, *, reset: bool = False) -> list[tuple[str, float, dict[str, int]]]:
        """Per target: the share of decided cycles that fell back, and the
        count by reason code (since the last reset)."""
        with self._lock:
            out = [(t, sum(self.fallbacks.get(t, {}).values()) / n, dict(self.fallbacks.get(t, {})))
                   for t, n in sorted(self.cycles.items()) if n]
            if reset:
                self.cycles, self.fallbacks = {}, {}
        return out

    def run(self, *, tick: float = 0.5, max_ticks: int | None = None, grace: float = 30.0) -> None:
        ticks = 0
        try:
            while not self.stop_event.is_set():
                self.tick()
                ticks += 1
                if max_ticks is not None and ticks >= max_ticks:
                    break
                self.stop_event.wait(tick)
        finally:
            self.shutdown(grace)

    def shutdown(self, grace: float = 30.0) -> None:
        """Let running cycles finish within ``grace`` seconds, then close."""
        deadline = time.monotonic() + grace
        for b in list(self.batches.values()):
            if not b.wait(deadline - time.monotonic()):
                log.warning("%s: abandoning a batched cycle still running at shutdown", b.name)
        for w in list(self.workers.values()):
            if not w.wait(deadline - time.monotonic()):
                log.warning("target %s: abandoning a cycle still running at shutdown", w.target.name,
                            extra={"target": w.target.name})
            w.close()
        for tw in list(self.templates.values()):
            if not tw.wait(deadline - time.monotonic()):
                log.warning("template %s: abandoning a batched cycle still running at shutdown", tw.template.name)
            tw.close()
        if self._executor is not None:
            try:
                self._executor.close()
            except Exception:  # noqa: BLE001 - shutting down regardless
                log.exception("closing the executor failed")
        try:  # a fit abandoned here did not end the process: a restart fits at once, no failure counted
            cut = self.lock_store.fits_interrupted()
            if cut:
                log.warning("shutting down in the middle of the fit of %s: interrupted, not counted as failed",
                            ", ".join(cut))
        except Exception:  # noqa: BLE001 - shutting down regardless; a record left counts as a failure
            log.exception("shutting down: the fits under way could not be marked interrupted")
        for hook in self.before_release:
            try:
                hook()
            except Exception:  # noqa: BLE001 - shutting down regardless
                log.exception("shutting down: a hook before handing the leases back failed")
        if self.leases is not None:
            self.leases.stop()  # hand the leases back: another replica takes over at once
        self.lock_store.close()


__all__ = ["Daemon", "TargetWorker"]
