"""The shipped Prometheus alert rules load, fire on the faults their unit
tests describe, and use only metrics the engine exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from engine.metrics import EngineMetrics
from tests.support import ROOT

DEPLOY = ROOT / "deploy" / "prometheus"
RULES = DEPLOY / "forescale-alerts.yml"
RULE_TESTS = DEPLOY / "forescale-alerts.test.yml"

pytestmark = pytest.mark.prometheus


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return tool


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def exported_names() -> set[str]:
    """Every sample name EngineMetrics can export (counters with _total,
    histograms with _bucket/_sum/_count)."""
    m = EngineMetrics()
    m.register_target("t", "auto")
    names = set()
    for fam in m.registry.collect():
        names.add(fam.name)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        if fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_sum", "_count")}
    return names


def test_rules_pass_promtool_check():
    r = run("check", "rules", str(RULES), cwd=DEPLOY)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 11 rules found" in r.stdout


def test_every_alert_fires_in_the_unit_tests():
    r = run("test", "rules", str(RULE_TESTS), cwd=DEPLOY)
    assert r.returncode == 0, r.stdout + r.stderr
    alerts = {rule["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for rule in g["rules"]}
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {case["alertname"] for t in tested for case in t["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tested for case in t["alert_rule_test"] if not case["exp_alerts"]}
    assert firing == alerts and quiet == alerts


@pytest.mark.parametrize("alert, old, new", [
    ("ForescaleCycleStale", "> 3 * forescale_cycle_interval_seconds", "> 300 * forescale_cycle_interval_seconds"),
    ("ForescaleAnomalies", "increase(forescale_anomalies_total[30m]) >= 3",
     "increase(forescale_anomalies_total[30m]) >= 30"),
    ("ForescaleModelFitsFailing", "increase(forescale_model_fit_failures_total[2h]) >= 3",
     "increase(forescale_model_fit_failures_total[2h]) >= 30"),
])
def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path, alert: str, old: str, new: str):
    # a rule whose threshold no longer fires must fail promtool test rules
    text = RULES.read_text().replace(old, new)
    assert text != RULES.read_text()
    (tmp_path / RULES.name).write_text(text)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    r = run("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert r.returncode != 0 and alert in r.stdout + r.stderr


def test_rules_use_only_exported_metrics():
    exprs = [rule["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for rule in g["rules"]]
    used = {n for e in exprs for n in re.findall(r"\bforescale_[a-z_]+", e)}
    assert used and used <= exported_names(), used - exported_names()


@pytest.mark.slow
def test_accuracy_alert_inputs_are_the_series_a_real_run_exports(tmp_path: Path):
    # the committed block is what tests/support/alert_inputs.py writes from
    # real replays: nobody types accuracy (or anomaly) values by hand
    from tests.support import alert_inputs

    for case in alert_inputs.CASES:
        if not case.trace.exists():
            pytest.skip(f"shared trace {case.trace.name} not available")
    assert alert_inputs.BEGIN in RULE_TESTS.read_text()
    differs = rounding_apart(alert_inputs.generated(tmp_path), RULE_TESTS.read_text())
    assert differs is None, f"{differs}; regenerate with: python3 -m tests.support.alert_inputs"


#: how far a number of the regenerated inputs may lie from the committed one:
#: a real run's forecasts move in the fourth digit with the numeric
#: libraries' versions (statsmodels 0.14 -> 0.15: at most 0.17 %, and one
#: second of a "5h 38m 32s"), while the series, labels, times and alerts are
#: the same text
INPUTS_RTOL = 5e-3
_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)")


def rounding_apart(got: str, want: str) -> str | None:
    """None when ``got`` is ``want`` but for numbers within
    :data:`INPUTS_RTOL` of each other (integers also within 1); else the
    first difference."""
    a, b = _NUMBER.split(got), _NUMBER.split(want)
    if len(a) != len(b):
        return f"{(len(a) - 1) // 2} numbers where the committed file has {(len(b) - 1) // 2}"
    for i, (x, y) in enumerate(zip(a, b)):
        if x == y:
            continue
        if i % 2 == 0:
            return f"text {x[:60]!r} where the committed file has {y[:60]!r}"
        fx, fy = float(x), float(y)
        whole = "." not in x + y and "e" not in x + y
        if not (abs(fx - fy) <= INPUTS_RTOL * max(abs(fx), abs(fy)) or (whole and abs(fx - fy) <= 1)):
            return f"{x} where the committed file has {y} (after {''.join(a[max(0, i - 4):i])[-60:]!r})"
    return None


def test_the_inputs_comparison_allows_rounding_and_nothing_else():
    base = "series: 'f{target=\"a\"}'\nvalues: '20000 8120.08'\ndescription: in 5h 38m 32s; eval_time: 500m"
    assert rounding_apart(base.replace("8120.08", "8134.18").replace("32s", "31s"), base) is None
    assert "8200" in rounding_apart(base.replace("8120.08", "8200"), base)
    assert rounding_apart(base.replace("32s", "30s"), base).startswith("30 where the committed file has 32")
    assert 'target="b"' in rounding_apart(base.replace('target="a"', 'target="b"'), base)
    assert "numbers" in rounding_apart(base + " 7", base)


def test_a_real_prometheus_evaluates_the_predictive_alert_on_a_real_scrape(tmp_path: Path):
    # the storage-quota runs served on forescale's own endpoint, scraped and
    # the shipped rules evaluated by a real Prometheus: the filling volume's
    # alert is pending (for: 15m), the other has none
    import time

    import httpx

    from engine.server import serve
    from tests.support.prom import scraping_prometheus
    from tests.support.replay import storage_replay

    metrics = storage_replay(tmp_path / "runs", cycles=6).metrics  # the last half hour of the runs
    with serve(metrics, "127.0.0.1", 0) as server, \
            scraping_prometheus(tmp_path / "prom", server.url, rule_files=(RULES,)) as prom:
        deadline = time.monotonic() + 20
        alerts = []
        while time.monotonic() < deadline and not alerts:
            r = httpx.get(f"{prom.url}/api/v1/query", timeout=5,
                          params={"query": 'ALERTS{alertname="ForescaleThresholdForecast"}'})
            alerts = r.json()["data"]["result"]
            time.sleep(0.3)
    assert [(a["metric"]["target"], a["metric"]["alert"], a["metric"]["alertstate"]) for a in alerts] == \
        [("data", "storage-full", "pending")]
    ttt = metrics.registry.get_sample_value("forescale_forecast_time_to_threshold_seconds",
                                            {"target": "data", "alert": "storage-full"})
    assert 0 < ttt < 6 * 3600
    assert metrics.registry.get_sample_value("forescale_forecast_time_to_threshold_seconds",
                                          {"target": "logs", "alert": "storage-full"}) == float("inf")
