"""The KEDA and HPA examples that scale on forescale's forecast: their
manifests validate, and the queries they make return what the engine
exports, from a real Prometheus scraping a real run's endpoint."""

from __future__ import annotations

import copy
import json
import re
import time
from datetime import timedelta
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml

from engine.demo import DEMO_TRACE
from engine.server import serve
from tests.support import FIXTURES, ROOT
from tests.support.prom import scraping_prometheus
from tests.support.replay import run_replay, target

EXAMPLES = ROOT / "deploy" / "kubernetes" / "forecast-scaling"
KEDA = EXAMPLES / "keda-scaledobject.yaml"
HPA = EXAMPLES / "hpa-external-metric.yaml"
ADAPTER = EXAMPLES / "hpa-external-prometheus-adapter.yaml"
KEDA_SCHEMA = json.loads((FIXTURES / "keda" / "scaledobject.schema.json").read_text())


def load(path: Path) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc


def keda_errors(doc: dict) -> list[str]:
    v = jsonschema.Draft202012Validator(KEDA_SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def test_the_hpa_and_the_adapter_config_validate_against_the_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    for path in (HPA, ADAPTER):
        kv.validate(load(path), "1.30", strict=True)
    adapter = yaml.safe_load(load(ADAPTER)["data"]["config.yaml"])
    assert {r["seriesQuery"].split("{")[0] for r in adapter["externalRules"]} == \
        {m["external"]["metric"]["name"] for m in load(HPA)["spec"]["metrics"]}


def test_the_scaled_object_validates_against_the_keda_schema_and_the_schema_catches_mistakes():
    doc = load(KEDA)
    assert keda_errors(doc) == []
    typo = copy.deepcopy(doc)
    typo["spec"]["pollingIntervall"] = 30
    no_query = copy.deepcopy(doc)
    del no_query["spec"]["triggers"][0]["metadata"]["query"]
    number = copy.deepcopy(doc)
    number["spec"]["triggers"][0]["metadata"]["threshold"] = 80  # KEDA's metadata values are strings
    for bad, where in ((typo, "spec"), (no_query, "spec/triggers/0/metadata"), (number, "threshold")):
        errs = keda_errors(bad)
        assert errs and any(where in e for e in errs), errs


def adapter_query(rule: dict, selector: dict[str, str]) -> str:
    """prometheus-adapter's rendering of an external rule for an HPA's
    metric selector."""
    series = rule["seriesQuery"].split("{")[0]
    matchers = ",".join(f'{k}="{v}"' for k, v in sorted(selector.items()))
    return rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)


@pytest.mark.prometheus
def test_the_documented_queries_return_the_exported_forecast_from_a_real_prometheus(tmp_path):
    rep = run_replay(tmp_path / "run", [target("web", DEMO_TRACE)], cycles=4,
                     start_before_end=timedelta(minutes=20))
    m = rep.metrics
    forecast = m.registry.get_sample_value("forescale_forecast_demand",
                                           {"target": "web", "level": "0.9", "horizon": "600"})
    observed = m.registry.get_sample_value("forescale_observed_demand", {"target": "web"})
    assert forecast is not None and observed is not None
    keda = load(KEDA)
    hpa = load(HPA)
    rules = yaml.safe_load(load(ADAPTER)["data"]["config.yaml"])["externalRules"]
    queries = [(t["metadata"]["query"], {"forecast": forecast, "observed": observed}[t["name"]])
               for t in keda["spec"]["triggers"]]
    for metric in hpa["spec"]["metrics"]:
        name = metric["external"]["metric"]["name"]
        rule = next(r for r in rules if r["seriesQuery"].startswith(name + "{"))
        want = forecast if name == "forescale_forecast_demand" else observed
        queries.append((adapter_query(rule, metric["external"]["metric"]["selector"]["matchLabels"]), want))
        selector = metric["external"]["metric"]["selector"]["matchLabels"]
        queries.append((rule["seriesQuery"], selector))  # the adapter's discovery finds the series
    # the docs' example query too
    doc_query = re.search(r"`(max\(forescale_forecast_demand\{target=\"web\"[^`]*)`",
                          (ROOT / "docs" / "observability.md").read_text()).group(1)
    queries.append((doc_query, m.registry.get_sample_value(
        "forescale_forecast_demand", {"target": "web", "level": "0.9", "horizon": "900"})))
    with serve(m, "127.0.0.1", 0) as server, scraping_prometheus(tmp_path / "prom", server.url) as prom:
        for query, want in queries:
            deadline = time.monotonic() + 10
            while True:
                result = httpx.get(f"{prom.url}/api/v1/query", params={"query": query}, timeout=5).json()
                rows = result["data"]["result"]
                if rows or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if isinstance(want, dict):  # a discovery query: the selected series is among them
                assert any(want.items() <= r["metric"].items() for r in rows), (query, rows)
                continue
            assert len(rows) == 1, (query, rows)  # KEDA needs one element
            assert float(rows[0]["value"][1]) == pytest.approx(want), query
