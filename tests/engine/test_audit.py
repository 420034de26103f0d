"""The audit log (engine/audit.py) on real SQLite files: every kind of
tampering a database editor can do is detected and the first bad record is
named, the HMAC key stops a recomputed chain, ``forescale decisions`` no
longer shows a forged row as genuine, export and show work through the CLI,
and a writer killed with SIGKILL at random moments never loses or corrupts
an acknowledged record."""

from __future__ import annotations

import csv
import json
import os
import random
import select
import signal
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest

from engine import audit, cli
from engine.audit import decision_context, reconstruct, verify, verify_tail
from engine.core.types import ActuationResult, Decision, Step
from engine.plans import approve
from engine.store import Store, open_store

from tests.support.live import STEP, Platform, build_live, target_dict, write_config, write_trace
from tests.support.postgres import pg_server  # noqa: F401 - the session's server

UTC = timezone.utc
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def decision(i: int, desired: int = 8, current: int = 4, target: str = "web") -> Decision:
    return Decision(target=target, at=NOW + i * STEP, current=current, desired=desired, recommendation=desired,
                    steps=(Step("bounds", desired, "WithinBounds", "within [1, 50]"),), model="persistence",
                    model_version="v1")


@pytest.fixture
def path(tmp_path):
    return tmp_path / "state.db"


@pytest.fixture(params=["sqlite", "postgres"])
def state(request, tmp_path):
    """The state file, or a fresh PostgreSQL database (its URL): the chain
    is checked the same way on both."""
    if request.param == "sqlite":
        return tmp_path / "state.db"
    return request.getfixturevalue("pg_server").fresh_database()


def fill(path, n: int = 5, key: bytes | None = None) -> None:
    """A chain of several kinds: decisions, a status change, an actuation."""
    with open_store(path, audit_key=key) as s:
        for i in range(n):
            s.record_decision(decision(i), "auto", "intent", NOW + i * STEP)
        s.set_decision_status(decision(0).id, "applied", NOW + STEP, outcome={"observed": 8})
        s.record_actuation("web", decision(0).id, NOW + STEP,
                           ActuationResult(8, 8, True, timedelta(seconds=30), ("req-1",)))


def raw(path, sql: str, *args) -> None:
    """SQL behind forescale's back (sqlite3, or psycopg on a database URL)."""
    if isinstance(path, str):
        import psycopg

        with psycopg.connect(path, autocommit=True) as conn:
            for stmt in ([sql] if args else [x for x in sql.split(";") if x.strip()]):
                conn.execute(stmt.replace("?", "%s"), args or None)
        return
    db = sqlite3.connect(path)
    if args:
        db.execute(sql, args)
    else:
        db.executescript(sql)
    db.commit()
    db.close()


def status(path, key: bytes | None = None):
    with open_store(path, audit_key=key) as s:
        return verify(s)


# ------------------------------------------------------------------ the chain
def test_a_chain_written_by_forescale_verifies_and_links_every_record(state):
    path = state
    fill(path)
    st = status(path)
    assert st.ok and st.records == st.checked == 7 and st.first_bad is None
    with open_store(path) as s:
        recs = list(audit.records(s))
    assert [r["seq"] for r in recs] == list(range(1, 8))
    assert recs[0]["prev"] == audit.GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(recs, recs[1:]))
    assert {r["kind"] for r in recs} == {"decision", "actuation"}
    assert recs[-1]["payload"]["request_ids"] == ["req-1"]


@pytest.mark.parametrize("tamper, bad, why", [
    # an edited payload: its own hash fails
    ("UPDATE audit SET payload=replace(payload, '\"desired\":8', '\"desired\":60') WHERE seq=3", 3,
     "hash does not match its content"),
    # a deleted record: a gap in seq, named at the record after it
    ("DELETE FROM audit WHERE seq=4", 5, "record 4 missing"),
    # an inserted record (renumbered to make room): its prev does not link
    ("UPDATE audit SET seq=seq+100 WHERE seq>=3", 103, "missing"),
    # two records swapped: the first one out of place fails
    ("UPDATE audit SET seq=-2 WHERE seq=2; UPDATE audit SET seq=2 WHERE seq=3; UPDATE audit SET seq=3 WHERE seq=-2",
     2, "prev does not match"),
    # a different hash written in: the next record no longer links to it
    ("UPDATE audit SET hash='" + "ab" * 32 + "' WHERE seq=6", 6, "hash does not match"),
    # a decision row edited (the chain itself intact): the row disagrees with its record
    ("UPDATE decisions SET desired=60 WHERE id='web@2024-03-01T12:10:00Z'", 3, "row differs from audit record 3"),
])
def test_verify_names_the_first_bad_record_for_every_kind_of_tampering(state, tamper, bad, why):
    path = state
    fill(path)
    raw(path, tamper)
    st = status(path)
    assert not st.ok and st.first_bad == bad and why in st.reason, st


def test_a_record_inserted_with_a_correct_looking_hash_breaks_the_next_link(state):
    path = state
    fill(path)
    with open_store(path) as s:
        r3 = s.db.execute("SELECT * FROM audit WHERE seq=3").fetchone()
    # the forger shifts records 3.. up and inserts a well-formed record 3 linked to 2
    raw(path, "UPDATE audit SET seq=seq+1000 WHERE seq>=3")
    raw(path, "UPDATE audit SET seq=seq-999 WHERE seq>=1003")
    payload = audit.canonical({"decision_id": "web@forged", "status": "applied"})
    h = audit._digest(3, r3["at"], "decision", None, None, payload, r3["prev"], None)
    raw(path, "INSERT INTO audit VALUES (3, ?, 'decision', NULL, NULL, ?, ?, ?, 'sha256')", r3["at"], payload,
        r3["prev"], h)
    st = status(path)
    assert not st.ok and st.first_bad == 4 and "prev does not match the hash of record 3" in st.reason


def test_with_a_key_a_chain_recomputed_without_it_is_detected(path):
    key = b"k" * 32
    fill(path, key=key)
    assert status(path, key).ok and status(path, key).keyed
    # the editor changes record 3 and recomputes every hash from there, without the key
    with Store(path, audit_key=b"") as s:
        rows = s.db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
    prev = rows[1]["hash"]
    for r in rows[2:]:
        payload = r["payload"].replace('"desired":8', '"desired":60')
        h = audit._digest(r["seq"], r["at"], r["kind"], r["decision_id"], r["plan_id"], payload, prev, None)
        raw(path, "UPDATE audit SET payload=?, hash=?, prev=?, mac='sha256' WHERE seq=?", payload, h, prev, r["seq"])
        prev = h
    st = status(path, key)
    assert not st.ok and st.first_bad == 3 and "no HMAC though earlier records do" in st.reason
    # and a keyed chain read without the key says what is missing
    fill(path.with_name("k.db"), key=key)
    st = status(path.with_name("k.db"), None)
    assert not st.ok and st.first_bad == 1 and "set FORESCALE_AUDIT_KEY" in st.reason


def test_a_wrong_key_fails_at_the_first_keyed_record(path):
    fill(path, key=b"right")
    st = status(path, b"wrong")
    assert not st.ok and st.first_bad == 1 and "hash does not match" in st.reason
    assert "or signed with another key than the one set" in st.reason


def test_nothing_without_the_key_is_written_to_a_keyed_chain(tmp_path, capsys, monkeypatch):
    """Someone who approves without the key would append a record without
    the HMAC, after which every verify fails there for good (hiding any
    later edit): the approval is refused, nothing is written, and the chain
    still verifies with the key."""
    now = NOW
    monkeypatch.setenv("FORESCALE_AUDIT_KEY", "k" * 32)
    trace = write_trace(tmp_path / "load.csv", [100.0] * 30, start=now - 25 * STEP)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="approve", plan_ttl="1h")])
    store = Store(tmp_path / "state.db")
    plan = build_live(cfg, store, Platform(capacity=5)).run(now).plan
    store.close()
    monkeypatch.delenv("FORESCALE_AUDIT_KEY")
    rc, out, err = run_cli(capsys, "approve", plan.id, "--config", str(cfg))
    assert rc == 2 and "the audit chain is HMAC-signed" in err and "set FORESCALE_AUDIT_KEY" in err
    assert "k" * 32 not in err and "approved" not in out
    monkeypatch.setenv("FORESCALE_AUDIT_KEY", "k" * 32)
    with Store(tmp_path / "state.db") as s:
        assert s.plan(plan.id).status.value == "pending"
        st = verify(s)
    assert st.ok and st.keyed and st.unkeyed == 0


def test_audit_commands_refuse_a_bad_tail_or_output_path_in_one_line(live_db, capsys, tmp_path):
    cfg, db, plan = live_db
    for bad in ("-3", "0", "x"):
        with pytest.raises(SystemExit) as e:
            cli.main(["audit", "verify", "--config", str(cfg), "--tail", bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument --tail: {bad!r} is not a whole number of at least 1" in err
    rc, out, _ = run_cli(capsys, "audit", "verify", "--config", str(cfg), "--tail", "2")
    assert rc == 0 and "2 of" in out
    rc, _, err = run_cli(capsys, "audit", "export", "--config", str(cfg), "--out", str(tmp_path / "no" / "x.jsonl"))
    assert rc == 2 and err.startswith("forescale: error: --out ") and "cannot write it" in err
    assert "Traceback" not in err


def test_verify_tail_checks_the_newest_records_and_their_link(path):
    fill(path, n=10)
    with Store(path) as s:
        st = verify_tail(s, 3)
    assert st.ok and st.checked == 3 and st.records == 12 and st.head[0] == 12
    raw(path, "UPDATE audit SET payload=payload||' ' WHERE seq=11")
    with Store(path) as s:
        assert verify_tail(s, 3).first_bad == 11
        assert verify_tail(s, 1).ok  # record 12 still links to the stored hash of 11
        assert not verify_tail(s, 2).ok


def test_an_empty_chain_is_ok(path):
    assert status(path).ok and status(path).records == 0


# ------------------------------------------------------- the user-visible effect
@pytest.fixture
def live_db(tmp_path):
    """A real approve-mode target that planned, was approved and applied."""
    now = NOW
    trace = write_trace(tmp_path / "load.csv", [100.0] * 30, start=now - 25 * STEP)
    t = target_dict("web", trace, mode="approve", plan_ttl="1h")
    cfg = write_config(tmp_path / "c.yaml", [t])
    store = Store(tmp_path / "state.db")
    live = build_live(cfg, store, Platform(capacity=5))
    res = live.run(now)
    approve(store, res.plan.id, now + timedelta(seconds=5), identity="unix:alice", channel="cli", comment="go")
    res2 = live.run(now + STEP)
    assert res2.details["plans_applied"] == [res.plan.id]
    store.close()
    return cfg, tmp_path / "state.db", res.plan


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_decision_row_edited_with_sqlite_is_detected_by_verify_and_marked_by_decisions(live_db, capsys):
    cfg, db, plan = live_db
    rc, out, _ = run_cli(capsys, "audit", "verify", "--config", str(cfg))
    assert rc == 0 and out.startswith("audit chain ok:")
    rc, out, _ = run_cli(capsys, "decisions", "--config", str(cfg), "--json")
    assert rc == 0 and all(r["audit"] is None for r in json.loads(out))
    raw(db, "UPDATE decisions SET desired=60, decision=replace(decision, '\"desired\": 20', '\"desired\": 60')"
            " WHERE id=?", plan.decision_id)
    rc, out, _ = run_cli(capsys, "audit", "verify", "--config", str(cfg))
    assert rc == 1 and f"decision {plan.decision_id}: row differs from audit record" in out
    rc, out, err = run_cli(capsys, "decisions", "--config", str(cfg))
    assert rc == 1 and f"!! NOT GENUINE: {plan.decision_id}: row differs from audit record" in out
    assert "disagree with the audit chain" in err
    rc, out, _ = run_cli(capsys, "decisions", "--config", str(cfg), "--json")
    forged = next(r for r in json.loads(out) if r["id"] == plan.decision_id)
    assert forged["desired"] == 60 and "edited outside forescale" in forged["audit"]


def test_a_decision_row_put_back_to_an_older_genuine_version_is_detected(tmp_path, capsys):
    """The row of a decision that was approved and applied, copied back from
    a backup taken while its plan was pending, with the newer entries of the
    ``audit_rows`` index deleted: the row matches an older record exactly,
    but the chain itself holds the newer ones that changed it since."""
    now = NOW
    trace = write_trace(tmp_path / "load.csv", [100.0] * 30, start=now - 25 * STEP)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="approve", plan_ttl="1h")])
    store = Store(tmp_path / "state.db")
    live = build_live(cfg, store, Platform(capacity=5))
    plan = live.run(now).plan
    pending_row = dict(store.db.execute("SELECT * FROM decisions WHERE id=?", (plan.decision_id,)).fetchone())
    approve(store, plan.id, now + timedelta(seconds=5), identity="unix:alice", channel="cli", comment="go")
    assert live.run(now + STEP).details["plans_applied"] == [plan.id]
    first = store.db.execute("SELECT MIN(seq) FROM audit_rows WHERE decision_id=?", (plan.decision_id,)).fetchone()[0]
    store.close()
    db = tmp_path / "state.db"
    raw(db, "DELETE FROM decisions WHERE id=?", plan.decision_id)
    cols = ", ".join(pending_row)
    raw(db, f"INSERT INTO decisions({cols}) VALUES ({', '.join('?' * len(pending_row))})", *pending_row.values())
    raw(db, "DELETE FROM audit_rows WHERE decision_id=? AND seq>?", plan.decision_id, first)
    rc, out, _ = run_cli(capsys, "audit", "verify", "--config", str(cfg))
    assert rc == 1 and f"decision {plan.decision_id}: row differs from audit record" in out, out
    rc, out, _ = run_cli(capsys, "decisions", "--config", str(cfg), "--json")
    forged = next(r for r in json.loads(out) if r["id"] == plan.decision_id)
    assert rc == 1 and forged["status"] == "planned" and "edited outside forescale" in forged["audit"]
    rc, out, _ = run_cli(capsys, "audit", "show", plan.decision_id, "--config", str(cfg))
    assert rc == 1 and "edited outside forescale" in out
    # the index alone edited (the row left as it is) is tampering too
    raw(db, "DELETE FROM decisions WHERE id=?", plan.decision_id)
    rc, out, _ = run_cli(capsys, "audit", "verify", "--config", str(cfg))
    assert rc == 1 and "the audit_rows index names record" in out, out


def test_an_edited_or_deleted_plan_history_row_is_detected_and_marked_by_plans(live_db, capsys):
    """Who approved a plan, as ``forescale plans --history`` shows it, is
    checked against the approval record; the history is never pruned, so a
    deleted transition is tampering too; and a plan row whose status was set
    with ``sqlite3`` is marked wherever it is listed."""
    cfg, db, plan = live_db
    rc, out, _ = run_cli(capsys, "plans", "--config", str(cfg), "--all", "--history")
    assert rc == 0 and "NOT GENUINE" not in out and "unix:alice" in out
    raw(db, "UPDATE plan_transitions SET identity='unix:mallory' WHERE to_status='approved'")
    rc, out, _ = run_cli(capsys, "audit", "verify", "--config", str(cfg))
    assert rc == 1 and f"plan {plan.id}: history row" in out and "differs from its audit record in identity" in out
    rc, out, err = run_cli(capsys, "plans", "--config", str(cfg), "--all", "--history")
    assert rc == 1 and "unix:mallory" in out and "!! NOT GENUINE" in out and "in identity" in out
    assert "disagree with the audit chain" in err
    rc, out, _ = run_cli(capsys, "plans", "--config", str(cfg), "--all", "--history", "--json")
    (p,) = json.loads(out)
    (appr,) = [t for t in p["history"] if t["to"] == "approved"]
    assert rc == 1 and "in identity" in appr["audit"]
    assert all(t["audit"] is None for t in p["history"] if t["to"] != "approved")
    raw(db, "DELETE FROM plan_transitions WHERE to_status='approved'")
    rc, out, _ = run_cli(capsys, "audit", "verify", "--config", str(cfg))
    assert rc == 1 and "is missing (deleted outside forescale" in out
    rc, out, _ = run_cli(capsys, "plans", "--config", str(cfg), "--all", "--history")
    assert rc == 1 and "is missing (deleted outside forescale" in out
    raw(db, "UPDATE plans SET status='approved'")
    rc, out, _ = run_cli(capsys, "plans", "--config", str(cfg), "--all")
    assert rc == 1 and f"!! NOT GENUINE: plan {plan.id}: row (status approved) differs from audit record" in out


def test_a_cut_tail_is_named_as_such_where_the_indexes_still_name_its_records(live_db, capsys):
    """A hash chain alone cannot show its newest records deleted; the rows
    index and the plans' history, written in the same transactions, still
    name them, and verify says so instead of naming an older record."""
    cfg, db, plan = live_db
    with Store(db) as s:
        head = s.db.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
    raw(db, "DELETE FROM audit WHERE seq>=?", head - 1)
    rc, out, _ = run_cli(capsys, "audit", "verify", "--config", str(cfg))
    assert rc == 1 and f"BROKEN at record {head - 1}: records {head - 1}..{head} missing after the newest, " \
                       f"{head - 2}: the chain's tail was cut" in out, out


def test_audit_show_reconstructs_one_decision_end_to_end(live_db, capsys):
    cfg, db, plan = live_db
    rc, out, _ = run_cli(capsys, "audit", "show", plan.decision_id, "--config", str(cfg), "--json")
    assert rc == 0
    story = json.loads(out)
    d = story["decision"]
    assert d["current"] == 5 and d["desired"] == 20 and d["steps"] and d["model"] == "persistence"
    ctx = d["context"]
    assert len(ctx["config_sha256"]) == 64 and len(ctx["inputs"]["sha256"]) == 64
    assert ctx["forecast"]["model"] == "persistence" and ctx["forecast"]["horizon"] >= 1
    assert [(t["payload"]["from"], t["payload"]["to"]) for t in story["transitions"]] == [
        (None, "pending"), ("pending", "approved"), ("approved", "applying"), ("applying", "applied")]
    (appr,) = story["approvals"]
    assert (appr["identity"], appr["channel"], appr["comment"]) == ("unix:alice", "cli", "go")
    (act,) = story["actuations"]
    assert act["requested"] == 20 and act["request_ids"] == ["req-1"]
    assert story["verified"] and story["row_check"] is None
    rc, out, _ = run_cli(capsys, "audit", "show", plan.decision_id, "--config", str(cfg))
    assert rc == 0 and "pending -> approved by unix:alice via cli: go" in out and "request ids req-1" in out
    rc, _, err = run_cli(capsys, "audit", "show", "web@nope", "--config", str(cfg))
    assert rc == 2 and "holds nothing about decision 'web@nope'" in err


def test_audit_export_as_jsonl_and_csv_within_a_time_range(live_db, capsys, tmp_path):
    cfg, db, plan = live_db
    rc, out, _ = run_cli(capsys, "audit", "export", "--config", str(cfg))
    lines = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and [r["seq"] for r in lines] == list(range(1, len(lines) + 1)) and len(lines) >= 6
    # the export is self-checking: each record's hash recomputes from its fields
    for r in lines:
        assert r["hash"] == audit._digest(r["seq"], int(datetime.fromisoformat(r["at"].replace("Z", "+00:00"))
                                                          .timestamp()), r["kind"], r["decision_id"], r["plan_id"],
                                          audit.canonical(r["payload"]), r["prev"], None)
    since = (NOW + STEP).strftime("%Y-%m-%dT%H:%M:%SZ")
    out_csv = tmp_path / "audit.csv"
    rc, _, err = run_cli(capsys, "audit", "export", "--config", str(cfg), "--format", "csv", "--since", since,
                         "--out", str(out_csv))
    rows = list(csv.DictReader(out_csv.open()))
    assert rc == 0 and f"{len(rows)} audit record(s) written" in err
    assert rows and all(r["at"] >= since for r in rows) and len(rows) < len(lines)
    assert {"applied", "applying"} <= {json.loads(r["payload"]).get("to") for r in rows}
    rc, out, _ = run_cli(capsys, "audit", "export", "--config", str(cfg), "--until", since)
    assert all(json.loads(x)["at"] < since for x in out.splitlines())


def test_decision_context_digests_the_inputs_and_the_config():
    import numpy as np

    from engine.core.types import Series

    class T:
        def model_dump_json(self):
            return '{"name":"web"}'

    h = Series(np.array([0, 300, 600]), np.array([1.0, float("nan"), 3.0]))
    ctx = decision_context(T(), h, None)
    assert ctx["inputs"]["points"] == 3 and ctx["inputs"]["valid"] == 2
    assert ctx["config_sha256"] == audit.hashlib.sha256(b'{"name":"web"}').hexdigest()
    h2 = Series(np.array([0, 300, 600]), np.array([1.0, float("nan"), 3.5]))
    assert decision_context(T(), h2, None)["inputs"]["sha256"] != ctx["inputs"]["sha256"]


# ------------------------------------------------------------------ kill -9
def _writer(path: str, start: int, wfd: int) -> None:
    """The child: append records in a loop, acknowledging each after commit."""
    try:
        with Store(path) as s:
            i = start
            while True:
                d = decision(i, desired=1 + i % 40)
                s.record_decision(d, "auto", "intent", NOW + i * STEP)
                s.set_decision_status(d.id, "applied", NOW + i * STEP, outcome={"i": i})
                os.write(wfd, f"{d.id}\n".encode())  # acknowledged: committed before this line
                i += 1
    finally:
        os._exit(0)


def test_a_writer_killed_at_random_moments_never_loses_or_corrupts_an_acknowledged_record(path):
    rng = random.Random(7)
    acked: list[str] = []
    t0 = time.monotonic()
    kills = 0
    while kills < 50:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer process
            os.close(r)
            _writer(str(path), kills * 100_000, w)
        os.close(w)
        early = b""
        if kills % 2 == 0:  # every other kill lands while it is writing, after its first commit
            ready, _, _ = select.select([r], [], [], 20)
            assert ready, "the writer committed nothing in 20 s"
            early = os.read(r, 65536)
        time.sleep(rng.uniform(0.0, 0.05))  # else anywhere, from its start on
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(r, "rb") as f:
            acked += [x for x in (early + f.read()).decode().splitlines() if x]
        kills += 1
        with Store(path) as s:
            st = verify(s)
            assert st.ok, f"after kill {kills}: {st.summary()}"
            have = {row[0] for row in s.db.execute("SELECT id FROM decisions WHERE status='applied'")}
        missing = [a for a in acked if a not in have]
        assert not missing, f"after kill {kills}: acknowledged but lost: {missing[:3]}"
    assert len(acked) >= 25, "the writer should have committed records between kills"
    assert time.monotonic() - t0 < 60


def test_the_config_in_force_and_each_mode_change_are_recorded(tmp_path, path):
    from engine.config import load_config

    trace = write_trace(tmp_path / "load.csv", [1.0] * 3)
    one = load_config(write_config(tmp_path / "a.yaml", [target_dict("web", trace, mode="observe"),
                                                         target_dict("db", trace, mode="observe")]))
    two = load_config(write_config(tmp_path / "b.yaml", [target_dict("web", trace, mode="approve"),
                                                         target_dict("db", trace, mode="observe",
                                                                     policy={"max_replicas": 9})]))
    with Store(path) as s:
        audit.record_config(s, None, one, NOW, source="a.yaml")
        audit.record_config(s, one, two, NOW + STEP, source="b.yaml")
        recs = list(audit.records(s))
        assert verify(s).ok
    assert [r["kind"] for r in recs] == ["config_reload", "config_reload", "mode_change"]
    start, reload, mode = (r["payload"] for r in recs)
    assert start["event"] == "start" and set(start["targets"]) == {"web", "db"}
    assert reload["event"] == "reload" and reload["changed"] == ["db", "web"]
    assert reload["targets"]["db"] != start["targets"]["db"]
    assert mode == {"target": "web", "from": "observe", "to": "approve"}


@pytest.mark.parametrize("mode", ["observe", "dry-run", "auto"])
def test_every_mode_records_the_decision_with_its_inputs_forecast_and_config(tmp_path, mode):
    from engine.audit import config_digest

    trace = write_trace(tmp_path / "load.csv", [100.0] * 30, start=NOW - 25 * STEP)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode=mode)])
    with Store(tmp_path / "state.db") as s:
        live = build_live(cfg, s, Platform(capacity=5))
        res = live.run(NOW)
        story = reconstruct(s, res.decision.id)
        assert verify(s).ok
    d = story["decision"]
    assert d["desired"] == 20 and d["mode"] == mode
    assert d["context"]["config_sha256"] == config_digest(live.target)
    assert d["context"]["inputs"]["last"] == NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert d["context"]["forecast"]["point_max"] == 100.0
    if mode == "auto":
        assert story["actuations"][0]["request_ids"] == ["req-1"]


def test_rows_written_before_the_key_was_set_are_still_genuine_and_new_ones_are_keyed(path):
    fill(path, n=2)  # no key yet
    with Store(path, audit_key=b"now-a-key") as s:
        s.record_decision(decision(9), "auto", "intent", NOW + 9 * STEP)
        marks = audit.check_rows(s, s.decisions("web"))
        st = verify(s)
    assert set(marks.values()) == {None}
    assert st.ok and st.keyed and st.unkeyed == 4 and st.checked == 5
    assert "1 written" not in st.summary() and "4 written before the key" in st.summary()


def test_records_after_a_seq_are_a_feed_of_what_happened(path):
    fill(path, n=3)
    with Store(path) as s:
        assert [r["seq"] for r in audit.records(s, after=3)] == [4, 5]
        assert [r["kind"] for r in audit.records(s, after=3, kind="actuation")] == ["actuation"]
        assert list(audit.records(s, after=5)) == []


def test_the_documented_recipe_recomputes_every_exported_hash(live_db, capsys):
    """docs/audit.md's snippet, run as printed (nothing from forescale), on
    a real export: each record's hash and its link to the one before."""
    import re

    from tests.support import ROOT

    doc = (ROOT / "docs" / "audit.md").read_text()
    (snippet,) = re.findall(r"### Recomputing a hash.*?```python\n(.*?)```", doc, re.S)
    space: dict = {}
    exec(snippet, space)
    cfg, db, plan = live_db
    rc, out, _ = run_cli(capsys, "audit", "export", "--config", str(cfg))
    lines = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and len(lines) >= 6
    prev = audit.GENESIS
    for r in lines:
        assert space["record_hash"](r) == r["hash"] and r["prev"] == prev
        prev = r["hash"]


def test_audit_export_names_a_time_it_cannot_read(live_db, capsys):
    cfg, db, plan = live_db
    rc, _, err = run_cli(capsys, "audit", "export", "--config", str(cfg), "--since", "yesterday")
    assert rc == 2 and "--since 'yesterday' is not a time; give ISO 8601" in err


def test_the_daemon_checks_the_chain_at_start_and_records_its_config_and_each_reload(tmp_path):
    """What an auditor reads back: the config in force at start and each
    reload (with the mode changes), and a tampered chain reported at start."""
    import sqlite3

    from engine.daemon import Daemon
    from engine.store import Store
    from tests.support.live import target_dict, write_config, write_trace

    trace = write_trace(tmp_path / "load.csv", [10.0] * 30)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe")])
    d = Daemon(cfg)
    try:
        assert d.audit_status.ok
        write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="auto")])
        assert d.reload()
    finally:
        d.shutdown(0)
    with Store(tmp_path / "state.db") as store:
        kinds = [r["kind"] for r in audit.records(store)]
    assert kinds.count("config_reload") == 2 and "mode_change" in kinds
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("UPDATE audit SET payload = replace(payload, 'auto', 'observe') WHERE kind = 'mode_change'")
    db.commit()
    db.close()
    from engine.metrics import EngineMetrics

    metrics = EngineMetrics()
    d = Daemon(cfg, metrics=metrics)
    try:
        assert not d.audit_status.ok and d.audit_status.first_bad is not None
        assert "forescale_audit_chain_ok 0.0" in metrics.exposition()[0].decode()
    finally:
        d.shutdown(0)
