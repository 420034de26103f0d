"""Plan / approve / apply: the plan state machine.

In ``approve`` mode each capacity change becomes a stored :class:`Plan`::

    pending ──approve──▶ approved ──claim──▶ applying ──▶ applied | failed
       │                    │                    └──────▶ refused (stale)
       │                    ├── re-checked at apply against the config in
       │                    │   force: outside the bounds, a mode that never
       │                    │   writes, an approval not in the audit chain ──▶ refused
       ├──reject────────────┴──▶ rejected   (an approval can be withdrawn until it is claimed)
       ├──expires_at passes ───▶ expired
       └──a newer plan for the same target ──▶ superseded

Rules, each enforced in one place:

1. **Transitions are appended, never overwritten**: every move writes a row
   of ``plan_transitions`` and an audit record (:mod:`engine.audit`) in the
   transaction that makes it; a rejection after an approval is a second
   entry on the decision, the approval stays.
2. **Who decided is an identity, not a name typed in**: ``unix:alice`` (the
   OS account running the CLI, :func:`cli_identity`), the HTTP token's
   identity, ``policy:auto-approve`` or ``policy:emergency``; with the
   channel (:data:`CHANNELS`) and the person's comment.
3. **Apply re-checks** (:func:`apply_plan`): the plan is re-validated
   against the target's configuration *in force* — bounds win (a plan
   outside ``[min_replicas, max_replicas]`` is ``refused`` with the reason,
   not clamped: a person approved that number, not another), and a target in
   ``observe`` or ``dry-run`` mode is never written to, through any path;
   its approval must be verifiable in the audit chain (the latest record of
   the plan is an approval of exactly this plan, its hash, and its HMAC when
   a key is set, verify), so a status edited with ``sqlite3`` is refused and
   logged; the capacity in service must be the one planned from
   (Terraform's stale-plan rule).
4. **One writer per plan**: the plan is *claimed* (approved -> applying, in
   one ``BEGIN IMMEDIATE`` transaction together with every check above)
   before the actuator is called; a second process finds it ``applying``
   and stops before any write. A claim left by a crash is settled by
   :func:`settle_interrupted` from what the platform shows, never by calling
   the actuator again.
5. **People sleep** (:class:`engine.config.ApprovalConfig`): per direction
   a plan may auto-approve after a while without an answer
   (``policy:auto-approve`` through channel ``auto``) and expire after
   another; a scale-up plan that supersedes a pending scale-up keeps its
   ``waiting_since``, so re-planning every cycle under rising load does not
   reset the deadline. The emergency rule lets a plan whose decision was
   raised by the reactive override (a live spike) act without approval when
   configured, recorded as ``policy:emergency``.

The cycle calls :func:`create_plan` when it decides a change and
:func:`tick` at the start of each cycle; people (CLI, HTTP, console, signed
links) call :func:`approve` / :func:`reject`; :func:`pending` lists what
waits, with its decision and schedule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Mapping

from . import audit
from .core.units import isoformat, parse_time
from .core.errors import ActuatorError, ApprovalRequired, ForescaleError, PlanRefused, PlanStateError, StalePlan
from .core.types import Action, Decision, Plan, PlanStatus, PlanTransition, ScaleEvent, ScalingState

if TYPE_CHECKING:  # the config is the orchestrator's; plans only read it
    from .config import TargetConfig
    from .store import Store

log = logging.getLogger("forescale.plans")

OPEN = (PlanStatus.PENDING, PlanStatus.APPROVED)
#: how a decision on a plan reached forescale
CHANNELS = ("cli", "http", "console", "link", "auto")
#: the identities of approvals made by a rule, not a person
AUTO_APPROVER = "policy:auto-approve"
EMERGENCY_APPROVER = "policy:emergency"
#: who approves a change inside a schedule a person approved (:func:`within_envelope`)
ENVELOPE_APPROVER = "policy:approved-schedule"
#: modes in which an approved plan may be written to the platform
WRITING_MODES = ("approve", "auto")
_BUSY = "plan {} is being applied by another process (or was interrupted while applying); not applying it twice"


def cli_identity() -> str:
    """The authenticated identity of whoever runs the CLI: the OS account of
    the process (``unix:alice``), which a flag cannot change."""
    import pwd

    uid = os.getuid()
    try:
        return f"unix:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"unix:uid={uid}"


@dataclass(frozen=True)
class PlanEvent:
    """What :func:`tick` (or :func:`apply_approved`) did to one plan, for the
    cycle's result, the daemon log and ``forescale once``. ``kind``: applied,
    failed, refused, expired, auto-approved, settled or skipped."""

    plan_id: str
    kind: str
    message: str

    @property
    def failed(self) -> bool:
        return self.kind in ("failed", "refused")

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class PlanView:
    """A plan with what a person needs to decide on it (the console's and
    the HTTP API's listing): the decision that proposed it (its steps and
    reasons), the schedule when the planner made one, its history, and when
    a rule will decide if nobody does."""

    plan: Plan
    decision: dict[str, Any] | None
    history: tuple[PlanTransition, ...]
    auto_approve_at: datetime | None = None

    @property
    def schedule(self) -> Mapping[str, Any] | None:
        return self.plan.schedule

    def to_dict(self) -> dict[str, Any]:
        from .core.units import isoformat

        return {"plan": self.plan.to_dict(), "decision": self.decision,
                "history": [t.to_dict() for t in self.history],
                "auto_approve_at": isoformat(self.auto_approve_at)}


# ------------------------------------------------------------------ making
def _rule(target: Any, action: Action) -> Any:
    return target.approval.scale_down if action == Action.SCALE_DOWN else target.approval.scale_up


def plan_lifetime(target: "TargetConfig", action: Action) -> timedelta:
    """How long a plan of this direction waits before it expires: the
    direction's ``expire_after``; else, when it auto-approves, one interval
    past that deadline (so the cycle after it sees it); else ``plan_ttl``,
    else one interval (the next cycle's decision would replace it)."""
    rule = _rule(target, action)
    if rule.expire_after is not None:
        return rule.expire_after
    if rule.auto_approve_after is not None:
        return rule.auto_approve_after + target.interval
    return target.plan_ttl or target.interval


def _emergency(target: Any, decision: Decision) -> str | None:
    """Why the emergency rule lets this decision act unapproved (``None``:
    it does not): configured, a scale-up, and raised by the reactive
    override on a live observation (the policy applies the override only to
    a fresh observation)."""
    if not target.approval.emergency.reactive_override or decision.action != Action.SCALE_UP:
        return None
    # with several resources: the override of the resource that set the size
    sized_for = decision.extra.get("resource")
    step = next((s for s in decision.steps if s.name == "reactive" and s.resource == sized_for), None) \
        if sized_for else decision.step("reactive")
    if step is None or step.reason != "ReactiveOverride" or not step.changed:
        return None
    return f"emergency rule: reactive override on a live spike ({step.message})"


def create_plan(store: "Store", target: "TargetConfig", decision: Decision, observed: int, description: str,
                now: datetime, *, state: ScalingState | None = None, context: dict[str, Any] | None = None,
                actuator: Any = None) -> Plan:
    """Record ``decision`` (status ``planned``) and the plan it proposes, in
    one transaction with ``state`` (the target's state after the decision)
    and the audit records; return the plan.

    An open plan for the same change (same ``to_capacity``, same observed
    capacity, not expired) is kept: the decision is recorded as re-planning
    it, and follows its fate. Every other open plan of the target is
    superseded. The plan carries the decision's schedule when the planner
    made one. When the emergency rule applies (:func:`_emergency`), the plan
    is approved as ``policy:emergency`` and, given the ``actuator``, applied
    at once (through :func:`apply_plan`'s checks)."""
    pid = hashlib.sha1(decision.id.encode()).hexdigest()[:8]
    keep: Plan | None = None
    waiting_since = now
    for old in store.plans(target.name):
        if old.status not in OPEN:
            continue
        if keep is None and now < old.expires_at and old.to_capacity == decision.desired \
                and old.observed_capacity == observed:
            keep = old
            continue
        if old.status == PlanStatus.PENDING and old.action == decision.action and old.waiting_since:
            waiting_since = min(waiting_since, old.waiting_since)
        store.transition_plan(old.id, PlanStatus.SUPERSEDED, now, allowed_from=OPEN, channel="auto",
                              reason=f"superseded by plan {pid} ({decision.id}: "
                                     f"{decision.current} -> {decision.desired})",
                              outcome={"plan_id": old.id, "superseded_by": pid})
    if keep is not None:
        store.record_decision(decision, target.mode, store_status(keep), now, state=state,
                              outcome={"plan_id": keep.id, "replanned": True}, context=context, plan_id=keep.id)
        plan = keep
    else:
        schedule = decision.to_dict().get("schedule")  # the planner's Schedule, when there is one
        plan = Plan(id=pid, target=target.name, decision_id=decision.id, from_capacity=decision.current,
                    to_capacity=decision.desired, observed_capacity=observed, created_at=now,
                    expires_at=now + plan_lifetime(target, decision.action), description=description,
                    updated_at=now, waiting_since=waiting_since, schedule=schedule)
        store.save_plan(plan, decision=(decision, target.mode, context), state=state, channel="auto")
    if plan.status != PlanStatus.PENDING:
        return plan
    envelope = within_envelope(store, target, decision, now)
    why = _emergency(target, decision)
    if envelope is None and why is None:
        return plan
    if envelope is not None:
        approver, comment = ENVELOPE_APPROVER, envelope
    else:
        approver, comment = EMERGENCY_APPROVER, why
    plan = approve(store, plan.id, now, identity=approver, channel="auto", comment=comment)
    log.warning("target %s: plan %s approved by %s: %s", target.name, plan.id, approver, comment)
    if actuator is not None:
        try:
            return apply_plan(store, actuator, plan.id, now, target, channel="auto")
        except ForescaleError as exc:
            log.warning("target %s: emergency plan %s not applied: %s", target.name, plan.id, exc)
            return store.plan(plan.id)
    return plan


def within_envelope(store: "Store", target: "TargetConfig", decision: Decision, now: datetime) -> str | None:
    """Whether ``decision``'s change is one that a person already approved
    as part of a planner schedule: a person (not a policy rule) approved an
    earlier plan of this target whose schedule, still unexpired, plans
    exactly ``decision.desired`` for the interval this change first serves.
    Then the person approved "8 at 13:35, back to 3 at 03:00" once, and the
    engine carries that envelope out without asking again; any deviation
    (another capacity, a time past the approved schedule) asks again.
    Returns the reason, recorded with the approval, or None."""
    if decision.schedule is None:
        return None
    first = next((st for st in decision.schedule.steps if not st.fixed), None)
    if first is None:
        return None
    at = isoformat(first.at)
    for old in store.plans(target.name):
        if old.schedule is None or old.status not in (PlanStatus.APPROVED, PlanStatus.APPLYING,
                                                      PlanStatus.APPLIED):
            continue
        approval = next((t for t in reversed(store.plan_history(old.id)) if t.to_status == PlanStatus.APPROVED),
                        None)
        if approval is None or not approval.identity or approval.identity.startswith("policy:"):
            continue  # only a person's approval covers later changes
        if not _approval_in_chain(store, old, approval):
            log.error("target %s: plan %s shows an approval by %s that the audit chain does not hold; "
                      "it covers nothing", target.name, old.id, approval.identity)
            continue
        steps = [st for st in old.schedule.get("steps", []) if isinstance(st, Mapping) and not st.get("fixed")]
        if not steps or now >= parse_time(steps[-1]["at"]):
            continue  # that schedule has run out
        match = next((st for st in steps if st["at"] == at), None)
        if match is not None and int(match["capacity"]) == decision.desired:
            return (f"within the schedule of plan {old.id} approved by {approval.identity} at "
                    f"{isoformat(approval.at)}: {decision.desired} from {at}")
    return None


def _approval_in_chain(store: "Store", plan: Plan, approval: PlanTransition) -> bool:
    """The approval transition of ``plan`` has its own record in the audit
    chain, naming the same identity, and that record verifies (a row
    written into the tables with sqlite3 has none)."""
    for rec in store.db.execute("SELECT seq, payload FROM audit WHERE plan_id=? AND kind='approval' "
                                "ORDER BY seq DESC", (plan.id,)):
        body = json.loads(rec["payload"])
        if body.get("to") == PlanStatus.APPROVED.value and body.get("identity") == approval.identity:
            return audit.record_ok(store, rec["seq"]) is None
    return False


def store_status(plan: Plan) -> str:
    from .store import DECISION_STATUS

    return DECISION_STATUS[plan.status]


# ---------------------------------------------------------------- deciding
def _check_who(identity: str, channel: str) -> None:
    if not identity or not isinstance(identity, str):
        raise PlanStateError("a decision on a plan needs the authenticated identity of who made it")
    if channel not in CHANNELS:
        raise PlanStateError(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")


def _expire_if_due(store: Any, plan: Plan, now: datetime, why: str) -> bool:
    if past_expiry(plan, now):
        store.transition_plan(plan.id, PlanStatus.EXPIRED, now, allowed_from=OPEN, channel="auto",
                              reason=why, outcome={"plan_id": plan.id, "expired_at": str(plan.expires_at)})
        return True
    return False


def approve(store: "Store", plan_id: str, now: datetime, *, identity: str, channel: str,
            comment: str = "") -> Plan:
    """Approve a pending plan as ``identity`` (authenticated by the caller:
    :func:`cli_identity` for the CLI, the token's identity for HTTP and the
    console) through ``channel``; an expired plan becomes ``expired``."""
    _check_who(identity, channel)
    plan = store.plan(plan_id)
    if _expire_if_due(store, plan, now, "expired before approval"):
        raise PlanStateError(f"plan {plan_id} expired at {isoformat(plan.expires_at)}; "
                             "wait for the next plan")
    return store.transition_plan(plan_id, PlanStatus.APPROVED, now, allowed_from=(PlanStatus.PENDING,),
                                 identity=identity, channel=channel, comment=comment)


def reject(store: "Store", plan_id: str, now: datetime, *, identity: str, channel: str,
           comment: str = "") -> Plan:
    """Reject a pending plan, or withdraw an approval not yet acted on; the
    approval stays on record, the rejection is appended after it."""
    _check_who(identity, channel)
    return store.transition_plan(plan_id, PlanStatus.REJECTED, now, allowed_from=OPEN,
                                 identity=identity, channel=channel, comment=comment)


def expire_plans(store: "Store", target: str | None, now: datetime) -> list[Plan]:
    """Expire every open plan (of ``target``, or all) whose ``expires_at``
    has passed."""
    out = []
    for p in store.plans(target):
        if _expire_if_due(store, p, now, "expired unapplied"):
            out.append(store.plan(p.id))
    return out


def auto_approve(store: "Store", target: "TargetConfig", now: datetime) -> list[Plan]:
    """Approve, as ``policy:auto-approve`` through channel ``auto``, each
    pending plan of ``target`` whose direction auto-approves and whose wait
    has reached the deadline."""
    out = []
    for p in store.plans(target.name, PlanStatus.PENDING):
        after = _rule(target, p.action).auto_approve_after
        if after is None or now >= p.expires_at or now < (p.waiting_since or p.created_at) + after:
            continue
        out.append(approve(store, p.id, now, identity=AUTO_APPROVER, channel="auto",
                           comment=f"no answer within {after} ({p.action.value} auto-approves)"))
    return out


# --------------------------------------------------------------- verifying
def verify_approval(store: "Store", plan: Plan, db: Any = None) -> str | None:
    """Why the approval of ``plan`` cannot be believed (``None``: it can).
    The plan's latest audit record must be an approval of exactly this plan
    as stored now (its digest, target and capacity), and that record must
    verify in the chain (hash, link to its neighbours, HMAC when a key is
    set). A status set with ``sqlite3`` has no such record."""
    from .store import plan_digest

    db = db or store.db
    # the plan's own records (a decision that re-planned it is tagged with
    # the plan too, and is no transition of it)
    rec = db.execute("SELECT seq, kind, payload FROM audit WHERE plan_id=? AND kind IN ('approval', "
                     "'plan_transition') ORDER BY seq DESC LIMIT 1", (plan.id,)).fetchone()
    if rec is None:
        return "no audit record of the plan"
    body = json.loads(rec["payload"])
    if rec["kind"] != "approval" or body.get("to") != PlanStatus.APPROVED.value:
        return (f"the plan's latest audit record ({rec['seq']}) is a {rec['kind']} to {body.get('to')!r}, "
                "not its approval (was the status edited outside forescale?)")
    row = db.execute("SELECT * FROM plans WHERE id=?", (plan.id,)).fetchone()
    if body.get("plan_sha256") != plan_digest(row) or body.get("to_capacity") != plan.to_capacity \
            or body.get("target") != plan.target:
        return f"the plan differs from what audit record {rec['seq']} approved (edited outside forescale?)"
    if not body.get("identity"):
        return f"audit record {rec['seq']} names no approver"
    return audit.record_ok(store, rec["seq"])


def _claim_guard(store: Any, target: Any, observed: int, now: datetime):
    """The re-checks made inside the claiming transaction, in order."""
    def guard(db: Any, plan: Plan) -> tuple[PlanStatus, str] | None:
        if now >= plan.expires_at:
            return PlanStatus.EXPIRED, f"expired at {isoformat(plan.expires_at)} before it was applied"
        if target.mode not in WRITING_MODES:
            return PlanStatus.REFUSED, (f"target {target.name} is in {target.mode} mode now, "
                                        "which never writes to the platform")
        lo, hi = target.policy.bounds
        if not lo <= plan.to_capacity <= hi:
            return PlanStatus.REFUSED, (f"capacity {plan.to_capacity} is outside the bounds in force "
                                        f"[{lo}, {hi}] (policy min_replicas/max_replicas)")
        why = verify_approval(store, plan, db)
        if why is not None:
            log.error("target %s: plan %s has no verifiable approval, refusing it: %s", target.name, plan.id, why)
            return PlanStatus.REFUSED, f"approval cannot be verified: {why}"
        if observed != plan.observed_capacity:
            return PlanStatus.REFUSED, (f"stale: capacity is now {observed}, it was {plan.observed_capacity} "
                                        "when planned")
        return None
    return guard


# ---------------------------------------------------------------- applying
def apply_plan(store: "Store", actuator: Any, plan_id: str, now: datetime, target: "TargetConfig", *,
               identity: str | None = None, channel: str = "auto") -> Plan:
    """Apply one approved plan of ``target`` (its configuration *in force*),
    after the checks of rule 3, claiming it first (rule 4). Raises
    :class:`ApprovalRequired` (pending), :class:`PlanStateError` (any other
    state, expired, lost the claim, capacity unreadable),
    :class:`PlanRefused` (re-check failed), :class:`StalePlan`, or the
    actuator's error (the plan is then ``failed``)."""
    plan = store.plan(plan_id)
    if plan.target != target.name:
        raise PlanStateError(f"plan {plan_id} is for target {plan.target}, not {target.name}")
    if plan.status == PlanStatus.PENDING:
        raise ApprovalRequired(f"plan {plan_id} is not approved; run: forescale approve {plan_id}")
    if plan.status == PlanStatus.APPLYING:
        raise PlanStateError(_BUSY.format(plan_id))
    if plan.status != PlanStatus.APPROVED:
        raise PlanStateError(f"plan {plan_id} is {plan.status.value}; only an approved plan can be applied")
    try:
        observed = actuator.read().count
    except LookupError as exc:
        raise PlanStateError(f"plan {plan_id}: the capacity in service cannot be read ({exc}); "
                             "not applying a plan that cannot be checked for staleness") from None
    try:
        claimed = store.transition_plan(plan_id, PlanStatus.APPLYING, now, allowed_from=(PlanStatus.APPROVED,),
                                        identity=identity, channel=channel,
                                        guard=_claim_guard(store, target, observed, now),
                                        outcome={"plan_id": plan_id})
    except PlanStateError:
        now_status = store.plan(plan_id).status
        if now_status == PlanStatus.APPLYING:
            raise PlanStateError(_BUSY.format(plan_id)) from None
        raise
    if claimed.status == PlanStatus.EXPIRED:
        raise PlanStateError(f"plan {plan_id} expired at {isoformat(plan.expires_at)}")
    if claimed.status == PlanStatus.REFUSED:
        if claimed.note.startswith("stale:"):
            raise StalePlan(f"plan {plan_id} is stale: capacity is now {observed}, it was "
                            f"{plan.observed_capacity} when planned; refusing to apply")
        raise PlanRefused(f"plan {plan_id} refused: {claimed.note}")
    try:
        result = actuator.apply(plan.to_capacity, decision_id=plan.decision_id)
    except Exception as exc:
        err = exc if isinstance(exc, ActuatorError) else ActuatorError(f"{type(exc).__name__}: {exc}")
        store.transition_plan(plan_id, PlanStatus.FAILED, now, allowed_from=(PlanStatus.APPLYING,),
                              reason=str(err), outcome={"error": str(err), "error_type": type(exc).__name__,
                                                        "request_ids": list(err.request_ids)})
        if err is exc:
            raise
        raise err from exc
    state = store.load_state(plan.target)
    if state is not None:
        state = replace(state, current=plan.to_capacity,
                        events=state.events + (ScaleEvent(now, plan.from_capacity, plan.to_capacity),))
    return store.transition_plan(plan_id, PlanStatus.APPLIED, now, allowed_from=(PlanStatus.APPLYING,),
                                 # not yet in service: the next cycles verify it (and carry a
                                 # stepwise resize to its end), as for an auto-mode action
                                 outcome={**result.to_dict(), "accepted_at": isoformat(now)},
                                 decision_status="applied" if result.verified else "accepted",
                                 actuation=result, state=state)


def _applied_note(p: Plan) -> str:
    who = f" (approved by {p.actor} via {p.channel})" if p.actor else ""
    return f"plan {p.id} applied: {p.target} {p.from_capacity} -> {p.to_capacity}{who}"


def apply_approved(store: "Store", actuator: Any, target: "TargetConfig", now: datetime) -> list[PlanEvent]:
    """Apply every approved plan of ``target`` (oldest first). Refusals and
    failures are recorded on the plan and its decision and returned as
    events, not raised."""
    out = []
    for p in sorted(store.plans(target.name, PlanStatus.APPROVED), key=lambda p: p.created_at):
        try:
            out.append(PlanEvent(p.id, "applied", _applied_note(apply_plan(store, actuator, p.id, now, target))))
        except (StalePlan, PlanRefused) as exc:
            out.append(PlanEvent(p.id, "refused", f"{type(exc).__name__}: {exc}"))
        except ActuatorError as exc:
            out.append(PlanEvent(p.id, "failed", f"plan {p.id} failed: {type(exc).__name__}: {exc}"))
        except PlanStateError as exc:
            kind = "expired" if store.plan(p.id).status == PlanStatus.EXPIRED else "skipped"
            out.append(PlanEvent(p.id, kind, f"{type(exc).__name__}: {exc}"))
    return out


def settle_interrupted(store: "Store", target: "TargetConfig", actuator: Any, now: datetime) -> list[PlanEvent]:
    """Settle plans left ``applying`` by a process that died while calling
    the actuator (older than the target's cycle ``timeout``, so a live apply
    in another process is left alone): ``applied`` if the platform shows
    the planned capacity, else ``failed``. The actuator is only read, never
    called again: nothing is applied twice."""
    out = []
    stuck = [p for p in store.plans(target.name, PlanStatus.APPLYING)
             if now - (p.updated_at or p.created_at) >= target.timeout]
    if not stuck:
        return out
    try:
        observed: int | None = actuator.read().count
    except Exception:  # noqa: BLE001 - cannot tell: leave it for the next cycle
        return [PlanEvent(p.id, "skipped", f"plan {p.id} left applying: the capacity cannot be read")
                for p in stuck]
    for p in stuck:
        if observed == p.to_capacity:
            store.transition_plan(p.id, PlanStatus.APPLIED, now, allowed_from=(PlanStatus.APPLYING,),
                                  reason=f"interrupted while applying; the platform shows {observed}",
                                  outcome={"reconciled": True, "observed": observed})
            out.append(PlanEvent(p.id, "settled", f"plan {p.id}: applied before an interruption (observed "
                                                  f"{observed})"))
        else:
            store.transition_plan(p.id, PlanStatus.FAILED, now, allowed_from=(PlanStatus.APPLYING,),
                                  reason=f"interrupted while applying; the platform shows {observed}, "
                                         f"not {p.to_capacity}",
                                  outcome={"reconciled": True, "observed": observed})
            out.append(PlanEvent(p.id, "failed", f"plan {p.id}: interrupted while applying and not in "
                                                 f"effect (observed {observed}); failed"))
    return out


def tick(store: "Store", target: "TargetConfig", actuator: Any, now: datetime) -> list[PlanEvent]:
    """The plans' part of one cycle of ``target`` (its config in force), in
    order: settle interrupted applies, expire what is past its time,
    auto-approve what waited long enough, apply what is approved. Returns
    one event per plan touched (``str(event)`` is the line to log)."""
    events = settle_interrupted(store, target, actuator, now)
    events += [PlanEvent(p.id, "expired", f"plan {p.id} expired unapproved ({p.target} {p.from_capacity} -> "
                                          f"{p.to_capacity})") for p in expire_plans(store, target.name, now)]
    events += [PlanEvent(p.id, "auto-approved", f"plan {p.id} auto-approved: {p.note}")
               for p in auto_approve(store, target, now)]
    events += apply_approved(store, actuator, target, now)
    for e in events:
        (log.warning if e.failed else log.info)("target %s: %s", target.name, e)
    return events


# ---------------------------------------------------------------- querying
# A listing never writes. An open plan past its ``expires_at`` is shown as
# expired (:func:`as_of`) and left out of what waits (:func:`pending`); the
# ``expired`` transition itself is recorded by the daemon's next cycle of the
# target (:func:`tick`), or by an approve or apply of the plan, so that every
# transition is made by the process acting on the plan and told once.
def past_expiry(plan: Plan, now: datetime) -> bool:
    """``plan`` is open but its time is up: it can no longer be approved or
    applied, and its ``expired`` transition is not recorded yet."""
    return plan.status in OPEN and now >= plan.expires_at


def as_of(plan: Plan, now: datetime) -> Plan:
    """``plan`` as a listing at ``now`` shows it: expired once past its time
    (see :func:`past_expiry`), whatever the state file says yet."""
    return replace(plan, status=PlanStatus.EXPIRED) if past_expiry(plan, now) else plan


def pending(store: "Store", target: str | None = None,
            targets: Mapping[str, "TargetConfig"] | None = None, now: datetime | None = None) -> list[PlanView]:
    """Plans waiting for a person (pending, and approved but not yet
    applied), newest first, each with its decision, schedule and history;
    ``targets`` (name -> TargetConfig) fills in the auto-approval deadline;
    with ``now``, a plan past its expiry waits for nobody and is left out."""
    out = []
    for p in store.plans(target, PlanStatus.PENDING) + store.plans(target, PlanStatus.APPROVED):
        if now is not None and past_expiry(p, now):
            continue
        cfg = (targets or {}).get(p.target)
        deadline = None
        if cfg is not None and p.status == PlanStatus.PENDING:
            after = _rule(cfg, p.action).auto_approve_after
            deadline = None if after is None else (p.waiting_since or p.created_at) + after
        out.append(PlanView(p, store.decision(p.decision_id), tuple(store.plan_history(p.id)), deadline))
    return out


__all__ = ["AUTO_APPROVER", "CHANNELS", "EMERGENCY_APPROVER", "OPEN", "PlanEvent", "PlanView", "apply_approved",
           "apply_plan", "approve", "as_of", "auto_approve", "cli_identity", "create_plan", "expire_plans", "past_expiry", "pending",
           "plan_lifetime", "reject", "settle_interrupted", "tick", "verify_approval"]
