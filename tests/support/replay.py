"""A real run of the engine for the observability tests: bundled or shared
traces replayed through the daemon's own per-result path (config ->
``Daemon`` -> ``LiveTarget.run`` -> ``Daemon.on_result`` -> ``EngineMetrics``)
on a manual clock, one cycle after another in this thread.

The series it records are what the engine really exports, so the alert
rules' unit tests, the exposition lint and the remote-write tests are fed
from it, never from values typed by hand.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from engine.core.clock import ManualClock
from engine.core.units import from_epoch, to_epoch
from engine.daemon import Daemon
from engine.demo import DEMO_TRACE
from engine.metrics import EngineMetrics
from engine.sources.csv import read_csv
from tests.support import TRACES

#: the policy the demo runs (lead time 10 min, hold 5 min)
POLICY = {"capacity_per_replica": 10.0, "target_utilization": 0.8, "min_replicas": 1, "max_replicas": 50,
          "lead_time": "10m", "hold": "5m", "max_staleness": "15m",
          "margin": {"quantile": 0.9}}


@dataclass
class Replay:
    """One recorded run: the daemon (closed), its metrics, and per cycle the
    value of every exported sample (``(name, labels) -> value``)."""

    daemon: Daemon
    metrics: EngineMetrics
    snapshots: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

    def series(self, name: str, **labels: str) -> list[float | None]:
        """One sample's value at every cycle (``None`` where it was absent)."""
        key = (name, tuple(sorted(labels.items())))
        return [snap.get(key) for snap in self.snapshots]


def target(name: str, trace: Path, forecaster: str = "seasonal_persistence", **extra: Any) -> dict[str, Any]:
    return {"name": name, "interval": "5m", "mode": "observe",
            "source": {"type": "replay", "path": str(trace)},
            "forecaster": {"name": forecaster, "refit_every": "1d", "history": "7d"},
            "policy": POLICY, **extra}


def snapshot(metrics: EngineMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in metrics.registry.collect():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def run_replay(workdir: Path, targets: list[dict[str, Any]], *, cycles: int, start_before_end: timedelta,
               server: dict[str, Any] | None = None) -> Replay:
    """Run ``cycles`` cycles of every target, starting ``start_before_end``
    before the end of the first target's trace. The targets' traces should
    share one time span (the demo trace and the shared NAB traces do not:
    replay each with ``start_at`` when mixing)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for f in workdir.glob("forescale.db*"):
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    cfg = {"state": "forescale.db", "server": {"enabled": False, **(server or {})}, "targets": targets}
    path = workdir / "replay.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    end = read_csv(targets[0]["source"]["path"]).end
    start = end - start_before_end
    # on the 5-minute epoch grid, where the resampled history's bins end
    clock = ManualClock(from_epoch(to_epoch(start) // 300 * 300))
    metrics = EngineMetrics()
    daemon = Daemon(path, clock=clock, metrics=metrics)
    rep = Replay(daemon, metrics)
    try:
        for _ in range(cycles):
            now = clock.now()
            for w in daemon.workers.values():
                res = w.live.run(now)
                daemon.on_result(res)
                rep.results.append(res)
            rep.snapshots.append(snapshot(metrics))
            clock.advance(timedelta(minutes=5))
    finally:
        daemon.shutdown(0)
    return rep


def demo_replay(workdir: Path, cycles: int = 60) -> Replay:
    """The demo's trace and forecaster, the last ``cycles`` 5-minute cycles
    of it."""
    return run_replay(workdir, [target("rds-demo", DEMO_TRACE)], cycles=cycles,
                      start_before_end=timedelta(minutes=5 * cycles))


#: the real trace the anomaly tests inject an incident into
INCIDENT_TRACE = TRACES / "nab" / "ec2_cpu_utilization_5f5533.csv"


def incident_trace(factor: float = 3.0, hours: tuple[int, int] = (14, 16)):
    """The real trace, and a copy with an incident: demand x ``factor`` from
    14:00 to 16:00 UTC on its 13th day."""
    s = read_csv(INCIDENT_TRACE).regular(timedelta(minutes=5))
    ts, clean = s.timestamps, s.values
    day = int(ts[0]) // 86400 * 86400 + 12 * 86400
    a, b = day + hours[0] * 3600, day + hours[1] * 3600
    inside = (ts >= a) & (ts < b)
    hit = clean.copy()
    hit[inside] *= factor
    return ts, clean, hit, inside, day


def fmt(v: float | None) -> str:
    """A promtool ``values`` item: ``_`` for a missing sample."""
    if v is None or math.isnan(v):
        return "_"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return f"{v:.6g}"


#: the storage-quota case: two volumes (percent used) with a predictive alert
#: at 95 % of their size, forecast 6 h ahead by Holt-Winters (its damped
#: trend follows a steady fill); "data" fills at 11.5 % a day and crosses 95 %
#: a few hours after the replay ends, "logs" at 2 % a day stays far below
STORAGE_ALERT = {"name": "storage-full", "capacity": 100.0, "fraction": 0.95, "level": 0.9}


def storage_targets(workdir: Path) -> list[dict[str, Any]]:
    out = []
    for name, per_day in (("data", 11.5), ("logs", 2.0)):
        trace = volume_fill_trace(workdir / f"{name}.csv", per_day=per_day, start=36.0)
        t = target(name, trace, "holt_winters", alerts=[STORAGE_ALERT])
        t["forecaster"]["extra_horizon"] = "6h"
        out.append(t)
    return out


def storage_replay(workdir: Path, cycles: int = 144) -> Replay:
    """The last ``cycles`` cycles of both volumes, in one daemon (their
    traces share a time span)."""
    return run_replay(workdir, storage_targets(workdir), cycles=cycles,
                      start_before_end=timedelta(minutes=5 * cycles))


def volume_fill_trace(path: Path, *, days: float = 5.0, start: float = 40.0, per_day: float = 11.5,
                      seed: int = 7, end_epoch: int = 1_700_000_100) -> Path:
    """A volume filling up, in percent of its size, every 5 minutes: writes
    follow a daily cycle (busier by day), so usage climbs in steps of a day
    with a little noise. Synthetic (no public storage-usage trace is
    bundled): the shape of the storage-quota case, made reproducible by the
    seed."""
    import numpy as np

    n = int(days * 288)
    t = np.arange(n)
    rate = per_day / 288 * (1 + 0.8 * np.sin(2 * np.pi * t / 288))  # percent per 5 minutes
    rng = np.random.default_rng(seed)
    used = start + np.cumsum(rate) + rng.normal(0, 0.05, n)
    ts = end_epoch - 300 * (n - 1 - t)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("timestamp,value\n" + "".join(f"{a},{b:.4f}\n" for a, b in zip(ts.tolist(), used.tolist())))
    return path
