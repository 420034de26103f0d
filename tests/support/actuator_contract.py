"""The contract every actuator passes, each with its own fixtures.

Subclass :class:`ActuatorContract` in a test module and provide

- ``clock``: the :class:`engine.core.clock.ManualClock` whose ``sleep`` and
  ``monotonic`` the actuator was given;
- ``actuator``: a ready actuator whose platform starts at
  ``initial_capacity`` and brings a change into service at once;
- ``slow_platform``: ``(actuator, finish)`` for a platform that accepts a
  change but brings it into service only once ``finish()`` is called (pods
  that stay unready, instances that stay Pending, a VM that takes its time
  to stop);

and, optionally, ``capacities`` (two valid capacity values different from
the initial one, inside the platform's limits)::

    class TestAutoScalingGroup(ActuatorContract):
        initial_capacity = 2
        capacities = (3, 1)

        @pytest.fixture
        def actuator(self, moto_server, clock): ...

The engine side of the contract, which :func:`settle` plays here: after an
unverified ``apply`` it reads again on later cycles until ``read()`` shows
``count == result.details["target"]`` settled (the target is the desired
capacity after the platform's clamps and floors); an actuator that declares
``stepwise_apply`` is applied again (same capacity, same decision id)
instead, until the result is verified.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.core.errors import ActuatorError, PermanentActuatorError
from engine.core.plugins import Capabilities, capabilities_of, check_capabilities
from engine.core.types import ActionPlan, ActuationResult, CapacityReading


def settled_at(reading: CapacityReading, capacity: int) -> bool:
    return reading.count == capacity and reading.settled


def settle(actuator, desired: int, *, decision_id: str, steps: int = 6) -> ActuationResult:
    """Apply ``desired`` as the engine does across cycles: once, then (for a
    stepwise actuator) again until verified, at most ``steps`` times."""
    result = actuator.apply(desired, decision_id=decision_id)
    for _ in range(steps - 1):
        if result.verified or not capabilities_of(actuator).stepwise_apply:
            break
        result = actuator.apply(desired, decision_id=decision_id)
    return result


class ActuatorContract:
    initial_capacity: int = 1
    capacities: tuple[int, int] = (2, 1)

    def test_declares_its_capabilities(self, actuator):
        caps = check_capabilities("actuator", actuator.name, type(actuator))
        assert isinstance(caps, Capabilities)

    def test_validate_passes_on_a_good_target(self, actuator):
        actuator.validate()

    def test_read_returns_the_initial_capacity(self, actuator):
        reading = actuator.read()
        assert isinstance(reading, CapacityReading)
        assert reading.count == self.initial_capacity
        assert reading.ready in (None, self.initial_capacity)

    def test_describe_names_both_capacities_and_changes_nothing(self, actuator):
        up = self.capacities[0]
        plan = actuator.describe(up, self.initial_capacity)
        assert isinstance(plan, ActionPlan)
        assert plan.to_capacity == up
        assert plan.summary
        assert actuator.read().count == self.initial_capacity

    def test_apply_sets_and_reads_back(self, actuator):
        up = self.capacities[0]
        result = settle(actuator, up, decision_id="contract-1")
        assert isinstance(result, ActuationResult)
        assert result.requested == up
        assert result.verified is True
        assert result.observed == up
        assert result.elapsed >= timedelta(0)
        # the count a later read must show, settled, for the engine to verify
        assert result.details["target"] == up
        assert settled_at(actuator.read(), up)

    def test_apply_is_idempotent(self, actuator):
        up = self.capacities[0]
        settle(actuator, up, decision_id="contract-2")
        again = actuator.apply(up, decision_id="contract-2")
        assert again.verified and again.observed == up
        assert settled_at(actuator.read(), up)

    def test_apply_down_after_up(self, actuator):
        up, down = self.capacities
        settle(actuator, up, decision_id="contract-3a")
        result = settle(actuator, down, decision_id="contract-3b")
        assert result.observed == down
        assert actuator.read().count == down

    def test_negative_capacity_is_a_permanent_error(self, actuator):
        with pytest.raises(PermanentActuatorError):
            actuator.apply(-1, decision_id="contract-4")
        assert actuator.read().count == self.initial_capacity

    def test_errors_are_actuator_errors(self, actuator):
        # every failure an actuator raises on purpose belongs to the
        # hierarchy, and an impossible request is a failure
        with pytest.raises(ActuatorError):
            actuator.apply(-1, decision_id="contract-5")

    def test_apply_returns_without_waiting_for_a_slow_platform(self, slow_platform, clock):
        actuator, finish = slow_platform
        up = self.capacities[0]
        sleeps = len(clock.sleeps)
        result = actuator.apply(up, decision_id="contract-6")
        # accepted, not verified, and nothing waited for the platform
        assert result.verified is False
        assert result.requested == up
        assert clock.sleeps[sleeps:] == []
        assert result.elapsed == timedelta(0)
        pending = actuator.read()
        assert isinstance(pending, CapacityReading)
        assert not settled_at(pending, up)
        finish()
        later = settle(actuator, up, decision_id="contract-6")
        assert settled_at(actuator.read(), up)
        assert later.verified or not capabilities_of(actuator).stepwise_apply
