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
from typing import Any, Protocol

import numpy as np

from .core.types import Forecast, Series
from .core.units import to_epoch


#: the span of the rolling accuracy the daemon exports (``forescale_forecast_error``)
LIVE_ACCURACY_WINDOW = timedelta(days=1)


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


#: an actual counts as *near zero* below this share of the median absolute
#: actual (there a percentage error explodes: 0.1 against 0.001 is 10,000 %)
NEAR_ZERO = 0.05
#: MAPE is reported as meaningless when more than this share of the actuals
#: is near zero (:data:`NEAR_ZERO`); sMAPE and MASE stay usable there
MAPE_NEAR_ZERO_SHARE = 0.01


def near_zero_share(actual: np.ndarray) -> float:
    """Share of ``actual`` below :data:`NEAR_ZERO` x the median absolute
    actual (all of it when that median is 0)."""
    a = np.abs(actual[np.isfinite(actual)])
    if a.size == 0:
        return 0.0
    mag = float(np.median(a))
    return float(np.mean(a < NEAR_ZERO * mag)) if mag > 0 else 1.0


def accuracy(actual: np.ndarray, point: np.ndarray, upper: np.ndarray | None = None,
             scale: float | None = None) -> dict[str, float]:
    """MAE, MAPE (a ratio, 0.068 is 6.8 %, over non-zero actuals), sMAPE (a
    ratio, 0-2), MASE (MAE / ``scale``: the in-sample MAE of the one-day
    seasonal naive), bias (mean of forecast - actual), coverage of ``upper``,
    and ``near_zero_share`` (:func:`near_zero_share`; above
    :data:`MAPE_NEAR_ZERO_SHARE` MAPE is meaningless, see
    :func:`mape_meaningless`). Ratios, as the Prometheus gauges export them."""
    ok = np.isfinite(actual) & np.isfinite(point)
    a, p = actual[ok], point[ok]
    out: dict[str, float] = {"n": float(a.size)}
    if a.size == 0:
        return out
    err = p - a
    out["mae"] = float(np.mean(np.abs(err)))
    nz = a != 0
    out["mape"] = float(np.mean(np.abs(err[nz] / a[nz]))) if nz.any() else float("nan")
    denom = np.abs(a) + np.abs(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["smape"] = float(np.nanmean(np.where(denom > 0, 2 * np.abs(err) / denom, 0.0)))
    out["near_zero_share"] = near_zero_share(a)
    out["bias"] = float(np.mean(err))
    if scale:
        out["mase"] = out["mae"] / scale
    if upper is not None:
        u = upper[ok]
        out["coverage"] = float(np.mean(a <= u + 1e-12))
    return out


def mape_meaningless(acc: dict[str, float]) -> bool:
    """True when MAPE should not be read: no non-zero actual, or more than
    :data:`MAPE_NEAR_ZERO_SHARE` of the actuals near zero."""
    mape = acc.get("mape")
    return mape is None or mape != mape or acc.get("near_zero_share", 0.0) > MAPE_NEAR_ZERO_SHARE


def mape_warning() -> str:
    """Why MAPE is marked meaningless, in one phrase (for the reports)."""
    return (f"more than {MAPE_NEAR_ZERO_SHARE:.0%} of the actuals are below {NEAR_ZERO:.0%} of their median "
            "(or none is above zero)")


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


def upper_band(forecast: Forecast, level: float) -> np.ndarray:
    """The forecast at quantile ``level``, else its highest level, else the
    point (what ``forescale accuracy`` scores coverage against)."""
    if level in forecast.quantiles:
        return forecast.quantiles[level]
    if forecast.quantiles:
        return forecast.quantiles[max(forecast.quantiles)]
    return forecast.point


def grid_horizon(h: int, step: int) -> int:
    """A stored horizon ``h`` (seconds from the cycle's time) as steps ahead
    on the forecast's grid: a cycle that runs 18 s past the grid forecasts
    its 10th step 582 s ahead, which is the 10-minute horizon (as
    ``forescale accuracy`` groups it), not below it."""
    return -(-int(h) // max(1, int(step))) * max(1, int(step))


def grid_step(timestamps: Any) -> int | None:
    """The spacing of a forecast's (or a set of points') grid, seconds."""
    ts = np.unique(np.asarray(timestamps, dtype=np.int64))
    return int(np.median(np.diff(ts))) if ts.size >= 2 else None


class MemoryFeedback:
    """In-memory predicted-vs-actual at the horizons the policy sizes from
    (``horizons_s``, as steps ahead on the forecast's grid:
    :func:`grid_horizon`), in growable arrays (O(1) per record). The backtest's
    feedback, and the live loop's working set under :class:`StoreFeedback`.

    ``upper_level``: also keep the forecast at this quantile (for coverage);
    ``levels``: also keep the forecast at each of these quantile levels (the
    quality gate's pinball loss, the quantile calibration), NaN where a
    forecast lacks one; ``keep_s``: drop pairs (and unobserved points) older
    than this, relative to the newest pair, whenever the arrays fill (None:
    keep everything)."""

    def __init__(self, horizons_s: tuple[int, int], window_points: int = 2000, *,
                 upper_level: float | None = None, keep_s: int | None = None,
                 levels: tuple[float, ...] = ()) -> None:
        self.lo, self.hi = horizons_s
        self.upper_level = upper_level
        self.levels = tuple(float(q) for q in levels)
        self.keep_s = keep_s
        self.pending: dict[int, list[tuple]] = {}
        self._ts = np.empty(1024, dtype=np.int64)
        self._a = np.empty(1024)
        self._p = np.empty(1024)
        self._u = np.empty(1024)
        self._q = np.empty((1024, len(self.levels)))
        self.n = 0

    def record(self, target: str, forecast: Forecast, horizons_s: tuple[int, int] | None = None) -> None:
        """Keep the points at ``horizons_s`` (the cycle's lead window;
        default: the horizons given at construction)."""
        made = to_epoch(forecast.made_at)
        lo, hi = horizons_s or (self.lo, self.hi)
        up = upper_band(forecast, self.upper_level).tolist() if self.upper_level is not None else None
        nan = np.full(forecast.point.shape, np.nan)
        qs = np.stack([forecast.quantiles.get(q, nan) for q in self.levels], axis=1) if self.levels else None
        step = grid_step(forecast.timestamps) or 1
        for i, (ts, p) in enumerate(zip(forecast.timestamps.tolist(), forecast.point.tolist())):
            if lo <= grid_horizon(ts - made, step) <= hi:
                row = (p, p if up is None else up[i])
                self.pending.setdefault(ts, []).append(row if qs is None else (*row, qs[i]))

    def _append(self, ts: int, a: float, p: float, u: float, q: np.ndarray | None = None) -> None:
        if self.n == self._ts.size:
            self._trim(ts)
        if self.n == self._ts.size:
            self._ts = np.concatenate([self._ts, np.empty_like(self._ts)])
            self._a = np.concatenate([self._a, np.empty_like(self._a)])
            self._p = np.concatenate([self._p, np.empty_like(self._p)])
            self._u = np.concatenate([self._u, np.empty_like(self._u)])
            self._q = np.concatenate([self._q, np.empty_like(self._q)])
        self._ts[self.n], self._a[self.n], self._p[self.n], self._u[self.n] = ts, a, p, u
        if self.levels:
            self._q[self.n] = np.nan if q is None else q
        self.n += 1

    def _trim(self, newest: int) -> None:
        if self.keep_s is None:
            return
        cut = newest - self.keep_s
        i = int(np.searchsorted(self._ts[: self.n], cut, side="left"))
        if i:
            k = self.n - i
            for arr in (self._ts, self._a, self._p, self._u, self._q):
                arr[:k] = arr[i: self.n]
            self.n = k
        for ts in [t for t in self.pending if t < cut]:
            del self.pending[ts]

    def observe(self, target: str, observed: Series) -> None:
        for ts, v in zip(observed.timestamps.tolist(), observed.values.tolist()):
            if v == v:  # a gap leaves the points waiting, as the store does
                for row in self.pending.pop(ts, ()):
                    self._append(ts, v, *row)

    def pairs(self, since: int) -> tuple[np.ndarray, np.ndarray]:
        """(actual, point) of the pairs whose time is at or after ``since``."""
        i = int(np.searchsorted(self._ts[: self.n], since, side="left"))
        return self._a[i: self.n], self._p[i: self.n]

    def triples(self, since: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(actual, point, upper) of the pairs at or after ``since``."""
        i = int(np.searchsorted(self._ts[: self.n], since, side="left"))
        return self._a[i: self.n], self._p[i: self.n], self._u[i: self.n]

    def quantile_pairs(self, since: int) -> tuple[np.ndarray, dict[float, np.ndarray]]:
        """(actual, level -> forecast at that level) of the pairs at or after
        ``since``, for the ``levels`` given at construction."""
        i = int(np.searchsorted(self._ts[: self.n], since, side="left"))
        return self._a[i: self.n], {q: self._q[i: self.n, j] for j, q in enumerate(self.levels)}

    def headroom(self, target: str, now: datetime, horizons_s: tuple[int, int], target_rate: float,
                 window: timedelta, min_samples: int) -> float | None:
        if self.n < min_samples:
            return None
        since = to_epoch(now) - int(window.total_seconds())
        i = int(np.searchsorted(self._ts[: self.n], since, side="left"))
        return conformal_headroom(self._a[i: self.n], self._p[i: self.n], target_rate, min_samples)


class StoreFeedback:
    """Predicted-vs-actual for the live loop: every forecast point written
    to the SQLite store (``forescale accuracy`` reads it there), and the
    pairs at the cycle's lead window kept in a :class:`MemoryFeedback`,
    loaded from the store once (and again only when the window changes, as
    when a learned lead time moves it), then appended to as actuals arrive.
    So a cycle's headroom and accuracy read nothing from the store that grows
    with the history (they re-read up to three days of rows every cycle)."""

    def __init__(self, store, target: str, keep: timedelta, upper_level: float = 0.9) -> None:
        self.store = store  # engine.store.Store
        self.target = target
        self.keep = keep  # how far back the memory must reach (the longest window read)
        self.upper_level = upper_level
        self.memory: MemoryFeedback | None = None

    def at(self, horizons_s: tuple[int, int], now: datetime) -> MemoryFeedback:
        """The in-memory pairs at ``horizons_s`` (loaded on first use or a
        change of the window)."""
        m = self.memory
        if m is None or (m.lo, m.hi) != tuple(horizons_s):
            m = self.memory = MemoryFeedback(horizons_s, upper_level=self.upper_level,
                                             keep_s=int(self.keep.total_seconds()))
            lo, hi = horizons_s
            # steps ahead on the grid (a cycle off the grid stored its 10th
            # step 582 s ahead): the rows from a step below the window on
            rows = self.store.forecast_records(self.target, since=now - self.keep, horizon_s=(0, hi),
                                               with_actual=False)
            step = grid_step(np.array([r["ts"] for r in rows])) or 1
            rows = [r for r in rows if lo <= grid_horizon(r["horizon_s"], step) <= hi]
            for r in rows:
                u = _upper_of(r["quantiles"], self.upper_level, r["point"])
                if r["actual"] is None:
                    m.pending.setdefault(r["ts"], []).append((r["point"], u))
                else:
                    m._append(r["ts"], r["actual"], r["point"], u)
        return m

    def record(self, target: str, forecast: Forecast, horizons_s: tuple[int, int] | None = None) -> None:
        memory = self.at(horizons_s, forecast.made_at) if horizons_s is not None else self.memory
        self.store.record_forecast(target, forecast)
        if memory is not None:
            memory.record(target, forecast, horizons_s)

    def observe(self, target: str, observed: Series) -> None:
        self.store.fill_actuals(target, observed)
        if self.memory is not None:
            self.memory.observe(target, observed)

    def headroom(self, target: str, now: datetime, horizons_s: tuple[int, int], target_rate: float,
                 window: timedelta, min_samples: int) -> float | None:
        a, p, _ = self.at(horizons_s, now).triples(to_epoch(now - window))
        if a.size == 0:
            return None
        return conformal_headroom(a, p, target_rate, min_samples)


def _upper_of(qjson: str, level: float, point: float) -> float:
    """:func:`upper_band` for one stored row (its quantiles as JSON)."""
    import json

    q = json.loads(qjson)
    return float(q.get(str(level), max(q.values(), default=point)))
