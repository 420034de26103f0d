"""Two real daemon replicas on one PostgreSQL state: the leader is killed
with SIGKILL in the middle of an apply; the other takes over within the
lease plus one interval, the interrupted decision is reconciled (never
applied again), and no decision is ever applied twice or by two replicas
at once (every platform write is in the platform's own event log)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

from engine import audit
from engine.core.units import parse_time
from engine.store import open_store
from tests.support.postgres import pg_server, pg_url  # noqa: F401 - fixtures
from tests.support.replica import (events, failover_config, in_flight, start_replica, stop_replicas,
                                   wait_for)

LEASE_S, RENEW_S, INTERVAL_S = 4.0, 1.0, 3.0


def test_the_standby_takes_over_within_the_lease_and_nothing_is_applied_twice(pg_url, tmp_path):
    platform = tmp_path / "platform"
    cfg = failover_config(tmp_path, pg_url, lease_s=LEASE_S, renew_s=RENEW_S, interval_s=INTERVAL_S)
    a = start_replica(cfg, tmp_path / "a.log")
    b = start_replica(cfg, tmp_path / "b.log")
    procs = {a.pid: a, b.pid: b}
    logs = (tmp_path / "a.log", tmp_path / "b.log")
    try:
        # the leader is whoever writes the platform; let it act a few times
        wait_for(lambda: sum(e["kind"] == "end" for e in events(platform)) >= 2, 90, "two applies",
                 procs.values(), logs)
        leader_pid = next(e["pid"] for e in events(platform) if e["kind"] == "begin")
        standby = procs[b.pid if leader_pid == a.pid else a.pid]
        assert {e["pid"] for e in events(platform)} == {leader_pid}  # the standby never touched it
        # kill it in the middle of an apply (after its begin, before its write)
        hit = wait_for(lambda: in_flight(platform, leader_pid), 60, "an apply in flight", procs.values(), logs)
        os.kill(leader_pid, signal.SIGKILL)
        killed_at = time.time()
        procs[leader_pid].wait(10)
        # the standby's first cycle (its first read of the platform)
        first = wait_for(lambda: next((e for e in events(platform) if e["pid"] == standby.pid), None),
                         LEASE_S + INTERVAL_S + 30, "cycle by the standby", [standby], logs)
        took = first["t"] - killed_at
        assert took <= LEASE_S + INTERVAL_S, f"took over after {took:.2f}s"
        # and it keeps acting: two applies of its own
        wait_for(lambda: sum(e["kind"] == "end" and e["pid"] == standby.pid for e in events(platform)) >= 2,
                 60, "applies by the standby", [standby], logs)
    finally:
        stop_replicas(procs.values())
    evs = events(platform)
    begins = [e for e in evs if e["kind"] == "begin"]
    # no decision applied twice; each by one process
    assert max(Counter(e["decision_id"] for e in begins).values()) == 1
    # the killed apply was never written, and never taken up again by the standby
    assert not any(e["kind"] == "end" and e["decision_id"] == hit["decision_id"] for e in evs)
    assert all(e["pid"] == leader_pid for e in begins if e["t"] < killed_at)
    assert all(e["pid"] == standby.pid for e in begins if e["t"] > killed_at)
    with open_store(pg_url) as s:
        rec = s.decision(hit["decision_id"])
        # the new leader reconciled the dead one's intent: the platform did
        # not show it, so abandoned (a later decision acts afresh)
        assert rec["status"] == "abandoned" and rec["outcome"]["reconciled"] is True
        # every intent carries the lease it was taken under; the standby's a newer epoch
        acted = [r for r in s.decisions("svc-0", limit=500) if r["id"] in {e["decision_id"] for e in begins}]
        holders = {r["id"]: r for r in acted}
        assert len(holders) == len(begins)
        assert audit.verify(s).ok
        lease_of = {}
        for row in s.db.execute("SELECT payload FROM audit WHERE kind='decision'"):
            p = json.loads(row[0])
            if p.get("status") == "intent":
                lease_of[p["id"]] = p["outcome"]["lease"]
        mine = [lease_of[e["decision_id"]] for e in begins]
        assert {m["holder"].split(":")[2] for m in mine} == {str(leader_pid), str(standby.pid)}
        old = {m["epoch"] for m in mine if m["holder"].split(":")[2] == str(leader_pid)}
        new = {m["epoch"] for m in mine if m["holder"].split(":")[2] == str(standby.pid)}
        assert max(old) < min(new)


def test_the_new_leader_restores_the_model_the_dead_one_fitted_instead_of_refitting(pg_url, tmp_path):
    """Model checkpoints live in the shared state: the leader fits and
    saves under its lease; killed with SIGKILL, its successor's first cycle
    loads that model (the same model_version in its decisions, 'restored' in
    its log) instead of fitting its own."""
    platform = tmp_path / "platform"
    cfg = failover_config(tmp_path, pg_url, lease_s=LEASE_S, renew_s=RENEW_S, interval_s=INTERVAL_S)
    logs = (tmp_path / "a.log", tmp_path / "b.log")
    procs = {p.pid: p for p in (start_replica(cfg, logs[0]), start_replica(cfg, logs[1]))}
    try:
        wait_for(lambda: any(e["kind"] == "end" for e in events(platform)), 90, "an apply", procs.values(), logs)
        leader_pid = next(e["pid"] for e in events(platform) if e["kind"] == "begin")
        standby = next(p for pid, p in procs.items() if pid != leader_pid)
        os.kill(leader_pid, signal.SIGKILL)
        killed_at = time.time()
        procs[leader_pid].wait(10)
        wait_for(lambda: any(e["kind"] == "end" and e["pid"] == standby.pid for e in events(platform)),
                 LEASE_S + 60, "an apply by the standby", [standby], logs)
    finally:
        stop_replicas(procs.values())
    with open_store(pg_url) as s:
        (row,) = s.db.execute("SELECT meta, holder, epoch FROM models WHERE name='svc-0'").fetchall()
        saved = json.loads(row[0])["version"]
        assert row[1].split(":")[2] == str(leader_pid)  # written by the dead leader, under its lease
        decided = s.decisions("svc-0", limit=500)
    at = {d["id"]: parse_time(d["at"]).timestamp() for d in decided}
    before = {d["model_version"] for d in decided if at[d["id"]] < killed_at - 1}
    after = [d["model_version"] for d in decided if at[d["id"]] > killed_at]
    assert before == {saved} and after and set(after) == {saved}  # the successor forecast with that model
    log = logs[0 if standby.pid == next(iter(procs)) else 1].read_text()
    assert f"target svc-0: model {saved} restored" in log
