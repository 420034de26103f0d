"""The console's security: binding, tokens, sessions, signed single-use
approval links, the login rate limit, redaction; and one full run with
every secret configured whose every output is searched for each secret."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import sqlite3
import warnings
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest

from engine import cli
from engine.auth import (
    AuthError, Links, RateLimiter, Redactor, RedactingFilter, Security, Signer, Users, check_bind,
)
from engine.config import load_config
from engine.console import create_console
from engine.core.clock import ManualClock
from engine.core.errors import ConfigError
from engine.store import Store
from tests.support.console import ALICE_TOKEN, BOB_TOKEN, STEP, csrf_of, make_console_state, run_cycle
from tests.support.webhook import Answer, RecordingServer, SmtpServer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

NOW = datetime(2024, 3, 1, 13, 35, tzinfo=timezone.utc)


def _client(state, clock, monotonic=None):
    cfg = load_config(state.cfg_path)
    sec = Security.from_config(cfg, clock=monotonic) if monotonic else Security.from_config(cfg)
    return TestClient(create_console(cfg, sec, clock=clock), base_url="http://console.test",
                      follow_redirects=False), sec


# ------------------------------------------------------------------ binding
def test_a_non_loopback_bind_needs_users():
    assert check_bind("127.0.0.1:9465", Users([])) == ("127.0.0.1", 9465)
    assert check_bind("[::1]:9465", Users([])) == ("::1", 9465)
    with pytest.raises(ConfigError, match="0.0.0.0 is not a loopback address and no console.users"):
        check_bind("0.0.0.0:9465", Users([]))
    assert check_bind("0.0.0.0:9465", Users([("alice", "0" * 64)])) == ("0.0.0.0", 9465)
    with pytest.raises(ConfigError, match="is not host:port"):
        check_bind("localhost", Users([]))


def test_the_console_command_refuses_a_public_bind_without_users(tmp_path, capsys):
    state = make_console_state(tmp_path, NOW, users=False)
    rc = cli.main(["console", "--config", str(state.cfg_path), "--listen", "0.0.0.0:0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--listen: 0.0.0.0 is not a loopback address and no console.users are configured" in err


# ------------------------------------------------------------------ tokens, signing
def test_tokens_are_hashed_and_every_user_compared():
    users = Users([("alice", hashlib.sha256(b"a-token").hexdigest()), ("bob", hashlib.sha256(b"b-token").hexdigest())])
    assert users.authenticate("a-token") == "alice" and users.authenticate("b-token") == "bob"
    assert users.authenticate("") is None and users.authenticate("a-token ") is None
    assert all(len(d) == 64 and "token" not in d for _, d in users.entries)  # only digests are kept


def test_a_missing_token_variable_is_named_not_guessed(tmp_path, monkeypatch):
    monkeypatch.delenv("FORESCALE_TEST_BOB", raising=False)
    state = make_console_state(tmp_path, NOW)
    with pytest.raises(ConfigError, match=r"console.users\[1\].token_env: environment variable FORESCALE_TEST_BOB"):
        Security.from_config(load_config(state.cfg_path))


def test_signed_tokens_fail_when_altered_or_signed_for_another_purpose():
    s = Signer(b"k" * 32, "link")
    tok = s.sign({"p": "abc", "a": "approve"})
    assert s.unsign(tok) == {"p": "abc", "a": "approve"}
    body, mac = tok.split(".")
    assert s.unsign(body[:-1] + ("A" if body[-1] != "A" else "B") + "." + mac) is None
    assert s.unsign(tok + "x") is None and s.unsign("garbage") is None and s.unsign("") is None
    assert Signer(b"k" * 32, "session").unsign(tok) is None  # a session key cannot read a link
    assert Signer(b"j" * 32, "link").unsign(tok) is None


def test_a_link_is_bound_to_one_plan_and_action_and_expires():
    links = Links(Signer(b"s" * 32, "link"), timedelta(hours=1), "https://c.example")
    url = links.url("abc12345", "approve", "slack", NOW)
    assert url.startswith("https://c.example/l/")
    link = links.read(url.rsplit("/", 1)[1], NOW + timedelta(minutes=59))
    assert (link.plan_id, link.action, link.channel) == ("abc12345", "approve", "slack")
    with pytest.raises(AuthError, match="expired"):
        links.read(url.rsplit("/", 1)[1], NOW + timedelta(hours=1))
    with pytest.raises(ValueError):
        links.token("abc12345", "apply", "slack", NOW)


# ------------------------------------------------------------------ links end to end
def _link_from_notification(state, tmp_path) -> tuple[str, str]:
    """Send the plan's notification to a webhook and take its links."""
    from engine.notify import Notifier, PlanNotices, WebhookChannel

    cfg = load_config(state.cfg_path)
    sec = Security.from_config(cfg)
    with RecordingServer() as hook, Store(cfg.state_path) as store:
        n = Notifier([WebhookChannel("ops", hook.url, frozenset({"plan_created"}), 5)],
                     links=sec.links.maker(lambda: state.now))
        notices = PlanNotices(n, store)
        notices.last_seq = 0  # tell what is there
        notices.poll(store)
        assert n.flush()
        n.close()
    links = hook.requests[0].json["links"]
    return urlsplit(links["approve"]).path, urlsplit(links["reject"]).path


def test_a_signed_link_approves_once_and_a_preview_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FORESCALE_TEST_BOB", BOB_TOKEN)
    state = make_console_state(tmp_path, NOW)
    approve_path, reject_path = _link_from_notification(state, tmp_path)
    client, _ = _client(state, ManualClock(NOW + timedelta(minutes=2)))
    page = client.get(approve_path)  # a chat client's preview, or a person opening it
    assert page.status_code == 200 and f"Approve plan {state.plan_id}?" in page.text
    assert client.get(approve_path).status_code == 200
    with Store(tmp_path / "state.db") as store:
        assert store.plan(state.plan_id).status.value == "pending"
    r = client.post(approve_path, data={"comment": "ok from chat"})
    assert r.status_code == 200 and f"Plan {state.plan_id} approved" in r.text
    with Store(tmp_path / "state.db") as store:
        last = store.plan_history(state.plan_id)[-1]
        assert (last.to_status.value, last.identity, last.channel, last.comment) == \
            ("approved", "link:ops", "link", "ok from chat")
    again = client.post(approve_path, data={})
    assert again.status_code == 403 and "already used" in again.text
    assert "already used" in client.get(approve_path).text
    # the reject link of the same plan is another link: it is valid, but the plan has moved on
    r = client.post(reject_path, data={})
    assert r.status_code == 200 and "rejected" in r.text  # an approval can be withdrawn until applied
    # an altered link is refused
    bad = approve_path[:-2] + ("xx" if not approve_path.endswith("xx") else "yy")
    assert client.post(bad, data={}).status_code == 403


def test_a_link_whose_decision_is_refused_is_not_spent(tmp_path, monkeypatch):
    """The plan had moved on (rejected): the click answered 409 and still
    spent the link, so the next click said "already used" for a decision
    never made."""
    from engine.plans import reject

    monkeypatch.setenv("FORESCALE_TEST_BOB", BOB_TOKEN)
    state = make_console_state(tmp_path, NOW)
    approve_path, _ = _link_from_notification(state, tmp_path)
    with Store(tmp_path / "state.db") as store:
        reject(store, state.plan_id, NOW + timedelta(minutes=1), identity="unix:bob", channel="cli", comment="no")
    client, _ = _client(state, ManualClock(NOW + timedelta(minutes=2)))
    for _ in range(2):
        r = client.post(approve_path, data={})
        assert r.status_code == 409 and "already used" not in r.text
    with Store(tmp_path / "state.db") as store:
        has = store.db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='used_links'").fetchone()[0]
        assert not has or store.db.execute("SELECT COUNT(*) FROM used_links").fetchone()[0] == 0
        assert store.plan(state.plan_id).status.value == "rejected"


def test_a_link_past_its_time_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FORESCALE_TEST_BOB", BOB_TOKEN)
    state = make_console_state(tmp_path, NOW)
    approve_path, _ = _link_from_notification(state, tmp_path)
    client, _ = _client(state, ManualClock(NOW + timedelta(hours=1, seconds=1)))  # console.link_ttl: 1h
    r = client.post(approve_path, data={})
    assert r.status_code == 403 and "expired" in r.text


# ------------------------------------------------------------------ rate limit
def test_failed_logins_are_limited_per_address(tmp_path, monkeypatch):
    monkeypatch.setenv("FORESCALE_TEST_BOB", BOB_TOKEN)
    state = make_console_state(tmp_path, NOW)
    mono = [0.0]
    client, _ = _client(state, ManualClock(NOW), monotonic=lambda: mono[0])
    form = client.get("/login")
    csrf = csrf_of(form.text)
    for _ in range(5):
        assert client.post("/login", data={"csrf": csrf, "token": "wrong"}).status_code == 401
    r = client.post("/login", data={"csrf": csrf, "token": ALICE_TOKEN})  # even the right token, for a minute
    assert r.status_code == 429 and r.headers["retry-after"] == "60"
    mono[0] = 61.0
    assert client.post("/login", data={"csrf": csrf, "token": ALICE_TOKEN}).status_code == 303


def test_a_login_without_the_forms_csrf_token_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FORESCALE_TEST_BOB", BOB_TOKEN)
    state = make_console_state(tmp_path, NOW)
    client, _ = _client(state, ManualClock(NOW))
    assert client.post("/login", data={"token": ALICE_TOKEN}).status_code == 403
    client.get("/login")
    assert client.post("/login", data={"csrf": "forged", "token": ALICE_TOKEN}).status_code == 403


def test_the_rate_limiter_forgets_after_its_window():
    t = [0.0]
    rl = RateLimiter(2, 60.0, clock=lambda: t[0])
    rl.failed("a")
    rl.failed("a")
    assert rl.blocked("a") and not rl.blocked("b")
    t[0] = 60.5
    assert not rl.blocked("a")


# ------------------------------------------------------------------ redaction
def test_the_redacting_filter_cleans_messages_and_tracebacks():
    red = Redactor(["hunter2 s3cret/x", "x"])  # too short to redact: ignored
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter(red))
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    try:
        log.error("token %s in url %s", "hunter2 s3cret/x", "https://h/?k=hunter2%20s3cret%2Fx")
        try:
            raise RuntimeError("boom hunter2+s3cret%2Fx hunter2 s3cret/x")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "hunter2" not in text and "s3cret" not in text and text.count("***") >= 4


# ------------------------------------------------------------------ every output, every secret
SECRETS = {
    "alice_token": ALICE_TOKEN,
    "bob_token": BOB_TOKEN,
    "server_secret": "srv-secret-7c1e9a0b3d",
    "webhook_key": "whk-0a9b8c7d6e5f4a3b",
    "slack_key": "slk-T0B1XYZsecretpart99",
    "ding_token": "dtk-a1b2c3d4e5f60718",
    "ding_secret": "SECdsecret0f1e2d3c4b5a",
    "smtp_password": "smtp-pw-e7d6c5b4a3",
    "aws_secret": "aws-sk-wJalrXUtnFEMI0K7MDENG",
    "audit_key": "audit-hmac-key-93b0c1d2",
}


def test_no_configured_secret_appears_in_any_output(tmp_path, monkeypatch, capfd):
    """A full run with every secret set: two cycles, two plans, a
    notification to every channel, a console login and approval, a link
    approval, errors (a dead channel whose URL holds its key, a wrong token,
    a used link, a bad config) — logs at DEBUG, stdout/stderr, every table of
    the state file, every notification body and the CLI's listings are
    searched for each secret. Only a channel's own credential travels to
    that channel (the key in its URL); DingTalk gets a signature, never its
    secret."""
    from engine.notify import Notifier, PlanNotices, notify_result

    s = SECRETS
    monkeypatch.setenv("FORESCALE_TEST_BOB", s["bob_token"])
    monkeypatch.setenv("FORESCALE_TEST_SECRET", s["server_secret"])
    monkeypatch.setenv("FORESCALE_TEST_SLACK", "")  # set below, with the server's address
    monkeypatch.setenv("FORESCALE_TEST_SMTP", s["smtp_password"])
    monkeypatch.setenv("FORESCALE_TEST_DING_SECRET", s["ding_secret"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s["aws_secret"])
    monkeypatch.setenv("FORESCALE_AUDIT_KEY", s["audit_key"])
    log_text = io.StringIO()
    handler = logging.StreamHandler(log_text)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for noisy in ("httpx", "httpcore", "mail.log"):  # whatever an earlier test set: everything at DEBUG
        monkeypatch.setattr(logging.getLogger(noisy), "level", logging.DEBUG)
    try:
        with RecordingServer() as hook, RecordingServer() as slack, \
                RecordingServer(Answer(body={"errcode": 0})) as ding, RecordingServer(Answer(404)) as dead, \
                SmtpServer(tmp_path, "forescale", s["smtp_password"]) as smtp:
            monkeypatch.setenv("FORESCALE_TEST_SLACK", f"{slack.url}/services/{s['slack_key']}")
            notify = {"max_attempts": 2, "channels": [
                {"type": "webhook", "name": "hook", "url": f"{hook.url}/in?key={s['webhook_key']}"},
                {"type": "webhook", "name": "dead", "url": f"{dead.url}/gone?key={s['webhook_key']}"},
                {"type": "slack", "url_env": "FORESCALE_TEST_SLACK"},
                {"type": "dingtalk", "url": f"{ding.url}/robot/send?access_token={s['ding_token']}",
                 "secret_env": "FORESCALE_TEST_DING_SECRET"},
                {"type": "email", "host": "127.0.0.1", "port": smtp.port, "username": "forescale",
                 "password_env": "FORESCALE_TEST_SMTP", "from": "fs@example.com", "to": ["ops@example.com"],
                 "ca_file": str(smtp.cert)}]}
            console = {"users": [{"name": "alice", "token_sha256": hashlib.sha256(s["alice_token"].encode()).hexdigest()},
                                 {"name": "bob", "token_env": "FORESCALE_TEST_BOB"}],
                       "secret_env": "FORESCALE_TEST_SECRET", "public_url": "http://console.test"}
            state = make_console_state(tmp_path, NOW, values=[100.0] * 30 + [300.0] * 3,
                                       extra={"notify": notify, "console": console})
            cfg = load_config(state.cfg_path)
            sec = Security.from_config(cfg)
            clock = ManualClock(NOW + timedelta(minutes=1))
            with Store(cfg.state_path, audit_key=s["audit_key"].encode()) as store:
                n = Notifier.from_config(cfg.notify, links=sec.links.maker(clock.now),
                                         backoff=lambda attempt: 0.0)
                notices = PlanNotices(n, store)
                notices.last_seq = 0
                notices.poll(store)  # plan A made by the first cycle
                client = TestClient(create_console(cfg, sec, clock=clock), base_url="http://console.test",
                                    follow_redirects=False)
                # errors first: a wrong token (another secret pasted by mistake), a forged form
                page = client.get("/login")
                bad = client.post("/login", data={"csrf": csrf_of(page.text), "token": s["smtp_password"]})
                assert bad.status_code == 401
                outputs = [bad.text, client.post("/plans/x/approve", data={"csrf": "x"}).text]
                # a console approval of plan A (bob, whose token is in the environment)
                page = client.get("/login")
                client.post("/login", data={"csrf": csrf_of(page.text), "token": s["bob_token"]})
                page = client.get("/")
                r = client.post(f"/plans/{state.plan_id}/approve", data={"csrf": csrf_of(page.text)})
                assert r.status_code == 303
                outputs += [page.text, client.get("/audit").text, client.get("/targets/web").text]
                # the next cycle applies A and plans B (load 300); the daemon's hooks tell it
                res = run_cycle(state.cfg_path, NOW + STEP)
                notify_result(n, res)
                notices.poll(store)
                assert n.flush(20)
                plan_b = res.plan.id
                (msg,) = [r.json for r in hook.requests if r.json["kind"] == "plan_created"
                          and r.json["details"]["plan"]["id"] == plan_b]
                link = urlsplit(msg["links"]["approve"]).path
                anon = TestClient(create_console(cfg, sec, clock=clock), base_url="http://console.test")
                outputs.append(anon.get(link).text)
                done = anon.post(link, data={"comment": "from the hook"})
                assert done.status_code == 200 and "approved" in done.text
                outputs += [done.text, anon.post(link, data={}).text]  # used: an error page
                clock.set(NOW + 2 * STEP + timedelta(minutes=1))
                res = run_cycle(state.cfg_path, NOW + 2 * STEP)
                notify_result(n, res)
                notices.poll(store)
                assert n.flush(20)
                n.close()
                outputs.append(json.dumps(client.get("/api/plans", headers={
                    "authorization": f"Bearer {s['alice_token']}"}).json()))
            assert smtp.messages and smtp.logins == [("forescale", True)] * len(smtp.messages)
            assert {r.json["kind"] for r in hook.requests} >= {"plan_created", "plan_approved", "applied"}
            assert len(dead.requests) >= 2 and len(slack.requests) >= 4 and len(ding.requests) >= 4
            # what travelled: bodies never hold a secret; URLs only the channel's own key
            for srv, own in ((hook, "webhook_key"), (dead, "webhook_key"), (slack, "slack_key"),
                             (ding, "ding_token")):
                for req in srv.requests:
                    outputs.append(req.body.decode())
                    outputs.append(req.raw_query.replace(s[own], "") + req.path.replace(s[own], ""))
                    assert "sign" not in req.query or req.query["sign"] != s["ding_secret"]
            for m in smtp.messages:
                outputs.append(m["message"].as_string())
            # a bad config: a secret of the wrong type is named, not shown
            bad_cfg = tmp_path / "bad.yaml"
            bad_cfg.write_text(state.cfg_path.read_text().replace(f"key={s['webhook_key']}", "key=") +
                               f"\n# {'x' * 3}\n")
            raw = bad_cfg.read_text()
            bad_cfg.write_text(re.sub(r"secret_env: FORESCALE_TEST_DING_SECRET",
                                      f"secret: [{s['ding_secret']}]", raw))
            with pytest.raises(ConfigError) as exc:
                load_config(bad_cfg)
            outputs.append(str(exc.value))
            assert "secret: must be a non-empty string (the value is a secret and is not shown)" in str(exc.value)
            # the CLI's listings
            for argv in (["decisions", "--config", str(state.cfg_path), "--json"],
                         ["plans", "--config", str(state.cfg_path), "--all", "--json"],
                         ["audit", "export", "--config", str(state.cfg_path)],
                         ["audit", "verify", "--config", str(state.cfg_path)]):
                cli.main(argv)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    captured = capfd.readouterr()
    outputs += [captured.out, captured.err, log_text.getvalue()]
    db = sqlite3.connect(tmp_path / "state.db")
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
        outputs.append(json.dumps(db.execute(f"SELECT * FROM {table}").fetchall(), default=repr))
    db.close()
    everything = "\n".join(outputs)
    assert "notify dead: dropped" in everything  # the failure was logged (without its key)
    assert "audit chain ok" in captured.out
    leaked = {name: value for name, value in s.items() if value in everything}
    assert leaked == {}


def test_the_redactor_knows_the_servers_and_remote_writes_secrets_from_the_environment(tmp_path):
    from engine.auth import config_secrets
    from engine.config import parse_config

    doc = {"state": str(tmp_path / "s.db"),
           "server": {"auth": {"token_env": "T_SRV"},
                      "remote_write": {"url": "http://127.0.0.1:9/api/v1/write",
                                       "basic_auth": {"username": "u", "password_env": "T_RW"}}},
           "targets": [{"name": "web", "source": {"type": "csv", "path": "x.csv"},
                        "policy": {"capacity_per_replica": 1}}]}
    env = {"T_SRV": "server-token-123", "T_RW": "rw-password-456", "FORESCALE_AUDIT_KEY": "k-789"}
    got = config_secrets(parse_config(doc, base_dir=tmp_path), env)
    assert {"server-token-123", "rw-password-456", "k-789"} <= set(got)
