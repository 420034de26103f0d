"""``alibaba-ecs-group``: horizontal. The group is every instance carrying a
configured tag; capacity is the number of live members. Scale-out is
``RunInstances`` from a launch template, scale-in is ``DeleteInstances``
(``Force``) of the newest members. ``apply`` returns once ECS accepted the
calls; ``read`` reports ``count`` = the live members (Pending, Starting,
Running) and ``ready`` = the Running ones.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Sequence

from pydantic import Field

from engine.core.errors import ConfigError, LimitExceeded, PermanentActuatorError
from engine.core.plugins import Capabilities
from engine.core.types import ActionPlan, ActuationResult, CapacityReading

from ..base import Monotonic, Sleep, accepted, require_non_negative, status_after_write
from .client import LIVE_STATES, RUNNING, _BATCH, EcsActuator, EcsConnectionConfig, EcsInstance, _client_token


class EcsInstanceGroupConfig(EcsConnectionConfig):
    type: str = "alibaba-ecs-group"
    #: members are the instances tagged tag_key=tag_value
    tag_key: str = Field(min_length=1)
    tag_value: str
    launch_template_id: str = Field(min_length=1)
    #: None: the template's default version
    launch_template_version: int | None = Field(default=None, ge=1)
    #: a safety cap of our own on top of the account's quota; None: no cap
    max_instances: int | None = Field(default=None, ge=0)


class EcsInstanceGroupActuator(EcsActuator):
    """A group of identical ECS instances, found by tag, scaled by launching
    from a template and deleting the newest."""

    name: ClassVar[str] = "alibaba-ecs-group"
    capabilities: ClassVar[Capabilities] = Capabilities()
    Config = EcsInstanceGroupConfig
    config: EcsInstanceGroupConfig

    def __init__(self, config: EcsInstanceGroupConfig, *, target: str,
                 ladder: Sequence[str] | None = None, sleep: Sleep = time.sleep,
                 monotonic: Monotonic = time.monotonic, client: Any = None) -> None:
        if ladder:
            raise ConfigError("alibaba-ecs-group is horizontal (capacity is a count of "
                              "instances) and takes no ladder", path="ladder")
        super().__init__(config, target=target, sleep=sleep, monotonic=monotonic, client=client)

    @property
    def _where(self) -> str:
        return f"group {self.config.tag_key}={self.config.tag_value}"

    # ------------------------------------------------------------- protocol
    def validate(self) -> None:
        """Credentials resolve and the launch template exists."""
        m = self._models()
        lt = self.config.launch_template_id
        body = self._call("DescribeLaunchTemplates", "describe_launch_templates",
                          m.DescribeLaunchTemplatesRequest(region_id=self.config.region_id,
                                                           launch_template_id=[lt]),
                          where=self._where)
        sets = (body.launch_template_sets.launch_template_set
                if body.launch_template_sets else None) or []
        if not any(s.launch_template_id == lt for s in sets):
            raise PermanentActuatorError(
                f"launch template {lt} not found in region {self.config.region_id}",
                request_ids=(body.request_id,) if body.request_id else ())
        self.read()

    def read(self) -> CapacityReading:
        """``count`` = the live members (Pending, Starting, Running: launched
        and not deleted), ``ready`` = the Running ones."""
        live = self._live(self._members())
        running = sum(1 for i in live if i.status == RUNNING)
        return CapacityReading(count=len(live), ready=running,
                               details={"starting": [i.instance_id for i in live if i.status != RUNNING]})

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        self._check_desired(desired)
        live = self._live(self._members())
        cur = current if current is not None else sum(1 for i in live if i.status == RUNNING)
        details: dict[str, Any] = {"tag": {self.config.tag_key: self.config.tag_value},
                                   "live_instances": [i.instance_id for i in live]}
        if desired > len(live):
            n = desired - len(live)
            details.update(api_actions=["RunInstances"], launch_template_id=self.config.launch_template_id,
                           amount=n)
            summary = (f"launch {n} instance(s) from launch template "
                       f"{self.config.launch_template_id} into {self._where} ({len(live)} -> {desired})")
        elif desired < len(live):
            doomed = self._newest(live, len(live) - desired)
            details.update(api_actions=["DeleteInstances"], delete=[i.instance_id for i in doomed])
            summary = (f"delete the {len(doomed)} newest instance(s) of {self._where} "
                       f"({', '.join(i.instance_id for i in doomed)}; {len(live)} -> {desired})")
        else:
            details["api_actions"] = []
            summary = f"no change: {self._where} has {len(live)} instance(s)"
        return ActionPlan(self.name, self.target, cur, desired, summary, details)

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        """Launch or delete the difference and return once ECS accepted the
        calls; the launched instances boot on their own time."""
        self._check_desired(desired)
        m = self._models()
        t0 = self.monotonic()
        request_ids: list[str] = []
        live = self._live(self._members())
        launched: list[str] = []
        deleted: list[str] = []
        if desired > len(live):
            missing = desired - len(live)
            for chunk, start in enumerate(range(0, missing, _BATCH)):
                amount = min(_BATCH, missing - start)
                body = self._call(
                    "RunInstances", "run_instances",
                    m.RunInstancesRequest(
                        region_id=self.config.region_id,
                        launch_template_id=self.config.launch_template_id,
                        launch_template_version=self.config.launch_template_version,
                        amount=amount,
                        tag=[m.RunInstancesRequestTag(key=self.config.tag_key,
                                                      value=self.config.tag_value)],
                        client_token=_client_token(self.target, decision_id, desired,
                                                   len(live), chunk)),
                    where=self._where, request_ids=request_ids)
                sets = body.instance_id_sets
                launched += list((sets.instance_id_set if sets else None) or [])
        elif desired < len(live):
            doomed = [i.instance_id for i in self._newest(live, len(live) - desired)]
            for start in range(0, len(doomed), _BATCH):
                batch = doomed[start:start + _BATCH]
                self._call("DeleteInstances", "delete_instances",
                           m.DeleteInstancesRequest(region_id=self.config.region_id,
                                                    instance_id=batch, force=True),
                           where=self._where, request_ids=request_ids)
                deleted += batch

        status = status_after_write(self.read, target=self.target) if launched or deleted else self.read()
        return accepted(desired, desired, status, elapsed=self.monotonic() - t0, request_ids=request_ids,
                        details={"launched": launched, "deleted": deleted,
                                 "live": None if status is None else status.count})

    # ------------------------------------------------------------- steps
    def _check_desired(self, desired: int) -> None:
        require_non_negative(desired)
        cap = self.config.max_instances
        if cap is not None and desired > cap:
            raise LimitExceeded(f"desired capacity {desired} is above max_instances ({cap}) "
                                f"of {self._where}")

    @staticmethod
    def _live(members: list[EcsInstance]) -> list[EcsInstance]:
        return [i for i in members if i.status in LIVE_STATES]

    @staticmethod
    def _newest(members: list[EcsInstance], n: int) -> list[EcsInstance]:
        # CreationTime is ISO 8601 UTC (2024-05-01T10:02Z): sorts as text;
        # the id breaks ties between instances launched in the same minute
        ordered = sorted(members, key=lambda i: (i.creation_time, i.instance_id), reverse=True)
        return ordered[:n]

    def _members(self) -> list[EcsInstance]:
        m = self._models()
        out: list[EcsInstance] = []
        token: str | None = None
        while True:
            body = self._call(
                "DescribeInstances", "describe_instances",
                m.DescribeInstancesRequest(
                    region_id=self.config.region_id, max_results=100, next_token=token,
                    tag=[m.DescribeInstancesRequestTag(key=self.config.tag_key,
                                                       value=self.config.tag_value)]),
                where=self._where)
            items = (body.instances.instance if body.instances else None) or []
            out += [EcsInstance.from_sdk(i) for i in items]
            token = body.next_token or None
            if not token or not items:
                return out
