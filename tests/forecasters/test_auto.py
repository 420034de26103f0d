"""Model selection by rolling-origin backtest, and the quality gate."""

from __future__ import annotations

import pickle
from datetime import timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from engine.core.errors import ForecastError, InsufficientHistory
from engine.core.types import Series
from engine.core.units import from_epoch
from forecasters.auto import AutoForecaster, AutoParams, asymmetric_loss
from forecasters.quality import NO_LIVE_ERROR, REACTIVE, SWITCHED, WITHIN_BOUND, gate, live_mase, live_pinball

STEP, DAY, T0 = 300, 288, 1_704_067_200


def seasonal(days: float, noise: float = 0.5, seed: int = 0) -> Series:
    n = int(days * DAY)
    t = np.arange(n)
    y = 100 + 40 * np.sin(2 * np.pi * t / DAY) + np.random.default_rng(seed).normal(0, noise, n)
    return Series(T0 + STEP * t.astype(np.int64), y)


def walk(n: int, seed: int = 0) -> Series:
    y = 100 + np.cumsum(np.random.default_rng(seed).normal(0, 3, n))
    return Series(T0 + STEP * np.arange(n, dtype=np.int64), y)


NAIVES = [{"name": "persistence"}, {"name": "seasonal_naive"}]


def test_loss_weighs_under_forecasts_more():
    np.testing.assert_allclose(asymmetric_loss([10, 10], [8, 12], 3.0), [6.0, 2.0])


def test_picks_seasonal_naive_on_a_clean_daily_cycle_and_records_why():
    f = AutoForecaster(candidates=NAIVES, horizon_steps=6, eval_window=DAY, n_origins=24)
    s = seasonal(3)
    f.fit(s)
    assert f.choice == "seasonal_naive"
    assert f.scores["seasonal_naive"] < f.scores["persistence"]
    sel = f.selection
    assert sel["choice"] == "seasonal_naive" and set(sel["scores"]) == {"persistence", "seasonal_naive"}
    fc = f.predict(from_epoch(int(s.timestamps[-1])), 6, (0.5, 0.9))
    assert fc.model == "auto" and fc.model_version.startswith("auto:seasonal_naive:")


def test_picks_persistence_on_a_random_walk():
    f = AutoForecaster(candidates=NAIVES, horizon_steps=2, eval_window=DAY, n_origins=48)
    f.fit(walk(3 * DAY))
    assert f.choice == "persistence"


def test_under_weight_changes_the_choice():
    """A model biased low loses once under-forecasts cost more."""
    from forecasters import registry
    from forecasters.naive import Persistence

    class Low(Persistence):
        name = "low"

        def _predict(self, ahead, quantiles):
            p, q = super()._predict(ahead, quantiles)
            return p - 2.0, {k: v - 2.0 for k, v in q.items()}

    class High(Persistence):
        name = "high"

        def _predict(self, ahead, quantiles):
            p, q = super()._predict(ahead, quantiles)
            return p + 2.5, {k: v + 2.5 for k, v in q.items()}

    registry.register("low", Low)
    registry.register("high", High)
    s = Series(T0 + STEP * np.arange(400, dtype=np.int64), np.full(400, 50.0))
    cands = [{"name": "low"}, {"name": "high"}]
    sym = AutoForecaster(candidates=cands, score="asymmetric", under_weight=1.0, eval_window=100)
    sym.fit(s)
    assert sym.choice == "low"  # 2.0 off beats 2.5 off
    asym = AutoForecaster(candidates=cands, score="asymmetric", under_weight=3.0, eval_window=100)
    asym.fit(s)
    assert asym.choice == "high"  # 3 x 2.0 under is worse than 2.5 over


def test_pinball_prefers_honest_quantiles_over_the_same_median():
    """Same point forecast (persistence); one claims no uncertainty at all.
    The point-only score cannot tell them apart (a tie keeps the first);
    the pinball score picks the honest one."""
    from forecasters import registry
    from forecasters.naive import Persistence

    class Overconfident(Persistence):
        name = "overconfident"

        def _predict(self, ahead, quantiles):
            p, _ = super()._predict(ahead, quantiles)
            return p, {q: p for q in quantiles}

    registry.register("overconfident", Overconfident)
    cands = [{"name": "overconfident"}, {"name": "persistence"}]
    point = AutoForecaster(candidates=cands, score="asymmetric", horizon_steps=3, eval_window=DAY)
    point.fit(walk(3 * DAY))
    assert point.choice == "overconfident"
    f = AutoForecaster(candidates=cands, horizon_steps=3, eval_window=DAY)
    f.fit(walk(3 * DAY))
    assert f.choice == "persistence"
    assert f.selection["score"] == "pinball" and f.selection["levels"] == [0.5, 0.8, 0.9, 0.95, 0.99]
    assert f.scores["persistence"] < f.scores["overconfident"]


def test_the_scored_horizons_decide():
    """One model is right at the next step only, the other only further
    out: scoring the steps the policy reads picks the right one."""
    from forecasters import registry
    from forecasters.naive import Persistence

    def offset_at(steps_off):
        class Off(Persistence):
            name = f"off{steps_off}"

            def _predict(self, ahead, quantiles):
                p, q = super()._predict(ahead, quantiles)
                bump = np.where(np.isin(ahead, steps_off), 0.0, 10.0)
                return p + bump, {k: v + bump for k, v in q.items()}
        return Off

    registry.register("near", offset_at([1]))
    registry.register("far", offset_at([4, 5, 6]))
    s = Series(T0 + STEP * np.arange(400, dtype=np.int64), np.full(400, 50.0))
    cands = [{"name": "near"}, {"name": "far"}]
    near = AutoForecaster(candidates=cands, horizon_steps=6, horizons=(1,), eval_window=100)
    near.fit(s)
    far = AutoForecaster(candidates=cands, horizon_steps=6, horizons=(4, 6), eval_window=100)
    far.fit(s)
    assert (near.choice, far.choice) == ("near", "far")
    assert far.selection["scored_steps"] == [4, 6]
    whole = AutoForecaster(candidates=cands, horizon_steps=6, eval_window=100)
    whole.fit(s)
    assert whole.selection["scored_steps"] == [1, 2, 3, 4, 5, 6] and whole.choice == "far"


def cycle_on_a_walk(days: float, seed: int = 0) -> Series:
    """A daily cycle on a slow random walk: the value now is the best guess
    for the next few minutes, yesterday's value hours ahead."""
    n = int(days * DAY)
    t = np.arange(n)
    y = 300 + 60 * np.sin(2 * np.pi * t / DAY) + np.cumsum(np.random.default_rng(seed).normal(0, 0.4, n))
    return Series(T0 + STEP * t.astype(np.int64), y)


def test_lead_bands_choose_per_lead_and_the_stitched_forecast_beats_either_choice_alone():
    s = cycle_on_a_walk(6)
    fit_end = 4 * DAY
    kw = dict(candidates=NAIVES, horizon_steps=72, eval_window=2 * DAY, n_origins=24)
    banded = AutoForecaster(**kw, lead_bands=(2,))
    banded.fit(s[:fit_end])
    assert banded.choice == "persistence@1-2+seasonal_naive@3-72"
    bands = banded.selection["bands"]
    assert [(b["steps"], b["choice"]) for b in bands] == [([1, 2], "persistence"), ([3, 72], "seasonal_naive")]
    assert bands[0]["scores"]["persistence"] < bands[0]["scores"]["seasonal_naive"]
    assert bands[1]["scores"]["seasonal_naive"] < bands[1]["scores"]["persistence"]
    whole = AutoForecaster(**kw)
    whole.fit(s[:fit_end])
    assert whole.choice == "seasonal_naive"  # one choice: the long leads' errors dominate
    # the forecast is each band's choice's, step for step, and over the next
    # day's origins it is nearer the actuals than either model alone
    singles = {n["name"]: AutoForecaster(**{**kw, "candidates": [n]}) for n in NAIVES}
    for f in singles.values():
        f.fit(s[:fit_end])
    err = {"banded": [], **{k: [] for k in singles}}
    for o in range(fit_end, fit_end + DAY, 12):
        hist, now = s[: o + 1], from_epoch(int(s.timestamps[o]))
        for f in (banded, *singles.values()):
            f.update(hist)
        fc = banded.predict(now, 72, (0.5, 0.9))
        p, sn = (singles[k].predict(now, 72, (0.5, 0.9)) for k in ("persistence", "seasonal_naive"))
        np.testing.assert_array_equal(fc.quantiles[0.9][:2], p.quantiles[0.9][:2])
        np.testing.assert_array_equal(fc.quantiles[0.9][2:], sn.quantiles[0.9][2:])
        actual = s.values[o + 1: o + 73]
        for k, f in (("banded", fc), ("persistence", p), ("seasonal_naive", sn)):
            err[k].append(np.abs(f.point[:2] - actual[:2]).mean() + np.abs(f.point[2:] - actual[2:]).mean())
    mean = {k: float(np.mean(v)) for k, v in err.items()}
    assert mean["banded"] < min(mean["persistence"], mean["seasonal_naive"])
    assert fc.model == "auto" and fc.model_version.startswith("auto:persistence@1-2+seasonal_naive@3-72:")
    # past the last band's end the last band's choice carries on
    longer = banded.predict(now, 100, (0.9,))
    np.testing.assert_array_equal(longer.point[2:], singles["seasonal_naive"].predict(now, 100, (0.9,)).point[2:])
    # saved and loaded, it forecasts the same
    g = pickle.loads(pickle.dumps(banded))
    assert g.choice == banded.choice and g.version == banded.version
    np.testing.assert_array_equal(g.predict(now, 72, (0.9,)).quantiles[0.9], fc.quantiles[0.9])


def test_margin_keeps_the_first_candidate_unless_another_beats_it_by_that_fraction():
    s = seasonal(3)
    kw = dict(candidates=NAIVES, horizon_steps=6, eval_window=DAY, n_origins=24)
    free = AutoForecaster(**kw)
    free.fit(s)
    ratio = free.scores["seasonal_naive"] / free.scores["persistence"]
    assert free.choice == "seasonal_naive" and ratio < 0.9
    for margin, choice in ((1 - ratio - 0.02, "seasonal_naive"), (1 - ratio + 0.02, "persistence")):
        f = AutoForecaster(**kw, margin=margin)
        f.fit(s)
        assert f.choice == choice, margin
    banded = AutoForecaster(**{**kw, "lead_bands": (3,)}, margin=0.99)
    banded.fit(s)
    assert banded.choice == "persistence"  # in every band


def test_a_pickle_saved_before_lead_bands_loads_with_its_one_choice():
    f = AutoForecaster(candidates=NAIVES, horizon_steps=6, eval_window=DAY)
    s = seasonal(3)
    f.fit(s)
    state = f.__getstate__()
    blob = state.pop("_models_bytes")[f.choice]
    for k in ("_models_bytes", "_band_choice", "band_scores"):
        state.pop(k, None)
    old = AutoForecaster.__new__(AutoForecaster)
    old.__setstate__({**state, "_model_bytes": blob})
    now = from_epoch(int(s.timestamps[-1]))
    assert old.version == f.version
    np.testing.assert_array_equal(old.predict(now, 6, (0.9,)).point, f.predict(now, 6, (0.9,)).point)


def test_an_auto_target_that_states_no_horizon_scores_what_its_planner_reads():
    """Unstated, ``horizon_steps`` is the target's forecast horizon: a
    planner over 6 h picks the model that is right hours ahead, where two
    steps (the old default) picked the one right for the next ten minutes."""
    import forecasters
    from engine.config import parse_config

    def target(params: dict) -> object:
        return parse_config({"targets": [{
            "name": "web", "source": {"type": "csv", "path": "x.csv"},
            "forecaster": {"name": "auto", "params": {"candidates": NAIVES, "eval_window": 2 * DAY, "n_origins": 24,
                                                      **params}},
            "policy": {"kind": "plan", "capacity_per_replica": 10, "plan": {"horizon": "6h"}}}]}).target("web")

    s = cycle_on_a_walk(4)
    picked = {}
    for label, params in (("unstated", {}), ("two steps", {"horizon_steps": 2})):
        t = target(params)
        f = forecasters.create("auto", t.forecaster_params.model_dump())
        f.fit(s)
        picked[label] = (f.choice, f.selection["horizon_steps"])
    assert picked == {"unstated": ("seasonal_naive", 72), "two steps": ("persistence", 2)}
    with pytest.raises(Exception, match=r"lead_bands: increasing steps in 1\.\.71 .*got \[80\].*forecast horizon, "
                                        r"72 steps"):
        target({"lead_bands": [80]})


def test_lead_bands_as_durations_become_steps_of_the_targets_interval():
    from engine.config import parse_config

    def params(interval: str, bands: list) -> AutoParams:
        return parse_config({"targets": [{
            "name": "web", "interval": interval, "source": {"type": "csv", "path": "x.csv"},
            "forecaster": {"name": "auto", "params": {"lead_bands": bands}},
            "policy": {"kind": "plan", "capacity_per_replica": 10, "plan": {"horizon": "2h"}}}]}).target("web").forecaster_params

    assert params("5m", ["10m", "30m", "1h"]).bands == ((1, 2), (3, 6), (7, 12), (13, 24))
    # at 30-minute steps 10 and 30 minutes are both the first step: one band
    assert params("30m", ["10m", "30m", "1h"]).bands == ((1, 1), (2, 2), (3, 4))
    with pytest.raises(Exception, match=r"lead_bands: 3h \(36 steps of 5m\) not inside the horizon of 24 steps"):
        params("5m", ["3h"])
    with pytest.raises(Exception, match=r"lead_bands: all steps or all durations, got \[2, '30m'\]"):
        params("5m", [2, "30m"])
    with pytest.raises(ForecastError, match="are durations"):  # outside a target: no interval to count them in
        AutoForecaster(candidates=NAIVES, lead_bands=["30m"]).fit(seasonal(3))


def test_a_backtest_of_a_planner_with_banded_auto_uses_the_bands_and_its_reactive_baseline_runs():
    """The backtest's reactive baseline shares the policy's forecaster config
    but reads no forecast: bands past its short horizon are not its error.
    The planner's forecasts are the stitched ones (the version says so)."""
    from engine.backtest import run_backtest
    from engine.config import ForecasterConfig

    s = cycle_on_a_walk(4)
    fc = ForecasterConfig(name="auto", params={"candidates": NAIVES, "lead_bands": ["10m", "1h"], "eval_window": 2 * DAY,
                                               "n_origins": 24})
    def lead_forecast(forecaster: ForecasterConfig) -> np.ndarray:
        r = run_backtest(s, policy={"kind": "plan", "plan": {"horizon": "6h"}}, forecaster=forecaster, trace="cycle")
        assert "reactive" in r.runs
        plan = next(run for name, run in r.runs.items() if name not in ("oracle", "reactive"))
        return plan.forecast_point  # the forecast at the lead time, 10 minutes: the first band's

    banded = lead_forecast(fc)
    whole = lead_forecast(ForecasterConfig(name="auto", params={**fc.params.model_dump(exclude_unset=True),
                                                                "lead_bands": None}))
    alone = lead_forecast(ForecasterConfig(name="persistence"))
    ok = np.isfinite(banded) & np.isfinite(alone)
    assert ok.sum() > DAY
    np.testing.assert_allclose(banded[ok], alone[ok])  # the 10-minute band chose persistence
    assert np.nanmean(np.abs(whole[ok] - alone[ok])) > 1.0  # one choice for 6 h: seasonal naive


def test_failing_candidates_are_skipped_with_the_reason():
    f = AutoForecaster(candidates=[{"name": "seasonal_naive", "params": {"season": "weekly"}},
                                   {"name": "persistence", "params": {"bogus": 1}}, {"name": "persistence", "label": "p"}],
                       eval_window=DAY)
    f.fit(seasonal(3))
    assert f.choice == "p"
    assert "InsufficientHistory" in f.skipped["seasonal_naive"]  # a weekly season in 3 days
    assert "bogus" in f.skipped["persistence"]


def test_a_candidate_no_registry_knows_is_refused_at_load_naming_it():
    """It validated, then every selection skipped it ("unknown forecaster"),
    and with it the only candidate, every cycle fell back to reactive."""
    with pytest.raises(ValidationError, match=r"candidates\[1\]\.name: unknown forecaster 'no_such_model'; known: "):
        AutoForecaster(candidates=[{"name": "persistence"}, {"name": "no_such_model"}])


def test_all_candidates_too_short_is_insufficient_history():
    f = AutoForecaster(candidates=[{"name": "seasonal_naive"}], eval_window=DAY)
    with pytest.raises(InsufficientHistory):
        f.fit(seasonal(1.2))


def test_reselects_only_after_reselect_every():
    f = AutoForecaster(candidates=NAIVES, horizon_steps=6, eval_window=DAY, reselect_every=timedelta(days=1))
    s = seasonal(4)
    f.fit(s[: 3 * DAY])
    first = f.selection["evaluated_at"]
    f.fit(s[: 3 * DAY + 12])  # an hour later: refit the winner only
    assert f.selection["evaluated_at"] == first
    f.fit(s)  # a day later: backtest again
    assert f.selection["evaluated_at"] != first


def test_pickle_round_trip_keeps_the_choice(tmp_path):
    f = AutoForecaster(candidates=NAIVES, horizon_steps=6, eval_window=DAY)
    s = seasonal(3)
    f.fit(s)
    g = pickle.loads(pickle.dumps(f))
    now = from_epoch(int(s.timestamps[-1]))
    assert g.choice == f.choice and g.version == f.version
    np.testing.assert_array_equal(g.predict(now, 3, (0.9,)).quantiles[0.9], f.predict(now, 3, (0.9,)).quantiles[0.9])


def test_params_are_validated():
    with pytest.raises(ValueError, match="duplicate"):
        AutoParams(candidates=[{"name": "persistence"}, {"name": "persistence"}])
    with pytest.raises(ValueError, match="own candidate"):
        AutoParams(candidates=[{"name": "auto"}])
    with pytest.raises(ForecastError, match="before fit"):
        AutoForecaster().predict(from_epoch(T0), 3, (0.5,))
    with pytest.raises(ValueError, match=r"horizons: steps must lie in 1..horizon_steps \(2\)"):
        AutoParams(horizon_steps=2, horizons=(1, 3))
    with pytest.raises(ValueError, match="levels"):
        AutoParams(levels=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"lead_bands: increasing steps in 1..5 \(horizon_steps - 1\), got \[4, 2\]"):
        AutoParams(horizon_steps=6, lead_bands=(4, 2))
    with pytest.raises(ValueError, match="lead_bands: no scored step .* steps 3-6"):
        AutoParams(horizon_steps=6, horizons=(1, 2), lead_bands=(2,))
    assert AutoParams(lead_bands=(6, 12)).horizon_steps == 13  # used alone: the largest step named


# ------------------------------------------------------------- quality gate
@pytest.mark.parametrize("errors, expected, code", [
    ({"lstm": 0.8, "hw": 0.5}, "lstm", WITHIN_BOUND),
    ({"lstm": None, "hw": 0.5}, "lstm", NO_LIVE_ERROR),
    ({"lstm": 1.7, "hw": 0.6}, "hw", SWITCHED),
    ({"lstm": 1.7, "hw": 1.2, "naive": 0.9}, "naive", SWITCHED),
    ({"lstm": 1.7, "hw": None}, None, REACTIVE),
    ({"lstm": 1.7, "hw": 1.1}, None, REACTIVE),
])
def test_gate(errors, expected, code):
    model, reason = gate(errors, 1.0, list(errors))
    assert model == expected and reason.code == code
    assert str(reason).startswith(code)


def test_gate_message_names_the_error_and_bound():
    _, reason = gate({"lstm": 1.7, "hw": 1.1}, 1.0, ["lstm", "hw"])
    assert "lstm live error 1.7 > bound 1" in reason.message and "hw: 1.1" in reason.message
    assert gate({}, 1.0, [])[0] is None
    with pytest.raises(ValueError, match="bound"):
        gate({"a": 1.0}, 0.0, ["a"])


def test_live_mase():
    assert live_mase([1, 2, 3, np.nan], [2, 2, 5, 4], scale=1.0) == pytest.approx(1.0)
    assert live_mase([1, 2, 3], [2, 2, 5], scale=2.0, last_n=1) == pytest.approx(1.0)
    assert live_mase([np.nan], [1.0], scale=1.0) is None
    with pytest.raises(ValueError, match="length"):
        live_mase([1, 2], [1], scale=1.0)


def test_live_pinball():
    # actual 10: level 0.9 at 8 costs 0.9 * 2, level 0.5 at 12 costs 0.5 * 2
    assert live_pinball({0.9: [8.0], 0.5: [12.0]}, [10.0], scale=1.0) == pytest.approx((1.8 + 1.0) / 2)
    assert live_pinball({0.9: [8.0, 10.0]}, [10.0, 10.0], scale=2.0, last_n=1) == pytest.approx(0.0)
    assert live_pinball({0.5: [np.nan]}, [1.0], scale=1.0) is None
    with pytest.raises(ValueError, match="length"):
        live_pinball({0.5: [1, 2]}, [1], scale=1.0)
    with pytest.raises(ValueError, match="level"):
        live_pinball({1.5: [1]}, [1], scale=1.0)
