"""Policy configuration: every knob of the decision pipeline, validated.

Defaults cite their source. Durations accept ``30s``, ``5m``, ``1h`` or
seconds. Errors name the field and the values, e.g.
``max_replicas (3) is less than min_replicas (5)``.

Bounds that keep a valid config runnable: every float is finite (``.inf``
capacity sized every cycle to the minimum), counts of replicas are at most
:data:`MAX_REPLICAS` (a larger one validated and then overflowed SQLite's
INTEGER on every cycle), and durations at most a year and a day
(:data:`engine.core.units.MAX_DURATION`).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.core.units import Duration, Timezone, format_duration

from .events import Calendar


#: the most replicas (or rung index, or pods per rate policy) a config may
#: name: far above any real fleet, far below SQLite's 64-bit INTEGER
MAX_REPLICAS = 1_000_000
#: the most samples a window or minimum count may name (a year of 30 s steps)
MAX_SAMPLES = 1_000_000


class _Model(BaseModel):
    # allow_inf_nan=False: a non-finite float is an error at load, never a
    # capacity of .inf that validates and then sizes every cycle wrongly
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RatePolicy(_Model):
    """One HPA rate policy: at most ``value`` pods (or percent) per ``period``."""

    type: Literal["Pods", "Percent"]
    value: int = Field(gt=0, le=MAX_REPLICAS)
    period: Duration = timedelta(seconds=15)

    @model_validator(mode="after")
    def _period_positive(self) -> "RatePolicy":
        if self.period <= timedelta(0):
            raise ValueError(f"period ({self.period}) must be positive")
        return self


class RateLimit(_Model):
    """``select``: Max takes the most permissive policy (HPA default), Min the
    least, Disabled forbids changes in this direction."""

    policies: tuple[RatePolicy, ...] = ()
    select: Literal["Max", "Min", "Disabled"] = "Max"


# HPA defaults (autoscaling/v2 behavior): up = max(100 %/15 s, 4 pods/15 s),
# down = 100 %/15 s. REFERENCE.md section 1.
HPA_SCALE_UP = RateLimit(policies=(RatePolicy(type="Percent", value=100), RatePolicy(type="Pods", value=4)))
HPA_SCALE_DOWN = RateLimit(policies=(RatePolicy(type="Percent", value=100),))


class Stabilization(_Model):
    # HPA defaults: scale-up window 0 s, scale-down window 300 s.
    scale_up: Duration = timedelta(0)
    scale_down: Duration = timedelta(seconds=300)


class Cooldown(_Model):
    """Wall-clock cooldowns. Both block *scale-down* only: a cooldown never
    delays a scale-up, because under-provisioning is the costly error.

    - ``after_scale_up``: no scale-down for this long after a scale-up
      (stops up/down flapping around a spike).
    - ``after_scale_down``: no further scale-down for this long after one
      (scale in gradually).
    """

    after_scale_up: Duration = timedelta(0)
    after_scale_down: Duration = timedelta(0)


class Smoothing(_Model):
    """Smoothing of the forecast demand or of the replica recommendation.
    ``ewma``: ``s = alpha*x + (1-alpha)*s_prev``; ``window``: mean of the last
    ``window`` values. ``upward: immediate`` lets a rise through unsmoothed
    (smoothing then only slows scale-down)."""

    kind: Literal["none", "ewma", "window"] = "none"
    applies_to: Literal["forecast", "recommendation"] = "forecast"
    alpha: float = Field(0.5, gt=0.0, le=1.0)
    window: int = Field(3, ge=1, le=MAX_SAMPLES)
    upward: Literal["immediate", "smoothed"] = "immediate"


class Margin(_Model):
    """Safety margin on the forecast demand.

    - ``quantile``: size from this forecast quantile (None: the point forecast).
    - ``conformal``: size from ``point * (1 + headroom)``, where headroom is
      the empirical quantile of recent relative under-forecast errors at
      the policy's horizon (the engine computes it from the
      predicted-vs-actual log so that the under-forecast rate converges to
      ``conformal_target``). Until enough errors are logged, ``quantile`` is used.
    - ``fraction``: then multiply by ``1 + fraction``.
    - ``cap``: finally at most ``point * (1 + cap)`` (REFERENCE.md section 4,
      item 3: stops bursty series costing several times the oracle; the
      reactive rule catches what the cap cuts off).
    """

    quantile: float | None = Field(0.9, gt=0.0, lt=1.0)
    fraction: float = Field(0.0, ge=0.0)
    conformal: bool = False
    conformal_target: float = Field(0.05, gt=0.0, lt=0.5)
    conformal_window: Duration = timedelta(days=3)
    conformal_min_samples: int = Field(48, ge=1, le=MAX_SAMPLES)
    cap: float | None = Field(None, ge=0.0)


class Reactive(_Model):
    """The reactive override: never below what the HPA algorithm asks from
    the current observation (REFERENCE.md section 1)."""

    enabled: bool = True
    #: HPA default tolerance: no change while |1 - ratio| <= 0.1
    tolerance: float = Field(0.1, ge=0.0, lt=1.0)
    #: utilization the reactive rule aims at (None: the policy's target_utilization)
    target_utilization: float | None = Field(None, gt=0.0, le=1.0)


class Rung(_Model):
    """One instance type of a vertical ladder."""

    name: str = Field(min_length=1)
    capacity: float = Field(gt=0.0)
    price: float | None = Field(None, ge=0.0)



def quantile_levels(v: tuple[float, ...]) -> tuple[float, ...]:
    """Quantile levels, each in (0, 1), sorted and without repeats."""
    for q in v:
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile {q} is not in (0, 1)")
    return tuple(sorted(set(v)))


class Slo(_Model):
    """The service objective the planner prices its risk from."""

    #: share of intervals in which demand may exceed capacity (0.005: 0.5 %)
    saturated_fraction: float = Field(gt=0.0, lt=0.5)


_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


def parse_window(text: str) -> tuple[int, int]:
    """``"01:00-05:00"`` -> (60, 300) minutes of the day; a window may wrap
    midnight (``"22:00-02:00"``). Raises ValueError naming the text."""
    m = _WINDOW.match(text.strip())
    if not m:
        raise ValueError(f"scale-in window {text!r} is not HH:MM-HH:MM (e.g. 01:00-05:00)")
    a = int(m.group(1)) * 60 + int(m.group(2))
    b = int(m.group(3)) * 60 + int(m.group(4))
    if b > 24 * 60 or a == b:
        raise ValueError(f"scale-in window {text!r} is empty or ends after 24:00")
    return a, b


#: the SLO's saturated fraction when none is given (replicas; a ladder: at
#: least room for LADDER_RESIZES_PER_DAY resizes' downtime, PlanConfig.slo_rate)
DEFAULT_SLO = 0.002
#: resizes a day a ladder's default SLO leaves room for: one down at night and
#: one up in the morning
LADDER_RESIZES_PER_DAY = 2
#: the planning horizon on a ladder unless one is given: a resize's downtime
#: pays for itself over hours of a cheaper rung, so the plan must see the
#: trough and the next peak (at 2 h it saw neither and held the top rung)
LADDER_HORIZON = timedelta(hours=12)

#: what a ladder's plan defaults to where the policy states no value: the
#: horizon, and a daily change budget of the resizes its SLO leaves room for
#: (the receding-horizon re-plans each fit the SLO, their realized sum need not)
LADDER_PLAN_DEFAULTS = {"horizon": LADDER_HORIZON, "max_changes_per_day": LADDER_RESIZES_PER_DAY}

#: the fixed price of a change for replicas (docs/planner.md: chosen on the
#: tuning traces at equal cost against the HPA)
DEFAULT_CHANGE_COST = 3.0


class PlanConfig(_Model):
    """The planner (``kind: plan``, :mod:`policies.planner`): a cost-aware
    capacity schedule over ``horizon``, re-planned every cycle, of which only
    the first step is carried out (receding horizon).

    Objective per step: capacity cost (``replica_price`` per replica-hour or
    each rung's ``price`` per hour) + ``penalty`` x risk (``risk:
    unserved``: expected unserved demand, per demand-unit-hour;
    ``saturation``: probability that demand exceeds capacity, per saturated
    hour) + ``change_cost`` per change (and, for a ladder, the expected
    unserved demand during ``resize_downtime``). With an ``slo`` instead of a
    penalty, the penalty is ``unit price / saturated_fraction`` (newsvendor:
    the myopic optimum then sits where P(demand > capacity) equals the SLO);
    neither given: the SLO 0.2 %.

    The defaults (2 h horizon, change cost 3, 15 min spacing, 1 h lifetime,
    headroom cap 0.3, spread calibration, SLO 0.2 %, and the reactive floor
    PLAN_REACTIVE) were chosen on the backtest's tuning traces at equal cost
    against the HPA (docs/planner.md). A horizontal policy that states its
    ``slo`` and no ``calibration`` calibrates by ``rate``
    (STATED_SLO_CALIBRATION, set by PolicyConfig), which moves the reactive
    floor with the priced rate (``floor_calibration``), and has no headroom
    cap unless it states one (STATED_SLO_HEADROOM_CAP): that realizes the
    stated SLO, the defaults do not.
    """

    horizon: Duration = timedelta(hours=2)
    #: forecast quantile levels the engine asks for and the planner builds
    #: its demand distribution from
    quantiles: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)
    #: price per replica-hour (horizontal); a ladder uses each rung's price
    replica_price: float = Field(1.0, gt=0.0)
    risk: Literal["unserved", "saturation"] = "unserved"
    penalty: float | None = Field(None, gt=0.0)
    slo: Slo | None = None
    #: calibrate online so that realized saturation converges to the SLO:
    #: ``rate`` adapts the priced rate from the realized saturation (the
    #: observation above the capacity in service), ``spread`` rescales the
    #: forecast's spread to the conformal headroom of its own errors at the
    #: SLO's rate, ``both`` does both (see :mod:`policies.planner`)
    calibrate: bool = True
    calibration: Literal["rate", "spread", "both"] = "spread"
    #: the rate adaptation (``rate``, ``both``): over one ``calibration_window``
    #: without saturation the priced rate rises by exp(gain); each saturated
    #: interval lowers it by exp(-gain / (SLO x the window's intervals)), so
    #: the SLO's share of the window's intervals saturated holds it
    calibration_gain: float = Field(1.0, gt=0.0, le=10.0)
    calibration_window: Duration = timedelta(days=1)
    #: the rate calibration also moves the reactive floor: its headroom over
    #: the observation (1 / utilization - 1) is scaled by
    #: (SLO / priced rate) ^ floor_calibration (0: the floor stays as configured)
    floor_calibration: float = Field(0.25, ge=0.0, le=4.0)
    #: plan for demand up to point x (1 + headroom_cap) only; above it the
    #: reactive floor answers (REFERENCE: a cap keeps bursty series from
    #: costing several times the oracle). None: the whole distribution (a
    #: stated slo on replicas: None unless stated, STATED_SLO_HEADROOM_CAP)
    headroom_cap: float | None = Field(0.3, gt=0.0)
    #: fixed price of one capacity change (in the same money as the prices);
    #: None: 3 for replicas (chosen on the tuning traces), 0 for a ladder,
    #: where a resize costs what its downtime leaves unserved (priced below)
    change_cost: float | None = Field(None, ge=0.0)
    #: a vertical resize takes capacity away for this long (stop/modify/start);
    #: None: what the target's actuator states for a resize (aws-ec2
    #: ``downtime_estimate``, alibaba-ecs ``stop_start_downtime``; the
    #: backtest: its scenario's), else none
    resize_downtime: Duration | None = None
    #: what serves during the downtime: nothing, or the smaller of the old
    #: and the new rung (the old one while it is being resized up)
    resize_during: Literal["unavailable", "old"] = "unavailable"
    #: no two changes closer than this
    min_change_interval: Duration = timedelta(minutes=15)
    #: no scale-down sooner than this after a scale-up (billing granularity)
    min_lifetime: Duration = timedelta(hours=1)
    #: scale-in (removing capacity) only inside these local time-of-day
    #: windows, e.g. ["01:00-05:00"]; empty: any time
    scale_in_windows: tuple[str, ...] = ()
    #: IANA timezone of the windows
    timezone: Timezone = "UTC"
    #: change budget enforced on the executed step (None: no budget; a
    #: ladder: LADDER_RESIZES_PER_DAY a day unless stated). Scale-downs take
    #: at most half the daily budget (each keeps a scale-up: the scale-up
    #: right after a scale-down passes a spent daily budget); the reactive
    #: floor and an event's minimum are never held by a budget
    max_changes_per_hour: int | None = Field(None, ge=0)
    max_changes_per_day: int | None = Field(None, ge=0)

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        levels = quantile_levels(v)
        if len(levels) < 2 or levels[-1] <= 0.5:
            raise ValueError(f"need at least two levels and one above 0.5, got {list(levels)}")
        return levels

    @field_validator("scale_in_windows")
    @classmethod
    def _windows(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for w in v:
            parse_window(w)
        return v

    @model_validator(mode="after")
    def _check(self) -> "PlanConfig":
        if self.horizon <= timedelta(0) or self.horizon > timedelta(hours=48):
            raise ValueError(f"horizon ({format_duration(self.horizon)}) must be positive and at most 48h")
        if self.penalty is not None and self.slo is not None:
            raise ValueError("give either penalty or slo, not both")
        if self.calibration_window <= timedelta(0):
            raise ValueError(f"calibration_window ({format_duration(self.calibration_window)}) must be positive")
        return self

    def fixed_change_cost(self, vertical: bool) -> float:
        """``change_cost``, or its default (3 for replicas, 0 for a ladder)."""
        if self.change_cost is not None:
            return self.change_cost
        return 0.0 if vertical else DEFAULT_CHANGE_COST

    @property
    def downtime(self) -> timedelta:
        """``resize_downtime``, none where nothing stated one."""
        return self.resize_downtime if self.resize_downtime is not None else timedelta(0)

    @property
    def windows(self) -> tuple[tuple[int, int], ...]:
        return tuple(parse_window(w) for w in self.scale_in_windows)

    @property
    def target_rate(self) -> float:
        """The saturated fraction the planner aims at on replicas (the SLO,
        default 0.2 %); a ladder's is :meth:`slo_rate`."""
        return self.slo_rate(vertical=False)

    def slo_rate(self, vertical: bool) -> float:
        """The saturated fraction the planner aims at: the SLO; without one
        0.2 %, and on a ladder whose resize takes ``downtime`` at least the
        share of the day that :data:`LADDER_RESIZES_PER_DAY` resizes leave
        unserved (a resize saturates its whole downtime: below that share the
        SLO forbids following a daily cycle down at night and up in the
        morning, so the planner holds the rung of the peak all day)."""
        if self.slo is not None:
            return self.slo.saturated_fraction
        if not vertical:
            return DEFAULT_SLO
        return max(DEFAULT_SLO, LADDER_RESIZES_PER_DAY * self.downtime / timedelta(days=1))


#: the calibration of a horizontal ``kind: plan`` policy that states its
#: ``slo`` and no ``calibration`` (docs/planner.md: chosen on the tuning traces)
STATED_SLO_CALIBRATION = "rate"
#: ... and its headroom cap, unless it states one: none. The rate calibration
#: prices the whole distribution and lowers the rate where bursts saturate;
#: a cap kept the plan from buying for them however low the rate went, and
#: on bursty tuning traces the realized fraction stayed at 2-2.5 % against a
#: stated 0.5 % with the rate pinned near its lower bound (docs/planner.md)
STATED_SLO_HEADROOM_CAP = None


def _stated_slo_defaults(calibration: object, given: set[str]) -> dict[str, Any]:
    """What a horizontal plan that states its SLO gets unless it states
    them: the calibration STATED_SLO_CALIBRATION, and under a rate
    calibration STATED_SLO_HEADROOM_CAP."""
    out: dict[str, Any] = {}
    if "calibration" not in given:
        out["calibration"] = calibration = STATED_SLO_CALIBRATION
    if calibration in ("rate", "both") and "headroom_cap" not in given:
        out["headroom_cap"] = STATED_SLO_HEADROOM_CAP
    return out


#: the reactive floor of ``kind: plan`` unless the policy gives its own
PLAN_REACTIVE = Reactive(target_utilization=0.8, tolerance=0.0)
#: ... and on a ladder: a resize there costs its downtime twice (up, and down
#: again) and the plan prices a rung's risk at its full capacity, so the floor
#: resizes only for demand the rung cannot carry; at 80 % it resized up from
#: rungs the plan had chosen, and the plan went down again: flapping
PLAN_LADDER_REACTIVE = Reactive(target_utilization=1.0, tolerance=0.0)


class PolicyConfig(_Model):
    """Everything :func:`policies.decide` needs besides the forecast and state."""

    #: ``predictive`` sizes from the forecast (with the reactive override);
    #: ``reactive`` is the HPA algorithm alone (the backtest's baseline);
    #: ``plan`` plans a schedule over ``plan.horizon`` (:mod:`policies.planner`).
    kind: Literal["predictive", "reactive", "plan"] = "predictive"
    capacity_per_replica: float | None = Field(None, gt=0.0)
    target_utilization: float = Field(0.7, gt=0.0, le=1.0)
    ladder: tuple[Rung, ...] | None = None
    min_replicas: int | None = Field(None, ge=0, le=MAX_REPLICAS)
    max_replicas: int | None = Field(None, ge=0, le=MAX_REPLICAS)
    #: time from a decision until new capacity serves (AWS
    #: SchedulingBufferTime default is 300 s; our backtest default is 10 min)
    lead_time: Duration = timedelta(minutes=10)
    #: how long past lead_time the new capacity must cover (one interval)
    hold: Duration = timedelta(minutes=5)
    #: use max(lead_time, learned lead time) when the engine has measured one
    learn_lead_time: bool = False
    margin: Margin = Margin()
    smoothing: Smoothing = Smoothing()
    reactive: Reactive = Reactive()
    stabilization: Stabilization = Stabilization()
    scale_up: RateLimit = HPA_SCALE_UP
    scale_down: RateLimit = HPA_SCALE_DOWN
    cooldown: Cooldown = Cooldown()
    #: False: never remove capacity (AWS predictive scaling's stance)
    scale_in: bool = True
    #: an observation older than this counts as missing
    max_staleness: Duration = timedelta(minutes=15)
    #: the planner's settings (used by ``kind: plan``)
    plan: PlanConfig = PlanConfig()
    #: declared events and public holidays that raise capacity (:mod:`policies.events`)
    calendar: Calendar = Calendar()

    @model_validator(mode="before")
    @classmethod
    def _plan_defaults(cls, data: object) -> object:
        # the planner's reactive floor catches surprises, not the everyday
        # load the plan already sized for: without a reactive section of its
        # own it runs at PLAN_REACTIVE (tuned on the backtest's tuning traces,
        # docs/planner.md), not at the 0.7 utilization the HPA guesses
        if isinstance(data, dict) and data.get("kind") == "plan":
            # field by field: a section that states only its tolerance keeps
            # the planner's utilization, not the HPA's 0.7
            floor = PLAN_LADDER_REACTIVE if data.get("ladder") is not None else PLAN_REACTIVE
            given = data.get("reactive")
            if given is None and "reactive" not in data:
                data = {**data, "reactive": floor}
            elif isinstance(given, dict):
                data = {**data, "reactive": {**floor.model_dump(exclude={"enabled"}), **given}}
            elif isinstance(given, Reactive):
                data = {**data, "reactive": floor.model_copy(update={k: getattr(given, k)
                                                                     for k in given.model_fields_set})}
        if isinstance(data, dict) and data.get("kind") == "plan" and data.get("ladder") is None:
            # an SLO the policy states is a promise: unless it names its
            # calibration, the planner calibrates by the realized saturation
            # (STATED_SLO_CALIBRATION; the spread alone, the default without
            # one, left it below the SLO on most tuning traces), and unless it
            # names a headroom cap, a plan calibrated by the rate has none
            # (STATED_SLO_HEADROOM_CAP: the rate is what leans it)
            plan = data.get("plan")
            if isinstance(plan, dict) and plan.get("slo") is not None:
                data = {**data, "plan": {**_stated_slo_defaults(plan.get("calibration"), set(plan)), **plan}}
            elif isinstance(plan, PlanConfig) and plan.slo is not None:
                given = plan.model_fields_set
                update = _stated_slo_defaults(plan.calibration if "calibration" in given else None, given)
                data = {**data, "plan": plan.model_copy(update=update)}
        if isinstance(data, dict) and data.get("kind") == "plan" and data.get("ladder") is not None:
            # a ladder plans over LADDER_HORIZON and enforces the
            # LADDER_RESIZES_PER_DAY its SLO assumes, unless the plan states its own
            plan = data.get("plan")
            if plan is None or isinstance(plan, dict):
                given = set(plan or {})
                update = {k: v for k, v in LADDER_PLAN_DEFAULTS.items() if k not in given}
                data = {**data, "plan": {**(plan or {}), **update}}
            elif isinstance(plan, PlanConfig):
                update = {k: v for k, v in LADDER_PLAN_DEFAULTS.items() if k not in plan.model_fields_set}
                data = {**data, "plan": plan.model_copy(update=update)}
        return data

    @model_validator(mode="after")
    def _check(self) -> "PolicyConfig":
        if self.ladder is not None:
            if len(self.ladder) == 0:
                raise ValueError("ladder must list at least one instance type")
            caps = [r.capacity for r in self.ladder]
            if any(b <= a for a, b in zip(caps, caps[1:])):
                raise ValueError(f"ladder capacities must increase strictly, got {caps}")
            names = [r.name for r in self.ladder]
            if len(set(names)) != len(names):
                raise ValueError(f"ladder names must be unique, got {names}")
            if self.capacity_per_replica is not None:
                raise ValueError("give either capacity_per_replica (horizontal) or ladder (vertical), not both")
            top = len(self.ladder) - 1
            for f in ("min_replicas", "max_replicas"):
                v = getattr(self, f)
                if v is not None and v > top:
                    raise ValueError(f"{f} ({v}) is beyond the ladder's last rung index ({top})")
        elif self.capacity_per_replica is None:
            raise ValueError("capacity_per_replica is required (or a vertical ladder)")
        lo, hi = self.bounds
        if hi < lo:
            raise ValueError(f"max_replicas ({hi}) is less than min_replicas ({lo})")
        if self.kind == "plan":
            if self.plan.horizon <= self.lead_time:
                raise ValueError(f"plan.horizon ({format_duration(self.plan.horizon)}) must be longer than "
                                 f"lead_time ({format_duration(self.lead_time)})")
            if self.ladder is not None and len({r.price is None for r in self.ladder}) > 1:
                raise ValueError("plan: give a price for every ladder rung or for none")
        return self

    @property
    def uses_forecast(self) -> bool:
        return self.kind != "reactive"

    @property
    def forecast_quantiles(self) -> tuple[float, ...]:
        """Extra quantile levels this policy needs from the forecaster: the
        planner's distribution, or the level the margin sizes from (a level
        not asked for was read as the nearest one asked, the outermost: a
        ``margin.quantile: 0.99`` sized from 0.9 and said q0.99)."""
        if self.kind == "plan":
            return self.plan.quantiles
        if self.kind == "reactive" or self.margin.quantile is None:
            return ()
        return (self.margin.quantile,)

    @property
    def headroom_rate(self) -> float | None:
        """The under-forecast rate the engine's conformal headroom aims at
        (None: the policy uses no headroom)."""
        if self.kind == "plan":
            spread = self.plan.calibrate and self.plan.calibration in ("spread", "both")
            return self.slo_rate if spread else None
        if self.kind == "predictive" and self.margin.conformal:
            return self.margin.conformal_target
        return None

    @property
    def vertical(self) -> bool:
        return self.ladder is not None

    @property
    def slo_rate(self) -> float:
        """The planner's SLO as a saturated fraction (:meth:`PlanConfig.slo_rate`)."""
        return self.plan.slo_rate(self.vertical)

    @property
    def bounds(self) -> tuple[int, int]:
        if self.ladder is not None:
            lo = 0 if self.min_replicas is None else self.min_replicas
            hi = len(self.ladder) - 1 if self.max_replicas is None else self.max_replicas
            return lo, hi
        lo = 1 if self.min_replicas is None else self.min_replicas
        hi = 100 if self.max_replicas is None else self.max_replicas
        return lo, hi

    def label(self, capacity: int) -> str | None:
        if self.ladder is None:
            return None
        return self.ladder[max(0, min(capacity, len(self.ladder) - 1))].name
