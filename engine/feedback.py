"""Predicted versus actual: the feedback that calibrates margins.

Every forecast point is kept next to the value later observed. From those
pairs come the rolling accuracy (MAE, MAPE, MASE, bias, coverage) and the
*conformal headroom*: the empirical ``1 - target`` quantile of the relative
under-forecast errors ``(actual - point) / point`` at the policy's horizon,
so that sizing from ``point * (1 + headroom)`` is exceeded at about the
target rate (split-conformal prediction over a rolling window).

Two implementations of one small interface: :class:`MemoryFeedback` for the
backtest, :class:`StoreFeedback` over the SQLite store for the live loop.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np

from .core.types import Forecast, Series
from .core.units import to_epoch


def conformal_headroom(actual: np.ndarray, point: np.ndarray, target_rate: float,
                       min_samples: int) -> float | None:
    """The ``1 - target_rate`` quantile of ``(actual - point) / point``.

    Points near zero would make relative errors explode, so the denominator
    is floored at 5 % of the mean actual value. ``None`` until there are
    ``min_samples`` pairs.
    """
    ok = np.isfinite(actual) & np.isfinite(point)
    a, p = (actual, point) if ok.all() else (actual[ok], point[ok])
    if a.size < min_samples or a.size == 0:
        return None
    floor = max(1e-9, 0.05 * float(np.abs(a).mean()))
    rel = (a - p) / np.maximum(p, floor)
    # the finite-sample conformal level: ceil((n+1)(1-alpha))/n
    n = rel.size
    level = min(1.0, math.ceil((n + 1) * (1 - target_rate)) / n)
    # == np.quantile(rel, level, method="higher"), whose virtual index is
    # written the same way, without its per-call overhead (this runs every
    # cycle of a backtest: np.quantile was a sixth of the run time)
    i = min(max(math.ceil(n * level + (1 + level * (1 - 1 - 1)) - 1), 0), n - 1)
    return float(np.partition(rel, i)[i])


def accuracy(actual: np.ndarray, point: np.ndarray, upper: np.ndarray | None = None,
             scale: float | None = None) -> dict[str, float]:
    """MAE, MAPE (%, over non-zero actuals), MASE (MAE / ``scale``: the
    in-sample MAE of the one-day seasonal naive), sMAPE (%), bias (mean of
    forecast - actual) and coverage of ``upper``."""
    ok = np.isfinite(actual) & np.isfinite(point)
    a, p = actual[ok], point[ok]
    out: dict[str, float] = {"n": float(a.size)}
    if a.size == 0:
        return out
    err = p - a
    out["mae"] = float(np.mean(np.abs(err)))
    nz = a != 0
    out["mape"] = float(np.mean(np.abs(err[nz] / a[nz])) * 100) if nz.any() else float("nan")
    denom = np.abs(a) + np.abs(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["smape"] = float(np.nanmean(np.where(denom > 0, 2 * np.abs(err) / denom, 0.0)) * 100)
    out["bias"] = float(np.mean(err))
    if scale:
        out["mase"] = out["mae"] / scale
    if upper is not None:
        u = upper[ok]
        out["coverage"] = float(np.mean(a <= u + 1e-12))
    return out


def seasonal_naive_scale(history: Series, season: timedelta = timedelta(days=1)) -> float | None:
    """In-sample MAE of the one-day seasonal naive (the MASE denominator)."""
    step = history.step()
    if step is None:
        return None
    k = int(round(season / step))
    v = history.values
    if k <= 0 or v.size <= k:
        return None
    d = np.abs(v[k:] - v[:-k])
    d = d[np.isfinite(d)]
    return float(np.mean(d)) if d.size and np.mean(d) > 0 else None


class Feedback(Protocol):
    def record(self, target: str, forecast: Forecast, horizons_s: tuple[int, int] | None = None) -> None: ...

    def observe(self, target: str, observed: Series) -> None: ...

    def headroom(self, target: str, now: datetime, horizons_s: tuple[int, int], target_rate: float,
                 window: timedelta, min_samples: int) -> float | None: ...


class MemoryFeedback:
    """In-memory predicted-vs-actual for the backtest: keeps only the
    horizons the policy sizes from, in growable arrays (O(1) per record)."""

    def __init__(self, horizons_s: tuple[int, int], window_points: int = 2000) -> None:
        self.lo, self.hi = horizons_s
        self.pending: dict[int, list[float]] = {}
        self._ts = np.empty(1024, dtype=np.int64)
        self._a = np.empty(1024)
        self._p = np.empty(1024)
        self.n = 0

    def record(self, target: str, forecast: Forecast, horizons_s: tuple[int, int] | None = None) -> None:
        """Keep the points at ``horizons_s`` (the cycle's lead window;
        default: the horizons given at construction)."""
        made = to_epoch(forecast.made_at)
        lo, hi = horizons_s or (self.lo, self.hi)
        for ts, p in zip(forecast.timestamps.tolist(), forecast.point.tolist()):
            if lo <= ts - made <= hi:
                self.pending.setdefault(ts, []).append(p)

    def _append(self, ts: int, a: float, p: float) -> None:
        if self.n == self._ts.size:
            self._ts = np.concatenate([self._ts, np.empty_like(self._ts)])
            self._a = np.concatenate([self._a, np.empty_like(self._a)])
            self._p = np.concatenate([self._p, np.empty_like(self._p)])
        self._ts[self.n], self._a[self.n], self._p[self.n] = ts, a, p
        self.n += 1

    def observe(self, target: str, observed: Series) -> None:
        for ts, v in zip(observed.timestamps.tolist(), observed.values.tolist()):
            pts = self.pending.pop(ts, None)
            if pts is not None and v == v:
                for p in pts:
                    self._append(ts, v, p)

    def pairs(self, since: int) -> tuple[np.ndarray, np.ndarray]:
        """(actual, point) of the pairs whose time is at or after ``since``."""
        i = int(np.searchsorted(self._ts[: self.n], since, side="left"))
        return self._a[i: self.n], self._p[i: self.n]

    def headroom(self, target: str, now: datetime, horizons_s: tuple[int, int], target_rate: float,
                 window: timedelta, min_samples: int) -> float | None:
        if self.n < min_samples:
            return None
        since = to_epoch(now) - int(window.total_seconds())
        i = int(np.searchsorted(self._ts[: self.n], since, side="left"))
        return conformal_headroom(self._a[i: self.n], self._p[i: self.n], target_rate, min_samples)


class StoreFeedback:
    """Predicted-vs-actual in the SQLite store (live loop)."""

    def __init__(self, store) -> None:  # engine.store.Store
        self.store = store

    def record(self, target: str, forecast: Forecast, horizons_s: tuple[int, int] | None = None) -> None:
        self.store.record_forecast(target, forecast)

    def observe(self, target: str, observed: Series) -> None:
        self.store.fill_actuals(target, observed)

    def headroom(self, target: str, now: datetime, horizons_s: tuple[int, int], target_rate: float,
                 window: timedelta, min_samples: int) -> float | None:
        rows = self.store.forecast_records(target, since=now - window, horizon_s=horizons_s)
        pairs = [(r["actual"], r["point"]) for r in rows]
        if not pairs:
            return None
        arr = np.array(pairs, dtype=float)
        return conformal_headroom(arr[:, 0], arr[:, 1], target_rate, min_samples)
