"""The command line as a user meets it: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support import ROOT, TRACES



def forescale(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)


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
    r = forescale("backtest", str(trace), "--forecaster", "seasonal_naive", "--json", str(js), "--plot", str(png))
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
                   "    policy: {capacity_per_replica: 2}\n")
    r = forescale("once", "--config", str(cfg), "-v")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "web" in r.stdout and "bounds" in r.stdout
    d = forescale("decisions", "--config", str(cfg), "--json")
    recs = json.loads(d.stdout)
    assert len(recs) == 1 and recs[0]["mode"] == "dry-run"


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
