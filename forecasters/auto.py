"""``auto``: pick the forecaster for a target from evidence on its own history.

On :meth:`AutoForecaster.fit` each candidate (a registry name with its
parameters) is backtested by rolling origin on the most recent
``eval_window`` steps of the target's history, the way the engine uses a
forecaster: fitted once on the data before the first origin, then fed each
origin's new observations with ``update`` and asked for a forecast of the
next ``horizon_steps`` steps. Each forecast is scored with an asymmetric
absolute error::

    loss = under_weight * max(actual - forecast, 0) + max(forecast - actual, 0)

because an under-forecast costs an outage while an over-forecast costs some
idle capacity (``under_weight = 3``: an under-forecast costs three times as
much). Scores are the mean loss over all origins and horizon steps divided by
the mean actual, so they compare across targets.

The lowest score wins; ties go to the earlier candidate. The winner is then
fitted on the whole history. Later fits refit the winner only, until
``reselect_every`` has passed (measured on the data's own timestamps, not the
wall clock); then the backtest runs again. A candidate that cannot run (its
package is not installed, too little history, a bad parameter) is skipped
and the reason kept in :attr:`AutoForecaster.skipped`.

What the decision log records: ``Forecast.model_version`` is
``"auto:<choice>:<the choice's own version>"`` (``Forecast.model`` stays
``"auto"``, as the forecaster contract requires), and
:attr:`AutoForecaster.selection` is a plain dict (choice, scores, skipped
reasons, when and how it was evaluated) for ``Decision.extra``.
"""

from __future__ import annotations

import dataclasses
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.core.errors import ForecastError, InsufficientHistory, PluginError
from engine.core.types import Forecast, Series
from engine.core.units import from_epoch

from .base import BaseForecaster, ForecasterParams


class Candidate(BaseModel):
    """One candidate: a registry name, its parameters, and an optional label
    (to try one model with two parameter sets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: Mapping[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @property
    def key(self) -> str:
        return self.label or self.name


def _default_candidates() -> tuple[Candidate, ...]:
    # cheap, dependency-free models first; heavier ones are skipped with a
    # reason when their package is missing
    return (
        Candidate(name="seasonal_persistence"),
        Candidate(name="persistence"),
        Candidate(name="seasonal_naive"),
        Candidate(name="holt_winters"),
    )


class AutoParams(ForecasterParams):
    candidates: tuple[Candidate, ...] = Field(default_factory=_default_candidates)
    #: the policy's horizon in steps: forecasts are scored over steps 1..this
    horizon_steps: int = Field(2, ge=1)
    #: cost of an under-forecast relative to an over-forecast of the same size
    under_weight: float = Field(3.0, ge=1.0)
    #: how many of the most recent steps the backtest covers (288 = one day
    #: of 5-minute data)
    eval_window: int = Field(288, ge=2)
    #: forecast origins, spread evenly over the evaluation window
    n_origins: int = Field(48, ge=1)
    reselect_every: timedelta = timedelta(days=1)

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, v: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
        if not v:
            raise ValueError("candidates: at least one candidate is needed")
        keys = [c.key for c in v]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"candidates: duplicate names {dup} (give each a distinct label)")
        if any(c.name == "auto" for c in v):
            raise ValueError("candidates: 'auto' cannot be its own candidate")
        return v


def asymmetric_loss(actual: np.ndarray, forecast: np.ndarray, under_weight: float) -> np.ndarray:
    """Per-point loss: under-forecasts (actual above forecast) weigh
    ``under_weight`` times more. NaN where the actual is missing."""
    err = np.asarray(actual, dtype=float) - np.asarray(forecast, dtype=float)
    return np.where(err > 0, under_weight * err, -err)


_SKIPPABLE = (ForecastError, PluginError, ImportError, ValidationError, ValueError)


def _create(cand: Candidate) -> BaseForecaster:
    from . import registry

    cls = registry.get(cand.name)
    return cls(dict(cand.params))


def backtest(model: Any, history: Series, origins: Sequence[int], horizon: int,
             under_weight: float) -> float:
    """Rolling-origin score of a fresh ``model`` on ``history``: fitted on
    the data up to ``origins[0]``, updated to each origin, forecasting
    ``horizon`` steps. Returns mean asymmetric loss / mean actual. Reads no
    sample after an origin when forecasting from it."""
    ts, y = history.timestamps, history.values
    model.fit(history[: origins[0] + 1])
    losses, actuals = [], []
    for o in origins:
        model.update(history[: o + 1])
        fc = model.predict(from_epoch(int(ts[o])), horizon, (0.5,))
        want = y[o + 1: o + 1 + horizon]
        got = fc.point[: want.size]
        ok = np.isfinite(want)
        losses.append(asymmetric_loss(want[ok], got[ok], under_weight))
        actuals.append(np.abs(want[ok]))
    loss = np.concatenate(losses)
    if loss.size == 0:
        raise InsufficientHistory(0, 1, "backtest (observed actuals in the evaluation window)")
    scale = float(np.mean(np.concatenate(actuals)))
    return float(np.mean(loss)) / (scale if scale > 0 else 1.0)


class AutoForecaster(BaseForecaster):
    """Backtest-driven model selection; see the module docstring."""

    name = "auto"
    Params = AutoParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.choice: str | None = None
        self.scores: dict[str, float] = {}
        self.skipped: dict[str, str] = {}
        self._model: Any = None
        self._selected_at: int | None = None  # epoch s: history end at the last backtest

    @property
    def min_history(self) -> int:
        return 2 * self.params.horizon_steps + 2

    @property
    def version(self) -> str:
        if self._model is None:
            return f"{self.name}:unfitted"
        return f"{self.name}:{self.choice}:{self._model.version}"

    @property
    def selection(self) -> dict[str, Any]:
        """Choice, scores and skip reasons, for the decision log."""
        return {
            "choice": self.choice,
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "skipped": dict(self.skipped),
            "evaluated_at": None if self._selected_at is None else from_epoch(self._selected_at).isoformat(),
            "horizon_steps": self.params.horizon_steps,
            "under_weight": self.params.under_weight,
        }

    def _origins(self, n: int) -> list[int]:
        p = self.params
        w = min(p.eval_window, n // 2)
        first, last = n - 1 - w, n - 1 - p.horizon_steps
        if last < first or first < 1:
            raise InsufficientHistory(n, 2 * (p.horizon_steps + 1), "auto (backtest window)")
        return sorted({int(round(x)) for x in np.linspace(first, last, min(p.n_origins, last - first + 1))})

    def _fit(self, history: Series) -> None:
        p = self.params
        end = int(history.timestamps[-1])
        due = (self._selected_at is None or self.choice is None
               or end - self._selected_at >= p.reselect_every.total_seconds())
        if not due:
            try:
                self._model = self._fit_one(self._candidate(self.choice), history)
                return
            except _SKIPPABLE as exc:  # the winner broke: choose again now
                self.skipped[self.choice] = f"refit failed: {exc}"
        self._select(history)

    def _candidate(self, key: str | None) -> Candidate:
        return next(c for c in self.params.candidates if c.key == key)

    @staticmethod
    def _fit_one(cand: Candidate, history: Series) -> Any:
        model = _create(cand)
        model.fit(history)
        return model

    def _select(self, history: Series) -> None:
        p = self.params
        origins = self._origins(len(history))
        scores: dict[str, float] = {}
        skipped: dict[str, str] = {}
        for cand in p.candidates:
            try:
                scores[cand.key] = backtest(_create(cand), history, origins, p.horizon_steps, p.under_weight)
            except _SKIPPABLE as exc:
                skipped[cand.key] = f"{type(exc).__name__}: {exc}"
        order = sorted(scores, key=lambda k: (scores[k], [c.key for c in p.candidates].index(k)))
        for key in order:
            try:
                self._model = self._fit_one(self._candidate(key), history)
            except _SKIPPABLE as exc:
                skipped[key] = f"fit on the full history failed: {type(exc).__name__}: {exc}"
                continue
            self.choice, self.scores, self.skipped = key, scores, skipped
            self._selected_at = int(history.timestamps[-1])
            return
        self.scores, self.skipped = scores, skipped
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        if skipped and all("InsufficientHistory" in v for v in skipped.values()):
            raise InsufficientHistory(history.n_valid, self.min_history, f"auto (every candidate: {reasons})")
        raise ForecastError(f"auto: no candidate could be fitted ({reasons})")

    def _update(self, new: Series) -> None:
        self._model.update(new)

    def predict(self, start: datetime, horizon: int, quantiles: Sequence[float] = (0.5, 0.9)) -> Forecast:
        if self._model is None:
            raise ForecastError("auto: predict() before fit()")
        fc = self._model.predict(start, horizon, quantiles)
        # Forecast.model stays the registry name (the forecaster contract);
        # the choice is in the version, "auto:<choice>:<choice's version>"
        return dataclasses.replace(fc, model=self.name, model_version=self.version)

    # ------------------------------------------------------------- persistence
    def __getstate__(self) -> dict[str, Any]:
        # the chosen model persists itself (the lstm writes a torch
        # checkpoint, not a pickle), so store its own save() bytes
        state = dict(self.__dict__)
        model = state.pop("_model")
        if model is not None:
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "model"
                model.save(path)
                state["_model_bytes"] = path.read_bytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from . import registry

        blob = state.pop("_model_bytes", None)
        self.__dict__.update(state)
        self._model = None
        if blob is not None:
            cls = registry.get(self._candidate(self.choice).name)
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "model"
                path.write_bytes(blob)
                self._model = cls.load(path)


__all__ = ["AutoForecaster", "AutoParams", "Candidate", "asymmetric_loss", "backtest"]
