"""Loading the YAML config: typed objects from a valid file; for a bad one,
one ConfigError whose text names the field path and the bad value."""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from actuators.dryrun import DryRunConfig
from engine.cli import main as cli_main
from engine.config import Config, load_config, parse_config
from engine.core.errors import ConfigError
from engine.sources.csv import CsvConfig, ReplayConfig

VALID = """\
state: var/forescale.db
log_format: json
server: {listen: "127.0.0.1:9999"}
targets:
  - name: web
    interval: 5m
    mode: approve
    source: {type: csv, path: traces/web.csv}
    forecaster:
      name: seasonal_naive
      params: {season: weekly}
      refit_every: 6h
      quantiles: [0.95, 0.5, 0.9, 0.9]
    policy:
      capacity_per_replica: 50
      target_utilization: 0.8
      min_replicas: 2
      max_replicas: 40
      lead_time: 10m
      hold: 300
      margin: {quantile: 0.95, cap: 0.5}
      stabilization: {scale_down: 10m}
      scale_down:
        select: Min
        policies:
          - {type: Pods, value: 2, period: 1m}
          - {type: Percent, value: 10, period: 60s}
      cooldown: {after_scale_up: 15m}
    actuator: {type: dry-run, initial_capacity: 4}
  - name: vps
    interval: 1m
    source: {type: replay, path: /data/vps.csv, start_at: "2024-01-01T00:00:00Z"}
    policy:
      ladder:
        - {name: s-1vcpu-1gb, capacity: 1, price: 6}
        - {name: s-2vcpu-2gb, capacity: 2, price: 18}
        - {name: s-4vcpu-8gb, capacity: 4, price: 48}
      min_replicas: 1
      scale_in: false
"""


def write(tmp_path: Path, text: str, name: str = "forescale.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def target(policy: str = "{capacity_per_replica: 10}", extra: str = "") -> str:
    """A one-target file with the given policy mapping and extra target lines."""
    return (f"targets:\n  - name: web\n    source: {{type: csv, path: x.csv}}\n"
            f"    policy: {policy}\n" + "".join(f"    {ln}\n" for ln in extra.splitlines() if ln))


# ------------------------------------------------------------------------ valid
def test_a_valid_multi_target_file_loads_into_typed_objects(tmp_path):
    cfg = load_config(write(tmp_path, VALID))
    assert isinstance(cfg, Config)
    assert [t.name for t in cfg.targets] == ["web", "vps"]
    assert cfg.state_path == tmp_path.resolve() / "var" / "forescale.db"
    assert cfg.log_format == "json" and cfg.server.listen == "127.0.0.1:9999"

    web = cfg.target("web")
    assert web.interval == timedelta(minutes=5)
    assert web.mode == "approve"
    assert isinstance(web.source_config, CsvConfig)
    assert web.source_config.path == Path("traces/web.csv")
    assert web.forecaster.refit_every == timedelta(hours=6)
    assert web.forecaster.quantiles == (0.5, 0.9, 0.95)  # sorted, deduplicated
    p = web.policy
    assert (p.capacity_per_replica, p.target_utilization, p.bounds) == (50.0, 0.8, (2, 40))
    assert (p.lead_time, p.hold) == (timedelta(minutes=10), timedelta(seconds=300))
    assert (p.margin.quantile, p.margin.cap) == (0.95, 0.5)
    assert p.stabilization.scale_down == timedelta(minutes=10)
    assert p.stabilization.scale_up == timedelta(0)  # the HPA default survives
    assert p.scale_down.select == "Min"
    assert [(r.type, r.value, r.period) for r in p.scale_down.policies] == [
        ("Pods", 2, timedelta(minutes=1)), ("Percent", 10, timedelta(seconds=60))]
    assert p.cooldown.after_scale_up == timedelta(minutes=15)
    assert isinstance(web.actuator_config, DryRunConfig) and web.actuator_config.initial_capacity == 4
    # lead 10m + hold 5m at a 5m interval: 3 forecast steps
    assert web.horizon_steps == 3

    vps = cfg.target("vps")
    assert isinstance(vps.source_config, ReplayConfig)
    assert vps.source_config.start_at == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert vps.policy.vertical and vps.policy.bounds == (1, 2)
    assert vps.policy.label(2) == "s-4vcpu-8gb"
    assert not vps.policy.scale_in
    assert vps.forecaster.name == "seasonal_persistence"  # the default
    assert vps.actuator.type == "dry-run"  # the default actuator
    # 1m interval, 15m span: 15 steps
    assert vps.horizon_steps == 15


def test_an_unknown_target_name_lists_the_known_ones(tmp_path):
    cfg = load_config(write(tmp_path, VALID))
    with pytest.raises(ConfigError, match=r"no target named 'db'; known: web, vps"):
        cfg.target("db")


def test_the_cli_validates_a_good_file(tmp_path, capsys):
    assert cli_main(["validate", "--config", str(write(tmp_path, VALID))]) == 0
    out = capsys.readouterr().out
    assert "valid (2 target(s))" in out
    assert "web: mode approve" in out


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize("text, expected", [
    # a misspelt field
    (target("{capacity_per_replica: 10, cooldwn: {after_scale_up: 5m}}"),
     "targets[0].policy.cooldwn: unknown field (check the spelling)"),
    (target(extra="intervall: 5m"), "targets[0].intervall: unknown field"),
    ("statee: x.db\n" + target(), "statee: unknown field"),
    # a negative bound
    (target("{capacity_per_replica: 10, min_replicas: -1}"),
     "targets[0].policy.min_replicas: Input should be greater than or equal to 0 (got -1)"),
    (target("{capacity_per_replica: -10}"), "targets[0].policy.capacity_per_replica: Input should be greater than 0 (got -10)"),
    # max below min
    (target("{capacity_per_replica: 10, min_replicas: 5, max_replicas: 3}"),
     "targets[0].policy: max_replicas (3) is less than min_replicas (5)"),
    # a bad duration names the field and the value
    (target("{capacity_per_replica: 10, lead_time: 5 minutes}"),
     "targets[0].policy.lead_time: not a duration: '5 minutes' (use e.g. 30s, 5m, 1h, 2d)"),
    (target("{capacity_per_replica: 10, cooldown: {after_scale_down: -5m}}"),
     "targets[0].policy.cooldown.after_scale_down: duration must not be negative, got -5m"),
    (target(extra="interval: 0s"), "targets[0]: interval (0:00:00) must be positive"),
    # it names the model checkpoint's file: 3,000 characters validated, and no model was ever saved
    ("targets:\n  - name: " + "w" * 3000 + "\n    source: {type: csv, path: x.csv}\n"
     "    policy: {capacity_per_replica: 10}\n",
     "targets[0].name: String should have at most 200 characters (got 'wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww... "
     "(3000 characters))"),
    # settings that validated, then made every cycle fall back
    (target(extra="forecaster: {history: 0s}"),
     "targets[0]: forecaster.history (0s) is shorter than the interval (5m): no sample would be in it"),
    (target("{capacity_per_replica: 10, max_staleness: 0s}"),
     "targets[0]: policy.max_staleness must be longer than zero"),
    (target(extra="forecaster: {name: auto, params: {candidates: [{name: seasonal_naive}, {name: holtwinters}]}}"),
     "targets[0].forecaster.params.candidates: candidates[1].name: unknown forecaster 'holtwinters'; known: "),
    # wrong types, enumerations
    (target("{capacity_per_replica: 10, max_replicas: many}"),
     "targets[0].policy.max_replicas: Input should be a valid integer, unable to parse string as an integer (got 'many')"),
    (target("{capacity_per_replica: 10, scale_up: {select: Maximum}}"),
     "targets[0].policy.scale_up.select: Input should be 'Max', 'Min' or 'Disabled' (got 'Maximum')"),
    (target(extra="mode: yolo"), "targets[0].mode: Input should be 'observe', 'dry-run', 'approve' or 'auto' (got 'yolo')"),
    # required fields
    ("targets:\n  - name: web\n    source: {type: csv, path: x.csv}\n", "targets[0].policy: required field is missing"),
    (target("{target_utilization: 0.5}"), "targets[0].policy: capacity_per_replica is required (or a vertical ladder)"),
    ("targets: []\n", "targets: Tuple should have at least 1 item"),
    # ladder rules
    (target("{ladder: [{name: a, capacity: 2}, {name: b, capacity: 1}]}"),
     "targets[0].policy: ladder capacities must increase strictly, got [2.0, 1.0]"),
    (target("{ladder: [{name: a, capacity: 1}], max_replicas: 3}"),
     "targets[0].policy: max_replicas (3) is beyond the ladder's last rung index (0)"),
    # unique names
    (target() + "  - name: web\n    source: {type: csv, path: y.csv}\n    policy: {capacity_per_replica: 1}\n",
     "target names must be unique; repeated: web"),
])
def test_a_bad_field_is_one_config_error_naming_the_path_and_value(tmp_path, text, expected):
    msg = error_of(tmp_path, text)
    assert expected in msg, msg


def test_max_below_min_reads_as_the_documented_sentence(tmp_path):
    msg = error_of(tmp_path, target("{capacity_per_replica: 10, min_replicas: 5, max_replicas: 3}"))
    assert "max_replicas (3) is less than min_replicas (5)" in msg


@pytest.mark.parametrize("text, expected", [
    # plugin sections are checked by the plugin's own model, at load time
    (target(extra="forecaster: {name: nope}"),
     "targets[0].forecaster.name: unknown forecaster 'nope'; known: "),
    (target(extra="forecaster: {name: seasonal_naive, params: {season: hourly}}"),
     "targets[0].forecaster.params.season: Input should be 'daily', 'weekly' or 'auto' (got 'hourly')"),
    (target(extra="forecaster: {name: lstm_global, params: {gate_anchors: [yesterday]}}"),
     "targets[0].forecaster.params.gate_anchors[0]: Input should be 'seasonal_naive' or 'seasonal_persistence' "
     "(got 'yesterday')"),
    (target(extra="actuator: {type: dry-run, initial_capacty: 3}"),
     "targets[0].actuator.initial_capacty: unknown field (check the spelling)"),
    (target(extra="actuator: {type: teleport}"), "targets[0].actuator.type: unknown actuator 'teleport'; known: "),
    ("targets:\n  - name: web\n    source: {type: csvv, path: x.csv}\n    policy: {capacity_per_replica: 1}\n",
     "targets[0].source.type: unknown metric source 'csvv'; known: csv, prometheus, replay"),
    ("targets:\n  - name: web\n    source: {type: csv}\n    policy: {capacity_per_replica: 1}\n",
     "targets[0].source.path: required field is missing"),
])
def test_plugin_sections_are_validated_by_the_plugin_at_load(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


@pytest.mark.parametrize("text, expected", [
    # a source or an actuator says what it is with type:, a policy or the executor with kind:
    ("targets:\n  - name: web\n    source: {kind: csv, path: x.csv}\n    policy: {capacity_per_replica: 1}\n",
     ["targets[0].source.type: required field is missing (this section says what it is with `type:`, not `kind:`)"]),
    (target("{type: plan, capacity_per_replica: 1}"),
     ["targets[0].policy.type: unknown field (this section says what it is with `kind:`, not `type:`)"]),
    (target(extra="actuator: {kind: dry-run}") + "executor: {type: dask}\n",
     ["executor.type: unknown field (this section says what it is with `kind:`, not `type:`)",
      "targets[0].actuator.type: required field is missing (this section says what it is with `type:`, not `kind:`)"]),
    # one line for the channel, not its missing type, its unknown kind and its empty list
    (target() + "notify:\n  channels: [{kind: webhook, url: 'http://127.0.0.1:1/x'}]\n",
     ["notify.channels[0].type: required field is missing (this section says what it is with `type:`, not `kind:`)"]),
    # a section named by neither keeps the spelling hint
    (target("{kind: plan, capacity_per_replica: 1, plan: {type: x}}"),
     ["targets[0].policy.plan.type: unknown field (check the spelling)"]),
])
def test_a_section_named_with_the_other_of_type_and_kind_says_which_word_it_takes(tmp_path, text, expected):
    msg = error_of(tmp_path, text).removeprefix("invalid configuration:")
    assert [ln.strip() for ln in msg.splitlines() if ln.strip()] == expected


def test_an_unknown_forecaster_lists_every_known_one(tmp_path):
    msg = error_of(tmp_path, target(extra="forecaster: {name: prohpet}"))
    for known in ("persistence", "seasonal_naive", "seasonal_persistence", "holt_winters", "prophet", "lstm"):
        assert known in msg


def test_every_problem_in_the_file_is_listed_in_the_one_error(tmp_path):
    text = target("{capacity_per_replica: 10, cooldwn: 1}", extra="actuator: {type: dry-run, bogus: 1}") + \
        "  - name: db\n    source: {type: csv, path: x.csv}\n    policy: {capacity_per_replica: 1, hold: soon}\n"
    msg = error_of(tmp_path, text)
    assert "targets[0].policy.cooldwn: unknown field" in msg
    assert "targets[1].policy.hold: not a duration: 'soon'" in msg


@pytest.mark.parametrize("text, line", [
    ("targets:\n  - name: web\n    source: {type: csv\n    policy: [\n", 4),
    ("targets:\n  - name: web\n\tsource: x\n", 3),
    ("state: a.db\ntargets: [\n", 3),
])
def test_malformed_yaml_names_the_file_and_line(tmp_path, text, line):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert f"{p}:{line}:" in str(info.value)
    assert "not valid YAML" in str(info.value)


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "42\n"])
def test_a_file_that_is_not_a_mapping_says_what_it_must_hold(tmp_path, text):
    assert "must hold a mapping with a 'targets' list" in error_of(tmp_path, text)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.yaml: No such file"):
        load_config(tmp_path / "nope.yaml")


def test_a_file_that_is_not_utf8_text_is_a_config_error(tmp_path):
    p = tmp_path / "binary.yaml"
    p.write_bytes(b"\xff\xfe\x00targets")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not UTF-8 text"):
        load_config(p)


ONE_TARGET = {"targets": [{"name": "web", "source": {"type": "csv", "path": "x.csv"},
                           "policy": {"capacity_per_replica": 10}}]}


@pytest.mark.parametrize("extra, expected", [
    ({1: 2}, r"Keys should be strings \(got 1\)"),
    ({"base_dir": "/elsewhere"}, "base_dir: unknown field"),
])
def test_odd_top_level_keys_are_a_config_error_not_a_type_error(extra, expected):
    assert parse_config(ONE_TARGET).target("web").policy.bounds == (1, 100)
    with pytest.raises(ConfigError, match=expected):
        parse_config({**ONE_TARGET, **extra})


def test_the_error_is_one_config_error_without_a_chained_traceback(tmp_path):
    p = write(tmp_path, target("{capacity_per_replica: 10, min_replicas: 5, max_replicas: 3}"))
    with pytest.raises(ConfigError) as info:
        load_config(p)
    # no pydantic ValidationError hanging off it for a traceback to print
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_the_cli_prints_one_error_and_no_traceback(tmp_path, capsys):
    p = write(tmp_path, target("{capacity_per_replica: 10, min_replicas: -1}"))
    assert cli_main(["validate", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("forescale: error: invalid configuration:")
    assert "targets[0].policy.min_replicas: Input should be greater than or equal to 0 (got -1)" in err
    assert "Traceback" not in err


# ------------------------------------------- values that validate but break the cycle
@pytest.mark.parametrize("text, expected", [
    # timedelta overflowed: an OverflowError traceback
    (target(extra="interval: 99999999999d"),
     "targets[0].interval: duration 99999999999d is longer than 366d, the longest allowed"),
    (target("{capacity_per_replica: 10, lead_time: 1000000000000000000000000000000000000000000s}"),
     "targets[0].policy.lead_time: duration 10000000000000000000...(44 characters) is longer than 366d"),
    (target(extra="forecaster: {history: 400d}"), "targets[0].forecaster.history: duration 400d is longer than 366d"),
    ("targets:\n  - name: web\n    source: {type: prometheus, url: 'http://p:9090', query: up, lookback: 9999d}\n"
     "    policy: {capacity_per_replica: 1}\n", "targets[0].source.lookback: duration 9999d is longer than 366d"),
    # validated, then overflowed SQLite's INTEGER on every cycle
    (target("{capacity_per_replica: 10, max_replicas: 100000000000000000000000}"),
     "targets[0].policy.max_replicas: Input should be less than or equal to 1000000"),
    (target("{capacity_per_replica: 10, scale_up: {policies: [{type: Pods, value: 10000000000}]}}"),
     "targets[0].policy.scale_up.policies[0].value: Input should be less than or equal to 1000000"),
    # validated, then sized every cycle to the minimum
    (target("{capacity_per_replica: .inf}"), "targets[0].policy.capacity_per_replica: Input should be a finite number"),
    (target("{capacity_per_replica: .nan}"), "targets[0].policy.capacity_per_replica: Input should be a finite number"),
    (target("{capacity_per_replica: 10, margin: {fraction: .inf}}"),
     "targets[0].policy.margin.fraction: Input should be a finite number"),
    (target("{ladder: [{name: a, capacity: .inf}]}"),
     "targets[0].policy.ladder[0].capacity: Input should be a finite number"),
])
def test_a_value_the_cycle_cannot_run_with_is_rejected_at_load_naming_the_field(tmp_path, text, expected):
    msg = error_of(tmp_path, text)
    assert expected in msg, msg


def test_a_forecaster_that_cannot_reach_the_policys_horizon_is_rejected_at_load(tmp_path):
    # the per-series lstm forecasts its horizon and no further: with the
    # planner's 2 h every cycle's forecast would fail and the policy fall back
    msg = error_of(tmp_path, target("{kind: plan, capacity_per_replica: 10}", "forecaster: {name: lstm}"))
    assert ("targets[0]: forecaster.params.horizon: lstm forecasts 12 steps (1h) ahead, but the policy reads 24 "
            "(2h, plan.horizon and the lead window); set horizon: 24 or more") in msg, msg
    msg = error_of(tmp_path, target("{capacity_per_replica: 10, lead_time: 50m, hold: 15m}",
                                    "forecaster: {name: lstm}"))
    assert "lstm forecasts 12 steps (1h) ahead, but the policy reads 13 (65m, its lead window)" in msg, msg
    ok = load_config(write(tmp_path, target("{kind: plan, capacity_per_replica: 10}",
                                            "forecaster: {name: lstm, params: {horizon: 24}}")))
    assert ok.targets[0].forecaster.params.horizon == 24
    # a reactive policy never builds the forecaster: nothing to reach
    load_config(write(tmp_path, target("{kind: reactive, capacity_per_replica: 10}", "forecaster: {name: lstm}")))


def test_the_largest_allowed_values_load(tmp_path):
    cfg = load_config(write(tmp_path, target("{capacity_per_replica: 1e12, max_replicas: 1000000}",
                                            "interval: 366d\nforecaster: {history: 366d}")))
    assert cfg.targets[0].policy.bounds == (1, 1_000_000)
    assert cfg.targets[0].interval == timedelta(days=366)


@pytest.mark.parametrize("policy, extra", [
    ("{capacity_per_replica: 10}", "interval: 99999999999d"),
    ("{capacity_per_replica: 10, max_replicas: 100000000000000000000000}", ""),
    ("{capacity_per_replica: .inf}", ""),
])
def test_validate_says_it_in_one_line_without_a_traceback(tmp_path, capsys, policy, extra):
    p = write(tmp_path, target(policy, extra))
    assert cli_main(["validate", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("forescale: error: invalid configuration: targets[0]."), err
    assert "Traceback" not in err


# ------------------------------------------------------------ secrets never echoed
SECRET_NUMBER = "98765432101234"


def _prom_target(fields: str) -> str:
    return ("targets:\n  - name: web\n"
            f"    source: {{type: prometheus, url: 'http://p:9090', query: up, {fields}}}\n"
            "    policy: {capacity_per_replica: 1}\n")


@pytest.mark.parametrize("fields, path", [
    # YAML reads it as a number: "Input should be a valid string (got 98765432101234)"
    (f"bearer_token: {SECRET_NUMBER}", "targets[0].source.bearer_token"),
    (f"basic_auth: {{username: u, password: {SECRET_NUMBER}}}", "targets[0].source.basic_auth.password"),
    (f"headers: {{X-Api-Key: {SECRET_NUMBER}}}", "targets[0].source.headers.X-Api-Key"),
    # a valid secret beside an invalid field of the same section
    (f"bearer_token: '{SECRET_NUMBER}', retry_attempts: 0", "targets[0].source.retry_attempts"),
])
def test_validate_names_the_field_of_a_bad_secret_but_never_its_value(tmp_path, capsys, fields, path):
    p = write(tmp_path, _prom_target(fields))
    assert cli_main(["validate", "--config", str(p)]) == 2
    out = capsys.readouterr()
    assert path in out.err, out.err
    assert SECRET_NUMBER not in out.err + out.out


def test_a_plugin_field_typed_secret_is_never_echoed_whatever_its_name():
    from pydantic import BaseModel, SecretStr, ValidationError

    from engine.config import format_validation_error

    class Config(BaseModel):
        dsn: SecretStr
        count: int = 1

    with pytest.raises(ValidationError) as info:
        Config(dsn=12345678, count="many")
    lines = format_validation_error(info.value, "targets[0].source", Config)
    assert lines == ["targets[0].source.dsn: Input should be a valid string",
                     "targets[0].source.count: Input should be a valid integer, unable to parse string as an "
                     "integer (got 'many')"]


def test_a_field_a_plugin_does_not_declare_is_not_echoed(tmp_path):
    # a source section that is not a mapping at all: whatever it holds stays hidden
    msg = error_of(tmp_path, f"targets:\n  - name: web\n    source: 'Bearer {SECRET_NUMBER}'\n"
                             "    policy: {capacity_per_replica: 1}\n")
    assert "targets[0].source" in msg and SECRET_NUMBER not in msg


def test_the_daemons_rejected_reload_log_names_the_field_but_not_the_secret(tmp_path, caplog):
    import logging

    from engine.core.clock import ManualClock
    from engine.daemon import Daemon
    from tests.support.live import Platform, target_dict, write_config, write_trace

    trace = write_trace(tmp_path / "t.csv", [10.0] * 30)
    path = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe")])
    d = Daemon(path, clock=ManualClock(datetime(2024, 3, 1, 2, tzinfo=timezone.utc)),
               build_actuator=lambda t, c=None: Platform(capacity=2))
    try:
        bad = target_dict("web", trace, mode="observe")
        bad["source"] = {"type": "prometheus", "url": "http://p:9090", "query": "up",
                         "bearer_token": int(SECRET_NUMBER)}
        write_config(path, [bad])
        with caplog.at_level(logging.ERROR, logger="forescale"):
            assert d.reload() is False
    finally:
        d.shutdown(1)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "config reload rejected" in logged and "targets[0].source.bearer_token" in logged, logged
    assert SECRET_NUMBER not in logged


# ------------------------------------------------------------ typed plugin configs
def test_the_config_holds_the_plugins_typed_configs_without_writing_into_frozen_objects(tmp_path):
    import engine.config

    cfg = load_config(write(tmp_path, VALID))
    web, vps = cfg.targets
    # the fields themselves are the plugins' own validated models
    assert isinstance(web.source, CsvConfig) and web.source is web.source_config
    assert isinstance(vps.source, ReplayConfig) and web.source.type == "csv"
    assert isinstance(web.actuator, DryRunConfig) and web.actuator is web.actuator_config
    assert isinstance(vps.actuator, DryRunConfig)  # the default section, validated too
    # the forecaster's params are its Params, validated once
    from forecasters import registry

    assert isinstance(web.forecaster.params, registry.get("seasonal_naive").Params)
    assert web.forecaster.params.season == "weekly"
    assert "__setattr__" not in Path(engine.config.__file__).read_text()


def test_the_forecaster_receives_the_validated_params_object(tmp_path):
    from engine.cycle import TargetRunner

    cfg = load_config(write(tmp_path, VALID))
    runner = TargetRunner(cfg.targets[0])
    assert runner.forecaster.params is cfg.targets[0].forecaster.params


def test_a_planner_on_a_ladder_prices_the_downtime_its_actuator_states():
    """``plan.resize_downtime`` unset: the planner prices what the target's
    resizing actuator states (aws-ec2 ``downtime_estimate``, alibaba-ecs the
    longer of its stop/start and reboot), so a user states the downtime once;
    set: the policy's own; a platform that adds capacity beside states none."""
    from engine.core.types import ScalingState
    from policies.planner import plan as make_plan
    import numpy as np
    from engine.core.types import Forecast, Observation

    ladder = [{"name": "small", "capacity": 20, "price": 0.1}, {"name": "medium", "capacity": 40, "price": 0.2}]

    def target(actuator, plan=None):
        doc = {"targets": [{"name": "vps", "source": {"type": "csv", "path": "x.csv"}, "actuator": actuator,
                            "policy": {"kind": "plan", "ladder": ladder, "lead_time": "30m",
                                       **({"plan": plan} if plan else {})}}]}
        return parse_config(doc).targets[0]

    ec2 = {"type": "aws-ec2", "instance_id": "i-0123456789abcdef0", "region": "us-east-1"}
    assert target(ec2).policy.plan.resize_downtime == timedelta(minutes=5)
    assert target({**ec2, "downtime_estimate": "3m"}).policy.plan.resize_downtime == timedelta(minutes=3)
    assert target(ec2, {"resize_downtime": "1m"}).policy.plan.resize_downtime == timedelta(minutes=1)
    ecs = {"type": "alibaba-ecs", "instance_id": "i-bp1", "region_id": "cn-hangzhou"}
    assert target(ecs).policy.plan.resize_downtime == timedelta(minutes=2)
    assert target({"type": "dry-run"}).policy.plan.resize_downtime is None

    # the user-visible effect: a resize now costs its downtime's unserved demand
    # (no fixed price on a ladder by default), so the schedule says so
    now = datetime(2024, 3, 1, 10, 0, tzinfo=timezone.utc)
    ts = int(now.timestamp()) + 300 * np.arange(1, 25)
    fc = Forecast(now, ts, np.full(24, 30.0), {q: np.full(24, 30.0 + 3 * i) for i, q in
                                               enumerate((0.5, 0.8, 0.9, 0.95, 0.99))}, "t")
    st = ScalingState(current=0, observation=Observation(15.0, now))
    pol = target(ec2).policy
    assert pol.plan.fixed_change_cost(vertical=True) == 0.0
    with_downtime = make_plan(fc, st, pol, now, pol.lead_time)
    without = make_plan(fc, st, target({"type": "dry-run"}).policy, now, pol.lead_time)
    assert with_downtime.schedule.changes == without.schedule.changes == 1
    assert without.schedule.change_cost == 0.0
    # 30 units unserved for 5 minutes at the SLO's penalty
    assert with_downtime.schedule.change_cost == pytest.approx(30 * 5 / 60 * with_downtime.schedule.penalty, rel=0.05)


def test_a_target_built_in_code_resolves_its_sections_the_same_way():
    from engine.config import PluginSection, TargetConfig
    from policies.config import PolicyConfig

    t = TargetConfig(name="web", source=PluginSection(type="csv", path="-"),
                     policy=PolicyConfig(capacity_per_replica=1))
    assert isinstance(t.source, CsvConfig) and isinstance(t.actuator, DryRunConfig)
    again = TargetConfig(name="web", source=t.source, policy=t.policy)  # a typed config passes through
    assert again.source is t.source and again == t
    with pytest.raises(Exception, match="unknown metric source 'nope'"):
        TargetConfig(name="web", source={"type": "nope"}, policy=t.policy)


def test_init_from_is_resolved_against_the_config_files_folder(tmp_path):
    pytest.importorskip("torch", reason="the LSTM needs torch (pip install 'forescale[lstm]')")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "g.pt").write_bytes(b"")
    cfg = load_config(write(tmp_path, target(extra="forecaster: {name: lstm, init_from: models/g.pt}")))
    assert cfg.targets[0].forecaster.init_from == tmp_path / "models" / "g.pt"


# ------------------------------------------------------------------ state and ha
def test_state_is_a_file_next_to_the_config_or_a_postgresql_url(tmp_path):
    cfg = parse_config(ONE_TARGET, base_dir=tmp_path)
    assert cfg.state_url is None and cfg.state_path == tmp_path / "forescale.db"
    url = "postgresql://fs:s3cret-pw-123@db.internal:5433/forescale"
    cfg = parse_config({**ONE_TARGET, "state": url, "ha": {"shards": 8, "lease": "20s"}}, base_dir=tmp_path)
    assert cfg.state_url == url and cfg.state_shown == "postgresql://fs@db.internal:5433/forescale"
    assert (cfg.ha.shards, cfg.ha.lease, cfg.ha.renew_every) == (8, timedelta(seconds=20), timedelta(seconds=20) / 3)
    with pytest.raises(ConfigError, match="state is a PostgreSQL database, not a file"):
        cfg.state_path  # noqa: B018
    # a unix socket's directory as libpq takes it, in the query
    cfg = parse_config({**ONE_TARGET, "state": "postgresql:///forescale?host=/run/postgresql"})
    assert cfg.state_shown == "postgresql:///forescale"


@pytest.mark.parametrize("extra, expected", [
    ({"state": "postgresql://fs:s3cret-pw-123@db.internal:notaport/x"}, "state: .*not a valid PostgreSQL URL"),
    ({"state": "postgresql://fs:s3cret-pw-123@db.internal:5432/"}, "state: .*needs a host and a database name"),
    # libpq ends the user info at the first '@': 'pw-123@db.internal' was
    # taken for the host, shown in its errors and asked of the DNS
    ({"state": "postgresql://fs:s3cret@pw-123@db.internal:5432/x"}, "state: .*more than one '@'.*%40"),
    ({"ha": {"lease": "1s"}}, r"ha: .*lease: 0:00:01 is too short"),
    ({"ha": {"lease": "30s", "renew": "11s"}}, r"ha: .*renew: 0:00:11 must be positive and at most a third of the lease"),
    ({"ha": {"shards": 0}}, r"ha\.shards"),
    ({"state_password_env": "not a name"}, "state_password_env"),
])
def test_a_bad_state_or_ha_setting_names_the_field_and_never_the_password(extra, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        parse_config({**ONE_TARGET, **extra})
    assert "s3cret-pw-123" not in str(info.value)


def test_forecaster_params_take_the_configs_durations_and_survive_a_json_round_trip():
    """``12h`` means the same in a forecaster's params as anywhere else in the
    file (pydantic's own timedelta took ``1d`` but not ``12h``), a bad one is
    one line naming the field, and what a fit task carries (the params as
    JSON: ISO 8601) validates again to the same values."""
    from engine.config import parse_config
    from engine.fits import fit_params
    from forecasters import registry

    def target(forecaster: dict):
        return parse_config({"targets": [{"name": "web", "source": {"type": "csv", "path": "x.csv"},
                                          "policy": {"capacity_per_replica": 1},
                                          "forecaster": forecaster}]}).target("web")

    hw = target({"name": "holt_winters", "params": {"fit_window": "60h", "residual_window": "12h"}})
    assert (hw.forecaster.params.fit_window, hw.forecaster.params.residual_window) == (timedelta(hours=60),
                                                                                      timedelta(hours=12))
    carried = fit_params(hw)
    assert carried == {"fit_window": "P2DT12H", "residual_window": "PT12H"}
    again = registry.get("holt_winters").Params.model_validate(carried)
    assert again == hw.forecaster.params
    auto = target({"name": "auto", "params": {"reselect_every": "6h"}})
    assert auto.forecaster_params.reselect_every == timedelta(hours=6)
    with pytest.raises(ConfigError) as err:
        target({"name": "seasonal_persistence", "params": {"residual_window": "12 hours"}})
    assert "targets[0].forecaster.params.residual_window: not a duration: '12 hours'" in str(err.value)


def test_a_planner_that_states_no_forecaster_model_gets_the_planners_default():
    """``kind: plan`` without ``forecaster.name`` and ``forecaster.params``
    forecasts with :data:`engine.config.PLAN_FORECASTER` (the section's other
    fields stay); a stated name or params, or another policy, keep
    ``seasonal_persistence``."""
    def target(policy: dict, **fc) -> object:
        raw = {"name": "w", "source": {"type": "csv", "path": "x"}, "policy": {"capacity_per_replica": 1, **policy}}
        if fc:
            raw["forecaster"] = fc
        return parse_config({"targets": [raw]}).targets[0].forecaster

    plan = {"kind": "plan"}
    f = target(plan, history="7d", quantiles=[0.5, 0.9, 0.99])
    assert f.name == "blend" and f.history == timedelta(days=7) and f.quantiles == (0.5, 0.9, 0.99)
    assert [m.name for m in f.params.members] == ["seasonal_persistence", "holt_winters"]
    assert f.params.weights == {timedelta(0): 0.5}
    assert target(plan).name == "blend"
    assert target(plan, name="holt_winters").name == "holt_winters"
    assert target(plan, params={"season": "weekly"}).name == "seasonal_persistence"
    assert target({}).name == "seasonal_persistence"
    assert target({"kind": "reactive"}).name == "seasonal_persistence"


def test_without_holt_winters_installed_the_planners_default_is_one_line_saying_what_to_install(monkeypatch):
    """The planner's default blend needs statsmodels (the holt-winters
    extra); without it the file is refused at load with what to install or
    state, not run into a reactive fallback every cycle."""
    import importlib.util

    import forecasters

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "statsmodels" else real(name, *a))
    monkeypatch.delitem(forecasters.registry._loaded, "holt_winters", raising=False)
    raw = {"name": "w", "source": {"type": "csv", "path": "x"}, "policy": {"kind": "plan", "capacity_per_replica": 1}}
    with pytest.raises(ConfigError) as exc:
        parse_config({"targets": [raw]})
    msg = str(exc.value)
    assert msg.count("\n") <= 1 and "targets[0]" in msg
    assert "statsmodels" in msg and "forescale[holt-winters]" in msg and "name: seasonal_persistence" in msg
    # stating the forecaster is the way out
    cfg = parse_config({"targets": [{**raw, "forecaster": {"name": "seasonal_persistence"}}]})
    assert cfg.targets[0].forecaster.name == "seasonal_persistence"
