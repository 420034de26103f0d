"""The equal-cost frontier comparison (REFERENCE.md section 5).

A policy that spends more replicas than the HPA at u = 0.7 has fewer
violations for that reason alone, so on each trace the reactive HPA (section
1 semantics, the backtest's baseline settings: tolerance 0.1, 300 s
scale-down stabilization, no rate limit, bounds 1..60) is swept over target
utilizations 0.45, 0.50, ..., 0.95 with the scenario fixed (capacity per
replica and oracle need at u = 0.7, lead time, warm-up). Its violations and
actions are interpolated linearly in cost at the policy's cost (outside the
swept range: the nearest end, flagged), and

    violation ratio = (v_policy + 1e-4) / (v_HPA at that cost + 1e-4)
    actions ratio   = actions_policy / actions_HPA at that cost

are reported per trace, with the geometric mean of the violation ratio, the
number of traces with ratio <= 1 and the median actions ratio, at lead times
of 10 and 30 minutes. The hindsight view: the cheapest HPA setting (along the
interpolated curve) that reaches the policy's violation level, and the
policy's cost relative to it.

Traces: the shared traces with at least 14 days. A fixed third of them (sorted
by name, every third from the third: :func:`held_out`) is kept out of every
tuning decision; every table reports the tuning and held-out parts apart.

The sweep runs a fast HPA simulator (:func:`hpa_in_service`: a loop over
plain arrays), proven equal to the pipeline's reactive run interval by
interval in ``tests/benchmarks/test_frontier.py``; the policy itself runs
through ``engine.backtest.run_policy`` (the live loop's code).

    nice -n 10 python benchmarks/frontier.py                      # the default policy, 10 and 30 min
    nice -n 10 python benchmarks/frontier.py --policy predictive-sd30
    nice -n 10 python benchmarks/frontier.py --policy plan
    nice -n 10 python benchmarks/frontier.py --policy plan-slo --part held_out --max-days 14 --name plan-slo-held-out
    nice -n 10 python benchmarks/frontier.py --policy my-policy.yaml --name mine
    nice -n 10 python benchmarks/frontier.py --policy plan --vertical   # the ladder scenario
    nice -n 10 python benchmarks/frontier.py --threshold-sweep benchmarks/results/frontier-x.json  # add the swept
        # threshold resizer to an earlier report's vertical rows (no policy runs)

Writes ``benchmarks/results/frontier-<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import deque
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.backtest import (  # noqa: E402
    AWS_M5_LADDER,
    CALM_POLICY,
    DEFAULT_POLICY,
    Prepared,
    build_forecaster,
    Scenario,
    evaluate,
    prepare,
    run_backtest,
    run_policy,
    score,
    threshold_resizer,
)
from engine.config import ForecasterConfig, default_forecaster  # noqa: E402
from engine.sources.csv import read_csv  # noqa: E402

from benchmarks.backtest import TRACES_DIR, qualifying_traces  # noqa: E402  (the same trace set)

RESULTS = ROOT / "benchmarks" / "results"
#: the HPA's swept target utilizations (REFERENCE.md section 5)
UTILIZATIONS = tuple(round(0.45 + 0.05 * i, 2) for i in range(11))
LEAD_TIMES_MIN = (10, 30)
#: the threshold resizer's swept settings (up, down, window in minutes): the
#: vertical scenario's cost-matched comparison
THRESHOLD_SWEEP = tuple((up, down, w) for up in (0.6, 0.7, 0.8, 0.9, 0.95) for down in (0.1, 0.2, 0.3, 0.4)
                        for w in (5, 10, 30))
EPS = 1e-4
#: the baseline HPA's settings (REFERENCE.md section 3)
HPA_TOLERANCE = 0.1
HPA_SCALE_DOWN_WINDOW = timedelta(seconds=300)

#: named policies (settings; the scenario fills replica size, bounds, lead time)
POLICIES: dict[str, dict[str, Any]] = {
    "default": DEFAULT_POLICY,
    "predictive": DEFAULT_POLICY,
    # REFERENCE.md section 4, note on item 5: a 30-minute scale-down window
    "predictive-sd30": {**DEFAULT_POLICY, "stabilization": {"scale_up": "0s", "scale_down": "30m"}},
    "predictive-calm": CALM_POLICY,
    "plan": {"kind": "plan"},
    # the planner with a stated SLO of 0.5 % saturated intervals (and nothing
    # else: a stated SLO implies its calibration, docs/planner.md)
    "plan-slo": {"kind": "plan", "plan": {"slo": {"saturated_fraction": 0.005}}},
}


# ------------------------------------------------------------------ traces


def held_out(names: Sequence[str]) -> set[str]:
    """The fixed held-out part: sorted by name, every third from the third
    (6 of 18). No tuning decision may look at these."""
    return {n for i, n in enumerate(sorted(names)) if i % 3 == 2}


# ------------------------------------------------------------- the fast HPA
def hpa_in_service(d: np.ndarray, cpr: float, u: float, lo: int, hi: int, lead_steps: int, initial: int,
                   step_s: float, tolerance: float = HPA_TOLERANCE,
                   down_window_s: float = HPA_SCALE_DOWN_WINDOW.total_seconds()) -> np.ndarray:
    """The capacity in service each interval under the reactive HPA of
    REFERENCE.md section 1 as the backtest runs it (one decision per
    interval, no rate limit, scale-up window 0): exactly what
    ``run_policy(prep, "reactive", reactive_policy(...))`` does, in a plain
    loop. At a gap the capacity holds and nothing is recorded."""
    n = d.size
    decided = np.empty(n, dtype=np.int64)
    in_service = np.empty(n, dtype=np.int64)
    unit = cpr * u
    cur = initial
    recent: deque[tuple[int, int]] = deque()  # (interval, recommendation) inside the down window
    for t in range(n):
        serving = initial if t < lead_steps else int(decided[t - lead_steps])
        in_service[t] = serving
        obs = d[t]
        if obs != obs:  # a gap: hold, do not decide
            decided[t] = cur
            continue
        # the HPA core ratio on the capacity in service (policies.steps.hpa_desired)
        units = max(0, math.ceil(obs / unit - 1e-9))
        if serving <= 0:
            rec = units
        else:
            ratio = obs / (serving * unit)
            rec = cur if abs(1.0 - ratio) <= tolerance else units
        # stabilization: upFloor = rec (0 s window); downCeil = max of the
        # recommendations strictly inside the scale-down window and rec
        while recent and (t - recent[0][0]) * step_s >= down_window_s:
            recent.popleft()
        ceil_ = rec
        for _, r in recent:
            if r > ceil_:
                ceil_ = r
        out = cur
        if out < rec:
            out = rec
        if out > ceil_:
            out = ceil_
        out = lo if out < lo else hi if out > hi else out
        decided[t] = out
        cur = out
        recent.append((t, rec))
    return in_service


def sweep(prep: Prepared, utilizations: Iterable[float] = UTILIZATIONS) -> list[dict[str, float]]:
    """The HPA at each utilization, the scenario fixed (cpr, oracle need at
    the scenario's u, lead time, warm-up): section 3's metrics each."""
    assert prep.capacity_per_replica is not None, "the frontier is a horizontal comparison"
    d = prep.series.values
    lo, hi = prep.bounds
    step_s = prep.scenario.interval.total_seconds()
    out = []
    for u in utilizations:
        cap = hpa_in_service(d, prep.capacity_per_replica, u, lo, hi, prep.lead_steps, prep.initial, step_s)
        m = score(np.nan_to_num(d), cap, prep.need, prep.capacity_per_replica, prep.scored)
        out.append({"u": float(u), **m})
    return out


# ------------------------------------------------------------ the comparison
def at_cost(curve: list[dict[str, float]], cost: float) -> dict[str, Any]:
    """The HPA's violations and actions interpolated linearly in cost at
    ``cost``; ``outside`` says the cost is beyond the swept range (the
    nearest end is used)."""
    pts = sorted(curve, key=lambda p: p["cost_vs_oracle"])
    c = np.array([p["cost_vs_oracle"] for p in pts])
    v = np.array([p["violation_fraction"] for p in pts])
    a = np.array([p["actions"] for p in pts], dtype=float)
    outside = None if c[0] <= cost <= c[-1] else ("below" if cost < c[0] else "above")
    return {"violation_fraction": float(np.interp(cost, c, v)), "actions": float(np.interp(cost, c, a)),
            "outside": outside}


def hindsight(curve: list[dict[str, float]], violations: float) -> dict[str, Any]:
    """The cheapest HPA cost (along the curve, linear between swept points)
    whose violations are at most ``violations``; None if no swept setting
    reaches it."""
    pts = sorted(curve, key=lambda p: p["cost_vs_oracle"])
    for i, p in enumerate(pts):
        if p["violation_fraction"] <= violations:
            if i == 0:
                return {"cost_vs_oracle": p["cost_vs_oracle"], "u": p["u"], "edge": True}
            q = pts[i - 1]
            dv = q["violation_fraction"] - p["violation_fraction"]
            f = (q["violation_fraction"] - violations) / dv if dv > 0 else 1.0
            cost = q["cost_vs_oracle"] + f * (p["cost_vs_oracle"] - q["cost_vs_oracle"])
            return {"cost_vs_oracle": cost, "u": q["u"] + f * (p["u"] - q["u"]), "edge": False}
    return {"cost_vs_oracle": None, "u": None, "edge": True}


def compare(policy: dict[str, float], curve: list[dict[str, float]]) -> dict[str, Any]:
    h = at_cost(curve, policy["cost_vs_oracle"])
    hs = hindsight(curve, policy["violation_fraction"])
    return {
        "violation_ratio": (policy["violation_fraction"] + EPS) / (h["violation_fraction"] + EPS),
        "actions_ratio": policy["actions"] / h["actions"] if h["actions"] > 0 else float("inf"),
        "hpa_at_cost": h,
        "hindsight": hs,
        "cost_vs_hindsight": (policy["cost_vs_oracle"] / hs["cost_vs_oracle"]) if hs["cost_vs_oracle"] else None,
    }


def gmean(xs: Sequence[float]) -> float:
    return float(math.exp(statistics.fmean(math.log(x) for x in xs))) if xs else float("nan")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        nan = float("nan")
        return {"traces": 0, "gmean_violation_ratio": nan, "gmean_violation_ratio_in_range": nan, "no_worse": 0, "median_actions_ratio": nan,
                "median_cost_vs_hindsight": nan, "hindsight_unreached": 0, "outside_range": 0, "slo_band": 0,
                "median_cost": nan, "mean_cost": nan}
    vr = [r["violation_ratio"] for r in rows]
    ar = [r["actions_ratio"] for r in rows if math.isfinite(r["actions_ratio"])]
    hs = [r["cost_vs_hindsight"] for r in rows if r["cost_vs_hindsight"] is not None]
    v = [r["policy"]["violation_fraction"] for r in rows]
    return {
        "traces": len(rows),
        "gmean_violation_ratio": gmean(vr),
        # beyond the swept range the nearest end flatters the policy: the
        # HPA could have gone further; the mean without those traces
        "gmean_violation_ratio_in_range": gmean([r["violation_ratio"] for r in rows
                                                  if r["hpa_at_cost"]["outside"] is None]),
        "no_worse": sum(x <= 1.0 for x in vr),
        "median_actions_ratio": statistics.median(ar) if ar else float("nan"),
        "median_cost_vs_hindsight": statistics.median(hs) if hs else float("nan"),
        "hindsight_unreached": sum(r["cost_vs_hindsight"] is None for r in rows),
        "outside_range": sum(r["hpa_at_cost"]["outside"] is not None for r in rows),
        "slo_band": sum(0.0025 <= x <= 0.01 for x in v),
        "median_cost": statistics.median(r["policy"]["cost_vs_oracle"] for r in rows),
        "mean_cost": statistics.fmean(r["policy"]["cost_vs_oracle"] for r in rows),
    }


# ------------------------------------------------------------------ running
def policy_settings(spec: str) -> dict[str, Any]:
    if spec in POLICIES:
        return POLICIES[spec]
    path = Path(spec)
    if not path.exists():
        raise SystemExit(f"--policy: {spec!r} is neither a known name ({', '.join(POLICIES)}) nor a file")
    import yaml

    return yaml.safe_load(path.read_text())


class ForecastCache:
    """One trace's forecasts, shared by the runs of every lead time (a
    forecast does not depend on the policy's lead time): the first run
    forecasts through the real model (fit, update, predict) and keeps each
    forecast by cycle; later runs are served the kept ones, cut to the
    horizon and levels they ask for. The longest lead time runs first, so
    its horizon covers the others'."""

    def __init__(self) -> None:
        self.log: dict[int, Any] = {}
        self.name = ""

    def wrap(self, model: Any) -> Any:
        self.name = model.name
        return _Recording(model, self.log) if not self.log else _Replaying(self.name, self.log)


class _Recording:
    def __init__(self, inner: Any, log: dict[int, Any]) -> None:
        self.inner, self.log = inner, log
        self.name, self.supports_quantiles = inner.name, inner.supports_quantiles
        self.min_history, self.version = inner.min_history, inner.version

    def __deepcopy__(self, memo: dict) -> "_Recording":
        # a copy (the engine's snapshot before a refit) records into the same log
        import copy

        return _Recording(copy.deepcopy(self.inner, memo), self.log)

    def fit(self, history, **kw) -> None:
        self.inner.fit(history, **kw)

    def update(self, history, **kw) -> None:
        self.inner.update(history, **kw)

    def predict(self, start, horizon: int, quantiles: Sequence[float]):
        key = int(start.timestamp())
        try:
            fc = self.inner.predict(start, horizon, quantiles)
        except Exception as exc:  # noqa: BLE001 - replayed as the same failure
            self.log[key] = exc
            raise
        self.log[key] = fc
        return fc

    def save(self, path) -> None:  # pragma: no cover - protocol completeness
        self.inner.save(path)


class _Replaying:
    supports_quantiles = True
    min_history = 1

    def __init__(self, name: str, log: dict[int, Any]) -> None:
        self.name, self.log, self.version = name, log, f"{name}:cached"

    def __deepcopy__(self, memo: dict) -> "_Replaying":
        return _Replaying(self.name, self.log)  # replays the same log

    def fit(self, history, **kw) -> None:
        pass

    def update(self, history, **kw) -> None:
        pass

    def predict(self, start, horizon: int, quantiles: Sequence[float]):
        from engine.core.errors import ForecastError
        from engine.core.types import Forecast

        out = self.log.get(int(start.timestamp()))
        if out is None:
            raise ForecastError("no forecast kept for this cycle")
        if isinstance(out, Exception):
            raise out
        if out.horizon < horizon:
            raise ForecastError(f"kept forecast has {out.horizon} steps, {horizon} asked for")
        return Forecast(out.made_at, out.timestamps[:horizon], out.point[:horizon],
                        {q: v[:horizon] for q, v in out.quantiles.items()}, out.model, out.model_version)

    def save(self, path) -> None:  # pragma: no cover
        raise NotImplementedError


def load_trace(path: Path, max_days: float | None = None):
    raw = read_csv(path)
    if max_days is not None:
        end = int(raw.timestamps[0] + max_days * 86400)
        raw = raw[: int((raw.timestamps < end).sum())]
    return raw


def sweep_range(low: float = UTILIZATIONS[0]) -> tuple[float, ...]:
    """The swept utilizations from ``low`` to 0.95 in steps of 0.05
    (REFERENCE.md section 5: from 0.45)."""
    n = int(round((0.95 - low) / 0.05))
    return tuple(round(low + 0.05 * i, 2) for i in range(n + 1))


def one_trace(raw, name: str, settings: dict[str, Any], fcfg: ForecasterConfig, lead_min: int,
              cache: ForecastCache | None = None,
              utilizations: Sequence[float] = UTILIZATIONS) -> dict[str, Any]:
    t0 = time.perf_counter()
    prep = prepare(raw, Scenario(lead_time=timedelta(minutes=lead_min)), trace=name)
    curve = sweep(prep, utilizations)
    t1 = time.perf_counter()
    model = None
    if cache is not None and settings.get("kind", "predictive") != "reactive":
        # built as the run would build it (an auto over the policy's horizon)
        model = cache.wrap(build_forecaster(prep, settings, fcfg))
    run = run_policy(prep, "policy", settings, fcfg, model=model)
    pm = {**run.metrics, **run.actuation}
    row = {"trace": name, "lead_time_min": lead_min, "policy": pm, "hpa": curve,
           "fallback_reasons": run.fallback_reasons, "sweep_s": t1 - t0, "policy_s": time.perf_counter() - t1}
    row.update(compare(pm, curve))
    return row


#: the vertical scenario: AWS m5 large..4xlarge, 5-minute downtime, 30-minute lead
VERTICAL = Scenario(ladder=AWS_M5_LADDER, min_replicas=None, max_replicas=None, lead_time=timedelta(minutes=30),
                    resize_downtime=timedelta(minutes=5))


def vertical_trace(raw, name: str, settings: dict[str, Any], fcfg: ForecasterConfig) -> dict[str, Any]:
    """The ladder scenario: AWS m5 large..4xlarge with list prices, 5-minute
    resize downtime, 30-minute lead time; the threshold resizer (N = 10 min)
    as the baseline."""
    sc = VERTICAL
    t0 = time.perf_counter()
    r = run_backtest(raw, scenario=sc, policy=settings, forecaster=fcfg, trace=name)
    pol = r.runs[r.policy_name]
    policies = {k: {**v.metrics, **v.actuation} for k, v in r.runs.items()}
    return {"trace": name, "policies": policies,
            "policy_name": r.policy_name, "fallback_reasons": pol.fallback_reasons,
            "threshold_sweep": threshold_sweep(raw, sc, name, policies[r.policy_name]),
            "seconds": time.perf_counter() - t0}


def threshold_sweep(raw, sc: Scenario, name: str, policy: dict[str, Any]) -> dict[str, Any]:
    """The threshold resizer swept over its settings (:data:`THRESHOLD_SWEEP`)
    on the same scenario, compared with the policy at equal service and at
    equal money: ``at_unserved`` is the cheapest setting that leaves no more
    demand unserved than the policy (None: none does), ``at_cost`` the
    setting with the least unserved demand among those that cost no more
    than the policy (None: every setting costs more)."""
    points = []
    for up, down, window in THRESHOLD_SWEEP:
        s = replace(sc, threshold_up=up, threshold_down=down, threshold_window=timedelta(minutes=window))
        prep = prepare(raw, s, trace=name)
        run = evaluate(prep, threshold_resizer(prep.series.values, prep))
        points.append({"up": up, "down": down, "window_min": window, "cost_per_day": run.actuation["cost_per_day"],
                       "unserved_fraction": run.metrics["unserved_fraction"],
                       "changes_per_day": run.actuation["changes_per_day"]})
    tol = 1e-9
    served = [q for q in points if q["unserved_fraction"] <= policy["unserved_fraction"] + tol]
    cheap = [q for q in points if q["cost_per_day"] <= policy["cost_per_day"] + tol]
    at_unserved = min(served, key=lambda q: (q["cost_per_day"], q["unserved_fraction"])) if served else None
    at_cost = min(cheap, key=lambda q: (q["unserved_fraction"], q["cost_per_day"])) if cheap else None
    return {"points": points, "at_unserved": at_unserved, "at_cost": at_cost,
            "cost_ratio": None if at_unserved is None or at_unserved["cost_per_day"] <= 0
            else policy["cost_per_day"] / at_unserved["cost_per_day"]}


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else "-"
    return f"{v:.{nd}f}"


def markdown(name: str, report: dict[str, Any]) -> str:
    lines = [f"# Frontier: `{name}` against the HPA at equal cost", "",
             f"Command: `{report['command']}`", "",
             "v = violation_fraction, c = cost_vs_oracle, a = actions; HPA@c = the HPA swept over u "
             f"{min(report['utilizations']):.2f}-{max(report['utilizations']):.2f} "
             "and interpolated at the policy's cost (* = outside the swept range, nearest end); "
             "ratio v = (v + 1e-4) / (v_HPA@c + 1e-4); hindsight = the cheapest HPA cost reaching the "
             "policy's violations (- = no swept setting does), c / hindsight = the policy's cost relative to it.",
             ""]
    for lead, part in report["leads"].items():
        lines += [f"## Lead time {lead} min", "",
                  "| part | traces | gmean ratio v | (in range: traces, gmean) | ratio v <= 1 | median ratio a "
                  "| median c / hindsight | v in 0.25-1 % | median c | mean c |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for pname in ("tuning", "held_out", "all"):
            s = part["summary"][pname]
            lines.append(f"| {pname} | {s['traces']} | {_f(s['gmean_violation_ratio'])} "
                         f"| {s['traces'] - s['outside_range']}, {_f(s['gmean_violation_ratio_in_range'])} "
                         f"| {s['no_worse']} "
                         f"| {_f(s['median_actions_ratio'], 2)} | {_f(s['median_cost_vs_hindsight'])} "
                         f"| {s['slo_band']} | {_f(s['median_cost'])} | {_f(s['mean_cost'])} |")
        lines += ["", "| trace | part | v | c | a | HPA@c v | HPA@c a | ratio v | ratio a | hindsight c "
                  "| c / hindsight | HPA u=0.7 v | HPA u=0.7 c | HPA u=0.7 a |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in part["rows"]:
            h, p = r["hpa_at_cost"], r["policy"]
            ref = next(x for x in r["hpa"] if abs(x["u"] - 0.7) < 1e-9)
            star = "*" if h["outside"] else ""
            lines.append(
                f"| {r['trace']} | {'held out' if r['held_out'] else 'tuning'} | {_f(p['violation_fraction'], 4)} "
                f"| {_f(p['cost_vs_oracle'])} | {p['actions']} | {_f(h['violation_fraction'], 4)}{star} "
                f"| {h['actions']:.0f} | {_f(r['violation_ratio'], 2)} | {_f(r['actions_ratio'], 2)} "
                f"| {_f(r['hindsight']['cost_vs_oracle'])} | {_f(r['cost_vs_hindsight'])} "
                f"| {_f(ref['violation_fraction'], 4)} | {_f(ref['cost_vs_oracle'])} | {ref['actions']} |")
        lines.append("")
    if report.get("vertical"):
        v = report["vertical"]
        lines += ["## Vertical: AWS m5 ladder, 5-minute resize downtime, 30-minute lead time", "",
                  "Rungs m5.large/xlarge/2xlarge/4xlarge (2/4/8/16 vCPU, $0.096/0.192/0.384/0.768 per hour, "
                  "on-demand us-east-1 Linux), scaled so the top rung carries the trace's 99th percentile at "
                  "u = 0.7. Baseline: the threshold resizer (up a rung above 80 % for 10 min, down below 20 % "
                  "for 10 min). u = unserved_fraction including downtime; $/day = rung price x hours.", "",
                  "| part | traces | median resizes/day policy | median resizes/day threshold | "
                  "cheaper | less unserved | both |", "|---|---:|---:|---:|---:|---:|---:|"]
        for pname in ("tuning", "held_out", "all"):
            s = v["summary"][pname]
            lines.append(f"| {pname} | {s['traces']} | {_f(s['median_changes_policy'], 2)} "
                         f"| {_f(s['median_changes_threshold'], 2)} | {s['cheaper']} | {s['less_unserved']} "
                         f"| {s['both']} |")
        lines += ["", "| trace | part | policy resizes/day | threshold resizes/day | policy $/day | threshold $/day "
                  "| oracle $/day | policy u | threshold u | policy v | threshold v |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in v["rows"]:
            p, t, o = r["policies"][r["policy_name"]], r["policies"]["threshold"], r["policies"]["oracle"]
            lines.append(f"| {r['trace']} | {'held out' if r['held_out'] else 'tuning'} "
                         f"| {_f(p['changes_per_day'], 2)} | {_f(t['changes_per_day'], 2)} "
                         f"| {_f(p['cost_per_day'], 2)} | {_f(t['cost_per_day'], 2)} | {_f(o['cost_per_day'], 2)} "
                         f"| {_f(p['unserved_fraction'], 4)} | {_f(t['unserved_fraction'], 4)} "
                         f"| {_f(p['violation_fraction'], 4)} | {_f(t['violation_fraction'], 4)} |")
        lines.append("")
        if all("threshold_sweep" in r for r in v["rows"]):
            lines += sweep_markdown(v)
    return "\n".join(lines) + "\n"


def _setting(q: dict[str, Any] | None) -> str:
    return "-" if q is None else f"{q['up']:.2f}/{q['down']:.2f}/{q['window_min']}m"


def sweep_markdown(v: dict[str, Any]) -> list[str]:
    """The cost-matched table: the policy against the threshold resizer
    swept over its settings (an addition to the fixed 80/20 baseline)."""
    ups = sorted({q[0] for q in THRESHOLD_SWEEP})
    downs = sorted({q[1] for q in THRESHOLD_SWEEP})
    wins = sorted({q[2] for q in THRESHOLD_SWEEP})
    lines = ["### Against the threshold resizer swept over its settings", "",
             f"The threshold resizer at every up threshold in {ups}, down threshold in {downs} and window in "
             f"{wins} min ({len(THRESHOLD_SWEEP)} settings), chosen per trace in hindsight. At equal service: "
             "the cheapest setting leaving no more demand unserved than the policy (cost ratio = policy $/day "
             "/ its $/day; - = no setting serves as much). At equal money: the setting with the least unserved "
             "demand among those costing no more than the policy. Setting = up/down/window; a cost ratio within "
             "0.1 % of 1 counts as equal.", "",
             "| part | traces | with a setting at the policy's u | median cost ratio | gmean cost ratio "
             "| cost ratio < 1 | cost ratio <= 1 | policy u <= threshold u at equal money |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for pname in ("tuning", "held_out", "all"):
        s = v["summary"][pname]
        lines.append(f"| {pname} | {s['traces']} | {s['sweep_served']} | {_f(s['sweep_median_cost_ratio'])} "
                     f"| {_f(s['sweep_gmean_cost_ratio'])} | {s['sweep_cheaper']} | {s['sweep_no_dearer']} "
                     f"| {s['sweep_no_more_unserved']} |")
    lines += ["", "| trace | part | policy $/day | policy u | policy resizes/day | equal service: setting "
              "| $/day | u | resizes/day | cost ratio | equal money: setting | u |",
              "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in v["rows"]:
        p, sw = r["policies"][r["policy_name"]], r["threshold_sweep"]
        a, c = sw["at_unserved"], sw["at_cost"]
        lines.append(f"| {r['trace']} | {'held out' if r['held_out'] else 'tuning'} | {_f(p['cost_per_day'], 2)} "
                     f"| {_f(p['unserved_fraction'], 4)} | {_f(p['changes_per_day'], 2)} | {_setting(a)} "
                     f"| {_f(a and a['cost_per_day'], 2)} | {_f(a and a['unserved_fraction'], 4)} "
                     f"| {_f(a and a['changes_per_day'], 2)} | {_f(sw['cost_ratio'])} | {_setting(c)} "
                     f"| {_f(c and c['unserved_fraction'], 4)} |")
    lines.append("")
    return lines


def vertical_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def pol(r: dict[str, Any]) -> dict[str, Any]:
        return r["policies"][r["policy_name"]]

    if not rows:
        return {"traces": 0, "median_changes_policy": float("nan"), "median_changes_threshold": float("nan"),
                "cheaper": 0, "less_unserved": 0, "both": 0, **sweep_summary(rows)}
    th = [r["policies"]["threshold"] for r in rows]
    ps = [pol(r) for r in rows]
    return {
        "traces": len(rows),
        "median_changes_policy": statistics.median(p["changes_per_day"] for p in ps) if ps else float("nan"),
        "median_changes_threshold": statistics.median(t["changes_per_day"] for t in th) if th else float("nan"),
        "cheaper": sum(p["cost_per_day"] < t["cost_per_day"] for p, t in zip(ps, th)),
        "less_unserved": sum(p["unserved_fraction"] < t["unserved_fraction"] for p, t in zip(ps, th)),
        "both": sum(p["cost_per_day"] < t["cost_per_day"] and p["unserved_fraction"] < t["unserved_fraction"]
                    for p, t in zip(ps, th)),
        **sweep_summary(rows),
    }


#: cost ratios within 0.1 % of 1 count as a tie (the same rungs but for a resize)
TIE = 1e-3


def sweep_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The cost-matched counts (:func:`threshold_sweep`) over ``rows``."""
    sw = [(r["policies"][r["policy_name"]], r["threshold_sweep"]) for r in rows if "threshold_sweep" in r]
    ratios = [s["cost_ratio"] for _, s in sw if s["cost_ratio"] is not None]
    return {"sweep_served": len(ratios),
            "sweep_median_cost_ratio": statistics.median(ratios) if ratios else float("nan"),
            "sweep_gmean_cost_ratio": gmean(ratios) if ratios else float("nan"),
            "sweep_cheaper": sum(x < 1.0 - TIE for x in ratios),
            "sweep_no_dearer": sum(x <= 1.0 + TIE for x in ratios),
            "sweep_no_more_unserved": sum(s["at_cost"] is not None and p["unserved_fraction"]
                                          <= s["at_cost"]["unserved_fraction"] + 1e-9 for p, s in sw)}


def split(rows: list[dict[str, Any]], summarize_fn) -> dict[str, Any]:
    return {"tuning": summarize_fn([r for r in rows if not r["held_out"]]),
            "held_out": summarize_fn([r for r in rows if r["held_out"]]),
            "all": summarize_fn(rows)}


def resweep(path: Path, root: Path, utilizations: Sequence[float], out: Path) -> int:
    """The policy rows of an earlier report against a new HPA sweep (the
    policy is not run again: its metrics are the report's)."""
    report = json.loads(path.read_text())
    report["utilizations"] = list(utilizations)
    report["policy"] = name = f"{report['policy']}-from{utilizations[0]:g}"
    report["command"] += f" (resweep: --resweep {path.name} --sweep-from {utilizations[0]:g})"
    for lead, part in report["leads"].items():
        for r in part["rows"]:
            prep = prepare(load_trace(root / r["trace"], report.get("max_days")),
                           Scenario(lead_time=timedelta(minutes=int(lead))), trace=r["trace"])
            r["hpa"] = sweep(prep, utilizations)
            r.update(compare(r["policy"], r["hpa"]))
        part["summary"] = split(part["rows"], summarize)
        for pname in ("tuning", "held_out", "all"):
            s = part["summary"][pname]
            print(f"L={lead} {pname:<8}: gmean ratio v {s['gmean_violation_ratio']:.3f} (in range "
                  f"{s['traces'] - s['outside_range']}: {s['gmean_violation_ratio_in_range']:.3f}), no worse on "
                  f"{s['no_worse']}/{s['traces']}, median ratio a {s['median_actions_ratio']:.2f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"frontier-{name}.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=float))
    (out / f"frontier-{name}.md").write_text(markdown(name, report))
    print(f"wrote {out / f'frontier-{name}.json'} and .md")
    return 0


def add_threshold_sweep(path: Path, root: Path) -> int:
    """The vertical rows of an earlier report against the threshold resizer
    swept over its settings (:func:`threshold_sweep`), written over the
    report (its policy rows are kept as they were, not run again)."""
    report = json.loads(path.read_text())
    v = report.get("vertical")
    if not v or not v["rows"]:
        raise SystemExit(f"--threshold-sweep: {path} has no vertical rows")
    for r in v["rows"]:
        raw = load_trace(root / r["trace"], report.get("max_days"))
        r["threshold_sweep"] = threshold_sweep(raw, VERTICAL, r["trace"], r["policies"][r["policy_name"]])
    v["summary"] = split(v["rows"], vertical_summary)
    if "(threshold sweep" not in report["command"]:
        report["command"] += f" (threshold sweep added: --threshold-sweep {path.name})"
    path.write_text(json.dumps(report, indent=1, sort_keys=True, default=float))
    path.with_suffix(".md").write_text(markdown(report["policy"], report))
    for pname in ("tuning", "held_out", "all"):
        s = v["summary"][pname]
        print(f"vertical {pname:<8}: against the swept threshold resizer: median cost ratio at equal service "
              f"{s['sweep_median_cost_ratio']:.3f} (gmean {s['sweep_gmean_cost_ratio']:.3f}), cheaper on "
              f"{s['sweep_cheaper']} and no dearer on {s['sweep_no_dearer']} of {s['sweep_served']}, "
              f"no more unserved at equal money on {s['sweep_no_more_unserved']}/{s['traces']}", flush=True)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Equal-cost frontier: a policy against the HPA swept over utilization.")
    ap.add_argument("--traces", default=str(TRACES_DIR), help="folder of <dataset>/<trace>.csv files")
    ap.add_argument("--policy", default="default",
                    help=f"a named policy ({', '.join(POLICIES)}) or a YAML/JSON file of policy settings")
    ap.add_argument("--name", default=None, help="name of the results (default: the policy's)")
    ap.add_argument("--forecaster", default=None,
                    help="a registered forecaster (default: the policy's, engine.config.default_forecaster: "
                         "the planner's blend for kind: plan, seasonal_persistence otherwise)")
    ap.add_argument("--forecaster-params", default=None, metavar="JSON",
                    help='the forecaster\'s parameters, e.g. \'{"seasons": 3}\'')
    ap.add_argument("--lead-times", default=",".join(map(str, LEAD_TIMES_MIN)), help="minutes, comma-separated")
    ap.add_argument("--only", default=None, help="comma-separated substrings: run only matching traces")
    ap.add_argument("--max-days", type=float, default=None,
                    help="replay only the first N days of each trace (the HPA sweep too: still equal cost)")
    ap.add_argument("--part", choices=("tuning", "held_out"), default=None,
                    help="run only the tuning traces or only the held-out ones")
    ap.add_argument("--sweep-from", type=float, default=UTILIZATIONS[0], metavar="U",
                    help="sweep the HPA from this utilization (default 0.45, REFERENCE.md section 5; lower: the "
                         "HPA may spend as much as a costly policy, so fewer traces are compared at an end)")
    ap.add_argument("--resweep", metavar="REPORT.json",
                    help="no policy runs: compare the policy rows of an earlier report with a new HPA sweep "
                         "(--sweep-from), written as <its name>-from<U>")
    ap.add_argument("--threshold-sweep", metavar="REPORT.json",
                    help="no policy runs: add the threshold resizer swept over its settings to an earlier "
                         "report's vertical rows (the cost-matched comparison), written over the report")
    ap.add_argument("--vertical", action="store_true", help="also the vertical ladder scenario")
    ap.add_argument("--no-frontier", action="store_true", help="only the vertical scenario")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--quiet", action="store_true", help="no per-trace lines")
    args = ap.parse_args(argv)

    root = Path(args.traces).resolve()
    paths = qualifying_traces(root)
    names = [str(p.relative_to(root)) for p in paths]
    hold = held_out(names)
    if args.only:
        keep = args.only.split(",")
        paths = [p for p, n in zip(paths, names) if any(k in n for k in keep)]
        names = [str(p.relative_to(root)) for p in paths]
    if args.part is not None:
        pairs = [(p, n) for p, n in zip(paths, names) if (n in hold) == (args.part == "held_out")]
        paths, names = [p for p, _ in pairs], [n for _, n in pairs]
    utilizations = sweep_range(args.sweep_from)
    if args.resweep:
        return resweep(Path(args.resweep), root, utilizations, Path(args.out))
    if args.threshold_sweep:
        return add_threshold_sweep(Path(args.threshold_sweep), root)
    settings = policy_settings(args.policy)
    name = args.name or Path(args.policy).stem
    fcfg = default_forecaster(settings.get("kind"))  # the policy's, replaced by what the flags state
    if args.forecaster or args.forecaster_params:
        fcfg = ForecasterConfig(name=args.forecaster or fcfg.name, params=json.loads(args.forecaster_params or "{}"))
    command = "nice -n 10 python benchmarks/frontier.py" + " ".join(
        [""] + [a for a in (argv if argv is not None else sys.argv[1:])])
    report: dict[str, Any] = {"policy": name, "settings": settings, "forecaster": fcfg.name,
                              "forecaster_params": fcfg.params.model_dump(mode="json", exclude_unset=True), "command": command,
                              "max_days": args.max_days,
                              "utilizations": utilizations, "held_out": sorted(hold), "leads": {}}
    t_start = time.perf_counter()
    if not args.no_frontier:
        leads = sorted((int(x) for x in args.lead_times.split(",")), reverse=True)
        rows_by_lead: dict[int, list[dict[str, Any]]] = {lead: [] for lead in leads}
        for p, n in zip(paths, names):
            raw = load_trace(p, args.max_days)
            cache = ForecastCache()
            for lead in leads:
                r = one_trace(raw, n, settings, fcfg, lead, cache, utilizations)
                r["held_out"] = n in hold
                rows_by_lead[lead].append(r)
                if not args.quiet:
                    print(f"  L={lead:>2} {n:<58} ratio v {r['violation_ratio']:6.2f}  a {r['actions_ratio']:5.2f}"
                          f"  c {r['policy']['cost_vs_oracle']:.3f}  ({r['sweep_s']:.1f} + {r['policy_s']:.1f} s)",
                          flush=True)
        for lead in sorted(leads):
            summary = split(rows_by_lead[lead], summarize)
            report["leads"][str(lead)] = {"rows": rows_by_lead[lead], "summary": summary}
            for part in ("tuning", "held_out", "all"):
                s = summary[part]
                print(f"L={lead} {part:<8}: gmean ratio v {s['gmean_violation_ratio']:.3f}, no worse on "
                      f"{s['no_worse']}/{s['traces']}, median ratio a {s['median_actions_ratio']:.2f}, "
                      f"median c/hindsight {s['median_cost_vs_hindsight']:.3f}, v in 0.25-1 % on "
                      f"{s['slo_band']}", flush=True)
    if args.vertical:
        rows = []
        for p, n in zip(paths, names):
            r = vertical_trace(load_trace(p, args.max_days), n, settings, fcfg)
            r["held_out"] = n in hold
            rows.append(r)
            if not args.quiet:
                pp, th = r["policies"][r["policy_name"]], r["policies"]["threshold"]
                print(f"  vertical {n:<52} resizes/day {pp['changes_per_day']:5.2f} vs {th['changes_per_day']:5.2f}"
                      f"  $/day {pp['cost_per_day']:.2f} vs {th['cost_per_day']:.2f}  unserved "
                      f"{pp['unserved_fraction']:.4f} vs {th['unserved_fraction']:.4f}", flush=True)
        report["vertical"] = {"rows": rows, "summary": split(rows, vertical_summary)}
        for part in ("tuning", "held_out", "all"):
            s = report["vertical"]["summary"][part]
            print(f"vertical {part:<8}: median resizes/day {s['median_changes_policy']:.2f} vs threshold "
                  f"{s['median_changes_threshold']:.2f}; cheaper on {s['cheaper']}, less unserved on "
                  f"{s['less_unserved']}, both on {s['both']} of {s['traces']}; against the swept threshold "
                  f"resizer: median cost ratio at equal service {s['sweep_median_cost_ratio']:.3f}"
                  f" (gmean {s['sweep_gmean_cost_ratio']:.3f}), cheaper on {s['sweep_cheaper']} and no dearer on "
                  f"{s['sweep_no_dearer']} of {s['sweep_served']}, no more unserved at equal money "
                  f"on {s['sweep_no_more_unserved']}", flush=True)
    report["seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"frontier-{name}" + ("-vertical" if args.no_frontier else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=float))
    (out / f"{stem}.md").write_text(markdown(name, report))
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
