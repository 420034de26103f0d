"""The engine's own metrics, and the HTTP endpoint that serves them.

:class:`EngineMetrics` owns a private ``CollectorRegistry`` (never the
process-global one, so two engines in one process, or a test, do not
collide). The engine calls it with plain values after each cycle; nothing
here reads the clock: ``now`` arrives as an argument and readiness comes
from a callable the daemon supplies.

Metrics (every one labelled by ``target``):

==========================================  =========  ==========================================
``forescale_forecast``                      gauge      forecast per ``horizon`` (seconds ahead of
                                                       the cycle) and ``quantile`` (``point``,
                                                       ``0.9``, ...): what an HPA/KEDA can scale
                                                       on through a Prometheus adapter
``forescale_recommended_capacity``          gauge      the policy's recommendation
``forescale_desired_capacity``              gauge      the capacity decided (after every clamp)
``forescale_current_capacity``              gauge      the capacity observed before deciding
``forescale_decisions_total``               counter    by ``action`` and ``reason`` (the reason
                                                       code of the last policy step that changed
                                                       the value; ``Unchanged`` if none did)
``forescale_forecast_error``                gauge      rolling accuracy by ``metric``: mae, mape,
                                                       mase, bias
``forescale_forecast_coverage``             gauge      share of actuals inside the forecast band
``forescale_cycle_duration_seconds``        histogram  wall time of a cycle
``forescale_fetch_errors_total``            counter    metric source failures
``forescale_actuation_errors_total``        counter    actuator failures
``forescale_forecast_failures_total``       counter    forecasts that could not be made
``forescale_last_success_timestamp_seconds`` gauge     end of the last successful cycle
``forescale_cycle_interval_seconds``       gauge      the target's configured cycle interval (for
                                                       "no successful cycle for N intervals")
``forescale_mode``                          gauge      1 for the target's current ``mode``, 0 for
                                                       the others
``forescale_plans_pending``                 gauge      plans waiting for approval
==========================================  =========  ==========================================

Counters of a target are created at zero when the target is registered, so
``increase()`` in an alert sees the first error too.

The HTTP endpoint (:meth:`EngineMetrics.serve`): ``/metrics`` (Prometheus
text, or OpenMetrics when the scraper asks for it), ``/healthz`` (200 while
the process serves), ``/readyz`` (200 when every target is ready, else 503
with a JSON body naming the targets that are not and why).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder, push_to_gateway

from engine.core.types import Decision, Forecast

log = logging.getLogger("forescale.metrics")

MODES = ("observe", "dry-run", "approve", "auto")
ERROR_METRICS = ("mae", "mape", "mase", "bias")
#: cycle durations: a cycle is a fetch, a fit/predict and maybe an actuation
#: with verification; seconds to minutes
CYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: ``readiness()`` answers {target: None (ready) | "why it is not"}
Readiness = Callable[[], Mapping[str, "str | None"]]


def decision_reason(decision: Decision) -> str:
    """The reason label of a decision: the reason code of the last policy step
    that changed the value (the one that had the final say), else
    ``Unchanged``. Reason codes are a small fixed set, so the label's
    cardinality stays bounded."""
    reasons = decision.reasons
    return reasons[-1] if reasons else "Unchanged"


def quantile_label(q: float | None) -> str:
    return "point" if q is None else f"{q:g}"


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


class EngineMetrics:
    """The engine's metrics in their own registry (see the module doc)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.forecast = Gauge("forescale_forecast", "Forecast demand by horizon (seconds ahead) and quantile",
                              ["target", "horizon", "quantile"], registry=r)
        self.recommended = Gauge("forescale_recommended_capacity", "Capacity the policy recommended",
                                 ["target"], registry=r)
        self.desired = Gauge("forescale_desired_capacity", "Capacity decided after every clamp",
                             ["target"], registry=r)
        self.current = Gauge("forescale_current_capacity", "Capacity observed before deciding",
                             ["target"], registry=r)
        self.decisions = Counter("forescale_decisions", "Decisions by action and deciding reason code",
                                 ["target", "action", "reason"], registry=r)
        self.error = Gauge("forescale_forecast_error", "Rolling forecast error (mae, mape, mase, bias)",
                           ["target", "metric"], registry=r)
        self.coverage = Gauge("forescale_forecast_coverage", "Share of actuals inside the forecast band",
                              ["target"], registry=r)
        self.duration = Histogram("forescale_cycle_duration_seconds", "Wall time of one cycle",
                                  ["target"], buckets=CYCLE_BUCKETS, registry=r)
        self.fetch_errors = Counter("forescale_fetch_errors", "Metric source failures", ["target"], registry=r)
        self.actuation_errors = Counter("forescale_actuation_errors", "Actuator failures", ["target"], registry=r)
        self.forecast_failures = Counter("forescale_forecast_failures", "Forecasts that could not be made",
                                         ["target"], registry=r)
        self.fallback_cycles = Counter("forescale_fallback_cycles", "Cycles that fell back to reactive, by the "
                                       "data step's reason code", ["target", "reason"], registry=r)
        self.last_success = Gauge("forescale_last_success_timestamp_seconds",
                                  "Unix time the last successful cycle ended", ["target"], registry=r)
        self.interval = Gauge("forescale_cycle_interval_seconds", "Configured cycle interval",
                              ["target"], registry=r)
        self.mode = Gauge("forescale_mode", "1 for the target's current mode", ["target", "mode"], registry=r)
        self.plans_pending = Gauge("forescale_plans_pending", "Plans waiting for approval", ["target"], registry=r)
        self._lock = threading.Lock()
        self._forecast_labels: dict[str, set[tuple[str, str]]] = {}
        self._last_success: dict[str, datetime] = {}
        self._targets: set[str] = set()

    # -------------------------------------------------------------- recording
    def register_target(self, target: str, mode: str | None = None, interval: timedelta | None = None) -> None:
        """Create the target's counters at zero (so alerts on ``increase()``
        see the first error) and record its mode and cycle interval (call
        again on a config reload)."""
        with self._lock:
            self._targets.add(target)
        for c in (self.fetch_errors, self.actuation_errors, self.forecast_failures):
            c.labels(target=target)
        self.duration.labels(target=target)
        self.plans_pending.labels(target=target).set(0)
        if mode is not None:
            self.set_mode(target, mode)
        if interval is not None:
            self.interval.labels(target=target).set(interval.total_seconds())

    def set_mode(self, target: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        for m in MODES:
            self.mode.labels(target=target, mode=m).set(1 if m == mode else 0)

    def observe_cycle(self, target: str, decision: Decision | None, forecast: Forecast | None,
                      duration_s: float, ok: bool, now: datetime) -> None:
        """Record one cycle: its duration; on success the time; the decision's
        capacities and counter; the forecast per horizon and quantile (the
        previous cycle's horizons are replaced, not left stale)."""
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
        if forecast is not None:
            self.set_forecast(target, forecast)

    def set_forecast(self, target: str, forecast: Forecast) -> None:
        made = forecast.made_at.timestamp()
        levels: list[tuple[str, Iterable[float]]] = [("point", forecast.point)]
        levels += [(quantile_label(q), arr) for q, arr in forecast.quantiles.items()]
        fresh: set[tuple[str, str]] = set()
        with self._lock:
            for qlabel, values in levels:
                for t, v in zip(forecast.timestamps.tolist(), values):
                    if math.isnan(v):
                        continue
                    horizon = str(int(round(t - made)))
                    self.forecast.labels(target=target, horizon=horizon, quantile=qlabel).set(float(v))
                    fresh.add((horizon, qlabel))
            for horizon, qlabel in self._forecast_labels.get(target, set()) - fresh:
                self.forecast.remove(target, horizon, qlabel)
            self._forecast_labels[target] = fresh

    def fetch_error(self, target: str) -> None:
        self.fetch_errors.labels(target=target).inc()

    def actuation_error(self, target: str) -> None:
        self.actuation_errors.labels(target=target).inc()

    def forecast_failure(self, target: str) -> None:
        self.forecast_failures.labels(target=target).inc()

    def fallback_cycle(self, target: str, reason: str) -> None:
        self.fallback_cycles.labels(target=target, reason=reason).inc()

    def set_plans_pending(self, target: str, n: int) -> None:
        self.plans_pending.labels(target=target).set(n)

    def set_accuracy(self, target: str, accuracy: Mapping[str, float | None]) -> None:
        """Rolling accuracy: keys ``mae``, ``mape``, ``mase``, ``bias`` and
        ``coverage``; a ``None``/NaN value (not computable yet, e.g. MAPE
        over zero actuals) removes the series instead of exporting NaN."""
        unknown = set(accuracy) - set(ERROR_METRICS) - {"coverage"}
        if unknown:
            raise ValueError(f"unknown accuracy metric(s) {sorted(unknown)}; "
                             f"known: {', '.join(ERROR_METRICS)}, coverage")
        for key, value in accuracy.items():
            g = self.coverage.labels(target=target) if key == "coverage" else \
                self.error.labels(target=target, metric=key)
            if value is None or math.isnan(value):
                if key == "coverage":
                    self.coverage.remove(target)
                else:
                    self.error.remove(target, key)
            else:
                g.set(float(value))

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

    def serve(self, host: str = "127.0.0.1", port: int = 9464, *,
              readiness: Readiness | None = None) -> "MetricsServer":
        """Start a threaded HTTP server with ``/metrics``, ``/healthz`` and
        ``/readyz`` on ``host:port`` (port 0: any free one); returns it
        running. ``readiness`` answers {target: None | reason}; without it,
        a target is ready once it has had one successful cycle."""
        return MetricsServer(self, host, port, readiness).start()

    def push_forecasts(self, gateway: str, target: str, forecast: Forecast, *, job: str = "forescale",
                       timeout: float = 10.0) -> None:
        """Push the target's forecast gauges to a Prometheus Pushgateway
        (PUT: replaces the group ``job``/``target``), for setups where
        Prometheus does not scrape forescale directly. Raises the
        underlying ``OSError``/``urllib.error.URLError`` on failure."""
        reg = CollectorRegistry(auto_describe=True)
        g = Gauge("forescale_forecast", "Forecast demand by horizon (seconds ahead) and quantile",
                  ["target", "horizon", "quantile"], registry=reg)
        made = forecast.made_at.timestamp()
        levels = [("point", forecast.point)] + [(quantile_label(q), a) for q, a in forecast.quantiles.items()]
        for qlabel, values in levels:
            for t, v in zip(forecast.timestamps.tolist(), values.tolist()):
                if not math.isnan(v):
                    g.labels(target=target, horizon=str(int(round(t - made))), quantile=qlabel).set(v)
        push_to_gateway(gateway, job=job, registry=reg, grouping_key={"target": target}, timeout=timeout)


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str


class MetricsServer:
    """The HTTP endpoint; a daemon thread per connection (http.server)."""

    def __init__(self, metrics: EngineMetrics, host: str, port: int, readiness: Readiness | None) -> None:
        self.metrics = metrics
        self.readiness = readiness
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "forescale"

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("metrics endpoint: " + fmt, *args)

            def do_GET(self) -> None:
                ans = server.answer(self.path.partition("?")[0], self.headers.get("Accept"))
                self.send_response(ans.status)
                self.send_header("Content-Type", ans.content_type)
                self.send_header("Content-Length", str(len(ans.body)))
                self.end_headers()
                self.wfile.write(ans.body)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="forescale-metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}"

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ready(self) -> dict[str, str | None]:
        if self.readiness is not None:
            return dict(self.readiness())
        # without a callable: ready once a successful cycle has been seen
        return {t: None if self.metrics.last_success_time(t) else "no successful cycle yet"
                for t in self.metrics.targets}

    def answer(self, path: str, accept: str | None) -> _Answer:
        if path == "/metrics":
            body, ctype = self.metrics.exposition(accept)
            return _Answer(200, body, ctype)
        if path == "/healthz":
            return _Answer(200, b"ok\n", "text/plain; charset=utf-8")
        if path == "/readyz":
            try:
                state = self._ready()
            except Exception as exc:  # a broken readiness check must not kill the endpoint
                log.exception("readiness check failed")
                body = {"ready": False, "error": f"readiness check failed: {type(exc).__name__}"}
                return _Answer(503, json.dumps(body).encode(), "application/json")
            waiting = {t: why for t, why in state.items() if why is not None}
            # no targets at all is not ready: the daemon has not set up yet
            ready = bool(state) and not waiting
            body = {"ready": ready, "not_ready": waiting, "targets": sorted(state)}
            return _Answer(200 if ready else 503, json.dumps(body, sort_keys=True).encode() + b"\n",
                           "application/json")
        return _Answer(404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain; charset=utf-8")


__all__ = ["EngineMetrics", "MetricsServer", "decision_reason", "not_ready", "quantile_label", "MODES"]
