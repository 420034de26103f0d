"""The AWS actuators against a real moto server on loopback, driven by the
real boto3, with a fault-injecting proxy (tests/support/aws.py) in front of
it for throttling, permission and capacity errors.

moto's semantics, which these tests rely on: instances of an Auto Scaling
group are created InService at once (no Pending phase), so the polling path
is exercised by rewriting moto's answers into Pending at the proxy; a
stopped instance is stopped at once and a started one running at once with
status checks "ok"; moto does not enforce MaxSize on SetDesiredCapacity (the
actuator checks the limits itself before calling).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from actuators import registry
from actuators.aws import (
    AutoScalingGroupActuator,
    AutoScalingGroupConfig,
    EC2InstanceTypeActuator,
    EC2InstanceTypeConfig,
)
from engine.core.errors import (
    ConfigError,
    LimitExceeded,
    PermanentActuatorError,
    TransientActuatorError,
)

from tests.support.actuator_contract import ActuatorContract
from tests.support.aws import (
    FAKE_CREDENTIALS,
    REGION,
    FakeClock,
    FaultProxy,
    MotoServer,
    clients,
    describe_group,
    describe_instance,
    free_port,
    make_group,
    make_instance,
)
from tests.support import ROOT

LADDER = ["t3.micro", "t3.small", "t3.medium", "t3.large"]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def moto():
    server = MotoServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy(moto):
    p = FaultProxy(moto.url)
    yield p
    p.close()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path, moto, proxy):
    """Fake credentials only; nothing from the developer's ~/.aws or IMDS."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for k, v in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    proxy.reset()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def gname():
    """A group name of this test's own: the moto server is shared by the
    module (restarting or resetting it per test costs seconds)."""
    return f"web-{uuid.uuid4().hex[:10]}"


def asg(clock, endpoint, target, **config):
    """The actuator for group ``target`` (group_name defaults to the target)."""
    cfg = AutoScalingGroupConfig(region=REGION, endpoint_url=endpoint, **config)
    return AutoScalingGroupActuator(cfg, target=target, sleep=clock.sleep, monotonic=clock.monotonic)


def ec2(clock, endpoint, instance_id, ladder=LADDER, **config):
    cfg = EC2InstanceTypeConfig(region=REGION, endpoint_url=endpoint, instance_id=instance_id, **config)
    return EC2InstanceTypeActuator(cfg, target="db", ladder=ladder, sleep=clock.sleep,
                                   monotonic=clock.monotonic)


def pending(n: int):
    """Rewrite ``n`` InService instances of a DescribeAutoScalingGroups
    answer to Pending, as AWS reports them while they boot."""
    def fn(body: bytes) -> bytes:
        return body.replace(b"<LifecycleState>InService</LifecycleState>",
                            b"<LifecycleState>Pending</LifecycleState>", n)
    return fn


# ---------------------------------------------------------------------------- contract
class TestAutoScalingGroupContract(ActuatorContract):
    initial_capacity = 2
    capacities = (4, 1)

    @pytest.fixture
    def actuator(self, moto, proxy, clock, gname):
        make_group(moto.url, gname, min_size=1, max_size=5, desired=2)
        return asg(clock, proxy.url, gname)


class TestAutoScalingGroupMinFloorContract(ActuatorContract):
    initial_capacity = 1  # read() reports MinSize, the value min-floor sets
    capacities = (3, 1)

    @pytest.fixture
    def actuator(self, moto, proxy, clock, gname):
        make_group(moto.url, gname, min_size=1, max_size=5, desired=2)
        return asg(clock, proxy.url, gname, mode="min-floor", base_min_size=1)


class TestEC2InstanceTypeContract(ActuatorContract):
    initial_capacity = 1  # t3.small
    capacities = (3, 0)

    @pytest.fixture
    def actuator(self, moto, proxy, clock):
        return ec2(clock, proxy.url, make_instance(moto.url, "t3.small"))


# ------------------------------------------------------------------ auto scaling group
def test_apply_sets_desired_capacity_without_honoring_cooldown_and_returns_request_ids(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=2)
    result = asg(clock, proxy.url, gname).apply(4, decision_id="d1")
    g = describe_group(moto.url, gname)
    assert g["DesiredCapacity"] == 4
    assert sum(i["LifecycleState"] == "InService" for i in g["Instances"]) == 4
    assert proxy.count("SetDesiredCapacity") == 1
    assert len(result.request_ids) == 1 and result.request_ids[0]
    assert result.details["api"] == "autoscaling:SetDesiredCapacity"
    assert result.details["decision_id"] == "d1"


def test_apply_to_the_current_capacity_makes_no_change_call(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=3)
    result = asg(clock, proxy.url, gname).apply(3, decision_id="d1")
    assert result.verified and result.observed == 3
    assert proxy.count("SetDesiredCapacity") == 0
    assert result.request_ids == ()


def test_apply_above_max_size_is_limit_exceeded_naming_max_size(moto, proxy, clock, gname):
    make_group(moto.url, gname, max_size=5, desired=2)
    with pytest.raises(LimitExceeded, match=r"above MaxSize \(5\)") as err:
        asg(clock, proxy.url, gname).apply(6, decision_id="d1")
    assert repr(gname) in str(err.value)
    assert proxy.count("SetDesiredCapacity") == 0
    assert describe_group(moto.url, gname)["DesiredCapacity"] == 2


def test_apply_below_min_size_is_limit_exceeded_naming_min_size(moto, proxy, clock, gname):
    make_group(moto.url, gname, min_size=2, desired=3)
    with pytest.raises(LimitExceeded, match=r"below MinSize \(2\)"):
        asg(clock, proxy.url, gname).apply(1, decision_id="d1")
    assert describe_group(moto.url, gname)["DesiredCapacity"] == 3


def test_clamp_to_group_limits_sets_the_nearest_limit_and_says_so(moto, proxy, clock, gname):
    make_group(moto.url, gname, min_size=1, max_size=5, desired=2)
    a = asg(clock, proxy.url, gname, clamp_to_group_limits=True)
    plan = a.describe(9)
    assert plan.details["calls"] == [{"api": "autoscaling:SetDesiredCapacity", "parameters": {
        "AutoScalingGroupName": gname, "DesiredCapacity": 5, "HonorCooldown": False}}]
    assert "9 clamped" in plan.summary
    result = a.apply(9, decision_id="d1")
    assert result.requested == 9 and result.observed == 5 and result.verified
    assert result.details["clamped_from"] == 9
    assert describe_group(moto.url, gname)["DesiredCapacity"] == 5


def test_describe_names_the_api_call_and_changes_nothing(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=2)
    plan = asg(clock, proxy.url, gname).describe(4)
    assert plan.from_capacity == 2 and plan.to_capacity == 4
    assert plan.details["calls"][0]["parameters"]["DesiredCapacity"] == 4
    assert "SetDesiredCapacity" in plan.summary and "2 -> 4" in plan.summary
    assert plan.downtime == timedelta(0)
    assert proxy.count("SetDesiredCapacity") == 0


def test_min_floor_raises_min_size_and_desired_then_restores_the_base(moto, proxy, clock, gname):
    make_group(moto.url, gname, min_size=1, max_size=6, desired=2)
    a = asg(clock, proxy.url, gname, mode="min-floor", base_min_size=1)
    plan = a.describe(4)
    assert plan.details["calls"] == [{"api": "autoscaling:UpdateAutoScalingGroup", "parameters": {
        "AutoScalingGroupName": gname, "MinSize": 4, "DesiredCapacity": 4}}]
    up = a.apply(4, decision_id="d1")
    g = describe_group(moto.url, gname)
    assert (g["MinSize"], g["DesiredCapacity"]) == (4, 4)
    assert up.verified and up.details["in_service"] == 4

    down = a.apply(0, decision_id="d2")
    g = describe_group(moto.url, gname)
    # the floor goes back to base_min_size; DesiredCapacity is left to the
    # group's own scaling policies
    assert (g["MinSize"], g["DesiredCapacity"]) == (1, 4)
    assert down.observed == 1 and down.verified
    assert proxy.count("SetDesiredCapacity") == 0
    assert proxy.count("UpdateAutoScalingGroup") == 2


def test_min_floor_leaves_a_higher_desired_capacity_alone(moto, proxy, clock, gname):
    make_group(moto.url, gname, min_size=1, max_size=6, desired=5)
    a = asg(clock, proxy.url, gname, mode="min-floor", base_min_size=1)
    assert a.describe(3).details["calls"][0]["parameters"] == {"AutoScalingGroupName": gname, "MinSize": 3}
    a.apply(3, decision_id="d1")
    g = describe_group(moto.url, gname)
    assert (g["MinSize"], g["DesiredCapacity"]) == (3, 5)


def test_min_floor_above_max_size_is_limit_exceeded(moto, proxy, clock, gname):
    make_group(moto.url, gname, min_size=1, max_size=4, desired=2)
    with pytest.raises(LimitExceeded, match=r"MinSize floor 5 is above MaxSize \(4\)"):
        asg(clock, proxy.url, gname, mode="min-floor", base_min_size=1).apply(5, decision_id="d1")
    assert describe_group(moto.url, gname)["MinSize"] == 1


def test_min_floor_validate_refuses_a_base_above_max_size(moto, proxy, clock, gname):
    make_group(moto.url, gname, min_size=1, max_size=4, desired=2)
    with pytest.raises(LimitExceeded, match="base_min_size"):
        asg(clock, proxy.url, gname, mode="min-floor", base_min_size=6).validate()


def test_apply_polls_until_pending_instances_are_in_service(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=2)
    # the answers before the change and the first two polls show one Pending
    proxy.rewrite("DescribeAutoScalingGroups", pending(1), times=3)
    result = asg(clock, proxy.url, gname, poll_interval=timedelta(seconds=5)).apply(4, decision_id="d1")
    assert result.verified and result.observed == 4
    assert clock.sleeps == [5.0, 5.0]
    assert result.elapsed == timedelta(seconds=10)


def test_apply_reports_unverified_when_instances_stay_pending(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=2)
    proxy.rewrite("DescribeAutoScalingGroups", pending(1), times=1000)
    a = asg(clock, proxy.url, gname, verify_timeout=timedelta(seconds=30), poll_interval=timedelta(seconds=10))
    result = a.apply(4, decision_id="d1")
    assert result.verified is False
    assert result.observed == 3  # in service: one of the four still Pending
    assert result.elapsed == timedelta(seconds=30)
    assert describe_group(moto.url, gname)["DesiredCapacity"] == 4


def test_read_desired_reports_desired_capacity_not_in_service(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=3)
    proxy.rewrite("DescribeAutoScalingGroups", pending(2), times=2)
    assert asg(clock, proxy.url, gname, read="desired").read() == 3
    assert asg(clock, proxy.url, gname).read() == 1


def test_throttling_is_retried_then_succeeds(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=2)
    proxy.fail("SetDesiredCapacity", times=2, code="Throttling", message="Rate exceeded")
    result = asg(clock, proxy.url, gname).apply(3, decision_id="d1")
    assert result.verified and describe_group(moto.url, gname)["DesiredCapacity"] == 3
    assert proxy.count("SetDesiredCapacity") == 3
    assert len(clock.sleeps) == 2  # two backoffs, no polling needed
    assert not set(result.request_ids) & set(proxy.injected_request_ids)


def test_throttling_gives_up_after_the_configured_attempts(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=2)
    proxy.fail("SetDesiredCapacity", times=100, code="Throttling")
    with pytest.raises(TransientActuatorError, match="Throttling") as err:
        asg(clock, proxy.url, gname, retry_attempts=3).apply(3, decision_id="d1")
    assert proxy.count("SetDesiredCapacity") == 3
    assert err.value.request_ids == (proxy.injected_request_ids[-1],)
    assert describe_group(moto.url, gname)["DesiredCapacity"] == 2


@pytest.mark.parametrize("code,status", [
    ("Throttling", 400), ("ThrottlingException", 400), ("RequestLimitExceeded", 400),
    ("ServiceUnavailable", 503), ("InternalFailure", 500), ("ScalingActivityInProgress", 400),
    ("SomethingNew", 502),
])
def test_transient_codes_are_retried(moto, proxy, clock, code, status, gname):
    make_group(moto.url, gname, desired=2)
    proxy.fail("DescribeAutoScalingGroups", times=1, code=code, status=status)
    assert asg(clock, proxy.url, gname).read() == 2
    assert proxy.count("DescribeAutoScalingGroups") == 2


@pytest.mark.parametrize("code,status", [
    ("AccessDenied", 403), ("ValidationError", 400), ("UnauthorizedOperation", 403),
])
def test_permanent_errors_are_not_retried(moto, proxy, clock, code, status, gname):
    make_group(moto.url, gname, desired=2)
    proxy.fail("SetDesiredCapacity", times=1, code=code, status=status, message="not for you")
    with pytest.raises(PermanentActuatorError, match=code) as err:
        asg(clock, proxy.url, gname).apply(3, decision_id="d1")
    assert not isinstance(err.value, TransientActuatorError)
    assert proxy.count("SetDesiredCapacity") == 1
    assert err.value.request_ids == (proxy.injected_request_ids[0],)
    assert describe_group(moto.url, gname)["DesiredCapacity"] == 2


def test_aws_limit_validation_error_is_limit_exceeded(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=2)
    proxy.fail("SetDesiredCapacity", code="ValidationError",
               message="New SetDesiredCapacity value 3 is above max value 2 for the AutoScalingGroup.")
    with pytest.raises(LimitExceeded):
        asg(clock, proxy.url, gname).apply(3, decision_id="d1")


def test_unreachable_endpoint_is_transient_and_bounded(clock):
    a = asg(clock, f"http://127.0.0.1:{free_port()}", "web", retry_attempts=3)
    with pytest.raises(TransientActuatorError, match="cannot reach"):
        a.read()
    assert len(clock.sleeps) == 2


def test_validate_without_credentials_is_one_clear_error(monkeypatch, moto, proxy, clock, gname):
    make_group(moto.url, gname)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(PermanentActuatorError, match="no AWS credentials found") as err:
        asg(clock, proxy.url, gname).validate()
    assert "testing" not in str(err.value)
    assert sum(proxy.actions.values()) == 0  # failed before any request


def test_validate_with_an_unknown_profile_names_it(proxy, clock, gname):
    with pytest.raises(PermanentActuatorError, match="AWS profile 'nope'"):
        asg(clock, proxy.url, gname, profile="nope").validate()


def test_validate_a_missing_group_names_it(moto, proxy, clock, gname):
    with pytest.raises(PermanentActuatorError, match=f"group '{gname}' not found"):
        asg(clock, proxy.url, gname).validate()


def test_group_name_overrides_the_target_name(moto, proxy, clock, gname):
    make_group(moto.url, gname + "-prod", desired=3)
    a = asg(clock, proxy.url, gname, group_name=gname + "-prod")
    a.validate()
    assert a.read() == 3


def test_injected_client_is_used(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=3)
    autoscaling, _ = clients(proxy.url)
    cfg = AutoScalingGroupConfig(region="eu-west-1")  # no endpoint: the client decides
    a = AutoScalingGroupActuator(cfg, target=gname, autoscaling=autoscaling, sleep=clock.sleep,
                                 monotonic=clock.monotonic)
    a.validate()
    assert a.read() == 3
    assert proxy.count("DescribeAutoScalingGroups") == 2


@pytest.mark.parametrize("config,field", [
    ({"mode": "min-floor"}, "base_min_size"),
    ({"base_min_size": 2}, "base_min_size"),
    ({"read": "min_size"}, "min_size"),
    ({"mode": "max"}, "mode"),
    ({"clamp": True}, "clamp"),
    ({"endpoint_url": "localhost:4566"}, "endpoint_url"),
])
def test_bad_asg_config_names_the_field(config, field):
    with pytest.raises(ValidationError, match=field):
        AutoScalingGroupConfig(region=REGION, **config)


# ------------------------------------------------------------------------- EC2 resize
def test_resize_stops_modifies_starts_and_reports_downtime(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    result = ec2(clock, proxy.url, iid).apply(3, decision_id="d1")
    inst = describe_instance(moto.url, iid)
    assert (inst["State"]["Name"], inst["InstanceType"]) == ("running", "t3.large")
    assert result.verified and result.observed == 3
    assert result.details["from_type"] == "t3.small" and result.details["downtime_s"] >= 0
    assert [proxy.count(a) for a in ("StopInstances", "ModifyInstanceAttribute", "StartInstances")] == [1, 1, 1]
    assert len(result.request_ids) == 3


def test_describe_states_the_calls_and_the_configured_downtime(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    plan = ec2(clock, proxy.url, iid, downtime_estimate=timedelta(minutes=7)).describe(2)
    assert plan.downtime == timedelta(minutes=7)
    assert [c["api"] for c in plan.details["calls"]] == [
        "ec2:StopInstances", "ec2:ModifyInstanceAttribute", "ec2:StartInstances"]
    assert plan.details["calls"][1]["parameters"] == {"InstanceId": iid, "InstanceType": {"Value": "t3.medium"}}
    assert "t3.small -> t3.medium" in plan.summary and "7 min" in plan.summary
    assert proxy.count("StopInstances") == 0
    assert describe_instance(moto.url, iid)["State"]["Name"] == "running"


def test_resize_rolls_back_when_modify_fails(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    proxy.fail("ModifyInstanceAttribute", code="InvalidParameterValue",
               message="The instance type 't3.large' is not supported in this zone")
    with pytest.raises(PermanentActuatorError, match="started again as t3.small") as err:
        ec2(clock, proxy.url, iid).apply(3, decision_id="d1")
    inst = describe_instance(moto.url, iid)
    assert (inst["State"]["Name"], inst["InstanceType"]) == ("running", "t3.small")
    assert proxy.count("ModifyInstanceAttribute") == 1  # not retried
    assert proxy.count("StartInstances") == 1
    # the failed modify's request id and those of the stop and the restart
    # are in the error (moto answers every EC2 call with RequestId
    # "request-id", so those two collapse into one here)
    assert set(err.value.request_ids) == {"request-id", proxy.injected_request_ids[0]}


def test_resize_rolls_back_the_type_when_start_lacks_capacity(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    proxy.fail("StartInstances", code="InsufficientInstanceCapacity",
               message="We currently do not have sufficient t3.large capacity")
    with pytest.raises(LimitExceeded, match="started again as t3.small"):
        ec2(clock, proxy.url, iid).apply(3, decision_id="d1")
    inst = describe_instance(moto.url, iid)
    assert (inst["State"]["Name"], inst["InstanceType"]) == ("running", "t3.small")
    assert proxy.count("ModifyInstanceAttribute") == 2  # to t3.large, back to t3.small


def test_resize_retries_throttled_stop(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    proxy.fail("StopInstances", times=1, code="RequestLimitExceeded", message="Request limit exceeded.")
    result = ec2(clock, proxy.url, iid).apply(2, decision_id="d1")
    assert result.verified and describe_instance(moto.url, iid)["InstanceType"] == "t3.medium"
    assert proxy.count("StopInstances") == 2


def test_resize_waits_for_status_checks(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    initializing = lambda body: body.replace(b"<status>ok</status>", b"<status>initializing</status>")  # noqa: E731
    proxy.rewrite("DescribeInstanceStatus", initializing, times=2)
    result = ec2(clock, proxy.url, iid, poll_interval=timedelta(seconds=15)).apply(2, decision_id="d1")
    assert result.verified and result.details["status_checks_ok"]
    assert clock.sleeps == [15.0, 15.0]
    assert proxy.count("DescribeInstanceStatus") == 3


def test_an_instance_that_does_not_stop_is_left_unchanged(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    stuck = lambda body: body.replace(b"<name>stopped</name>", b"<name>stopping</name>")  # noqa: E731
    proxy.rewrite("DescribeInstances", stuck, times=1000)
    a = ec2(clock, proxy.url, iid, verify_timeout=timedelta(minutes=2), poll_interval=timedelta(seconds=30))
    with pytest.raises(PermanentActuatorError, match="is stopping, not stopped, 120 s after") as err:
        a.apply(2, decision_id="d1")
    assert "start it by hand" in str(err.value)
    assert proxy.count("ModifyInstanceAttribute") == 0 and proxy.count("StartInstances") == 0
    assert describe_instance(moto.url, iid)["InstanceType"] == "t3.small"


def test_failing_status_checks_leave_the_resize_unverified(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    impaired = lambda body: body.replace(b"<status>ok</status>", b"<status>impaired</status>")  # noqa: E731
    proxy.rewrite("DescribeInstanceStatus", impaired, times=1000)
    a = ec2(clock, proxy.url, iid, verify_timeout=timedelta(minutes=1), poll_interval=timedelta(seconds=20))
    result = a.apply(2, decision_id="d1")
    assert result.verified is False and result.details["status_checks_ok"] is False
    assert result.observed == 2  # the type did change
    assert describe_instance(moto.url, iid)["State"]["Name"] == "running"


def test_read_of_a_type_outside_the_ladder_names_it(moto, proxy, clock):
    iid = make_instance(moto.url, "m5.xlarge")
    with pytest.raises(PermanentActuatorError, match=r"is m5\.xlarge, which is not in the ladder"):
        ec2(clock, proxy.url, iid).read()


def test_capacity_beyond_the_ladder_is_refused_before_stopping(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    with pytest.raises(LimitExceeded, match="beyond the ladder"):
        ec2(clock, proxy.url, iid).apply(len(LADDER), decision_id="d1")
    assert proxy.count("StopInstances") == 0


def test_a_stopped_instance_is_not_started(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    clients(moto.url)[1].stop_instances(InstanceIds=[iid])
    with pytest.raises(PermanentActuatorError, match="is stopped"):
        ec2(clock, proxy.url, iid).apply(2, decision_id="d1")
    inst = describe_instance(moto.url, iid)
    assert (inst["State"]["Name"], inst["InstanceType"]) == ("stopped", "t3.small")


def test_validate_checks_instance_ladder_and_permissions(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    ec2(clock, proxy.url, iid).validate()
    # permissions are checked with DryRun: nothing stopped
    assert proxy.count("StopInstances") == 1
    assert describe_instance(moto.url, iid)["State"]["Name"] == "running"


def test_validate_rejects_an_unknown_instance_type_in_the_ladder(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    with pytest.raises(PermanentActuatorError, match="t3.gigantic"):
        ec2(clock, proxy.url, iid, ladder=["t3.small", "t3.gigantic"]).validate()


def test_validate_reports_a_missing_permission(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    proxy.fail("StopInstances", code="UnauthorizedOperation", status=403,
               message="You are not authorized to perform this operation.")
    with pytest.raises(PermanentActuatorError, match="StopInstances.*UnauthorizedOperation"):
        ec2(clock, proxy.url, iid).validate()


def test_validate_a_missing_instance_is_permanent_and_not_retried(moto, proxy, clock):
    with pytest.raises(PermanentActuatorError, match=r"InvalidInstanceID\.NotFound"):
        ec2(clock, proxy.url, "i-0123456789abcdef0").validate()
    assert proxy.count("DescribeInstances") == 1


def test_ec2_validate_without_credentials(monkeypatch, moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(PermanentActuatorError, match="no AWS credentials found"):
        ec2(clock, proxy.url, iid).validate()


@pytest.mark.parametrize("ladder,match", [(None, "needs a ladder"), ([], "needs a ladder"),
                                          (["t3.small", "t3.small"], "more than once: t3.small")])
def test_bad_ladder_is_a_config_error_naming_it(ladder, match, clock):
    cfg = EC2InstanceTypeConfig(region=REGION, instance_id="i-0123456789abcdef0")
    with pytest.raises(ConfigError, match=match) as err:
        EC2InstanceTypeActuator(cfg, target="db", ladder=ladder)
    assert err.value.path == "ladder"


def test_bad_instance_id_names_the_field():
    with pytest.raises(ValidationError, match="instance_id"):
        EC2InstanceTypeConfig(region=REGION, instance_id="web-1")


# ---------------------------------------------------------------------------- wiring
def test_config_file_targets_build_working_actuators(moto, proxy, clock, gname):
    """The YAML shapes of docs/actuators/aws.md, through the real loader."""
    import yaml

    from engine.build import build_actuator
    from engine.config import parse_config

    make_group(moto.url, gname, desired=3)
    iid = make_instance(moto.url, "t3.medium")
    doc = yaml.safe_load(f"""
targets:
  - name: {gname}
    source: {{type: csv, path: load.csv}}
    policy: {{capacity_per_replica: 100}}
    actuator:
      type: aws-asg
      region: {REGION}
      endpoint_url: {proxy.url}
      mode: min-floor
      base_min_size: 1
      verify_timeout: 15m
      poll_interval: 10s
  - name: db
    source: {{type: csv, path: load.csv}}
    policy:
      ladder:
        - {{name: t3.small, capacity: 100}}
        - {{name: t3.medium, capacity: 200}}
        - {{name: t3.large, capacity: 400}}
    actuator:
      type: aws-ec2
      region: {REGION}
      endpoint_url: {proxy.url}
      instance_id: {iid}
      downtime_estimate: 3m
""")
    web, db = parse_config(doc).targets
    group = build_actuator(web, sleep=clock.sleep, monotonic=clock.monotonic)
    assert group.config.verify_timeout == timedelta(minutes=15)
    assert group.config.poll_interval == timedelta(seconds=10)
    group.validate()
    assert group.read() == 1  # min-floor reads MinSize
    resize = build_actuator(db, sleep=clock.sleep, monotonic=clock.monotonic)
    assert resize.ladder == ("t3.small", "t3.medium", "t3.large")
    assert resize.describe(2).downtime == timedelta(minutes=3)
    resize.validate()
    assert resize.read() == 1


def test_a_bad_actuator_field_is_reported_with_its_path():
    from engine.config import parse_config

    doc = {"targets": [{"name": "web", "source": {"type": "csv", "path": "x.csv"},
                        "policy": {"capacity_per_replica": 100},
                        "actuator": {"type": "aws-asg", "region": REGION, "mode": "min-floor"}}]}
    with pytest.raises(ConfigError, match=r"targets\[0\]\.actuator.*base_min_size is required"):
        parse_config(doc)


def test_registry_resolves_both_names():
    assert registry.get("aws-asg") is AutoScalingGroupActuator
    assert registry.get("aws-ec2") is EC2InstanceTypeActuator


def test_importing_the_module_does_not_import_boto3():
    code = "import sys, actuators, actuators.aws; assert 'boto3' not in sys.modules, 'boto3 imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
