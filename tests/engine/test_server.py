"""The daemon's HTTP server: uvicorn on a loopback port, auth, mounts."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.applications import Starlette

from engine.config import AuthConfig, ServerConfig
from engine.core.errors import ConfigError, ForescaleError
from engine.metrics import EngineMetrics
from engine.server import BearerAuth, Server, create_app, serve, serve_config

TOKEN = "s3cret-token-for-tests"
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()
HTTP = httpx.Client(timeout=5.0)


def console() -> Starlette:
    async def home(request):
        return PlainTextResponse(f"console at {request.url.path}")
    return Starlette(routes=[Route("/", home), Route("/plans", home)])


def test_serves_metrics_on_a_free_loopback_port_and_stops():
    m = EngineMetrics()
    m.register_target("web", "auto", interval=timedelta(minutes=1))
    server = serve(m, "127.0.0.1", 0)
    try:
        assert server.port > 0 and server.url.startswith("http://127.0.0.1:")
        r = HTTP.get(f"{server.url}/metrics")
        assert r.status_code == 200 and 'forescale_cycle_interval_seconds{target="web"} 60.0' in r.text
    finally:
        server.close()
    with pytest.raises(httpx.TransportError):
        HTTP.get(f"{server.url}/healthz")


def test_a_port_in_use_is_an_error_at_once():
    with serve(EngineMetrics(), "127.0.0.1", 0) as running:
        cfg = ServerConfig(listen=f"127.0.0.1:{running.port}")
        with pytest.raises(ForescaleError, match=f"server.listen 127.0.0.1:{running.port}: cannot listen"):
            serve_config(cfg, EngineMetrics())


def test_forescale_run_on_a_port_in_use_stops_before_it_creates_the_state(tmp_path):
    """It opened (created, migrated, verified) the state, then failed on
    the port; now one line, and no state file is made."""
    import subprocess
    import sys

    with serve(EngineMetrics(), "127.0.0.1", 0) as running:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"state: s.db\nserver: {{listen: '127.0.0.1:{running.port}'}}\ntargets:\n"
                       "  - name: web\n    source: {type: csv, path: x.csv}\n    policy: {capacity_per_replica: 10}\n")
        r = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == \
        [f"forescale: error: server.listen 127.0.0.1:{running.port}: cannot listen: Address already in use"]
    assert not (tmp_path / "s.db").exists()


def test_other_apps_mount_on_the_same_server():
    m = EngineMetrics()
    app = create_app(m, routes=[Mount("/console", app=console())])
    server = Server(app, "127.0.0.1", 0)
    server.mount("/api/v1/plans", console())
    with server.start():
        assert HTTP.get(f"{server.url}/console/").text == "console at /console/"
        assert HTTP.get(f"{server.url}/api/v1/plans/plans").text == "console at /api/v1/plans/plans"
        assert HTTP.get(f"{server.url}/metrics").status_code == 200
        r = HTTP.get(f"{server.url}/nope")
        assert r.status_code == 404 and "/metrics" in r.text


def test_a_non_loopback_bind_without_auth_is_refused():
    with pytest.raises(ConfigError, match="0.0.0.0:0: not a loopback address"):
        Server(create_app(EngineMetrics()), "0.0.0.0", 0)
    with pytest.raises(ValueError, match=r"listen \(0.0.0.0:9464\) is not a loopback address: configure server.auth"):
        ServerConfig(listen="0.0.0.0:9464")
    assert ServerConfig(listen="0.0.0.0:9464", enabled=False).auth is None  # not serving: nothing to guard
    assert ServerConfig(listen="[::1]:9464").auth is None
    assert ServerConfig(listen="localhost:9464").auth is None


def test_auth_needs_a_token_and_keeps_the_probes_open():
    auth = BearerAuth([DIGEST])
    m = EngineMetrics()
    m.register_target("web")
    app = create_app(m, auth=auth, routes=[Mount("/console", app=console())])
    with Server(app, "127.0.0.1", 0, auth=auth).start() as server:
        for path in ("/metrics", "/console/"):
            r = HTTP.get(f"{server.url}{path}")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            wrong = HTTP.get(f"{server.url}{path}", headers={"Authorization": "Bearer not-it"})
            assert wrong.status_code == 401 and "not-it" not in wrong.text
            basic = HTTP.get(f"{server.url}{path}", headers={"Authorization": f"Basic {TOKEN}"})
            assert basic.status_code == 401
            ok = HTTP.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200, path
        assert HTTP.get(f"{server.url}/healthz").status_code == 200
        assert HTTP.get(f"{server.url}/readyz").status_code == 503  # answered, not 401
        api = HTTP.get(f"{server.url}/api/v1/targets")  # the API's 401 is JSON, as its other errors
        assert api.status_code == 401 and api.json()["error"].startswith("unauthorized")


def test_auth_from_the_config_hashes_the_env_token_and_binds_off_loopback(monkeypatch):
    cfg = ServerConfig(listen="0.0.0.0:0", auth=AuthConfig(token_env="FS_TOKEN"))
    with pytest.raises(ConfigError, match="FS_TOKEN is not set"):
        serve_config(cfg, EngineMetrics(), environ={})
    with serve_config(cfg, EngineMetrics(), environ={"FS_TOKEN": TOKEN}) as server:
        assert server.host == "0.0.0.0"
        url = f"http://127.0.0.1:{server.port}"
        assert HTTP.get(f"{url}/metrics").status_code == 401
        assert HTTP.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert TOKEN not in repr(BearerAuth.from_config(cfg.auth, {"FS_TOKEN": TOKEN}).__dict__)


@pytest.mark.parametrize("auth, message", [
    ({}, "set token_sha256"),
    ({"token_sha256": [TOKEN]}, "entry 0 is not a SHA-256 hex digest"),
    ({"token_env": "1BAD"}, "token_env"),
])
def test_auth_config_errors_name_the_field_and_never_echo_a_token(auth, message):
    from engine.config import parse_config

    data = {"server": {"listen": "0.0.0.0:9464", "auth": auth},
            "targets": [{"name": "web", "source": {"type": "replay", "path": "x.csv"},
                         "policy": {"capacity_per_replica": 10}}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value) and "server.auth" in str(err.value)
    assert TOKEN not in str(err.value)


def test_digests_are_accepted_in_any_case_and_tokens_compared_by_digest():
    auth = BearerAuth(AuthConfig(token_sha256=(DIGEST.upper(),)).token_sha256)
    assert auth.allows(f"Bearer {TOKEN}") and auth.allows(f"bearer {TOKEN}")
    assert not auth.allows(f"Bearer {TOKEN}x") and not auth.allows(None) and not auth.allows("Bearer ")


# ------------------------------------------------------------ forescale run
def test_forescale_run_serves_metrics_the_api_and_remote_writes(tmp_path):
    """The daemon as a user starts it: one server with /metrics, the probes
    and the API on the configured port; each cycle remote-written."""
    import math
    import os
    import signal
    import subprocess
    import sys
    import time
    from datetime import datetime, timezone

    import yaml

    from tests.support import ROOT
    from tests.support.prom import free_port
    from tests.support.remote_write import Receiver, decode

    now = int(datetime.now(timezone.utc).timestamp()) // 300 * 300
    rows = [(now + 300 * (i - 600), 100 + 40 * math.sin(2 * math.pi * i / 288)) for i in range(620)]
    (tmp_path / "load.csv").write_text("timestamp,value\n" + "".join(f"{t},{v:.3f}\n" for t, v in rows))
    port = free_port()
    rec = Receiver(204)
    cfg = {"state": "state.db",
           "server": {"listen": f"127.0.0.1:{port}", "remote_write": {"url": rec.url, "timeout": "2s"}},
           "targets": [{"name": "web", "interval": "5m", "mode": "observe",
                        "source": {"type": "replay", "path": "load.csv"},
                        "policy": {"capacity_per_replica": 50}}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--config", str(tmp_path / "c.yaml"),
                             "--tick", "0.05"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            try:
                if HTTP.get(f"{url}/readyz").status_code == 200 and rec.got:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("not ready with a remote write within 60 s")
        text = HTTP.get(f"{url}/metrics").text
        assert 'forescale_forecast_demand{horizon="600",level="0.9",target="web"}' in text
        assert 'forescale_observed_demand{target="web"}' in text
        assert HTTP.get(f"{url}/api/v1/targets").json()["targets"][0]["name"] == "web"
        fc = HTTP.get(f"{url}/api/v1/targets/web/forecast").json()
        assert fc["made_at"] and len(fc["point"]) == len(fc["timestamps"]) > 0
        assert HTTP.get(f"{url}/api/v1/targets/web/decision").json()["target"] == "web"
        names = {labels["__name__"] for _, body in rec.got for labels, _ in decode(body)}
        assert "forescale_forecast_demand" in names
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert f"HTTP on http://127.0.0.1:{port}" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        rec.close()
    with pytest.raises(httpx.TransportError):
        HTTP.get(f"{url}/healthz")


def test_a_mount_that_authenticates_itself_is_left_out_of_the_bearer_check():
    """The web console logs people in itself (a browser cannot send a bearer
    token): behind server.auth it stays reachable, the rest does not."""
    auth = BearerAuth([DIGEST])
    app = create_app(EngineMetrics(), auth=auth, routes=[Mount("/console", app=console())],
                     own_auth=("/console",))
    with Server(app, "127.0.0.1", 0, auth=auth).start() as server:
        assert HTTP.get(f"{server.url}/console/").text == "console at /console/"
        assert HTTP.get(f"{server.url}/metrics").status_code == 401
        assert HTTP.get(f"{server.url}/consoleX").status_code == 401  # a prefix, not a substring


def test_forescale_run_mounts_the_console_behind_server_auth_only_when_it_has_users(tmp_path):
    from engine.cli import _People
    from engine.config import parse_config

    def people(console: dict) -> _People:
        doc = {"state": str(tmp_path / "s.db"), "server": {"auth": {"token_sha256": [DIGEST]}},
               "console": console,
               "targets": [{"name": "web", "source": {"type": "csv", "path": "x.csv"},
                            "policy": {"capacity_per_replica": 1}}]}
        return _People(parse_config(doc, base_dir=tmp_path))

    alone = people({})
    assert alone.console_routes(lambda: None) == [] and alone.own_auth() == ()
    with_users = people({"users": [{"name": "alice", "token_sha256": DIGEST}]})
    assert with_users.own_auth() == ("/console",) and len(with_users.console_routes(lambda: None)) == 1
    alone.close(), with_users.close()
