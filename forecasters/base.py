"""The forecaster contract and the validation every forecaster shares.

A forecaster is fitted on a regular history (the engine resamples to the
target's interval; NaN marks a gap), absorbs new observations cheaply between
refits with :meth:`update`, and predicts quantiles for the ``horizon`` grid
points after ``start`` (the cycle's ``now``)::

    f = registry.get("seasonal_naive")()
    f.fit(history)                 # expensive, on the refit schedule
    f.update(history)              # cheap, every cycle: latest observations
    fc = f.predict(now, 3, (0.5, 0.9))

:class:`BaseForecaster` does the bookkeeping (fit-before-predict, minimum
history, the timestamp grid, monotone and non-negative quantiles) so a model
only implements ``_fit`` and ``_predict``. Backtesting and selection live
outside this contract (``engine.backtest``, ``forecasters.auto``).
"""

from __future__ import annotations

import hashlib
import pickle
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

from engine.core.errors import ForecastError, InsufficientHistory
from engine.core.plugins import Capabilities
from engine.core.types import Forecast, Series
from engine.core.units import to_epoch


class ForecasterParams(BaseModel):
    """Base of every forecaster's parameters (validated at config load)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the parameter that bounds how far ahead the model forecasts, for the
    #: one error a config whose policy reads further gets at load
    max_steps_field: ClassVar[str] = "horizon"

    @property
    def max_steps(self) -> int | None:
        """How many steps ahead these parameters let the model forecast
        (None: as far as asked)."""
        return None


@runtime_checkable
class Forecaster(Protocol):
    name: ClassVar[str]
    supports_quantiles: ClassVar[bool]

    @property
    def min_history(self) -> int: ...

    @property
    def version(self) -> str: ...

    def fit(self, history: Series) -> None: ...

    def update(self, history: Series) -> None: ...

    def predict(self, start: datetime, horizon: int, quantiles: Sequence[float]) -> Forecast: ...

    def save(self, path: str | Path) -> None: ...


class BaseForecaster:
    """Shared validation. Subclasses set ``name``, ``Params`` and implement
    ``_fit(history)`` and ``_predict(ahead, quantiles)``, where ``ahead`` is
    an int array of steps after the last observation (1 = next step)."""

    name: ClassVar[str] = "base"
    supports_quantiles: ClassVar[bool] = True
    #: plain ``fit(history)``, no ``init_from=`` (engine.core.plugins)
    capabilities: ClassVar[Capabilities] = Capabilities()
    Params: ClassVar[type[ForecasterParams]] = ForecasterParams

    def __init__(self, params: ForecasterParams | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if params is None or isinstance(params, Mapping):
            params = self.Params(**{**dict(params or {}), **kwargs})
        self.params = params
        self._history: Series | None = None  # what the model has seen (fit + updates)
        self._fitted_at_end: int | None = None  # epoch s of the last sample used by fit
        self._fit_count = 0
        self.step: int | None = None  # seconds

    # ------------------------------------------------------------ capabilities
    @property
    def min_history(self) -> int:
        """Valid observations needed to fit."""
        return 2

    @property
    def fitted(self) -> bool:
        return self._fitted_at_end is not None

    @property
    def version(self) -> str:
        """Identifies the fitted model: name, parameters, and the data window."""
        if not self.fitted:
            return f"{self.name}:unfitted"
        h = hashlib.sha1(
            f"{self.params.model_dump_json()}|{self._fitted_at_end}|{self._fit_count}".encode()
        ).hexdigest()[:10]
        return f"{self.name}:{h}"

    # ------------------------------------------------------------------- verbs
    def fit(self, history: Series) -> None:
        self._check_history(history)
        self.step = self._infer_step(history)
        self._history = history
        self._fit(history)
        self._fitted_at_end = int(history.timestamps[-1])
        self._fit_count += 1

    def update(self, history: Series) -> None:
        """Take in observations newer than the last fit or update. ``history``
        may be the full history or only the new samples."""
        if not self.fitted:
            raise ForecastError(f"{self.name}: update() before fit()")
        assert self._history is not None
        new = history.since(int(self._history.timestamps[-1]))
        if len(new) == 0:
            return
        if len(history) and history.timestamps[0] <= self._history.timestamps[-1]:
            # the caller passed the full history: keep it (no copy)
            self._history = history
        else:
            self._history = Series.concat(self._history, new)
        self._update(new)

    def predict(self, start: datetime, horizon: int, quantiles: Sequence[float] = (0.5, 0.9)) -> Forecast:
        if not self.fitted or self._history is None or self.step is None:
            raise ForecastError(f"{self.name}: predict() before fit()")
        levels = requested_levels(self.name, horizon, quantiles)
        step = self.step
        t0 = to_epoch(start)
        grid0 = (t0 // step) * step
        ts = grid0 + step * np.arange(1, horizon + 1, dtype=np.int64)
        last = int(self._history.timestamps[-1])
        if last > t0:
            raise ForecastError(
                f"{self.name}: history ends after the forecast start ({last} > {t0}): look-ahead"
            )
        ahead = ((ts - last) // step).astype(np.int64)
        point, qs = self._predict(ahead, levels)
        point = np.asarray(point, dtype=np.float64)
        if not np.all(np.isfinite(point)):
            raise ForecastError(f"{self.name}: produced a non-finite forecast")
        point = np.maximum(point, 0.0)
        out: dict[float, np.ndarray] = {}
        prev = None
        for q in levels:
            arr = np.maximum(np.asarray(qs[q], dtype=np.float64), 0.0)
            if not np.all(np.isfinite(arr)):
                raise ForecastError(f"{self.name}: produced a non-finite quantile {q}")
            if prev is not None:
                arr = np.maximum(arr, prev)  # monotone across levels
            out[q] = arr
            prev = arr
        return Forecast(made_at=start, timestamps=ts, point=point, quantiles=out,
                        model=self.name, model_version=self.version)

    # ------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    @classmethod
    def load(cls, path: str | Path) -> "BaseForecaster":
        obj = pickle.loads(Path(path).read_bytes())
        if not isinstance(obj, cls):
            raise ForecastError(f"{path} holds a {type(obj).__name__}, not a {cls.__name__}")
        return obj

    # ------------------------------------------------------------- for models
    def _fit(self, history: Series) -> None:
        raise NotImplementedError

    def _update(self, new: Series) -> None:
        """Default: nothing beyond keeping the history (models that read the
        latest observations from ``self._history`` at predict time)."""

    def _predict(self, ahead: np.ndarray, quantiles: Sequence[float]) -> tuple[np.ndarray, dict[float, np.ndarray]]:
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers
    def _check_history(self, history: Series) -> None:
        n = history.n_valid
        if n < self.min_history:
            raise InsufficientHistory(n, self.min_history, self.name)

    @staticmethod
    def _infer_step(history: Series) -> int:
        step = history.step()
        if step is None or step.total_seconds() <= 0:
            raise ForecastError("cannot infer the series step from fewer than two samples")
        return int(round(step.total_seconds()))

    def season_steps(self, season: timedelta) -> int:
        assert self.step
        return max(1, int(round(season.total_seconds() / self.step)))


def requested_levels(name: str, horizon: int, quantiles: Sequence[float]) -> list[float]:
    """The sorted levels of a forecast request, refusing a bad horizon or level."""
    if horizon < 1:
        raise ForecastError(f"{name}: horizon must be >= 1, got {horizon}")
    levels = sorted({float(q) for q in quantiles})
    for q in levels:
        if not 0.0 < q < 1.0:
            raise ForecastError(f"{name}: quantile {q} is not in (0, 1)")
    return levels


def residual_quantiles(residuals: np.ndarray, quantiles: Sequence[float]) -> dict[float, float]:
    """Empirical quantiles of residuals (actual - forecast), NaN-aware; zero
    where there are none."""
    r = residuals[np.isfinite(residuals)]
    if r.size == 0:
        return {float(q): 0.0 for q in quantiles}
    vals = np.quantile(r, list(quantiles))
    return {float(q): float(v) for q, v in zip(quantiles, vals)}


def last_valid_index(values: np.ndarray) -> int:
    ok = np.flatnonzero(~np.isnan(values))
    if ok.size == 0:
        raise InsufficientHistory(0, 1, "forecaster")
    return int(ok[-1])
