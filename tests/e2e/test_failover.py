"""Two real daemon replicas on one PostgreSQL state: the leader is killed
with SIGKILL in the middle of an apply; the other takes over within the
lease plus one interval, the interrupted decision is reconciled (never
applied again), and no decision is ever applied twice or by two replicas
at once (every platform write is in the platform's own event log)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from engine import audit
from engine.store import open_store
from tests.support import ROOT
from tests.support.live import target_dict, write_trace
from tests.support.postgres import pg_server, pg_url  # noqa: F401 - fixtures
from tests.support.replica import events

LEASE_S, RENEW_S, INTERVAL_S = 4.0, 1.0, 3.0


def failover_config(folder: Path, url: str, *, apply_delay: float = 1.5, targets: int = 1) -> Path:
    """``targets`` targets whose demand changes every interval (so nearly
    every cycle applies), on the ``file`` platform in ``folder/platform``."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    # 5 s blocks against a 3 s interval: every cycle's mean differs from the last
    values = [100.0 if (i // 5) % 2 else 240.0 for i in range(3600)]
    trace = write_trace(folder / "load.csv", values, start=now - timedelta(minutes=10), step=timedelta(seconds=1))
    doc = {
        "state": url,
        "ha": {"shards": 4, "lease": f"{LEASE_S:g}s", "renew": f"{RENEW_S:g}s"},
        "server": {"enabled": False},
        "targets": [target_dict(
            f"svc-{i}", trace, interval=f"{INTERVAL_S:g}s", timeout="20s",
            forecaster={"name": "persistence", "history": "10m", "refit_every": "1h"},
            policy={"lead_time": f"{INTERVAL_S:g}s", "hold": f"{INTERVAL_S:g}s", "max_staleness": "1m"},
            actuator={"type": "file", "dir": str(folder / "platform"), "apply_delay": apply_delay})
            for i in range(targets)],
    }
    path = folder / "replica.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_replica(cfg: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tests.support.replica", "run", "--config", str(cfg),
                             "--tick", "0.05"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))


def wait_for(cond, timeout: float, what: str, procs=(), logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        for p in procs:
            assert p.poll() is None, f"a replica exited ({p.returncode}) while waiting for {what}: {tails(logs)}"
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {timeout}s: {tails(logs)}")


def tails(logs) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())


def in_flight(folder: Path, pid: int):
    """A ``begin`` of ``pid`` with no ``end`` yet: an apply in progress."""
    evs = events(folder)
    ended = {e["decision_id"] for e in evs if e["kind"] == "end"}
    return next((e for e in evs if e["kind"] == "begin" and e["pid"] == pid and e["decision_id"] not in ended),
                None)


def test_the_standby_takes_over_within_the_lease_and_nothing_is_applied_twice(pg_url, tmp_path):
    platform = tmp_path / "platform"
    cfg = failover_config(tmp_path, pg_url)
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
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
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
            import json

            p = json.loads(row[0])
            if p.get("status") == "intent":
                lease_of[p["id"]] = p["outcome"]["lease"]
        mine = [lease_of[e["decision_id"]] for e in begins]
        assert {m["holder"].split(":")[2] for m in mine} == {str(leader_pid), str(standby.pid)}
        old = {m["epoch"] for m in mine if m["holder"].split(":")[2] == str(leader_pid)}
        new = {m["epoch"] for m in mine if m["holder"].split(":")[2] == str(standby.pid)}
        assert max(old) < min(new)
