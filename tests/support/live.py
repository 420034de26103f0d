"""Shared pieces for the live-loop tests (cycle, daemon, plans, faults,
feedback): real config files and CSV traces in ``tmp_path``, a real SQLite
state file, and small fakes of a platform and a metric source that speak the
engine's own protocols."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from engine.core.errors import MetricSourceError, PermanentActuatorError
from engine.core.types import ActionPlan, ActuationResult, CapacityReading, Series
from engine.core.units import to_epoch

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
STEP = timedelta(minutes=5)


def write_trace(path: Path, values: list[float] | np.ndarray, start: datetime = T0,
                step: timedelta = STEP) -> Path:
    lines = ["timestamp,value"]
    for i, v in enumerate(values):
        ts = start + i * step
        lines.append(f"{ts:%Y-%m-%dT%H:%M:%SZ},{'' if v != v else v}")
    path.write_text("\n".join(lines) + "\n")
    return path


def target_dict(name: str, trace: Path, *, mode: str = "auto", **over: Any) -> dict[str, Any]:
    """A small, fast target: persistence forecaster on 2 h of history,
    10 demand units per replica at 50 % -> replicas = ceil(demand / 5)."""
    t: dict[str, Any] = {
        "name": name,
        "interval": "5m",
        "mode": mode,
        "source": {"type": "csv", "path": str(trace)},
        "forecaster": {"name": "persistence", "history": "2h", "refit_every": "1h"},
        "policy": {
            "capacity_per_replica": 10, "target_utilization": 0.5, "min_replicas": 1, "max_replicas": 50,
            "lead_time": "5m", "hold": "5m", "max_staleness": "15m",
            "margin": {"quantile": None},
            "stabilization": {"scale_up": "0s", "scale_down": "0s"},
            "scale_up": {"policies": []},
            "scale_down": {"policies": []},
        },
        "actuator": {"type": "dry-run"},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(t.get(k), dict):
            t[k] = {**t[k], **v}
        else:
            t[k] = v
    return t


def write_config(path: Path, targets: list[dict[str, Any]], **top: Any) -> Path:
    doc = {"state": str(path.parent / "state.db"), "server": {"enabled": False}, "targets": targets, **top}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Platform:
    """A fake platform behind the Actuator protocol: capacity in memory,
    every apply counted. ``apply`` returns once the change is accepted
    (Nomad's ``Scale``); with a ``delay`` (and a ``clock`` to measure it)
    the new capacity serves only that long after the apply, which ``read()``
    reports as ``ready`` (``Status() -> {Count, Ready}``); without one it is
    in place at once and the result says so (``verified``).
    ``on_apply(desired, platform)`` runs inside ``apply`` (after the
    capacity is set when ``set_first``), to inject a crash, a hang or an
    error at a chosen point."""

    name = "fake"

    def __init__(self, capacity: int = 1, *, delay: timedelta = timedelta(0), clock: Any = None,
                 on_apply: Callable[[int, "Platform"], None] | None = None, set_first: bool = True) -> None:
        self.capacity = capacity
        self.delay = delay
        self.clock = clock
        self.on_apply = on_apply
        self.set_first = set_first
        self.applies: list[tuple[str, int]] = []
        self.read_error: Exception | None = None
        self.result_details: dict[str, Any] = {}
        self._rollout: tuple[datetime, int] | None = None  # (serving from, capacity serving until then)

    def validate(self) -> None:
        return None

    def _ready(self) -> int:
        if self._rollout is not None:
            at, before = self._rollout
            if self.clock.now() < at:
                return min(before, self.capacity)
            self._rollout = None
        return self.capacity

    def read(self) -> CapacityReading:
        if self.read_error is not None:
            raise self.read_error
        return CapacityReading(self.capacity, self._ready())

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        return ActionPlan("fake", "t", self.capacity if current is None else current, desired,
                          f"fake: set capacity {self.capacity} -> {desired}")

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        if desired < 0:
            raise PermanentActuatorError("negative")
        self.applies.append((decision_id, desired))
        serving = self._ready()
        if self.set_first:
            self.capacity = desired
        if self.on_apply is not None:
            self.on_apply(desired, self)
        self.capacity = desired
        in_place = self.delay <= timedelta(0) or serving == desired
        if not in_place:
            self._rollout = (self.clock.now() + self.delay, serving)
        return ActuationResult(desired, desired if in_place else serving, in_place, timedelta(0),
                               (f"req-{len(self.applies)}",), details=self.result_details)


def hanging_platform(capacity: int = 5) -> tuple[Platform, threading.Event, threading.Event]:
    """A platform whose ``apply`` hangs (before changing anything) until
    ``gate`` is set; ``entered`` is set once a call is inside."""
    gate, entered = threading.Event(), threading.Event()

    def hang(desired: int, p: Platform) -> None:
        entered.set()
        gate.wait(10)

    return Platform(capacity=capacity, on_apply=hang, set_first=False), gate, entered


class FlakySource:
    """A metric source in front of a real one whose behaviour a test sets:
    ``ok``, ``down`` (MetricSourceError), ``slow`` (blocks until released),
    ``garbage`` (returns something that is not a Series), ``empty``,
    ``bug`` (an unexpected exception)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.mode = "ok"
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def fetch(self, start: datetime | None, end: datetime) -> Series:
        self.calls += 1
        if self.mode == "down":
            raise MetricSourceError("connection refused (127.0.0.1:9)")
        if self.mode == "slow":
            self.entered.set()
            self.release.wait(10)
            raise MetricSourceError("read timed out")
        if self.mode == "garbage":
            return {"status": "success", "data": "<html>502</html>"}  # type: ignore[return-value]
        if self.mode == "bug":
            raise ZeroDivisionError("division by zero")
        if self.mode == "empty":
            return Series(np.array([], dtype=np.int64), np.array([], dtype=np.float64), "empty")
        return self.inner.fetch(start, end)


def epoch(t: datetime) -> int:
    return to_epoch(t)


def build_live(cfg_path: Path, store: Any, platform: Any, name: str | None = None, source: Any = None):
    """A LiveTarget from a real config file, with ``platform`` as actuator."""
    from engine.build import build_source
    from engine.config import load_config
    from engine.cycle import LiveTarget

    cfg = load_config(cfg_path)
    t = cfg.target(name) if name else cfg.targets[0]
    return LiveTarget(t, source=source if source is not None else build_source(t, cfg), store=store,
                      actuator=platform)


class StepwisePlatform(Platform):
    """A platform whose change takes several calls (a VM resize: stop, then
    modify and start, then running): it declares ``stepwise_apply``, and each
    ``apply`` issues the next step and returns at once; the new capacity is
    set and serving only after the last step."""

    from engine.core.plugins import Capabilities as _Capabilities

    capabilities = _Capabilities(stepwise_apply=True)
    PHASES = ("stopping", "starting", "running")

    def __init__(self, capacity: int = 1) -> None:
        super().__init__(capacity)
        self.phase: int | None = None

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        self.applies.append((decision_id, desired))
        if desired == self.capacity and self.phase is None:
            return ActuationResult(desired, desired, True, timedelta(0), (f"req-{len(self.applies)}",),
                                   details={"target": desired})
        self.phase = 0 if self.phase is None else self.phase + 1
        phase = self.PHASES[self.phase]
        done = phase == "running"
        if done:
            self.capacity, self.phase = desired, None
        return ActuationResult(desired, self.capacity, done, timedelta(0), (f"req-{len(self.applies)}",),
                               details={"target": desired, "phase": phase})

    def read(self) -> CapacityReading:
        return CapacityReading(self.capacity, 0 if self.phase is not None else self.capacity)
