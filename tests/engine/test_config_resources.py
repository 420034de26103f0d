"""The ``resources`` section of a target (engine/config.py): each further
resource's policy derived once, errors naming the field, secrets never
echoed."""

from __future__ import annotations

import pytest

from engine.config import parse_config
from engine.core.errors import ConfigError


def _doc(resources, **target):
    return {"targets": [{"name": "api", "resource": "cpu", "source": {"type": "csv", "path": "cpu.csv"},
                         "policy": {"capacity_per_replica": 2, "target_utilization": 0.7}, "resources": resources,
                         **target}]}


def test_a_resource_gets_its_own_capacity_model_and_the_targets_forecaster_by_default():
    t = parse_config(_doc({"memory": {"source": {"type": "csv", "path": "mem.csv"}, "capacity_per_replica": 4,
                                      "target_utilization": 0.85},
                           "requests": {"source": {"type": "csv", "path": "req.csv"}, "capacity_per_replica": 150,
                                        "forecaster": {"name": "holt_winters"}}})).targets[0]
    mem, req = t.resource_target("memory"), t.resource_target("requests")
    assert (mem.name, mem.policy.capacity_per_replica, mem.policy.target_utilization) == ("api/memory", 4, 0.85)
    assert mem.forecaster == t.forecaster and req.forecaster.name == "holt_winters"
    assert req.policy.target_utilization == 0.7 and req.policy.lead_time == t.policy.lead_time
    assert str(mem.source.path) == "mem.csv" and mem.resources == {}


@pytest.mark.parametrize("resources, target, message", [
    ({"memory": {"source": {"type": "csv", "path": "m.csv"}}}, {},
     "resources.memory: give capacity_per_replica"),
    ({"memory": {"source": {"type": "csv", "path": "m.csv"}, "capacity_per_replica": -1}}, {},
     "targets[0].resources.memory.capacity_per_replica: Input should be greater than 0"),
    ({"cpu": {"source": {"type": "csv", "path": "m.csv"}, "capacity_per_replica": 1}}, {},
     "resources.cpu: the name of the target's own signal"),
    ({"memory": {"source": {"type": "csv", "path": "m.csv"}, "capacity_per_replica": 1}},
     {"policy": {"capacity_per_replica": 2, "smoothing": {"kind": "ewma"}}},
     "applies_to: forecast smooths one resource's demand"),
    ({"memory": {"source": {"type": "csv", "path": "m.csv"}, "capacity_per_replica": 1}},
     {"policy": {"ladder": [{"name": "s", "capacity": 1}, {"name": "l", "capacity": 2}]}},
     "resources.memory: the policy has a ladder of 2 rungs: give rung_capacity"),
    ({"memory": {"source": {"type": "csv", "path": "m.csv"}, "rung_capacity": [4, 2]}},
     {"policy": {"ladder": [{"name": "s", "capacity": 1}, {"name": "l", "capacity": 2}]}},
     "resources.memory: rung_capacity must increase strictly along the ladder, got [4.0, 2.0]"),
    ({"mem/x": {"source": {"type": "csv", "path": "m.csv"}, "capacity_per_replica": 1}}, {},
     "targets[0].resources.mem/x"),
])
def test_a_bad_resource_is_refused_naming_the_field(resources, target, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(_doc(resources, **target))
    assert message in str(exc.value)


def test_a_secret_in_a_resources_source_is_never_echoed():
    with pytest.raises(ConfigError) as exc:
        parse_config(_doc({"memory": {"source": {"type": "prometheus", "url": "http://u:hunter2pw@x:9090",
                                                 "query": "up", "bearer_tokn": "hunter2pw"},
                                      "capacity_per_replica": 4}}))
    assert "targets[0].resources.memory.source" in str(exc.value) and "hunter2pw" not in str(exc.value)


def test_a_planner_on_a_ladder_prices_the_actuators_downtime_for_every_resource():
    """The downtime the resizing actuator states (stated once) reaches each
    resource's policy too, not only the target's own: the planner prices a
    resize the same whichever resource sets the size."""
    from datetime import timedelta

    ladder = [{"name": "s", "capacity": 1, "price": 0.1}, {"name": "l", "capacity": 2, "price": 0.2}]
    t = parse_config(_doc({"memory": {"source": {"type": "csv", "path": "m.csv"}, "rung_capacity": [4, 8]}},
                          policy={"kind": "plan", "ladder": ladder},
                          actuator={"type": "aws-ec2", "instance_id": "i-0123456789abcdef0",
                                    "region": "us-east-1", "downtime_estimate": "4m"})).targets[0]
    assert t.policy.plan.resize_downtime == timedelta(minutes=4)
    mem = t.resource_target("memory")
    assert mem.policy.plan.resize_downtime == timedelta(minutes=4)
    assert mem.policy.ladder[1].capacity == 8  # still the resource's own capacity model
