"""Plan / approve / apply.

In ``approve`` mode each capacity change becomes a stored :class:`Plan`::

    pending --approve--> approved --apply--> applied | failed | refused
    pending --reject---> rejected
    pending/approved --(expires_at passes, or a different plan supersedes it)--> expired

Only an approved, stored plan is applied, and it is refused (``refused``,
:class:`StalePlan`) when the capacity the actuator observes differs from the
one observed at planning time — Terraform's stale-plan rule. A plan expires
when it can no longer be useful: when its ``plan_ttl`` passes (default one
interval), or when a later cycle plans something different. A later cycle
that plans the same change (same target capacity, same observed capacity)
keeps the open plan instead of replacing it, so an operator's ``approve``
does not race the scheduler.

Every transition is mirrored on the decision the plan came from, so the
decision log (``forescale decisions``) shows who approved or rejected it,
when, and what applying it did. The plan states are explicit data in the
store; a richer approval workflow builds on them.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime
from typing import Any

from .core.errors import ActuatorError, ApprovalRequired, ForescaleError, PlanStateError, StalePlan
from .core.types import Plan, PlanStatus, ScaleEvent

OPEN = (PlanStatus.PENDING, PlanStatus.APPROVED)


def _mirror(store: Any, plan: Plan, status: str, now: datetime, **kw: Any) -> None:
    """Record a plan transition on its decision (the audit record)."""
    store.set_decision_status(plan.decision_id, status, now, **kw)


def create_plan(store: Any, target: Any, decision: Any, observed: int, description: str,
                now: datetime) -> Plan:
    """Store a pending plan for ``decision`` and return it. An open plan for
    the same change (same ``to_capacity`` and observed capacity) is kept and
    returned instead; any other open plan of the target is superseded."""
    keep: Plan | None = None
    for old in store.plans(target.name):
        if old.status not in OPEN:
            continue
        if keep is None and now < old.expires_at and old.to_capacity == decision.desired \
                and old.observed_capacity == observed:
            keep = old
            continue
        store.transition_plan(old.id, PlanStatus.EXPIRED, now, note=f"superseded by {decision.id}",
                              allowed_from=OPEN)
        _mirror(store, old, "expired", now, outcome={"plan_id": old.id, "superseded_by": decision.id})
    if keep is not None:
        return keep
    ttl = target.plan_ttl or target.interval
    pid = hashlib.sha1(decision.id.encode()).hexdigest()[:8]
    plan = Plan(id=pid, target=target.name, decision_id=decision.id, from_capacity=decision.current,
                to_capacity=decision.desired, observed_capacity=observed, created_at=now,
                expires_at=now + ttl, description=description, updated_at=now)
    store.save_plan(plan)
    return plan


def expire_plans(store: Any, target: str | None, now: datetime) -> list[Plan]:
    """Expire every open plan whose ``expires_at`` has passed."""
    out = []
    for p in store.plans(target):
        if p.status in OPEN and now >= p.expires_at:
            out.append(store.transition_plan(p.id, PlanStatus.EXPIRED, now, note="expired unapplied",
                                             allowed_from=OPEN))
            _mirror(store, p, "expired", now, outcome={"plan_id": p.id, "expired_at": str(p.expires_at)})
    return out


def approve(store: Any, plan_id: str, now: datetime, actor: str, note: str = "") -> Plan:
    plan = store.plan(plan_id)
    if plan.status in OPEN and now >= plan.expires_at:
        store.transition_plan(plan_id, PlanStatus.EXPIRED, now, note="expired before approval",
                              allowed_from=OPEN)
        _mirror(store, plan, "expired", now, outcome={"plan_id": plan.id, "expired_at": str(plan.expires_at)})
        raise PlanStateError(f"plan {plan_id} expired at {plan.expires_at:%Y-%m-%d %H:%M:%S}Z; "
                             "wait for the next plan")
    p = store.transition_plan(plan_id, PlanStatus.APPROVED, now, actor=actor, note=note,
                              allowed_from=(PlanStatus.PENDING,))
    _mirror(store, p, "approved", now, approval={"actor": actor, "at": str(now), "note": note})
    return p


def reject(store: Any, plan_id: str, now: datetime, actor: str, note: str = "") -> Plan:
    p = store.transition_plan(plan_id, PlanStatus.REJECTED, now, actor=actor, note=note,
                              allowed_from=OPEN)
    _mirror(store, p, "rejected", now, approval={"actor": actor, "at": str(now), "note": note,
                                                  "rejected": True})
    return p


def apply_plan(store: Any, actuator: Any, plan_id: str, now: datetime) -> Plan:
    """Apply one approved plan; refuse a stale or expired one.

    The decision is marked ``intent`` before the actuator is called, so a
    crash during the call is settled by the daemon's reconcile on restart
    (see :meth:`engine.cycle.LiveTarget.reconcile`).
    """
    plan = store.plan(plan_id)
    if plan.status == PlanStatus.PENDING:
        raise ApprovalRequired(f"plan {plan_id} is not approved; run: forescale approve {plan_id}")
    if plan.status != PlanStatus.APPROVED:
        raise PlanStateError(f"plan {plan_id} is {plan.status.value}; only an approved plan can be applied")
    if now >= plan.expires_at:
        store.transition_plan(plan_id, PlanStatus.EXPIRED, now, note="expired before apply", allowed_from=OPEN)
        _mirror(store, plan, "expired", now, outcome={"plan_id": plan.id, "expired_at": str(plan.expires_at)})
        raise PlanStateError(f"plan {plan_id} expired at {plan.expires_at:%Y-%m-%d %H:%M:%S}Z")
    try:
        observed = actuator.read().count
    except LookupError as exc:
        raise PlanStateError(f"plan {plan_id}: the capacity in service cannot be read ({exc}); "
                             "not applying a plan that cannot be checked for staleness") from None
    if observed != plan.observed_capacity:
        store.transition_plan(plan_id, PlanStatus.REFUSED, now,
                              note=f"observed capacity {observed} != {plan.observed_capacity} at planning",
                              allowed_from=(PlanStatus.APPROVED,))
        _mirror(store, plan, "refused", now, outcome={"stale": True, "observed": observed,
                                                       "observed_at_planning": plan.observed_capacity})
        raise StalePlan(f"plan {plan_id} is stale: capacity is now {observed}, it was "
                        f"{plan.observed_capacity} when planned; refusing to apply")
    _mirror(store, plan, "intent", now)
    try:
        result = actuator.apply(plan.to_capacity, decision_id=plan.decision_id)
    except Exception as exc:
        err = exc if isinstance(exc, ActuatorError) else ActuatorError(f"{type(exc).__name__}: {exc}")
        store.transition_plan(plan_id, PlanStatus.FAILED, now, note=str(err), allowed_from=(PlanStatus.APPROVED,))
        _mirror(store, plan, "failed", now, outcome={"error": str(err), "error_type": type(exc).__name__,
                                                      "request_ids": list(err.request_ids)})
        if err is exc:
            raise
        raise err from exc
    store.record_actuation(plan.target, plan.decision_id, now, result)
    _mirror(store, plan, "applied" if result.verified else "unverified", now, outcome=result.to_dict())
    applied = store.transition_plan(plan_id, PlanStatus.APPLIED, now, allowed_from=(PlanStatus.APPROVED,))
    state = store.load_state(plan.target)
    if state is not None:
        store.save_state(plan.target, replace(
            state, current=plan.to_capacity,
            events=state.events + (ScaleEvent(now, plan.from_capacity, plan.to_capacity),)), now)
    return applied


def apply_approved(store: Any, actuator: Any, target: str, now: datetime) -> list[tuple[str, str]]:
    """Apply every approved plan of ``target`` (the daemon calls this each
    cycle). Returns (plan id, outcome) pairs; refusals and failures are
    recorded on the plan and its decision, not raised."""
    out = []
    for p in sorted(store.plans(target, PlanStatus.APPROVED), key=lambda p: p.created_at):
        try:
            apply_plan(store, actuator, p.id, now)
            out.append((p.id, "applied"))
        except ForescaleError as exc:
            out.append((p.id, f"{type(exc).__name__}: {exc}"))
    return out
