"""``aws-ec2`` (actuators/aws/ec2.py) against moto on loopback: a stepwise
resize, each step issued once the one before it is visible."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from pydantic import ValidationError

from actuators import registry
from actuators.aws import (
    AutoScalingGroupActuator,
    EC2InstanceTypeActuator,
    EC2InstanceTypeConfig,
)
from engine.core.errors import ConfigError, LimitExceeded, PermanentActuatorError

from tests.support import ROOT
from tests.support.actuator_contract import ActuatorContract, settled_at
from tests.support.aws import REGION, clients, describe_instance, make_group, make_instance

LADDER = ["t3.micro", "t3.small", "t3.medium", "t3.large"]


def ec2(clock, endpoint, instance_id, ladder=LADDER, **config):
    cfg = EC2InstanceTypeConfig(region=REGION, endpoint_url=endpoint, instance_id=instance_id, **config)
    return EC2InstanceTypeActuator(cfg, target="db", ladder=ladder, sleep=clock.sleep,
                                   monotonic=clock.monotonic)


def stuck_stopping(body: bytes) -> bytes:
    return body.replace(b"<name>stopped</name>", b"<name>stopping</name>")


def stuck_pending(body: bytes) -> bytes:
    return body.replace(b"<name>running</name>", b"<name>pending</name>")


class TestEC2InstanceTypeContract(ActuatorContract):
    initial_capacity = 1  # t3.small
    capacities = (3, 0)

    @pytest.fixture
    def actuator(self, moto, proxy, clock):
        return ec2(clock, proxy.url, make_instance(moto.url, "t3.small"))

    @pytest.fixture
    def slow_platform(self, actuator, proxy):
        # the instance takes its time to stop
        actuator.read()
        proxy.rewrite("DescribeInstances", stuck_stopping, times=10_000)
        return actuator, proxy.reset


def test_resize_stops_modifies_starts_and_reports_downtime(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    result = ec2(clock, proxy.url, iid).apply(3, decision_id="d1")
    inst = describe_instance(moto.url, iid)
    assert (inst["State"]["Name"], inst["InstanceType"]) == ("running", "t3.large")
    assert result.verified and result.observed == 3
    assert result.details["from_type"] == "t3.small" and result.details["downtime_s"] >= 0
    assert [proxy.count(a) for a in ("StopInstances", "ModifyInstanceAttribute", "StartInstances")] == [1, 1, 1]
    assert len(result.request_ids) == 3


def _slow_stop(moto, proxy, clock):
    """A resize to t3.large whose first apply sees the instance still
    stopping: (instance id, the actuator, that first result)."""
    iid = make_instance(moto.url, "t3.small")
    a = ec2(clock, proxy.url, iid)
    a.read()
    # the describe before the stop passes; the one after it shows it stopping
    proxy.rewrite("DescribeInstances", lambda b: b, times=1)
    proxy.rewrite("DescribeInstances", stuck_stopping, times=1)
    return iid, a, a.apply(3, decision_id="d1")


def test_a_slow_stop_is_resumed_by_the_next_apply(moto, proxy, clock):
    iid, a, first = _slow_stop(moto, proxy, clock)
    assert first.verified is False and first.details["phase"] == "stopping"
    assert first.observed == 1  # still t3.small
    assert [proxy.count(x) for x in ("StopInstances", "ModifyInstanceAttribute", "StartInstances")] == [1, 0, 0]
    assert clock.sleeps == [] and first.elapsed == timedelta(0)
    clock.advance(timedelta(seconds=40))
    second = a.apply(3, decision_id="d1")
    assert second.verified and second.details["phase"] == "in-service"
    assert second.details["downtime_s"] == 40
    assert [proxy.count(x) for x in ("StopInstances", "ModifyInstanceAttribute", "StartInstances")] == [1, 1, 1]
    assert settled_at(a.read(), 3)


def test_a_resize_begun_by_another_process_is_finished_from_its_record(moto, proxy, clock):
    """Each ``forescale once`` (cron) builds a new actuator: the one that
    found the instance stopped refused to start what "it did not stop" and
    the resize failed with the instance left stopped. The engine hands it
    the change's recorded details (``resume``), and it finishes the resize."""
    iid, _, first = _slow_stop(moto, proxy, clock)
    assert first.details["phase"] == "stopping" and first.details["stopped_by_us"] is True
    clock.advance(timedelta(seconds=40))
    # a new process without the record: refuses, the instance stays stopped
    with pytest.raises(PermanentActuatorError, match="never starts one it did not stop"):
        ec2(clock, proxy.url, iid).apply(3, decision_id="d1")
    assert describe_instance(moto.url, iid)["State"]["Name"] == "stopped"
    # with it: modified and started
    b = ec2(clock, proxy.url, iid)
    b.resume("d1", dict(first.details))
    second = b.apply(3, decision_id="d1")
    assert second.verified and second.details["phase"] == "in-service"
    inst = describe_instance(moto.url, iid)
    assert (inst["State"]["Name"], inst["InstanceType"]) == ("running", "t3.large")
    assert second.details["from_type"] == "t3.small"


def test_a_slow_start_reads_not_ready_until_running(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    a = ec2(clock, proxy.url, iid)
    a.read()
    # the describe after the stop shows it stopped; the one after the start pending
    proxy.rewrite("DescribeInstances", lambda b: b, times=2)
    proxy.rewrite("DescribeInstances", stuck_pending, times=2)
    first = a.apply(2, decision_id="d1")
    assert first.verified is False and first.details["phase"] == "starting"
    booting = a.read()
    assert (booting.count, booting.ready, booting.details["state"]) == (2, 0, "pending")
    assert not booting.settled
    assert a.apply(2, decision_id="d1").verified
    assert proxy.count("StartInstances") == 1
    assert settled_at(a.read(), 2)


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


def test_resize_is_verified_once_status_checks_pass(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    initializing = lambda body: body.replace(b"<status>ok</status>", b"<status>initializing</status>")  # noqa: E731
    proxy.rewrite("DescribeInstanceStatus", initializing, times=2)
    a = ec2(clock, proxy.url, iid)
    results = [a.apply(2, decision_id="d1") for _ in range(3)]
    assert [r.verified for r in results] == [False, False, True]
    assert results[0].details["phase"] == "status-checks" and results[2].details["status_checks_ok"]
    assert clock.sleeps == []
    assert proxy.count("DescribeInstanceStatus") == 3
    assert proxy.count("StopInstances") == 1


def test_an_instance_that_does_not_stop_is_left_unchanged(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    proxy.rewrite("DescribeInstances", stuck_stopping, times=1000)
    a = ec2(clock, proxy.url, iid, verify_timeout=timedelta(minutes=2))
    assert a.apply(2, decision_id="d1").details["phase"] == "stopping"
    clock.advance(timedelta(seconds=60))
    assert a.apply(2, decision_id="d1").details["phase"] == "stopping"
    clock.advance(timedelta(seconds=60))
    with pytest.raises(PermanentActuatorError, match="is stopping, not stopped, 120 s after") as err:
        a.apply(2, decision_id="d1")
    assert "start it by hand" in str(err.value)
    assert proxy.count("ModifyInstanceAttribute") == 0 and proxy.count("StartInstances") == 0
    assert describe_instance(moto.url, iid)["InstanceType"] == "t3.small"


def test_failing_status_checks_leave_the_resize_unverified(moto, proxy, clock):
    iid = make_instance(moto.url, "t3.small")
    impaired = lambda body: body.replace(b"<status>ok</status>", b"<status>impaired</status>")  # noqa: E731
    proxy.rewrite("DescribeInstanceStatus", impaired, times=1000)
    a = ec2(clock, proxy.url, iid, verify_timeout=timedelta(minutes=1))
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


def test_an_endpoint_url_with_credentials_is_refused_without_showing_them(tmp_path):
    """botocore's errors carry the endpoint: ``user:SECRET@`` was printed by
    ``validate --check-actuators`` and every failed call."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets:\n  - name: db\n    source: {type: csv, path: x.csv}\n"
                   "    policy: {ladder: [{name: t3.micro, capacity: 1}]}\n"
                   "    actuator: {type: aws-ec2, region: us-east-1, instance_id: i-0123456789abcdef0, "
                   "endpoint_url: 'http://user:URLSECRET99@127.0.0.1:5999'}\n")
    r = subprocess.run([sys.executable, "-m", "engine.cli", "validate", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "URLSECRET99" not in r.stdout + r.stderr
    assert "targets[0].actuator.endpoint_url: endpoint_url must not carry credentials" in r.stderr


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
    # poll_interval still loads (apply no longer polls), with a warning saying so
    with pytest.warns(FutureWarning, match="poll_interval no longer applies"):
        web, db = parse_config(doc).targets
    group = build_actuator(web, sleep=clock.sleep, monotonic=clock.monotonic)
    # a verify_timeout far longer than the cycle's timeout is fine: nothing blocks on it
    assert group.config.verify_timeout == timedelta(minutes=15)
    assert group.config.apply_bound() is None
    group.validate()
    assert group.read().count == 1  # min-floor sets MinSize
    resize = build_actuator(db, sleep=clock.sleep, monotonic=clock.monotonic)
    assert resize.ladder == ("t3.small", "t3.medium", "t3.large")
    assert resize.describe(2).downtime == timedelta(minutes=3)
    resize.validate()
    assert resize.read().count == 1


def test_the_aws_example_config_validates():
    from engine.config import load_config

    config = load_config(ROOT / "examples" / "aws-asg.yaml")
    (target,) = [t for t in config.targets if t.actuator.type == "aws-asg"]
    assert target.actuator_config.verify_timeout == timedelta(minutes=15)


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
