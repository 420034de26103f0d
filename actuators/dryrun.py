"""The ``dry-run`` actuator: records what it would do, changes nothing
outside itself. It keeps a simulated capacity so a dry-run loop (and the
demo) behaves like a real one: "set to N" then "read back N"."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from engine.core.types import ActionPlan, ActuationResult

from .base import ActuatorConfig, require_non_negative


class DryRunConfig(ActuatorConfig):
    type: str = "dry-run"
    #: the capacity the simulated platform starts with (None: whatever the
    #: engine's state says on the first cycle)
    initial_capacity: int | None = None


class DryRunActuator:
    name: ClassVar[str] = "dry-run"
    Config = DryRunConfig

    def __init__(self, config: DryRunConfig | None = None, *, target: str = "") -> None:
        self.config = config or DryRunConfig()
        self.target = target
        self.capacity: int | None = self.config.initial_capacity
        self.applied: list[tuple[str, int]] = []

    def validate(self) -> None:
        return None

    def read(self) -> int:
        if self.capacity is None:
            raise LookupError("dry-run actuator has no capacity yet")
        return self.capacity

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        cur = self.capacity if current is None else current
        return ActionPlan(
            actuator=self.name,
            target=self.target,
            from_capacity=cur,
            to_capacity=desired,
            summary=f"dry-run: would set {self.target or 'target'} capacity {cur} -> {desired}",
        )

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        require_non_negative(desired)
        self.capacity = desired
        self.applied.append((decision_id, desired))
        return ActuationResult(
            requested=desired, observed=desired, verified=True,
            elapsed=timedelta(0), request_ids=(f"dry-run:{decision_id}",), details={"target": desired},
        )
