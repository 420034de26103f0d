"""``forescale demo``: the main job on an embedded default.

Replays a bundled real trace (``engine/data/demo_rds_cpu.csv``) through the
full live loop — replay metric source, forecaster, policy, dry-run actuator,
SQLite state and decision log — on an accelerated simulated clock, printing
each decision with its reasons as it happens. It ends with the backtest
comparison (oracle / reactive / predictive) and a picture. Needs no cloud
account and no Prometheus.
"""

from __future__ import annotations

import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import yaml

from .backtest import DEFAULT_FORECASTER, DEFAULT_POLICY, Scenario, plot, run_backtest, write_json
from .build import build_targets
from .clock import ManualClock
from .config import load_config
from .sources.csv import read_csv
from .store import Store
from .units import isoformat


def _write_config(out: Path, trace: Path, cpr: float, scenario: Scenario) -> Path:
    policy = {**DEFAULT_POLICY, "capacity_per_replica": round(cpr, 6), "min_replicas": scenario.min_replicas,
              "max_replicas": scenario.max_replicas, "lead_time": "10m", "hold": "5m", "max_staleness": "15m"}
    cfg = {
        "state": "forescale.db",
        "targets": [{
            "name": "rds-demo",
            "interval": "5m",
            "mode": "auto",
            "source": {"type": "replay", "path": str(trace.resolve())},
            "forecaster": {"name": DEFAULT_FORECASTER.name, "refit_every": "1d", "history": "14d"},
            "policy": policy,
            "actuator": {"type": "dry-run"},
        }],
    }
    path = out / "demo.yaml"
    path.write_text("# written by `forescale demo`: the config the demo ran\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_demo(out: Path, days: float = 5.0, verbose: bool = True, trace: Path | None = None) -> int:
    from .cli import DEMO_TRACE

    trace = trace or DEMO_TRACE
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("forescale.db*"):
        f.unlink()
    series = read_csv(trace)
    scenario = Scenario()
    valid = series.values[~np.isnan(series.values)]
    cpr = float(np.quantile(valid, 0.99)) / (20 * scenario.target_utilization)
    cfg_path = _write_config(out, trace, cpr, scenario)
    cfg = load_config(cfg_path)
    span = timedelta(seconds=int(series.timestamps[-1] - series.timestamps[0]))
    live = min(timedelta(days=days), span - scenario.warmup)
    start = series.end - live
    print(f"forescale demo: replaying {trace.name} ({span.days} days of real RDS CPU, 5-minute samples)")
    print(f"  live loop over the last {live.days} d {live.seconds // 3600} h on a simulated clock: "
          f"forecaster {DEFAULT_FORECASTER.name}, dry-run actuator, state {cfg.state_path}")
    print(f"  1 replica carries {cpr:.3g} % CPU; policy sizes for the forecast at now+10 min, "
          f"target utilization {DEFAULT_POLICY['target_utilization']}")
    print()
    clock = ManualClock(start)
    t0 = time.perf_counter()
    n = changes = fallbacks = 0
    with Store(cfg.state_path) as store:
        store.lock()
        (target,) = build_targets(cfg, store)
        cycles = int(live / cfg.targets[0].interval)
        last_day = None
        for i in range(cycles + 1):
            now = clock.now()
            res = target.run(now)
            n += 1
            d = res.decision
            if d is not None:
                fallbacks += d.fallback
                if d.desired != d.current:
                    changes += 1
                    if verbose:
                        reasons = ", ".join(s.reason for s in d.steps if s.changed and s.name != "capacity")
                        obs = d.step("reactive")
                        fc = f"forecast {d.forecast_demand:6.2f}" if d.forecast_demand is not None else "no forecast   "
                        print(f"  {isoformat(now)}  {d.current:>2} -> {d.desired:<2} {fc}  "
                              f"{'FALLBACK ' if d.fallback else ''}{reasons}")
                        del obs
            day = now.date()
            if day != last_day:
                last_day = day
                if not verbose:
                    pct = 100 * i / max(1, cycles)
                    print(f"\r  replaying... {pct:5.1f} %  ({isoformat(now)})", end="", file=sys.stderr)
            clock.advance(cfg.targets[0].interval)
        if not verbose:
            print(file=sys.stderr)
        applied = len(store.decisions("rds-demo", limit=100000, status="applied"))
    elapsed = time.perf_counter() - t0
    print()
    print(f"live replay: {n} cycles in {elapsed:.1f} s, {changes} capacity changes ({applied} applied by the "
          f"dry-run actuator), {fallbacks} fallback cycles")
    print(f"decision log: forescale decisions --config {cfg_path} --limit 20")
    print()
    print("backtest over the whole trace (REFERENCE.md section 3 scenario):")
    result = run_backtest(series, scenario=scenario, trace=trace.name)
    print(result.table())
    write_json(result, out / "backtest.json")
    plot(result, out / "backtest.png")
    print()
    print(f"wrote {out / 'backtest.json'} and {out / 'backtest.png'}")
    return 0


def clean(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
