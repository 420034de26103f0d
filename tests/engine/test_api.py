"""The forecast API over a real run's state file, every response validated
against the served OpenAPI document."""

from __future__ import annotations

import httpx
import jsonschema
import pytest

from engine.api import OPENAPI, TargetsView
from engine.metrics import EngineMetrics
from engine.server import serve
from tests.support.replay import demo_replay

HTTP = httpx.Client(timeout=10.0)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    rep = demo_replay(tmp_path_factory.mktemp("api"), cycles=12)
    view = TargetsView.from_file(rep.daemon.config_path)
    with serve(EngineMetrics(), "127.0.0.1", 0, view=view) as server:
        yield server.url, rep


def check(url: str, path: str, status: int = 200) -> dict:
    """GET ``path``; the body must match the document's schema for it."""
    r = HTTP.get(f"{url}{path}")
    assert r.status_code == status, r.text
    doc = HTTP.get(f"{url}/api/v1/openapi.json").json()
    assert doc == OPENAPI
    template = next(p for p in doc["paths"] if _matches(p, path.partition("?")[0]))
    content = doc["paths"][template]["get"]["responses"][str(status)]["content"]["application/json"]
    schema = {**content["schema"], "components": doc["components"]}
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(r.json())
    return r.json()


def _matches(template: str, path: str) -> bool:
    a, b = template.split("/"), path.split("/")
    return len(a) == len(b) and all(x == y or x.startswith("{") for x, y in zip(a, b))


def test_targets(api):
    url, rep = api
    body = check(url, "/api/v1/targets")
    assert body == {"targets": [{"name": "rds-demo", "mode": "observe", "interval_s": 300, "lead_time_s": 600,
                                 "horizons_s": [600, 900]}]}


def test_latest_forecast_is_the_last_cycles(api):
    url, rep = api
    body = check(url, "/api/v1/targets/rds-demo/forecast")
    last = rep.results[-1].forecast
    assert body["made_at"] == last.to_dict()["made_at"]
    assert body["timestamps"] == last.timestamps.tolist()
    assert body["point"] == pytest.approx(last.point.tolist())
    assert set(body["quantiles"]) == {str(q) for q in last.quantiles}
    assert body["quantiles"]["0.9"] == pytest.approx(last.quantiles[0.9].tolist())


def test_latest_decision_with_its_steps(api):
    url, rep = api
    body = check(url, "/api/v1/targets/rds-demo/decision")
    d = rep.results[-1].decision
    assert body["id"] == d.id and body["desired"] == d.desired and body["mode"] == "observe"
    assert [s["reason"] for s in body["steps"]] == [s.reason for s in d.steps]


def test_accuracy_per_horizon_as_ratios(api):
    url, rep = api
    body = check(url, "/api/v1/targets/rds-demo/accuracy?window=1d")
    assert body["window_s"] == 86400
    by_h = {h["horizon_s"]: h for h in body["horizons"]}
    assert 600 in by_h and by_h[600]["n"] > 0
    # the same ratio the metrics export at the lead time (same records)
    assert 0 < by_h[600]["mape_ratio"] < 1 and 0 <= by_h[600]["coverage_ratio"] <= 1


def test_errors_are_json_with_the_documented_schema(api):
    url, rep = api
    body = check(url, "/api/v1/targets/nope/forecast", 404)
    assert "rds-demo" in body["error"]
    check(url, "/api/v1/targets/nope/decision", 404)
    assert "window: not a duration: 'soon'" in check(url, "/api/v1/targets/rds-demo/accuracy?window=soon", 400)[
        "error"]
    assert "longer than 366d" in check(url, "/api/v1/targets/rds-demo/accuracy?window=99999d", 400)["error"]
    # an unknown path under the API is a JSON error too, not the text the other paths get
    r = HTTP.get(f"{url}/api/v1/nope")
    assert r.status_code == 404 and "not found" in r.json()["error"]


def test_a_state_file_not_there_yet_is_503_and_a_fresh_one_404(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("state: s.db\ntargets:\n  - name: web\n    source: {type: replay, path: x.csv}\n"
                   "    policy: {capacity_per_replica: 10}\n")
    with serve(EngineMetrics(), "127.0.0.1", 0, view=TargetsView.from_file(cfg)) as server:
        assert check(server.url, "/api/v1/targets/web/forecast", 503)["error"].startswith("state file not readable")
        assert not (tmp_path / "s.db").exists()  # the API never creates it
        from engine.store import Store

        Store(tmp_path / "s.db").close()
        assert "no forecast recorded yet" in check(server.url, "/api/v1/targets/web/forecast", 404)["error"]
