"""The unattended loop: each target's cycle on its own interval.

- Targets are independent: each runs in its own thread with its own store
  connection, so one target's failure or slowness never blocks another.
- Each cycle starts on the interval grid plus a random jitter; a cycle that
  outlives its ``timeout`` is abandoned (recorded, error metric) and the
  target skips its next starts until the stuck call returns.
- SIGTERM/SIGINT: stop starting cycles, let running ones finish within a
  grace period, then exit. SIGHUP (or a change of the config file's mtime):
  reload; the new file is validated first and replaces the running config
  only if valid (mode changes need no restart).
- One daemon per state file (``Store.lock``).
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .build import build_actuator, build_source
from .clock import Clock, SystemClock
from .config import Config, TargetConfig, load_config
from .cycle import CycleResult, LiveTarget
from .errors import ConfigError, ForescaleError
from .store import Store

log = logging.getLogger("forescale.daemon")


class TargetWorker:
    """Runs one target's cycles on its schedule, in its own thread."""

    def __init__(self, daemon: "Daemon", target: TargetConfig) -> None:
        self.daemon = daemon
        self.target = target
        self.store = Store(daemon.config.state_path)
        self.live = self._build(target)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cycle-{target.name}")
        self.running: Future | None = None
        self.next_due: float | None = None
        self.last_success: datetime | None = None
        self.last_result: CycleResult | None = None
        self.reconciled = False

    def _build(self, target: TargetConfig) -> LiveTarget:
        return LiveTarget(target, source=build_source(target, self.daemon.config), store=self.store,
                          actuator=build_actuator(target))

    def reconfigure(self, target: TargetConfig) -> None:
        if target == self.target:
            return
        old = self.live
        self.target = target
        self.live = self._build(target)
        # keep the fitted model and history when only mode/policy changed
        if old.target.forecaster == target.forecaster and old.target.interval == target.interval:
            self.live.runner.forecaster = old.runner.forecaster
            self.live.runner.last_fit = old.runner.last_fit
            self.live.history = old.history
        log.info("target %s reconfigured (mode %s)", target.name, target.mode)

    def tick(self, now_mono: float) -> None:
        interval = self.target.interval.total_seconds()
        if self.next_due is None:
            self.next_due = now_mono
        if now_mono < self.next_due:
            return
        if self.running is not None and not self.running.done():
            log.warning("target %s: previous cycle still running; skipping this start", self.target.name)
        else:
            self.running = self.pool.submit(self._cycle)
        jitter = random.uniform(0, self.target.jitter.total_seconds()) if self.target.jitter.total_seconds() else 0
        self.next_due = max(self.next_due + interval, now_mono) + jitter

    def _cycle(self) -> CycleResult | None:
        now = self.daemon.clock.now()  # read once per cycle
        if not self.reconciled:
            for note in self.live.reconcile(now):
                log.warning("target %s reconcile: %s", self.target.name, note)
            self.reconciled = True
        res = self.live.run(now)
        self.last_result = res
        if res.ok:
            self.last_success = now
        self.daemon.on_result(res)
        return res

    def wait(self, timeout: float) -> bool:
        if self.running is None:
            return True
        try:
            self.running.result(timeout=timeout)
            return True
        except Exception:  # noqa: BLE001
            return self.running.done()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()


class Daemon:
    def __init__(self, config_path: str | Path, *, clock: Clock | None = None,
                 on_result: Callable[[CycleResult], None] | None = None, metrics: Any = None) -> None:
        self.config_path = Path(config_path)
        self.config: Config = load_config(self.config_path)
        self.clock = clock or SystemClock()
        self.metrics = metrics
        self._on_result = on_result
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.lock_store = Store(self.config.state_path)
        self.lock_store.lock()
        self.workers: dict[str, TargetWorker] = {t.name: TargetWorker(self, t) for t in self.config.targets}
        self._mtime = self.config_path.stat().st_mtime

    # -------------------------------------------------------------- callbacks
    def on_result(self, res: CycleResult) -> None:
        if self.metrics is not None:
            try:
                self.metrics.record(res)
            except Exception:  # noqa: BLE001
                log.exception("metrics update failed")
        if self._on_result is not None:
            self._on_result(res)

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
            log.error("config reload rejected: the state file cannot change while running")
            return False
        self.config = new
        names = {t.name for t in new.targets}
        for name in list(self.workers):
            if name not in names:
                self.workers.pop(name).close()
                log.info("target %s removed", name)
        for t in new.targets:
            if t.name in self.workers:
                self.workers[t.name].reconfigure(t)
            else:
                self.workers[t.name] = TargetWorker(self, t)
                log.info("target %s added", t.name)
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

    def ready(self) -> dict[str, bool]:
        """Per target: a successful cycle within the last three intervals."""
        now = self.clock.now()
        return {n: w.last_success is not None and (now - w.last_success) <= 3 * w.target.interval
                for n, w in self.workers.items()}

    def run(self, *, tick: float = 0.5, max_ticks: int | None = None, grace: float = 30.0) -> None:
        ticks = 0
        try:
            while not self.stop_event.is_set():
                self._check_file()
                if self.reload_event.is_set():
                    self.reload_event.clear()
                    self.reload()
                mono = time.monotonic()
                for w in list(self.workers.values()):
                    try:
                        w.tick(mono)
                    except ForescaleError as exc:  # never let one target stop the loop
                        log.error("target %s: %s", w.target.name, exc)
                ticks += 1
                if max_ticks is not None and ticks >= max_ticks:
                    break
                self.stop_event.wait(tick)
        finally:
            self.shutdown(grace)

    def shutdown(self, grace: float = 30.0) -> None:
        deadline = time.monotonic() + grace
        for w in self.workers.values():
            left = max(0.0, deadline - time.monotonic())
            if not w.wait(left):
                log.warning("target %s: abandoning a cycle still running at shutdown", w.target.name)
            w.close()
        self.lock_store.close()
