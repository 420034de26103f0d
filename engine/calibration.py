"""Conformal quantile calibration for any forecaster, from its own recent errors.

A forecaster's quantiles are honest only if the realized coverage of each
level matches the level: 90 % of actuals at or below the 0.9 quantile. Most
are not (residual bands from a week of one-step errors, a network trained on
other series, a statistical model's Gaussian interval). With
``forecaster.calibration`` set, the engine wraps every forecast of the target
(the configured model and the quality gate's fallbacks alike) in a
:class:`QuantileCalibrator`:

- every raw forecast is recorded at the lead steps :data:`ANCHOR_STEPS`
  (5 min ... 24 h on a 5-minute grid), each level's value next to the actual
  observed later (:class:`engine.feedback.MemoryFeedback` holds the pairs,
  one per anchor, over a rolling ``window``);
- each level ``q`` at each anchor is shifted by the empirical ``q``-quantile
  of its own errors ``actual - forecast_q`` there (split-conformal
  calibration of each quantile, as in conformalized quantile regression,
  Romano et al. 2019, one-sided per level; the finite-sample index
  ``ceil((n+1) q) / n`` above the median and its mirror below, the plain
  median at 0.5), so that on the recent pairs the shifted level is exceeded
  at its nominal rate;
- lead steps between anchors take the offsets interpolated linearly, beyond
  the last measured anchor its offsets; an anchor with fewer than
  ``min_samples`` pairs is skipped (no anchor measured yet: the forecast is
  left as it is);
- levels are kept non-crossing and non-negative; the point forecast is not
  changed (MASE is the same with and without);
- with ``adaptive`` (gamma > 0), adaptive conformal inference (Gibbs and
  Candes 2021) on top: each level ``q`` at each anchor takes its offset at an
  adapted level ``q'`` instead of ``q`` (:func:`adapted_level`), moved by
  ``gamma * (q - covered)`` at every pair of the window, ``covered`` being
  whether the actual was at or below the value this calibrator handed out
  for it (the calibrated forecast, kept beside the raw one). The recursion
  runs over the window's pairs in time order from ``q`` at its start, a
  function of the pairs kept. ``gamma`` is per pair (a live target pairs
  every interval, the accuracy benchmark once an hour). 0: off (exactly the
  split-conformal offsets above). The accuracy benchmark's variant only:
  the engine's targets run without it (:class:`StoreCalibrator`).

Pure over plain values and the pairs it keeps (no I/O, no clock): the cycle
passes the history and the forecast; the backtest and the accuracy benchmark
use the same class. The live loop uses :class:`StoreCalibrator`, the same
with every pair also written to the state store (``calibration_pairs``) and
read back when a target starts, so a restarted daemon's first forecast is
calibrated with the offsets the stopped one would have used.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta
from typing import Sequence

import numpy as np

from .core.types import Forecast, Series
from .core.units import to_epoch
from .feedback import MemoryFeedback

#: the range an adapted level is kept in (:func:`adapted_level`); beyond
#: the largest (smallest) order statistic's share the offset is that error
ADAPTED_RANGE = (0.001, 0.999)

#: the lead steps whose errors are kept (5 min, 10, 15, 30 min, 1 h, 2 h,
#: 4 h, 6 h, 12 h, 24 h at a 5-minute step: the planner's horizons, denser
#: where errors change fastest)
ANCHOR_STEPS = (1, 2, 3, 6, 12, 24, 48, 72, 144, 288)


def conformal_offset(errors: np.ndarray, level: float) -> float:
    """The shift that makes ``level`` cover its share of ``errors``
    (``actual - forecast`` at that level): their finite-sample conformal
    ``level``-quantile (``ceil((n+1) q)/n``, the next order statistic up,
    above the median; the mirror image below it; the median at 0.5)."""
    n = errors.size
    if level == 0.5:
        return float(np.median(errors))
    if level > 0.5:
        k = min(n, math.ceil((n + 1) * level))  # 1-based order statistic
    else:
        k = max(1, math.floor((n + 1) * level))
    return float(np.partition(errors, k - 1)[k - 1])


def adapted_level(level: float, covered: np.ndarray, gamma: float,
                  bounds: tuple[float, float] = ADAPTED_RANGE) -> float:
    """Adaptive conformal inference's level after ``covered`` (1.0 where an
    actual was at or below the value handed out for it, in time order):
    ``q' <- clip(q' + gamma * (level - covered_t))`` from ``q' = level``.
    A level that keeps being exceeded more often than ``1 - level`` climbs
    (the offset moves to a higher order statistic of the errors), one
    covered more often than ``level`` falls."""
    lo, hi = bounds
    if gamma == 0 or not covered.size:
        return float(level)
    steps = gamma * (level - covered)
    path = level + np.cumsum(steps)
    if lo <= path.min() and path.max() <= hi:  # never clipped: the sum is the recursion
        return float(path[-1])
    x = float(level)
    for d in steps.tolist():
        x = min(hi, max(lo, x + d))
    return x


class QuantileCalibrator:
    """Per-level, per-lead conformal offsets from the recorded pairs of one
    forecaster on one target.

    ``levels``: the quantile levels to calibrate (a forecast's other levels
    are left alone); ``step_s``: the target's interval; ``window``: how far
    back the pairs reach; ``min_samples``: pairs an anchor needs before it
    shifts anything; ``adaptive``: adaptive conformal inference's step
    ``gamma`` per pair (0: off); ``in_flight``: divide it at each anchor by
    the pairs made while one waits for its actual there (its lead over the
    pairs' spacing in the window; at least 1), so a long lead, whose misses
    are seen late and many at once, takes smaller steps (the accuracy
    benchmark's ``-acil`` variants)."""

    def __init__(self, levels: Sequence[float], step_s: int, window: timedelta, min_samples: int,
                 adaptive: float = 0.0, *, anchors: Sequence[int] = ANCHOR_STEPS, in_flight: bool = False) -> None:
        if not step_s > 0:
            raise ValueError(f"step_s must be positive, got {step_s}")
        if not 0 <= adaptive < 1:
            raise ValueError(f"adaptive must be in [0, 1), got {adaptive}")
        self.levels = tuple(sorted(float(q) for q in levels))
        self.step_s = int(step_s)
        self.window_s = int(window.total_seconds())
        self.min_samples = int(min_samples)
        self.anchors = tuple(int(a) for a in anchors)
        self._pairs = {a: MemoryFeedback((a * self.step_s, a * self.step_s), levels=self.levels,
                                         keep_s=self.window_s) for a in self.anchors}
        self.adaptive = float(adaptive)
        self.in_flight = bool(in_flight)
        #: with ``adaptive``: the values handed out at each anchor, paired
        #: with the same actuals as the raw ones (None: off)
        self._handed = {a: MemoryFeedback((a * self.step_s, a * self.step_s), levels=self.levels,
                                          keep_s=self.window_s) for a in self.anchors} if self.adaptive else None
        self._observed_until: int | None = None
        self._cached: tuple[int, dict[int, dict[float, float]]] | None = None

    #: offsets are recomputed once this many intervals have passed (the
    #: error distribution over days barely moves in a few steps; recomputing
    #: every cycle would cost a backtest a sort per level and lead per step)
    REFRESH_STEPS = 6

    # ----------------------------------------------------------- the pairs
    def observe(self, history: Series) -> Series | None:
        """Take in the actuals of ``history`` newer than the last call;
        returns them (None when there are none)."""
        if not len(history):
            return None
        new = history if self._observed_until is None else history.since(self._observed_until)
        if not len(new):
            return None
        for m in self._memories():
            if m.pending:  # nothing waits for an actual: nothing to pair
                m.observe("", new)
        self._observed_until = int(history.timestamps[-1])
        return new

    def _memories(self) -> list[MemoryFeedback]:
        return list(self._pairs.values()) + (list(self._handed.values()) if self._handed else [])

    def record(self, forecast: Forecast) -> None:
        """Keep the raw ``forecast`` at the anchor leads it reaches."""
        self._keep(self._pairs, forecast)

    def record_handed(self, forecast: Forecast) -> None:
        """With ``adaptive``: keep the calibrated ``forecast`` (what was
        handed out) at the anchor leads it reaches."""
        if self._handed is not None:
            self._keep(self._handed, forecast)

    @staticmethod
    def _keep(memories: dict[int, MemoryFeedback], forecast: Forecast) -> None:
        n = forecast.point.size
        for a, m in memories.items():
            if a <= n:
                m.record("", forecast)

    def adapted_levels(self, now_s: int) -> dict[int, dict[float, float]]:
        """anchor step -> level -> the adapted level over the window's pairs
        ending at ``now_s`` (with ``adaptive``; each level itself without)."""
        out: dict[int, dict[float, float]] = {}
        for a in self.anchors:
            if self._handed is None:
                out[a] = {q: q for q in self.levels}
                continue
            m = self._handed[a]
            actual, by_level = m.quantile_pairs(now_s - self.window_s)
            gamma = self.adaptive
            if self.in_flight and actual.size > 1:
                ts = m._ts[m.n - actual.size: m.n]
                span = float(ts[-1] - ts[0])
                if span > 0:  # pairs whose actuals are still out when one is made
                    gamma /= max(1.0, a * self.step_s * (actual.size - 1) / span)
            row = {}
            for q, f in by_level.items():
                ok = np.isfinite(f)
                row[q] = adapted_level(q, (actual[ok] <= f[ok]).astype(float), gamma)
            out[a] = row
        return out

    def offsets(self, now_s: int) -> dict[int, dict[float, float]]:
        """anchor step -> level -> offset, for the anchors with at least
        ``min_samples`` pairs of that level in the window ending at ``now_s``."""
        out: dict[int, dict[float, float]] = {}
        adapted = self.adapted_levels(now_s) if self._handed is not None else None
        for a, m in self._pairs.items():
            actual, by_level = m.quantile_pairs(now_s - self.window_s)
            if actual.size < self.min_samples:
                continue
            row = {}
            for q, f in by_level.items():
                e = actual - f
                e = e[np.isfinite(e)]
                if e.size >= self.min_samples:
                    row[q] = conformal_offset(e, q if adapted is None else adapted[a][q])
            if row:
                out[a] = row
        return out

    # ------------------------------------------------------------ applying
    def apply(self, forecast: Forecast) -> Forecast:
        """``forecast`` with each calibrated level shifted by its offsets at
        every lead (interpolated between anchors); unchanged until an anchor
        has ``min_samples`` pairs."""
        made = to_epoch(forecast.made_at)
        if self._cached is None or not 0 <= made - self._cached[0] < self.REFRESH_STEPS * self.step_s:
            self._cached = (made, self.offsets(made))
        offs = self._cached[1]
        if not offs or not forecast.quantiles:
            return forecast
        lead = (forecast.timestamps - made) / self.step_s
        qs = {q: np.asarray(v, dtype=float).copy() for q, v in forecast.quantiles.items()}
        for q in self.levels:
            if q not in qs:
                continue
            known = [(a, offs[a][q]) for a in sorted(offs) if q in offs[a]]
            if known:
                xs, ys = zip(*known)
                qs[q] = qs[q] + np.interp(lead, xs, ys)
        floor = min(0.0, min(float(np.min(v)) for v in forecast.quantiles.values())) if lead.size else 0.0
        prev = None
        for q in sorted(qs):
            v = np.maximum(qs[q], floor)
            if prev is not None:
                v = np.maximum(v, prev)  # non-crossing
            qs[q] = prev = v
        return replace(forecast, quantiles=qs)

    def calibrate(self, history: Series, forecast: Forecast) -> Forecast:
        """One cycle's use: take in ``history``'s new actuals, keep the raw
        ``forecast``, return it calibrated."""
        self.observe(history)
        out = self.apply(forecast)
        self.record(forecast)
        self.record_handed(out)
        return out


class StoreCalibrator(QuantileCalibrator):
    """A :class:`QuantileCalibrator` whose pairs are also kept in the state
    store (``calibration_pairs``, under the series name and the model's
    name), and loaded from it when it is made: a restart keeps the offsets,
    and forecasts made before it meet the actuals observed after it.
    ``store``: an :class:`engine.store.Store` (or its PostgreSQL twin).
    Split-conformal only (no ``adaptive``: that is the accuracy benchmark's
    variant, with nothing of it kept in the store)."""

    def __init__(self, levels: Sequence[float], step_s: int, window: timedelta, min_samples: int, *,
                 store, target: str, model: str, anchors: Sequence[int] = ANCHOR_STEPS) -> None:
        super().__init__(levels, step_s, window, min_samples, anchors=anchors)
        self.store, self.target, self.model = store, target, model
        by_lead = {a * self.step_s: m for a, m in self._pairs.items()}
        for lead, _made, ts, levels_at, actual in store.calibration_pairs(target, model, since=0):
            m = by_lead.get(lead)
            if m is None:  # written under another interval or anchor set
                continue
            q = np.array([levels_at.get(level, np.nan) for level in self.levels])
            if actual is None:
                m.pending.setdefault(ts, []).append((np.nan, np.nan, q))
            else:
                m._append(ts, actual, np.nan, np.nan, q)

    def observe(self, history: Series) -> Series | None:
        new = super().observe(history)
        if new is not None:
            self.store.fill_calibration_actuals(self.target, new)
        return new

    def record(self, forecast: Forecast) -> None:
        super().record(forecast)
        made = to_epoch(forecast.made_at)
        at = {int(ts) - made: (i, int(ts)) for i, ts in enumerate(forecast.timestamps.tolist())}
        rows = []
        for a in self.anchors:
            hit = at.get(a * self.step_s)
            if hit is not None:
                i, ts = hit
                rows.append((a * self.step_s, made, ts,
                             {q: float(forecast.quantiles[q][i]) for q in self.levels if q in forecast.quantiles}))
        if rows:
            self.store.record_calibration(self.target, self.model, rows, drop_before=made - self.window_s)

    def calibrate(self, history: Series, forecast: Forecast) -> Forecast:
        with self.store.batch():  # the cycle's pairs in one commit
            return super().calibrate(history, forecast)


__all__ = ["ADAPTED_RANGE", "ANCHOR_STEPS", "QuantileCalibrator", "StoreCalibrator", "adapted_level",
           "conformal_offset"]
