"""Behaviour specific to the Holt-Winters and Prophet forecasters (the shared
contract is in test_forecaster_contract.py)."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from datetime import timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from engine.core.errors import InsufficientHistory
from engine.core.types import Series
from engine.core.units import from_epoch

STEP = 300
DAY = 86400 // STEP
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z


def seasonal(days: float, *, noise: float = 3.0, seed: int = 0, level: float = 100.0) -> Series:
    n = int(days * DAY)
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    y = level + 30.0 * np.sin(2 * np.pi * t / DAY) + rng.normal(0.0, noise, n)
    return Series(T0 + STEP * t.astype(np.int64), y)


def end_of(s: Series):
    return from_epoch(int(s.timestamps[-1]))


# =========================================================== Holt-Winters
statsmodels = pytest.importorskip("statsmodels")
from forecasters.holt_winters import HoltWinters, damped_sum  # noqa: E402
from tests.support import ROOT

HW_DATA = seasonal(4, seed=3)


@pytest.fixture(scope="module")
def hw() -> HoltWinters:
    f = HoltWinters(initialization="heuristic")
    f.fit(HW_DATA[: 3 * DAY])
    return f


def test_hw_update_equals_a_statsmodels_filter_with_the_same_parameters(hw):
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    f = copy.deepcopy(hw)
    new = HW_DATA[3 * DAY: 3 * DAY + 100]
    for i in range(0, 100, 7):  # in uneven chunks, as cycles deliver them
        f.update(new[i: i + 7])
    alpha, beta, gamma, phi = f.coef
    level0, trend0, seasons0 = f.initial_states
    everything = HW_DATA[: 3 * DAY + 100].values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ExponentialSmoothing(
            everything, trend="add", damped_trend=True, seasonal="add", seasonal_periods=DAY,
            initialization_method="known", initial_level=level0, initial_trend=trend0,
            initial_seasonal=seasons0,
        ).fit(smoothing_level=alpha, smoothing_trend=beta, smoothing_seasonal=gamma,
              damping_trend=phi, optimized=False)
    np.testing.assert_allclose(f._lvl[-1], ref.level[-1], rtol=1e-9)
    np.testing.assert_allclose(f._trd[-1], ref.trend[-1], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(f._s[-DAY:], ref.season[-DAY:], rtol=1e-9)
    ours = f.predict(end_of(HW_DATA[: 3 * DAY + 100]), 6, (0.5,)).point
    np.testing.assert_allclose(ours, ref.forecast(6), rtol=1e-9)


def test_hw_missing_sample_advances_with_the_models_own_forecast(hw):
    f = copy.deepcopy(hw)
    end = HW_DATA.timestamps[3 * DAY - 1]
    before = f.predict(from_epoch(int(end)), 6, (0.5,))
    f.update(Series(np.array([end + STEP]), np.array([np.nan])))
    after = f.predict(from_epoch(int(end) + STEP), 5, (0.5,))
    # the forecast of every later point is what it was: no error was absorbed
    np.testing.assert_array_equal(after.timestamps, before.timestamps[1:])
    np.testing.assert_allclose(after.point, before.point[1:], rtol=1e-12)
    # a skipped grid point (no sample at all) is the same as a NaN
    g = copy.deepcopy(hw)
    g.update(Series(np.array([end + 2 * STEP]), np.array([HW_DATA.values[3 * DAY + 1]])))
    h = copy.deepcopy(hw)
    h.update(Series(np.array([end + STEP, end + 2 * STEP]),
                    np.array([np.nan, HW_DATA.values[3 * DAY + 1]])))
    t = from_epoch(int(end) + 2 * STEP)
    np.testing.assert_allclose(g.predict(t, 3, (0.5,)).point, h.predict(t, 3, (0.5,)).point)


def test_hw_a_short_gap_between_two_samples_is_interpolated_a_long_one_is_missing(hw):
    end = int(HW_DATA.timestamps[3 * DAY - 1])
    last, nxt = float(HW_DATA.values[3 * DAY - 1]), float(HW_DATA.values[3 * DAY + 1])
    gap = copy.deepcopy(hw)
    gap.update(Series(np.array([end + 2 * STEP]), np.array([nxt])))
    mid = copy.deepcopy(hw)
    mid.update(Series(np.array([end + STEP, end + 2 * STEP]), np.array([(last + nxt) / 2, nxt])))
    t = from_epoch(end + 2 * STEP)
    np.testing.assert_allclose(gap.predict(t, 3, (0.5,)).point, mid.predict(t, 3, (0.5,)).point, rtol=1e-12)
    # two hours without a sample: the model's own forecast carries the states
    far = end + 25 * STEP
    long_gap = copy.deepcopy(hw)
    long_gap.update(Series(np.array([far]), np.array([nxt])))
    nans = copy.deepcopy(hw)
    nans.update(Series(np.array([end + STEP]), np.array([np.nan])))
    for k in range(2, 25):
        nans.update(Series(np.array([end + k * STEP]), np.array([np.nan])))
    nans.update(Series(np.array([far]), np.array([nxt])))
    np.testing.assert_allclose(long_gap.predict(from_epoch(far), 3, (0.5,)).point,
                               nans.predict(from_epoch(far), 3, (0.5,)).point, rtol=1e-9)


def test_hw_on_a_metric_sampled_every_30_minutes_on_a_5_minute_grid_stays_sane():
    """nyc_taxi (30-minute samples) on the engine's 5-minute grid: five grid
    points in six are missing. Each sample's whole jump went into level and
    trend at once, and the forecast reached 1e189 (the planner's default
    blend forecasts with it)."""
    from pathlib import Path

    from engine.sources.csv import read_csv

    raw = read_csv(Path(__file__).parents[1] / "fixtures/traces/nab/nyc_taxi.csv")
    grid = raw.regular(timedelta(minutes=5))
    n = 8 * DAY
    f = HoltWinters({"initialization": "heuristic"})
    f.fit(grid[:n])
    top = float(np.nanmax(grid.values))
    ours, flat = [], []
    for o in range(n, n + 2 * DAY, 6):
        h = grid[: o + 1]
        f.update(h)
        fc = f.predict(from_epoch(int(h.timestamps[-1])), 24, (0.5, 0.9))
        assert fc.quantiles[0.9].max() < 2 * top
        fut = grid.values[o + 1: o + 25]
        seen = np.isfinite(fut)
        ours.append(np.mean(np.abs(fc.point[seen] - fut[seen])))
        flat.append(np.mean(np.abs(h.values[-1] - fut[seen])))
    assert np.mean(ours) < np.mean(flat)


def test_hw_forecast_is_level_plus_damped_trend_plus_season(hw):
    n = hw._y.size
    level, trend = hw._lvl[-1], hw._trd[-1]
    phi = hw.coef[3]
    fc = hw.predict(end_of(HW_DATA[: 3 * DAY]), 4, (0.5,))
    # hw._s[i] is the seasonal state of path index i - m; for a < m steps
    # ahead of the last index n - 1 the season is the one at n - 1 + a - m
    expected = [level + damped_sum(phi, a) * trend + hw._s[n - 1 + a] for a in range(1, 5)]
    np.testing.assert_allclose(fc.point, expected)
    assert damped_sum(0.5, 3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert damped_sum(1.0, 3) == 3.0


def test_hw_band_comes_from_its_own_errors():
    quiet, noisy = HoltWinters(initialization="heuristic"), HoltWinters(initialization="heuristic")
    quiet.fit(seasonal(3, noise=1.0, seed=5))
    noisy.fit(seasonal(3, noise=5.0, seed=5))
    def half_width(f):
        fc = f.predict(end_of(seasonal(3)), 3, (0.5, 0.9))
        return fc.quantiles[0.9] - fc.quantiles[0.5]
    q, n = half_width(quiet), half_width(noisy)
    # 0.9 quantile of N(0, sd) errors is 1.28 sd
    assert np.all((q > 0.8) & (q < 2.5))
    np.testing.assert_allclose(n / q, 5.0, rtol=0.3)


def test_hw_fits_only_the_fit_window():
    data = seasonal(6, seed=7)
    windowed = HoltWinters(initialization="heuristic", fit_window=timedelta(days=3))
    windowed.fit(data)
    alone = HoltWinters(initialization="heuristic", fit_window=timedelta(days=30))
    alone.fit(data[3 * DAY:])
    np.testing.assert_allclose(windowed.coef, alone.coef)
    np.testing.assert_allclose(windowed.predict(end_of(data), 6, (0.5,)).point,
                               alone.predict(end_of(data), 6, (0.5,)).point)


def test_hw_alpha_floor_keeps_the_level_listening():
    data = seasonal(3, noise=0.5, seed=2)
    free = HoltWinters(initialization="heuristic", min_smoothing_level=0.0)
    floored = HoltWinters(initialization="heuristic")
    free.fit(data)
    floored.fit(data)
    assert floored.coef[0] >= 0.1
    assert free.coef[0] < 0.1  # a clean sine: the free fit stops listening


def test_hw_needs_two_seasons_at_the_series_step():
    f = HoltWinters()
    with pytest.raises(InsufficientHistory, match="two seasons"):
        f.fit(seasonal(1.5))


def test_hw_params_are_validated_with_the_field_named():
    with pytest.raises(ValidationError, match="fit_window"):
        HoltWinters(fit_window=timedelta(days=1))
    with pytest.raises(ValidationError, match="min_smoothing_level"):
        HoltWinters(min_smoothing_level=1.5)
    with pytest.raises(ValidationError, match="residual_window"):
        HoltWinters(residual_window=timedelta(0))
    with pytest.raises(ValidationError, match="extra"):
        HoltWinters(alpha=0.3)


# ================================================================ Prophet
PROPHET_INSTALLED = True
try:
    import prophet  # noqa: F401
except ImportError:
    PROPHET_INSTALLED = False
needs_prophet = pytest.mark.skipif(not PROPHET_INSTALLED, reason="prophet is not installed: "
                                   "pip install 'forescale[prophet]'")

P_TRAIN = seasonal(9, seed=11)
SHIFT = 40.0


@pytest.fixture(scope="module")
def prophet_fitted():
    from forecasters.prophet_model import ProphetForecaster

    f = ProphetForecaster(uncertainty_samples=200)
    f.fit(P_TRAIN)
    return f


def _after(shift: float, n: int = 24) -> Series:
    """The next ``n`` samples of the same process, shifted by ``shift``."""
    nxt = seasonal(9 + n / DAY, seed=11)[9 * DAY:]
    return Series(nxt.timestamps, nxt.values + shift)


@needs_prophet
def test_prophet_residual_correction_fixes_a_level_shift(prophet_fitted):
    new = _after(SHIFT)
    corrected = copy.deepcopy(prophet_fitted)
    raw = copy.deepcopy(prophet_fitted)
    raw.params = raw.params.model_copy(update={"level_correction": False})
    err_c, err_r = [], []
    for i in range(len(new) - 1):
        for f in (corrected, raw):
            f.update(new[i: i + 1])
        t = from_epoch(int(new.timestamps[i]))
        actual = new.values[i + 1]
        err_c.append(abs(corrected.predict(t, 1, (0.5,)).point[0] - actual))
        err_r.append(abs(raw.predict(t, 1, (0.5,)).point[0] - actual))
    # uncorrected, Prophet misses by the whole shift; corrected, by noise
    assert np.mean(err_r) > 0.8 * SHIFT
    assert np.mean(err_c[6:]) < 0.25 * SHIFT
    assert np.mean(err_c) < 0.5 * np.mean(err_r)


@needs_prophet
def test_prophet_correction_decays_with_horizon(prophet_fitted):
    f = copy.deepcopy(prophet_fitted)
    f.update(_after(SHIFT))
    rho = f.residual_rho()
    assert 0.5 < rho <= 0.999  # a persistent shift: strongly autocorrelated
    corr = f.correction(np.arange(1, 13))
    assert np.all(corr > 0) and np.all(np.diff(corr) < 0)
    np.testing.assert_allclose(corr[1:] / corr[:-1], rho)
    assert corr[0] == pytest.approx(SHIFT, rel=0.35)

    # without a shift the residuals are noise: the correction fades at once
    g = copy.deepcopy(prophet_fitted)
    g.update(_after(0.0))
    assert g.residual_rho() < 0.5
    assert abs(g.correction(np.array([12]))[0]) < 0.5


@needs_prophet
def test_prophet_correction_counts_steps_from_the_last_valid_sample(prophet_fitted):
    f = copy.deepcopy(prophet_fitted)
    new = _after(SHIFT)
    f.update(new)
    c = f.correction(np.array([1, 2, 3]))
    f.update(Series(np.array([new.timestamps[-1] + STEP]), np.array([np.nan])))
    # one step further from the last residual (rho moves a hair: the oldest
    # residual left the window)
    np.testing.assert_allclose(f.correction(np.array([1, 2])), c[1:], rtol=5e-3)


@needs_prophet
def test_prophet_predict_is_a_cache_lookup(prophet_fitted, monkeypatch):
    f = copy.deepcopy(prophet_fitted)
    calls = []
    real = f._model.predict
    monkeypatch.setattr(f._model, "predict", lambda df, *a, **k: calls.append(len(df)) or real(df))
    f.update(_after(0.0))
    fc = f.predict(end_of(f._history), 12, (0.5, 0.9))
    assert calls == [] and np.all(np.isfinite(fc.point))
    # beyond the cached two days (a refit is overdue): Prophet is asked once,
    # and the cache is rebuilt from there
    late = from_epoch(int(P_TRAIN.timestamps[-1]) + 3 * 86400)
    fc_late = f.predict(late, 12, (0.5, 0.9))
    assert len(calls) == 1 and np.all(np.isfinite(fc_late.point))
    f.predict(late, 12, (0.5,))
    assert len(calls) == 1


@needs_prophet
def test_prophet_quantiles_scale_the_interval_with_normal_quantiles(prophet_fitted):
    from statistics import NormalDist

    fc = prophet_fitted.predict(end_of(P_TRAIN), 6, (0.5, 0.75, 0.9, 0.95))
    up90 = fc.quantiles[0.9] - fc.point
    assert np.all(up90 > 0)
    z = NormalDist().inv_cdf
    np.testing.assert_allclose(fc.quantiles[0.95] - fc.point, up90 * z(0.95) / z(0.9))
    np.testing.assert_allclose(fc.quantiles[0.75] - fc.point, up90 * z(0.75) / z(0.9))
    np.testing.assert_allclose(fc.quantiles[0.5], fc.point)
    # the interval is Prophet's own at interval_width 0.8
    assert prophet_fitted._model.interval_width == pytest.approx(0.8)


@needs_prophet
def test_prophet_seasonalities_follow_the_history_span(prophet_fitted):
    assert set(prophet_fitted._model.seasonalities) == {"daily"}  # 9 days: no weekly
    from forecasters.prophet_model import ProphetForecaster

    f = ProphetForecaster(uncertainty_samples=0)
    f.fit(seasonal(14, seed=1))  # exactly two weeks at 5 min
    assert set(f._model.seasonalities) == {"daily", "weekly"}
    short = ProphetForecaster(uncertainty_samples=0)
    short.fit(seasonal(1, seed=1))
    assert short._model.seasonalities == {}


@needs_prophet
def test_prophet_fit_is_reproducible_and_leaves_global_randomness_alone():
    from forecasters.prophet_model import ProphetForecaster

    data = seasonal(3, seed=4)
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    a = ProphetForecaster(uncertainty_samples=50)
    a.fit(data)
    assert np.random.random() == expected_next
    b = ProphetForecaster(uncertainty_samples=50)
    b.fit(data)
    fa = a.predict(end_of(data), 6, (0.9,))
    fb = b.predict(end_of(data), 6, (0.9,))
    np.testing.assert_allclose(fa.quantiles[0.9], fb.quantiles[0.9])


@needs_prophet
def test_prophet_params_are_validated_with_the_field_named():
    from forecasters.prophet_model import ProphetForecaster

    with pytest.raises(ValidationError, match="upper_quantile"):
        ProphetForecaster(upper_quantile=0.4)
    with pytest.raises(ValidationError, match="uncertainty_samples"):
        ProphetForecaster(uncertainty_samples=-1)
    with pytest.raises(ValidationError, match="correction_halflife"):
        ProphetForecaster(correction_halflife=timedelta(0))


@needs_prophet
def test_prophet_and_cmdstanpy_stay_quiet(caplog):
    """No INFO lines from cmdstanpy or prophet and nothing on stderr, from a
    fresh interpreter (the import-time plotly message included)."""
    code = textwrap.dedent("""
        import numpy as np
        from engine.core.types import Series
        from forecasters import create
        n = 3 * 288
        t = np.arange(n)
        s = Series(1704067200 + 300 * t, 100 + 30 * np.sin(2 * np.pi * t / 288))
        f = create("prophet", {"uncertainty_samples": 10})
        f.fit(s)
        f.predict(s.end, 3, (0.5, 0.9))
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert out.stderr == ""

    # in this process too, with the root logger at DEBUG
    from forecasters.prophet_model import ProphetForecaster

    caplog.set_level(logging.DEBUG)
    ProphetForecaster(uncertainty_samples=0).fit(seasonal(2, seed=9))
    chatty = [r for r in caplog.records
              if r.name.split(".")[0] in ("cmdstanpy", "prophet") and r.levelno < logging.WARNING]
    assert chatty == []
