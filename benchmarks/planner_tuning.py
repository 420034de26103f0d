"""Planner tuning: several policy settings on the frontier's *tuning* traces
(the held-out third is never read), 14 days each, lead times 10 and 30 min,
each trace's forecasts recorded once and replayed for every setting.

    nice -n 10 python3 -m benchmarks.planner_tuning settings.json [trace,substrings] \\
        [--executor local|dask] [--workers N] [--address tcp://host:port]

``settings.json`` maps a name to policy settings (as ``benchmarks/frontier.py
--policy FILE`` takes them). One task per trace (its replays of every
setting share the trace's recorded forecasts) runs on the executor: in this
process by default, on a process pool (``--executor local --workers N``) or
on a Dask cluster (``--executor dask``: a LocalCluster of ``--workers``, or
the scheduler at ``--address``); a task gets the trace's samples, never a
file path. Prints per trace and setting the violation and actions ratios
against the HPA at equal cost (``benchmarks/frontier.py``), then per setting
the geometric mean, traces no worse, median actions ratio, traces with
violations in 0.25-1 % and the mean cost. A trace whose task failed is
named with the reason and left out of the summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.frontier import ForecastCache, TRACES_DIR, gmean, held_out, load_trace, one_trace, qualifying_traces  # noqa: E402
from engine.config import ExecutorConfig, ForecasterConfig  # noqa: E402
from engine.executor import Task, TaskFailure, open_executor  # noqa: E402

LEADS = (30, 10)  # the longest first: its recorded forecasts cover the shorter horizon


@dataclass(frozen=True)
class TraceRows:
    """One trace's replays: (setting, lead minutes, the frontier's row)."""

    trace: str
    rows: tuple[tuple[str, int, dict[str, Any]], ...]
    seconds: float


def tune_trace(raw: Any, name: str, configs: Mapping[str, Any], leads: Sequence[int] = LEADS) -> TraceRows:
    """The task: every setting at every lead time on one trace."""
    t0 = time.perf_counter()
    fc = ForecasterConfig(name="seasonal_persistence")
    cache = ForecastCache()
    rows = []
    for cname, settings in configs.items():
        for lead in leads:
            rows.append((cname, lead, one_trace(raw, name, json.loads(json.dumps(settings)), fc, lead, cache)))
    return TraceRows(name, tuple(rows), time.perf_counter() - t0)


def tuning_traces(substrings: str | None = None) -> list[tuple[Path, str]]:
    root = TRACES_DIR.resolve()
    paths = qualifying_traces(root)
    names = [str(p.relative_to(root)) for p in paths]
    hold = held_out(names)
    sel = [(p, n) for p, n in zip(paths, names) if n not in hold]
    if substrings:
        sel = [(p, n) for p, n in sel if any(k in n for k in substrings.split(","))]
    return sel


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("settings", help="JSON file: name -> policy settings")
    ap.add_argument("traces", nargs="?", help="comma-separated substrings of the trace names to keep")
    ap.add_argument("--executor", choices=("local", "dask"), default="local")
    ap.add_argument("--workers", type=int, default=1, help="pool processes or LocalCluster workers (default 1: "
                                                           "in this process)")
    ap.add_argument("--address", help="a Dask scheduler, tcp://host:port")
    args = ap.parse_args(argv)
    configs = json.loads(Path(args.settings).read_text())
    sel = tuning_traces(args.traces)
    ex_cfg = ExecutorConfig(kind="dask" if args.address else args.executor, address=args.address,
                            local_cluster=args.executor == "dask" and not args.address,
                            workers=None if args.address else args.workers)
    t0 = time.perf_counter()
    with open_executor(ex_cfg) as ex:
        tasks = [Task(n, (ex.share(load_trace(p, 14)), n, configs)) for p, n in sel]
        outcomes = ex.run(tune_trace, tasks)
    wall = time.perf_counter() - t0
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {(c, L): [] for c in configs for L in (10, 30)}
    for res in outcomes:
        if isinstance(res, TaskFailure):
            print(f"trace {res.key} failed ({res.kind}): {res.reason}", flush=True)
            continue
        for cname, lead, r in res.rows:
            rows[(cname, lead)].append(r)
            pm = r["policy"]
            print(f"{cname:<6} L{lead} {res.trace[:38]:<38} vr {r['violation_ratio']:5.2f} ar {r['actions_ratio']:5.2f} "
                  f"c {pm['cost_vs_oracle']:.3f} v {pm['violation_fraction']:.4f} {r['hpa_at_cost']['outside'] or ''} "
                  f"{r['sweep_s'] + r['policy_s']:.0f}s", flush=True)
    print(f"{len(sel)} trace(s) on {ex_cfg.kind} ({ex.workers} worker(s)) in {wall:.1f} s")
    print("SUMMARY")
    for (cname, L), rs in rows.items():
        if not rs:
            continue
        vr = [r["violation_ratio"] for r in rs]
        ar = [r["actions_ratio"] for r in rs if r["actions_ratio"] != float("inf")]
        v = [r["policy"]["violation_fraction"] for r in rs]
        print(f"{cname:<6} L{L}: gmean vr {gmean(vr):.3f} noworse {sum(x <= 1 for x in vr)}/{len(vr)} "
              f"med ar {statistics.median(ar) if ar else float('nan'):.2f} "
              f"slo-band {sum(0.0025 <= x <= 0.01 for x in v)} "
              f"mean c {statistics.fmean(r['policy']['cost_vs_oracle'] for r in rs):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
