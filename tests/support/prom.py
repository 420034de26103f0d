"""A real Prometheus server for tests, with weeks of history backfilled.

The shared traces are shifted so they end just before now, written as
OpenMetrics text, turned into TSDB blocks with ``promtool tsdb
create-blocks-from openmetrics`` and served by the ``prometheus`` binary (the
Debian package) on a free loopback port. Nothing scrapes: the server only
answers queries over the backfilled blocks.

Series served (all 5-minute samples on the 300 s grid):

- ``load{trace="ec2_cpu_utilization_5f5533"}`` and
  ``load{trace="ec2_cpu_utilization_53ea38"}``: two 14-day traces under one
  metric name (one query, several series);
- ``gappy{trace="ec2_cpu_utilization_5f5533"}``: the first trace with a
  two-hour hole and one ``NaN`` sample.

Skips (never fails) when the binaries or the traces are missing.
"""

from __future__ import annotations

import math
import shutil
import socket
import ssl
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from engine.sources.csv import read_csv
from tests.support import ROOT, TRACES

REPO = ROOT
STEP = 300
TRACE_A = "ec2_cpu_utilization_5f5533"
TRACE_B = "ec2_cpu_utilization_53ea38"
#: the hole in ``gappy``: sample indexes [GAP_FROM, GAP_TO) are left out
GAP_FROM, GAP_TO = 2000, 2024
NAN_AT = 1000

MINIMAL_CONFIG = "global:\n  scrape_interval: 1h\n  evaluation_interval: 1h\nscrape_configs: []\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binaries() -> tuple[str, str] | None:
    prom, tool = shutil.which("prometheus"), shutil.which("promtool")
    return (prom, tool) if prom and tool else None


def require_binaries() -> tuple[str, str]:
    found = binaries()
    if found is None:
        pytest.skip("prometheus/promtool not installed (apt-get install prometheus)")
    return found


@dataclass
class Trace:
    """One served series: its labels and the exact samples backfilled."""

    metric: str
    labels: dict[str, str]
    timestamps: np.ndarray
    values: np.ndarray


def load_trace(name: str, end: int) -> tuple[np.ndarray, np.ndarray]:
    """The trace's samples shifted so the last one falls at ``end``."""
    path = TRACES / "nab" / f"{name}.csv"
    s = read_csv(path)
    return s.timestamps - s.timestamps[-1] + end, s.values


def openmetrics(traces: list[Trace]) -> str:
    """OpenMetrics text: one ``# TYPE`` per metric family, samples grouped by
    family (the format requires it), ``# EOF`` at the end."""
    lines: list[str] = []
    for metric in dict.fromkeys(t.metric for t in traces):
        lines.append(f"# TYPE {metric} gauge")
        for t in (t for t in traces if t.metric == metric):
            lbl = ",".join(f'{k}="{v}"' for k, v in sorted(t.labels.items()))
            for ts, v in zip(t.timestamps.tolist(), t.values.tolist()):
                val = "NaN" if math.isnan(v) else repr(float(v))
                lines.append(f"{metric}{{{lbl}}} {val} {ts}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def backfill(promtool: str, traces: list[Trace], workdir: Path) -> Path:
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    om = workdir / "history.om"
    om.write_text(openmetrics(traces))
    # a long max block duration keeps it to a few blocks (the default, 2h,
    # writes one block per two hours: ~170 for two weeks, 100x slower)
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet",
                    "--max-block-duration=744h", str(om), str(data)],
                   check=True, capture_output=True, timeout=120)
    return data


@dataclass
class PrometheusServer:
    """A ``prometheus`` process over a data directory, on a loopback port."""

    binary: str
    data: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    #: more command-line flags (e.g. ``--web.enable-remote-write-receiver``)
    extra_args: tuple[str, ...] = ()
    #: the prometheus.yml it runs with
    config: str = MINIMAL_CONFIG

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "PrometheusServer":
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(self.config)
        self.log = open(self.workdir / f"prometheus-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, f"--storage.tsdb.path={self.data}", f"--web.listen-address=127.0.0.1:{self.port}",
             f"--config.file={cfg}", "--storage.tsdb.retention.time=100y", *self.extra_args],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout}s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()


@dataclass
class Backfilled:
    """What the session fixture hands to tests."""

    server: PrometheusServer
    end: int  # epoch of the last backfilled sample
    traces: dict[str, Trace]
    promtool: str

    @property
    def url(self) -> str:
        return self.server.url


def build_history(workdir: Path, promtool: str, now: float | None = None) -> tuple[int, dict[str, Trace], Path]:
    now = time.time() if now is None else now
    end = int(now) // STEP * STEP - STEP
    ta, va = load_trace(TRACE_A, end)
    tb, vb = load_trace(TRACE_B, end)
    keep = np.r_[0:GAP_FROM, GAP_TO:ta.size]
    vg = va.copy()
    vg[NAN_AT] = np.nan
    traces = {
        "a": Trace("load", {"trace": TRACE_A}, ta, va),
        "b": Trace("load", {"trace": TRACE_B}, tb, vb),
        "gappy": Trace("gappy", {"trace": TRACE_A}, ta[keep], vg[keep]),
    }
    data = backfill(promtool, list(traces.values()), workdir)
    return end, traces, data


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory):
    """A real Prometheus with two weeks of backfilled history (session-wide)."""
    prom, tool = require_binaries()
    workdir = tmp_path_factory.mktemp("prometheus")
    end, traces, data = build_history(workdir, tool)
    server = PrometheusServer(prom, data, workdir).start()
    try:
        yield Backfilled(server, end, traces, tool)
    finally:
        server.stop()


@pytest.fixture()
def own_prometheus(prometheus: Backfilled, tmp_path: Path):
    """A private Prometheus over a copy of the backfilled blocks, for tests
    that stop and restart it."""
    data = tmp_path / "data"
    shutil.copytree(prometheus.server.data, data, ignore=shutil.ignore_patterns("lock", "wal", "chunks_head"))
    server = PrometheusServer(prometheus.server.binary, data, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ----------------------------------------------------------- fault-injection fake
@dataclass
class Reply:
    """One scripted answer: HTTP status, body (a dict is sent as JSON),
    headers, and a delay before answering (seconds)."""

    status: int = 200
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def matrix(*series: tuple[dict[str, str], list[tuple[int, str]]], warnings: list[str] | None = None) -> dict:
    """A Prometheus ``query_range`` success body."""
    body: dict = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": labels, "values": [[t, v] for t, v in points]} for labels, points in series]}}
    if warnings:
        body["warnings"] = warnings
    return body


class FakePrometheus:
    """A loopback HTTP server answering ``/api/v1/query_range`` from a
    script of :class:`Reply` (the last one repeats), recording every request
    (path, headers, form fields). For the faults a real server will not
    produce on demand: 429, 5xx, garbage, slowness."""

    def __init__(self, *replies: Reply, tls: "ssl.SSLContext | None" = None) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs

        self.replies = list(replies) or [Reply(200, matrix())]
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(n).decode()).items()}
                self._answer(form)

            def do_GET(self) -> None:
                self._answer({k: v[0] for k, v in parse_qs(self.path.partition("?")[2]).items()})

            def _answer(self, form: dict) -> None:
                with fake._lock:
                    fake.requests.append({"path": self.path.partition("?")[0],
                                          "headers": dict(self.headers), "form": form})
                    reply = fake.replies.pop(0) if len(fake.replies) > 1 else fake.replies[0]
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body
                if isinstance(body, (dict, list)):
                    raw, ctype = json.dumps(body).encode(), "application/json"
                else:
                    raw, ctype = (body or b"") if isinstance(body, bytes) else str(body or "").encode(), "text/html"
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(raw)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "https" if tls is not None else "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FakePrometheus":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed(workdir: Path) -> tuple[Path, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI): the PEM to
    trust as ``ca_file`` and a server context that presents it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return cert, ctx


@contextmanager
def recording_pushgateway():
    """A loopback HTTP server that answers PUTs as a Pushgateway does and
    records each as ``(method, path, body)``; yields ``(url, recorded)``."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: list[tuple[str, str, bytes]] = []

    class Gateway(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_PUT(self):
            n = int(self.headers.get("Content-Length") or 0)
            got.append((self.command, self.path, self.rfile.read(n)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", got
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def scraping_prometheus(workdir: Path, scrape_url: str, *, rule_files: tuple[Path, ...] = (),
                        authorization: str | None = None):
    """A fresh Prometheus scraping ``scrape_url`` (``http://host:port``,
    path ``/metrics``) every second and evaluating ``rule_files`` every
    second; yields it once the first scrape is in."""
    prom, _tool = require_binaries()
    host = scrape_url.split("://", 1)[1]
    auth = f"    authorization: {{credentials: {authorization}}}\n" if authorization else ""
    rules = "".join(f"  - {p}\n" for p in rule_files)
    config = ("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
              + (f"rule_files:\n{rules}" if rules else "")
              + f"scrape_configs:\n  - job_name: forescale\n{auth}    static_configs:\n"
              f"      - targets: ['{host}']\n")
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    server = PrometheusServer(prom, data, workdir, config=config).start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = httpx.get(f"{server.url}/api/v1/query", params={"query": 'up{job="forescale"} == 1'}, timeout=5)
            if r.json()["data"]["result"]:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"prometheus never scraped {scrape_url}")
        yield server
    finally:
        server.stop()
