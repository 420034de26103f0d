"""The policy steps as free functions over plain values.

Each returns a :class:`engine.core.types.Step` (value, stable reason code,
message, changed). None reads a clock or does I/O; ``now`` and histories
arrive as arguments. The order they run in is documented in one place:
:func:`policies.pipeline.decide`.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Sequence

import numpy as np

from engine.core.types import Forecast, ScaleEvent, Step

from .config import Margin, PolicyConfig, RateLimit, Smoothing


# ----------------------------------------------------------------- capacity model
def replicas_for(demand: float, config: PolicyConfig) -> int:
    """Demand -> capacity units at the target utilization (see :func:`units_for`)."""
    return units_for(demand, config, config.target_utilization)


def units_for(load: float, config: PolicyConfig, u: float) -> int:
    """Capacity units that carry ``load`` at utilization ``u``.

    Horizontal: ``ceil(load / (capacity_per_replica * u))``. Vertical: the
    index of the smallest rung whose ``capacity * u`` covers the load (the
    top rung if none does).
    """
    if config.ladder is not None:
        for i, rung in enumerate(config.ladder):
            if rung.capacity * u >= load - 1e-9:
                return i
        return len(config.ladder) - 1
    assert config.capacity_per_replica is not None
    # tiny epsilon so 7.0000000001 does not become 8 through float noise
    return max(0, math.ceil(load / (config.capacity_per_replica * u) - 1e-9))


def capacity_of(units: int, config: PolicyConfig) -> float:
    """Load the capacity ``units`` can carry at 100 % utilization."""
    if config.ladder is not None:
        return config.ladder[max(0, min(units, len(config.ladder) - 1))].capacity
    assert config.capacity_per_replica is not None
    return units * config.capacity_per_replica


def capacity_step(demand: float, config: PolicyConfig) -> Step:
    r = replicas_for(demand, config)
    if config.ladder is not None:
        top, u = config.ladder[r], config.target_utilization
        if top.capacity * u < demand - 1e-9:
            # no rung carries it: the top one, and the decision says it is short
            return Step("capacity", r, "AboveTopRung",
                        f"demand {demand:.4g} is more than the top rung {r} ({top.name}, capacity {top.capacity:g}) "
                        f"carries at utilization {u:g} ({top.capacity * u:.4g}): sized at the top rung, "
                        f"utilization {demand / top.capacity:.2f}", changed=True)
        msg = f"demand {demand:.4g} fits rung {r} ({top.name}, capacity {top.capacity:g}) at utilization {u:g}"
    else:
        msg = (f"ceil({demand:.4g} / ({config.capacity_per_replica:g} x {config.target_utilization:g})) = {r}")
    return Step("capacity", r, "CapacityModel", msg, changed=True)


# ------------------------------------------------------------------ forecast window
def window_demand(forecast: Forecast, now: datetime, lead_time: timedelta, hold: timedelta,
                  quantile: float | None) -> tuple[float, float] | None:
    """Max of the chosen quantile and of the point forecast over
    ``[now + lead_time, now + lead_time + hold]`` — the window the new
    capacity must cover (Crane: scale up early, down late). Returns
    ``(upper, point)`` or None if the forecast does not reach the window."""
    t0 = int(now.timestamp() + lead_time.total_seconds())
    t1 = t0 + int(hold.total_seconds())
    mask = forecast.window(t0, t1)
    if not mask.any():
        # a window shorter than one step: take the first point at or after it
        after = np.flatnonzero(forecast.timestamps >= t0)
        if after.size == 0:
            return None
        mask = np.zeros_like(mask)
        mask[after[0]] = True
    upper = float(np.max(forecast.level(quantile)[mask]))
    point = float(np.max(forecast.point[mask]))
    return upper, point


def margin_step(upper: float, point: float, margin: Margin, headroom: float | None) -> Step:
    """Apply the safety margin; see :class:`policies.config.Margin`."""
    parts = []
    if margin.conformal and headroom is not None:
        value = point * (1.0 + max(0.0, headroom))
        parts.append(f"conformal: point {point:.4g} x (1 + headroom {headroom:.3g}) = {value:.4g}")
        reason = "ConformalHeadroom"
    else:
        value = upper
        label = "point" if margin.quantile is None else f"q{margin.quantile:g}"
        parts.append(f"{label} max over window {upper:.4g}")
        reason = "ForecastQuantile" if margin.quantile is not None else "ForecastPoint"
    if margin.fraction:
        value *= 1.0 + margin.fraction
        parts.append(f"x (1 + {margin.fraction:g}) = {value:.4g}")
        reason = "MarginApplied"
    if margin.cap is not None:
        ceiling = point * (1.0 + margin.cap)
        if value > ceiling:
            value = ceiling
            parts.append(f"capped at point x (1 + {margin.cap:g}) = {ceiling:.4g}")
            reason = "HeadroomCapped"
    return Step("margin", value, reason, "; ".join(parts), changed=value != point)


# ------------------------------------------------------------------------ smoothing
def smooth(value: float, memory: Sequence[float], s: Smoothing) -> tuple[float, tuple[float, ...]]:
    """One smoothing update. Returns (smoothed value, new memory)."""
    if s.kind == "none":
        return value, ()
    if s.kind == "ewma":
        prev = memory[-1] if memory else value
        out = s.alpha * value + (1.0 - s.alpha) * prev
        if s.upward == "immediate" and value > out:
            out = value
        return out, (out,)
    window = (tuple(memory) + (value,))[-s.window:]
    out = float(sum(window) / len(window))
    if s.upward == "immediate" and value > out:
        out = value
    return out, window


def smoothing_step(value: float, memory: Sequence[float], s: Smoothing, name: str) -> tuple[Step, tuple[float, ...]]:
    out, mem = smooth(value, memory, s)
    if s.kind == "none":
        return Step(name, value, "NotSmoothed", "smoothing off"), mem
    detail = f"alpha {s.alpha:g}" if s.kind == "ewma" else f"window {s.window}"
    return (
        Step(name, out, "Smoothed", f"{s.kind} ({detail}): {value:.4g} -> {out:.4g}", changed=out != value),
        mem,
    )


# ------------------------------------------------------------------ reactive (HPA)
def hpa_desired(observed: float, serving: int, current: int, config: PolicyConfig,
                target_utilization: float, tolerance: float) -> tuple[int, str]:
    """The HPA core ratio (REFERENCE.md section 1) on one observation.

    ``ratio = observed / (capacity(serving) * u)``; within ``tolerance`` of 1
    the answer is ``current``; otherwise ``ceil(serving * ratio)`` for
    replicas (``ceil(observed / (cpr * u))``), or the smallest rung that
    carries ``observed`` at ``u`` for a ladder. From zero serving capacity
    the ratio is undefined: size directly from the observation.
    """
    cap = capacity_of(serving, config) * target_utilization
    if serving <= 0 and config.ladder is None or cap <= 0:
        return units_for(observed, config, target_utilization), "from zero capacity"
    ratio = observed / cap
    if abs(1.0 - ratio) <= tolerance:
        return current, f"utilization ratio {ratio:.3f} within tolerance {tolerance:g}"
    return units_for(observed, config, target_utilization), f"utilization ratio {ratio:.3f}"


# ------------------------------------------------------------------- stabilization
def stabilize(value: int, current: int, now: datetime,
              history: Sequence[tuple[datetime, int]],
              up_window: timedelta, down_window: timedelta) -> Step:
    """HPA stabilization. ``history`` holds earlier recommendations; the
    current one (``value``) is included.

    ``upFloor = min(recs in up window)``, ``downCeil = max(recs in down
    window)``; start from ``current``, raise to upFloor if below, lower to
    downCeil if above.
    """
    up_recs = [r for t, r in history if t > now - up_window] + [value]
    down_recs = [r for t, r in history if t > now - down_window] + [value]
    up_floor, down_ceil = min(up_recs), max(down_recs)
    out = current
    if out < up_floor:
        out = up_floor
    if out > down_ceil:
        out = down_ceil
    if out == value:
        return Step("stabilization", out, "Stable", f"recommendation {value} stands")
    if value > current:
        return Step("stabilization", out, "ScaleUpStabilized",
                    f"lowest recommendation in the last {up_window} is {up_floor}; holding {out} instead of {value}",
                    changed=True)
    return Step("stabilization", out, "ScaleDownStabilized",
                f"highest recommendation in the last {down_window} is {down_ceil}; holding {out} instead of {value}",
                changed=True)


# ---------------------------------------------------------------------- rate limits
def period_start(current: int, events: Sequence[ScaleEvent], now: datetime, period: timedelta) -> int:
    """``current - added_in_period + removed_in_period`` (REFERENCE.md 1)."""
    added = removed = 0
    for ev in events:
        if ev.at > now - period:
            d = ev.to_capacity - ev.from_capacity
            if d > 0:
                added += d
            else:
                removed -= d
    return current - added + removed


def up_limit(current: int, events: Sequence[ScaleEvent], now: datetime, rl: RateLimit) -> int | None:
    """Highest capacity allowed now (None: no policy), never below current."""
    if rl.select == "Disabled":
        return current
    limits = []
    for p in rl.policies:
        start = period_start(current, events, now, p.period)
        if p.type == "Pods":
            limits.append(start + p.value)
        else:
            limits.append(math.ceil(start * (1 + p.value / 100.0)))
    if not limits:
        return None
    lim = max(limits) if rl.select == "Max" else min(limits)
    return max(lim, current)


def down_limit(current: int, events: Sequence[ScaleEvent], now: datetime, rl: RateLimit) -> int | None:
    """Lowest capacity allowed now (None: no policy), never above current."""
    if rl.select == "Disabled":
        return current
    limits = []
    for p in rl.policies:
        start = period_start(current, events, now, p.period)
        if p.type == "Pods":
            limits.append(start - p.value)
        else:
            limits.append(math.trunc(start * (1 - p.value / 100.0)))
    if not limits:
        return None
    # Max = most permissive = the lowest floor
    lim = min(limits) if rl.select == "Max" else max(limits)
    return min(lim, current)


def rate_limit_step(value: int, current: int, events: Sequence[ScaleEvent], now: datetime,
                    up: RateLimit, down: RateLimit) -> Step:
    if value > current:
        lim = up_limit(current, events, now, up)
        if lim is not None and value > lim:
            return Step("rate_limit", lim, "ScaleUpLimit",
                        f"scale-up limited to {lim} by {up.select} of {_describe(up)}", changed=True)
    elif value < current:
        lim = down_limit(current, events, now, down)
        if lim is not None and value < lim:
            return Step("rate_limit", lim, "ScaleDownLimit",
                        f"scale-down limited to {lim} by {down.select} of {_describe(down)}", changed=True)
    return Step("rate_limit", value, "WithinRateLimit", "within rate limits")


def _describe(rl: RateLimit) -> str:
    if rl.select == "Disabled":
        return "(disabled)"
    return ", ".join(f"{p.value} {p.type}/{int(p.period.total_seconds())}s" for p in rl.policies)


# ------------------------------------------------------------------------ cooldowns
def cooldown_step(value: int, current: int, now: datetime, last_up: datetime | None,
                  last_down: datetime | None, after_up: timedelta, after_down: timedelta) -> Step:
    """Block a scale-down inside a cooldown; scale-ups are never delayed."""
    if value < current:
        if last_up is not None and after_up > timedelta(0) and now - last_up < after_up:
            return Step("cooldown", current, "CooldownAfterScaleUp",
                        f"last scale-up {now - last_up} ago, cooldown {after_up}: holding {current}",
                        changed=True)
        if last_down is not None and after_down > timedelta(0) and now - last_down < after_down:
            return Step("cooldown", current, "CooldownAfterScaleDown",
                        f"last scale-down {now - last_down} ago, cooldown {after_down}: holding {current}",
                        changed=True)
    return Step("cooldown", value, "NoCooldown", "no cooldown applies")


# --------------------------------------------------------------------------- bounds
def bounds_step(value: int, lo: int, hi: int) -> Step:
    if value < lo:
        return Step("bounds", lo, "TooFewReplicas", f"{value} raised to the minimum {lo}", changed=True)
    if value > hi:
        return Step("bounds", hi, "TooManyReplicas", f"{value} lowered to the maximum {hi}", changed=True)
    return Step("bounds", value, "WithinBounds", f"{value} within [{lo}, {hi}]")
