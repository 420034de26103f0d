"""Fleets: targets from label sets (against a real Prometheus 2.42 with
backfilled series) and the batched cycle of a template's targets (one
batched call of the global LSTM, one transaction, independent decisions)."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine.cli import main
from engine.config import load_config, parse_config
from engine.core.clock import ManualClock
from engine.core.errors import ConfigError
from engine.core.units import from_epoch
from engine.daemon import Daemon
from engine.store import Store
from tests.support.live import Platform
from tests.support.prom import (STEP, TRACE_A, TRACE_B, PrometheusServer, Trace, backfill, load_trace,
                                require_binaries)

DAY = 86400
POLICY = {"capacity_per_replica": 10, "target_utilization": 0.5, "min_replicas": 1, "max_replicas": 50,
          "lead_time": "5m", "hold": "5m", "max_staleness": "15m", "margin": {"quantile": None},
          "stabilization": {"scale_up": "0s", "scale_down": "0s"},
          "scale_up": {"policies": []}, "scale_down": {"policies": []}}


# ------------------------------------------------------------ a real Prometheus
class Fleet:
    def __init__(self, url: str, end: int) -> None:
        self.url, self.end = url, end


@pytest.fixture(scope="module")
def fleet_prometheus(tmp_path_factory):
    """``storage_used_bytes{user, group, volume}``: alice (two volumes) and
    bob in g1, carol in g2 -- whose series is absent for the two days
    before the last two (it goes away and comes back)."""
    prom, tool = require_binaries()
    work = tmp_path_factory.mktemp("fleet-prom")
    end = int(__import__("time").time()) // STEP * STEP - STEP
    ta, va = load_trace(TRACE_A, end)
    tb, vb = load_trace(TRACE_B, end)
    away = (ta > end - 4 * DAY) & (ta <= end - 2 * DAY)
    traces = [
        Trace("storage_used_bytes", {"user": "alice", "group": "g1", "volume": "v1"}, ta, va),
        Trace("storage_used_bytes", {"user": "alice", "group": "g1", "volume": "v2"}, ta, va),
        Trace("storage_used_bytes", {"user": "bob", "group": "g1", "volume": "v1"}, tb, vb),
        Trace("storage_used_bytes", {"user": "carol", "group": "g2", "volume": "v1"}, ta[~away], 2 * va[~away]),
    ]
    server = PrometheusServer(prom, backfill(tool, traces, work), work).start()
    try:
        yield Fleet(server.url, end)
    finally:
        server.stop()


def template(url: str, **over) -> dict:
    t = {"name": "storage",
         "source": {"type": "prometheus", "url": url, "query": "sum by (user, group) (storage_used_bytes)"},
         "target_name": "storage-{user}-{group}", "discover_every": "5m",
         "interval": "5m", "mode": "auto",
         "forecaster": {"name": "persistence", "history": "2h", "refit_every": "1h"},
         "policy": POLICY,
         "actuator": {"type": "kubernetes", "namespace": "{group}", "name": "quota-{user}"}}
    t.update(over)
    return t


def write(path: Path, *templates: dict, targets: list | None = None) -> Path:
    doc = {"state": str(path.parent / "state.db"), "server": {"enabled": False}, "templates": list(templates)}
    if targets:
        doc["targets"] = targets
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.prometheus
def test_forescale_targets_lists_one_target_per_label_set_with_the_labels_put_in(fleet_prometheus, tmp_path,
                                                                                   capsys):
    cfg = write(tmp_path / "fleet.yaml", template(fleet_prometheus.url))
    assert main(["targets", "--config", str(cfg), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (tp,) = doc["templates"]
    got = {t["name"]: t for t in tp["targets"]}
    # now: carol's series is back (it was away between 4 and 2 days ago)
    assert sorted(got) == ["storage-alice-g1", "storage-bob-g1", "storage-carol-g2"]
    assert got["storage-carol-g2"]["labels"] == {"group": "g2", "user": "carol"}
    assert got["storage-carol-g2"]["actuator"]["namespace"] == "g2"
    assert got["storage-alice-g1"]["actuator"]["name"] == "quota-alice"
    assert main(["targets", "--config", str(cfg)]) == 0
    assert 'storage-bob-g1  {group="g1", user="bob"}' in capsys.readouterr().out


@pytest.mark.prometheus
def test_a_series_without_a_label_the_template_names_is_reported_naming_the_field(fleet_prometheus, tmp_path,
                                                                                   capsys):
    # 'by (user)' has no group: known at load, one error naming the placeholder
    bad = template(fleet_prometheus.url, source={"type": "prometheus", "url": fleet_prometheus.url,
                                                 "query": "sum by (user) (storage_used_bytes)"})
    cfg = write(tmp_path / "bad.yaml", bad)
    assert main(["targets", "--config", str(cfg)]) == 2
    assert "templates[0]: placeholder {group}: the query's result has only the labels user" in capsys.readouterr().err
    # a query whose labels are only known when asked: reported per series
    ok = template(fleet_prometheus.url, source={"type": "prometheus", "url": fleet_prometheus.url,
                                                "query": "storage_used_bytes"}, target_name="s-{user}",
                  actuator={"type": "dry-run"})
    cfg = write(tmp_path / "dup.yaml", ok)
    assert main(["targets", "--config", str(cfg)]) == 1  # alice's two volumes make one name
    err = capsys.readouterr().err
    assert "templates[storage].target_name: series" in err and "both make the target name 's-alice'" in err


@pytest.mark.parametrize("over, message", [
    ({"target_name": "s-{user"}, "templates[0]: target_name: 's-{user' has a brace that is not part of"),
    ({"polcy": {}}, "templates[0].polcy: unknown field"),
    ({"source": {"type": "csv", "path": "x.csv"}}, "a template's source must be prometheus"),
    ({"discover_every": "0s"}, "discover_every (0:00:00) must be positive"),
    ({"actuator": {"type": "kubernetes", "namespace": "{grp}", "name": "q"}},
     "templates[0]: placeholder {grp}: the query's result has only the labels group, user"),
    ({"policy": {**POLICY, "max_replicas": 0}}, "templates[0].policy"),
    ({"name": "has space"}, "templates[0].name"),
])
def test_a_bad_template_is_one_error_naming_the_field(over, message):
    doc = {"server": {"enabled": False}, "templates": [template("http://127.0.0.1:9", **over)]}
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert message in str(e.value)
    assert str(e.value).count("\n") == 0  # one line


def test_two_templates_of_one_name_and_a_config_with_neither_targets_nor_templates_are_refused():
    with pytest.raises(ConfigError, match="template names must be unique; repeated: storage"):
        parse_config({"templates": [template("http://127.0.0.1:9"), template("http://127.0.0.1:9")]})
    with pytest.raises(ConfigError, match="targets: Tuple should have at least 1 item"):
        parse_config({"templates": []})


@pytest.mark.prometheus
def test_the_daemon_adds_and_retires_targets_as_series_come_and_go_and_a_series_back_finds_its_state(
        fleet_prometheus, tmp_path):
    end = fleet_prometheus.end
    # a scale-down waits six days for lower recommendations: only a target
    # that kept its state remembers the higher one of five days ago
    policy = {**POLICY, "stabilization": {"scale_up": "0s", "scale_down": "6d"}}
    cfg = write(tmp_path / "fleet.yaml", template(fleet_prometheus.url, policy=policy))
    platforms: dict[str, Platform] = {}
    clock = ManualClock(from_epoch(end - 5 * DAY))
    mono = [1000.0]
    results = []
    d = Daemon(cfg, clock=clock, monotonic=lambda: mono[0], on_result=results.append,
               build_actuator=lambda t, c=None: platforms.setdefault(t.name, Platform(capacity=1)))
    tw = d.templates["storage"]

    def cycle(at: int) -> set[str]:
        clock.set(from_epoch(at))
        results.clear()
        d.tick()
        assert tw.wait(60)
        mono[0] += 300
        return {r.target for r in results}

    try:
        assert cycle(end - 5 * DAY) == {"storage-alice-g1", "storage-bob-g1", "storage-carol-g2"}
        first = d.lock_store.load_state("storage-carol-g2")
        assert first is not None and first.current > 1 and first.events  # scaled up from 1: a scale event
        assert cycle(end - 3 * DAY) == {"storage-alice-g1", "storage-bob-g1"}  # carol's series is away
        assert "storage-carol-g2" not in tw.members
        assert cycle(end) == {"storage-alice-g1", "storage-bob-g1", "storage-carol-g2"}
        carol = [r for r in results if r.target == "storage-carol-g2"][0].decision
        # the demand now asks for fewer, but the state kept the first cycle's recommendation
        assert carol.desired == first.current and "ScaleDownStabilized" in carol.reasons
        ats = [r["at"] for r in d.lock_store.decisions("storage-carol-g2", limit=10)]
        assert len(ats) == 2  # decided at the first and the last cycle, not while away
        # each target's history is its own series out of the one query (alice: two volumes summed)
        _, va = load_trace(TRACE_A, end)
        _, vb = load_trace(TRACE_B, end)
        assert d.lock_store.cached_samples("storage-alice-g1").values[-1] == pytest.approx(2 * va[-1])
        assert d.lock_store.cached_samples("storage-bob-g1").values[-1] == pytest.approx(vb[-1])
        assert d.lock_store.cached_samples("storage-carol-g2").values[-1] == pytest.approx(2 * va[-1])
    finally:
        d.shutdown(5)
