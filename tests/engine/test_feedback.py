"""Predicted versus actual: every forecast point stored and its actual filled
in later; the ``forescale accuracy`` table and plot; conformal headroom
reaching its under-forecast target in a backtest on shared traces; the lead
time learned from recorded actuation delays."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest

from engine import cli
from engine.backtest import Scenario, run_backtest
from engine.feedback import conformal_headroom
from engine.sources.csv import read_csv
from engine.store import Store
from engine.core.types import ActuationResult
from engine.core.units import to_epoch

from tests.support.live import STEP, T0, Platform, build_live, target_dict, write_config, write_trace
from tests.support import TRACES


# a ramp: +1 per 5 min. Persistence forecasts the last value, so the error
# at h steps ahead is exactly -h (forecast - actual).
RAMP = [10.0 + i for i in range(80)]


def run_ramp(tmp_path, cycles: int, *, past=lambda k: 0, **over):
    """``cycles`` cycles of persistence on the ramp from T0 + 30 steps,
    cycle ``k`` ``past(k)`` seconds past the grid (a daemon's cycles run a
    few seconds late)."""
    trace = write_trace(tmp_path / "ramp.csv", RAMP)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe", **over)])
    store = Store(tmp_path / "state.db")
    live = build_live(cfg, store, Platform(capacity=5))
    start = T0 + 30 * STEP
    results = [live.run(start + k * STEP + timedelta(seconds=past(k))) for k in range(cycles)]
    return cfg, store, live, results, start


def test_every_forecast_point_is_stored_and_its_actual_filled_in_later(tmp_path):
    cfg, store, live, results, start = run_ramp(tmp_path, 12)
    rows = store.forecast_records("web", with_actual=False)
    assert len(rows) == 12 * 2  # lead 5 m + hold 5 m = two points per cycle
    made = {r["made_at"] for r in rows}
    assert made == {to_epoch(start + k * STEP) for k in range(12)}
    filled = [r for r in rows if r["actual"] is not None]
    pending = [r for r in rows if r["actual"] is None]
    # everything up to the last cycle's time has its actual; what lies
    # after it waits (the last cycle's two points, the one before's second)
    assert sorted(r["ts"] for r in pending) == [to_epoch(start + 12 * STEP)] * 2 + [to_epoch(start + 13 * STEP)]
    for r in filled:
        i = (r["ts"] - to_epoch(T0)) // 300
        assert r["actual"] == RAMP[i]
        assert r["actual"] - r["point"] == r["horizon_s"] // 300  # persistence on a ramp
    store.close()


def test_the_accuracy_table_groups_by_steps_ahead_when_cycles_run_off_the_grid(tmp_path):
    """A daemon's cycle runs a few seconds past the grid (its first tick at
    :08): its points lie 292 s and 592 s after it. They are the 1st and 2nd
    step ahead, one row each, labelled as configured (5m, 10m), not split
    into rows by the second and floored to 4m and 9m."""
    from engine.accuracy import accuracy_table

    _, store, *_ = run_ramp(tmp_path, 20, past=lambda k: 8 + k % 3)  # :08, :09, :10 past the grid
    assert {r["horizon_s"] for r in store.forecast_records("web")} >= {292, 591, 590}
    rows = {r["horizon"]: r for r in accuracy_table(store, "web")}
    store.close()
    assert set(rows) == {"5m", "10m"} and rows["5m"]["horizon_s"] == 300 and rows["10m"]["horizon_s"] == 600
    assert rows["5m"]["mae"] == pytest.approx(1.0) and rows["10m"]["mae"] == pytest.approx(2.0)


def test_right_after_a_start_the_one_actual_is_at_its_step_not_at_its_seconds(tmp_path):
    """One scored time only (the second cycle after a start 42 s past the
    grid): the table printed a '42s' row; it is the first step, 5m."""
    from engine.accuracy import accuracy_table

    _, store, *_ = run_ramp(tmp_path, 2, past=lambda k: 258)  # 42 s before the next grid point
    rows = accuracy_table(store, "web")
    store.close()
    assert [r["horizon"] for r in rows] == ["5m"] and rows[0]["n"] == 1


def test_the_live_gauges_score_the_lead_windows_steps_when_cycles_run_off_the_grid(tmp_path):
    """Off the grid (a cycle at :08) the lead window's points lie 292 s and
    592 s ahead. The gauges (and the conformal headroom) pooled raw seconds
    in [300, 600]: only the 2nd step, MAE 2.0 where the window's two steps
    score 1.5; with cycles at :18 and a 10-minute lead they missed step 10."""
    from engine.accuracy import accuracy_table, live_accuracy

    cfg, store, live, results, start = run_ramp(tmp_path, 20, past=lambda k: 8)
    res = results[-1]

    def both_steps() -> float:  # the table's two rows pooled: errors 1 and 2, by their counts
        rows = {r["horizon"]: r for r in accuracy_table(store, "web")}
        n1, n2 = rows["5m"]["n"], rows["10m"]["n"]
        return (n1 * 1.0 + n2 * 2.0) / (n1 + n2)

    acc = live_accuracy(live.runner.feedback, live.history, live.target, res.now, lead=res.window)
    assert 1.4 < acc["mae"] < 1.6 and acc["mae"] == pytest.approx(both_steps())
    # a restart loads the same pairs from the store
    again = build_live(cfg, store, Platform(capacity=5))
    res = again.run(start + 20 * STEP + timedelta(seconds=8))
    acc = live_accuracy(again.runner.feedback, again.history, again.target, res.now, lead=res.window)
    assert acc["mae"] == pytest.approx(both_steps())
    store.close()


def test_the_same_forecasts_score_the_same_mase_whatever_the_window(tmp_path):
    """MASE's scale came from the cached samples of the window asked (plus a
    day): with five days of history cached and one hour of forecasts,
    ``--window 3d`` and ``7d`` scored the same pairs 0.336 and 0.523."""
    from engine.accuracy import accuracy_table

    rng = np.random.default_rng(3)
    k = np.arange(6 * 288)
    values = 100 + 40 * np.sin(2 * np.pi * k / 288) + rng.normal(0, 5, k.size) + 30 * (k > 3 * 288)
    trace = write_trace(tmp_path / "daily.csv", list(values))
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe",
                                                         forecaster={"name": "persistence", "history": "5d"})])
    store = Store(tmp_path / "state.db")
    live = build_live(cfg, store, Platform(capacity=5))
    start = T0 + (6 * 288 - 14) * STEP
    for i in range(12):
        assert live.run(start + i * STEP).ok
    tables = {w: {r["horizon"]: r for r in accuracy_table(store, "web", window=timedelta(days=w))} for w in (1, 3, 7)}
    store.close()
    for h in ("5m", "10m"):
        one, three, seven = (tables[w][h] for w in (1, 3, 7))
        assert one["n"] == three["n"] == seven["n"] and one["mae"] == three["mae"] == seven["mae"]
        assert one["mase"] == pytest.approx(three["mase"]) == pytest.approx(seven["mase"])


def test_accuracy_table_and_plot(tmp_path, capsys):
    cfg, store, live, results, start = run_ramp(tmp_path, 20)
    store.close()
    assert cli.main(["accuracy", "--config", str(cfg), "--json"]) == 0
    rows = {r["horizon"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"5m", "10m"}
    assert rows["5m"]["mae"] == pytest.approx(1.0) and rows["5m"]["bias"] == pytest.approx(-1.0)
    assert rows["10m"]["mae"] == pytest.approx(2.0) and rows["10m"]["bias"] == pytest.approx(-2.0)
    assert rows["5m"]["n"] == 19 and rows["10m"]["n"] == 18
    with Store(tmp_path / "state.db") as s:
        actual = np.array([r["actual"] for r in s.forecast_records("web", horizon_s=300)])
    # MAPE and sMAPE are ratios, as the Prometheus gauges export them
    assert rows["5m"]["mape"] == pytest.approx(float(np.mean(1 / actual)))
    assert rows["5m"]["near_zero_share"] == 0.0
    assert 0.0 <= rows["5m"]["coverage"] <= 1.0
    png = tmp_path / "acc.png"
    assert cli.main(["accuracy", "--config", str(cfg), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["target", "horizon", "n", "mae", "mape%", "smape%", "mase", "bias", "coverage"]
    assert lines[1].split()[:4] == ["web", "5m", "19", "1"]
    # printed in percent
    assert float(lines[1].split()[4]) == pytest.approx(100 * rows["5m"]["mape"], abs=0.006)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_conformal_headroom_quantile_hits_the_rate_on_exchangeable_errors():
    rng = np.random.default_rng(3)
    point = np.full(4000, 100.0)
    actual = point * (1 + rng.normal(0, 0.2, 4000))
    h = conformal_headroom(actual[:2000], point[:2000], 0.05, 48)
    under = np.mean(actual[2000:] > point[2000:] * (1 + h))
    assert abs(under - 0.05) < 0.015
    assert conformal_headroom(actual[:10], point[:10], 0.05, 48) is None


def test_live_conformal_headroom_comes_from_the_stored_errors(tmp_path):
    cfg, store, live, results, start = run_ramp(
        tmp_path, 16, policy={"margin": {"quantile": None, "conformal": True, "conformal_min_samples": 10,
                                         "conformal_target": 0.05}})
    reasons = [r.decision.step("margin").reason for r in results]
    assert reasons[0] == "ForecastPoint" and reasons[-1] == "ConformalHeadroom"
    # on the ramp every relative error is (h steps) / point: the headroom
    # is the largest of them over the window, i.e. the under-forecast is covered
    last = results[-1]
    assert last.decision.step("margin").value > last.decision.step("forecast").value
    store.close()


@pytest.mark.parametrize("trace", ["nab/ec2_cpu_utilization_5f5533.csv", "nab/rds_cpu_utilization_e47b3b.csv"])
def test_conformal_margin_converges_to_its_under_forecast_target_in_a_backtest(trace):
    path = TRACES / trace
    policy = {
        "target_utilization": 0.8,
        "margin": {"quantile": 0.9, "conformal": True, "conformal_target": 0.05, "cap": None,
                   "conformal_window": "3d", "conformal_min_samples": 48},
        "stabilization": {"scale_up": "0s", "scale_down": "5m"},
        "scale_up": {"policies": []}, "scale_down": {"policies": []},
    }
    result = run_backtest(read_csv(path), scenario=Scenario(), policy=policy, trace=trace)
    # coverage of point * (1 + headroom) at the lead time over the scored days
    under = 1.0 - result.runs["predictive"].metrics["coverage"]
    assert abs(under - 0.05) <= 0.02, under


# ------------------------------------------------------------ lead time
def test_learned_lead_time_is_the_p90_of_recorded_delays(tmp_path):
    trace = write_trace(tmp_path / "load.csv", [100.0] * 40)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, policy={"learn_lead_time": True})])
    store = Store(tmp_path / "state.db")
    delays = [60, 120, 180, 240, 300, 360, 420, 480, 540, 900]
    for i, s in enumerate(delays):
        store.record_actuation("web", f"d{i}", T0 + i * STEP, ActuationResult(3, 3, True, timedelta(seconds=s)))
    store.record_actuation("web", "unverified", T0, ActuationResult(3, 2, False, timedelta(seconds=5000)))
    live = build_live(cfg, store, Platform(capacity=20))
    res = live.run(T0 + 30 * STEP)
    assert res.decision.extra["lead_time_s"] == pytest.approx(float(np.percentile(delays, 90)))
    assert "now+0:09:36" in res.decision.step("forecast").message
    store.close()


def test_actuation_delays_are_recorded_and_used_only_when_asked(tmp_path):
    """``apply`` returns once the platform accepted; the delay is measured on
    later cycles, from the acceptance to the first cycle that saw the new
    capacity serving: 12 min on the platform is first seen by the third
    5-minute cycle, so 15 min are recorded."""
    from engine.core.clock import ManualClock

    trace = write_trace(tmp_path / "load.csv", [20.0] * 20 + [100.0] * 20)
    for learn, expect in ((True, 900.0), (False, 300.0)):
        d = tmp_path / str(learn)
        d.mkdir()
        cfg = write_config(d / "c.yaml", [target_dict("web", trace, policy={"learn_lead_time": learn},
                                                      actuator={"type": "dry-run", "verify_timeout": "20m"})])
        store = Store(d / "state.db")
        clock = ManualClock(T0 + 25 * STEP)
        live = build_live(cfg, store, Platform(capacity=4, delay=timedelta(minutes=12), clock=clock))
        first = live.run(clock.now())
        assert first.status == "accepted" and first.decision.extra["lead_time_s"] == 300.0
        assert store.decision(first.decision.id)["outcome"]["request_ids"] == ["req-1"]
        assert store.actuation_delays("web") == []
        for _ in range(2):  # +5, +10 min: set to 20, 4 still serving
            assert live.run(clock.advance(STEP)).status == "hold"
            assert store.decision(first.decision.id)["status"] == "accepted"
        live.run(clock.advance(STEP))  # +15 min: serving
        assert store.decision(first.decision.id)["status"] == "applied"
        assert store.actuation_delays("web") == [900.0]
        assert live.run(clock.advance(STEP)).decision.extra["lead_time_s"] == expect
        store.close()


def test_a_lead_time_learned_beyond_lead_plus_hold_still_sizes_from_the_forecast(tmp_path):
    """12 min measured against 5 m lead + 5 m hold: the forecast must reach
    now + 17 min, or every cycle falls back (ForecastTooShort)."""
    trace = write_trace(tmp_path / "load.csv", [100.0] * 40)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe",
                                                         policy={"learn_lead_time": True})])
    store = Store(tmp_path / "state.db")
    for i in range(5):
        store.record_actuation("web", f"d{i}", T0 + i * STEP, ActuationResult(3, 3, True, timedelta(minutes=12)))
    live = build_live(cfg, store, Platform(capacity=5))
    for k in range(3):
        res = live.run(T0 + (30 + k) * STEP)
        d = res.decision
        assert not d.fallback, d.steps[0].message
        assert d.extra["lead_time_s"] == 720.0 and res.window.learned
        assert d.step("forecast").reason == "ForecastWindowMax" and "now+0:12:00" in d.step("forecast").message
        assert res.forecast.timestamps[-1] - to_epoch(res.now) >= 17 * 60
        # sized from the forecast: 100 demand at 10 per replica and 50 % -> 20
        assert d.forecast_demand == 100.0 and d.step("capacity").value == 20 and d.desired == 20
    store.close()


# ------------------------------------------------------- incremental cost
def _noisy_run(tmp_path, cycles: int):
    rng = np.random.default_rng(5)
    values = 50 + 10 * np.sin(np.arange(200) / 9) + rng.normal(0, 4, 200)
    trace = write_trace(tmp_path / "noisy.csv", values)
    policy = {"margin": {"quantile": None, "conformal": True, "conformal_min_samples": 10,
                         "conformal_window": "2h", "conformal_target": 0.1}}
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe", policy=policy)])
    return cfg, Store(tmp_path / "state.db")


def _old_headroom(store, res, policy):
    """The full recomputation every cycle did before: every stored pair of
    the window, re-read."""
    m = policy.margin
    rows = store.forecast_records("web", since=res.now - m.conformal_window, horizon_s=res.window.horizons_s)
    if not rows:
        return None
    return conformal_headroom(np.array([r["actual"] for r in rows]), np.array([r["point"] for r in rows]),
                              m.conformal_target, m.conformal_min_samples)


def test_headroom_from_memory_equals_the_full_recomputation_also_after_a_restart(tmp_path):
    cfg, store = _noisy_run(tmp_path, 0)
    live = build_live(cfg, store, Platform(capacity=5))
    start = T0 + 30 * STEP
    seen = 0
    for k in range(70):
        if k == 40:  # a restart: a new process loads the pairs from the store once
            live = build_live(cfg, store, Platform(capacity=5))
        res = live.run(start + k * STEP)
        old = _old_headroom(store, res, live.policy)
        d = res.decision
        if d.step("margin").reason == "ConformalHeadroom":
            seen += 1
            assert old is not None
            assert d.step("margin").value == pytest.approx(d.step("forecast").value * (1 + max(0.0, old)), rel=1e-12)
        else:
            assert old is None
    assert seen > 50
    store.close()


def test_a_cycle_reads_no_more_from_the_store_after_many_cycles_than_after_few(tmp_path):
    cfg, store = _noisy_run(tmp_path, 0)
    live = build_live(cfg, store, Platform(capacity=5))
    start = T0 + 30 * STEP
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    per_cycle = []
    for k in range(60):
        statements.clear()
        live.run(start + k * STEP)
        per_cycle.append(list(statements))
    store.db.set_trace_callback(None)
    reads = [[s for s in c if s.lstrip().upper().startswith("SELECT")] for c in per_cycle]
    # the history and the pairs are read once, at the first cycle; later
    # cycles read only rows of fixed size (state, last decision, delays, intents)
    assert any("FROM forecasts" in s for s in reads[0])
    for c in reads[1:]:
        assert not any("FROM forecasts" in s or "FROM samples" in s for s in c), c
    assert len(reads[5]) == len(reads[-1])
    store.close()


def test_mape_is_meaningless_when_more_than_one_percent_of_actuals_are_near_zero():
    from engine.feedback import MAPE_NEAR_ZERO_SHARE, NEAR_ZERO, accuracy, mape_meaningless

    a = np.full(1000, 100.0)
    p = a * 1.1
    ok = accuracy(a, p)
    assert ok["mape"] == pytest.approx(0.1) and ok["smape"] == pytest.approx(2 * 10 / 210)
    assert not mape_meaningless(ok)
    # 1 % of the actuals at 4.9 % of the median: still read
    a[:10] = (NEAR_ZERO - 0.001) * 100
    assert accuracy(a, p)["near_zero_share"] == pytest.approx(MAPE_NEAR_ZERO_SHARE)
    assert not mape_meaningless(accuracy(a, p))
    # one more: MAPE is flagged (its terms are 20x the others there)
    a[10] = 1.0
    flagged = accuracy(a, p)
    assert flagged["near_zero_share"] > MAPE_NEAR_ZERO_SHARE and mape_meaningless(flagged)
    assert mape_meaningless(accuracy(np.zeros(10), np.ones(10)))  # no non-zero actual at all
