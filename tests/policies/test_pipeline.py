"""Whole decisions: ``decide(forecast, state, config, now) -> Decision``.

Each case states the arithmetic through the pipeline (policies/pipeline.py).
Unless a case says otherwise: capacity_per_replica 10, target utilization 0.5
(one replica carries 5), lead time 10 min, hold 5 min, sizing from q0.9,
forecast points every 5 min from now+5m.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from engine.core.types import Action, Decision, Forecast, Observation, ScaleEvent, ScalingState
from policies import PolicyConfig, decide

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
T0 = int(NOW.timestamp())


def config(**kw) -> PolicyConfig:
    kw.setdefault("capacity_per_replica", 10.0)
    kw.setdefault("target_utilization", 0.5)
    return PolicyConfig(**kw)


def forecast(point, upper=None, *, step=300) -> Forecast:
    pt = np.asarray(point, dtype=float)
    return Forecast(made_at=NOW, timestamps=T0 + step * np.arange(1, len(pt) + 1), point=pt,
                    quantiles={0.9: pt * 1.2 if upper is None else np.asarray(upper, dtype=float)},
                    model="seasonal_naive", model_version="v3")


def state(current=10, observed: float | None = 50.0, age=timedelta(0), **kw) -> ScalingState:
    obs = None if observed is None else Observation(observed, NOW - age)
    return ScalingState(current=current, observation=obs, **kw)


# ------------------------------------------------------------------------ the normal path
def test_predictive_decision_sizes_for_the_upper_quantile_over_the_lead_time_window():
    # window [now+10m, now+15m]: points 60, 70 -> point max 70, q0.9 max 84
    # capacity ceil(84 / 5) = ceil(16.8) = 17; observation 50 on 10 replicas is
    # ratio 1.0 -> the reactive rule holds 10 < 17; up rate limit (HPA default)
    # max(ceil(10 * 2), 10 + 4) = 20 >= 17
    d = decide(forecast([40, 60, 70, 30]), state(), config(), NOW, target="web")
    assert (d.current, d.recommendation, d.desired) == (10, 17, 17)
    assert d.action is Action.SCALE_UP
    assert not d.fallback
    assert d.forecast_demand == pytest.approx(84.0)
    assert [s.name for s in d.steps] == [
        "data", "forecast", "margin", "smoothing", "capacity", "reactive", "stabilization", "rate_limit", "cooldown", "bounds"]
    assert d.step("forecast").value == pytest.approx(84.0)
    assert d.step("reactive").reason == "ReactiveBelow"
    assert d.step("smoothing").reason == "NotSmoothed"
    assert (d.model, d.model_version, d.target, d.at) == ("seasonal_naive", "v3", "web", NOW)
    assert d.id == "web@2024-03-01T12:00:00Z"
    assert d.extra["lead_time_s"] == 600.0


def test_scale_down_is_held_by_the_default_300s_stabilization_window():
    # forecast demand 10 -> q0.9 12 -> ceil(12 / 5) = 3; observation 20 on 10
    # replicas: ratio 20 / 50 = 0.4 -> HPA ceil(10 * 0.4) = 4 -> recommendation 4.
    # A recommendation of 9 from 200 s ago is inside the 300 s window: downCeil = 9.
    st = state(observed=20.0, recommendations=((NOW - timedelta(seconds=200), 9),))
    d = decide(forecast([10, 10, 10]), st, config(), NOW)
    assert (d.recommendation, d.desired) == (4, 9)
    assert d.step("stabilization").reason == "ScaleDownStabilized"
    assert "ScaleDownStabilized" in d.reasons


def test_learned_lead_time_moves_the_window_when_it_is_longer_than_the_configured_one():
    # learned 20 min: window [now+20m, now+25m] -> points 100, 20 -> q0.9 max 120
    # -> ceil(120 / 5) = 24, rate limit 20 (max of 10 * 2 and 10 + 4)
    f = forecast([5, 5, 5, 100, 20])
    learned = state(learned_lead_time=timedelta(minutes=20))
    d = decide(f, learned, config(learn_lead_time=True), NOW)
    assert d.recommendation == 24
    assert d.extra["lead_time_s"] == 1200.0
    # not learning: window [now+10m, now+15m] -> points 5, 5 -> 6 -> ceil(1.2) = 2;
    # the reactive rule (50 on 10 replicas, ratio 1.0) holds 10
    d = decide(f, learned, config(learn_lead_time=False), NOW)
    assert d.recommendation == 10
    assert d.extra["lead_time_s"] == 600.0
    # a learned lead time shorter than the configured one never shortens it
    d = decide(f, state(learned_lead_time=timedelta(minutes=1)), config(learn_lead_time=True), NOW)
    assert d.extra["lead_time_s"] == 600.0


def test_conformal_headroom_from_state_sizes_from_the_point_forecast():
    # window points 60, 70 -> point max 70; headroom 0.5 -> 105 -> ceil(105 / 5) = 21,
    # rate limit max(20, 14) = 20
    d = decide(forecast([40, 60, 70]), state(headroom=0.5), config(margin={"conformal": True}), NOW)
    assert d.step("margin").reason == "ConformalHeadroom"
    assert d.forecast_demand == pytest.approx(105.0)
    assert d.recommendation == 21
    assert d.desired == 20
    assert d.step("rate_limit").reason == "ScaleUpLimit"


# ---------------------------------------------------------------------------- fallback
@pytest.mark.parametrize("fcast, st, cfg_kw, reason, message", [
    (None, state(observed=5.0), {}, "NoForecast", "model refit failed"),
    # last point at now+5m, the window starts at now+10m
    (forecast([1.0]), state(observed=5.0), {}, "ForecastTooShort", "forecast ends before now + lead time"),
    (forecast([1, 1, 1]), state(observed=5.0, age=timedelta(minutes=20)), {}, "StaleObservation",
     "latest observation is 0:20:00 old (max 0:15:00)"),
    (forecast([1, 1, 1]), state(observed=None), {}, "MissingObservation", "no current observation"),
    (forecast([1, 1, 1]), state(observed=5.0, age=timedelta(minutes=3)), {"max_staleness": "2m"},
     "StaleObservation", "old (max 0:02:00)"),
])
def test_fallback_records_its_reason_and_never_scales_down(fcast, st, cfg_kw, reason, message):
    # every case would scale down (demand 1 or 5 for 10 replicas of 5 each)
    d = decide(fcast, st, config(**cfg_kw), NOW, forecast_error="model refit failed")
    assert d.fallback
    data = d.step("data")
    assert data.reason == reason
    assert message in data.message
    assert reason in d.reasons
    assert d.desired == 10 == d.current
    assert d.forecast_demand is None
    assert d.step("forecast") is None


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_forecast_that_is_not_finite_over_the_window_is_a_fallback_not_a_crash(bad):
    # a forecaster fed a gap may return NaN: the window [now+10m, now+15m] holds
    # 10 and NaN -> no usable size; fall back, hold 10 (observation 5 says 1)
    pt = np.array([10.0, 10.0, bad, 10.0])
    f = Forecast(made_at=NOW, timestamps=T0 + 300 * np.arange(1, 5), point=pt, quantiles={0.9: pt * 1.2},
                 model="m")
    d = decide(f, state(observed=5.0), config(), NOW)
    assert d.fallback
    assert d.step("data").reason == "ForecastNotFinite"
    assert d.desired == 10
    # window [now+15m, now+15m] is the bad point alone: fallback too
    d = decide(f, state(observed=5.0), config(lead_time="15m", hold="0s"), NOW)
    assert d.fallback and d.step("data").reason == "ForecastNotFinite"
    # window [now+20m, now+20m] misses the bad point: used as usual, q0.9 of 10 = 12
    d = decide(f, state(observed=5.0), config(lead_time="20m", hold="0s"), NOW)
    assert not d.fallback
    assert d.step("capacity").value == 3  # ceil(12 / 5)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_an_observation_that_is_not_finite_counts_as_missing(bad):
    # forecast 10 -> 3 replicas would scale down from 10; the observation is unusable
    d = decide(forecast([10, 10, 10]), state(observed=bad), config(), NOW)
    assert d.fallback
    assert d.step("data").reason == "InvalidObservation"
    assert d.desired == 10
    # in the reactive kind too: hold rather than crash
    d = decide(None, state(observed=bad), config(kind="reactive"), NOW)
    assert (d.fallback, d.desired) == (True, 10)


def test_fallback_without_a_forecast_still_scales_up_reactively_on_the_observation():
    # observation 90 on 10 replicas: ratio 90 / 50 = 1.8 -> HPA ceil(18) = 18
    d = decide(None, state(observed=90.0), config(), NOW)
    assert d.fallback
    assert (d.recommendation, d.desired) == (18, 18)
    assert d.step("reactive").reason == "ReactiveOverride"


def test_fallback_on_a_low_observation_holds_and_says_why():
    # observation 5 on 10 replicas: HPA says ceil(10 * 0.1) = 1; stabilization has
    # no history so it passes 1; the partial-data step holds 10
    d = decide(None, state(observed=5.0), config(), NOW)
    assert d.recommendation == 1
    assert d.desired == 10
    held = d.step("partial_data")
    assert held.reason == "NoScaleDownOnPartialData"
    assert "holding 10 instead of 1" in held.message


def test_fallback_with_a_stale_observation_holds_even_when_that_observation_was_high():
    # the 20-minute-old observation (500) is not trusted: hold 10
    d = decide(None, state(observed=500.0, age=timedelta(minutes=20)), config(), NOW)
    assert d.fallback
    assert d.desired == 10
    assert d.step("reactive").reason == "NoObservation"


def test_fallback_lists_every_reason_it_found():
    d = decide(None, state(observed=None), config(), NOW, forecast_error="too little history")
    assert d.step("data").reason == "MissingObservation"
    assert "no current observation" in d.step("data").message
    assert "too little history" in d.step("data").message


# -------------------------------------------------------------------- reactive override
def test_reactive_override_catches_a_surprise_spike_the_forecast_missed():
    # forecast demand 10 -> q0.9 12 -> ceil(12 / 5) = 3; observation 150 on 10 replicas:
    # ratio 150 / 50 = 3.0 -> HPA ceil(10 * 3) = 30; rate limit max(ceil(10 * 2), 14) = 20
    d = decide(forecast([10, 10, 10]), state(observed=150.0), config(), NOW)
    assert d.step("capacity").value == 3
    r = d.step("reactive")
    assert (r.reason, r.value) == ("ReactiveOverride", 30)
    assert d.recommendation == 30
    assert d.desired == 20
    assert d.reasons[-2:] == ["ReactiveOverride", "ScaleUpLimit"]


def test_reactive_override_uses_its_own_target_utilization():
    # reactive at u 0.8 (one replica carries 8): observation 150 -> ceil(150 / 8) = 19
    cfg = config(reactive={"target_utilization": 0.8}, scale_up={"policies": []})
    d = decide(forecast([10, 10, 10]), state(observed=150.0), cfg, NOW)
    assert d.step("reactive").value == 19
    assert d.desired == 19


def test_reactive_override_can_be_switched_off():
    # forecast alone: ceil(12 / 5) = 3, then stabilization has no history -> 3
    cfg = config(reactive={"enabled": False})
    d = decide(forecast([10, 10, 10]), state(observed=150.0), cfg, NOW)
    assert d.step("reactive") is None
    assert d.desired == 3


def test_reactive_kind_is_the_hpa_algorithm_alone_and_needs_no_forecast():
    # observation 80 on 10 replicas: ratio 1.6 -> ceil(16) = 16
    d = decide(None, state(observed=80.0), config(kind="reactive"), NOW)
    assert not d.fallback
    assert d.step("data").reason == "DataOK"
    assert d.step("forecast") is None
    assert d.desired == 16
    # within tolerance (52 / 50 = 1.04): hold
    assert decide(None, state(observed=52.0), config(kind="reactive"), NOW).desired == 10
    # no load: 0, raised to the minimum 1
    d = decide(None, state(observed=0.0), config(kind="reactive"), NOW)
    assert d.recommendation == 0
    assert d.desired == 1
    assert d.reasons[-1] == "TooFewReplicas"


# ------------------------------------------------------------------ scale-in, bounds
def test_scale_in_disabled_holds_current_capacity():
    # forecast 10 -> 3 replicas, observation 20 -> HPA 4; recommendation 4, held at 10
    d = decide(forecast([10, 10, 10]), state(observed=20.0),
               config(scale_in=False, stabilization={"scale_down": 0}), NOW)
    assert d.recommendation == 4
    assert d.desired == 10
    assert d.step("scale_in").reason == "ScaleInDisabled"


def test_scale_in_disabled_still_scales_up():
    d = decide(forecast([100, 100, 100]), state(observed=50.0),
               config(scale_in=False, scale_up={"policies": []}), NOW)
    # q0.9 120 -> ceil(120 / 5) = 24
    assert d.desired == 24
    assert d.step("scale_in") is None


def test_bounds_win_over_everything_else():
    # forecast 1000 -> q0.9 1200 -> 240 replicas; max 30
    d = decide(forecast([1000, 1000, 1000]), state(current=20),
               config(max_replicas=30, scale_up={"policies": []}), NOW)
    assert d.desired == 30
    assert d.reasons[-1] == "TooManyReplicas"


def test_the_reasons_list_names_every_step_that_changed_the_value_in_order():
    # recommendation 3 (forecast 10), down window holds 8 from 100 s ago, rate
    # limit down Pods 1 -> 9, cooldown after a scale-up 60 s ago holds 10
    st = state(observed=None, recommendations=((NOW - timedelta(seconds=100), 8),),
               events=(ScaleEvent(NOW - timedelta(seconds=60), 9, 10),))
    cfg = config(scale_down={"policies": [{"type": "Pods", "value": 1, "period": "1m"}]},
                 cooldown={"after_scale_up": "5m"}, reactive={"enabled": False})
    d = decide(forecast([10, 10, 10]), st, cfg, NOW)
    assert d.fallback  # no observation
    assert d.reasons == ["MissingObservation", "NoObservation"]
    # with an observation: forecast path, then stabilization, rate limit, cooldown
    st = state(observed=10.0, recommendations=((NOW - timedelta(seconds=100), 8),),
               events=(ScaleEvent(NOW - timedelta(seconds=600), 9, 10),))
    cfg = config(scale_down={"policies": [{"type": "Pods", "value": 1, "period": "1m"}]},
                 reactive={"enabled": False}, cooldown={"after_scale_down": "5m"})
    d = decide(forecast([10, 10, 10]), st, cfg, NOW)
    # 3 -> stabilized to 8 -> rate limited to 10 - 1 = 9
    assert d.reasons == ["ForecastQuantile", "CapacityModel", "ScaleDownStabilized", "ScaleDownLimit"]
    assert d.desired == 9


# ------------------------------------------------------------------------ vertical
LADDER = [{"name": "s-1vcpu", "capacity": 2, "price": 5}, {"name": "s-2vcpu", "capacity": 4, "price": 10},
          {"name": "s-4vcpu", "capacity": 8, "price": 20}]


def test_vertical_ladder_decision_carries_the_rung_label():
    # ladder carries 1, 2, 4 at u 0.5; forecast 2.5 -> q0.9 3.0 -> rung 2 (s-4vcpu);
    # observation 1.8 on rung 1 (2 at target): ratio 0.9 within tolerance -> 1
    cfg = PolicyConfig(ladder=LADDER, target_utilization=0.5)
    d = decide(forecast([2.5, 2.5, 2.5]), state(current=1, observed=1.8), cfg, NOW)
    assert d.desired == 2
    assert d.capacity_label == "s-4vcpu"
    assert "s-4vcpu" in d.step("capacity").message
    # a quiet forecast (0.5 -> 0.6 -> rung 0) with no history steps down a rung
    d = decide(forecast([0.5, 0.5, 0.5]), state(current=1, observed=1.8), cfg, NOW)
    assert d.desired == 1  # the reactive rule holds rung 1 (ratio within tolerance)
    d = decide(forecast([0.5, 0.5, 0.5]), state(current=1, observed=0.4), cfg, NOW)
    assert (d.desired, d.capacity_label) == (0, "s-1vcpu")


def test_demand_no_rung_carries_is_sized_at_the_top_rung_and_says_it_is_short():
    """It said "demand 12 fits rung 2 (capacity 8)", then WithinBounds: no
    sign of the shortfall a horizontal policy shows as TooManyReplicas."""
    cfg = PolicyConfig(ladder=LADDER, target_utilization=0.5)
    d = decide(forecast([10.0, 10.0, 10.0]), state(current=2, observed=7.0), cfg, NOW)  # q0.9: 12
    step = d.step("capacity")
    assert (step.value, step.reason) == (2, "AboveTopRung") and d.desired == 2
    assert "demand 12 is more than the top rung 2 (s-4vcpu, capacity 8) carries at utilization 0.5 (4)" \
        in step.message and "utilization 1.50" in step.message
    assert "AboveTopRung" in d.reasons


def test_horizontal_decision_has_no_label():
    assert decide(forecast([10, 10, 10]), state(), config(), NOW).capacity_label is None


# ---------------------------------------------------------------------- serialization
def test_decision_to_dict_is_json_serializable_and_round_trips():
    st = state(observed=150.0, recommendations=((NOW - timedelta(seconds=30), 12),))
    cfg = config(smoothing={"kind": "ewma", "alpha": 0.3}, margin={"fraction": 0.1, "cap": 0.5})
    d = decide(forecast([10, 40, 20]), st, cfg, NOW, target="api")
    as_dict = d.to_dict()
    text = json.dumps(as_dict)  # no default=: every value is plain JSON
    assert json.loads(text) == as_dict
    assert json.loads(d.to_json()) == as_dict
    assert as_dict["id"] == "api@2024-03-01T12:00:00Z"
    assert as_dict["at"] == "2024-03-01T12:00:00Z"
    assert as_dict["action"] == d.action.value
    assert [s["name"] for s in as_dict["steps"]] == [s.name for s in d.steps]
    assert [s["reason"] for s in as_dict["steps"]] == [s.reason for s in d.steps]
    # rebuilt from the record, the decision is the same decision
    rebuilt = Decision(
        target=as_dict["target"], at=NOW, current=as_dict["current"], desired=as_dict["desired"],
        recommendation=as_dict["recommendation"],
        steps=tuple(type(d.steps[0])(**s) for s in as_dict["steps"]),
        fallback=as_dict["fallback"], smoothed=tuple(as_dict["smoothed"]), model=as_dict["model"],
        model_version=as_dict["model_version"], capacity_label=as_dict["capacity_label"],
        forecast_demand=as_dict["forecast_demand"], extra=as_dict["extra"])
    assert rebuilt == d


def test_smoothing_memory_leaves_in_the_decision_and_feeds_the_next_one():
    # ewma alpha 0.5 on the forecast demand, upward immediate:
    # cycle 1: q0.9 max over window = 120 (no memory) -> 120
    # cycle 2: demand 12 -> 0.5 * 12 + 0.5 * 120 = 66 -> ceil(66 / 5) = 14
    cfg = config(smoothing={"kind": "ewma", "alpha": 0.5}, reactive={"enabled": False},
                 stabilization={"scale_down": 0}, scale_up={"policies": []})
    d1 = decide(forecast([100, 100, 100]), state(), cfg, NOW)
    assert d1.smoothed == (pytest.approx(120.0),)
    st2 = state().after(d1, keep=timedelta(hours=1))
    later = NOW + timedelta(minutes=5)
    f2 = Forecast(made_at=later, timestamps=int(later.timestamp()) + 300 * np.arange(1, 4),
                  point=np.full(3, 10.0), quantiles={0.9: np.full(3, 12.0)}, model="m")
    d2 = decide(f2, ScalingState(current=st2.current, observation=Observation(50.0, later),
                                 smoothed=st2.smoothed), cfg, later)
    assert d2.forecast_demand == pytest.approx(66.0)
    assert d2.desired == 14
