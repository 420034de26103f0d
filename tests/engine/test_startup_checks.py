"""A missing credential or a target that does not exist is one clear error
at startup, not at the first action."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from engine.daemon import Daemon
from engine.core.errors import ConfigError, PermanentActuatorError, TransientActuatorError
from engine.store import Store

from tests.support.live import Platform, target_dict, write_config, write_trace
from tests.support import ROOT



class Refusing(Platform):
    def __init__(self, exc: Exception) -> None:
        super().__init__(capacity=3)
        self.exc = exc

    def validate(self) -> None:
        raise self.exc


def test_the_daemon_refuses_to_start_on_a_permanent_actuator_problem(tmp_path):
    trace = write_trace(tmp_path / "t.csv", [10.0] * 30)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace)])
    with pytest.raises(ConfigError, match=r"target 'web': actuator 'dry-run': no credentials"):
        Daemon(cfg, build_actuator=lambda t, c: Refusing(PermanentActuatorError("no credentials")))
    # the lock was released: another daemon can start
    Store(tmp_path / "state.db").lock()


def test_an_unreachable_platform_at_startup_is_only_a_warning(tmp_path, caplog):
    trace = write_trace(tmp_path / "t.csv", [10.0] * 30)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace)])
    d = Daemon(cfg, build_actuator=lambda t, c: Refusing(TransientActuatorError("connection refused")))
    try:
        assert "not reachable at startup" in caplog.text
    finally:
        d.shutdown(1)


def test_validate_check_actuators_names_a_missing_aws_credential(tmp_path):
    pytest.importorskip("boto3")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"targets": [{
        "name": "web", "source": {"type": "csv", "path": "x.csv"}, "policy": {"capacity_per_replica": 10},
        "actuator": {"type": "aws-asg", "region": "eu-west-1", "group_name": "web",
                     "endpoint_url": "http://127.0.0.1:9"}}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    r = subprocess.run([sys.executable, "-m", "engine.cli", "validate", "--config", str(cfg), "--check-actuators"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "target 'web'" in lines[0] and "credential" in lines[0].lower()


def test_an_apply_that_could_outlive_the_cycle_is_refused_at_startup_naming_both_fields(tmp_path):
    trace = write_trace(tmp_path / "t.csv", [10.0] * 30)
    slow = target_dict("web", trace, timeout="2m",
                       actuator={"type": "terraform", "workspace": str(tmp_path), "variable": "n",
                                 "apply_timeout": "3m"})
    cfg = write_config(tmp_path / "c.yaml", [slow])
    # refused at load, before the daemon opens anything (so `validate` says it too)
    with pytest.raises(ConfigError, match=r"targets\[0\]: actuator\.apply_timeout \(3m\) must be "
                                          r"shorter than timeout \(2m\)"):
        Daemon(cfg)
    Store(tmp_path / "state.db").lock()


def test_a_long_verify_timeout_is_fine_because_nothing_blocks_on_it(tmp_path):
    trace = write_trace(tmp_path / "t.csv", [10.0] * 30)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, timeout="2m",
                                                         actuator={"type": "dry-run", "verify_timeout": "15m"})])
    d = Daemon(cfg)
    d.shutdown(1)
