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
from engine.core.units import Duration, format_duration, from_epoch

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
    #: the policy's horizon in steps: forecasts are made for steps 1..this.
    #: Unstated, the engine states the target's forecast horizon (the lead
    #: window, a planner's whole horizon); used alone, the largest step
    #: ``horizons`` or ``lead_bands`` names, else 2
    horizon_steps: int | None = Field(None, ge=1)
    #: the steps ahead scored (each <= horizon_steps); default every step of
    #: the lead-time window 1..horizon_steps
    horizons: tuple[int, ...] | None = None
    #: choose per lead: the last step of each band but the last (which runs
    #: to horizon_steps), e.g. ``[6, 12]`` for steps 1-6, 7-12 and
    #: 13-horizon_steps, or the leads as durations (``[30m, 1h]``, which a
    #: target turns into steps of its interval). Each band's steps come from
    #: the candidate with the lowest score on the scored steps inside it.
    #: None: one choice for all
    lead_bands: tuple[int | Duration, ...] | None = None
    #: "pinball": mean pinball loss over ``levels`` (the distribution the
    #: policy sizes from); "asymmetric": the point forecast's asymmetric error
    score: Literal["pinball", "asymmetric"] = "pinball"
    #: the quantile levels scored by the pinball loss
    levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)
    #: the first candidate is kept unless another's score is lower by at
    #: least this fraction of its own (per band with ``lead_bands``): a
    #: backtest over a few days is noisy, and the first is the one you trust
    #: (0: the lowest score wins)
    margin: float = Field(0.0, ge=0.0, lt=1.0)
    #: cost of an under-forecast relative to an over-forecast of the same size
    under_weight: float = Field(3.0, ge=1.0)
    #: how many of the most recent steps the backtest covers (288 = one day
    #: of 5-minute data)
    eval_window: int = Field(288, ge=2)
    #: forecast origins, spread evenly over the evaluation window
    n_origins: int = Field(48, ge=1)
    reselect_every: Duration = timedelta(days=1)

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
        from . import registry

        known = registry.names()
        for i, c in enumerate(v):
            # (a known one whose package is missing is skipped with its
            # reason at selection; a name no registry has is a typo, and
            # every selection would fail on it)
            if c.name not in known:
                raise ValueError(f"candidates[{i}].name: unknown forecaster {c.name!r}; known: "
                                 f"{', '.join(n for n in known if n != 'auto')}")
        return v

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0.0 < q < 1.0 for q in v):
            raise ValueError(f"levels: each must be in (0, 1), got {list(v)}")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _horizons_in_window(self) -> "AutoParams":
        stated = self.horizon_steps is not None
        steps = [b for b in self.lead_bands or () if isinstance(b, int)]
        if not stated:  # unstated (model_fields_set keeps saying so)
            named = [*(self.horizons or ()), *((max(steps) + 1,) if steps else ())]
            object.__setattr__(self, "horizon_steps", max([2, *named]))
        if self.horizons is not None:
            bad = [h for h in self.horizons if not 1 <= h <= self.horizon_steps]
            if not self.horizons or bad:
                raise ValueError(f"horizons: steps must lie in 1..horizon_steps ({self.horizon_steps}), "
                                 f"got {list(self.horizons)}")
        if self.lead_bands is not None and not self.lead_bands_in_steps:
            if steps:
                shown = [b if isinstance(b, int) else format_duration(b) for b in self.lead_bands]
                raise ValueError(f"lead_bands: all steps or all durations, got {shown}")
        elif self.lead_bands is not None:  # (durations: checked once a target states them in steps)
            b = list(self.lead_bands)
            if not b or any(not 1 <= x < self.horizon_steps for x in b) or b != sorted(set(b)):
                raise ValueError(f"lead_bands: increasing steps in 1..{self.horizon_steps - 1} (horizon_steps - 1), "
                                 f"got {b}")
            # (unstated, the last band's end is the engine's to state)
            empty = [f"{lo}-{hi}" for lo, hi in self.bands[: None if stated else -1]
                     if not any(lo <= h <= hi for h in self.scored_steps)]
            if empty:
                raise ValueError(f"lead_bands: no scored step (horizons) in the band of steps {', '.join(empty)}")
        return self

    @property
    def scored_steps(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.horizons))) if self.horizons else tuple(range(1, self.horizon_steps + 1))

    @property
    def lead_bands_in_steps(self) -> bool:
        return all(isinstance(b, int) for b in self.lead_bands or ())

    def in_steps(self, interval: timedelta) -> "AutoParams":
        """These parameters with ``lead_bands`` given as durations turned into
        steps of ``interval`` (each lead rounded up to a whole step; leads
        that round to one step become one band), validated again."""
        if self.lead_bands_in_steps:
            return self
        step = int(interval.total_seconds())
        at = {b: max(1, -(-int(b.total_seconds()) // step)) for b in self.lead_bands or ()}  # type: ignore[union-attr]
        past = [f"{format_duration(b)} ({n} steps of {format_duration(interval)})" for b, n in at.items()
                if n >= self.horizon_steps]
        if past:
            raise ValueError(f"lead_bands: {', '.join(past)} not inside the horizon of {self.horizon_steps} steps")
        return type(self).model_validate({**self.model_dump(exclude_unset=True), "lead_bands": sorted(set(at.values()))})

    @property
    def bands(self) -> tuple[tuple[int, int], ...]:
        """The lead bands as (first, last) steps, 1-based and inclusive; one
        band (the whole horizon) without ``lead_bands``."""
        if not self.lead_bands_in_steps:
            raise ForecastError(f"auto: lead_bands {[str(b) for b in self.lead_bands or ()]} are durations; "
                                "a target turns them into steps of its interval (or give steps)")
        ends = [*(self.lead_bands or ()), self.horizon_steps]
        return tuple((lo, hi) for lo, hi in zip([1, *(e + 1 for e in ends[:-1])], ends))


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


@dataclasses.dataclass(frozen=True)
class StepSums:
    """A rolling-origin backtest's sums per scored step (``steps``, 1-based):
    what :class:`BacktestSums` adds up, kept apart so that a band of steps
    can be scored on its own (``auto``'s ``lead_bands``)."""

    steps: tuple[int, ...]
    loss: np.ndarray    # loss sum per step
    actual: np.ndarray  # sum of |actual| per step
    n: np.ndarray       # scored points per step

    def over(self, first: int = 1, last: int | None = None) -> BacktestSums:
        """The sums over the scored steps in ``first..last`` (default all)."""
        st = np.asarray(self.steps)
        m = (st >= first) & (st <= (last if last is not None else st.max(initial=first)))
        n = int(self.n[m].sum())
        return BacktestSums(float(self.loss[m].sum()), n, float(self.actual[m].sum()), n)


def backtest_step_sums(model: Any, history: Series, origins: Sequence[int], horizon: int,
                       under_weight: float, *, steps: Sequence[int] | None = None,
                       levels: Sequence[float] | None = None) -> StepSums:
    """Rolling origin on ``history``: ``model`` (fresh) fitted on the data up
    to ``origins[0]``, updated to each origin, forecasting ``horizon``
    steps, scored at ``steps`` (1-based; default all), summed per step. With
    ``levels``: the pinball loss over them; without: the point forecast's
    asymmetric loss. Reads no sample after an origin when forecasting from
    it."""
    ts, y = history.timestamps, history.values
    st = tuple(int(x) for x in (steps if steps is not None else range(1, horizon + 1)))
    idx = np.asarray(st, dtype=np.int64) - 1
    loss_sum, actual_sum, n = np.zeros(idx.size), np.zeros(idx.size), np.zeros(idx.size, dtype=np.int64)
    model.fit(history[: origins[0] + 1])
    for o in origins:
        model.update(history[: o + 1])
        fc = model.predict(from_epoch(int(ts[o])), horizon, tuple(levels) if levels else (0.5,))
        want = y[o + 1: o + 1 + horizon]
        col = np.flatnonzero(idx < want.size)  # the scored steps with an actual
        i = idx[col]
        ok = np.isfinite(want[i])
        col, i = col[ok], i[ok]
        if levels:
            loss = pinball_loss(want[i], {q: fc.quantiles[q][i] for q in levels})
        else:
            loss = asymmetric_loss(want[i], fc.point[i], under_weight)
        np.add.at(loss_sum, col, loss)
        np.add.at(actual_sum, col, np.abs(want[i]))
        np.add.at(n, col, 1)
    return StepSums(st, loss_sum, actual_sum, n)


def backtest_sums(model: Any, history: Series, origins: Sequence[int], horizon: int,
                  under_weight: float, *, steps: Sequence[int] | None = None,
                  levels: Sequence[float] | None = None) -> BacktestSums:
    """:func:`backtest_step_sums` over all its scored steps."""
    return backtest_step_sums(model, history, origins, horizon, under_weight, steps=steps, levels=levels).over()


def backtest(model: Any, history: Series, origins: Sequence[int], horizon: int,
             under_weight: float, *, steps: Sequence[int] | None = None,
             levels: Sequence[float] | None = None) -> float:
    """Rolling-origin score of a fresh ``model`` (:func:`backtest_sums`):
    mean loss / mean actual."""
    return backtest_sums(model, history, origins, horizon, under_weight, steps=steps, levels=levels).score


def ranked(scores: Mapping[str, float], params: AutoParams) -> list[str]:
    """Candidate keys best first: the lowest score, the first candidate's
    score as it is and every other's over ``1 - margin`` (so it must beat
    the first by that fraction); ties to the earlier candidate."""
    keys = [c.key for c in params.candidates]
    return sorted(scores, key=lambda k: (scores[k] if k == keys[0] else scores[k] / (1.0 - params.margin),
                                         keys.index(k)))


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
        #: the choice: a candidate's key; with ``lead_bands``, each band's
        #: ``key@first-last`` joined by ``+`` (adjacent bands with one choice
        #: as one; one key where all bands agree)
        self.choice: str | None = None
        #: each candidate's score over all scored steps
        self.scores: dict[str, float] = {}
        #: with ``lead_bands``: per band ``first-last``, each candidate's score
        self.band_scores: dict[str, dict[str, float]] = {}
        self.skipped: dict[str, str] = {}
        #: the chosen candidate's key for each band, in band order
        self._band_choice: tuple[str, ...] = ()
        self._models: dict[str, Any] = {}  # key -> fitted model (each chosen one)
        self._selected_at: int | None = None  # epoch s: history end at the last backtest

    @property
    def min_history(self) -> int:
        return 2 * self.params.horizon_steps + 2

    @property
    def _model(self) -> Any:
        """The first band's model (the only one without ``lead_bands``)."""
        return self._models.get(self._band_choice[0]) if self._band_choice else None

    @property
    def version(self) -> str:
        if not self._models:
            return f"{self.name}:unfitted"
        if len(self._models) == 1:
            return f"{self.name}:{self.choice}:{self._model.version}"
        return f"{self.name}:{self.choice}:" + "+".join(self._models[k].version for k in dict.fromkeys(self._band_choice))

    @property
    def selection(self) -> dict[str, Any]:
        """Choice, scores and skip reasons, for the decision log."""
        out = {
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
        if self.params.lead_bands is not None:
            out["bands"] = [{"steps": [lo, hi], "choice": k,
                             "scores": {c: round(v, 6) for c, v in self.band_scores.get(f"{lo}-{hi}", {}).items()}}
                            for (lo, hi), k in zip(self.params.bands, self._band_choice)]
        return out

    def _fit(self, history: Series) -> None:
        p = self.params
        end = int(history.timestamps[-1])
        due = (self._selected_at is None or self.choice is None
               or end - self._selected_at >= p.reselect_every.total_seconds())
        if not due:
            try:
                self._models = {k: self._fit_one(self._candidate(k), history) for k in dict.fromkeys(self._band_choice)}
                return
            except SKIPPABLE as exc:  # a chosen model broke: choose again now
                self.skipped[self.choice or ""] = f"refit failed: {exc}"
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
        sums: dict[str, StepSums] = {}
        scores: dict[str, float] = {}
        skipped: dict[str, str] = {}
        for cand in p.candidates:
            try:
                got = backtest_step_sums(create_candidate(cand), history, origins, p.horizon_steps, p.under_weight,
                                         steps=p.scored_steps, levels=p.levels if p.score == "pinball" else None)
                scores[cand.key] = got.over().score  # no actual at all: InsufficientHistory, skipped
                sums[cand.key] = got
            except SKIPPABLE as exc:
                skipped[cand.key] = f"{type(exc).__name__}: {exc}"
        band_scores: dict[str, dict[str, float]] = {}
        for lo, hi in p.bands:
            within = {k: v.over(lo, hi) for k, v in sums.items()}
            band_scores[f"{lo}-{hi}"] = {k: b.score for k, b in within.items() if b.loss_n}
        models: dict[str, Any] = {}
        choice: list[str] = []
        for lo, hi in p.bands:
            for key in ranked(band_scores[f"{lo}-{hi}"] or scores, p):
                if key not in models and key not in skipped:
                    try:
                        models[key] = self._fit_one(self._candidate(key), history)
                    except SKIPPABLE as exc:
                        skipped[key] = f"fit on the full history failed: {type(exc).__name__}: {exc}"
                        continue
                if key in models:
                    choice.append(key)
                    break
            else:
                break
        if len(choice) == len(p.bands):
            self._models, self._band_choice = models, tuple(choice)
            self.scores, self.skipped = scores, skipped
            self.band_scores = band_scores if p.lead_bands is not None else {}
            runs: list[list] = []  # adjacent bands with one choice read as one
            for (lo, hi), k in zip(p.bands, choice):
                if runs and runs[-1][0] == k:
                    runs[-1][2] = hi
                else:
                    runs.append([k, lo, hi])
            self.choice = choice[0] if len(runs) == 1 else "+".join(f"{k}@{lo}-{hi}" for k, lo, hi in runs)
            self._selected_at = int(history.timestamps[-1])
            return
        self.scores, self.skipped = scores, skipped
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        if skipped and all("InsufficientHistory" in v for v in skipped.values()):
            raise InsufficientHistory(history.n_valid, self.min_history, f"auto (every candidate: {reasons})")
        raise ForecastError(f"auto: no candidate could be fitted ({reasons})")

    def _update(self, new: Series) -> None:
        for model in self._models.values():
            model.update(new)

    def predict(self, start: datetime, horizon: int, quantiles: Sequence[float] = (0.5, 0.9)) -> Forecast:
        if not self._models:
            raise ForecastError("auto: predict() before fit()")
        fcs = {k: m.predict(start, horizon, quantiles) for k, m in self._models.items()}
        fc = fcs[self._band_choice[0]]
        if len(fcs) > 1:  # each band's steps from its own choice (the last band's beyond the horizon)
            point, qs = fc.point.copy(), {q: v.copy() for q, v in fc.quantiles.items()}
            bands = self.params.bands
            for j, ((lo, hi), key) in enumerate(zip(bands, self._band_choice)):
                cut = slice(lo - 1, hi if j < len(bands) - 1 else None)
                point[cut] = fcs[key].point[cut]
                for q in qs:
                    qs[q][cut] = fcs[key].quantiles[q][cut]
            fc = dataclasses.replace(fc, point=point, quantiles=qs)
        # Forecast.model stays the registry name (the forecaster contract);
        # the choice is in the version, "auto:<choice>:<choice's version>"
        return dataclasses.replace(fc, model=self.name, model_version=self.version)

    # ------------------------------------------------------------- persistence
    def __getstate__(self) -> dict[str, Any]:
        # each chosen model persists itself (the lstm writes a torch
        # checkpoint, not a pickle), so store its own save() bytes
        state = dict(self.__dict__)
        models = state.pop("_models")
        blobs = {}
        with tempfile.TemporaryDirectory() as d:
            for key, model in models.items():
                path = Path(d) / "model"
                model.save(path)
                blobs[key] = path.read_bytes()
        state["_models_bytes"] = blobs
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from . import registry

        blobs = state.pop("_models_bytes", None)
        old = state.pop("_model_bytes", None)  # saved before lead bands: the one choice's model
        state.pop("_model", None)
        self.__dict__.update({"band_scores": {}, **state})
        if old is not None:
            blobs = {self.choice: old}
        if "_band_choice" not in state:
            self._band_choice = (self.choice,) if self.choice is not None else ()
        self._models = {}
        with tempfile.TemporaryDirectory() as d:
            for key, blob in (blobs or {}).items():
                path = Path(d) / "model"
                path.write_bytes(blob)
                self._models[key] = registry.get(self._candidate(key).name).load(path)


__all__ = ["AutoForecaster", "AutoParams", "BacktestSums", "Candidate", "SKIPPABLE", "asymmetric_loss", "backtest",
           "backtest_origins", "ranked", "backtest_step_sums", "backtest_sums", "create_candidate",
           "pinball_loss", "StepSums"]
