"""Replay a trace through the oracle, a baseline and the configured policy.

Exactly the scenario and metrics of REFERENCE.md section 3:

- the trace is resampled to ``interval`` by mean; an empty interval is a gap:
  every policy holds its capacity there and the interval is not scored;
- ``capacity_per_replica`` defaults to ``quantile(d, 0.99) / (20 u)``;
- a decision made at the end of interval t (data up to and including t) is
  in service from ``t + L/interval`` on; before that the initial capacity
  (the oracle's need at the first interval) serves;
- ``warmup`` intervals run but are not scored;
- oracle: ``clamp(ceil(d_t / (cpr u)), min, max)``, no lead time;
- reactive: the HPA rule on ``d_t`` (tolerance 0.1, 300 s scale-down
  stabilization, no rate limit);
- the configured policy (forecaster and policy chain), run through
  :class:`engine.cycle.TargetRunner` — the same code as the live loop.

Metrics over scored intervals: ``violation_fraction``, ``unserved_fraction``,
``cost_vs_oracle``, ``actions``; for a forecasting policy also ``mape``,
``smape`` (ratios, as the Prometheus gauges), ``mase`` and ``coverage`` of
its forecast at horizon L, and ``mape_meaningful``
(:func:`engine.feedback.mape_meaningless`).

Two things are kept apart (one home per value):

- the :class:`Scenario`: facts about the world being replayed (interval,
  lead time, warm-up, the baseline's utilization, the replica size or
  ladder, bounds, what a change costs);
- the policy: a :class:`policies.config.PolicyConfig`, replayed as given. A
  setting the user did not make is filled from the scenario with
  ``model_copy`` (the replica size derived from the trace, the bounds, the
  lead time); each fill is reported in :attr:`BacktestResult.notes`.

Vertical scenario (a ladder of instance types): the baseline is the
threshold resizer a VPS owner runs (:func:`threshold_resizer`); a resize
costs ``resize_downtime`` after it lands, during which the machine serves
nothing (``downtime_capacity: unavailable``) or still the old rung (``old``);
demand unserved then is counted in ``unserved_fraction`` and reported alone
as ``downtime_unserved_fraction``. Money: each rung's price per hour.

Actions are a result of their own (:attr:`PolicyRun.actuation`): changes
per day, the scenario's cost per change, downtime unserved demand, money.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from actuators.base import ActuatorConfig
from forecasters import Forecaster
from policies.config import PolicyConfig, RateLimit, Reactive, Rung, Stabilization
from policies.resources import check_rung_capacity

from .anomaly import AnomalyConfig, flagged
from .config import ForecasterConfig, PluginSection, TargetConfig, default_forecaster
from .core.errors import ConfigError, DataError
from .core.types import ScalingState, Schedule, Series
from .core.gaps import hold_forward, sample_cadence
from .core.units import format_duration, from_epoch
from .cycle import TargetRunner
from .feedback import MemoryFeedback, accuracy, mape_meaningless, mape_warning, seasonal_naive_scale

DAY_S = 86400.0


@dataclass(frozen=True)
class Scenario:
    """The world a backtest replays (REFERENCE.md section 3 defaults)."""

    interval: timedelta = timedelta(minutes=5)
    #: u: the oracle's and the reactive baseline's utilization
    target_utilization: float = 0.7
    #: load one replica carries; None: ``quantile(d, 0.99) / (20 u)``
    capacity_per_replica: float | None = None
    #: None: the policy's bounds if it sets them, else 1..60 (horizontal) or
    #: the whole ladder (vertical)
    min_replicas: int | None = 1
    max_replicas: int | None = 60
    #: time from a decision until its capacity serves
    lead_time: timedelta = timedelta(minutes=10)
    warmup: timedelta = timedelta(days=2)
    #: vertical: the instance types (capacity x ``ladder_scale`` = load each carries)
    ladder: tuple[Rung, ...] | None = None
    #: None: scale so the top rung carries the trace's 99th percentile at u
    ladder_scale: float | None = None
    #: after a change lands, this long the capacity is unavailable
    #: or still the old one ("old"); a VPS resize is a stop/modify/start
    resize_downtime: timedelta = timedelta(0)
    downtime_capacity: Literal["unavailable", "old"] = "unavailable"
    #: money per capacity change (e.g. a migration), reported beside cost
    change_cost: float = 0.0
    #: the threshold resizer (vertical baseline): up a rung above
    #: ``threshold_up`` utilization for ``threshold_window``, down below
    #: ``threshold_down`` for as long
    threshold_up: float = 0.8
    threshold_down: float = 0.2
    threshold_window: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        problems = []
        if self.interval <= timedelta(0):
            problems.append(f"interval ({self.interval}) must be positive")
        if self.lead_time < timedelta(0):
            problems.append(f"lead time ({self.lead_time}) must not be negative")
        if self.warmup < timedelta(0):
            problems.append(f"warm-up ({self.warmup}) must not be negative")
        if not 0.0 < self.target_utilization <= 1.0:
            problems.append(f"baseline utilization ({self.target_utilization}) must be in (0, 1]")
        if self.capacity_per_replica is not None and not (0 < self.capacity_per_replica < math.inf):
            problems.append(f"capacity_per_replica ({self.capacity_per_replica}) must be a positive number")
        if self.resize_downtime < timedelta(0):
            problems.append(f"resize downtime ({self.resize_downtime}) must not be negative")
        if problems:
            raise ConfigError("backtest scenario: " + "; ".join(problems))

    @property
    def vertical(self) -> bool:
        return self.ladder is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "interval_s": self.interval.total_seconds(),
            "target_utilization": self.target_utilization,
            "capacity_per_replica": self.capacity_per_replica,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "lead_time_s": self.lead_time.total_seconds(),
            "warmup_s": self.warmup.total_seconds(),
        }
        if self.change_cost:
            out["change_cost"] = self.change_cost
        if self.vertical:
            assert self.ladder is not None
            out.update({
                "ladder": [r.model_dump() for r in self.ladder], "ladder_scale": self.ladder_scale,
                "resize_downtime_s": self.resize_downtime.total_seconds(),
                "downtime_capacity": self.downtime_capacity,
                "threshold": {"up": self.threshold_up, "down": self.threshold_down,
                              "window_s": self.threshold_window.total_seconds()}})
        elif self.resize_downtime:
            out["resize_downtime_s"] = self.resize_downtime.total_seconds()
            out["downtime_capacity"] = self.downtime_capacity
        return out


#: AWS EC2 m5 on-demand, us-east-1, Linux, per hour (AWS price list):
#: m5.large 2 vCPU $0.096, xlarge 4 $0.192, 2xlarge 8 $0.384, 4xlarge 16 $0.768.
#: Capacities in vCPUs; a scenario scales them to the trace (``ladder_scale``).
AWS_M5_LADDER: tuple[Rung, ...] = (
    Rung(name="m5.large", capacity=2, price=0.096),
    Rung(name="m5.xlarge", capacity=4, price=0.192),
    Rung(name="m5.2xlarge", capacity=8, price=0.384),
    Rung(name="m5.4xlarge", capacity=16, price=0.768),
)



def scenario_for(target: TargetConfig | None = None, **overrides: Any) -> Scenario:
    """The scenario of a backtest of ``target``: its interval, the lead time,
    bounds and capacity model its policy states, the baseline at the
    policy's own target utilization, then the target's ``backtest:``
    section, then ``overrides`` (the command line; None values are ignored).
    Without a target: the REFERENCE.md section 3 defaults."""
    facts: dict[str, Any] = {}
    if target is not None:
        pol = target.policy
        lo, hi = pol.bounds
        facts = {"interval": target.interval, "lead_time": pol.lead_time,
                 "target_utilization": pol.target_utilization, "min_replicas": lo, "max_replicas": hi}
        if pol.ladder is not None:
            facts.update(ladder=pol.ladder, ladder_scale=1.0)
            # a resize's downtime, stated once: the planner's, else the actuator's
            stated = pol.plan.resize_downtime if pol.kind == "plan" else None
            if stated is None and isinstance(target.actuator, ActuatorConfig):
                stated = target.actuator.resize_downtime
            if stated is not None:
                facts["resize_downtime"] = stated
        else:
            facts["capacity_per_replica"] = pol.capacity_per_replica
        if target.backtest is not None:
            facts.update(target.backtest.model_dump(exclude_none=True, by_alias=True))
    facts.update({k: v for k, v in overrides.items() if v is not None})
    return Scenario(**facts)

#: The default predictive policy of the backtest and the demo, chosen by
#: benchmarks/policy_search.py: 24 policies (target utilization 0.8/0.85/0.9 x
#: conformal under-forecast rate 0.05/0.1 x headroom cap 0.1/0.25 x reactive
#: tolerance 0.1/0) with seasonal_persistence, on the 18 shared traces with
#: >= 14 days. 20 of the 24 met the goal (median violations below the HPA's at
#: a median cost at most 0.05 above); this one beats or ties the HPA on both
#: violations and cost on the most traces (6 of 18), with fewer or equal
#: violations on 16: median violation_fraction 0.0040 against the HPA's 0.0078
#: at a median cost_vs_oracle of 0.998 against 0.984. Why these values
#: (REFERENCE.md section 4): size from a conformal quantile of the
#: forecaster's own residuals (10 % under-forecast target), run hotter than the
#: HPA (0.8 against 0.7: no headroom needed for reaction lag), cap the
#: headroom at 10 % over the point forecast and let the reactive rule at the
#: policy's own utilization, with no tolerance band, catch what the cap cuts
#: off; one interval of scale-down stabilization. The cost is on bursty
#: traces (mean cost 1.08 against 0.98), where it also cuts violations the
#: most. Per-trace numbers: docs/backtest.md.
DEFAULT_POLICY: dict[str, Any] = {
    "target_utilization": 0.8,
    "margin": {"quantile": 0.9, "conformal": True, "conformal_target": 0.1, "cap": 0.1,
               "conformal_window": "3d", "conformal_min_samples": 48},
    "reactive": {"enabled": True, "tolerance": 0.0, "target_utilization": 0.8},
    "stabilization": {"scale_up": "0s", "scale_down": "5m"},
    "scale_up": {"policies": [], "select": "Max"},
    "scale_down": {"policies": [], "select": "Max"},
}
#: The default made calm: ``DEFAULT_POLICY`` run hotter (0.9) with a tighter
#: headroom cap (5 %) and a one-hour scale-down window, so it follows the
#: forecast up at once and down only after an hour of lower recommendations
#: (bursts cluster in time: REFERENCE.md section 4, note on item 5). On the
#: demo trace it has the HPA's violations and unserved demand at a lower
#: cost (0.967 against 0.986) with half its changes (220 against 420); it
#: is what ``forescale demo`` shows. Frontier numbers: docs/backtest.md.
CALM_POLICY: dict[str, Any] = {
    **DEFAULT_POLICY,
    "target_utilization": 0.9,
    "margin": {**DEFAULT_POLICY["margin"], "cap": 0.05},
    "reactive": {"enabled": True, "tolerance": 0.0, "target_utilization": 0.9},
    "stabilization": {"scale_up": "0s", "scale_down": "1h"},
}
#: the default policy's forecaster (``seasonal_persistence``: persistence
#: adjusted by the same-time-of-day change one day ago, REFERENCE.md section
#: 4, item 4), from the one place the defaults per policy kind live
DEFAULT_FORECASTER = default_forecaster(DEFAULT_POLICY.get("kind"))


@dataclass(frozen=True)
class ResourceTrace:
    """A further resource of a backtest (a target's ``resources``): its
    demand, its capacity per replica or, on a ladder, on each rung (None:
    derived from its trace like the target's), its target utilization
    (None: the scenario's) and its forecaster (None: the target's)."""

    name: str
    series: Series
    capacity_per_replica: float | None = None
    target_utilization: float | None = None
    forecaster: ForecasterConfig | None = None
    rung_capacity: tuple[float, ...] | None = None


@dataclass
class PolicyRun:
    name: str
    decided: np.ndarray  # capacity decided at the end of each interval
    in_service: np.ndarray  # capacity serving each interval
    #: REFERENCE.md section 3's metrics (and forecast accuracy)
    metrics: dict[str, float] = field(default_factory=dict)
    forecast_point: np.ndarray | None = None  # forecast for interval t made at t - k
    forecast_upper: np.ndarray | None = None
    fallbacks: int = 0
    #: the fallback cycles by the data step's reason code (a share far above
    #: a few percent means prediction switched itself off)
    fallback_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: what the changes cost: changes_per_day, change_cost, downtime, money
    actuation: dict[str, float] = field(default_factory=dict)
    #: load served each interval (after resize downtime)
    served: np.ndarray | None = None
    #: the planner's schedules, one per planning cycle (empty for other kinds)
    plans: list["PlannedPath"] = field(default_factory=list)
    #: observations flagged as anomalies (None: not configured)
    anomalies: int | None = None
    #: several resources: each one's violations, unserved demand and
    #: forecast accuracy, by name (the target's own first)
    resource_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    #: several resources: each further one's forecast for interval t made at t - k
    resource_forecasts: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: several resources: how many cycles each one set the size
    sized_by: dict[str, int] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.metrics, **self.actuation}
        if self.fallback_reasons:
            out["fallback_reasons"] = dict(self.fallback_reasons)
        if self.resource_metrics:
            out["resources"] = {k: dict(v) for k, v in self.resource_metrics.items()}
        if self.sized_by:
            out["sized_by"] = dict(self.sized_by)
        return out


@dataclass(frozen=True)
class PlannedPath:
    """What one planning cycle planned, compactly: the cycle's index in the
    trace, and for each planned (not fixed) step of its schedule the
    interval it serves (epoch seconds) and the capacity (replicas or rung)."""

    cycle: int
    at: np.ndarray
    capacity: np.ndarray

    @classmethod
    def of(cls, cycle: int, schedule: Schedule) -> "PlannedPath":
        steps = schedule.planned
        return cls(cycle, np.array([int(s.at.timestamp()) for s in steps], dtype=np.int64),
                   np.array([s.capacity for s in steps], dtype=np.int64))


@dataclass(frozen=True)
class Prepared:
    """A trace resampled and sized for the scenario: what every policy run
    of one backtest shares."""

    trace: str
    scenario: Scenario
    series: Series
    #: horizontal: load per replica; vertical: None
    capacity_per_replica: float | None
    need: np.ndarray
    scored: np.ndarray
    lead_steps: int
    initial: int
    bounds: tuple[int, int]
    #: vertical: the ladder in the trace's units (capacities x scale)
    ladder: tuple[Rung, ...] | None = None
    notes: tuple[str, ...] = ()
    #: several resources: the name of this trace's signal, and each further
    #: resource prepared on the same grid (``need`` is then the largest
    #: need over all of them, ``scored`` where every one has data)
    resource: str = ""
    resources: tuple["Prepared", ...] = ()
    #: each further resource's capacity model as given (None: from its trace)
    resource_traces: tuple["ResourceTrace", ...] = ()

    @property
    def vertical(self) -> bool:
        return self.ladder is not None

    def served(self, units: np.ndarray) -> np.ndarray:
        """Load ``units`` of capacity carry at 100 % utilization."""
        if self.ladder is not None:
            caps = np.array([r.capacity for r in self.ladder])
            return caps[np.clip(units, 0, len(caps) - 1)]
        assert self.capacity_per_replica is not None
        return units.astype(float) * self.capacity_per_replica

    def price(self, units: np.ndarray) -> np.ndarray | None:
        """Money per hour of ``units`` (vertical ladders with prices), else None."""
        if self.ladder is None or any(r.price is None for r in self.ladder):
            return None
        prices = np.array([r.price for r in self.ladder], dtype=float)
        return prices[np.clip(units, 0, len(prices) - 1)]

    def weight(self, units: np.ndarray) -> np.ndarray:
        """What ``cost_vs_oracle`` sums: replicas, or a rung's price (its
        capacity where the ladder has no prices)."""
        if self.ladder is None:
            return units.astype(float)
        p = self.price(units)
        return p if p is not None else self.served(units)


@dataclass
class BacktestResult:
    trace: str
    scenario: Scenario
    timestamps: np.ndarray
    demand: np.ndarray
    scored: np.ndarray
    need: np.ndarray
    capacity_per_replica: float | None
    runs: dict[str, PolicyRun]
    forecaster: str
    #: the row of the configured policy (``predictive``, ``planner``, ...)
    policy_name: str = "predictive"
    #: scenario facts filled into the policy, derived values, differences
    notes: tuple[str, ...] = ()
    ladder: tuple[Rung, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        sc = self.scenario.to_dict()
        sc["capacity_per_replica"] = self.capacity_per_replica
        if self.ladder is not None:
            sc["ladder"] = [r.model_dump() for r in self.ladder]
        return {
            "trace": self.trace,
            "forecaster": self.forecaster,
            "policy": self.policy_name,
            "scenario": sc,
            "intervals": int(self.timestamps.size),
            "scored_intervals": int(self.scored.sum()),
            "scored_days": scored_days(self.scored, self.scenario.interval),
            "notes": list(self.notes),
            "policies": {k: r.report() for k, r in self.runs.items()},
            "seconds": {k: round(r.seconds, 3) for k, r in self.runs.items()},
        }

    def table(self) -> str:
        cols = ["violation_fraction", "unserved_fraction", "cost_vs_oracle", "actions", "changes_per_day"]
        extra = [c for c in ("downtime_unserved_fraction", "cost_per_day", "change_cost")
                 if any(c in r.actuation for r in self.runs.values())]
        cols += extra
        width = max(12, *(len(n) + 2 for n in self.runs))
        lines = [f"{'policy':<{width}}" + "".join(f"{c:>{max(16, len(c) + 2)}}" for c in cols)]
        for name, run in self.runs.items():
            vals = {**run.metrics, **run.actuation}
            lines.append(f"{name:<{width}}" + "".join(f"{_fmt(vals.get(c)):>{max(16, len(c) + 2)}}" for c in cols))
        p = self.runs.get(self.policy_name)
        for name, run in self.runs.items():
            if run.resource_metrics:
                sized = f"; sized for {', '.join(f'{k} {v}' for k, v in run.sized_by.items())} cycles" \
                    if run.sized_by else ""
                lines.append(f"{name} by resource: " + "; ".join(
                    f"{r} violations {_fmt(m.get('violation_fraction'))} unserved {_fmt(m.get('unserved_fraction'))}"
                    + (f" mase {m['mase']:.3f} mape {100 * m['mape']:.1f} %"
                       f"{'' if m.get('mape_meaningful', True) else ' (meaningless)'}"
                       f" smape {100 * m['smape']:.1f} % coverage {m['coverage']:.3f}"
                       if "mase" in m else "")
                    for r, m in run.resource_metrics.items()) + sized)
        if p and "mase" in p.metrics:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(p.fallback_reasons.items())) or "none"
            mark = "" if p.metrics.get("mape_meaningful", True) else " (meaningless)"
            lines.append(f"forecast ({self.forecaster}) at lead time: mape {100 * p.metrics['mape']:.1f} %{mark}, "
                         f"smape {100 * p.metrics['smape']:.1f} %, mase {p.metrics['mase']:.3f}, "
                         f"coverage {p.metrics['coverage']:.3f}, "
                         f"fallbacks {p.fallbacks} ({reasons})")
            if p.anomalies is not None:
                lines.append(f"anomalies flagged and kept out of training: {p.anomalies}")
            if mark:
                lines.append(f"note: MAPE is meaningless on this trace: {mape_warning()}; read sMAPE or MASE")
        if p:
            # a further resource's trace marked "(meaningless)" above says why too
            # (the first is the target's own signal, noted above)
            bad = [r for r, m in list(p.resource_metrics.items())[1:]
                   if "mase" in m and not m.get("mape_meaningful", True)]
            if bad:
                lines.append(f"note: MAPE is meaningless on {', '.join(bad)}: {mape_warning()}; read sMAPE or MASE")
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def scored_span(scored: np.ndarray) -> np.ndarray:
    """Every interval from the first scored one to the last: where a change
    of capacity counts as an action. A change lands a lead time after the
    decision, which on a trace with gaps (or sampled coarser than the
    interval: 30-minute data on a 5-minute grid, a 10-minute lead) can be
    an interval without an observation; it is a change all the same."""
    span = np.zeros(scored.size, dtype=bool)
    idx = np.flatnonzero(scored)
    if idx.size:
        span[idx[0]: idx[-1] + 1] = True
    return span


def scored_days(scored: np.ndarray, interval: timedelta) -> float:
    """The days from the first scored interval to the last (:func:`scored_span`):
    what "a day" divides, so that 30-minute data on a 5-minute grid counts
    its days, not a sixth of them."""
    return float(scored_span(scored).sum()) * interval.total_seconds() / DAY_S


def oracle_need(d: np.ndarray, cpr: float, u: float, lo: int, hi: int) -> np.ndarray:
    """The fewest replicas that carry ``d`` at utilization ``u``, holding
    through a gap (sized for nothing there, the oracle dropped to the
    minimum and came back around every gap: on a trace sampled coarser than
    the interval, a change every interval)."""
    with np.errstate(invalid="ignore"):
        need = np.ceil(hold_forward(d) / (cpr * u) - 1e-9)
    return np.clip(np.nan_to_num(need, nan=lo), lo, hi).astype(np.int64)


def ladder_need(d: np.ndarray, ladder: tuple[Rung, ...], u: float, lo: int, hi: int) -> np.ndarray:
    """The cheapest rung that carries ``d`` at utilization ``u`` (the top
    rung if none does), holding through a gap: the vertical oracle."""
    caps = np.array([r.capacity for r in ladder]) * u
    idx = np.searchsorted(caps, np.nan_to_num(hold_forward(d), nan=0.0) - 1e-9, side="left")
    return np.clip(idx, lo, min(hi, len(ladder) - 1)).astype(np.int64)


def score_served(d: np.ndarray, served: np.ndarray, weight: np.ndarray, need_weight: np.ndarray,
                 cap: np.ndarray, scored: np.ndarray) -> dict[str, float]:
    """REFERENCE.md section 3's metrics from the load served each interval
    and the cost weights (replicas, or a rung's price) of the capacity and of
    the oracle's need."""
    ds, ss = d[scored], served[scored]
    cs, ns = weight[scored], need_weight[scored]
    changed = np.zeros_like(cap, dtype=bool)
    changed[1:] = cap[1:] != cap[:-1]
    return {
        "violation_fraction": float(np.mean(ds > ss + 1e-12)) if ds.size else float("nan"),
        "unserved_fraction": float(np.sum(np.maximum(0.0, ds - ss)) / np.sum(ds)) if np.sum(ds) > 0 else 0.0,
        "cost_vs_oracle": float(np.sum(cs) / np.sum(ns)) if np.sum(ns) > 0 else float("nan"),
        "actions": int(np.sum(changed & scored_span(scored))),
    }


def score(d: np.ndarray, cap: np.ndarray, need: np.ndarray, cpr: float, scored: np.ndarray) -> dict[str, float]:
    """The four policy metrics of REFERENCE.md section 3 (replicas)."""
    return score_served(d, cap.astype(float) * cpr, cap.astype(float), need.astype(float), cap, scored)


def with_downtime(served: np.ndarray, in_service: np.ndarray, prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """The load served once each change's downtime is taken out, and a mask
    of the intervals in a downtime. A change lands at interval t (the
    capacity in service differs from t-1's); for ``resize_downtime`` from
    then the capacity is none or still the old one."""
    sc = prep.scenario
    down = np.zeros(served.size, dtype=bool)
    steps = int(math.ceil(sc.resize_downtime.total_seconds() / sc.interval.total_seconds() - 1e-9))
    if steps <= 0 or served.size < 2:
        return served, down
    out = served.copy()
    for t in np.flatnonzero(in_service[1:] != in_service[:-1]) + 1:
        end = min(served.size, t + steps)
        down[t:end] = True
        out[t:end] = 0.0 if sc.downtime_capacity == "unavailable" else np.minimum(served[t:end], served[t - 1])
    return out, down


def evaluate(prep: Prepared, run: PolicyRun, *, downtime: bool = True) -> PolicyRun:
    """Score ``run``: section 3's metrics (on the load served after resize
    downtime, unless ``downtime`` is False: the oracle, the physical limit)
    and what its changes cost."""
    d = np.nan_to_num(prep.series.values)
    nominal = prep.served(run.in_service)
    served, down = with_downtime(nominal, run.in_service, prep) if downtime else (nominal, nominal < 0)
    run.served = served
    run.metrics = score_served(d, served, prep.weight(run.in_service), prep.weight(prep.need),
                               run.in_service, prep.scored)
    if prep.resources:
        # several resources: an interval is violated when any resource's
        # demand exceeds what the capacity carries of it; unserved demand is
        # the worst resource's share; cost and changes are the capacity's
        short = (d > served + 1e-12)
        run.resource_metrics = {prep.resource: {k: run.metrics[k] for k in ("violation_fraction",
                                                                             "unserved_fraction")}}
        for r in prep.resources:
            dr = np.nan_to_num(r.series.values)
            sr = with_downtime(r.served(run.in_service), run.in_service, r)[0] if downtime else \
                r.served(run.in_service)
            m = score_served(dr, sr, prep.weight(run.in_service), prep.weight(prep.need), run.in_service,
                             prep.scored)
            run.resource_metrics[r.resource] = {k: m[k] for k in ("violation_fraction", "unserved_fraction")}
            short |= dr > sr + 1e-12
        s = prep.scored
        run.metrics["violation_fraction"] = float(np.mean(short[s])) if s.any() else float("nan")
        run.metrics["unserved_fraction"] = max(m["unserved_fraction"] for m in run.resource_metrics.values())
    sc, s = prep.scenario, prep.scored
    days = scored_days(s, sc.interval)
    act: dict[str, float] = {"changes_per_day": run.metrics["actions"] / days if days > 0 else float("nan")}
    if sc.change_cost:
        act["change_cost"] = run.metrics["actions"] * sc.change_cost
    if sc.resize_downtime > timedelta(0):
        total = float(np.sum(d[s]))
        lost = np.maximum(0.0, d - served) - np.maximum(0.0, d - nominal)
        act["downtime_unserved_fraction"] = float(np.sum(lost[s & down]) / total) if total > 0 else 0.0
    price = prep.price(run.in_service)
    if price is not None:
        # the mean hourly price over the scored intervals, for a day
        act["cost_per_day"] = float(np.mean(price[s]) * DAY_S / 3600) if s.any() else 0.0
    run.actuation = act
    return run


# ------------------------------------------------------------------ the policies
def policy_label(policy: PolicyConfig) -> str:
    """The backtest row of a configured policy."""
    return {"predictive": "predictive", "plan": "planner"}.get(policy.kind, policy.kind)


def replay_policy(policy: PolicyConfig | Mapping[str, Any], prep: Prepared) -> tuple[PolicyConfig, list[str]]:
    """The policy to replay: a :class:`PolicyConfig` as given, with only the
    scenario facts it does not set filled in (and said so); a mapping of
    settings (``DEFAULT_POLICY``) validated once with those facts."""
    sc = prep.scenario
    lo, hi = prep.bounds
    facts: dict[str, Any] = {"min_replicas": lo, "max_replicas": hi, "lead_time": sc.lead_time,
                             "hold": sc.interval, "max_staleness": sc.interval * 3}
    if prep.ladder is not None:
        facts["ladder"] = prep.ladder
    else:
        facts["capacity_per_replica"] = prep.capacity_per_replica
    if not isinstance(policy, PolicyConfig):
        given = dict(policy)
        if "ladder" in given or "capacity_per_replica" in given:  # the policy brings its own capacity model
            facts.pop("ladder", None)
            facts.pop("capacity_per_replica", None)
        config = PolicyConfig.model_validate({**facts, **given})
        return _with_downtime(config, sc)[0], []
    # a configured policy runs as the live engine runs it: its own lead time,
    # hold, bounds and staleness; only a capacity model it lacks comes from
    # the scenario
    unset = {} if policy.ladder is not None or policy.capacity_per_replica is not None else \
        {k: v for k, v in facts.items() if k in ("ladder", "capacity_per_replica")}
    notes = []
    if policy.lead_time != sc.lead_time:
        notes.append(f"the policy plans for lead_time {policy.lead_time}; in the scenario a change serves "
                     f"after {sc.lead_time}")
    if unset:
        notes.append("filled from the scenario (the policy does not set it): "
                     + ", ".join(f"{k} {_show(v)}" for k, v in unset.items()))
    config, filled = _with_downtime(policy.model_copy(update=unset), sc)
    if filled:
        notes.append(f"the planner prices the scenario's resize downtime {sc.resize_downtime} "
                     f"(the policy states none)")
    elif config.kind == "plan" and config.ladder is not None and config.plan.downtime != sc.resize_downtime:
        notes.append(f"the planner prices a resize downtime of {config.plan.downtime}; in the scenario a "
                     f"resize takes {sc.resize_downtime}")
    return config, notes


def _with_downtime(config: PolicyConfig, sc: Scenario) -> tuple[PolicyConfig, bool]:
    """A planner on a ladder that states no resize downtime prices the
    scenario's (stated once, used by both); whether it was filled."""
    if config.kind != "plan" or config.ladder is None or config.plan.resize_downtime is not None \
            or sc.resize_downtime <= timedelta(0):
        return config, False
    plan = config.plan.model_copy(update={"resize_downtime": sc.resize_downtime})
    return config.model_copy(update={"plan": plan}), True


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(f"{r.name} {r.capacity:.4g}" for r in v) + "]"
    return str(v)


def reactive_policy(scenario: Scenario) -> dict[str, Any]:
    """The HPA baseline of REFERENCE.md section 3 (settings; the replica
    size and bounds are the scenario's)."""
    return {
        "kind": "reactive",
        "target_utilization": scenario.target_utilization,
        "reactive": Reactive(tolerance=0.1),
        "stabilization": Stabilization(scale_up=timedelta(0), scale_down=timedelta(seconds=300)),
        "scale_up": RateLimit(), "scale_down": RateLimit(),
    }


def _target(name: str, interval: timedelta, policy: PolicyConfig, forecaster: ForecasterConfig,
            prep: Prepared | None = None, anomalies: AnomalyConfig | None = None) -> TargetConfig:
    resources: dict[str, Any] = {}
    for r, given in zip(prep.resources if prep is not None else (), prep.resource_traces if prep else ()):
        size = {"rung_capacity": [rung.capacity for rung in r.ladder]} if r.ladder is not None else \
            {"capacity_per_replica": r.capacity_per_replica}
        resources[r.resource] = {"source": PluginSection(type="csv", path="-"), "forecaster": given.forecaster,
                                 "target_utilization": given.target_utilization, **size}
    return TargetConfig(name=name, interval=interval, mode="observe",
                        source=PluginSection(type="csv", path="-"), forecaster=forecaster, policy=policy,
                        resource=prep.resource if prep is not None and prep.resource else "demand",
                        resources=resources, anomalies=anomalies)


def simulate(runner: TargetRunner, series: Series, initial: int, k: int,
             progress: Callable[[int, int, Any], None] | None = None,
             resources: Mapping[str, Series] | None = None) -> PolicyRun:
    """Step ``runner`` through every interval of a regular ``series`` (and
    of each further resource's, on the same grid)."""
    resources = resources or {}
    rforecasts = {n: (np.full(len(series), np.nan), np.full(len(series), np.nan)) for n in resources}
    sized_by: Counter[str] = Counter()
    n = len(series)
    ts, d = series.timestamps, series.values
    decided = np.empty(n, dtype=np.int64)
    in_service = np.empty(n, dtype=np.int64)
    fpoint = np.full(n, np.nan)
    fupper = np.full(n, np.nan)
    state = ScalingState(current=initial)
    lead_s = k * int(series.step().total_seconds()) if n > 1 else 0
    fallbacks = anomalies = 0
    reasons: Counter[str] = Counter()
    plans: list[PlannedPath] = []
    name, sname = runner.target.name, series.name
    t0 = time.perf_counter()
    for t in range(n):
        serving = initial if t < k else int(decided[t - k])
        in_service[t] = serving
        if math.isnan(d[t]):  # a gap: hold, do not decide
            decided[t] = state.current
            continue
        runner.feedback.observe(name, Series.view(ts[t:t + 1], d[t:t + 1], sname))
        for rname, rs in resources.items():
            rr = runner.resources[rname]
            rr.feedback.observe(rr.target.name, rs[t:t + 1])
        now = from_epoch(ts[t])
        state = ScalingState(current=state.current, in_service=serving, recommendations=state.recommendations,
                             events=state.events, smoothed=state.smoothed)
        out = runner.step(Series.view(ts[: t + 1], d[: t + 1], sname), state, now,
                          resources={rname: rs[: t + 1] for rname, rs in resources.items()})
        dec = out.decision
        if "resource" in dec.extra:
            sized_by[dec.extra["resource"]] += 1
        for sig in out.signals[1:]:
            if sig.forecast is not None and t + k < n:
                at_lead(sig.forecast, ts[t] + lead_s, runner.resources[sig.resource].policy, sig.headroom,
                        rforecasts[sig.resource], t + k)
        if dec.fallback:
            fallbacks += 1
            # the data step that fell back: with several resources, the first
            # data step is the target's own signal's, DataOK when another's failed
            data = next((s for s in dec.steps if s.name == "data" and s.reason != "DataOK"), None)
            reasons[data.reason if data is not None else "unknown"] += 1
        anomalies += len(flagged(dec))
        state = out.state.after(dec, keep=runner.keep, applied=True)
        decided[t] = dec.desired
        if dec.schedule is not None:
            plans.append(PlannedPath.of(t, dec.schedule))
        fc = out.forecast
        if fc is not None and t + k < n:
            at_lead(fc, ts[t] + lead_s, runner.policy, out.state.headroom, (fpoint, fupper), t + k)
        if progress is not None:
            progress(t, n, dec)
    run = PolicyRun(runner.target.name, decided, in_service, forecast_point=fpoint, forecast_upper=fupper,
                    fallbacks=fallbacks, fallback_reasons=dict(reasons), resource_forecasts=rforecasts,
                    sized_by=dict(sized_by), plans=plans)
    if runner.anomalies is not None:
        run.anomalies = anomalies
    run.seconds = time.perf_counter() - t0
    return run


def at_lead(fc: Any, t: int, policy: PolicyConfig, headroom: float | None,
            into: tuple[np.ndarray, np.ndarray], i_out: int) -> None:
    """Keep ``fc``'s point and upper band at time ``t`` (the lead time
    ahead) in ``into`` at ``i_out``: the upper band is the conformal one
    where the policy sizes from it, else the policy's quantile."""
    idx = np.flatnonzero(fc.timestamps == t)
    if not idx.size:
        return
    i = int(idx[0])
    point, upper = into
    point[i_out] = fc.point[i]
    if policy.margin.conformal and headroom is not None:
        upper[i_out] = fc.point[i] * (1 + max(0.0, headroom))
    else:
        upper[i_out] = fc.level(policy.margin.quantile)[i]


def threshold_resizer(d: np.ndarray, prep: Prepared) -> PolicyRun:
    """The vertical baseline a VPS owner runs today: one rung up when the
    utilization of the rung in service has been above ``threshold_up`` for
    ``threshold_window``, one rung down when below ``threshold_down`` for as
    long; it waits for a resize to land before it looks again. With
    several resources the utilization is the busiest one's (up when any is
    above, down when all are below)."""
    sc = prep.scenario
    assert prep.ladder is not None
    caps = np.array([r.capacity for r in prep.ladder])
    others = [(np.asarray(r.series.values, dtype=float), np.array([g.capacity for g in r.ladder]))
              for r in prep.resources if r.ladder is not None]
    lo, hi = prep.bounds
    need_steps = max(1, int(round(sc.threshold_window / sc.interval)))
    n, k = d.size, prep.lead_steps
    decided = np.empty(n, dtype=np.int64)
    in_service = np.empty(n, dtype=np.int64)
    cur = prep.initial
    above = below = 0
    t0 = time.perf_counter()
    for t in range(n):
        serving = prep.initial if t < k else int(decided[t - k])
        in_service[t] = serving
        if serving != cur:  # a resize is under way
            above = below = 0
        elif not math.isnan(d[t]):
            util = max([d[t] / caps[serving]] + [v[t] / c[serving] for v, c in others if not math.isnan(v[t])])
            above = above + 1 if util > sc.threshold_up else 0
            below = below + 1 if util < sc.threshold_down else 0
            if above >= need_steps and cur < hi:
                cur, above, below = cur + 1, 0, 0
            elif below >= need_steps and cur > lo:
                cur, above, below = cur - 1, 0, 0
        decided[t] = cur
    run = PolicyRun("threshold", decided, in_service)
    run.seconds = time.perf_counter() - t0
    return run


def prepare(raw: Series, scenario: Scenario = Scenario(), trace: str = "") -> Prepared:
    """Resample ``raw`` to the scenario's interval and derive the replica
    size (or the ladder's scale), the oracle's need, the scored intervals and
    the initial capacity."""
    series = raw.regular(scenario.interval)
    if len(series) < 3:
        raise DataError(f"trace has {len(series)} intervals after resampling to {scenario.interval}; too short")
    d = series.values
    u = scenario.target_utilization
    valid = d[~np.isnan(d)]
    if valid.size == 0:
        raise DataError("trace has no valid values")
    p99 = float(np.quantile(valid, 0.99))
    notes: list[str] = []
    step_s = int(scenario.interval.total_seconds())
    # a change is in service from the first interval boundary at or after
    # its lead time (REFERENCE.md section 3), and never in the interval
    # already observed: 7m on 5m intervals is 10m, 0 is one interval
    lead_s = scenario.lead_time.total_seconds()
    k = max(1, -(-int(round(lead_s)) // step_s))
    if k * step_s != lead_s:
        notes.append(f"the lead time {format_duration(scenario.lead_time)} is replayed as "
                     f"{format_duration(timedelta(seconds=k * step_s))}: a change is in service from the first "
                     f"{format_duration(scenario.interval)} interval boundary at or after it"
                     + (", never in the interval already observed" if lead_s < step_s else ""))
    warm = int(scenario.warmup.total_seconds() // step_s)
    idx = np.arange(d.size)
    scored = (idx >= warm) & ~np.isnan(d)
    if not scored.any():
        span = format_duration(timedelta(seconds=(d.size - 1) * step_s))
        why = (f"the warm-up ({format_duration(scenario.warmup)}) is not shorter than the trace ({span} after "
               f"resampling to {format_duration(scenario.interval)}); give a shorter --warmup or a longer trace"
               if warm >= d.size else f"the trace has no value after its warm-up ({format_duration(scenario.warmup)})")
        raise DataError(f"nothing to score: {why}")
    first = int(np.flatnonzero(~np.isnan(d))[0])
    cadence = sample_cadence(d)
    seen = raw.timestamps[~np.isnan(raw.values)]
    raw_step = float(np.median(np.diff(seen))) if seen.size >= 3 else 0.0
    if cadence > 1 and raw_step > step_s:
        # the raw samples' own step: on a finer grid the bins' spacing is
        # rounded (5-minute samples on a 3-minute grid fall 1 and 2 bins apart)
        every = format_duration(timedelta(seconds=round(raw_step)))
        lead = format_duration(timedelta(seconds=k * step_s))
        notes.append(f"the trace is sampled every {every}, coarser than the {format_duration(scenario.interval)} "
                     f"interval: a policy decides at each sample and holds between; "
                     + ("forecast accuracy at the lead time is not measured (no observation lies one "
                        f"lead time, {lead}, after a sample)" if k % cadence else
                        "forecast accuracy at the lead time is measured on the samples"))
    cpr: float | None = None
    ladder: tuple[Rung, ...] | None = None
    if scenario.ladder is not None:
        scale = scenario.ladder_scale
        if scale is None:
            scale = p99 / (scenario.ladder[-1].capacity * u) if p99 > 0 else 1.0
            notes.append(f"ladder scaled by {scale:.6g} from the trace (its 99th percentile fills the top rung "
                         f"at utilization {u:g})")
        ladder = tuple(r.model_copy(update={"capacity": r.capacity * scale}) for r in scenario.ladder)
        top = len(ladder) - 1
        lo = 0 if scenario.min_replicas is None else min(scenario.min_replicas, top)
        hi = top if scenario.max_replicas is None else min(scenario.max_replicas, top)
        need = ladder_need(d, ladder, u, lo, hi)
    else:
        cpr = scenario.capacity_per_replica
        if cpr is None:
            cpr = p99 / (20 * u) if p99 > 0 else 1.0
            notes.append(f"capacity_per_replica {cpr:.6g} derived from the trace (its 99th percentile needs "
                         f"20 replicas at utilization {u:g})")
        lo = 1 if scenario.min_replicas is None else scenario.min_replicas
        hi = 60 if scenario.max_replicas is None else scenario.max_replicas
        need = oracle_need(d, cpr, u, lo, hi)
    return Prepared(trace, scenario, series, cpr, need, scored, k, int(need[first]), (lo, hi), ladder,
                    tuple(notes))


def with_resources(prep: Prepared, resources: Sequence[ResourceTrace], resource: str = "demand") -> Prepared:
    """``prep`` with further resources: each resampled onto its grid (a
    missing interval is a gap) and sized like the trace (its capacity per
    replica, or on a ladder its capacity on each rung, given or derived from
    its own 99th percentile, at its target utilization); the need is the
    largest over every resource (what the HPA does with several metrics;
    on a ladder the highest rung any of them needs), scored where every
    resource has data."""
    if not resources:
        return prep
    sc = prep.scenario
    names = [resource] + [r.name for r in resources]
    if len(set(names)) != len(names):
        raise ConfigError(f"backtest: resource names must be unique, got {', '.join(names)}")
    grid = prep.series.timestamps
    parts, notes = [], list(prep.notes)
    for r in resources:
        reg = r.series.regular(sc.interval)
        vals = np.full(grid.size, np.nan)
        pos = np.searchsorted(grid, reg.timestamps)
        ok = (pos < grid.size) & (grid[np.minimum(pos, grid.size - 1)] == reg.timestamps)
        vals[pos[ok]] = reg.values[ok]
        if not np.isfinite(vals).any():
            raise DataError(f"resource {r.name}: no values in the trace's time range")
        own = replace(sc, target_utilization=r.target_utilization or sc.target_utilization,
                      **_resource_size(r, sc))
        part = prepare(Series(grid, vals, r.name), own, r.name)
        parts.append(replace(part, resource=r.name))
        notes += [f"{r.name}: {n}" for n in part.notes]
    need = np.maximum.reduce([prep.need, *(p.need for p in parts)])
    scored = prep.scored.copy()
    for p in parts:
        scored &= ~np.isnan(p.series.values)
    first = int(np.flatnonzero(~np.isnan(prep.series.values))[0])
    return replace(prep, need=need, scored=scored, initial=int(need[first]), notes=tuple(notes),
                   resource=resource, resources=tuple(parts), resource_traces=tuple(resources))


def _resource_size(r: ResourceTrace, sc: Scenario) -> dict[str, Any]:
    """The scenario fields that size resource ``r``: its capacity per
    replica, or on a ladder the same rungs (names, prices) with its
    capacity on each (as given, or scaled from its own trace)."""
    if sc.ladder is None:
        if r.rung_capacity is not None:
            raise ConfigError(f"resource {r.name}: rung_capacity is for a ladder; this scenario has replicas "
                              "(give capacity_per_replica)")
        return {"capacity_per_replica": r.capacity_per_replica}
    if r.capacity_per_replica is not None:
        raise ConfigError(f"resource {r.name}: the scenario has a ladder of {len(sc.ladder)} rungs: give "
                          "rung_capacity (its capacity on each rung), not capacity_per_replica")
    if r.rung_capacity is None:
        return {"ladder_scale": None}  # the ladder scaled to this resource's own 99th percentile
    try:
        check_rung_capacity(r.rung_capacity, len(sc.ladder))
    except ValueError as exc:
        raise ConfigError(f"resource {r.name}: {exc}") from None
    return {"ladder": tuple(rung.model_copy(update={"capacity": c}) for rung, c in zip(sc.ladder, r.rung_capacity)),
            "ladder_scale": 1.0}


def build_forecaster(prep: Prepared, policy: PolicyConfig | Mapping[str, Any], forecaster: ForecasterConfig) -> Forecaster:
    """The forecaster :func:`run_policy` would build for ``policy`` on this
    trace: from the target's :attr:`~engine.config.TargetConfig.forecaster_params`
    (an ``auto`` scored over the policy's horizon, its lead bands in steps),
    for a caller that wraps it (``run_policy(..., model=)``)."""
    from forecasters import create

    config, _ = replay_policy(policy, prep)
    return create(forecaster.name, _target("policy", prep.scenario.interval, config, forecaster, prep).forecaster_params)


def run_policy(prep: Prepared, name: str, policy: PolicyConfig | Mapping[str, Any], forecaster: ForecasterConfig,
               *, model: Forecaster | None = None, anomalies: AnomalyConfig | None = None,
               progress: Callable[[int, int, Any], None] | None = None) -> PolicyRun:
    """Replay one policy over a prepared trace and score it. ``model``: a
    forecaster instance to use instead of building one from ``forecaster``;
    ``anomalies``: flag and mask them as the live loop does (the count is
    the run's ``anomalies`` metric)."""
    sc, series, d = prep.scenario, prep.series, prep.series.values
    config, _ = replay_policy(policy, prep)
    target = _target(name, sc.interval, config, forecaster, prep, anomalies)
    window = int(timedelta(days=3) / sc.interval) * 2
    runner = TargetRunner(target, forecaster=model)
    for r in (runner, *runner.resources.values()):
        r.feedback = MemoryFeedback(r.horizons_s, window_points=window)
    others = {r.resource: r.series for r in prep.resources}
    run = evaluate(prep, simulate(runner, series, prep.initial, prep.lead_steps, progress, others))
    if config.kind != "reactive":
        assert run.forecast_point is not None and run.forecast_upper is not None
        run.metrics.update(_accuracy(prep, d, series, run.forecast_point, run.forecast_upper))
        run.metrics["fallback_fraction"] = run.fallbacks / max(1, int((~np.isnan(d)).sum()))
        if run.resource_metrics:
            run.resource_metrics[prep.resource].update(_accuracy(prep, d, series, run.forecast_point,
                                                                 run.forecast_upper))
            for r in prep.resources:
                point, upper = run.resource_forecasts[r.resource]
                run.resource_metrics[r.resource].update(_accuracy(prep, r.series.values, r.series, point, upper))
    if run.anomalies is not None:
        run.metrics["anomalies"] = run.anomalies
    return run


def _accuracy(prep: Prepared, d: np.ndarray, series: Series, point: np.ndarray,
              upper: np.ndarray) -> dict[str, float]:
    """MAPE, sMAPE (ratios), MASE and coverage of one signal's forecast at
    the lead time over the scored intervals, and whether MAPE means
    anything there (:func:`engine.feedback.mape_meaningless`)."""
    m = prep.scored & np.isfinite(point) & np.isfinite(d)
    acc = accuracy(d[m], point[m], upper[m], seasonal_naive_scale(series))
    out = {k: acc.get(k, float("nan")) for k in ("mase", "mape", "smape", "coverage")}
    out["mape_meaningful"] = not mape_meaningless(acc)
    return out


def run_backtest(raw: Series, *, scenario: Scenario = Scenario(),
                 policy: PolicyConfig | Mapping[str, Any] | None = None,
                 forecaster: ForecasterConfig | None = None, trace: str = "",
                 anomalies: AnomalyConfig | None = None,
                 progress: Callable[[str, int, int, Any], None] | None = None,
                 resources: Sequence[ResourceTrace] = (), resource: str = "demand") -> BacktestResult:
    """Oracle, the baseline (the reactive HPA, or the threshold resizer on a
    ladder) and ``policy`` (default :data:`DEFAULT_POLICY`) over one trace.
    ``resources``: further demand signals of the same target (``raw`` is
    the one named ``resource``): every policy, the HPA baseline too, sizes
    for the one that needs the most, and each run reports every resource's
    violations, unserved demand and (forecasting policies) accuracy.
    ``anomalies``: the policy's replay flags and masks them (the target's
    ``anomalies`` section)."""
    prep = with_resources(prepare(raw, scenario, trace), resources, resource)
    d, need = prep.series.values, prep.need
    runs = {"oracle": evaluate(prep, PolicyRun("oracle", need.copy(), need.copy()), downtime=False)}
    config, notes = replay_policy(policy if policy is not None else DEFAULT_POLICY, prep)
    fcfg = forecaster or default_forecaster(config.kind)
    label = policy_label(config)

    def cb(name: str) -> Callable[[int, int, Any], None] | None:
        return None if progress is None else (lambda t, n, dec: progress(name, t, n, dec))

    if prep.vertical:
        runs["threshold"] = evaluate(prep, threshold_resizer(d, prep))
    else:
        runs["reactive"] = run_policy(prep, "reactive", reactive_policy(scenario), fcfg, progress=cb("reactive"))
    if label in runs:  # e.g. a reactive config: its own row beside the baseline
        label = f"configured {label}"
    runs[label] = run_policy(prep, label, config, fcfg, anomalies=anomalies, progress=cb(label))
    return BacktestResult(trace, scenario, prep.series.timestamps, d, prep.scored, need,
                          prep.capacity_per_replica, runs, fcfg.name, label, prep.notes + tuple(notes),
                          prep.ladder)


def write_json(result: BacktestResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True, default=float))


@dataclass(frozen=True)
class PlotSeries:
    """One line of the backtest plot: x (epoch seconds), y (demand units)."""

    label: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class PlotData:
    """What :func:`plot` draws, computed apart from the drawing (so a test
    can check it): the window's demand, the forecast band, each policy's
    capacity and cumulative violations, and the planner's schedules at a
    few cycles in the window (what it planned then, over its horizon)."""

    demand: PlotSeries
    band: tuple[PlotSeries, PlotSeries] | None
    capacity: dict[str, PlotSeries]
    violations: dict[str, PlotSeries]
    schedules: tuple[PlotSeries, ...]


def planned_load(result: BacktestResult, capacity: np.ndarray) -> np.ndarray:
    """The load planned levels carry at full capacity (replicas x size, or
    the rung's capacity)."""
    if result.ladder is not None:
        caps = np.array([r.capacity for r in result.ladder])
        return caps[np.clip(capacity, 0, caps.size - 1)]
    return capacity.astype(float) * (result.capacity_per_replica or 1.0)


def plot_data(result: BacktestResult, *, last: timedelta | None = timedelta(days=3),
              schedules: int = 6) -> PlotData:
    """The series :func:`plot` draws. ``schedules``: how many of the
    planner's schedules to draw, made at cycles evenly spread over the
    window (each from its first planned step to the end of its horizon)."""
    ts = result.timestamps
    sel = np.ones(ts.size, dtype=bool)
    if last is not None:
        sel = ts >= ts[-1] - int(last.total_seconds())
    x = ts[sel]
    band = None
    p = result.runs.get(result.policy_name)
    if p is not None and p.forecast_point is not None and p.forecast_upper is not None:
        band = (PlotSeries("forecast point", x, p.forecast_point[sel]),
                PlotSeries("forecast upper", x, p.forecast_upper[sel]))
    capacity, violations = {}, {}
    for name, run in result.runs.items():
        served = run.served if run.served is not None else run.in_service * (result.capacity_per_replica or 1.0)
        capacity[name] = PlotSeries(name, x, served[sel])
        if name != "oracle":
            viol = (result.demand[sel] > served[sel]) & result.scored[sel]
            violations[name] = PlotSeries(name, x, np.cumsum(viol))
    drawn: list[PlotSeries] = []
    plans = [pp for pp in (p.plans if p is not None else []) if sel[pp.cycle] and pp.at.size]
    if plans and schedules > 0:
        picks = np.unique(np.linspace(0, len(plans) - 1, min(schedules, len(plans))).round().astype(int))
        for i in picks.tolist():
            pp = plans[i]
            made = from_epoch(int(ts[pp.cycle])).strftime("%m-%d %H:%M")
            drawn.append(PlotSeries(f"planned at {made}", pp.at, planned_load(result, pp.capacity)))
    return PlotData(PlotSeries("demand", x, result.demand[sel]), band, capacity, violations, tuple(drawn))


def plot(result: BacktestResult, path: str | Path, *, last: timedelta | None = timedelta(days=3),
         schedules: int = 6) -> PlotData:
    """Demand, the forecast band at lead time, each policy's capacity, and
    (for the planner) what it planned at a few cycles: :func:`plot_data`,
    drawn to a PNG at ``path``. Returns the data drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = plot_data(result, last=last, schedules=schedules)

    def dt(a: np.ndarray) -> np.ndarray:
        return a.astype("datetime64[s]")

    x = dt(data.demand.x)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(13, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(x, data.demand.y, color="black", lw=1.0, label="demand")
    if data.band is not None:
        ax.fill_between(x, data.band[0].y, data.band[1].y, color="tab:blue", alpha=0.25,
                        label=f"forecast band ({result.forecaster}, point..upper, at lead time)")
    styles = {"oracle": ("tab:green", "--"), "reactive": ("tab:red", "-"), "threshold": ("tab:red", "-"),
              result.policy_name: ("tab:blue", "-")}
    for name, series in data.capacity.items():
        c, ls = styles.get(name, ("gray", "-"))
        m = result.runs[name].metrics
        ax.step(x, series.y, where="post", color=c, ls=ls, lw=1.2,
                label=f"{name} capacity (v={m['violation_fraction']:.3f}, "
                      f"cost={m['cost_vs_oracle']:.3f}, {m['actions']} changes)")
    for k, sched in enumerate(data.schedules):
        ax.step(dt(sched.x), sched.y, where="post", color="tab:purple", ls=":", lw=1.6, alpha=0.9, zorder=3,
                label=f"planner schedules ({len(data.schedules)}, each from its cycle over the horizon)"
                if k == 0 else None)
        ax.plot(dt(sched.x[:1]), sched.y[:1], "o", color="tab:purple", ms=4, zorder=3)
    for name, series in data.violations.items():
        c, _ = styles.get(name, ("gray", "-"))
        ax2.plot(x, series.y, color=c, label=f"{name}: violations (cumulative)")
    ax.set_ylabel("demand / capacity (metric units)")
    ax.set_title(f"forescale backtest: {result.trace}")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper left", fontsize=8)
    ax2.set_ylabel("violations")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return data
