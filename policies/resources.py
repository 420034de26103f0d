"""Several resources per target: one decision from several demand signals.

A target may be sized by more than one resource (CPU, memory, request
rate...). Each resource has its own forecast, observation and capacity
model (capacity per replica, or capacity per ladder rung, and a target
utilization); the decision sizes for the resource that needs the most
(:func:`policies.pipeline.decide`): each resource is sized through the
per-resource steps (data, forecast, margin, capacity, reactive), the
``resources`` step takes the maximum and names the resource that set it,
and the stateful steps (stabilization, rate limits, cooldowns, bounds) run
once on that maximum. A single resource is the same pipeline with one
signal (and no ``resources`` step).

A resource whose metric is missing or whose forecast failed is a fallback
for the whole decision: it is sized reactively (or held) on its own, and
the decision never scales down.

The planner (``kind: plan``) plans on one demand distribution: each
resource's forecast is mapped into the first resource's units by the
monotone map that keeps "capacity x suffices" true (:func:`equivalent`),
and the per-step, per-quantile maximum of those is planned
(:func:`combined_forecast`). The maximum of the quantiles is a lower bound
of the quantile of the maximum: exact when one resource dominates, slightly
optimistic where two are close.

Pure: plain values in, plain values out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Sequence

import numpy as np

from engine.core.types import Decision, Forecast, Observation, Step

from .config import PolicyConfig


@dataclass(frozen=True)
class Signal:
    """One resource's inputs to a decision: its name, forecast (None: why
    in ``forecast_error``), latest observation, conformal headroom, and the
    policy with this resource's capacity model (None: the decision's)."""

    resource: str
    forecast: Forecast | None
    observation: Observation | None = None
    forecast_error: str | None = None
    headroom: float | None = None
    config: PolicyConfig | None = None


def check_rung_capacity(rung_capacity: Sequence[float], rungs: int) -> None:
    """A resource's capacity on each rung of a ladder of ``rungs``: one
    value per rung, increasing strictly. Raises ValueError."""
    if len(rung_capacity) != rungs:
        raise ValueError(f"rung_capacity has {len(rung_capacity)} values; the ladder has {rungs} rungs")
    if any(b <= a for a, b in zip(rung_capacity, rung_capacity[1:])):
        raise ValueError(f"rung_capacity must increase strictly along the ladder, got {list(rung_capacity)}")


def resource_policy(policy: PolicyConfig, *, capacity_per_replica: float | None = None,
                    rung_capacity: Sequence[float] | None = None,
                    target_utilization: float | None = None) -> PolicyConfig:
    """``policy`` with another resource's capacity model: its capacity per
    replica (horizontal) or per rung (a ladder, same rungs and prices), and
    its target utilization (None: the policy's). Validated like any policy
    (a ladder's capacities must increase strictly). Raises ValueError."""
    data = policy.model_dump()
    if policy.ladder is not None:
        if rung_capacity is None or capacity_per_replica is not None:
            raise ValueError(f"the policy has a ladder of {len(policy.ladder)} rungs: give rung_capacity "
                             "(this resource's capacity on each rung), not capacity_per_replica")
        check_rung_capacity(rung_capacity, len(policy.ladder))
        data["ladder"] = [{**r, "capacity": c} for r, c in zip(data["ladder"], rung_capacity)]
    else:
        if capacity_per_replica is None or rung_capacity is not None:
            raise ValueError("give capacity_per_replica (this resource's capacity per replica); "
                             "rung_capacity is for a ladder")
        data["capacity_per_replica"] = capacity_per_replica
    if target_utilization is not None:
        data["target_utilization"] = target_utilization
    return PolicyConfig.model_validate(data)


def capacities(config: PolicyConfig) -> np.ndarray:
    """Full capacity of each capacity unit's step: the rungs' capacities,
    or one replica's (a horizontal map is linear)."""
    if config.ladder is not None:
        return np.array([r.capacity for r in config.ladder], dtype=np.float64)
    assert config.capacity_per_replica is not None
    return np.array([config.capacity_per_replica], dtype=np.float64)


def equivalent(values: np.ndarray, own: PolicyConfig, primary: PolicyConfig) -> np.ndarray:
    """``values`` of one resource in the primary resource's units: the
    monotone map through the points (capacity of level x for this
    resource -> for the primary), linear between them, proportional below
    the first and above the last. So ``values <= own capacity(x)`` exactly
    when the result is ``<= primary capacity(x)``: every level suffices
    for the mapped demand where it sufficed for the resource's own."""
    a, b = capacities(own), capacities(primary)
    v = np.asarray(values, dtype=np.float64)
    if a.size == 1:
        return v * (b[0] / a[0])
    out = np.interp(v, a, b)
    out = np.where(v < a[0], v * (b[0] / a[0]), out)
    return np.where(v > a[-1], v * (b[-1] / a[-1]), out)


def combined_forecast(signals: Sequence[Signal], primary: PolicyConfig) -> tuple[Forecast, np.ndarray]:
    """The per-step, per-level maximum of the signals' forecasts in the
    primary resource's units, and for each step the index of the signal
    whose median (point) is largest there. Every signal has a forecast;
    they were made at the same time on the same grid (the shortest sets
    the length)."""
    fcs = [s.forecast for s in signals]
    assert all(f is not None for f in fcs)
    n = min(f.horizon for f in fcs)  # type: ignore[union-attr]
    first = fcs[0]
    assert first is not None
    levels = sorted(set().union(*(f.quantiles for f in fcs)))  # type: ignore[union-attr]
    mapped_point, mapped_q = [], {lv: [] for lv in levels}
    for s, f in zip(signals, fcs):
        assert f is not None
        own = s.config or primary
        mapped_point.append(equivalent(f.point[:n], own, primary))
        for lv in levels:
            mapped_q[lv].append(equivalent(f.level(lv)[:n], own, primary))
    points = np.vstack(mapped_point)
    model = "+".join(dict.fromkeys(f.model for f in fcs if f is not None))
    version = "+".join(dict.fromkeys(f.model_version for f in fcs if f is not None and f.model_version))
    fc = Forecast(made_at=first.made_at, timestamps=first.timestamps[:n], point=points.max(axis=0),
                  quantiles={lv: np.vstack(v).max(axis=0) for lv, v in mapped_q.items()},
                  model=model, model_version=version)
    return fc, points.argmax(axis=0)


def tag(step: Step, resource: str) -> Step:
    """``step`` as one resource's (on a target with several: the resource
    named in the step and at the start of its message, so every renderer
    of steps shows it); unchanged for the one unnamed signal."""
    if not resource:
        return step
    if step.resource == resource and step.message.startswith(f"{resource}: "):
        return step  # tagged already (an event's step passes through twice): "cpu: cpu: event ..."
    return replace(step, resource=resource, message=f"{resource}: {step.message}")


def winner(signals: Sequence[Signal], sizes: Sequence[int]) -> int:
    """Index of the resource that sets the size (the first of the largest)."""
    return max(range(len(sizes)), key=lambda i: (sizes[i], -i))


def resources_step(signals: Sequence[Signal], sizes: Sequence[int], win: int) -> Step:
    """The step that takes the maximum over resources and names the one
    that set it (``ResourceMax``)."""
    others = ", ".join(f"{s.resource} {n}" for s, n in zip(signals, sizes))
    name = signals[win].resource
    return Step("resources", sizes[win], "ResourceMax",
                f"sized for {name}, the resource that needs the most ({others})",
                changed=True, resource=name)


def attribution(signals: Sequence[Signal], sizes: Sequence[int], win: int) -> dict[str, Any]:
    """What the Decision's ``extra`` records: the resource that set the
    size and what each asked for."""
    return {"resource": signals[win].resource,
            "resources": {s.resource: int(n) for s, n in zip(signals, sizes)}}


def with_plan_attribution(planned: Decision, data_steps: Sequence[Step], signals: Sequence[Signal],
                          combined: Forecast, leader: np.ndarray, first_at: datetime) -> Decision:
    """A plan made on :func:`combined_forecast`: its data step replaced by
    every resource's, then a ``resources`` step naming the resource whose
    median leads the first planned step; a reactive floor that raised the
    size names its own resource instead."""
    t0 = int(first_at.timestamp())
    k = int(np.searchsorted(combined.timestamps, t0))
    k = min(k, combined.horizon - 1)
    lead = int(leader[k])
    name = signals[lead].resource
    raised = [s for s in planned.steps if s.name == "reactive" and s.changed and s.resource]
    setter = raised[-1].resource if raised else name
    names = ", ".join(s.resource for s in signals)
    step = Step("resources", planned.current, "ResourceMax",
                f"planned on the per-step maximum of {names} (in {signals[0].resource}'s units); "
                f"{name} leads the first planned step (median {combined.point[k]:.4g})"
                + (f"; {setter}'s reactive floor set the size" if setter != name else ""),
                changed=True, resource=setter)
    steps = (*data_steps, step, *planned.steps[1:])
    extra = {**planned.extra, "resource": setter, "plan_leader": name}
    return replace(planned, steps=steps, extra=extra)


__all__ = ["Signal", "attribution", "resources_step", "tag", "winner", "with_plan_attribution", "capacities", "combined_forecast", "equivalent", "resource_policy"]
