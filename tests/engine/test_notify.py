"""Notifications reach real loopback servers with the exact payloads each
channel's protocol expects (the DingTalk signature recomputed here
independently), and a failing channel never blocks the caller: retried with
backoff, dropped and counted after the bound."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import urllib.parse
from datetime import datetime, timezone

import pytest

from engine.config import NotifyConfig
from engine.core.errors import ConfigError
from engine.notify import (
    EVENTS as EVENTS_ALL, DingTalkChannel, EmailChannel, Notifier, SlackChannel, WebhookChannel, summarize,
)
from tests.support.webhook import Answer, RecordingServer, SmtpServer

AT = datetime(2024, 3, 1, 13, 35, tzinfo=timezone.utc)
PLAN = {"id": "ab12cd34", "target": "web", "decision_id": "web@2024-03-01T13:35:00Z", "from_capacity": 4,
        "to_capacity": 8, "observed_capacity": 4, "created_at": "2024-03-01T13:35:00Z",
        "expires_at": "2024-03-01T13:45:00Z", "status": "pending", "description": "", "actor": None,
        "updated_at": "2024-03-01T13:35:00Z", "note": ""}
DECISION = {"id": "web@2024-03-01T13:35:00Z", "at": "2024-03-01T13:35:00Z", "current": 4, "desired": 8,
            "recommendation": 8, "fallback": False, "forecast_demand": 1900.0, "capacity_label": None,
            "model": "seasonal_persistence",
            "steps": [{"name": "data", "value": 4, "reason": "DataOK", "message": "ok", "changed": False},
                      {"name": "capacity", "value": 7, "reason": "CapacityFromDemand", "message": "",
                       "changed": True},
                      {"name": "bounds", "value": 8, "reason": "TooFewReplicas", "message": "", "changed": True}]}
LINE = "web: scale 4 -> 8 at 13:35 (forecast peak 1.9k needs 7; TooFewReplicas)"


def links(plan_id: str, action: str, channel: str) -> str:
    return f"https://console.example/l/{plan_id}-{action}-{channel}"


def no_wait(attempt: int) -> float:
    return 0.0


def test_the_line_says_what_is_proposed_and_why():
    assert summarize("plan_created", "web", {"plan": PLAN, "decision": DECISION}) == LINE
    fallback = {**DECISION, "fallback": True, "forecast_demand": None,
                "steps": [{"name": "data", "value": 4, "reason": "NoForecast",
                           "message": "fallback to reactive, no scale-down: source down", "changed": True}]}
    assert summarize("fallback_streak", "web", {"decision": fallback, "streak": 3}) == (
        "web: 3 consecutive fallback cycles (fallback: fallback to reactive, no scale-down: source down); "
        "capacity held at 8, no scale-down")
    assert summarize("plan_approved", "web", {"plan": PLAN, "identity": "alice", "channel": "console",
                                              "comment": "go"}) == \
        "web: plan ab12cd34 (4 -> 8) approved by alice via console: go"
    assert summarize("failed", "web", {"plan": PLAN, "error": "throttled"}) == \
        "web: scaling 4 -> 8 failed (plan ab12cd34): throttled"
    with pytest.raises(ValueError, match="unknown notification kind 'nope'"):
        summarize("nope", "web", {})


def test_webhook_slack_and_dingtalk_get_their_exact_payloads():
    secret = "SECd1e2a3d4b5e6f7"
    with RecordingServer() as hook, RecordingServer() as slack, \
            RecordingServer(Answer(body={"errcode": 0, "errmsg": "ok"})) as ding:
        n = Notifier([WebhookChannel("hook", hook.url + "/forescale", frozenset({"plan_created"}), 5),
                      SlackChannel("slack", slack.url + "/services/T0/B0/KEY", frozenset({"plan_created"}), 5),
                      DingTalkChannel("ding", ding.url + "/robot/send?access_token=tok123",
                                      frozenset({"plan_created"}), 5, secret, clock_ms=lambda: 1709300100123)],
                     links=links, backoff=no_wait)
        n.event("plan_created", "web", {"plan": PLAN, "decision": DECISION}, at=AT)
        n.event("applied", "web", {"plan": PLAN}, at=AT)  # no channel takes it
        assert n.flush()
        n.close()
    (h,) = hook.requests
    assert h.path == "/forescale" and h.headers["Content-Type"] == "application/json"
    assert h.json == {
        "kind": "plan_created", "target": "web", "at": "2024-03-01T13:35:00Z",
        "text": LINE + "; approve: https://console.example/l/ab12cd34-approve-hook "
                       "reject: https://console.example/l/ab12cd34-reject-hook",
        "summary": LINE,
        "links": {"approve": "https://console.example/l/ab12cd34-approve-hook",
                  "reject": "https://console.example/l/ab12cd34-reject-hook"},
        "details": {"plan": PLAN, "decision": {
            "id": "web@2024-03-01T13:35:00Z", "at": "2024-03-01T13:35:00Z", "current": 4, "desired": 8,
            "recommendation": 8, "fallback": False, "forecast_demand": 1900.0, "capacity_label": None,
            "model": "seasonal_persistence", "reasons": ["CapacityFromDemand", "TooFewReplicas"]}},
    }
    (s,) = slack.requests
    assert s.path == "/services/T0/B0/KEY"
    # Slack's control characters escaped (it shows "4 -> 8"), its link markup kept
    assert s.json == {"text": LINE.replace(">", "&gt;") + " <https://console.example/l/ab12cd34-approve-slack|approve> "
                                     "<https://console.example/l/ab12cd34-reject-slack|reject>"}
    (d,) = ding.requests
    assert d.path == "/robot/send"
    assert d.json == {"msgtype": "text", "text": {"content": "forescale " + LINE +
                      "; approve: https://console.example/l/ab12cd34-approve-ding "
                      "reject: https://console.example/l/ab12cd34-reject-ding"}}
    # the signature, computed here from DingTalk's documented algorithm
    assert d.query["access_token"] == "tok123" and d.query["timestamp"] == "1709300100123"
    want = base64.b64encode(hmac.new(secret.encode(), f"1709300100123\n{secret}".encode(),
                                     hashlib.sha256).digest()).decode()
    assert d.query["sign"] == want
    assert f"sign={urllib.parse.quote_plus(want)}" in d.raw_query  # sent URL-encoded
    assert secret not in d.raw_query and secret.encode() not in d.body


def test_email_goes_through_starttls_with_login(tmp_path):
    with SmtpServer(tmp_path, "forescale", "smtp-pass-9f8e") as smtp:
        ch = EmailChannel("mail", frozenset({"plan_created"}), host="127.0.0.1", port=smtp.port,
                          sender="forescale@example.com", to=["ops@example.com", "oncall@example.com"],
                          username="forescale", password="smtp-pass-9f8e", starttls=True, timeout=5,
                          ca_file=str(smtp.cert))
        n = Notifier([ch], links=links, backoff=no_wait)
        n.event("plan_created", "web", {"plan": PLAN, "decision": DECISION}, at=AT)
        assert n.flush()
        n.close()
        assert n.sent == {"mail": 1} and n.dropped == {"mail": 0}
    assert smtp.logins == [("forescale", True)] and smtp.tls_seen == [True]
    (m,) = smtp.messages
    assert m["from"] == "forescale@example.com" and m["to"] == ["ops@example.com", "oncall@example.com"]
    msg = m["message"]
    assert msg["Subject"] == f"[forescale] {LINE}"
    assert msg.get_content().replace("\r\n", "\n") == (f"{LINE}\n\napprove: https://console.example/l/ab12cd34-approve-mail\n"
                                 "reject: https://console.example/l/ab12cd34-reject-mail\n")


def test_a_comment_can_add_no_link_mention_or_header_to_a_message(tmp_path):
    """A comment comes from whoever approves (the console, the API, a signed
    link's holder): on Slack its markup is shown literally, not as a link of
    its own beside the real ones or a mention of the whole channel; in an
    email its line break neither drops the message nor adds a header."""
    comment = "<https://evil.example/steal|Approve> & <!channel>\nBcc: victim@example.com\n\ninjected"
    payload = {"plan": PLAN, "identity": "alice", "channel": "link", "comment": comment}
    with RecordingServer() as slack, SmtpServer(tmp_path, "forescale", "smtp-pass-9f8e") as smtp:
        n = Notifier([SlackChannel("slack", slack.url + "/services/T0/B0/KEY", frozenset({"plan_approved"}), 5),
                      EmailChannel("mail", frozenset({"plan_approved"}), host="127.0.0.1", port=smtp.port,
                                   sender="forescale@example.com", to=["ops@example.com"], username="forescale",
                                   password="smtp-pass-9f8e", starttls=True, timeout=5, ca_file=str(smtp.cert))],
                     links=links, backoff=no_wait)
        n.event("plan_approved", "web", payload, at=AT)
        assert n.flush()
        n.close()
        assert n.sent == {"slack": 1, "mail": 1} and n.dropped == {"slack": 0, "mail": 0}
    (s,) = slack.requests
    text = s.json["text"]
    assert "<https://evil" not in text and "<!channel>" not in text
    assert text.startswith("web: plan ab12cd34 (4 -&gt; 8) approved by alice via link: "
                           "&lt;https://evil.example/steal|Approve&gt; &amp; &lt;!channel&gt;")
    (m,) = smtp.messages
    assert m["to"] == ["ops@example.com"]
    msg = m["message"]
    assert msg["Bcc"] is None and "\n" not in msg["Subject"]
    assert msg["Subject"].startswith("[forescale] web: plan ab12cd34 (4 -> 8) approved") and \
        "Bcc: victim@example.com injected" in msg["Subject"]


def test_email_refuses_a_server_whose_certificate_is_not_trusted(tmp_path):
    """STARTTLS verifies the certificate: without the test CA it fails, is
    retried, then dropped and counted; nothing is delivered."""
    with SmtpServer(tmp_path, "u", "p-secret-123") as smtp:
        ch = EmailChannel("mail", frozenset({"applied"}), host="127.0.0.1", port=smtp.port, sender="a@b.c",
                          to=["d@e.f"], username="u", password="p-secret-123", starttls=True, timeout=5)
        n = Notifier([ch], max_attempts=2, backoff=no_wait)
        n.event("applied", "web", {"plan": PLAN}, at=AT)
        assert n.flush()
        n.close()
    assert n.sent == {"mail": 0} and n.dropped == {"mail": 1}
    assert smtp.messages == [] and smtp.logins == []


def test_a_failing_channel_is_retried_then_dropped_and_counted(caplog):
    key_url_part = "T000/B000/XXXXsecretkey"
    with RecordingServer(Answer(500), Answer(500), Answer(200)) as flaky, RecordingServer(Answer(404)) as dead:
        n = Notifier([SlackChannel("flaky", flaky.url, frozenset({"applied"}), 5),
                      SlackChannel("dead", f"{dead.url}/services/{key_url_part}", frozenset({"applied"}), 5)],
                     max_attempts=3, backoff=no_wait)
        with caplog.at_level(logging.DEBUG, logger="forescale.notify"):
            n.event("applied", "web", {"plan": PLAN}, at=AT)
            assert n.flush()
        n.close()
    assert len(flaky.requests) == 3 and n.sent["flaky"] == 1 and n.dropped["flaky"] == 0
    assert len(dead.requests) == 3 and n.sent["dead"] == 0 and n.dropped["dead"] == 1
    assert "notify dead: dropped applied for web after 3 attempts (HTTP 404)" in caplog.text
    assert key_url_part not in caplog.text


def test_a_hung_channel_blocks_neither_the_caller_nor_the_other_channels():
    release = threading.Event()
    with RecordingServer(Answer(hold=release)) as hung, RecordingServer() as ok:
        n = Notifier([WebhookChannel("hung", hung.url, frozenset({"applied", "failed"}), 30),
                      WebhookChannel("ok", ok.url, frozenset({"applied", "failed"}), 30)],
                     queue_size=2, backoff=no_wait)
        n.event("applied", "web", {"plan": PLAN}, at=AT)
        assert hung.arrived.wait(10)  # the hung channel's thread is stuck in its request
        for i in range(3):  # the caller goes on; the hung channel's queue (2) overflows by one
            n.event("failed", "web", {"plan": PLAN, "error": "x"}, at=AT)
            for _ in range(500):  # the other channel delivers each meanwhile
                if len(ok.requests) == i + 2:
                    break
                threading.Event().wait(0.02)
        assert [r.json["kind"] for r in ok.requests] == ["applied", "failed", "failed", "failed"]
        assert n.dropped == {"hung": 1, "ok": 0} and len(hung.requests) == 1
        release.set()
        assert n.flush()
        n.close()
    assert n.sent == {"hung": 3, "ok": 4}


def test_a_fallback_streak_is_told_once_per_streak():
    with RecordingServer() as hook:
        n = Notifier([WebhookChannel("hook", hook.url, frozenset({"fallback_streak"}), 5)], fallback_streak=3)
        fb, ok = {**DECISION, "fallback": True}, DECISION
        for d in (fb, fb, ok, fb, fb, fb, fb, fb):
            n.cycle("web", d, at=AT)
        n.cycle("db", fb, at=AT)  # another target keeps its own count
        assert n.flush()
        n.close()
    (r,) = hook.requests
    assert r.json["kind"] == "fallback_streak" and r.json["details"]["streak"] == 3
    assert r.json["summary"].startswith("web: 3 consecutive fallback cycles")


def test_without_links_the_message_names_the_cli_commands():
    with RecordingServer() as hook:
        n = Notifier([WebhookChannel("hook", hook.url, frozenset({"plan_created"}), 5)])
        n.event("plan_created", "web", {"plan": PLAN}, at=AT)
        assert n.flush()
        n.close()
    assert hook.requests[0].json["links"] == {"approve": "forescale approve ab12cd34",
                                              "reject": "forescale reject ab12cd34"}


def test_channels_come_from_the_notify_section_with_secrets_from_the_environment():
    cfg = NotifyConfig.model_validate({"channels": [
        {"type": "dingtalk", "url_env": "DING_URL", "secret_env": "DING_SECRET"},
        {"type": "email", "host": "smtp.example", "from": "a@b.c", "to": ["d@e.f"], "username": "u",
         "password_env": "SMTP_PASS"}]})
    env = {"DING_URL": "https://oapi.dingtalk.com/robot/send?access_token=abc", "DING_SECRET": "SECxyz123"}
    with pytest.raises(ConfigError) as exc:
        Notifier.from_config(cfg, environ=env)
    assert str(exc.value) == "notify.channels[1].password_env: environment variable SMTP_PASS is not set"
    n = Notifier.from_config(cfg, environ={**env, "SMTP_PASS": "hunter2hunter2"})
    try:
        ding, mail = n.channels
        assert isinstance(ding, DingTalkChannel) and ding.secret == "SECxyz123" and ding.name == "dingtalk"
        assert isinstance(mail, EmailChannel) and mail.password == "hunter2hunter2" and mail.port == 587
        assert n.redact("x hunter2hunter2 SECxyz123 y") == "x *** *** y"
    finally:
        n.close()


def test_a_real_cycle_plan_approval_and_apply_are_each_told_once(tmp_path):
    """The engine hooks: PlanNotices.poll after each cycle tells a new plan
    (with its links), the approval (who, through which channel) and the
    apply; notify_result counts the fallback streak."""
    from datetime import timedelta

    from engine.notify import PlanNotices, notify_result
    from engine.plans import approve
    from engine.store import Store
    from tests.support.live import T0, STEP, Platform, build_live, target_dict, write_config, write_trace

    trace = write_trace(tmp_path / "load.csv", [100.0] * 30)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="approve", plan_ttl="1h")])
    with RecordingServer() as hook, Store(tmp_path / "state.db") as store:
        n = Notifier([WebhookChannel("hook", hook.url, frozenset(EVENTS_ALL), 5)], links=links)
        notices = PlanNotices(n, store)
        live = build_live(cfg, store, Platform(capacity=5))
        now = T0 + 25 * STEP
        res = live.run(now)
        assert res.status == "planned"
        notify_result(n, res)
        assert notices.poll(store) == 1
        approve(store, res.plan.id, now + timedelta(minutes=1), identity="user:alice", channel="console",
                comment="looks right")
        res2 = live.run(now + STEP)
        notify_result(n, res2)
        assert notices.poll(store) == 2 and notices.poll(store) == 0
        assert n.flush()
        n.close()
    kinds = [r.json["kind"] for r in hook.requests]
    assert kinds == ["plan_created", "plan_approved", "applied"]
    created, approved, applied = (r.json for r in hook.requests)
    pid = res.plan.id
    assert created["summary"].startswith(f"web: scale 5 -> 20 at {now:%H:%M} (forecast peak 100 needs 20")
    assert created["links"] == {"approve": f"https://console.example/l/{pid}-approve-hook",
                                "reject": f"https://console.example/l/{pid}-reject-hook"}
    assert approved["summary"] == f"web: plan {pid} (5 -> 20) approved by user:alice via console: looks right"
    assert applied["summary"] == f"web: scaled 5 -> 20 (plan {pid})"
    # a transition's reason is no error: only a failure carries one
    assert created["details"]["reason"] == "planned" and "error" not in created["details"]


def _up_and_down(tmp_path, hook, *, catch_up: int = 20):
    """The daemon's notifications (engine.cli._People, from the config's
    ``notify`` section) started and stopped: a restart is a new one."""
    import yaml

    from engine.cli import _People
    from engine.config import load_config
    from tests.support.live import target_dict, write_config, write_trace

    cfg_path = tmp_path / "c.yaml"
    if not cfg_path.exists():
        trace = write_trace(tmp_path / "load.csv", [100.0] * 40)
        write_config(cfg_path, [target_dict("web", trace, mode="approve", plan_ttl="1h")])
    doc = yaml.safe_load(cfg_path.read_text())
    doc["notify"] = {"channels": [{"type": "webhook", "name": "hook", "url": hook.url}], "catch_up": catch_up}
    cfg_path.write_text(yaml.safe_dump(doc))
    return _People(load_config(cfg_path)), cfg_path


def test_a_restarted_daemon_tells_what_happened_while_it_was_down_and_nothing_twice(tmp_path):
    from datetime import timedelta

    from engine.plans import reject
    from engine.store import Store
    from tests.support.live import STEP, T0, Platform, build_live

    now = T0 + 25 * STEP
    with RecordingServer() as hook:
        people, cfg = _up_and_down(tmp_path, hook)
        live = build_live(cfg, people.store, Platform(capacity=5))
        first = live.run(now).plan
        people.notices.poll(people.store)
        people.close()
        assert [r.json["kind"] for r in hook.requests] == ["plan_created"]

        # while the daemon is down: a person rejects the plan (what `forescale
        # reject` does) and `forescale once` plans again
        with Store(tmp_path / "state.db") as store:
            reject(store, first.id, now + timedelta(minutes=1), identity="user:bob", channel="cli",
                   comment="not now")
            second = build_live(cfg, store, Platform(capacity=5)).run(now + STEP).plan
        assert second is not None and second.id != first.id

        people, _ = _up_and_down(tmp_path, hook)
        assert people.notices.poll(people.store) == 2
        people.close()
        # and once more with nothing new: nothing is told again
        people, _ = _up_and_down(tmp_path, hook)
        assert people.notices.poll(people.store) == 0
        people.close()
    told = [(r.json["kind"], r.json["details"]["plan"]["id"]) for r in hook.requests]
    assert told == [("plan_created", first.id), ("plan_rejected", first.id), ("plan_created", second.id)]
    assert hook.requests[1].json["summary"] == f"web: plan {first.id} (5 -> 20) rejected by user:bob via cli: not now"


def test_after_a_long_outage_only_the_newest_events_are_sent_after_one_line_saying_so(tmp_path):
    from datetime import timedelta

    from engine.plans import reject
    from engine.store import Store
    from tests.support.live import STEP, T0, Platform, build_live

    now = T0 + 25 * STEP
    with RecordingServer() as hook:
        people, cfg = _up_and_down(tmp_path, hook, catch_up=1)
        people.close()  # the channel's cursor: before anything happened
        with Store(tmp_path / "state.db") as store:  # three events while it is down
            live = build_live(cfg, store, Platform(capacity=5))
            first = live.run(now).plan
            reject(store, first.id, now + timedelta(minutes=1), identity="user:bob", channel="cli")
            second = live.run(now + STEP).plan
        people, _ = _up_and_down(tmp_path, hook, catch_up=1)
        assert people.notices.poll(people.store) == 1
        people.close()
    assert [r.json["kind"] for r in hook.requests] == ["missed", "plan_created"]
    assert hook.requests[0].json["summary"] == ("forescale: 2 plan events while notifications were down are not "
                                                "sent (the newest 1 follow); see forescale plans --all")
    assert hook.requests[1].json["details"]["plan"]["id"] == second.id


def test_a_message_that_is_not_yet_sent_holds_the_channels_cursor():
    """The cursor passes a transition only once its message is settled
    (sent or given up), so a stop with a hung channel tells it again."""
    hold = threading.Event()
    with RecordingServer(Answer(hold=hold), Answer()) as hook:
        n = Notifier([WebhookChannel("hook", hook.url, frozenset(EVENTS_ALL), 5)])
        n.event("plan_approved", "web", {"plan": PLAN, "identity": "user:a"}, seq=7)
        n.event("plan_rejected", "web", {"plan": PLAN, "identity": "user:a"}, seq=9)
        assert hook.arrived.wait(5)
        assert n.unsettled("hook") == 7
        hold.set()
        assert n.flush()
        assert n.unsettled("hook") is None
        n.close()


# ------------------------------------------------ replicas on a PostgreSQL state
from datetime import timedelta  # noqa: E402

from tests.support.postgres import pg_server, pg_url  # noqa: E402,F401 - fixtures


def _propose(store, target: str, k: int):
    """A plan of ``target`` (its decision recorded with it), as a cycle makes one."""
    from engine.core.types import Plan, PlanStatus
    from tests.engine.test_store import NOW, make_decision

    at = NOW + timedelta(minutes=k)
    d = make_decision(at, target=target)
    p = Plan(id=f"{target}-{k}", target=target, decision_id=d.id, from_capacity=10, to_capacity=18,
             observed_capacity=10, created_at=at, expires_at=at + timedelta(hours=1), status=PlanStatus.PENDING,
             description=f"set {target} to 18")
    store.save_plan(p, decision=(d, "approve", None))
    return p


def _told_and_due(store, hook):
    """Per (plan, status) of every transition that is news: how often the
    receiver got it."""
    from collections import Counter

    from engine.notify import _TRANSITION_KINDS

    due = {(r[0], r[1]) for r in store.db.execute("SELECT plan_id, to_status FROM plan_transitions")
           if r[1] in _TRANSITION_KINDS}
    told = Counter((r.json["details"]["plan"]["id"], r.json["details"]["status"]) for r in hook.requests
                   if r.json["kind"] != "missed")
    return told, due


def test_two_replicas_tell_every_plan_event_once_across_a_failover(pg_url):
    """Two replicas (two stores, two leases, two notifiers) on one real
    PostgreSQL state, one real webhook receiver: each tells the shards it
    leads; the first is killed (its lease runs out, it never closes), plans
    move meanwhile; the other takes its shards over and tells from the
    cursors the dead one left. Every plan event reaches the receiver
    exactly once, none lost; the dead one, waking, tells nothing and
    cannot move a cursor."""
    from engine.core.errors import LeaseLost
    from engine.leases import Leases
    from engine.plans import approve, reject
    from engine.store import open_store
    from tests.engine.test_daemon import FakeMono
    from tests.engine.test_store import NOW

    shards = 4
    targets = [f"svc-{i}" for i in range(8)]
    from engine.leases import shard_of

    assert {shard_of(t, shards) for t in targets} == set(range(shards))
    a, b = open_store(pg_url), open_store(pg_url)
    mono_a = FakeMono()
    la = Leases(a, shards=shards, lease_s=30, monotonic=mono_a)
    lb = Leases(b, shards=shards, lease_s=30)
    la.renew()
    lb.renew()
    la.renew()  # two live replicas: a hands back half
    lb.renew()
    assert len(la.held()) == len(lb.held()) == 2
    with RecordingServer() as hook:
        na = Notifier([WebhookChannel("hook", hook.url, frozenset(EVENTS_ALL), 5)], backoff=no_wait)
        nb = Notifier([WebhookChannel("hook", hook.url, frozenset(EVENTS_ALL), 5)], backoff=no_wait)
        try:
            from engine.notify import PlanNotices

            pa, pb = PlanNotices(na, a, la), PlanNotices(nb, b, lb)
            first = [_propose(a if i % 2 else b, t, 1) for i, t in enumerate(targets)]
            assert pa.poll(a) + pb.poll(b) == len(targets)
            assert na.flush() and nb.flush()
            mine = {t for t in targets if la.holds(t)}  # a's targets
            assert mine and len(mine) < len(targets)
            approve(b, first[0].id, NOW + timedelta(minutes=2), identity="user:ana", channel="console")
            reject(a, first[1].id, NOW + timedelta(minutes=2), identity="user:bo", channel="cli")
            assert pa.poll(a) + pb.poll(b) == 2
            assert na.flush() and nb.flush()
            # a is killed: it stops renewing and never closes; plans move meanwhile
            second = [_propose(b, t, 3) for t in targets]
            reject(b, first[2].id, NOW + timedelta(minutes=3), identity="user:ana", channel="console")
            assert pb.poll(b) == sum(1 for t in targets if not la.holds(t)) + (
                0 if la.holds(first[2].target) else 1)  # b tells only its own shards yet
            assert nb.flush()
            b.db.execute("UPDATE leases SET expires_at = clock_timestamp() - interval '1 second' "
                         "WHERE holder = ?", (la.holder,))
            b.db.execute("UPDATE replicas SET seen_at = clock_timestamp() - interval '1 hour' WHERE holder = ?",
                         (la.holder,))
            mono_a.t += 31  # (and a's own clock says its lease ran out too)
            lb.renew()
            assert set(lb.held()) == set(range(shards))  # b took every shard over
            told_after = pb.poll(b)
            assert told_after == len(mine) + (1 if first[2].target in mine else 0)
            reject(a, second[0].id, NOW + timedelta(minutes=4), identity="user:bo", channel="cli")
            assert pb.poll(b) == 1
            assert nb.flush()
            # a wakes up: it leads nothing and tells nothing, and its cursor write is fenced
            assert pa.poll(a) == 0 and na.flush()
            with pytest.raises(LeaseLost):
                a.save_notify_shard_cursor("hook", shards, shard_of(targets[0], shards), 10 ** 6, NOW,
                                           fence=lambda db: la.check_shard(db, shard_of(targets[0], shards)))
            told, due = _told_and_due(b, hook)
            assert set(told) == due and len(due) == 2 * len(targets) + 4
            assert max(told.values()) == 1, [k for k, v in told.items() if v > 1]
            assert not any(r.json["kind"] == "missed" for r in hook.requests)
            rows = b.db.execute("SELECT shard, seq, holder FROM notify_shard_cursors WHERE shards = ?",
                                (shards,)).fetchall()
            newest = b.db.execute("SELECT MAX(seq) FROM plan_transitions").fetchone()[0]
            assert {r[0] for r in rows} == set(range(shards)) and {r[2] for r in rows} == {lb.holder}
            assert all(r[1] == newest for r in rows)
        finally:
            na.close()
            nb.close()
            a.close()
            b.close()


def test_a_version_4_state_resumes_from_its_channel_cursor_after_the_upgrade(tmp_path):
    """A state file of schema 4 kept one cursor per channel: upgraded to 5,
    the channel's cursor is where every shard starts, so what happened
    after it is told and nothing before it again."""
    from engine.plans import reject
    from engine.store import SCHEMA_VERSION, Store
    from tests.support.live import STEP, T0, Platform, build_live

    now = T0 + 25 * STEP
    with RecordingServer() as hook:
        people, cfg = _up_and_down(tmp_path, hook)
        first = build_live(cfg, people.store, Platform(capacity=5)).run(now).plan
        assert people.notices.poll(people.store) == 1
        people.close()
        with Store(tmp_path / "state.db") as s:  # as forescale of schema 4 left it
            told = s.db.execute("SELECT MAX(seq) FROM plan_transitions").fetchone()[0]
            s.db.execute("DROP TABLE notify_shard_cursors")
            s.db.execute("DROP INDEX plan_transitions_seq")
            s.save_notify_cursors({"hook": told}, now)
            s.db.execute("PRAGMA user_version=4")
            reject(s, first.id, now + timedelta(minutes=1), identity="user:bob", channel="cli")
        people, _ = _up_and_down(tmp_path, hook)
        assert people.store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        assert people.notices.poll(people.store) == 1
        people.close()
    assert [r.json["kind"] for r in hook.requests] == ["plan_created", "plan_rejected"]


def test_a_message_still_queued_when_its_shard_is_taken_over_is_told_by_the_new_holder_only(pg_url):
    """The channel hangs on one message while another waits behind it; the
    replica's lease runs out and another replica takes the shard over. The
    waiting message is not sent by the old holder (its shard is no longer
    its own) but by the new one, once; the one that was on its way when
    the takeover came is told again by the new holder: the one window in
    which an event is told twice."""
    from engine.leases import Leases
    from engine.notify import PlanNotices
    from engine.store import open_store
    from tests.engine.test_daemon import FakeMono

    hold = threading.Event()
    a, b = open_store(pg_url), open_store(pg_url)
    mono_a = FakeMono()
    la = Leases(a, shards=2, lease_s=30, monotonic=mono_a)
    lb = Leases(b, shards=2, lease_s=30)
    la.renew()
    with RecordingServer(Answer(hold=hold), Answer()) as hook:
        na = Notifier([WebhookChannel("hook", hook.url, frozenset(EVENTS_ALL), 5)], backoff=no_wait)
        nb = Notifier([WebhookChannel("hook", hook.url, frozenset(EVENTS_ALL), 5)], backoff=no_wait)
        try:
            pa = PlanNotices(na, a, la)
            pa.poll(a)  # a leads both shards
            first, second = _propose(a, "web", 1), _propose(a, "web", 2)
            assert pa.poll(a) == 2
            assert hook.arrived.wait(5)  # the first is on its way, the second waits behind it
            mono_a.t += 31  # a's lease runs out ...
            b.db.execute("UPDATE leases SET expires_at = clock_timestamp() - interval '1 second'")
            b.db.execute("UPDATE replicas SET seen_at = clock_timestamp() - interval '1 hour'")
            lb.renew()  # ... and b takes both shards over
            assert len(lb.held()) == 2
            hold.set()
            assert na.flush()
            assert [r.json["details"]["plan"]["id"] for r in hook.requests] == [first.id]  # not the second
            pb = PlanNotices(nb, b, lb)
            assert pb.poll(b) == 2 and nb.flush()
        finally:
            hold.set()
            na.close()
            nb.close()
            a.close()
            b.close()
    assert [r.json["details"]["plan"]["id"] for r in hook.requests] == [first.id, first.id, second.id]


def test_a_planners_reason_is_its_plan_steps_words_not_the_first_steps_median():
    """It read "forecast peak 307 needs 5": 307 was only the first planned
    step's median, and the 5 came from the reactive floor."""
    from engine.notify import _why

    decision = {**DECISION, "current": 3, "desired": 5, "recommendation": 5, "forecast_demand": 307.0,
                "steps": [{"name": "data", "value": 3, "reason": "DataOK", "message": "ok", "changed": False},
                          {"name": "plan", "value": 4, "reason": "PlannedScaleUp", "changed": True,
                           "message": "scale up to 4: the 22:00 UTC peak (median 342.5) needs 4, ordered now "
                                      "given the 10 m lead time; plan over 2 h: 1 change(s)"},
                          {"name": "reactive", "value": 5, "reason": "ReactiveOverride", "message": "",
                           "changed": True}]}
    assert _why(decision) == ("scale up to 4: the 22:00 UTC peak (median 342.5) needs 4, ordered now given the "
                              "10 m lead time; ReactiveOverride")
