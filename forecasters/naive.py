"""Cheap forecasters for cold start and short horizons.

- ``persistence``: the last observed value (the "naive" bar at short horizons).
- ``seasonal_naive``: the value one season ago (daily or weekly season).
- ``seasonal_persistence``: the last value plus the change seen at the same
  time one season ago — persistence adjusted by the recent same-time-of-day
  change (REFERENCE.md section 4, item 4: it beat pure seasonal naive at a
  10-minute lead time).

Each derives its quantiles from its own recent residuals at the same horizon
(empirical quantiles of ``actual - forecast`` over ``residual_window``), so
the band widens where the model has been wrong.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Literal, Sequence

import numpy as np
from pydantic import Field

from engine.core.types import Series
from engine.core.units import Duration

from .base import BaseForecaster, ForecasterParams, last_valid_index, residual_quantiles


def _lag(y: np.ndarray, k: int) -> np.ndarray:
    """y shifted forward by k: out[t] = y[t-k] (NaN where t < k)."""
    out = np.full_like(y, np.nan)
    if k < y.size:
        out[k:] = y[: y.size - k]
    return out


def _take(y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """y[idx] with NaN where idx < 0 (before the history starts)."""
    out = np.full(idx.shape, np.nan)
    ok = idx >= 0
    out[ok] = y[idx[ok]]
    return out


class _ResidualBand:
    """Residual quantiles per horizon, recomputed once ``refresh`` new
    samples (intervals of time) have arrived (the residual distribution over a window of days
    barely moves in a few steps; recomputing every cycle dominated the
    backtest's run time)."""

    def __init__(self, refresh: int = 6) -> None:
        self.refresh = refresh
        self._key: int | None = None
        self._cache: dict[tuple[int, float], float] = {}

    def get(self, key: int, ahead: np.ndarray, quantiles: Sequence[float], compute) -> np.ndarray:
        """The ``(len(ahead), len(quantiles))`` offsets; ``compute(a)`` gives
        them for the horizons ``a`` (an int array) not cached yet, in one
        call."""
        if self._key is None or key < self._key or key - self._key >= self.refresh:
            self._key, self._cache = key, {}
        cache = self._cache
        missing = [a for a in dict.fromkeys(ahead.tolist()) if any((a, q) not in cache for q in quantiles)]
        if missing:
            for a, row in zip(missing, compute(np.array(missing, dtype=np.int64)).tolist()):
                cache.update({(a, float(q)): v for q, v in zip(quantiles, row)})
        return np.array([[cache[(a, q)] for q in quantiles] for a in ahead.tolist()], dtype=float)


class _NaiveBase(BaseForecaster):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._band = _ResidualBand()

    def _fit(self, history: Series) -> None:
        pass

    def _window(self) -> int:
        assert self.step
        return max(12, int(self.params.residual_window.total_seconds() // self.step))

    def _point_for(self, y: np.ndarray, a: int) -> float:
        raise NotImplementedError

    def _points(self, y: np.ndarray, ahead: np.ndarray) -> np.ndarray:
        return np.array([self._point_for(y, int(a)) for a in ahead])

    def _insample(self, y: np.ndarray, ahead: np.ndarray, at: np.ndarray) -> np.ndarray:
        """``(len(ahead), len(at))``: the forecast made ``a`` steps before
        each index ``at`` of ``y``, for every horizon ``a`` in ``ahead`` (NaN
        where unknown)."""
        raise NotImplementedError

    def _residual_quantiles(self, y: np.ndarray, ahead: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
        """``(len(ahead), len(quantiles))``: empirical quantiles of the
        in-sample residuals ``actual - forecast`` at each horizon over the
        last ``residual_window`` samples, all horizons at once (one numpy
        quantile over the rows without gaps; a row with gaps alone)."""
        w = self._window()
        at = np.arange(max(0, y.size - w), y.size)
        resid = y[at][None, :] - self._insample(y, ahead, at)
        out = np.empty((ahead.size, len(quantiles)))
        full = np.isfinite(resid).all(axis=1)
        if full.any() and at.size:
            out[full] = np.quantile(resid[full], list(quantiles), axis=1).T
        for i in np.flatnonzero(~full | (at.size == 0)).tolist():
            out[i] = list(residual_quantiles(resid[i], quantiles).values())
        return out

    def _predict(self, ahead: np.ndarray, quantiles: Sequence[float]):
        assert self._history is not None
        y = self._history.values
        point = self._points(y, ahead)
        # keyed by the time of the last sample in steps, not by the history's
        # length: a live target's history is a sliding window of fixed length
        assert self.step
        key = int(self._history.timestamps[-1]) // self.step
        band = self._band.get(key, ahead, quantiles, lambda a: self._residual_quantiles(y, a, quantiles))
        return point, {q: point + band[:, j] for j, q in enumerate(quantiles)}


class PersistenceParams(ForecasterParams):
    residual_window: Duration = timedelta(days=7)


class Persistence(_NaiveBase):
    """The last observed value, flat over the horizon."""

    name = "persistence"
    Params = PersistenceParams

    @property
    def min_history(self) -> int:
        return 2

    def _point_for(self, y: np.ndarray, a: int) -> float:
        return float(y[last_valid_index(y)])

    def _insample(self, y: np.ndarray, ahead: np.ndarray, at: np.ndarray) -> np.ndarray:
        return _take(y, at[None, :] - ahead[:, None])


class SeasonalNaiveParams(ForecasterParams):
    #: ``daily``, ``weekly``, or ``auto``: weekly when two weeks of history
    #: show a lower in-sample error for it, else daily.
    season: Literal["daily", "weekly", "auto"] = "daily"
    residual_window: Duration = timedelta(days=7)


_SEASONS = {"daily": timedelta(days=1), "weekly": timedelta(days=7)}


class SeasonalNaive(_NaiveBase):
    """The value at the same time one season ago."""

    name = "seasonal_naive"
    Params = SeasonalNaiveParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.season: timedelta = _SEASONS.get(self.params.season, timedelta(days=1))

    @property
    def min_history(self) -> int:
        # one full season plus a little to measure residuals; assumes the
        # step is at most an hour (the engine checks the real span)
        return 24

    def _fit(self, history: Series) -> None:
        from engine.core.errors import InsufficientHistory

        span = history.timestamps[-1] - history.timestamps[0]
        if self.params.season == "auto":
            self.season = _SEASONS["daily"]
            if span >= 2 * _SEASONS["weekly"].total_seconds():
                y = history.values
                errs = {
                    k: np.nanmean(np.abs(y - _lag(y, self.season_steps(v))))
                    for k, v in _SEASONS.items()
                }
                self.season = _SEASONS[min(errs, key=errs.get)]
        if span < self.season.total_seconds():
            raise InsufficientHistory(
                int(span // self.step) + 1 if self.step else 0,
                self.season_steps(self.season) + 1,
                f"{self.name} ({self.params.season} season)",
            )

    def _point_for(self, y: np.ndarray, a: int) -> float:
        s = self.season_steps(self.season)
        n = y.size
        back = s * -(-a // s)  # whole seasons back, enough to be in the past
        for extra in (0, s):
            i = n - 1 + a - back - extra
            if 0 <= i < n and not np.isnan(y[i]):
                return float(y[i])
        return float(y[last_valid_index(y)])

    def _insample(self, y: np.ndarray, ahead: np.ndarray, at: np.ndarray) -> np.ndarray:
        s = self.season_steps(self.season)
        return _take(y, at[None, :] - (s * -(-ahead // s))[:, None])


class SeasonalPersistenceParams(ForecasterParams):
    season: Literal["daily", "weekly"] = "daily"
    #: how many past seasons' changes to take the median of (1: the last
    #: one; more: a glitch one season ago no longer becomes today's spike)
    seasons: int = Field(1, ge=1, le=14)
    residual_window: Duration = timedelta(days=7)


class SeasonalPersistence(_NaiveBase):
    """``y[t] + median_k(y[t+a-k*s] - y[t-k*s])`` for k = 1..``seasons``:
    persistence plus the change seen over the same ``a`` steps one (or the
    median over several) seasons ago. Falls back to persistence where those
    seasons are missing."""

    name = "seasonal_persistence"
    Params = SeasonalPersistenceParams

    @property
    def min_history(self) -> int:
        return 24

    @property
    def _s(self) -> int:
        return self.season_steps(_SEASONS[self.params.season])

    def _point_for(self, y: np.ndarray, a: int) -> float:
        return self._point_at(y, a, last_valid_index(y))

    def _points(self, y: np.ndarray, ahead: np.ndarray) -> np.ndarray:
        i = last_valid_index(y)  # once, not per horizon
        return np.array([self._point_at(y, int(a), i) for a in ahead])

    def _point_at(self, y: np.ndarray, a: int, i: int) -> float:
        s = self._s
        last = float(y[i])
        if a >= s:
            return last
        changes = []
        for k in range(1, self.params.seasons + 1):
            j0, j1 = i - k * s, i - k * s + a
            if j0 >= 0 and j1 < y.size and not (np.isnan(y[j0]) or np.isnan(y[j1])):
                changes.append(float(y[j1] - y[j0]))
        if not changes:
            return last
        return max(0.0, last + float(np.median(changes)))

    def _insample(self, y: np.ndarray, ahead: np.ndarray, at: np.ndarray) -> np.ndarray:
        """``y[t-a] + median_k(y[t-k*s+a] - y[t-k*s])``, every horizon at once
        (one median over the seasons for all of them; with one season the
        change itself)."""
        s = self._s
        out = _take(y, at[None, :] - ahead[:, None])
        rows = np.flatnonzero(ahead < s)
        if rows.size == 0:
            return out
        a = ahead[rows][None, :, None]
        k = np.arange(1, self.params.seasons + 1)[:, None, None] * s
        changes = _take(y, at[None, None, :] - (k - a)) - _take(y, at[None, None, :] - k)  # (seasons, A, T)
        if changes.shape[0] == 1:
            change = changes[0]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no change known
                change = np.nanmedian(changes, axis=0)
        base = out[rows]
        out[rows] = np.where(np.isnan(change), base, base + change)
        return out
