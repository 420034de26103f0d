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
    current time (the CLI expires plans against the wall clock), a minute
    ago (so that ``forescale once`` runs a cycle after it)."""
    now = SystemClock().now() - timedelta(minutes=1)
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


def test_approve_with_apply_that_cannot_apply_approves_nothing(planned, capsys, tmp_path):
    """`approve --apply` checks what applying needs (the config in force and
    the plan's target in it) before it records the approval: a call that
    exits 2 "to fix in the call" leaves the plan as it was, so that fixing the
    call and running it again works and nothing was approved in between."""
    cfg, store, live, plan = planned()
    state = str(tmp_path / "state.db")
    rc, out, err = run_cli(capsys, "approve", plan.id, "--state", state, "--apply")
    assert rc == 2 and "applying a plan needs --config" in err and "approved" not in out
    other = write_config(tmp_path / "other.yaml", [target_dict("api", tmp_path / "load.csv")])
    rc, out, err = run_cli(capsys, "approve", plan.id, "--config", str(other), "--state", state, "--apply")
    assert rc == 2 and "no target named 'web'" in err and "approved" not in out
    assert store.plan(plan.id).status == PlanStatus.PENDING and store.plan_history(plan.id)[-1].to_status == \
        PlanStatus.PENDING
    rc, out, _ = run_cli(capsys, "approve", plan.id, "--config", str(cfg), "--apply")
    assert rc == 0 and f"plan {plan.id} applied" in out and store.load_state("web").current == 20


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


# ------------------------------------------------------------ states and history
def test_rejecting_an_approved_plan_appends_the_rejection_and_keeps_the_approval(planned):
    cfg, store, live, plan = planned()
    now = plan.created_at
    approve(store, plan.id, now + timedelta(seconds=1), identity="unix:alice", channel="cli", comment="fine")
    reject(store, plan.id, now + timedelta(seconds=2), identity="token:bob", channel="http", comment="not now")
    rec = store.decision(plan.decision_id)
    assert rec["status"] == "rejected"
    assert [(a["decision"], a["identity"], a["channel"], a["comment"]) for a in rec["approvals"]] == [
        ("approved", "unix:alice", "cli", "fine"), ("rejected", "token:bob", "http", "not now")]
    assert rec["approval"]["identity"] == "unix:alice"  # the approval is not overwritten
    hist = store.plan_history(plan.id)
    assert [(t.from_status, t.to_status) for t in hist] == [
        (None, PlanStatus.PENDING), (PlanStatus.PENDING, PlanStatus.APPROVED),
        (PlanStatus.APPROVED, PlanStatus.REJECTED)]
    assert (hist[2].identity, hist[2].channel, hist[2].comment) == ("token:bob", "http", "not now")
    assert live.run(now + STEP).details.get("plans_applied", []) == []
    assert live.actuator.applies == []


def test_the_cli_records_the_os_account_and_keeps_actor_only_as_a_comment(planned, capsys):
    cfg, store, live, plan = planned()
    rc, out, _ = run_cli(capsys, "approve", plan.id, "--config", str(cfg), "--actor", "mallory", "--comment", "ok")
    assert rc == 0 and f"approved by {cli_identity()}" in out and "mallory" not in out
    (t,) = [t for t in store.plan_history(plan.id) if t.to_status == PlanStatus.APPROVED]
    assert (t.identity, t.channel, t.comment) == (cli_identity(), "cli", "[on behalf of mallory] ok")
    assert cli_identity().startswith("unix:")
    rc, out, _ = run_cli(capsys, "plans", "--config", str(cfg), "--history")
    line = next(ln for ln in out.splitlines() if "-> approved" in ln)
    assert rc == 0 and line.split()[1:6] == ["pending", "->", "approved", cli_identity(), "cli"], line
    assert line.endswith("[on behalf of mallory] ok")
    with pytest.raises(PlanStateError, match="unknown channel 'email'"):
        reject(store, plan.id, plan.created_at, identity="unix:x", channel="email")
    with pytest.raises(PlanStateError, match="authenticated identity"):
        reject(store, plan.id, plan.created_at, identity="", channel="cli")


def test_decisions_that_re_planned_an_open_plan_follow_it_when_it_is_rejected_or_expires(planned):
    cfg, store, live, plan = planned(plan_ttl="12m")
    now = plan.created_at
    res2 = live.run(now + STEP)  # plans the same change: keeps the open plan
    assert res2.plan.id == plan.id and store.decision(res2.decision.id)["status"] == "planned"
    assert store.decision(res2.decision.id)["plan_id"] == plan.id
    reject(store, plan.id, now + STEP + timedelta(seconds=1), identity="unix:alice", channel="cli")
    assert {store.decision(d)["status"] for d in (plan.decision_id, res2.decision.id)} == {"rejected"}
    # and by expiry: a fresh plan, re-planned once, then left to expire
    res3 = live.run(now + 2 * STEP)
    res4 = live.run(now + 3 * STEP)
    assert res4.plan.id == res3.plan.id != plan.id
    live.run(now + 2 * STEP + timedelta(minutes=13))
    assert store.plan(res3.plan.id).status == PlanStatus.EXPIRED
    assert {store.decision(d.decision.id)["status"] for d in (res3, res4)} == {"expired"}


def test_once_says_when_an_approved_plan_was_applied(planned, capsys):
    cfg, store, live, plan = planned()
    approve(store, plan.id, SystemClock().now(), identity="unix:alice", channel="cli")
    store.close()
    rc, out, _ = run_cli(capsys, "once", "--config", str(cfg))
    assert f"web: plan {plan.id} applied: web 5 -> 20 (approved by unix:alice via cli)" in out


def test_pending_lists_each_plan_with_its_decision_schedule_history_and_deadline(planned, tmp_path):
    from engine.config import load_config
    from engine.core.types import Decision
    from engine.plans import create_plan, pending

    class Scheduled(Decision):  # the planner's Decision carries a serialized Schedule
        def to_dict(self):
            return {**super().to_dict(), "schedule": {"steps": [["2024-03-01T13:35:00Z", 8],
                                                               ["2024-03-02T03:00:00Z", 3]]}}

    cfg, store, live, plan = planned(approval={"scale_up": {"auto_approve_after": "10m"}})
    d = Scheduled(target="web", at=plan.created_at + STEP, current=5, desired=8, recommendation=8, steps=())
    p2 = create_plan(store, live.target, d, 5, "scheduled", plan.created_at + STEP)
    (view,) = pending(store, "web", {"web": load_config(cfg).target("web")})
    assert view.plan.id == p2.id and view.schedule == {"steps": [["2024-03-01T13:35:00Z", 8],
                                                                ["2024-03-02T03:00:00Z", 3]]}
    assert view.decision["id"] == d.id and view.history[-1].to_status == PlanStatus.PENDING
    # it superseded a pending scale-up: the wait counts from the first one
    assert view.auto_approve_at == plan.created_at + timedelta(minutes=10)
    assert store.plan(plan.id).status == PlanStatus.SUPERSEDED
    assert view.to_dict()["plan"]["schedule"]["steps"][0][1] == 8
    story = store.db.execute("SELECT payload FROM audit WHERE plan_id=? AND kind='plan_transition'",
                             (p2.id,)).fetchone()
    assert json.loads(story["payload"])["schedule"] == view.schedule  # the schedule is in the chain


# ------------------------------------------------------ found by trying to break it
@pytest.fixture
def planned_at(tmp_path):
    """Like ``planned``, with the load (and so the planned capacity) chosen."""
    now = SystemClock().now()

    def make(load: float, tmp=tmp_path, **over):
        tmp.mkdir(exist_ok=True)
        trace = write_trace(tmp / "load.csv", [load] * 30, start=now - 25 * STEP)
        t = target_dict("web", trace, mode="approve", plan_ttl="1h", **over)
        cfg = write_config(tmp / "c.yaml", [t])
        store = Store(tmp / "state.db")
        live = build_live(cfg, store, Platform(capacity=5))
        res = live.run(now)
        assert res.status == "planned", res
        approve(store, res.plan.id, now + timedelta(seconds=5), identity="unix:alice", channel="cli")
        return cfg, store, live, res.plan, trace

    return make


def _reload(tmp_path, trace, **over):
    t = target_dict("web", trace, mode=over.pop("mode", "approve"), plan_ttl="1h", **over)
    return write_config(tmp_path / "c.yaml", [t])


def test_bounds_in_force_win_an_approved_plan_is_refused_after_max_replicas_shrinks(planned_at, tmp_path):
    cfg, store, live, plan, trace = planned_at(225.0)
    assert plan.to_capacity == 45
    cfg = _reload(tmp_path, trace, policy={"max_replicas": 10})
    reloaded = build_live(cfg, store, live.actuator)
    res = reloaded.run(plan.created_at + STEP)
    assert live.actuator.applies == [] and res.details["plans_applied"] == []
    p = store.plan(plan.id)
    assert p.status == PlanStatus.REFUSED
    assert "capacity 45 is outside the bounds in force [1, 10]" in p.note
    assert "PlanRefused" in res.details["plans"][0] and res.actuation_error
    rec = store.decision(plan.decision_id)
    assert rec["status"] == "refused" and "outside the bounds" in rec["outcome"]["refused"]


@pytest.mark.parametrize("mode", ["observe", "dry-run"])
def test_a_target_switched_to_a_mode_that_never_writes_refuses_apply_through_every_path(planned_at, tmp_path,
                                                                                        capsys, mode):
    cfg, store, live, plan, trace = planned_at(100.0)
    cfg = _reload(tmp_path, trace, mode=mode)
    from engine.config import load_config

    target = load_config(cfg).target("web")
    from engine.core.errors import PlanRefused

    with pytest.raises(PlanRefused, match=f"target web is in {mode} mode now, which never writes"):
        apply_plan(store, live.actuator, plan.id, plan.created_at + STEP, target)
    assert live.actuator.applies == []
    assert store.plan(plan.id).status == PlanStatus.REFUSED
    # the CLI: a second approved plan, applied by `forescale apply` under the new config
    cfg2, store2, live2, plan2, trace2 = planned_at(150.0, tmp=tmp_path / "b")
    cfg2 = _reload(tmp_path / "b", trace2, mode=mode, actuator={"type": "dry-run", "initial_capacity": 5})
    store2.close()
    rc, _, err = run_cli(capsys, "apply", plan2.id, "--config", str(cfg2))
    assert rc == 2 and f"is in {mode} mode now, which never writes to the platform" in err
    with Store(tmp_path / "b" / "state.db") as s:
        assert s.db.execute("SELECT COUNT(*) FROM actuations").fetchone()[0] == 0
        assert s.plan(plan2.id).status == PlanStatus.REFUSED


def test_a_status_forged_with_sqlite_is_not_applied_and_is_logged(planned, caplog):
    import logging
    import sqlite3

    cfg, store, live, plan = planned()
    raw = sqlite3.connect(store.path)
    raw.execute("UPDATE plans SET status='approved' WHERE id=?", (plan.id,))
    raw.commit()
    raw.close()
    with caplog.at_level(logging.ERROR, logger="forescale.plans"):
        res = live.run(plan.created_at + STEP)
    assert live.actuator.applies == []
    p = store.plan(plan.id)
    assert p.status == PlanStatus.REFUSED and "approval cannot be verified" in p.note
    assert "not its approval (was the status edited outside forescale?)" in p.note
    assert any("has no verifiable approval" in r.getMessage() for r in caplog.records)
    assert "PlanRefused" in res.details["plans"][0]
    from engine.audit import verify

    # the refusal itself is in the chain, which still verifies (the forged row was refused, not trusted)
    (t,) = [t for t in store.plan_history(plan.id) if t.to_status == PlanStatus.REFUSED]
    assert t.from_status == PlanStatus.APPROVED and verify(store).ok


def test_a_forged_plan_row_with_a_bigger_capacity_is_refused(planned):
    import sqlite3

    cfg, store, live, plan = planned()
    approve(store, plan.id, plan.created_at, identity="unix:alice", channel="cli")
    raw = sqlite3.connect(store.path)
    raw.execute("UPDATE plans SET plan=json_set(plan, '$.to_capacity', 45) WHERE id=?", (plan.id,))
    raw.commit()
    raw.close()
    live.run(plan.created_at + STEP)
    assert live.actuator.applies == []
    assert "differs from what audit record" in store.plan(plan.id).note


def test_with_a_key_an_approval_written_without_it_is_refused(planned, monkeypatch):
    cfg, store, live, plan = planned()
    approve(store, plan.id, plan.created_at, identity="unix:alice", channel="cli")  # no key in this process
    keyed = Store(store.path, audit_key=b"secret")
    live.store = keyed
    from engine.core.errors import PlanRefused

    with pytest.raises(PlanRefused, match="not HMAC-signed with the configured key"):
        apply_plan(keyed, live.actuator, plan.id, plan.created_at + STEP, live.target)
    assert live.actuator.applies == []
    keyed.close()


SLOW_APPLY = '''
import json, sys, time
from pathlib import Path
from engine.config import load_config
from engine.core.clock import SystemClock
from engine.core.types import ActuationResult, CapacityReading
from engine.plans import apply_plan
from engine.store import Store
from datetime import timedelta

cfg_path, plan_id, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])

class SlowPlatform:
    """Capacity in a file shared by both processes; each write appended to writes.log."""
    def read(self):
        return CapacityReading(int((folder / "capacity").read_text()))
    def apply(self, desired, *, decision_id):
        with open(folder / "writes.log", "a") as f:
            f.write(f"{desired}\\n")
        time.sleep(1.5)
        (folder / "capacity").write_text(str(desired))
        return ActuationResult(desired, desired, True, timedelta(0), ("slow-1",))

cfg = load_config(cfg_path)
with Store(cfg.state_path) as store:
    (folder / f"ready-{sys.argv[4]}").write_text("")
    while not (folder / "go").exists():
        time.sleep(0.005)
    try:
        p = apply_plan(store, SlowPlatform(), plan_id, SystemClock().now(), cfg.target("web"))
        print("APPLIED", p.status.value)
    except Exception as exc:
        print("REFUSED", type(exc).__name__, exc)
'''


def test_two_processes_applying_one_plan_write_to_the_platform_exactly_once(planned, tmp_path):
    import os
    import subprocess
    import sys
    import time

    from tests.support import ROOT

    cfg, store, live, plan = planned()
    approve(store, plan.id, plan.created_at, identity="unix:alice", channel="cli")
    (tmp_path / "capacity").write_text("5")
    script = tmp_path / "slow_apply.py"
    script.write_text(SLOW_APPLY)
    procs = [subprocess.Popen([sys.executable, str(script), str(cfg), plan.id, str(tmp_path), str(i)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs]
        time.sleep(0.01)
    (tmp_path / "go").write_text("")
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert (tmp_path / "writes.log").read_text().splitlines() == ["20"], outs  # exactly one write
    assert outs[0] == "APPLIED applied", outs
    # the loser is told before any write: it found the plan claimed
    assert outs[1].startswith("REFUSED PlanStateError") and "being applied by another process" in outs[1], outs
    assert store.plan(plan.id).status == PlanStatus.APPLIED
    assert [t.to_status for t in store.plan_history(plan.id)].count(PlanStatus.APPLYING) == 1


# ------------------------------------------------- defaults because people sleep
from tests.support.live import T0  # noqa: E402


@pytest.fixture
def sleepy(tmp_path):
    """An approve-mode target on the fixed test clock, load from ``values``
    (the sample at T0 is ``values[25]``), with an ``approval`` section."""
    def make(values, approval, capacity: int = 5, **over):
        trace = write_trace(tmp_path / "load.csv", values, start=T0 - 25 * STEP)
        cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="approve", approval=approval,
                                                             **over)])
        store = Store(tmp_path / "state.db")
        return build_live(cfg, store, Platform(capacity=capacity)), store

    return make


def test_a_scale_up_plan_auto_approves_when_nobody_answers_in_time(sleepy):
    live, store = sleepy([100.0] * 40, {"scale_up": {"auto_approve_after": "10m"}})
    res = live.run(T0)
    plan = res.plan
    assert res.status == "planned" and plan.to_capacity == 20
    assert plan.expires_at == T0 + timedelta(minutes=15)  # one interval past the deadline
    res = live.run(T0 + STEP)
    assert res.plan.id == plan.id and live.actuator.applies == []  # 5 min: still waiting
    res = live.run(T0 + 2 * STEP)
    assert live.actuator.applies == [(plan.decision_id, 20)]
    assert res.details["plans"] == [f"plan {plan.id} auto-approved: no answer within 0:10:00 (scale_up auto-approves)",
                                    f"plan {plan.id} applied: web 5 -> 20 (approved by policy:auto-approve via auto)"]
    rec = store.decision(plan.decision_id)
    assert rec["status"] == "applied"
    assert (rec["approval"]["identity"], rec["approval"]["channel"]) == ("policy:auto-approve", "auto")


def test_re_planning_under_rising_load_does_not_reset_the_auto_approval_deadline(sleepy):
    live, store = sleepy([100.0] * 25 + [100.0, 110.0, 120.0, 130.0, 140.0],
                         {"scale_up": {"auto_approve_after": "10m"}})
    p0 = live.run(T0).plan
    p1 = live.run(T0 + STEP).plan  # 22: supersedes the 20, keeps waiting since T0
    assert (p0.to_capacity, p1.to_capacity) == (20, 22) and p1.waiting_since == T0
    assert store.plan(p0.id).status == PlanStatus.SUPERSEDED
    res = live.run(T0 + 2 * STEP)
    assert live.actuator.applies == [(p1.decision_id, 22)]  # approved at T0 + 10 min, not T0 + 15
    assert res.plan.to_capacity == 24 and res.plan.waiting_since == T0 + 2 * STEP


def test_a_scale_down_plan_expires_unapproved(sleepy):
    live, store = sleepy([100.0] * 40, {"scale_up": {"auto_approve_after": "10m"},
                                        "scale_down": {"expire_after": "30m"}}, capacity=30)
    plan = live.run(T0).plan
    assert (plan.from_capacity, plan.to_capacity, plan.expires_at) == (30, 20, T0 + timedelta(minutes=30))
    for i in range(1, 6):
        assert live.run(T0 + i * STEP).plan.id == plan.id  # kept, never auto-approved
    res = live.run(T0 + 6 * STEP)
    assert store.plan(plan.id).status == PlanStatus.EXPIRED and live.actuator.applies == []
    assert res.details["plans"] == [f"plan {plan.id} expired unapproved (web 30 -> 20)"]
    assert res.plan.id != plan.id  # a fresh plan waits again


def test_the_emergency_rule_lets_a_reactive_override_on_a_live_spike_act_at_once(sleepy):
    # the forecaster cannot forecast yet (a day of history needed): the
    # reactive override sizes from the live observation 400 -> 80 -> max 50
    fc = {"name": "seasonal_naive", "history": "2h", "refit_every": "1h"}
    live, store = sleepy([100.0] * 25 + [400.0] * 5, {"emergency": {"reactive_override": True}}, forecaster=fc)
    res = live.run(T0)
    assert res.status == "applied" and live.actuator.applies == [(res.decision.id, 50)]
    assert res.decision.step("reactive").reason == "ReactiveOverride"
    rec = store.decision(res.decision.id)
    assert rec["status"] == "applied"
    assert (rec["approval"]["identity"], rec["approval"]["channel"]) == ("policy:emergency", "auto")
    assert rec["approval"]["comment"].startswith("emergency rule: reactive override on a live spike")


def test_without_the_emergency_rule_a_reactive_override_waits_for_approval(sleepy):
    fc = {"name": "seasonal_naive", "history": "2h", "refit_every": "1h"}
    live, store = sleepy([100.0] * 25 + [400.0] * 5, {}, forecaster=fc)
    res = live.run(T0)
    assert res.status == "planned" and res.plan.status == PlanStatus.PENDING and live.actuator.applies == []


@pytest.mark.parametrize("approval, message", [
    ({"scale_up": {"auto_approve_after": "30m", "expire_after": "10m"}},
     "targets[0].approval.scale_up: auto_approve_after (0:30:00) must be shorter than expire_after (0:10:00)"),
    ({"scale_down": {"expire_after": "0s"}}, "targets[0].approval.scale_down: expire_after (0:00:00) must be positive"),
    ({"scale_up": {"auto_approve": "10m"}}, "targets[0].approval.scale_up.auto_approve: unknown field"),
    ({"emergency": {"reactive_override": "sometimes"}}, "targets[0].approval.emergency.reactive_override"),
])
def test_the_approval_section_is_validated_with_the_field_named(tmp_path, approval, message):
    from engine.config import load_config
    from engine.core.errors import ConfigError

    trace = write_trace(tmp_path / "load.csv", [1.0] * 3)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="approve", approval=approval)])
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert message in str(info.value)


def test_the_emergency_rule_also_acts_on_a_pending_plan_kept_for_the_same_change(sleepy, tmp_path):
    fc = {"name": "seasonal_naive", "history": "2h", "refit_every": "1h"}
    live, store = sleepy([100.0] * 25 + [400.0] * 5, {}, forecaster=fc, plan_ttl="1h")
    first = live.run(T0).plan
    assert first.status == PlanStatus.PENDING and live.actuator.applies == []
    # the rule is switched on (a reload): the next cycle plans the same change and acts on the kept plan
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", tmp_path / "load.csv", mode="approve",
                                                         forecaster=fc, plan_ttl="1h",
                                                         approval={"emergency": {"reactive_override": True}})])
    res = build_live(cfg, store, live.actuator).run(T0 + STEP)
    assert res.plan.id == first.id and res.status == "applied"
    assert live.actuator.applies == [(first.decision_id, 50)]


def test_a_restart_after_dying_inside_the_actuator_settles_the_claimed_plan_without_writing_again(planned):
    cfg, store, live, plan = planned()
    approve(store, plan.id, plan.created_at, identity="unix:alice", channel="cli")

    def die(desired, platform):
        raise SystemExit("killed")  # the process ends after the platform took the change

    live.actuator.on_apply = die
    with pytest.raises(SystemExit):
        live.run(plan.created_at + STEP)
    assert store.plan(plan.id).status == PlanStatus.APPLYING
    assert store.decision(plan.decision_id)["status"] == "intent"
    live.actuator.on_apply = None
    restarted = build_live(cfg, store, live.actuator)
    res = restarted.run(plan.created_at + 2 * STEP)
    assert live.actuator.applies == [(plan.decision_id, 20)]  # once
    assert store.plan(plan.id).status == PlanStatus.APPLIED
    assert "applied before the restart" in res.details["reconciled"][0]
    assert [t.to_status for t in store.plan_history(plan.id)][-2:] == [PlanStatus.APPLYING, PlanStatus.APPLIED]


# ------------------------------------------------ an approved schedule's envelope
def _scheduled(now, current: int, desired: int, plan: list[tuple[int, int]]):
    """A planner decision at ``now`` whose schedule plans ``(minutes from
    now, capacity)`` steps (the first 5 minutes fixed, inside the lead time)."""
    from engine.core.types import Decision, PlanStep, Schedule

    steps = [PlanStep(now + timedelta(minutes=5), now, current, 1.0, 0.0, 0.0, 1.0, fixed=True)]
    steps += [PlanStep(now + timedelta(minutes=m), now + timedelta(minutes=m - 10), c, 1.0, 0.0, 0.0, 1.0)
              for m, c in plan]
    sched = Schedule(now, timedelta(minutes=10), STEP, tuple(steps), 1.0, 0.0, 0.0, 1, "unserved", 1.0, "test")
    return Decision(target="web", at=now, current=current, desired=desired, recommendation=desired, steps=(),
                    schedule=sched)


def test_a_change_inside_a_schedule_a_person_approved_is_carried_out_without_asking_again(planned):
    """A person approves "8 from +10 min, back to 3 from +40 min" once; the
    later change to 3 at +40 min is approved by that approval (recorded as
    such, verifiable in the chain) and applied; a deviation asks again."""
    from engine.plans import ENVELOPE_APPROVER, create_plan

    cfg, store, live, first = planned()
    t0 = first.created_at + STEP
    ahead = [(10, 8), (15, 8), (20, 8), (25, 8), (30, 8), (35, 8), (40, 3), (45, 3), (50, 3)]
    p1 = create_plan(store, live.target, _scheduled(t0, 5, 8, ahead), 5, "scheduled", t0)
    assert p1.status == PlanStatus.PENDING
    approve(store, p1.id, t0, identity="unix:alice", channel="cli")
    platform = Platform(capacity=5)
    apply_plan(store, platform, p1.id, t0, live.target, channel="cli")
    # 30 minutes later the planner orders the drop to 3 that alice's schedule holds
    t1 = t0 + timedelta(minutes=30)
    later = [(m - 30, c) for m, c in ahead if m - 30 >= 10]
    p2 = create_plan(store, live.target, _scheduled(t1, 8, 3, later), 8, "back to 3", t1, actuator=platform)
    assert p2.status == PlanStatus.APPLIED and platform.capacity == 3 and platform.applies[-1][1] == 3
    hist = store.plan_history(p2.id)
    approval = next(t for t in hist if t.to_status == PlanStatus.APPROVED)
    assert approval.identity == ENVELOPE_APPROVER and f"plan {p1.id} approved by unix:alice" in approval.comment
    # a change the approved schedule does not hold (4, not 3) asks a person again
    t2 = t1 + STEP
    p3 = create_plan(store, live.target, _scheduled(t2, 3, 4, [(10, 4), (15, 4)]), 3, "up to 4", t2,
                     actuator=platform)
    assert p3.status == PlanStatus.PENDING and platform.capacity == 3
    from engine import audit

    assert audit.verify(store).ok


def test_an_approval_edited_into_the_tables_widens_no_envelope(planned):
    """A schedule approval that exists only in the tables (here: the approver
    rewritten with sqlite3) is not in the audit chain: it covers nothing."""
    from engine.plans import create_plan

    cfg, store, live, first = planned()
    t0 = first.created_at + STEP
    ahead = [(10, 8), (20, 8), (40, 3), (45, 3)]
    p1 = create_plan(store, live.target, _scheduled(t0, 5, 8, ahead), 5, "scheduled", t0)
    approve(store, p1.id, t0, identity="policy:auto-approve", channel="auto")  # a rule, not a person
    store.db.execute("UPDATE plan_transitions SET identity='unix:alice' WHERE plan_id=? AND to_status='approved'",
                     (p1.id,))
    platform = Platform(capacity=5)
    apply_plan(store, platform, p1.id, t0, live.target, channel="auto")
    t1 = t0 + timedelta(minutes=30)
    p2 = create_plan(store, live.target, _scheduled(t1, 8, 3, [(10, 3), (15, 3)]), 8, "back to 3", t1,
                     actuator=platform)
    assert p2.status == PlanStatus.PENDING and platform.capacity == 8


def test_the_cli_never_applies_beside_a_running_daemon(planned, capsys):
    """One process acts on a target at a time: with the state file's lock
    held (a daemon runs), `apply` refuses and `approve --apply` leaves the
    apply to the daemon; nothing is written to the platform."""
    cfg, store, live, plan = planned()
    daemon = Store(store.path)
    daemon.lock()
    try:
        code, out, err = run_cli(capsys, "approve", plan.id, "--config", str(cfg), "--apply")
        assert code == 0 and "applies the plan at the target's next cycle" in out
        assert store.plan(plan.id).status == PlanStatus.APPROVED
        code, out, err = run_cli(capsys, "apply", plan.id, "--config", str(cfg))
        assert code == 2 and "a daemon runs on" in err
        assert store.plan(plan.id).status == PlanStatus.APPROVED
    finally:
        daemon.close()
    code, out, err = run_cli(capsys, "apply", plan.id, "--config", str(cfg))
    assert code == 0 and store.plan(plan.id).status == PlanStatus.APPLIED


def test_listing_plans_writes_nothing_and_shows_a_plan_past_its_expiry_as_expired(planned, capsys):
    """``forescale plans`` is a read: a plan past its time is shown expired
    (and no longer waiting) without a transition being written; the
    daemon's next cycle of the target records it, once."""
    cfg, store, live, plan = planned(plan_ttl="30s")  # made a minute ago: past its time now

    def written() -> tuple[int, int]:
        return (store.db.execute("SELECT COUNT(*) FROM plan_transitions").fetchone()[0],
                store.db.execute("SELECT COUNT(*) FROM audit").fetchone()[0])

    before = written()
    rc, out, _ = run_cli(capsys, "plans", "--config", str(cfg))
    assert rc == 0 and out.strip() == "no plans waiting"
    rc, out, _ = run_cli(capsys, "plans", "--config", str(cfg), "--all")
    assert rc == 0 and f"{plan.id}  web" in out and " expired " in out
    assert "its expiry is recorded at the target's next cycle" in out
    rc, out, _ = run_cli(capsys, "plans", "--config", str(cfg), "--all", "--json")
    (p,) = json.loads(out)
    assert p["status"] == "expired" and p["expiry_recorded"] is False
    assert written() == before and store.plan(plan.id).status == PlanStatus.PENDING
    # the daemon's next cycle records the expiry (and a new plan), and the
    # listing then says it is recorded
    res = live.run(SystemClock().now())
    assert f"plan {plan.id} expired unapproved (web 5 -> 20)" in res.details["plans"]
    assert store.plan(plan.id).status == PlanStatus.EXPIRED
    assert [t.to_status for t in store.plan_history(plan.id)] == [PlanStatus.PENDING, PlanStatus.EXPIRED]
    rc, out, _ = run_cli(capsys, "plans", "--config", str(cfg), "--all", "--json")
    old = next(d for d in json.loads(out) if d["id"] == plan.id)
    assert old["status"] == "expired" and "expiry_recorded" not in old
