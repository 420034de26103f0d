"""PrometheusSource against a real Prometheus (backfilled with two weeks of
the shared traces) and, for faults a real server will not produce on demand,
against a loopback fake speaking the same HTTP API."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import httpx
import numpy as np
import pytest

from engine.core.errors import ConfigError, MetricSourceError
from engine.sources import registry
from engine.sources.prometheus import PrometheusConfig, PrometheusSource
from engine.core.units import from_epoch
from tests.support.prom import (GAP_FROM, GAP_TO, NAN_AT, STEP, TRACE_A, TRACE_B, Backfilled, FakePrometheus,
                                Reply, free_port, matrix, own_prometheus, prometheus, self_signed)

__all__ = ["prometheus", "own_prometheus"]  # fixtures, imported for pytest

pytestmark = pytest.mark.prometheus

SECRET = "s3cr3t-token-value"


class CountingTransport(httpx.HTTPTransport):
    """The real HTTP transport, recording the form of each request."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        from urllib.parse import parse_qs
        self.forms.append({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
        return super().handle_request(request)


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def source(url: str, query: str, *, counting: bool = True,
           **kw) -> tuple[PrometheusSource, CountingTransport | None, Sleeps]:
    """A source with sleeps recorded and (``counting``) every request's form
    recorded by a real HTTP transport. TLS tests pass ``counting=False``: a
    transport given to httpx replaces the client's own TLS settings."""
    transport, sleeps = (CountingTransport() if counting else None), Sleeps()
    extra = {k: kw.pop(k) for k in ("base_dir", "interval") if k in kw}
    cfg = PrometheusConfig(url=url, query=query, **kw)
    return PrometheusSource(cfg, sleep=sleeps, transport=transport, **extra), transport, sleeps


def q(trace: str, metric: str = "load") -> str:
    return f'{metric}{{trace="{trace}"}}'


# ------------------------------------------------------------------ real server
def test_registry_resolves_prometheus():
    assert registry.get("prometheus") is PrometheusSource


def test_two_weeks_fetched_in_chunks_equal_the_trace(prometheus: Backfilled):
    tr = prometheus.traces["a"]
    src, transport, _ = source(prometheus.url, q(TRACE_A), step="5m", max_points_per_request=1000)
    got = src.fetch(from_epoch(tr.timestamps[0] - 1), from_epoch(prometheus.end))
    np.testing.assert_array_equal(got.timestamps, tr.timestamps)
    np.testing.assert_allclose(got.values, tr.values, rtol=0, atol=1e-9)
    # 4032 points in chunks of at most 1000, contiguous, never overlapping
    assert len(transport.forms) == 5
    spans = [(int(f["start"]), int(f["end"])) for f in transport.forms]
    assert all((b - a) // STEP + 1 <= 1000 for a, b in spans)
    assert all(spans[i + 1][0] == spans[i][1] + STEP for i in range(len(spans) - 1))


def test_default_chunking_stays_under_the_11000_point_limit(prometheus: Backfilled):
    # 14 days at a 60 s step is 20,160 points: one request would be refused
    # by Prometheus ("exceeded maximum resolution of 11,000 points")
    tr = prometheus.traces["a"]
    src, transport, _ = source(prometheus.url, q(TRACE_A), lookback="14d")
    got = src.fetch(None, from_epoch(prometheus.end))
    assert len(transport.forms) == 2
    assert got.timestamps[1] - got.timestamps[0] == 60
    # every 5-minute sample is seen at its own timestamp with its own value
    at = np.searchsorted(got.timestamps, tr.timestamps[1:])
    np.testing.assert_allclose(got.values[at], tr.values[1:], atol=1e-9)


def test_step_defaults_to_the_target_interval(prometheus: Backfilled):
    src, transport, _ = source(prometheus.url, q(TRACE_A), interval=timedelta(minutes=10))
    got = src.fetch(from_epoch(prometheus.end - 3600), from_epoch(prometheus.end))
    assert transport.forms[0]["step"] == "600"
    assert np.all(np.diff(got.timestamps) == 600)


def test_fetch_is_start_exclusive_end_inclusive_and_grid_aligned(prometheus: Backfilled):
    tr = prometheus.traces["a"]
    src, _, _ = source(prometheus.url, q(TRACE_A), step="5m")
    t0, t1, t2 = (int(tr.timestamps[k]) for k in (100, 112, 130))
    first = src.fetch(from_epoch(t0), from_epoch(t1))
    np.testing.assert_array_equal(first.timestamps, tr.timestamps[101:113])
    # unaligned bounds snap to the grid: (t1+17s, t2+100s] holds t1+5m .. t2
    second = src.fetch(from_epoch(t1 + 17), from_epoch(t2 + 100))
    np.testing.assert_array_equal(second.timestamps, tr.timestamps[113:131])
    # incremental fetches join without gap or overlap
    whole = src.fetch(from_epoch(t0), from_epoch(t2))
    np.testing.assert_array_equal(np.r_[first.timestamps, second.timestamps], whole.timestamps)
    np.testing.assert_allclose(np.r_[first.values, second.values], whole.values)


def test_several_series_without_aggregate_is_a_config_error(prometheus: Backfilled):
    src, _, _ = source(prometheus.url, "load", step="5m")
    with pytest.raises(ConfigError) as ei:
        src.fetch(from_epoch(prometheus.end - 3600), from_epoch(prometheus.end))
    msg = str(ei.value)
    assert "'load'" in msg and "2 series" in msg
    assert TRACE_A in msg and TRACE_B in msg and "aggregate" in msg


@pytest.mark.parametrize("how, combine", [
    ("sum", lambda a, b: a + b), ("max", np.maximum), ("mean", lambda a, b: (a + b) / 2)])
def test_aggregate_combines_the_series(prometheus: Backfilled, how, combine):
    a, b = prometheus.traces["a"], prometheus.traces["b"]
    src, _, _ = source(prometheus.url, "load", step="5m", aggregate=how)
    got = src.fetch(from_epoch(prometheus.end - 86400), from_epoch(prometheus.end))
    assert len(got) == 288
    np.testing.assert_allclose(got.values, combine(a.values[-288:], b.values[-288:]), atol=1e-9)


def test_bad_query_is_a_config_error_naming_it_and_not_retried(prometheus: Backfilled):
    src, transport, sleeps = source(prometheus.url, "rate(load[5m]", step="5m")
    with pytest.raises(ConfigError) as ei:
        src.fetch(from_epoch(prometheus.end - 3600), from_epoch(prometheus.end))
    assert "'rate(load[5m]'" in str(ei.value)
    assert "parse error" in str(ei.value)  # Prometheus' own text
    assert ei.value.path == "source.query"
    assert len(transport.forms) == 1 and sleeps == []


def test_infinite_samples_are_missing(prometheus: Backfilled):
    src, _, _ = source(prometheus.url, f"{q(TRACE_A)} / 0", step="5m")
    got = src.fetch(from_epoch(prometheus.end - 3600), from_epoch(prometheus.end))
    assert len(got) == 12 and got.n_valid == 0  # +Inf kept as a gap
    neg, _, _ = source(prometheus.url, f"-{q(TRACE_A)} / 0", step="5m")
    assert neg.fetch(from_epoch(prometheus.end - 3600), from_epoch(prometheus.end)).n_valid == 0


def test_nan_sample_and_gap_are_missing(prometheus: Backfilled):
    full = prometheus.traces["a"]
    src, _, _ = source(prometheus.url, q(TRACE_A, "gappy"), step="5m")
    got = src.fetch(from_epoch(full.timestamps[0] - 1), from_epoch(prometheus.end))
    by_t = dict(zip(got.timestamps.tolist(), got.values.tolist()))
    assert np.isnan(by_t[int(full.timestamps[NAN_AT])])
    # inside the hole, farther than the 5 m lookback delta from the last
    # sample before it, Prometheus returns nothing: those timestamps are absent
    hole = full.timestamps[GAP_FROM + 1:GAP_TO].tolist()
    assert not set(hole) & set(by_t)
    # everything else is the trace
    for k in (0, NAN_AT - 1, NAN_AT + 1, GAP_FROM - 1, GAP_TO, len(full.timestamps) - 1):
        assert by_t[int(full.timestamps[k])] == pytest.approx(full.values[k])


def test_empty_result_is_an_empty_series(prometheus: Backfilled):
    src, _, _ = source(prometheus.url, 'load{trace="no-such-trace"}', step="5m")
    got = src.fetch(from_epoch(prometheus.end - 3600), from_epoch(prometheus.end))
    assert len(got) == 0


def test_nothing_listening_fails_after_bounded_retries():
    src, transport, sleeps = source(f"http://127.0.0.1:{free_port()}", "up", step="1m",
                                    retry_attempts=3, max_backoff="4s")
    with pytest.raises(MetricSourceError) as ei:
        src.fetch(None, datetime.now().astimezone())
    assert ei.value.transient
    assert "after 3 attempts" in str(ei.value) and "ConnectError" in str(ei.value)
    assert len(transport.forms) == 3 and len(sleeps) == 2
    assert all(0 <= s <= 4 for s in sleeps)


def test_prometheus_going_down_and_coming_back(own_prometheus, prometheus: Backfilled):
    src, _, sleeps = source(own_prometheus.url, q(TRACE_A), step="5m", retry_attempts=2)
    window = (from_epoch(prometheus.end - 3600), from_epoch(prometheus.end))
    assert len(src.fetch(*window)) == 12
    own_prometheus.stop()
    with pytest.raises(MetricSourceError) as ei:
        src.fetch(*window)
    assert ei.value.transient and len(sleeps) == 1
    own_prometheus.start()  # same port, same data: the same source recovers
    assert len(src.fetch(*window)) == 12


# --------------------------------------------------------------- fault injection
NOW = datetime.fromisoformat("2024-05-01T12:00:00+00:00")
OK = matrix(({}, [(int(NOW.timestamp()) - 60, "3"), (int(NOW.timestamp()), "4")]))


def test_slow_server_times_out():
    with FakePrometheus(Reply(200, OK, delay=1.0)) as fake:
        src, transport, sleeps = source(fake.url, "up", step="1m", timeout=0.1, retry_attempts=2)
        with pytest.raises(MetricSourceError) as ei:
            src.fetch(NOW - timedelta(minutes=2), NOW)
    assert ei.value.transient and "timed out" in str(ei.value)
    # the timeout is the whole fetch's: the first attempt spent it, so no
    # retry is started (it was two attempts when the timeout was per attempt)
    assert len(transport.forms) == 1 and len(sleeps) == 0
    assert fake.requests[0]["form"]["timeout"] == "0.1s"  # Prometheus' own evaluation timeout


class _Server:
    """A loopback HTTP server whose handler writes the body its own way."""

    def __init__(self, write_body) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests += 1
                try:
                    write_body(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: what the tests want

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "_Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _drip(handler) -> None:
    """A valid answer, one byte every 0.1 s: each read is quick, the whole
    body takes ~40 s."""
    import json
    import time

    raw = json.dumps(OK).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    for i in range(len(raw)):
        handler.wfile.write(raw[i:i + 1])
        handler.wfile.flush()
        time.sleep(0.1)


def test_a_server_dripping_bytes_is_cut_off_at_the_fetch_deadline():
    import time

    with _Server(_drip) as srv:
        src, _, sleeps = source(srv.url, "up", step="1m", timeout="1s", retry_attempts=4, counting=False)
        t0 = time.monotonic()
        with pytest.raises(MetricSourceError) as ei:
            src.fetch(NOW - timedelta(minutes=2), NOW)
        took = time.monotonic() - t0
    assert ei.value.transient and "deadline" in str(ei.value) and "source.timeout" in str(ei.value)
    assert took < 2.5, took  # 1 s of budget plus one read; it was ~40 s per attempt
    assert srv.requests == 1 and sleeps == []  # no retry starts past the deadline


def test_the_deadline_bounds_the_retries_and_their_backoff():
    # every answer is a 503 after 0.3 s; 20 attempts would take 6 s and more
    with FakePrometheus(Reply(503, "unavailable", delay=0.3)) as fake:
        import time

        cfg = PrometheusConfig(url=fake.url, query="up", step="1m", timeout="1s", retry_attempts=20,
                               max_backoff="0.2s")
        src = PrometheusSource(cfg)  # the real sleep: the backoff waits count against the deadline
        t0 = time.monotonic()
        with pytest.raises(MetricSourceError) as ei:
            src.fetch(NOW - timedelta(minutes=2), NOW)
        took = time.monotonic() - t0
    msg = str(ei.value)
    assert ei.value.transient and ("HTTP 503" in msg or "deadline" in msg), msg
    assert took < 1.6, took
    assert 2 <= len(fake.requests) <= 4  # retried, but only while the deadline allowed


def _endless(handler) -> None:
    """200 OK with no Content-Length: JSON-looking bytes until the client hangs up."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.end_headers()
    handler.wfile.write(b'{"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, '
                        b'"values": [')
    chunk = b'[1714564800, "1.0"], ' * 5000
    for _ in range(10_000):  # ~1 GB at most
        handler.wfile.write(chunk)


def _announced(handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(200 * 2**20))
    handler.end_headers()
    handler.wfile.write(b"{")


@pytest.mark.parametrize("write_body", [_endless, _announced], ids=["streamed", "content-length"])
def test_a_response_above_max_response_bytes_is_an_error_naming_the_limit(write_body):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with _Server(write_body) as srv:
        src, _, sleeps = source(srv.url, "up", step="1m", max_response_bytes=2**20, counting=False)
        with pytest.raises(MetricSourceError) as ei:
            src.fetch(NOW - timedelta(minutes=2), NOW)
    msg = str(ei.value)
    assert "source.max_response_bytes (1048576 bytes, 1 MiB)" in msg and not ei.value.transient
    assert srv.requests == 1 and sleeps == []  # the same query would be as large again: not retried
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, grown_kib  # stopped reading at the limit, not at 1 GB


def test_max_response_bytes_defaults_to_64_mib_and_is_bounded():
    assert PrometheusConfig(url="http://p:9090", query="up").max_response_bytes == 64 * 2**20
    with pytest.raises(ValueError, match="max_response_bytes"):
        PrometheusConfig(url="http://p:9090", query="up", max_response_bytes=10)


@pytest.mark.parametrize("body", [
    b"<html><body>502 Bad Gateway</body></html>",
    {"unexpected": "shape"},
    {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [["x", "1"]]}]}},
    {"status": "success", "data": {"resultType": "string", "result": [1, "x"]}},
])
def test_garbage_is_a_transient_source_error(body):
    with FakePrometheus(Reply(200, body)) as fake:
        src, _, sleeps = source(fake.url, "up", step="1m", retry_attempts=2)
        with pytest.raises(MetricSourceError) as ei:
            src.fetch(NOW - timedelta(minutes=2), NOW)
    assert ei.value.transient and len(fake.requests) == 2 and len(sleeps) == 1


def test_429_then_success_honours_retry_after():
    with FakePrometheus(Reply(429, {"status": "error", "error": "too many requests"}, {"Retry-After": "7"}),
                        Reply(503, "unavailable"), Reply(200, OK)) as fake:
        src, _, sleeps = source(fake.url, "up", step="1m", retry_attempts=3, max_backoff="10s")
        got = src.fetch(NOW - timedelta(minutes=2), NOW)
    assert got.values.tolist() == [3.0, 4.0]
    assert len(fake.requests) == 3
    assert sleeps[0] >= 7.0 and sleeps[0] <= 10.0


def test_client_errors_are_not_retried():
    with FakePrometheus(Reply(404, "not found")) as fake:
        src, _, sleeps = source(fake.url, "up", step="1m")
        with pytest.raises(ConfigError) as ei:
            src.fetch(NOW - timedelta(minutes=2), NOW)
    assert "HTTP 404" in str(ei.value) and ei.value.path == "source.url"
    assert len(fake.requests) == 1 and sleeps == []


def test_warnings_are_logged_and_data_kept(caplog):
    body = matrix(({}, [(int(NOW.timestamp()), "5")]), warnings=["partial response: store eu-1 down"])
    with FakePrometheus(Reply(200, body)) as fake, caplog.at_level(logging.WARNING):
        src, _, _ = source(fake.url, "up", step="1m")
        got = src.fetch(NOW - timedelta(minutes=2), NOW)
    assert got.values.tolist() == [5.0]
    assert "partial response: store eu-1 down" in caplog.text


def test_vector_and_scalar_answers_are_taken_as_one_sample():
    t = int(NOW.timestamp())
    vec = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [t, "9"]}]}}
    sca = {"status": "success", "data": {"resultType": "scalar", "result": [t, "+Inf"]}}
    with FakePrometheus(Reply(200, vec), Reply(200, sca)) as fake:
        src, _, _ = source(fake.url, "up", step="1m")
        assert src.fetch(NOW - timedelta(minutes=2), NOW).values.tolist() == [9.0]
        got = src.fetch(NOW - timedelta(minutes=2), NOW)
    assert got.timestamps.tolist() == [t] and np.isnan(got.values[0])


def test_bearer_token_is_sent_and_never_logged(caplog):
    with FakePrometheus(Reply(500, {"status": "error", "error": "boom"})) as fake, caplog.at_level(logging.DEBUG):
        src, _, _ = source(fake.url, "up", step="1m", bearer_token=SECRET, retry_attempts=2,
                           headers={"X-Scope-OrgID": "tenant-1"})
        with pytest.raises(MetricSourceError) as ei:
            src.fetch(NOW - timedelta(minutes=2), NOW)
    hdrs = fake.requests[0]["headers"]
    assert hdrs["Authorization"] == f"Bearer {SECRET}" and hdrs["X-Scope-OrgID"] == "tenant-1"
    assert SECRET not in str(ei.value) and SECRET not in caplog.text
    assert SECRET not in repr(src.config)


def test_basic_auth_password_file_is_reread(tmp_path):
    import base64
    (tmp_path / "pw").write_text("first\n")
    with FakePrometheus(Reply(200, OK)) as fake:
        src, _, _ = source(fake.url, "up", step="1m", base_dir=tmp_path,
                           basic_auth={"username": "forescale", "password_file": "pw"})
        src.fetch(NOW - timedelta(minutes=2), NOW)
        (tmp_path / "pw").write_text("rotated\n")
        src.fetch(NOW - timedelta(minutes=2), NOW)
    sent = [base64.b64decode(r["headers"]["Authorization"].split()[1]).decode() for r in fake.requests]
    assert sent == ["forescale:first", "forescale:rotated"]


def test_refused_credentials_are_a_config_error_without_the_secret():
    with FakePrometheus(Reply(401, "unauthorized")) as fake:
        src, _, sleeps = source(fake.url, "up", step="1m", bearer_token=SECRET)
        with pytest.raises(ConfigError) as ei:
            src.fetch(NOW - timedelta(minutes=2), NOW)
    assert "HTTP 401" in str(ei.value) and SECRET not in str(ei.value) and sleeps == []
    assert "refused the credentials" in str(ei.value)


@pytest.mark.parametrize("code", [401, 403])
def test_refused_credentials_with_a_json_error_body_blame_the_credentials_not_the_query(code):
    """An auth proxy in front of Prometheus answers in Prometheus' error
    shape; it used to be reported as "prometheus rejected query 'up'"."""
    body = {"status": "error", "errorType": "unauthorized", "error": "authentication required"}
    with FakePrometheus(Reply(code, body)) as fake:
        src, _, sleeps = source(fake.url, "up", step="1m", bearer_token=SECRET)
        with pytest.raises(ConfigError) as ei:
            src.fetch(NOW - timedelta(minutes=2), NOW)
    msg = str(ei.value)
    assert f"refused the credentials (HTTP {code})" in msg and "rejected query" not in msg
    assert SECRET not in msg and sleeps == []


def test_tls_with_a_custom_ca(tmp_path):
    cert, server_ctx = self_signed(tmp_path)
    with FakePrometheus(Reply(200, OK), tls=server_ctx) as fake:
        assert fake.url.startswith("https://")
        trusted, _, _ = source(fake.url, "up", step="1m", ca_file=cert, counting=False)
        assert trusted.fetch(NOW - timedelta(minutes=2), NOW).values.tolist() == [3.0, 4.0]
        relative, _, _ = source(fake.url, "up", step="1m", ca_file="cert.pem", base_dir=tmp_path,
                                counting=False)
        assert len(relative.fetch(NOW - timedelta(minutes=2), NOW)) == 2
        skip, _, _ = source(fake.url, "up", step="1m", insecure_skip_verify=True, counting=False)
        assert len(skip.fetch(NOW - timedelta(minutes=2), NOW)) == 2
        untrusted, _, _ = source(fake.url, "up", step="1m", retry_attempts=1, counting=False)
        with pytest.raises(MetricSourceError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.fetch(NOW - timedelta(minutes=2), NOW)


def test_missing_ca_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ca_file"):
        source("https://127.0.0.1:1", "up", ca_file=tmp_path / "nope.pem")


@pytest.mark.parametrize("fields, needle", [
    ({"url": "http://user:pw@prom:9090"}, "must not carry credentials"),
    ({"url": "prom:9090"}, "http(s)://"),
    ({"bearer_token": "a", "bearer_token_file": "f"}, "at most one of bearer_token"),
    ({"basic_auth": {"username": "u"}}, "exactly one of password"),
    ({"ca_file": "ca.pem", "insecure_skip_verify": True}, "contradict"),
    ({"step": "90.5s"}, "whole seconds"),
    ({"aggregate": "median"}, "aggregate"),
    ({"max_points_per_request": 20000}, "max_points_per_request"),
])
def test_config_errors_name_the_field(fields, needle):
    from pydantic import ValidationError
    base = {"url": "http://prom:9090", "query": "up"}
    with pytest.raises(ValidationError) as ei:
        PrometheusConfig(**{**base, **fields})
    assert needle in str(ei.value)
    assert "pw@" not in str(ei.value).split("input_value")[0]


def test_config_file_errors_name_the_source_fields_without_secrets():
    from engine.config import parse_config
    policy = {"capacity_per_replica": 10}
    good = {"targets": [{"name": "web", "policy": policy, "source": {
        "type": "prometheus", "url": "http://prom:9090", "query": "up", "step": "5m", "bearer_token": SECRET}}]}
    cfg = parse_config(good).targets[0].source_config
    assert isinstance(cfg, PrometheusConfig) and cfg.step == timedelta(minutes=5)
    bad = {"targets": [{"name": "web", "policy": policy, "source": {
        "type": "prometheus", "url": "http://u:hunter2@prom:9090", "query": "up", "aggregate": "median"}}]}
    with pytest.raises(ConfigError) as ei:
        parse_config(bad)
    msg = str(ei.value)
    assert "targets[0].source.url" in msg and "targets[0].source.aggregate" in msg
    assert "hunter2" not in msg
