"""The ``dry-run`` actuator (actuators/dryrun.py) under the actuator contract."""

import pytest

from actuators.dryrun import DryRunActuator, DryRunConfig

from tests.support.actuator_contract import ActuatorContract


class TestDryRunActuator(ActuatorContract):
    initial_capacity = 3
    capacities = (5, 2)

    @pytest.fixture
    def actuator(self):
        return DryRunActuator(DryRunConfig(initial_capacity=3), target="web")

    # the simulated platform has every change in service at once
    test_apply_returns_without_waiting_for_a_slow_platform = None


def test_dry_run_records_each_apply():
    a = DryRunActuator(DryRunConfig(initial_capacity=1), target="web")
    a.apply(4, decision_id="d1")
    a.apply(2, decision_id="d2")
    assert a.applied == [("d1", 4), ("d2", 2)]
    assert "1 -> 7" in DryRunActuator(DryRunConfig(initial_capacity=1), target="web").describe(7).summary
