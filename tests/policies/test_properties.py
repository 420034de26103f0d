"""Invariants of ``decide`` over generated forecasts, states and configs.

What each property promises is what the HPA promises (REFERENCE.md section 1)
plus the asymmetric-safety rules of STYLE.md (fallback and cooldowns never
scale down). "current inside bounds" is a precondition where the configured
bounds, applied last, may legitimately move capacity the other way.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import replace as dc_replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core.types import Forecast, Observation, ScaleEvent, ScalingState
from policies import PolicyConfig, decide
from policies import steps as S

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
T0 = int(NOW.timestamp())

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

@st.composite
def rate_limits(draw):
    policies = draw(st.lists(st.fixed_dictionaries({
        "type": st.sampled_from(["Pods", "Percent"]),
        "value": st.integers(1, 200),
        "period": st.integers(1, 900),
    }), min_size=0, max_size=3))
    return {"policies": policies, "select": draw(st.sampled_from(["Max", "Max", "Min", "Disabled"]))}


@st.composite
def configs(draw):
    vertical = draw(st.integers(0, 3)) == 0  # one case in four is a vertical ladder
    kw: dict = {
        "kind": draw(st.sampled_from(["predictive", "predictive", "reactive"])),
        "target_utilization": draw(st.floats(0.2, 1.0)),
        "lead_time": draw(st.integers(0, 1200)),
        "hold": draw(st.integers(0, 900)),
        "learn_lead_time": draw(st.booleans()),
        "margin": {
            "quantile": draw(st.sampled_from([None, 0.5, 0.7, 0.9, 0.95])),
            "fraction": draw(st.sampled_from([0.0, 0.1, 0.5])),
            "conformal": draw(st.booleans()),
            "cap": draw(st.sampled_from([None, 0.0, 0.2, 1.0])),
        },
        "smoothing": {
            "kind": draw(st.sampled_from(["none", "ewma", "window"])),
            "applies_to": draw(st.sampled_from(["forecast", "recommendation"])),
            "alpha": draw(st.floats(0.05, 1.0)),
            "window": draw(st.integers(1, 5)),
            "upward": draw(st.sampled_from(["immediate", "smoothed"])),
        },
        "reactive": {
            "enabled": draw(st.booleans()),
            "tolerance": draw(st.sampled_from([0.0, 0.1, 0.3])),
            "target_utilization": draw(st.sampled_from([None, 0.5, 0.9])),
        },
        "stabilization": {"scale_up": draw(st.sampled_from([0, 0, 60, 300])),
                          "scale_down": draw(st.sampled_from([0, 60, 300, 900]))},
        "scale_up": draw(rate_limits()),
        "scale_down": draw(rate_limits()),
        "cooldown": {"after_scale_up": draw(st.sampled_from([0, 0, 60, 300, 900])),
                     "after_scale_down": draw(st.sampled_from([0, 0, 60, 300, 900]))},
        "scale_in": draw(st.sampled_from([True, True, True, False])),
        "max_staleness": draw(st.integers(60, 1800)),
    }
    if vertical:
        n = draw(st.integers(1, 6))
        caps = sorted(draw(st.sets(st.integers(1, 500), min_size=n, max_size=n)))
        kw["ladder"] = [{"name": f"r{c}", "capacity": float(c)} for c in caps]
        lo = draw(st.integers(0, n - 1))
        kw["min_replicas"] = lo
        kw["max_replicas"] = draw(st.integers(lo, n - 1))
    else:
        kw["capacity_per_replica"] = draw(st.floats(0.5, 100.0))
        lo = draw(st.integers(0, 10))
        kw["min_replicas"] = lo
        kw["max_replicas"] = draw(st.integers(lo, lo + 60))
    return PolicyConfig(**kw)


def demand_scale(config: PolicyConfig) -> float:
    """Load the largest allowed capacity carries at target: generated demand
    spans 0 .. 1.3 x this, so decisions go up, down and past the bounds."""
    return S.capacity_of(config.bounds[1] + 1, config) * config.target_utilization


@st.composite
def states(draw, config: PolicyConfig, inside_bounds: bool = True):
    lo, hi = config.bounds
    top = hi + 10
    current = draw(st.integers(lo, hi)) if inside_bounds else draw(st.integers(0, top))
    stale_s = int(config.max_staleness.total_seconds())
    obs = None
    if draw(st.integers(0, 9)) != 3:  # about one in ten: no observation
        bad = draw(st.integers(0, 19)) == 3  # about one in twenty: NaN or inf
        obs = Observation(draw(st.sampled_from([np.nan, np.inf]) if bad else st.floats(0.0, 1.3 * demand_scale(config))),
                          NOW - timedelta(seconds=draw(st.integers(-60, int(stale_s * 1.3)))))
    recs = draw(st.lists(st.tuples(st.integers(1, 1800), st.integers(0, top)), max_size=6))
    events = []
    for ago, delta in draw(st.lists(st.tuples(st.integers(1, 1800), st.integers(-20, 20).filter(bool)),
                                    max_size=5)):
        frm = draw(st.integers(max(0, -delta), top + 20))
        events.append((ago, frm, frm + delta))
    events.sort(key=lambda e: -e[0])  # oldest first, as the engine appends them
    return ScalingState(
        current=current,
        in_service=draw(st.one_of(st.none(), st.integers(0, top))),
        observation=obs,
        recommendations=tuple(sorted((NOW - timedelta(seconds=a), r) for a, r in recs)),
        events=tuple(ScaleEvent(NOW - timedelta(seconds=a), f, t) for a, f, t in events),
        smoothed=tuple(draw(st.lists(st.floats(0.0, 1.3 * demand_scale(config)), max_size=5))),
        headroom=draw(st.one_of(st.none(), st.floats(-0.5, 2.0))),
        learned_lead_time=draw(st.one_of(st.none(), st.integers(0, 1800).map(lambda s: timedelta(seconds=s)))),
    )


@st.composite
def forecasts(draw, config: PolicyConfig):
    if draw(st.integers(0, 9)) == 3:  # about one in ten: no forecast
        return None
    n = draw(st.integers(0, 24))
    step = draw(st.sampled_from([60, 300, 900]))
    scale = 1.3 * demand_scale(config)
    point = np.asarray(draw(st.lists(st.floats(0.0, scale), min_size=n, max_size=n)), dtype=float)
    spread = np.asarray(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)), dtype=float)
    if n and draw(st.integers(0, 9)) == 3:  # now and then a model returns NaN or inf somewhere
        point[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    return Forecast(made_at=NOW, timestamps=T0 + step * np.arange(1, n + 1), point=point,
                    quantiles={0.9: point * (1 + spread), 0.95: point * (1 + 1.5 * spread)}, model="gen")


@st.composite
def cases(draw, inside_bounds: bool = True):
    cfg = draw(configs())
    return draw(forecasts(cfg)), draw(states(cfg, inside_bounds)), cfg


# ------------------------------------------------------------------------ invariants
# Each takes (forecast, state, config, decision) with the state's current
# capacity inside the bounds; one generated case is checked against all of
# them (generating cases is the costly part, deciding is cheap).

def no_scale_down_inside_a_cooldown(f, s, cfg, d):
    up, down = s.last_event("up"), s.last_event("down")
    in_cooldown = (up is not None and NOW - up.at < cfg.cooldown.after_scale_up) or \
                  (down is not None and NOW - down.at < cfg.cooldown.after_scale_down)
    if in_cooldown:
        assert d.desired >= s.current, "scaled down inside a cooldown"


def stabilization_windows_bound_every_change(f, s, cfg, d):
    # HPA: a scale-down goes no lower than the highest recommendation of the
    # scale-down window, a scale-up no higher than the lowest recommendation of
    # the scale-up window (both windows include this cycle's recommendation).
    down_recs = [r for t, r in s.recommendations if t > NOW - cfg.stabilization.scale_down]
    up_recs = [r for t, r in s.recommendations if t > NOW - cfg.stabilization.scale_up]
    if d.desired < s.current:
        assert d.desired >= max(down_recs + [d.recommendation]), "scaled down inside the stabilization window"
    if d.desired > s.current:
        assert d.desired <= min(up_recs + [d.recommendation]), "scaled up past the up window's floor"


def rate_limit_is_never_exceeded(f, s, cfg, d):
    # |desired - periodStart| within each direction's limit: Pods periodStart +/- value,
    # Percent ceil(periodStart * (1 + v/100)) up / trunc(periodStart * (1 - v/100)) down,
    # combined by selectPolicy (Max most permissive, Min least, Disabled: no change),
    # and never a limit that points the other way than current (HPA).
    if d.desired > s.current:
        rl = cfg.scale_up
        assert rl.select != "Disabled", "scaled up with scale-up disabled"
        limits = []
        for p in rl.policies:
            start = S.period_start(s.current, s.events, NOW, p.period)
            limits.append(start + p.value if p.type == "Pods" else int(np.ceil(start * (1 + p.value / 100))))
        if limits:
            assert d.desired <= max(max(limits) if rl.select == "Max" else min(limits), s.current)
    if d.desired < s.current:
        rl = cfg.scale_down
        assert rl.select != "Disabled", "scaled down with scale-down disabled"
        limits = []
        for p in rl.policies:
            start = S.period_start(s.current, s.events, NOW, p.period)
            limits.append(start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100)))
        if limits:
            assert d.desired >= min(min(limits) if rl.select == "Max" else max(limits), s.current)


def fallback_never_scales_down(f, s, cfg, d):
    if d.fallback:
        assert d.desired >= s.current, "scaled down on partial data"
        assert d.step("data").changed


def fallback_exactly_when_data_is_missing_stale_or_unusable(f, s, cfg, d):
    obs_bad = s.observation is None or not np.isfinite(s.observation.value) \
        or NOW - s.observation.at > cfg.max_staleness
    if cfg.kind == "reactive":
        assert d.fallback == obs_bad
    elif obs_bad or f is None:
        assert d.fallback
    if not d.fallback:
        assert d.step("data").reason == "DataOK"


def scale_in_disabled_never_scales_down(f, s, cfg, d):
    if not cfg.scale_in:
        assert d.desired >= s.current, "scaled in with scale_in disabled"


def desired_within_bounds(f, s, cfg, d):
    lo, hi = cfg.bounds
    assert lo <= d.desired <= hi


INVARIANTS = [no_scale_down_inside_a_cooldown, stabilization_windows_bound_every_change,
              rate_limit_is_never_exceeded, fallback_never_scales_down,
              fallback_exactly_when_data_is_missing_stale_or_unusable, scale_in_disabled_never_scales_down,
              desired_within_bounds]


@SETTINGS
@given(cases(inside_bounds=False))
def test_desired_is_always_within_min_and_max_even_from_outside_them(case):
    f, s, cfg = case
    d = decide(f, s, cfg, NOW)
    desired_within_bounds(f, s, cfg, d)
    assert d.current == s.current


@SETTINGS
@given(cases())
def test_every_safety_invariant_holds(case):
    f, s, cfg = case
    d = decide(f, s, cfg, NOW)
    for invariant in INVARIANTS:
        invariant(f, s, cfg, d)


@pytest.mark.parametrize("invariant, broken", [
    # each invariant must be able to fail: a decision that breaks it is caught
    (no_scale_down_inside_a_cooldown, dict(cooldown={"after_scale_up": "5m"})),
    (stabilization_windows_bound_every_change, dict(stabilization={"scale_down": "5m"})),
    (rate_limit_is_never_exceeded, dict(scale_down={"policies": [{"type": "Pods", "value": 1}]})),
    (fallback_never_scales_down, dict()),
    (scale_in_disabled_never_scales_down, dict(scale_in=False)),
])
def test_each_invariant_rejects_a_decision_that_breaks_it(invariant, broken):
    cfg = PolicyConfig(capacity_per_replica=1.0, **broken)
    s = ScalingState(current=10, observation=None,
                     recommendations=((NOW - timedelta(seconds=60), 9),),
                     events=(ScaleEvent(NOW - timedelta(seconds=60), 9, 10),))
    d = decide(None, s, cfg, NOW)  # fallback: holds 10
    invariant(None, s, cfg, d)
    with pytest.raises(AssertionError):
        invariant(None, s, cfg, dc_replace(d, desired=2))


class _NoClock(datetime):
    @classmethod
    def now(cls, tz=None):
        raise AssertionError("decide read the clock (datetime.now)")

    @classmethod
    def utcnow(cls):
        raise AssertionError("decide read the clock (datetime.utcnow)")

    @classmethod
    def today(cls):
        raise AssertionError("decide read the clock (datetime.today)")


def _clock_read(*_a, **_k):
    raise AssertionError("decide read the clock (time module)")


@contextmanager
def no_clock():
    """Every clock a policy module could read raises while inside."""
    with pytest.MonkeyPatch.context() as mp:
        for name, mod in list(sys.modules.items()):
            if (name == "policies" or name.startswith("policies.")) and getattr(mod, "datetime", None) is datetime:
                mp.setattr(mod, "datetime", _NoClock)
        for fn in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "localtime", "gmtime"):
            mp.setattr(time, fn, _clock_read)
        yield


@SETTINGS
@given(cases())
def test_decide_is_deterministic_and_reads_no_clock(case):
    f, s, cfg = case
    first = decide(f, s, cfg, NOW)
    with no_clock():
        second = decide(f, s, cfg, NOW)
        third = decide(f, s, cfg, NOW)
    assert second == first == third
    assert second.to_json() == first.to_json()


@pytest.mark.parametrize("read", [
    lambda: S.datetime.now(timezone.utc),
    lambda: time.monotonic(),
])
def test_the_no_clock_guard_catches_a_step_that_reads_the_clock(monkeypatch, read):
    # the guard must be able to fail: a bounds step that peeks at the clock is caught
    real = S.bounds_step

    def peeking(value, lo, hi):
        read()
        return real(value, lo, hi)

    monkeypatch.setattr(S, "bounds_step", peeking)
    cfg = PolicyConfig(capacity_per_replica=1.0)
    decide(None, ScalingState(current=1), cfg, NOW)  # reading the clock is harmless outside
    with no_clock(), pytest.raises(AssertionError, match="read the clock"):
        decide(None, ScalingState(current=1), cfg, NOW)
