"""Calendar events (policies/events.py): declared and recurring events,
public holidays, max semantics, and their effect on decide() and the
planner's schedule."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from pydantic import ValidationError

from engine.core.types import Forecast, Observation, ScalingState
from policies import PolicyConfig, decide
from policies import events as E

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=timezone.utc)  # Black Friday, 07:00 in Berlin
T0 = int(NOW.timestamp())


def cal(**kw) -> E.Calendar:
    return E.Calendar(**kw)


def flat(value=50.0, steps=72, made=NOW) -> Forecast:
    t0 = int(made.timestamp())
    pt = np.full(steps, value)
    return Forecast(made, t0 + 300 * np.arange(1, steps + 1), pt, {0.9: pt * 1.1}, "seasonal_naive")


def policy(**kw) -> PolicyConfig:
    kw.setdefault("capacity_per_replica", 10.0)
    kw.setdefault("lead_time", "10m")
    return PolicyConfig(**kw)


def state(current=8, observed=50.0) -> ScalingState:
    return ScalingState(current=current, observation=Observation(observed, NOW))


# ------------------------------------------------------------------ the calendar
def test_a_declared_event_in_local_time_and_a_weekly_one_across_daylight_saving():
    c = cal(timezone="Europe/Berlin", events=[
        {"name": "sale", "start": "2026-11-27T08:00", "end": "2026-11-27T20:00", "uplift": 1.5},
        {"name": "batch", "start": "2026-10-19T09:00", "duration": "2h", "every": "1w", "min_capacity": 12}])
    (sale,) = [o for o in c.occurrences(T0, T0 + 86400) if o.name == "sale"]
    # 08:00 CET is 07:00 UTC
    assert sale.start == int(datetime(2026, 11, 27, 7, tzinfo=timezone.utc).timestamp())
    assert sale.end - sale.start == 12 * 3600 and sale.uplift == 1.5 and sale.min_capacity is None
    # the weekly 09:00 stays 09:00 local: 07:00 UTC in summer time, 08:00 after 25 October
    span = c.occurrences(datetime(2026, 10, 18, tzinfo=timezone.utc).timestamp(),
                         datetime(2026, 11, 3, tzinfo=timezone.utc).timestamp())
    starts = [datetime.fromtimestamp(o.start, timezone.utc).strftime("%m-%d %H:%M") for o in span]
    assert starts == ["10-19 07:00", "10-26 08:00", "11-02 08:00"]
    assert c.occurrences(T0, T0) == ()


def test_an_explicit_offset_wins_over_the_calendars_timezone():
    c = cal(timezone="Europe/Berlin", events=[{"name": "x", "start": "2026-07-01T09:00+00:00", "duration": "1h",
                                               "every": "1d", "until": "2026-07-02T09:00+00:00", "uplift": 2}])
    got = c.occurrences(datetime(2026, 7, 1, tzinfo=timezone.utc).timestamp(),
                        datetime(2026, 7, 5, tzinfo=timezone.utc).timestamp())
    assert [datetime.fromtimestamp(o.start, timezone.utc).strftime("%d %H:%M") for o in got] == ["01 09:00", "02 09:00"]


def test_recurrence_stops_at_until_and_a_date_means_midnight():
    c = cal(events=[{"name": "daily", "start": "2026-01-01", "duration": "1h", "every": "1d",
                     "until": "2026-01-03", "min_capacity": 3}])
    got = c.occurrences(datetime(2025, 12, 1, tzinfo=timezone.utc).timestamp(),
                        datetime(2026, 2, 1, tzinfo=timezone.utc).timestamp())
    assert [datetime.fromtimestamp(o.start, timezone.utc).day for o in got] == [1, 2, 3]


def test_a_daily_event_on_business_days_only():
    c = cal(timezone="Asia/Shanghai", events=[{"name": "office", "start": "2026-11-23T09:00", "duration": "9h",
                                               "every": "1d", "weekdays": ["mon", "tue", "wed", "thu", "fri"],
                                               "min_capacity": 6}])
    week = c.occurrences(datetime(2026, 11, 23, tzinfo=timezone.utc).timestamp(),
                         datetime(2026, 11, 30, tzinfo=timezone.utc).timestamp())
    # Monday 23 to Friday 27 November, 09:00 in Shanghai is 01:00 UTC
    assert [datetime.fromtimestamp(o.start, timezone.utc).strftime("%a %H:%M") for o in week] == \
        ["Mon 01:00", "Tue 01:00", "Wed 01:00", "Thu 01:00", "Fri 01:00"]
    with pytest.raises(ValidationError, match="weekdays need a recurrence"):
        cal(events=[{"name": "x", "start": "2026-01-01", "duration": "1h", "weekdays": ["mon"], "uplift": 2}])


def test_public_holidays_of_a_country_are_whole_local_days():
    c = cal(timezone="America/New_York", holidays={"country": "US", "min_capacity": 20})
    july = datetime(2026, 7, 3, 12, tzinfo=timezone.utc).timestamp()
    observed, day = c.occurrences(july, july + 2 * 86400)
    # Saturday 4 July 2026, observed on Friday the 3rd: whole New York days
    assert observed.name == "Independence Day (observed) (US)" and day.name == "Independence Day (US)"
    assert observed.min_capacity == 20 and observed.end - observed.start == 86400
    assert datetime.fromtimestamp(observed.start, timezone.utc) == datetime(2026, 7, 3, 4, tzinfo=timezone.utc)
    assert day.start == observed.end
    assert c.occurrences(july + 3 * 86400, july + 4 * 86400) == ()


@pytest.mark.parametrize("bad, match", [
    ({"events": [{"name": "x", "start": "2026-01-01T00:00", "duration": "1h"}]}, "uplift or min_capacity"),
    ({"events": [{"name": "x", "start": "2026-01-01T00:00", "uplift": 2}]}, "end or duration"),
    ({"events": [{"name": "x", "start": "2026-01-01T02:00", "end": "2026-01-01T01:00", "uplift": 2}]},
     "not after start"),
    ({"events": [{"name": "x", "start": "2026-01-01", "duration": "2d", "every": "1d", "uplift": 2}]},
     "longer than it repeats"),
    ({"events": [{"name": "x", "start": "2026-01-01", "duration": "1h", "uplift": 0.5}]}, "greater than or equal to 1"),
    ({"events": [{"name": "x", "start": "2026-01-01", "duration": "1h", "uplift": 2}] * 2}, "unique"),
    ({"timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
    ({"events": [{"name": "x", "start": "2026-01-01T00:00+01:00", "duration": "1h", "every": "1d",
                  "until": "2026-02-01", "uplift": 2}]}, "all with or all without an offset"),
    ({"holidays": {"country": "XX", "uplift": 1.2}}, "unknown country 'XX'"),
    # a bad subdivision blamed the country
    ({"holidays": {"country": "US", "subdivision": "ZZ", "uplift": 1.2}},
     r"US has no subdivision 'ZZ' \(its subdivisions: AK, AL"),
    ({"events": [{"name": "x", "start": "2026-01-01", "duration": "0s", "uplift": 2}]},
     "'x': duration must be longer than zero"),
])
def test_bad_calendars_are_one_clear_error(bad, match):
    with pytest.raises(ValidationError, match=match):
        cal(**bad)


def test_holidays_without_the_package_name_the_extra(monkeypatch):
    E.holiday_dates.cache_clear()
    monkeypatch.setitem(sys.modules, "holidays", None)  # import holidays -> ImportError
    try:
        with pytest.raises(ValidationError, match=r"needs the holidays package: pip install 'forescale\[holidays\]'"):
            cal(holidays={"country": "DE", "uplift": 1.2})
    finally:
        E.holiday_dates.cache_clear()


# ------------------------------------------------------------------ in decide()
SALE = {"name": "black-friday", "start": "2026-11-27T00:00", "end": "2026-11-28T00:00", "uplift": 1.5}


def test_an_uplift_raises_the_decision_and_says_which_event():
    plain = decide(flat(), state(), policy(), NOW)
    raised = decide(flat(), state(), policy(calendar={"timezone": "Europe/Berlin", "events": [SALE]}), NOW)
    # q0.9 of 50 is 55 -> ceil(55 / 7) = 8; x 1.5 = 82.5 -> 12
    assert plain.desired == 8 and raised.desired == 12
    ev = next(s for s in raised.steps if s.name == "event")
    assert ev.reason == "EventUplift" and ev.changed
    assert "'black-friday'" in ev.message and "x1.5" in ev.message and "55 -> 82.5" in ev.message
    assert "2026-11-27 00:00 CET" in ev.message
    assert not any(s.name == "event" for s in plain.steps)
    # the next day nothing is raised
    later = NOW + timedelta(days=1)
    nxt = decide(flat(made=later), ScalingState(current=8, observation=Observation(50.0, later)),
                 policy(calendar={"events": [SALE]}), later)
    assert nxt.desired == 8 and not any(s.name == "event" for s in nxt.steps)


def test_overlapping_events_combine_with_max_semantics():
    c = {"events": [SALE, {**SALE, "name": "bigger", "uplift": 2.0},
                    {"name": "floor-a", "start": "2026-11-27T05:00", "duration": "4h", "min_capacity": 15},
                    {"name": "floor-b", "start": "2026-11-27T05:00", "duration": "4h", "min_capacity": 20}]}
    d = decide(flat(), state(current=20), policy(calendar=c), NOW)
    steps = {s.reason: s for s in d.steps if s.name == "event"}
    assert "'bigger'" in steps["EventUplift"].message  # x2: 110 -> 16 replicas
    assert "'floor-b'" in steps["EventMinCapacity"].message and d.desired == 20


def test_a_min_capacity_holds_from_a_lead_window_before_until_the_end_and_in_fallback():
    c = {"events": [{"name": "launch", "start": "2026-11-27T06:15", "duration": "1h", "min_capacity": 30}]}
    cfg = policy(calendar=c, max_replicas=25)
    # 06:00: the window [06:10, 06:15] reaches 06:15: the launch's capacity is ordered now
    d = decide(flat(), state(current=20), cfg, NOW)
    ev = next(s for s in d.steps if s.name == "event")
    assert ev.reason == "EventMinCapacity" and ev.value == 30 and "raised from 8" in ev.message
    assert d.desired == 25  # the configured bounds still win
    # 05:55: not yet (the window ends 06:10)
    early = NOW - timedelta(minutes=5)
    d0 = decide(flat(made=early), ScalingState(current=8, observation=Observation(50.0, early)), cfg, early)
    assert d0.desired == 8
    # no forecast at all (fallback, reactive kind): the floor still holds
    fb = decide(None, state(current=20), cfg, NOW, forecast_error="down")
    assert fb.fallback and fb.desired == 25
    reactive = decide(None, state(current=20), policy(kind="reactive", calendar=c), NOW)
    assert reactive.desired == 30
    # a declared minimum is a bound while it lasts: the HPA's rate limit
    # (100 % per 15 s: 16 from 8) does not delay it
    d8 = decide(flat(), state(), cfg, NOW)
    assert d8.desired == 25 and [s.name for s in d8.steps][-3:] == ["cooldown", "event", "bounds"]
    # inside the event, near its end: a scale-down waits until it is over
    late = datetime(2026, 11, 27, 7, 14, tzinfo=timezone.utc)
    quiet = ScalingState(current=30, observation=Observation(10.0, late))
    assert decide(flat(10.0, made=late), quiet, policy(calendar=c), late).desired == 30


# ------------------------------------------------------------------ the planner
def plan_policy(**kw) -> PolicyConfig:
    return policy(kind="plan", lead_time="25m", reactive={"target_utilization": 0.95},
                  plan={"horizon": "6h", "change_cost": 1.0, "min_change_interval": 0, "min_lifetime": 0,
                        "headroom_cap": None, "slo": {"saturated_fraction": 0.005}}, **kw)


def test_the_planner_orders_an_event_floor_a_lead_time_ahead():
    # an event 2 h ahead (08:00 UTC) for an hour, at least 15 replicas
    c = {"events": [{"name": "promo", "start": "2026-11-27T08:00", "duration": "1h", "min_capacity": 15}]}
    fc = flat(steps=72)
    plain = decide(fc, state(current=7), plan_policy(), NOW)
    d = decide(fc, state(current=7), plan_policy(calendar=c), NOW)
    assert plain.schedule is not None and d.schedule is not None
    at = {s.at: s for s in d.schedule.steps}
    start = datetime(2026, 11, 27, 8, tzinfo=timezone.utc)
    # the planned floor at that time, ordered 25 minutes before it serves
    assert all(at[start + timedelta(minutes=m)].capacity >= 15 for m in range(0, 60, 5))
    assert at[start].order_at == start - timedelta(minutes=25)
    assert max(s.capacity for s in plain.schedule.steps) < 15
    assert d.desired == plain.desired  # nothing is ordered for it yet
    ev = next(s for s in d.steps if s.name == "event")
    assert ev.reason == "EventMinCapacityMet" and "'promo'" in ev.message and "ordered at 2026-11-27 07:35" in ev.message
    assert d.step("plan").message.startswith("hold 7: event 'promo' from 08:00 UTC needs 15, ordered at 07:35 UTC")
    # at 07:35 the plan's first step serves at 08:00: it is ordered now, and says why
    t = start - timedelta(minutes=25)
    later = decide(flat(made=t), ScalingState(current=7, observation=Observation(50.0, t)),
                   plan_policy(calendar=c), t)
    assert later.desired >= 15
    ev = next(s for s in later.steps if s.name == "event")
    assert ev.reason == "EventMinCapacity" and ev.changed
    # at 07:30, with a burst forecast at 07:50-07:55 (70: more than 7 carry, less than 15), the plan
    # buys the event's 15 from its first step, 07:55: the event is named as why ("now"), not
    # "ordered at 07:35 (later in the plan)", nor the burst's median as what needs 15
    t = start - timedelta(minutes=30)
    pt = np.full(72, 50.0)
    pt[4:6] = 70.0
    burst = Forecast(t, int(t.timestamp()) + 300 * np.arange(1, 73), pt, {0.9: pt * 1.1}, "seasonal_naive")
    early = decide(burst, ScalingState(current=7, observation=Observation(50.0, t)), plan_policy(calendar=c), t)
    planned = [s for s in early.schedule.steps if not s.fixed]
    assert early.desired == 15 and planned[0].at == start - timedelta(minutes=5) and planned[0].capacity == 15
    ev = next(s for s in early.steps if s.name == "event")
    assert ev.reason == "EventMinCapacity" and "needs at least 15 from 2026-11-27 08:00 UTC: the first step " \
        "orders it now (serving from 2026-11-27 07:55 UTC)" in ev.message, ev.message
    assert early.step("plan").message.startswith("scale up to 15: event 'promo' needs at least 15 from 08:00 UTC; "
                                                 "serves from 07:55 UTC"), early.step("plan").message
    # the uplift reaches the plan's demand too
    up = decide(fc, state(current=7), plan_policy(calendar={"events": [{**SALE, "uplift": 2.0}]}), NOW)
    assert up.schedule is not None
    assert up.schedule.steps[-1].demand == pytest.approx(2 * plain.schedule.steps[-1].demand)
