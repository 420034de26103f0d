"""The backtest of a target with several resources: a real trace pair (the
CPU of an RDS instance and the request count of a load balancer, NAB, the
same days) as two CSV columns, or as two files: every policy (the HPA
baseline too) sizes for the resource that needs the most; the report gives
each resource's violations, unserved demand and forecast accuracy beside
the combined decision's cost and violations."""

from __future__ import annotations

import csv
import json
from datetime import timedelta

import numpy as np
import pytest

from engine.backtest import DEFAULT_POLICY, ResourceTrace, Scenario, run_backtest
from engine.cli import main
from engine.core.units import from_epoch, isoformat
from engine.sources.csv import read_csv

from tests.support import TRACES

CPU = TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv"
REQUESTS = TRACES / "nab" / "elb_request_count_8c0756.csv"
DAYS = 4


def _pair():
    """The two traces on one 5-minute grid, four days, rows where both have data."""
    a, b = read_csv(CPU).regular(timedelta(minutes=5)), read_csv(REQUESTS).regular(timedelta(minutes=5))
    ts = np.intersect1d(a.timestamps[~np.isnan(a.values)], b.timestamps[~np.isnan(b.values)])
    ts = ts[ts < ts[0] + DAYS * 86400]
    return ts, a.values[np.searchsorted(a.timestamps, ts)], b.values[np.searchsorted(b.timestamps, ts)]


@pytest.fixture(scope="module")
def pair_csv(tmp_path_factory):
    ts, cpu, req = _pair()
    path = tmp_path_factory.mktemp("pair") / "db.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "cpu", "requests"])
        for t, c, r in zip(ts, cpu, req):
            w.writerow([isoformat(from_epoch(int(t))), c, r])
    return path


def test_two_csv_columns_report_each_resource_and_the_combined_decision(pair_csv, capsys):
    rc = main(["backtest", str(pair_csv), "--column", "cpu", "--column", "requests", "--warmup", "1d",
               "--json", "--quiet"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    pol = report["policies"]
    # the oracle sizes for the larger need (its short intervals are cpu's
    # spikes above max_replicas, as in a backtest of cpu alone)
    assert pol["oracle"]["resources"]["requests"]["violation_fraction"] == 0.0
    assert pol["oracle"]["cost_vs_oracle"] == 1.0
    for name in ("reactive", "predictive"):
        res = pol[name]["resources"]
        assert set(res) == {"cpu", "requests"}
        # an interval is violated when any resource runs short
        worst = max(r["violation_fraction"] for r in res.values())
        assert worst <= pol[name]["violation_fraction"] <= sum(r["violation_fraction"] for r in res.values())
        assert pol[name]["unserved_fraction"] == max(r["unserved_fraction"] for r in res.values())
        assert pol[name]["cost_vs_oracle"] > 0.5
    # forecast accuracy per resource, for the forecasting policy
    for r in pol["predictive"]["resources"].values():
        assert {"mase", "smape", "coverage"} <= set(r) and 0 < r["mase"] < 5
    # both resources set the size at times
    sized = pol["predictive"]["sized_by"]
    assert sized["cpu"] > 0 and sized["requests"] > 0
    # the capacity per replica of each is derived from its own trace, and said so
    assert any(n.startswith("requests: capacity_per_replica") for n in report["notes"])

    # the table names them too
    assert main(["backtest", str(pair_csv), "--column", "cpu", "--column", "requests", "--warmup", "1d",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "predictive by resource: cpu violations" in out and "; requests violations" in out
    # the load balancer's request count is near zero at times: its MAPE is
    # marked, and a note says why, as for a target's own signal
    assert pol["predictive"]["resources"]["requests"]["mape_meaningful"] is False
    assert "mape" in out and "(meaningless)" in out
    assert "note: MAPE is meaningless on requests:" in out
    assert "note: MAPE is meaningless on this trace" not in out
    assert "sized for cpu" in out


def test_each_resources_accuracy_is_its_own_forecasts(pair_csv):
    # a resource's forecasts do not depend on the decisions, so its accuracy
    # in the two-resource backtest is that of a backtest of it alone
    req = read_csv(pair_csv, value_column="requests").regular(timedelta(minutes=5)).values
    both = run_backtest(read_csv(pair_csv, value_column="cpu"), scenario=Scenario(warmup=timedelta(days=1)),
                        policy=DEFAULT_POLICY, resource="cpu",
                        resources=[ResourceTrace("requests", read_csv(pair_csv, value_column="requests"))])
    alone = run_backtest(read_csv(pair_csv, value_column="requests"), scenario=Scenario(warmup=timedelta(days=1)),
                         policy=DEFAULT_POLICY)
    got = both.runs["predictive"].resource_metrics["requests"]
    want = alone.runs["predictive"].metrics
    for k in ("mase", "smape", "coverage"):
        assert got[k] == pytest.approx(want[k]), k
    # and the combined decision serves the requests better than cpu alone would
    cpu_alone = run_backtest(read_csv(pair_csv, value_column="cpu"), scenario=Scenario(warmup=timedelta(days=1)),
                             policy=DEFAULT_POLICY)
    served_req = cpu_alone.runs["predictive"].in_service * _requests_per_replica(both)
    scored = both.scored
    short_alone = float(np.mean(req[scored] > served_req[scored] + 1e-12))
    assert got["violation_fraction"] < short_alone, (got["violation_fraction"], short_alone)


def _requests_per_replica(result) -> float:
    note = next(n for n in result.notes if n.startswith("requests: capacity_per_replica"))
    return float(note.split()[2])


def test_resources_from_their_own_files_and_a_clear_error_for_a_bad_flag(tmp_path, capsys):
    cut = tmp_path / "cpu.csv"
    rows = CPU.read_text().splitlines()[: 1 + 288 * 3]
    cut.write_text("\n".join(rows) + "\n")
    assert main(["backtest", str(cut), "--resource", f"requests={REQUESTS}", "--warmup", "1d", "--json",
                 "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["policies"]["predictive"]["resources"]) == {"demand", "requests"}
    assert main(["backtest", str(cut), "--resource", "requests"]) == 2
    assert "--resource 'requests': expected NAME=PATH" in capsys.readouterr().err


LADDER_CONFIG = """\
targets:
  - name: db
    source: {{type: csv, path: {trace}}}
    resource: cpu
    forecaster: {{name: seasonal_persistence}}
    policy:
      kind: {kind}
      ladder:                      # cpu in % of one core; prices: m5, USD per hour
        - {{name: m5.large, capacity: 10, price: 0.096}}
        - {{name: m5.xlarge, capacity: 20, price: 0.192}}
        - {{name: m5.2xlarge, capacity: 40, price: 0.384}}
        - {{name: m5.4xlarge, capacity: 80, price: 0.768}}
      lead_time: 30m
{plan}{resources}"""


def _ladder_config(tmp_path, pair_csv, *, kind="plan", requests=True):
    plan = "      plan: {horizon: 3h, resize_downtime: 5m}\n" if kind == "plan" else ""
    resources = ("    resources:\n      requests:\n        source: {type: csv, path: requests.csv}\n"
                 "        rung_capacity: [50, 100, 200, 400]   # requests per 5 minutes each type serves\n"
                 if requests else "")
    path = tmp_path / f"{kind}-{requests}.yaml"
    path.write_text(LADDER_CONFIG.format(trace=pair_csv, kind=kind, plan=plan, resources=resources))
    return path


def test_a_ladder_with_two_resources_is_replayed_sizing_each_rung_for_both(tmp_path, pair_csv, capsys):
    # the planner and the threshold resizer on one VPS ladder whose CPU and
    # request rate each fill the rungs differently (rung_capacity)
    both = _ladder_config(tmp_path, pair_csv)
    assert main(["backtest", str(pair_csv), "--config", str(both), "--column", "cpu", "--column", "requests",
                 "--warmup", "1d", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    pol = report["policies"]
    assert set(pol) >= {"oracle", "threshold", "planner"}
    for name in ("planner", "threshold"):
        assert set(pol[name]["resources"]) == {"cpu", "requests"}
        assert pol[name]["unserved_fraction"] == max(r["unserved_fraction"] for r in pol[name]["resources"].values())
    # sized for cpu alone, the same ladder leaves the requests short far
    # more often under the planner, which read the request rate and bought
    # rungs for it; the threshold resizer resizes for it (its busiest
    # resource), where for cpu alone it holds its rung
    req = read_csv(pair_csv, value_column="requests").regular(timedelta(minutes=5)).values
    from engine.backtest import scenario_for
    from engine.config import load_config

    target = load_config(_ladder_config(tmp_path, pair_csv, requests=False)).targets[0]
    alone = run_backtest(read_csv(pair_csv, value_column="cpu"), policy=target.policy, forecaster=target.forecaster,
                         scenario=scenario_for(target, warmup=timedelta(days=1)))
    caps = np.array([50.0, 100.0, 200.0, 400.0])
    s = alone.scored
    short_alone = float(np.mean(req[s] > caps[alone.runs["planner"].in_service[s]] + 1e-12))
    got = pol["planner"]["resources"]["requests"]["violation_fraction"]
    assert got < 0.5 * short_alone, (got, short_alone)
    assert pol["planner"]["cost_per_day"] > alone.runs["planner"].actuation["cost_per_day"]
    assert alone.runs["threshold"].metrics["actions"] <= 1 < pol["threshold"]["actions"]


@pytest.mark.parametrize("size, message", [
    ({"rung_capacity": (50, 100, 200)}, "resource requests: rung_capacity has 3 values; the ladder has 4 rungs"),
    ({"rung_capacity": (50, 100, 100, 400)}, "resource requests: rung_capacity must increase strictly"),
    ({"capacity_per_replica": 20.0}, "resource requests: the scenario has a ladder of 4 rungs: give rung_capacity"),
])
def test_a_resource_sized_wrong_for_the_ladder_is_one_clear_error(tmp_path, pair_csv, size, message):
    from engine.backtest import scenario_for
    from engine.config import load_config
    from engine.core.errors import ConfigError

    target = load_config(_ladder_config(tmp_path, pair_csv, requests=False)).targets[0]
    with pytest.raises(ConfigError, match=message):
        run_backtest(read_csv(pair_csv, value_column="cpu"), policy=target.policy, forecaster=target.forecaster,
                     scenario=scenario_for(target), resource="cpu",
                     resources=[ResourceTrace("requests", read_csv(pair_csv, value_column="requests"), **size)])


def test_a_further_resources_fallback_is_counted_under_its_own_reason(tmp_path, pair_csv, capsys):
    """Its requests forecaster (a weekly seasonal naive, four days of data)
    cannot forecast: every such cycle falls back. They were counted as
    'DataOK' (the cpu signal's data step, the first), as if nothing failed."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"targets:\n  - name: db\n    source: {{type: csv, path: {pair_csv}}}\n    resource: cpu\n"
                   "    forecaster: {name: seasonal_persistence}\n"
                   "    policy: {capacity_per_replica: 10, lead_time: 10m}\n"
                   "    resources:\n      requests:\n        source: {type: csv, path: requests.csv}\n"
                   "        capacity_per_replica: 100\n"
                   "        forecaster: {name: seasonal_naive, params: {season: weekly}}\n")
    assert main(["backtest", str(pair_csv), "--config", str(cfg), "--column", "cpu", "--column", "requests",
                 "--warmup", "1d", "--json", "--quiet"]) == 0
    p = json.loads(capsys.readouterr().out)["policies"]["predictive"]
    assert p["fallback_fraction"] > 0.9 and "DataOK" not in p["fallback_reasons"]
    assert "NoForecast" in p["fallback_reasons"]
