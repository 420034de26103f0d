"""The lead window: one value per cycle, from the config and the learned
actuation delay."""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.core.types import Forecast, Observation, ScalingState
from engine.core.units import from_epoch
from policies import decide
from policies.config import PolicyConfig
from policies.window import LeadWindow, lead_window

MIN = timedelta(minutes=1)


def policy(**kw) -> PolicyConfig:
    return PolicyConfig(capacity_per_replica=10, lead_time="5m", hold="5m", **kw)


@pytest.mark.parametrize("learn, learned, lead, is_learned", [
    (False, None, 5, False),
    (False, 12 * MIN, 5, False),    # measured but not asked for: the configured lead time
    (True, None, 5, False),         # asked for but nothing measured yet
    (True, 3 * MIN, 5, False),      # a fast action never shrinks the window
    (True, 12 * MIN, 12, True),     # a slow platform widens it
])
def test_lead_window_takes_the_learned_delay_only_when_asked_and_longer(learn, learned, lead, is_learned):
    w = lead_window(policy(learn_lead_time=learn), learned)
    assert w == LeadWindow(lead * MIN, 5 * MIN, learned=is_learned)
    assert w.end == (lead + 5) * MIN
    assert w.horizons_s == (lead * 60, (lead + 5) * 60)


def test_decide_without_a_window_computes_the_same_one():
    now = from_epoch(1_700_000_100)
    ts = [1_700_000_100 + 300 * k for k in range(1, 5)]
    fc = Forecast(now, ts, [10.0, 20.0, 30.0, 40.0], {}, "test")
    state = ScalingState(current=2, observation=Observation(10.0, now), learned_lead_time=12 * MIN)
    cfg = policy(learn_lead_time=True, margin={"quantile": None})
    implicit = decide(fc, state, cfg, now)
    explicit = decide(fc, state, cfg, now, window=lead_window(cfg, 12 * MIN))
    assert implicit == explicit
    assert implicit.extra["lead_time_s"] == 720.0
    assert implicit.step("forecast").value == 30.0  # [now+12m, now+17m] holds the 15 m point only


def test_target_forecast_steps_reach_the_end_of_the_window():
    from engine.config import parse_config

    cfg = parse_config({"targets": [{"name": "web", "source": {"type": "csv", "path": "x.csv"},
                                     "policy": {"capacity_per_replica": 10, "lead_time": "5m", "hold": "5m"}}]})
    t = cfg.targets[0]
    assert t.horizon_steps == 2
    assert t.forecast_steps(lead_window(t.policy, None)) == 2
    assert t.forecast_steps(LeadWindow(12 * MIN, 5 * MIN, learned=True)) == 4  # 17 min at 5 min steps
