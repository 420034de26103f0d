"""The unattended loop: each target's cycle on its own interval.

- Targets are independent: each cycle runs in its own thread, with the
  target's own store connection, source and actuator, so one target's failure
  or slowness never blocks another. At most one cycle of a target runs at a
  time.
- Each cycle starts on the target's interval grid plus a random jitter
  (``jitter``), so many targets do not hit one metric backend at once.
- A cycle that outlives its ``timeout`` is *abandoned*: reported at once as
  an error (log line, ``on_result`` callback, metrics), and the target starts
  no new cycle until the stuck call returns (a thread cannot be killed
  safely; starting another cycle beside it could act twice). Whatever the
  late cycle finally does is still recorded in the store.
- SIGTERM/SIGINT: stop starting cycles, give running ones ``grace`` seconds
  to finish, then exit. A cycle still running then is abandoned with the
  process; if it was acting, its intent is in the store and the next start
  reconciles it (:meth:`engine.cycle.LiveTarget.reconcile`).
- SIGHUP, or a change of the config file's modification time: reload. The
  new file is validated first and replaces the running config only if valid;
  a mode change takes effect at the target's next cycle, without a restart.
- One daemon per state file (:meth:`engine.store.Store.lock`).

The scheduler reads ``monotonic`` for timing and the injected ``clock`` once
per cycle for ``now``; tests drive both by hand (:meth:`Daemon.tick`).
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .build import build_actuator as default_build_actuator, build_source as default_build_source, check_actuator
from .core.clock import Clock, SystemClock
from .config import Config, TargetConfig, load_config
from .cycle import CycleResult, LiveTarget
from .core.errors import ConfigError
from .store import Store

log = logging.getLogger("forescale.daemon")

Monotonic = Callable[[], float]


class TargetWorker:
    """One target's schedule and its (at most one) running cycle."""

    def __init__(self, daemon: "Daemon", target: TargetConfig) -> None:
        self.daemon = daemon
        self.target = target
        self.store = Store(daemon.config.state_path)
        self.live = self._build(target)
        self.thread: threading.Thread | None = None
        self.started: float | None = None  # monotonic start of the running cycle
        self.abandoned = False  # the running cycle passed its timeout
        self.retired = False  # removed by a reload: close when the cycle ends
        self.base_due: float | None = None  # next start on the interval grid (monotonic)
        self.next_due: float | None = None  # base_due plus this start's jitter
        self.last_success: datetime | None = None
        self.last_result: CycleResult | None = None

    def _build(self, target: TargetConfig) -> LiveTarget:
        d = self.daemon
        return LiveTarget(target, source=d.build_source(target, d.config), store=self.store,
                          actuator=d.build_actuator(target, d.config),
                          covariates={n: d.build_source(target, d.config, n) for n in target.covariates})

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
            live.runner.forecaster = old.runner.forecaster
            live.runner.last_fit = old.runner.last_fit
            live.history = old.history
            live.covariate_history = old.covariate_history
            # the model in memory is the newest: no checkpoint to restore
            live._model_restored, live._saved_fit = True, old._saved_fit
        live.needs_reconcile = old.needs_reconcile
        if target.interval != self.target.interval:
            self.base_due = self.next_due = None  # start on the new grid
        if target.mode != self.target.mode:
            log.info("target %s: mode %s -> %s", target.name, self.target.mode, target.mode,
                     extra={"target": target.name, "mode": target.mode})
        self.target, self.live = target, live

    # ------------------------------------------------------------- schedule
    def tick(self, mono: float) -> None:
        interval = self.target.interval.total_seconds()
        if self.busy:
            assert self.started is not None
            timeout = self.target.timeout.total_seconds()
            if not self.abandoned and mono - self.started > timeout:
                self.abandoned = True
                self.daemon.cycle_timed_out(self, mono - self.started)
            if self.next_due is not None and mono >= self.next_due:
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
        self.base_due += interval
        if self.base_due <= mono:  # fell behind (stuck cycle, suspended host): skip missed starts
            missed = int((mono - self.base_due) // interval) + 1
            self.base_due += missed * interval
        self.next_due = self.base_due + self.daemon.jitter(self.target)

    def start(self, mono: float) -> None:
        self.started, self.abandoned = mono, False
        self.thread = threading.Thread(target=self._cycle, args=(self.live,), daemon=True,
                                       name=f"cycle-{self.target.name}")
        self.thread.start()

    def _cycle(self, live: LiveTarget) -> None:
        try:
            now = self.daemon.clock.now()  # read once per cycle
            res = live.run(now)
            if self.abandoned:
                res.details["abandoned"] = True
                log.warning("target %s: abandoned cycle finished after all (status %s)", self.target.name,
                            res.status, extra={"target": self.target.name})
            self.last_result = res
            if res.ok:
                self.last_success = now
            self.daemon.on_result(res)
        except Exception:  # noqa: BLE001 - never let a cycle thread die silently
            log.exception("target %s: cycle crashed", self.target.name, extra={"target": self.target.name})
        finally:
            if self.retired:
                self.store.close()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the running cycle; True if none runs."""
        if self.thread is not None:
            self.thread.join(max(0.0, timeout))
        return not self.busy

    def close(self) -> None:
        self.retired = True
        if not self.busy:
            self.store.close()


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
        self._lock = threading.Lock()
        self.lock_store = Store(self.config.state_path)
        try:
            self.lock_store.lock()
            self._mtime = self.config_path.stat().st_mtime
            self.workers: dict[str, TargetWorker] = {}
            for t in self.config.targets:
                self.workers[t.name] = TargetWorker(self, t)
                self._register(t)
            # a missing credential or a target that does not exist is one clear
            # error now, not at the first action
            for w in self.workers.values():
                warning = check_actuator(w.target, w.live.actuator)
                if warning:
                    log.warning(warning, extra={"target": w.target.name})
        except BaseException:
            for w in getattr(self, "workers", {}).values():
                w.close()
            self.lock_store.close()
            raise

    # -------------------------------------------------------------- callbacks
    def jitter(self, target: TargetConfig) -> float:
        j = target.jitter.total_seconds()
        return self.rng.uniform(0.0, j) if j > 0 else 0.0

    def _register(self, t: TargetConfig) -> None:
        if self.metrics is not None:
            try:
                from .metrics import export_horizons

                self.metrics.register_target(t.name, mode=t.mode, interval=t.interval,
                                             horizons=export_horizons(t), alerts=t.alerts)
            except Exception:  # noqa: BLE001
                log.exception("metrics registration failed for %s", t.name)

    def _count(self, target: str, kind: str) -> None:
        with self._lock:
            per = self.errors.setdefault(target, {})
            per[kind] = per.get(kind, 0) + 1

    def on_result(self, res: CycleResult) -> None:
        """Log, count and export one cycle's result."""
        extra = {"target": res.target, "decision_id": res.decision.id if res.decision else None,
                 "status": res.status}
        for kind, msg in (("fetch", res.fetch_error), ("actuation", res.actuation_error),
                          ("forecast", res.details.get("forecast_error")),
                          ("timeout" if res.details.get("timeout") else "cycle", res.error)):
            if msg:
                self._count(res.target, kind)
                log.log(logging.INFO if kind == "forecast" else logging.ERROR, "target %s: %s error: %s",
                        res.target, kind, msg, extra=extra)
        if res.decision is not None:
            d = res.decision
            log.info("target %s: %s %d -> %d (%s)%s", res.target, res.status, d.current, d.desired,
                     ", ".join(d.reasons) or "Unchanged", " FALLBACK" if d.fallback else "", extra=extra)
        m = self.metrics
        if m is not None:
            try:
                w = self.workers.get(res.target)
                last = w.live.history.last_valid() if w is not None and w.live.history is not None else None
                m.observe_cycle(res.target, res.decision, res.forecast, res.duration_s, res.ok, res.now,
                                observed=last[1] if last else None)
                if res.fetch_error:
                    m.fetch_error(res.target)
                if res.actuation_error:
                    m.actuation_error(res.target)
                if res.details.get("forecast_error"):
                    m.forecast_failure(res.target)
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
                        log.warning("target %s: pushing the forecast to %s failed: %s", res.target, gateway,
                                    exc, extra=extra)
                if w is not None and res.forecast is not None and not res.details.get("timeout"):
                    from .accuracy import live_accuracy

                    acc = live_accuracy(w.store, w.target, res.now)
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
                                "(no new cycle starts until it returns)")
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
        if new.state_path != self.config.state_path:
            log.error("config reload rejected: the state file cannot change while running (%s -> %s)",
                      self.config.state_path, new.state_path)
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
        self.config = new
        for name in list(self.workers):
            if name not in fresh:
                self.workers.pop(name).close()
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
        log.info("config reloaded from %s", self.config_path)
        return True

    def _check_file(self) -> None:
        try:
            mtime = self.config_path.stat().st_mtime
        except OSError:
            return
        if mtime != self._mtime:
            self._mtime = mtime
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
        intervals, else why not (the ``/readyz`` answer)."""
        now = self.clock.now()
        out: dict[str, str | None] = {}
        for n, w in list(self.workers.items()):
            if w.last_success is None:
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
        for w in list(self.workers.values()):
            try:
                w.tick(mono)
            except Exception:  # noqa: BLE001 - never let one target stop the loop
                log.exception("target %s: scheduling failed", w.target.name)

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
        for w in list(self.workers.values()):
            if not w.wait(deadline - time.monotonic()):
                log.warning("target %s: abandoning a cycle still running at shutdown", w.target.name,
                            extra={"target": w.target.name})
            w.close()
        self.lock_store.close()


__all__ = ["Daemon", "TargetWorker"]
