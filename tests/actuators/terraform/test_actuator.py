"""``terraform`` (actuators/terraform/actuator.py) against the real terraform binary.

Every workspace uses only the built-in ``terraform_data`` resource (provider
``terraform.io/builtin/terraform``), so nothing is downloaded. Each test copies
a fixture workspace from tests/fixtures/terraform into its own tmp_path and
brings it to its starting capacity with a plain ``terraform apply``, the way an
operator would before handing the workspace to forescale.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pydantic
import pytest

from actuators import registry
from actuators.terraform import (
    TFVARS_FILE,
    TerraformActuator,
    TerraformConfig,
)
from engine.core.errors import (
    ConfigError,
    LimitExceeded,
    PermanentActuatorError,
    TransientActuatorError,
)

from tests.support.actuator_contract import ActuatorContract
from tests.support import ROOT


def _find_terraform() -> str | None:
    found = shutil.which("terraform")
    if found:
        return found
    default = "/usr/local/bin/terraform"
    return default if os.access(default, os.X_OK) else None


TERRAFORM = _find_terraform()
FIXTURES = ROOT / "tests" / "fixtures" / "terraform"
EXAMPLE = ROOT / "examples" / "terraform"
LADDER = ("t3.small", "t3.medium", "t3.large", "t3.xlarge")

pytestmark = [
    pytest.mark.terraform,
    pytest.mark.skipif(TERRAFORM is None,
                       reason="the terraform binary is not on PATH nor at /usr/local/bin/terraform"),
]


# ----------------------------------------------------------------------- helpers
def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1")
    env.update(extra)
    return env


def tf(ws: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TERRAFORM, *args], cwd=ws, env=env or _env(), capture_output=True,
                          text=True, timeout=60)


def copy_workspace(tmp_path: Path, name: str, source: Path = FIXTURES) -> Path:
    ws = tmp_path / name
    shutil.copytree(source / name if source == FIXTURES else source, ws)
    return ws


#: applied states by (workspace name, values): each starting point is applied
#: by terraform once per module and copied into later tests' workspaces
_APPLIED: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="module", autouse=True)
def _applied_states(tmp_path_factory):
    _APPLIED.clear()
    _APPLIED[("", "")] = tmp_path_factory.mktemp("applied-states")
    yield
    _APPLIED.clear()


def bootstrap(ws: Path, env: dict[str, str] | None = None, **values: Any) -> None:
    """Apply the workspace once with ``values``, outside forescale (no tfvars
    file), as the operator does before handing it over."""
    key = (ws.name, json.dumps(values, sort_keys=True))
    if env is None and key in _APPLIED:
        shutil.copytree(_APPLIED[key], ws, dirs_exist_ok=True)
        return
    var_file = ws.parent / f"{ws.name}-bootstrap.tfvars.json"
    var_file.write_text(json.dumps(values))
    steps = [("apply", "-auto-approve", "-input=false", "-no-color", f"-var-file={var_file}")]
    if (ws / "modules").is_dir():  # only local modules need an init; built-ins do not
        steps.insert(0, ("init", "-input=false", "-no-color"))
    for args in steps:
        done = tf(ws, *args, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    if env is None and ("", "") in _APPLIED:
        saved = _APPLIED[("", "")] / f"{ws.name}-{len(_APPLIED)}"
        saved.mkdir()
        shutil.copy2(ws / "terraform.tfstate", saved)
        if (ws / ".terraform").is_dir():
            shutil.copytree(ws / ".terraform", saved / ".terraform")
        _APPLIED[key] = saved


def state(ws: Path) -> dict[str, Any]:
    return json.loads((ws / "terraform.tfstate").read_text())


def output(ws: Path, name: str) -> Any:
    return state(ws)["outputs"][name]["value"]


def make(ws: Path, *, variable: str = "desired_capacity", ladder=None, sleeps=None,
         environ=None, **config: Any) -> TerraformActuator:
    config.setdefault("binary", TERRAFORM)
    config.setdefault("retry_attempts", 2)
    return TerraformActuator(
        TerraformConfig(workspace=ws, variable=variable, **config),
        target="web", ladder=ladder,
        sleep=(sleeps.append if sleeps is not None else (lambda s: None)),
        environ=environ,
    )


@contextmanager
def state_lock_held(ws: Path) -> Iterator[subprocess.Popen]:
    """A real terraform process holding the workspace's state lock:
    ``terraform console`` takes the lock for as long as it reads its stdin."""
    holder = subprocess.Popen([TERRAFORM, "console", "-no-color"], cwd=ws, env=_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    lock_info = ws / ".terraform.tfstate.lock.info"
    deadline = time.monotonic() + 20
    try:
        # the local backend writes the lock info right after taking the lock
        while not lock_info.exists():
            assert holder.poll() is None, "terraform console exited before taking the lock"
            assert time.monotonic() < deadline, "terraform console never took the state lock"
            time.sleep(0.01)
        yield holder
    finally:
        release(holder)


def release(holder: subprocess.Popen) -> None:
    if holder.stdin and not holder.stdin.closed:
        holder.stdin.close()  # EOF: console exits and releases the lock
    holder.wait(timeout=20)


# ---------------------------------------------------------------------- contract
class TestTerraformNumber(ActuatorContract):
    initial_capacity = 2
    capacities = (4, 1)

    @pytest.fixture
    def actuator(self, tmp_path):
        ws = copy_workspace(tmp_path, "capacity")
        bootstrap(ws, desired_capacity=2)
        return make(ws)

    # Terraform's apply is one run that returns once the providers are done:
    # there is no accepted-but-not-ready state to read, and the bound on how
    # long the run may block is apply_timeout (tested below)
    test_apply_returns_without_waiting_for_a_slow_platform = None


class TestTerraformLadder(ActuatorContract):
    initial_capacity = 1
    capacities = (3, 0)

    @pytest.fixture
    def actuator(self, tmp_path):
        ws = copy_workspace(tmp_path, "ladder")
        bootstrap(ws, instance_type="t3.medium")
        return make(ws, variable="instance_type", value_kind="ladder", ladder=LADDER)

    test_apply_returns_without_waiting_for_a_slow_platform = None


# --------------------------------------------------------------------- behaviour
@pytest.fixture
def ws(tmp_path) -> Path:
    ws = copy_workspace(tmp_path, "capacity")
    bootstrap(ws, desired_capacity=2)
    return ws


def test_registry_resolves_terraform_to_this_actuator():
    assert registry.get("terraform") is TerraformActuator
    assert TerraformConfig(workspace=".", variable="x").type == "terraform"


def test_apply_writes_the_owned_tfvars_and_changes_state(ws):
    result = make(ws).apply(5, decision_id="d1")
    assert json.loads((ws / TFVARS_FILE).read_text()) == {"desired_capacity": 5}
    assert output(ws, "desired_capacity") == 5
    assert result.details["applied"] is True
    assert {"address": "terraform_data.group", "actions": ["update"]} in result.details["changes"]
    assert len(result.request_ids) == 1 and result.request_ids[0].startswith("terraform-plan:sha256:")
    # the temp file of the atomic write is gone, and no plan file is left behind
    assert sorted(p.name for p in ws.iterdir() if p.name.startswith(".forescale")) == []
    assert not list(ws.glob("*.tfplan"))


def test_tfvars_keeps_other_keys_and_a_person_sees_forescale_value(ws):
    (ws / TFVARS_FILE).write_text(json.dumps({"desired_capacity": 2, "note": "unchanged"}))
    make(ws).apply(3, decision_id="d1")
    assert json.loads((ws / TFVARS_FILE).read_text()) == {"desired_capacity": 3, "note": "unchanged"}
    # a person's own `terraform plan` now agrees with what forescale applied
    assert tf(ws, "plan", "-detailed-exitcode", "-input=false", "-no-color").returncode == 0


def test_second_apply_of_the_same_value_plans_nothing_and_writes_no_state(ws):
    a = make(ws)
    a.apply(3, decision_id="d1")
    serial = state(ws)["serial"]
    again = a.apply(3, decision_id="d2")
    assert again.details["applied"] is False
    assert again.request_ids == ()
    assert again.verified and again.observed == 3
    assert state(ws)["serial"] == serial


def test_describe_returns_the_plan_text_and_leaves_workspace_and_state_alone(ws):
    before_state = (ws / "terraform.tfstate").read_bytes()
    plan = make(ws).describe(4, 2)
    assert plan.actuator == "terraform" and plan.target == "web"
    assert (plan.from_capacity, plan.to_capacity) == (2, 4)
    assert "terraform_data.group will be updated in-place" in plan.details["plan_text"]
    assert "desired_capacity = 2 -> 4" in plan.details["plan_text"]
    assert "var.desired_capacity 2 -> 4: 0 to add, 1 to change, 0 to destroy" in plan.summary
    assert plan.details["drift"] == []
    assert plan.details["counts"] == {"add": 0, "change": 1, "destroy": 0}
    assert (ws / "terraform.tfstate").read_bytes() == before_state
    assert not (ws / TFVARS_FILE).exists()
    assert sorted(p.name for p in ws.iterdir()) == ["main.tf", "terraform.tfstate"]


def test_describe_of_the_current_value_says_no_changes(ws):
    plan = make(ws).describe(2)
    assert plan.from_capacity == 2
    assert plan.summary.endswith("var.desired_capacity 2 -> 2: no changes")
    assert plan.details["changes"] == []


def test_drift_is_refused_naming_the_drifting_addresses(ws):
    # a colleague's edit, not yet applied, in another variable file
    (ws / "colleague.auto.tfvars.json").write_text(json.dumps({"note": "edited"}))
    before_state = (ws / "terraform.tfstate").read_bytes()
    sleeps: list[float] = []
    with pytest.raises(PermanentActuatorError) as err:
        make(ws, sleeps=sleeps).apply(4, decision_id="d1")
    message = str(err.value)
    assert "terraform_data.unrelated (update)" in message
    assert "output.note (update)" in message
    assert "terraform_data.group" not in message  # the capacity change is not drift
    assert "allow_drift" in message
    assert sleeps == []  # permanent: not retried
    assert (ws / "terraform.tfstate").read_bytes() == before_state
    assert not (ws / TFVARS_FILE).exists()  # restored: there was none before


def test_a_tainted_resource_is_named_with_what_to_do(ws):
    """An apply interrupted mid-run (Ctrl-C) leaves its resource tainted,
    and every later apply was refused as drift with nothing saying why."""
    subprocess.run([TERRAFORM, "taint", "terraform_data.unrelated"], cwd=ws, check=True, capture_output=True,
                   timeout=120)
    with pytest.raises(PermanentActuatorError) as err:
        make(ws).apply(4, decision_id="d1")
    message = str(err.value)
    assert "terraform_data.unrelated (delete+create, tainted)" in message
    assert ("terraform_data.unrelated is tainted (an apply interrupted before it finished?): run terraform apply "
            "in the workspace, or terraform untaint terraform_data.unrelated") in message
    assert output(ws, "desired_capacity") == 2


def test_drift_of_the_capacity_resource_itself_is_refused(ws):
    # the configuration changed under the capacity resource: max_size 10 -> 12
    main = ws / "main.tf"
    main.write_text(main.read_text().replace("max_size         = 10", "max_size         = 12"))
    with pytest.raises(PermanentActuatorError, match=r"terraform_data\.group \(update\)"):
        make(ws).apply(4, decision_id="d1")
    assert output(ws, "desired_capacity") == 2


def test_describe_reports_drift_without_refusing(ws):
    (ws / "colleague.auto.tfvars.json").write_text(json.dumps({"note": "edited"}))
    plan = make(ws).describe(4, 2)
    assert {"address": "terraform_data.unrelated", "actions": ["update"]} in plan.details["drift"]
    assert "apply would be refused" in plan.summary
    assert "terraform_data.unrelated" in plan.summary


def test_drift_is_applied_when_allowed(ws):
    (ws / "colleague.auto.tfvars.json").write_text(json.dumps({"note": "edited"}))
    result = make(ws, allow_drift=True).apply(4, decision_id="d1")
    assert result.verified and result.observed == 4
    assert output(ws, "note") == "edited"
    addresses = {c["address"] for c in result.details["changes"]}
    assert {"terraform_data.group", "terraform_data.unrelated"} <= addresses


def test_drift_at_the_current_capacity_is_refused_too(ws):
    (ws / "colleague.auto.tfvars.json").write_text(json.dumps({"note": "edited"}))
    with pytest.raises(PermanentActuatorError, match="terraform_data.unrelated"):
        make(ws).apply(2, decision_id="d1")
    assert output(ws, "note") == "unchanged"


def test_a_variable_file_that_outranks_forescale_is_refused(ws):
    # *.auto.tfvars files load in lexical order: zz.* overrides forescale.*
    (ws / "zz.auto.tfvars.json").write_text(json.dumps({"desired_capacity": 7}))
    with pytest.raises(PermanentActuatorError, match="takes precedence"):
        make(ws).apply(4, decision_id="d1")
    assert output(ws, "desired_capacity") == 2
    assert not (ws / TFVARS_FILE).exists()


def test_held_state_lock_is_transient_and_retried_then_reported(ws):
    sleeps: list[float] = []
    a = make(ws, lock_timeout="100ms", retry_attempts=3, sleeps=sleeps)
    with state_lock_held(ws):
        # the lock is real: terraform itself cannot get it either
        direct = tf(ws, "plan", "-input=false", "-no-color", "-lock-timeout=0s")
        assert "Error acquiring the state lock" in direct.stderr
        with pytest.raises(TransientActuatorError) as err:
            a.apply(4, decision_id="d1")
    assert "Error acquiring the state lock" in str(err.value)
    assert err.value.request_ids and err.value.request_ids[0].startswith("terraform-lock:")
    assert len(sleeps) == 2  # three attempts
    assert not (ws / TFVARS_FILE).exists()
    assert a.read().count == 2


def test_apply_succeeds_once_the_lock_is_released_between_retries(ws):
    with state_lock_held(ws) as holder:
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            release(holder)

        a = TerraformActuator(
            TerraformConfig(workspace=ws, variable="desired_capacity", binary=TERRAFORM,
                            lock_timeout="0s", retry_attempts=3),
            target="web", sleep=sleep)
        result = a.apply(4, decision_id="d1")
    assert len(sleeps) == 1
    assert result.verified and result.observed == 4
    assert output(ws, "desired_capacity") == 4


def test_validation_rule_of_the_capacity_variable_is_limit_exceeded(ws):
    with pytest.raises(LimitExceeded) as err:
        make(ws).apply(11, decision_id="d1")
    assert "must be between 0 and 10" in str(err.value)
    assert output(ws, "desired_capacity") == 2
    assert not (ws / TFVARS_FILE).exists()


def test_ladder_writes_the_instance_type_string(tmp_path):
    ws = copy_workspace(tmp_path, "ladder")
    bootstrap(ws, instance_type="t3.small")
    a = make(ws, variable="instance_type", value_kind="ladder", ladder=LADDER)
    assert a.read().count == 0
    plan = a.describe(2)
    assert plan.details["value"] == "t3.large" and plan.details["from_value"] == "t3.small"
    assert '"t3.small" -> "t3.large"' in plan.details["plan_text"]
    a.apply(2, decision_id="d1")
    assert json.loads((ws / TFVARS_FILE).read_text()) == {"instance_type": "t3.large"}
    assert output(ws, "instance_type") == "t3.large"


def test_ladder_capacity_beyond_the_ladder_is_limit_exceeded(tmp_path):
    ws = copy_workspace(tmp_path, "ladder")
    bootstrap(ws, instance_type="t3.small")
    a = make(ws, variable="instance_type", value_kind="ladder", ladder=LADDER)
    with pytest.raises(LimitExceeded, match=r"outside the ladder .*0\.\.3"):
        a.apply(4, decision_id="d1")


def test_ladder_read_of_a_type_not_on_the_ladder_names_it(tmp_path):
    ws = copy_workspace(tmp_path, "ladder")
    bootstrap(ws, instance_type="t3.xlarge")
    a = make(ws, variable="instance_type", value_kind="ladder", ladder=LADDER[:3])
    with pytest.raises(PermanentActuatorError, match=r'"t3.xlarge", which is not in the ladder'):
        a.read()


def test_ladder_mode_without_a_ladder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ladder"):
        make(tmp_path, value_kind="ladder", ladder=None)


def test_read_from_tfvars(tmp_path):
    ws = copy_workspace(tmp_path, "capacity")
    (ws / TFVARS_FILE).write_text(json.dumps({"desired_capacity": 6}))
    # nothing applied yet: the file is the only source
    a = make(ws, read_from="tfvars")
    assert a.read().count == 6


def test_read_falls_back_to_tfvars_when_the_output_is_not_in_state(tmp_path):
    ws = copy_workspace(tmp_path, "capacity")
    (ws / TFVARS_FILE).write_text(json.dumps({"desired_capacity": 3}))
    assert make(ws).read().count == 3


def test_read_with_no_source_says_how_to_start(tmp_path):
    ws = copy_workspace(tmp_path, "capacity")
    with pytest.raises(PermanentActuatorError) as err:
        make(ws).read()
    assert "output 'desired_capacity' is not in the state" in str(err.value)
    assert "apply the workspace once" in str(err.value)


def test_init_installs_local_modules_when_dot_terraform_is_missing(tmp_path):
    ws = copy_workspace(tmp_path, "module")
    bootstrap(ws, desired_capacity=1)
    shutil.rmtree(ws / ".terraform")  # e.g. a fresh checkout on the forescale host
    a = make(ws)
    result = a.apply(3, decision_id="d1")
    assert (ws / ".terraform" / "modules").is_dir()
    assert result.verified
    assert output(ws, "desired_capacity") == 3


def test_without_init_a_module_workspace_fails_with_terraform_text(tmp_path):
    ws = copy_workspace(tmp_path, "module")
    bootstrap(ws, desired_capacity=1)
    shutil.rmtree(ws / ".terraform")
    with pytest.raises(PermanentActuatorError, match="Module not installed"):
        make(ws, init=False).apply(3, decision_id="d1")


def test_sensitive_values_are_neither_logged_nor_returned(tmp_path, caplog):
    secret, rotated = "tok-5b1e6f0c2d9a", "tok-77aa01fe93c4"
    ws = copy_workspace(tmp_path, "capacity")
    bootstrap(ws, env=_env(TF_VAR_api_token=secret), desired_capacity=2)
    # the token was rotated outside forescale: the credentials resource drifts
    a = make(ws, environ=_env(TF_VAR_api_token=rotated))
    caplog.set_level(logging.DEBUG, logger="actuators.terraform")
    plan = a.describe(3, 2)
    assert "(sensitive value)" in plan.details["plan_text"]
    assert {"address": "terraform_data.credentials", "actions": ["update"]} in plan.details["drift"]
    with pytest.raises(PermanentActuatorError) as err:
        a.apply(3, decision_id="d1")
    assert "terraform_data.credentials" in str(err.value)
    assert caplog.text  # commands were logged
    for text in (caplog.text, repr(plan), str(err.value)):
        assert secret not in text and rotated not in text


def test_sample_workspace_in_examples_applies(tmp_path):
    ws = copy_workspace(tmp_path, "terraform", source=EXAMPLE)
    bootstrap(ws, desired_capacity=2)
    a = make(ws)
    a.validate()
    assert a.apply(3, decision_id="d1").observed == 3


# ------------------------------------------------------------- validate / errors
def test_validate_rejects_a_missing_workspace(tmp_path):
    with pytest.raises(PermanentActuatorError, match="does not exist or is not a directory"):
        make(tmp_path / "nope").validate()


def test_validate_rejects_a_directory_without_configuration(tmp_path):
    with pytest.raises(PermanentActuatorError, match=r"has no \.tf or \.tf\.json files"):
        make(tmp_path).validate()


def test_validate_reports_terraform_syntax_errors(tmp_path):
    ws = copy_workspace(tmp_path, "broken")
    (ws / TFVARS_FILE).write_text(json.dumps({"desired_capacity": 1}))
    with pytest.raises(PermanentActuatorError) as err:
        make(ws).validate()
    assert "Unclosed configuration block" in str(err.value)
    assert "main.tf" in str(err.value)


def test_validate_rejects_an_undeclared_variable(ws):
    with pytest.raises(PermanentActuatorError) as err:
        make(ws, variable="replicas", read_from="tfvars").validate()
    # read() comes first and cannot learn the capacity of an unknown variable
    assert "replicas" in str(err.value)
    (ws / TFVARS_FILE).write_text(json.dumps({"desired_capacity": 2, "replicas": 2}))
    with pytest.raises(PermanentActuatorError, match=r"declares no variable 'replicas' \(it declares: "
                                                     r"api_token, desired_capacity, note\)"):
        make(ws, variable="replicas", read_from="tfvars").validate()


def test_validate_rejects_a_missing_output(ws):
    (ws / TFVARS_FILE).write_text(json.dumps({"desired_capacity": 2}))
    with pytest.raises(PermanentActuatorError, match="declares no output 'capacity'"):
        make(ws, output="capacity").validate()


def test_validate_rejects_a_missing_binary(ws):
    with pytest.raises(PermanentActuatorError, match="does not exist or is not executable"):
        make(ws, binary="/nonexistent/terraform").validate()
    with pytest.raises(PermanentActuatorError, match="is not on PATH"):
        make(ws, binary="terraform-not-installed").validate()


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="variable"):
        TerraformConfig(workspace=tmp_path, variable="desired capacity")
    with pytest.raises(pydantic.ValidationError, match="value_kind"):
        TerraformConfig(workspace=tmp_path, variable="x", value_kind="size")
    with pytest.raises(pydantic.ValidationError, match="plan_timeout"):
        TerraformConfig(workspace=tmp_path, variable="x", plan_timeout="0s")
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        TerraformConfig(workspace=tmp_path, variable="x", lock="30s")
    cfg = TerraformConfig(workspace=tmp_path, variable="x", lock_timeout="2m", plan_timeout=90)
    assert cfg.lock_timeout == timedelta(minutes=2) and cfg.plan_timeout == timedelta(seconds=90)
    assert cfg.output_name == "x"


FAKE_TERRAFORM = """#!/bin/sh
env > "$FAKE_RECORD.env"
trap 'echo interrupted > "$FAKE_RECORD.int"; kill $child 2>/dev/null; exit 130' INT
sleep 30 &
child=$!
wait $child
"""


def test_a_slow_terraform_is_interrupted_and_transient(tmp_path):
    ws = copy_workspace(tmp_path, "capacity")
    fake = tmp_path / "terraform"
    fake.write_text(FAKE_TERRAFORM)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "record"
    sleeps: list[float] = []
    a = make(ws, binary=str(fake), init=False, plan_timeout="200ms", interrupt_grace="5s",
             retry_attempts=2, sleeps=sleeps, environ=_env(FAKE_RECORD=str(record)))
    started = time.monotonic()
    with pytest.raises(TransientActuatorError, match=r"terraform output .* did not finish within 0.2s"):
        a.read()
    assert time.monotonic() - started < 4  # interrupted, not waited out
    assert len(sleeps) == 1
    # terraform got SIGINT (its clean stop), and ran in automation mode
    assert (tmp_path / "record.int").read_text().strip() == "interrupted"
    env = dict(line.split("=", 1) for line in (tmp_path / "record.env").read_text().splitlines()
               if "=" in line)
    assert env["TF_IN_AUTOMATION"] == "1" and env["TF_INPUT"] == "0"


def test_one_apply_is_bounded_by_apply_timeout_across_all_its_runs(tmp_path):
    ws = copy_workspace(tmp_path, "capacity")
    fake = tmp_path / "terraform"
    fake.write_text(FAKE_TERRAFORM)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    sleeps: list[float] = []
    # each run may take 10 minutes, the whole apply one second
    a = make(ws, binary=str(fake), init=False, plan_timeout="10m", apply_timeout="1s",
             interrupt_grace="5s", retry_attempts=3, sleeps=sleeps,
             environ=_env(FAKE_RECORD=str(tmp_path / "record")))
    started = time.monotonic()
    with pytest.raises(TransientActuatorError, match="did not finish within|apply_timeout"):
        a.apply(3, decision_id="d1")
    assert time.monotonic() - started < 8  # one second of terraform, then interrupted
    assert not (ws / TFVARS_FILE).exists()  # put back as it was


def test_apply_timeout_must_be_shorter_than_the_cycle_timeout(tmp_path):
    from actuators.base import check_apply_bound

    cfg = TerraformConfig(workspace=tmp_path, variable="x", apply_timeout="3m")
    assert cfg.apply_bound() == ("apply_timeout", timedelta(minutes=3))
    message = check_apply_bound(cfg, timedelta(minutes=2), path="targets[0].actuator",
                                timeout_path="targets[0].timeout")
    assert message.startswith("targets[0].actuator.apply_timeout (3m) must be shorter than "
                              "targets[0].timeout (2m)")
    assert check_apply_bound(cfg, timedelta(minutes=5)) is None
    # the default fits the default cycle timeout
    assert check_apply_bound(TerraformConfig(workspace=tmp_path, variable="x"), timedelta(minutes=2)) is None
    with pytest.raises(pydantic.ValidationError, match="apply_timeout"):
        TerraformConfig(workspace=tmp_path, variable="x", apply_timeout="0s")


def test_validate_refuses_an_apply_timeout_the_cycle_would_abandon(tmp_path):
    """Only ``validate --check-actuators``, ``once`` and ``run`` refused it
    (at build); plain ``validate`` said valid."""
    import subprocess
    import sys

    from tests.support import ROOT

    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets:\n  - name: web\n    source: {type: csv, path: x.csv}\n"
                   "    policy: {capacity_per_replica: 10}\n"
                   f"    actuator: {{type: terraform, workspace: {tmp_path}, variable: n, apply_timeout: 5m}}\n")
    r = subprocess.run([sys.executable, "-m", "engine.cli", "validate", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "targets[0]: actuator.apply_timeout (5m) must be shorter than timeout (2m)" in r.stderr


def test_a_relative_workspace_is_relative_to_base_dir(ws):
    a = TerraformActuator(
        TerraformConfig(workspace=Path(ws.name), variable="desired_capacity", binary=TERRAFORM),
        target="web", base_dir=ws.parent)
    assert a.workspace == ws
    assert a.read().count == 2


def test_unknown_injected_clients_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="ec2_client"):
        TerraformActuator(TerraformConfig(workspace=tmp_path, variable="x"), target="t",
                          ec2_client=object())


def test_built_from_a_config_file_with_a_ladder(tmp_path):
    import yaml

    from engine.build import build_actuator
    from engine.config import parse_config

    ws = copy_workspace(tmp_path, "ladder")
    bootstrap(ws, instance_type="t3.medium")
    doc = yaml.safe_load(f"""
targets:
  - name: db
    source: {{type: csv, path: load.csv}}
    policy:
      ladder:
        - {{name: t3.small, capacity: 100}}
        - {{name: t3.medium, capacity: 200}}
        - {{name: t3.large, capacity: 400}}
    actuator:
      type: terraform
      workspace: {ws}
      variable: instance_type
      value_kind: ladder
      binary: {TERRAFORM}
      lock_timeout: 5s
      plan_timeout: 2m
""")
    (target,) = parse_config(doc).targets
    actuator = build_actuator(target, sleep=lambda s: None)
    assert isinstance(actuator, TerraformActuator)
    assert actuator.ladder == ("t3.small", "t3.medium", "t3.large")
    assert actuator.config.lock_timeout == timedelta(seconds=5)
    actuator.validate()
    assert actuator.read().count == 1
    assert actuator.apply(2, decision_id="d1").observed == 2
    assert output(ws, "instance_type") == "t3.large"


def test_a_bad_actuator_field_is_reported_with_its_path():
    from engine.config import parse_config

    doc = {"targets": [{"name": "web", "source": {"type": "csv", "path": "x.csv"},
                        "policy": {"capacity_per_replica": 100},
                        "actuator": {"type": "terraform", "workspace": "infra/web",
                                     "variable": "desired_capacity", "read_from": "state"}}]}
    with pytest.raises(ConfigError, match=r"targets\[0\]\.actuator.*read_from"):
        parse_config(doc)
