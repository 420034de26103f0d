"""One decision cycle for one target.

:class:`TargetRunner` is the part shared by the live loop and the backtest:
keep the forecaster fitted (refit on schedule, ``update`` every cycle),
forecast, feed back observed values, and call the pure policy. Everything
that touches the outside world (metric source, store, actuator) lives in
:class:`LiveTarget`, which wraps a runner; its ``run(now)`` lists the steps
of a live cycle, in order, in its docstring (the one place they are
written down): gather the inputs (frozen :class:`CycleInputs`), step the
runner, act by mode through one table, record once.

Actuation follows the platform's own rhythm (Nomad's ``Scale`` /
``Status``, the HPA's write-``/scale``-then-look-again): ``apply`` returns
once the platform accepted the change and the decision is recorded
``accepted``; later cycles read the platform and mark it ``applied`` when
the new capacity serves (recording the delay, which feeds the learned lead
time) or ``unverified`` after the actuator's ``verify_timeout``. An
*intent* is recorded before every apply, so a crash in between is visible
and reconciled at the next cycle, never applied twice.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from actuators.base import ActuatorConfig
from forecasters import Forecaster, create as create_forecaster
from forecasters.quality import gate, live_mase, live_quantile_loss
from policies import history_to_keep
from policies.pipeline import decide_signals
from policies.resources import Signal
from policies.window import LeadWindow, lead_window

from .anomaly import AnomalyDetector, with_anomaly
from .audit import decision_context
from .calibration import QuantileCalibrator, StoreCalibrator
from .checkpoints import ModelCheckpoint, model_key, shelf_for, source_digest
from .config import TargetConfig
from .core.plugins import capabilities_of
from .core.errors import (
    ActuatorError, ForecastError, InsufficientHistory, LeaseLost, MetricSourceError, StateError,
)
from .logs import log_context, set_log_fields
from .feedback import LIVE_ACCURACY_WINDOW, Feedback, MemoryFeedback, StoreFeedback, seasonal_naive_scale
from .core.types import (
    ActuationResult, CapacityReading, Decision, Forecast, Observation, Plan, PlanStatus, ScaleEvent, ScalingState,
    Series,
)
from .core.units import from_epoch, isoformat, parse_time, to_epoch

log = logging.getLogger("forescale.cycle")


@dataclass
class CycleOutcome:
    decision: Decision
    forecast: Forecast | None
    forecast_error: str | None
    state: ScalingState  # the state decide() saw (observation, headroom filled in)
    #: every resource's signal as decide() saw it (the target's own first)
    signals: tuple[Signal, ...] = ()

    def resource_forecasts(self) -> dict[str, Forecast | None]:
        """The further resources' forecasts by name (empty for one signal)."""
        return {s.resource: s.forecast for s in self.signals[1:]}


def latest_observation(history: Series) -> Observation | None:
    """The newest valid sample of ``history`` (None if it has none)."""
    v = history.values
    if v.size and v[-1] == v[-1]:  # the usual case, without scanning the history
        return Observation(float(v[-1]), from_epoch(history.timestamps[-1]))
    last = history.last_valid()
    return Observation(last[1], last[0]) if last is not None else None


def _snapshot(model: Forecaster) -> Forecaster | None:
    """A copy of a fitted model taken before it is refitted, to forecast
    with if the refit fails (None: the model does not copy; a refit that
    fails then leaves no model)."""
    import copy

    try:
        return copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - a plugin's model that does not copy: no snapshot
        log.debug("model %s does not copy (%s: %s): a failed refit leaves no model", type(model).__name__,
                  type(exc).__name__, exc)
        return None


class _Slot:
    """One forecaster the runner keeps fitted: the configured model, or a
    quality-gate fallback running in shadow. ``tracker`` holds its own
    predicted-vs-actual pairs at the policy's lead time, at every level
    in ``levels`` (its live error)."""

    def __init__(self, name: str, forecaster: Forecaster | None, horizons_s: tuple[int, int],
                 levels: tuple[float, ...] = (), calibrator: QuantileCalibrator | None = None) -> None:
        self.name = name
        self.forecaster = forecaster
        self.last_fit: datetime | None = None
        self.tracker = MemoryFeedback(horizons_s, levels=levels)
        self.calibrator = calibrator  # forecaster.calibration: its forecasts' conformal shift
        #: the fits that failed since the last one that did (see
        #: :meth:`TargetRunner.fit_failed`): how many, when the last one
        #: failed and why, and when the next is tried
        self.fit_failures = 0
        self.failed_at: datetime | None = None
        self.fit_error: str | None = None
        self.retry_at: datetime | None = None
        #: a model not fitted yet for too little history: why (its next
        #: fit waits for the history it needs, not counted as a failure)
        self.warming_up: str | None = None

    def carry_fits(self, other: "_Slot") -> None:
        """Take ``other``'s model, when it was fitted and where its failing
        fits stand (a config reload that keeps the model)."""
        self.forecaster, self.last_fit = other.forecaster, other.last_fit
        self.fit_failures, self.failed_at, self.fit_error = other.fit_failures, other.failed_at, other.fit_error
        self.retry_at, self.warming_up = other.retry_at, other.warming_up

    def fit_state(self, now: datetime) -> dict[str, Any] | None:
        """What the decision records of a model whose fits are failing
        (None while they succeed): ``failed`` when one failed at ``now``,
        ``waiting`` while it waits for the next try; the model it forecasts
        with meanwhile (fitted when; None: none, so no forecast)."""
        if self.fit_error is None:
            return None
        return {"status": "failed" if self.failed_at == now else "waiting", "model": self.name,
                "error": self.fit_error, "failures": self.fit_failures,
                "failed_at": isoformat(self.failed_at) if self.failed_at else None,
                "next_try": isoformat(self.retry_at) if self.retry_at else None,
                "fitted_at": isoformat(self.last_fit) if self.last_fit else None}


#: a forecast above this many times the largest observation in its history
#: is a broken model, not a prediction: the cycle falls back (and never
#: scales down) rather than buy capacity for it. Holt-Winters on a metric
#: sampled coarser than the grid once forecast 1e189 (docs/operations.md).
IMPLAUSIBLE_FACTOR = 100.0


def implausible(forecast: Forecast, history: Series) -> str | None:
    """Why ``forecast`` cannot be planned on (its largest value is more than
    :data:`IMPLAUSIBLE_FACTOR` times the largest observation in ``history``),
    or None. A history with nothing above zero is not judged."""
    seen = history.values[np.isfinite(history.values)]
    top = float(seen.max()) if seen.size else 0.0
    if top <= 0.0:
        return None
    levels = [forecast.point, *forecast.quantiles.values()]
    worst = max(float(np.max(a)) for a in levels if a.size) if forecast.point.size else 0.0
    if worst <= IMPLAUSIBLE_FACTOR * top:
        return None
    return (f"implausible forecast from {forecast.model}: {worst:.4g} is more than "
            f"{IMPLAUSIBLE_FACTOR:g} times the largest observation in its history ({top:.4g})")


class TargetRunner:
    """Forecaster upkeep + forecast + decide, for one target."""

    def __init__(self, target: TargetConfig, *, forecaster: Forecaster | None = None,
                 feedback: Feedback | None = None, resources: Mapping[str, "TargetRunner"] | None = None,
                 store: Any = None) -> None:
        self.target = target
        #: the state store the calibration pairs are kept in (the live loop;
        #: None: in memory only, as in the backtest)
        self.store = store
        self.policy = target.policy
        if forecaster is None and target.policy.uses_forecast:
            if target.forecaster.init_from is not None:
                from forecasters import registry

                forecaster = registry.get(target.forecaster.name)(target.forecaster_params,
                                                                  init_from=target.forecaster.init_from)
            else:
                forecaster = create_forecaster(target.forecaster.name, target.forecaster_params)
        self.interval_s = int(target.interval.total_seconds())
        #: the configured lead window's horizons (the backtest's feedback
        #: keeps these; a live cycle passes its own window)
        self.horizons_s = lead_window(self.policy, None).horizons_s
        gate_cfg = target.forecaster.quality_gate
        levels = target.forecast_quantiles if gate_cfg is not None and gate_cfg.score == "pinball" else ()
        self.primary = _Slot(target.forecaster.name, forecaster, self.horizons_s, levels,
                             self._calibrator(target.forecaster.name))
        self.shadows: list[_Slot] = []
        if gate_cfg is not None and forecaster is not None:
            self.shadows = [_Slot(n, create_forecaster(n), self.horizons_s, levels, self._calibrator(n))
                            for n in gate_cfg.fallbacks if n != target.forecaster.name]
        self.feedback: Feedback = feedback or MemoryFeedback(self.horizons_s)
        self.keep = history_to_keep(self.policy)
        self._observed_until: int | None = None
        self._scale: float | None = None  # MASE denominator, refreshed at each refit
        #: flags observations far outside the last forecast's band and masks
        #: them from training (``anomalies``; engine/anomaly.py)
        self.anomalies = AnomalyDetector(target.anomalies, target.interval, target.forecaster.history) \
            if target.anomalies is not None and forecaster is not None else None
        self._previous: Forecast | None = None  # the last cycle's forecast, for the residual
        #: whether the back-off of fits failing before this process started
        #: has been looked up (:meth:`resume_fits`; nothing to look up without a store)
        self._resumed = store is None
        self.flagged: tuple[Any, Any] = (None, None)
        #: a runner per further resource (its own forecaster and feedback,
        #: keyed by its series name ``target/resource``)
        self.resources: dict[str, TargetRunner] = dict(resources) if resources is not None else {
            name: TargetRunner(target.resource_target(name)) for name in target.resources}

    def _calibrator(self, model: str) -> QuantileCalibrator | None:
        """``model``'s conformal calibration (``forecaster.calibration``),
        its pairs kept in the store when the runner has one."""
        cal = self.target.forecaster.calibration
        if cal is None:
            return None
        args = (self.target.forecast_quantiles, self.interval_s, cal.window, cal.min_samples)
        if self.store is None:
            return QuantileCalibrator(*args)
        return StoreCalibrator(*args, store=self.store, target=self.target.name, model=model)

    # the configured model (the daemon carries it across config reloads)
    @property
    def forecaster(self) -> Forecaster | None:
        return self.primary.forecaster

    @forecaster.setter
    def forecaster(self, value: Forecaster | None) -> None:
        self.primary.forecaster = value

    @property
    def last_fit(self) -> datetime | None:
        return self.primary.last_fit

    @last_fit.setter
    def last_fit(self, value: datetime | None) -> None:
        self.primary.last_fit = value

    def fit_due(self, slot: _Slot, now: datetime) -> bool:
        """Whether ``slot``'s model is refitted at ``now``: never fitted, or
        fitted ``refit_every`` ago, and not waiting after a failed fit
        (:meth:`fit_failed`; half an interval early counts, as a cycle's
        clock is never exact)."""
        if slot is self.primary:
            self.resume_fits()
        if slot.last_fit is not None and now - slot.last_fit < self.target.forecaster.refit_every:
            return False
        return slot.retry_at is None or now >= slot.retry_at - self.target.interval / 2

    def resume_fits(self) -> None:
        """Once, before this runner's first look at whether the configured
        model is due (a new process, a reload that made the model anew):
        where its fits were failing when the target's newest decision was
        recorded (``extra.fit``), take up their count, error and next try as
        they stood, so that a restart neither retries a failing fit at once
        nor starts its back-off again. A fit recorded as begun and never
        ended (:meth:`Store.fit_started`: the process did not outlive it,
        killed for memory, say) is a failure of its own, counted on top and
        backed off from when it began; not one begun by another replica that
        still runs (the lease moved during the fit). Only for the same
        forecaster section and interval (the key a checkpoint must match): a
        changed one is fitted at once."""
        if self._resumed:
            return
        self._resumed = True
        slot = self.primary
        if slot.fit_failures or slot.retry_at is not None:  # this process has its own record
            return
        if self._resume_dead_fit(slot):
            return
        try:
            recs = self.store.decisions(self.target.name, limit=1)
        except Exception as exc:  # noqa: BLE001 - no record to resume from: fit as a new process does
            log.warning("target %s: the newest decision could not be read (%s); fits start afresh",
                        self.target.name, exc, extra={"target": self.target.name})
            return
        fit = (recs[0].get("extra") or {}).get("fit") if recs else None
        if not isinstance(fit, dict) or fit.get("model") != slot.name or fit.get("key") != model_key(self.target) \
                or not fit.get("next_try") or not fit.get("failures"):
            return
        slot.fit_failures, slot.fit_error = int(fit["failures"]), str(fit.get("error"))
        slot.failed_at = parse_time(fit["failed_at"]) if fit.get("failed_at") else None
        slot.retry_at = parse_time(fit["next_try"])
        log.info("target %s: %d fit(s) of %s failed before this process started; the next is tried at %s",
                 self.target.name, slot.fit_failures, slot.name, fit["next_try"], extra={"target": self.target.name})

    def _resume_dead_fit(self, slot: _Slot) -> bool:
        """:meth:`resume_fits` for a fit begun and never ended; True when
        there was one of this model and key (it is then a failure, the
        next try backed off from when it began, and its record is deleted:
        the next decision's ``extra.fit`` carries it on, as for a fit that
        raised)."""
        try:
            dead = self.store.started_fit(self.target.name)
        except Exception as exc:  # noqa: BLE001 - nothing to resume from: as a new process
            log.warning("target %s: the fits under way could not be read (%s)", self.target.name, exc,
                        extra={"target": self.target.name})
            return False
        if dead is None or dead["model"] != slot.name or dead["key"] != model_key(self.target):
            return False
        began = dead["started_at"]
        if dead["alive"]:  # the lease moved while the replica fitting is running: its fit may yet end well
            log.info("target %s: a fit of %s begun at %s by replica %s, which still runs, is not counted "
                     "as failed (the lease moved during it)", self.target.name, slot.name, isoformat(began),
                     dead["holder"], extra={"target": self.target.name})
            return False
        self._fit_ends(dead["holder"])  # taken up: from here the decisions' extra.fit carries it
        slot.fit_failures = dead["failures"]
        self.fit_failed(slot, began, f"the process ended during this fit, begun at {isoformat(began)} by "
                                     f"pid {dead['pid']} (killed? out of memory?)")
        log.warning("target %s: a fit of %s begun at %s did not end (the process that began it did not "
                    "outlive it): counted as failure %d; the next is tried at %s", self.target.name, slot.name,
                    isoformat(began), slot.fit_failures, isoformat(slot.retry_at),
                    extra={"target": self.target.name})
        return True

    def _fit_begins(self, slot: _Slot, now: datetime) -> bool:
        """Record that the configured model's fit begins (:meth:`Store.fit_started`;
        only with a store, outside a batch); True when recorded, and then
        :meth:`_fit_ends` must follow. A record that cannot be written is
        logged and the fit goes on."""
        if slot is not self.primary or self.store is None or getattr(self.store, "in_batch", False):
            return False
        try:
            self.store.fit_started(self.target.name, slot.name, model_key(self.target), slot.fit_failures, now)
        except Exception as exc:  # noqa: BLE001 - the fit matters more than its record
            log.warning("target %s: the fit's start could not be recorded (%s)", self.target.name, exc,
                        extra={"target": self.target.name})
            return False
        return True

    def _fit_ends(self, holder: str | None = None) -> None:
        try:
            self.store.fit_ended(self.target.name, holder)
        except Exception as exc:  # noqa: BLE001 - a record left is read as a fit the process did not outlive
            log.warning("target %s: the fit's end could not be recorded (%s)", self.target.name, exc,
                        extra={"target": self.target.name})

    def fit_failed(self, slot: _Slot, now: datetime, why: str) -> None:
        """Record that ``slot``'s fit failed at ``now``: the next is tried
        one interval later, then twice as long after each failure, at most
        ``forecaster.fit_retry_max`` (and ``refit_every``) apart. A model
        whose refit fails is the one that was fitted before, kept and
        updated meanwhile; a model never fitted forecasts nothing."""
        slot.fit_failures += 1
        slot.failed_at, slot.fit_error = now, why
        slot.retry_at = self._next_fit(now, 2 ** min(slot.fit_failures - 1, 30))

    def fit_waits(self, slot: _Slot, now: datetime, have: int, need: int, why: str) -> None:
        """Record that ``slot``'s first fit found too little history (``have``
        of the ``need`` observations): not a failure (nothing counted), but
        the next fit is tried once the history can have grown enough, one
        observation an interval (at least one interval on, at most
        ``fit_retry_max`` and ``refit_every``)."""
        slot.warming_up, slot.fit_error, slot.failed_at = why, None, None  # (short of history, not failing)
        slot.retry_at = self._next_fit(now, max(1, int(need) - int(have)))

    def kept_after(self, slot: _Slot, why: str) -> str:
        """Log that ``slot``'s refit failed (``why``) and the model fitted
        before forecasts until one succeeds; returns that as a note."""
        note = (f"{why}; forecasting with the model fitted at {isoformat(slot.last_fit)} until a refit "
                f"succeeds (next try {isoformat(slot.retry_at)})")
        log.warning("target %s: the refit of %s failed: %s", self.target.name, slot.name, note,
                    extra={"target": self.target.name})
        return note

    def _next_fit(self, now: datetime, intervals: int) -> datetime:
        """``intervals`` intervals after ``now``, at most ``fit_retry_max``
        and ``refit_every`` after it: when a fit that did not happen is
        tried again."""
        fc = self.target.forecaster
        return now + min(fc.fit_retry_max, fc.refit_every, self.target.interval * min(intervals, 1 << 30))

    def _maintain(self, slot: _Slot, history: Series, now: datetime,
                  covariates: dict[str, Series] | None = None) -> None:
        assert slot.forecaster is not None
        fc = self.target.forecaster
        kw: dict[str, Any] = {}
        if covariates and capabilities_of(slot.forecaster).takes_covariates:
            kw["covariates"] = covariates
        if self.fit_due(slot, now):
            start = to_epoch(now - fc.history)
            window = history.since(start)
            fit_kw = dict(kw)
            if "covariates" in kw:
                fit_kw["covariates"] = {k: v.since(start) for k, v in covariates.items()}  # type: ignore[union-attr]
            if self._refit(slot, window, now, fit_kw):
                return
        elif slot.last_fit is None and slot.fit_error is None:  # too little history, waiting for more
            raise ForecastError(f"{slot.warming_up}; the fit is tried again at {isoformat(slot.retry_at)}")
        elif slot.last_fit is None:  # no usable model, waiting to fit one again
            raise ForecastError(f"no usable model of {slot.name}: it failed at {isoformat(slot.failed_at)} "
                                f"({slot.fit_error}); the next fit at {isoformat(slot.retry_at)}")
        slot.forecaster.update(history, **kw)
        if slot is self.primary and self._scale is None:  # e.g. a model restored from a checkpoint
            self._scale = seasonal_naive_scale(history.since(to_epoch(now - fc.history)))

    def _refit(self, slot: _Slot, window: Series, now: datetime, kw: dict[str, Any]) -> bool:
        """Fit ``slot``'s model on ``window``; True when it did. A model
        fitted before is copied first and refitted in place (the object
        anything holds stays the model), so that when the fit fails (raises)
        the copy, the model as it was, takes its place: it is kept, and
        False returned (the caller updates it); with none to keep, the
        failure is raised."""
        assert slot.forecaster is not None
        kept = _snapshot(slot.forecaster) if slot.last_fit is not None else None
        marked = self._fit_begins(slot, now)
        try:
            slot.forecaster.fit(window, **kw)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, InsufficientHistory) and slot.last_fit is None:  # a new model warming up
                self.fit_waits(slot, now, exc.have, exc.need, str(exc))
                raise
            self.fit_failed(slot, now, why)
            if kept is None:  # nothing to keep (never fitted, or no copy): no model until a fit succeeds
                slot.last_fit = None
                raise
            slot.forecaster = kept
            self.kept_after(slot, why)
            return False
        finally:
            if marked:
                self._fit_ends()
        self._fitted(slot, window, now)
        return True

    def _fitted(self, slot: _Slot, window: Series, now: datetime) -> None:
        slot.last_fit = now
        # (the count of failures goes back to 0 once the model also forecasts: _guarded)
        slot.failed_at, slot.fit_error, slot.retry_at, slot.warming_up = None, None, None, None
        if slot is self.primary:
            self._scale = seasonal_naive_scale(window)

    def refit_window(self, history: Series, now: datetime) -> Series | None:
        """The history the configured model's refit is due on at ``now``
        (``forecaster.history`` of it, the anomalies flagged so far masked,
        as :meth:`maintain` fits), or None when no refit is due (this
        cycle's update is cheap and stays here). What a batched cycle sends
        to an executor to fit elsewhere (:mod:`engine.fleet`)."""
        fc = self.target.forecaster
        if self.primary.forecaster is None or history.n_valid == 0 or not self.fit_due(self.primary, now):
            return None
        if self.anomalies is not None:
            history = self.anomalies.mask(history)
        return history.since(to_epoch(now - fc.history))

    def take_fit(self, forecaster: Forecaster, window: Series, now: datetime) -> None:
        """Make ``forecaster``, fitted elsewhere on ``window`` (from
        :meth:`refit_window`), the configured model, fitted at ``now``: this
        cycle's forecast then only updates (nothing new) and predicts."""
        self.primary.forecaster = forecaster
        self._fitted(self.primary, window, now)

    def maintain(self, history: Series, now: datetime,
                 covariates: dict[str, Series] | None = None) -> str | None:
        """Fit (on schedule) or update the configured model, without
        predicting: what a batched forecast needs done per target before its
        one call (:mod:`engine.fleet`), on the history with the anomalies
        flagged so far masked, as :meth:`signal` fits. Returns why it
        failed, or None."""
        if self.primary.forecaster is None:
            return None
        if self.anomalies is not None:
            history = self.anomalies.mask(history)
        return self._guarded(self.primary, now,
                             lambda: self._checked_maintain(self.primary, history, now, covariates))[1]

    def forecast(self, history: Series, now: datetime, slot: _Slot | None = None,
                 covariates: dict[str, Series] | None = None,
                 window: LeadWindow | None = None) -> tuple[Forecast | None, str | None]:
        """Fit or update, then predict far enough to cover ``window`` (the
        configured lead window when None). Never raises: a failure becomes
        the reason the policy falls back."""
        chosen = slot or self.primary
        steps = self.target.forecast_steps(window or lead_window(self.policy, None), now)
        if chosen.forecaster is None:
            return None, None

        def fit_and_predict() -> Forecast:
            self._checked_maintain(chosen, history, now, covariates)
            assert chosen.forecaster is not None
            return self.calibrated(chosen, history,
                                   chosen.forecaster.predict(now, steps, self.target.forecast_quantiles))

        return self._guarded(chosen, now, fit_and_predict)

    def calibrated(self, slot: _Slot | None, history: Series, fc: Forecast) -> Forecast:
        """``fc`` shifted by the slot's conformal calibration
        (``forecaster.calibration``), if configured: the same for a forecast
        this runner made and one made for it in a batched call."""
        slot = slot or self.primary
        return fc if slot.calibrator is None else slot.calibrator.calibrate(history, fc)

    def _checked_maintain(self, slot: _Slot, history: Series, now: datetime,
                          covariates: dict[str, Series] | None) -> None:
        if history.n_valid == 0:
            raise ForecastError("no valid observations in the history")
        self._maintain(slot, history, now, covariates)

    def _guarded(self, slot: _Slot, now: datetime, call: Callable[[], Any]) -> tuple[Any, str | None]:
        """``call()``, or None and why it failed: a ForecastError is the
        reason the policy falls back; any other exception is a model bug,
        logged, and the model is dropped and refitted next cycle (backing
        off as after a failed fit when that happens again: :meth:`fit_failed`)."""
        try:
            out = call()
        except ForecastError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a model bug must not stop the loop
            why = f"{type(exc).__name__}: {exc}"
            log.warning("forecaster %s failed: %s", slot.name,
                        "".join(traceback.format_exception_only(exc)).strip())
            if slot.failed_at != now:  # failed in update or predict, not in a fit (already counted)
                self.fit_failed(slot, now, why)
            slot.last_fit = None
            return None, why
        if slot.fit_error is None:  # fitted, and it forecasts: no longer failing
            slot.fit_failures = 0
        return out, None

    def _live_errors(self, slot: _Slot, now: datetime) -> dict[str, float | None]:
        """The slot's live MASE and, with ``score: pinball``, its live
        quantile loss (None until ``min_samples`` pairs)."""
        gate_cfg = self.target.forecaster.quality_gate
        assert gate_cfg is not None
        since = to_epoch(now - gate_cfg.window)
        a, p = slot.tracker.pairs(since)
        if a.size < gate_cfg.min_samples or not self._scale:
            return {"mase": None, "pinball": None}
        out = {"mase": live_mase(p, a, self._scale), "pinball": None}
        if gate_cfg.score == "pinball":
            a, qs = slot.tracker.quantile_pairs(since)
            out["pinball"] = live_quantile_loss(qs, a, self._scale)
        return out

    def _gate(self, history: Series, now: datetime, covariates: dict[str, Series] | None,
              window: LeadWindow) -> tuple[Forecast | None, str | None, dict[str, Any]]:
        """Forecast with every slot and let the quality gate pick one."""
        gate_cfg = self.target.forecaster.quality_gate
        assert gate_cfg is not None
        new = history if self._observed_until is None else history.since(self._observed_until)
        if len(new):
            for slot in (self.primary, *self.shadows):
                slot.tracker.observe(self.target.name, new)
            self._observed_until = int(history.timestamps[-1])
        results = {slot.name: self.forecast(history, now, slot, covariates, window)
                   for slot in (self.primary, *self.shadows)}
        for slot in (self.primary, *self.shadows):
            fc = results[slot.name][0]
            if fc is not None:
                slot.tracker.record(self.target.name, fc, window.horizons_s)
        both = {slot.name: self._live_errors(slot, now) for slot in (self.primary, *self.shadows)}
        # the pinball loss where the gate scores it; else, or for a forecast
        # without quantiles, the point's MASE
        errors = {k: v["mase"] if v["pinball"] is None else v["pinball"] for k, v in both.items()}
        order = [self.primary.name] + [s.name for s in self.shadows]
        choice, reason = gate(errors, gate_cfg.bound, order)

        def rounded(d: Mapping[str, float | None]) -> dict[str, float | None]:
            return {k: None if v is None else round(v, 4) for k, v in d.items()}

        info = {"choice": choice, "reason": reason.code, "message": reason.message, "score": gate_cfg.score,
                "live_error": rounded(errors), "live_mase": rounded({k: v["mase"] for k, v in both.items()}),
                "bound": gate_cfg.bound}
        if gate_cfg.score == "pinball":
            info["live_pinball"] = rounded({k: v["pinball"] for k, v in both.items()})
        if choice is None:
            return None, f"quality gate: {reason.message}", info
        return (*results[choice], info)

    def signal(self, history: Series, state: ScalingState, now: datetime, window: LeadWindow,
               covariates: dict[str, Series] | None = None, resource: str = "",
               fetch_error: str | None = None, *,
               forecast: tuple[Forecast | None, str | None] | None = None) -> tuple[Signal, dict[str, Any]]:
        """This runner's resource as the policy sees it: the latest
        observation of ``history``, the conformal headroom, and a forecast
        (recorded for feedback), or none with the reason: a forecast
        failure, or ``fetch_error`` (this cycle's fetch failed: the cached
        history may be missing what just happened, so no forecast is made
        and the policy falls back). Also the decision's extras from the
        model (the quality gate's choice, the auto forecaster's).
        ``forecast``: this cycle's (forecast, error) made elsewhere (a
        batched call over many targets, after :meth:`maintain`) instead of
        by this runner; it is calibrated here like one of its own."""
        obs = latest_observation(history)
        self.flagged = (None, None)
        if fetch_error is not None:
            return Signal(resource, None, obs, fetch_error, state.headroom, self.policy), {}
        headroom = state.headroom
        rate = self.policy.headroom_rate
        if rate is not None:
            m = self.policy.margin
            headroom = self.feedback.headroom(self.target.name, now, window.horizons_s, rate,
                                              m.conformal_window, m.conformal_min_samples)
        extra: dict[str, Any] = {}
        # the forecaster sees the history with flagged anomalies masked; the
        # policy sees the observation as it was
        anomaly, flag, fit = None, None, history
        if self.anomalies is not None:
            anomaly, flag = self.anomalies.observe(history, self._previous)
            fit = self.anomalies.mask(history)
        if forecast is not None:
            forecast, error = forecast
            if forecast is not None:
                forecast = self.calibrated(None, fit, forecast)
        elif self.target.forecaster.quality_gate is not None and self.primary.forecaster is not None:
            forecast, error, extra["quality_gate"] = self._gate(fit, now, covariates, window)
        else:
            forecast, error = self.forecast(fit, now, covariates=covariates, window=window)
        if forecast is not None and (why := implausible(forecast, fit)) is not None:
            forecast, error = None, f"ForecastError: {why}"
        self._previous = forecast
        #: this cycle's anomaly (and its step), for the decision (step())
        self.flagged = (anomaly, flag)
        fit_state = self.primary.fit_state(now) if self.primary.forecaster is not None else None
        if fit_state is not None:
            # its fits are failing: what it forecasts with meanwhile (and the
            # key a process after this one resumes the back-off under)
            extra["fit"] = {**fit_state, "key": model_key(self.target)}
        selection = getattr(self.primary.forecaster, "selection", None)
        if isinstance(selection, dict) and selection:
            extra["selection"] = selection  # the auto forecaster's choice and scores
        if forecast is not None:
            self.feedback.record(self.target.name, forecast, window.horizons_s)
        return Signal(resource, forecast, obs, error, headroom, self.policy), extra

    def step(self, history: Series, state: ScalingState, now: datetime,
             covariates: dict[str, Series] | None = None, window: LeadWindow | None = None, *,
             resources: Mapping[str, Series] | None = None,
             fetch_errors: Mapping[str, str] | None = None,
             forecast: tuple[Forecast | None, str | None] | None = None) -> CycleOutcome:
        """One decision from a regular history (samples up to ``now``);
        ``covariates``: extra metrics on the same grid, for forecasters that
        take them; ``window``: the cycle's lead window (computed here from
        the state when the caller has none, as in the backtest). The same
        window sizes the forecast horizon, the headroom's horizons and the
        policy's window. ``resources``: each further resource's history on
        the same grid (a resource missing there has no data: it holds);
        ``fetch_errors``: by resource name (the target's own is
        ``target.resource``), why this cycle has no fresh data for it;
        ``forecast``: the target's own forecast made elsewhere (a batched
        call, see :meth:`signal`)."""
        if window is None:
            window = lead_window(self.policy, state.learned_lead_time)
        errors = fetch_errors or {}
        own = self.target.resource if self.resources else ""
        first, extra = self.signal(history, state, now, window, covariates, own, errors.get(self.target.resource),
                                   forecast=forecast)
        signals = [first]
        for name, runner in self.resources.items():
            h = (resources or {}).get(name)
            why = errors.get(name) or (None if h is not None else f"metric source: no history of {name}")
            sig, more = runner.signal(h if h is not None else _empty(runner.target.name), state, now, window,
                                      resource=name, fetch_error=why)
            signals.append(sig)
            if more:
                extra.setdefault("resource_models", {})[name] = more
        seen = replace(state, observation=first.observation, headroom=first.headroom,
                       history_points=history.n_valid)
        decision = decide_signals(signals, seen, self.policy, now, target=self.target.name, window=window)
        if extra:
            decision = replace(decision, extra={**decision.extra, **extra})
        # each signal's own detector: its step follows that signal's data step
        for name, runner in ((own, self), *self.resources.items()):
            anomaly, flag = runner.flagged
            if flag is not None:
                decision = with_anomaly(decision, anomaly, flag, name, own=runner is self)
        return CycleOutcome(decision, first.forecast, first.forecast_error, seen, tuple(signals))


def _empty(name: str) -> Series:
    return Series(np.array([], dtype=np.int64), np.array([], dtype=np.float64), name)


@dataclass
class CycleResult:
    """What one live cycle did, for logs, metrics and the CLI (built once,
    at the end of the cycle; the daemon may add notes to ``details``)."""

    target: str
    now: datetime
    decision: Decision | None = None
    forecast: Forecast | None = None
    #: observed | hold | dry-run | planned | accepted | applied | clamped | failed | skipped | error |
    #: handed-over (the lease went to another replica mid-cycle: nothing written)
    status: str = ""
    plan: Plan | None = None
    window: LeadWindow | None = None  # the cycle's lead window
    fetch_error: str | None = None
    actuation_error: str | None = None
    error: str | None = None
    duration_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    #: a target with several resources: each further one's forecast by name
    resource_forecasts: dict[str, Forecast | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.fetch_error is None and self.actuation_error is None


@dataclass(frozen=True)
class CycleInputs:
    """Everything a cycle decides from, gathered before deciding: the one
    clock value, the history on the interval grid, the platform's reading,
    the state as loaded (current and in-service capacity taken from the
    reading), the lead window computed from it, and what went wrong while
    gathering. Frozen: the later steps read it, none changes it."""

    now: datetime
    history: Series
    covariates: Mapping[str, Series] | None
    reading: CapacityReading | None
    state: ScalingState
    window: LeadWindow
    fetch_error: str | None = None
    read_error: str | None = None
    notes: Mapping[str, Any] = field(default_factory=dict)
    #: each further resource's history on the grid, and why a fetch failed
    resources: Mapping[str, Series] = field(default_factory=dict)
    resource_errors: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Act:
    """What acting on a decision did, by mode: the status and outcome the
    decision is recorded with, and whether the state takes the change."""

    status: str
    outcome: Mapping[str, Any] | None = None
    applied: bool = False
    error: str | None = None  # an actuation error, for the result
    plan: Plan | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PendingCycle:
    """A cycle between its steps (:meth:`LiveTarget.begin`, ``decide``,
    ``finish``): what it has gathered and decided so far, and the error that
    ended it early. Only the LiveTarget that began it changes it."""

    now: datetime
    t0: float  # perf_counter at the start, for the duration
    notes: dict[str, Any] = field(default_factory=dict)
    inputs: CycleInputs | None = None
    out: CycleOutcome | None = None
    act: Act | None = None
    error: str | None = None


class CycleRefused(Exception):
    """This cycle must not decide (its time is not after the last one)."""


#: how many fetches of one target may still be running, abandoned past their
#: deadline, before a cycle stops starting new ones (each holds a thread until
#: the source's own timeout ends it)
MAX_ABANDONED_FETCHES = 2


def fetch_deadline(target: TargetConfig) -> float:
    """Seconds a cycle waits for its metric source: half the cycle's
    ``timeout``, leaving the other half to decide, record and act."""
    return target.timeout.total_seconds() / 2


class LiveTarget:
    """A target in the live loop: source, store, actuator around a runner.

    Not thread-safe: the daemon runs one cycle of a LiveTarget at a time
    (a fetch that outlives its deadline runs on in its own thread, but its
    answer is dropped). Beside a cycle abandoned past its timeout, the daemon
    runs the next on a fresh LiveTarget sharing the ``acting`` lock.
    """

    def __init__(self, target: TargetConfig, *, source: Any, store: Any, actuator: Any,
                 forecaster: Forecaster | None = None, covariates: dict[str, Any] | None = None,
                 acting: threading.Lock | None = None, resources: dict[str, Any] | None = None) -> None:
        self.target = target
        self.source = source
        #: held while a cycle touches the platform or the records of actions;
        #: shared with a LiveTarget the daemon starts beside an abandoned cycle
        self.acting = acting or threading.Lock()
        #: set by the daemon when it starts a newer cycle beside this one's
        #: abandoned cycle: this one then acts no more
        self.superseded = threading.Event()
        #: extra metric sources by name, and what has been fetched from each
        self.covariate_sources: dict[str, Any] = dict(covariates or {})
        self.covariate_history: dict[str, Series] = {}
        self.store = store
        self.actuator = actuator
        # the pairs in memory reach back as far as the conformal window and
        # the exported accuracy read
        keep = max(target.policy.margin.conformal_window, LIVE_ACCURACY_WINDOW)
        #: each further resource's metric source, and what has been fetched of it
        self.resource_sources: dict[str, Any] = dict(resources or {})
        missing = [n for n in target.resources if n not in self.resource_sources]
        if missing:
            raise ValueError(f"target {target.name!r}: no metric source given for resources {', '.join(missing)}")
        self.resource_history: dict[str, Series | None] = {n: None for n in target.resources}
        runners = {n: TargetRunner(target.resource_target(n),
                                   feedback=StoreFeedback(store, target.resource_series(n), keep), store=store)
                   for n in target.resources}
        self.runner = TargetRunner(target, forecaster=forecaster, feedback=StoreFeedback(store, target.name, keep),
                                   resources=runners, store=store)
        # the samples flagged before a restart stay out of training
        for series, detector in self._detectors().items():
            detector.restore(store.anomaly_masks(series))
        shelf = shelf_for(store)
        self.checkpoint = ModelCheckpoint(target, shelf)
        #: each further resource's model checkpoint (``<state>.models/<target>/<resource>.model``)
        self.resource_checkpoints = {n: ModelCheckpoint(target.resource_target(n), shelf)
                                     for n in target.resources}
        self.policy = target.policy
        self.history: Series | None = None
        self._fetches: list[threading.Thread] = []  # fetches abandoned past their deadline
        self._modes: dict[str, Callable[[CycleInputs, CycleOutcome], Act]] = {
            "observe": self._observe, "dry-run": self._dry_run, "approve": self._plan, "auto": self._apply}

    def rearm_checkpoints(self) -> None:
        """Look for newer saved models before the next forecast (this replica
        just took the target over: the previous leader may have fitted since
        this one last did)."""
        for checkpoint in (self.checkpoint, *self.resource_checkpoints.values()):
            checkpoint.rearm()

    # ------------------------------------------------------------------- cycle
    def run(self, now: datetime) -> CycleResult:
        """One cycle at ``now`` (read once by the caller). The steps, in order:

        1. ``_check_clock``  refuse a ``now`` not after the last recorded
           cycle (decision ids are ``target@time``; every window would be
           measured backwards).
        2. ``reconcile``     settle intents a crash left behind, from a read
           of the platform.
        3. ``_apply_plans``  approve mode: settle interrupted applies, expire,
           auto-approve, apply approved plans (:func:`engine.plans.tick`).
        4. ``_gather``       fetch what is new (within :func:`fetch_deadline`),
           read the capacity, load the state, compute the lead window:
           the frozen :class:`CycleInputs`.
        5. ``_decide``       the shared runner (fit/update, forecast, decide)
           or, without fresh data, the reactive fallback; model checkpoint.
        6. ``_verify``       earlier *accepted* actions: ``applied`` once the
           platform shows them serving (the delay is recorded, for the
           learned lead time), ``unverified`` after ``verify_timeout``.
        7. ``_act``          by mode through one table (``_modes``): observe
           logs, dry-run describes, approve plans, auto records an *intent*,
           applies and returns once the platform accepted.
        8. ``_record``       the decision with its status, outcome and the
           state after it, in one transaction.

        Steps 2-3 and 6-8 touch the platform or the records of actions: they
        run in this target's turn (:meth:`_turn`), which a cycle abandoned
        past its timeout may still hold; without it, 2, 3 and 6 wait for a
        later cycle and 7 records the decision ``skipped``, so two cycles of
        one target never act at once and every cycle records a decision.

        Never raises a ForescaleError or a bug in a plugin: the problem is
        returned in the result. A BaseException (SystemExit,
        KeyboardInterrupt) passes through; the intent recorded before acting
        lets the next start reconcile it.

        The batched cycle of a template (:mod:`engine.fleet`) runs the same
        steps in three calls, so that many targets' forecasts are made in
        one call between them: :meth:`begin` (1-4), :meth:`decide` (5, with
        the forecast made for it) and :meth:`finish` (6-8)."""
        cycle = self.begin(now)
        self.decide(cycle)
        return self.finish(cycle)

    def begin(self, now: datetime) -> PendingCycle:
        """Steps 1-4: the inputs this cycle decides from."""
        cycle = PendingCycle(now, time.perf_counter())
        with self._phase(cycle):
            self._check_clock(now)
            with self._turn() as not_ours:
                if not not_ours:
                    cycle.notes.update(self.reconcile(now))
                    cycle.notes.update(self._apply_plans(now))
            cycle.inputs = self._gather(now)
        return cycle

    def prepare_forecast(self, cycle: PendingCycle) -> str | None:
        """Before a forecast made for many targets at once: restore the saved
        model and fit or update it on this cycle's history. Returns why this
        target cannot take part (it then decides without it), or None."""
        inputs = cycle.inputs
        if cycle.error is not None or inputs is None:
            return cycle.error or "no inputs"
        if inputs.fetch_error:
            return inputs.fetch_error
        note = self.checkpoint.restore(self.runner, inputs.now, inputs.history.end)
        if note:
            cycle.notes["model"] = note
        return self.runner.maintain(inputs.history, inputs.now, inputs.covariates)

    def fits_here(self, cycle: PendingCycle) -> bool:
        """Whether this cycle's :meth:`decide` may fit the configured model
        in this process (its fit is due). A batched cycle decides such a
        target outside its batch, so that the record of the fit's start
        (:meth:`Store.fit_started`) is on disk before the fit begins."""
        inputs = cycle.inputs
        if cycle.error is not None or inputs is None or self.runner.forecaster is None:
            return False
        return self.runner.fit_due(self.runner.primary, inputs.now)

    def refit_job(self, cycle: PendingCycle) -> Series | None:
        """Before a refit made elsewhere (a batched cycle's executor):
        restore the saved model, then the history its refit is due on this
        cycle (None: no refit due, or this cycle has no fresh history; the
        cycle then forecasts here as always)."""
        inputs = cycle.inputs
        if cycle.error is not None or inputs is None or inputs.fetch_error:
            return None
        note = self.checkpoint.restore(self.runner, inputs.now, inputs.history.end)
        if note:
            cycle.notes["model"] = note
        return self.runner.refit_window(inputs.history, inputs.now)

    def take_refit(self, cycle: PendingCycle, window: Series, fitted: Any, where: str) -> str | None:
        """The outcome of the refit of :meth:`refit_job` on ``where`` (the
        executor's kind): a :class:`engine.fits.FittedModel` becomes the
        configured model (a note says which process fitted it); anything
        else (an :class:`engine.executor.TaskFailure`, a model that does not
        load) is a failed fit (:meth:`TargetRunner.fit_failed`, tried again
        later): the model fitted before forecasts meanwhile (a note says
        so), and with none, it is returned as this cycle's forecast error,
        the reason the policy falls back."""
        from .fits import FittedModel

        assert cycle.inputs is not None and self.runner.forecaster is not None
        now = cycle.inputs.now
        if not isinstance(fitted, FittedModel):
            why = f"the refit on the {where} executor failed ({fitted.kind}): {fitted.reason}"
        else:
            try:
                model = fitted.load(type(self.runner.forecaster))
                why = None
            except Exception as exc:  # noqa: BLE001 - a model that does not load is a failed refit
                why = f"the model refitted on the {where} executor does not load: {type(exc).__name__}: {exc}"
        if why is not None:
            slot = self.runner.primary
            short = getattr(fitted, "history", None)
            if short is not None and slot.last_fit is None:  # a new model warming up: not a failure
                self.runner.fit_waits(slot, now, short[0], short[1], why)
                return f"ForecastError: {why}"
            self.runner.fit_failed(slot, now, why)
            if slot.last_fit is None:  # no model to keep: this cycle's forecast error
                return f"ForecastError: {why}"
            # the model fitted before forecasts (updated here) until a refit succeeds
            cycle.notes["model"] = self.runner.kept_after(slot, why)
            return None
        self.runner.take_fit(model, window, now)
        cycle.notes["model"] = (f"{fitted.version} refitted on the {where} executor (pid {fitted.pid}, "
                                f"{fitted.seconds:.2f} s)")
        return None

    def decide(self, cycle: PendingCycle, forecast: tuple[Forecast | None, str | None] | None = None) -> None:
        """Step 5 (``forecast``: made for this target by a batched call,
        after :meth:`prepare_forecast`)."""
        if cycle.error is not None or cycle.inputs is None:
            return
        with self._phase(cycle):
            cycle.out = self._decide(cycle.inputs, cycle.notes, forecast)

    def acts(self, cycle: PendingCycle) -> bool:
        """Whether :meth:`finish` may touch the platform or the records of
        actions (plans, intents): approve and auto mode with a change to
        make, or an earlier accepted change to verify. A batched cycle
        records the others together and finishes these one by one."""
        if cycle.out is None or self.target.mode not in ("approve", "auto"):
            return False
        d = cycle.out.decision
        return d.desired != d.current or capabilities_of(self.actuator).stepwise_apply or bool(
            self.store.decisions(self.target.name, limit=1, status="accepted"))

    def finish(self, cycle: PendingCycle) -> CycleResult:
        """Steps 6-8, and the cycle's result."""
        if cycle.error is None and cycle.out is not None and cycle.inputs is not None:
            inputs, out = cycle.inputs, cycle.out
            with self._phase(cycle):
                set_log_fields(decision_id=out.decision.id)
                with self._turn() as not_ours:
                    if not not_ours:
                        cycle.notes.update(self._verify(inputs))
                    cycle.act = self._act(inputs, out, not_ours)
                    self._record(inputs, out, cycle.act, with_state=not not_ours)
        return self._result(cycle.now, cycle.notes, cycle.inputs, cycle.out, cycle.act, cycle.error,
                            time.perf_counter() - cycle.t0)

    @contextmanager
    def _phase(self, cycle: PendingCycle) -> Iterator[None]:
        """One part of a cycle: a problem becomes the cycle's error (the
        later parts are then skipped), never an exception."""
        try:
            with log_context(target=self.target.name, mode=self.target.mode):
                yield
        except CycleRefused as exc:
            cycle.error = str(exc)
        except LeaseLost as exc:
            # handed over mid-cycle (a replica joined, the shards were
            # rebalanced): nothing was written or applied, and the target is
            # another replica's now; not this replica's error
            cycle.error = f"state: {exc}"
            cycle.notes["handed_over"] = str(exc)
        except StateError as exc:
            cycle.error = f"state: {exc}"
        except sqlite3.Error as exc:
            # a read outside a transaction (a PostgreSQL server gone away:
            # psycopg's error as sqlite3's): the same fault, no traceback
            cycle.error = f"state: {self.store.kind} {self.store.path}: {exc}"
        except Exception as exc:  # noqa: BLE001 - one bad cycle must not end the target's loop
            log.exception("target %s: cycle failed", self.target.name, extra={"target": self.target.name})
            cycle.error = f"{type(exc).__name__}: {exc}"

    def _result(self, now: datetime, notes: dict[str, Any], inputs: CycleInputs | None,
                out: CycleOutcome | None, act: Act | None, error: str | None, duration_s: float) -> CycleResult:
        details = {**(inputs.notes if inputs else {}), **notes, **(act.details if act else {})}
        plan_errors = details.pop("plan_errors", None)
        actuation = [e for e in (plan_errors, inputs and inputs.read_error, act and act.error) if e]
        if "handed_over" in details:
            return CycleResult(self.target.name, now, status="handed-over", duration_s=duration_s, details=details)
        return CycleResult(
            self.target.name, now, decision=out and out.decision, forecast=out and out.forecast,
            status="error" if error is not None else (act.status if act else ""), plan=act and act.plan,
            window=inputs and inputs.window, fetch_error=inputs and inputs.fetch_error,
            actuation_error="; ".join(actuation) or None, error=error, duration_s=duration_s, details=details,
            resource_forecasts=out.resource_forecasts() if out is not None else {})

    # ------------------------------------------------------------------ steps
    def _check_clock(self, now: datetime) -> None:
        recs = self.store.decisions(self.target.name, limit=1)
        if recs and now <= (last := parse_time(recs[0]["at"])):
            # nothing is decided or changed until the clock passes the last
            # cycle again
            if now == last:  # not backwards: two runs in one second (`once`, then `once --json`)
                raise CycleRefused(
                    f"clock: a cycle of {self.target.name} already ran at {isoformat(last)}, and a decision "
                    "is named by its target and second; nothing decided: run it again a second later")
            raise CycleRefused(
                f"clock: now {isoformat(now)} is not after the last cycle at {isoformat(last)} "
                "(the clock moved backwards?); nothing decided until it passes that time")

    def _apply_plans(self, now: datetime) -> dict[str, Any]:
        """Approve mode: the plans' part of the cycle (:func:`engine.plans.tick`:
        settle interrupted applies, expire, auto-approve, apply what is
        approved, each re-checked against this target's config in force)."""
        if self.target.mode != "approve":
            return {}
        from .plans import tick

        events = tick(self.store, self.target, self.actuator, now)
        if not events:
            return {}
        notes: dict[str, Any] = {"plans": [str(e) for e in events],
                                 "plans_applied": [e.plan_id for e in events if e.kind == "applied"]}
        failed = [str(e) for e in events if e.failed]
        if failed:
            notes["plan_errors"] = "; ".join(failed)
        return notes

    def _gather(self, now: datetime) -> CycleInputs:
        deadline = time.monotonic() + fetch_deadline(self.target)
        notes: dict[str, Any] = {}
        fetch_error = self.refresh_history(now, deadline)
        if not fetch_error and self.covariate_sources:
            cov_errors = self.refresh_covariates(now, deadline)
            if cov_errors:
                notes["covariate_errors"] = cov_errors
        resource_errors = self.refresh_resources(now, deadline)
        if resource_errors:
            notes["resource_errors"] = resource_errors
        stored = self.store.load_state(self.target.name)
        reading, read_error = self.read_capacity(seed=stored.current if stored else self.policy.bounds[0])
        state = self.load_state(reading, stored)
        if reading is not None and reading.count != state.current and self._in_progress(now, state.current):
            # a change of several steps (a VM resize) is still under way: the
            # platform shows the old size until its last step; the capacity
            # ordered stands, and _verify issues the next step
            notes["in_progress"] = (f"observed capacity {reading.count}; the change to {state.current} "
                                    "is still in progress")
        elif reading is not None and reading.count != state.current:
            # someone (a person, another autoscaler) changed the capacity, or
            # an earlier action never took: decide from what is there, as the
            # HPA does from spec.replicas; such a change is no scale event of
            # ours, so it counts toward no rate limit or cooldown
            notes["external_change"] = (f"observed capacity {reading.count}, last set by forescale to "
                                        f"{state.current}; deciding from the observed value")
            state = replace(state, current=reading.count)
        history = self.history.regular(self.target.interval) if self.history is not None else Series(
            np.array([], dtype=np.int64), np.array([], dtype=np.float64), self.target.name)
        resources = {n: h.regular(self.target.interval) for n, h in self.resource_history.items() if h is not None}
        return CycleInputs(now=now, history=history, covariates=self.covariates_on_grid(), reading=reading,
                           state=state, window=lead_window(self.policy, state.learned_lead_time),
                           fetch_error=fetch_error, read_error=read_error, notes=notes,
                           resources=resources, resource_errors=resource_errors)

    def _in_progress(self, now: datetime, capacity: int) -> bool:
        """A stepwise change to ``capacity``, accepted and not yet settled
        or timed out, is under way."""
        if not capabilities_of(self.actuator).stepwise_apply:
            return False
        pending = self.store.decisions(self.target.name, limit=1, status="accepted")
        if not pending or pending[0]["desired"] != capacity:
            return False
        accepted_at = parse_time((pending[0]["outcome"] or {})["accepted_at"])
        return now - accepted_at < self._verify_timeout()

    def _verify(self, inputs: CycleInputs) -> dict[str, Any]:
        """Settle actions the platform accepted on earlier cycles against
        this cycle's reading (as the HPA writes ``/scale`` and looks again at
        its next sync). The newest accepted action is checked; older ones it
        replaced are marked ``superseded``."""
        pending = self.store.decisions(self.target.name, limit=20, status="accepted")
        if not pending or inputs.reading is None:
            return {}
        now, reading, name = inputs.now, inputs.reading, self.target.name
        newest, older = pending[0], pending[1:]
        for rec in older:
            self.store.set_decision_status(rec["id"], "superseded", now, outcome={
                **(rec["outcome"] or {}), "superseded_by": newest["id"]})
        outcome = dict(newest["outcome"] or {})
        accepted_at = parse_time(outcome["accepted_at"])
        if accepted_at >= now:
            return {}  # accepted in this very cycle (an approved plan): look again next cycle
        # what the actuator really set (after its clamps and floors, e.g. an
        # HPA floor never below its base) is what the platform must show
        desired = int((outcome.get("details") or {}).get("target", newest["desired"]))
        timeout = self._verify_timeout()
        if not (reading.count == desired and reading.settled) and now - accepted_at < timeout \
                and capabilities_of(self.actuator).stepwise_apply and self.target.mode in ("auto", "approve"):
            # (observe and dry-run never write: a resize left half done by a
            # switch to them waits for a person, and is reported unverified)
            # a change of several steps (stop, modify, start): each cycle
            # issues the next step the platform allows, with the same
            # desired capacity and decision id (idempotent)
            try:
                resume = getattr(self.actuator, "resume", None)
                if resume is not None:
                    # the change may have been begun by another process (a
                    # cron `forescale once`, `forescale apply`, a daemon
                    # since restarted): its record of the steps so far is
                    # the actuator's memory of them (what it stopped)
                    resume(newest["id"], dict(outcome.get("details") or {}))
                step = self.actuator.apply(newest["desired"], decision_id=newest["id"])
            except Exception as exc:  # noqa: BLE001 - an actuator bug must not stop the loop
                self.store.set_decision_status(newest["id"], "failed", now, outcome={
                    **outcome, "error": str(exc), "error_type": type(exc).__name__,
                    "request_ids": [*outcome.get("request_ids", ()), *getattr(exc, "request_ids", ())]})
                return {"failed": f"{newest['id']}: {type(exc).__name__}: {exc}"}
            outcome["request_ids"] = [*outcome.get("request_ids", ()),
                                      *(r for r in step.request_ids if r not in outcome.get("request_ids", ()))]
            outcome["phase"] = (step.details or {}).get("phase")
            outcome["details"] = {**(outcome.get("details") or {}), **(step.details or {})}
            if step.verified:
                reading = CapacityReading(desired, step.observed)
            else:
                self.store.set_decision_status(newest["id"], "accepted", now, outcome=outcome)
                return {"resizing": f"{newest['id']}: step {outcome['phase'] or 'issued'} toward {desired}"}
        if reading.count == desired and reading.settled:
            elapsed = now - accepted_at
            self.store.record_actuation(name, newest["id"], accepted_at, ActuationResult(
                desired, reading.serving, True, elapsed, tuple(outcome.get("request_ids", ()))))
            self.store.set_decision_status(newest["id"], "applied", now, outcome={
                **outcome, "verified": True, "observed": reading.serving, "verified_at": isoformat(now),
                "elapsed_s": elapsed.total_seconds()})
            return {"verified": f"{newest['id']}: {desired} in service after {elapsed}"}
        if now - accepted_at >= timeout:
            self.store.set_decision_status(newest["id"], "unverified", now, outcome={
                **outcome, "verified": False, "observed": reading.to_dict(), "verified_at": isoformat(now)})
            msg = (f"{newest['id']}: set to {desired} but {reading.count} set and {reading.serving} in service "
                   f"after verify_timeout ({timeout})")
            log.warning("target %s: %s", name, msg, extra={"target": name})
            return {"unverified": msg}
        return {}

    def _decide(self, inputs: CycleInputs, notes: dict[str, Any],
                forecast: tuple[Forecast | None, str | None] | None = None) -> CycleOutcome:
        """The runner's step. A signal whose fetch failed this cycle gets no
        forecast (its cached history may be missing what just happened): the
        policy falls back to reactive on its last observation and never
        scales down; the fetch error is the reason recorded in its data step.
        ``forecast``: the target's own, made by a batched call (after
        :meth:`prepare_forecast`)."""
        errors = dict(inputs.resource_errors)
        fresh = inputs.fetch_error is None
        if not fresh:
            errors[self.target.resource] = inputs.fetch_error  # type: ignore[assignment]
        else:
            note = self.checkpoint.restore(self.runner, inputs.now, inputs.history.end)
            if note:
                notes["model"] = note
        models = self._resource_models(inputs)
        for name, (checkpoint, runner, end) in models.items():
            note = checkpoint.restore(runner, inputs.now, end)
            if note:
                notes.setdefault("resource_models", {})[name] = note
        out = self.runner.step(inputs.history, inputs.state, inputs.now, inputs.covariates if fresh else None,
                               inputs.window, resources=inputs.resources, fetch_errors=errors, forecast=forecast)
        # a late cycle (abandoned past its timeout; a newer cycle of this
        # target has recorded since) keeps its older fits to itself: the
        # checkpoints stay the newer cycle's
        late = self.superseded.is_set() and self.store.decided_after(self.target.name, inputs.now)
        for checkpoint, runner, end in models.values():
            if not late:
                checkpoint.save(runner, end)
        if fresh:
            if not late:
                self.checkpoint.save(self.runner, inputs.history.end)
            if out.forecast_error:
                notes["forecast_error"] = out.forecast_error
        failed = {s.resource: s.forecast_error for s in out.signals[1:]
                  if s.forecast_error and s.resource not in inputs.resource_errors}
        if failed:
            notes["resource_forecast_errors"] = failed
        return out

    def _resource_models(self, inputs: CycleInputs) -> dict[str, tuple[ModelCheckpoint, TargetRunner, datetime | None]]:
        """The further resources fetched fresh this cycle: each one's
        checkpoint, runner and history end (a resource whose fetch failed
        is not forecast, so its model is neither restored nor saved)."""
        return {n: (self.resource_checkpoints[n], self.runner.resources[n], inputs.resources[n].end)
                for n in self.resource_checkpoints if n in inputs.resources and n not in inputs.resource_errors}

    @contextmanager
    def _turn(self) -> Iterator[str | None]:
        """This target's turn to touch the platform and the records of
        actions: yields None when this cycle has it, else why not (an
        earlier cycle, abandoned past its timeout, is still acting; or this
        cycle was itself abandoned and a newer one decides)."""
        if self.superseded.is_set():
            yield "this cycle was abandoned past its timeout; a newer cycle decides"
            return
        if not self.acting.acquire(blocking=False):
            yield "an earlier cycle of this target, abandoned past its timeout, is still acting"
            return
        try:
            yield None
        finally:
            self.acting.release()

    def _act(self, inputs: CycleInputs, out: CycleOutcome, not_ours: str | None) -> Act:
        d, mode = out.decision, self.target.mode
        if mode != "observe" and d.desired == d.current:
            return Act("hold")
        if not_ours and mode in ("approve", "auto"):
            return Act("skipped", {"error": not_ours})
        return self._modes[mode](inputs, out)

    def _detectors(self) -> dict[str, AnomalyDetector]:
        """Each signal's anomaly detector by its series name (the target's
        own, then each further resource's ``target/resource``)."""
        runners = (self.runner, *self.runner.resources.values())
        return {r.target.name: r.anomalies for r in runners if r.anomalies is not None}

    def _record(self, inputs: CycleInputs, out: CycleOutcome, act: Act, *, with_state: bool = True) -> None:
        """The decision, (``with_state``) the state after it and the
        anomaly masks that changed, in one transaction. Out of turn the
        state is left to the cycle that is acting: this one loaded it
        before that one's outcome."""
        d = out.decision
        state = out.state.after(d, keep=self.runner.keep, applied=act.applied) if with_state else None
        changed = {n: det for n, det in self._detectors().items() if det.changed}
        self.store.record_decision(d, self.target.mode, act.status, inputs.now, state=state,
                                   outcome=None if act.outcome is None else dict(act.outcome),
                                   context=decision_context(self.target, inputs.history, out.forecast, {
                                       n: (inputs.resources.get(n), f) for n, f in out.resource_forecasts().items()}),
                                   masks={n: dict(det.masked) for n, det in changed.items()})
        for det in changed.values():
            det.changed = False

    # ------------------------------------------------------------- the modes
    def _observe(self, inputs: CycleInputs, out: CycleOutcome) -> Act:
        return Act("observed")

    def _dry_run(self, inputs: CycleInputs, out: CycleOutcome) -> Act:
        desc = self._describe(out.decision)
        return Act("dry-run", {"would": desc}, details={"plan": desc})

    def _plan(self, inputs: CycleInputs, out: CycleOutcome) -> Act:
        from .plans import create_plan

        if inputs.reading is None:
            # a plan must carry the capacity seen when it was made (the
            # stale-plan check compares against it); without a reading
            # there is nothing safe to plan
            return Act("skipped", {"error": inputs.read_error or "capacity could not be read"})
        d = out.decision
        plan = create_plan(self.store, self.target, d, inputs.reading.count,
                           self._describe(d).get("summary", ""), inputs.now, actuator=self.actuator)
        # the plan's decision as create_plan recorded it (``planned``, or
        # ``applied`` when the emergency rule acted), which _record keeps
        rec = self.store.decision(d.id)
        return Act(rec["status"], rec["outcome"], applied=plan.status == PlanStatus.APPLIED, plan=plan)

    def _apply(self, inputs: CycleInputs, out: CycleOutcome) -> Act:
        """Auto: record the intent (with the state as if not applied), apply,
        and return the outcome; ``apply`` returns once the platform accepted
        the change, and a later cycle's ``_verify`` settles it."""
        if inputs.read_error:
            # the platform could not be read: acting blind could undo a change
            # made by someone else; hold until it can be read again
            return Act("skipped", {"error": inputs.read_error})
        d, now = out.decision, inputs.now
        self._record(inputs, out, Act("intent"))
        try:
            result = self.actuator.apply(d.desired, decision_id=d.id)
        except Exception as exc:  # noqa: BLE001 - an actuator bug must not stop the loop either
            outcome: dict[str, Any] = {"error": str(exc), "error_type": type(exc).__name__}
            if isinstance(exc, ActuatorError):
                outcome["request_ids"] = list(exc.request_ids)
            return Act("failed", outcome, error=f"{type(exc).__name__}: {exc}")
        set_to = (result.details or {}).get("target", d.desired)
        if set_to != d.desired and inputs.reading is not None and set_to == inputs.reading.count:
            # the platform's limits (clamp_to_group_limits at MaxSize) took
            # the whole change away: nothing was changed, and the state
            # takes no scale event (it recorded one every cycle, and
            # "applied 10 -> 15" while the group stayed at 10)
            why = f"the platform's limits hold it at {set_to} (asked {d.desired}); nothing changed"
            return Act("clamped", {**result.to_dict(), "clamped": why}, applied=False,
                       details={"result": result.to_dict(), "clamped": why})
        self.store.record_actuation(self.target.name, d.id, now, result)
        if result.verified:  # already in place (or a simulation)
            return Act("applied", result.to_dict(), applied=True, details={"result": result.to_dict()})
        return Act("accepted", {**result.to_dict(), "accepted_at": isoformat(now)}, applied=True,
                   details={"result": result.to_dict()})

    # ---------------------------------------------------------------- history
    @property
    def abandoned_fetches(self) -> int:
        """Fetches abandoned past their deadline that are still running."""
        return sum(t.is_alive() for t in self._fetches)

    def _history_window(self, target: TargetConfig | None = None) -> timedelta:
        t = target or self.target
        return t.forecaster.history + t.interval

    def _fetch(self, source: Any, since: datetime | None, now: datetime, deadline: float) -> Series:
        """``source.fetch(since, now)`` within ``deadline`` (monotonic): the
        call runs in its own thread; one that does not return in time is
        abandoned (its answer is dropped) and raises MetricSourceError, so a
        source that hangs costs this cycle a fallback, never the cycle."""
        self._fetches = [t for t in self._fetches if t.is_alive()]
        if len(self._fetches) >= MAX_ABANDONED_FETCHES:
            raise MetricSourceError(f"{len(self._fetches)} earlier fetches are still running past their "
                                    "deadline; not starting another")
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = source.fetch(since, now)
            except BaseException as exc:  # noqa: BLE001 - handed to the cycle
                box["error"] = exc

        thread = threading.Thread(target=call, daemon=True, name=f"fetch-{self.target.name}")
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            self._fetches.append(thread)
            raise MetricSourceError(f"no answer within {fetch_deadline(self.target):g}s "
                                    f"(half the cycle timeout {self.target.timeout}); abandoned")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def fetch_start(self, now: datetime) -> datetime:
        """Where this cycle's fetch of the target's own signal starts (see
        :meth:`_start`; a batched cycle's one query starts at the earliest
        of its targets')."""
        self.history, since = self._start(self.target, self.history, now)
        return since

    def _start(self, target: TargetConfig, history: Series | None, now: datetime) -> tuple[Series | None, datetime]:
        """The signal's history (read from the store's sample cache on the
        first cycle) and where its fetch starts: after that history, else
        at the start of the history window."""
        window = self._history_window(target)
        if history is None:
            recorded = self.store.samples_source(target.name)
            if recorded is not None and recorded != source_digest(target):
                # the query, path or server changed since these were cached:
                # they are another series (a fixed query was answered with
                # the broken one's samples); fetch the window afresh
                n = self.store.drop_samples(target.name)
                log.info("target %s: metric source changed since its samples were cached; %d cached "
                         "sample(s) dropped, the history is fetched again", target.name, n,
                         extra={"target": target.name})
            cached = self.store.cached_samples(target.name, since=now - window)
            history = cached if len(cached) else None
        if history is not None and len(history):
            return history, history.end
        return history, now - window

    def refresh_history(self, now: datetime, deadline: float | None = None) -> str | None:
        """Fetch what is new of the target's own signal; return an error
        string on failure (see :meth:`_refresh`)."""
        self.history, error = self._refresh(self.target, self.source, self.history, self.runner.feedback,
                                            now, deadline)
        return error

    def refresh_resources(self, now: datetime, deadline: float | None = None) -> dict[str, str]:
        """Fetch what is new of each further resource; the errors by name
        (such a resource holds this cycle: no forecast, no scale-down)."""
        errors: dict[str, str] = {}
        for name, source in self.resource_sources.items():
            history, error = self._refresh(self.target.resource_target(name), source,
                                           self.resource_history.get(name), self.runner.resources[name].feedback,
                                           now, deadline)
            self.resource_history[name] = history
            if error:
                errors[name] = error
        return errors

    def _refresh(self, target: TargetConfig, source: Any, history: Series | None, feedback: Feedback,
                 now: datetime, deadline: float | None) -> tuple[Series | None, str | None]:
        """Fetch what is new of one signal (``target``: the target or one of
        its resources, whose name keys the sample cache and the feedback);
        the history and an error string on failure (the cached history
        stays). A source that answers but has had nothing new for longer
        than ``policy.max_staleness`` is reported too: the data is missing
        even though nothing raised."""
        name = target.name
        window = self._history_window(target)
        if deadline is None:
            deadline = time.monotonic() + fetch_deadline(self.target)
        history, since = self._start(target, history, now)
        try:
            new = self._fetch(source, since, now, deadline)
            if not isinstance(new, Series):
                raise MetricSourceError(f"returned {type(new).__name__}, not a Series")
        except MetricSourceError as exc:
            return history, f"metric source: {exc}"
        except Exception as exc:  # noqa: BLE001 - a broken source must not kill the loop
            return history, f"metric source: {type(exc).__name__}: {exc}"
        new = new.until(now)  # never let a sample from the future in
        garbage = None
        negative = new.values < 0  # NaN compares False: a missing sample is not garbage
        if negative.any():
            # demand cannot be negative (a delta, a difference of two series
            # or a counter reset in the query): never sized on, cached or
            # trained on; the fetch is an error, so the cycle falls back on
            # the last good observation and never scales down
            at = int(new.timestamps[negative][-1])
            garbage = (f"metric source: {int(negative.sum())} negative sample(s), the newest "
                       f"{float(new.values[negative][-1]):g} at {isoformat(from_epoch(at))}: demand cannot be "
                       "negative (check the query: a delta, a difference, a counter reset); kept out")
            new = Series(new.timestamps[~negative], new.values[~negative], new.name)
        if len(new):
            self.store.cache_samples(name, new, source_digest(target), now)
            history = new if history is None else Series.concat(history, new)
            feedback.observe(name, new.regular(target.interval))
        if history is not None:
            history = history.since(to_epoch(now - window))
        if garbage is not None:
            return history, garbage
        last = history.last_valid() if history is not None else None
        if last is None:
            return history, "metric source: no samples in the history window"
        if now - last[0] > target.policy.max_staleness:
            return history, (f"metric source: no new samples since {last[0]:%Y-%m-%d %H:%M:%S}Z "
                             f"({now - last[0]} ago, max_staleness {target.policy.max_staleness})")
        return history, None

    def refresh_covariates(self, now: datetime, deadline: float | None = None) -> dict[str, str]:
        """Fetch what is new of each extra metric. A failure is reported but
        not fatal: the forecaster sees a gap (NaN) there."""
        if deadline is None:
            deadline = time.monotonic() + fetch_deadline(self.target)
        errors: dict[str, str] = {}
        window_start = now - self._history_window()
        for name, src in self.covariate_sources.items():
            have = self.covariate_history.get(name)
            since = have.end if have is not None and len(have) else window_start
            try:
                new = self._fetch(src, since, now, deadline).until(now)
            except Exception as exc:  # noqa: BLE001 - an extra metric must not stop the cycle
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            merged = new if have is None else Series.concat(have, new)
            self.covariate_history[name] = merged.since(to_epoch(window_start))
        return errors

    def covariates_on_grid(self) -> dict[str, Series] | None:
        if not self.covariate_sources:
            return None
        return {n: s.regular(self.target.interval) for n, s in self.covariate_history.items() if len(s)}

    # ------------------------------------------------------------------ state
    def load_state(self, reading: CapacityReading | None, stored: ScalingState | None) -> ScalingState:
        """The stored state (a fresh one at the reading or the minimum if
        none), with the capacity in service from the reading and the lead
        time learned from the recorded actuation delays."""
        state = stored
        if state is None:
            state = ScalingState(current=reading.count if reading is not None else self.policy.bounds[0])
        if reading is not None:
            state = replace(state, in_service=reading.serving)
        delays = self.store.actuation_delays(self.target.name)
        if delays:
            state = replace(state, learned_lead_time=timedelta(seconds=float(np.percentile(delays, 90))))
        return state

    def read_capacity(self, seed: int | None = None) -> tuple[CapacityReading | None, str | None]:
        """The platform's reading, or why there is none. ``read()`` raising
        LookupError is the actuator's way of saying it knows no capacity
        until told one (the dry-run simulation): the engine then calls its
        ``seed(capacity)`` with the last capacity it set and reads again."""
        try:
            try:
                return self.actuator.read(), None
            except LookupError:
                if seed is None:
                    return None, None
                self.actuator.seed(seed)
                return self.actuator.read(), None
        except ActuatorError as exc:
            return None, f"actuator read: {exc}"
        except Exception as exc:  # noqa: BLE001
            return None, f"actuator read: {type(exc).__name__}: {exc}"

    def _verify_timeout(self) -> timedelta:
        cfg = self.target.actuator_config
        return cfg.verify_timeout if cfg is not None else ActuatorConfig.model_fields["verify_timeout"].default

    def _describe(self, d: Decision) -> dict[str, Any]:
        try:
            return self.actuator.describe(d.desired, d.current).to_dict()
        except Exception as exc:  # noqa: BLE001
            return {"summary": f"set capacity {d.current} -> {d.desired}", "describe_error": str(exc)}

    def reconcile(self, now: datetime) -> dict[str, Any]:
        """Settle decisions left as an *intent* by a crash (or by a cycle that
        could not write its outcome). If the platform already shows the
        intended capacity, the decision is marked applied (and the state takes
        the change as a scale event, so cooldowns count from it); otherwise it
        is marked abandoned and the next cycle decides afresh from the observed
        capacity. Set-to-N is idempotent, so nothing is applied twice and
        nothing disappears from the log. A plan claimed for that decision
        (``applying``) becomes ``applied`` or ``failed`` with it, so it is
        never applied again. Runs every cycle; costs one indexed query when
        there is nothing to settle."""
        intents = self.store.unfinished_intents(self.target.name)
        if not intents:
            return {}
        reading, err = self.read_capacity()
        if reading is None and err is not None:
            # cannot tell whether it happened: leave the intents for the next
            # cycle, which reconciles again
            return {"reconciled": [f"{len(intents)} unfinished intent(s) left for later: {err}"]}
        observed = reading.count if reading is not None else None
        notes: list[str] = []
        for rec in intents:
            if observed is not None and observed == rec["desired"]:
                self.store.set_decision_status(rec["id"], "applied", now,
                                               outcome={"reconciled": True, "observed": observed})
                state = self.store.load_state(self.target.name)
                if state is not None and state.current != observed:
                    ev = ScaleEvent(parse_time(rec["at"]), state.current, observed)
                    self.store.save_state(self.target.name, replace(
                        state, current=observed, events=state.events + (ev,)), now)
                self._settle_plan(rec["id"], now, applied=True)
                notes.append(f"{rec['id']}: applied before the restart (observed {observed})")
            else:
                self.store.set_decision_status(rec["id"], "abandoned", now, outcome={
                    "reconciled": True, "observed": observed})
                self._settle_plan(rec["id"], now, applied=False)
                notes.append(f"{rec['id']}: not applied before the restart (observed {observed}); abandoned")
        for note in notes:
            log.warning("target %s reconcile: %s", self.target.name, note, extra={"target": self.target.name})
        return {"reconciled": notes}

    def _settle_plan(self, decision_id: str, now: datetime, *, applied: bool) -> None:
        for p in self.store.plans(self.target.name, PlanStatus.APPLYING):
            if p.decision_id == decision_id:
                self.store.transition_plan(p.id, PlanStatus.APPLIED if applied else PlanStatus.FAILED, now,
                                           reason="reconciled after a restart", allowed_from=(PlanStatus.APPLYING,))
