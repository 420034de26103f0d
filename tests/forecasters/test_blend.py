"""``blend``: two forecasters averaged with a weight that changes with the lead."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from pydantic import ValidationError

import forecasters
from engine.core.types import Series
from engine.core.units import from_epoch

T0 = 1_704_067_200


def _series(days: int = 3) -> Series:
    n = days * 288
    t = np.arange(n)
    v = 100 + 30 * np.sin(2 * np.pi * t / 288) + np.random.default_rng(2).normal(0, 3, n)
    return Series(T0 + 300 * t, v, "web")


def test_each_lead_is_the_weighted_average_of_the_members_point_and_levels():
    s = _series()
    params = {"members": [{"name": "persistence"}, {"name": "seasonal_naive"}],
              "weights": {"10m": 1.0, "1h": 0.0}}
    b = forecasters.create("blend", params)
    b.fit(s)
    now = from_epoch(int(s.timestamps[-1]))
    fc = b.predict(now, 24, (0.5, 0.9))
    p, sn = forecasters.create("persistence"), forecasters.create("seasonal_naive")
    p.fit(s), sn.fit(s)
    a, c = p.predict(now, 24, (0.5, 0.9)), sn.predict(now, 24, (0.5, 0.9))
    lead_min = np.arange(1, 25) * 5
    w = np.clip((60 - lead_min) / 50, 0, 1)  # 1 up to 10 min, 0 from 1 h, linear between
    np.testing.assert_allclose(fc.point, w * a.point + (1 - w) * c.point)
    for q in (0.5, 0.9):
        np.testing.assert_allclose(fc.quantiles[q], w * a.quantiles[q] + (1 - w) * c.quantiles[q])
    assert (fc.quantiles[0.9] >= fc.quantiles[0.5]).all()
    np.testing.assert_allclose(fc.point[:2], a.point[:2])  # persistence alone up to 10 min
    np.testing.assert_allclose(fc.point[11:], c.point[11:])  # seasonal naive alone from 1 h
    assert fc.model == "blend" and fc.model_version.startswith("blend:persistence:")


def test_a_target_forecasts_with_a_blend_from_its_config():
    from engine.config import parse_config

    cfg = parse_config({"targets": [{"name": "w", "source": {"type": "csv", "path": "x"},
                                     "forecaster": {"name": "blend", "params": {
                                         "members": [{"name": "seasonal_persistence"}, {"name": "seasonal_naive"}],
                                         "weights": {"1h": 1.0, "6h": 0.4}}},
                                     "policy": {"capacity_per_replica": 1}}]})
    p = cfg.targets[0].forecaster.params
    assert p.weights == {timedelta(hours=1): 1.0, timedelta(hours=6): 0.4}


SP_HW = {"members": [{"name": "seasonal_persistence"}, {"name": "holt_winters"}], "weights": {"0s": 0.5}}


def test_a_member_short_of_history_sits_out_until_a_refit_on_enough():
    # 36 h: seasonal persistence has its day, Holt-Winters needs two
    s36, s3d = _series(2), _series(3)
    s36 = s36[: 36 * 12]
    b = forecasters.create("blend", SP_HW)
    b.fit(s36)
    now = from_epoch(int(s36.timestamps[-1]))
    sp = forecasters.create("seasonal_persistence")
    sp.fit(s36)
    alone, ref = b.predict(now, 12, (0.5, 0.9)), sp.predict(now, 12, (0.5, 0.9))
    np.testing.assert_allclose(alone.point, ref.point)
    np.testing.assert_allclose(alone.quantiles[0.9], ref.quantiles[0.9])
    assert alone.model == "blend" and "holt_winters:unfitted" in alone.model_version
    # updated as between refits: still seasonal persistence alone, on the new samples
    b.update(s3d[: 40 * 12])
    sp.update(s3d[: 40 * 12])
    later = from_epoch(int(s3d.timestamps[40 * 12 - 1]))
    np.testing.assert_allclose(b.predict(later, 12).point, sp.predict(later, 12).point)
    # the next refit has two days: both members, half and half
    b.fit(s3d)
    hw = forecasters.create("holt_winters")
    sp.fit(s3d), hw.fit(s3d)
    end = from_epoch(int(s3d.timestamps[-1]))
    np.testing.assert_allclose(b.predict(end, 12).point,
                               0.5 * sp.predict(end, 12).point + 0.5 * hw.predict(end, 12).point)
    assert "unfitted" not in b.version


def test_both_members_short_raise_the_shorter_need():
    from engine.core.errors import InsufficientHistory

    # one day of 5-minute data: Holt-Winters needs two seasons, of a day and of a week
    b = forecasters.create("blend", {"members": [{"name": "holt_winters", "params": {"season": "7d"}},
                                                 {"name": "holt_winters"}]})
    with pytest.raises(InsufficientHistory) as exc:
        b.fit(_series(1))
    assert not b.fitted and not any(m.fitted for m in b.models)
    assert exc.value.need == 2 * 288  # the daily one's need, the shorter


@pytest.mark.parametrize("params, field", [
    ({"weights": {"1h": 1.5}}, "weights"),
    ({"weights": {}}, "weights"),
    ({"members": [{"name": "blend"}, {"name": "persistence"}]}, "members"),
    ({"members": [{"name": "persistence"}]}, "members"),
])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(ValidationError, match=field):
        forecasters.registry.get("blend").Params(**params)
