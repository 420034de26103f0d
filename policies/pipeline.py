"""``decide``: the policy as one pure function.

The steps run in this order (the one place it is written down):

 0. ``calendar``      the events in force over the forecast's span
                      (:mod:`policies.events`); an ``uplift`` multiplies the
                      forecast where it lasts.
 1. ``data``          check the inputs. No forecast, a forecast that does not
                      reach the lead-time window or is not finite there, a
                      missing, non-finite or stale observation -> *fallback*: size reactively and never
                      scale down (recorded with the reason).
 2. ``forecast``      max of the chosen quantile over the window
                      ``[now + lead_time, now + lead_time + hold]``
                      (``event``: EventUplift when an event raised it).
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
12b. ``event``        an event in force between now and the end of the lead
                      window holds capacity at its ``min_capacity``: a bound
                      while it lasts, so no rate limit, cooldown or
                      stabilization delays it (every kind, fallback included).
13. ``bounds``        clamp to [min, max]: last, so configured bounds always win.

``kind: plan`` shares step 1 (and, on fallback, the whole reactive path
above); with usable data it hands over to :func:`policies.planner.plan`,
which plans a schedule and records its own steps (plan, event,
constraints, budget, reactive, bounds); an event's ``min_capacity`` is a
floor of the schedule at the times it lasts, so capacity is ordered a lead
time ahead of it.

``decide`` reads no clock, does no I/O, imports no SDK. What must be
remembered (the recommendation, smoothing memory) leaves in the Decision;
the engine derives the next state with ``ScalingState.after``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta

from engine.core.types import Decision, Forecast, ScalingState, Step

from . import events as E
from . import planner as P
from . import steps as S
from .config import PolicyConfig
from .window import LeadWindow, lead_window


def decide(forecast: Forecast | None, state: ScalingState, config: PolicyConfig, now: datetime,
           *, target: str = "", forecast_error: str | None = None,
           window: LeadWindow | None = None) -> Decision:
    """Turn a forecast into a capacity decision. ``forecast_error`` says why
    there is no forecast (recorded in the fallback step). ``window``: the
    cycle's lead window (:func:`policies.window.lead_window`), which the
    engine computed once and also sized the forecast by; without it, the
    same function is applied to ``state.learned_lead_time`` here."""
    out: list[Step] = []
    current = state.current
    if window is None:
        window = lead_window(config, state.learned_lead_time)
    lead_time, hold = window.lead_time, window.hold

    # 0. calendar -------------------------------------------------------------
    cal, t_now = config.calendar, now.timestamp()
    occ: tuple[E.Occurrence, ...] = ()
    raw_forecast = forecast
    if not cal.empty:
        reach = max(window.end, config.plan.horizon) if config.kind == "plan" else window.end
        t_end = t_now + reach.total_seconds()
        if forecast is not None and forecast.horizon:
            t_end = max(t_end, float(forecast.timestamps[-1]) + 1)
        occ = cal.occurrences(t_now, t_end + 1)  # the window's end included
        if forecast is not None and config.kind != "reactive":
            forecast = E.uplifted(forecast, occ)

    # 1. data -----------------------------------------------------------------
    obs = state.observation
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
            fallback_reasons.append(("NoForecast", forecast_error or "no forecast available"))
        else:
            demand_window = S.window_demand(forecast, now, lead_time, hold, config.margin.quantile)
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
        problem = ("NoForecast", forecast_error or "no forecast available") if forecast is None \
            else P.forecast_problem(forecast, now, lead_time)
        if problem is not None:
            fallback_reasons.append(problem)
    fallback = bool(fallback_reasons)
    if fallback:
        code = fallback_reasons[0][0]
        out.append(Step("data", current, code,
                        "fallback to reactive, no scale-down: " + "; ".join(m for _, m in fallback_reasons),
                        changed=True))
    else:
        out.append(Step("data", current, "DataOK",
                        "reactive policy" if config.kind == "reactive" else "forecast and observation usable"))
        if config.kind == "plan":
            assert forecast is not None
            planned = P.plan(forecast, state, config, now, lead_time, target=target, data_step=out[0], events=occ)
            if not config.scale_in and planned.desired < current:
                # scale-in disabled holds for the planner as for every kind
                held = Step("scale_in", current, "ScaleInDisabled",
                            f"scale-in disabled: holding {current} instead of {planned.desired}", changed=True)
                planned = replace(planned, desired=current, steps=planned.steps + (held,),
                                  capacity_label=config.label(current))
            return planned

    memory = tuple(state.smoothed)
    forecast_demand: float | None = None
    value: float
    # 2-5. forecast -> demand -> capacity ------------------------------------------
    if demand_window is not None and not fallback:
        upper, point = demand_window
        out.append(Step("forecast", upper, "ForecastWindowMax",
                        f"max over [now+{lead_time}, now+{window.end}]: "
                        f"upper {upper:.4g}, point {point:.4g}"))
        if forecast is not raw_forecast:
            assert raw_forecast is not None
            raw = S.window_demand(raw_forecast, now, lead_time, hold, config.margin.quantile)
            t0 = t_now + lead_time.total_seconds()
            ev = E.uplift_step(raw or (upper, point), upper, occ, cal, t0, t0 + hold.total_seconds())
            if ev is not None:
                out.append(ev)
        m = S.margin_step(upper, point, config.margin, state.headroom)
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
            and not any(c == "StaleObservation" for c, _ in fallback_reasons):
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

    # 12b. event floors: a declared minimum is a bound while it lasts ----------------
    if occ:
        ev = E.floor_step(value, occ, cal, t_now, t_now + window.end.total_seconds())
        if ev is not None:
            out.append(ev)
            value = int(ev.value)

    # 13. bounds ---------------------------------------------------------------------
    lo, hi = config.bounds
    b = S.bounds_step(value, lo, hi)
    out.append(b)
    desired = int(b.value)

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
        forecast_demand=forecast_demand,
        extra={"lead_time_s": lead_time.total_seconds()},
    )


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
