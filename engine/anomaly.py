"""Anomalies: observations far outside the forecast band, flagged and kept
out of training.

Each cycle, the newest observation is compared with what the forecast made
one interval earlier said about that moment (its one-step-ahead residual
``r = observed - point``). Two ways to call it an anomaly
(``anomalies.method``):

- ``band`` (default): the score is ``|r| / (q - point)``, the residual in
  units of the distance from the median to the forecast's ``level``
  quantile (0.99 by default; the engine asks the forecaster for it). An
  observation beyond ``factor`` times that band (default 3: three times as
  far from the median as the 0.99 quantile) is an anomaly. On the bundled
  real traces with the default forecaster, 3 flags at most 0.1 % of the
  ordinary samples (the spikiest trace; 2 flagged 4 % there: its recurring
  spikes, which must not be masked) and every sample of a 3x incident.
- ``zscore``: the score is the robust z-score of ``r`` among the residuals
  of the last ``window`` (median and 1.4826 x MAD of the ones not flagged);
  above ``z`` is an anomaly (at least ``min_samples`` residuals first).

A flagged sample is *masked* before the forecaster sees it (``exclude``):
its value is replaced by the forecast's median for that time, in every
later fit and update, so one incident does not teach a seasonal model a
false peak a day (or a week) later. The policy still sees the real
observation (a real spike still scales up through the reactive rule).
A run of flagged samples longer than ``max_duration`` is taken for a level
shift, not an incident: its samples are released (the model learns the
new level) and nothing more is flagged until a residual is normal again.

The decision of that cycle carries an ``anomaly`` step (reason
``AnomalyFlagged``, or ``AnomalyLevelShift`` for the release) and the score
in ``extra["anomaly"]``; the daemon counts ``forescale_anomalies_total`` and
exports the last score (``forescale_anomaly_score``). The masked samples
are kept in the state store with each recorded decision (table
``anomaly_masks``, per series) and restored when a target starts
(:meth:`AnomalyDetector.restore`), so the first refit after a restart still
masks an incident seen before it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .core.types import Decision, Forecast, Series, Step
from policies.resources import tag

from .core.units import Duration, from_epoch, isoformat


class AnomalyConfig(BaseModel):
    """``anomalies`` of a target (see the module doc)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    method: Literal["band", "zscore"] = "band"
    #: band: the forecast quantile whose distance from the median is the band
    level: float = Field(0.99, gt=0.5, lt=1.0)
    #: band: an anomaly lies beyond this many band widths from the median
    factor: float = Field(3.0, ge=1.0, le=1000.0)
    #: zscore: an anomaly's robust z-score is above this
    z: float = Field(6.0, gt=0.0, le=1000.0)
    #: zscore: the residuals the median and MAD come from
    window: Duration = timedelta(days=3)
    min_samples: int = Field(48, ge=3, le=1_000_000)
    #: mask flagged samples (their forecast median) before every fit and update
    exclude: bool = True
    #: a longer run of flagged samples is a level shift: released, not masked
    max_duration: Duration = timedelta(hours=6)


@dataclass(frozen=True)
class Anomaly:
    """One flagged observation."""

    at: int
    observed: float
    expected: float
    bound: float  # the score threshold
    score: float
    method: str
    masked: bool

    def to_dict(self) -> dict[str, Any]:
        return {"at": isoformat(from_epoch(self.at)), "observed": self.observed, "expected": self.expected,
                "score": round(self.score, 4), "threshold": self.bound, "method": self.method,
                "masked": self.masked}


class AnomalyDetector:
    """Flags one-step residuals and keeps the masked samples of one target."""

    def __init__(self, config: AnomalyConfig, interval: timedelta, keep: timedelta) -> None:
        self.config = config
        self.interval_s = int(interval.total_seconds())
        self.keep_s = int(keep.total_seconds())
        n = max(config.min_samples, int(config.window / interval))
        self.residuals: deque[float] = deque(maxlen=n)
        #: epoch second -> the value the forecaster sees instead
        self.masked: dict[int, float] = {}
        self._run: list[int] = []  # the current run of consecutive flags
        self._shifted = False  # a run was released: flag nothing until a residual is normal
        self._checked: int | None = None
        self.last_score: float | None = None
        #: ``masked`` changed since the store last saved it
        self.changed = False

    def restore(self, masked: Mapping[int, float]) -> None:
        """The masked samples a store kept (after a restart). The newest run
        of them one interval apart is the current run of flags again, so
        an incident that goes on across the restart is still released as a
        level shift after ``max_duration`` counted from its start."""
        self.masked = {int(t): float(v) for t, v in masked.items()}
        run = sorted(self.masked)[-1:]
        for t in sorted(self.masked, reverse=True)[1:]:
            if run[0] - t != self.interval_s:
                break
            run.insert(0, t)
        self._run = run
        self.changed = False

    # ------------------------------------------------------------------ detect
    def observe(self, history: Series, previous: Forecast | None) -> tuple[Anomaly | None, Step | None]:
        """Compare the newest observation of ``history`` with ``previous``
        (the last cycle's forecast) at its time. Returns the anomaly (or
        None) and the step for the decision (flag or release; None when
        the observation is ordinary or cannot be checked)."""
        if previous is None or not len(history):
            return None, None
        t = int(history.timestamps[-1])
        value = float(history.values[-1])
        if t == self._checked or not math.isfinite(value):
            return None, None
        idx = np.flatnonzero(previous.timestamps == t)
        if idx.size == 0:
            return None, None
        self._checked = t
        i = int(idx[0])
        point = float(previous.point[i])
        if not math.isfinite(point):
            return None, None
        r = value - point
        score, bound = self._score(r, previous, i, point)
        self.last_score = score
        if score is None or score <= bound:
            self.residuals.append(r)
            self._run.clear()
            self._shifted = False
            return None, None
        if self._shifted:
            return None, None
        self._run.append(t)
        if len(self._run) * self.interval_s > self.config.max_duration.total_seconds():
            run, self._run = self._run, []
            for ts in run:
                self.masked.pop(ts, None)
            self.changed = True
            self._shifted = True
            return None, Step("anomaly", 0, "AnomalyLevelShift",
                              f"{len(run)} observations in a row beyond the band (longer than max_duration "
                              f"{self.config.max_duration}): a level shift, released to the forecaster")
        masked = self.config.exclude
        if masked:
            self.masked[t] = point
            self.changed = True
        a = Anomaly(t, value, point, bound, score, self.config.method, masked)
        what = (f"{score:.3g} band widths from the median (threshold {bound:g}, band to q{self.config.level:g})"
                if self.config.method == "band" else f"robust z-score {score:.3g} (threshold {bound:g})")
        step = Step("anomaly", 0, "AnomalyFlagged",
                    f"observed {value:.4g} at {isoformat(from_epoch(t))}, forecast median {point:.4g}: {what}; "
                    + ("excluded from training (replaced by the median)" if masked else "kept for training"))
        self._prune(t)
        return a, step

    def _score(self, r: float, fc: Forecast, i: int, point: float) -> tuple[float | None, float]:
        c = self.config
        if c.method == "band":
            if not any(q >= c.level for q in fc.quantiles):
                # no band to measure against (a forecaster without quantiles):
                # nothing is flagged rather than everything
                return None, c.factor
            upper = float(fc.level(c.level)[i])
            width = upper - point
            if not math.isfinite(width):
                return None, c.factor
            # a forecast without spread there: a floor of 1 % of the level
            width = max(width, 0.01 * abs(point), 1e-9)
            return abs(r) / width, c.factor
        if len(self.residuals) < c.min_samples:
            return None, c.z
        res = np.fromiter(self.residuals, dtype=float)
        med = float(np.median(res))
        mad = 1.4826 * float(np.median(np.abs(res - med)))
        if mad <= 0:
            mad = max(1e-9, 0.01 * abs(point))
        return abs(r - med) / mad, c.z

    def _prune(self, now_s: int) -> None:
        old = [t for t in self.masked if t < now_s - self.keep_s]
        for t in old:
            del self.masked[t]
        self.changed = self.changed or bool(old)

    # -------------------------------------------------------------------- mask
    def mask(self, history: Series) -> Series:
        """``history`` as the forecaster sees it: masked samples replaced."""
        if not self.masked or not self.config.exclude:
            return history
        ts = history.timestamps
        keys = np.fromiter(self.masked, dtype=np.int64)
        hit = np.isin(ts, keys)
        if not hit.any():
            return history
        values = history.values.copy()
        for j in np.flatnonzero(hit).tolist():
            values[j] = self.masked[int(ts[j])]
        return Series.view(ts, values, history.name)


def with_anomaly(decision: Decision, anomaly: Anomaly | None, step: Step, resource: str = "", *,
                 own: bool = True) -> Decision:
    """``decision`` with a detector's step after the ``data`` step of its
    signal (the value it carries: that data step's) and the anomaly in
    ``extra``. ``resource``: the signal's name on a target with several
    (its step is tagged with it, as its other steps are; "" for a target's
    one signal); ``own``: the target's own signal (``extra.anomaly``), else
    a further resource's (``extra.resource_anomalies.<resource>``)."""
    steps = list(decision.steps)
    data = next((i for i, s in enumerate(steps) if s.name == "data" and (s.resource or "") == resource), None)
    value = steps[data].value if data is not None else decision.current
    steps.insert(0 if data is None else data + 1,
                 tag(Step(step.name, value, step.reason, step.message, False), resource))
    info: dict[str, Any] = anomaly.to_dict() if anomaly is not None else {"level_shift": True}
    if resource:
        info["resource"] = resource
    extra = {**decision.extra}
    if own:
        extra["anomaly"] = info
    else:
        extra["resource_anomalies"] = {**extra.get("resource_anomalies", {}), resource: info}
    return replace(decision, steps=tuple(steps), extra=extra)


def flagged(decision: Decision | dict[str, Any]) -> list[dict[str, Any]]:
    """The anomalies a decision (or its record's ``extra``) flagged, its own
    signal's first, each with its ``resource`` on a target with several
    (a level shift's release flags nothing)."""
    extra = decision.extra if isinstance(decision, Decision) else decision
    infos = [extra.get("anomaly"), *(extra.get("resource_anomalies") or {}).values()]
    return [i for i in infos if i and "score" in i]


__all__ = ["Anomaly", "AnomalyConfig", "AnomalyDetector", "flagged", "with_anomaly"]
