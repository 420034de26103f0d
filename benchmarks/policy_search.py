"""The policy search behind ``engine.backtest.DEFAULT_POLICY``.

A small, declared grid of predictive policies, each replayed on every
qualifying trace (>= 14 days, see ``benchmarks/backtest.py``) against the
reactive HPA baseline, through the engine's own ``run_policy`` (the live
loop's ``TargetRunner`` and ``decide``).

A forecaster's output does not depend on the policy, so each (trace,
forecaster) pair is forecast once and the forecasts are replayed for every
policy of the grid (:class:`Replay`); that is the only shortcut, and the
chosen configuration is then re-run end to end by ``benchmarks/backtest.py``.

Ranking (REFERENCE.md section 4 warns that the best *median* shifts cost onto
a few traces): a configuration must have a lower median violation_fraction
than reactive at a median cost_vs_oracle no more than 0.05 above reactive's;
among those, the one that beats reactive on both violations and cost on the
most traces, then the lower mean cost, then the lower median violations.

    python benchmarks/policy_search.py [--jobs 2] [--out benchmarks/results/search.json]

The declared grid took 22 minutes on 2 shared cores (18 traces, 24 policies).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.backtest import TRACES_DIR, qualifying_traces  # noqa: E402
from engine.backtest import Scenario, prepare, reactive_policy, run_policy  # noqa: E402
from engine.config import ForecasterConfig  # noqa: E402
from engine.progress import progress  # noqa: E402
from engine.sources.csv import read_csv  # noqa: E402
from engine.core.types import Forecast, Series  # noqa: E402
from engine.core.units import to_epoch  # noqa: E402
from forecasters import create  # noqa: E402

METRICS = ("violation_fraction", "unserved_fraction", "cost_vs_oracle", "actions")


class Record:
    """Wraps a forecaster and keeps every forecast (or the error) by cycle."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.supports_quantiles = inner.supports_quantiles
        self.log: dict[int, Forecast | BaseException] = {}

    @property
    def min_history(self) -> int:
        return self.inner.min_history

    @property
    def version(self) -> str:
        return self.inner.version

    def fit(self, history: Series) -> None:
        self.inner.fit(history)

    def update(self, history: Series) -> None:
        self.inner.update(history)

    def predict(self, start, horizon: int, quantiles: Sequence[float]) -> Forecast:
        try:
            fc = self.inner.predict(start, horizon, quantiles)
        except BaseException as exc:
            self.log[to_epoch(start)] = exc
            raise
        self.log[to_epoch(start)] = fc
        return fc

    def save(self, path) -> None:  # pragma: no cover - protocol completeness
        self.inner.save(path)


class Replay:
    """Serves the forecasts a :class:`Record` kept (fit/update do nothing)."""

    supports_quantiles = True

    def __init__(self, name: str, log: dict[int, Forecast | BaseException]) -> None:
        self.name = name
        self.log = log
        self.min_history = 1
        self.version = f"{name}:replay"

    def fit(self, history: Series) -> None:
        pass

    def update(self, history: Series) -> None:
        pass

    def predict(self, start, horizon: int, quantiles: Sequence[float]) -> Forecast:
        out = self.log.get(to_epoch(start))
        if out is None:
            from engine.core.errors import ForecastError

            raise ForecastError("no forecast recorded for this cycle")
        if isinstance(out, BaseException):
            raise out
        return out

    def save(self, path) -> None:  # pragma: no cover
        raise NotImplementedError


def policy_dict(u: float, target: float, cap: float | None, tolerance: float, down: str) -> dict[str, Any]:
    return {
        "target_utilization": u,
        "margin": {"quantile": 0.9, "conformal": True, "conformal_target": target, "cap": cap,
                   "conformal_window": "3d", "conformal_min_samples": 48},
        "reactive": {"enabled": True, "tolerance": tolerance, "target_utilization": u},
        "stabilization": {"scale_up": "0s", "scale_down": down},
        "scale_up": {"policies": [], "select": "Max"},
        "scale_down": {"policies": [], "select": "Max"},
    }


def grid() -> list[tuple[str, dict[str, Any]]]:
    """The declared grid: REFERENCE.md section 4's levers, a few values each."""
    out = []
    for u, target, cap, tol, down in itertools.product(
        (0.8, 0.85, 0.9),  # predictive target utilization (reactive runs at 0.7)
        (0.05, 0.1),  # conformal under-forecast rate
        (0.1, 0.25),  # headroom cap
        (0.1, 0.0),  # tolerance of the reactive override
        ("5m",),  # one interval of scale-down stabilization
    ):
        key = f"u{u}_t{target}_c{cap}_tol{tol}_d{down}"
        out.append((key, policy_dict(u, target, cap, tol, down)))
    return out


def evaluate_trace(path: str, forecasters: Sequence[str], configs: list[tuple[str, dict[str, Any]]]) -> dict:
    t0 = time.perf_counter()
    prep = prepare(read_csv(path), Scenario(), trace=path)
    res: dict[str, Any] = {"trace": path, "reactive": run_policy(prep, "reactive", reactive_policy(prep.scenario),
                                                                  ForecasterConfig()).metrics, "runs": {}}
    for fname in forecasters:
        fcfg = ForecasterConfig(name=fname)
        rec = Record(create(fname, {}))
        for i, (key, pol) in enumerate(configs):
            model = rec if i == 0 else Replay(fname, rec.log)
            run = run_policy(prep, "predictive", pol, fcfg, model=model)
            res["runs"][f"{fname}|{key}"] = run.metrics
    res["seconds"] = time.perf_counter() - t0
    return res


def summarize(results: list[dict]) -> list[dict]:
    keys = list(results[0]["runs"])
    rv = [r["reactive"]["violation_fraction"] for r in results]
    rc = [r["reactive"]["cost_vs_oracle"] for r in results]
    rows = []
    for key in keys:
        pv = [r["runs"][key]["violation_fraction"] for r in results]
        pc = [r["runs"][key]["cost_vs_oracle"] for r in results]
        dom = sum(1 for a, b, c, d in zip(pv, rv, pc, rc) if a <= b and c <= d)
        rows.append({
            "config": key, "median_violation": statistics.median(pv), "median_cost": statistics.median(pc),
            "mean_violation": statistics.fmean(pv), "mean_cost": statistics.fmean(pc),
            "dominates": dom, "viol_le": sum(a <= b for a, b in zip(pv, rv)),
            "cost_le": sum(c <= d for c, d in zip(pc, rc)),
            "meets_target": statistics.median(pv) < statistics.median(rv)
            and statistics.median(pc) <= statistics.median(rc) + 0.05,
        })
    rows.sort(key=lambda r: (not r["meets_target"], -r["dominates"], r["mean_cost"], r["median_violation"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", default=str(TRACES_DIR))
    ap.add_argument("--forecasters", default="seasonal_persistence")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search.json"))
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar (drawn only on a terminal)")
    args = ap.parse_args(argv)
    traces = [str(p) for p in qualifying_traces(Path(args.traces))]
    configs = grid()
    fnames = args.forecasters.split(",")
    print(f"{len(configs)} policies x {len(fnames)} forecasters = {len(configs) * len(fnames)} configurations "
          f"on {len(traces)} traces", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as ex, progress(len(traces), "policy search", args.quiet) as bar:
        futs = [ex.submit(evaluate_trace, t, fnames, configs) for t in traces]
        results = []
        for f in futs:
            results.append(f.result())
            bar.update()
            bar.print(f"  {Path(results[-1]['trace']).name}: {results[-1]['seconds']:.1f} s")
    rows = summarize(results)
    rv = [r["reactive"]["violation_fraction"] for r in results]
    rc = [r["reactive"]["cost_vs_oracle"] for r in results]
    print(f"reactive: median violation {statistics.median(rv):.4f}, median cost {statistics.median(rc):.3f}, "
          f"mean cost {statistics.fmean(rc):.3f}  ({time.perf_counter() - t0:.0f} s)")
    print(f"{'config':<58}{'med viol':>9}{'med cost':>9}{'mean cost':>10}{'dom':>5}{'v<=':>5}{'c<=':>5}  ok")
    for r in rows[:40]:
        print(f"{r['config']:<58}{r['median_violation']:>9.4f}{r['median_cost']:>9.3f}{r['mean_cost']:>10.3f}"
              f"{r['dominates']:>5}{r['viol_le']:>5}{r['cost_le']:>5}  {'yes' if r['meets_target'] else 'no'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"configurations": len(rows), "traces": traces, "ranking": rows,
                                          "per_trace": results}, indent=1, default=float))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
