"""``auto``: pick the forecaster for a target from evidence on its own history.

On :meth:`AutoForecaster.fit` each candidate (a registry name with its
parameters) is backtested by rolling origin on the most recent
``eval_window`` steps of the target's history, the way the engine uses a
forecaster: fitted once on the data before the first origin, then fed each
origin's new observations with ``update`` and asked for a forecast of the
next ``horizon_steps`` steps. Each forecast is scored where the policy
reads it: at the steps in ``horizons`` (default: every step of the lead-time
window, ``1..horizon_steps``) and over its whole distribution, by the mean
pinball (quantile) loss over ``levels`` (default the planner's
0.5/0.8/0.9/0.95/0.99)::

    pinball_q = max(q * (actual - forecast_q), (q - 1) * (actual - forecast_q))

so a model with a good median but dishonest upper quantiles loses to one
whose 0.9 and 0.99 levels are where they claim to be (the policy sizes from
the upper quantiles). ``score="asymmetric"`` scores the point forecast alone
with an asymmetric absolute error instead::

    loss = under_weight * max(actual - forecast, 0) + max(forecast - actual, 0)

(an under-forecast costs an outage, an over-forecast some idle capacity).
Either score is the mean loss over all origins and scored steps divided by
the mean actual, so scores compare across targets.

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
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.core.checks import repeated
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
    #: the policy's horizon in steps: forecasts are made for steps 1..this
    horizon_steps: int = Field(2, ge=1)
    #: the steps ahead scored (each <= horizon_steps); default every step of
    #: the lead-time window 1..horizon_steps
    horizons: tuple[int, ...] | None = None
    #: "pinball": mean pinball loss over ``levels`` (the distribution the
    #: policy sizes from); "asymmetric": the point forecast's asymmetric error
    score: Literal["pinball", "asymmetric"] = "pinball"
    #: the quantile levels scored by the pinball loss
    levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)
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
        dup = repeated(keys)
        if dup:
            raise ValueError(f"candidates: duplicate names {dup} (give each a distinct label)")
        if any(c.name == "auto" for c in v):
            raise ValueError("candidates: 'auto' cannot be its own candidate")
        return v

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0.0 < q < 1.0 for q in v):
            raise ValueError(f"levels: each must be in (0, 1), got {list(v)}")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _horizons_in_window(self) -> "AutoParams":
        if self.horizons is not None:
            bad = [h for h in self.horizons if not 1 <= h <= self.horizon_steps]
            if not self.horizons or bad:
                raise ValueError(f"horizons: steps must lie in 1..horizon_steps ({self.horizon_steps}), "
                                 f"got {list(self.horizons)}")
        return self

    @property
    def scored_steps(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.horizons))) if self.horizons else tuple(range(1, self.horizon_steps + 1))


def asymmetric_loss(actual: np.ndarray, forecast: np.ndarray, under_weight: float) -> np.ndarray:
    """Per-point loss: under-forecasts (actual above forecast) weigh
    ``under_weight`` times more. NaN where the actual is missing."""
    err = np.asarray(actual, dtype=float) - np.asarray(forecast, dtype=float)
    return np.where(err > 0, under_weight * err, -err)


SKIPPABLE = (ForecastError, PluginError, ImportError, ValidationError, ValueError)


def create_candidate(cand: Candidate) -> BaseForecaster:
    from . import registry

    cls = registry.get(cand.name)
    return cls(dict(cand.params))


def pinball_loss(actual: np.ndarray, quantiles: Mapping[float, np.ndarray]) -> np.ndarray:
    """Per-point pinball loss averaged over the levels in ``quantiles``
    (level -> forecast of that level, aligned with ``actual``)."""
    a = np.asarray(actual, dtype=float)
    total = np.zeros_like(a)
    for q, f in quantiles.items():
        d = a - np.asarray(f, dtype=float)
        total += np.maximum(q * d, (q - 1) * d)
    return total / max(len(quantiles), 1)


@dataclasses.dataclass(frozen=True)
class BacktestSums:
    """The sums a rolling-origin score is made of, so scores of several
    runs over disjoint origins (folds run apart, e.g. on a cluster) combine
    exactly: ``score = (loss_sum / loss_n) / (actual_sum / actual_n)``."""

    loss_sum: float
    loss_n: int
    actual_sum: float
    actual_n: int

    def __add__(self, other: "BacktestSums") -> "BacktestSums":
        return BacktestSums(self.loss_sum + other.loss_sum, self.loss_n + other.loss_n,
                            self.actual_sum + other.actual_sum, self.actual_n + other.actual_n)

    @property
    def score(self) -> float:
        if self.loss_n == 0:
            raise InsufficientHistory(0, 1, "backtest (observed actuals in the evaluation window)")
        scale = self.actual_sum / self.actual_n
        return (self.loss_sum / self.loss_n) / (scale if scale > 0 else 1.0)


def backtest_sums(model: Any, history: Series, origins: Sequence[int], horizon: int,
                  under_weight: float, *, steps: Sequence[int] | None = None,
                  levels: Sequence[float] | None = None) -> BacktestSums:
    """Rolling origin on ``history``: ``model`` (fresh) fitted on the data up
    to ``origins[0]``, updated to each origin, forecasting ``horizon``
    steps, scored at ``steps`` (1-based; default all). With ``levels``: the
    pinball loss over them; without: the point forecast's asymmetric loss.
    Reads no sample after an origin when forecasting from it."""
    ts, y = history.timestamps, history.values
    idx = np.asarray(steps if steps is not None else range(1, horizon + 1), dtype=np.int64) - 1
    model.fit(history[: origins[0] + 1])
    loss_sum = actual_sum = 0.0
    n = 0
    for o in origins:
        model.update(history[: o + 1])
        fc = model.predict(from_epoch(int(ts[o])), horizon, tuple(levels) if levels else (0.5,))
        want = y[o + 1: o + 1 + horizon]
        i = idx[idx < want.size]
        want = want[i]
        ok = np.isfinite(want)
        if levels:
            loss = pinball_loss(want[ok], {q: fc.quantiles[q][i][ok] for q in levels})
        else:
            loss = asymmetric_loss(want[ok], fc.point[i][ok], under_weight)
        loss_sum += float(np.sum(loss))
        actual_sum += float(np.sum(np.abs(want[ok])))
        n += int(loss.size)
    return BacktestSums(loss_sum, n, actual_sum, n)


def backtest(model: Any, history: Series, origins: Sequence[int], horizon: int,
             under_weight: float, *, steps: Sequence[int] | None = None,
             levels: Sequence[float] | None = None) -> float:
    """Rolling-origin score of a fresh ``model`` (:func:`backtest_sums`):
    mean loss / mean actual."""
    return backtest_sums(model, history, origins, horizon, under_weight, steps=steps, levels=levels).score


def backtest_origins(n: int, params: AutoParams) -> list[int]:
    """The forecast origins of a backtest over a history of ``n`` steps: up
    to ``n_origins``, spread evenly over the last ``eval_window`` steps (at
    most half the history), each with ``horizon_steps`` actuals after it."""
    w = min(params.eval_window, n // 2)
    first, last = n - 1 - w, n - 1 - params.horizon_steps
    if last < first or first < 1:
        raise InsufficientHistory(n, 2 * (params.horizon_steps + 1), "auto (backtest window)")
    return sorted({int(round(x)) for x in np.linspace(first, last, min(params.n_origins, last - first + 1))})


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
            "scored_steps": list(self.params.scored_steps),
            "score": self.params.score,
            **({"levels": list(self.params.levels)} if self.params.score == "pinball"
               else {"under_weight": self.params.under_weight}),
        }

    def _fit(self, history: Series) -> None:
        p = self.params
        end = int(history.timestamps[-1])
        due = (self._selected_at is None or self.choice is None
               or end - self._selected_at >= p.reselect_every.total_seconds())
        if not due:
            try:
                self._model = self._fit_one(self._candidate(self.choice), history)
                return
            except SKIPPABLE as exc:  # the winner broke: choose again now
                self.skipped[self.choice] = f"refit failed: {exc}"
        self._select(history)

    def _candidate(self, key: str | None) -> Candidate:
        return next(c for c in self.params.candidates if c.key == key)

    @staticmethod
    def _fit_one(cand: Candidate, history: Series) -> Any:
        model = create_candidate(cand)
        model.fit(history)
        return model

    def _select(self, history: Series) -> None:
        p = self.params
        origins = backtest_origins(len(history), p)
        scores: dict[str, float] = {}
        skipped: dict[str, str] = {}
        for cand in p.candidates:
            try:
                scores[cand.key] = backtest(create_candidate(cand), history, origins, p.horizon_steps, p.under_weight,
                                            steps=p.scored_steps,
                                            levels=p.levels if p.score == "pinball" else None)
            except SKIPPABLE as exc:
                skipped[cand.key] = f"{type(exc).__name__}: {exc}"
        order = sorted(scores, key=lambda k: (scores[k], [c.key for c in p.candidates].index(k)))
        for key in order:
            try:
                self._model = self._fit_one(self._candidate(key), history)
            except SKIPPABLE as exc:
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


__all__ = ["AutoForecaster", "AutoParams", "BacktestSums", "Candidate", "SKIPPABLE", "asymmetric_loss", "backtest",
           "backtest_origins", "backtest_sums", "create_candidate", "pinball_loss"]
