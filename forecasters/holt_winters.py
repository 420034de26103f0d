"""Holt-Winters: additive damped trend plus an additive daily season.

Two speeds, matching the engine's refit schedule:

- :meth:`fit` (expensive, e.g. once a day) estimates the smoothing parameters
  (alpha, beta, gamma, phi) and the initial level, trend and seasonal states
  with statsmodels' ``ExponentialSmoothing`` on the last ``fit_window`` of
  history, then runs the recursion below over that window to get the state
  path.
- :meth:`update` (cheap, every cycle) runs the same recursion forward in numpy
  over the new observations with the parameters held fixed, so a forecast
  always starts from the latest observation.

The recursion is statsmodels' error-correction form (Hyndman & Athanasopoulos,
*Forecasting: Principles and Practice*, 2nd ed., section 7.3, "damped trend
with additive seasonality"), with ``s[t-m]`` the seasonal state one season
earlier::

    level[t]  = alpha * (y[t] - s[t-m]) + (1 - alpha) * (level[t-1] + phi * trend[t-1])
    trend[t]  = beta * (level[t] - level[t-1]) + (1 - beta) * phi * trend[t-1]
    s[t]      = gamma * (y[t] - level[t-1] - phi * trend[t-1]) + (1 - gamma) * s[t-m]
    yhat[t+h] = level[t] + (phi + phi^2 + ... + phi^h) * trend[t] + s[t+h-m*k]

where ``k = ceil(h/m)`` (the latest seasonal state for that time of day). A
missing observation (NaN) advances the states with the model's own one-step
forecast in place of ``y[t]``: the level follows the damped trend, the
seasonal state is carried over, and no error is absorbed.

Gaps at fit time: statsmodels needs a complete series, so interior NaNs are
filled by linear interpolation *for the parameter estimation only*; the state
path itself is computed from the raw data with the missing-value rule above.
Leading NaNs are dropped; trailing NaNs are treated as missing by the
recursion. A gap of at most ``SHORT_GAP`` (an hour) between two observations,
at fit time and as later samples arrive, is interpolated for the recursion
too (a metric sampled coarser than the grid); the error quantiles read the
observations only.

Quantiles come from the model's own recent errors at the same horizon: for
every origin ``t`` in the last ``residual_window`` of the state path, the
``h``-step forecast made from the state at ``t`` is compared with ``y[t+h]``,
and the empirical quantiles of those errors are added to the point forecast.

Fit time, 14 days of 5-minute data (4,032 points, season 288), statsmodels
0.15, ``initialization="estimated"`` without the brute-force start: about
0.9 s wall on an idle core (1.7-1.9 s of CPU, up to 4.5 s wall, on a loaded
2-core machine); ``"heuristic"`` takes 0.05-0.2 s. ``update`` costs about
0.1 ms per cycle and ``predict`` (12 steps, 2 quantiles) about 2 ms, most of it
the per-horizon error quantiles.
"""

from __future__ import annotations

import logging
import math
import warnings
from datetime import timedelta
from typing import Literal, Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator

from engine.core.errors import ForecastError, InsufficientHistory
from engine.core.types import Series
from engine.core.units import Duration

from .base import BaseForecaster, ForecasterParams, residual_quantiles

log = logging.getLogger(__name__)

#: Smoothing parameters used when the fit window is constant (nothing to
#: estimate: every parameter gives zero error). Moderate values so that the
#: model reacts if the series starts to move between refits.
_CONSTANT_SERIES_COEF = (0.5, 0.05, 0.05, 0.98)


class HoltWintersParams(ForecasterParams):
    #: Length of the seasonal cycle (daily by default).
    season: Duration = timedelta(days=1)
    #: History used by each refit; two weeks as in the reference setup.
    fit_window: Duration = timedelta(days=14)
    #: Recent errors that set the quantile band.
    residual_window: Duration = timedelta(days=7)
    #: statsmodels' initial-state method: ``estimated`` optimises the initial
    #: states with the parameters (better fit, ~0.9 s for 14 days at 5 min);
    #: ``heuristic`` decomposes the first two seasons (~0.05 s).
    initialization: Literal["estimated", "heuristic"] = "estimated"
    #: Lower bound on alpha (the level's smoothing parameter) for the fit.
    #: The one-step squared-error fit drives alpha towards 0 on strongly
    #: periodic series (0.017 on a NAB CPU trace, ~0 on a clean sine), which
    #: leaves the level almost deaf to new data: a level shift would take
    #: hours to enter the forecast. With alpha >= 0.1 half of a shift is
    #: absorbed within 7 samples, for a few per cent more noise in the
    #: forecast. Measured at 10 minutes, daily refits, 3 days each on five NAB
    #: traces, MASE free -> floored at 0.1: rds_cpu 0.86 -> 0.58, ec2_cpu
    #: 0.36 -> 0.31, AMZN 0.65 -> 0.64, asg 1.01 -> 1.00, elb 0.70 -> 0.71.
    #: 0 leaves alpha free.
    min_smoothing_level: float = Field(default=0.1, ge=0.0, lt=1.0)

    @field_validator("season", "fit_window", "residual_window")
    @classmethod
    def _positive(cls, v: timedelta, info) -> timedelta:
        if v <= timedelta(0):
            raise ValueError(f"{info.field_name} must be positive, got {v}")
        return v

    @model_validator(mode="after")
    def _window_holds_two_seasons(self) -> "HoltWintersParams":
        if self.fit_window < 2 * self.season:
            raise ValueError(
                f"fit_window ({self.fit_window}) must hold at least two seasons "
                f"(season = {self.season})"
            )
        return self


def damped_sum(phi: float, h: np.ndarray | int) -> np.ndarray:
    """``phi + phi^2 + ... + phi^h`` (``h`` when phi is 1)."""
    h = np.asarray(h, dtype=np.float64)
    if abs(1.0 - phi) < 1e-12:
        return h
    return phi * (1.0 - phi ** h) / (1.0 - phi)


def run_recursion(
    y: np.ndarray,
    coef: tuple[float, float, float, float],
    level: float,
    trend: float,
    seasonals: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the Holt-Winters recursion over ``y`` from the given states.

    ``seasonals`` holds the last ``m`` seasonal states, oldest first (the one
    for the first value of ``y`` at index 0). Returns the level and trend after
    each observation and the seasonal states ``s`` extended by one per
    observation (length ``m + len(y)``). NaN in ``y`` advances the states with
    the one-step forecast.
    """
    alpha, beta, gamma, phi = coef
    m = int(seasonals.size)
    n = int(y.size)
    lvl = np.empty(n)
    trd = np.empty(n)
    s = np.empty(m + n)
    s[:m] = seasonals
    # plain floats in the loop: ~1 us per step, 4 ms for two weeks at 5 min
    yl = y.tolist()
    sl = s.tolist()
    l_prev, b_prev = float(level), float(trend)
    for t in range(n):
        s_old = sl[t]
        base = l_prev + phi * b_prev
        yt = yl[t]
        if yt != yt:  # NaN: take the model's own forecast, absorb no error
            l_new, b_new, s_new = base, phi * b_prev, s_old
        else:
            l_new = alpha * (yt - s_old) + (1.0 - alpha) * base
            b_new = beta * (l_new - l_prev) + (1.0 - beta) * phi * b_prev
            s_new = gamma * (yt - base) + (1.0 - gamma) * s_old
        lvl[t] = l_new
        trd[t] = b_new
        sl[m + t] = s_new
        l_prev, b_prev = l_new, b_new
    return lvl, trd, np.asarray(sl, dtype=np.float64)


class HoltWinters(BaseForecaster):
    """Additive damped-trend Holt-Winters with a daily season; parameters
    refit on the engine's schedule, states updated every cycle."""

    name = "holt_winters"
    Params = HoltWintersParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.coef: tuple[float, float, float, float] | None = None  # alpha, beta, gamma, phi
        #: level, trend and the m seasonal states before the first fitted sample
        self.initial_states: tuple[float, float, np.ndarray] | None = None
        self._m = 0
        # the state path over the kept window: observations, level and trend
        # after each, and seasonal states shifted by m (s[i] is for y[i - m])
        self._y = np.empty(0)
        self._lvl = np.empty(0)
        self._trd = np.empty(0)
        self._s = np.empty(0)
        self._last_ts = 0  # epoch s of the last grid point in the path
        self._band: dict[tuple[int, float], float] = {}
        self._band_key: tuple[int, int] | None = None

    @property
    def min_history(self) -> int:
        # two daily seasons at an hourly step; the exact need (two seasons at
        # the series' own step) is checked in fit once the step is known
        return 48

    # ------------------------------------------------------------------- fit
    def _fit(self, history: Series) -> None:
        assert self.step is not None
        m = self.season_steps(self.params.season)
        if m < 2:
            raise ForecastError(
                f"{self.name}: season ({self.params.season}) must span at least two steps "
                f"of the series (step {self.step} s)"
            )
        start = int(history.timestamps[-1]) - int(self.params.fit_window.total_seconds())
        y = history.since(start).values
        ok = np.flatnonzero(~np.isnan(y))
        if ok.size == 0:
            raise InsufficientHistory(0, 2 * m, f"{self.name} (two seasons in the fit window)")
        y = y[ok[0]:]
        span = int(ok[-1] - ok[0]) + 1
        if span < 2 * m:
            raise InsufficientHistory(
                int(ok.size), 2 * m, f"{self.name} (two seasons of {self.params.season})"
            )
        if ok.size < m:
            raise InsufficientHistory(
                int(ok.size), m, f"{self.name} (valid samples in the fit window)"
            )
        observed = y[: span]
        filled = _interpolate(observed)
        coef, level0, trend0, seasons0 = self._estimate(filled, m)
        lvl, trd, s = run_recursion(fill_short_gaps(y, self._short_gap()), coef, level0, trend0, seasons0)
        self.coef, self._m = coef, m
        self.initial_states = (level0, trend0, seasons0)
        self._y, self._lvl, self._trd, self._s = y.copy(), lvl, trd, s
        self._last_ts = int(history.timestamps[-1])
        self._band_key = None
        self._trim()

    def _estimate(
        self, y: np.ndarray, m: int
    ) -> tuple[tuple[float, float, float, float], float, float, np.ndarray]:
        scale = max(1.0, float(np.max(np.abs(y))))
        if float(np.ptp(y)) <= 1e-9 * scale:
            # constant window: nothing to estimate, and the optimiser divides
            # by the variance; the forecast is the constant
            return _CONSTANT_SERIES_COEF, float(y[-1]), 0.0, np.zeros(m)
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        lo = self.params.min_smoothing_level
        bounds = {"smoothing_level": (lo, 1.0)} if lo > 0 else None
        with warnings.catch_warnings():
            # ConvergenceWarning and friends: the parameters are checked below
            warnings.simplefilter("ignore")
            try:
                res = ExponentialSmoothing(
                    y,
                    trend="add",
                    damped_trend=True,
                    seasonal="add",
                    seasonal_periods=m,
                    initialization_method=self.params.initialization,
                    bounds=bounds,
                ).fit(optimized=True, use_brute=False)
            except (ValueError, np.linalg.LinAlgError) as exc:
                raise ForecastError(f"{self.name}: statsmodels fit failed: {exc}") from exc
        p = res.params
        coef = (
            float(p["smoothing_level"]),
            float(p["smoothing_trend"]),
            float(p["smoothing_seasonal"]),
            float(p["damping_trend"]),
        )
        seasons = np.asarray(p["initial_seasons"], dtype=np.float64)
        level0, trend0 = float(p["initial_level"]), float(p["initial_trend"])
        if not (all(math.isfinite(c) for c in coef) and math.isfinite(level0)
                and math.isfinite(trend0) and np.all(np.isfinite(seasons))):
            raise ForecastError(f"{self.name}: statsmodels returned non-finite parameters {coef}")
        log.debug("%s fitted alpha=%.4f beta=%.4f gamma=%.4f phi=%.4f on %d points",
                  self.name, *coef, y.size)
        return coef, level0, trend0, seasons

    # ---------------------------------------------------------------- update
    def _update(self, new: Series) -> None:
        assert self.coef is not None and self.step is not None
        # place the samples on the grid after the last absorbed one; a skipped
        # grid point is a missing observation
        offsets = np.rint((new.timestamps - self._last_ts) / self.step).astype(np.int64)
        keep = offsets >= 1
        offsets, vals = offsets[keep], new.values[keep]
        if offsets.size == 0:
            return
        y = np.full(int(offsets[-1]), np.nan)
        y[offsets - 1] = vals
        # a short gap since the last absorbed observation is interpolated from it
        run = fill_short_gaps(np.concatenate([self._y[-1:], y]), self._short_gap())[1:]
        lvl, trd, s = run_recursion(
            run, self.coef, float(self._lvl[-1]), float(self._trd[-1]), self._s[-self._m:]
        )
        self._y = np.concatenate([self._y, y])
        self._lvl = np.concatenate([self._lvl, lvl])
        self._trd = np.concatenate([self._trd, trd])
        self._s = np.concatenate([self._s, s[self._m:]])
        self._last_ts += int(offsets[-1]) * self.step
        self._trim()

    def _short_gap(self) -> int:
        assert self.step
        return int(SHORT_GAP.total_seconds() // self.step)

    def _trim(self) -> None:
        """Keep the residual window plus two seasons of horizons."""
        keep = self._window() + 2 * self._m
        extra = self._y.size - keep
        if extra > 0:
            self._y = self._y[extra:]
            self._lvl = self._lvl[extra:]
            self._trd = self._trd[extra:]
            self._s = self._s[extra:]

    # --------------------------------------------------------------- predict
    def _window(self) -> int:
        assert self.step
        return max(12, int(self.params.residual_window.total_seconds() // self.step))

    def forecast_from(self, origin: np.ndarray | int, h: np.ndarray | int) -> np.ndarray:
        """The ``h``-step forecast made from the state at path index ``origin``."""
        assert self.coef is not None
        phi = self.coef[3]
        origin = np.asarray(origin, dtype=np.int64)
        h = np.asarray(h, dtype=np.int64)
        k = -(-h // self._m)  # ceil(h / m): seasons back to a known state
        seasonal = self._s[origin + h - self._m * k + self._m]
        return self._lvl[origin] + damped_sum(phi, h) * self._trd[origin] + seasonal

    def _predict(self, ahead: np.ndarray, quantiles: Sequence[float]):
        n = self._y.size
        point = self.forecast_from(np.full(ahead.shape, n - 1), ahead)
        key = (int(self._history.timestamps[-1]) if self._history is not None else 0, n)
        if key != self._band_key:
            self._band_key, self._band = key, {}
        qs: dict[float, np.ndarray] = {q: np.empty(ahead.size) for q in quantiles}
        for i, a in enumerate(ahead.tolist()):
            for q, v in self._errors_at(int(a), quantiles).items():
                qs[q][i] = point[i] + v
        return point, qs

    def _errors_at(self, h: int, quantiles: Sequence[float]) -> dict[float, float]:
        """Quantiles of ``y[t+h] - forecast_from(t, h)`` over the residual
        window. Horizons longer than the kept path use the longest one."""
        n = self._y.size
        w = self._window()
        h = max(1, min(h, n - 12))
        missing = [q for q in quantiles if (h, q) not in self._band]
        if missing:
            origins = np.arange(max(0, n - h - w), n - h)
            if origins.size == 0:
                vals = {float(q): 0.0 for q in missing}
            else:
                err = self._y[origins + h] - self.forecast_from(origins, np.full(origins.size, h))
                vals = residual_quantiles(err, missing)
            self._band.update({(h, q): v for q, v in vals.items()})
        return {q: self._band[(h, q)] for q in quantiles}


#: a gap between two observations of at most this long is filled by linear
#: interpolation before the recursion runs over it: a metric scraped every 30
#: minutes on a 5-minute interval has five missing grid points in six, and the
#: missing-value rule (the model's own forecast in place of each) let every
#: observation's whole jump into level and trend at once: on ``nyc_taxi`` the
#: forecast reached 1e189. A longer gap (an outage) keeps the rule.
SHORT_GAP = timedelta(hours=1)


def fill_short_gaps(y: np.ndarray, max_steps: int) -> np.ndarray:
    """``y`` with each interior run of at most ``max_steps`` NaNs filled by
    linear interpolation between the observations either side; longer runs
    and leading or trailing NaNs stay NaN."""
    bad = np.isnan(y)
    if not bad.any() or max_steps < 1:
        return y
    ok = np.flatnonzero(~bad)
    if ok.size < 2:
        return y
    out = y.copy()
    gaps = np.diff(ok) - 1  # NaNs between consecutive observations
    for i in np.flatnonzero((gaps >= 1) & (gaps <= max_steps)):
        a, b = ok[i], ok[i + 1]
        out[a + 1: b] = y[a] + (y[b] - y[a]) * np.arange(1, b - a) / (b - a)
    return out


def _interpolate(y: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaNs (ends held at the nearest value)."""
    bad = np.isnan(y)
    if not bad.any():
        return y
    idx = np.arange(y.size)
    out = y.copy()
    out[bad] = np.interp(idx[bad], idx[~bad], y[~bad])
    return out
