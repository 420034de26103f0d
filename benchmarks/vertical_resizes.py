"""When each policy of the frontier's vertical scenario resizes, trace by
trace: the planner's and the threshold resizer's rung changes (the interval
the new rung serves from, its time, from and to), beside their cost and
unserved demand. What the per-trace tables of ``frontier.py --vertical``
summarize as "cheaper" and "less unserved", shown change by change.

    nice -n 10 python benchmarks/vertical_resizes.py --only 825cc2,cc0c53,ac20cd --max-days 14

Prints one block per trace; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.backtest import TRACES_DIR, qualifying_traces  # noqa: E402
from benchmarks.frontier import VERTICAL, load_trace, policy_settings  # noqa: E402
from engine.backtest import run_backtest  # noqa: E402
from engine.core.units import from_epoch, isoformat  # noqa: E402
from engine.config import default_forecaster  # noqa: E402


def resizes(in_service: np.ndarray, timestamps: np.ndarray) -> list[tuple[int, str, int, int]]:
    """(interval, its time, rung before, rung after) of each change of the
    rung in service."""
    at = np.flatnonzero(np.diff(in_service) != 0) + 1
    return [(int(i), isoformat(from_epoch(int(timestamps[i]))), int(in_service[i - 1]), int(in_service[i]))
            for i in at]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", default=str(TRACES_DIR), help="folder of <dataset>/<trace>.csv files")
    ap.add_argument("--only", required=True, help="comma-separated substrings of the traces to replay")
    ap.add_argument("--policy", default="plan", help="a frontier policy name or a policy file (default: plan)")
    ap.add_argument("--max-days", type=float, default=14)
    args = ap.parse_args(argv)
    settings = policy_settings(args.policy)
    fcfg = default_forecaster(settings.get("kind"))
    root = Path(args.traces).resolve()
    for path in qualifying_traces(root):
        name = str(path.relative_to(root))
        if not any(s in name for s in args.only.split(",")):
            continue
        r = run_backtest(load_trace(path, args.max_days), scenario=VERTICAL, policy=settings, forecaster=fcfg,
                         trace=name)
        print(name)
        for label in (r.policy_name, "threshold"):
            run = r.runs[label]
            print(f"  {label}: ${run.actuation['cost_per_day']:.4f} a day, "
                  f"{run.metrics['unserved_fraction']:.4%} unserved, {run.actuation['changes_per_day']:.2f} "
                  f"resizes a day; from rung {int(run.in_service[0])}:")
            for i, at, a, b in resizes(run.in_service, r.timestamps):
                print(f"    interval {i:5d}  {at}  {a} -> {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
