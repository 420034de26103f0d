"""``aws-asg``: the capacity of one EC2 Auto Scaling group.

``mode: desired`` sets DesiredCapacity (SetDesiredCapacity with HonorCooldown
false: the forecast decided, not a cooldown). ``mode: min-floor`` sets
MinSize to ``max(capacity, base_min_size)`` and raises DesiredCapacity only
when it is below the new floor; the group's own scaling policies keep working
above the floor (AWS's predictive-scaling pattern).

``apply`` returns once Auto Scaling accepted the call (its request id in the
result); ``read`` reports ``count`` = the value forescale sets
(DesiredCapacity, or MinSize in min-floor mode) and ``ready`` = the
instances InService and Healthy (at most the floor in min-floor mode). The
engine verifies on its later cycles by reading again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Literal, Mapping, Sequence

from pydantic import Field, model_validator

from engine.core.errors import ConfigError, LimitExceeded, PermanentActuatorError
from engine.core.plugins import Capabilities
from engine.core.types import ActionPlan, ActuationResult, CapacityReading

from ..base import Monotonic, Sleep, accepted, require_non_negative, status_after_write
from .session import AwsActuator, AwsConfig


class AutoScalingGroupConfig(AwsConfig):
    type: str = "aws-asg"
    #: the Auto Scaling group's name; ``None``: the target's name
    group_name: str | None = Field(default=None, min_length=1)
    #: ``desired``: set DesiredCapacity. ``min-floor``: set MinSize as a floor
    #: and leave DesiredCapacity to the group's own dynamic policies (AWS's
    #: predictive-scaling pattern), so they still answer surprises.
    mode: Literal["desired", "min-floor"] = "desired"
    #: min-floor only: the MinSize the group has when the forecast asks for
    #: less (the floor is never lowered below it)
    base_min_size: int | None = Field(default=None, ge=0)
    #: clamp a request outside MinSize..MaxSize to the nearest limit instead
    #: of failing with LimitExceeded
    clamp_to_group_limits: bool = False
    #: what read() reports as ``ready``: ``in_service`` (the default) counts
    #: the InService, Healthy instances (in min-floor mode at most MinSize,
    #: ``min_size`` says the same); ``desired`` reports none (``ready``
    #: None: the group's setting is taken as in service)
    read: Literal["in_service", "desired", "min_size"] | None = None

    @model_validator(mode="after")
    def _check_mode(self) -> "AutoScalingGroupConfig":
        if self.mode == "min-floor" and self.base_min_size is None:
            raise ValueError("base_min_size is required when mode is 'min-floor' "
                             "(the MinSize restored when the forecast asks for less)")
        if self.mode == "desired" and self.base_min_size is not None:
            raise ValueError("base_min_size applies only to mode 'min-floor'")
        if self.read == "min_size" and self.mode != "min-floor":
            raise ValueError("read 'min_size' applies only to mode 'min-floor'")
        return self


@dataclass(frozen=True)
class _Group:
    name: str
    min_size: int
    max_size: int
    desired: int
    in_service: int

    @classmethod
    def from_api(cls, g: Mapping[str, Any]) -> "_Group":
        return cls(
            name=g["AutoScalingGroupName"],
            min_size=int(g["MinSize"]),
            max_size=int(g["MaxSize"]),
            desired=int(g["DesiredCapacity"]),
            # Pending, Standby, Terminating, Warmed:* and detached instances,
            # and unhealthy ones about to be replaced, do not serve load
            in_service=sum(1 for i in g.get("Instances", ())
                           if i.get("LifecycleState") == "InService"
                           and i.get("HealthStatus", "Healthy") == "Healthy"),
        )


@dataclass(frozen=True)
class _GroupChange:
    operation: str | None  # boto3 method; None: the group already is where asked
    api: str
    params: dict[str, Any]
    target: int  # the DesiredCapacity (desired mode) or MinSize (min-floor) driven to
    clamped_from: int | None  # the capacity asked before clamping, if clamped


class AutoScalingGroupActuator(AwsActuator):
    """Horizontal: the capacity of one EC2 Auto Scaling group (see the
    module docstring)."""

    name: ClassVar[str] = "aws-asg"
    capabilities: ClassVar[Capabilities] = Capabilities()
    Config = AutoScalingGroupConfig
    service: ClassVar[str] = "autoscaling"

    def __init__(self, config: AutoScalingGroupConfig, *, target: str,
                 ladder: Sequence[str] | None = None, sleep: Sleep = time.sleep,
                 monotonic: Monotonic = time.monotonic, autoscaling: Any = None) -> None:
        if ladder:
            raise ConfigError("the aws-asg actuator is horizontal and takes no ladder", path="ladder")
        super().__init__(config, target=target, sleep=sleep, monotonic=monotonic, client=autoscaling)
        self.config: AutoScalingGroupConfig = config
        self.group_name = config.group_name or target
        if not self.group_name:
            raise ConfigError("no Auto Scaling group named: set group_name or the target's name",
                              path="group_name")

    # -- protocol
    def validate(self) -> None:
        self.check_credentials()
        group = self._group()
        if self.config.mode == "min-floor" and self.config.base_min_size > group.max_size:  # type: ignore[operator]
            raise LimitExceeded(
                f"base_min_size ({self.config.base_min_size}) is above MaxSize ({group.max_size}) "
                f"of Auto Scaling group {group.name!r}"
            )

    def read(self) -> CapacityReading:
        return self._reading(self._group())

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        require_non_negative(desired)
        group = self._group()
        change = self._change(desired, group)
        before = self._reading(group).count if current is None else current
        what = "desired capacity" if self.config.mode == "desired" else "MinSize floor"
        now = group.desired if self.config.mode == "desired" else group.min_size
        if change.operation is None:
            summary = f"Auto Scaling group {group.name!r}: {what} already {change.target}, no API call"
        else:
            shown = ", ".join(f"{k}={v}" for k, v in change.params.items() if k != "AutoScalingGroupName")
            summary = (f"Auto Scaling group {group.name!r}: {what} {now} -> {change.target} "
                       f"({change.api} {shown})")
        if change.clamped_from is not None:
            summary += f"; {change.clamped_from} clamped to the group's limits"
        return ActionPlan(
            actuator=self.name,
            target=self.target,
            from_capacity=before,
            to_capacity=desired,
            summary=summary,
            details={
                "group": group.name,
                "region": self.config.region,
                "mode": self.config.mode,
                "calls": [] if change.operation is None else [
                    {"api": change.api, "parameters": dict(change.params)}],
                "min_size": group.min_size,
                "max_size": group.max_size,
                "desired_capacity": group.desired,
                "in_service": group.in_service,
                "clamped_from": change.clamped_from,
            },
            # adding or removing instances takes no running one down
            downtime=timedelta(0),
        )

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        """Make the one call that sets the group (none if it already is set
        there) and return: the instances launch on their own time."""
        require_non_negative(desired)
        t0 = self._monotonic()
        ids: list[str] = []
        group = self._group()
        change = self._change(desired, group)
        if change.operation is not None:
            self.call(change.operation, ids, **change.params)
            status = status_after_write(self.read, target=self.target)
        else:
            status = self._reading(group)
        return accepted(desired, change.target, status, elapsed=self.elapsed_since(t0), request_ids=ids,
                        details={
                            "decision_id": decision_id,
                            "group": group.name,
                            "mode": self.config.mode,
                            "api": change.api if change.operation else None,
                            "target": change.target,
                            "clamped_from": change.clamped_from,
                            "min_size": group.min_size,
                            "max_size": group.max_size,
                        })

    # -- helpers
    def _group(self) -> _Group:
        resp = self.call("describe_auto_scaling_groups", AutoScalingGroupNames=[self.group_name])
        groups = resp.get("AutoScalingGroups") or []
        if not groups:
            raise PermanentActuatorError(
                f"Auto Scaling group {self.group_name!r} not found in region {self.config.region}"
            )
        return _Group.from_api(groups[0])

    def _reading(self, group: _Group) -> CapacityReading:
        floor = self.config.mode == "min-floor"
        count = group.min_size if floor else group.desired
        if self.config.read == "desired":
            ready = None
        else:
            # above the floor the group's own policies decide; the floor is met
            ready = min(group.in_service, count) if floor else group.in_service
        return CapacityReading(count=count, ready=ready, details={
            "in_service": group.in_service, "desired_capacity": group.desired,
            "min_size": group.min_size, "max_size": group.max_size})

    def _limit(self, asked: int, group: _Group, what: str) -> tuple[int, int | None]:
        """``asked`` inside MinSize..MaxSize, clamped or refused."""
        low = group.min_size if self.config.mode == "desired" else 0
        if low <= asked <= group.max_size:
            return asked, None
        if self.config.clamp_to_group_limits:
            return min(max(asked, low), group.max_size), asked
        limit, value, side = (("MaxSize", group.max_size, "above") if asked > group.max_size
                              else ("MinSize", group.min_size, "below"))
        raise LimitExceeded(
            f"{what} {asked} is {side} {limit} ({value}) of Auto Scaling group {group.name!r}; "
            f"change the group's {limit} or set clamp_to_group_limits: true"
        )

    def _change(self, desired: int, group: _Group) -> _GroupChange:
        if self.config.mode == "desired":
            target, clamped = self._limit(desired, group, "desired capacity")
            params = {"AutoScalingGroupName": group.name, "DesiredCapacity": target,
                      "HonorCooldown": False}
            op = None if group.desired == target else "set_desired_capacity"
            return _GroupChange(op, "autoscaling:SetDesiredCapacity", params, target, clamped)
        floor = max(desired, self.config.base_min_size or 0)
        target, clamped = self._limit(floor, group, "MinSize floor")
        if clamped is not None and desired != floor:
            clamped = desired
        params: dict[str, Any] = {"AutoScalingGroupName": group.name, "MinSize": target}
        if group.desired < target:
            # AWS raises DesiredCapacity with MinSize on its own; saying so
            # keeps the plan honest and does not depend on it
            params["DesiredCapacity"] = target
        op = None if group.min_size == target and group.desired >= target else "update_auto_scaling_group"
        return _GroupChange(op, "autoscaling:UpdateAutoScalingGroup", params, target, clamped)
