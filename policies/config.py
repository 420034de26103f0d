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

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.core.units import Duration


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


class PolicyConfig(_Model):
    """Everything :func:`policies.decide` needs besides the forecast and state."""

    #: ``predictive`` sizes from the forecast (with the reactive override);
    #: ``reactive`` is the HPA algorithm alone (the backtest's baseline).
    kind: Literal["predictive", "reactive"] = "predictive"
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
        return self

    @property
    def vertical(self) -> bool:
        return self.ladder is not None

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
