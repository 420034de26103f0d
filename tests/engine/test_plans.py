"""Plan / approve / apply: the CLI round trip through a real state file
(``forescale plans``, ``approve``, ``reject``, ``apply``, ``decisions``),
the stale-plan rule, expiry by ttl and by supersession, and the audit record
(who approved, what applying did)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from engine import cli
from engine.core.clock import SystemClock
from engine.core.errors import ApprovalRequired, PlanStateError, StalePlan
from engine.plans import apply_plan, approve, cli_identity, reject
from engine.store import Store
from engine.core.types import PlanStatus

from tests.support.live import STEP, Platform, build_live, target_dict, write_config, write_trace


@pytest.fixture
def planned(tmp_path):
    """An approve-mode target that has just planned 5 -> 20 at the real
    current time (the CLI expires plans against the wall clock)."""
    now = SystemClock().now()
    trace = write_trace(tmp_path / "load.csv", [100.0] * 30, start=now - 25 * STEP)

    def make(initial_capacity: int = 5, **over):
        over = {"plan_ttl": "1h", **over}
        t = target_dict("web", trace, mode="approve",
                        actuator={"type": "dry-run", "initial_capacity": initial_capacity}, **over)
        cfg = write_config(tmp_path / "c.yaml", [t])
        store = Store(tmp_path / "state.db")
        live = build_live(cfg, store, Platform(capacity=5))
        res = live.run(now)
        assert res.status == "planned", res
        return cfg, store, live, res.plan

    return make


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_plans_approve_apply_round_trip_through_the_cli(planned, capsys):
    cfg, store, live, plan = planned()
    rc, out, _ = run_cli(capsys, "plans", "--config", str(cfg))
    assert rc == 0 and plan.id in out and "5 -> 20" in out and "pending" in out
    me = cli_identity()
    rc, out, _ = run_cli(capsys, "approve", plan.id, "--config", str(cfg), "--comment", "ok")
    assert rc == 0 and f"plan {plan.id} approved by {me}" in out
    rc, out, _ = run_cli(capsys, "apply", plan.id, "--config", str(cfg))
    assert rc == 0 and f"plan {plan.id} applied: web -> 20" in out
    rc, out, _ = run_cli(capsys, "plans", "--config", str(cfg), "--all", "--json")
    (p,) = json.loads(out)
    assert p["status"] == "applied" and p["actor"] == me and p["channel"] == "cli"
    rc, out, _ = run_cli(capsys, "decisions", "--config", str(cfg), "--json")
    (rec,) = json.loads(out)
    assert rec["status"] == "applied" and rec["approval"]["identity"] == me and rec["approval"]["comment"] == "ok"
    assert rec["approval"]["channel"] == "cli" and rec["audit"] is None
    assert rec["outcome"]["observed"] == 20 and rec["outcome"]["request_ids"] == [f"dry-run:{rec['id']}"]
    # applied again? refused: only an approved plan can be applied
    rc, _, err = run_cli(capsys, "apply", plan.id, "--config", str(cfg))
    assert rc == 2 and "is applied; only an approved plan can be applied" in err
    assert store.load_state("web").current == 20


def test_apply_refuses_an_unapproved_or_rejected_plan(planned, capsys):
    cfg, store, live, plan = planned()
    rc, _, err = run_cli(capsys, "apply", plan.id, "--config", str(cfg))
    assert rc == 2 and f"plan {plan.id} is not approved; run: forescale approve {plan.id}" in err
    rc, out, _ = run_cli(capsys, "reject", plan.id, "--config", str(cfg), "--reason", "too big")
    assert rc == 0 and f"rejected by {cli_identity()}" in out
    rc, _, err = run_cli(capsys, "apply", plan.id, "--config", str(cfg))
    assert rc == 2 and "is rejected" in err
    rec = store.decision(plan.decision_id)
    assert rec["status"] == "rejected" and rec["approval"] is None
    assert rec["approvals"][-1] == {**rec["approvals"][-1], "decision": "rejected", "identity": cli_identity(),
                                    "channel": "cli", "comment": "too big"}
    rc, _, err = run_cli(capsys, "approve", "nope", "--config", str(cfg))
    assert rc == 2 and "no plan 'nope'" in err


def test_apply_refuses_a_stale_plan(planned, capsys):
    # someone scaled the platform to 7 since the plan was made at 5
    cfg, store, live, plan = planned(initial_capacity=7)
    run_cli(capsys, "approve", plan.id, "--config", str(cfg))
    rc, _, err = run_cli(capsys, "apply", plan.id, "--config", str(cfg))
    assert rc == 2 and "is stale: capacity is now 7, it was 5 when planned" in err
    assert store.plan(plan.id).status == PlanStatus.REFUSED
    rec = store.decision(plan.decision_id)
    assert rec["status"] == "refused"
    assert rec["outcome"]["refused"] == "stale: capacity is now 7, it was 5 when planned"


def test_the_daemon_applies_an_approved_plan_at_the_next_cycle_but_refuses_it_if_stale(planned):
    cfg, store, live, plan = planned()
    now = plan.created_at
    approve(store, plan.id, now + timedelta(seconds=10), identity="unix:alice", channel="cli")
    live.actuator.capacity = 6  # changed by hand meanwhile
    res = live.run(now + STEP)
    assert res.details["plans"][0].startswith("StalePlan") and res.details["plans_applied"] == []
    assert live.actuator.applies == []  # never applied
    assert store.plan(plan.id).status == PlanStatus.REFUSED
    # the cycle plans afresh from what it observes now
    assert res.status == "planned" and res.plan.observed_capacity == 6 and res.plan.id != plan.id


def test_a_plan_expires_after_its_ttl(planned):
    cfg, store, live, plan = planned(plan_ttl="10m")
    with pytest.raises(PlanStateError, match="expired"):
        approve(store, plan.id, plan.created_at + timedelta(minutes=10), identity="unix:alice", channel="cli")
    assert store.plan(plan.id).status == PlanStatus.EXPIRED
    assert store.decision(plan.decision_id)["status"] == "expired"


def test_a_different_plan_supersedes_the_open_one(planned, tmp_path):
    cfg, store, live, plan = planned()
    approve(store, plan.id, plan.created_at + timedelta(seconds=1), identity="unix:alice", channel="cli")
    # the daemon's next cycle applies the approved plan before deciding
    res = live.run(plan.created_at + STEP)
    assert res.details["plans_applied"] == [plan.id]
    # an open plan for a different change is superseded by the next plan
    p2 = _plan_for(live, store, plan.created_at + 2 * STEP, observed=20, capacity=1)
    assert p2 is not None
    p3 = _plan_for(live, store, plan.created_at + 3 * STEP, observed=20, capacity=2)
    old = store.plan(p2.id)
    assert old.status == PlanStatus.SUPERSEDED and "superseded by" in old.note
    with pytest.raises(PlanStateError, match="is superseded"):
        approve(store, p2.id, plan.created_at + 3 * STEP, identity="unix:alice", channel="cli")
    assert store.plan(p3.id).status == PlanStatus.PENDING


def _plan_for(live, store, now, *, observed: int, capacity: int):
    """Plan a change to ``capacity`` by making the policy's bounds force it."""
    from engine.plans import create_plan
    from engine.core.types import Decision

    d = Decision(target="web", at=now, current=observed, desired=capacity, recommendation=capacity, steps=())
    return create_plan(store, live.target, d, observed, "test", now)


def test_library_calls_raise_the_plan_errors(planned):
    cfg, store, live, plan = planned()
    now = plan.created_at
    with pytest.raises(ApprovalRequired):
        apply_plan(store, live.actuator, plan.id, now, live.target)
    approve(store, plan.id, now, identity="unix:a", channel="cli")
    with pytest.raises(PlanStateError, match="only from pending"):
        approve(store, plan.id, now, identity="unix:b", channel="cli")
    live.actuator.capacity = 9
    with pytest.raises(StalePlan):
        apply_plan(store, live.actuator, plan.id, now, live.target)
    with pytest.raises(PlanStateError):
        reject(store, plan.id, now, identity="unix:c", channel="cli")
