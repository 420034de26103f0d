"""Conformal quantile calibration: a forecaster's levels shifted by their own
recent errors reach their nominal coverage, through the engine's cycle."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from engine.calibration import QuantileCalibrator, conformal_offset
from engine.config import Calibration, ForecasterConfig, PluginSection, TargetConfig
from engine.core.types import Forecast, ScalingState, Series
from engine.core.units import from_epoch
from engine.cycle import TargetRunner
from policies.config import PolicyConfig
from tests.support.forecasters import registered, scaled_bands

T0 = 1_700_000_000 - (1_700_000_000 % 300)


#: persistence with every level 5 % below its point: a median too low and
#: an upper band that is no band at all
NoBand = scaled_bands("no_band", 0.95)


@pytest.fixture(autouse=True)
def _registered():
    with registered(no_band=NoBand):
        yield


def _series(days: float = 4) -> Series:
    n = int(days * 288)
    rng = np.random.default_rng(1)
    t = np.arange(n)
    v = 200 + 60 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 8, n)
    return Series(T0 + 300 * t, v, "web")


def test_conformal_offset_by_hand():
    e = np.arange(1.0, 20.0)  # 19 errors: 1..19
    assert conformal_offset(e, 0.5) == 10.0
    assert conformal_offset(e, 0.9) == 18.0  # ceil(20 * 0.9) = 18th smallest
    assert conformal_offset(e, 0.99) == 19.0  # capped at the largest
    assert conformal_offset(e, 0.1) == 2.0  # floor(20 * 0.1) = 2nd smallest


def _coverage(calibration: Calibration | None, levels=(0.5, 0.9)):
    target = TargetConfig(
        name="web", source=PluginSection(type="csv", path="-"),
        forecaster=ForecasterConfig(name="no_band", quantiles=levels, calibration=calibration),
        policy=PolicyConfig(capacity_per_replica=10, max_replicas=100, max_staleness=timedelta(minutes=15)))
    runner = TargetRunner(target)
    s = _series()
    state = ScalingState(current=25)
    hits = {q: [] for q in levels}
    demand = []
    for i in range(300, len(s) - 2):
        out = runner.step(s[: i + 1], state, from_epoch(s.timestamps[i]))
        state = out.state.after(out.decision, keep=runner.keep)
        if i >= len(s) - 288:  # the last day, once calibrated
            actual = s.values[i + 2]  # two steps (10 min) ahead: the lead time
            for q in levels:
                hits[q].append(actual <= out.forecast.quantiles[q][1])
            demand.append(out.decision.forecast_demand)
    return {q: float(np.mean(h)) for q, h in hits.items()}, float(np.median(demand))


def test_calibration_brings_each_level_to_its_nominal_coverage_and_the_policy_sizes_from_it():
    raw, raw_demand = _coverage(None)
    cal, cal_demand = _coverage(Calibration(window=timedelta(days=1), min_samples=48))
    assert raw[0.9] < 0.3 and raw[0.5] < 0.3  # every level 5 % low: almost never covers
    assert abs(cal[0.5] - 0.5) <= 0.08 and abs(cal[0.9] - 0.9) <= 0.05
    # the policy sizes from the calibrated upper level: more demand than the raw band
    assert cal_demand > raw_demand * 1.05


def test_no_correction_until_an_anchor_has_min_samples():
    c = QuantileCalibrator((0.5, 0.9), 300, timedelta(days=1), min_samples=5)
    s = _series(days=0.1)
    ts = s.timestamps
    fc = Forecast(from_epoch(int(ts[0])), ts[1:4], np.full(3, 1.0), {0.5: np.full(3, 1.0), 0.9: np.full(3, 1.0)},
                  "x")
    assert c.calibrate(s[:1], fc) is fc  # nothing recorded yet
    for i in range(6):  # one pair per anchor 1..3 per origin, actuals ~200 against a forecast of 1
        o = int(ts[i])
        f = Forecast(from_epoch(o), ts[i + 1: i + 4], np.full(3, 1.0),
                     {0.5: np.full(3, 1.0), 0.9: np.full(3, 1.0)}, "x")
        c.calibrate(s[: i + 1], f)
    c.observe(s[:10])
    out = c.apply(Forecast(from_epoch(int(ts[9])), ts[10:13], np.full(3, 1.0),
                           {0.5: np.full(3, 1.0), 0.9: np.full(3, 1.0)}, "x"))
    assert (out.quantiles[0.9] >= out.quantiles[0.5]).all() and (out.quantiles[0.5] > 100).all()
    assert (out.point == 1.0).all()  # the point is not touched


def test_calibration_config_errors_name_the_field():
    from engine.config import parse_config
    from engine.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"targets\[0\]\.forecaster\.calibration\.min_samples"):
        parse_config({"targets": [{"name": "w", "source": {"type": "csv", "path": "x"},
                                   "forecaster": {"calibration": {"min_samples": 0}},
                                   "policy": {"capacity_per_replica": 1}}]})
    cfg = parse_config({"targets": [{"name": "w", "source": {"type": "csv", "path": "x"},
                                     "forecaster": {"calibration": {"window": "2d"}},
                                     "policy": {"capacity_per_replica": 1}}]})
    assert cfg.targets[0].forecaster.calibration == Calibration(window=timedelta(days=2))


def test_the_backtest_replays_calibration_and_sizes_from_the_calibrated_band():
    """MSTL's 0.9 interval on a real RDS CPU trace is too wide (covers 0.97);
    calibrated in the backtest it covers about 0.9 and the policy, sizing
    from it, pays less for about the same violations."""
    pytest.importorskip("statsforecast", reason="mstl needs pip install 'forescale[statsforecast]'")
    from engine.backtest import DEFAULT_POLICY, run_backtest
    from engine.sources.csv import read_csv
    from tests.support import TRACES

    s = read_csv(TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv")
    policy = {**DEFAULT_POLICY, "margin": {"quantile": 0.9, "conformal": False}}  # size from the 0.9 level
    runs = {}
    for cal in (None, Calibration()):
        r = run_backtest(s, policy=policy, forecaster=ForecasterConfig(name="mstl", calibration=cal), trace="e47b3b")
        runs[cal is not None] = list(r.runs.values())[-1].metrics
    raw, cal = runs[False], runs[True]
    assert raw["coverage"] > 0.95 and abs(cal["coverage"] - 0.9) < 0.02
    assert cal["mase"] == raw["mase"]  # the point is not touched
    assert cal["cost_vs_oracle"] < raw["cost_vs_oracle"] - 0.02
    assert cal["violation_fraction"] <= raw["violation_fraction"] + 0.001


# ------------------------------------------------------- pairs across a restart
def _calibrated_live(tmp_path, store):
    from tests.support.live import Platform, build_live, target_dict, write_config, write_trace

    trace = tmp_path / "web.csv"
    if not trace.exists():
        write_trace(trace, _series(days=1.5).values)
        write_config(tmp_path / "c.yaml", [target_dict(
            "web", trace, mode="observe",
            forecaster={"name": "no_band", "history": "1d", "refit_every": "1h", "quantiles": [0.5, 0.9],
                        "calibration": {"window": "1d", "min_samples": 12}})])
    return build_live(tmp_path / "c.yaml", store, Platform(capacity=25))


def _copy(store, path):
    import sqlite3

    from engine.store import Store

    dst = sqlite3.connect(path)
    store.db.backup(dst)
    dst.close()
    return Store(path)


def test_a_restarted_target_calibrates_its_first_forecasts_with_the_same_offsets(tmp_path):
    """The calibration pairs live in the state store: a target restarted on
    the stopped one's state file (a new LiveTarget, as a new daemon process
    builds it) forecasts exactly as the one that kept running, forecasts
    made before the restart meeting actuals observed after it; a target
    started on a state without them forecasts the raw, uncalibrated band."""
    from engine.store import Store
    from tests.support.live import STEP, T0

    start = T0 + 300 * STEP
    kept = _calibrated_live(tmp_path, Store(tmp_path / "kept.db"))
    cycles = 6 * QuantileCalibrator.REFRESH_STEPS  # the offsets are recomputed at the cycle after
    for k in range(cycles):
        kept.run(start + k * STEP)
    restarted = _calibrated_live(tmp_path, _copy(kept.store, tmp_path / "restarted.db"))
    fresh = _calibrated_live(tmp_path, Store(tmp_path / "fresh.db"))
    assert restarted.store.calibration_pairs("web", "no_band", since=0) == \
        kept.store.calibration_pairs("web", "no_band", since=0)
    for k in range(cycles, cycles + 8):
        a, b, c = (live.run(start + k * STEP) for live in (kept, restarted, fresh))
        for q in (0.5, 0.9):
            assert np.array_equal(a.forecast.quantiles[q], b.forecast.quantiles[q])
        if k == cycles:
            # the calibration moved the band (every raw level is 5 % low) ...
            assert (a.forecast.quantiles[0.5] > c.forecast.quantiles[0.5]).all()
            # ... and the one started without the pairs forecasts it raw
            assert np.allclose(c.forecast.quantiles[0.9], 0.95 * c.forecast.point)
    for live in (kept, restarted, fresh):
        live.store.close()


# ------------------------------------------------ adaptive conformal inference
def test_adapted_level_by_hand():
    from engine.calibration import adapted_level

    covered = np.array([0.0, 0.0, 1.0])  # missed twice, then covered
    assert adapted_level(0.9, covered, 0.0) == 0.9  # off: the level itself
    assert adapted_level(0.9, covered, 0.01) == pytest.approx(0.9 + 0.01 * (0.9 + 0.9 - 0.1))
    # clipped at the top of ADAPTED_RANGE on the way (0.99, 1.08), then stepping down from there
    assert adapted_level(0.9, covered, 0.1) == pytest.approx(0.999 + 0.1 * (0.9 - 1))
    assert adapted_level(0.5, np.ones(100), 0.1) == 0.001  # always covered: falls to the bottom


def _one_lead_run(adaptive: float, levels=(0.8, 0.9, 0.95), days: float = 2, window_days: float = 1):
    """A flat forecast of 100 against actuals 100 + noise whose spread doubles
    halfway; the calibrated levels' realized coverage over the second half."""
    n = int(days * 288)
    rng = np.random.default_rng(3)
    v = 100 + rng.normal(0, 1, n) * np.where(np.arange(n) < n // 2, 5.0, 10.0)
    ts = T0 + 300 * np.arange(n)
    s = Series(ts, v, "x")
    c = QuantileCalibrator(levels, 300, timedelta(days=window_days), 24, adaptive, anchors=(1,))
    hits = {q: [] for q in levels}
    for i in range(n - 1):
        fc = Forecast(from_epoch(int(ts[i])), ts[i + 1: i + 2], np.full(1, 100.0),
                      {q: np.full(1, 100.0) for q in levels}, "x")
        out = c.calibrate(s[: i + 1], fc)
        if i + 1 >= n // 2:
            for q in levels:
                hits[q].append(v[i + 1] <= out.quantiles[q][0])
    return {q: float(np.mean(h)) for q, h in hits.items()}


def test_adaptive_calibration_keeps_coverage_when_the_error_spread_doubles():
    """Over the day after the errors' spread doubles, the fixed one-day
    window still holds the narrow errors and under-covers (0.72 / 0.82 / 0.89
    for 0.8 / 0.9 / 0.95); adaptive conformal inference (gamma 0.02 per pair)
    raises each level's share and covers within 0.01 of nominal."""
    fixed, adaptive = _one_lead_run(0.0), _one_lead_run(0.02)
    for q in (0.8, 0.9):
        assert q - fixed[q] > 0.07
    assert 0.95 - fixed[0.95] > 0.05
    for q, c in adaptive.items():
        assert abs(c - q) <= 0.01, (q, c)


def test_without_adaptive_the_offsets_are_each_levels_own_conformal_quantile():
    """gamma 0 is the split-conformal calibration as it was: every offset is
    conformal_offset of the window's errors at the level itself, and nothing
    is kept of what was handed out."""
    levels = (0.5, 0.9)
    c = QuantileCalibrator(levels, 300, timedelta(hours=6), 12, anchors=(1, 2))
    s = _series(days=1)
    ts = s.timestamps
    for i in range(200):
        fc = Forecast(from_epoch(int(ts[i])), ts[i + 1: i + 3], np.full(2, 200.0),
                      {q: np.full(2, 200.0 + 10 * (q - 0.5)) for q in levels}, "x")
        c.calibrate(s[: i + 1], fc)
    c.observe(s[:202])
    now = int(ts[201])
    assert c._handed is None
    offs = c.offsets(now)
    for a in (1, 2):
        actual, by_level = c._pairs[a].quantile_pairs(now - 6 * 3600)
        for q in levels:
            assert offs[a][q] == conformal_offset(actual - by_level[q], q)


def test_in_flight_divides_the_step_by_the_pairs_waiting_at_each_lead():
    """Pairs every step: at a one-step lead none waits (the full step), at a
    12-step lead 12 forecasts are out when one is made: a twelfth of it."""
    s = _series(days=1)
    ts = s.timestamps
    adapted, pairs = {}, {}
    for in_flight in (False, True):
        # min_samples never reached: the levels handed out stay at 0, every pair a miss
        c = QuantileCalibrator((0.9,), 300, timedelta(days=1), 10**6, 0.005, anchors=(1, 12), in_flight=in_flight)
        for i in range(150):
            fc = Forecast(from_epoch(int(ts[i])), ts[i + 1: i + 13], np.full(12, 0.0), {0.9: np.full(12, 0.0)}, "x")
            c.calibrate(s[: i + 1], fc)
        adapted[in_flight] = c.adapted_levels(int(ts[149]))
        pairs = {a: c._handed[a].n for a in (1, 12)}
    assert pairs == {1: 149, 12: 149 - 11}
    for a in (1, 12):  # up gamma * 0.9 a miss, to the cap
        assert adapted[False][a][0.9] == 0.999
    assert adapted[True][1][0.9] == 0.999
    assert adapted[True][12][0.9] == pytest.approx(0.9 + 138 * 0.005 * 0.9 / 12, abs=1e-9)
