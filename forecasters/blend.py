"""``blend``: two forecasters combined with a weight that changes with the lead.

A model that wins at short leads often loses hours ahead to a plain
reference (the level-free LSTM is best by pinball loss up to an hour on the
held-out shared traces and worse than the seasonal naive at 6 h). ``blend``
forecasts with both ``members`` and averages them, point and every quantile
level alike, with the first member's weight ``w(lead)`` read from
``weights`` (lead -> weight, linear between the leads given, the nearest
weight outside them)::

    blend_q(lead) = w(lead) * first_q(lead) + (1 - w(lead)) * second_q(lead)

Averaging quantiles level by level (Vincentization; Ratcliff 1979, used for
forecast combination by Lichtendahl, Grushka-Cockayne and Winkler 2013)
keeps the levels non-crossing. The default blends the last value into the
value one day earlier: persistence at lead 0, seasonal naive a day ahead.

A member still short of history (Holt-Winters' two seasons where seasonal
persistence needs one) sits out, unfitted, and the other forecasts alone
until a refit on enough history takes both in.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import Field, field_validator

from engine.core.errors import ForecastError, InsufficientHistory
from engine.core.types import Forecast, Series
from engine.core.units import Duration, to_epoch

from .auto import Candidate, create_candidate
from .base import BaseForecaster, ForecasterParams


def _default_members() -> tuple[Candidate, Candidate]:
    return Candidate(name="persistence"), Candidate(name="seasonal_naive")


class BlendParams(ForecasterParams):
    #: the two forecasters (registry name and params each)
    members: tuple[Candidate, Candidate] = Field(default_factory=_default_members)
    #: the first member's weight by lead (linear between, constant outside)
    weights: Mapping[Duration, float] = Field(
        default_factory=lambda: {timedelta(0): 1.0, timedelta(days=1): 0.0})

    @field_validator("members")
    @classmethod
    def _members(cls, v: tuple[Candidate, Candidate]) -> tuple[Candidate, Candidate]:
        if any(c.name == "blend" for c in v):
            raise ValueError("members: 'blend' cannot be its own member")
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: Mapping[timedelta, float]) -> Mapping[timedelta, float]:
        if not v:
            raise ValueError("weights: at least one lead -> weight is needed")
        bad = {str(k): w for k, w in v.items() if not 0.0 <= w <= 1.0 or k < timedelta(0)}
        if bad:
            raise ValueError(f"weights: each lead must be >= 0 and each weight in [0, 1], got {bad}")
        return dict(sorted(v.items()))


class BlendForecaster(BaseForecaster):
    """Two forecasters averaged with a lead-dependent weight; see the module
    docstring."""

    name = "blend"
    Params = BlendParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.models = [create_candidate(c) for c in self.params.members]

    @property
    def min_history(self) -> int:
        # one member suffices to forecast (see _fit)
        return min(m.min_history for m in self.models)

    @property
    def version(self) -> str:
        return f"{self.name}:" + "+".join(m.version for m in self.models)

    def _fit(self, history: Series) -> None:
        """Fit both members; one still short of history (Holt-Winters needs
        two seasons where seasonal persistence needs one) sits out, unfitted,
        until a refit on enough history, and the other forecasts alone
        meanwhile. Both short: the shorter need is raised, the members left
        as a single model's fit that raises leaves it."""
        short: dict[int, InsufficientHistory] = {}
        for i, m in enumerate(self.models):
            try:
                m.fit(history)
            except InsufficientHistory as exc:
                short[i] = exc
        if len(short) == len(self.models):
            raise min(short.values(), key=lambda e: e.need)
        for i in short:  # not half a refit on stale state beside the one that fitted
            self.models[i] = create_candidate(self.params.members[i])

    def _update(self, new: Series) -> None:
        for m in self.models:
            if m.fitted:
                m.update(new)

    def weight(self, lead_s: np.ndarray) -> np.ndarray:
        """The first member's weight at each lead (seconds)."""
        leads = [k.total_seconds() for k in self.params.weights]
        return np.interp(np.asarray(lead_s, dtype=float), leads, list(self.params.weights.values()))

    def predict(self, start: datetime, horizon: int, quantiles: Sequence[float] = (0.5, 0.9)) -> Forecast:
        if not self.fitted:
            raise ForecastError(f"{self.name}: predict() before fit()")
        fitted = [m for m in self.models if m.fitted]
        if len(fitted) == 1:  # the other is still short of history (see _fit)
            alone = fitted[0].predict(start, horizon, quantiles)
            return Forecast(made_at=start, timestamps=alone.timestamps, point=alone.point,
                            quantiles=alone.quantiles, model=self.name, model_version=self.version)
        a, b = (m.predict(start, horizon, quantiles) for m in self.models)
        if not np.array_equal(a.timestamps, b.timestamps):
            raise ForecastError(f"{self.name}: the members forecast different grids")
        w = self.weight(a.timestamps - to_epoch(start))
        return Forecast(made_at=start, timestamps=a.timestamps, point=w * a.point + (1 - w) * b.point,
                        quantiles={q: w * a.quantiles[q] + (1 - w) * b.quantiles[q] for q in a.quantiles},
                        model=self.name, model_version=self.version)


__all__ = ["BlendForecaster", "BlendParams"]
