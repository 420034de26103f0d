"""The planner (``kind: plan``): a cost-aware capacity schedule over the
forecast horizon, solved exactly, of which only the first step is carried out.

Every cycle :func:`plan` chooses capacity levels ``x_j`` for the forecast
grid points ``j`` from ``now + lead_time`` to ``now + plan.horizon``
(receding horizon: the next cycle plans again from fresh data). Capacity that
serves before ``now + lead_time`` is already decided (ordered or in
service); those steps appear in the schedule as *fixed*.

Objective, summed over the planned steps (``dt`` = the interval in hours)::

    price(x_j) dt                              capacity
  + penalty * risk(x_j, j) dt                  under-provisioning
  + change_cost [x_j != x_{j-1}]               calm
  + penalty * risk(during, j) * downtime       a vertical resize's downtime

``risk`` is the expected unserved demand ``E[(D_j - cap(x))+]`` (``plan.risk:
unserved``) or ``P(D_j > cap(x))`` (``saturation``), where ``cap(x)`` is the
level's *full* capacity: the backtest counts a violation when demand exceeds
``capacity x capacity_per_replica``, so a utilization target would only
duplicate what the penalty (or the SLO) already decides.

The demand distribution of step ``j`` comes from the forecast's quantiles
(:func:`demand_knots`): the CDF is linear between the quantile levels, linear
from the lowest level down to ``F = 0`` (extending the first segment's slope,
floored at demand 0), and beyond the highest level an exponential tail
``P(D > y) = (1 - t_K) exp(-(y - q_K) / beta)`` through the two highest
levels (``beta = (q_K - q_{K-1}) / ln((1 - t_{K-1}) / (1 - t_K))``; for a
normal forecast with levels 0.95/0.99 that is 0.42 sigma, close to the
normal's own tail rate there; ``beta = 0`` where the two coincide: no mass
above).

Hard constraints, inside the dynamic programme: bounds (levels are the
integers in ``[min, max]`` or the ladder's rung indices), the lead time
(nothing before ``now + lead_time`` is planned), ``min_change_interval``,
``min_lifetime`` (no scale-down sooner than it after a scale-up) and
``scale_in_windows`` (a scale-down is ordered only inside a window, local time
in ``plan.timezone``). The change budget per hour/day is enforced on the
executed first step from the state's recent events.

The DP runs over states ``(steps since the last change, capped; whether it
was a scale-up; level)``, one vector update per horizon step: a change's cost
depends only on its direction, the level it leaves (the fixed cost, and the
downtime's risk at the old rung or at none) and the level it enters, so the best arrival
by a scale-up is a prefix minimum over lower levels and by a scale-down a
suffix minimum over higher ones (``O(states)`` per step, not
``O(levels^2)``). Backpointers give the argmin path exactly.

Pure: no I/O, no clock; ``now`` and the lead time arrive as arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Sequence
from zoneinfo import ZoneInfo

import numpy as np

from engine.core.types import Decision, Forecast, Observation, PlanStep, Schedule, ScalingState, Step
from engine.core.units import from_epoch

from . import events as E
from . import resources as R
from . import steps as S
from .config import PlanConfig, PolicyConfig


# ------------------------------------------------------------ the demand distribution
def demand_knots(forecast: Forecast, levels: tuple[float, ...], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The quantile levels the forecast really has (of those configured; the
    point as the median where 0.5 is missing), and their values at the grid
    points ``idx``: ``(taus (K,), Q (K, H))``, monotone along K. Levels the
    forecaster did not supply are not invented."""
    have = {float(q): v for q, v in forecast.quantiles.items() if any(abs(q - lv) < 1e-9 for lv in levels)}
    have.setdefault(0.5, forecast.point)
    taus = np.array(sorted(have), dtype=float)
    q = np.stack([np.asarray(have[t], dtype=float)[idx] for t in taus])
    return taus, np.maximum.accumulate(np.maximum(q, 0.0), axis=0)


SPREAD_RANGE = (0.5, 2.0)


def calibrate(taus: np.ndarray, q: np.ndarray, point: np.ndarray, headroom: float, rate: float,
              ref: int = 0) -> np.ndarray:
    """Rescale the forecast's spread around the point so that its ``1 - rate``
    quantile equals ``point x (1 + headroom)``, the conformal estimate of it
    from the forecaster's own recent errors (:mod:`engine.feedback`). The
    factor is measured at step ``ref`` (the first planned one, the horizon
    the headroom is measured at) and applied to every step, keeping
    the forecaster's own growth of uncertainty with the horizon. Where the
    forecast has no spread there, or the target lies below the point, the
    distribution is shifted instead. Both are bounded (the factor to
    ``SPREAD_RANGE``): relative errors of a spiky series near zero can
    reach 50, and the rate calibration is what meets the SLO."""
    p0 = point[ref]
    target = p0 * (1.0 + headroom)
    own = float(upper_quantile(taus, q[:, ref:ref + 1], 1.0 - rate)[0])
    spread = own - p0
    if target > p0 and spread > 1e-9 * max(1.0, p0):
        # at most double or halve the forecaster's own spread: relative errors
        # of a spiky series near zero would otherwise scale it by 50
        factor = min(max((target - p0) / spread, SPREAD_RANGE[0]), SPREAD_RANGE[1])
        out = point[None, :] + factor * (q - point[None, :])
    else:  # shifted, by at most the level itself either way
        out = q + min(max(target - own, -0.5 * own), max(own, p0))
    return np.maximum.accumulate(np.maximum(out, 0.0), axis=0)


def _knots(taus: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Survival knots: values ``v (K+1, H)`` with ``P(D > v_k) = s_k``,
    starting at ``F = 0``; and the tail scale ``beta (H,)``."""
    t1, t2 = taus[0], taus[1]
    slope = (q[1] - q[0]) / (t2 - t1)
    v0 = np.maximum(0.0, q[0] - slope * t1)
    v = np.vstack([v0[None, :], q])
    s = np.concatenate([[1.0], 1.0 - taus])
    width = q[-1] - q[-2]
    beta = width / math.log(s[-2] / s[-1])
    return v, s, beta


def upper_quantile(taus: np.ndarray, q: np.ndarray, level: float) -> np.ndarray:
    """The ``level`` quantile of the distribution :func:`risk_tables` uses
    (inside the levels: linear; above: the exponential tail)."""
    if level <= taus[-1]:
        i = int(np.searchsorted(taus, level))
        if i == 0:
            return q[0]
        w = (level - taus[i - 1]) / (taus[i] - taus[i - 1])
        return q[i - 1] * (1 - w) + q[i] * w
    v, s, beta = _knots(taus, q)
    return q[-1] + beta * math.log(s[-1] / (1.0 - level))


def risk_tables(caps: np.ndarray, taus: np.ndarray, q: np.ndarray,
                ceiling: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``P(D_j > c)`` and ``E[(D_j - c)+]`` for every capacity ``c`` in
    ``caps`` (``(L,)``, or ``(L, H)``: one per step) and step j: two ``(L, H)``
    arrays (see the module docstring for the distribution). ``ceiling (H,)``:
    demand above it is not counted (``D`` becomes ``min(D, ceiling)``)."""
    v, s, beta = _knots(taus, q)
    caps2 = np.broadcast_to(caps if caps.ndim == 2 else caps[:, None], (caps.shape[0], q.shape[1]))
    c = caps2[:, None, :]  # (L, 1, H)
    lo, hi = v[:-1][None], v[1:][None]  # (1, K, H)
    s_lo, s_hi = s[:-1][None, :, None], s[1:][None, :, None]
    width = hi - lo
    a = np.clip(c, lo, hi)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(width > 0, (a - lo) / width, 1.0)
    s_a = s_lo + (s_hi - s_lo) * frac
    seg_int = ((hi - a) * (s_a + s_hi) * 0.5).sum(axis=1)  # (L, H)
    inside = (c >= lo) & (c < hi)
    p_in = (inside * s_a).sum(axis=1)
    c2 = caps2
    top = v[-1][None, :]
    over = np.maximum(c2 - top, 0.0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        decay = np.where(beta[None, :] > 0, np.exp(-over / np.where(beta > 0, beta, 1.0)[None, :]),
                         (over <= 0).astype(float))
    tail_p = s[-1] * decay
    tail_int = s[-1] * beta[None, :] * decay
    below = c2 < v[0][None, :]
    above = c2 >= top
    p_sat = np.where(below, 1.0, np.where(above, tail_p, p_in))
    unserved = np.maximum(v[0][None, :] - c2, 0.0) + seg_int + tail_int
    if ceiling is not None:
        # E[(min(D, m) - c)+] = E[(D - c)+] - E[(D - m)+] below m, 0 above
        _, over_m = risk_tables(ceiling[None, :], taus, q)
        capped = c2 >= ceiling[None, :]
        p_sat = np.where(capped, 0.0, p_sat)
        unserved = np.where(capped, 0.0, np.maximum(unserved - over_m, 0.0))
    return p_sat, unserved


# ------------------------------------------------------------------------- the solver
@dataclass(frozen=True)
class Problem:
    """One planning problem on a grid of ``H`` steps and ``L`` levels.

    - ``cost (L, H)``: capacity + risk cost of serving step j at level x;
    - ``leave (L, H)``: cost of a scale-up away from level x at step j;
    - ``enter (L, H)``: extra cost of arriving at level y by a scale-up at j;
    - ``leave_down``, ``enter_down``: the same for a scale-down (None: as up);
    - ``start``: the level in force before step 0; ``since``: steps from the
      last change to step 0's order time; ``last_up``: it was a scale-up;
    - ``spacing``: changes at least this many steps apart; ``lifetime``: no
      scale-down sooner than this many steps after a scale-up;
    - ``down_ok (H,)``: a scale-down may be ordered at step j.
    """

    cost: np.ndarray
    leave: np.ndarray
    enter: np.ndarray
    start: int
    since: int
    last_up: bool
    spacing: int
    lifetime: int
    down_ok: np.ndarray
    leave_down: np.ndarray | None = None
    enter_down: np.ndarray | None = None

    def change_cost(self, x: int, y: int, j: int) -> float:
        """The cost of the change x -> y at step j."""
        if y > x or self.leave_down is None or self.enter_down is None:
            return float(self.leave[x, j] + self.enter[y, j])
        return float(self.leave_down[x, j] + self.enter_down[y, j])


def solve(p: Problem) -> tuple[np.ndarray, float]:
    """The exact minimum-cost path of levels (one per step) and its cost."""
    return solve_many([p])[0]


def solve_many(problems: Sequence[Problem]) -> list[tuple[np.ndarray, float]]:
    """:func:`solve` for problems that share their costs, ``spacing`` and
    ``lifetime`` and differ only in where they start (``start``, ``since``,
    ``last_up``) and in ``down_ok``, in one pass: the DP runs over a leading
    axis of problems, so each result is exactly what :func:`solve` gives it
    alone (the same operations, element by element), at about the price of
    one (the per-step work is numpy calls on small arrays)."""
    p = problems[0]
    for other in problems[1:]:
        assert (other.cost is p.cost and other.leave is p.leave and other.enter is p.enter
                and other.leave_down is p.leave_down and other.enter_down is p.enter_down
                and other.spacing == p.spacing and other.lifetime == p.lifetime), "solve_many: costs differ"
    n_levels, horizon = p.cost.shape
    n_prob = len(problems)
    cap = max(p.spacing, p.lifetime, 1)
    inf = np.inf
    v = np.full((n_prob, cap + 1, 2, n_levels), inf)
    for b, q in enumerate(problems):
        v[b, min(q.since, cap), int(q.last_up), q.start] = 0.0
    down_ok = np.stack([np.asarray(q.down_ok, dtype=bool) for q in problems])  # (B, H)
    c_idx = np.arange(cap + 1)[:, None]
    d_idx = np.arange(2)[None, :]
    up_mask = np.broadcast_to(c_idx >= p.spacing, (cap + 1, 2))
    down_mask = up_mask & ((d_idx == 0) | (c_idx >= p.lifetime))
    up_flat = np.flatnonzero(up_mask.ravel())
    down_flat = np.flatnonzero(down_mask.ravel())
    levels = np.arange(n_levels)
    size = (cap + 1) * 2 * n_levels
    back = np.empty((horizon, n_prob, cap + 1, 2, n_levels), dtype=np.int64)
    flat_state = np.arange(size).reshape(cap + 1, 2, n_levels)
    inf_col = np.full((n_prob, 1), inf)
    zero_col = np.zeros((n_prob, 1), dtype=np.int64)
    rows_of = np.arange(n_prob)[:, None]  # index each problem's own row
    for j in range(horizon):
        cost_j = p.cost[:, j]
        stay = v + cost_j
        vn = np.full_like(v, inf)
        bn = np.empty((n_prob, cap + 1, 2, n_levels), dtype=np.int64)
        # hold: (c, d, x) -> (min(c + 1, cap), d, x)
        vn[:, 1:] = stay[:, :-1]
        bn[:, 1:] = flat_state[:-1]
        keep = stay[:, cap] < vn[:, cap]
        vn[:, cap] = np.where(keep, stay[:, cap], vn[:, cap])
        bn[:, cap] = np.where(keep, flat_state[cap], bn[:, cap])
        allowed = down_ok[:, j]
        all_allowed = bool(allowed.all())
        for direction, rows in ((1, up_flat), (0, down_flat if all_allowed or allowed.any() else down_flat[:0])):
            if rows.size == 0:
                continue
            up = direction == 1 or p.leave_down is None or p.enter_down is None
            leave = (v + (p.leave if up else p.leave_down)[:, j]).reshape(n_prob, (cap + 1) * 2, n_levels)
            enter = cost_j + (p.enter if up else p.enter_down)[:, j]
            sub = leave[:, rows]  # (B, rows, L)
            arg_cd = np.argmin(sub, axis=1)  # (B, L)
            best = sub[rows_of, arg_cd, levels]  # (B, L) best way to leave level x
            src = rows[arg_cd] * n_levels + levels
            if direction == 1:  # arrive at y from some x < y: exclusive prefix minimum
                run = np.minimum.accumulate(best, axis=1)
                arg = np.maximum.accumulate(np.where(best == run, levels, 0), axis=1)
                arrive = np.concatenate([inf_col, run[:, :-1]], axis=1)
                from_x = np.concatenate([zero_col, arg[:, :-1]], axis=1)
            else:  # from some x > y: exclusive suffix minimum
                rb = best[:, ::-1]
                run = np.minimum.accumulate(rb, axis=1)
                arg = np.maximum.accumulate(np.where(rb == run, levels, 0), axis=1)
                arrive = np.concatenate([run[:, :-1][:, ::-1], inf_col], axis=1)
                from_x = np.concatenate([(n_levels - 1 - arg[:, :-1])[:, ::-1], zero_col], axis=1)
                if not all_allowed:  # no scale-down ordered here for some of the problems
                    arrive = np.where(allowed[:, None], arrive, inf)
            total = arrive + enter
            better = total < vn[:, 1, direction]  # ties keep the hold
            vn[:, 1, direction] = np.where(better, total, vn[:, 1, direction])
            bn[:, 1, direction] = np.where(better, src[rows_of, from_x], bn[:, 1, direction])
        v, back[j] = vn, bn
    out = []
    for b in range(n_prob):
        end = int(np.argmin(v[b]))
        best_cost = float(v[b].ravel()[end])
        path = np.empty(horizon, dtype=np.int64)
        state = end
        for j in range(horizon - 1, -1, -1):
            path[j] = state % n_levels
            state = int(back[j, b].ravel()[state])
        out.append((path, best_cost))
    return out


# ----------------------------------------------------------------------- the planner
def level_values(config: PolicyConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The discrete levels (replica counts or rung indices) within bounds, the
    full capacity of each (demand units) and its price per hour."""
    lo, hi = config.bounds
    levels = np.arange(lo, hi + 1)
    if config.ladder is not None:
        rungs = [config.ladder[i] for i in levels]
        caps = np.array([r.capacity for r in rungs], dtype=float)
        if all(r.price is not None for r in config.ladder):
            price = np.array([r.price for r in rungs], dtype=float)
        else:  # no prices: proportional to capacity, rung 0 at replica_price
            price = caps / config.ladder[0].capacity * config.plan.replica_price
        return levels, caps, price
    assert config.capacity_per_replica is not None
    return levels, levels * config.capacity_per_replica, levels * config.plan.replica_price


def unit_price(config: PolicyConfig) -> float:
    """Price of one unit of capacity (demand unit) per hour: the replica price
    over its capacity, or the median marginal price per capacity of the
    ladder's rungs."""
    if config.ladder is None:
        assert config.capacity_per_replica is not None
        return config.plan.replica_price / config.capacity_per_replica
    _, caps, price = level_values(config.model_copy(update={"min_replicas": None, "max_replicas": None}))
    if caps.size == 1:
        return float(price[0] / caps[0])
    marginal = np.diff(price) / np.diff(caps)
    return float(max(np.median(marginal), 1e-12))


def penalty(config: PolicyConfig, rate: float | None = None) -> float:
    """``plan.penalty``, or the one the SLO implies at ``rate`` (default: the
    SLO itself): unit price / rate (unserved: the newsvendor's critical
    fractile P(D > c) = price / penalty = rate), or the level price / rate for
    the saturation risk (a starting point: its optimum also depends on the
    spread; the rate calibration corrects it)."""
    p = config.plan
    if p.penalty is not None:
        return p.penalty
    rate = config.slo_rate if rate is None else rate
    if p.risk == "unserved":
        return unit_price(config) / rate
    _, _, price = level_values(config)
    step = float(np.median(np.diff(price))) if price.size > 1 else float(price[0])
    return step / rate


#: the adapted rate stays within [SLO / 100, SLO x 100] (and at most RATE_MAX):
#: the forecast's own tail, the headroom cap, integer capacity, the calm
#: constraints and the reactive floor all hold capacity apart from what the
#: priced rate says, and on the tuning traces the rate that realizes the SLO
#: lay anywhere from about the SLO to beyond 4x it (docs/planner.md)
RATE_RANGE = (0.01, 100.0)
RATE_MAX = 0.5


def adapt_rate(state: ScalingState, config: PolicyConfig, interval: timedelta) -> float | None:
    """The rate the planner prices, adapted from realized saturation so that
    the long-run saturated fraction converges to the SLO (adaptive conformal
    inference, Gibbs & Candes 2021, in log space), counted as the backtest
    counts a violation: each cycle the latest observation is compared with
    the full capacity that served it. The log-rate moves by
    ``gain x (SLO - saturated) / (SLO x n)``, ``n`` the intervals in
    ``plan.calibration_window``: a window without saturation raises the rate
    by ``exp(gain)``, each saturated interval lowers it by about
    ``exp(-gain / (SLO x n))``, so ``SLO x n`` saturated intervals per window
    hold it; over ``T`` intervals the realized fraction is then within
    ``SLO x n x |log(rate_T / rate_0)| / (gain x T)`` of the SLO while the
    bounds do not bind. Remembered in the Decision's ``smoothed`` memory (one
    number). None when not calibrating by rate or when a fixed penalty is
    configured."""
    pc = config.plan
    if not pc.calibrate or pc.calibration == "spread" or pc.penalty is not None:
        return None
    slo = config.slo_rate
    prev = state.smoothed[0] if len(state.smoothed) == 1 and math.isfinite(state.smoothed[0]) \
        and state.smoothed[0] > 0 else slo
    obs = state.observation
    if obs is None or not math.isfinite(obs.value):
        return prev
    saturated = obs.value > S.capacity_of(state.serving, config) + 1e-12
    n = max(1.0, pc.calibration_window / interval)
    rate = prev * math.exp(pc.calibration_gain * (slo - float(saturated)) / (slo * n))
    lo, hi = RATE_RANGE
    return min(max(rate, slo * lo), min(RATE_MAX, slo * hi))


#: the reactive floor's calibrated utilization stays within this range
FLOOR_UTILIZATION = (0.5, 1.0)


def floor_utilization(u: float, rate: float | None, config: PolicyConfig) -> float:
    """The reactive floor's target utilization under the rate calibration:
    its headroom over the observation, ``1 / u - 1``, scaled by
    ``(SLO / priced rate) ^ plan.floor_calibration``. The floor holds
    capacity apart from the plan (a burst above the observation's headroom
    is what saturates), so where the measured saturation says there is room
    the floor leans with the plan, and where bursts saturate too often it
    widens; bounded to :data:`FLOOR_UTILIZATION`. ``u`` itself without the
    rate calibration or with ``floor_calibration: 0``."""
    k = config.plan.floor_calibration
    if rate is None or k == 0 or u >= 1.0:
        return u
    head = (1.0 / u - 1.0) * (config.slo_rate / rate) ** k
    lo, hi = FLOOR_UTILIZATION
    return min(max(1.0 / (1.0 + head), lo), hi)


def since_last_change(state: ScalingState, now: datetime, interval: timedelta) -> tuple[int | None, bool]:
    """Whole intervals since the last capacity change (None: none known) and
    whether it was a scale-up."""
    if not state.events:
        return None, False
    ev = state.events[-1]
    return max(0, int((now - ev.at) / interval)), ev.to_capacity > ev.from_capacity


def capacity_ordered_at(state: ScalingState, t: datetime) -> int:
    """The capacity in force at ``t``, from the state's events (the
    ``from_capacity`` of the first change after ``t``; none: current)."""
    for ev in state.events:
        if ev.at > t:
            return ev.from_capacity
    return state.current


def scale_in_allowed(order_at: np.ndarray, plan: PlanConfig) -> np.ndarray:
    """Whether a scale-down may be ordered at each epoch second of
    ``order_at``: inside one of ``plan.scale_in_windows`` in local time."""
    if not plan.scale_in_windows:
        return np.ones(order_at.size, dtype=bool)
    tz = ZoneInfo(plan.timezone)
    offsets = {}
    minutes = np.empty(order_at.size, dtype=np.int64)
    for i, t in enumerate(order_at.tolist()):
        hour_key = t // 3600  # offsets change on the hour at most
        off = offsets.get(hour_key)
        if off is None:
            off = offsets[hour_key] = int(from_epoch(t).astimezone(tz).utcoffset().total_seconds())
        minutes[i] = ((t + off) // 60) % (24 * 60)
    ok = np.zeros(order_at.size, dtype=bool)
    for a, b in plan.windows:
        ok |= ((minutes >= a) & (minutes < b)) if a < b else ((minutes >= a) | (minutes < b))
    return ok


def forecast_problem(forecast: Forecast, now: datetime, lead_time: timedelta) -> tuple[str, str] | None:
    """Why this forecast cannot be planned on (reason code, message), or None."""
    t_lead = now.timestamp() + lead_time.total_seconds()
    if forecast.horizon == 0 or forecast.timestamps[-1] < t_lead:
        return "ForecastTooShort", f"forecast ends before now + lead time ({lead_time})"
    sel = forecast.timestamps >= t_lead
    arrays = [forecast.point[sel]] + [a[sel] for a in forecast.quantiles.values()]
    if not all(np.all(np.isfinite(a)) for a in arrays):
        return "ForecastNotFinite", f"forecast after now + {lead_time} is not finite"
    return None


def _clock(t: datetime, tz: ZoneInfo) -> str:
    """``14:00 UTC``: local time in the plan's timezone, with its abbreviation."""
    return t.astimezone(tz).strftime("%H:%M %Z")


def _span(td: timedelta) -> str:
    m = int(td.total_seconds() // 60)
    return f"{m // 60} h {m % 60} m".replace(" 0 m", "") if m >= 60 else f"{m} m"


def explain(schedule_steps: list[PlanStep], current: int, lead_time: timedelta, config: PolicyConfig,
            shown: int | None = None, floor: np.ndarray | None = None,
            events: tuple[E.Occurrence, ...] = ()) -> str:
    """The first planned step in words, e.g. ``hold 6: the 14:00 peak needs 8,
    ordered at 13:35 given the 25 m lead time``. ``floor``: the events'
    minimum capacity at each planned (not fixed) step; a scale-up to exactly
    an event's minimum is credited to the event, not to the demand's peak."""
    tz = ZoneInfo(config.plan.timezone)
    planned = [s for s in schedule_steps if not s.fixed]
    first = planned[0]
    name = (lambda x: f"{x} ({config.label(x)})") if config.ladder is not None else str

    def peak(seg: list[PlanStep]) -> PlanStep:
        return max(seg, key=lambda s: s.demand)

    def segment(i: int) -> list[PlanStep]:
        out = [planned[i]]
        for s in planned[i + 1:]:
            if s.capacity != planned[i].capacity:
                break
            out.append(s)
        return out

    if first.capacity > current:
        pk = peak(segment(0))
        bound = _event_binding(planned, floor, events, len(segment(0)), first.capacity)
        if bound is not None:
            j, ev = bound
            return (f"scale up to {name(first.capacity)}: event {ev.name!r} needs at least {name(first.capacity)} "
                    f"from {_clock(planned[j].at, tz)}; serves from {_clock(first.at, tz)} given the "
                    f"{_span(lead_time)} lead time")
        lo = config.bounds[0]
        if first.capacity == lo and all(s.capacity == lo for s in planned):
            # the bound, not the demand: every planned step sits at it
            # (it said "the 22:00 peak needs 7" of a peak that needs 4)
            word = "min_replicas" if config.ladder is None else "the lowest rung allowed"
            return (f"scale up to {name(first.capacity)}: {word} is {name(lo)} (the {_clock(pk.at, tz)} peak, "
                    f"median {pk.demand:.4g}, is within it); serves from {_clock(first.at, tz)}")
        return (f"scale up to {name(first.capacity)}: the {_clock(pk.at, tz)} peak (median {pk.demand:.4g}) "
                f"needs {name(first.capacity)}; serves from {_clock(first.at, tz)} given the "
                f"{_span(lead_time)} lead time")
    if first.capacity < current:
        pk = peak(segment(0))
        return (f"scale down to {name(first.capacity)}: demand until {_clock(segment(0)[-1].at, tz)} "
                f"peaks at median {pk.demand:.4g} ({_clock(pk.at, tz)}), "
                f"P(saturated) {pk.p_saturated:.2%} there")
    nxt = next((i for i, s in enumerate(planned) if s.capacity != current), None)
    if nxt is None:
        end = planned[-1].at
        return f"hold {name(current)}: the plan keeps {name(current)} until {_clock(end, tz)} (end of horizon)"
    step = planned[nxt]
    if step.capacity > current:
        pk = peak(segment(nxt))
        bound = _event_binding(planned[nxt:], None if floor is None else floor[nxt:], events,
                               len(segment(nxt)), step.capacity)
        what = (f"event {bound[1].name!r} from {_clock(planned[nxt + bound[0]].at, tz)} needs"
                if bound is not None else f"the {_clock(pk.at, tz)} peak needs")
        return (f"hold {name(current)}: {what} {name(step.capacity)}, "
                f"ordered at {_clock(step.order_at, tz)} given the {_span(lead_time)} lead time")
    why = ""
    if config.plan.scale_in_windows:
        why = f" (scale-in windows {', '.join(config.plan.scale_in_windows)} {config.plan.timezone})"
    return f"hold {name(current)}: scale down to {name(step.capacity)} planned at {_clock(step.order_at, tz)}{why}"


def plan(forecast: Forecast, state: ScalingState, config: PolicyConfig, now: datetime, lead_time: timedelta,
         *, target: str = "", data_step: Step | None = None,
         floors: Sequence[tuple[str, Observation | None, PolicyConfig]] | None = None,
         events: tuple[E.Occurrence, ...] = ()) -> Decision:
    """Plan the schedule and decide its first step (see the module docstring).
    ``events``: the calendar's events over the horizon (an uplift is already
    in ``forecast``); a ``min_capacity`` is a floor of the schedule at the
    steps it lasts (levels below it cost :data:`FLOOR_COST` each).

    Steps recorded: ``data``, ``plan`` (the DP's first step:
    PlannedScaleUp/PlannedScaleDown/PlannedHold), ``event`` (an event's
    minimum in the plan: EventMinCapacity, EventMinCapacityMet), ``constraints`` (which hard
    constraint binds the first step: ChangeSpacing, MinLifetime,
    ScaleInWindowClosed, or ConstraintsMet), ``budget`` (ChangeBudget holds
    when the hourly/daily change budget is spent), ``reactive`` (the HPA rule
    on the observation wins when it asks for more: ReactiveOverride), and
    ``bounds`` last. ``floors``: (resource, observation, its policy) for
    each resource's reactive floor (None: the state's observation under
    ``config``, unnamed).
    """
    pc = config.plan
    current = state.current
    ts = forecast.timestamps
    interval_s = int(np.median(np.diff(ts))) if ts.size > 1 else int(max(lead_time.total_seconds(), 300))
    interval = timedelta(seconds=interval_s)
    dt_h = interval_s / 3600.0
    t_now = int(now.timestamp())
    t_lead = t_now + lead_time.total_seconds()
    t_end = t_now + pc.horizon.total_seconds()
    fixed_idx = np.flatnonzero(ts < t_lead)
    plan_idx = np.flatnonzero((ts >= t_lead) & (ts <= t_end))
    if plan_idx.size == 0:  # horizon shorter than one step past the lead time
        plan_idx = np.flatnonzero(ts >= t_lead)[:1]
    all_idx = np.concatenate([fixed_idx, plan_idx])

    # demand distribution over the steps, calibrated to the measured under-forecast rate
    taus, q = demand_knots(forecast, pc.quantiles, all_idx)
    point = forecast.point[all_idx]
    calibrated = pc.calibrate and pc.calibration in ("spread", "both") and state.headroom is not None
    if calibrated:
        q = calibrate(taus, q, point, float(state.headroom), config.slo_rate, ref=fixed_idx.size)
    rate = adapt_rate(state, config, interval)
    levels, caps, price = level_values(config)
    lo, hi = config.bounds
    pen = penalty(config, rate)
    # the headroom cap: the plan does not buy capacity for demand above
    # point x (1 + cap); the reactive floor answers such bursts
    ceiling = None if pc.headroom_cap is None else point * (1.0 + pc.headroom_cap)
    p_sat, unserved = risk_tables(caps, taus, q)  # reported as they are
    priced = (p_sat, unserved) if ceiling is None else risk_tables(caps, taus, q, ceiling)
    risk = priced[1] if pc.risk == "unserved" else priced[0]
    n_fixed = fixed_idx.size
    risk_plan = risk[:, n_fixed:]
    cap_cost = (price * dt_h)[:, None] * np.ones((1, plan_idx.size))
    risk_cost = pen * risk_plan * dt_h
    cost = cap_cost + risk_cost
    floor = E.floors(ts[plan_idx], events) if events else None
    if floor is not None and floor.any():
        # not infinite: where spacing leaves no way to reach a floor in time,
        # the plan still has a cheapest path (as close to it as it can get)
        cost = cost + FLOOR_COST * np.maximum(np.minimum(floor, hi)[None, :] - levels[:, None], 0)

    # change costs: fixed, plus a vertical resize's downtime
    leave = np.full_like(cost, pc.fixed_change_cost(config.ladder is not None))
    enter = np.zeros_like(cost)
    leave_down = enter_down = None
    down_h = min(pc.downtime.total_seconds(), interval_s) / 3600.0
    if config.ladder is not None and down_h > 0:
        if pc.resize_during == "old":
            # the smaller of the two rungs serves: the old one on the way up;
            # on the way down the new one, as after the resize (no extra risk)
            leave_down, enter_down = leave.copy(), enter.copy()
            leave = leave + pen * risk_plan * down_h
        else:
            zero_p, zero_u = risk_tables(np.zeros(1), taus, q[:, n_fixed:],
                                         None if ceiling is None else ceiling[n_fixed:])
            leave = leave + pen * (zero_u if pc.risk == "unserved" else zero_p) * down_h
        enter = -pen * risk_plan * down_h  # the new rung does not serve during the downtime

    order_at = ts[plan_idx] - int(lead_time.total_seconds())
    order_at = t_now + (order_at - order_at[0])  # the first is ordered now
    down_ok = scale_in_allowed(order_at, pc)
    spacing = -(-int(pc.min_change_interval.total_seconds()) // interval_s)
    lifetime = -(-int(pc.min_lifetime.total_seconds()) // interval_s)
    since, last_up = since_last_change(state, now, interval)
    start = int(np.clip(current, lo, hi)) - lo
    big = max(spacing, lifetime, 1)
    prob = Problem(cost=cost, leave=leave, enter=enter, leave_down=leave_down, enter_down=enter_down, start=start,
                   since=big if since is None else min(since, big), last_up=last_up,
                   spacing=spacing, lifetime=lifetime, down_ok=down_ok)
    free = unconstrained(prob)
    if free is None:
        (path, _), wants = solve(prob), None
    else:  # the same DP, once, for both: what the first step would be without the constraint
        (path, _), (free_path, _) = solve_many([prob, free])
        wants = int(free_path[0])

    # the schedule: fixed steps (already decided) and the planned ones
    out_steps: list[PlanStep] = []
    label = config.label
    lead = int(lead_time.total_seconds())
    for k, i in enumerate(fixed_idx.tolist()):
        x = capacity_ordered_at(state, from_epoch(int(ts[i]) - lead))
        xi = int(np.clip(x, lo, hi)) - lo
        out_steps.append(PlanStep(at=from_epoch(ts[i]), order_at=from_epoch(int(ts[i]) - lead), capacity=x,
                                  demand=float(_median(taus, q[:, k])), p_saturated=float(p_sat[xi, k]),
                                  unserved=float(unserved[xi, k]), cost=float(price[xi] * dt_h),
                                  fixed=True, label=label(x)))
    prev = start
    totals = {"capacity": 0.0, "risk": 0.0, "change": 0.0}
    changes = 0
    for j, i in enumerate(plan_idx.tolist()):
        x = int(path[j])
        change = 0.0
        if x != prev:
            change = prob.change_cost(prev, x, j)
            changes += 1
        totals["capacity"] += float(cap_cost[x, j])
        totals["risk"] += float(risk_cost[x, j])
        totals["change"] += change
        k = n_fixed + j
        out_steps.append(PlanStep(at=from_epoch(ts[i]), order_at=from_epoch(int(order_at[j])),
                                  capacity=int(levels[x]), demand=float(_median(taus, q[:, k])),
                                  p_saturated=float(p_sat[x, k]), unserved=float(unserved[x, k]),
                                  cost=float(cost[x, j] + change), label=label(int(levels[x]))))
        prev = x
    reason = explain(out_steps, current, lead_time, config, floor=floor, events=events)
    schedule = Schedule(made_at=now, lead_time=lead_time, interval=interval, steps=tuple(out_steps),
                        capacity_cost=totals["capacity"], risk_cost=totals["risk"], change_cost=totals["change"],
                        changes=changes, risk=pc.risk, penalty=pen, reason=reason)

    # the executed first step
    out: list[Step] = [data_step or Step("data", current, "DataOK", "forecast and observation usable")]
    first = int(levels[path[0]])
    code = "PlannedScaleUp" if first > current else "PlannedScaleDown" if first < current else "PlannedHold"
    cal = f", spread calibrated (headroom {state.headroom:.3g})" if calibrated else ""
    if rate is not None:
        cal += f", priced rate {rate:.3%} (SLO {config.slo_rate:.3%})"
    out.append(Step("plan", first, code,
                    f"{reason}; plan over {_span(pc.horizon)}: {changes} change(s), expected cost "
                    f"{schedule.total_cost:.4g}{cal}", changed=first != current))
    if floor is not None and floor.any():
        out.append(_event_step(out_steps[n_fixed:], floor, events, config, first, current))
    out.append(_constraint_step(prob, first - lo, start, wants, lo, interval, pc))
    value = first
    budget = _budget_step(value, current, state, now, pc)
    out.append(budget)
    value = int(budget.value)
    for name, obs, cfg in (floors if floors is not None else [("", state.observation, config)]):
        if not (cfg.reactive.enabled and obs is not None):
            continue
        given = cfg.reactive.target_utilization or cfg.target_utilization
        u = floor_utilization(given, rate, config)
        hpa, why = S.hpa_desired(obs.value, state.serving, current, cfg, u, cfg.reactive.tolerance)
        if abs(u - given) > 5e-4:
            why += f", utilization {u:.3g} calibrated from {given:g}"
        if hpa > value:
            out.append(R.tag(Step("reactive", hpa, "ReactiveOverride",
                                  f"HPA rule on observation {obs.value:.4g}: {hpa} ({why}) above the plan's {value}",
                                  changed=True), name))
            value = hpa
        else:
            out.append(R.tag(Step("reactive", value, "ReactiveBelow",
                                  f"HPA rule on observation {obs.value:.4g}: {hpa} ({why})"), name))
    if events:  # an event in force now or inside the lead time: never below its floor
        ev = E.floor_step(value, events, config.calendar, t_now, t_lead)
        if ev is not None and ev.changed:
            out.append(ev)
            value = int(ev.value)
    recommendation = value
    b = S.bounds_step(value, lo, hi)
    out.append(b)
    desired = int(b.value)
    return Decision(
        target=target, at=now, current=current, desired=desired, recommendation=recommendation,
        steps=tuple(out), fallback=False, smoothed=state.smoothed if rate is None else (rate,),
        model=forecast.model,
        model_version=forecast.model_version, capacity_label=config.label(desired),
        forecast_demand=out_steps[n_fixed].demand,
        extra={"lead_time_s": lead_time.total_seconds(), "plan_penalty": pen,
               "plan_headroom": state.headroom if calibrated else None, "plan_rate": rate},
        schedule=schedule)


def _event_binding(planned: list[PlanStep], floor: np.ndarray | None, events: tuple[E.Occurrence, ...],
                   n: int, capacity: int) -> tuple[int, E.Occurrence] | None:
    """(step, event) when an event's minimum within the first ``n`` planned
    steps is exactly ``capacity``: what a first step scaling up to it orders
    (the demand alone would have bought another number)."""
    if floor is None or not floor[:n].any() or int(floor[:n].max()) != capacity:
        return None
    j = int(np.flatnonzero(floor[:n] == capacity)[0])
    t = int(planned[j].at.timestamp())
    top = E.strongest(tuple(o for o in events if o.start <= t < o.end), "min_capacity")
    return None if top is None else (j, top)


#: the cost of one level below an event's min_capacity at one step: far
#: above any price or risk, so the plan meets every floor it can reach
FLOOR_COST = 1e12


def _event_step(planned: list[PlanStep], floor: np.ndarray, events: tuple[E.Occurrence, ...],
                config: PolicyConfig, first: int, current: int) -> Step:
    """The ``event`` step of a plan: the first planned step an event's floor
    binds, when it is served and when it must be ordered."""
    j = int(np.flatnonzero(floor > 0)[0])
    step = planned[j]
    t = int(step.at.timestamp())
    top = E.strongest(tuple(o for o in events if o.start <= t < o.end), "min_capacity")
    assert top is not None
    cal = config.calendar
    what = (f"event {top.name!r} ({cal.clock(top.start)} .. {cal.clock(top.end)}) needs at least "
            f"{int(floor[j])}: planned {step.capacity} from {cal.clock(t)}, ordered at "
            f"{cal.clock(step.order_at.timestamp())}")
    if j == 0 and current < first <= floor[0]:  # the floor is what the first step orders
        return Step("event", first, "EventMinCapacity", what, changed=True)
    if j > 0 and current < first == floor[j] and all(s.capacity == first for s in planned[:j + 1]):
        # the first step already orders the event's minimum (it must be in
        # service before the event starts, and the plan holds it until then)
        return Step("event", first, "EventMinCapacity",
                    f"event {top.name!r} ({cal.clock(top.start)} .. {cal.clock(top.end)}) needs at least "
                    f"{int(floor[j])} from {cal.clock(t)}: the first step orders it now (serving from "
                    f"{cal.clock(planned[0].at.timestamp())})", changed=True)
    return Step("event", first, "EventMinCapacityMet", what + ("" if j == 0 else " (later in the plan)"))


def _median(taus: np.ndarray, q: np.ndarray) -> float:
    return float(np.interp(0.5, taus, q))


def unconstrained(prob: Problem) -> Problem | None:
    """``prob`` without the hard constraints active at its first step
    (spacing, lifetime, a closed scale-in window), or None where none is:
    the problem whose first step says what a binding constraint keeps."""
    c = prob.since
    if not (c < prob.spacing or (prob.last_up and c < prob.lifetime) or not prob.down_ok[0]):
        return None
    big = max(prob.spacing, prob.lifetime, 1)
    return replace(prob, since=big, last_up=False, down_ok=np.concatenate([[True], prob.down_ok[1:]]))


def _constraint_step(prob: Problem, chosen: int, start: int, wants: int | None, lo: int, interval: timedelta,
                     pc: PlanConfig) -> Step:
    """Which hard constraint holds the first step: where one is active now,
    ``wants`` is the first step of the plan solved without it
    (:func:`unconstrained`); if that plan would move now, the constraint is
    what keeps it (changed)."""
    c = prob.since
    spacing = c < prob.spacing
    lifetime = prob.last_up and c < prob.lifetime
    window = not prob.down_ok[0]
    if chosen == start and wants is not None:
        if wants != chosen:
            if spacing:
                nxt = (prob.spacing - c) * interval
                return Step("constraints", chosen + lo, "ChangeSpacing",
                            f"last change {c * interval} ago, min_change_interval {pc.min_change_interval}: "
                            f"no change for {nxt} (else {wants + lo})", changed=True)
            if wants < chosen and lifetime:
                return Step("constraints", chosen + lo, "MinLifetime",
                            f"capacity added {c * interval} ago must stay {pc.min_lifetime}: no scale-down "
                            f"to {wants + lo} yet", changed=True)
            if wants < chosen and window:
                return Step("constraints", chosen + lo, "ScaleInWindowClosed",
                            f"scale-in only inside {', '.join(pc.scale_in_windows)} ({pc.timezone}): holding "
                            f"{chosen + lo} instead of {wants + lo}", changed=True)
    return Step("constraints", chosen + lo, "ConstraintsMet", "no hard constraint holds the first step")


def _budget_step(value: int, current: int, state: ScalingState, now: datetime, pc: PlanConfig) -> Step:
    """The change budget on the plan's first step: every change in the state
    counts (the reactive floor's too); a scale-down keeps a scale-up in the
    daily budget: the day's scale-downs, this one included, are at most half
    of it, and at least one (a budget of 2 is one down and one up a day, a
    budget of 1 one change, or one down and its way back), and the scale-up right after a
    scale-down (the last change of the last day) is the way back it kept: it
    passes a spent daily budget (else, on a daily cycle, yesterday's morning
    scale-up still counts when this morning's is due, and only the floor's
    late one, at saturation, gets through). Any 24 hours then hold at most
    ``max(1, budget // 2)`` scale-downs and at most one change more than the
    budget. The steps after it (the reactive floor, an event's minimum) are
    never held by it."""
    if value != current:
        for limit, span, word in ((pc.max_changes_per_hour, timedelta(hours=1), "hour"),
                                  (pc.max_changes_per_day, timedelta(days=1), "day")):
            if limit is None:
                continue
            recent = [ev for ev in state.events if ev.at > now - span]
            n = len(recent)
            downs = sum(1 for ev in recent if ev.to_capacity < ev.from_capacity)
            last = max(recent, key=lambda ev: ev.at) if recent else None
            way_back = (word == "day" and value > current and last is not None
                        and last.to_capacity < last.from_capacity)
            if n >= limit and not way_back:
                return Step("budget", current, "ChangeBudget",
                            f"{n} change(s) in the last {word}, budget {limit}: holding {current} "
                            f"instead of {value}", changed=True)
            if word == "day" and value < current and downs + 1 > max(1, limit // 2):
                return Step("budget", current, "ChangeBudget",
                            f"{downs} scale-down(s) in the last day, budget {limit}: holding {current} instead "
                            f"of {value}, each scale-down keeps a scale-up in the budget", changed=True)
            if way_back and n >= limit:
                return Step("budget", value, "WithinBudget",
                            f"{n} change(s) in the last day, budget {limit}: the scale-up to {value} is the way "
                            f"back the scale-down {_span(now - last.at)} ago kept")
    return Step("budget", value, "WithinBudget", "within the change budget")
