"""Classical baselines from Nixtla's ``statsforecast``: AutoETS and MSTL.

Two strong, well-kept statistical models wrapped in the forecaster contract,
so every benchmark and ``auto`` can hold the learned models against them:

- ``autoets``: statsforecast's ``AutoETS`` (Hyndman et al.'s automatic ETS
  selection by AICc) with a daily season;
- ``mstl``: statsforecast's ``MSTL`` (Bandara, Hyndman & Bergmeir, "MSTL: A
  Seasonal-Trend Decomposition Algorithm for Time Series with Multiple
  Seasonal Patterns", 2021): STL with a daily season, plus a weekly one when
  the fit window holds at least ``weekly_min_weeks`` weeks, and an AutoETS
  without season on the seasonally adjusted series.

Two speeds, as for Holt-Winters: :meth:`fit` estimates the model on the last
``fit_window`` (gaps filled by linear interpolation, statsforecast needs a
complete series); between refits :meth:`predict` runs the fitted model
forward over the observations that arrived since (``AutoETS.forward``: the
fitted parameters re-filtered over the new data; for MSTL the seasonal
components are carried on by one season and the trend model is run forward
on the new seasonally adjusted values), so a forecast always starts from the
newest sample.

Quantiles come from the models' own prediction intervals: level ``q > 0.5``
is the upper end of the central ``(2q - 1)`` interval, ``q < 0.5`` the lower
end of the ``(1 - 2q)`` one, 0.5 the mean.

statsforecast is imported lazily (``pip install 'forescale[statsforecast]'``).
Fit times, 7 days of 5-minute data (2,016 points, season 288), on the loaded
2-core development machine under ``nice -n 19``: AutoETS with the default
``model="ZNA"`` about 5 s (``"ZZZ"``, the full search: 25 s on 10 days, which
is why the trend is left out by default; over a one-day season it mostly
extrapolates noise at 24 h); MSTL about 1.4 s. ``predict`` costs 10-50 ms.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Sequence

import numpy as np
from pydantic import Field, field_validator

from engine.core.errors import ForecastError, InsufficientHistory
from engine.core.types import Series
from engine.core.units import Duration

from .base import BaseForecaster, ForecasterParams
from .holt_winters import _interpolate


def _statsforecast_models():
    try:
        from statsforecast import models
    except ImportError as exc:  # pragma: no cover - exercised only without statsforecast
        raise ForecastError(
            "the autoets and mstl forecasters need statsforecast: "
            "pip install 'forescale[statsforecast]' (or statsforecast)"
        ) from exc
    return models


class _Params(ForecasterParams):
    #: the seasonal cycle (daily by default)
    season: Duration = timedelta(days=1)
    #: history used by each refit
    fit_window: Duration = timedelta(days=7)

    @field_validator("season", "fit_window")
    @classmethod
    def _positive(cls, v: timedelta, info) -> timedelta:
        if v.total_seconds() <= 0:
            raise ValueError(f"{info.field_name} must be positive, got {v}")
        return v


class AutoETSParams(_Params):
    #: statsforecast's ETS model string (error, trend, season; Z = chosen by
    #: AICc). The default leaves out the trend: see the module docstring.
    model: str = Field("ZNA", pattern=r"^[AMZ][NAMZ][NAMZ]$")


class MSTLParams(_Params):
    fit_window: Duration = timedelta(days=21)
    #: add a weekly season when the fit window holds at least this many weeks
    weekly_min_weeks: float = Field(2.0, gt=1.0)


def interval_levels(quantiles: Sequence[float]) -> dict[float, float]:
    """Quantile level -> central interval level in percent (0 = the mean)."""
    out = {}
    for q in quantiles:
        lvl = round(abs(2.0 * float(q) - 1.0) * 100.0, 6)
        # statsforecast names its columns after the level as passed ("lo-80")
        out[float(q)] = int(lvl) if float(lvl).is_integer() else lvl
    return out


def quantiles_from_intervals(out: dict[str, np.ndarray], quantiles: Sequence[float]) -> dict[float, np.ndarray]:
    """statsforecast's ``{"mean", "lo-80", "hi-80", ...}`` to our levels."""
    res = {}
    for q, lvl in interval_levels(quantiles).items():
        if lvl == 0:
            res[q] = out["mean"]
        else:
            res[q] = out[f"{'hi' if q > 0.5 else 'lo'}-{lvl}"]
    return res


class _StatsForecastBase(BaseForecaster):
    """Fit on the window, run forward over new samples at predict time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None
        self._fit_start: int | None = None  # epoch s of the first sample of the fit data
        self._flat: float | None = None  # constant fit window: nothing to estimate

    @property
    def min_history(self) -> int:
        # two daily seasons at an hourly step; two seasons at the series'
        # own step are checked in fit, once the step is known
        return 48

    def _window_values(self, history: Series) -> np.ndarray:
        assert self.step is not None
        m = self.season_steps(self.params.season)
        start = int(history.timestamps[-1]) - int(self.params.fit_window.total_seconds())
        w = history.since(start)
        ok = np.flatnonzero(~np.isnan(w.values))
        if ok.size < 2 * m or ok[-1] - ok[0] + 1 < 2 * m:
            raise InsufficientHistory(int(ok.size), 2 * m, f"{self.name} (two seasons of {self.params.season})")
        self._fit_start = int(w.timestamps[ok[0]])
        return _interpolate(w.values[ok[0]:])

    def _fit(self, history: Series) -> None:
        y = self._window_values(history)
        self._flat = float(y[0]) if np.ptp(y) <= 1e-12 * max(1.0, abs(float(y[0]))) else None
        self._model = None if self._flat is not None else self._fit_model(y)

    def _since_fit(self) -> np.ndarray:
        """Every observation from the fit window's start to now, gaps filled."""
        assert self._history is not None and self._fit_start is not None
        return _interpolate(self._history.since(self._fit_start - 1).values)

    def _predict(self, ahead: np.ndarray, quantiles: Sequence[float]):
        h = int(ahead.max())
        idx = ahead - 1
        if self._flat is not None:
            flat = np.full(ahead.size, self._flat)
            return flat, {q: flat for q in quantiles}
        levels = sorted({v for v in interval_levels(quantiles).values() if v > 0})
        out = self._forward(self._since_fit(), h, levels)
        qs = quantiles_from_intervals(out, quantiles)
        return np.asarray(out["mean"])[idx], {q: np.asarray(v)[idx] for q, v in qs.items()}

    # for the models
    def _fit_model(self, y: np.ndarray) -> Any:
        raise NotImplementedError

    def _forward(self, y: np.ndarray, h: int, levels: list[float]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class AutoETS(_StatsForecastBase):
    """statsforecast's AutoETS with a daily season; see the module docstring."""

    name = "autoets"
    Params = AutoETSParams

    def _fit_model(self, y: np.ndarray) -> Any:
        m = _statsforecast_models()
        return m.AutoETS(season_length=self.season_steps(self.params.season), model=self.params.model).fit(y)

    def _forward(self, y: np.ndarray, h: int, levels: list[float]) -> dict[str, np.ndarray]:
        return self._model.forward(y=y, h=h, level=levels or None)


class MSTL(_StatsForecastBase):
    """statsforecast's MSTL (daily, and weekly where the window allows) with
    an AutoETS trend; see the module docstring."""

    name = "mstl"
    Params = MSTLParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seasons: tuple[int, ...] = ()
        self._seasonal_tail: list[np.ndarray] = []  # the last cycle of each seasonal component
        self._n_fit = 0

    def _fit_model(self, y: np.ndarray) -> Any:
        m = _statsforecast_models()
        day = self.season_steps(self.params.season)
        seasons = [day]
        if y.size >= self.params.weekly_min_weeks * 7 * day:
            seasons.append(7 * day)
        model = m.MSTL(season_length=seasons, trend_forecaster=m.AutoETS(model="ZZN")).fit(y)
        comp = model.model_
        cols = [c for c in comp.columns if c.startswith("seasonal")]
        self.seasons = tuple(seasons)
        self._seasonal_tail = [comp[c].to_numpy()[-s:] for c, s in zip(cols, seasons)]
        self._n_fit = y.size
        return model

    def _seasonal(self, start: int, n: int) -> np.ndarray:
        """The sum of the seasonal components for the ``n`` steps from index
        ``start`` (``>= n_fit``): each carries on its last cycle."""
        out = np.zeros(n)
        for tail, s in zip(self._seasonal_tail, self.seasons):
            out += tail[(np.arange(start, start + n) - self._n_fit) % s]
        return out

    def _forward(self, y: np.ndarray, h: int, levels: list[float]) -> dict[str, np.ndarray]:
        comp = self._model.model_
        adjusted = comp["trend"].to_numpy() + comp["remainder"].to_numpy()
        new = y[self._n_fit:]
        if new.size:
            adjusted = np.concatenate([adjusted, new - self._seasonal(self._n_fit, new.size)])
        trend = self._model.trend_forecaster.forward(y=adjusted, h=h, level=levels or None)
        season = self._seasonal(max(y.size, self._n_fit), h)
        return {k: np.asarray(v) + season for k, v in trend.items() if k == "mean" or k[:3] in ("lo-", "hi-")}


__all__ = ["AutoETS", "AutoETSParams", "MSTL", "MSTLParams", "interval_levels", "quantiles_from_intervals"]
