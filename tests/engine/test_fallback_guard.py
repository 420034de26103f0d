"""A guard for the class of bug where prediction switches itself off:
healthy replays of a real trace must size from the forecast on all but a few
percent of cycles — through the live loop (replay source, SQLite state, a
clock that starts off the sample grid) and in the backtest. Each reports its
fallbacks by reason, so a failure names the cause."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from actuators.dryrun import DryRunActuator, DryRunConfig
from engine.backtest import DEFAULT_FORECASTER, DEFAULT_POLICY, Scenario, run_backtest
from engine.build import build_source
from engine.config import parse_config
from engine.core.clock import ManualClock
from engine.cycle import LiveTarget
from engine.sources.csv import read_csv
from engine.store import Store

from tests.support import TRACES

TRACE = TRACES / "nab" / "ec2_cpu_utilization_5f5533.csv"
MAX_FALLBACK_SHARE = 0.05


def _config(tmp_path):
    return parse_config({"state": str(tmp_path / "s.db"), "targets": [{
        "name": "ec2", "interval": "5m", "mode": "auto",
        "source": {"type": "replay", "path": str(TRACE)},
        "forecaster": {"name": DEFAULT_FORECASTER.name, "refit_every": "1d", "history": "3d"},
        "policy": {**DEFAULT_POLICY, "capacity_per_replica": 5.0, "min_replicas": 1, "max_replicas": 50,
                   "lead_time": "10m", "hold": "5m", "max_staleness": "15m"},
        "actuator": {"type": "dry-run", "initial_capacity": 10}}]})


def _share(reasons: Counter, cycles: int) -> str:
    return f"{sum(reasons.values())}/{cycles} cycles fell back: {dict(reasons)}"


@pytest.mark.parametrize("offset_s", [
    # the samples fall at :x2 and :x7; the trace starts at 14:27
    3 * 60 + 37,  # the clock 37 s past a 5-minute boundary (14:30:37, ...)
    # the clock 37 s after a sample (14:27:37): the sample's bin ends in the future
    # (the off-grid binning bug put that sample into a future bin, refused as look-ahead)
    37,
])
def test_a_live_replay_of_a_real_trace_sizes_from_the_forecast(tmp_path, offset_s):
    cfg = _config(tmp_path)
    t = cfg.targets[0]
    series = read_csv(TRACE)
    # one day of history first (the seasonal model needs a day), then one day of cycles
    clock = ManualClock(series.start + timedelta(days=1, seconds=offset_s))
    reasons: Counter = Counter()
    cycles = 288
    with Store(cfg.state_path) as store:
        live = LiveTarget(t, source=build_source(t, cfg), store=store,
                          actuator=DryRunActuator(DryRunConfig(initial_capacity=10), target="ec2"))
        for _ in range(cycles):
            res = live.run(clock.now())
            assert res.decision is not None, res.error
            if res.decision.fallback:
                reasons[res.decision.steps[0].reason] += 1
            clock.advance(t.interval)
    assert sum(reasons.values()) <= MAX_FALLBACK_SHARE * cycles, _share(reasons, cycles)


def test_a_backtest_of_a_real_trace_reports_its_fallbacks_by_reason_and_has_few():
    series = read_csv(TRACE)
    result = run_backtest(series.until(series.start + timedelta(days=4)), scenario=Scenario(),
                          policy=DEFAULT_POLICY, trace="nab/ec2_cpu_utilization_5f5533.csv (4 days)")
    run = result.runs["predictive"]
    assert sum(run.fallback_reasons.values()) == run.fallbacks
    decided = len(run.decided)
    assert run.fallbacks <= MAX_FALLBACK_SHARE * decided, _share(Counter(run.fallback_reasons), decided)
