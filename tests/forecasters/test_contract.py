"""The forecaster contract, run over every registered forecaster.

Every name in ``forecasters.registry.names()`` is tested; a forecaster whose
optional package (torch, prophet, ...) is not installed is skipped with the
install hint as the reason. A new forecaster gets the whole suite by being
registered; it may add fast parameters to :data:`FAST_PARAMS`, an accuracy bar
to :data:`MASE_BARS`, and, if it does not follow the latest level by design,
an entry in :data:`NOT_LEVEL_TRACKING`.

Fitted models are shared per module (one fit per forecaster on the seasonal
series); tests that change a model work on a deep copy.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import numpy as np
import pytest

import forecasters
from engine.core.errors import ForecastError, InsufficientHistory, PluginError
from engine.core.types import Series
from engine.core.units import from_epoch

STEP = 300  # 5 minutes
DAY = 86400 // STEP
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z, on every grid
NOISE = 3.0

#: Small, fast parameters per forecaster for this suite (defaults otherwise).
FAST_PARAMS: dict[str, dict] = {
    "holt_winters": {"initialization": "heuristic"},
    "prophet": {"uncertainty_samples": 100},
    "lstm": {"lookback": 24, "hidden_size": 16, "epochs": 6, "batch_size": 128, "max_train_steps": 1440},
    "lstm_global": {"hidden_size": 16, "head_width": 32, "epochs": 6, "origin_stride": 2},
    "auto": {"candidates": [{"name": "holt_winters", "params": {"initialization": "heuristic"}}, {"name": "persistence"}]},
}

#: MASE at 3 steps (15 min) on the synthetic daily series, relative to the
#: in-sample MAE of the one-day seasonal naive (REFERENCE.md section 3). With
#: noise sd 3 the seasonal naive's own error is about 3.4 (sd 3*sqrt(2)), and a
#: model that knows the curve exactly scores about 0.71. Measured values in
#: parentheses; each bar leaves a margin.
MASE_BARS: dict[str, float] = {
    "persistence": 1.15,  # (1.02) noise of two samples plus 15 min of curve
    "seasonal_naive": 1.10,  # (1.00) noise of two samples, by construction
    "seasonal_persistence": 1.55,  # (1.38) noise of three samples
    "holt_winters": 0.85,  # (0.73) learns the curve, averages the noise
    "prophet": 0.80,  # (0.69) a sum of sines is Prophet's own model
    "blend": 1.15,  # (1.01) by default 99 % persistence at 15 min
}
#: For a forecaster not listed above.
DEFAULT_MASE_BAR = 1.0

#: Forecasters that by design do not follow a level shift in the newest
#: samples (the freshness test checks only that their forecast moves forward).
NOT_LEVEL_TRACKING: dict[str, str] = {
    "seasonal_naive": "forecasts the value one season ago, not the latest level",
    # AICc picks alpha ~ 1e-3 on this stationary series: a new level is
    # absorbed over days, not within the hour this test gives it
    # (tests/forecasters/test_statsforecast.py checks it is absorbed)
    "autoets": "its fitted level smoothing is slow on a stationary series",
    "mstl": "its fitted level smoothing is slow on a stationary series",
}


# ----------------------------------------------------------------- the data
def seasonal_series(days: float = 10, *, noise: float = NOISE, seed: int = 0) -> Series:
    """A daily sine around 100 (amplitude 30) plus Gaussian noise, 5-min step."""
    n = int(days * DAY)
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    y = 100.0 + 30.0 * np.sin(2 * np.pi * t / DAY) + rng.normal(0.0, noise, n)
    return Series(T0 + STEP * t.astype(np.int64), y, "synthetic")


FULL = seasonal_series(10)
TRAIN = FULL[: 9 * DAY]


def _skip_reason(name: str) -> str | None:
    try:
        forecasters.registry.get(name)
    except PluginError as exc:
        cause = exc.__cause__
        if isinstance(cause, ModuleNotFoundError):
            # the optional package, or a built-in forecaster module not in
            # this build; any other import failure is a failure
            if (cause.name or "").startswith("forecasters."):
                return f"forecaster {name!r}: module {cause.name} is not in this checkout"
            return str(exc)
        raise
    return None


NAMES = forecasters.registry.names()


@pytest.fixture(params=NAMES)
def name(request) -> str:
    reason = _skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


def make(name: str):
    return forecasters.create(name, FAST_PARAMS.get(name, {}))


@lru_cache(maxsize=None)
def _fitted(name: str):
    f = make(name)
    f.fit(TRAIN)
    return f


@pytest.fixture
def fitted(name):
    """A model fitted on the first 9 days (shared; copy before changing it)."""
    return _fitted(name)


def end_of(s: Series):
    return from_epoch(int(s.timestamps[-1]))


# ---------------------------------------------------------------- the cases
def test_is_a_forecaster(name):
    f = make(name)
    assert isinstance(f, forecasters.Forecaster)
    assert f.min_history >= 1
    assert f.version.endswith(":unfitted")


def test_horizon_is_the_grid_after_start(fitted):
    start = end_of(TRAIN)
    fc = fitted.predict(start, 12, (0.1, 0.5, 0.9))
    expected = TRAIN.timestamps[-1] + STEP * np.arange(1, 13)
    np.testing.assert_array_equal(fc.timestamps, expected)
    assert fc.point.shape == (12,) and np.all(np.isfinite(fc.point))
    assert fc.model == fitted.name and fc.model_version == fitted.version

    # a start between grid points: the next grid points after it
    off_grid = from_epoch(int(TRAIN.timestamps[-1]) + 100)
    fc = fitted.predict(off_grid, 3, (0.9,))
    np.testing.assert_array_equal(fc.timestamps, expected[:3])


def test_quantiles_are_monotone(fitted):
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    fc = fitted.predict(end_of(TRAIN), 12, levels)
    assert sorted(fc.quantiles) == list(levels)
    stacked = np.vstack([fc.quantiles[q] for q in levels])
    assert np.all(np.isfinite(stacked))
    assert np.all(np.diff(stacked, axis=0) >= 0.0)
    # the band is a band: on noisy data the outer levels differ
    assert np.all(fc.quantiles[0.95] - fc.quantiles[0.05] > 0.0)


def test_predict_before_fit_is_a_forecast_error(name):
    f = make(name)
    with pytest.raises(ForecastError, match="before fit"):
        f.predict(end_of(TRAIN), 3, (0.5,))
    with pytest.raises(ForecastError, match="before fit"):
        f.update(TRAIN)


def test_too_short_history_is_insufficient_history(name):
    f = make(name)
    short = TRAIN[: max(0, f.min_history - 1)]
    with pytest.raises(InsufficientHistory):
        f.fit(short)
    # NaNs do not count as history
    padded = Series(TRAIN.timestamps[: 4 * f.min_history],
                    np.where(np.arange(4 * f.min_history) < f.min_history - 1,
                             TRAIN.values[: 4 * f.min_history], np.nan))
    with pytest.raises(InsufficientHistory):
        make(name).fit(padded)


def test_no_look_ahead(fitted):
    before_end = from_epoch(int(TRAIN.timestamps[-1]) - STEP)
    with pytest.raises(ForecastError, match="look-ahead"):
        fitted.predict(before_end, 3, (0.5,))


def test_gaps_in_history_are_tolerated(name):
    y = TRAIN.values.copy()
    rng = np.random.default_rng(1)
    y[rng.random(y.size) < 0.05] = np.nan  # scattered missing samples
    y[3 * DAY: 3 * DAY + 24] = np.nan  # a two-hour outage
    y[-2:] = np.nan  # the newest samples are late
    gappy = Series(TRAIN.timestamps, y)
    f = make(name)
    f.fit(gappy)
    fc = f.predict(end_of(gappy), 6, (0.5, 0.9))
    assert np.all(np.isfinite(fc.point)) and np.all(np.isfinite(fc.quantiles[0.9]))
    # the forecast still follows the curve: within a few noise sd of the truth
    truth = 100.0 + 30.0 * np.sin(2 * np.pi * (np.arange(6) + 9 * DAY) / DAY)
    assert np.max(np.abs(fc.point - truth)) < 8 * NOISE

    # updates with missing samples, and with a skipped grid point
    nxt = FULL[9 * DAY: 9 * DAY + 6]
    vals = nxt.values.copy()
    vals[1] = np.nan
    keep = np.arange(6) != 3
    f.update(Series(nxt.timestamps[keep], vals[keep]))
    fc = f.predict(end_of(nxt), 6, (0.5, 0.9))
    assert fc.timestamps[0] == nxt.timestamps[-1] + STEP
    assert np.all(np.isfinite(fc.point))


def test_constant_series_gives_a_flat_forecast(name):
    const = Series(TRAIN.timestamps[: 3 * DAY], np.full(3 * DAY, 42.0))
    f = make(name)
    f.fit(const)
    fc = f.predict(end_of(const), 12, (0.1, 0.5, 0.9))
    for arr in (fc.point, *fc.quantiles.values()):
        assert np.all(np.isfinite(arr))
        np.testing.assert_allclose(arr, 42.0, rtol=0.01)


def test_save_load_round_trip(fitted, tmp_path):
    path = tmp_path / f"{fitted.name}.model"
    fitted.save(path)
    loaded = type(fitted).load(path)
    assert loaded.version == fitted.version
    a = fitted.predict(end_of(TRAIN), 12, (0.1, 0.5, 0.9))
    b = loaded.predict(end_of(TRAIN), 12, (0.1, 0.5, 0.9))
    np.testing.assert_allclose(b.point, a.point, rtol=1e-9)
    for q in a.quantiles:
        np.testing.assert_allclose(b.quantiles[q], a.quantiles[q], rtol=1e-9)
    # the loaded model keeps working: it absorbs new data like the original
    nxt = FULL[: 9 * DAY + 6]
    loaded.update(nxt)
    original = copy.deepcopy(fitted)
    original.update(nxt)
    np.testing.assert_allclose(loaded.predict(end_of(nxt), 3, (0.5,)).point,
                               original.predict(end_of(nxt), 3, (0.5,)).point, rtol=1e-9)


def test_refitting_a_copy_leaves_the_model_as_it_was(fitted):
    """The engine copies a fitted model before refitting it and forecasts
    with the copy when the refit fails: the two share nothing a fit changes."""
    before = fitted.predict(end_of(TRAIN), 6, (0.5, 0.9))
    other = copy.deepcopy(fitted)
    other.fit(Series(TRAIN.timestamps, 3.0 * TRAIN.values + 500.0))
    moved = other.predict(end_of(TRAIN), 6, (0.5, 0.9))
    assert np.all(moved.point > before.point + 100)  # the copy was refitted on the other level
    after = fitted.predict(end_of(TRAIN), 6, (0.5, 0.9))
    np.testing.assert_allclose(after.point, before.point, rtol=1e-9)
    for q in before.quantiles:
        np.testing.assert_allclose(after.quantiles[q], before.quantiles[q], rtol=1e-9)


#: Size of the level shift in the freshness test: 20 noise sd, 2/3 of the
#: daily amplitude, in the newest hour.
SHIFT = 60.0


def test_update_moves_the_forecast_to_the_newest_data(fitted, name):
    new_end = 9 * DAY + 12
    plain = FULL[:new_end]
    shifted_vals = plain.values.copy()
    shifted_vals[9 * DAY:] += SHIFT
    shifted = Series(plain.timestamps, shifted_vals)

    f_plain, f_shift = copy.deepcopy(fitted), copy.deepcopy(fitted)
    f_plain.update(plain)  # the full history
    f_shift.update(shifted[9 * DAY:])  # only the new samples
    a = f_plain.predict(end_of(plain), 3, (0.5, 0.9))
    b = f_shift.predict(end_of(plain), 3, (0.5, 0.9))

    # the forecast starts after the newest sample, not after the fit's end
    assert a.timestamps[0] == plain.timestamps[-1] + STEP
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    if name in NOT_LEVEL_TRACKING:
        return
    moved = b.point[0] - a.point[0]
    assert moved > 0.5 * SHIFT, f"1-step forecast moved {moved:.1f} toward a shift of {SHIFT}"
    assert moved < 1.5 * SHIFT


def mase_at(f, horizon: int) -> float:
    """Fit on 9 days, then for every 5-min cycle of day 10: update with the
    newest sample, forecast ``horizon`` steps, score the last one."""
    y = FULL.values
    errors = []
    for i in range(9 * DAY, 10 * DAY - horizon + 1):
        hist = FULL[:i]
        if i > 9 * DAY:
            f.update(hist)
        fc = f.predict(end_of(hist), horizon, (0.5,))
        errors.append(abs(fc.point[-1] - y[i - 1 + horizon]))
    ytr = TRAIN.values
    scale = np.mean(np.abs(ytr[DAY:] - ytr[:-DAY]))
    return float(np.mean(errors) / scale)


def test_accuracy_on_a_daily_seasonal_series(fitted, name):
    mase = mase_at(copy.deepcopy(fitted), 3)
    bar = MASE_BARS.get(name, DEFAULT_MASE_BAR)
    assert mase <= bar, f"{name}: MASE at 3 steps {mase:.3f} above its bar {bar}"
