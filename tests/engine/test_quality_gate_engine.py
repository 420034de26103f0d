"""The quality gate in the engine: a forecaster whose live error exceeds the
bound is replaced by a fallback, or by reactive, and each decision says why."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from engine.config import ForecasterConfig, PluginSection, QualityGate, TargetConfig
from engine.cycle import TargetRunner
from engine.core.types import ScalingState, Series
from engine.core.units import from_epoch
from forecasters.naive import Persistence
from policies.config import PolicyConfig
from tests.support.forecasters import registered, scaled_bands

T0 = 1_700_000_000 - (1_700_000_000 % 300)


class HalfOff(Persistence):
    """A deliberately bad model: half the last value."""

    name = "half_off"

    def _point_for(self, y, a):
        return 0.5 * super()._point_for(y, a)


#: persistence's point (a good one here) with quantiles badly off: every level
#: at three times the point, so the upper band the policy sizes from is far
#: too high and the median far from the actuals
WildBands = scaled_bands("wild_bands", 3.0)


@pytest.fixture(autouse=True)
def _registered():
    with registered(half_off=HalfOff, wild_bands=WildBands):
        yield


def _series(days: float = 3) -> Series:
    n = int(days * 288)
    t = np.arange(n)
    v = 100 + 40 * np.sin(2 * np.pi * t / 288) + np.random.default_rng(0).normal(0, 2, n)
    return Series(T0 + 300 * t, v, "web")


def _run(fallbacks: tuple[str, ...], bound: float = 1.0, primary: str = "half_off", score: str = "pinball"):
    target = TargetConfig(
        name="web", source=PluginSection(type="csv", path="-"),
        forecaster=ForecasterConfig(name=primary, quality_gate=QualityGate(
            bound=bound, fallbacks=fallbacks, window=timedelta(hours=6), min_samples=12, score=score)),
        policy=PolicyConfig(capacity_per_replica=10, max_replicas=100, max_staleness=timedelta(minutes=15)))
    runner = TargetRunner(target)
    s = _series()
    state = ScalingState(current=15)
    decisions = []
    for i in range(300, len(s)):
        out = runner.step(s[: i + 1], state, from_epoch(s.timestamps[i]))
        state = out.state.after(out.decision, keep=runner.keep)
        decisions.append(out.decision)
    return decisions


def test_a_bad_model_is_replaced_by_a_fallback_within_the_bound():
    ds = _run(("persistence",))
    first, last = ds[0].extra["quality_gate"], ds[-1].extra["quality_gate"]
    # before enough pairs exist the configured model is kept, and says why
    assert first["choice"] == "half_off" and first["reason"] == "NoLiveError"
    assert last["choice"] == "persistence" and last["reason"] == "SwitchedModel"
    assert last["live_mase"]["half_off"] > 1.0 > last["live_mase"]["persistence"]
    assert ds[-1].model == "persistence" and not ds[-1].fallback


def test_quantiles_badly_off_are_gated_out_by_the_live_pinball_loss():
    """The point is persistence's (live MASE well within the bound, so a
    MASE gate keeps it); its quantiles are not, and the pinball gate, which
    judges the distribution the policy sizes from, falls back to
    persistence and records why."""
    ds = _run(("persistence",), primary="wild_bands")
    last = ds[-1].extra["quality_gate"]
    assert last["score"] == "pinball"
    assert last["live_mase"]["wild_bands"] < 1.0  # its point is fine...
    assert last["live_pinball"]["wild_bands"] > 1.0 > last["live_pinball"]["persistence"]  # ...its bands are not
    assert last["choice"] == "persistence" and last["reason"] == "SwitchedModel"
    assert "wild_bands live error" in last["message"]
    assert ds[-1].model == "persistence" and not ds[-1].fallback
    # the demand the policy sized from is persistence's band, not three times the level
    level = float(_series().values[-1])
    assert ds[-1].forecast_demand < 1.5 * level

    # the same model under a point-only gate is kept: MASE cannot see the bands,
    # and the policy sizes from them
    kept = _run(("persistence",), primary="wild_bands", score="mase")[-1]
    assert kept.extra["quality_gate"]["choice"] == "wild_bands"
    assert kept.extra["quality_gate"]["reason"] == "WithinBound"
    assert kept.forecast_demand > 2.5 * level


def test_a_good_quantile_forecaster_is_kept_by_the_pinball_gate():
    ds = _run(("seasonal_naive",), primary="persistence")
    last = ds[-1].extra["quality_gate"]
    assert last["score"] == "pinball" and last["live_pinball"]["persistence"] < 1.0
    assert last["choice"] == "persistence" and last["reason"] == "WithinBound"
    assert ds[-1].model == "persistence" and not ds[-1].fallback


def test_with_no_fallback_within_the_bound_the_policy_goes_reactive():
    ds = _run(("half_off",), primary="persistence", bound=0.01)  # nothing is that good
    last = ds[-1]
    assert last.extra["quality_gate"]["choice"] is None
    assert last.extra["quality_gate"]["reason"] == "FellBackToReactive"
    assert last.fallback and last.steps[0].reason == "NoForecast"
    assert "quality gate" in last.steps[0].message


def test_unknown_fallback_is_a_config_error():
    from engine.config import parse_config
    from engine.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"targets\[0\]\.forecaster\.quality_gate\.fallbacks\[0\]"):
        parse_config({"targets": [{"name": "w", "source": {"type": "csv", "path": "x"},
                                   "forecaster": {"quality_gate": {"bound": 1, "fallbacks": ["nope"]}},
                                   "policy": {"capacity_per_replica": 1}}]})


def test_auto_selection_is_recorded_in_the_decision():
    target = TargetConfig(
        name="web", source=PluginSection(type="csv", path="-"),
        forecaster=ForecasterConfig(name="auto", params={"candidates": [
            {"name": "persistence"}, {"name": "seasonal_naive"}]}),
        policy=PolicyConfig(capacity_per_replica=10, max_replicas=100))
    runner = TargetRunner(target)
    s = _series()
    out = runner.step(s, ScalingState(current=15), from_epoch(s.timestamps[-1]))
    sel = out.decision.extra["selection"]
    assert sel["choice"] in ("persistence", "seasonal_naive")
    assert set(sel["scores"]) >= {"persistence", "seasonal_naive"}


def test_unknown_gate_score_is_a_config_error_naming_the_field():
    from engine.config import parse_config
    from engine.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"targets\[0\]\.forecaster\.quality_gate\.score"):
        parse_config({"targets": [{"name": "w", "source": {"type": "csv", "path": "x"},
                                   "forecaster": {"quality_gate": {"bound": 1, "score": "crps"}},
                                   "policy": {"capacity_per_replica": 1}}]})
