"""``alibaba-ecs`` (actuators/alibaba/spec.py): a stepwise resize against the fake ECS API, through the real SDK."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from datetime import timedelta

import pytest

from actuators import registry
from actuators.alibaba import (
    EcsInstanceGroupActuator,
    EcsInstanceSpecActuator,
    EcsInstanceGroupConfig,
    EcsInstanceSpecConfig,
)
from engine.core.errors import (
    ConfigError,
    LimitExceeded,
    PermanentActuatorError,
    TransientActuatorError,
)

from tests.support import ROOT
from tests.support.actuator_contract import ActuatorContract, settled_at
from tests.support.fake_ecs import (
    KEY_ID,
    KEY_SECRET,
    LADDER,
    REGION,
    ZONE,
    common,
    mutating,
    run_cycles,
    slowly,
    sdk_client,
    spec_actuator,
)


# ------------------------------------------------------------------ contract suites
class TestEcsInstanceSpecContract(ActuatorContract):
    initial_capacity = 1
    capacities = (2, 0)

    @pytest.fixture
    def actuator(self, instant, clock):
        inst = instant.add_instance(LADDER[1], zone_id=ZONE)
        return spec_actuator(instant, clock, inst.instance_id)

    @pytest.fixture
    def slow_platform(self, actuator, fake, clock):
        return slowly(actuator, fake, clock)


class TestEcsInstanceSpecPrepaidContract(ActuatorContract):
    initial_capacity = 1
    capacities = (3, 0)

    @pytest.fixture
    def actuator(self, instant, clock):
        inst = instant.add_instance(LADDER[1], zone_id=ZONE, charge_type="PrePaid")
        return spec_actuator(instant, clock, inst.instance_id)

    @pytest.fixture
    def slow_platform(self, actuator, fake, clock):
        return slowly(actuator, fake, clock)


# ------------------------------------------------------------------ registry, import
def test_registry_resolves_both_names():
    assert registry.get("alibaba-ecs") is EcsInstanceSpecActuator
    assert registry.get("alibaba-ecs-group") is EcsInstanceGroupActuator
    assert EcsInstanceSpecConfig(region_id=REGION, instance_id="i-1").type == "alibaba-ecs"


def test_importing_the_module_does_not_import_the_sdk():
    code = ("import sys, actuators.alibaba; "
            "bad = [m for m in sys.modules if m.startswith(('alibabacloud', 'Tea', 'darabonba'))]; "
            "assert not bad, bad")
    root = ROOT
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_a_vertical_actuator_needs_a_ladder():
    config = EcsInstanceSpecConfig(region_id=REGION, instance_id="i-1")
    with pytest.raises(ConfigError, match="ladder"):
        EcsInstanceSpecActuator(config, target="db", ladder=None)
    with pytest.raises(ConfigError, match="ecs.g7.large"):
        EcsInstanceSpecActuator(config, target="db", ladder=[LADDER[0], LADDER[0]])


def test_config_rejects_unknown_fields_naming_them():
    with pytest.raises(ValueError, match="instance_idd"):
        EcsInstanceSpecConfig(region_id=REGION, instance_idd="i-1")


# ------------------------------------------------------------------ vertical: flows
def test_postpaid_running_instance_is_stopped_modified_and_started(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    act = spec_actuator(fake, clock, inst.instance_id)

    results = run_cycles(act, clock, 2)
    result = results[-1]

    assert mutating(fake) == ["StopInstance", "ModifyInstanceSpec", "StartInstance"]
    # each step is issued once the instance finished the one before, a cycle later
    assert [r.details["phase"] for r in results] == ["stopping", "starting", "in-service"]
    assert [r.verified for r in results] == [False, False, True]
    actions = fake.actions()
    assert actions.index("DescribeResourcesModification") < actions.index("StopInstance")
    stop = next(c for c in fake.calls if c.action == "StopInstance")
    assert stop.params["StoppedMode"] == "KeepCharging"
    modify = next(c for c in fake.calls if c.action == "ModifyInstanceSpec")
    assert modify.params["InstanceType"] == LADDER[2]
    assert modify.params["ClientToken"].startswith("forescale-")
    assert result.verified and result.observed == 2
    assert result.details["old_type"] == LADDER[0]
    assert result.details["status"] == "Running"
    # availability check, stop, modify, start: one request id each
    ids = [i for r in results for i in r.request_ids]
    assert len(ids) == 4 and len(set(ids)) == 4
    # the stop and the start (10 s each on the fake's clock) were not waited for
    assert clock.sleeps == [] and all(r.elapsed == timedelta(0) for r in results)
    assert fake.instances[inst.instance_id].instance_type == LADDER[2]
    assert fake.instances[inst.instance_id].status == "Running"


def test_postpaid_stopped_instance_is_modified_and_left_stopped(fake, clock):
    inst = fake.add_instance(LADDER[1], zone_id=ZONE, status="Stopped")
    act = spec_actuator(fake, clock, inst.instance_id)

    result = act.apply(0, decision_id="d1")

    assert mutating(fake) == ["ModifyInstanceSpec"]
    assert result.verified and result.observed == 0
    assert fake.instances[inst.instance_id].status == "Stopped"


def test_prepaid_uses_modify_prepay_instance_spec_with_autopay(fake, clock):
    inst = fake.add_instance(LADDER[1], zone_id=ZONE, charge_type="PrePaid")
    act = spec_actuator(fake, clock, inst.instance_id)

    ups = run_cycles(act, clock, 3, decision_id="d1")
    downs = run_cycles(act, clock, 0, decision_id="d2")
    up, down = ups[-1], downs[-1]

    assert mutating(fake) == ["ModifyPrepayInstanceSpec", "ModifyPrepayInstanceSpec"]
    first, second = [c.params for c in fake.calls if c.action == "ModifyPrepayInstanceSpec"]
    assert (first["OperatorType"], second["OperatorType"]) == ("upgrade", "downgrade")
    assert first["AutoPay"] == "True" and first["RebootWhenFinished"] == "True"
    assert first["RegionId"] == REGION and first["InstanceType"] == LADDER[3]
    modes = [c.params["OperationType"] for c in fake.calls
             if c.action == "DescribeResourcesModification"]
    assert modes == ["Upgrade", "Downgrade"]
    assert up.verified and up.observed == 3 and down.verified and down.observed == 0
    # the reboot that applies the change: verified on a later cycle, not waited for
    assert up.details["status"] == "Running" and [r.verified for r in ups][0] is False
    assert ups[0].details["phase"] == "stopping" and clock.sleeps == []


def test_unavailable_type_is_refused_before_anything_is_stopped(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    fake.stock[(ZONE, LADDER[3])] = "SoldOut"
    act = spec_actuator(fake, clock, inst.instance_id)

    with pytest.raises(LimitExceeded) as info:
        act.apply(3, decision_id="d1")

    assert LADDER[3] in str(info.value) and ZONE in str(info.value)
    assert "StopInstance" not in fake.actions()
    assert mutating(fake) == []
    assert info.value.request_ids  # the DescribeResourcesModification request
    assert fake.instances[inst.instance_id].status == "Running"
    assert fake.instances[inst.instance_id].instance_type == LADDER[0]


def test_modify_failure_after_stop_starts_the_instance_again_with_its_old_type(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    # stock runs out between the availability check and the change
    fake.fail("ModifyInstanceSpec", "OperationDenied.NoStock",
              "Sales of this resource are temporarily suspended.", status=403)
    act = spec_actuator(fake, clock, inst.instance_id)

    with pytest.raises(LimitExceeded) as info:
        run_cycles(act, clock, 2)

    message = str(info.value)
    assert "OperationDenied.NoStock" in message
    assert f"started again with its old type {LADDER[0]}" in message
    assert mutating(fake) == ["StopInstance", "ModifyInstanceSpec", "StartInstance"]
    clock.advance(timedelta(seconds=15))
    assert settled_at(act.read(), 0)
    assert fake.instances[inst.instance_id].status == "Running"
    assert fake.instances[inst.instance_id].instance_type == LADDER[0]
    # stop, modify (failed) and start all carry their request ids
    assert len(info.value.request_ids) >= 3


def test_incorrect_status_on_modify_is_not_retried_and_the_instance_is_restarted(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    fake.fail("ModifyInstanceSpec", "IncorrectInstanceStatus",
              "The current status of the resource does not support this operation.", status=403)
    act = spec_actuator(fake, clock, inst.instance_id)

    with pytest.raises(PermanentActuatorError, match="started again with its old type"):
        run_cycles(act, clock, 1)

    assert fake.count("ModifyInstanceSpec") == 1
    clock.advance(timedelta(seconds=15))
    act.read()
    assert fake.instances[inst.instance_id].status == "Running"


def test_an_instance_between_states_is_changed_on_a_later_cycle(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    inst.status = "Starting"
    inst.schedule = [(clock.monotonic() + 12, "Running")]
    act = spec_actuator(fake, clock, inst.instance_id)

    with pytest.raises(TransientActuatorError, match="between states"):
        act.apply(1, decision_id="d1")
    assert mutating(fake) == []
    clock.advance(timedelta(seconds=15))
    result = run_cycles(act, clock, 1)[-1]

    assert result.verified and result.observed == 1
    assert mutating(fake) == ["StopInstance", "ModifyInstanceSpec", "StartInstance"]


def test_apply_is_a_no_op_when_the_type_already_matches(fake, clock):
    inst = fake.add_instance(LADDER[2], zone_id=ZONE)
    act = spec_actuator(fake, clock, inst.instance_id)

    result = act.apply(2, decision_id="d1")

    assert result.verified and result.details["action"] == "none"
    assert mutating(fake) == [] and "DescribeResourcesModification" not in fake.actions()


def test_desired_beyond_the_ladder_is_permanent(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    act = spec_actuator(fake, clock, inst.instance_id)
    with pytest.raises(PermanentActuatorError, match="beyond the ladder"):
        act.apply(len(LADDER), decision_id="d1")
    assert fake.calls == []


def test_a_stop_that_never_ends_is_reported_after_verify_timeout(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    act = spec_actuator(fake, clock, inst.instance_id, verify_timeout=timedelta(minutes=2))
    fake.transition_s = 3600.0
    assert act.apply(2, decision_id="d1").details["phase"] == "stopping"
    clock.advance(timedelta(seconds=60))
    assert act.apply(2, decision_id="d1").verified is False
    clock.advance(timedelta(seconds=60))
    with pytest.raises(PermanentActuatorError, match="did not reach Stopped"):
        act.apply(2, decision_id="d1")
    assert fake.count("ModifyInstanceSpec") == 0


def test_read_reports_a_stopping_instance_as_not_ready(fake, clock):
    inst = fake.add_instance(LADDER[1], zone_id=ZONE)
    act = spec_actuator(fake, clock, inst.instance_id)
    act.apply(3, decision_id="d1")
    reading = act.read()
    assert (reading.count, reading.ready, reading.details["status"]) == (1, 0, "Stopping")
    assert not reading.settled


# ------------------------------------------------------------------ vertical: read, describe
def test_read_of_a_type_outside_the_ladder_names_it(fake, clock):
    inst = fake.add_instance("ecs.c7.large", zone_id=ZONE)
    act = spec_actuator(fake, clock, inst.instance_id)
    with pytest.raises(PermanentActuatorError) as info:
        act.read()
    assert "ecs.c7.large" in str(info.value) and LADDER[0] in str(info.value)


def test_validate_on_a_missing_instance_is_permanent(fake, clock):
    act = spec_actuator(fake, clock, "i-doesnotexist")
    with pytest.raises(PermanentActuatorError, match="i-doesnotexist"):
        act.validate()


def test_describe_lists_the_api_actions_and_the_downtime(fake, clock):
    postpaid = fake.add_instance(LADDER[0], zone_id=ZONE)
    prepaid = fake.add_instance(LADDER[0], zone_id=ZONE, charge_type="PrePaid")

    plan = spec_actuator(fake, clock, postpaid.instance_id).describe(2)
    assert plan.from_capacity == 0 and plan.to_capacity == 2
    assert plan.details["api_actions"] == ["DescribeResourcesModification", "StopInstance",
                                           "ModifyInstanceSpec", "StartInstance"]
    assert (plan.details["old_type"], plan.details["new_type"]) == (LADDER[0], LADDER[2])
    assert plan.downtime == timedelta(minutes=2)

    plan = spec_actuator(fake, clock, prepaid.instance_id).describe(1)
    assert plan.details["api_actions"] == ["DescribeResourcesModification",
                                           "ModifyPrepayInstanceSpec"]
    assert plan.details["operator_type"] == "upgrade"
    assert plan.downtime == timedelta(minutes=1)

    plan = spec_actuator(fake, clock, postpaid.instance_id).describe(0)
    assert plan.details["api_actions"] == [] and plan.downtime == timedelta(0)
    assert mutating(fake) == []


# ------------------------------------------------------------------ error mapping
def test_throttling_is_retried_then_succeeds(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    act = spec_actuator(fake, clock, inst.instance_id)
    fake.throttle(3)

    assert act.read().count == 0

    assert fake.count("DescribeInstances") == 4
    assert len(clock.sleeps) == 3  # backed off between attempts, on the injected sleep


def test_throttling_in_the_middle_of_a_resize_is_retried(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    act = spec_actuator(fake, clock, inst.instance_id)
    fake.throttle(2, action="StopInstance")

    result = run_cycles(act, clock, 1)[-1]

    assert result.verified and fake.count("StopInstance") == 3


def test_throttling_that_never_ends_is_transient(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    act = spec_actuator(fake, clock, inst.instance_id, retry_attempts=3)
    fake.throttle(100)
    with pytest.raises(TransientActuatorError, match="Throttling.User") as info:
        act.read()
    assert fake.count("DescribeInstances") == 3
    assert info.value.request_ids


def test_server_errors_are_retried(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    fake.fail("DescribeInstances", "InternalError", "The request processing has failed.",
              status=500, times=2)
    assert spec_actuator(fake, clock, inst.instance_id).read().count == 0
    assert fake.count("DescribeInstances") == 3


def test_permanent_error_is_not_retried(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    fake.fail("StopInstance", "Forbidden.RAM", "User not authorized to operate on the "
              "specified resource, or this API doesn't support RAM.", status=403)
    act = spec_actuator(fake, clock, inst.instance_id)

    with pytest.raises(PermanentActuatorError, match="Forbidden.RAM") as info:
        act.apply(1, decision_id="d1")

    assert not isinstance(info.value, TransientActuatorError)
    assert fake.count("StopInstance") == 1
    assert info.value.request_ids
    assert fake.instances[inst.instance_id].status == "Running"


def test_unknown_access_key_is_permanent_and_not_retried(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    act = spec_actuator(fake, clock, inst.instance_id,
                        client=sdk_client(fake.endpoint, key_id="unknown-key"))
    with pytest.raises(PermanentActuatorError, match="InvalidAccessKeyId.NotFound"):
        act.validate()
    assert fake.count("DescribeInstances") == 1


def test_missing_parameter_is_reported_by_the_fake_and_permanent(fake, clock):
    from alibabacloud_ecs20140526 import models

    from actuators.alibaba import map_error

    client = sdk_client(fake.endpoint)
    with pytest.raises(Exception) as info:
        client.describe_instances(models.DescribeInstancesRequest())
    assert info.value.code == "MissingParameter"
    assert info.value.status_code == 400
    err = map_error(info.value, "DescribeInstances", "i-1")
    assert isinstance(err, PermanentActuatorError) and "RegionId" in str(err)
    assert err.request_ids == (info.value.data["RequestId"],)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_errors_are_transient_and_retried(fake, clock):
    act = spec_actuator(fake, clock, "i-1", retry_attempts=2,
                        client=sdk_client(f"127.0.0.1:{_closed_port()}"))
    with pytest.raises(TransientActuatorError, match="cannot reach the ECS API") as info:
        act.read()
    assert len(clock.sleeps) == 1
    assert "with url" not in str(info.value)


# ------------------------------------------------------------------ credentials
def _clear_credential_env(monkeypatch):
    for name in ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
                 "ALIBABA_CLOUD_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_missing_credentials_is_one_clear_error_from_validate(fake, clock, monkeypatch):
    _clear_credential_env(monkeypatch)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
    config = EcsInstanceSpecConfig(instance_id="i-1", endpoint=fake.endpoint, protocol="http",
                                   credential_source="environment", **common())
    act = EcsInstanceSpecActuator(config, target="db", ladder=LADDER, sleep=clock.sleep,
                                  monotonic=clock.monotonic)
    with pytest.raises(PermanentActuatorError) as info:
        act.validate()
    assert "ALIBABA_CLOUD_ACCESS_KEY_SECRET" in str(info.value)
    assert KEY_ID not in str(info.value)
    assert fake.calls == []


def test_credentials_from_the_environment_build_a_working_client(fake, clock, monkeypatch,
                                                                 caplog):
    _clear_credential_env(monkeypatch)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", KEY_SECRET)
    inst = fake.add_instance(LADDER[1], zone_id=ZONE)
    config = EcsInstanceSpecConfig(instance_id=inst.instance_id, endpoint=fake.endpoint,
                                   protocol="http", **common())
    act = EcsInstanceSpecActuator(config, target="db", ladder=LADDER, sleep=clock.sleep,
                                  monotonic=clock.monotonic)
    with caplog.at_level(logging.DEBUG):
        act.validate()
        assert act.read().count == 1
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in caplog.text  # it says where they came from
    assert KEY_SECRET not in caplog.text


@pytest.fixture
def isolated_chain(monkeypatch, tmp_path):
    """The default credential chain with no environment keys, no CLI profile,
    no ECS metadata (no network), reading a profile file under tmp_path."""
    from alibabacloud_credentials.utils import auth_util

    _clear_credential_env(monkeypatch)
    for attr in ("environment_access_key_id", "environment_access_key_secret",
                 "environment_security_token", "environment_credentials_uri"):
        monkeypatch.setattr(auth_util, attr, None)
    monkeypatch.setattr(auth_util, "enable_oidc_credential", False)
    monkeypatch.setattr(auth_util, "environment_cli_profile_disabled", "true")
    monkeypatch.setattr(auth_util, "environment_ecs_metadata_disabled", "true")
    monkeypatch.setattr(auth_util, "client_type", "default")
    path = tmp_path / "credentials.ini"
    monkeypatch.setattr(auth_util, "environment_credentials_file", str(path))
    return path


def test_default_chain_reads_a_profile_file(fake, clock, isolated_chain):
    isolated_chain.write_text(f"[default]\ntype = access_key\naccess_key_id = {KEY_ID}\n"
                              f"access_key_secret = {KEY_SECRET}\n")
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    config = EcsInstanceSpecConfig(instance_id=inst.instance_id, endpoint=fake.endpoint,
                                   protocol="http", **common())
    act = EcsInstanceSpecActuator(config, target="db", ladder=LADDER, sleep=clock.sleep,
                                  monotonic=clock.monotonic)
    act.validate()
    assert act.read().count == 0


def test_default_chain_without_any_credential_fails_validate(fake, clock, isolated_chain):
    config = EcsInstanceSpecConfig(instance_id="i-1", endpoint=fake.endpoint, protocol="http",
                                   credential_source="default-chain", **common())
    act = EcsInstanceSpecActuator(config, target="db", ladder=LADDER, sleep=clock.sleep,
                                  monotonic=clock.monotonic)
    with pytest.raises(PermanentActuatorError, match="no Alibaba Cloud credentials"):
        act.validate()
    assert fake.calls == []


def test_the_credential_chains_own_log_handlers_print_nothing_raw(fake, clock, isolated_chain, capfd, caplog):
    """alibabacloud_credentials puts three stream handlers of its own on
    its logger: every provider's failure was printed raw to stderr, twice or
    more, traceback and all, before forescale's one line."""
    import logging

    config = EcsInstanceSpecConfig(instance_id="i-1", endpoint=fake.endpoint, protocol="http",
                                   credential_source="default-chain", **common())
    act = EcsInstanceSpecActuator(config, target="db", ladder=LADDER, sleep=clock.sleep,
                                  monotonic=clock.monotonic)
    capfd.readouterr()
    with pytest.raises(PermanentActuatorError) as info:
        act.validate()
    # the chain's failure is in the one error, whole (it was cut at 400 characters)
    assert str(info.value).endswith("])")
    logging.getLogger("credentials").warning("Refresh credentials failed, cached value is None")
    assert "Refresh credentials failed" not in capfd.readouterr().err
    assert "Refresh credentials failed" in caplog.text  # through forescale's handlers, as any library's


def test_fake_records_instance_ids_as_json(fake, clock):
    inst = fake.add_instance(LADDER[0], zone_id=ZONE)
    spec_actuator(fake, clock, inst.instance_id).read()
    assert json.loads(fake.calls[0].params["InstanceIds"]) == [inst.instance_id]


def test_config_durations_accept_the_config_file_spelling():
    with pytest.warns(FutureWarning, match="poll_interval"):
        config = EcsInstanceSpecConfig(region_id=REGION, instance_id="i-1", verify_timeout="15m",
                                       poll_interval="10s", read_timeout=30)
    assert config.verify_timeout == timedelta(minutes=15)
    assert config.poll_interval == timedelta(seconds=10)
    assert config.read_timeout == timedelta(seconds=30)
    with pytest.raises(ValueError, match="poll_interval"):
        EcsInstanceGroupConfig(region_id=REGION, tag_key="k", tag_value="v",
                               launch_template_id="lt-1", poll_interval="soon")


# ------------------------------------------------------------------ across processes
def test_a_resize_each_cycle_of_which_runs_in_a_new_process_starts_the_instance_it_stopped(fake, clock, tmp_path):
    """``forescale once`` from cron (or ``forescale apply``, or a daemon
    restarted mid-change): every cycle builds a new actuator. The one that
    found the instance stopped took it for someone else's: it changed the
    type, left the instance STOPPED and recorded the change applied and
    verified. The engine now hands each new actuator the change's record
    (``resume``): stop, modify, start, and applied only once it runs."""
    from engine.store import Store

    from tests.support.live import STEP, T0, build_live, write_config, write_trace

    inst = fake.add_instance(LADDER[0], zone_id=ZONE)  # PostPaid, Running
    trace = write_trace(tmp_path / "load.csv", [500.0] * 24)  # 500 / 0.7 -> rung 2 (800)
    target = {
        "name": "db", "interval": "5m", "mode": "auto", "source": {"type": "csv", "path": str(trace)},
        "forecaster": {"name": "persistence", "history": "2h"},
        "policy": {"ladder": [{"name": n, "capacity": c} for n, c in zip(LADDER, (200, 400, 800, 1600))],
                   "target_utilization": 0.7, "lead_time": "5m"},
        "actuator": {"type": "alibaba-ecs", "instance_id": inst.instance_id, "region_id": REGION},
    }
    cfg = write_config(tmp_path / "db.yaml", [target])
    store = Store(tmp_path / "db.db")
    now = T0 + 23 * STEP
    results = []
    for cycle in range(4):
        live = build_live(cfg, store, spec_actuator(fake, clock, inst.instance_id))  # a new process
        results.append(live.run(now))
        now += STEP
        clock.advance(STEP)
    assert mutating(fake) == ["StopInstance", "ModifyInstanceSpec", "StartInstance"]
    assert (fake.instances[inst.instance_id].instance_type, fake.instances[inst.instance_id].status) == \
        (LADDER[2], "Running")
    (rec,) = [r for r in store.decisions("db") if r["desired"] == 2 and r["current"] == 0]
    assert rec["status"] == "applied" and rec["outcome"]["verified"] is True
    # it was not applied before the instance ran again
    # cycle 2 (a new process) modified and started it; cycle 3 saw it run
    assert results[1].details["resizing"].endswith("step starting toward 2")
    assert results[2].details["verified"].endswith("2 in service after 0:10:00")
