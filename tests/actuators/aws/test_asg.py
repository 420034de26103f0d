"""``aws-asg`` (actuators/aws/asg.py) against moto on loopback, and the
shared AWS plumbing (errors, session, retries) it exercises."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from actuators.aws import AutoScalingGroupActuator, AutoScalingGroupConfig
from engine.core.errors import LimitExceeded, PermanentActuatorError, TransientActuatorError

from tests.support.actuator_contract import ActuatorContract, settled_at
from tests.support.aws import REGION, FaultProxy, clients, describe_group, free_port, make_group


def asg(clock, endpoint, target, **config):
    """The actuator for group ``target`` (group_name defaults to the target)."""
    cfg = AutoScalingGroupConfig(region=REGION, endpoint_url=endpoint, **config)
    return AutoScalingGroupActuator(cfg, target=target, sleep=clock.sleep, monotonic=clock.monotonic)


def pending(n: int):
    """Rewrite ``n`` InService instances of a DescribeAutoScalingGroups
    answer to Pending, as AWS reports them while they boot."""
    def fn(body: bytes) -> bytes:
        return body.replace(b"<LifecycleState>InService</LifecycleState>",
                            b"<LifecycleState>Pending</LifecycleState>", n)
    return fn


def booting(proxy: FaultProxy, n: int = 1):
    """Until ``finish()``: ``n`` instances of the group stay Pending."""
    proxy.rewrite("DescribeAutoScalingGroups", pending(n), times=10_000)
    return proxy.reset


# ---------------------------------------------------------------------------- contract
class TestAutoScalingGroupContract(ActuatorContract):
    initial_capacity = 2
    capacities = (4, 1)

    @pytest.fixture
    def actuator(self, moto, proxy, clock, gname):
        make_group(moto.url, gname, min_size=1, max_size=5, desired=2)
        return asg(clock, proxy.url, gname)

    @pytest.fixture
    def slow_platform(self, actuator, proxy):
        return actuator, booting(proxy)


class TestAutoScalingGroupMinFloorContract(ActuatorContract):
    initial_capacity = 1  # count is MinSize, the value min-floor sets
    capacities = (3, 1)

    @pytest.fixture
    def actuator(self, moto, proxy, clock, gname):
        make_group(moto.url, gname, min_size=1, max_size=5, desired=2)
        return asg(clock, proxy.url, gname, mode="min-floor", base_min_size=1)

    @pytest.fixture
    def slow_platform(self, actuator, proxy):
        return actuator, booting(proxy, 2)


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


def test_a_request_clamped_to_where_the_group_is_is_recorded_clamped_not_applied(moto, proxy, clock, gname,
                                                                                  tmp_path):
    """At MaxSize with clamp_to_group_limits, every cycle logged "10 -> 15
    applied" with no call, and the state took a scale event each time."""
    from engine.store import Store
    from tests.support.live import STEP, T0, build_live, target_dict, write_config, write_trace

    make_group(moto.url, gname, min_size=1, max_size=5, desired=5)
    trace = write_trace(tmp_path / "load.csv", [45.0] * 30)  # 45 / (10 x 0.5) -> 9
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="auto")])
    store = Store(tmp_path / "s.db")
    for k in (24, 25):
        res = build_live(cfg, store, asg(clock, proxy.url, gname, clamp_to_group_limits=True)).run(T0 + k * STEP)
        assert (res.decision.current, res.decision.desired, res.status) == (5, 9, "clamped"), res
        assert "the platform's limits hold it at 5 (asked 9); nothing changed" in res.details["clamped"]
        assert "external_change" not in res.details
    assert proxy.count("SetDesiredCapacity") == 0 and describe_group(moto.url, gname)["DesiredCapacity"] == 5
    state = store.load_state("web")
    assert state.current == 5 and state.events == ()
    assert [r["status"] for r in store.decisions("web")] == ["clamped", "clamped"]


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
    assert down.details["target"] == 1 and settled_at(a.read(), 1)  # asked 0, floored at base
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


def test_apply_returns_once_accepted_and_read_shows_pending_instances_until_in_service(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=2)
    # the answer before the change, the one after it and the next read show one Pending
    proxy.rewrite("DescribeAutoScalingGroups", pending(1), times=3)
    a = asg(clock, proxy.url, gname)
    result = a.apply(4, decision_id="d1")
    assert result.verified is False and result.observed == 3
    assert proxy.count("SetDesiredCapacity") == 1 and len(result.request_ids) == 1
    assert clock.sleeps == [] and result.elapsed == timedelta(0)
    assert describe_group(moto.url, gname)["DesiredCapacity"] == 4
    booting = a.read()
    assert (booting.count, booting.ready, booting.settled) == (4, 3, False)
    # the engine's next cycle: all four in service
    assert settled_at(a.read(), 4)


def test_apply_reports_unverified_while_instances_stay_pending(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=2)
    proxy.rewrite("DescribeAutoScalingGroups", pending(1), times=1000)
    a = asg(clock, proxy.url, gname, verify_timeout=timedelta(seconds=30))
    result = a.apply(4, decision_id="d1")
    assert result.verified is False
    assert result.observed == 3  # in service: one of the four still Pending
    assert describe_group(moto.url, gname)["DesiredCapacity"] == 4
    again = a.apply(4, decision_id="d1")  # idempotent: no second change call
    assert again.verified is False and proxy.count("SetDesiredCapacity") == 1
    assert clock.sleeps == []


def test_a_transient_failure_of_the_status_read_after_the_write_does_not_fail_the_apply(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=2)
    a = asg(clock, proxy.url, gname, retry_attempts=2)
    a.read()  # warm the client
    # the describe before the write passes; the two after it are throttled
    proxy.rewrite("DescribeAutoScalingGroups", lambda body: body, times=1)
    proxy.fail("DescribeAutoScalingGroups", times=3, code="Throttling")
    result = a.apply(3, decision_id="d1")
    assert result.verified is False and result.details["status"] == "unread"
    assert result.observed == 3 and len(result.request_ids) == 1
    assert describe_group(moto.url, gname)["DesiredCapacity"] == 3


def test_read_desired_reports_no_readiness(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=3)
    proxy.rewrite("DescribeAutoScalingGroups", pending(2), times=2)
    trusting = asg(clock, proxy.url, gname, read="desired").read()
    assert (trusting.count, trusting.ready, trusting.settled) == (3, None, True)
    counting = asg(clock, proxy.url, gname).read()
    assert (counting.count, counting.ready, counting.serving) == (3, 1, 1)


def test_unhealthy_instances_are_not_ready(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=3)
    unhealthy = lambda body: body.replace(b"<HealthStatus>Healthy</HealthStatus>",  # noqa: E731
                                          b"<HealthStatus>Unhealthy</HealthStatus>", 1)
    proxy.rewrite("DescribeAutoScalingGroups", unhealthy, times=1)
    reading = asg(clock, proxy.url, gname).read()
    assert (reading.count, reading.ready) == (3, 2)


def test_throttling_is_retried_then_succeeds(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=2)
    proxy.fail("SetDesiredCapacity", times=2, code="Throttling", message="Rate exceeded")
    result = asg(clock, proxy.url, gname).apply(3, decision_id="d1")
    assert result.verified and describe_group(moto.url, gname)["DesiredCapacity"] == 3
    assert proxy.count("SetDesiredCapacity") == 3
    assert len(clock.sleeps) == 2  # two backoffs, no polling
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
    assert asg(clock, proxy.url, gname).read().count == 2
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
    assert a.read().count == 3


def test_injected_client_is_used(moto, proxy, clock, gname):
    make_group(moto.url, gname, desired=3)
    autoscaling, _ = clients(proxy.url)
    cfg = AutoScalingGroupConfig(region="eu-west-1")  # no endpoint: the client decides
    a = AutoScalingGroupActuator(cfg, target=gname, autoscaling=autoscaling, sleep=clock.sleep,
                                 monotonic=clock.monotonic)
    a.validate()
    assert a.read().count == 3
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
