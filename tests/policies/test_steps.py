"""Each policy step alone, table-driven, with the arithmetic in the case.

The steps are free functions over plain values (policies/steps.py); the order
they run in is documented in policies/pipeline.py. HPA arithmetic follows
REFERENCE.md section 1 (kubernetes pkg/controller/podautoscaler/horizontal.go).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from engine.core.types import Forecast, ScaleEvent
from policies import steps as S
from policies.config import (
    HPA_SCALE_DOWN, HPA_SCALE_UP, Margin, PolicyConfig, RateLimit, RatePolicy, Rung, Smoothing,
)

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
T0 = int(NOW.timestamp())


def sec(n: float) -> timedelta:
    return timedelta(seconds=n)


def horizontal(**kw) -> PolicyConfig:
    kw.setdefault("capacity_per_replica", 10.0)
    kw.setdefault("target_utilization", 0.5)
    return PolicyConfig(**kw)


LADDER = (Rung(name="small", capacity=2.0, price=0.01),
          Rung(name="medium", capacity=4.0, price=0.02),
          Rung(name="large", capacity=8.0, price=0.04))


def vertical(**kw) -> PolicyConfig:
    kw.setdefault("target_utilization", 0.5)
    return PolicyConfig(ladder=LADDER, **kw)


# ------------------------------------------------------------------ capacity model
@pytest.mark.parametrize("demand, expected", [
    # ceil(d / (cpr * u)) with cpr 10, u 0.5: one replica carries 5
    (0.0, 0),      # ceil(0 / 5) = 0
    (0.1, 1),      # ceil(0.02) = 1
    (5.0, 1),      # ceil(1.0) = 1: exactly at target is enough
    (5.01, 2),     # ceil(1.002) = 2
    (35.0, 7),     # ceil(7.0) = 7
    (35.0000000001, 7),  # float noise above an integer does not add a replica
    (36.0, 8),     # ceil(7.2) = 8
    (-3.0, 0),     # a negative forecast never asks for negative replicas
])
def test_horizontal_capacity_is_ceil_of_demand_over_capacity_per_replica_times_utilization(demand, expected):
    cfg = horizontal()
    assert S.replicas_for(demand, cfg) == expected
    step = S.capacity_step(demand, cfg)
    assert (step.name, step.value, step.reason) == ("capacity", expected, "CapacityModel")


@pytest.mark.parametrize("demand, expected, label", [
    # rung i carries capacity_i * u: small 2*0.5=1, medium 4*0.5=2, large 8*0.5=4
    (0.0, 0, "small"),
    (1.0, 0, "small"),    # 1 <= 1
    (1.01, 1, "medium"),  # 1.01 > 1, <= 2
    (2.0, 1, "medium"),
    (3.9, 2, "large"),    # 3.9 <= 4
    (4.0, 2, "large"),
    (50.0, 2, "large"),   # nothing carries 50: the top rung
])
def test_vertical_capacity_is_the_smallest_rung_that_carries_the_demand_at_target(demand, expected, label):
    cfg = vertical()
    assert S.replicas_for(demand, cfg) == expected
    step = S.capacity_step(demand, cfg)
    assert step.value == expected
    assert label in step.message
    assert cfg.label(expected) == label


def test_capacity_of_a_rung_is_its_capacity_and_of_replicas_their_sum():
    assert S.capacity_of(2, vertical()) == 8.0
    assert S.capacity_of(7, horizontal()) == 70.0  # 7 * 10, at 100 % utilization
    assert S.capacity_of(99, vertical()) == 8.0   # past the ladder: the top rung


# ------------------------------------------------------------------ forecast window
def forecast(values, *, step=300, upper=None, start=T0) -> Forecast:
    """Points at start+step .. start+n*step; ``upper`` is the 0.9 quantile."""
    ts = start + step * np.arange(1, len(values) + 1)
    pt = np.asarray(values, dtype=float)
    up = pt * 1.5 if upper is None else np.asarray(upper, dtype=float)
    return Forecast(made_at=NOW, timestamps=ts, point=pt, quantiles={0.9: up}, model="test")


@pytest.mark.parametrize("lead_s, hold_s, expected_upper, expected_point", [
    # points at +5m:10, +10m:20, +15m:80, +20m:30, +25m:5 (upper = point * 1.5)
    # window [now+10m, now+15m] -> points 20, 80 -> max 80, upper 120
    (600, 300, 120.0, 80.0),
    # window [now+20m, now+25m] -> points 30, 5 -> max 30, upper 45
    (1200, 300, 45.0, 30.0),
    # window [now+5m, now+25m] covers everything -> max 80
    (300, 1200, 120.0, 80.0),
    # window [now+16m, now+17m] holds no point: the first one after it (+20m: 30)
    (960, 60, 45.0, 30.0),
    # window [now+0, now+0]: the first point (+5m: 10)
    (0, 0, 15.0, 10.0),
])
def test_forecast_window_is_the_max_over_now_plus_lead_to_now_plus_lead_plus_hold(
        lead_s, hold_s, expected_upper, expected_point):
    f = forecast([10, 20, 80, 30, 5])
    assert S.window_demand(f, NOW, sec(lead_s), sec(hold_s), 0.9) == (expected_upper, expected_point)


def test_forecast_window_with_no_quantile_uses_the_point_forecast():
    f = forecast([10, 20, 80, 30, 5])
    # window [now+10m, now+15m]: points 20, 80 -> 80 for both
    assert S.window_demand(f, NOW, sec(600), sec(300), None) == (80.0, 80.0)


def test_forecast_window_interpolates_an_unknown_quantile_between_median_and_upper():
    f = forecast([10, 20, 80, 30, 5])  # q0.5 = point, q0.9 = 1.5 x point
    # q0.7 is halfway: 80 + 0.5 * (120 - 80) = 100
    upper, point = S.window_demand(f, NOW, sec(600), sec(300), 0.7)
    assert upper == pytest.approx(100.0)
    assert point == 80.0


def test_forecast_ending_before_now_plus_lead_time_gives_no_window():
    f = forecast([10, 20])  # last point at now+10m
    assert S.window_demand(f, NOW, sec(601), sec(300), 0.9) is None
    assert S.window_demand(f, NOW, sec(600), sec(300), 0.9) == (30.0, 20.0)


# ------------------------------------------------------------------------- margin
@pytest.mark.parametrize("margin, upper, point, headroom, expected, reason", [
    # quantile: the upper level as it is
    (Margin(quantile=0.9), 120.0, 80.0, None, 120.0, "ForecastQuantile"),
    # point forecast only
    (Margin(quantile=None), 80.0, 80.0, None, 80.0, "ForecastPoint"),
    # fraction on top of the quantile: 120 * (1 + 0.25) = 150
    (Margin(quantile=0.9, fraction=0.25), 120.0, 80.0, None, 150.0, "MarginApplied"),
    # fraction on the point: 80 * 1.1 = 88
    (Margin(quantile=None, fraction=0.1), 80.0, 80.0, None, 88.0, "MarginApplied"),
    # conformal: point * (1 + headroom) = 80 * 1.2 = 96 (the quantile is ignored)
    (Margin(conformal=True), 120.0, 80.0, 0.2, 96.0, "ConformalHeadroom"),
    # conformal without a measured headroom yet: falls back to the quantile
    (Margin(conformal=True), 120.0, 80.0, None, 120.0, "ForecastQuantile"),
    # a negative headroom (over-forecasting model) never shrinks below the point
    (Margin(conformal=True), 120.0, 80.0, -0.3, 80.0, "ConformalHeadroom"),
    # cap: at most point * (1 + 0.25) = 100 < 120
    (Margin(quantile=0.9, cap=0.25), 120.0, 80.0, None, 100.0, "HeadroomCapped"),
    # cap not binding: 120 <= 80 * 1.6 = 128
    (Margin(quantile=0.9, cap=0.6), 120.0, 80.0, None, 120.0, "ForecastQuantile"),
    # cap after fraction: 120 * 1.5 = 180 capped to 80 * 2 = 160
    (Margin(quantile=0.9, fraction=0.5, cap=1.0), 120.0, 80.0, None, 160.0, "HeadroomCapped"),
    # cap after conformal: 80 * 1.5 = 120 capped to 80 * 1.1 = 88
    (Margin(conformal=True, cap=0.1), 120.0, 80.0, 0.5, 88.0, "HeadroomCapped"),
])
def test_margin_sizes_from_quantile_fraction_or_conformal_headroom_then_caps(
        margin, upper, point, headroom, expected, reason):
    step = S.margin_step(upper, point, margin, headroom)
    assert step.name == "margin"
    assert step.value == pytest.approx(expected)
    assert step.reason == reason
    assert step.changed == (step.value != point)


# ---------------------------------------------------------------------- smoothing
@pytest.mark.parametrize("smoothing, memory, value, expected, new_memory", [
    # ewma alpha 0.5: 0.5 * 10 + 0.5 * 20 = 15 (a fall is smoothed)
    (Smoothing(kind="ewma", alpha=0.5), (20.0,), 10.0, 15.0, (15.0,)),
    # ewma, upward immediate: 0.5 * 30 + 0.5 * 20 = 25 < 30 -> 30 passes through
    (Smoothing(kind="ewma", alpha=0.5), (20.0,), 30.0, 30.0, (30.0,)),
    # ewma, upward smoothed: 25
    (Smoothing(kind="ewma", alpha=0.5, upward="smoothed"), (20.0,), 30.0, 25.0, (25.0,)),
    # ewma alpha 0.25 with no memory: starts at the value itself
    (Smoothing(kind="ewma", alpha=0.25), (), 8.0, 8.0, (8.0,)),
    # ewma alpha 0.25: 0.25 * 0 + 0.75 * 8 = 6
    (Smoothing(kind="ewma", alpha=0.25), (8.0,), 0.0, 6.0, (6.0,)),
    # window 3: mean(30, 20, 10) = 20 (a fall is smoothed)
    (Smoothing(kind="window", window=3), (40.0, 30.0, 20.0), 10.0, 20.0, (30.0, 20.0, 10.0)),
    # window 3, upward immediate: mean(10, 20, 60) = 30 < 60 -> 60; memory keeps raw values
    (Smoothing(kind="window", window=3), (10.0, 20.0), 60.0, 60.0, (10.0, 20.0, 60.0)),
    # window 3, upward smoothed: mean(10, 20, 60) = 30
    (Smoothing(kind="window", window=3, upward="smoothed"), (10.0, 20.0), 60.0, 30.0, (10.0, 20.0, 60.0)),
    # window 2 with short memory: mean(4, 2) = 3
    (Smoothing(kind="window", window=2), (4.0,), 2.0, 3.0, (4.0, 2.0)),
    # off: the value itself, no memory
    (Smoothing(kind="none"), (5.0,), 7.0, 7.0, ()),
])
def test_smoothing_is_ewma_or_moving_window_and_lets_a_rise_through_when_upward_is_immediate(
        smoothing, memory, value, expected, new_memory):
    out, mem = S.smooth(value, memory, smoothing)
    assert out == pytest.approx(expected)
    assert mem == pytest.approx(new_memory)
    step, mem2 = S.smoothing_step(value, memory, smoothing, "smoothing")
    assert step.value == pytest.approx(expected)
    assert mem2 == mem
    assert step.reason == ("NotSmoothed" if smoothing.kind == "none" else "Smoothed")


# ------------------------------------------------------------------ reactive (HPA)
@pytest.mark.parametrize("observed, serving, current, expected, why", [
    # cpr 10, u 0.5: capacity at target = serving * 5; ratio = observed / that
    (50.0, 10, 10, 10, "within tolerance"),   # ratio 50/50 = 1.0
    (54.0, 10, 10, 10, "within tolerance"),   # ratio 1.08 <= 1.1 -> hold current
    (46.0, 10, 10, 10, "within tolerance"),   # ratio 0.92 >= 0.9 -> hold current
    (56.0, 10, 10, 12, "ratio 1.120"),        # ratio 1.12 -> ceil(10 * 1.12) = ceil(11.2) = 12
    (44.0, 10, 10, 9, "ratio 0.880"),         # ratio 0.88 -> ceil(8.8) = 9
    (200.0, 4, 4, 40, "ratio 10.000"),        # ratio 200/20 = 10 -> ceil(4 * 10) = 40
    (0.0, 4, 4, 0, "ratio 0.000"),            # no load -> 0 (bounds raise it later)
    # in service differs from the set capacity: ratio on what serves (8 -> cap 40),
    # 42 / 40 = 1.05 is within tolerance -> answer the set capacity (10), as HPA does
    (42.0, 8, 10, 10, "within tolerance"),
    # 60 / 40 = 1.5 -> ceil(8 * 1.5) = 12
    (60.0, 8, 10, 12, "ratio 1.500"),
    # from zero serving the ratio is undefined: size directly, ceil(12 / 5) = 3
    (12.0, 0, 0, 3, "from zero"),
])
def test_reactive_rule_is_hpa_ceil_of_serving_times_ratio_with_a_tolerance_band(
        observed, serving, current, expected, why):
    cfg = horizontal()
    value, message = S.hpa_desired(observed, serving, current, cfg, 0.5, 0.1)
    assert value == expected
    assert why in message


def test_reactive_rule_with_zero_tolerance_acts_on_any_deviation():
    # ratio 51 / 50 = 1.02 -> ceil(10 * 1.02) = ceil(10.2) = 11
    assert S.hpa_desired(51.0, 10, 10, horizontal(), 0.5, 0.0)[0] == 11


def test_reactive_rule_on_a_ladder_picks_the_rung_that_carries_the_observation():
    cfg = vertical()  # rungs carry 1, 2, 4 at u 0.5
    # serving medium (2 at target): 2.1 / 2 = 1.05 within tolerance -> current rung
    assert S.hpa_desired(2.1, 1, 1, cfg, 0.5, 0.1)[0] == 1
    # 3.0 / 2 = 1.5 -> smallest rung carrying 3 at 0.5 is large (4)
    assert S.hpa_desired(3.0, 1, 1, cfg, 0.5, 0.1)[0] == 2
    # 0.5 / 2 = 0.25 -> small (1 >= 0.5)
    assert S.hpa_desired(0.5, 1, 1, cfg, 0.5, 0.1)[0] == 0
    # rung 0 is a real capacity on a ladder, not "from zero": 1.05 / 1 within tolerance
    assert S.hpa_desired(1.05, 0, 0, cfg, 0.5, 0.1)[0] == 0


# ------------------------------------------------------------------- stabilization
def recs(*pairs):
    """(seconds before NOW, recommendation) -> history."""
    return tuple((NOW - sec(ago), r) for ago, r in pairs)


@pytest.mark.parametrize("value, current, history, up_s, down_s, expected, reason", [
    # down window 300 s, history 8 (100 s ago), 6 (200 s ago); new rec 4:
    # downCeil = max(8, 6, 4) = 8; start from current 10, lower to 8
    (4, 10, recs((100, 8), (200, 6)), 0, 300, 8, "ScaleDownStabilized"),
    # the 9 from 400 s ago is outside the 300 s window: downCeil = max(5, 4) = 5
    (4, 10, recs((400, 9), (100, 5)), 0, 300, 5, "ScaleDownStabilized"),
    # exactly 300 s ago is outside (HPA keeps records strictly after now - window)
    (4, 10, recs((300, 9)), 0, 300, 4, "Stable"),
    # downCeil above current: 12 in the window, current 10 -> hold 10 (never raised by downCeil)
    (4, 10, recs((100, 12)), 0, 300, 10, "ScaleDownStabilized"),
    # scale-up with up window 0: upFloor = the new rec alone -> 15 at once
    (15, 10, recs((10, 3)), 0, 300, 15, "Stable"),
    # up window 120 s: upFloor = min(12, 14, 15) = 12; start 10, raise to 12
    (15, 10, recs((60, 12), (30, 14)), 120, 300, 12, "ScaleUpStabilized"),
    # up window 120 s, the 2 is 200 s old (outside): upFloor = min(13, 15) = 13
    (15, 10, recs((200, 2), (60, 13)), 120, 300, 13, "ScaleUpStabilized"),
    # upFloor below current: stays at current 10 (never lowered by upFloor)
    (15, 10, recs((60, 8)), 120, 300, 10, "ScaleUpStabilized"),
    # same as current: stands
    (10, 10, recs((60, 3), (30, 20)), 120, 300, 10, "Stable"),
    # down window 0: the new rec alone -> 4 at once
    (4, 10, recs((10, 9)), 0, 0, 4, "Stable"),
])
def test_stabilization_starts_from_current_raises_to_up_floor_and_lowers_to_down_ceil(
        value, current, history, up_s, down_s, expected, reason):
    step = S.stabilize(value, current, NOW, history, sec(up_s), sec(down_s))
    assert (step.name, step.value, step.reason) == ("stabilization", expected, reason)
    assert step.changed == (expected != value)


# ---------------------------------------------------------------------- rate limits
def ev(ago: float, frm: int, to: int) -> ScaleEvent:
    return ScaleEvent(NOW - sec(ago), frm, to)


@pytest.mark.parametrize("current, events, period_s, expected", [
    # no events: periodStart = current
    (10, (), 60, 10),
    # +4 30 s ago within 60 s: 10 - 4 + 0 = 6
    (10, (ev(30, 6, 10),), 60, 6),
    # the +4 is 90 s old, outside 60 s: 10
    (10, (ev(90, 6, 10),), 60, 10),
    # exactly one period old is outside: 10
    (10, (ev(60, 6, 10),), 60, 10),
    # +4 then -2, both in period: 10 - 4 + 2 = 8
    (10, (ev(40, 8, 12), ev(20, 12, 10)), 60, 8),
    # -5 in period: 5 - 0 + 5 = 10
    (5, (ev(10, 10, 5),), 60, 10),
])
def test_period_start_is_current_minus_added_plus_removed_within_the_period(current, events, period_s, expected):
    assert S.period_start(current, events, NOW, sec(period_s)) == expected


def rl(*policies, select="Max") -> RateLimit:
    return RateLimit(policies=tuple(RatePolicy(type=t, value=v, period=sec(p)) for t, v, p in policies),
                     select=select)


@pytest.mark.parametrize("value, current, events, up, down, expected, reason", [
    # Pods 4 / 60 s: periodStart 10 -> up limit 14
    (20, 10, (), rl(("Pods", 4, 60)), HPA_SCALE_DOWN, 14, "ScaleUpLimit"),
    # Percent 50 / 60 s: ceil(10 * 1.5) = 15
    (20, 10, (), rl(("Percent", 50, 60)), HPA_SCALE_DOWN, 15, "ScaleUpLimit"),
    # Percent 15: ceil(10 * 1.15) = ceil(11.5) = 12 (rounded up so it can always grow)
    (20, 10, (), rl(("Percent", 15, 60)), HPA_SCALE_DOWN, 12, "ScaleUpLimit"),
    # Max of (Pods 4 -> 14, Percent 50 -> 15) = 15
    (20, 10, (), rl(("Pods", 4, 60), ("Percent", 50, 60)), HPA_SCALE_DOWN, 15, "ScaleUpLimit"),
    # Min of the same = 14
    (20, 10, (), rl(("Pods", 4, 60), ("Percent", 50, 60), select="Min"), HPA_SCALE_DOWN, 14, "ScaleUpLimit"),
    # Disabled: no scale-up at all -> current
    (20, 10, (), rl(("Pods", 4, 60), select="Disabled"), HPA_SCALE_DOWN, 10, "ScaleUpLimit"),
    # +3 already within the period: periodStart 10 - 3 = 7, Pods 4 -> 11
    (20, 10, (ev(30, 7, 10),), rl(("Pods", 4, 60)), HPA_SCALE_DOWN, 11, "ScaleUpLimit"),
    # +6 already: periodStart 4 -> limit 8 < current: not below current (no scale-up now)
    (20, 10, (ev(30, 4, 10),), rl(("Pods", 4, 60)), HPA_SCALE_DOWN, 10, "ScaleUpLimit"),
    # inside the limit: unchanged
    (13, 10, (), rl(("Pods", 4, 60)), HPA_SCALE_DOWN, 13, "WithinRateLimit"),
    # HPA default up: max(ceil(10 * 2) = 20, 10 + 4 = 14) = 20
    (50, 10, (), HPA_SCALE_UP, HPA_SCALE_DOWN, 20, "ScaleUpLimit"),
    # HPA default up from 1: max(2, 5) = 5 (the Pods policy wins on small counts)
    (50, 1, (), HPA_SCALE_UP, HPA_SCALE_DOWN, 5, "ScaleUpLimit"),
    # HPA default down 100 %: trunc(10 * 0) = 0 -> anything goes
    (1, 10, (), HPA_SCALE_UP, HPA_SCALE_DOWN, 1, "WithinRateLimit"),
    # down Pods 2: 10 - 2 = 8
    (3, 10, (), HPA_SCALE_UP, rl(("Pods", 2, 60)), 8, "ScaleDownLimit"),
    # down Percent 25: trunc(10 * 0.75) = trunc(7.5) = 7
    (3, 10, (), HPA_SCALE_UP, rl(("Percent", 25, 60)), 7, "ScaleDownLimit"),
    # down Max (most permissive = lowest floor) of Pods 2 -> 8, Percent 25 -> 7 = 7
    (3, 10, (), HPA_SCALE_UP, rl(("Pods", 2, 60), ("Percent", 25, 60)), 7, "ScaleDownLimit"),
    # down Min (least permissive = highest floor) = 8
    (3, 10, (), HPA_SCALE_UP, rl(("Pods", 2, 60), ("Percent", 25, 60), select="Min"), 8, "ScaleDownLimit"),
    # down Disabled -> current
    (3, 10, (), HPA_SCALE_UP, rl(("Pods", 2, 60), select="Disabled"), 10, "ScaleDownLimit"),
    # -1 already in period: periodStart 10 + 1 = 11, Pods 2 -> 9
    (3, 10, (ev(30, 11, 10),), HPA_SCALE_UP, rl(("Pods", 2, 60)), 9, "ScaleDownLimit"),
    # -3 already: periodStart 13, Pods 2 -> 11 > current: not above current (hold)
    (3, 10, (ev(30, 13, 10),), HPA_SCALE_UP, rl(("Pods", 2, 60)), 10, "ScaleDownLimit"),
    # a scale-up event does not count against scale-down... but shifts periodStart:
    # +2 in period: periodStart 8, Pods 2 -> 6, so 7 passes
    (7, 10, (ev(30, 8, 10),), HPA_SCALE_UP, rl(("Pods", 2, 60)), 7, "WithinRateLimit"),
    # each policy uses its own period: Pods 1/60 s (+2 30 s ago -> start 8 -> 9),
    # Pods 3/10 s (event outside -> start 10 -> 13); Max = 13
    (20, 10, (ev(30, 8, 10),), rl(("Pods", 1, 60), ("Pods", 3, 10)), HPA_SCALE_DOWN, 13, "ScaleUpLimit"),
    # no policies: no limit
    (100, 10, (), rl(), HPA_SCALE_DOWN, 100, "WithinRateLimit"),
    # unchanged value: nothing to limit
    (10, 10, (), rl(("Pods", 1, 60), select="Disabled"), rl(("Pods", 1, 60), select="Disabled"),
     10, "WithinRateLimit"),
])
def test_rate_limit_follows_hpa_pods_percent_policies_and_select_policy(
        value, current, events, up, down, expected, reason):
    step = S.rate_limit_step(value, current, events, NOW, up, down)
    assert (step.name, step.value, step.reason) == ("rate_limit", expected, reason)


def test_hpa_default_rate_policies_are_max_of_100_percent_and_4_pods_up_and_100_percent_down():
    assert HPA_SCALE_UP.select == "Max"
    assert {(p.type, p.value, p.period) for p in HPA_SCALE_UP.policies} == {
        ("Percent", 100, sec(15)), ("Pods", 4, sec(15))}
    assert [(p.type, p.value, p.period) for p in HPA_SCALE_DOWN.policies] == [("Percent", 100, sec(15))]
    assert PolicyConfig(capacity_per_replica=1).scale_up == HPA_SCALE_UP
    assert PolicyConfig(capacity_per_replica=1).scale_down == HPA_SCALE_DOWN


# ------------------------------------------------------------------------ cooldowns
@pytest.mark.parametrize("value, current, last_up_ago, last_down_ago, after_up, after_down, expected, reason", [
    # scale-down 60 s after a scale-up with a 300 s cooldown: held
    (5, 10, 60, None, 300, 0, 10, "CooldownAfterScaleUp"),
    # 300 s after: the cooldown has run out
    (5, 10, 300, None, 300, 0, 5, "NoCooldown"),
    # scale-down 100 s after a scale-down, cooldown 200 s: held
    (5, 10, None, 100, 0, 200, 10, "CooldownAfterScaleDown"),
    (5, 10, None, 250, 0, 200, 5, "NoCooldown"),
    # a scale-up is never delayed by any cooldown
    (15, 10, 10, 10, 300, 300, 15, "NoCooldown"),
    # no events: nothing to wait for
    (5, 10, None, None, 300, 300, 5, "NoCooldown"),
    # cooldowns off (0): scale down at once
    (5, 10, 1, 1, 0, 0, 5, "NoCooldown"),
])
def test_cooldowns_block_scale_down_only(value, current, last_up_ago, last_down_ago,
                                         after_up, after_down, expected, reason):
    last_up = None if last_up_ago is None else NOW - sec(last_up_ago)
    last_down = None if last_down_ago is None else NOW - sec(last_down_ago)
    step = S.cooldown_step(value, current, NOW, last_up, last_down, sec(after_up), sec(after_down))
    assert (step.name, step.value, step.reason) == ("cooldown", expected, reason)


# --------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("value, lo, hi, expected, reason", [
    (0, 1, 10, 1, "TooFewReplicas"),
    (11, 1, 10, 10, "TooManyReplicas"),
    (1, 1, 10, 1, "WithinBounds"),
    (10, 1, 10, 10, "WithinBounds"),
    (5, 5, 5, 5, "WithinBounds"),
])
def test_bounds_clamp_to_min_and_max(value, lo, hi, expected, reason):
    step = S.bounds_step(value, lo, hi)
    assert (step.name, step.value, step.reason) == ("bounds", expected, reason)
    assert step.changed == (expected != value)


def test_default_bounds_are_1_to_100_replicas_or_the_whole_ladder():
    assert horizontal().bounds == (1, 100)
    assert vertical().bounds == (0, 2)
    assert vertical(min_replicas=1).bounds == (1, 2)
