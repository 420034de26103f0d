"""Two real daemon replicas on one PostgreSQL state, telling one real
loopback webhook about their targets' plans (approve mode: every cycle
proposes, supersedes, expires). The replica leading a target is killed
with SIGKILL; the other takes its shards over and tells what happened
from the cursors the dead one left. Every plan event reaches the webhook
exactly once, none lost.

The kill lands where the dead replica has no message sent whose cursor it
has not written yet (it is frozen with SIGSTOP first, and killed once its
cursors cover everything the webhook got from it): the one window in
which a crash tells a message twice (docs/operations.md)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import yaml

from engine.leases import shard_of
from engine.notify import _TRANSITION_KINDS
from engine.store import open_store
from tests.support.postgres import pg_server, pg_url  # noqa: F401 - fixtures
from tests.support.replica import failover_config, start_replica, stop_replicas, wait_for
from tests.support.webhook import RecordingServer

LEASE_S, RENEW_S, INTERVAL_S, SHARDS = 4.0, 1.0, 3.0, 4


def _seqs(store) -> dict[tuple[str, str], int]:
    """(plan id, status) -> the seq of that transition, for those told."""
    return {(r[0], r[1]): int(r[2]) for r in store.db.execute("SELECT plan_id, to_status, seq FROM plan_transitions")
            if r[1] in _TRANSITION_KINDS}


def _received(hook) -> list[tuple[str, str, str]]:
    return [(r.json["target"], r.json["details"]["plan"]["id"], r.json["details"]["status"])
            for r in list(hook.requests) if r.json["kind"] != "missed"]


def test_a_killed_replicas_targets_are_told_by_the_one_that_takes_over_each_event_once(pg_url, tmp_path):
    cfg = failover_config(tmp_path, pg_url, lease_s=LEASE_S, renew_s=RENEW_S, interval_s=INTERVAL_S,
                          apply_delay=0.0, targets=4, shards=SHARDS)
    logs = (tmp_path / "a.log", tmp_path / "b.log")
    with RecordingServer() as hook:
        doc = yaml.safe_load(cfg.read_text())
        for t in doc["targets"]:
            t.update(mode="approve", plan_ttl="1m")
        doc["notify"] = {"channels": [{"type": "webhook", "name": "hook", "url": hook.url}]}
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        names = [t["name"] for t in doc["targets"]]
        procs = {p.pid: p for p in (start_replica(cfg, logs[0]), start_replica(cfg, logs[1]))}
        store = open_store(pg_url)
        try:
            def holders() -> dict[int, int]:
                """shard -> the pid of the replica holding it now."""
                return {int(r[0]): int(r[1].split(":")[2]) for r in store.db.execute(
                    "SELECT shard, holder FROM leases WHERE expires_at > clock_timestamp()")}

            # both lead some shards, and each has told about its targets
            wait_for(lambda: len(set(holders().values())) == 2 and len(holders()) == SHARDS, 60,
                     "two replicas sharing the shards", procs.values(), logs)
            victim = holders()[shard_of(names[0], SHARDS)]
            survivor = next(p for p in procs.values() if p.pid != victim)
            theirs = {s for s, pid in holders().items() if pid == victim}
            wait_for(lambda: sum(1 for t, _, _ in _received(hook) if shard_of(t, SHARDS) in theirs) >= 4, 90,
                     "plan events of the victim's targets", procs.values(), logs)

            def quiet() -> bool:
                """Frozen: everything the webhook got of the victim's shards
                is behind the cursors it wrote (nothing sent and not recorded)."""
                rows = {int(r[0]): int(r[1]) for r in store.db.execute(
                    "SELECT shard, seq FROM notify_shard_cursors WHERE shards = ?", (SHARDS,))}
                seqs = _seqs(store)
                got = [seqs[(pid, st)] for t, pid, st in _received(hook) if shard_of(t, SHARDS) in theirs]
                return bool(got) and all(s in rows for s in theirs) and max(got) <= min(rows[s] for s in theirs)

            for _ in range(50):
                os.kill(victim, signal.SIGSTOP)
                time.sleep(0.3)  # a request already on its way arrives
                if quiet():
                    break
                os.kill(victim, signal.SIGCONT)
                time.sleep(0.2)
            else:
                raise AssertionError("the victim never stood still with its cursors written")
            os.kill(victim, signal.SIGKILL)
            procs[victim].wait(10)
            before = len(_received(hook))
            killed_at = time.time()
            # the survivor takes every shard, and tells the victim's targets' news
            wait_for(lambda: set(holders().values()) == {survivor.pid} and len(holders()) == SHARDS,
                     LEASE_S + 30, "the takeover", [survivor], logs)
            wait_for(lambda: sum(1 for t, _, _ in _received(hook)[before:] if shard_of(t, SHARDS) in theirs) >= 4,
                     60, "events of the victim's targets told by the survivor", [survivor], logs)
            assert time.time() - killed_at < 60
        finally:
            stop_replicas(procs.values())  # SIGTERM: the survivor sends what is queued and saves its cursors
        try:
            seqs = _seqs(store)
            told = Counter((pid, st) for _, pid, st in _received(hook))
            assert set(told) == set(seqs), (sorted(set(seqs) - set(told))[:5], sorted(set(told) - set(seqs))[:5])
            assert max(told.values()) == 1, [k for k, v in told.items() if v > 1]
            assert not any(r.json["kind"] == "missed" for r in hook.requests)
            # every target was heard of; the waits above had four of the
            # victim's targets' events told before the kill and four after
            assert {t for t, _, _ in _received(hook)} == set(names)
        finally:
            store.close()
