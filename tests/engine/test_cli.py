"""The command line as a user meets it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, TRACES



def forescale(*args: str, cwd: Path | None = None, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, env=env)


def test_demo_runs_the_full_loop_on_the_bundled_trace(tmp_path):
    out = tmp_path / "demo"
    r = forescale("demo", "--out", str(out), "--days", "0.5")
    assert r.returncode == 0, r.stderr
    assert "live replay:" in r.stdout and "predictive" in r.stdout
    assert (out / "backtest.png").stat().st_size > 10_000
    doc = json.loads((out / "backtest.json").read_text())
    assert set(doc["policies"]) == {"oracle", "reactive", "predictive"}
    # the decision log holds the replayed decisions with their steps
    d = forescale("decisions", "--config", str(out / "demo.yaml"), "--json", "--limit", "500")
    assert d.returncode == 0, d.stderr
    recs = json.loads(d.stdout)
    assert len(recs) >= 140  # half a day of 5-minute cycles
    assert all(rec["steps"] and rec["steps"][-1]["name"] == "bounds" for rec in recs)


def test_backtest_writes_json_and_plot(tmp_path):
    trace = TRACES / "nab" / "ec2_cpu_utilization_53ea38.csv"
    js, png = tmp_path / "m.json", tmp_path / "p.png"
    r = forescale("backtest", str(trace), "--forecaster", "seasonal_naive", "--json-out", str(js), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    doc = json.loads(js.read_text())
    assert doc["forecaster"] == "seasonal_naive"
    for name in ("oracle", "reactive", "predictive"):
        assert {"violation_fraction", "unserved_fraction", "cost_vs_oracle", "actions"} <= set(doc["policies"][name])
    assert png.stat().st_size > 10_000


def _one_clean_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_wrong_field_name_is_one_clear_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets:\n  - name: web\n    source: {type: csv, path: x.csv}\n"
                   "    policy: {capacity_per_replica: 10, max_replica: 5}\n")
    line = _one_clean_line(forescale("validate", "--config", str(cfg)))
    assert "targets[0].policy.max_replica" in line and "unknown field" in line


def test_negative_bound_is_one_clear_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets:\n  - name: web\n    source: {type: csv, path: x.csv}\n"
                   "    policy: {capacity_per_replica: 10, min_replicas: -2}\n")
    line = _one_clean_line(forescale("validate", "--config", str(cfg)))
    assert "targets[0].policy.min_replicas" in line and "-2" in line


def test_max_below_min_names_both_values(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets:\n  - name: web\n    source: {type: csv, path: x.csv}\n"
                   "    policy: {capacity_per_replica: 10, min_replicas: 5, max_replicas: 3}\n")
    line = _one_clean_line(forescale("validate", "--config", str(cfg)))
    assert "targets[0].policy" in line and "max_replicas (3) is less than min_replicas (5)" in line


def test_a_simulated_start_past_the_ladders_top_rung_is_one_clear_line(tmp_path):
    """On a ladder capacity is a rung index: a dry-run ``initial_capacity``
    of 7 on three rungs used to validate and then print "7 -> 2"."""
    cfg = tmp_path / "c.yaml"
    ladder = "[{name: a, capacity: 1}, {name: b, capacity: 2}, {name: c, capacity: 4}]"
    cfg.write_text("targets:\n  - name: vps\n    source: {type: csv, path: x.csv}\n"
                   f"    policy: {{ladder: {ladder}}}\n    actuator: {{type: dry-run, initial_capacity: 7}}\n")
    line = _one_clean_line(forescale("validate", "--config", str(cfg)))
    assert "targets[0]" in line and "actuator.initial_capacity: 7" in line and "0-2" in line
    cfg.write_text(cfg.read_text().replace("initial_capacity: 7", "initial_capacity: 2"))
    assert forescale("validate", "--config", str(cfg)).returncode == 0


def test_a_key_given_twice_is_one_line_naming_both_lines(tmp_path):
    """YAML keeps the last silently: interval 5m then 1m validated and ran
    every minute."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets:\n  - name: web\n    interval: 5m\n    source: {type: csv, path: x.csv}\n"
                   "    interval: 1m\n    policy: {capacity_per_replica: 10}\n")
    line = _one_clean_line(forescale("validate", "--config", str(cfg)))
    assert f"{cfg}:5:5: not valid YAML: key 'interval' given twice (first on line 3)" in line


def test_malformed_csv_names_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2024-01-01T00:00:00Z,1.0\n2024-01-01T00:05:00Z,abc\n")
    line = _one_clean_line(forescale("backtest", str(bad)))
    assert f"{bad}:3" in line and "'abc'" in line


def test_missing_file_is_one_clear_line(tmp_path):
    line = _one_clean_line(forescale("backtest", str(tmp_path / "nope.csv")))
    assert "nope.csv" in line


def test_once_runs_a_cycle_and_logs_it(tmp_path):
    import time

    trace = tmp_path / "t.csv"
    end = int(time.time()) // 300 * 300  # a trace that ends now, as a live source would
    rows = "".join(f"{end - 300 * (399 - i)},{10 + (i % 12)}\n" for i in range(400))
    trace.write_text("timestamp,value\n" + rows)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state: {tmp_path / 's.db'}\n"
                   "targets:\n  - name: web\n    mode: dry-run\n"
                   f"    source: {{type: csv, path: {trace}}}\n"
                   "    policy: {capacity_per_replica: 2}\n    actuator: {type: dry-run, initial_capacity: 1}\n")
    r = forescale("once", "--config", str(cfg), "-v")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "web" in r.stdout and "bounds" in r.stdout
    # what the actuator would do, as operations.md says dry-run logs it
    assert "\n  would: dry-run: would set web capacity 1 -> " in r.stdout
    d = forescale("decisions", "--config", str(cfg), "--json")
    recs = json.loads(d.stdout)
    assert len(recs) == 1 and recs[0]["mode"] == "dry-run"


def test_once_uses_a_sample_written_seconds_after_a_boundary(tmp_path):
    # a cron-fed CSV: the newest sample is a few seconds old and off the
    # 5-minute grid; it used to be binned into the next (future) interval and
    # the forecaster refused the history as look-ahead (NoForecast)
    import time

    newest = int(time.time()) - 3
    if newest % 300 == 0 or newest % 300 >= 297:  # keep it strictly inside an interval
        newest -= 5
    rows = "".join(f"{newest - 300 * (399 - i)},{10 + (i % 12)}\n" for i in range(400))
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,value\n" + rows)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state: {tmp_path / 's.db'}\n"
                   "targets:\n  - name: web\n    mode: dry-run\n"
                   f"    source: {{type: csv, path: {trace}}}\n"
                   "    forecaster: {name: persistence, history: 1d}\n"
                   "    policy: {capacity_per_replica: 2}\n")
    r = forescale("once", "--config", str(cfg), "-v")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "look-ahead" not in r.stdout and "NoForecast" not in r.stdout, r.stdout
    recs = json.loads(forescale("decisions", "--config", str(cfg), "--json").stdout)
    assert len(recs) == 1 and recs[0]["fallback"] is False, recs


# ------------------------------------------------------------ CLI consistency
def _replayed_state(tmp_path: Path, cycles: int) -> Path:
    """A config whose state file holds ``cycles`` logged decisions."""
    from datetime import timedelta

    from engine.core.clock import ManualClock
    from engine.store import Store
    from tests.support.live import T0, Platform, build_live, target_dict, write_config, write_trace

    trace = write_trace(tmp_path / "t.csv", [10.0 + (i % 24) for i in range(cycles + 30)])
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="dry-run")])
    clock = ManualClock(T0 + timedelta(hours=2))
    with Store(tmp_path / "state.db") as store:
        live = build_live(cfg, store, Platform(3))
        for _ in range(cycles):
            live.run(clock.now())
            clock.advance(timedelta(minutes=5))
    return cfg


def test_a_pipe_closed_early_ends_quietly_without_a_traceback(tmp_path):
    cfg = _replayed_state(tmp_path, 300)  # ~1 MB of JSON: far more than a pipe holds
    cli = subprocess.Popen([sys.executable, "-m", "engine.cli", "decisions", "--config", str(cfg), "--json",
                            "--limit", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    head = subprocess.Popen(["head", "-1"], stdin=cli.stdout, stdout=subprocess.PIPE)
    cli.stdout.close()  # head alone reads it now
    first, _ = head.communicate(timeout=120)
    err = cli.stderr.read().decode()
    cli.wait(timeout=60)
    assert first.decode().strip() == "["
    assert err == "", err  # no BrokenPipeError traceback, no "Exception ignored" at exit
    assert cli.returncode == 141


def test_once_json_prints_the_cycle_report_to_stdout(tmp_path):
    import time

    end = int(time.time()) // 300 * 300
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,value\n" + "".join(f"{end - 300 * (99 - i)},{10 + i % 5}\n" for i in range(100)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state: {tmp_path / 's.db'}\ntargets:\n  - name: web\n    mode: dry-run\n"
                   f"    source: {{type: csv, path: {trace}}}\n"
                   "    forecaster: {name: persistence, history: 1d}\n    policy: {capacity_per_replica: 2}\n")
    r = forescale("once", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [d["target"] for d in doc] == ["web"] and doc[0]["status"] == "dry-run"
    assert doc[0]["decision"]["steps"][-1]["name"] == "bounds"
    assert doc[0]["would"]["summary"].startswith("dry-run: would set web capacity")
    # a cycle that fails is still reported, and is a runtime failure (1)
    trace.unlink()
    time.sleep(1.1)  # decision ids are per second: the next cycle must come a second later
    r = forescale("once", "--config", str(cfg), "--json")
    assert r.returncode == 1, r.stderr
    assert "t.csv" in json.loads(r.stdout)[0]["fetch_error"]


def test_validate_json_reports_the_targets_or_the_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets:\n  - name: web\n    source: {type: csv, path: x.csv}\n"
                   "    policy: {capacity_per_replica: 10, max_replicas: 7}\n")
    r = forescale("validate", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["valid"] is True and doc["targets"][0]["name"] == "web" and doc["targets"][0]["capacity"] == [1, 7]
    cfg.write_text("targets:\n  - name: web\n    source: {type: csv, path: x.csv}\n    policy: {max_replica: 5}\n")
    r = forescale("validate", "--config", str(cfg), "--json")
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["valid"] is False and "targets[0].policy.max_replica" in doc["error"]
    assert len(r.stderr.strip().splitlines()) == 1


def test_validate_warns_of_each_variable_the_file_names_that_is_not_set(tmp_path):
    """`run` and `console` refuse to start without the variables the file
    names (a webhook URL, a console secret, a user's token): `validate`
    says so, naming the field and the variable, never a value; the audit
    key is optional (unset: a plain SHA-256 chain) and is not warned of."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets:\n  - name: web\n    source: {type: csv, path: x.csv}\n"
                   "    policy: {capacity_per_replica: 10}\n"
                   "notify:\n  channels:\n    - {type: webhook, name: hook, url_env: FS_TEST_HOOK_URL}\n"
                   "console:\n  secret_env: FS_TEST_CONSOLE_SECRET\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FS_TEST_") and k != "FORESCALE_AUDIT_KEY"}
    r = forescale("validate", "--config", str(cfg), env=env)
    assert r.returncode == 0, r.stderr
    assert ("warning: notify.channels[0].url_env: environment variable FS_TEST_HOOK_URL is not set here"
            in r.stdout)
    assert "warning: console.secret_env: environment variable FS_TEST_CONSOLE_SECRET is not set here" in r.stdout
    assert "FORESCALE_AUDIT_KEY" not in r.stdout and "valid (1 target(s))" in r.stdout
    r = forescale("validate", "--config", str(cfg), "--json", env={**env, "FS_TEST_HOOK_URL": "https://h.example/x"})
    doc = json.loads(r.stdout)
    assert doc["valid"] is True and doc["unset_env"] == [
        {"field": "console.secret_env", "variable": "FS_TEST_CONSOLE_SECRET"}]
    assert "h.example" not in r.stdout


def _commands():
    from engine.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    return parser, sub.choices


def test_every_option_of_every_command_has_help():
    import argparse

    parser, commands = _commands()
    missing = []
    for name, sp in [("forescale", parser), *commands.items()]:
        for action in sp._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_every_reporting_command_takes_json():
    _, commands = _commands()
    reporting = {"once", "validate", "decisions", "plans", "approve", "reject", "apply", "accuracy",
                 "train-global"}
    for name in reporting:
        flags = {s for a in commands[name]._actions for s in a.option_strings}
        assert "--json" in flags, name
        json_action = next(a for a in commands[name]._actions if "--json" in a.option_strings)
        assert json_action.nargs == 0, f"{name}: --json takes no file (a file path is its own option)"


def test_log_level_has_choices_and_a_wrong_one_is_a_usage_error():
    r = forescale("run", "--config", "x.yaml", "--log-level", "LOUD")
    assert r.returncode == 2 and "invalid choice: 'LOUD'" in r.stderr
    _, commands = _commands()
    level = next(a for a in commands["run"]._actions if "--log-level" in a.option_strings)
    assert set(level.choices) == {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def test_exit_codes_are_documented_and_distinct(tmp_path):
    import engine.cli

    doc = " ".join(engine.cli.__doc__.split())
    assert "- 0: done" in doc and "- 1: a runtime failure" in doc and "- 2: a usage or configuration error" in doc
    for text in (forescale("--help").stdout, forescale("once", "--help").stdout):
        flat = " ".join(text.split())
        assert "exit status: 0 done; 1 a runtime failure" in flat and "2 a usage or configuration error" in flat
    # usage: argparse's own, and a config error
    assert forescale("once").returncode == 2
    assert forescale("validate", "--config", str(tmp_path / "nope.yaml")).returncode == 2
    # a refused plan is the caller's to fix (2); a failed cycle is a runtime failure (1)
    cfg = _replayed_state(tmp_path, 1)
    r = forescale("approve", "no-such-plan", "--config", str(cfg))
    assert r.returncode == 2 and r.stderr.startswith("forescale: error:") and "Traceback" not in r.stderr
    (tmp_path / "t.csv").unlink()
    r = forescale("once", "--config", str(cfg))
    assert r.returncode == 1 and "fetch error" in r.stdout, r.stdout + r.stderr


def test_once_with_the_planner_prints_the_schedule_and_decisions_shows_it(tmp_path):
    import math
    import time

    import yaml

    assert forescale("validate", "--config", "examples/planner.yaml").returncode == 0
    trace = tmp_path / "t.csv"
    end = int(time.time()) // 300 * 300
    # two days of a daily cycle between 2 and 10 cores, ending now
    rows = "".join(f"{end - 300 * (575 - i)},{6 + 4 * math.sin(i / 288 * 6.283):.3f}\n"
                   for i in range(576))
    trace.write_text("timestamp,value\n" + rows)
    doc = yaml.safe_load((ROOT / "examples" / "planner.yaml").read_text())
    doc["state"] = str(tmp_path / "s.db")
    doc["targets"][0]["source"]["path"] = str(trace)
    doc["targets"][0]["mode"] = "dry-run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    r = forescale("once", "--config", str(cfg), "-v")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "schedule (UTC): " in r.stdout and "(fixed)" in r.stdout and "ordered " in r.stdout
    assert "plan cost " in r.stdout and "lead time 30 m" in r.stdout
    assert any(code in r.stdout for code in ("PlannedHold", "PlannedScaleUp", "PlannedScaleDown"))
    d = forescale("decisions", "--config", str(cfg))
    assert d.returncode == 0 and "schedule (UTC): " in d.stdout
    rec = json.loads(forescale("decisions", "--config", str(cfg), "--json").stdout)[0]
    assert rec["schedule"]["steps"] and rec["schedule"]["reason"]
    # the example names no forecaster model: the planner's default planned it, both members fitted
    assert rec["model"] == "blend"
    assert "seasonal_persistence:" in rec["model_version"]
    assert "holt_winters:" in rec["model_version"] and "unfitted" not in rec["model_version"]


def test_a_decision_on_an_event_day_is_raised_and_says_why(tmp_path):
    import time
    from datetime import datetime, timedelta, timezone

    trace = tmp_path / "t.csv"
    end = int(time.time()) // 300 * 300
    trace.write_text("timestamp,value\n" + "".join(f"{end - 300 * (399 - i)},{10 + (i % 12)}\n" for i in range(400)))
    today = datetime.now(timezone.utc).date()
    tomorrow = today + timedelta(days=1)
    cfg = tmp_path / "c.yaml"
    target = ("  - name: {name}\n    mode: dry-run\n"
              f"    source: {{{{type: csv, path: {trace}}}}}\n"
              "    policy:\n      capacity_per_replica: 2\n{calendar}")
    cal = ("      calendar:\n        events:\n"
           f"          - {{name: launch, start: '{today}', end: '{tomorrow}', min_capacity: 40}}\n"
           f"          - {{name: sale, start: '{today}', end: '{tomorrow}', uplift: 2}}\n")
    cfg.write_text(f"state: {tmp_path / 's.db'}\ntargets:\n" + target.format(name="plain", calendar="")
                   + target.format(name="event", calendar=cal))
    r = forescale("once", "--config", str(cfg), "-v")
    assert r.returncode == 0, r.stderr + r.stdout
    recs = {d["target"]: d for d in json.loads(forescale("decisions", "--config", str(cfg), "--json").stdout)}
    plain, event = recs["plain"], recs["event"]
    assert plain["desired"] < 40 and not any(s["name"] == "event" for s in plain["steps"])
    assert event["desired"] == 40
    why = {s["reason"]: s["message"] for s in event["steps"] if s["name"] == "event"}
    assert "'sale'" in why["EventUplift"] and "x2" in why["EventUplift"]
    assert "'launch'" in why["EventMinCapacity"] and "needs at least 40" in why["EventMinCapacity"]
    assert "EventMinCapacity" in r.stdout  # once -v shows the step


def test_a_target_nobody_has_heard_of_is_an_error_not_an_empty_listing(tmp_path):
    """``--target`` with a typo said "no decisions logged yet" (and "no
    plans waiting", an empty accuracy table) and exited 0; now it names the
    targets the config and the state know. A known target with nothing to
    list still lists nothing."""
    from engine.store import Store

    cfg = tmp_path / "c.yaml"
    cfg.write_text("state: s.db\ntargets:\n  - name: web\n    source: {type: csv, path: x.csv}\n"
                   "    policy: {capacity_per_replica: 10}\n")
    Store(tmp_path / "s.db").close()
    for cmd in ("decisions", "plans", "accuracy"):
        line = _one_clean_line(forescale(cmd, "--config", str(cfg), "--target", "wbe"))
        assert "no target named 'wbe'" in line and "known: web" in line
        line = _one_clean_line(forescale(cmd, "--state", str(tmp_path / "s.db"), "--target", "wbe"))
        assert "no target named 'wbe'" in line and "known: none" in line
        ok = forescale(cmd, "--config", str(cfg), "--target", "web")
        assert ok.returncode == 0, ok.stderr


def test_an_output_that_cannot_be_written_is_one_line_before_any_work(tmp_path):
    """``train-global --out`` in a missing directory trained for minutes,
    then lost the model in a traceback; ``backtest --json-out`` / ``--plot``
    and ``demo --out`` raised too, a plot in an unknown format after the
    table was printed."""
    from engine.store import Store

    trace = TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv"
    missing = tmp_path / "no" / "such"
    cases = [
        (("backtest", str(trace), "--json-out", str(missing / "r.json")), "--json-out", "no directory"),
        (("backtest", str(trace), "--plot", str(tmp_path / "r.txt")), "--plot", "not an image format"),
        (("backtest", str(trace), "--plot", str(tmp_path)), "--plot", "is a directory"),
        (("demo", "--out", "/proc/forescale-demo"), "--out /proc/forescale-demo", "cannot make the directory"),
    ]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("state: s.db\ntargets:\n  - name: web\n    source: {type: csv, path: x.csv}\n"
                   "    policy: {capacity_per_replica: 10}\n")
    Store(tmp_path / "s.db").close()
    cases += [
        (("train-global", "--config", str(cfg), "--out", str(missing / "g.pt")), "--out", "no directory"),
        (("accuracy", "--config", str(cfg), "--plot", str(tmp_path / "a.txt")), "--plot", "not an image format"),
    ]
    for args, flag, why in cases:
        r = forescale(*args)
        line = _one_clean_line(r)
        assert flag in line and why in line, (args, line)
        assert r.stdout == "", args  # nothing ran: no table, no progress
    assert not (tmp_path / "no").exists()


def test_a_bad_backtest_forecaster_or_accuracy_window_is_one_line(tmp_path):
    trace = TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv"
    line = _one_clean_line(forescale("backtest", str(trace), "--forecaster", "nope"))
    assert line.startswith("forescale: error: --forecaster:") and "unknown forecaster 'nope'; known:" in line
    from engine.store import Store

    Store(tmp_path / "s.db").close()
    for window, why in (("1x", "not a duration"), ("-1d", "must not be negative"), ("400d", "longer than 366d"),
                        ("0s", "longer than zero")):
        r = forescale("accuracy", "--state", str(tmp_path / "s.db"), f"--window={window}")
        assert "Traceback" not in r.stderr and why in r.stderr.splitlines()[-1], r.stderr
        assert r.returncode == 2


def test_a_config_warning_is_one_line_naming_the_field(tmp_path):
    """``poll_interval`` came out as Python's FutureWarning: pydantic's
    main.py, a line number and a source line."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets:\n  - name: web\n    source: {type: csv, path: x.csv}\n"
                   "    policy: {capacity_per_replica: 10}\n    actuator: {type: dry-run, poll_interval: 10s}\n")
    r = forescale("validate", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["warning: actuator.poll_interval no longer applies: apply returns once the "
                                     "platform accepted the change and the engine reads it again on later cycles"]


def test_an_interrupted_command_says_so(tmp_path):
    """Ctrl-C exited 130 with nothing on stdout or stderr."""
    import signal
    import time

    trace = TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv"
    p = subprocess.Popen([sys.executable, "-m", "engine.cli", "backtest", str(trace), "--forecaster", "holt_winters"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "forescale: interrupted (backtest)"


def test_bad_counts_are_one_line_saying_what_is_allowed(tmp_path):
    """``decisions --limit 0`` said "no decisions logged yet" and ``-1``
    listed everything; ``select --folds 0`` printed all 64 allowed choices."""
    from engine.store import Store

    Store(tmp_path / "s.db").close()
    for n in ("0", "-1"):
        r = forescale("decisions", "--state", str(tmp_path / "s.db"), "--limit", n)
        assert r.returncode == 2 and f"argument --limit: '{n}' is not a whole number of at least 1" in r.stderr
    r = forescale("select", "--config", str(tmp_path / "c.yaml"), "--folds", "0")
    assert r.returncode == 2 and r.stderr.strip().endswith("argument --folds: '0' is not a whole number from 1 to 64")
    assert "64" not in r.stderr.replace("from 1 to 64", "")
