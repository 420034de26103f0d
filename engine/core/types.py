"""Domain types: plain, frozen data shared by every layer.

``policies`` imports these and nothing heavier; nothing here does I/O.

Stages of a value, as they flow through a cycle::

    Series (history) -> Forecast -> Decision (steps...) -> Plan -> ActuationResult
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Mapping

import numpy as np

from .units import from_epoch, isoformat, parse_time, to_epoch


# --------------------------------------------------------------------------- series
@dataclass(frozen=True, eq=False)
class Series:
    """Samples of one metric: ``timestamps`` (int64 epoch seconds, strictly
    increasing) and ``values`` (float64; NaN marks a missing sample)."""

    timestamps: np.ndarray
    values: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        ts = np.asarray(self.timestamps, dtype=np.int64)
        vs = np.asarray(self.values, dtype=np.float64)
        if ts.ndim != 1 or vs.shape != ts.shape:
            raise ValueError(
                f"series {self.name!r}: timestamps and values must be 1-D of equal length "
                f"(got {ts.shape} and {vs.shape})"
            )
        if ts.size > 1 and np.any(np.diff(ts) <= 0):
            i = int(np.argmax(np.diff(ts) <= 0))
            raise ValueError(
                f"series {self.name!r}: timestamps must be strictly increasing "
                f"(index {i + 1}: {ts[i + 1]} after {ts[i]})"
            )
        object.__setattr__(self, "timestamps", ts)
        object.__setattr__(self, "values", vs)

    @classmethod
    def view(cls, timestamps: np.ndarray, values: np.ndarray, name: str = "") -> "Series":
        """A slice of an already validated series, without validating again:
        a slice of a strictly increasing array is strictly increasing, and
        re-checking a growing prefix every cycle made replays quadratic."""
        out = object.__new__(cls)
        object.__setattr__(out, "timestamps", timestamps)
        object.__setattr__(out, "values", values)
        object.__setattr__(out, "name", name)
        return out

    def __len__(self) -> int:
        return int(self.timestamps.size)

    @property
    def start(self) -> datetime | None:
        return from_epoch(self.timestamps[0]) if len(self) else None

    @property
    def end(self) -> datetime | None:
        return from_epoch(self.timestamps[-1]) if len(self) else None

    @property
    def n_valid(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.values)))

    def step(self) -> timedelta | None:
        """The median spacing of samples (the series' natural step)."""
        if len(self) < 2:
            return None
        return timedelta(seconds=float(np.median(np.diff(self.timestamps))))

    def until(self, t: datetime | int) -> "Series":
        """Samples at or before ``t`` (a view, no copy)."""
        e = t if isinstance(t, (int, np.integer)) else to_epoch(t)
        i = int(np.searchsorted(self.timestamps, e, side="right"))
        return Series.view(self.timestamps[:i], self.values[:i], self.name)

    def since(self, t: datetime | int) -> "Series":
        """Samples strictly after ``t``."""
        e = t if isinstance(t, (int, np.integer)) else to_epoch(t)
        i = int(np.searchsorted(self.timestamps, e, side="right"))
        return Series.view(self.timestamps[i:], self.values[i:], self.name)

    def tail(self, n: int) -> "Series":
        return Series.view(self.timestamps[-n:], self.values[-n:], self.name) if n else self[0:0]

    def __getitem__(self, s: slice) -> "Series":
        if not isinstance(s, slice) or (s.step not in (None, 1)):
            raise TypeError("a Series slices only with a contiguous slice")
        return Series.view(self.timestamps[s], self.values[s], self.name)

    def last_valid(self) -> tuple[datetime, float] | None:
        ok = np.flatnonzero(~np.isnan(self.values))
        if ok.size == 0:
            return None
        i = int(ok[-1])
        return from_epoch(self.timestamps[i]), float(self.values[i])

    def regular(self, step: timedelta) -> "Series":
        """Resample onto a regular grid of ``step`` by mean; empty bins are NaN.

        Bins are aligned to multiples of ``step`` since the epoch; a sample at
        time t belongs to the bin that ends at or after it, i.e. (t-step, t],
        labelled by its end: a decision at a label has seen all of its bin,
        which is the backtest's "decision at the end of interval t"
        (REFERENCE.md section 3).

        The newest bin never ends after the newest sample: samples after the
        last grid point at or before the newest sample join that grid point's
        bin. Without this, a sample written a few seconds after a boundary
        (a cron-fed CSV, a replay on a clock that is not on the grid) was
        labelled with the *next* boundary, later than the cycle's ``now``,
        and every forecaster refused the history as look-ahead. A series
        whose newest sample is on the grid (every backtest decision instant)
        is binned exactly as before.
        """
        s = int(step.total_seconds())
        if len(self) == 0:
            return self
        bins = -(-self.timestamps // s) * s  # ceil to the grid: bin end
        newest = int(self.timestamps[-1]) // s * s  # the last grid point not after the newest sample
        if bins[-1] > newest:
            bins = np.minimum(bins, newest)
        first, last = int(bins[0]), int(bins[-1])
        n = (last - first) // s + 1
        idx = (bins - first) // s
        ok = ~np.isnan(self.values)
        sums = np.bincount(idx[ok], weights=self.values[ok], minlength=n)
        counts = np.bincount(idx[ok], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            vals = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        return Series(first + np.arange(n, dtype=np.int64) * s, vals, self.name)

    @staticmethod
    def concat(a: "Series", b: "Series") -> "Series":
        """``a`` followed by the samples of ``b`` that are newer than ``a``'s end."""
        if len(a) == 0:
            return b
        b = b.since(int(a.timestamps[-1]))
        return Series(
            np.concatenate([a.timestamps, b.timestamps]),
            np.concatenate([a.values, b.values]),
            a.name or b.name,
        )


# ------------------------------------------------------------------------- forecast
@dataclass(frozen=True, eq=False)
class Forecast:
    """A quantile forecast made at ``made_at`` for the points ``timestamps``
    (int64 epoch seconds, ``made_at + step .. made_at + horizon*step``).

    ``point`` is the central forecast (the median where the model has one);
    ``quantiles`` maps a level in (0, 1) to an array of the same length,
    non-decreasing across levels at every point.
    """

    made_at: datetime
    timestamps: np.ndarray
    point: np.ndarray
    quantiles: Mapping[float, np.ndarray]
    model: str
    model_version: str = ""

    def __post_init__(self) -> None:
        ts = np.asarray(self.timestamps, dtype=np.int64)
        pt = np.asarray(self.point, dtype=np.float64)
        if pt.shape != ts.shape:
            raise ValueError("forecast point and timestamps differ in length")
        qs = {}
        for level in sorted(self.quantiles):
            arr = np.asarray(self.quantiles[level], dtype=np.float64)
            if not 0.0 < float(level) < 1.0:
                raise ValueError(f"quantile level {level} is not in (0, 1)")
            if arr.shape != ts.shape:
                raise ValueError(f"forecast quantile {level} differs in length")
            qs[float(level)] = arr
        object.__setattr__(self, "timestamps", ts)
        object.__setattr__(self, "point", pt)
        object.__setattr__(self, "quantiles", qs)

    @property
    def horizon(self) -> int:
        return int(self.timestamps.size)

    def level(self, q: float | None) -> np.ndarray:
        """The forecast at quantile ``q`` (``None`` or 0.5 without a median: point).

        An unknown level is interpolated linearly between the nearest known
        ones (and the point as 0.5); beyond the known range the outermost
        level is used, never extrapolated.
        """
        if q is None:
            return self.point
        if q in self.quantiles:
            return self.quantiles[q]
        known = dict(self.quantiles)
        known.setdefault(0.5, self.point)
        levels = sorted(known)
        if q <= levels[0]:
            return known[levels[0]]
        if q >= levels[-1]:
            return known[levels[-1]]
        hi = next(lv for lv in levels if lv > q)
        lo = max(lv for lv in levels if lv < q)
        w = (q - lo) / (hi - lo)
        return known[lo] * (1 - w) + known[hi] * w

    def window(self, start: int, end: int) -> np.ndarray:
        """Boolean mask of points with ``start <= t <= end`` (epoch seconds)."""
        return (self.timestamps >= start) & (self.timestamps <= end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "made_at": isoformat(self.made_at),
            "model": self.model,
            "model_version": self.model_version,
            "timestamps": self.timestamps.tolist(),
            "point": _floats(self.point),
            "quantiles": {str(k): _floats(v) for k, v in self.quantiles.items()},
        }


def _floats(a: np.ndarray) -> list[float | None]:
    return [None if math.isnan(x) else round(float(x), 6) for x in a]


# ---------------------------------------------------------------------------- state
@dataclass(frozen=True)
class ScaleEvent:
    """A capacity change the engine made (or observed): for rate limits and
    cooldowns."""

    at: datetime
    from_capacity: int
    to_capacity: int


@dataclass(frozen=True)
class Observation:
    """The latest metric sample and when it was taken."""

    value: float
    at: datetime


@dataclass(frozen=True)
class ScalingState:
    """Everything ``decide`` needs to remember between cycles, loaded from the
    store before and saved after. Frozen: ``decide`` returns what changes in
    the Decision, and the engine derives the next state with :meth:`after`.

    - ``current``: the capacity last set (spec.replicas / desired capacity).
    - ``in_service``: capacity observed serving load (``None``: same as current).
    - ``observation``: the latest metric sample (``None``: missing).
    - ``recommendations``: (time, replicas) history for stabilization windows.
    - ``events``: recent scale events for rate limits and cooldowns.
    - ``smoothed``: the EWMA / window memory of the smoothing step.
    - ``headroom``: conformal headroom, the empirical quantile of recent
      relative under-forecast errors at the policy's horizon (``None``: unknown).
    - ``learned_lead_time``: a high percentile of observed actuation delays.
    """

    current: int
    in_service: int | None = None
    observation: Observation | None = None
    recommendations: tuple[tuple[datetime, int], ...] = ()
    events: tuple[ScaleEvent, ...] = ()
    smoothed: tuple[float, ...] = ()
    headroom: float | None = None
    learned_lead_time: timedelta | None = None
    history_points: int = 0

    @property
    def serving(self) -> int:
        return self.current if self.in_service is None else self.in_service

    def last_event(self, direction: str) -> ScaleEvent | None:
        for ev in reversed(self.events):
            if (direction == "up" and ev.to_capacity > ev.from_capacity) or (
                direction == "down" and ev.to_capacity < ev.from_capacity
            ):
                return ev
        return None

    def after(self, decision: "Decision", *, keep: timedelta, applied: bool = True) -> "ScalingState":
        """The state after ``decision``: its recommendation recorded, its
        smoothing memory kept, and (if ``applied``) the capacity change taken
        as an event. History older than ``keep`` is dropped."""
        horizon = decision.at - keep
        recs = tuple(r for r in self.recommendations if r[0] > horizon)
        recs = recs + ((decision.at, decision.recommendation),)
        events = tuple(e for e in self.events if e.at > horizon)
        current = self.current
        if applied and decision.desired != self.current:
            events = events + (ScaleEvent(decision.at, self.current, decision.desired),)
            current = decision.desired
        return replace(
            self,
            current=current,
            recommendations=recs,
            events=events,
            smoothed=decision.smoothed,
        )


# ------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class PlanStep:
    """One step of a planned schedule: the capacity that serves the forecast
    interval ending at ``at``, ordered at ``order_at`` (``at`` minus the lead
    time). ``fixed``: already decided (inside the lead time), not planned.
    ``demand`` is the median forecast, ``p_saturated`` the probability that
    demand exceeds the capacity, ``unserved`` the expected demand above it,
    ``cost`` the step's expected cost (capacity + risk + change)."""

    at: datetime
    order_at: datetime
    capacity: int
    demand: float
    p_saturated: float
    unserved: float
    cost: float
    fixed: bool = False
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": isoformat(self.at), "order_at": isoformat(self.order_at), "capacity": self.capacity,
            "label": self.label, "demand": round(self.demand, 6), "p_saturated": round(self.p_saturated, 6),
            "unserved": round(self.unserved, 6), "cost": round(self.cost, 6), "fixed": self.fixed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PlanStep":
        return cls(at=parse_time(d["at"]), order_at=parse_time(d["order_at"]), capacity=int(d["capacity"]),
                   demand=float(d["demand"]), p_saturated=float(d["p_saturated"]),
                   unserved=float(d["unserved"]), cost=float(d["cost"]), fixed=bool(d.get("fixed", False)),
                   label=d.get("label"))


@dataclass(frozen=True)
class Schedule:
    """The planner's capacity schedule over its horizon (receding horizon:
    only the first planned step is carried out, the rest is re-planned next
    cycle). What a person approves as a whole in approve mode.

    Totals are expected costs over the planned (not fixed) steps, in the
    configured price unit: ``capacity_cost`` + ``risk_cost`` (penalty x
    risk) + ``change_cost`` = ``total_cost``. ``reason`` says in words why
    the first step is what it is."""

    made_at: datetime
    lead_time: timedelta
    interval: timedelta
    steps: tuple[PlanStep, ...]
    capacity_cost: float
    risk_cost: float
    change_cost: float
    changes: int
    risk: str
    penalty: float
    reason: str

    @property
    def total_cost(self) -> float:
        return self.capacity_cost + self.risk_cost + self.change_cost

    @property
    def planned(self) -> tuple[PlanStep, ...]:
        return tuple(s for s in self.steps if not s.fixed)

    @property
    def first(self) -> PlanStep | None:
        p = self.planned
        return p[0] if p else None

    def segments(self) -> list[tuple[PlanStep, PlanStep]]:
        """Runs of equal capacity: (first step, last step) of each."""
        out: list[tuple[PlanStep, PlanStep]] = []
        for s in self.steps:
            if out and out[-1][0].capacity == s.capacity and out[-1][0].fixed == s.fixed:
                out[-1] = (out[-1][0], s)
            else:
                out.append((s, s))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "made_at": isoformat(self.made_at),
            "lead_time_s": self.lead_time.total_seconds(),
            "interval_s": self.interval.total_seconds(),
            "steps": [s.to_dict() for s in self.steps],
            "capacity_cost": round(self.capacity_cost, 6),
            "risk_cost": round(self.risk_cost, 6),
            "change_cost": round(self.change_cost, 6),
            "total_cost": round(self.total_cost, 6),
            "changes": self.changes,
            "risk": self.risk,
            "penalty": self.penalty,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Schedule":
        return cls(made_at=parse_time(d["made_at"]), lead_time=timedelta(seconds=float(d["lead_time_s"])),
                   interval=timedelta(seconds=float(d["interval_s"])),
                   steps=tuple(PlanStep.from_dict(s) for s in d["steps"]),
                   capacity_cost=float(d["capacity_cost"]), risk_cost=float(d["risk_cost"]),
                   change_cost=float(d["change_cost"]), changes=int(d["changes"]), risk=str(d["risk"]),
                   penalty=float(d["penalty"]), reason=str(d["reason"]))


# ------------------------------------------------------------------------- decision
class Action(str, enum.Enum):
    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    HOLD = "hold"


@dataclass(frozen=True)
class Step:
    """One policy step: the value after it, a stable reason code
    (``ScaleUpLimit``, ``ScaleDownStabilized``, ...), and a message for people.
    ``changed`` says whether this step altered the value it received.
    ``resource``: the resource this step sized, on a target with several
    (None: the decision's one demand signal, or a step over all of them)."""

    name: str
    value: float
    reason: str
    message: str
    changed: bool = False
    resource: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "value": self.value,
            "reason": self.reason,
            "message": self.message,
            "changed": self.changed,
        }
        if self.resource is not None:  # a single resource's records stay as they were
            out["resource"] = self.resource
        return out


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one target at ``at``, and every step of
    how. Serialized, it is the audit record (with approval and outcome added
    by the engine)."""

    target: str
    at: datetime
    current: int
    desired: int
    recommendation: int
    steps: tuple[Step, ...]
    fallback: bool = False
    smoothed: tuple[float, ...] = ()
    model: str = ""
    model_version: str = ""
    capacity_label: str | None = None
    forecast_demand: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: the planned capacity schedule (``kind: plan`` only)
    schedule: Schedule | None = None

    @property
    def id(self) -> str:
        """Stable id: one decision per target per cycle time."""
        return f"{self.target}@{isoformat(self.at)}"

    @property
    def action(self) -> Action:
        if self.desired > self.current:
            return Action.SCALE_UP
        if self.desired < self.current:
            return Action.SCALE_DOWN
        return Action.HOLD

    @property
    def reasons(self) -> list[str]:
        return [s.reason for s in self.steps if s.changed]

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "at": isoformat(self.at),
            "current": self.current,
            "desired": self.desired,
            "recommendation": self.recommendation,
            "action": self.action.value,
            "fallback": self.fallback,
            "model": self.model,
            "model_version": self.model_version,
            "capacity_label": self.capacity_label,
            "forecast_demand": self.forecast_demand,
            "smoothed": list(self.smoothed),
            "steps": [s.to_dict() for s in self.steps],
            "extra": dict(self.extra),
            "schedule": None if self.schedule is None else self.schedule.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


# ----------------------------------------------------------------------------- plan
class PlanStatus(str, enum.Enum):
    """Where a plan is (the transitions are drawn in :mod:`engine.plans`)."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"  # a newer plan for the same target replaced it
    APPLYING = "applying"  # claimed by one process, the actuator being called
    APPLIED = "applied"
    FAILED = "failed"
    REFUSED = "refused"  # stale, outside the bounds in force, mode, unverifiable approval

    @property
    def final(self) -> bool:
        return self in {PlanStatus.REJECTED, PlanStatus.APPLIED, PlanStatus.FAILED,
                        PlanStatus.EXPIRED, PlanStatus.SUPERSEDED, PlanStatus.REFUSED}


@dataclass(frozen=True)
class Plan:
    """A capacity change waiting for (or past) a person's approval.

    ``observed_capacity`` is what the actuator read when the plan was made:
    apply refuses if it changed (stale plan). ``actor``, ``channel`` and
    ``note`` are who last decided on it (an authenticated identity such as
    ``unix:alice``), through which channel, and the comment or reason of its
    latest transition; the full history is ``Store.plan_history``.
    ``waiting_since`` is when the target started waiting for this change (a
    plan that supersedes a pending one in the same direction inherits it, so
    an auto-approval deadline is not reset every cycle). ``schedule`` is the
    planner's serialized Schedule when the decision carried one.
    """

    id: str
    target: str
    decision_id: str
    from_capacity: int
    to_capacity: int
    observed_capacity: int
    created_at: datetime
    expires_at: datetime
    status: PlanStatus = PlanStatus.PENDING
    description: str = ""
    actor: str | None = None
    updated_at: datetime | None = None
    note: str = ""
    channel: str | None = None
    waiting_since: datetime | None = None
    schedule: Mapping[str, Any] | None = None

    @property
    def action(self) -> Action:
        if self.to_capacity > self.from_capacity:
            return Action.SCALE_UP
        if self.to_capacity < self.from_capacity:
            return Action.SCALE_DOWN
        return Action.HOLD

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "decision_id": self.decision_id,
            "from_capacity": self.from_capacity,
            "to_capacity": self.to_capacity,
            "observed_capacity": self.observed_capacity,
            "created_at": isoformat(self.created_at),
            "expires_at": isoformat(self.expires_at),
            "status": self.status.value,
            "description": self.description,
            "actor": self.actor,
            "updated_at": isoformat(self.updated_at),
            "note": self.note,
            "channel": self.channel,
            "waiting_since": isoformat(self.waiting_since),
            "schedule": None if self.schedule is None else dict(self.schedule),
        }


@dataclass(frozen=True)
class PlanTransition:
    """One appended step of a plan's history: from which state to which,
    when, decided by whom (identity) through which channel (``cli``,
    ``http``, ``console``, ``link``, ``auto``), with the person's comment or
    the engine's reason. ``seq`` is its audit record."""

    plan_id: str
    at: datetime
    from_status: PlanStatus | None
    to_status: PlanStatus
    identity: str | None = None
    channel: str | None = None
    comment: str = ""
    reason: str = ""
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "at": isoformat(self.at),
                "from": None if self.from_status is None else self.from_status.value,
                "to": self.to_status.value, "identity": self.identity, "channel": self.channel,
                "comment": self.comment, "reason": self.reason, "seq": self.seq}


# ------------------------------------------------------------------------ actuation
@dataclass(frozen=True)
class ActionPlan:
    """What an actuator would do, in the platform's own terms (``describe``)."""

    actuator: str
    target: str
    from_capacity: int | None
    to_capacity: int
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    downtime: timedelta | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "actuator": self.actuator,
            "target": self.target,
            "from_capacity": self.from_capacity,
            "to_capacity": self.to_capacity,
            "summary": self.summary,
            "details": dict(self.details),
            "downtime_s": None if self.downtime is None else self.downtime.total_seconds(),
        }


@dataclass(frozen=True)
class CapacityReading:
    """What an actuator's ``read()`` reports (Nomad's ``Status() -> {Ready,
    Count}``): ``count`` is the capacity the platform is set to (desired
    capacity, ``spec.replicas``, the rung index of the instance type), and
    ``ready`` how much of it is in service now (``None``: the platform does
    not say, take ``count``). The engine verifies an action on later cycles
    by reading again, never by blocking inside ``apply``."""

    count: int
    ready: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def serving(self) -> int:
        return self.count if self.ready is None else self.ready

    @property
    def settled(self) -> bool:
        """Everything the platform is set to is in service."""
        return self.ready is None or self.ready == self.count

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "ready": self.ready, "details": dict(self.details)}


@dataclass(frozen=True)
class ActuationResult:
    """Outcome of ``apply``: what was asked, what was observed afterwards, how
    long until it was observed in service, and the provider's request ids."""

    requested: int
    observed: int
    verified: bool
    elapsed: timedelta
    request_ids: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "observed": self.observed,
            "verified": self.verified,
            "elapsed_s": self.elapsed.total_seconds(),
            "request_ids": list(self.request_ids),
            "details": dict(self.details),
        }
