"""``alibaba-ecs-group`` (actuators/alibaba/group.py) against the fake ECS API, through the real SDK."""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.core.errors import LimitExceeded, PermanentActuatorError

from tests.support.actuator_contract import ActuatorContract, settled_at
from tests.support.fake_ecs import LADDER, TAG, ZONE, group_actuator, mutating, slowly


# ------------------------------------------------------------------ contract suite
class TestEcsInstanceGroupContract(ActuatorContract):
    initial_capacity = 2
    capacities = (3, 1)

    @pytest.fixture
    def actuator(self, instant, clock):
        fake = instant
        lt = fake.add_launch_template(LADDER[0], zone_id=ZONE)
        fake.add_instance(LADDER[0], tags=dict([TAG]), created_minutes_ago=90)
        fake.add_instance(LADDER[0], tags=dict([TAG]), created_minutes_ago=30)
        # not members: another group, and a member someone stopped
        fake.add_instance(LADDER[0], tags={TAG[0]: "api"})
        fake.add_instance(LADDER[0], tags=dict([TAG]), status="Stopped")
        return group_actuator(fake, clock, lt)

    @pytest.fixture
    def slow_platform(self, actuator, fake, clock):
        return slowly(actuator, fake, clock)


# ------------------------------------------------------------------ group
@pytest.fixture
def group(fake, clock):
    lt = fake.add_launch_template(LADDER[0], zone_id=ZONE)
    members = [fake.add_instance(LADDER[0], tags=dict([TAG]), created_minutes_ago=m)
               for m in (300, 200, 100, 5)]
    return group_actuator(fake, clock, lt), members


def test_group_scale_in_deletes_the_newest(fake, clock, group):
    act, members = group
    newest = {members[3].instance_id, members[2].instance_id}

    result = act.apply(2, decision_id="d1")

    delete = [c.params for c in fake.calls if c.action == "DeleteInstances"]
    assert len(delete) == 1 and delete[0]["Force"] == "True"
    assert {delete[0]["InstanceId.1"], delete[0]["InstanceId.2"]} == newest
    assert set(result.details["deleted"]) == newest
    assert result.verified and result.observed == 2
    assert {i.status for i in fake.instances.values() if i.instance_id in newest} == {"Stopping"}
    clock.sleep(10)  # deleted instances leave Stopping and disappear
    assert act.read().count == 2
    assert set(fake.instances) == {members[0].instance_id, members[1].instance_id}


def test_group_scale_out_runs_instances_from_the_launch_template(fake, clock, group):
    act, _ = group

    result = act.apply(7, decision_id="d1")

    run = [c.params for c in fake.calls if c.action == "RunInstances"]
    assert len(run) == 1
    assert run[0]["Amount"] == "3"
    assert run[0]["LaunchTemplateId"] == act.config.launch_template_id
    assert (run[0]["Tag.1.Key"], run[0]["Tag.1.Value"]) == TAG
    assert len(result.details["launched"]) == 3
    # new instances go Pending -> Starting -> Running: accepted, not waited for
    assert result.verified is False and result.observed == 4 and result.elapsed == timedelta(0)
    booting = act.read()
    assert (booting.count, booting.ready) == (7, 4)
    clock.advance(timedelta(seconds=20))
    assert settled_at(act.read(), 7)


def test_group_counts_starting_instances_and_does_not_launch_twice(fake, clock, group):
    act, _ = group
    fake.calls.clear()
    pending = fake.add_instance(LADDER[0], tags=dict([TAG]), status="Pending")
    pending.schedule = [(clock.monotonic() + 10, "Starting"), (clock.monotonic() + 20, "Running")]

    result = act.apply(5, decision_id="d1")

    assert "RunInstances" not in fake.actions()
    assert result.verified is False and result.details["live"] == 5
    clock.advance(timedelta(seconds=20))
    assert settled_at(act.read(), 5)
    assert act.apply(5, decision_id="d1").verified
    assert "RunInstances" not in fake.actions()


def test_group_quota_error_is_a_limit(fake, clock, group):
    act, _ = group
    fake.fail("RunInstances", "QuotaExceed.ElasticQuota",
              "The number of vCPUs exceeds the quota.", status=403)
    with pytest.raises(LimitExceeded, match="QuotaExceed.ElasticQuota"):
        act.apply(6, decision_id="d1")
    assert fake.count("RunInstances") == 1


def test_group_max_instances_is_enforced_before_any_call(fake, clock):
    act = group_actuator(fake, clock, fake.add_launch_template(LADDER[0]), max_instances=3)
    with pytest.raises(LimitExceeded, match="max_instances"):
        act.apply(4, decision_id="d1")
    assert fake.calls == []


def test_group_validate_checks_the_launch_template(fake, clock):
    act = group_actuator(fake, clock, "lt-missing")
    with pytest.raises(PermanentActuatorError, match="lt-missing"):
        act.validate()


def test_group_verify_times_out_without_raising(fake, clock, group):
    act, _ = group
    act.config = act.config.model_copy(update={"verify_timeout": timedelta(minutes=1)})
    fake.transition_s = 3600.0
    result = act.apply(5, decision_id="d1")
    assert result.verified is False and result.observed == 4


def test_group_describe_names_the_instances_to_delete(fake, clock, group):
    act, members = group
    plan = act.describe(3)
    assert plan.from_capacity == 4 and plan.to_capacity == 3
    assert plan.details["delete"] == [members[3].instance_id]
    assert members[3].instance_id in plan.summary
    plan = act.describe(6)
    assert plan.details["api_actions"] == ["RunInstances"] and plan.details["amount"] == 2
    assert mutating(fake) == []


def test_group_pages_through_describe_instances(fake, clock):
    lt = fake.add_launch_template(LADDER[0])
    for _ in range(130):
        fake.add_instance(LADDER[0], tags=dict([TAG]))
    act = group_actuator(fake, clock, lt)
    assert act.read().count == 130
    pages = [c.params for c in fake.calls if c.action == "DescribeInstances"]
    assert len(pages) == 2 and pages[1]["NextToken"] == "100"
