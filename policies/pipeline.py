"""``decide``: the policy as one pure function.

The steps run in this order (the one place it is written down):

 1. ``data``          check the inputs. No forecast, a forecast that does not
                      reach the lead-time window or is not finite there, a
                      missing, non-finite or stale observation -> *fallback*: size reactively and never
                      scale down (recorded with the reason).
 2. ``forecast``      max of the chosen quantile over the window
                      ``[now + lead_time, now + lead_time + hold]``.
 3. ``margin``        fixed fraction / forecast quantile / conformal headroom,
                      then the headroom cap.
 4. ``smoothing``     EWMA or moving window of the demand (if configured so).
 5. ``capacity``      demand -> replicas (or ladder rung).
 6. ``reactive``      never below the HPA rule on the current observation.
 7. ``smoothing``     of the recommendation (if configured so).
    -> the *recommendation*, recorded for stabilization windows.
 8. ``stabilization`` HPA up/down windows over recent recommendations.
 9. ``scale_in``      scale-in disabled -> hold.
10. ``partial_data``  fallback -> never below current.
11. ``rate_limit``    HPA Pods/Percent policies with selectPolicy.
12. ``cooldown``      wall-clock cooldowns (block scale-down only).
13. ``bounds``        clamp to [min, max]: last, so configured bounds always win.

Several resources (:mod:`policies.resources`): steps 1-6 run once per
resource, each on its own signal and capacity model (its steps carry the
resource's name); then ``resources`` takes the largest size and names the
resource that set it (``ResourceMax``), and steps 7-13 run once on it. One
resource in fallback makes the decision a fallback (step 10 holds).

``kind: plan`` shares step 1 (and, on fallback, the whole reactive path
above); with usable data it hands over to :func:`policies.planner.plan`,
which plans a schedule and records its own steps (plan, constraints,
budget, reactive, bounds).

``decide`` reads no clock, does no I/O, imports no SDK. What must be
remembered (the recommendation, smoothing memory) leaves in the Decision;
the engine derives the next state with ``ScalingState.after``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Sequence

from engine.core.types import Decision, Forecast, Observation, ScalingState, Step

from . import planner as P
from . import resources as R
from . import steps as S
from .config import PolicyConfig
from .resources import Signal
from .window import LeadWindow, lead_window


def decide(forecast: Forecast | None, state: ScalingState, config: PolicyConfig, now: datetime,
           *, target: str = "", forecast_error: str | None = None,
           window: LeadWindow | None = None, resource: str = "",
           resources: Sequence[Signal] = ()) -> Decision:
    """Turn a forecast into a capacity decision. ``forecast_error`` says why
    there is no forecast (recorded in the fallback step). ``window``: the
    cycle's lead window (:func:`policies.window.lead_window`), which the
    engine computed once and also sized the forecast by; without it, the
    same function is applied to ``state.learned_lead_time`` here.

    ``resources``: the target's further demand signals
    (:mod:`policies.resources`); this call's own (``forecast``, the state's
    observation and headroom, ``config``) is the first, named
    ``resource``. Without them this is the one-signal case of
    :func:`decide_signals`."""
    first = Signal(resource, forecast, state.observation, forecast_error, state.headroom, config)
    return decide_signals((first, *resources), state, config, now, target=target, window=window)


@dataclass(frozen=True)
class _Checked:
    """Step 1 for one resource: its policy, usable observation, fallback
    reasons, forecast window (predictive) and the recorded step."""

    signal: Signal
    config: PolicyConfig
    obs: Observation | None
    reasons: tuple[tuple[str, str], ...]
    demand_window: tuple[float, float] | None
    step: Step


def _check(sig: Signal, config: PolicyConfig, current: int, now: datetime, window: LeadWindow) -> _Checked:
    """1. data: the resource's observation and forecast, usable or not."""
    lead_time = window.lead_time
    obs = sig.observation
    forecast = sig.forecast
    fallback_reasons: list[tuple[str, str]] = []
    if obs is None:
        fallback_reasons.append(("MissingObservation", "no current observation of the metric"))
    elif not math.isfinite(obs.value):
        fallback_reasons.append(("InvalidObservation", f"latest observation is {obs.value}, not a usable number"))
        obs = None  # unusable: treated as missing from here on
    elif now - obs.at > config.max_staleness:
        fallback_reasons.append(
            ("StaleObservation", f"latest observation is {now - obs.at} old (max {config.max_staleness})"))
    demand_window = None
    if config.kind == "predictive":
        if forecast is None:
            fallback_reasons.append(("NoForecast", sig.forecast_error or "no forecast available"))
        else:
            demand_window = S.window_demand(forecast, now, lead_time, window.hold, config.margin.quantile)
            if demand_window is None:
                fallback_reasons.append(
                    ("ForecastTooShort", f"forecast ends before now + lead time ({lead_time})"))
            elif not (math.isfinite(demand_window[0]) and math.isfinite(demand_window[1])):
                # a forecaster fed a gap may return NaN/inf: no size can come from it
                fallback_reasons.append(
                    ("ForecastNotFinite", f"forecast over [now+{lead_time}, now+{window.end}] "
                                          f"is not finite (upper {demand_window[0]}, point {demand_window[1]})"))
                demand_window = None
    elif config.kind == "plan":
        problem = ("NoForecast", sig.forecast_error or "no forecast available") if forecast is None \
            else P.forecast_problem(forecast, now, lead_time)
        if problem is not None:
            fallback_reasons.append(problem)
    if fallback_reasons:
        step = Step("data", current, fallback_reasons[0][0],
                    "fallback to reactive, no scale-down: " + "; ".join(m for _, m in fallback_reasons),
                    changed=True)
    else:
        step = Step("data", current, "DataOK",
                    "reactive policy" if config.kind == "reactive" else "forecast and observation usable")
    return _Checked(sig, config, obs, tuple(fallback_reasons), demand_window, R.tag(step, sig.resource))


def _size(c: _Checked, state: ScalingState, window: LeadWindow,
          memory: tuple[float, ...]) -> tuple[list[Step], int, float | None, tuple[float, ...]]:
    """Steps 2-6 for one resource: its forecast window -> margin ->
    (smoothing) -> its capacity model, then its reactive override. Returns
    the steps, the size it asks for, its forecast demand and the smoothing
    memory."""
    config, obs, current = c.config, c.obs, state.current
    fallback = bool(c.reasons)
    out: list[Step] = []
    forecast_demand: float | None = None
    value: float
    # 2-5. forecast -> demand -> capacity ------------------------------------------
    if c.demand_window is not None and not fallback:
        upper, point = c.demand_window
        out.append(Step("forecast", upper, "ForecastWindowMax",
                        f"max over [now+{window.lead_time}, now+{window.end}]: "
                        f"upper {upper:.4g}, point {point:.4g}"))
        m = S.margin_step(upper, point, config.margin, c.signal.headroom)
        out.append(m)
        demand = m.value
        if config.smoothing.applies_to == "forecast":
            st, memory = S.smoothing_step(demand, memory, config.smoothing, "smoothing")
            out.append(st)
            demand = st.value
        forecast_demand = demand
        cap = S.capacity_step(demand, config)
        out.append(cap)
        value = cap.value
    else:
        value = 0 if config.kind == "reactive" or fallback else current

    # 6. reactive override -----------------------------------------------------
    if (config.reactive.enabled or config.kind == "reactive" or fallback) and obs is not None \
            and not any(code == "StaleObservation" for code, _ in c.reasons):
        u = config.reactive.target_utilization or config.target_utilization
        hpa, why = S.hpa_desired(obs.value, state.serving, current, config, u, config.reactive.tolerance)
        if hpa > value:
            out.append(Step("reactive", hpa, "ReactiveOverride",
                            f"HPA rule on observation {obs.value:.4g}: {hpa} ({why})", changed=True))
            value = hpa
        else:
            out.append(Step("reactive", value, "ReactiveBelow",
                            f"HPA rule on observation {obs.value:.4g}: {hpa} ({why})"))
    elif fallback:
        out.append(Step("reactive", current, "NoObservation",
                        "no usable observation: holding current capacity", changed=value != current))
        value = current
    return [R.tag(s, c.signal.resource) for s in out], int(value), forecast_demand, memory


def decide_signals(signals: Sequence[Signal], state: ScalingState, config: PolicyConfig, now: datetime,
                   *, target: str = "", window: LeadWindow | None = None) -> Decision:
    """:func:`decide` over one or more resources' signals (the first is the
    primary: its policy's stateful settings, its smoothing memory). Each
    signal's ``config`` (None: ``config``) is that resource's capacity
    model; forecast smoothing follows the first resource only (a target
    config refuses it with several)."""
    current = state.current
    if window is None:
        window = lead_window(config, state.learned_lead_time)
    lead_time = window.lead_time
    many = len(signals) > 1

    # 1. data, per resource ----------------------------------------------------
    checked = [_check(sig, sig.config or config, current, now, window) for sig in signals]
    out: list[Step] = [c.step for c in checked]
    fallback_reasons = [r for c in checked for r in c.reasons]
    fallback = bool(fallback_reasons)
    if not fallback and config.kind == "plan":
        return _plan(checked, state, config, now, window, target)

    # 2-6. each resource's size; the largest wins ----------------------------------
    memory = tuple(state.smoothed)
    sizes: list[int] = []
    demands: list[float | None] = []
    for i, c in enumerate(checked):
        steps, size, demand, mem = _size(c, state, window, memory if i == 0 else ())
        if i == 0:
            memory = mem
        out.extend(steps)
        sizes.append(size)
        demands.append(demand)
    value = max(sizes)
    extra: dict[str, Any] = {"lead_time_s": lead_time.total_seconds()}
    if many:
        win = R.winner(signals, sizes)
        out.append(R.resources_step(signals, sizes, win))
        extra.update(R.attribution(signals, sizes, win))

    # 7. recommendation smoothing ------------------------------------------------
    if config.smoothing.applies_to == "recommendation" and config.smoothing.kind != "none" and not fallback:
        st, memory = S.smoothing_step(float(value), memory, config.smoothing, "smoothing")
        rounded = int(-(-st.value // 1))
        out.append(Step(st.name, rounded, st.reason, st.message, st.changed))
        value = rounded
    recommendation = int(value)

    # 8. stabilization -----------------------------------------------------------
    st = S.stabilize(recommendation, current, now, state.recommendations,
                     config.stabilization.scale_up, config.stabilization.scale_down)
    out.append(st)
    value = int(st.value)

    # 9. scale-in disabled ---------------------------------------------------------
    if not config.scale_in and value < current:
        out.append(Step("scale_in", current, "ScaleInDisabled",
                        f"scale-in disabled: holding {current} instead of {value}", changed=True))
        value = current

    # 10. partial data -------------------------------------------------------------
    if fallback and value < current:
        out.append(Step("partial_data", current, "NoScaleDownOnPartialData",
                        f"fallback: holding {current} instead of {value}", changed=True))
        value = current

    # 11. rate limits ---------------------------------------------------------------
    rl = S.rate_limit_step(value, current, state.events, now, config.scale_up, config.scale_down)
    out.append(rl)
    value = int(rl.value)

    # 12. cooldowns ------------------------------------------------------------------
    last_up, last_down = state.last_event("up"), state.last_event("down")
    cd = S.cooldown_step(value, current, now, last_up and last_up.at, last_down and last_down.at,
                         config.cooldown.after_scale_up, config.cooldown.after_scale_down)
    out.append(cd)
    value = int(cd.value)

    # 13. bounds ---------------------------------------------------------------------
    lo, hi = config.bounds
    b = S.bounds_step(value, lo, hi)
    out.append(b)
    desired = int(b.value)

    forecast = signals[0].forecast
    return Decision(
        target=target,
        at=now,
        current=current,
        desired=desired,
        recommendation=recommendation,
        steps=tuple(out),
        fallback=fallback,
        smoothed=memory,
        model=forecast.model if forecast is not None else "",
        model_version=forecast.model_version if forecast is not None else "",
        capacity_label=config.label(desired),
        forecast_demand=demands[0],
        extra=extra,
    )


def _plan(checked: list[_Checked], state: ScalingState, config: PolicyConfig, now: datetime,
          window: LeadWindow, target: str) -> Decision:
    """``kind: plan`` with usable data: the planner, on the one signal's
    forecast or on the several resources' combined forecast (in the first
    resource's units, :func:`policies.resources.combined_forecast`), with a
    reactive floor per resource."""
    signals = [c.signal for c in checked]
    floors = [(c.signal.resource, c.obs, c.config) for c in checked]
    if len(checked) == 1:
        forecast = signals[0].forecast
        assert forecast is not None
        planned = P.plan(forecast, state, config, now, window.lead_time, target=target,
                         data_step=checked[0].step, floors=floors)
    else:
        forecast, leader = R.combined_forecast(signals, config)
        headrooms = [s.headroom for s in signals if s.headroom is not None]
        seen = replace(state, headroom=max(headrooms) if headrooms else None)
        planned = P.plan(forecast, seen, config, now, window.lead_time, target=target,
                         data_step=checked[0].step, floors=floors)
        planned = R.with_plan_attribution(planned, [c.step for c in checked], signals, forecast, leader,
                                          now + window.lead_time)
    if not config.scale_in and planned.desired < state.current:
        # scale-in disabled holds for the planner as for every kind
        current = state.current
        held = Step("scale_in", current, "ScaleInDisabled",
                    f"scale-in disabled: holding {current} instead of {planned.desired}", changed=True)
        planned = replace(planned, desired=current, steps=planned.steps + (held,),
                          capacity_label=config.label(current))
    return planned


def history_to_keep(config: PolicyConfig) -> timedelta:
    """How much recommendation / event history the state must keep for this
    config's windows and periods."""
    spans = [config.stabilization.scale_up, config.stabilization.scale_down,
             config.cooldown.after_scale_up, config.cooldown.after_scale_down, timedelta(minutes=5)]
    for rl in (config.scale_up, config.scale_down):
        spans.extend(p.period for p in rl.policies)
    if config.kind == "plan":
        pc = config.plan
        # the last change (spacing, lifetime), the budgets, and the orders
        # still inside the lead time (the schedule's fixed steps)
        spans += [pc.min_change_interval, pc.min_lifetime, config.lead_time + timedelta(minutes=5),
                  timedelta(hours=1) if pc.max_changes_per_hour is not None else timedelta(0),
                  timedelta(days=1) if pc.max_changes_per_day is not None else timedelta(0)]
    return max(spans)
