"""The naive family's own arithmetic."""

from __future__ import annotations

import warnings
from datetime import timedelta

import numpy as np
import pytest

from engine.core.types import Series
from engine.core.units import from_epoch
from forecasters.base import residual_quantiles
from forecasters.naive import Persistence, SeasonalNaive, SeasonalPersistence

T0 = 1_700_000_000 - (1_700_000_000 % 86400)
DAY = 288


def _series(values):
    return Series(T0 + 300 * np.arange(len(values)), np.asarray(values, dtype=float))


def _point(model, values, ahead=1):
    s = _series(values)
    model.fit(s)
    return model.predict(from_epoch(s.timestamps[-1]), ahead, (0.5, 0.9)).point[ahead - 1]


def test_persistence_is_the_last_value():
    assert _point(Persistence(), [1.0] * 30 + [7.0]) == 7.0


def test_seasonal_naive_is_the_value_one_day_earlier():
    v = np.arange(2 * DAY, dtype=float)
    # the next point (t = 2*DAY) one day earlier is index DAY
    assert _point(SeasonalNaive(), v) == pytest.approx(DAY)


def test_seasonal_persistence_adds_yesterdays_change():
    v = np.full(2 * DAY, 10.0)
    v[DAY] = 13.0  # yesterday, the step after "now" rose by 3
    assert _point(SeasonalPersistence(), v) == pytest.approx(13.0)


def test_the_median_of_several_seasons_ignores_a_glitch_one_season_ago():
    v = np.full(4 * DAY, 10.0)
    v[3 * DAY] = 60.0  # a glitch yesterday at the time being forecast
    assert _point(SeasonalPersistence(seasons=1), v) == pytest.approx(60.0)
    assert _point(SeasonalPersistence(seasons=3), v) == pytest.approx(10.0)


def test_residual_band_follows_the_model_in_sample():
    rng = np.random.default_rng(0)
    v = 100 + rng.normal(0, 5, 8 * DAY)
    s = _series(v)
    m = Persistence()
    m.fit(s)
    fc = m.predict(from_epoch(s.timestamps[-1]), 1, (0.5, 0.9))
    # one-step persistence error of white noise sd 5: difference sd 5*sqrt(2); q0.9 ~ 1.28 * 7.07
    assert fc.quantiles[0.9][0] - fc.point[0] == pytest.approx(1.2816 * 5 * np.sqrt(2), rel=0.15)


# ------------------------------------------- the vectorized band, against the loop it replaced
class _Loop:
    """The band as it was computed before it was vectorized: for each
    horizon alone, the in-sample forecast over a segment of the history
    (``np.nanmedian`` over the seasons' changes) and its residual quantiles."""

    def _lag(self, y, k):
        out = np.full_like(y, np.nan)
        if k < y.size:
            out[k:] = y[: y.size - k]
        return out

    def _insample_one(self, y, a):
        if isinstance(self, SeasonalPersistence):
            s = self._s
            base = self._lag(y, a)
            if a >= s:
                return base
            changes = np.vstack([self._lag(y, k * s - a) - self._lag(y, k * s)
                                 for k in range(1, self.params.seasons + 1)])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                change = np.nanmedian(changes, axis=0)
            return np.where(np.isnan(change), base, base + change)
        if isinstance(self, SeasonalNaive):
            s = self.season_steps(self.season)
            return self._lag(y, s * -(-a // s))
        return self._lag(y, a)

    def _lookback_one(self, a):
        if isinstance(self, SeasonalPersistence):
            return self._s * self.params.seasons
        if isinstance(self, SeasonalNaive):
            s = self.season_steps(self.season)
            return s * -(-a // s)
        return 0

    def _predict(self, ahead, quantiles):
        y = self._history.values
        w = self._window()
        key = len(y)
        point = np.array([self._point_for(y, int(a)) for a in ahead])
        if self._loop_key is None or key - self._loop_key >= 6:
            self._loop_key, self._loop_cache = key, {}

        def compute(a):
            seg = y[-(w + a + self._lookback_one(a)):]
            resid = seg - self._insample_one(seg, a)
            return residual_quantiles(resid[-w:], quantiles)

        for a in ahead.tolist():
            if a not in self._loop_cache:
                self._loop_cache[a] = compute(a)
        return point, {q: point + np.array([self._loop_cache[a][q] for a in ahead.tolist()]) for q in quantiles}


@pytest.mark.parametrize("trace", ["nab/rds_cpu_utilization_e47b3b.csv", "nab/nyc_taxi.csv"])
@pytest.mark.parametrize("make", [lambda: SeasonalPersistence(), lambda: SeasonalPersistence(seasons=3),
                                  lambda: SeasonalPersistence(season="weekly", residual_window="2d"),
                                  lambda: SeasonalNaive(), lambda: Persistence(residual_window="1d")],
                         ids=["sp", "sp3", "sp-weekly", "seasonal_naive", "persistence"])
def test_the_vectorized_band_is_the_per_horizon_loop_exactly_on_a_real_trace(trace, make):
    """Every point and quantile, bit for bit, over a replay of a real trace
    (nyc_taxi: 30-minute data on a 5-minute grid, so the residuals have gaps);
    the horizons 1..48 as the planner asks, and one past a day."""
    from engine.sources.csv import read_csv
    from tests.support import TRACES

    raw = read_csv(TRACES / trace).regular(timedelta(minutes=5))
    new, old = make(), make()
    old.__class__ = type("Loop" + type(old).__name__, (_Loop, type(old)), {})
    old._loop_key = None
    levels = (0.5, 0.8, 0.9, 0.95, 0.99)
    n = len(raw)
    start = DAY + 10
    checked = 0
    steps = [1, 3, 5, 37]  # inside the band's refresh (6 samples) and across it
    ts = np.cumsum([start] + [steps[i % 4] for i in range(150)])
    for t in ts[ts < n].tolist():
        hist = Series.view(raw.timestamps[:t], raw.values[:t], "x")
        if np.isnan(hist.values[-1]):
            continue
        for m in (new, old):
            m.fit(hist)
        now = from_epoch(int(hist.timestamps[-1]))
        horizon = 300 if checked % 10 == 9 else 48
        a, b = new.predict(now, horizon, levels), old.predict(now, horizon, levels)
        assert np.array_equal(a.point, b.point)
        for q in levels:
            assert np.array_equal(a.quantiles[q], b.quantiles[q]), (t, q)
        checked += 1
    assert checked > 20  # nyc_taxi: a sample every sixth step


def test_the_band_follows_a_sliding_window_of_fixed_length():
    """The live loop hands the forecaster a window of fixed length: the
    residual band must still be recomputed as new samples arrive (it was
    keyed by the history's length, so it froze at its first value)."""
    rng = np.random.default_rng(3)
    quiet = 10 + rng.normal(0, 0.1, 6 * DAY)
    noisy = 10 + rng.normal(0, 3.0, 6 * DAY)
    values = np.concatenate([quiet, noisy])
    model = SeasonalPersistence(residual_window="1d")
    n = 3 * DAY
    widths = []
    for end in (6 * DAY, 6 * DAY + 7, 8 * DAY):
        s = Series(T0 + 300 * np.arange(end - n, end), values[end - n:end])
        assert len(s) == n
        model.fit(s)
        fc = model.predict(from_epoch(int(s.timestamps[-1])), 3, (0.5, 0.9))
        widths.append(float(fc.quantiles[0.9][0] - fc.quantiles[0.5][0]))
    assert widths[2] > 5 * widths[0]  # two noisy days later the band is wide
