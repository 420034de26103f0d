"""The engine's own metrics.

:class:`EngineMetrics` owns a private ``CollectorRegistry`` (never the
process-global one, so two engines in one process, or a test, do not
collide). The engine calls it with plain values after each cycle; nothing
here reads the clock: ``now`` arrives as an argument. The HTTP server that
serves them is :mod:`engine.server`.

Names follow the Prometheus conventions (``promtool check metrics`` passes
on a real scrape): base units, ratios in 0-1, one metric per unit, no
reserved label names. Every one is labelled by ``target``.

============================================  =========  ==========================================
``forescale_forecast_demand``                 gauge      forecast demand, in the target metric's
                                                         units, per ``horizon`` and ``level``
``forescale_observed_demand``                 gauge      the latest observed demand (same units)
``forescale_recommended_capacity``            gauge      the policy's recommendation
``forescale_desired_capacity``                gauge      the capacity decided (after every clamp)
``forescale_current_capacity``                gauge      the capacity observed before deciding
``forescale_decisions_total``                 counter    by ``action`` and ``reason`` (the reason
                                                         code of the last policy step that changed
                                                         the value; ``Unchanged`` if none did)
``forescale_forecast_mae``                    gauge      rolling mean absolute error (metric units)
``forescale_forecast_bias``                   gauge      rolling mean of forecast - actual (units)
``forescale_forecast_mape_ratio``             gauge      rolling mean absolute percentage error as a
                                                         ratio (0.068 is 6.8 %)
``forescale_forecast_mase_ratio``             gauge      rolling MAE / the one-day seasonal naive's
``forescale_forecast_coverage_ratio``         gauge      share of actuals under the upper band
``forescale_anomalies_total``                 counter    observations flagged as anomalies, per
                                                         ``resource`` ("" for a target's one signal)
``forescale_anomaly_score``                   gauge      the score of the last flagged anomaly
``forescale_cycle_duration_seconds``          histogram  wall time of a cycle
``forescale_fetch_errors_total``              counter    metric source failures
``forescale_actuation_errors_total``          counter    actuator failures
``forescale_forecast_failures_total``         counter    forecasts that could not be made
``forescale_push_errors_total``               counter    pushes to ``server.pushgateway`` that failed
``forescale_model_fit_failures_total``        counter    fits of the configured model that failed
                                                         (raised, timed out or lost on an executor);
                                                         the model fitted before forecasts meanwhile
``forescale_model_fit_timestamp_seconds``     gauge      when the model it forecasts with was fitted
                                                         (``time() -`` it: the model's age)
``forescale_last_success_timestamp_seconds``  gauge      end of the last successful cycle
``forescale_cycle_interval_seconds``          gauge      the target's configured cycle interval (for
                                                         "no successful cycle for N intervals")
``forescale_mode``                            gauge      1 for the target's current ``mode``, 0 for
                                                         the others
``forescale_plans_pending``                   gauge      plans waiting for approval
``forescale_forecast_time_to_threshold_seconds`` gauge  per ``alert``: seconds until the alert's
                                                         forecast level crosses its threshold
                                                         (``+Inf`` when not within the forecast)
``forescale_alert_threshold``                 gauge      per ``alert``: its threshold (metric units)
``forescale_resource_required_capacity``      gauge      a target with several resources: the
                                                         capacity each ``resource`` asks for
``forescale_resource_sizing``                 gauge      1 for the ``resource`` that set the size, 0
                                                         for the others
``forescale_resource_forecast_demand``        gauge      each further ``resource``'s forecast, in its
                                                         units, per ``horizon`` and ``level``
``forescale_remote_write_dropped_samples_total`` counter  remote-write samples dropped (no target label)
``forescale_remote_write_sent_samples_total`` counter    remote-write samples accepted
============================================  =========  ==========================================

Labels:

- ``horizon``: seconds ahead of the cycle's ``now``, from the target's
  configuration and identical across restarts (:func:`export_horizons`: the
  policy's lead time, lead time + hold, and the end of the forecast when
  ``forecaster.extra_horizon`` is set). The value at a horizon is the
  forecast interpolated at ``now + horizon`` (:func:`horizon_values`), not a
  grid step whose offset depends on when the daemon started. The accuracy
  gauges carry the lead-time horizon, where the engine measures them.
- ``level``: ``point`` for the point forecast, else the quantile level
  (``0.5``, ``0.9``); ``quantile`` is reserved for summaries.

Counters of a target are created at zero when the target is registered, so
``increase()`` in an alert sees the first error too.
"""

from __future__ import annotations

import logging
import math
import threading
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder, push_to_gateway

# no ``*_created`` series beside each counter and histogram: ten metric
# names the docs do not list, that every scrape stores and no alert reads
disable_created_metrics()

from engine.anomaly import flagged
from engine.core.types import Decision, Forecast

log = logging.getLogger("forescale.metrics")

MODES = ("observe", "dry-run", "approve", "auto")
#: the accuracy keys :meth:`EngineMetrics.set_accuracy` takes, as
#: :func:`engine.accuracy.live_accuracy` computes them (MAPE as a ratio, as exported)
ACCURACY_KEYS = ("mae", "mape", "mase", "bias", "coverage")
#: cycle durations: a cycle is a fetch, a fit/predict and maybe an actuation
#: with verification; seconds to minutes
CYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FORECAST_HELP = "Forecast demand in the target metric's units, by horizon (seconds ahead) and level"

#: ``readiness()`` answers {target: None (ready) | "why it is not"}
Readiness = Callable[[], Mapping[str, "str | None"]]


def decision_reason(decision: Decision) -> str:
    """The reason label of a decision: the reason code of the last policy step
    that changed the value (the one that had the final say), else
    ``Unchanged``. Reason codes are a small fixed set, so the label's
    cardinality stays bounded."""
    reasons = decision.reasons
    return reasons[-1] if reasons else "Unchanged"


def level_label(q: float | None) -> str:
    return "point" if q is None else f"{q:g}"


def horizon_label(h: timedelta) -> str:
    return str(int(h.total_seconds()))


def export_horizons(target) -> tuple[timedelta, ...]:
    """The horizons a target's forecast is exported at, from its config only
    (so the labels survive restarts): the policy's lead time (what it sizes
    for), lead time + hold (the end of the window the new capacity must
    cover) and, with ``forecaster.extra_horizon``, the forecast's end."""
    lead, hold = target.policy.lead_time, target.policy.hold
    out = [lead, lead + hold, lead + hold + target.forecaster.extra_horizon]
    return tuple(sorted(set(out)))


def value_at(timestamps: np.ndarray, values: np.ndarray, t: float, tolerance: float) -> float | None:
    """``values`` at epoch ``t``, interpolated linearly between grid points;
    within ``tolerance`` outside the grid the nearest end (a forecast step
    holds for one interval); else, or where a neighbour is NaN, ``None``."""
    ts = np.asarray(timestamps, dtype=float)
    if ts.size == 0:
        return None
    if t < ts[0]:
        v = float(values[0]) if ts[0] - t <= tolerance else math.nan
    elif t > ts[-1]:
        v = float(values[-1]) if t - ts[-1] <= tolerance else math.nan
    else:
        j = int(np.searchsorted(ts, t))
        if ts[j] == t:
            v = float(values[j])
        else:
            a, b = float(values[j - 1]), float(values[j])
            v = a + (b - a) * (t - ts[j - 1]) / (ts[j] - ts[j - 1])
    return None if math.isnan(v) else v


def horizon_values(forecast: Forecast, horizons: Iterable[timedelta], step: timedelta
                   ) -> list[tuple[str, str, float]]:
    """``(horizon, level, value)`` of a forecast at each horizon after its
    ``made_at`` (the cycle's ``now``), for the point and every quantile: the
    one place the exported series are derived, for the scrape, the
    Pushgateway and remote write."""
    made = forecast.made_at.timestamp()
    levels: list[tuple[str, np.ndarray]] = [("point", np.asarray(forecast.point, dtype=float))]
    levels += [(level_label(q), np.asarray(a, dtype=float)) for q, a in sorted(forecast.quantiles.items())]
    out = []
    for h in horizons:
        for level, values in levels:
            v = value_at(forecast.timestamps, values, made + h.total_seconds(), step.total_seconds())
            if v is not None:
                out.append((horizon_label(h), level, v))
    return out


def time_to_threshold(forecast: Forecast, values: np.ndarray, threshold: float,
                      observed: float | None = None) -> float:
    """Seconds from the forecast's ``made_at`` until ``values`` (one of its
    levels) first reach ``threshold``, interpolated linearly between the
    observation at ``made_at`` (when given) and the forecast points; 0 when
    the observation is already there; ``inf`` when the forecast stays below
    it to its end."""
    made = forecast.made_at.timestamp()
    if observed is not None and not math.isnan(observed) and observed >= threshold:
        return 0.0
    prev: tuple[float, float] | None = (made, observed) if observed is not None and not math.isnan(observed) \
        else None
    for t, v in zip(np.asarray(forecast.timestamps, dtype=float).tolist(), np.asarray(values, dtype=float).tolist()):
        if math.isnan(v):
            continue
        if v >= threshold:
            if prev is not None and prev[1] < threshold:
                t = prev[0] + (threshold - prev[1]) / (v - prev[1]) * (t - prev[0])
            return max(0.0, t - made)
        prev = (t, v)
    return math.inf


def not_ready(last_success: Mapping[str, datetime | None], intervals: Mapping[str, timedelta],
              now: datetime, *, within: int = 3) -> dict[str, str | None]:
    """Readiness of each target: ``None`` when its last successful cycle
    ended within ``within`` of its intervals before ``now``, else why not.
    A pure helper for the daemon's readiness callable."""
    out: dict[str, str | None] = {}
    for target, interval in intervals.items():
        last = last_success.get(target)
        if last is None:
            out[target] = "no successful cycle yet"
        elif now - last > within * interval:
            out[target] = (f"last successful cycle {int((now - last).total_seconds())}s ago, "
                           f"more than {within} intervals of {int(interval.total_seconds())}s")
        else:
            out[target] = None
    return out


#: default horizons of a target registered without any (a test, a tool)
DEFAULT_HORIZONS = (timedelta(minutes=10), timedelta(minutes=15))
DEFAULT_STEP = timedelta(minutes=5)


class EngineMetrics:
    """The engine's metrics in their own registry (see the module doc)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.forecast = Gauge("forescale_forecast_demand", FORECAST_HELP, ["target", "horizon", "level"],
                              registry=r)
        self.observed = Gauge("forescale_observed_demand", "Latest observed demand in the target metric's units",
                              ["target"], registry=r)
        self.recommended = Gauge("forescale_recommended_capacity", "Capacity the policy recommended",
                                 ["target"], registry=r)
        self.desired = Gauge("forescale_desired_capacity", "Capacity decided after every clamp",
                             ["target"], registry=r)
        self.current = Gauge("forescale_current_capacity", "Capacity observed before deciding",
                             ["target"], registry=r)
        self.decisions = Counter("forescale_decisions", "Decisions by action and deciding reason code",
                                 ["target", "action", "reason"], registry=r)
        acc = ["target", "horizon"]
        self.accuracy = {
            "mae": Gauge("forescale_forecast_mae", "Rolling mean absolute forecast error, in the metric's units",
                         acc, registry=r),
            "bias": Gauge("forescale_forecast_bias", "Rolling mean of forecast minus actual, in the metric's units",
                          acc, registry=r),
            "mape": Gauge("forescale_forecast_mape_ratio", "Rolling mean absolute percentage error as a ratio",
                          acc, registry=r),
            "mase": Gauge("forescale_forecast_mase_ratio", "Rolling MAE over the one-day seasonal naive's MAE",
                          acc, registry=r),
            "coverage": Gauge("forescale_forecast_coverage_ratio", "Share of actuals under the upper forecast band",
                              acc, registry=r),
        }
        self.duration = Histogram("forescale_cycle_duration_seconds", "Wall time of one cycle",
                                  ["target"], buckets=CYCLE_BUCKETS, registry=r)
        self.fetch_errors = Counter("forescale_fetch_errors", "Metric source failures", ["target"], registry=r)
        self.actuation_errors = Counter("forescale_actuation_errors", "Actuator failures", ["target"], registry=r)
        self.forecast_failures = Counter("forescale_forecast_failures", "Forecasts that could not be made",
                                         ["target"], registry=r)
        self.push_errors = Counter("forescale_push_errors", "Pushes of the forecast to server.pushgateway "
                                   "that failed", ["target"], registry=r)
        self.fit_failures = Counter("forescale_model_fit_failures", "Fits of the configured model that "
                                    "failed (the model fitted before forecasts meanwhile)", ["target"], registry=r)
        self.fit_time = Gauge("forescale_model_fit_timestamp_seconds", "Unix time the model the target "
                              "forecasts with was fitted", ["target"], registry=r)
        self.fallback_cycles = Counter("forescale_fallback_cycles", "Cycles that fell back to reactive, by the "
                                       "data step's reason code", ["target", "reason"], registry=r)
        # ``resource``: "" on a target's one signal (Prometheus reads an empty
        # label as none), the resource's name on a target with several
        self.anomalies = Counter("forescale_anomalies", "Observations flagged as anomalies (far outside the "
                                 "forecast band)", ["target", "resource"], registry=r)
        self.anomaly_score = Gauge("forescale_anomaly_score", "Score of the target's last flagged anomaly "
                                   "(band widths or robust z-score, see anomalies.method)", ["target", "resource"],
                                   registry=r)
        self.last_success = Gauge("forescale_last_success_timestamp_seconds",
                                  "Unix time the last successful cycle ended", ["target"], registry=r)
        self.interval = Gauge("forescale_cycle_interval_seconds", "Configured cycle interval",
                              ["target"], registry=r)
        self.mode = Gauge("forescale_mode", "1 for the target's current mode", ["target", "mode"], registry=r)
        self.plans_pending = Gauge("forescale_plans_pending", "Plans waiting for approval", ["target"], registry=r)
        self.audit_chain_ok = Gauge("forescale_audit_chain_ok", "1 if the audit chain's tail verified at start, "
                                    "0 if a record was edited, deleted, inserted or reordered", registry=r)
        self.time_to_threshold = Gauge(
            "forescale_forecast_time_to_threshold_seconds", "Seconds until the forecast's alert level crosses "
            "the alert's threshold (+Inf: not within the forecast)", ["target", "alert"], registry=r)
        self.alert_threshold = Gauge("forescale_alert_threshold", "The predictive alert's threshold, in the "
                                     "target metric's units", ["target", "alert"], registry=r)
        self.resource_required = Gauge("forescale_resource_required_capacity", "Capacity each resource of "
                                       "the target asks for", ["target", "resource"], registry=r)
        self.resource_sizing = Gauge("forescale_resource_sizing", "1 for the resource that set the size",
                                     ["target", "resource"], registry=r)
        self.resource_forecast = Gauge("forescale_resource_forecast_demand", "Forecast demand of a further "
                                       "resource, in its units", ["target", "resource", "horizon", "level"],
                                       registry=r)
        self.remote_write_dropped_samples = Counter(
            "forescale_remote_write_dropped_samples", "Remote-write samples dropped (queue full, refused, "
            "or out of retries)", registry=r)
        self.remote_write_sent_samples = Counter("forescale_remote_write_sent_samples",
                                                 "Remote-write samples the receiver accepted", registry=r)
        self._lock = threading.Lock()
        self._forecast_labels: dict[str, set[tuple[str, str]]] = {}
        self._resource_labels: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._last_success: dict[str, datetime] = {}
        self._horizons: dict[str, tuple[timedelta, ...]] = {}
        self._steps: dict[str, timedelta] = {}
        self._alerts: dict[str, tuple] = {}
        self._targets: set[str] = set()

    # -------------------------------------------------------------- recording
    def register_target(self, target: str, mode: str | None = None, interval: timedelta | None = None,
                        horizons: Iterable[timedelta] | None = None, alerts: Iterable[Any] | None = None,
                        signals: Iterable[str] = ("",)) -> None:
        """Create the target's counters at zero (so alerts on ``increase()``
        see the first error) and record its mode, cycle interval, export
        horizons (:func:`export_horizons`; the first is the lead time, where
        accuracy is measured) and predictive alerts
        (:class:`engine.config.ThresholdAlert`); ``signals``: the names its
        anomaly counters are created for (its resources, or "" for one
        signal). Call again on a config reload."""
        with self._lock:
            self._targets.add(target)
            if horizons is not None:
                self._horizons[target] = tuple(sorted(set(horizons)))
            if interval is not None:
                self._steps[target] = interval
            if alerts is not None:
                old = {a.name for a in self._alerts.get(target, ())}
                self._alerts[target] = tuple(alerts)
                for name in old - {a.name for a in self._alerts[target]}:
                    for g in (self.time_to_threshold, self.alert_threshold):
                        try:
                            g.remove(target, name)
                        except KeyError:
                            pass
        for a in alerts or ():
            self.alert_threshold.labels(target=target, alert=a.name).set(a.value)
        for c in (self.fetch_errors, self.actuation_errors, self.forecast_failures, self.fit_failures):
            c.labels(target=target)
        for name in signals:  # each signal's anomalies ("": a target's one signal)
            self.anomalies.labels(target=target, resource=name)
        self.duration.labels(target=target)
        self.plans_pending.labels(target=target).set(0)
        if mode is not None:
            self.set_mode(target, mode)
        if interval is not None:
            self.interval.labels(target=target).set(interval.total_seconds())

    def forget_target(self, target: str) -> None:
        """Remove every series of ``target`` (a target removed from the
        config, a template's target whose series went away): its frozen
        values would keep alerts firing (ForescaleCycleStale,
        ForescaleThresholdForecast) for a target that no longer exists.
        Registered again when it comes back."""
        with self._lock:
            self._targets.discard(target)
            for d in (self._last_success, self._horizons, self._steps, self._alerts, self._forecast_labels):
                d.pop(target, None)
            for key in [k for k in self._resource_labels if k[0] == target]:
                del self._resource_labels[key]
        for collector in list(self.registry._collector_to_names):
            names = getattr(collector, "_labelnames", ())
            if "target" not in names:
                continue
            i = names.index("target")
            with collector._lock:  # (prometheus_client lists a family's children only here)
                keys = [k for k in collector._metrics if k[i] == target]
            for k in keys:
                try:
                    collector.remove(*k)
                except KeyError:
                    pass

    def horizons(self, target: str) -> tuple[timedelta, ...]:
        with self._lock:
            return self._horizons.get(target, DEFAULT_HORIZONS)

    def step(self, target: str) -> timedelta:
        with self._lock:
            return self._steps.get(target, DEFAULT_STEP)

    def set_mode(self, target: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        for m in MODES:
            self.mode.labels(target=target, mode=m).set(1 if m == mode else 0)

    def observe_cycle(self, target: str, decision: Decision | None, forecast: Forecast | None,
                      duration_s: float, ok: bool, now: datetime, observed: float | None = None) -> None:
        """Record one cycle: its duration; on success the time; the decision's
        capacities and counter; the forecast at each export horizon (the
        previous cycle's series are replaced, not left stale); the latest
        observed demand."""
        self.duration.labels(target=target).observe(max(0.0, float(duration_s)))
        with self._lock:
            self._targets.add(target)
            if ok:
                self._last_success[target] = now
        if ok:
            self.last_success.labels(target=target).set(now.timestamp())
        if decision is not None:
            self.recommended.labels(target=target).set(decision.recommendation)
            self.desired.labels(target=target).set(decision.desired)
            self.current.labels(target=target).set(decision.current)
            self.decisions.labels(target=target, action=decision.action.value,
                                  reason=decision_reason(decision)).inc()
            for anomaly in flagged(decision):
                resource = anomaly.get("resource", "")
                self.anomalies.labels(target=target, resource=resource).inc()
                self.anomaly_score.labels(target=target, resource=resource).set(float(anomaly["score"]))
        if observed is not None and not math.isnan(observed):
            self.observed.labels(target=target).set(float(observed))
        if forecast is not None:
            self.set_forecast(target, forecast)
            self.set_time_to_threshold(target, forecast, observed)

    def set_time_to_threshold(self, target: str, forecast: Forecast, observed: float | None = None) -> None:
        """Each predictive alert's time until its level crosses its threshold."""
        with self._lock:
            alerts = self._alerts.get(target, ())
        for a in alerts:
            values = forecast.point if a.level is None else forecast.quantiles.get(a.level)
            if values is None:  # the level is validated against the config's quantiles
                continue
            self.time_to_threshold.labels(target=target, alert=a.name).set(
                time_to_threshold(forecast, values, a.value, observed))

    def forecast_series(self, target: str, forecast: Forecast) -> list[tuple[str, str, float]]:
        """``(horizon, level, value)`` of ``forecast`` at the target's export
        horizons."""
        return horizon_values(forecast, self.horizons(target), self.step(target))

    def set_forecast(self, target: str, forecast: Forecast) -> None:
        fresh: set[tuple[str, str]] = set()
        series = self.forecast_series(target, forecast)
        with self._lock:
            for horizon, level, v in series:
                self.forecast.labels(target=target, horizon=horizon, level=level).set(v)
                fresh.add((horizon, level))
            for horizon, level in self._forecast_labels.get(target, set()) - fresh:
                self.forecast.remove(target, horizon, level)
            self._forecast_labels[target] = fresh

    def observe_resources(self, target: str, decision: Decision,
                          forecasts: Mapping[str, Forecast | None]) -> None:
        """A target with several resources: what each asked for, which one
        set the size, and each further resource's forecast at the export
        horizons (a resource without a forecast this cycle has its series
        removed, not left stale)."""
        sizes = decision.extra.get("resources") or {}
        for name, n in sizes.items():
            self.resource_required.labels(target=target, resource=name).set(n)
            self.resource_sizing.labels(target=target, resource=name).set(
                1 if name == decision.extra.get("resource") else 0)
        for name, fc in forecasts.items():
            key = (target, name)
            fresh: set[tuple[str, str]] = set()
            series = self.forecast_series(target, fc) if fc is not None else []
            with self._lock:
                for horizon, level, v in series:
                    self.resource_forecast.labels(target=target, resource=name, horizon=horizon, level=level).set(v)
                    fresh.add((horizon, level))
                for horizon, level in self._resource_labels.get(key, set()) - fresh:
                    self.resource_forecast.remove(target, name, horizon, level)
                self._resource_labels[key] = fresh

    def fetch_error(self, target: str) -> None:
        self.fetch_errors.labels(target=target).inc()

    def actuation_error(self, target: str) -> None:
        self.actuation_errors.labels(target=target).inc()

    def forecast_failure(self, target: str) -> None:
        self.forecast_failures.labels(target=target).inc()

    def observe_fit(self, target: str, fitted_at: datetime | None, failed: bool) -> None:
        """The configured model after a cycle: when the one it forecasts
        with was fitted (None: none is), and whether a fit failed in it."""
        if failed:
            self.fit_failures.labels(target=target).inc()
        if fitted_at is not None:
            self.fit_time.labels(target=target).set(fitted_at.timestamp())
        else:
            try:
                self.fit_time.remove(target)
            except KeyError:
                pass

    def fallback_cycle(self, target: str, reason: str) -> None:
        self.fallback_cycles.labels(target=target, reason=reason).inc()

    def watch_notifier(self, notifier: Any) -> None:
        """Export a :class:`engine.notify.Notifier`'s per-channel counts,
        read at each scrape: ``forescale_notifications_sent_total`` and
        ``forescale_notifications_dropped_total`` (dropped after the retry
        bound or with the channel's queue full)."""
        from prometheus_client.core import CounterMetricFamily

        class _Counts:
            def describe(self) -> list:
                return []

            def collect(self) -> Any:
                for name, counts, what in (("sent", notifier.sent, "delivered"),
                                           ("dropped", notifier.dropped, "dropped after retries or a full queue")):
                    fam = CounterMetricFamily(f"forescale_notifications_{name}",
                                              f"Notifications {what}, per channel", labels=["channel"])
                    for channel, n in sorted(counts.items()):
                        fam.add_metric([channel], n)
                    yield fam

        self.registry.register(_Counts())

    def set_audit_status(self, ok: bool) -> None:
        self.audit_chain_ok.set(1 if ok else 0)

    def set_plans_pending(self, target: str, n: int) -> None:
        self.plans_pending.labels(target=target).set(n)

    def remote_write_dropped(self, n: int) -> None:
        self.remote_write_dropped_samples.inc(n)

    def remote_write_sent(self, n: int) -> None:
        self.remote_write_sent_samples.inc(n)

    def set_accuracy(self, target: str, accuracy: Mapping[str, float | None]) -> None:
        """Rolling accuracy at the lead-time horizon, as
        :func:`engine.accuracy.live_accuracy` computes it: keys ``mae``,
        ``mape`` (a ratio), ``mase``, ``bias`` and ``coverage``. A
        ``None``/NaN value (not computable yet, e.g. MAPE over zero
        actuals) removes the series instead of exporting NaN."""
        unknown = set(accuracy) - set(ACCURACY_KEYS)
        if unknown:
            raise ValueError(f"unknown accuracy metric(s) {sorted(unknown)}; known: {', '.join(ACCURACY_KEYS)}")
        horizon = horizon_label(self.horizons(target)[0])
        for key, value in accuracy.items():
            gauge = self.accuracy[key]
            if value is None or math.isnan(value):
                try:
                    gauge.remove(target, horizon)
                except KeyError:
                    pass
            else:
                gauge.labels(target=target, horizon=horizon).set(float(value))

    def accuracy_series(self, target: str) -> list[tuple[str, dict[str, str], float]]:
        """The accuracy gauges' current samples of one target, as
        ``(name, labels, value)`` (for remote write)."""
        out = []
        for gauge in self.accuracy.values():
            for fam in gauge.collect():
                out += [(s.name, dict(s.labels), s.value) for s in fam.samples if s.labels.get("target") == target]
        return out

    def last_success_time(self, target: str) -> datetime | None:
        with self._lock:
            return self._last_success.get(target)

    @property
    def targets(self) -> list[str]:
        with self._lock:
            return sorted(self._targets)

    # ------------------------------------------------------------- exposition
    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics in the format ``accept`` asks for (text by default)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def push_forecasts(self, gateway: str, target: str, forecast: Forecast, *, job: str = "forescale",
                       timeout: float = 10.0) -> None:
        """Push the target's forecast gauges to a Prometheus Pushgateway
        (PUT: replaces the group ``job``/``target``), for setups where
        Prometheus does not scrape forescale directly. Raises the
        underlying ``OSError``/``urllib.error.URLError`` on failure."""
        reg = CollectorRegistry(auto_describe=True)
        g = Gauge("forescale_forecast_demand", FORECAST_HELP, ["target", "horizon", "level"], registry=reg)
        for horizon, level, v in self.forecast_series(target, forecast):
            g.labels(target=target, horizon=horizon, level=level).set(v)
        push_to_gateway(gateway, job=job, registry=reg, grouping_key={"target": target}, timeout=timeout)


__all__ = ["EngineMetrics", "decision_reason", "export_horizons", "horizon_values", "level_label",
           "not_ready", "time_to_threshold", "value_at", "MODES"]
