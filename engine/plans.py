"""Plan / approve / apply.

In ``approve`` mode each capacity change becomes a stored :class:`Plan`:

    pending --approve--> approved --apply--> applied | failed | refused
    pending --reject---> rejected
    pending/approved --(expires_at passes, or a newer plan supersedes it)--> expired

Only an approved, stored plan is applied, and it is refused (``refused``,
:class:`StalePlan`) when the capacity the actuator observes differs from
the one observed at planning time — Terraform's stale-plan rule. A plan
expires when it can no longer be useful: by default one interval after it
was made, when the next cycle's decision supersedes it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from .errors import ActuatorError, ApprovalRequired, PlanStateError, StalePlan
from .types import Plan, PlanStatus

OPEN = (PlanStatus.PENDING, PlanStatus.APPROVED)


def create_plan(store: Any, target: Any, decision: Any, observed: int, description: str,
                now: datetime) -> Plan:
    """Store a pending plan for ``decision``; older open plans of the target
    are superseded (expired)."""
    for old in store.plans(target.name):
        if old.status in OPEN:
            store.transition_plan(old.id, PlanStatus.EXPIRED, now, note=f"superseded by {decision.id}",
                                  allowed_from=OPEN)
    ttl = target.plan_ttl or target.interval
    pid = hashlib.sha1(decision.id.encode()).hexdigest()[:8]
    plan = Plan(id=pid, target=target.name, decision_id=decision.id, from_capacity=decision.current,
                to_capacity=decision.desired, observed_capacity=observed, created_at=now,
                expires_at=now + ttl, description=description, updated_at=now)
    store.save_plan(plan)
    return plan


def expire_plans(store: Any, target: str | None, now: datetime) -> list[Plan]:
    out = []
    for p in store.plans(target):
        if p.status in OPEN and now >= p.expires_at:
            out.append(store.transition_plan(p.id, PlanStatus.EXPIRED, now, note="expired unapplied",
                                             allowed_from=OPEN))
    return out


def approve(store: Any, plan_id: str, now: datetime, actor: str, note: str = "") -> Plan:
    plan = store.plan(plan_id)
    if plan.status == PlanStatus.PENDING and now >= plan.expires_at:
        store.transition_plan(plan_id, PlanStatus.EXPIRED, now, note="expired before approval",
                              allowed_from=OPEN)
        raise PlanStateError(f"plan {plan_id} expired at {plan.expires_at:%Y-%m-%d %H:%M:%S}Z; "
                             "wait for the next plan")
    p = store.transition_plan(plan_id, PlanStatus.APPROVED, now, actor=actor, note=note,
                              allowed_from=(PlanStatus.PENDING,))
    store.set_decision_status(p.decision_id, "approved", now, approval={"actor": actor, "at": str(now),
                                                                          "note": note})
    return p


def reject(store: Any, plan_id: str, now: datetime, actor: str, note: str = "") -> Plan:
    p = store.transition_plan(plan_id, PlanStatus.REJECTED, now, actor=actor, note=note,
                              allowed_from=OPEN)
    store.set_decision_status(p.decision_id, "rejected", now, approval={"actor": actor, "at": str(now),
                                                                          "note": note, "rejected": True})
    return p


def apply_plan(store: Any, actuator: Any, plan_id: str, now: datetime) -> Plan:
    """Apply one approved plan; refuse a stale one."""
    plan = store.plan(plan_id)
    if plan.status == PlanStatus.PENDING:
        raise ApprovalRequired(f"plan {plan_id} is not approved; run: forescale approve {plan_id}")
    if plan.status != PlanStatus.APPROVED:
        raise PlanStateError(f"plan {plan_id} is {plan.status.value}; only an approved plan can be applied")
    if now >= plan.expires_at:
        store.transition_plan(plan_id, PlanStatus.EXPIRED, now, note="expired before apply", allowed_from=OPEN)
        raise PlanStateError(f"plan {plan_id} expired at {plan.expires_at:%Y-%m-%d %H:%M:%S}Z")
    observed = int(actuator.read())
    if observed != plan.observed_capacity:
        store.transition_plan(plan_id, PlanStatus.REFUSED, now,
                              note=f"observed capacity {observed} != {plan.observed_capacity} at planning",
                              allowed_from=(PlanStatus.APPROVED,))
        store.set_decision_status(plan.decision_id, "refused", now, outcome={"stale": True, "observed": observed})
        raise StalePlan(f"plan {plan_id} is stale: capacity is now {observed}, it was "
                        f"{plan.observed_capacity} when planned; refusing to apply")
    store.set_decision_status(plan.decision_id, "intent", now)
    try:
        result = actuator.apply(plan.to_capacity, decision_id=plan.decision_id)
    except ActuatorError as exc:
        store.transition_plan(plan_id, PlanStatus.FAILED, now, note=str(exc), allowed_from=(PlanStatus.APPROVED,))
        store.set_decision_status(plan.decision_id, "failed", now, outcome={"error": str(exc)})
        raise
    store.record_actuation(plan.target, plan.decision_id, now, result)
    store.set_decision_status(plan.decision_id, "applied", now, outcome=result.to_dict())
    applied = store.transition_plan(plan_id, PlanStatus.APPLIED, now, allowed_from=(PlanStatus.APPROVED,))
    state = store.load_state(plan.target)
    if state is not None:
        from dataclasses import replace

        from .types import ScaleEvent

        store.save_state(plan.target, replace(
            state, current=plan.to_capacity,
            events=state.events + (ScaleEvent(now, plan.from_capacity, plan.to_capacity),)), now)
    return applied


def apply_approved(store: Any, actuator: Any, target: str, now: datetime) -> list[tuple[str, str]]:
    """Apply every approved plan of ``target`` (the daemon calls this each
    cycle). Returns (plan id, outcome) pairs; refusals are recorded, not raised."""
    out = []
    for p in store.plans(target, PlanStatus.APPROVED):
        try:
            apply_plan(store, actuator, p.id, now)
            out.append((p.id, "applied"))
        except (StalePlan, PlanStateError, ActuatorError) as exc:
            out.append((p.id, f"{type(exc).__name__}: {exc}"))
    return out
