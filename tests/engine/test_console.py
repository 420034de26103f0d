"""The web console over a real state file (a pending plan made by a real
approve-mode cycle): log in, see the plan with its reasons, approve it with
a form (CSRF checked), the next cycle applies it and the chart marks the
scale event; the approval API; the audit page's verification; no inline
script or style anywhere (the CSP allows none)."""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
import warnings

with warnings.catch_warnings():  # starlette 1.x prefers httpx2 for its test client; httpx works the same
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from engine.auth import Security
from engine.config import load_config
from engine.console import create_console
from engine.console.app import SECURITY_HEADERS
from engine.core.clock import ManualClock
from engine.store import Store
from tests.support.console import ALICE_TOKEN, BOB_TOKEN, STEP, csrf_of, make_console_state, run_cycle

NOW = datetime(2024, 3, 1, 13, 35, tzinfo=timezone.utc)


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("FORESCALE_TEST_BOB", BOB_TOKEN)


def client_for(state, clock=None) -> tuple[TestClient, ManualClock]:
    clock = clock or ManualClock(state.now + timedelta(minutes=1))
    cfg = load_config(state.cfg_path)
    app = create_console(cfg, Security.from_config(cfg), clock=clock)
    return TestClient(app, base_url="http://console.test", follow_redirects=False), clock


def login(client: TestClient, token: str = ALICE_TOKEN):
    page = client.get("/login")
    return client.post("/login", data={"csrf": csrf_of(page.text), "token": token})


def test_log_in_see_the_plan_approve_it_and_see_it_applied(tmp_path, env):
    state = make_console_state(tmp_path, NOW)
    client, clock = client_for(state)
    assert client.get("/").headers["location"] == "/login"  # pages need a login
    r = login(client)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "forescale_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = client.get("/")
    assert page.status_code == 200
    assert f'id="plan-{state.plan_id}"' in page.text and "5 &rarr; 20" in page.text
    assert "CapacityFromDemand" in page.text or "why:" in page.text
    assert f'action="/plans/{state.plan_id}/approve"' in page.text
    # a form without the session's CSRF token is refused and changes nothing
    r = client.post(f"/plans/{state.plan_id}/approve", data={"comment": "x"})
    assert r.status_code == 403 and "CSRF" in r.text
    with Store(tmp_path / "state.db") as store:
        assert store.plan(state.plan_id).status.value == "pending"
    r = client.post(f"/plans/{state.plan_id}/approve", data={"csrf": csrf_of(page.text), "comment": "peak at 2"})
    assert r.status_code == 303 and r.headers["location"] == f"/?done=approved&plan={state.plan_id}"
    assert f"Plan {state.plan_id} approved." in client.get(r.headers["location"]).text
    with Store(tmp_path / "state.db") as store:
        (*_, last) = store.plan_history(state.plan_id)
        assert (last.to_status.value, last.identity, last.channel, last.comment) == \
            ("approved", "user:alice", "console", "peak at 2")
    res = run_cycle(state.cfg_path, NOW + STEP)
    assert state.plan_id in res.details.get("plans_applied", [])
    clock.set(NOW + STEP + timedelta(minutes=1))
    page = client.get("/")
    assert "No plans are waiting." in page.text
    assert "applied" in page.text and 'class="event applied"' in page.text  # the chart marks the scale event
    target = client.get("/targets/web?window=7d")
    assert target.status_code == 200 and 'class="actual"' in target.text and 'class="capacity"' in target.text
    assert "5 &rarr; 20" in target.text and "ForecastWindowMax" in target.text  # decisions with their steps


def test_a_rejection_is_recorded_with_who_and_withdraws_nothing_else(tmp_path, env):
    state = make_console_state(tmp_path, NOW)
    client, _ = client_for(state)
    login(client, BOB_TOKEN)  # bob's token comes from the environment
    page = client.get("/")
    assert 'name="comment" placeholder="reason (optional)"' in page.text  # the reject form takes a reason
    r = client.post(f"/plans/{state.plan_id}/reject", data={"csrf": csrf_of(page.text), "comment": "not real"})
    assert r.status_code == 303
    with Store(tmp_path / "state.db") as store:
        assert store.plan(state.plan_id).status.value == "rejected"
        last = store.plan_history(state.plan_id)[-1]
        assert (last.identity, last.comment) == ("user:bob", "not real")
    # a second decision on it is refused with the state machine's reason
    r = client.post(f"/plans/{state.plan_id}/approve", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 409 and "rejected" in r.text
    # a plan that does not exist is not a conflict
    r = client.post("/plans/nosuch/approve", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 404 and "no plan" in r.text
    # a window other than the two offered is refused, not shown as a day titled with it
    r = client.get("/targets/web?window=bogus")
    assert r.status_code == 400 and "window: one of 1d, 7d" in r.text


def test_the_approval_api_takes_a_bearer_token(tmp_path, env):
    state = make_console_state(tmp_path, NOW)
    client, _ = client_for(state)
    assert client.get("/api/plans").status_code == 401
    assert client.post(f"/api/plans/{state.plan_id}/approve", headers={"authorization": "Bearer nope"}).status_code == 401
    auth = {"authorization": f"Bearer {ALICE_TOKEN}"}
    (view,) = client.get("/api/plans", headers=auth).json()["plans"]
    assert view["plan"]["id"] == state.plan_id and view["decision"]["desired"] == 20
    r = client.post("/api/plans/nosuch/approve", headers=auth, json={"comment": "x"})
    assert r.status_code == 404 and "no plan 'nosuch'" in r.json()["error"]
    r = client.post(f"/api/plans/{state.plan_id}/approve", headers=auth, json=[1, 2])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    r = client.post(f"/api/plans/{state.plan_id}/approve", headers=auth, json={"comment": ["x"]})
    assert r.status_code == 400 and r.json()["error"] == "comment must be a string"
    r = client.post(f"/api/plans/{state.plan_id}/approve", headers=auth, json={"comment": "via api"})
    assert r.status_code == 200 and r.json()["plan"]["status"] == "approved"
    with Store(tmp_path / "state.db") as store:
        last = store.plan_history(state.plan_id)[-1]
        assert (last.identity, last.channel, last.comment) == ("user:alice", "http", "via api")
    assert client.post("/api/plans/x/delete", headers=auth).status_code == 404


def test_a_plan_past_its_expiry_is_no_longer_offered_and_listing_writes_nothing(tmp_path, env):
    state = make_console_state(tmp_path, NOW)  # plan_ttl 2h
    client, clock = client_for(state)
    login(client)
    auth = {"authorization": f"Bearer {ALICE_TOKEN}"}
    assert len(client.get("/api/plans", headers=auth).json()["plans"]) == 1
    clock.set(NOW + timedelta(hours=2, minutes=1))  # past its time, no cycle since
    with Store(tmp_path / "state.db") as store:
        before = store.db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    assert client.get("/api/plans", headers=auth).json()["plans"] == []
    page = client.get("/")
    assert "No plans are waiting." in page.text and f'action="/plans/{state.plan_id}/approve"' not in page.text
    with Store(tmp_path / "state.db") as store:
        assert store.plan(state.plan_id).status.value == "pending"  # the daemon's next cycle records it
        assert store.db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == before


def test_every_response_carries_the_security_headers_and_no_inline_code(tmp_path, env):
    state = make_console_state(tmp_path, NOW)
    client, _ = client_for(state)
    login(client)
    pages = {p: client.get(p) for p in ("/", "/login", "/targets/web", "/audit", "/static/console.css",
                                         "/no/such/page", "/api/plans")}
    for path, r in pages.items():
        for k, v in SECURITY_HEADERS.items():
            assert r.headers.get(k) == v, (path, k)
    assert "script-src 'self'" in SECURITY_HEADERS["content-security-policy"]
    assert "unsafe-inline" not in SECURITY_HEADERS["content-security-policy"]
    for path in ("/", "/login", "/targets/web", "/audit"):
        html = pages[path].text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path  # every script is a file
        assert " style=" not in html and "<style" not in html, path
        assert not re.search(r"\son[a-z]+=", html), path  # no inline event handlers
        assert pages[path].headers["content-type"].startswith("text/html")


def test_the_audit_page_shows_the_chain_and_a_tampered_row(tmp_path, env):
    state = make_console_state(tmp_path, NOW)
    client, _ = client_for(state)
    login(client)
    page = client.get("/audit")
    assert 'class="chain ok"' in page.text and "audit chain ok" in page.text
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("UPDATE decisions SET desired=60")
    db.commit()
    db.close()
    page = client.get("/audit")
    assert 'class="chain broken"' in page.text and "audit chain BROKEN" in page.text


def test_without_users_the_console_is_read_only(tmp_path):
    state = make_console_state(tmp_path, NOW, users=False)
    client, _ = client_for(state)
    page = client.get("/")
    assert page.status_code == 200 and f'id="plan-{state.plan_id}"' in page.text
    assert "/approve" not in page.text and "read-only" in page.text
    assert "No console.users are configured" in client.get("/login").text
    r = client.post(f"/plans/{state.plan_id}/approve", data={"csrf": "x"})
    assert r.status_code == 403
    assert client.post(f"/api/plans/{state.plan_id}/approve",
                       headers={"authorization": "Bearer anything"}).status_code == 401


def test_a_planned_schedule_is_rendered(tmp_path, env):
    """The planner puts a ``schedule`` on the decision: the target page
    shows its runs and the chart draws it ahead of now."""
    import json

    state = make_console_state(tmp_path, NOW)
    steps = [{"at": f"2024-03-01T{h:02d}:{m:02d}:00Z", "order_at": "", "capacity": c, "label": None, "demand": 1,
              "p_saturated": 0, "unserved": 0, "cost": 1, "fixed": False}
             for h, m, c in ((13, 45, 8), (14, 0, 8), (14, 15, 3))]
    db = sqlite3.connect(tmp_path / "state.db")
    (raw,) = db.execute("SELECT decision FROM decisions").fetchone()
    d = json.loads(raw)
    d["schedule"] = {"steps": steps, "reason": "8 for the 14:00 peak, back to 3 after", "total_cost": 12.5,
                     "changes": 2, "risk": "p95"}
    db.execute("UPDATE decisions SET decision=?", (json.dumps(d),))
    db.commit()
    db.close()
    client, _ = client_for(state)
    login(client)
    page = client.get("/targets/web")
    assert "Planned schedule" in page.text and "8 for the 14:00 peak, back to 3 after" in page.text
    assert re.search(r"<td>8</td><td>2024-03-01T13:45:00Z</td><td>2024-03-01T14:00:00Z</td>", page.text)
    assert re.search(r"<td>3</td><td>2024-03-01T14:15:00Z</td>", page.text)
    assert 'class="schedule"' in page.text


def test_the_chart_draws_band_actual_capacity_and_events():
    from engine.console.chart import ChartData, Event, render

    t0 = 1_709_300_000
    data = ChartData(start=t0, end=t0 + 3600, now=t0 + 3000,
                     actual=[(t0 + i * 300, 100.0 + i) for i in range(10)] + [(t0 + 3000, float("nan"))],
                     band=[(t0 + i * 300, 90.0, 100.0, 120.0) for i in range(10)],
                     capacity=[(t0, 50.0), (t0 + 1500, 200.0)],
                     events=[Event(t0 + 1500, "5 -> 20 at 13:35"), Event(t0 + 99999, "outside")])
    svg = render(data, title="web <day>")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count('class="band"') == 1 and svg.count('class="actual"') == 1
    assert svg.count('class="capacity"') == 1 and svg.count('class="event applied"') == 1
    assert "<title>5 -&gt; 20 at 13:35</title>" in svg and "web &lt;day&gt;" in svg
    assert "style=" not in svg
    empty = render(ChartData(start=t0, end=t0 + 3600, now=t0))
    assert "no data in this window yet" in empty


def test_the_daemon_notifies_and_serves_the_console(tmp_path, env):
    """``forescale run``: the first cycle's plan reaches the webhook with a
    signed link, and the console answers on the daemon's server at
    /console, the link included."""
    import os
    import subprocess
    import sys
    import time as _time

    import httpx
    import yaml

    from engine.core.clock import SystemClock
    from tests.support import ROOT
    from tests.support.prom import free_port
    from tests.support.webhook import RecordingServer

    now = SystemClock().now()
    now = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)
    port = free_port()
    with RecordingServer() as hook:
        state = make_console_state(tmp_path, now - STEP, public_url=f"http://127.0.0.1:{port}/console")
        doc = yaml.safe_load(state.cfg_path.read_text())
        doc["server"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
        doc["notify"] = {"channels": [{"type": "webhook", "name": "ops", "url": hook.url + "/in"}]}
        # a new plan at the daemon's first cycle: the load doubles now
        state.trace.write_text(state.trace.read_text() + f"{now:%Y-%m-%dT%H:%M:%SZ},200.0\n")
        state.cfg_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--config", str(state.cfg_path),
                                 "--tick", "0.05"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "FORESCALE_TEST_BOB": BOB_TOKEN})
        try:
            deadline = _time.monotonic() + 60
            while not any(r.json["kind"] == "plan_created" for r in hook.requests):
                assert proc.poll() is None, proc.communicate()[1]
                assert _time.monotonic() < deadline, "no plan_created notification"
                _time.sleep(0.1)
            msg = next(r.json for r in hook.requests if r.json["kind"] == "plan_created")
            assert msg["summary"].startswith("web: scale ") and msg["links"]["approve"].startswith(
                f"http://127.0.0.1:{port}/console/l/")
            r = httpx.get(f"http://127.0.0.1:{port}/console/login")
            assert r.status_code == 200 and 'action="/console/login"' in r.text
            assert r.headers["x-frame-options"] == "DENY"
            link = httpx.get(msg["links"]["approve"])
            assert link.status_code == 200 and "Approve plan" in link.text
            assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=20)
    assert "Traceback" not in err, err


def test_a_session_ends_at_logout_and_with_its_user_even_for_a_copied_cookie(tmp_path, env, monkeypatch):
    """/logout only deleted the browser's cookie: a copy approved plans for
    12 h, across a restart, and after the user was removed from
    console.users."""
    state = make_console_state(tmp_path, NOW)
    client, clock = client_for(state)
    login(client)
    kept = client.cookies.get("forescale_session")
    page = client.get("/")
    assert client.post("/logout", data={"csrf": csrf_of(page.text)}).status_code == 303
    # the copy, in a console started afresh (the same secret)
    again, _ = client_for(state, clock)
    again.cookies.set("forescale_session", kept, domain="console.test")
    assert again.get("/").headers["location"] == "/login"
    r = again.post(f"/plans/{state.plan_id}/approve", data={"csrf": "x", "comment": "ghost"})
    assert r.status_code in (303, 403) and "done=approved" not in r.headers.get("location", "")
    with Store(tmp_path / "state.db") as store:
        assert store.plan(state.plan_id).status.value == "pending"
    # a session of a user since removed from console.users
    login(again)
    live = again.cookies.get("forescale_session")
    import yaml

    doc = yaml.safe_load(state.cfg_path.read_text())
    doc["console"]["users"] = [u for u in doc["console"]["users"] if u["name"] != "alice"]
    state.cfg_path.write_text(yaml.safe_dump(doc))
    third, _ = client_for(state, clock)
    third.cookies.set("forescale_session", live, domain="console.test")
    assert third.get("/").headers["location"] == "/login"


def test_token_guesses_on_the_plan_list_are_rate_limited(tmp_path, env):
    """GET /api/plans answered 401 to every guess, without limit (the login
    form was blocked for the same address)."""
    state = make_console_state(tmp_path, NOW)
    client, _ = client_for(state)
    codes = [client.get("/api/plans", headers={"authorization": f"Bearer bad{i}"}).status_code for i in range(12)]
    assert codes[0] == 401 and codes[-1] == 429
    assert client.get("/api/plans", headers={"authorization": f"Bearer {ALICE_TOKEN}"}).status_code == 429
