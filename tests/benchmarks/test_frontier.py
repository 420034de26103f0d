"""The frontier benchmark's own arithmetic: the fast HPA equals the
pipeline's reactive run, the interpolation at equal cost, the hindsight
view, the held-out rule, and one end-to-end run on a small trace folder."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest

from benchmarks.frontier import THRESHOLD_SWEEP, at_cost, held_out, hindsight, hpa_in_service, main, sweep
from engine.backtest import Scenario, prepare, reactive_policy, run_policy
from engine.config import ForecasterConfig
from engine.sources.csv import read_csv
from tests.support import ROOT, TRACES

DEMO = ROOT / "engine" / "data" / "demo_rds_cpu.csv"


@pytest.mark.parametrize("trace,interval,window,u", [
    (DEMO, "5m", 300, 0.7),  # the frontier's own setting
    (DEMO, "5m", 1800, 0.55),  # a scale-down window longer than one interval
    (TRACES / "nab" / "nyc_taxi.csv", "5m", 1200, 0.9),  # 30-minute data on a 5-minute grid: gaps
    (TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv", "10m", 900, 0.45),
])
def test_fast_hpa_equals_the_pipelines_reactive_run(trace, interval, window, u):
    raw = read_csv(trace)
    raw = raw[: min(len(raw), 1500)]
    step = timedelta(minutes=int(interval[:-1]))
    sc = Scenario(interval=step, target_utilization=u, warmup=timedelta(0), lead_time=timedelta(minutes=30))
    prep = prepare(raw, sc)
    settings = {**reactive_policy(sc), "stabilization": {"scale_up": "0s", "scale_down": f"{window}s"}}
    slow = run_policy(prep, "reactive", settings, ForecasterConfig())
    lo, hi = prep.bounds
    fast = hpa_in_service(prep.series.values, prep.capacity_per_replica, u, lo, hi, prep.lead_steps, prep.initial,
                          step.total_seconds(), down_window_s=window)
    assert slow.in_service.tolist() == fast.tolist()
    assert len(set(fast.tolist())) > 3  # the capacity really moved


def test_sweep_keeps_the_scenario_and_moves_cost_with_utilization():
    prep = prepare(read_csv(DEMO), Scenario())
    curve = sweep(prep)
    assert [p["u"] for p in curve] == [0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    costs = [p["cost_vs_oracle"] for p in curve]
    assert costs[0] > 1.3 > 1.0 > costs[-1]  # a low target utilization buys capacity
    assert curve[0]["violation_fraction"] <= curve[-1]["violation_fraction"]
    # u = 0.7 is the backtest's own reactive row
    bt = run_policy(prep, "reactive", reactive_policy(prep.scenario), ForecasterConfig()).metrics
    assert curve[5] == {"u": 0.7, **bt}


CURVE = [  # cost falls and violations rise with u
    {"u": 0.5, "cost_vs_oracle": 1.4, "violation_fraction": 0.001, "actions": 100},
    {"u": 0.6, "cost_vs_oracle": 1.2, "violation_fraction": 0.004, "actions": 200},
    {"u": 0.7, "cost_vs_oracle": 1.0, "violation_fraction": 0.010, "actions": 300},
]


def test_interpolation_at_equal_cost_and_its_flags():
    h = at_cost(CURVE, 1.1)
    assert h["violation_fraction"] == pytest.approx(0.007) and h["actions"] == pytest.approx(250)
    assert h["outside"] is None
    assert at_cost(CURVE, 0.9) == {"violation_fraction": 0.010, "actions": 300.0, "outside": "below"}
    assert at_cost(CURVE, 2.0)["outside"] == "above" and at_cost(CURVE, 2.0)["violation_fraction"] == 0.001


def test_hindsight_is_the_cheapest_hpa_reaching_the_violation_level():
    # 0.007 is reached halfway between u 0.7 (0.010 at 1.0) and u 0.6 (0.004 at 1.2)
    h = hindsight(CURVE, 0.007)
    assert h["cost_vs_oracle"] == pytest.approx(1.1) and h["u"] == pytest.approx(0.65) and not h["edge"]
    assert hindsight(CURVE, 0.02) == {"cost_vs_oracle": 1.0, "u": 0.7, "edge": True}
    assert hindsight(CURVE, 0.0)["cost_vs_oracle"] is None


def test_the_held_out_part_is_a_fixed_third():
    names = [f"set/t{i:02d}.csv" for i in range(18)]
    out = held_out(list(reversed(names)))
    assert out == {f"set/t{i:02d}.csv" for i in (2, 5, 8, 11, 14, 17)}


def test_the_benchmark_runs_end_to_end_on_a_small_folder(tmp_path):
    traces = tmp_path / "traces" / "nab"
    traces.mkdir(parents=True)
    for f in ("ec2_cpu_utilization_5f5533.csv", "rds_cpu_utilization_e47b3b.csv"):
        shutil.copy(TRACES / "nab" / f, traces / f)
    out = tmp_path / "out"
    assert main(["--traces", str(tmp_path / "traces"), "--lead-times", "10", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "frontier-default.json").read_text())
    part = doc["leads"]["10"]
    assert [r["trace"] for r in part["rows"]] == ["nab/ec2_cpu_utilization_5f5533.csv",
                                                    "nab/rds_cpu_utilization_e47b3b.csv"]
    for r in part["rows"]:
        assert len(r["hpa"]) == 11 and r["violation_ratio"] > 0
    assert part["summary"]["all"]["traces"] == 2
    assert part["summary"]["held_out"]["traces"] + part["summary"]["tuning"]["traces"] == 2
    md = (out / "frontier-default.md").read_text()
    assert "| held_out |" in md and "nab/rds_cpu_utilization_e47b3b.csv" in md


def test_one_part_alone_and_the_forecasters_parameters(tmp_path):
    """``--part`` runs only the tuning (or held-out) traces; the forecaster's
    parameters are validated (a bad one fails) and recorded in the report."""
    traces = tmp_path / "traces" / "set"
    traces.mkdir(parents=True)
    for i in range(3):  # sorted t0, t1, t2: t2 is held out
        shutil.copy(TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv", traces / f"t{i}.csv")
    out = tmp_path / "out"
    assert main(["--traces", str(tmp_path / "traces"), "--part", "held_out", "--vertical", "--no-frontier",
                 "--forecaster-params", '{"seasons": 3}', "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "frontier-default-vertical.json").read_text())
    assert [r["trace"] for r in doc["vertical"]["rows"]] == ["set/t2.csv"]
    assert doc["forecaster_params"] == {"seasons": 3}
    with pytest.raises(Exception, match="seasons"):
        main(["--traces", str(tmp_path / "traces"), "--part", "held_out", "--vertical", "--no-frontier",
              "--forecaster-params", '{"seasons": 99}', "--out", str(out), "--quiet"])


def test_a_wider_sweep_compares_an_earlier_reports_policy_rows_again(tmp_path):
    """``--resweep REPORT --sweep-from 0.3``: the HPA swept from u = 0.3, the
    policy's rows kept as they were (not run again); a policy that spent more
    than the HPA at 0.45 is then compared inside the range."""
    traces = tmp_path / "traces" / "nab"
    traces.mkdir(parents=True)
    shutil.copy(TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv", traces / "r.csv")
    out = tmp_path / "out"
    assert main(["--traces", str(tmp_path / "traces"), "--lead-times", "10", "--out", str(out), "--quiet",
                 "--max-days", "5"]) == 0
    first = json.loads((out / "frontier-default.json").read_text())
    assert main(["--traces", str(tmp_path / "traces"), "--resweep", str(out / "frontier-default.json"),
                 "--sweep-from", "0.3", "--out", str(out)]) == 0
    wide = json.loads((out / "frontier-default-from0.3.json").read_text())
    (a,), (b,) = first["leads"]["10"]["rows"], wide["leads"]["10"]["rows"]
    assert b["policy"] == a["policy"]
    assert [h["u"] for h in b["hpa"]] == [round(0.3 + 0.05 * i, 2) for i in range(14)]
    assert b["hpa"][3:] == a["hpa"]  # the same HPA runs from 0.45 on
    assert max(h["cost_vs_oracle"] for h in b["hpa"]) > max(h["cost_vs_oracle"] for h in a["hpa"])
    assert "u 0.30-0.95" in (out / "frontier-default-from0.3.md").read_text()


def test_the_vertical_scenario_runs_against_the_threshold_resizer(tmp_path):
    traces = tmp_path / "traces" / "nab"
    traces.mkdir(parents=True)
    shutil.copy(TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv", traces / "r.csv")
    out = tmp_path / "out"
    assert main(["--traces", str(tmp_path / "traces"), "--vertical", "--no-frontier", "--out", str(out),
                 "--quiet"]) == 0
    doc = json.loads((out / "frontier-default-vertical.json").read_text())
    (row,) = doc["vertical"]["rows"]
    assert set(row["policies"]) == {"oracle", "threshold", "predictive"}
    for p in row["policies"].values():
        assert p["cost_per_day"] > 0 and "downtime_unserved_fraction" in p
    # the oracle's ladder money is the floor (no downtime, perfect knowledge)
    assert row["policies"]["oracle"]["cost_per_day"] <= row["policies"]["threshold"]["cost_per_day"] * 1.5
    md = (out / "frontier-default-vertical.md").read_text()
    assert "Vertical: AWS m5 ladder" in md
    # the cost-matched comparison: the threshold resizer swept over its settings
    sw, pol, th = row["threshold_sweep"], row["policies"]["predictive"], row["policies"]["threshold"]
    assert len(sw["points"]) == len(THRESHOLD_SWEEP)
    (base,) = [q for q in sw["points"] if (q["up"], q["down"], q["window_min"]) == (0.8, 0.2, 10)]
    assert base["cost_per_day"] == pytest.approx(th["cost_per_day"])  # the baseline is one of its points
    assert base["unserved_fraction"] == pytest.approx(th["unserved_fraction"])
    assert len({round(q["cost_per_day"], 6) for q in sw["points"]}) > 3  # the settings move the money
    if sw["at_unserved"] is not None:
        assert sw["at_unserved"]["unserved_fraction"] <= pol["unserved_fraction"] + 1e-9
        assert sw["cost_ratio"] == pytest.approx(pol["cost_per_day"] / sw["at_unserved"]["cost_per_day"])
        assert all(q["cost_per_day"] >= sw["at_unserved"]["cost_per_day"] for q in sw["points"]
                   if q["unserved_fraction"] <= pol["unserved_fraction"])
    if sw["at_cost"] is not None:
        assert sw["at_cost"]["cost_per_day"] <= pol["cost_per_day"] + 1e-9
    assert "### Against the threshold resizer swept over its settings" in md


@pytest.mark.parametrize("settings", [{}, {"kind": "plan"}])
def test_forecasts_kept_from_the_longer_lead_time_give_the_same_run(settings):
    from benchmarks.frontier import ForecastCache, one_trace

    from engine.backtest import DEFAULT_POLICY

    settings = settings or DEFAULT_POLICY
    raw = read_csv(TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv")[:1200]
    fcfg = ForecasterConfig(name="seasonal_persistence")
    cache = ForecastCache()
    one_trace(raw, "t", settings, fcfg, 30, cache)
    assert cache.log  # the first run kept its forecasts
    cached = one_trace(raw, "t", settings, fcfg, 10, cache)
    fresh = one_trace(raw, "t", settings, fcfg, 10)
    assert cached["policy"] == fresh["policy"]
    assert cached["fallback_reasons"] == fresh["fallback_reasons"]


def test_the_vertical_resizes_are_listed_change_by_change(tmp_path, capsys):
    """``benchmarks/vertical_resizes.py``: each policy's rung changes on the
    vertical scenario, each from the rung the one before went to; the
    threshold resizer moves one rung at a time."""
    import re

    from benchmarks.vertical_resizes import main as resizes_main

    traces = tmp_path / "traces" / "nab"
    traces.mkdir(parents=True)
    shutil.copy(TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv", traces / "r.csv")
    assert resizes_main(["--traces", str(tmp_path / "traces"), "--only", "r.csv", "--policy", "default",
                         "--max-days", "14"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nab/r.csv\n")
    blocks = re.split(r"\n  (?=\w+: \$)", out)[1:]
    assert [b.split(":")[0] for b in blocks] == ["predictive", "threshold"]
    for block in blocks:
        start = int(re.search(r"from rung (\d+):", block).group(1))
        moves = [(int(a), int(b)) for a, b in re.findall(r"interval +\d+ +\S+ +(\d) -> (\d)", block)]
        assert [a for a, _ in moves] == ([start] + [b for _, b in moves])[:len(moves)]
        if block.startswith("threshold"):
            assert moves and all(abs(b - a) == 1 for a, b in moves)
