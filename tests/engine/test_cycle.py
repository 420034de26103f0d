"""One live cycle per mode, through a real config file, a CSV source, a real
SQLite state file and a fake platform: what each mode records and what it
changes (observe and dry-run change nothing; approve stores a plan; auto
records an intent, acts once, and records the outcome)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import yaml
import pytest

from engine.core.clock import ManualClock
from engine.store import Store
from engine.core.types import PlanStatus

from tests.support.live import STEP, T0, Platform, build_live, target_dict, write_config, write_trace

# 2 h of demand 100 (-> 20 replicas), then 2 h of demand 20 (-> 4 replicas)
VALUES = [100.0] * 24 + [20.0] * 24
NOW = T0 + 20 * STEP  # the high phase lasts three more samples


@pytest.fixture
def setup(tmp_path):
    trace = write_trace(tmp_path / "load.csv", VALUES)

    def make(mode: str, **over):
        cfg = write_config(tmp_path / f"{mode}.yaml", [target_dict("web", trace, mode=mode, **over)])
        store = Store(tmp_path / f"{mode}.db")
        platform = Platform(capacity=5)
        return build_live(cfg, store, platform), store, platform

    return make


def test_observe_mode_records_forecast_and_decision_and_changes_nothing(setup):
    live, store, platform = setup("observe")
    res = live.run(NOW)
    assert res.ok, res
    assert (res.status, res.decision.current, res.decision.desired) == ("observed", 5, 20)
    assert platform.applies == [] and platform.capacity == 5
    (rec,) = store.decisions("web")
    assert rec["status"] == "observed" and rec["mode"] == "observe"
    assert len(store.forecast_records("web", with_actual=False)) == res.forecast.horizon
    assert store.plans("web") == []
    # the state keeps the capacity as observed, not as decided
    assert store.load_state("web").current == 5


def test_dry_run_mode_logs_what_it_would_do(setup):
    live, store, platform = setup("dry-run")
    res = live.run(NOW)
    assert res.status == "dry-run"
    assert res.details["plan"]["summary"] == "fake: set capacity 5 -> 20"
    assert platform.applies == []
    (rec,) = store.decisions("web")
    assert rec["status"] == "dry-run" and rec["outcome"]["would"]["to_capacity"] == 20


def test_approve_mode_stores_a_plan_that_is_applied_only_after_approval(setup):
    from engine.plans import approve

    live, store, platform = setup("approve", plan_ttl="30m")
    res = live.run(NOW)
    assert res.status == "planned" and res.plan.status == PlanStatus.PENDING
    assert (res.plan.from_capacity, res.plan.to_capacity, res.plan.observed_capacity) == (5, 20, 5)
    assert platform.applies == []
    # the next cycle plans the same change: the open plan is kept, not replaced
    res2 = live.run(NOW + STEP)
    assert res2.plan.id == res.plan.id and platform.applies == []
    approve(store, res.plan.id, NOW + STEP + timedelta(seconds=30), identity="unix:alice", channel="cli",
            comment="ok")
    res3 = live.run(NOW + 2 * STEP)
    assert res3.details["plans_applied"] == [res.plan.id]
    assert platform.applies == [(res.plan.decision_id, 20)]
    assert store.plan(res.plan.id).status == PlanStatus.APPLIED
    rec = store.decision(res.plan.decision_id)
    assert rec["status"] == "applied" and rec["approval"]["identity"] == "unix:alice"
    assert rec["outcome"]["observed"] == 20
    # after applying, the same cycle sees 20 in service and holds
    assert res3.status == "hold" and res3.decision.current == 20


def test_auto_mode_records_intent_then_outcome_and_applies_once(setup):
    live, store, platform = setup("auto")
    seen = []
    platform.on_apply = lambda desired, p: seen.append(store.decision(f"web@{NOW:%Y-%m-%dT%H:%M:%SZ}")["status"])
    res = live.run(NOW)
    assert res.status == "applied" and res.ok
    assert seen == ["intent"]  # recorded before the actuator was called
    assert platform.applies == [(res.decision.id, 20)]
    rec = store.decision(res.decision.id)
    assert rec["status"] == "applied" and rec["outcome"]["request_ids"] == ["req-1"]
    assert store.load_state("web").current == 20
    # the next cycle holds: nothing applied twice
    res2 = live.run(NOW + STEP)
    assert res2.status == "hold" and len(platform.applies) == 1


def test_auto_mode_scales_down_when_demand_falls(setup):
    live, store, platform = setup("auto")
    clock = ManualClock(NOW)
    live.run(clock.now())
    for _ in range(5):
        res = live.run(clock.advance(STEP))
    assert res.decision.desired == 4 and platform.capacity == 4


def test_actuator_failure_is_recorded_and_not_retried_within_the_cycle(setup):
    from engine.core.errors import TransientActuatorError

    live, store, platform = setup("auto")

    def fail(desired, p):
        raise TransientActuatorError("throttled", request_ids=("r-9",))

    platform.on_apply, platform.set_first = fail, False
    res = live.run(NOW)
    assert res.status == "failed" and "throttled" in res.actuation_error
    rec = store.decision(res.decision.id)
    assert rec["status"] == "failed" and rec["outcome"]["request_ids"] == ["r-9"]
    # the state did not take the change: the next cycle tries again
    platform.on_apply = None
    res2 = live.run(NOW + STEP)
    assert res2.status == "applied" and platform.capacity == 20


def test_a_second_cycle_at_the_same_time_does_not_overwrite_the_first(setup):
    live, store, platform = setup("auto")
    live.run(NOW)
    res = live.run(NOW)
    assert res.status == "error" and "already ran at" in res.error
    assert [r["status"] for r in store.decisions("web")] == ["applied"]


def test_a_capacity_changed_outside_forescale_is_decided_from_and_corrected(setup):
    live, store, platform = setup("auto")
    first = live.run(NOW)
    assert first.status == "applied" and platform.capacity == 20
    platform.capacity = 3  # someone scaled it down by hand
    res = live.run(NOW + STEP)
    assert "observed capacity 3" in res.details["external_change"]
    assert (res.decision.current, res.decision.desired) == (3, 20)
    assert res.status == "applied" and platform.capacity == 20
    # the change by hand is no scale event of ours (rate limits, cooldowns)
    events = [(e.from_capacity, e.to_capacity) for e in store.load_state("web").events]
    assert events[-1] == (3, 20) and (20, 3) not in events


def test_an_accepted_action_that_never_serves_is_unverified_after_the_verify_timeout(setup, tmp_path):
    from engine.core.clock import ManualClock

    live, store, platform = setup("auto", actuator={"type": "dry-run", "verify_timeout": "10m"})
    clock = ManualClock(NOW)
    platform.clock, platform.delay = clock, timedelta(hours=1)
    res = live.run(clock.now())
    assert res.status == "accepted" and res.ok and platform.applies == [(res.decision.id, 20)]
    rec = store.decision(res.decision.id)
    assert rec["status"] == "accepted" and rec["outcome"]["request_ids"] == ["req-1"]
    assert store.load_state("web").current == 20  # the state took the change: no second apply
    live.run(clock.advance(STEP))
    assert store.decision(res.decision.id)["status"] == "accepted"
    later = live.run(clock.advance(STEP))  # 10 min after the acceptance
    rec = store.decision(res.decision.id)
    assert rec["status"] == "unverified" and rec["outcome"]["observed"] == {"count": 20, "ready": 5, "details": {}}
    assert "after verify_timeout" in later.details["unverified"]
    assert len(platform.applies) == 1 and store.actuation_delays("web") == []


def test_the_dry_run_actuator_is_seeded_from_the_state_and_plans_from_the_first_cycle(tmp_path):
    from actuators.dryrun import DryRunActuator

    trace = write_trace(tmp_path / "load.csv", VALUES)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="approve")])
    store = Store(tmp_path / "s.db")
    store.save_state("web", __import__("engine.core.types", fromlist=["ScalingState"]).ScalingState(current=7), NOW)
    actuator = DryRunActuator(target="web")  # no initial_capacity
    res = build_live(cfg, store, actuator).run(NOW)
    assert res.status == "planned" and res.plan.observed_capacity == 7 and actuator.read().count == 7
    assert actuator.applied == []


def test_a_stepwise_resize_is_driven_to_the_end_on_later_cycles_then_verified(tmp_path):
    """An actuator that declares ``stepwise_apply`` (a VM resize: stop, then
    modify + start) gets the same change applied again on each later cycle
    until it is in service, and only then is the decision ``applied``."""
    from tests.support.live import StepwisePlatform

    trace = write_trace(tmp_path / "load.csv", VALUES)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="auto",
                                                         actuator={"type": "dry-run", "verify_timeout": "30m"})])
    store = Store(tmp_path / "s.db")
    platform = StepwisePlatform(capacity=5)
    live = build_live(cfg, store, platform)
    clock = ManualClock(NOW)
    first = live.run(clock.now())
    assert first.status == "accepted" and platform.applies == [(first.decision.id, 20)]
    assert platform.read().count == 5  # stopping: nothing of the new size serves yet
    second = live.run(clock.advance(STEP))
    assert platform.applies[-1] == (first.decision.id, 20)  # the next step of the same change
    assert "resizing" in second.details and store.decision(first.decision.id)["status"] == "accepted"
    third = live.run(clock.advance(STEP))
    rec = store.decision(first.decision.id)
    assert rec["status"] == "applied" and platform.capacity == 20, third.details
    assert rec["outcome"]["request_ids"] == ["req-1", "req-2", "req-3"]
    assert platform.applies == [(first.decision.id, 20)] * 3  # one change, three steps, no second decision
    assert "external_change" not in second.details and "in_progress" in second.details
    fourth = live.run(clock.advance(STEP))
    assert fourth.status == "hold" and len(platform.applies) == 3


def test_a_stepwise_resize_is_not_stepped_further_once_the_target_is_switched_to_observe(tmp_path):
    from tests.support.live import StepwisePlatform

    trace = write_trace(tmp_path / "load.csv", VALUES)
    act = {"type": "dry-run", "verify_timeout": "30m"}
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="auto", actuator=act)])
    store = Store(tmp_path / "s.db")
    platform = StepwisePlatform(capacity=5)
    clock = ManualClock(NOW)
    first = build_live(cfg, store, platform).run(clock.now())
    assert first.status == "accepted" and len(platform.applies) == 1
    # a person switches the target to observe mid-resize: nothing more is written
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe", actuator=act)])
    observe = build_live(cfg, store, platform)
    for _ in range(3):
        observe.run(clock.advance(STEP))
    assert len(platform.applies) == 1 and platform.phase == 0


def test_an_approved_stepwise_resize_is_carried_to_its_end_and_verified_on_later_cycles(tmp_path):
    from engine.plans import approve
    from tests.support.live import StepwisePlatform

    trace = write_trace(tmp_path / "load.csv", VALUES)
    cfg = write_config(tmp_path / "c.yaml", [target_dict(
        "web", trace, mode="approve", plan_ttl="1h", actuator={"type": "dry-run", "verify_timeout": "30m"})])
    store = Store(tmp_path / "s.db")
    platform = StepwisePlatform(capacity=5)
    live = build_live(cfg, store, platform)
    clock = ManualClock(NOW)
    res = live.run(clock.now())
    assert res.status == "planned" and platform.applies == []
    approve(store, res.plan.id, clock.now(), identity="unix:alice", channel="cli")
    live.run(clock.advance(STEP))  # applies the plan: the first step (stop)
    assert platform.applies == [(res.decision.id, 20)]
    assert store.decision(res.decision.id)["status"] == "accepted"
    live.run(clock.advance(STEP))
    live.run(clock.advance(STEP))
    assert platform.capacity == 20 and store.decision(res.decision.id)["status"] == "applied"
    assert platform.applies == [(res.decision.id, 20)] * 3


@pytest.mark.parametrize("level", [0.95, 0.99])
def test_the_margin_sizes_from_the_quantile_it_names_though_the_forecaster_was_not_asked_for_it(tmp_path, level):
    """``margin.quantile`` outside ``forecaster.quantiles`` (default 0.5,
    0.9): the engine asks the forecaster for it too. It used to read the
    outermost level asked (0.9) and label it q0.95 / q0.99."""
    import numpy as np

    rng = np.random.default_rng(7)
    trace = write_trace(tmp_path / "noisy.csv", list(60 + rng.normal(0, 8, 48)))
    over = {"forecaster": {"name": "persistence", "history": "4h"}, "policy": {"margin": {"quantile": level}}}
    cfg = write_config(tmp_path / "m.yaml", [target_dict("web", trace, mode="dry-run", **over)])
    live = build_live(cfg, Store(tmp_path / "m.db"), Platform(capacity=5))
    res = live.run(T0 + 47 * STEP)
    assert res.ok, res
    fc = res.forecast
    assert level in fc.quantiles and fc.quantiles[level][0] > fc.quantiles[0.9][0] > fc.point[0]
    margin = next(s for s in res.decision.steps if s.name == "margin")
    # sized from the level it names: its maximum over the lead window, which
    # the forecast spans (lead time and hold, one step each)
    assert fc.horizon == 2
    assert margin.value == pytest.approx(float(fc.quantiles[level].max()))
    assert margin.value > float(fc.quantiles[0.9].max())
    assert f"q{level:g}" in margin.message


def test_a_changed_metric_source_is_not_answered_from_the_old_sources_cached_samples(tmp_path):
    """A user fixes a wrong path (or query) and runs again on the same
    state: the cache, keyed by target name only, kept serving the old
    source's samples and fetched only what was newer (sized on 89.8 where
    the new source said 898). The cache records its source now; a changed
    one drops it and the history is fetched again."""
    day = 288
    wrong = write_trace(tmp_path / "wrong.csv", [10.0] * (3 * day))
    right = write_trace(tmp_path / "right.csv", [100.0] * (3 * day))
    store = Store(tmp_path / "s.db")
    over = {"forecaster": {"name": "seasonal_naive", "params": {"season": "daily"}, "history": "2d"}}

    def cycle(trace, k):
        cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="dry-run", **over)])
        res = build_live(cfg, store, Platform(capacity=5)).run(T0 + k * STEP)  # a new process: the cache is read
        assert res.ok, res
        return res.forecast.point.max()

    k = 3 * day - 4
    assert cycle(wrong, k) == pytest.approx(10.0)
    # a day ago, by the new source, was 100: the old code forecast 10 from the cache
    assert cycle(right, k + 1) == pytest.approx(100.0)
    assert np.all(store.cached_samples("web").values == 100.0)
    assert cycle(right, k + 2) == pytest.approx(100.0)  # the same source keeps its cache

    # a cache written before its source was recorded is kept as it is
    store.db.execute("DELETE FROM sample_sources")
    assert cycle(wrong, k + 3) == pytest.approx(100.0)


def test_two_cycles_in_one_second_say_so_not_that_the_clock_went_backwards(setup):
    live, store, platform = setup("dry-run")
    assert live.run(NOW).ok
    again = live.run(NOW)
    assert not again.ok and "already ran at 2024-03-01T01:40:00Z" in again.error
    assert "backwards" not in again.error and len(store.decisions("web")) == 1
    earlier = live.run(NOW - STEP)
    assert not earlier.ok and "the clock moved backwards?" in earlier.error


def test_a_state_that_went_away_is_the_cycles_state_error_in_one_line(setup, monkeypatch, caplog):
    """A PostgreSQL server restarting: a read outside a transaction raised
    psycopg's error as sqlite3's and the log got 'cycle failed' with a whole
    traceback, the error typed sqlite3.OperationalError."""
    import logging
    import sqlite3

    live, store, platform = setup("auto")

    def gone(*a, **k):
        raise sqlite3.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(store, "decisions", gone)
    with caplog.at_level(logging.ERROR):
        res = live.run(NOW)
    assert not res.ok and res.error.startswith(f"state: state file {store.path}: server closed the connection")
    assert not [r for r in caplog.records if r.exc_info] and platform.applies == []


def test_an_hourly_target_on_fresh_data_is_not_stale(tmp_path):
    """With ``interval: 1h`` the observation is the hour's bin, labelled by
    the hour: at :48 it was 48 minutes old against the default 15 and every
    cycle fell back (StaleObservation), for good. Unstated, max_staleness is
    now at least two intervals; stated shorter than one, it is refused."""
    from engine.core.errors import ConfigError
    from engine.config import load_config

    trace = write_trace(tmp_path / "five.csv", [40.0 + (i % 12) for i in range(12 * 30)])  # 30 h of 5-minute data
    over = {"interval": "1h", "forecaster": {"name": "persistence", "history": "1d"}}
    t = target_dict("web", trace, mode="dry-run", **over)
    del t["policy"]["max_staleness"]  # the default
    cfg = write_config(tmp_path / "h.yaml", [t])
    live = build_live(cfg, Store(tmp_path / "h.db"), Platform(capacity=5))
    res = live.run(T0 + (12 * 30 - 1) * STEP + timedelta(minutes=3))  # 3 minutes after the newest sample
    assert res.ok and not res.decision.fallback, res.decision.step("data").message
    doc = yaml.safe_load(cfg.read_text())
    doc["targets"][0]["policy"]["max_staleness"] = "30m"
    cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"policy\.max_staleness \(30m\) is shorter than the interval \(1h\)"):
        load_config(cfg)
