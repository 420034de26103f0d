"""The ``dry-run`` actuator: records what it would do, changes nothing
outside itself. It keeps a simulated capacity so a dry-run loop (and the
demo) behaves like a real one: "set to N" then "read back N".

The simulated capacity starts at ``initial_capacity``; without one, it knows
none: ``read()`` raises LookupError, and the engine answers with
``seed(capacity)`` from its own state (the last capacity it set), so the
simulation starts where the real platform would be."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from engine.core.types import ActionPlan, ActuationResult, CapacityReading

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

    def read(self) -> CapacityReading:
        """The simulated capacity, all of it in service; LookupError until
        there is one (configured, seeded or applied)."""
        if self.capacity is None:
            raise LookupError("dry-run actuator has no capacity yet (no initial_capacity, not seeded)")
        return CapacityReading(self.capacity)

    def seed(self, capacity: int) -> None:
        """Start the simulation at ``capacity`` if it has none yet (the
        engine calls this with its state's capacity after read() raised
        LookupError)."""
        if self.capacity is None:
            require_non_negative(capacity)
            self.capacity = capacity

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
        """Accepted and in place at once: a simulation has no delay, so the
        result is verified."""
        require_non_negative(desired)
        self.capacity = desired
        self.applied.append((decision_id, desired))
        return ActuationResult(
            requested=desired, observed=desired, verified=True,
            elapsed=timedelta(0), request_ids=(f"dry-run:{decision_id}",), details={"target": desired},
        )
