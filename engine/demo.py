"""``forescale demo``: the main job on an embedded default.

Replays a bundled real trace (``engine/data/demo_rds_cpu.csv``) through the
full live loop — replay metric source, forecaster, policy, dry-run actuator,
SQLite state and decision log — on an accelerated simulated clock, printing
each decision with its reasons as it happens. It ends with the backtest
comparison (oracle / reactive / predictive) and a picture. Needs no cloud
account and no Prometheus.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from .backtest import CALM_POLICY, DEFAULT_FORECASTER, ResourceTrace, Scenario, plot, run_backtest, write_json
from .build import build_targets
from .core.clock import ManualClock
from .config import load_config
from .sources.csv import read_csv
from .store import Store
from .core.types import Series
from .core.units import isoformat


#: the bundled trace the demo replays (ships in the wheel)
DEMO_TRACE = Path(__file__).parent / "data" / "demo_rds_cpu.csv"
#: the policy the demo runs, live and in the final comparison
DEMO_POLICY = CALM_POLICY


class _Hour:
    """One printed line per simulated hour: where capacity went and why."""

    def __init__(self, start, capacity: int) -> None:
        self.start = start
        self.first = capacity
        self.last = capacity
        self.changes = 0
        self.demand: list[float] = []
        self.forecast: list[float] = []
        self.reasons: Counter[str] = Counter()
        self.sized: Counter[str] = Counter()  # several resources: which one set the size

    def add(self, d) -> None:
        self.last = d.desired
        if "resource" in d.extra:
            self.sized[d.extra["resource"]] += 1
        if d.desired != d.current:
            self.changes += 1
            self.reasons.update(s.reason for s in d.steps
                                if s.changed and s.name not in ("capacity", "margin", "resources"))
            m = d.step("margin")
            if m is not None:
                self.reasons[m.reason] += 1
        r = d.step("reactive")
        obs = r.message.split("observation ", 1)[1].split(":", 1)[0] if r and "observation " in r.message else None
        if obs:
            self.demand.append(float(obs))
        if d.forecast_demand is not None:
            self.forecast.append(d.forecast_demand)

    def line(self) -> str:
        dem = f"{min(self.demand):5.1f}-{max(self.demand):5.1f}" if self.demand else "     -     "
        fc = f"{min(self.forecast):5.1f}-{max(self.forecast):5.1f}" if self.forecast else "     -     "
        why = ", ".join(f"{k} x{v}" for k, v in self.reasons.most_common(3))
        if self.sized:
            why = ("sized for " + ", ".join(f"{k} x{v}" for k, v in self.sized.most_common())
                   + (f"; {why}" if why else ""))
        return (f"  {self.start:%Y-%m-%d %H:00}   {self.first:>3} -> {self.last:<3}   {dem}   {fc}   "
                f"{self.changes:>5}    {why}")


def _write_config(out: Path, trace: Path, cpr: float, scenario: Scenario, initial: int,
                  resources: Mapping[str, tuple[Path, float]] | None = None) -> Path:
    policy = {**DEMO_POLICY, "capacity_per_replica": round(cpr, 6), "min_replicas": scenario.min_replicas,
              "max_replicas": scenario.max_replicas, "lead_time": "10m", "hold": "5m", "max_staleness": "15m"}
    target: dict[str, Any] = {
        "name": "rds-demo",
        "interval": "5m",
        "mode": "auto",
        "source": {"type": "replay", "path": str(trace.resolve())},
        "forecaster": {"name": DEFAULT_FORECASTER.name, "refit_every": "1d", "history": "14d"},
        "policy": policy,
        "actuator": {"type": "dry-run", "initial_capacity": initial},
    }
    if resources:
        target["resource"] = "cpu"
        target["resources"] = {n: {"source": {"type": "replay", "path": str(path.resolve())},
                                   "capacity_per_replica": round(c, 6)} for n, (path, c) in resources.items()}
    cfg = {"state": "forescale.db", "targets": [target]}
    path = out / "demo.yaml"
    path.write_text("# written by `forescale demo`: the config the demo ran\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def _replica_size(series: Series, scenario: Scenario) -> float:
    """What one replica carries of a signal: its 99th percentile needs 20
    replicas at the scenario's utilization (the backtest's default)."""
    valid = series.values[~np.isnan(series.values)]
    return float(np.quantile(valid, 0.99)) / (20 * scenario.target_utilization)


def _initial(series: Series, start: Any, cpr: float) -> int:
    # start where a well-run system would be: the capacity the load at the
    # start of the replay needs at the policy's utilization
    first = series.until(start).last_valid()
    return max(1, math.ceil((first[1] if first else 0.0) / (cpr * DEMO_POLICY["target_utilization"])))


def run_demo(out: Path, days: float = 5.0, verbose: bool = True, trace: Path | None = None,
             resources: Mapping[str, Path] | None = None) -> int:
    """``resources``: further demand signals of the demo's target (name ->
    a timestamp,value CSV over the same days), each sized at 20 replicas
    for its 99th percentile; the decision sizes for the one that needs the
    most."""
    trace = trace or DEMO_TRACE
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("forescale.db*"):  # a fresh run: the state file and its model checkpoints
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    series = read_csv(trace)
    scenario = Scenario()
    cpr = _replica_size(series, scenario)
    span = timedelta(seconds=int(series.timestamps[-1] - series.timestamps[0]))
    live = min(timedelta(days=days), span - scenario.warmup)
    start = series.end - live
    extra = {n: read_csv(p) for n, p in (resources or {}).items()}
    sizes = {n: _replica_size(s, scenario) for n, s in extra.items()}
    initial = max([_initial(series, start, cpr)] + [_initial(s, start, sizes[n]) for n, s in extra.items()])
    cfg_path = _write_config(out, trace, cpr, scenario, initial,
                             {n: (p, sizes[n]) for n, p in (resources or {}).items()})
    cfg = load_config(cfg_path)
    print(f"forescale demo: replaying {trace.name} ({span.days} days of real RDS CPU, 5-minute samples)")
    print(f"  live loop over the last {live.days} d {live.seconds // 3600} h on a simulated clock: "
          f"forecaster {DEFAULT_FORECASTER.name}, dry-run actuator, state {cfg.state_path}")
    print(f"  1 replica carries {cpr:.3g} % CPU; policy sizes for the forecast at now+10 min, "
          f"target utilization {DEMO_POLICY['target_utilization']}, scale-down after "
          f"{DEMO_POLICY['stabilization']['scale_down']} of lower recommendations")
    for n in extra:
        print(f"  resource {n} ({Path(resources[n]).name}, 1 replica carries {sizes[n]:.4g}): the size is the "  # type: ignore[index]
              "larger of what cpu and it need")
    print()
    clock = ManualClock(start)
    t0 = time.perf_counter()
    n = changes = fallbacks = 0
    if verbose:
        print("  hour (UTC)          capacity      demand        forecast@10m   changes  reasons")
    with Store(cfg.state_path) as store:
        store.lock()
        (target,) = build_targets(cfg, store)
        cycles = int(live / cfg.targets[0].interval)
        hour: _Hour | None = None
        # --quiet on a terminal: one progress line in place; in a pipe or a
        # log, nothing (docs/cli.md)
        ticker = not verbose and sys.stderr.isatty()
        for i in range(cycles + 1):
            now = clock.now()
            res = target.run(now)
            n += 1
            d = res.decision
            if d is not None:
                fallbacks += d.fallback
                changes += d.desired != d.current
                key = now.replace(minute=0, second=0)
                if hour is None or hour.start != key:
                    if hour is not None and verbose:
                        print(hour.line())
                    hour = _Hour(key, d.current)
                hour.add(d)
                r = d.step("reactive")
                if verbose and d.desired != d.current and (d.fallback or (r is not None and r.changed)):
                    # the safety nets, printed as they happen
                    why = "; ".join(f"{s.reason}: {s.message}" for s in d.steps if s.changed
                                    and s.name in ("data", "reactive", "partial_data"))
                    print(f"    {isoformat(now)}  {d.current} -> {d.desired}  {why}")
            if ticker and i % 288 == 0:
                print(f"\r  replaying... {100 * i / max(1, cycles):5.1f} %  ({isoformat(now)})", end="",
                      file=sys.stderr)
            clock.advance(cfg.targets[0].interval)
        if hour is not None and verbose:
            print(hour.line())
        if ticker:
            print(file=sys.stderr)
        applied = len(store.decisions("rds-demo", limit=100000, status="applied"))
    elapsed = time.perf_counter() - t0
    print()
    print(f"live replay: {n} cycles in {elapsed:.1f} s, {changes} capacity changes ({applied} applied by the "
          f"dry-run actuator), {fallbacks} fallback cycles")
    print(f"decision log: forescale decisions --config {cfg_path} --limit 20")
    print()
    print("backtest over the whole trace (10-minute lead time, HPA at 70 % utilization):")
    result = run_backtest(series, scenario=scenario, policy=DEMO_POLICY, trace=trace.name,
                          resources=[ResourceTrace(n, s, sizes[n]) for n, s in extra.items()],
                          resource="cpu" if extra else "demand")
    print(result.table())
    print()
    print(verdict(result))
    write_json(result, out / "backtest.json")
    print()
    try:
        plot(result, out / "backtest.png", last=live)
    except ImportError:  # matplotlib is the plot extra; the demo works without it
        print(f"wrote {out / 'backtest.json'} (for the chart: pip install 'forescale[plot]')")
        return 0
    print(f"wrote {out / 'backtest.json'} and {out / 'backtest.png'}")
    return 0


def verdict(result) -> str:
    """One line: how the policy compares with the HPA on each measure."""
    p, r = result.runs[result.policy_name].metrics, result.runs["reactive"].metrics
    parts = []
    for key, what in (("violation_fraction", "saturated intervals"), ("unserved_fraction", "unserved demand"),
                      ("cost_vs_oracle", "cost"), ("actions", "capacity changes")):
        a, b = p[key], r[key]
        word = "same" if abs(a - b) <= 1e-12 else ("lower" if a < b else "HIGHER")
        parts.append(f"{what} {word} ({_num(a)} vs {_num(b)})")
    return f"{result.policy_name} against reactive: " + "; ".join(parts)


def _num(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:.4f}"


def clean(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
