"""The naive family's own arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from engine.core.types import Series
from engine.core.units import from_epoch
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
