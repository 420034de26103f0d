"""The statsforecast baselines (autoets, mstl): beyond the contract suite,
what the wrappers add: new samples reach the forecast between refits, the
weekly season is used only when the window holds two weeks, and quantiles
come from the models' own intervals."""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("statsforecast")

from engine.core.types import Series  # noqa: E402
from engine.core.units import from_epoch  # noqa: E402
from forecasters.statsforecast_models import (  # noqa: E402
    MSTL,
    AutoETS,
    interval_levels,
    quantiles_from_intervals,
)
from tests.forecasters.test_contract import DAY, FULL, TRAIN  # noqa: E402


def end_of(s: Series):
    return from_epoch(int(s.timestamps[-1]))


@pytest.fixture(scope="module", params=[AutoETS, MSTL], ids=["autoets", "mstl"])
def fitted(request):
    f = request.param({})
    f.fit(TRAIN)
    return f


def test_a_day_of_new_level_reaches_the_forecast_without_a_refit(fitted):
    shifted = Series(FULL.timestamps, np.where(np.arange(len(FULL)) >= 9 * DAY, FULL.values + 60.0, FULL.values))
    a, b = copy.deepcopy(fitted), copy.deepcopy(fitted)
    a.update(FULL)
    b.update(shifted)
    moved = b.predict(end_of(FULL), 3, (0.5,)).point - a.predict(end_of(FULL), 3, (0.5,)).point
    # by how much is the model's own choice (its fitted smoothing: MSTL's
    # trend model moves ~2, AutoETS ~15 of the 60); without the run forward
    # it would not move at all
    assert np.all(moved > 1.0), moved
    assert a.version == fitted.version  # the same fitted model, run forward


def test_predict_reads_the_new_samples_not_the_fit_end(fitted):
    a = copy.deepcopy(fitted)
    a.update(FULL)
    later = a.predict(end_of(FULL), 3, (0.5,))
    at_fit = fitted.predict(end_of(TRAIN), 3, (0.5,))
    assert later.timestamps[0] == FULL.timestamps[-1] + 300
    assert not np.allclose(later.point, at_fit.point)


def test_weekly_season_only_with_two_weeks():
    short = MSTL({})
    short.fit(TRAIN)  # 9 days
    assert short.seasons == (DAY,)
    t = np.arange(15 * DAY)
    y = 100 + 30 * np.sin(2 * np.pi * t / DAY) + 20 * (((t // DAY) % 7) >= 5) + np.random.default_rng(1).normal(0, 2, t.size)
    long = MSTL({})
    long.fit(Series(TRAIN.timestamps[0] + 300 * t, y))
    assert long.seasons == (DAY, 7 * DAY)


def test_quantile_levels_map_to_central_intervals():
    assert interval_levels((0.5, 0.8, 0.9, 0.99, 0.1)) == {0.5: 0, 0.8: 60, 0.9: 80, 0.99: 98, 0.1: 80}
    out = {"mean": np.array([1.0]), "hi-80": np.array([2.0]), "lo-80": np.array([0.5]), "hi-98": np.array([3.0])}
    q = quantiles_from_intervals(out, (0.1, 0.5, 0.9, 0.99))
    assert (q[0.1][0], q[0.5][0], q[0.9][0], q[0.99][0]) == (0.5, 1.0, 2.0, 3.0)


def test_upper_quantiles_widen_with_the_level(fitted):
    fc = fitted.predict(end_of(TRAIN), 12, (0.5, 0.8, 0.9, 0.95, 0.99))
    widths = [float(np.mean(fc.quantiles[q] - fc.quantiles[0.5])) for q in (0.8, 0.9, 0.95, 0.99)]
    assert widths[0] > 0 and all(b > a for a, b in zip(widths, widths[1:]))
