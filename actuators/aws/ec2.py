"""``aws-ec2``: one EC2 instance resized along a ladder of instance types;
capacity is the rung index.

A resize is StopInstances, ModifyInstanceAttribute InstanceType,
StartInstances. The platform must finish the stop before the type can be
modified, and that takes a minute or more, so **apply is stepwise**
(``capabilities.stepwise_apply``): each call looks at the instance and issues
the next step that can be issued now, then returns without waiting:

========================================  =====================================
instance seen by ``apply(n)``             what the call does (``details.phase``)
========================================  =====================================
running, type of rung ``n``               reads the status checks once:
                                          ``verified`` when they pass
                                          (``in-service``; else ``status-checks``)
running, another type                     StopInstances (``stopping``)
stopping, after our stop                  nothing yet (``stopping``)
stopped, after our stop                   ModifyInstanceAttribute and
                                          StartInstances (``starting``)
pending                                   nothing yet (``starting``)
========================================  =====================================

When a step's effect is already visible (the instance stopped at once), the
same call goes on to the next step. The engine calls ``apply`` again with the
same capacity and decision id on each later cycle until the result is
verified. A stop or start that the instance has not finished
``verify_timeout`` after it was asked is a PermanentActuatorError that says
what to do by hand. If the modify or the start fails once the instance is
stopped, the instance is started again with its previous type and the
original error is raised, saying so.

forescale starts only an instance it stopped itself: that memory is the
actuator's (one instance per actuator), recorded in each result's details
(``stopped_by_us``, ``started``) and handed back by the engine to
``resume()`` before it continues a resize, so a resize begun by another
process (``forescale once`` from cron, ``forescale apply``, a daemon since
restarted) is finished the same way. An instance someone else stopped is
left stopped and reported (start it by hand, or let the next decision
resize it once it runs). Only EBS-backed instances are resized.

``read`` reports ``count`` = the rung of the instance's current type and
``ready`` = ``count`` while it is running, else 0 (nothing of it serves while
it stops, starts or is stopped; its state is in ``details``), so a resize is
settled only once the instance runs with its new type.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Mapping, Sequence

from pydantic import Field

from engine.core.errors import ActuatorError, LimitExceeded, PermanentActuatorError
from engine.core.plugins import Capabilities
from engine.core.types import ActionPlan, ActuationResult, CapacityReading
from engine.core.units import Duration

from ..base import Monotonic, Sleep, ladder_of, require_non_negative
from .errors import with_ids
from .session import AwsActuator, AwsConfig

log = logging.getLogger(__name__)

_GONE = ("shutting-down", "terminated")


class EC2InstanceTypeConfig(AwsConfig):
    type: str = "aws-ec2"
    #: the instance to resize
    instance_id: str = Field(pattern=r"^i-[0-9a-f]{8,17}$")
    #: stated in describe() so approvers see the cost of a resize: a stop
    #: and start of an EBS-backed instance usually takes one to three
    #: minutes, status checks a few more; five minutes is a cautious default.
    downtime_estimate: Duration = timedelta(minutes=5)
    #: a resize is verified only once the instance and system status checks pass
    wait_for_status_checks: bool = True

    @property
    def resize_downtime(self) -> timedelta:
        return self.downtime_estimate


@dataclass(frozen=True)
class _Instance:
    id: str
    state: str
    type: str
    root_device: str


@dataclass
class _Resize:
    """A resize in flight: what this actuator stopped, and when."""

    old_type: str
    stopped_at: float
    started_at: float | None = None


class EC2InstanceTypeActuator(AwsActuator):
    """Vertical: one EC2 instance's type (see the module docstring)."""

    name: ClassVar[str] = "aws-ec2"
    capabilities: ClassVar[Capabilities] = Capabilities(takes_ladder=True, stepwise_apply=True)
    Config = EC2InstanceTypeConfig
    service: ClassVar[str] = "ec2"

    def __init__(self, config: EC2InstanceTypeConfig, *, target: str,
                 ladder: Sequence[str] | None = None, sleep: Sleep = time.sleep,
                 monotonic: Monotonic = time.monotonic, ec2: Any = None) -> None:
        types = ladder_of(self.name, ladder)
        super().__init__(config, target=target, sleep=sleep, monotonic=monotonic, client=ec2)
        self.config: EC2InstanceTypeConfig = config
        self.ladder: tuple[str, ...] = types
        self._resize: _Resize | None = None

    # -- protocol
    def validate(self) -> None:
        self.check_credentials()
        inst = self._instance()
        if inst.state in _GONE:
            raise PermanentActuatorError(f"instance {inst.id} is {inst.state}")
        if inst.root_device != "ebs":
            raise PermanentActuatorError(
                f"instance {inst.id} has a {inst.root_device} root device; only EBS-backed "
                f"instances can be stopped to change their type"
            )
        self._rung_of(inst.type)
        # the ladder's names exist in this region (a typo fails now, not mid-resize)
        for i in range(0, len(self.ladder), 100):
            self.call("describe_instance_types", InstanceTypes=list(self.ladder[i:i + 100]))
        # the permissions a resize needs, checked without changing anything
        for operation, params in self._resize_calls(inst.type).items():
            self._dry_run(operation, params)

    def read(self) -> CapacityReading:
        inst = self._instance()
        count = self._rung_of(inst.type)
        # a stopped, stopping or booting instance serves nothing of its rung
        return CapacityReading(count=count, ready=count if inst.state == "running" else 0,
                               details={"state": inst.state, "instance_type": inst.type})

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        require_non_negative(desired)
        new_type = self._type_at(desired)
        inst = self._instance()
        before = self._rung_of(inst.type) if current is None else current
        if inst.type == new_type:
            return ActionPlan(
                actuator=self.name, target=self.target, from_capacity=before, to_capacity=desired,
                summary=f"EC2 instance {inst.id} already is {new_type}, no API call",
                details={"instance_id": inst.id, "region": self.config.region, "from_type": inst.type,
                         "to_type": new_type, "state": inst.state, "calls": []},
                downtime=timedelta(0),
            )
        calls = self._resize_calls(new_type)
        minutes = self.config.downtime_estimate.total_seconds() / 60
        return ActionPlan(
            actuator=self.name,
            target=self.target,
            from_capacity=before,
            to_capacity=desired,
            summary=(f"resize EC2 instance {inst.id} {inst.type} -> {new_type}: stop, modify "
                     f"InstanceType, start; the instance is down for about {minutes:g} min"),
            details={
                "instance_id": inst.id,
                "region": self.config.region,
                "from_type": inst.type,
                "to_type": new_type,
                "state": inst.state,
                "calls": [{"api": f"ec2:{_API[op]}", "parameters": params} for op, params in calls.items()],
                "wait_for_status_checks": self.config.wait_for_status_checks,
            },
            downtime=self.config.downtime_estimate,
        )

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        """Issue the next step of the resize to rung ``desired`` that can be
        issued now, and return (see the module docstring)."""
        require_non_negative(desired)
        new_type = self._type_at(desired)
        t0 = self._monotonic()
        ids: list[str] = []
        inst = self._instance()
        from_type = self._resize.old_type if self._resize else inst.type
        details: dict[str, Any] = {"decision_id": decision_id, "instance_id": inst.id, "target": desired,
                                   "from_type": from_type, "to_type": new_type,
                                   "changed": from_type != new_type}
        # at most: stop, modify + start, look at the checks (each step issued
        # only once the one before it is visible)
        for _ in range(3):
            if inst.state in _GONE:
                self._resize = None
                raise PermanentActuatorError(f"instance {inst.id} is {inst.state}", request_ids=tuple(ids))
            if inst.state == "running" and inst.type == new_type:
                return self._in_place(desired, inst, t0, ids, details)
            if inst.state == "running":
                self.call("stop_instances", ids, InstanceIds=[inst.id])
                self._resize = _Resize(old_type=inst.type, stopped_at=self._monotonic())
                details.update(from_type=inst.type, changed=True)
            elif inst.state == "stopped" and self._resize is not None:
                self._modify_and_start(inst, new_type, ids)
            elif inst.state in ("stopping", "pending") and (self._resize is not None or inst.state == "pending"):
                self._check_not_stuck(inst, ids)
                break
            else:
                raise PermanentActuatorError(
                    f"instance {inst.id} is {inst.state}; forescale resizes only running instances "
                    f"and never starts one it did not stop", request_ids=tuple(ids))
            inst = self._instance()
        phase = "stopping" if inst.state in ("running", "stopping", "stopped") else "starting"
        r = self._resize
        return ActuationResult(
            requested=desired, observed=self._rung_of(inst.type), verified=False,
            elapsed=timedelta(seconds=max(0.0, self.elapsed_since(t0))), request_ids=tuple(ids),
            details={**details, "phase": phase, "state": inst.state, "status_checks_ok": None,
                     # what resume() takes up in another process
                     "stopped_by_us": r is not None, "started": r is not None and r.started_at is not None},
        )

    def resume(self, decision_id: str, details: dict[str, Any]) -> None:
        """Take up a resize another process began (a cron ``forescale once``,
        ``forescale apply``, a restarted daemon): ``details`` is the engine's
        record of its results so far. An instance they say this actuator
        stopped it modifies and starts; without them it would refuse to
        start an instance "it did not stop" and leave it stopped. A resize
        this object holds in memory is its own record."""
        if self._resize is not None or not details.get("stopped_by_us") or "from_type" not in details:
            return
        now = self._monotonic()
        self._resize = _Resize(old_type=str(details["from_type"]), stopped_at=now,
                               started_at=now if details.get("started") else None)

    # -- steps
    def _in_place(self, desired: int, inst: _Instance, t0: float, ids: list[str],
                  details: dict[str, Any]) -> ActuationResult:
        """Running with the wanted type: the resize (if any) is done once the
        status checks pass."""
        healthy = self._status_checks_ok()
        if self._resize is not None:
            details["downtime_s"] = round(max(0.0, self._monotonic() - self._resize.stopped_at), 3)
            self._resize = None
        return ActuationResult(
            requested=desired, observed=self._rung_of(inst.type), verified=healthy,
            elapsed=timedelta(seconds=max(0.0, self.elapsed_since(t0))), request_ids=tuple(ids),
            details={**details, "phase": "in-service" if healthy else "status-checks",
                     "state": inst.state, "status_checks_ok": healthy},
        )

    def _modify_and_start(self, inst: _Instance, new_type: str, ids: list[str]) -> None:
        assert self._resize is not None
        old_type = self._resize.old_type
        modified = inst.type != new_type
        if modified:
            try:
                self.call("modify_instance_attribute", ids, InstanceId=inst.id,
                          InstanceType={"Value": new_type})
            except ActuatorError as exc:
                self._roll_back(exc, old_type, new_type, ids, modified=inst.type != old_type)
        try:
            self.call("start_instances", ids, InstanceIds=[inst.id])
        except ActuatorError as exc:
            self._roll_back(exc, old_type, new_type, ids, modified=True)
        self._resize.started_at = self._monotonic()

    def _check_not_stuck(self, inst: _Instance, ids: list[str]) -> None:
        """A stop or start this actuator asked for that has not finished
        within ``verify_timeout`` is reported, with what to do by hand."""
        r = self._resize
        if r is None:
            return
        asked = r.started_at if r.started_at is not None else r.stopped_at
        waited = self._monotonic() - asked
        if waited < self.config.verify_timeout.total_seconds():
            return
        wanted = "running" if r.started_at is not None else "stopped"
        hint = ("; its type was not changed and forescale will not start it: check it, "
                "and start it by hand once it has stopped" if wanted == "stopped" else "")
        self._resize = None
        raise PermanentActuatorError(
            f"instance {inst.id} ({inst.type}) is {inst.state}, not {wanted}, "
            f"{waited:.0f} s after asking{hint}", request_ids=tuple(ids))

    def _roll_back(self, cause: ActuatorError, old_type: str, new_type: str, ids: list[str],
                   *, modified: bool) -> None:
        """Start the stopped instance again with ``old_type``, then raise
        ``cause`` (its class kept) saying so."""
        iid = self.config.instance_id
        self._resize = None
        log.warning("resize of %s to %s failed (%s); starting it again as %s", iid, new_type,
                    cause, old_type)
        try:
            if modified:
                self.call("modify_instance_attribute", ids, InstanceId=iid, InstanceType={"Value": old_type})
            self.call("start_instances", ids, InstanceIds=[iid])
        except ActuatorError as failed:
            raise PermanentActuatorError(
                f"resizing instance {iid} to {new_type} failed ({cause}) and starting it again "
                f"as {old_type} failed too ({failed}); the instance may be stopped: start it by hand",
                request_ids=tuple(dict.fromkeys([*ids, *cause.request_ids, *failed.request_ids])),
            ) from cause
        raise with_ids(cause, f"{cause}; instance {iid} was started again as {old_type}", ids) from cause

    # -- helpers
    def _status_checks_ok(self) -> bool:
        if not self.config.wait_for_status_checks:
            return True
        resp = self.call("describe_instance_status", InstanceIds=[self.config.instance_id])
        statuses = resp.get("InstanceStatuses") or []
        if not statuses:
            return False
        s, ok = statuses[0], {"ok", "not-applicable"}
        return (s.get("InstanceStatus", {}).get("Status") in ok
                and s.get("SystemStatus", {}).get("Status") in ok)

    def _instance(self) -> _Instance:
        resp = self.call("describe_instances", InstanceIds=[self.config.instance_id])
        found = [i for r in resp.get("Reservations", ()) for i in r.get("Instances", ())]
        if not found:
            raise PermanentActuatorError(
                f"EC2 instance {self.config.instance_id} not found in region {self.config.region}"
            )
        i = found[0]
        return _Instance(i["InstanceId"], i["State"]["Name"], i["InstanceType"],
                         i.get("RootDeviceType", "ebs"))

    def _rung_of(self, instance_type: str) -> int:
        try:
            return self.ladder.index(instance_type)
        except ValueError:
            raise PermanentActuatorError(
                f"instance {self.config.instance_id} is {instance_type}, which is not in the "
                f"ladder ({', '.join(self.ladder)})"
            ) from None

    def _type_at(self, capacity: int) -> str:
        if capacity >= len(self.ladder):
            raise LimitExceeded(
                f"capacity {capacity} is beyond the ladder's last rung {len(self.ladder) - 1} "
                f"({self.ladder[-1]})"
            )
        return self.ladder[capacity]

    def _resize_calls(self, new_type: str) -> dict[str, dict[str, Any]]:
        iid = self.config.instance_id
        return {
            "stop_instances": {"InstanceIds": [iid]},
            "modify_instance_attribute": {"InstanceId": iid, "InstanceType": {"Value": new_type}},
            "start_instances": {"InstanceIds": [iid]},
        }

    def _dry_run(self, operation: str, params: Mapping[str, Any]) -> None:
        """EC2's DryRun: ``DryRunOperation`` means the call is permitted."""
        from botocore.exceptions import ClientError

        def permitted(client: Any) -> None:
            try:
                getattr(client, operation)(DryRun=True, **params)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "DryRunOperation":
                    raise

        self.calls.call(f"ec2:{_API[operation]} (dry run)", permitted)


_API = {
    "stop_instances": "StopInstances",
    "modify_instance_attribute": "ModifyInstanceAttribute",
    "start_instances": "StartInstances",
}
