"""The LSTM forecaster beyond the shared contract: quantile loss and
monotonicity, no look-ahead, freshness, determinism, checkpoints, global mode
and warm start, covariates. Tiny models, a few epochs, CPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the lstm forecaster needs PyTorch (pip install torch)")

from engine.core.errors import ForecastError, InsufficientHistory  # noqa: E402
from engine.core.types import Series  # noqa: E402
from engine.core.units import from_epoch  # noqa: E402
from forecasters.lstm import GlobalLSTM, LSTMForecaster, LSTMParams, RobustScaler, build_features  # noqa: E402

STEP = 300
DAY = 288
T0 = 1_704_067_200
TINY = {"lookback": 12, "horizon": 6, "hidden_size": 8, "epochs": 4, "batch_size": 128,
        "max_train_steps": 3 * DAY, "device": "cpu"}


def daily(days: float = 4, seed: int = 0, level: float = 100.0, name: str = "s") -> Series:
    n = int(days * DAY)
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    y = level + 30 * np.sin(2 * np.pi * t / DAY) + rng.normal(0, 2, n)
    return Series(T0 + STEP * t.astype(np.int64), y, name)


def end(s: Series):
    return from_epoch(int(s.timestamps[-1]))


@pytest.fixture(scope="module")
def fitted() -> LSTMForecaster:
    f = LSTMForecaster(TINY)
    f.fit(daily(3))
    return f


def test_params_require_the_median_and_valid_levels():
    with pytest.raises(ValueError, match="0.5"):
        LSTMParams(quantiles=(0.1, 0.9))
    with pytest.raises(ValueError, match="not in"):
        LSTMParams(quantiles=(0.5, 1.2))
    assert LSTMParams(quantiles=(0.9, 0.5, 0.9)).quantiles == (0.5, 0.9)


def test_scaler_is_robust_and_survives_flat_data():
    y = np.r_[np.arange(100.0), 1e6]  # one outlier does not move median/IQR much
    sc = RobustScaler.fit(y)
    assert 49 <= sc.median <= 51 and 49 <= sc.scale <= 51
    flat = RobustScaler.fit(np.full(50, 20.0))
    assert flat.median == 20.0 and flat.scale == pytest.approx(2.0)
    assert RobustScaler.fit(np.zeros(10)).scale == 1.0


def test_quantiles_are_monotone_and_requested_levels_are_interpolated(fitted):
    s = daily(3)
    fc = fitted.predict(end(s), 6, (0.1, 0.3, 0.5, 0.7, 0.9, 0.99))
    stack = np.vstack([fc.quantiles[q] for q in sorted(fc.quantiles)])
    assert np.all(np.diff(stack, axis=0) >= 0)
    # 0.7 lies between the trained 0.5 and 0.9; 0.99 extends the 0.9 level's distance from
    # the median by z(0.99) / z(0.9) (not the 0.9 level again: that would claim a 1 % tail)
    assert np.all(fc.quantiles[0.7] >= fc.quantiles[0.5]) and np.all(fc.quantiles[0.7] <= fc.quantiles[0.9])
    med = fc.quantiles[0.5]
    np.testing.assert_allclose(fc.quantiles[0.99], med + (fc.quantiles[0.9] - med) * 2.326348 / 1.281552, rtol=1e-5)
    np.testing.assert_allclose(fc.point, fc.quantiles[0.5])


def test_forecast_at_t_ignores_data_after_t():
    """Two series equal up to t and different after: a model fitted and
    updated on data up to t forecasts the same from t."""
    a = daily(4, seed=1)
    vals = a.values.copy()
    cut = 3 * DAY
    vals[cut:] += 500.0
    b = Series(a.timestamps, vals)
    t = from_epoch(int(a.timestamps[cut - 1]))
    fa, fb = LSTMForecaster(TINY), LSTMForecaster(TINY)
    fa.fit(a.until(t))
    fb.fit(b.until(t))
    np.testing.assert_array_equal(fa.predict(t, 6, (0.5, 0.9)).point, fb.predict(t, 6, (0.5, 0.9)).point)
    # and history beyond the forecast start is refused, not silently used
    fa.update(a)
    with pytest.raises(ForecastError, match="look-ahead"):
        fa.predict(t, 6, (0.5,))


def test_features_read_nothing_after_the_origin():
    s = daily(3)
    p = LSTMParams(**TINY)
    sc = RobustScaler.fit(s.values)
    o = np.array([2 * DAY])
    seq1, head1, _, base1 = build_features(s.values, s.timestamps, o, sc, STEP, p)
    y2 = s.values.copy()
    y2[2 * DAY + 1:] = -1e9
    seq2, head2, _, base2 = build_features(y2, s.timestamps, o, sc, STEP, p)
    np.testing.assert_array_equal(seq1, seq2)
    np.testing.assert_array_equal(head1, head2)
    np.testing.assert_array_equal(base1, base2)


def test_update_uses_the_newest_window_without_retraining(fitted):
    f = copy.deepcopy(fitted)
    version = f.version
    s = daily(3.1)
    vals = s.values.copy()
    vals[3 * DAY:] += 200.0
    f.update(Series(s.timestamps, vals))
    assert f.version == version  # no retraining
    moved = f.predict(end(s), 3, (0.5,)).point[0] - fitted.predict(end(daily(3)), 1, (0.5,)).point[0]
    assert moved > 100.0


def test_same_seed_same_model_on_cpu():
    s = daily(3)
    a, b = LSTMForecaster(TINY), LSTMForecaster(TINY)
    a.fit(s)
    b.fit(s)
    assert a.version == b.version
    np.testing.assert_array_equal(a.predict(end(s), 6, (0.9,)).quantiles[0.9],
                                  b.predict(end(s), 6, (0.9,)).quantiles[0.9])
    c = LSTMForecaster({**TINY, "seed": 1})
    c.fit(s)
    assert c.version != a.version


def test_early_stopping_and_metrics_are_recorded():
    f = LSTMForecaster({**TINY, "epochs": 50, "patience": 1, "lr": 0.05})
    f.fit(daily(3))
    m = f.metrics
    assert m["epochs_run"] < 50 and 1 <= m["best_epoch"] <= m["epochs_run"]
    assert np.isfinite(m["val_loss"]) and m["train_windows"] > 0 and m["val_windows"] > 0


def test_too_short_and_horizon_beyond_training_are_clear_errors(fitted):
    f = LSTMForecaster(TINY)
    with pytest.raises(InsufficientHistory):
        f.fit(daily(0.2))
    with pytest.raises(ForecastError, match="horizon of 6"):
        fitted.predict(end(daily(3)), 7, (0.5,))
    with pytest.raises(ForecastError, match="cuda"):
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        LSTMForecaster({**TINY, "device": "cuda"}).fit(daily(3))


def test_a_horizon_longer_than_a_day_fits_and_forecasts_on_30_minute_data():
    """A day of 30-minute data is 48 steps; a horizon of 72 (36 h) reads the
    value one day before a target only where that is before the origin
    (this indexed past the history's end: nyc_taxi in the accuracy benchmark)."""
    n = 10 * 48
    t = np.arange(n)
    y = 100 + 30 * np.sin(2 * np.pi * t / 48) + np.random.default_rng(1).normal(0, 2, n)
    s = Series(T0 + 1800 * t.astype(np.int64), y, "half-hourly")
    f = LSTMForecaster({**TINY, "horizon": 72, "lookback": 24})
    f.fit(s)
    fc = f.predict(end(s), 72, (0.5, 0.9))
    assert fc.point.size == 72 and np.all(np.isfinite(fc.point)) and np.all(fc.quantiles[0.9] >= fc.point)
    # the second day ahead follows the daily shape too (no lag input there)
    assert np.corrcoef(fc.point[48:], y[-48:][: 24])[0, 1] > 0.5


def test_a_series_sampled_coarser_than_the_grid_trains_and_beats_persistence():
    """nyc_taxi (30-minute samples) on the engine's 5-minute grid: five of
    six intervals have no observation. Half the lookback observed could
    never hold, so this fitted nothing (the planner's frontier: NoForecast
    on every cycle); now half the samples the series' own cadence gives
    are enough, and the day-earlier input holds between samples."""
    from datetime import timedelta
    from pathlib import Path

    from engine.sources.csv import read_csv
    from forecasters.lstm import sample_cadence

    raw = read_csv(Path(__file__).parents[1] / "fixtures/traces/nab/nyc_taxi.csv")
    grid = raw.regular(timedelta(minutes=5))
    assert sample_cadence(grid.values) == 6 and sample_cadence(daily(1).values) == 1
    n = 8 * DAY
    f = LSTMForecaster({**TINY, "lookback": 72, "horizon": 24, "hidden_size": 16, "epochs": 6,
                        "max_train_steps": n})
    f.fit(grid[:n])
    ours, flat = [], []
    for o in range(n, n + 3 * DAY, 6):  # every sample of the next three days, 2 h ahead
        h = grid[: o + 1]
        f.update(h)
        fc = f.predict(end(h), 24, (0.5, 0.9))
        fut = grid.values[o + 1: o + 25]
        seen = np.isfinite(fut)
        ours.append(np.mean(np.abs(fc.point[seen] - fut[seen])))
        flat.append(np.mean(np.abs(h.values[-1] - fut[seen])))
    assert np.mean(ours) < 0.6 * np.mean(flat)


def test_checkpoint_round_trip_without_retraining(fitted, tmp_path):
    path = tmp_path / "m.pt"
    fitted.save(path)
    ck = torch.load(path, weights_only=True)
    assert ck["window"]["last"] == int(daily(3).timestamps[-1])
    assert set(ck["scaler"]) == {"median", "scale"} and "val_loss" in ck["metrics"]
    loaded = LSTMForecaster.load(path)
    assert loaded.version == fitted.version and fitted.version.startswith("lstm:")
    s = daily(3)
    np.testing.assert_array_equal(loaded.predict(end(s), 6, (0.5, 0.9)).quantiles[0.9],
                                  fitted.predict(end(s), 6, (0.5, 0.9)).quantiles[0.9])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ForecastError, match="checkpoint") as err:
        LSTMForecaster.load(tmp_path / "bad.pt")
    # one line, not torch's dozen about weights_only
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)


def test_covariates_are_used_and_required():
    s = daily(3)
    rng = np.random.default_rng(3)
    cov = Series(s.timestamps, s.values * 2 + rng.normal(0, 1, len(s)), "req")
    p = {**TINY, "covariates": ("requests",)}
    f = LSTMForecaster(p)
    with pytest.raises(ForecastError, match="missing covariates"):
        f.fit(s)
    with pytest.raises(ForecastError, match="not in params.covariates"):
        f.fit(s, covariates={"requests": cov, "memory": cov})
    f.fit(s, covariates={"requests": cov})
    base = f.predict(end(s), 6, (0.5,)).point
    g = copy.deepcopy(f)
    # a different covariate history changes the forecast: the input is used
    g._cov_history = {"requests": Series(cov.timestamps, cov.values * 5, "req")}
    assert not np.allclose(g.predict(end(s), 6, (0.5,)).point, base)


def test_global_model_forecasts_many_series_in_one_call(tmp_path):
    series = {f"s{i}": daily(3, seed=i, level=100 + 50 * i) for i in range(3)}
    g = GlobalLSTM(TINY).fit(series)
    assert set(g.scalers) == set(series) and g.version.startswith("lstm_multiseries:")
    now = end(series["s0"])
    hist = {**series, "new": daily(3, seed=9, level=400)[2 * DAY:]}  # unseen: scaled from its own history
    errors: dict[str, str] = {}
    hist["short"] = daily(0.01)
    out = g.predict_many(hist, now, 6, (0.5, 0.9), errors=errors)
    assert set(out) == {"s0", "s1", "s2", "new"} and "short" in errors
    for k, fc in out.items():
        assert fc.horizon == 6 and np.all(fc.quantiles[0.9] >= fc.point)
        assert abs(fc.point[0] - hist[k].values[-1]) < 60  # each in its own scale
    with pytest.raises(ForecastError):
        g.predict_many({"short": daily(0.01)}, now, 6, (0.5,))
    path = tmp_path / "g.pt"
    g.save(path)
    g2 = GlobalLSTM.load(path)
    assert g2.version == g.version
    # batch composition changes float32 rounding only
    np.testing.assert_allclose(g2.predict_many(series, now, 6, (0.5,))["s1"].point, out["s1"].point, rtol=1e-6)
    with pytest.raises(ForecastError, match="global"):
        LSTMForecaster.load(path)


def test_warm_start_from_a_global_model_needs_only_one_window(tmp_path):
    g = GlobalLSTM(TINY).fit({f"s{i}": daily(3, seed=i) for i in range(2)})
    short = daily(0.1, seed=7)  # 28 samples: far too few to train on
    with pytest.raises(InsufficientHistory):
        LSTMForecaster(TINY).fit(short)
    f = LSTMForecaster({"finetune_epochs": 0, "device": "cpu"}, init_from=g)  # use as-is
    assert f.params.lookback == TINY["lookback"]  # architecture from the source
    f.fit(short)
    assert f.metrics["finetuned"] is False and f.metrics["source"] == g.version
    fc = f.predict(end(short), 6, (0.5, 0.9))
    np.testing.assert_allclose(fc.point, g.predict_many({"x": short}, end(short), 6, (0.5,))["x"].point,
                               rtol=1e-5)
    # with enough history it fine-tunes from the source weights (path form)
    path = tmp_path / "g.pt"
    g.save(path)
    f2 = LSTMForecaster({"finetune_epochs": 2, "device": "cpu"}, init_from=path)
    f2.fit(daily(3, seed=8))
    assert f2.metrics["finetuned"] is True and f2.metrics["epochs_run"] <= 2


def test_median_gate_picks_persistence_the_network_or_the_seasonal_change_on_validation():
    from forecasters.lstm import _apply_gate, _clamp_spread, _fit_gate

    rng = np.random.default_rng(0)
    B, H, levels = 200, 3, (0.1, 0.5, 0.9)
    p = LSTMParams(lookback=4, horizon=H)
    head = np.zeros((B, p.horizon * 6 + 3), dtype=np.float32)
    hz = head[:, : H * 6].reshape(B, H, 6)
    seas = rng.normal(0, 1, (B, H))
    hz[..., 4] = seas  # the value a day before each target, relative to the origin
    head[:, : H * 6] = hz.reshape(B, H * 6)  # d0 = 0 and observed: the seasonal change is the lag
    net = rng.normal(0, 1, (B, H))
    pred = np.stack([net - 1, net, net + 1], axis=-1)
    # the targets follow the network at step 0, the seasonal change at step 1, neither at step 2
    target = np.stack([net[:, 0], seas[:, 1], rng.normal(0, 0.1, B)], axis=1)
    gate = _fit_gate(pred, head, target, levels)
    np.testing.assert_array_equal(gate[:, :2], [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    # the network's correction is capped at the 90th percentile of the changes seen at that lead
    np.testing.assert_allclose(gate[:, 2], np.percentile(np.abs(target), 90, axis=0))
    out = _apply_gate(pred, head, gate, levels)
    np.testing.assert_allclose(out[:, 0, 1], np.clip(net[:, 0], -gate[0, 2], gate[0, 2]))
    np.testing.assert_allclose(out[:, 1, 1], seas[:, 1], atol=1e-6)
    np.testing.assert_allclose(out[:, 2, 1], 0.0)  # persistence: no change from the last value
    np.testing.assert_allclose(out[..., 2] - out[..., 1], 1.0)  # the spread is kept
    # too few observed targets at a step: persistence there
    sparse = target.copy()
    sparse[10:, 0] = np.nan
    assert tuple(_fit_gate(pred, head, sparse, levels)[0]) == (0.0, 0.0, 0.0, np.inf)
    # no level further from the median than its largest validation error
    assert gate[2, 3] == pytest.approx(np.max(np.abs(target[:, 2])))
    wide = pred.copy()
    wide[..., 2] += 100.0
    clamped = _clamp_spread(_apply_gate(wide, head, gate, levels), gate, levels)
    np.testing.assert_allclose(clamped[:, 2, 2] - clamped[:, 2, 1], gate[2, 3])


def test_a_level_never_seen_in_training_is_forecast_by_persistence():
    """A series that jumps far outside its training range (a saturated CPU)
    gets no network correction: the median is the last value."""
    f = LSTMForecaster({**TINY, "seasonal_lag": False, "calibrate": False})
    s = daily(3)
    f.fit(s)
    assert f._range is not None and f._range[0] < f._range[1]
    t = daily(3.1)
    vals = t.values.copy()
    vals[3 * DAY:] = 5000.0
    f.update(Series(t.timestamps, vals))
    np.testing.assert_allclose(f.predict(end(t), 6, (0.5,)).point, 5000.0)


def test_global_model_calibrates_each_training_series_on_its_own_validation_windows():
    """A calm and a noisy series trained together: each gets its own
    conformal offsets (pooled ones would over-cover the calm one and
    under-cover the noisy one), used for it in predict_many."""
    calm = daily(3, seed=1)
    rng = np.random.default_rng(2)
    noisy = Series(calm.timestamps, calm.values + rng.normal(0, 25, len(calm)), "noisy")
    g = GlobalLSTM(TINY).fit({"calm": calm, "noisy": noisy})
    assert set(g._series_offsets) == {"calm", "noisy"}
    assert not np.allclose(g._series_offsets["calm"], g._series_offsets["noisy"])
    now = end(calm)
    before = g.predict_many({"calm": calm}, now, 6, (0.9,))["calm"].quantiles[0.9]
    g._series_offsets["calm"] = g._series_offsets["calm"] + 1.0  # one scale unit up at every level
    after = g.predict_many({"calm": calm}, now, 6, (0.9,))["calm"].quantiles[0.9]
    np.testing.assert_allclose(after - before, g.scalers["calm"].scale, rtol=1e-5)


def test_levels_beyond_the_trained_ones_extend_the_tail_instead_of_repeating_it():
    # trained 0.1 / 0.5 / 0.9 at 90 / 100 / 110: asked for 0.99, the 0.9 level's distance from
    # the median (10) is scaled by z(0.99) / z(0.9) = 2.3263 / 1.2816 -> 118.15; inside: linear
    from forecasters.lstm import _levels_at

    out = np.array([[90.0, 100.0, 110.0]])
    got = {q: float(v[0]) for q, v in _levels_at(out, (0.1, 0.5, 0.9), [0.05, 0.3, 0.9, 0.95, 0.99]).items()}
    assert got[0.99] == pytest.approx(100 + 10 * 2.326348 / 1.281552, abs=1e-4)
    assert got[0.95] == pytest.approx(100 + 10 * 1.644854 / 1.281552, abs=1e-4)
    assert got[0.05] == pytest.approx(100 - 10 * 1.644854 / 1.281552, abs=1e-4)
    assert (got[0.3], got[0.9]) == (pytest.approx(95.0), 110.0)


# ------------------------------------------------------------ level-free global
from forecasters.lstm import LevelFreeLSTM, LevelFreeParams, levelfree_features  # noqa: E402

LF_TINY = {"hidden_size": 16, "head_width": 32, "epochs": 6, "origin_stride": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def levelfree() -> LevelFreeLSTM:
    return LevelFreeLSTM(LF_TINY).fit({"a": daily(6, seed=1), "b": daily(6, seed=2, level=300.0)})


def test_levelfree_inputs_read_nothing_after_the_origin():
    s = daily(4)
    o = np.array([2 * DAY, 3 * DAY])
    p = LevelFreeParams()
    a = levelfree_features(s.values, s.timestamps, o, STEP, p)
    later = s.values.copy()
    later[2 * DAY + 1:] = 1e6
    b = levelfree_features(later, s.timestamps, o[:1], STEP, p)
    np.testing.assert_array_equal(a[0][:1], b[0])
    np.testing.assert_array_equal(a[1][:1], b[1])


def test_levelfree_forecast_scales_with_the_series(levelfree):
    """Inputs relative to the origin over a local scale: a series ten times
    larger gets exactly ten times the forecast, every level and horizon."""
    s = daily(3, seed=5)
    big = Series(s.timestamps, s.values * 10.0, "big")
    f1 = levelfree.predict_many({"s": s}, end(s), 288, (0.5, 0.9, 0.99))["s"]
    f10 = levelfree.predict_many({"big": big}, end(s), 288, (0.5, 0.9, 0.99))["big"]
    for q in (0.5, 0.9, 0.99):
        np.testing.assert_allclose(f10.quantiles[q], 10 * f1.quantiles[q], rtol=1e-4)


def test_levelfree_follows_a_level_shift_it_never_saw(levelfree):
    """Trained around 100 and 300; a series that jumped to 2,000 is forecast
    near 2,000, not pulled back to a training level."""
    s = daily(3, seed=6)
    jumped = Series(s.timestamps, np.where(np.arange(len(s)) >= 2 * DAY, s.values + 1900.0, s.values), "j")
    fc = levelfree.predict_many({"j": jumped}, end(jumped), 12, (0.5,))["j"]
    assert np.all(np.abs(fc.point - jumped.values[-1]) < 60.0), fc.point


def test_predict_many_is_one_batched_call_equal_to_single_calls(levelfree):
    hs = {f"t{i}": daily(3, seed=10 + i, level=50.0 * (i + 1)) for i in range(5)}
    now = end(hs["t0"])
    many = levelfree.predict_many(hs, now, 72, (0.5, 0.95))
    for k, h in hs.items():
        one = levelfree.predict_many({k: h}, now, 72, (0.5, 0.95))[k]
        np.testing.assert_allclose(many[k].quantiles[0.95], one.quantiles[0.95], rtol=1e-5)
        assert many[k].timestamps[0] == h.timestamps[-1] + STEP


def test_levelfree_errors_are_recorded_per_series(levelfree):
    errors: dict[str, str] = {}
    out = levelfree.predict_many({"ok": daily(3), "empty": Series(np.array([T0], dtype=np.int64), np.array([np.nan]))},
                                 end(daily(3)), 6, (0.5,), errors=errors)
    assert list(out) == ["ok"] and "empty" in errors
    with pytest.raises(ForecastError, match="trained for 288 steps"):
        levelfree.predict_many({"ok": daily(3)}, end(daily(3)), 289, (0.5,))


def test_calibration_widens_the_band_of_a_noisier_series(levelfree):
    """Conformal offsets on the series' own recent errors: a series much
    noisier than the training ones gets a wider 0.9 band, and its realized
    coverage on the following day moves toward 0.9."""
    rng = np.random.default_rng(3)
    n = 5 * DAY
    t = np.arange(n)
    y = 100 + 30 * np.sin(2 * np.pi * t / DAY) + rng.normal(0, 12, n)
    s = Series(T0 + STEP * t.astype(np.int64), y, "noisy")
    hist = s[: 4 * DAY]
    model = copy.deepcopy(levelfree)

    def coverage() -> float:
        hits = []
        for o in range(4 * DAY - 1, n - 7, 6):
            fc = model.predict_many({"noisy": s[: o + 1]}, from_epoch(int(s.timestamps[o])), 6, (0.9,))["noisy"]
            hits.append(np.mean(s.values[o + 1: o + 7] <= fc.quantiles[0.9]))
        return float(np.mean(hits))

    before = coverage()
    assert model.calibrate({"noisy": hist})["noisy"] >= 20
    after = coverage()
    assert abs(after - 0.9) < abs(before - 0.9) and abs(after - 0.9) < 0.06, (before, after)


def test_calibrate_median_shifts_a_biased_median_to_half_the_actuals(levelfree):
    """A series that climbs steadily (a trend the training series did not
    have): the network's median lags it. ``calibrate_median`` (the default)
    shifts the median by the median of the series' own errors, so about half
    of the following actuals fall at or below it; without it the median is
    left where the network (and the median gate) put it."""
    rng = np.random.default_rng(5)
    n = 5 * DAY
    t = np.arange(n)
    y = 100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / DAY) + rng.normal(0, 2, n)
    s = Series(T0 + STEP * t.astype(np.int64), y, "biased")
    hist = s[: 4 * DAY]

    def coverage(model) -> float:
        hits = []
        for o in range(4 * DAY - 1, n - 7, 6):
            fc = model.predict_many({"biased": s[: o + 1]}, from_epoch(int(s.timestamps[o])), 6, (0.5,))["biased"]
            hits.append(np.mean(s.values[o + 1: o + 7] <= fc.quantiles[0.5]))
        return float(np.mean(hits))

    plain, shifted = copy.deepcopy(levelfree), copy.deepcopy(levelfree)
    plain.calibrate({"biased": hist}, median=False)
    shifted.calibrate({"biased": hist})
    k = list(levelfree.params.quantiles).index(0.5)
    assert np.all(plain._series_offsets["biased"][:, k] == 0) and np.any(shifted._series_offsets["biased"][:, k] != 0)
    before, after = coverage(plain), coverage(shifted)
    assert abs(after - 0.5) < abs(before - 0.5) and abs(after - 0.5) < 0.08, (before, after)
    # the parameter is the default of the keyword (the registry forecaster's path)
    param = copy.deepcopy(levelfree)
    param.params = param.params.model_copy(update={"calibrate_median": False})
    param.calibrate({"biased": hist})
    np.testing.assert_array_equal(param._series_offsets["biased"], plain._series_offsets["biased"])


def test_levelfree_save_load_round_trip(levelfree, tmp_path):
    path = tmp_path / "g.pt"
    levelfree.save(path)
    back = LevelFreeLSTM.load(path)
    s = daily(3, seed=7)
    a = levelfree.predict_many({"s": s}, end(s), 24, (0.5, 0.9))["s"]
    b = back.predict_many({"s": s}, end(s), 24, (0.5, 0.9))["s"]
    np.testing.assert_allclose(a.quantiles[0.9], b.quantiles[0.9], rtol=1e-6)
    assert back.version == levelfree.version and back.n_parameters == levelfree.n_parameters


def test_levelfree_default_is_three_networks_of_about_fifty_thousand_parameters():
    m = LevelFreeLSTM({"epochs": 0, "device": "cpu"}).fit({"a": daily(5)})
    one = LevelFreeLSTM({"epochs": 0, "device": "cpu", "ensemble": 1}).fit({"a": daily(5)})
    assert 40_000 <= one.n_parameters <= 60_000 and m.n_parameters == 3 * one.n_parameters


def test_an_ensemble_forecasts_the_mean_of_its_members_each_the_single_model_of_its_seed():
    """``ensemble: 2`` trains the single models of seeds 0 and 1 (the same
    weights as each trained alone) and forecasts their mean per level."""
    from forecasters.lstm import _infer

    data = {"a": daily(6, seed=1), "b": daily(6, seed=2, level=300.0)}
    cfg = {**LF_TINY, "epochs": 2, "calibrate": False}
    pair = LevelFreeLSTM({**cfg, "ensemble": 2}).fit(data)
    alone = [LevelFreeLSTM({**cfg, "ensemble": 1, "seed": i}).fit(data) for i in (0, 1)]
    s = daily(3, seed=9)
    seq, head, _, _, _ = levelfree_features(s.values, s.timestamps, np.array([len(s) - 1]), STEP, pair.params)
    outs = [_infer(m._net, seq, head, m._device) for m in alone]
    np.testing.assert_allclose(_infer(pair._net, seq, head, pair._device), (outs[0] + outs[1]) / 2, atol=1e-6)
    assert not np.allclose(outs[0], outs[1])  # two different networks
    assert pair.n_parameters == 2 * alone[0].n_parameters
    fc = pair.predict_many({"s": s}, end(s), 288, (0.05, 0.5, 0.95))["s"]
    assert np.all(fc.quantiles[0.05] <= fc.point) and np.all(fc.point <= fc.quantiles[0.95])


def test_the_median_gate_brings_a_random_walk_back_to_persistence(levelfree):
    """Trained on daily cycles, the network expects a random walk to swing
    back (a cycle that is not there); the median gate, chosen on the
    series' own last windows, shrinks that change toward the last value:
    the median's error on the following day falls to about persistence's."""
    rng = np.random.default_rng(8)
    n = 5 * DAY
    y = 500 + np.cumsum(rng.normal(0, 4, n))
    s = Series(T0 + STEP * np.arange(n, dtype=np.int64), y, "walk")
    gated, plain = copy.deepcopy(levelfree), copy.deepcopy(levelfree)
    gated.calibrate({"walk": s[: 4 * DAY]})
    plain.calibrate({"walk": s[: 4 * DAY]}, median=False)
    plain._series_gates.pop("walk", None)
    k = list(levelfree.params.horizons).index(12)
    assert gated._series_gates["walk"][k][0] < 1.0

    def mae(model) -> float:
        errs = [np.abs(model.predict_many({"walk": s[: o + 1]}, from_epoch(int(s.timestamps[o])), 12, (0.5,))
                       ["walk"].point[-1] - y[o + 12]) for o in range(4 * DAY - 1, n - 13, 3)]
        return float(np.mean(errs))

    persistence = float(np.mean([abs(y[o] - y[o + 12]) for o in range(4 * DAY - 1, n - 13, 3)]))
    assert mae(plain) > 1.15 * persistence  # the network's own median is worse than persistence here
    assert mae(gated) < 1.05 * persistence, (mae(gated), mae(plain), persistence)


def test_the_seasonal_gate_follows_a_daily_shape_the_network_never_saw(levelfree):
    """A daily on/off load (a batch window 08:00-18:00) where the network
    learnt smooth sines: six hours ahead its median misses the switch. The
    gate chosen on the series' own last windows, allowed to move the median
    toward seasonal persistence (the default ``gate_anchors``: the value
    now plus yesterday's change over the same lead), takes the step from
    yesterday: its error falls to about seasonal persistence's, where the
    persistence-only gate stays near persistence's."""
    rng = np.random.default_rng(3)
    n = 6 * DAY
    t = np.arange(n)
    on = ((t % DAY) >= 96) & ((t % DAY) < 216)
    y = np.where(on, 400.0, 100.0) + rng.normal(0, 5, n)
    s = Series(T0 + STEP * t.astype(np.int64), y, "batch")
    seasonal, plain = copy.deepcopy(levelfree), copy.deepcopy(levelfree)
    assert levelfree.params.gate_anchors == ("seasonal_persistence",)
    seasonal.calibrate({"batch": s[: 5 * DAY]})
    plain.params = plain.params.model_copy(update={"gate_anchors": ()})
    plain.calibrate({"batch": s[: 5 * DAY]})
    k = list(levelfree.params.horizons).index(72)
    gate = seasonal._series_gates["batch"]
    assert gate.shape == (len(levelfree.params.horizons), 3) and plain._series_gates["batch"].ndim == 1
    assert gate[k][2] > 0.5 and gate[k][1] == 0.0  # seasonal persistence's share; seasonal naive not allowed
    origins = range(5 * DAY - 1, n - 73, 3)

    def mae(model) -> float:
        return float(np.mean([abs(model.predict_many({"batch": s[: o + 1]}, from_epoch(int(s.timestamps[o])), 72,
                                                     (0.5,))["batch"].point[-1] - y[o + 72]) for o in origins]))

    seasonal_persistence = float(np.mean([abs(y[o] + y[o + 72 - DAY] - y[o - DAY] - y[o + 72]) for o in origins]))
    persistence = float(np.mean([abs(y[o] - y[o + 72]) for o in origins]))
    assert seasonal_persistence < 0.1 * persistence
    assert mae(plain) > 0.5 * persistence, (mae(plain), persistence)
    assert mae(seasonal) < 2.0 * seasonal_persistence, (mae(seasonal), seasonal_persistence, mae(plain))


def test_the_gate_finds_the_shares_of_the_network_and_of_each_anchor():
    """Hand-made: the target is 0.3 x the network's median change plus 0.5 x
    the seasonal-naive change; the gate allowed both anchors finds exactly
    those shares, the one allowed none only a share of the network's."""
    from forecasters.lstm import _gated, _median_gate

    rng = np.random.default_rng(0)
    pred = np.sort(rng.normal(size=(200, 3, 5)), axis=-1)
    anchors = rng.normal(size=(200, 3, 2))
    target = 0.3 * pred[:, :, 2] + 0.5 * anchors[:, :, 0]
    both = _median_gate(pred, target, 2, anchors, ("seasonal_naive", "seasonal_persistence"))
    np.testing.assert_allclose(both, [[0.3, 0.5, 0.0]] * 3, atol=1e-12)
    np.testing.assert_allclose(_gated(pred, both, 2, anchors)[:, :, 2], target, atol=1e-12)
    spread = pred[:, :, 4] - pred[:, :, 2]
    np.testing.assert_allclose(_gated(pred, both, 2, anchors)[:, :, 4] - target, spread, atol=1e-12)
    only = _median_gate(pred, target, 2)
    assert only.shape == (3,) and np.all((only >= 0) & (only <= 1))
    assert np.abs(_gated(pred, only, 2)[:, :, 2] - target).mean() > 0.2


def test_the_persistence_loss_weights_each_horizon_by_one_over_its_persistence_error():
    from forecasters.lstm import _persistence_weights

    target = np.array([[0.1, 1.0, np.nan], [-0.1, -3.0, 4.0]], dtype=np.float32)  # mean |.|: 0.1, 2, 4
    w = _persistence_weights(target)
    np.testing.assert_allclose(w * np.array([0.1, 2.0, 4.0]), w[0] * 0.1, rtol=1e-6)
    assert w.mean() == pytest.approx(1.0)


def test_a_model_saved_before_the_ensemble_and_the_gate_loads_as_it_was_trained(levelfree, tmp_path):
    """A file whose settings predate ``ensemble``, ``median_gate``,
    ``horizon_loss`` and ``calibration_stride`` was one network, ungated,
    calibrated every ``origin_stride``: it loads so, and forecasts what it
    forecast before."""
    import io
    import json

    import torch

    one = LevelFreeLSTM({**LF_TINY, "epochs": 1, "ensemble": 1, "median_gate": False, "horizon_loss": "equal",
                         "calibrate_median": False}).fit({"a": daily(6, seed=1)})
    ck = one._checkpoint()
    ck["params"] = json.dumps({k: v for k, v in json.loads(ck["params"]).items()
                               if k not in ("ensemble", "median_gate", "horizon_loss", "calibration_stride",
                                            "gate_anchors")})
    ck.pop("series_gates")
    buf = io.BytesIO()
    torch.save(ck, buf)
    (tmp_path / "old.pt").write_bytes(buf.getvalue())
    back = LevelFreeLSTM.load(tmp_path / "old.pt")
    assert (back.params.ensemble, back.params.median_gate, back.params.horizon_loss) == (1, False, "equal")
    assert back.params.gate_anchors == ()
    assert back.params.calibration_stride == one.params.origin_stride == 2
    s = daily(3, seed=4)
    np.testing.assert_allclose(back.predict_many({"s": s}, end(s), 48, (0.5, 0.9))["s"].quantiles[0.9],
                               one.predict_many({"s": s}, end(s), 48, (0.5, 0.9))["s"].quantiles[0.9], rtol=1e-6)


def test_registry_forecaster_starts_from_a_saved_global_model(levelfree, tmp_path):
    import forecasters

    path = tmp_path / "g.pt"
    levelfree.save(path)
    s = daily(3, seed=8)
    f = forecasters.create("lstm_global", {"checkpoint": str(path), "device": "cpu"})
    f.fit(s)
    got = f.predict(end(s), 6, (0.5,))
    want = levelfree.predict_many({"x": s}, end(s), 6, (0.5,))["x"]
    # same network, the target's own calibration and median gate
    x = copy.deepcopy(levelfree)
    x.calibrate({"x": s})
    want = x.predict_many({"x": s}, end(s), 6, (0.5,))["x"]
    np.testing.assert_allclose(got.point, want.point, rtol=1e-6)
    assert got.model == "lstm_global"


def test_a_targets_calibration_params_reach_its_forecasts_from_a_checkpoint(levelfree, tmp_path):
    """On a shared checkpoint the target's own params decide its
    calibration: ``calibrate: false`` forecasts with the offsets pooled in
    training (no median gate either), ``calibrate_median: false`` leaves the
    median where the gate put it (the benchmark's lstm_global_pooled; the
    default shifts it by the target's own errors)."""
    import forecasters

    path = tmp_path / "g.pt"
    levelfree.save(path)
    t = np.arange(4 * DAY)
    s = Series(T0 + STEP * t.astype(np.int64), 100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / DAY), "climb")
    made = {}
    for name, extra in (("own", {"calibrate_median": False, "median_gate": False}), ("pooled", {"calibrate": False}),
                        ("median", {"median_gate": False})):
        f = forecasters.create("lstm_global", {"checkpoint": str(path), "device": "cpu", **extra})
        f.fit(s)
        made[name] = (f.offsets, f.predict(end(s), 6, (0.5, 0.9)))
    assert made["pooled"][0] is None and made["own"][0] is not None
    pooled = levelfree.predict_many({"x": s}, end(s), 6, (0.5, 0.9))["x"]  # no series offsets kept: pooled
    np.testing.assert_allclose(made["pooled"][1].quantiles[0.9], pooled.quantiles[0.9], rtol=1e-6)
    assert not np.allclose(made["own"][1].quantiles[0.9], pooled.quantiles[0.9])
    # the median untouched by the offsets, but where a lower level shifted past it is re-sorted (up)
    own_point, pooled_point = made["own"][1].point, made["pooled"][1].point
    assert own_point[0] == pytest.approx(pooled_point[0], rel=1e-6) and np.all(own_point >= pooled_point - 1e-6)
    assert not np.allclose(made["median"][1].quantiles[0.5], made["own"][1].quantiles[0.5])


def test_a_targets_gate_anchors_reach_its_forecasts_from_a_checkpoint(levelfree, tmp_path):
    """Two targets on one checkpoint with the daily on/off load: the one
    with the default ``gate_anchors`` forecasts the switch six hours ahead
    from yesterday's; the one whose config says ``gate_anchors: []`` keeps
    the persistence-only gate and misses it."""
    import forecasters

    path = tmp_path / "g.pt"
    levelfree.save(path)
    rng = np.random.default_rng(4)
    t = np.arange(6 * DAY)
    y = np.where(((t % DAY) >= 96) & ((t % DAY) < 216), 400.0, 100.0) + rng.normal(0, 5, t.size)
    s = Series(T0 + STEP * t.astype(np.int64), y, "batch")
    errors = {}
    for name, extra in (("default", {}), ("persistence only", {"gate_anchors": []})):
        f = forecasters.create("lstm_global", {"checkpoint": str(path), "device": "cpu", **extra})
        f.fit(s[: 5 * DAY])
        errs = []
        for o in range(5 * DAY - 1, 6 * DAY - 73, 12):
            f.update(s[: o + 1])
            errs.append(abs(f.predict(from_epoch(int(s.timestamps[o])), 72, (0.5,)).point[-1] - y[o + 72]))
        errors[name] = float(np.mean(errs))
    assert errors["default"] < 0.2 * errors["persistence only"], errors


def test_targets_on_one_checkpoint_share_one_network_and_keep_their_own_calibration(levelfree, tmp_path):
    import pickle

    import forecasters

    path = tmp_path / "g.pt"
    levelfree.save(path)
    a, b = daily(3, seed=11), daily(3, seed=12, level=5000.0)
    fa = forecasters.create("lstm_global", {"checkpoint": str(path), "device": "cpu"})
    fb = forecasters.create("lstm_global", {"checkpoint": str(path), "device": "cpu"})
    fa.fit(a), fb.fit(b)
    assert fa.model is fb.model  # one network in memory for both
    assert fa.offsets is not None and not np.allclose(fa.offsets, fb.offsets)
    # a saved target names the file and keeps its offsets, not a copy of the network
    blob = pickle.dumps(fa)
    assert len(blob) < len(path.read_bytes()) / 2
    back = pickle.loads(blob)
    assert back.model is fa.model
    np.testing.assert_allclose(back.predict(end(a), 12, (0.5, 0.9)).quantiles[0.9],
                               fa.predict(end(a), 12, (0.5, 0.9)).quantiles[0.9])


def test_predict_batch_is_one_call_per_shared_model_equal_to_each_targets_own_forecast(levelfree, tmp_path,
                                                                                     monkeypatch):
    import forecasters
    from forecasters.lstm import LevelFreeForecaster

    path = tmp_path / "g.pt"
    levelfree.save(path)
    hs = [daily(3, seed=20 + i, level=100.0 * (i + 1)) for i in range(5)]
    fs = [forecasters.create("lstm_global", {"checkpoint": str(path), "device": "cpu"}) for _ in hs]
    for f, h in zip(fs, hs):
        f.fit(h)
    now = end(hs[0])
    alone = [f.predict(now, 24, (0.5, 0.9)) for f in fs]
    calls = []
    real = LevelFreeLSTM.predict_many
    monkeypatch.setattr(LevelFreeLSTM, "predict_many", lambda self, h, *a, **k: calls.append(len(h)) or
                        real(self, h, *a, **k))
    # one member unfitted, one whose history ends after the start: only they fail
    unfitted = forecasters.create("lstm_global", {"checkpoint": str(path), "device": "cpu"})
    late = forecasters.create("lstm_global", {"checkpoint": str(path), "device": "cpu"})
    late.fit(daily(3.5, seed=30))
    out = LevelFreeForecaster.predict_batch([*fs[:2], unfitted, late, *fs[2:]], now, 24, (0.5, 0.9))
    assert calls == [6]  # the five and the late one, in one forward pass
    assert isinstance(out[2], ForecastError) and isinstance(out[3], ForecastError)
    for got, want in zip([*out[:2], *out[4:]], alone):
        np.testing.assert_allclose(got.quantiles[0.9], want.quantiles[0.9], rtol=1e-6)
        assert got.model_version == want.model_version


def test_a_checkpoint_that_does_not_reach_the_planners_horizon_is_refused_at_load(tmp_path):
    """A checkpoint trained to 24 h (288 steps) under a planner reading 30 h
    validated, then every cycle fell back: "trained for 288 steps ahead,
    asked for 362"."""
    from engine.config import load_config
    from engine.core.errors import ConfigError

    path = tmp_path / "g.pt"
    LevelFreeLSTM({"epochs": 0, "device": "cpu", "ensemble": 1, "horizons": (1, 6, 12)}).fit(
        {"a": daily(5)}).save(path)
    cfg = tmp_path / "c.yaml"
    for horizon, ok in (("30m", True), ("2h", False)):
        cfg.write_text("targets:\n  - name: web\n    source: {type: csv, path: x.csv}\n"
                       f"    forecaster: {{name: lstm_global, params: {{checkpoint: {path}}}}}\n"
                       f"    policy: {{kind: plan, capacity_per_replica: 10, plan: {{horizon: {horizon}}}}}\n")
        if ok:
            assert load_config(cfg).targets[0].forecaster.name == "lstm_global"
            continue
        with pytest.raises(ConfigError) as err:
            load_config(cfg)
        assert ("forecaster.params.checkpoint: lstm_global forecasts 12 steps (1h) ahead, but the policy reads 24 "
                "(2h, plan.horizon and the lead window); shorten plan.horizon, or use a model trained to 24 steps"
                ) in str(err.value)
