"""One decision cycle for one target.

:class:`TargetRunner` is the part shared by the live loop and the backtest:
keep the forecaster fitted (refit on schedule, ``update`` every cycle),
forecast, feed back observed values, and call the pure policy. Everything
that touches the outside world (metric source, store, actuator) lives in
:class:`LiveTarget`, which wraps a runner.

Order of one live cycle (``LiveTarget.run(now)``, ``now`` read once by the
caller):

1. apply any approved plan (approve mode);
2. fetch what is new from the metric source (a failure keeps the cached
   history: the observation goes stale and the policy falls back, never
   scaling down);
3. fill in actual values next to earlier forecasts;
4. read the capacity in service from the actuator (reconcile);
5. runner: fit/update, forecast, decide;
6. record the forecast, and the decision with the state after it, in one
   transaction; then act according to the mode:
   ``observe`` logs only; ``dry-run`` logs what it would do (with the
   actuator's ``describe``); ``approve`` stores a plan; ``auto`` records an
   *intent*, applies, and records the outcome (so a crash in between is
   visible and reconciled on restart, never applied twice).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from actuators.dryrun import DryRunActuator
from forecasters import Forecaster, create as create_forecaster
from forecasters.quality import gate, live_mase
from policies import decide, history_to_keep

from .config import TargetConfig
from .core.errors import (
    ActuatorError, ForecastError, MetricSourceError, StateError,
)
from .logs import log_context, set_log_fields
from .feedback import Feedback, MemoryFeedback, StoreFeedback, seasonal_naive_scale
from .core.types import Decision, Forecast, Observation, Plan, PlanStatus, ScaleEvent, ScalingState, Series
from .core.units import from_epoch, isoformat, parse_time, to_epoch

log = logging.getLogger("forescale.cycle")


@dataclass
class CycleOutcome:
    decision: Decision
    forecast: Forecast | None
    forecast_error: str | None
    state: ScalingState  # the state decide() saw (observation, headroom filled in)


def _takes_covariates(forecaster: Any) -> bool:
    try:
        return "covariates" in inspect.signature(forecaster.fit).parameters
    except (TypeError, ValueError):
        return False


class _Slot:
    """One forecaster the runner keeps fitted: the configured model, or a
    quality-gate fallback running in shadow. ``tracker`` holds its own
    predicted-vs-actual pairs at the policy's lead time (its live error)."""

    def __init__(self, name: str, forecaster: Forecaster | None, horizons_s: tuple[int, int]) -> None:
        self.name = name
        self.forecaster = forecaster
        self.last_fit: datetime | None = None
        self.tracker = MemoryFeedback(horizons_s)


class TargetRunner:
    """Forecaster upkeep + forecast + decide, for one target."""

    def __init__(self, target: TargetConfig, *, forecaster: Forecaster | None = None,
                 feedback: Feedback | None = None) -> None:
        self.target = target
        self.policy = target.policy
        if forecaster is None and target.policy.uses_forecast:
            if target.forecaster.init_from is not None:
                from forecasters import registry

                forecaster = registry.get(target.forecaster.name)(target.forecaster.params,
                                                                  init_from=target.forecaster.init_from)
            else:
                forecaster = create_forecaster(target.forecaster.name, target.forecaster.params)
        self.interval_s = int(target.interval.total_seconds())
        lead = self.policy.lead_time
        self.horizons_s = (int(lead.total_seconds()), int((lead + self.policy.hold).total_seconds()))
        self.primary = _Slot(target.forecaster.name, forecaster, self.horizons_s)
        self.shadows: list[_Slot] = []
        gate_cfg = target.forecaster.quality_gate
        if gate_cfg is not None and forecaster is not None:
            self.shadows = [_Slot(n, create_forecaster(n), self.horizons_s)
                            for n in gate_cfg.fallbacks if n != target.forecaster.name]
        self.feedback: Feedback = feedback or MemoryFeedback(self.horizons_s)
        self.keep = history_to_keep(self.policy)
        self._observed_until: int | None = None
        self._scale: float | None = None  # MASE denominator, refreshed at each refit

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

    def _maintain(self, slot: _Slot, history: Series, now: datetime,
                  covariates: dict[str, Series] | None = None) -> None:
        assert slot.forecaster is not None
        fc = self.target.forecaster
        due = slot.last_fit is None or now - slot.last_fit >= fc.refit_every
        kw: dict[str, Any] = {}
        if covariates and _takes_covariates(slot.forecaster):
            kw["covariates"] = covariates
        if due:
            start = to_epoch(now - fc.history)
            window = history.since(start)
            if "covariates" in kw:
                kw["covariates"] = {k: v.since(start) for k, v in covariates.items()}  # type: ignore[union-attr]
            slot.forecaster.fit(window, **kw)
            slot.last_fit = now
            if slot is self.primary:
                self._scale = seasonal_naive_scale(window)
        else:
            slot.forecaster.update(history, **kw)
            if slot is self.primary and self._scale is None:  # e.g. a model restored from a checkpoint
                self._scale = seasonal_naive_scale(history.since(to_epoch(now - fc.history)))

    def forecast(self, history: Series, now: datetime, slot: _Slot | None = None,
                 covariates: dict[str, Series] | None = None) -> tuple[Forecast | None, str | None]:
        """Fit or update, then predict. Never raises: a failure becomes the
        reason the policy falls back."""
        slot = slot or self.primary
        if slot.forecaster is None:
            return None, None
        try:
            if history.n_valid == 0:
                raise ForecastError("no valid observations in the history")
            self._maintain(slot, history, now, covariates)
            fc = slot.forecaster.predict(now, self.target.horizon_steps, self.target.forecast_quantiles)
            return fc, None
        except ForecastError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a model bug must not stop the loop
            log.warning("forecaster %s failed: %s", slot.name,
                        "".join(traceback.format_exception_only(exc)).strip())
            slot.last_fit = None  # refit next cycle
            return None, f"{type(exc).__name__}: {exc}"

    def _live_error(self, slot: _Slot, now: datetime) -> float | None:
        gate_cfg = self.target.forecaster.quality_gate
        assert gate_cfg is not None
        a, p = slot.tracker.pairs(to_epoch(now - gate_cfg.window))
        if a.size < gate_cfg.min_samples or not self._scale:
            return None
        return live_mase(p, a, self._scale)

    def _gate(self, history: Series, now: datetime,
              covariates: dict[str, Series] | None = None) -> tuple[Forecast | None, str | None, dict[str, Any]]:
        """Forecast with every slot and let the quality gate pick one."""
        gate_cfg = self.target.forecaster.quality_gate
        assert gate_cfg is not None
        new = history if self._observed_until is None else history.since(self._observed_until)
        if len(new):
            for slot in (self.primary, *self.shadows):
                slot.tracker.observe(self.target.name, new)
            self._observed_until = int(history.timestamps[-1])
        results = {slot.name: self.forecast(history, now, slot, covariates)
                   for slot in (self.primary, *self.shadows)}
        for slot in (self.primary, *self.shadows):
            fc = results[slot.name][0]
            if fc is not None:
                slot.tracker.record(self.target.name, fc)
        errors = {slot.name: self._live_error(slot, now) for slot in (self.primary, *self.shadows)}
        order = [self.primary.name] + [s.name for s in self.shadows]
        choice, reason = gate(errors, gate_cfg.bound, order)
        info = {"choice": choice, "reason": reason.code, "message": reason.message,
                "live_mase": {k: None if v is None else round(v, 4) for k, v in errors.items()},
                "bound": gate_cfg.bound}
        if choice is None:
            return None, f"quality gate: {reason.message}", info
        return (*results[choice], info)

    def step(self, history: Series, state: ScalingState, now: datetime,
             covariates: dict[str, Series] | None = None) -> CycleOutcome:
        """One decision from a regular history (samples up to ``now``);
        ``covariates``: extra metrics on the same grid, for forecasters that
        take them."""
        v = history.values
        if v.size and v[-1] == v[-1]:  # the usual case, without scanning the history
            obs: Observation | None = Observation(float(v[-1]), from_epoch(history.timestamps[-1]))
        else:
            last = history.last_valid()
            obs = Observation(last[1], last[0]) if last is not None else None
        headroom = state.headroom
        rate = self.policy.headroom_rate
        if rate is not None:
            m = self.policy.margin
            headroom = self.feedback.headroom(self.target.name, now, self.horizons_s, rate,
                                              m.conformal_window, m.conformal_min_samples)
        seen = replace(state, observation=obs, headroom=headroom, history_points=history.n_valid)
        extra: dict[str, Any] = {}
        if self.target.forecaster.quality_gate is not None and self.primary.forecaster is not None:
            forecast, error, extra["quality_gate"] = self._gate(history, now, covariates)
        else:
            forecast, error = self.forecast(history, now, covariates=covariates)
        decision = decide(forecast, seen, self.policy, now, target=self.target.name, forecast_error=error)
        chosen = self.primary.forecaster
        selection = getattr(chosen, "selection", None)
        if isinstance(selection, dict) and selection:
            extra["selection"] = selection  # the auto forecaster's choice and scores
        if extra:
            decision = replace(decision, extra={**decision.extra, **extra})
        if forecast is not None:
            self.feedback.record(self.target.name, forecast)
        return CycleOutcome(decision, forecast, error, seen)


@dataclass
class CycleResult:
    """What one live cycle did, for logs, metrics and the CLI."""

    target: str
    now: datetime
    decision: Decision | None = None
    forecast: Forecast | None = None
    status: str = ""  # observed | dry-run | planned | applied | failed | hold | error
    plan: Plan | None = None
    fetch_error: str | None = None
    actuation_error: str | None = None
    error: str | None = None
    duration_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.fetch_error is None and self.actuation_error is None


class LiveTarget:
    """A target in the live loop: source, store, actuator around a runner.

    Not thread-safe: the daemon runs at most one cycle of a target at a time.
    """

    def __init__(self, target: TargetConfig, *, source: Any, store: Any, actuator: Any,
                 forecaster: Forecaster | None = None, covariates: dict[str, Any] | None = None) -> None:
        self.target = target
        self.source = source
        #: extra metric sources by name, and what has been fetched from each
        self.covariate_sources: dict[str, Any] = dict(covariates or {})
        self.covariate_history: dict[str, Series] = {}
        self._saved_fit: datetime | None = None
        self._model_restored = False
        self.store = store
        self.actuator = actuator
        self.runner = TargetRunner(target, forecaster=forecaster, feedback=StoreFeedback(store))
        self.policy = target.policy
        self.history: Series | None = None
        #: settle intents left by a crash before the first cycle, and again
        #: after a cycle that could not write its outcome to the store
        self.needs_reconcile = True
        self._last_now: datetime | None = None

    # ---------------------------------------------------------------- history
    def _history_window(self) -> timedelta:
        return self.target.forecaster.history + self.target.interval

    def refresh_history(self, now: datetime) -> str | None:
        """Fetch what is new; return an error string on failure (the cached
        history stays). A source that answers but has had nothing new for
        longer than ``policy.max_staleness`` is reported too: the data is
        missing even though nothing raised."""
        name = self.target.name
        if self.history is None:
            cached = self.store.cached_samples(name, since=now - self._history_window())
            self.history = cached if len(cached) else None
        since = None
        if self.history is not None and len(self.history):
            since = self.history.end
        else:
            since = now - self._history_window()
        try:
            new = self.source.fetch(since, now)
            if not isinstance(new, Series):
                raise MetricSourceError(f"returned {type(new).__name__}, not a Series")
        except MetricSourceError as exc:
            return f"metric source: {exc}"
        except Exception as exc:  # noqa: BLE001 - a broken source must not kill the loop
            return f"metric source: {type(exc).__name__}: {exc}"
        new = new.until(now)  # never let a sample from the future in
        if len(new):
            self.store.cache_samples(name, new)
            self.history = new if self.history is None else Series.concat(self.history, new)
            self.runner.feedback.observe(name, new.regular(self.target.interval))
        if self.history is not None:
            self.history = self.history.since(to_epoch(now - self._history_window()))
        last = self.history.last_valid() if self.history is not None else None
        if last is None:
            return "metric source: no samples in the history window"
        if now - last[0] > self.target.policy.max_staleness:
            return (f"metric source: no new samples since {last[0]:%Y-%m-%d %H:%M:%S}Z "
                    f"({now - last[0]} ago, max_staleness {self.target.policy.max_staleness})")
        return None

    # ------------------------------------------------------------ checkpoints
    def _model_paths(self) -> tuple[Path, Path] | None:
        path = getattr(self.store, "path", ":memory:")
        if not path or path == ":memory:":
            return None
        folder = Path(path).parent / (Path(path).name + ".models")
        return folder / f"{self.target.name}.model", folder / f"{self.target.name}.json"

    def _model_key(self) -> str:
        """What the saved model must match to be reused: the forecaster
        section of the config and the interval."""
        return hashlib.sha256(
            (self.target.forecaster.model_dump_json() + str(self.target.interval)).encode()).hexdigest()[:16]

    def restore_model(self) -> str | None:
        """Load the checkpoint of the configured model saved by an earlier
        run (so a restart does not retrain the LSTM). Returns a note."""
        paths = self._model_paths()
        if paths is None or self.runner.forecaster is None or not paths[1].exists():
            return None
        model_path, meta_path = paths
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != self._model_key():
                return "saved model ignored: the forecaster config changed since it was saved"
            cls = type(self.runner.forecaster)
            self.runner.forecaster = cls.load(model_path)
            self.runner.last_fit = from_epoch(meta["last_fit"])
            self._saved_fit = self.runner.last_fit
            return f"model {meta.get('version')} restored (fitted {isoformat(self.runner.last_fit)})"
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint means: fit again
            log.warning("target %s: saved model not usable, refitting: %s", self.target.name, exc)
            return f"saved model not usable ({type(exc).__name__}: {exc}); refitting"

    def save_model(self) -> None:
        """Checkpoint the configured model after each refit (atomically)."""
        paths = self._model_paths()
        f, fitted = self.runner.forecaster, self.runner.last_fit
        if paths is None or f is None or fitted is None or fitted == self._saved_fit:
            return
        model_path, meta_path = paths
        try:
            model_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = model_path.with_name(model_path.name + ".tmp")
            f.save(tmp)
            os.replace(tmp, model_path)
            meta = {"key": self._model_key(), "name": self.target.forecaster.name,
                    "version": getattr(f, "version", ""), "last_fit": to_epoch(fitted)}
            tmp_meta = meta_path.with_name(meta_path.name + ".tmp")
            tmp_meta.write_text(json.dumps(meta))
            os.replace(tmp_meta, meta_path)
            self._saved_fit = fitted
        except Exception as exc:  # noqa: BLE001 - a failed checkpoint costs a refit, nothing more
            log.warning("target %s: could not save the model: %s", self.target.name, exc)

    def refresh_covariates(self, now: datetime) -> dict[str, str]:
        """Fetch what is new of each extra metric. A failure is reported but
        not fatal: the forecaster sees a gap (NaN) there."""
        errors: dict[str, str] = {}
        window_start = now - self._history_window()
        for name, src in self.covariate_sources.items():
            have = self.covariate_history.get(name)
            since = have.end if have is not None and len(have) else window_start
            try:
                new = src.fetch(since, now).until(now)
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
    def load_state(self, observed: int | None) -> ScalingState:
        state = self.store.load_state(self.target.name)
        if state is None:
            lo, _ = self.target.policy.bounds
            start = observed if observed is not None else lo
            state = ScalingState(current=start)
        if observed is not None:
            state = replace(state, in_service=observed)
        delays = self.store.actuation_delays(self.target.name)
        if delays:
            state = replace(state, learned_lead_time=timedelta(seconds=float(np.percentile(delays, 90))))
        return state

    def read_capacity(self) -> tuple[int | None, str | None]:
        try:
            return int(self.actuator.read()), None
        except LookupError:
            return None, None  # dry-run actuator before its first capacity
        except ActuatorError as exc:
            return None, f"actuator read: {exc}"
        except Exception as exc:  # noqa: BLE001
            return None, f"actuator read: {type(exc).__name__}: {exc}"

    def _last_cycle_at(self) -> datetime | None:
        if self._last_now is None:
            recs = self.store.decisions(self.target.name, limit=1)
            if recs:
                self._last_now = parse_time(recs[0]["at"])
        return self._last_now

    # ------------------------------------------------------------------- cycle
    def run(self, now: datetime) -> CycleResult:
        """One cycle at ``now``. Never raises a ForescaleError or a bug in a
        plugin: the problem is returned in the result (``error``,
        ``fetch_error``, ``actuation_error``). A BaseException (SystemExit,
        KeyboardInterrupt) passes through; the intent recorded before acting
        lets the next start reconcile it."""
        t0 = time.perf_counter()
        res = CycleResult(self.target.name, now)
        try:
            with log_context(target=self.target.name, mode=self.target.mode):
                self._run(now, res)
        except StateError as exc:
            res.error = f"state: {exc}"
            res.status = "error"
            self.needs_reconcile = True  # an outcome may not have been written
        except Exception as exc:  # noqa: BLE001 - one bad cycle must not end the target's loop
            log.exception("target %s: cycle failed", self.target.name, extra={"target": self.target.name})
            res.error = f"{type(exc).__name__}: {exc}"
            res.status = "error"
            self.needs_reconcile = True
        res.duration_s = time.perf_counter() - t0
        return res

    def _run(self, now: datetime, res: CycleResult) -> None:
        name, mode = self.target.name, self.target.mode
        last = self._last_cycle_at()
        if last is not None and now <= last:
            # Decision ids are "target@time": deciding now would overwrite the
            # audit record of an earlier cycle, and every window (cooldown,
            # stabilization) would be measured backwards. Nothing is decided
            # or changed until the clock passes the last cycle again.
            res.status = "error"
            res.error = (f"clock: now {isoformat(now)} is not after the last cycle at {isoformat(last)} "
                         "(the clock moved backwards?); nothing decided until it passes that time")
            return
        if self.needs_reconcile:
            notes = self.reconcile(now)
            self.needs_reconcile = False
            if notes:
                res.details["reconciled"] = notes
        if mode == "approve":
            from .plans import apply_approved, expire_plans

            expired = expire_plans(self.store, name, now)
            if expired:
                res.details["plans_expired"] = [p.id for p in expired]
            applied = apply_approved(self.store, self.actuator, name, now)
            if applied:
                res.details["plans_applied"] = applied
                failed = [f"plan {pid}: {why}" for pid, why in applied if why != "applied"]
                if failed:
                    res.actuation_error = "; ".join(failed)
        res.fetch_error = self.refresh_history(now)
        observed, read_error = self.read_capacity()
        if read_error:
            res.actuation_error = read_error if res.actuation_error is None else \
                f"{res.actuation_error}; {read_error}"
        state = self.load_state(observed)
        if observed is not None and observed != state.current:
            # someone (a person, another autoscaler) changed the capacity, or
            # an earlier action never took: decide from what is there, as the
            # HPA does from spec.replicas; such a change is no scale event of
            # ours, so it counts toward no rate limit or cooldown
            res.details["external_change"] = (f"observed capacity {observed}, last set by forescale to "
                                              f"{state.current}; deciding from the observed value")
            state = replace(state, current=observed)
        if isinstance(self.actuator, DryRunActuator) and observed is None:
            self.actuator.capacity = state.current
        history = self.history.regular(self.target.interval) if self.history is not None else Series(
            np.array([], dtype=np.int64), np.array([], dtype=np.float64), name)
        if res.fetch_error:
            out = self._without_fresh_data(history, state, now, res.fetch_error)
        else:
            if self.covariate_sources:
                cov_errors = self.refresh_covariates(now)
                if cov_errors:
                    res.details["covariate_errors"] = cov_errors
            if not self._model_restored:
                self._model_restored = True
                note = self.restore_model()
                if note:
                    res.details["model"] = note
            out = self.runner.step(history, state, now, self.covariates_on_grid())
            self.save_model()
        d = out.decision
        set_log_fields(decision_id=d.id)
        res.decision, res.forecast = d, out.forecast
        if out.forecast_error and not res.fetch_error:
            res.details["forecast_error"] = out.forecast_error
        self._last_now = now
        keep = self.runner.keep
        if mode == "observe" or d.desired == d.current:
            status = "observed" if mode == "observe" else "hold"
            self.store.record_decision(d, mode, status, now, state=out.state.after(d, keep=keep, applied=False))
            res.status = status
            return
        if mode == "dry-run":
            desc = self._describe(d)
            self.store.record_decision(d, mode, "dry-run", now,
                                       state=out.state.after(d, keep=keep, applied=False),
                                       outcome={"would": desc})
            res.status, res.details["plan"] = "dry-run", desc
            return
        if mode == "approve":
            from .plans import create_plan

            if observed is None:
                # a plan must carry the capacity seen when it was made (the
                # stale-plan check compares against it); without a reading
                # there is nothing safe to plan
                self.store.record_decision(d, mode, "skipped", now,
                                           state=out.state.after(d, keep=keep, applied=False),
                                           outcome={"error": read_error or "capacity could not be read"})
                res.status = "skipped"
                return
            plan = create_plan(self.store, self.target, d, observed, self._describe(d).get("summary", ""), now)
            self.store.record_decision(d, mode, "planned", now,
                                       state=out.state.after(d, keep=keep, applied=False),
                                       outcome={"plan_id": plan.id})
            res.status, res.plan = "planned", plan
            return
        # auto: record the intent (with the state as if not applied), act,
        # record the outcome
        if read_error:
            # the platform could not be read: acting blind could undo a change
            # made by someone else; hold until it can be read again
            self.store.record_decision(d, mode, "skipped", now,
                                       state=out.state.after(d, keep=keep, applied=False),
                                       outcome={"error": read_error})
            res.status = "skipped"
            return
        self.store.record_decision(d, mode, "intent", now, state=out.state.after(d, keep=keep, applied=False))
        self._apply(d, now, res, state_before=out.state)

    def _without_fresh_data(self, history: Series, state: ScalingState, now: datetime,
                            why: str) -> CycleOutcome:
        """The decision when this cycle's fetch failed: no forecast (the
        cached history may be missing what just happened), so the policy
        falls back to reactive on the last observation and never scales
        down; ``why`` is the reason recorded in the data step."""
        v = history.values
        if v.size and v[-1] == v[-1]:  # the usual case, without scanning the history
            obs: Observation | None = Observation(float(v[-1]), from_epoch(history.timestamps[-1]))
        else:
            last = history.last_valid()
            obs = Observation(last[1], last[0]) if last is not None else None
        seen = replace(state, observation=obs, history_points=history.n_valid)
        d = decide(None, seen, self.policy, now, target=self.target.name, forecast_error=why)
        return CycleOutcome(d, None, why, seen)

    def _describe(self, d: Decision) -> dict[str, Any]:
        try:
            return self.actuator.describe(d.desired, d.current).to_dict()
        except Exception as exc:  # noqa: BLE001
            return {"summary": f"set capacity {d.current} -> {d.desired}", "describe_error": str(exc)}

    def _apply(self, d: Decision, now: datetime, res: CycleResult, state_before: ScalingState) -> None:
        keep = self.runner.keep
        try:
            result = self.actuator.apply(d.desired, decision_id=d.id)
        except ActuatorError as exc:
            res.actuation_error = f"{type(exc).__name__}: {exc}"
            res.status = "failed"
            self.store.set_decision_status(d.id, "failed", now, outcome={
                "error": str(exc), "error_type": type(exc).__name__, "request_ids": list(exc.request_ids)})
            return
        except Exception as exc:  # noqa: BLE001 - an actuator bug must not stop the loop
            res.actuation_error = f"{type(exc).__name__}: {exc}"
            res.status = "failed"
            self.store.set_decision_status(d.id, "failed", now, outcome={
                "error": str(exc), "error_type": type(exc).__name__})
            return
        self.store.record_actuation(self.target.name, d.id, now, result)
        status = "applied" if result.verified else "unverified"
        self.store.record_decision(d, self.target.mode, status, now,
                                   state=state_before.after(d, keep=keep, applied=True),
                                   outcome=result.to_dict())
        res.status = status
        res.details["result"] = result.to_dict()
        if not result.verified:
            res.actuation_error = (f"set to {result.requested} but {result.observed} observed in service "
                                   "when verification timed out")

    def reconcile(self, now: datetime) -> list[str]:
        """Settle decisions left as an *intent* by a crash (or by a cycle that
        could not write its outcome). If the platform already shows the
        intended capacity, the decision is marked applied (and the state takes
        the change as a scale event, so cooldowns count from it); otherwise it
        is marked abandoned and the next cycle decides afresh from the observed
        capacity. Set-to-N is idempotent, so nothing is applied twice and
        nothing disappears from the log. An approved plan whose decision is
        settled as applied becomes ``applied`` too (else it stays approved and
        the stale-plan check guards its next apply)."""
        notes: list[str] = []
        intents = self.store.unfinished_intents(self.target.name)
        if not intents:
            return notes
        observed, err = self.read_capacity()
        if observed is None and err is not None:
            # cannot tell whether it happened: leave the intents for the next
            # cycle, which reconciles again
            self.needs_reconcile = True
            return [f"{len(intents)} unfinished intent(s) left for later: {err}"]
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
        return notes

    def _settle_plan(self, decision_id: str, now: datetime, *, applied: bool) -> None:
        for p in self.store.plans(self.target.name, PlanStatus.APPROVED):
            if p.decision_id == decision_id and applied:
                self.store.transition_plan(p.id, PlanStatus.APPLIED, now, note="reconciled after a restart",
                                           allowed_from=(PlanStatus.APPROVED,))
