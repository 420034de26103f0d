"""The contract every actuator passes, each with its own fixtures.

Subclass :class:`ActuatorContract` in a test module and provide the
``actuator`` fixture (a ready actuator whose platform starts at
``initial_capacity``) and, optionally, ``capacities`` (two valid capacity
values different from the initial one, inside the platform's limits)::

    class TestAutoScalingGroup(ActuatorContract):
        initial_capacity = 2
        capacities = (3, 1)

        @pytest.fixture
        def actuator(self, moto_server): ...
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.core.errors import ActuatorError, PermanentActuatorError
from engine.core.types import ActionPlan, ActuationResult


class ActuatorContract:
    initial_capacity: int = 1
    capacities: tuple[int, int] = (2, 1)

    def test_validate_passes_on_a_good_target(self, actuator):
        actuator.validate()

    def test_read_returns_the_initial_capacity(self, actuator):
        assert actuator.read() == self.initial_capacity

    def test_describe_names_both_capacities_and_changes_nothing(self, actuator):
        up = self.capacities[0]
        plan = actuator.describe(up, self.initial_capacity)
        assert isinstance(plan, ActionPlan)
        assert plan.to_capacity == up
        assert plan.summary
        assert actuator.read() == self.initial_capacity

    def test_apply_sets_and_reads_back(self, actuator):
        up = self.capacities[0]
        result = actuator.apply(up, decision_id="contract-1")
        assert isinstance(result, ActuationResult)
        assert result.requested == up
        assert result.verified is True
        assert result.observed == up
        assert result.elapsed >= timedelta(0)
        assert actuator.read() == up

    def test_apply_is_idempotent(self, actuator):
        up = self.capacities[0]
        actuator.apply(up, decision_id="contract-2")
        again = actuator.apply(up, decision_id="contract-2")
        assert again.verified and again.observed == up
        assert actuator.read() == up

    def test_apply_down_after_up(self, actuator):
        up, down = self.capacities
        actuator.apply(up, decision_id="contract-3a")
        result = actuator.apply(down, decision_id="contract-3b")
        assert result.observed == down
        assert actuator.read() == down

    def test_negative_capacity_is_a_permanent_error(self, actuator):
        with pytest.raises(PermanentActuatorError):
            actuator.apply(-1, decision_id="contract-4")
        assert actuator.read() == self.initial_capacity

    def test_errors_are_actuator_errors(self, actuator):
        # every failure an actuator raises on purpose belongs to the hierarchy
        try:
            actuator.apply(-1, decision_id="contract-5")
        except Exception as exc:  # noqa: BLE001
            assert isinstance(exc, ActuatorError)
