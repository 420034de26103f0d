"""``alibaba-ecs``: vertical. Capacity is the index of the instance's type in
the configured ladder of instance types.

A change is checked for stock first (``DescribeResourcesModification``),
before anything is stopped. Pay-as-you-go (``PostPaid``) instances are
stopped, changed with ``ModifyInstanceSpec`` and started again; a stopped
one is only changed (and stays stopped). Subscription (``PrePaid``)
instances are changed with ``ModifyPrepayInstanceSpec`` (``AutoPay``,
rebooted when finished if they were running). If the change fails after the
stop, the instance is started again with its old type and the error says so.

**apply is stepwise** (``capabilities.stepwise_apply``), like ``aws-ec2``: ECS
must finish a stop before the spec can be modified, and a stop, a start or a
reboot takes about a minute, so each call looks at the instance, issues the
next step that can be issued now and returns without waiting:

==================================  ===========================================
instance seen by ``apply(n)``       what the call does (``details.phase``)
==================================  ===========================================
Running, type of rung ``n``         nothing: ``verified`` (``in-service``)
Running, another type               stock check, then StopInstance (PostPaid,
                                    ``stopping``) or ModifyPrepayInstanceSpec
                                    (PrePaid, ``rebooting``)
Stopped after our stop              ModifyInstanceSpec, StartInstance
                                    (``starting``)
Stopped, not by us                  stock check, ModifyInstanceSpec: stays
                                    stopped, ``verified``
Stopping/Starting during our change nothing yet
between states otherwise            TransientActuatorError: not changed while
                                    it is between states (next cycle again)
==================================  ===========================================

The engine calls ``apply`` again with the same capacity and decision id on
each later cycle until verified. A step the instance has not finished
``verify_timeout`` after it was asked is an error saying what to do. What
this actuator stopped is remembered by the actuator itself and recorded in each result's details
(``stopped_by_us``, ``started``); the engine hands that record to
``resume()`` before it continues a change, so a change begun by another
process (``forescale once`` from cron, ``forescale apply``, a daemon since
restarted) is finished the same way: what forescale stopped, it starts
again. An instance stopped by someone else is changed and left stopped.

``read`` reports ``count`` = the rung of the instance's type and ``ready`` =
``count`` while it is Running, else 0 (nothing of it serves while it stops,
reboots or is stopped; its status is in ``details``), so a change is settled
only once the instance runs with its new type.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Literal, Sequence

from pydantic import Field

from engine.core.errors import (
    ActuatorError,
    LimitExceeded,
    PermanentActuatorError,
    TransientActuatorError,
)
from engine.core.plugins import Capabilities
from engine.core.types import ActionPlan, ActuationResult, CapacityReading
from engine.core.units import Duration

from ..base import Monotonic, Sleep, ladder_of, require_non_negative
from .client import RUNNING, STABLE_STATES, STOPPED, EcsActuator, EcsConnectionConfig, EcsInstance, _client_token, log


class EcsInstanceSpecConfig(EcsConnectionConfig):
    type: str = "alibaba-ecs"
    instance_id: str = Field(min_length=1)
    #: StopInstance ForceStop: like pulling the power; off by default so the
    #: guest shuts down cleanly
    force_stop: bool = False
    #: StopInstance StoppedMode: KeepCharging keeps the instance's resources
    #: reserved while it is stopped, so the StartInstance after the change
    #: (or the one that undoes a failed change) cannot fail for lack of stock
    stopped_mode: Literal["KeepCharging", "StopCharging"] = "KeepCharging"
    #: downtime reported by describe() for a stop/modify/start of a running
    #: pay-as-you-go instance; a rough figure (a clean stop plus a start take
    #: on the order of a minute each), replace it with what you measure
    stop_start_downtime: Duration = timedelta(minutes=2)
    #: downtime reported for the reboot that applies a subscription change
    reboot_downtime: Duration = timedelta(minutes=1)

    @property
    def resize_downtime(self) -> timedelta:
        # the longer of the two ways a change is applied (pay-as-you-go)
        return max(self.stop_start_downtime, self.reboot_downtime)


@dataclass
class _Change:
    """A change in flight: what this actuator did, and when."""

    old_type: str
    asked_at: float  # monotonic time of the last step asked for
    stopped_by_us: bool = False  # PostPaid: we stopped it, we start it
    started: bool = False
    request_ids: list[str] = field(default_factory=list)  # of the steps so far


class EcsInstanceSpecActuator(EcsActuator):
    """Resize one ECS instance along a ladder of instance types (see the
    module docstring)."""

    name: ClassVar[str] = "alibaba-ecs"
    capabilities: ClassVar[Capabilities] = Capabilities(takes_ladder=True, stepwise_apply=True)
    Config = EcsInstanceSpecConfig
    config: EcsInstanceSpecConfig

    def __init__(self, config: EcsInstanceSpecConfig, *, target: str,
                 ladder: Sequence[str] | None = None, sleep: Sleep = time.sleep,
                 monotonic: Monotonic = time.monotonic, client: Any = None) -> None:
        ladder = ladder_of(self.name, ladder)
        super().__init__(config, target=target, sleep=sleep, monotonic=monotonic, client=client)
        self.ladder: tuple[str, ...] = ladder
        self._change: _Change | None = None

    # ------------------------------------------------------------- protocol
    def validate(self) -> None:
        """Credentials resolve, the instance exists, its type is on the ladder."""
        self.read()

    def read(self) -> CapacityReading:
        inst = self._describe_instance()
        count = self._index(inst)
        # a stopped, stopping or rebooting instance serves nothing of its rung
        return CapacityReading(count=count, ready=count if inst.status == RUNNING else 0,
                               details={"status": inst.status, "instance_type": inst.instance_type})

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        self._check_desired(desired)
        inst = self._describe_instance()
        new_type = self.ladder[desired]
        from_capacity = current if current is not None else self._index_or_none(inst.instance_type)
        details: dict[str, Any] = {
            "instance_id": inst.instance_id, "zone_id": inst.zone_id,
            "charge_type": inst.charge_type, "status": inst.status,
            "old_type": inst.instance_type, "new_type": new_type,
        }
        if inst.instance_type == new_type:
            details["api_actions"] = []
            return ActionPlan(self.name, self.target, from_capacity, desired,
                              f"no change: {inst.instance_id} already has type {new_type}",
                              details, timedelta(0))
        running = inst.status == RUNNING
        if inst.charge_type == "PrePaid":
            op = self._operator_type(inst.instance_type, new_type)
            actions = ["DescribeResourcesModification", "ModifyPrepayInstanceSpec"]
            details.update(operator_type=op, auto_pay=True, reboot_when_finished=running)
            downtime = self.config.reboot_downtime if running else timedelta(0)
            how = f"ModifyPrepayInstanceSpec ({op}, AutoPay" + (", reboot)" if running else ")")
        else:
            actions = (["DescribeResourcesModification", "StopInstance", "ModifyInstanceSpec",
                        "StartInstance"] if running
                       else ["DescribeResourcesModification", "ModifyInstanceSpec"])
            downtime = self.config.stop_start_downtime if running else timedelta(0)
            how = ("stop, ModifyInstanceSpec, start" if running
                   else "ModifyInstanceSpec (instance is stopped and stays stopped)")
        details["api_actions"] = actions
        return ActionPlan(
            self.name, self.target, from_capacity, desired,
            f"resize ECS instance {inst.instance_id} ({inst.charge_type}, {inst.zone_id}) "
            f"{inst.instance_type} -> {new_type}: {how}",
            details, downtime)

    def resume(self, decision_id: str, details: dict[str, Any]) -> None:
        """Take up a change another process began (a cron ``forescale once``,
        ``forescale apply``, a restarted daemon): ``details`` is the engine's
        record of its results so far. What they say this actuator stopped,
        it starts again; without them a stopped instance would be taken for
        someone else's, changed and left STOPPED (and reported verified).
        A change this object holds in memory is its own record."""
        if self._change is not None or "old_type" not in details or details.get("phase") == "in-service":
            return
        self._change = _Change(str(details["old_type"]), self.monotonic(),
                               stopped_by_us=bool(details.get("stopped_by_us")),
                               started=bool(details.get("started")))

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        """Issue the next step of the change to rung ``desired`` that can be
        issued now, and return (see the module docstring)."""
        self._check_desired(desired)
        t0 = self.monotonic()
        request_ids: list[str] = []
        new_type = self.ladder[desired]
        token = lambda: _client_token(self.target, decision_id, self.config.instance_id, new_type)  # noqa: E731
        inst = self._describe_instance()
        action = "none"
        # at most: start the change, modify + start after our stop, look again
        for _ in range(3):
            change = self._change
            if inst.instance_type == new_type and inst.status == RUNNING:
                self._change = None
                return self._result(desired, inst, t0, request_ids, True, "in-service", action, change)
            if inst.status == STOPPED and change is not None and change.stopped_by_us:
                action = "ModifyInstanceSpec"
                self._modify_and_start(inst, new_type, token(), request_ids)
            elif inst.instance_type == new_type and inst.status == STOPPED:
                # someone else's stopped instance: changed, and left stopped
                self._change = None
                return self._result(desired, inst, t0, request_ids, True, "stopped", action, change)
            elif inst.status not in STABLE_STATES:
                if change is None:
                    raise TransientActuatorError(
                        f"instance {inst.instance_id} is {inst.status}; not changing it while it "
                        f"is between states")
                self._check_not_stuck(inst, change, request_ids)
                break
            else:
                action = self._begin(inst, new_type, token(), request_ids)
            inst = self._describe_instance()
        phase = {"Stopping": "stopping", "Starting": "starting"}.get(inst.status, inst.status.lower())
        return self._result(desired, inst, t0, request_ids, False, phase, action, self._change)

    # ------------------------------------------------------------- steps
    def _begin(self, inst: EcsInstance, new_type: str, token: str, request_ids: list[str]) -> str:
        """The first step of a change of a Running or Stopped instance."""
        self._check_available(inst, new_type, request_ids)
        m = self._models()
        iid = inst.instance_id
        if inst.charge_type == "PrePaid":
            self._call(
                "ModifyPrepayInstanceSpec", "modify_prepay_instance_spec",
                m.ModifyPrepayInstanceSpecRequest(
                    region_id=self.config.region_id, instance_id=iid,
                    instance_type=new_type, auto_pay=True,
                    operator_type=self._operator_type(inst.instance_type, new_type),
                    # a running instance only gets the new type after a restart
                    reboot_when_finished=inst.status == RUNNING, client_token=token),
                where=iid, request_ids=request_ids)
            self._change = _Change(inst.instance_type, self.monotonic())
            return "ModifyPrepayInstanceSpec"
        if inst.charge_type != "PostPaid":
            raise PermanentActuatorError(
                f"instance {iid} has charge type {inst.charge_type!r}; "
                f"only PostPaid and PrePaid can be resized")
        if inst.status == RUNNING:
            self._call("StopInstance", "stop_instance",
                       m.StopInstanceRequest(instance_id=iid, force_stop=self.config.force_stop,
                                             stopped_mode=self.config.stopped_mode),
                       where=iid, request_ids=request_ids)
            self._change = _Change(inst.instance_type, self.monotonic(), stopped_by_us=True,
                                   request_ids=list(request_ids))
            return "StopInstance"
        self._call("ModifyInstanceSpec", "modify_instance_spec",
                   m.ModifyInstanceSpecRequest(instance_id=iid, instance_type=new_type, client_token=token),
                   where=iid, request_ids=request_ids)
        return "ModifyInstanceSpec"

    def _modify_and_start(self, inst: EcsInstance, new_type: str, token: str,
                          request_ids: list[str]) -> None:
        """After our stop: change the type (unless it already is the one
        asked for) and start the instance again."""
        change = self._change
        assert change is not None
        m = self._models()
        iid = inst.instance_id
        if inst.instance_type != new_type:
            try:
                self._call("ModifyInstanceSpec", "modify_instance_spec",
                           m.ModifyInstanceSpecRequest(instance_id=iid, instance_type=new_type,
                                                       client_token=token),
                           where=iid, request_ids=request_ids, status_conflict_is_final=True)
            except ActuatorError as exc:
                self._start_again(inst, request_ids, exc)
        try:
            self._call("StartInstance", "start_instance", m.StartInstanceRequest(instance_id=iid),
                       where=iid, request_ids=request_ids)
        except ActuatorError as exc:
            self._change = None
            raise PermanentActuatorError(
                f"instance {iid} was changed to {new_type} but starting it failed ({exc}); "
                f"the instance is STOPPED: start it by hand",
                request_ids=tuple(request_ids) + exc.request_ids) from exc
        change.started, change.asked_at = True, self.monotonic()

    def _check_not_stuck(self, inst: EcsInstance, change: _Change, request_ids: list[str]) -> None:
        """A step asked for that the instance has not finished within
        ``verify_timeout`` is reported, saying what to do."""
        waited = self.monotonic() - change.asked_at
        if waited < self.config.verify_timeout.total_seconds():
            return
        iid = inst.instance_id
        if change.stopped_by_us and not change.started:
            self._start_again(inst, request_ids, PermanentActuatorError(
                f"instance {iid} did not reach Stopped within {self.config.verify_timeout} "
                f"after StopInstance (status {inst.status}); nothing was modified",
                request_ids=tuple(request_ids)))
        self._change = None
        raise PermanentActuatorError(
            f"instance {iid} is {inst.status} {waited:.0f} s after the change was asked for "
            f"(verify_timeout {self.config.verify_timeout}); check it in the ECS console",
            request_ids=tuple(request_ids))

    def _start_again(self, inst: EcsInstance, request_ids: list[str],
                     cause: ActuatorError) -> None:
        """Undo our stop after a failed change: start the instance with its old
        type, then raise ``cause``'s kind of error saying so. Never returns."""
        m = self._models()
        iid = inst.instance_id
        old_type = self._change.old_type if self._change is not None else inst.instance_type
        # the whole change's request ids: the stop (an earlier call) and this call's
        request_ids[:0] = self._change.request_ids if self._change is not None else []
        self._change = None
        log.warning("%s: changing instance %s failed (%s); starting it again as %s", self.target, iid,
                    cause, old_type)
        try:
            self._call("StartInstance", "start_instance", m.StartInstanceRequest(instance_id=iid),
                       where=iid, request_ids=request_ids)
        except ActuatorError as exc:
            raise PermanentActuatorError(
                f"{cause}; starting instance {iid} again also failed ({exc}): it may be left "
                f"STOPPED with type {old_type}, start it by hand",
                request_ids=tuple(request_ids)) from cause
        kind = type(cause) if isinstance(cause, ActuatorError) else PermanentActuatorError
        raise kind(
            f"{cause}; instance {iid} was started again with its old type {old_type}",
            request_ids=tuple(dict.fromkeys(tuple(request_ids) + cause.request_ids))) from cause

    def _result(self, desired: int, inst: EcsInstance, t0: float, request_ids: list[str], verified: bool,
                phase: str, action: str, change: _Change | None) -> ActuationResult:
        return ActuationResult(
            requested=desired, observed=self._index(inst), verified=verified, elapsed=self._elapsed(t0),
            request_ids=tuple(request_ids),
            details={"instance_id": inst.instance_id, "target": desired, "action": action, "phase": phase,
                     "old_type": change.old_type if change is not None else inst.instance_type,
                     "new_type": self.ladder[desired], "observed_type": inst.instance_type,
                     "status": inst.status,
                     # what resume() takes up in another process
                     "stopped_by_us": change.stopped_by_us if change is not None else False,
                     "started": change.started if change is not None else False},
        )

    # ------------------------------------------------------------- helpers
    def _check_desired(self, desired: int) -> None:
        require_non_negative(desired)
        if desired >= len(self.ladder):
            raise PermanentActuatorError(
                f"desired capacity {desired} is beyond the ladder "
                f"(0..{len(self.ladder) - 1}: {', '.join(self.ladder)})")

    def _index_or_none(self, instance_type: str) -> int | None:
        return self.ladder.index(instance_type) if instance_type in self.ladder else None

    def _index(self, inst: EcsInstance) -> int:
        i = self._index_or_none(inst.instance_type)
        if i is None:
            raise PermanentActuatorError(
                f"instance {inst.instance_id} has type {inst.instance_type!r}, which is not in "
                f"the configured ladder ({', '.join(self.ladder)})")
        return i

    def _operator_type(self, old_type: str, new_type: str) -> str:
        old = self._index_or_none(old_type)
        if old is None:
            raise PermanentActuatorError(
                f"instance {self.config.instance_id} has type {old_type!r}, not in the ladder; "
                f"cannot tell whether {new_type} is an upgrade or a downgrade")
        return "upgrade" if self.ladder.index(new_type) > old else "downgrade"

    def _describe_instance(self) -> EcsInstance:
        m = self._models()
        iid = self.config.instance_id
        body = self._call("DescribeInstances", "describe_instances",
                          m.DescribeInstancesRequest(region_id=self.config.region_id,
                                                     instance_ids=json.dumps([iid])),
                          where=iid)
        items = (body.instances.instance if body.instances else None) or []
        found = [i for i in items if i.instance_id == iid]
        if not found:
            raise PermanentActuatorError(
                f"InvalidInstanceId.NotFound: instance {iid} not found in region "
                f"{self.config.region_id}",
                request_ids=(body.request_id,) if body.request_id else ())
        return EcsInstance.from_sdk(found[0])

    def _check_available(self, inst: EcsInstance, new_type: str, request_ids: list[str]) -> None:
        """Refuse (LimitExceeded) before anything is stopped when ECS has no
        stock of ``new_type`` for this instance in its zone."""
        m = self._models()
        op = ("Upgrade" if inst.charge_type != "PrePaid"
              else self._operator_type(inst.instance_type, new_type).capitalize())
        body = self._call(
            "DescribeResourcesModification", "describe_resources_modification",
            m.DescribeResourcesModificationRequest(
                region_id=self.config.region_id, resource_id=inst.instance_id,
                destination_resource="InstanceType", operation_type=op),
            where=inst.instance_id, request_ids=request_ids)
        status = "not offered as a change target"
        zones = (body.available_zones.available_zone if body.available_zones else None) or []
        for zone in zones:
            if zone.zone_id != inst.zone_id:
                continue
            resources = (zone.available_resources.available_resource
                         if zone.available_resources else None) or []
            for res in resources:
                if res.type != "InstanceType" or not res.supported_resources:
                    continue
                for sup in res.supported_resources.supported_resource or []:
                    if sup.value == new_type:
                        if sup.status == "Available":
                            return
                        status = f"{sup.status}, {sup.status_category}"
        raise LimitExceeded(
            f"instance type {new_type} is not available in zone {inst.zone_id} for instance "
            f"{inst.instance_id} ({status}); nothing was changed",
            request_ids=tuple(request_ids[-1:]))
