"""Planner speed: one planning step (``policies.planner.plan``: risk tables,
the exact DP, backtracking, the schedule) for 100 levels x 72 steps.

    python benchmarks/planner_speed.py                    # 100 levels x 72 steps, 200 runs
    python benchmarks/planner_speed.py --levels 100 --steps 576 --runs 50
    python benchmarks/planner_speed.py --replay nab/rds_cpu_utilization_cc0c53 --days 7

``--replay TRACE`` (a shared trace, by its path under the traces folder
without ``.csv``) also replays the planner with its defaults (``kind: plan``
and its default forecaster, the blend of seasonal persistence and
Holt-Winters; ``--forecaster NAME`` for another) over the first ``--days``
days of that trace through the backtest (the live engine's cycle) and
reports the time per cycle and the parts of it spent in the forecaster's
``predict`` and in its fits (the daily refits).

Reports the median and 90th percentile wall time of a whole planning step
(``--steps`` planned steps after a 10-minute lead time), with every hard
constraint switched on (change
spacing 30 m, minimum lifetime 1 h, a scale-in window), so the DP runs over
its largest state space for those settings. Target (issue 9): well under
50 ms per planning step on the 2-core development machine. Writes
``benchmarks/results/planner_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core.types import Forecast, Observation, ScaleEvent, ScalingState  # noqa: E402
from policies import PolicyConfig  # noqa: E402
from policies import planner as P  # noqa: E402


def problem(levels: int, steps: int, seed: int = 0):
    """A forecast of ``steps`` planned 5-minute points (plus one inside the
    lead time) with a daily-shaped peak and
    widening quantiles, and a policy with ``levels`` replica levels."""
    rng = np.random.default_rng(seed)
    now = datetime(2024, 3, 1, 10, 0, tzinfo=timezone.utc)
    t0 = int(now.timestamp())
    steps += 1
    ts = t0 + 300 * np.arange(1, steps + 1)
    hours = (ts % 86400) / 3600
    point = 40 * levels * (0.5 + 0.4 * np.sin((hours - 8) / 24 * 2 * np.pi)) * (1 + 0.05 * rng.standard_normal(steps))
    z = {0.5: 0.0, 0.8: 0.8416, 0.9: 1.2816, 0.95: 1.6449, 0.99: 2.3263}
    sd = 0.05 * point * np.sqrt(1 + np.arange(steps) / 12)
    fc = Forecast(now, ts, point, {q: point + zq * sd for q, zq in z.items()}, "synthetic")
    cfg = PolicyConfig(kind="plan", capacity_per_replica=50.0, min_replicas=1, max_replicas=levels,
                       lead_time="10m", plan={"horizon": f"{steps * 5}m", "change_cost": 2.0,
                                              "min_change_interval": "30m", "min_lifetime": "1h",
                                              "scale_in_windows": ["01:00-05:00"]})
    state = ScalingState(current=levels // 2, observation=Observation(float(point[0]), now),
                         events=(ScaleEvent(now - timedelta(minutes=20), levels // 2 - 1, levels // 2),))
    return fc, state, cfg, now


def measure(fn, runs: int) -> dict[str, float]:
    fn()  # warm up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 3), "p90_ms": round(times[int(0.9 * (len(times) - 1))], 3),
            "runs": runs}


def replay(trace: str, days: float, forecaster: str | None = None) -> dict[str, float]:
    """Seconds per cycle of a planner backtest over the first ``days`` of a
    shared trace, and the shares of them in the forecaster's ``predict`` and
    ``fit``."""
    import forecasters
    from benchmarks.backtest import TRACES_DIR
    from engine.backtest import Scenario, prepare, run_policy
    from engine.config import ForecasterConfig, default_forecaster
    from engine.core.types import Series
    from engine.sources.csv import read_csv

    raw = read_csv(TRACES_DIR / f"{trace}.csv")
    end = raw.timestamps[0] + int(days * 86400)
    keep = raw.timestamps < end
    prep = prepare(Series(raw.timestamps[keep], raw.values[keep], raw.name), Scenario(), trace)
    spent = {"predict": 0.0, "fit": 0.0}
    fcfg = ForecasterConfig(name=forecaster) if forecaster else default_forecaster("plan")

    cls = forecasters.registry.get(fcfg.name)

    def timed(verb: str):
        def call(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return getattr(cls, verb)(self, *args, **kwargs)
            finally:
                spent[verb] += time.perf_counter() - t
        return call

    Timed = type("Timed", (cls,), {verb: timed(verb) for verb in spent})

    t0 = time.perf_counter()
    run = run_policy(prep, "planner", {"kind": "plan"}, fcfg, model=Timed(fcfg.params))
    total = time.perf_counter() - t0
    cycles = len(prep.series)
    return {"trace": trace, "days": days, "cycles": cycles, "forecaster": fcfg.name, "seconds": round(total, 2),
            "ms_per_cycle": round(total / cycles * 1000, 3),
            "forecaster_predict_ms_per_cycle": round(spent["predict"] / cycles * 1000, 3),
            "forecaster_share": round(spent["predict"] / total, 3),
            "forecaster_fit_ms_per_cycle": round(spent["fit"] / cycles * 1000, 3),
            "fit_share": round(spent["fit"] / total, 3), "plans": len(run.plans)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, default=100)
    ap.add_argument("--steps", type=int, default=72)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--replay", metavar="TRACE", help="also time a planner backtest over this shared trace")
    ap.add_argument("--days", type=float, default=7.0, help="days of --replay's trace to replay")
    ap.add_argument("--forecaster", default=None,
                    help="--replay's forecaster (default: the planner's, engine.config.PLAN_FORECASTER)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "planner_speed.json"))
    args = ap.parse_args(argv)
    fc, state, cfg, now = problem(args.levels, args.steps)
    lead = cfg.lead_time
    decision = P.plan(fc, state, cfg, now, lead)
    assert decision.schedule is not None
    planned = len(decision.schedule.planned)
    whole = measure(lambda: P.plan(fc, state, cfg, now, lead), args.runs)
    result = {"levels": args.levels, "planned_steps": planned,
              "plan_step": whole, "python": platform.python_version(), "numpy": np.__version__,
              "machine": platform.machine(), "command": ("python benchmarks/planner_speed.py " + " ".join(
                  argv if argv is not None else sys.argv[1:])).strip()}
    print(f"planner: {args.levels} levels x {planned} planned steps: "
          f"median {whole['median_ms']:.2f} ms, p90 {whole['p90_ms']:.2f} ms per planning step "
          f"({args.runs} runs)")
    if args.replay:
        result["replay"] = r = replay(args.replay, args.days, args.forecaster)
        print(f"planner backtest of {r['trace']} ({r['days']:g} days, {r['cycles']} cycles, {r['forecaster']}): "
              f"{r['ms_per_cycle']:.2f} ms per cycle, {r['forecaster_predict_ms_per_cycle']:.2f} ms of it "
              f"in the forecaster's predict ({r['forecaster_share']:.0%}), "
              f"{r['forecaster_fit_ms_per_cycle']:.2f} ms in its fits ({r['fit_share']:.0%})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
