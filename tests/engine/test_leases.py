"""Leader election per shard on a real PostgreSQL server: leases expire,
another replica takes over with a new epoch, the fence refuses an intent
recorded after the lease was lost, shards are shared among live replicas."""

from __future__ import annotations

import pytest

from engine.core.errors import LeaseLost, StateLocked
from engine.leases import Leases, shard_of
from engine.store import open_store
from tests.engine.test_daemon import FakeMono
from tests.engine.test_store import NOW, make_decision
from tests.support.postgres import pg_server, pg_url  # noqa: F401 - fixtures


@pytest.fixture
def stores(pg_url):
    a, b = open_store(pg_url), open_store(pg_url)
    yield a, b
    a.close()
    b.close()


def expire_all(store) -> None:
    """What the passing of ``lease`` seconds does to the rows."""
    store.db.execute("UPDATE leases SET expires_at = clock_timestamp() - interval '1 second'")
    store.db.execute("UPDATE replicas SET seen_at = clock_timestamp() - interval '1 hour'")


def test_shards_are_stable_and_spread():
    assert shard_of("web", 16) == shard_of("web", 16)
    assert len({shard_of(f"svc-{i}", 16) for i in range(200)}) == 16


def test_one_replica_takes_every_shard_and_a_second_gets_none_while_it_renews(stores):
    a, b = stores
    la = Leases(a, shards=4, lease_s=30)
    lb = Leases(b, shards=4, lease_s=30)
    assert la.renew()[0] == {0, 1, 2, 3}
    assert all(la.holds(t) for t in ("web", "api", "db"))
    lb.renew()
    assert lb.held() == {}  # b is live, so a's share is 2, but a hands back only on its own pass
    la.renew()  # a sees two live replicas: keeps its share, hands the rest back
    assert len(la.held()) == 2
    lb.renew()
    assert len(lb.held()) == 2 and not set(la.held()) & set(lb.held())
    for t in ("web", "api", "db", "queue"):
        assert la.holds(t) != lb.holds(t)  # exactly one leads each target


def test_a_dead_holder_loses_its_shards_after_the_lease_and_the_epoch_moves_on(stores):
    a, b = stores
    la, lb = Leases(a, shards=2, lease_s=30), Leases(b, shards=2, lease_s=30)
    la.renew()
    epochs = la.held()
    lb.renew()
    assert lb.held() == {}
    expire_all(a)  # a stopped renewing (SIGKILL) and the lease ran out
    lb.renew()
    assert set(lb.held()) == {0, 1}
    assert all(lb.held()[s] == epochs[s] + 1 for s in (0, 1))


def test_holds_and_readiness_run_out_on_the_local_clock_without_a_renewal():
    class Rows:  # holds() answers from memory: no database touched
        db = None

    mono = FakeMono()
    le = Leases(Rows(), shards=1, lease_s=30, monotonic=mono)
    le._held[0] = (1, mono.t + 30)
    assert le.trouble() == "leases not renewed yet"
    le._renewed = mono.t
    assert le.holds("web") and le.trouble() is None
    mono.t += 30
    assert not le.holds("web")
    assert le.trouble().startswith("leases not renewed for 30s")  # /readyz of a cut-off standby says so


def test_the_fence_refuses_an_intent_once_another_replica_took_the_lease(stores):
    a, b = stores
    la, lb = Leases(a, shards=1, lease_s=30), Leases(b, shards=1, lease_s=30)
    a.fence = la.check
    la.renew()
    d1 = make_decision(NOW)
    a.record_decision(d1, "auto", "intent", NOW)
    assert a.decision(d1.id)["outcome"]["lease"] == {"shard": 0, "epoch": 1, "holder": la.holder}
    expire_all(a)
    lb.renew()  # b took over while a was, say, paused
    d2 = make_decision(NOW.replace(minute=5))
    with pytest.raises(LeaseLost, match="no longer holds the lease of shard 0"):
        a.record_decision(d2, "auto", "intent", NOW)
    assert a.decision(d2.id) is None  # rolled back: no intent, so nothing is applied
    assert not la.holds("web")
    # a decision that does not act is not fenced (observe, dry-run)
    a.record_decision(d2, "dry-run", "dry-run", NOW)


def test_a_stopping_replica_hands_its_leases_back_at_once(stores):
    a, b = stores
    la, lb = Leases(a, shards=3, lease_s=30), Leases(b, shards=3, lease_s=30)
    la.renew()
    la.stop()
    lb.renew()
    assert set(lb.held()) == {0, 1, 2}


def test_the_cli_lock_takes_every_shard_and_is_refused_beside_a_replica(stores):
    a, b = stores
    la = Leases(a, shards=2, lease_s=30)
    la.renew()
    with pytest.raises(StateLocked, match="a forescale replica .*daemon:.* leads targets"):
        b.lock()
    la.stop()
    b.lock()  # free now: the CLI holds every shard until it unlocks
    la2 = Leases(a, shards=2, lease_s=30)
    la2.renew()
    assert la2.held() == {}
    b.unlock()
    la2.renew()
    assert set(la2.held()) == {0, 1}


def test_the_fence_refuses_to_claim_an_approved_plan_once_the_lease_is_gone(stores):
    from engine.core.types import PlanStatus
    from tests.engine.test_store import plan

    a, b = stores
    la, lb = Leases(a, shards=1, lease_s=30), Leases(b, shards=1, lease_s=30)
    a.fence = la.check
    la.renew()
    a.save_plan(plan())
    a.transition_plan("p1", PlanStatus.APPROVED, NOW, identity="unix:ana", allowed_from=(PlanStatus.PENDING,))
    expire_all(a)
    lb.renew()
    with pytest.raises(LeaseLost):
        a.transition_plan("p1", PlanStatus.APPLYING, NOW, allowed_from=(PlanStatus.APPROVED,))
    assert a.plan("p1").status == PlanStatus.APPROVED  # not claimed: the new leader applies it, once
    b.fence = lb.check
    claimed = b.transition_plan("p1", PlanStatus.APPLYING, NOW, allowed_from=(PlanStatus.APPROVED,))
    assert claimed.status == PlanStatus.APPLYING


def test_a_deposed_leader_cannot_overwrite_its_successors_model_checkpoint(stores):
    """Checkpoints in the shared table are fenced as intents are: written
    only under a held lease, and never over one of a newer epoch."""
    a, b = stores
    la, lb = Leases(a, shards=1, lease_s=30), Leases(b, shards=1, lease_s=30)
    a.fence, b.fence = la.check, lb.check
    la.renew()
    a.save_model("web", {"version": "a-1"}, b"model of a")
    (row,) = a.db.execute("SELECT epoch, holder FROM models WHERE name='web'").fetchall()
    assert (row[0], row[1]) == (la.held()[0], la.holder)
    expire_all(a)  # a froze; b takes over (epoch + 1) and saves its own fit
    lb.renew()
    b.save_model("web", {"version": "b-1"}, b"model of b")
    b.save_model("web/requests", {"version": "b-r"}, b"a resource's model")  # fenced by its target's lease
    with pytest.raises(LeaseLost):
        a.save_model("web", {"version": "a-2"}, b"late model of a")  # a, woken up, still thinks it leads
    assert b.load_model("web") == ({"version": "b-1"}, b"model of b")
    # and a row of a newer epoch is never replaced by an older one's write
    b.db.execute("UPDATE models SET epoch = epoch + 5 WHERE name='web'")
    b.save_model("web", {"version": "b-2"}, b"model of b, refit")
    assert b.load_model("web")[0] == {"version": "b-1"}
    # forescale fit (no lease: an operator's write) replaces it
    b.fence = None
    b.save_model("web", {"version": "fit"}, b"fitted by the CLI")
    assert a.load_model("web") == ({"version": "fit"}, b"fitted by the CLI")


def test_replicas_of_two_shard_counts_never_lead_one_target_twice(stores):
    """A rolling change of ``ha.shards`` (or one replica started from
    another file): 4 shards here, 8 there. Both led: shard 0 of 4 and shard
    4 of 8 hold the same targets, and shard 2 of 4 went unled. The count of
    the replica that started first is in force; the other leads nothing,
    says why, and takes over once the first is gone."""
    a, b = stores
    la, lb = Leases(a, shards=4, lease_s=30), Leases(b, shards=8, lease_s=30)
    la.renew()
    lb.renew()
    la.renew()  # a counts only the replicas of its own layout: it keeps all 4
    assert set(la.held()) == {0, 1, 2, 3} and lb.held() == {}
    assert "ha.shards is 8 here but 4 on replica" in lb.trouble() and "leads nothing" in lb.trouble()
    names = [f"storage-{i}" for i in range(40)]
    assert all(la.holds(n) and not lb.holds(n) for n in names)  # one leader each, none unled
    la.stop()  # a restarts with 8 shards: b's count is the one in force now
    lb.renew()
    assert set(lb.held()) == set(range(8)) and lb.trouble() is None
    la2 = Leases(a, shards=8, lease_s=30)
    la2.renew()
    lb.renew()
    la2.renew()
    assert len(la2.held()) == 4 and len(lb.held()) == 4
    assert all(la2.holds(n) != lb.holds(n) for n in names)


def test_a_cycle_whose_lease_went_to_another_replica_is_handed_over_not_an_error(stores, tmp_path):
    """Shards rebalanced while a cycle ran (a replica joined): the fence
    refused its intent, as it must, and the cycle was logged and counted as
    an error of a target this replica no longer leads."""
    from tests.support.live import STEP, T0, Platform, build_live, target_dict, write_config, write_trace

    a, b = stores
    la, lb = Leases(a, shards=1, lease_s=30), Leases(b, shards=1, lease_s=30)
    a.fence = la.check
    la.renew()
    expire_all(a)
    lb.renew()  # b leads it now; a's cycle is already under way
    trace = write_trace(tmp_path / "load.csv", [100.0] * 30)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="auto")])
    platform = Platform(capacity=5)
    res = build_live(cfg, a, platform).run(T0 + 25 * STEP)
    assert res.status == "handed-over" and res.ok and res.error is None
    assert "no longer holds the lease of shard 0" in res.details["handed_over"]
    assert platform.applies == [] and a.decisions("web") == []
