"""Several resources per target through the live loop: a real trace pair
(the CPU of an RDS instance and the request count of a load balancer, NAB,
the same two weeks) as two resources of one target, each with its own
replay source, forecaster and capacity per replica; a real SQLite state;
the decision log and the audit record as a person reads them."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from actuators.dryrun import DryRunActuator, DryRunConfig
from engine.backtest import DEFAULT_POLICY
from engine.build import build_source
from engine.cli import main
from engine.config import parse_config
from engine.core.clock import ManualClock
from engine.cycle import LiveTarget
from engine.sources.csv import read_csv
from engine.store import Store

from tests.support import TRACES
from tests.support.live import FlakySource

CPU = TRACES / "nab" / "rds_cpu_utilization_e47b3b.csv"
REQUESTS = TRACES / "nab" / "elb_request_count_8c0756.csv"


def _config(tmp_path, **target):
    # one replica carries 3 % of CPU or 25 requests per 5 min (a tenth of
    # each trace's 99th percentile): CPU needs more most of the time, the
    # request bursts need more now and then
    return parse_config({"state": str(tmp_path / "s.db"), "targets": [{
        "name": "db", "interval": "5m", "mode": "auto", "resource": "cpu",
        "source": {"type": "replay", "path": str(CPU)},
        "forecaster": {"name": "seasonal_persistence", "refit_every": "1d", "history": "3d"},
        "policy": {**DEFAULT_POLICY, "capacity_per_replica": 3.0, "min_replicas": 1, "max_replicas": 60,
                   "lead_time": "10m", "hold": "5m", "max_staleness": "15m"},
        "resources": {"requests": {"source": {"type": "replay", "path": str(REQUESTS)},
                                   "capacity_per_replica": 25.0}},
        "actuator": {"type": "dry-run", "initial_capacity": 10}, **target}]})


def _live(cfg, store, requests=None):
    t = cfg.targets[0]
    src = requests or build_source(t.resource_target("requests"), cfg)
    return LiveTarget(t, source=build_source(t, cfg), store=store, resources={"requests": src},
                      actuator=DryRunActuator(DryRunConfig(initial_capacity=10), target="db"))


def _start():
    # a day of both traces as history (the seasonal model needs one), then
    # cycles 4 min past the grid: both traces' samples (:x2 and :x4) are in
    return ManualClock(read_csv(CPU).start + timedelta(days=1, minutes=4))


def test_the_size_follows_the_resource_that_needs_more_and_the_log_names_it(tmp_path, capsys):
    cfg = _config(tmp_path)
    clock = _start()
    winners: dict[str, int] = {"cpu": 0, "requests": 0}
    with Store(cfg.state_path) as store:
        live = _live(cfg, store)
        for _ in range(144):  # half a day of cycles
            res = live.run(clock.now())
            d = res.decision
            assert res.ok and d is not None, res
            sizes = d.extra["resources"]
            assert set(sizes) == {"cpu", "requests"}
            # the recommendation is the larger of the two resources' sizes,
            # and the decision names the one that set it
            assert d.recommendation == max(sizes.values())
            assert sizes[d.extra["resource"]] == d.recommendation
            res_step = d.step("resources")
            assert res_step.reason == "ResourceMax" and res_step.resource == d.extra["resource"]
            # both resources were forecast (each its own model, in its own units)
            assert not d.fallback
            assert [s.resource for s in d.steps if s.name == "forecast"] == ["cpu", "requests"]
            winners[d.extra["resource"]] += 1
            clock.advance(timedelta(minutes=5))
        # the resource that needs more changes over the day: each set the size for a while
        assert winners["cpu"] > 0 and winners["requests"] > 0, winners
        # feedback per resource: forecasts of each are kept under its own series
        assert store.forecast_records("db", with_actual=True)
        assert store.forecast_records("db/requests", with_actual=True)
        last = res.decision
    # the decision log as a person reads it
    assert main(["decisions", "--state", str(cfg.state_path), "--target", "db", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert f"sized for {last.extra['resource']}" in out
    assert "ResourceMax" in out and "cpu: ceil(" in out and "requests: ceil(" in out
    # the console's decision view shows every step with its resource
    import warnings

    with warnings.catch_warnings():  # starlette's test client prefers httpx2; httpx works the same
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from engine.auth import Security
    from engine.console import create_console

    console = TestClient(create_console(cfg, Security.from_config(cfg), clock=clock), base_url="http://console.test")
    page = console.get("/targets/db").text
    assert f"sized for {last.extra['resource']}" in page and "requests: ceil(" in page and "ResourceMax" in page
    # accuracy per resource: the further resource's series is 'db/requests'
    assert main(["accuracy", "--state", str(cfg.state_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["target"] for r in rows} == {"db", "db/requests"}
    assert all(r["n"] > 0 and r["mase"] > 0 for r in rows)
    # the audit record carries the same steps, with their resources
    assert main(["audit", "show", last.id, "--state", str(cfg.state_path), "--json"]) == 0
    story = json.loads(capsys.readouterr().out)
    steps = story["decision"]["steps"]
    # with a digest of each resource's inputs and a summary of its forecast
    ctx = story["decision"]["context"]
    assert ctx["inputs"]["sha256"] != ctx["resources"]["requests"]["inputs"]["sha256"]
    assert ctx["resources"]["requests"]["forecast"]["model"] == "seasonal_persistence"
    assert {(s["name"], s.get("resource")) for s in steps} >= {
        ("capacity", "cpu"), ("capacity", "requests"), ("resources", last.extra["resource"])}


def test_a_failed_fetch_of_one_resource_holds_instead_of_scaling_down(tmp_path):
    # find the first cycle of the replay that scales down, an hour in
    cfg = _config(tmp_path / "a")
    (tmp_path / "a").mkdir()
    clock = _start()
    with Store(cfg.state_path) as store:
        live = _live(cfg, store)
        for k in range(288):
            res = live.run(clock.now())
            if k >= 12 and res.decision.desired < res.decision.current:
                break
            clock.advance(timedelta(minutes=5))
        else:
            pytest.fail("no scale-down in a day of the replay")
    down = res.decision
    # the same replay, with the request count's source down at that cycle
    (tmp_path / "b").mkdir()
    cfg = _config(tmp_path / "b")
    t = cfg.targets[0]
    flaky = FlakySource(build_source(t.resource_target("requests"), cfg))
    clock = _start()
    with Store(cfg.state_path) as store:
        live = _live(cfg, store, requests=flaky)
        for _ in range(k):
            assert live.run(clock.now()).decision is not None
            clock.advance(timedelta(minutes=5))
        flaky.mode = "down"
        res = live.run(clock.now())
        rec = store.decision(res.decision.id)
    d = res.decision
    assert d.current == down.current and down.desired < down.current
    # no scale-down: the decision holds, and says why
    assert d.fallback and d.desired == d.current
    data = {s.resource: s for s in d.steps if s.name == "data"}
    assert data["cpu"].reason == "DataOK"
    assert data["requests"].reason == "NoForecast", data["requests"]
    assert "connection refused" in data["requests"].message
    assert res.details["resource_errors"]["requests"].startswith("metric source: ")
    assert rec["status"] == "hold" and rec["desired"] == rec["current"]


def test_a_single_resource_target_records_decisions_as_before(tmp_path):
    cfg = _config(tmp_path, resources={})
    clock = _start()
    with Store(cfg.state_path) as store:
        t = cfg.targets[0]
        live = LiveTarget(t, source=build_source(t, cfg), store=store,
                          actuator=DryRunActuator(DryRunConfig(initial_capacity=10), target="db"))
        res = live.run(clock.now())
        rec = store.decision(res.decision.id)
    assert "resource" not in res.decision.extra and res.decision.step("resources") is None
    assert all("resource" not in s for s in rec["steps"])


def test_a_target_with_resources_needs_their_sources(tmp_path):
    cfg = _config(tmp_path)
    t = cfg.targets[0]
    with Store(cfg.state_path) as store, pytest.raises(ValueError, match="no metric source given for resources "
                                                                         "requests"):
        LiveTarget(t, source=build_source(t, cfg), store=store, actuator=DryRunActuator(DryRunConfig(), target="db"))


def test_the_daemon_exports_each_resources_size_and_forecast(tmp_path):
    """Through the daemon: what each resource asked for, which one set the
    size and the further resource's forecast reach the metrics, and the
    exposition passes ``promtool check metrics``."""
    import shutil
    import subprocess

    from engine.metrics import EngineMetrics
    from tests.engine.test_daemon import FakeMono, make_daemon, settle
    from tests.support.live import STEP, T0, target_dict, write_config, write_trace

    # cpu flat at 20 (-> 4 replicas), memory 30 GiB at 4 GiB per replica and
    # 0.5 -> 15: memory sets the size
    cpu = write_trace(tmp_path / "cpu.csv", [20.0] * 60)
    mem = write_trace(tmp_path / "mem.csv", [30.0] * 60)
    t = target_dict("web", cpu, mode="observe", resource="cpu",
                    resources={"memory": {"source": {"type": "csv", "path": str(mem)}, "capacity_per_replica": 4}})
    cfg = write_config(tmp_path / "c.yaml", [t])
    mono, clock, metrics = FakeMono(), ManualClock(T0 + 20 * STEP), EngineMetrics()
    d, *_ = make_daemon(cfg, monotonic=mono, clock=clock, metrics=metrics)
    try:
        for _ in range(3):
            d.tick()
            settle(d)
            mono.t += 300
            clock.advance(STEP)
    finally:
        d.shutdown(5)
    get = metrics.registry.get_sample_value
    assert get("forescale_resource_required_capacity", {"target": "web", "resource": "memory"}) == 15
    assert get("forescale_resource_required_capacity", {"target": "web", "resource": "cpu"}) == 4
    assert get("forescale_resource_sizing", {"target": "web", "resource": "memory"}) == 1
    assert get("forescale_resource_sizing", {"target": "web", "resource": "cpu"}) == 0
    assert get("forescale_recommended_capacity", {"target": "web"}) == 15
    assert get("forescale_resource_forecast_demand",
               {"target": "web", "resource": "memory", "horizon": "300", "level": "point"}) == 30.0
    tool = shutil.which("promtool")
    if tool is not None:
        text = metrics.exposition()[0].decode()
        r = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def test_the_emergency_rule_looks_at_the_override_of_the_resource_that_set_the_size(tmp_path):
    from datetime import datetime, timezone

    import numpy as np

    from engine.core.types import Forecast, Observation, ScalingState
    from engine.plans import _emergency
    from policies import decide
    from policies.resources import Signal

    now = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)
    t = _config(tmp_path, mode="approve", approval={"emergency": {"reactive_override": True}}).targets[0]
    mem = t.resource_target("requests").policy

    def fc(v):
        return Forecast(made_at=now, timestamps=int(now.timestamp()) + 300 * np.arange(1, 5),
                        point=np.full(4, v), quantiles={0.9: np.full(4, v)}, model="m")

    state = ScalingState(current=4, observation=Observation(9.0, now))
    # cpu forecast 9 -> 5 replicas at 3 x 0.8, observed 9 -> 4; requests
    # observed 400 (a spike) -> 20 by its reactive override: it sets the size
    d = decide(fc(9.0), state, t.policy, now, resource="cpu",
               resources=[Signal("requests", fc(50.0), Observation(400.0, now), config=mem)])
    assert d.extra["resource"] == "requests" and _emergency(t, d) is not None
    assert "requests: HPA rule on observation 400" in _emergency(t, d)
    # a cpu override below what the requests' forecast asks does not set the size: no emergency
    d = decide(fc(9.0), ScalingState(current=4, observation=Observation(30.0, now)), t.policy, now, resource="cpu",
               resources=[Signal("requests", fc(500.0), Observation(50.0, now), config=mem)])
    cpu_reactive = next(s for s in d.steps if s.name == "reactive" and s.resource == "cpu")
    assert cpu_reactive.reason == "ReactiveOverride" and d.extra["resource"] == "requests"
    assert _emergency(t, d) is None


def test_a_further_resources_model_is_checkpointed_and_restored_after_a_restart(tmp_path):
    cfg = _config(tmp_path)
    clock = _start()
    with Store(cfg.state_path) as store:
        live = _live(cfg, store)
        for _ in range(2):
            assert live.run(clock.now()).ok
            clock.advance(timedelta(minutes=5))
        fitted = live.runner.resources["requests"].last_fit
    saved = tmp_path / "s.db.models" / "db" / "requests.json"
    assert saved.exists() and json.loads(saved.read_text())["name"] == "seasonal_persistence"
    with Store(cfg.state_path) as store:  # a restart: a new process would build this afresh
        live = _live(cfg, store)
        res = live.run(clock.now())
    assert "requests" in res.details["resource_models"]
    assert res.details["resource_models"]["requests"].startswith("model ")
    assert live.runner.resources["requests"].last_fit == fitted  # not refit: restored
