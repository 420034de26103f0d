"""EngineMetrics: recorded values, scraped over HTTP on loopback."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone

import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from engine.metrics import (EngineMetrics, decision_reason, export_horizons, horizon_values, not_ready,
                            time_to_threshold, value_at)
from engine.server import serve
from engine.core.types import Decision, Forecast, Step
from tests.support.prom import prometheus
from tests.support import ROOT

__all__ = ["prometheus"]  # the session fixture, imported for pytest

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
T0 = int(NOW.timestamp())
HTTP = httpx.Client(timeout=5.0)  # one client: building an SSL context per request costs ~0.1 s


def forecast(n: int = 3, point: list[float] | None = None) -> Forecast:
    """Points at now+300 s, +600 s, ...; the exported horizons are 600 and 900 s
    (the defaults: lead time 10 min, hold 5 min)."""
    ts = T0 + 300 * np.arange(1, n + 1)
    pt = np.array(point if point is not None else [10.0 + i for i in range(n)])
    return Forecast(NOW, ts, pt, {0.9: pt * 1.5}, "seasonal_naive")


def decision(current: int = 2, desired: int = 4, steps: tuple[Step, ...] | None = None) -> Decision:
    steps = steps if steps is not None else (
        Step("capacity", 6, "CapacityModel", "demand 55 / 10 per replica", changed=True),
        Step("rate_limit", 4, "ScaleUpLimit", "at most +2 per 60s", changed=True),
        Step("bounds", 4, "WithinBounds", "inside [1, 10]"),
    )
    return Decision("web", NOW, current, desired, 6, steps)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = HTTP.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture()
def served():
    m = EngineMetrics()
    with serve(m, "127.0.0.1", 0) as server:
        yield m, server


def test_a_cycle_is_scraped_with_forecast_capacities_and_decision(served):
    m, server = served
    m.register_target("web", "auto", interval=timedelta(minutes=5),
                      horizons=(timedelta(minutes=5), timedelta(minutes=15)))
    m.observe_cycle("web", decision(), forecast(), duration_s=0.42, ok=True, now=NOW, observed=9.5)
    s = scrape(server.url)
    assert val(s, "forescale_forecast_demand", target="web", horizon="300", level="point") == 10.0
    assert val(s, "forescale_forecast_demand", target="web", horizon="900", level="point") == 12.0
    assert val(s, "forescale_forecast_demand", target="web", horizon="900", level="0.9") == 18.0
    assert val(s, "forescale_observed_demand", target="web") == 9.5
    assert val(s, "forescale_recommended_capacity", target="web") == 6
    assert val(s, "forescale_desired_capacity", target="web") == 4
    assert val(s, "forescale_current_capacity", target="web") == 2
    assert val(s, "forescale_decisions_total", target="web", action="scale_up", reason="ScaleUpLimit") == 1
    assert val(s, "forescale_last_success_timestamp_seconds", target="web") == NOW.timestamp()
    assert val(s, "forescale_cycle_duration_seconds_count", target="web") == 1
    assert val(s, "forescale_cycle_duration_seconds_sum", target="web") == pytest.approx(0.42)
    assert val(s, "forescale_cycle_duration_seconds_bucket", target="web", le="0.5") == 1
    assert val(s, "forescale_cycle_duration_seconds_bucket", target="web", le="0.25") == 0
    assert val(s, "forescale_cycle_interval_seconds", target="web") == 300
    assert val(s, "forescale_mode", target="web", mode="auto") == 1
    assert val(s, "forescale_mode", target="web", mode="dry-run") == 0


def test_counters_exist_at_zero_once_a_target_is_registered(served):
    m, server = served
    m.register_target("web")
    s = scrape(server.url)
    for name in ("forescale_fetch_errors_total", "forescale_actuation_errors_total",
                 "forescale_forecast_failures_total"):
        assert val(s, name, target="web") == 0
    m.fetch_error("web")
    m.fetch_error("web")
    m.actuation_error("web")
    m.forecast_failure("web")
    m.set_plans_pending("web", 3)
    s = scrape(server.url)
    assert val(s, "forescale_fetch_errors_total", target="web") == 2
    assert val(s, "forescale_actuation_errors_total", target="web") == 1
    assert val(s, "forescale_forecast_failures_total", target="web") == 1
    assert val(s, "forescale_plans_pending", target="web") == 3


def test_a_failed_cycle_keeps_the_last_success_time(served):
    m, server = served
    m.observe_cycle("web", decision(), forecast(), 0.1, ok=True, now=NOW)
    m.observe_cycle("web", None, None, 0.2, ok=False, now=NOW + timedelta(minutes=5))
    s = scrape(server.url)
    assert val(s, "forescale_last_success_timestamp_seconds", target="web") == NOW.timestamp()
    assert val(s, "forescale_cycle_duration_seconds_count", target="web") == 2


def test_a_new_forecast_replaces_the_old_horizons(served):
    m, server = served
    m.register_target("web", horizons=(timedelta(minutes=5), timedelta(minutes=10), timedelta(minutes=20)))
    m.observe_cycle("web", None, forecast(n=4), 0.1, ok=True, now=NOW)
    s = scrape(server.url)
    assert {dict(k[1])["horizon"] for k in s if k[0] == "forescale_forecast_demand"} == {"300", "600", "1200"}
    m.observe_cycle("web", None, forecast(n=2, point=[7.0, float("nan")]), 0.1, ok=True, now=NOW)
    s = scrape(server.url)
    horizons = {dict(k[1])["horizon"] for k in s if k[0] == "forescale_forecast_demand" and
                dict(k[1])["level"] == "point"}
    assert horizons == {"300"}  # 1200 beyond the shorter forecast gone; NaN at 600 not exported
    assert val(s, "forescale_forecast_demand", target="web", horizon="300", level="point") == 7.0


def test_horizon_labels_come_from_the_config_not_the_grid_offset():
    # a daemon started 39 s after a grid second: forecast points at now+261,
    # now+561, ... The labels stay 600 and 900 (lead time, lead + hold) with
    # the values interpolated at now+600 and now+900.
    made = NOW + timedelta(seconds=39)
    ts = T0 + 300 * np.arange(1, 5)
    f = Forecast(made, ts, np.array([10.0, 20.0, 30.0, 40.0]), {0.9: np.array([11.0, 22.0, 33.0, 44.0])}, "x")
    got = {(h, lv): v for h, lv, v in horizon_values(f, (timedelta(minutes=10), timedelta(minutes=15)),
                                                      timedelta(minutes=5))}
    # now+600 is epoch T0+639: between T0+600 (20) and T0+900 (30), 39/300 of the way
    assert got[("600", "point")] == pytest.approx(20.0 + 10.0 * 39 / 300)
    assert got[("900", "0.9")] == pytest.approx(33.0 + 11.0 * 39 / 300)
    assert set(got) == {("600", "point"), ("600", "0.9"), ("900", "point"), ("900", "0.9")}


@pytest.mark.parametrize("t, expect", [
    (100.0, 1.0), (200.0, 2.0), (150.0, 1.5),  # on the grid and between points
    (60.0, 1.0), (240.0, 2.0),  # within one step outside: the nearest end holds
    (39.0, None), (261.0, None),  # further out: nothing
    (350.0, None),  # a NaN neighbour: nothing
])
def test_value_at(t, expect):
    ts, vs = np.array([100, 200, 400]), np.array([1.0, 2.0, np.nan])
    if t == 350.0:
        assert value_at(ts, vs, t, 60.0) is None
        return
    got = value_at(ts[:2], vs[:2], t, 60.0)
    assert got == expect if expect is None else got == pytest.approx(expect)


def test_export_horizons_are_lead_time_hold_and_forecast_end():
    from engine.config import parse_config

    cfg = parse_config({"targets": [{"name": "web", "source": {"type": "replay", "path": "x.csv"},
                                     "policy": {"capacity_per_replica": 10, "lead_time": "10m", "hold": "5m"},
                                     "forecaster": {"extra_horizon": "45m"}}]})
    assert export_horizons(cfg.targets[0]) == (timedelta(minutes=10), timedelta(minutes=15), timedelta(hours=1))


def test_accuracy_is_set_in_base_units_and_unknown_values_removed(served):
    m, server = served
    m.register_target("web", horizons=(timedelta(minutes=10), timedelta(minutes=15)))
    # as live_accuracy computes it: MAPE as a ratio
    m.set_accuracy("web", {"mae": 1.5, "mape": 0.12, "mase": 0.8, "bias": -0.3, "coverage": 0.91})
    s = scrape(server.url)
    at = {"target": "web", "horizon": "600"}  # the lead time
    assert val(s, "forescale_forecast_mape_ratio", **at) == pytest.approx(0.12)
    assert val(s, "forescale_forecast_mase_ratio", **at) == 0.8
    assert val(s, "forescale_forecast_bias", **at) == -0.3
    assert val(s, "forescale_forecast_coverage_ratio", **at) == 0.91
    m.set_accuracy("web", {"mape": None, "coverage": float("nan")})
    s = scrape(server.url)
    assert val(s, "forescale_forecast_mape_ratio", **at) is None
    assert val(s, "forescale_forecast_coverage_ratio", **at) is None
    assert val(s, "forescale_forecast_mae", **at) == 1.5
    with pytest.raises(ValueError, match="rmse"):
        m.set_accuracy("web", {"rmse": 1.0})


def test_decision_reason_is_the_last_changing_step():
    assert decision_reason(decision()) == "ScaleUpLimit"
    held = decision(4, 4, (Step("bounds", 4, "WithinBounds", "inside", changed=False),))
    assert decision_reason(held) == "Unchanged"


def test_each_engine_has_its_own_registry():
    a, b = EngineMetrics(), EngineMetrics()  # a shared registry would raise on duplicates
    a.fetch_error("x")
    assert b.registry.get_sample_value("forescale_fetch_errors_total", {"target": "x"}) is None
    assert a.registry.get_sample_value("forescale_fetch_errors_total", {"target": "x"}) == 1
    assert REGISTRY.get_sample_value("forescale_fetch_errors_total", {"target": "x"}) is None


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="autopilot"):
        EngineMetrics().set_mode("web", "autopilot")


def test_openmetrics_when_asked(served):
    m, server = served
    m.register_target("web")
    r = HTTP.get(f"{server.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_healthz_and_readiness_without_a_callable(served):
    m, server = served
    assert HTTP.get(f"{server.url}/healthz").status_code == 200
    r = HTTP.get(f"{server.url}/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False  # no targets yet
    m.register_target("web")
    m.register_target("batch")
    m.observe_cycle("web", None, None, 0.1, ok=True, now=NOW)
    r = HTTP.get(f"{server.url}/readyz")
    assert r.status_code == 503
    assert r.json()["not_ready"] == {"batch": "no successful cycle yet"}
    m.observe_cycle("batch", None, None, 0.1, ok=True, now=NOW)
    r = HTTP.get(f"{server.url}/readyz")
    assert r.status_code == 200 and r.json() == {"ready": True, "not_ready": {}, "targets": ["batch", "web"]}
    assert HTTP.get(f"{server.url}/nope").status_code == 404


def test_readiness_callable_decides():
    m = EngineMetrics()
    clock = {"now": NOW}
    last = {"web": NOW - timedelta(minutes=4)}

    def readiness():
        return not_ready(last, {"web": timedelta(minutes=1)}, clock["now"], within=5)

    with serve(m, "127.0.0.1", 0, readiness=readiness) as server:
        assert HTTP.get(f"{server.url}/readyz").status_code == 200
        clock["now"] = NOW + timedelta(minutes=2)
        r = HTTP.get(f"{server.url}/readyz")
        assert r.status_code == 503
        assert "360s ago" in r.json()["not_ready"]["web"]


def test_a_broken_readiness_callable_is_not_ready_and_the_server_lives():
    def boom():
        raise RuntimeError("store closed")

    with serve(EngineMetrics(), "127.0.0.1", 0, readiness=boom) as server:
        r = HTTP.get(f"{server.url}/readyz")
        assert r.status_code == 503 and "RuntimeError" in r.json()["error"]
        assert HTTP.get(f"{server.url}/healthz").status_code == 200


@pytest.mark.parametrize("last, expect", [
    (None, "no successful cycle yet"),
    (NOW - timedelta(minutes=14), None),
    (NOW - timedelta(minutes=15), None),
    (NOW - timedelta(minutes=16), "960s ago"),
])
def test_not_ready_within_n_intervals(last, expect):
    got = not_ready({"web": last}, {"web": timedelta(minutes=5)}, NOW, within=3)["web"]
    assert got == expect if expect is None or got is None else expect in got


def test_push_forecasts_puts_the_group_to_the_gateway():
    from tests.support.prom import recording_pushgateway

    m = EngineMetrics()
    m.register_target("web", horizons=(timedelta(minutes=5), timedelta(minutes=10)))
    with recording_pushgateway() as (url, got):
        m.push_forecasts(url, "web", forecast(n=2))
    assert len(got) == 1
    method, path, body = got[0]
    assert method == "PUT" and path == "/metrics/job/forescale/target/web"
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {(s.labels["horizon"], s.labels["level"]): s.value for s in fams["forescale_forecast_demand"].samples}
    assert samples == {("300", "point"): 10.0, ("600", "point"): 11.0, ("300", "0.9"): 15.0, ("600", "0.9"): 16.5}


def test_readyz_body_is_json(served):
    m, server = served
    m.register_target("web")
    r = HTTP.get(f"{server.url}/readyz")
    assert r.headers["content-type"] == "application/json"
    assert json.loads(r.text)["targets"] == ["web"]


# --------------------------------------------------------------- grafana dashboard
DASHBOARD = ROOT / "deploy" / "grafana" / "forescale-dashboard.json"
#: what Grafana substitutes before sending a query, for checking the PromQL
GRAFANA_VARS = {"${horizon}": "600", "$horizon": "600", "$target": "web", "$__rate_interval": "5m"}


def exported_names() -> set[str]:
    m = EngineMetrics()
    m.register_target("t", "auto", interval=timedelta(minutes=1))
    names = set()
    for fam in m.registry.collect():
        names.add(fam.name)
        names |= {s.name for s in fam.samples}
        if fam.type == "counter":
            names.add(fam.name + "_total")
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]


def test_no_created_series_beside_the_documented_metrics():
    """prometheus_client adds ``*_created`` to each counter and histogram:
    ten metric names no doc lists, stored by every scrape."""
    from prometheus_client import generate_latest

    m = EngineMetrics()
    m.register_target("t", "auto", interval=timedelta(minutes=1))
    assert "_created" not in generate_latest(m.registry).decode()


def test_dashboard_panels_use_only_metrics_the_engine_exports():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert {"target", "horizon"} <= set(variables)
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    titles = {p["title"] for p in panels}
    assert {"Predicted vs actual", "Capacity", "Decisions by action and reason", "Forecast error",
            "MAPE and coverage", "MASE", "Cycle duration", "Errors", "Anomalies flagged"} <= titles
    exported = exported_names()
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = set(re.findall(r"\bforescale_[a-z_]+", t["expr"]))
            assert names <= exported, (p["title"], names - exported)
            assert names, p["title"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    # predicted vs actual from forescale's own series: no hand-typed PromQL
    predicted = next(p for p in panels if p["title"] == "Predicted vs actual")
    assert predicted["targets"][0]["expr"] == 'forescale_observed_demand{target="$target"}'
    assert 'horizon="$horizon"' in predicted["targets"][1]["expr"]
    # units: ratios as percent, metric units as plain numbers
    units = {p["title"]: p.get("fieldConfig", {}).get("defaults", {}).get("unit") for p in panels}
    assert units["MAPE and coverage"] == "percentunit" and units["MASE"] == units["Forecast error"] == "none"
    # staleness in the target's own intervals, red where the alert fires (it was seconds, red at a fixed 900)
    stale = next(p for p in panels if p["title"] == "Intervals since last successful cycle")
    assert "forescale_cycle_interval_seconds" in stale["targets"][0]["expr"]
    assert stale["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] == 3
    horizon = variables["horizon"]["definition"]
    assert "forescale_forecast_demand" in horizon and horizon.endswith("horizon)")


@pytest.mark.prometheus
def test_dashboard_queries_are_valid_promql(prometheus):
    # Prometheus itself parses every panel's query (variables substituted
    # the way Grafana would); a syntax error is a 400 bad_data
    with httpx.Client(timeout=10.0) as client:
        for title, expr in dashboard_exprs():
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            r = client.get(f"{prometheus.url}/api/v1/query", params={"query": expr})
            assert r.status_code == 200, (title, expr, r.text)


# ------------------------------------------------------------ a real exposition
@pytest.mark.prometheus
def test_a_real_runs_scrape_passes_promtool_check_metrics(tmp_path):
    import shutil
    import subprocess

    from tests.support.replay import demo_replay

    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed")
    rep = demo_replay(tmp_path, cycles=12)
    with serve(rep.metrics, "127.0.0.1", 0) as server:
        text = HTTP.get(f"{server.url}/metrics").text
    # the run exported what the dashboard and alerts read, at the configured horizons
    for name in ("forescale_forecast_demand", "forescale_observed_demand", "forescale_forecast_mape_ratio",
                 "forescale_forecast_coverage_ratio", "forescale_forecast_mae"):
        assert f"\n{name}{{" in text, name
    assert 'horizon="600",level="0.9",target="rds-demo"' in text
    assert 'horizon="900",level="point",target="rds-demo"' in text
    assert "quantile=" not in text
    r = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # and a run with predictive alerts (one of them +Inf) and remote-write counters
    from tests.support.replay import storage_replay

    storage = storage_replay(tmp_path / "storage", cycles=2).metrics
    storage.remote_write_dropped(3)
    text = storage.exposition()[0].decode()
    assert 'forescale_forecast_time_to_threshold_seconds{alert="storage-full",target="logs"} +Inf' in text
    assert "forescale_remote_write_dropped_samples_total 3.0" in text
    r = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # and the old, broken exposition would not have passed
    bad = 'forescale_forecast{horizon="39",quantile="0.9",target="web"} 1.0\n'
    r = subprocess.run([tool, "check", "metrics"], input="# TYPE forescale_forecast gauge\n" + bad,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "quantile" in r.stdout + r.stderr


def test_a_real_run_exports_the_configured_horizons_only(tmp_path):
    # lead time 10 min and lead + hold 15 min, whatever the run's length (the
    # old labels were every grid step: 300, 600, 900)
    from tests.support.replay import demo_replay

    def labels(cycles):
        rep = demo_replay(tmp_path / str(cycles), cycles=cycles)
        return {dict(k[1])["horizon"] for k in rep.snapshots[-1] if k[0] == "forescale_forecast_demand"}

    assert labels(3) == labels(5) == {"600", "900"}


# ------------------------------------------------------------ predictive alerts
@pytest.mark.parametrize("values, observed, expect", [
    ([80.0, 90.0, 100.0], 70.0, 750.0),  # crosses 95 halfway between +600 (90) and +900 (100)
    ([96.0, 97.0, 98.0], 90.0, 250.0),  # 90 now -> 96 at +300: 95 at 250 s
    ([80.0, 90.0, 94.0], 70.0, math.inf),  # below to the forecast's end
    ([80.0, 90.0, 94.0], 95.5, 0.0),  # already there
    ([float("nan"), 90.0, 100.0], None, 750.0),  # a NaN point is skipped
])
def test_time_to_threshold(values, observed, expect):
    f = Forecast(NOW, T0 + 300 * np.arange(1, 4), np.array(values), {}, "x")
    got = time_to_threshold(f, f.point, 95.0, observed)
    assert got == pytest.approx(expect) if math.isfinite(expect) else got == math.inf


def test_predictive_alerts_are_exported_per_alert(served):
    from engine.config import ThresholdAlert

    m, server = served
    alerts = (ThresholdAlert(name="storage-full", capacity=100.0, fraction=0.95, level=0.9),
              ThresholdAlert(name="hard-limit", threshold=1000.0, level=None))
    m.register_target("db", horizons=(timedelta(minutes=10),), alerts=alerts)
    f = Forecast(NOW, T0 + 300 * np.arange(1, 4), np.array([80.0, 85.0, 90.0]),
                 {0.9: np.array([85.0, 92.0, 99.0])}, "x")
    m.observe_cycle("db", None, f, 0.1, ok=True, now=NOW, observed=78.0)
    s = scrape(server.url)
    # q0.9: 92 at +600, 99 at +900: 95 at 600 + 3/7 * 300
    assert val(s, "forescale_forecast_time_to_threshold_seconds", target="db", alert="storage-full") == \
        pytest.approx(600 + 300 * 3 / 7)
    assert val(s, "forescale_forecast_time_to_threshold_seconds", target="db", alert="hard-limit") == math.inf
    assert val(s, "forescale_alert_threshold", target="db", alert="storage-full") == pytest.approx(95.0)
    m.register_target("db", alerts=alerts[:1])  # a reload that drops an alert drops its series
    s = scrape(server.url)
    assert val(s, "forescale_forecast_time_to_threshold_seconds", target="db", alert="hard-limit") is None


@pytest.mark.parametrize("alert, message", [
    ({"name": "a"}, "set threshold, or capacity and fraction"),
    ({"name": "a", "threshold": 5, "capacity": 10, "fraction": 0.5}, "not both"),
    ({"name": "a", "threshold": 5, "level": 0.99}, "alerts[0].level (0.99) is not one of forecaster.quantiles (0.5, 0.9)"),
])
def test_predictive_alert_config_errors(alert, message):
    from engine.config import parse_config
    from engine.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config({"targets": [{"name": "db", "source": {"type": "replay", "path": "x.csv"},
                                   "policy": {"capacity_per_replica": 10}, "alerts": [alert]}]})
    assert message in str(err.value) and "targets[0]" in str(err.value)


def test_the_notifier_counts_are_exported_per_channel():
    from engine.metrics import EngineMetrics

    class Counts:  # what engine.notify.Notifier exposes
        sent = {"ops-slack": 3, "mail": 1}
        dropped = {"ops-slack": 2, "mail": 0}

    m = EngineMetrics()
    m.watch_notifier(Counts())
    text = m.exposition()[0].decode()
    assert 'forescale_notifications_sent_total{channel="ops-slack"} 3.0' in text
    assert 'forescale_notifications_dropped_total{channel="ops-slack"} 2.0' in text
    Counts.dropped["mail"] = 5  # read at each scrape
    assert 'forescale_notifications_dropped_total{channel="mail"} 5.0' in m.exposition()[0].decode()
