"""Fleets: targets from label sets (against a real Prometheus 2.42 with
backfilled series) and the batched cycle of a template's targets (one
batched call of the global LSTM, one transaction, independent decisions)."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine.cli import main
from engine.config import load_config, parse_config
from engine.core.clock import ManualClock
from engine.core.errors import ConfigError
from engine.core.units import from_epoch, isoformat
from engine.daemon import Daemon
from engine.store import Store, open_store
from tests.support.executor_tasks import gone
from tests.support.live import Platform
from tests.support.postgres import pg_server, pg_url  # noqa: F401 - fixtures
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


class Driven:
    """A real daemon on clocks driven by hand (``start``: its first cycle's
    time): :meth:`cycle` runs one interval's cycles, at ``at`` or
    ``step`` after the last, and waits for them."""

    def __init__(self, cfg: Path, start, step: timedelta = timedelta(minutes=5)) -> None:
        self.clock, self.mono, self.results, self.step = ManualClock(start), [1000.0], [], step
        self.d = Daemon(cfg, clock=self.clock, monotonic=lambda: self.mono[0], on_result=self.results.append,
                        build_actuator=lambda t, c=None: Platform(capacity=3))
        self.ran = False

    def cycle(self, at=None, wait: float = 120) -> dict:
        if at is not None:
            self.clock.set(at)
        elif self.ran:
            self.clock.advance(self.step)
        self.ran = True
        self.results.clear()
        self.d.tick()
        for w in [*self.d.templates.values(), *self.d.workers.values()]:
            assert w.wait(wait)
        self.mono[0] += self.step.total_seconds()
        return {r.target: r for r in self.results}


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
    # a plugin's name is shown, as for a file's target (it said <hidden>), once
    ({"actuator": {"type": "kubernets", "name": "q-{user}"}},
     "templates[0].actuator.type: unknown actuator 'kubernets'; known: "),
    # a placeholder cannot choose the plugin (it said "unknown actuator 'x'")
    ({"actuator": {"type": "{user}", "name": "q"}},
     "templates[0]: actuator.type: '{user}': a placeholder cannot choose the actuator's plugin"),
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
    from prometheus_client import generate_latest

    from engine.metrics import EngineMetrics

    metrics = EngineMetrics()
    d = Daemon(cfg, clock=clock, monotonic=lambda: mono[0], on_result=results.append, metrics=metrics,
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
        assert 'target="storage-carol-g2"' in generate_latest(metrics.registry).decode()
        assert cycle(end - 3 * DAY) == {"storage-alice-g1", "storage-bob-g1"}  # carol's series is away
        assert "storage-carol-g2" not in tw.members
        # and so are her metric series (frozen, they kept her alerts firing)
        assert 'target="storage-carol-g2"' not in generate_latest(metrics.registry).decode()
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


def _checkpoints(store) -> set[str]:
    if getattr(store, "keeps_models", False):
        return {r[0] for r in store.db.execute("SELECT name FROM models").fetchall()}
    folder = Path(store.path).parent / (Path(store.path).name + ".models")
    return {p.stem for p in folder.glob("*.json")}


@pytest.mark.prometheus
@pytest.mark.parametrize("state", ["postgresql", "sqlite"])
def test_a_retired_targets_checkpoint_is_pruned_after_the_retention_and_a_live_or_recent_one_is_kept(
        fleet_prometheus, tmp_path, request, state):
    end = fleet_prometheus.end
    # models refitted every ten days: alice's and bob's stay older than the
    # retention while they are live
    tp = template(fleet_prometheus.url, mode="dry-run",
                  forecaster={"name": "persistence", "history": "2h", "refit_every": "10d"})
    doc = {"state": request.getfixturevalue("pg_url") if state == "postgresql" else str(tmp_path / "state.db"),
           "server": {"enabled": False}, "retention": {"models": "1d"}, "templates": [tp]}
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    run = Driven(cfg, from_epoch(end - 4 * DAY))
    d = run.d
    everyone = {"storage-alice-g1", "storage-bob-g1", "storage-carol-g2"}

    def cycle(at: int) -> set[str]:
        by = run.cycle(from_epoch(at))
        d.housekeeping()  # what the daemon does once an hour
        return set(by)

    try:
        assert cycle(end - 4 * DAY) == everyone
        assert _checkpoints(d.lock_store) == everyone
        # carol's series goes away: retired 12 h ago, less than the retention: her model is kept
        assert cycle(end - 4 * DAY + 12 * 3600) == everyone - {"storage-carol-g2"}
        assert _checkpoints(d.lock_store) == everyone
        # retired for 47 h: her checkpoint goes; alice's and bob's, fitted
        # as long ago, stay (they are live)
        assert cycle(end - 2 * DAY - 3600) == everyone - {"storage-carol-g2"}
        assert _checkpoints(d.lock_store) == everyone - {"storage-carol-g2"}
        assert d.prune_models(run.clock.now()) == []  # nothing more to prune
        # her state was kept; she comes back and fits a new model
        assert cycle(end) == everyone
        carol = [r for r in run.results if r.target == "storage-carol-g2"][0]
        assert carol.ok and "restored" not in carol.details.get("model", "")
        assert _checkpoints(d.lock_store) == everyone
        assert len(d.lock_store.decisions("storage-carol-g2", limit=10)) == 2
    finally:
        d.shutdown(5)


# ------------------------------------------------------------ the batched cycle
from engine.build import build_targets  # noqa: E402
from engine.core.types import Series  # noqa: E402
from engine.fleet import run_batch  # noqa: E402
from forecasters.lstm import LevelFreeForecaster, LevelFreeLSTM  # noqa: E402
from tests.support.live import T0, FlakySource, target_dict, write_config, write_trace  # noqa: E402

FIVE = 300
DAYS = 4
NOW = T0 + timedelta(days=DAYS) - timedelta(minutes=5)


def daily(seed: int, level: float) -> np.ndarray:
    t = np.arange(DAYS * 288)
    rng = np.random.default_rng(seed)
    return level + 0.3 * level * np.sin(2 * np.pi * t / 288) + rng.normal(0, 0.02 * level, t.size)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small level-free global LSTM, trained beforehand on other series."""
    start = int(T0.timestamp())
    train = {f"s{i}": Series(start + FIVE * np.arange(DAYS * 288), daily(100 + i, 50.0 * (i + 1)))
             for i in range(3)}
    model = LevelFreeLSTM({"hidden_size": 16, "head_width": 32, "epochs": 4, "origin_stride": 3,
                           "device": "cpu"}).fit(train)
    path = tmp_path_factory.mktemp("global") / "global.pt"
    model.save(path)
    return path


def fleet_config(tmp_path: Path, checkpoint: Path, n: int, *, mode: str = "dry-run", extra: list | None = None,
                 state: str = "state.db") -> Path:
    targets = []
    for i in range(n):
        trace = write_trace(tmp_path / f"t{i}.csv", daily(i, 40.0 + 7 * i))
        targets.append(target_dict(f"t{i}", trace, mode=mode, forecaster={
            "name": "lstm_global", "history": "3d", "refit_every": "1d",
            "params": {"checkpoint": str(checkpoint), "device": "cpu"}},
            policy={"margin": {"quantile": 0.9}}))
    cfg = write_config(tmp_path / "fleet.yaml", targets + list(extra or []))
    doc = yaml.safe_load(cfg.read_text())
    doc["state"] = str(tmp_path / state)
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return cfg


def batch(cfg: Path, *, sources: dict | None = None, platforms: dict | None = None):
    config = load_config(cfg)
    store = open_store(config)
    members = build_targets(config, store)
    for m in members:
        if sources and m.target.name in sources:
            m.source = sources[m.target.name](m.source)
        m.actuator = (platforms or {}).get(m.target.name) or Platform(capacity=5)
    return members, store


def decisions(report) -> dict[str, tuple]:
    return {r.target: (r.decision.current, r.decision.desired, r.decision.fallback, tuple(r.decision.reasons))
            for r in report.results}


def test_targets_on_one_global_model_are_decided_from_one_batched_forecast(tmp_path, checkpoint, monkeypatch):
    cfg = fleet_config(tmp_path, checkpoint, 6)
    calls = []
    real = LevelFreeLSTM.predict_many
    monkeypatch.setattr(LevelFreeLSTM, "predict_many",
                        lambda self, h, *a, **k: calls.append(len(h)) or real(self, h, *a, **k))
    members, store = batch(cfg)
    report = run_batch(members, NOW, store)
    assert calls == [6] and (report.batched, report.calls) == (6, 1)  # six targets, one forward pass
    for r in report.results:
        assert r.ok and not r.decision.fallback
        assert r.forecast.model == "lstm_global"
        rec = store.decision(r.decision.id)
        assert rec["status"] == "dry-run" and rec["desired"] == r.decision.desired
    # the same decisions as each target's own cycle makes alone (no batch)
    calls.clear()
    (tmp_path / "alone").mkdir()
    alone_cfg = fleet_config(tmp_path / "alone", checkpoint, 6)
    solo, solo_store = batch(alone_cfg)
    alone = {m.target.name: m.run(NOW) for m in solo}
    assert len(calls) == 6  # one call per target
    for r in report.results:
        a = alone[r.target]
        assert (a.decision.desired, a.decision.reasons) == (r.decision.desired, r.decision.reasons)
        np.testing.assert_allclose(a.forecast.quantiles[0.9], r.forecast.quantiles[0.9], rtol=1e-6)


class _Raising:
    def __init__(self, inner, exc: Exception) -> None:
        self.inner, self.exc = inner, exc

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def apply(self, desired, *, decision_id):
        raise self.exc


def test_a_batched_cycle_on_a_postgresql_state_decides_and_records_as_on_sqlite(tmp_path, checkpoint, pg_url):
    """The batch's one transaction and its per-write savepoints on the
    shared state several replicas use: every target's decision recorded,
    the same decisions as on a state file."""
    (tmp_path / "file").mkdir()
    on_file, file_store = batch(fleet_config(tmp_path / "file", checkpoint, 4))
    want = decisions(run_batch(on_file, NOW, file_store))
    cfg = fleet_config(tmp_path, checkpoint, 4)
    doc = yaml.safe_load(cfg.read_text())
    doc["state"] = pg_url
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    members, store = batch(cfg)
    assert store.shared  # really the PostgreSQL store
    report = run_batch(members, NOW, store)
    assert decisions(report) == want
    for r in report.results:
        assert r.ok and store.decision(r.decision.id)["status"] == "dry-run"
    assert {d["target"] for d in store.decisions(limit=10)} == {"t0", "t1", "t2", "t3"}


def test_a_bad_target_never_changes_the_others_decisions(tmp_path, checkpoint):
    from engine.core.errors import TransientActuatorError

    (tmp_path / "good").mkdir()
    good = fleet_config(tmp_path / "good", checkpoint, 4, mode="auto")
    base, base_store = batch(good)
    want = decisions(run_batch(base, NOW, base_store))
    # the same four, and: a target whose source is down, one whose history
    # is all NaN, one whose actuator raises when it must scale
    nan_trace = write_trace(tmp_path / "nan.csv", [float("nan")] * (DAYS * 288))
    spike = write_trace(tmp_path / "spike.csv", daily(9, 400.0))
    extra = [target_dict(n, p, mode="auto", forecaster={
        "name": "lstm_global", "history": "3d", "params": {"checkpoint": str(checkpoint), "device": "cpu"}})
        for n, p in (("down", spike), ("nans", nan_trace), ("broken", spike))]
    bad_cfg = fleet_config(tmp_path, checkpoint, 4, mode="auto", extra=extra)

    def down(inner):
        s = FlakySource(inner)
        s.mode = "down"
        return s

    broken = _Raising(Platform(capacity=5), TransientActuatorError("the API is down"))
    members, store = batch(bad_cfg, sources={"down": down}, platforms={"broken": broken})
    got = run_batch(members, NOW, store)
    by = {r.target: r for r in got.results}
    assert {k: v for k, v in decisions(got).items() if k in want} == want
    assert got.batched == 5  # the four and 'broken' (its forecast is fine; its platform is not)
    for name in ("down", "nans"):
        d = by[name].decision
        assert d.fallback and d.desired >= d.current  # reactive, never down
    assert by["down"].fetch_error.startswith("metric source:")
    assert "connection refused" in json.dumps(store.decision(by["down"].decision.id))
    assert by["broken"].status == "failed" and "the API is down" in by["broken"].actuation_error
    assert store.decision(by["broken"].decision.id)["status"] == "failed"


def test_a_failed_batched_call_falls_back_to_reactive_for_each_target_with_the_reason(tmp_path, checkpoint,
                                                                                    monkeypatch):
    cfg = fleet_config(tmp_path, checkpoint, 3, mode="auto")

    def boom(cls, members, *a, **k):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(LevelFreeForecaster, "predict_batch", classmethod(boom))
    members, store = batch(cfg, platforms={f"t{i}": Platform(capacity=40) for i in range(3)})
    report = run_batch(members, NOW, store)
    for r in report.results:
        d = r.decision
        assert d.fallback and d.desired >= d.current == 40  # the demand asks for fewer: held
        assert "batched forecast failed: RuntimeError: CUDA error: out of memory" in json.dumps(store.decision(d.id))


def test_a_batched_cycle_records_in_one_transaction_however_many_targets(tmp_path, checkpoint, monkeypatch):
    def commits(n: int) -> int:
        folder = tmp_path / f"n{n}"
        folder.mkdir()
        members, store = batch(fleet_config(folder, checkpoint, n))
        run_batch(members, NOW, store)  # the first cycle fills the sample cache
        seen = []
        store.db.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None)
        report = run_batch(members, NOW + timedelta(minutes=5), store)
        assert all(r.ok for r in report.results) and len(report.results) == n
        return len(seen)

    few, many = commits(2), commits(12)
    assert few == many <= 3  # gather, decide, record: one commit each, whatever the count
    # a transaction holds the state file's write lock: at most so many targets' writes in one
    monkeypatch.setattr("engine.fleet.WRITES_PER_TRANSACTION", 5)
    assert commits(13) == 3 * many  # 5 + 5 + 3 targets


@pytest.mark.prometheus
def test_forescale_once_runs_each_template_as_one_batched_cycle(fleet_prometheus, tmp_path, capsys):
    cfg = write(tmp_path / "fleet.yaml", template(fleet_prometheus.url, mode="dry-run", actuator={"type": "dry-run"}))
    assert main(["once", "--config", str(cfg), "--json"]) == 0
    got = {r["target"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(got) == ["storage-alice-g1", "storage-bob-g1", "storage-carol-g2"]
    assert all(r["status"] in ("dry-run", "hold") and not r["decision"]["fallback"] for r in got.values()), got
    with Store(load_config(cfg).state_path) as store:
        assert {d["target"] for d in store.decisions(limit=10)} == set(got)
    assert main(["once", "--config", str(cfg), "--target", "storage-nobody-g9"]) == 2
    assert "no target named 'storage-nobody-g9'" in capsys.readouterr().err


@pytest.mark.prometheus
def test_a_reloaded_template_takes_effect_at_its_next_cycle_and_a_bad_one_is_rejected(fleet_prometheus, tmp_path):
    end = fleet_prometheus.end
    cfg = write(tmp_path / "fleet.yaml", template(fleet_prometheus.url, mode="dry-run", actuator={"type": "dry-run"}))
    clock, mono, results = ManualClock(from_epoch(end - 600)), [1000.0], []
    d = Daemon(cfg, clock=clock, monotonic=lambda: mono[0], on_result=results.append)
    try:
        d.tick()
        assert d.templates["storage"].wait(60) and {r.status for r in results} <= {"dry-run", "hold"}
        bad = yaml.safe_load(cfg.read_text())
        bad["templates"][0]["policy"] = {**POLICY, "max_replicas": 0}
        cfg.write_text(yaml.safe_dump(bad))
        assert d.reload() is False  # rejected: the running template stays
        good = yaml.safe_load(cfg.read_text())
        good["templates"][0]["policy"] = POLICY
        good["templates"][0]["mode"] = "observe"
        cfg.write_text(yaml.safe_dump(good))
        assert d.reload() is True
        results.clear()
        clock.set(from_epoch(end))
        mono[0] += 300
        d.tick()
        assert d.templates["storage"].wait(60)
        assert len(results) == 3 and {r.status for r in results} == {"observed"}
    finally:
        d.shutdown(5)


def test_validate_names_each_template_and_the_labels_it_uses(tmp_path, capsys):
    cfg = write(tmp_path / "fleet.yaml", template("http://127.0.0.1:9"))
    assert main(["validate", "--config", str(cfg), "--json"]) == 0
    (tp,) = json.loads(capsys.readouterr().out)["templates"]
    assert (tp["name"], tp["labels"], tp["discover_every_s"], tp["mode"]) == ("storage", ["user", "group"], 300, "auto")
    assert main(["validate", "--config", str(cfg)]) == 0
    assert "valid (0 target(s), 1 template(s))" in capsys.readouterr().out


@pytest.mark.prometheus
def test_the_forecast_api_lists_and_serves_a_templates_targets(fleet_prometheus, tmp_path):
    import httpx

    from engine.api import TargetsView
    from engine.metrics import EngineMetrics
    from engine.server import serve

    end = fleet_prometheus.end
    cfg = write(tmp_path / "fleet.yaml", template(fleet_prometheus.url, mode="dry-run", actuator={"type": "dry-run"}))
    d = Daemon(cfg, clock=ManualClock(from_epoch(end)), monotonic=lambda: 1000.0)
    try:
        d.tick()
        assert d.templates["storage"].wait(60)
        with serve(EngineMetrics(), "127.0.0.1", 0, view=TargetsView(lambda: d.config, d.discovered_targets)) as srv:
            listed = httpx.get(f"{srv.url}/api/v1/targets", timeout=10).json()["targets"]
            assert sorted(t["name"] for t in listed) == ["storage-alice-g1", "storage-bob-g1", "storage-carol-g2"]
            r = httpx.get(f"{srv.url}/api/v1/targets/storage-bob-g1/forecast", timeout=10)
            assert r.status_code == 200 and r.json()["target"] == "storage-bob-g1"
    finally:
        d.shutdown(5)


@pytest.mark.prometheus
def test_a_template_target_asked_alone_fetches_only_its_own_series(fleet_prometheus):
    from engine.fleet import SeriesSlice, TemplateFetch
    from engine.sources.prometheus import PrometheusConfig, PrometheusSource

    end = fleet_prometheus.end
    tp = parse_config({"templates": [template(fleet_prometheus.url)]}).templates[0]
    bob = tp.expand({"user": "bob", "group": "g1"})
    assert bob.source.series == {"user": "bob", "group": "g1"}
    own = PrometheusSource(bob.source, interval=timedelta(minutes=5))
    alone = SeriesSlice(TemplateFetch(None), frozenset(bob.source.series.items()), own)  # no batch loaded
    got = alone.fetch(from_epoch(end - 3600), from_epoch(end))
    _, vb = load_trace(TRACE_B, end)
    np.testing.assert_allclose(got.values, vb[-12:])
    # the same query without the label set: three series, refused as ambiguous
    whole = PrometheusSource(PrometheusConfig(url=fleet_prometheus.url, query=tp.source.query))
    with pytest.raises(ConfigError, match="returned 3 series"):
        whole.fetch(from_epoch(end - 3600), from_epoch(end))


@pytest.mark.prometheus
def test_a_discovered_target_whose_actuator_is_refused_is_left_out_and_the_others_run(fleet_prometheus, tmp_path,
                                                                                      caplog):
    """A template target's actuator is checked when the target appears, as
    the file's targets are at startup: one whose platform object does not
    exist is left out with the reason; the others are decided."""
    from engine.core.errors import PermanentActuatorError

    class Missing(Platform):
        def validate(self) -> None:
            raise PermanentActuatorError("deployment g1/quota-bob not found")

    cfg = write(tmp_path / "fleet.yaml", template(fleet_prometheus.url))
    clock = ManualClock(from_epoch(fleet_prometheus.end))
    results = []
    d = Daemon(cfg, clock=clock, monotonic=lambda: 1000.0, on_result=results.append,
               build_actuator=lambda t, c=None: Missing(capacity=1) if t.name == "storage-bob-g1"
               else Platform(capacity=1))
    try:
        with caplog.at_level("ERROR", logger="forescale.daemon"):
            d.tick()
            assert d.templates["storage"].wait(60)
        assert {r.target for r in results} == {"storage-alice-g1", "storage-carol-g2"}
        assert "storage-bob-g1" not in d.templates["storage"].members
        assert any("storage-bob-g1 left out" in r.getMessage() and "quota-bob not found" in r.getMessage()
                   for r in caplog.records)
    finally:
        d.shutdown(5)


# ------------------------------------------------- select and fit see templates
def one_daemon_cycle(cfg: Path, at: int) -> list:
    """The results of the daemon's first batched cycle of the 'storage' template at ``at``."""
    results: list = []
    d = Daemon(cfg, clock=ManualClock(from_epoch(at)), monotonic=lambda: 1000.0, on_result=results.append)
    try:
        d.tick()
        assert d.templates["storage"].wait(60)
    finally:
        d.shutdown(5)
    return results


@pytest.mark.prometheus
def test_select_chooses_a_template_targets_model_and_the_daemons_member_then_forecasts_with_it(
        fleet_prometheus, tmp_path, capsys):
    end = fleet_prometheus.end
    tp = template(fleet_prometheus.url, mode="dry-run", actuator={"type": "dry-run"},
                  forecaster={"name": "persistence", "history": "3d", "refit_every": "6h"})
    cfg = write(tmp_path / "fleet.yaml", tp)
    out = tmp_path / "chosen.yaml"
    at = isoformat(from_epoch(end))
    assert main(["select", "--config", str(cfg), "--target", "storage-alice-g1", "--candidate", "seasonal_naive",
                 "--candidate", "persistence", "--folds", "2", "--executor", "local", "--workers", "1",
                 "--at", at, "--write-config", str(out), "--json", "-q"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (sel,) = doc["targets"]  # only the one asked, found by the template's query under the daemon's name
    assert sel["target"] == "storage-alice-g1" and doc["errors"] == []
    assert sel["choice"]["name"] == "seasonal_naive", sel  # a daily trace: yesterday beats the last sample
    assert doc["written"]["targets"] == ["storage-alice-g1"]
    block = yaml.safe_load(out.read_text())["templates"][0]
    assert block["overrides"] == {"storage-alice-g1": {"forecaster": {"name": "seasonal_naive", "history": "3d",
                                                                      "refit_every": "6h"}}}
    # the daemon on the written config: alice's member forecasts with the
    # chosen model, the template's other targets keep the template's
    got = {r.target: r for r in one_daemon_cycle(out, end)}
    assert sorted(got) == ["storage-alice-g1", "storage-bob-g1", "storage-carol-g2"]
    assert got["storage-alice-g1"].forecast.model == "seasonal_naive"
    assert not got["storage-alice-g1"].decision.fallback
    assert got["storage-bob-g1"].forecast.model == "persistence"
    # every target, the template's included: the file's target beside them
    static = {"name": "web", "source": {"type": "prometheus", "url": fleet_prometheus.url,
                                        "query": 'sum(storage_used_bytes{user="bob"})'},
              "forecaster": {"name": "persistence", "history": "3d"}, "policy": POLICY}
    both = write(tmp_path / "both.yaml", tp, targets=[static])
    assert main(["select", "--config", str(both), "--candidate", "persistence", "--folds", "1",
                 "--executor", "local", "--workers", "1", "--at", at, "--json", "-q"]) == 0
    names = [t["target"] for t in json.loads(capsys.readouterr().out)["targets"]]
    assert names == ["web", "storage-alice-g1", "storage-bob-g1", "storage-carol-g2"]
    assert main(["select", "--config", str(cfg), "--target", "storage-nobody-g9", "--at", at]) == 2
    assert "no target named 'storage-nobody-g9': not in the file, and no template has it now" in \
        capsys.readouterr().err


@pytest.mark.prometheus
def test_fit_fits_a_template_targets_model_and_the_daemons_member_restores_it(fleet_prometheus, tmp_path,
                                                                              capsys, caplog):
    pytest.importorskip("statsmodels")
    end = fleet_prometheus.end
    cfg = write(tmp_path / "fleet.yaml", template(
        fleet_prometheus.url, mode="dry-run", actuator={"type": "dry-run"},
        forecaster={"name": "holt_winters", "history": "3d", "refit_every": "1d"}))
    assert main(["fit", "--config", str(cfg), "--executor", "local", "--workers", "1",
                 "--at", isoformat(from_epoch(end)), "--json", "-q"]) == 0
    rows = json.loads(capsys.readouterr().out)["targets"]
    assert sorted(rows) == ["storage-alice-g1", "storage-bob-g1", "storage-carol-g2"]
    assert all(r["fitted"].startswith("holt_winters:") for r in rows.values()), rows
    # with an executor: section, opened only for a refit that is due (a
    # Dask LocalCluster started at every start, to fit nothing)
    doc = yaml.safe_load(cfg.read_text())
    cfg.write_text(yaml.safe_dump({**doc, "executor": {"kind": "local", "workers": 1}}, sort_keys=False))
    import logging

    with caplog.at_level(logging.INFO, logger="forescale"):
        results = one_daemon_cycle(cfg, end)
    assert len(results) == 3
    for r in results:  # each member's first cycle restored its fitted model: no fit of its own
        assert r.details.get("model", "").startswith(f"model {rows[r.target]['fitted']} restored"), r.details
        assert r.forecast.model_version == rows[r.target]["fitted"]
    assert not [m for m in caplog.messages if m.startswith("executor local:")], caplog.messages


def test_a_templates_override_is_validated_at_load_naming_the_field(tmp_path):
    tp = template("http://127.0.0.1:9", overrides={"storage-a-g": {"forecaster": {"name": "nosuch"}}})
    with pytest.raises(ConfigError, match=r"templates\[0\]\.overrides\.storage-a-g\.forecaster"):
        load_config(write(tmp_path / "c.yaml", tp))
    tp = template("http://127.0.0.1:9", overrides={"storage-a-g": {"source": {"type": "csv"}}})
    with pytest.raises(ConfigError, match=r"overrides\.storage-a-g\.source: an override replaces a target field"):
        load_config(write(tmp_path / "c.yaml", tp))
    tp = template("http://127.0.0.1:9", overrides={"storage-a-g": {"forecaster": {"name": "seasonal_naive"}}})
    parsed = load_config(write(tmp_path / "c.yaml", tp)).templates[0]
    assert parsed.expand({"user": "a", "group": "g"}).forecaster.name == "seasonal_naive"
    assert parsed.expand({"user": "b", "group": "g"}).forecaster.name == "persistence"
# ------------------------------------------------ per-series refits on an executor
def on_executors(**section):
    """Parametrize a test over a real 2-process pool and a real 2-worker
    LocalCluster (``executor``: the config section, ``section`` added)."""
    return pytest.mark.parametrize("executor", [
        {"kind": "local", "workers": 2, "retries": 0, **section},
        {"kind": "dask", "local_cluster": True, "workers": 2, "retries": 0, "memory_limit": "400MiB", **section},
    ], ids=["local-pool", "dask-local-cluster"])


def assert_refitted_elsewhere(result, kind: str) -> None:
    """The cycle's model was fitted on the ``kind`` executor in another
    process, and its forecast decided."""
    note = result.details["model"]
    assert f"refitted on the {kind} executor (pid " in note, note
    pid = int(note.split("(pid ")[1].split(",")[0])
    assert pid != os.getpid() and pid > 0
    assert result.ok and not result.decision.fallback and result.forecast is not None
    assert note.startswith(result.forecast.model_version)


def assert_fell_back(result, recorded: dict, kind: str, why: str) -> None:
    """Reactive (never down), the executor's failure and ``why`` in the
    decision as recorded."""
    d = result.decision
    assert d.fallback and d.desired >= d.current, result.target
    text = json.dumps(recorded)
    assert f"the refit on the {kind} executor failed" in text and why in text, text


@pytest.fixture
def fit_probe():
    from forecasters import registry
    from tests.support.fleet_models import FitProbe

    registry.register("fit_probe", FitProbe)
    yield FitProbe
    registry.unregister("fit_probe")


def _probe_daemon_run(url: str, end: int, folder: Path, executor: dict | None) -> dict:
    """One batched cycle of the storage template in a real daemon, every
    target on ``fit_probe`` (bob's fit kills its process, carol's raises);
    the results by target."""
    folder.mkdir()
    tp = template(url, mode="dry-run", forecaster={
        "name": "fit_probe", "history": "2h", "refit_every": "1h",
        "params": {"who": "{user}", "die_for": "bob", "raise_for": "carol"}})
    doc = {"state": str(folder / "state.db"), "server": {"enabled": False}, "templates": [tp]}
    if executor is not None:
        doc["executor"] = executor
    cfg = folder / "fleet.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    results = []
    d = Daemon(cfg, clock=ManualClock(from_epoch(end)), monotonic=lambda: 1000.0, on_result=results.append,
               build_actuator=lambda t, c=None: Platform(capacity=3))
    try:
        d.tick()
        assert d.templates["storage"].wait(180)
        report = d.templates["storage"].last_report
        by = {r.target: r for r in results}
        return {"by": by, "report": report, "decisions": {n: d.lock_store.decision(r.decision.id)
                                                         for n, r in by.items()}}
    finally:
        d.shutdown(30)


@pytest.mark.prometheus
@on_executors(allowed_failures=1)
def test_a_templates_refits_run_on_the_executor_and_a_lost_or_failed_one_falls_back_for_that_target_only(
        fleet_prometheus, tmp_path, fit_probe, executor):
    if executor["kind"] == "dask":
        pytest.importorskip("distributed")
    got = _probe_daemon_run(fleet_prometheus.url, fleet_prometheus.end, tmp_path / "on", executor)
    by, report = got["by"], got["report"]
    assert sorted(by) == ["storage-alice-g1", "storage-bob-g1", "storage-carol-g2"]
    assert (report.refits, report.refit_failures) == (3, 2)
    # alice: fitted in another process, and that model's forecast decided
    alice = by["storage-alice-g1"]
    assert_refitted_elsewhere(alice, executor["kind"])
    assert got["decisions"]["storage-alice-g1"]["status"] in ("dry-run", "hold")
    # bob's fit killed its worker every time: lost; carol's raised: failed;
    # each falls back to reactive (never down) with the reason in its decision
    for name, why in (("storage-bob-g1", "(lost)"), ("storage-carol-g2", "RuntimeError: the fit of carol fails")):
        assert_fell_back(by[name], got["decisions"][name], executor["kind"], why)
    # the same decision for alice as a daemon without the section makes,
    # fitting in its own thread
    inline = _probe_daemon_run(fleet_prometheus.url, fleet_prometheus.end, tmp_path / "inline", None)
    assert inline["report"].refits == 0 and "refitted" not in inline["by"]["storage-alice-g1"].details.get("model", "")
    a = inline["by"]["storage-alice-g1"]
    assert (a.decision.desired, a.decision.reasons) == (alice.decision.desired, alice.decision.reasons)
    np.testing.assert_allclose(a.forecast.point, alice.forecast.point)


@pytest.mark.prometheus
def test_a_templates_fit_made_in_the_daemon_is_on_disk_as_under_way_before_it_begins(
        fleet_prometheus, tmp_path, fit_probe):
    """A batched cycle writes many targets' records in one transaction; a
    target whose model is fitted in the daemon decides outside it, so that
    its fit's start is committed first (what a restart reads when the fit
    ended the process: tests/engine/test_fit_failures.py). Each fit reads
    the state file through a connection of its own: it sees its own fit
    recorded as under way, and after the cycle none is left."""
    state, log = tmp_path / "state.db", tmp_path / "started.log"
    tp = template(fleet_prometheus.url, mode="dry-run", forecaster={
        "name": "fit_probe", "history": "2h", "refit_every": "1h",
        "params": {"who": "{user}", "state": str(state), "started_log": str(log)}})
    cfg = write(tmp_path / "fleet.yaml", tp)
    results = []
    d = Daemon(cfg, clock=ManualClock(from_epoch(fleet_prometheus.end)), monotonic=lambda: 1000.0,
               on_result=results.append, build_actuator=lambda t, c=None: Platform(capacity=3))
    try:
        d.tick()
        assert d.templates["storage"].wait(180)
        assert d.templates["storage"].last_report.refits == 0  # no executor: fitted in the daemon
    finally:
        d.shutdown(30)
    seen = {x["who"]: x["started"] for x in map(json.loads, log.read_text().splitlines())}
    assert sorted(seen) == ["alice", "bob", "carol"]
    for who, rows in seen.items():
        assert [r[0] for r in rows if r[0].startswith(f"storage-{who}-")] != [], (who, rows)
        assert all(model == "fit_probe" and failures == 0 for _, model, failures in rows)
    assert sorted(r.target for r in results) == ["storage-alice-g1", "storage-bob-g1", "storage-carol-g2"]
    assert all(not r.decision.fallback for r in results)
    with Store(state) as s:
        assert all(s.started_fit(r.target) is None for r in results)


def _static_probe_run(folder: Path, executor: dict | None, die_for: str = "bob") -> dict:
    """One cycle of three of the file's own targets on ``fit_probe`` in a
    real daemon (``die_for``'s fit kills its process, carol's raises), each
    in its own thread as static targets run; the results by target."""
    folder.mkdir()
    t = np.arange(2 * DAY // 300)
    trace = write_trace(folder / "load.csv", 40 + 20 * np.sin(2 * np.pi * t / 288))
    targets = [target_dict(n, trace, mode="dry-run", forecaster={
        "name": "fit_probe", "history": "2h", "refit_every": "1h",
        "params": {"who": n, "die_for": die_for, "raise_for": "carol"}}) for n in ("alice", "bob", "carol")]
    extra = {} if executor is None else {"executor": executor}
    cfg = write_config(folder / "c.yaml", targets, **extra)
    results = []
    d = Daemon(cfg, clock=ManualClock(T0 + timedelta(days=1)), monotonic=lambda: 1000.0,
               on_result=results.append, build_actuator=lambda t, c=None: Platform(capacity=3))
    try:
        assert not d.batches  # per-series models: each target runs alone
        d.tick()
        for w in d.workers.values():
            assert w.wait(180)
        by = {r.target: r for r in results}
        return {"by": by, "decisions": {n: d.lock_store.decision(r.decision.id) for n, r in by.items()}}
    finally:
        d.shutdown(30)


@on_executors(allowed_failures=1)
def test_the_files_own_targets_refit_on_the_executor_and_a_lost_or_failed_one_falls_back_alone(
        tmp_path, fit_probe, executor):
    if executor["kind"] == "dask":
        pytest.importorskip("distributed")
    # on Dask each target's run is its own map call, placed on a worker at
    # once: a task beside the killer on its worker is charged its deaths
    # too (Dask's accounting), so there bob's fit does not kill (the
    # template test has one run with a killer on Dask)
    local = executor["kind"] == "local"
    got = _static_probe_run(tmp_path / "on", executor, die_for="bob" if local else "")
    by = got["by"]
    assert sorted(by) == ["alice", "bob", "carol"]
    # alice: fitted in another process, and that model's forecast decided
    alice = by["alice"]
    assert_refitted_elsewhere(alice, executor["kind"])
    # bob's fit killed its worker every time: lost; carol's raised: failed;
    # each falls back to reactive (never down) with the reason in its decision
    if local:
        assert_fell_back(by["bob"], got["decisions"]["bob"], "local", "(lost)")
    else:
        assert_refitted_elsewhere(by["bob"], "dask")
    assert_fell_back(by["carol"], got["decisions"]["carol"], executor["kind"], "RuntimeError: the fit of carol fails")
    # the same decision for alice as without the section, fitting in her own thread
    inline = _static_probe_run(tmp_path / "inline", None)["by"]["alice"]
    assert "refitted" not in inline.details.get("model", "")
    assert (inline.decision.desired, inline.decision.reasons) == (alice.decision.desired, alice.decision.reasons)
    np.testing.assert_allclose(inline.forecast.point, alice.forecast.point)


@on_executors(deadline="8s")
def test_a_files_target_whose_refit_hangs_falls_back_with_timeout_and_refits_next_cycle(
        tmp_path, fit_probe, executor):
    if executor["kind"] == "dask":
        pytest.importorskip("distributed")
    marker = tmp_path / "hung"
    t = np.arange(2 * DAY // 300)
    trace = write_trace(tmp_path / "load.csv", 40 + 20 * np.sin(2 * np.pi * t / 288))
    targets = [target_dict(n, trace, mode="dry-run", forecaster={
        "name": "fit_probe", "history": "2h", "refit_every": "1h",
        "params": {"who": n, "hang_for": "bob", "hang_marker": str(marker)}}) for n in ("alice", "bob")]
    cfg = write_config(tmp_path / "c.yaml", targets, executor=executor)
    run = Driven(cfg, T0 + timedelta(days=1))
    d, cycle = run.d, run.cycle
    try:
        t0 = time.monotonic()
        by = cycle()
        assert time.monotonic() - t0 < 100  # bob's cycle ended at the deadline, not after his fit
        assert_refitted_elsewhere(by["alice"], executor["kind"])
        assert_fell_back(by["bob"], d.lock_store.decision(by["bob"].decision.id), executor["kind"], "(timeout)")
        # the next cycle sends bob's refit again; it fits, and bob decides from it
        by = cycle()
        assert_refitted_elsewhere(by["bob"], executor["kind"])
    finally:
        d.shutdown(30)


@on_executors()
def test_a_refit_that_fails_on_the_executor_leaves_the_model_fitted_before_forecasting_and_backs_off(
        tmp_path, fit_probe, executor):
    if executor["kind"] == "dask":
        pytest.importorskip("distributed")
    broken, log = tmp_path / "broken", tmp_path / "fits.log"
    t = np.arange(2 * DAY // 300)
    trace = write_trace(tmp_path / "load.csv", 40 + 20 * np.sin(2 * np.pi * t / 288))
    targets = [target_dict("alice", trace, mode="dry-run", forecaster={
        "name": "fit_probe", "history": "2h", "refit_every": "1h",
        "params": {"who": "alice", "raise_marker": str(broken), "fit_log": str(log)}})]
    cfg = write_config(tmp_path / "c.yaml", targets, executor=executor)
    start = T0 + timedelta(days=1)
    run = Driven(cfg, start)

    def at(minutes: int):
        before = log.read_text().count("alice") if log.exists() else 0
        res = run.cycle(at=start + timedelta(minutes=minutes))["alice"]
        return res, log.read_text().count("alice") > before

    try:
        res, fitted = at(0)
        assert fitted
        assert_refitted_elsewhere(res, executor["kind"])
        broken.write_text("")
        # due at 60: the executor's fit raises; the model fitted at 0 forecasts
        for minutes, sent in ((60, True), (65, True), (70, False), (75, True)):
            res, tried = at(minutes)
            assert tried == sent, minutes
            assert res.ok and res.forecast is not None and not res.decision.fallback, minutes
            assert res.decision.extra["fit"]["fitted_at"] == "2024-03-02T00:00:00Z"
            if sent:
                note = res.details["model"]
                assert f"the refit on the {executor['kind']} executor failed (error)" in note, note
                assert "forecasting with the model fitted at 2024-03-02T00:00:00Z" in note, note
        broken.unlink()
        res, tried = at(95)  # 75 + 20 minutes: fitted on the executor again
        assert tried and "fit" not in res.decision.extra
        assert_refitted_elsewhere(res, executor["kind"])
    finally:
        run.d.shutdown(30)


@pytest.mark.prometheus
@on_executors(deadline="10s")
def test_a_refit_that_hangs_past_the_deadline_falls_back_for_its_target_only_and_is_retried_next_cycle(
        fleet_prometheus, tmp_path, fit_probe, executor):
    if executor["kind"] == "dask":
        pytest.importorskip("distributed")
    marker = tmp_path / "hung"
    tp = template(fleet_prometheus.url, mode="dry-run", forecaster={
        "name": "fit_probe", "history": "2h", "refit_every": "1h",
        "params": {"who": "{user}", "hang_for": "bob", "hang_marker": str(marker)}})
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(yaml.safe_dump({"state": str(tmp_path / "state.db"), "server": {"enabled": False},
                                   "executor": executor, "templates": [tp]}, sort_keys=False))
    run = Driven(cfg, from_epoch(fleet_prometheus.end))
    d, tw = run.d, run.d.templates["storage"]

    def cycle() -> dict:
        t0 = time.monotonic()
        by = run.cycle()
        return {"by": by, "report": tw.last_report, "took": time.monotonic() - t0}

    try:
        first = cycle()
        by, report = first["by"], first["report"]
        assert (report.refits, report.refit_failures, report.refit_timeouts) == (3, 1, 1)
        assert first["took"] < 100, first["took"]  # the cycle ended at the deadline, not after bob's fit
        # bob's fit hung: past the deadline it is a timeout, and bob falls
        # back to reactive (never down) with the reason in its decision
        bob = by["storage-bob-g1"]
        assert_fell_back(bob, d.lock_store.decision(bob.decision.id), executor["kind"],
                         "(timeout): still running at the run's deadline (10 s)")
        # the process stuck in bob's fit does not linger (the pool's
        # processes stopped; the LocalCluster's worker restarted)
        assert gone(int(marker.read_text())), "the worker stuck in bob's fit is still running"
        # the others decided from the models fitted in another process
        for name in ("storage-alice-g1", "storage-carol-g2"):
            assert_refitted_elsewhere(by[name], executor["kind"])
        # the next cycle sends bob's refit again (still due); it fits, and bob decides from it
        second = cycle()
        assert (second["report"].refits, second["report"].refit_failures) == (1, 0)
        assert_refitted_elsewhere(second["by"]["storage-bob-g1"], executor["kind"])
        assert not second["by"]["storage-alice-g1"].decision.fallback
    finally:
        d.shutdown(30)


# ------------------------------------------------ the file's targets on one global model
def test_the_files_targets_on_one_global_model_are_forecast_in_one_batched_call_and_a_bad_one_spoils_none(
        tmp_path, checkpoint, monkeypatch):
    from engine.build import build_source as default_source

    nan_trace = write_trace(tmp_path / "nan.csv", [float("nan")] * (DAYS * 288))
    spike = write_trace(tmp_path / "spike.csv", daily(9, 400.0))
    extra = [target_dict(n, p, mode="dry-run", forecaster={
        "name": "lstm_global", "history": "3d", "params": {"checkpoint": str(checkpoint), "device": "cpu"}})
        for n, p in (("down", spike), ("nans", nan_trace))]
    # and one on a per-series model: it runs alone, as before
    extra.append(target_dict("alone", spike, mode="dry-run"))
    cfg = fleet_config(tmp_path, checkpoint, 4, extra=extra)

    def source(t, c, covariate=None):
        s = default_source(t, c, covariate)
        if t.name == "down":
            s = FlakySource(s)
            s.mode = "down"
        return s

    calls = []
    real = LevelFreeLSTM.predict_many
    monkeypatch.setattr(LevelFreeLSTM, "predict_many",
                        lambda self, h, *a, **k: calls.append(sorted(h)) or real(self, h, *a, **k))
    results = []
    d = Daemon(cfg, clock=ManualClock(NOW), monotonic=lambda: 1000.0, on_result=results.append,
               build_source=source, build_actuator=lambda t, c=None: Platform(capacity=5))
    try:
        (b,) = d.batches.values()
        assert sorted(b.names) == ["down", "nans", "t0", "t1", "t2", "t3"] and d.workers["alone"].batch is None
        d.tick()
        assert b.wait(120) and d.workers["alone"].wait(60)
        by = {r.target: r for r in results}
        assert sorted(by) == ["alone", "down", "nans", "t0", "t1", "t2", "t3"]
        assert len(calls) == 1 and len(calls[0]) == 4  # the four good ones, one forward pass
        assert (b.last_report.batched, b.last_report.calls) == (4, 1)
        for name in ("down", "nans"):
            dec = by[name].decision
            assert dec.fallback and dec.desired >= dec.current, name
        assert by["down"].fetch_error.startswith("metric source:")
        assert "no samples in the history window" in json.dumps(d.lock_store.decision(by["nans"].decision.id))
        assert not by["alone"].decision.fallback and by["alone"].forecast.model == "persistence"
        # each decided and recorded as its own cycle does alone
        (tmp_path / "solo").mkdir()
        solo, _ = batch(fleet_config(tmp_path / "solo", checkpoint, 4))
        for m in solo:
            a, r = m.run(NOW), by[m.target.name]
            assert r.ok and r.forecast.model == "lstm_global" and not r.decision.fallback
            assert (a.decision.desired, a.decision.reasons) == (r.decision.desired, r.decision.reasons)
            np.testing.assert_allclose(a.forecast.quantiles[0.9], r.forecast.quantiles[0.9], rtol=1e-6)
            assert d.lock_store.decision(r.decision.id)["status"] in ("dry-run", "hold")
    finally:
        d.shutdown(10)


# ------------------------------------------------ a stuck batched cycle
@pytest.mark.prometheus
def test_a_batched_cycle_stuck_on_its_source_does_not_delay_the_next_and_nothing_is_acted_on_twice(
        fleet_prometheus, tmp_path):
    import threading

    from engine.build import build_source as default_source

    end = fleet_prometheus.end
    cfg = write(tmp_path / "fleet.yaml", template(fleet_prometheus.url, timeout="1m", discover_every="1d",
                                                  policy={**POLICY, "capacity_per_replica": 1}))
    gate, entered, armed = threading.Event(), threading.Event(), threading.Event()

    class Hanging:
        """The template's query; armed, its next answer waits for the gate."""

        def __init__(self, inner) -> None:
            self.inner = inner

        def fetch_all(self, since, now):
            if armed.is_set():
                armed.clear()
                entered.set()
                gate.wait(60)
            return self.inner.fetch_all(since, now)

    platforms: dict[str, Platform] = {}
    clock, mono, results = ManualClock(from_epoch(end - 600)), [1000.0], []
    d = Daemon(cfg, clock=clock, monotonic=lambda: mono[0], on_result=results.append,
               build_source=lambda t, c, cov=None: Hanging(default_source(t, c, cov)) if not t.source.series
               else default_source(t, c, cov),
               build_actuator=lambda t, c=None: platforms.setdefault(t.name, Platform(capacity=1)))
    tw = d.templates["storage"]
    try:
        d.tick()  # cycle 1: every target scales up from 1
        assert tw.wait(60) and len(results) == 3
        assert {n: len(p.applies) for n, p in platforms.items()} == {r.target: 1 for r in results}, \
            [(r.target, r.status) for r in results]
        for p in platforms.values():
            p.capacity = 1  # someone scaled them all back down: each cycle now wants to scale up
        results.clear()
        armed.set()
        clock.set(from_epoch(end - 300))
        mono[0] += 300
        d.tick()  # cycle 2: stuck in the template's query
        assert entered.wait(30)
        mono[0] += 90  # past the 1 minute timeout
        d.tick()
        assert tw.abandoned and tw.busy
        clock.set(from_epoch(end))
        mono[0] += 210  # the next interval
        d.tick()  # cycle 3 starts at once, beside the stuck one
        tw.thread.join(60)
        assert not tw.thread.is_alive() and tw.stuck.is_alive()  # decided while cycle 2 still hangs
        assert sorted(r.target for r in results) == ["storage-alice-g1", "storage-bob-g1", "storage-carol-g2"]
        assert all(r.status == "accepted" or r.status == "applied" for r in results), [r.status for r in results]
        assert all(len(p.applies) == 2 for p in platforms.values())
        stuck_results = len(results)
        gate.set()  # cycle 2 answers at last: it acts on nothing
        assert tw.wait(60)
        late = results[stuck_results:]
        assert len(late) == 3 and all(r.details.get("abandoned") for r in late)
        assert all(r.status not in ("accepted", "applied") for r in late), [(r.status, r.error) for r in late]
        assert all(len(p.applies) == 2 for p in platforms.values())  # nothing applied twice
    finally:
        gate.set()
        d.shutdown(10)


def test_forescale_once_forecasts_the_files_targets_on_one_global_model_in_one_call(tmp_path, checkpoint,
                                                                                    monkeypatch, capsys):
    cfg = fleet_config(tmp_path, checkpoint, 3, extra=[target_dict("alone", write_trace(
        tmp_path / "a.csv", daily(5, 30.0)), mode="dry-run")])
    calls = []
    real = LevelFreeLSTM.predict_many
    monkeypatch.setattr(LevelFreeLSTM, "predict_many",
                        lambda self, h, *a, **k: calls.append(len(h)) or real(self, h, *a, **k))
    monkeypatch.setattr("engine.core.clock.SystemClock.now", lambda self: NOW)  # the traces' time
    assert main(["once", "--config", str(cfg), "--json"]) == 0
    got = {r["target"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(got) == ["alone", "t0", "t1", "t2"] and calls == [3]
    assert not any(r["decision"]["fallback"] for r in got.values())


@pytest.mark.prometheus
def test_two_templates_that_make_one_target_name_run_it_once_and_say_so(fleet_prometheus, tmp_path, capsys):
    """``storage`` (every user) and ``g1`` (group g1 only) both name their
    targets ``storage-{user}-{group}``: each decided and applied alice's and
    bob's every cycle, each with its own policy. The template that has a
    name keeps it; the other leaves it out and says so (the daemon's log,
    ``forescale targets`` and ``forescale once``)."""
    g1 = template(fleet_prometheus.url, name="g1",
                  source={"type": "prometheus", "url": fleet_prometheus.url,
                          "query": 'sum by (user, group) (storage_used_bytes{group="g1"})'},
                  policy={**POLICY, "capacity_per_replica": 1})
    cfg = write(tmp_path / "fleet.yaml", template(fleet_prometheus.url), g1)
    applies: dict[str, int] = {}

    class Counting(Platform):
        def apply(self, desired, *, decision_id):
            applies[decision_id.split("@")[0]] = applies.get(decision_id.split("@")[0], 0) + 1
            return super().apply(desired, decision_id=decision_id)

    clock, mono, results = ManualClock(from_epoch(fleet_prometheus.end - 3 * 300)), [1000.0], []
    d = Daemon(cfg, clock=clock, monotonic=lambda: mono[0], on_result=results.append,
               build_actuator=lambda t, c=None: Counting(capacity=1))
    try:
        applied = 0
        for cycle in range(3):  # the two discover at once: the one earlier in the file has them by the second
            results.clear()
            applies.clear()
            d.tick()
            for tw in d.templates.values():
                assert tw.wait(60)
            # never both: each target decided and applied at most once a cycle
            decided = [r.target for r in results]
            assert len(decided) == len(set(decided)) and all(n == 1 for n in applies.values())
            applied += len(applies)
            clock.advance(timedelta(minutes=5))
            mono[0] += 300
        assert sorted(decided) == ["storage-alice-g1", "storage-bob-g1", "storage-carol-g2"] and applied >= 3
        assert sorted(d.templates["storage"].members) == ["storage-alice-g1", "storage-bob-g1", "storage-carol-g2"]
        assert d.templates["g1"].members == {}
    finally:
        d.shutdown(5)
    assert main(["targets", "--config", str(cfg), "--json"]) == 1
    doc = {t["name"]: t for t in json.loads(capsys.readouterr().out)["templates"]}
    assert doc["g1"]["targets"] == [] and len(doc["storage"]["targets"]) == 3
    assert "target storage-alice-g1 is also a target of template storage; template storage's is kept" \
        in doc["g1"]["errors"]
