"""A model whose fits fail, in a real daemon: the model fitted before keeps
forecasting (the policy is not thrown back to reactive by a failed refit),
a failing fit is tried again one interval later and then backing off (not
every cycle), a model that never fitted falls back and never scales down,
a new model short of history is fitted as soon as it has enough (not
counted as failing), and the failures are on the decision, in ``forescale
decisions``, and in ``forescale_model_fit_failures_total`` /
``..._fit_timestamp_seconds``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.cli import main
from engine.daemon import Daemon
from engine.metrics import EngineMetrics
from engine.store import Store
from engine.core.clock import ManualClock
from tests.support import ROOT
from tests.support.live import T0, Platform, target_dict, write_config, write_trace
from tests.support.postgres import pg_server, pg_url  # noqa: F401 - fixtures

DAY = 86400
START = T0 + timedelta(days=1)


@pytest.fixture
def fit_probe():
    from forecasters import registry
    from tests.support.fleet_models import FitProbe

    registry.register("fit_probe", FitProbe)
    yield FitProbe
    registry.unregister("fit_probe")


def daily_trace(folder: Path) -> Path:
    """Three days of a daily sine at 5 minutes, as ``folder/load.csv``."""
    t = np.arange(3 * DAY // 300)
    return write_trace(folder / "load.csv", 40 + 20 * np.sin(2 * np.pi * t / 288))


def probe_target(name: str, trace: Path, folder: Path, **params) -> dict:
    return target_dict(name, trace, mode="auto", forecaster={
        "name": "fit_probe", "history": "2h", "refit_every": "1h",
        "params": {"who": name, "fit_log": str(folder / "fits.log"), **params}})


class Run:
    """A real daemon on a hand-driven clock running the one target ``who``;
    ``tried``: the minutes (after START) of the cycles that fitted its
    model, or tried to."""

    def __init__(self, cfg: Path, who: str) -> None:
        self.clock, self.mono = ManualClock(START), [1000.0]
        self.metrics = EngineMetrics()
        self.results: list = []
        self.who, self.log, self.tried = who, cfg.parent / "fits.log", []
        self.d = Daemon(cfg, clock=self.clock, monotonic=lambda: self.mono[0], on_result=self.results.append,
                        metrics=self.metrics, build_actuator=lambda t, c=None: Platform(capacity=3))

    def fits(self) -> int:
        return self.log.read_text().split().count(self.who) if self.log.exists() else 0

    def at(self, minutes: int):
        """The cycle at ``minutes`` after START: its result, and whether it
        tried a fit."""
        before = self.fits()
        self.clock.set(START + timedelta(minutes=minutes))
        self.results.clear()
        self.d.tick()
        for w in self.d.workers.values():
            assert w.wait(60)
        self.mono[0] += 300
        tried = self.fits() > before
        if tried:
            self.tried.append(minutes)
        return {r.target: r for r in self.results}[self.who], tried

    def metric(self, name: str, target: str) -> float | None:
        body, _ = self.metrics.exposition()
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                if s.name == name and s.labels.get("target") == target:
                    return s.value
        return None


def console_page(cfg: Path, path: str) -> str:
    """``path`` of the (read-only, no users) console over ``cfg``'s state."""
    import warnings

    from engine.auth import Security
    from engine.config import load_config
    from engine.console import create_console

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    conf = load_config(cfg)
    app = create_console(conf, Security.from_config(conf), clock=ManualClock(START + timedelta(hours=4)))
    page = TestClient(app, base_url="http://console.test").get(path)
    assert page.status_code == 200
    return page.text


def test_a_model_whose_refit_fails_keeps_forecasting_and_is_retried_backing_off(tmp_path, fit_probe, capsys):
    trace = daily_trace(tmp_path)
    broken = tmp_path / "broken"
    cfg = write_config(tmp_path / "c.yaml", [probe_target("alice", trace, tmp_path, raise_marker=str(broken))])
    run = Run(cfg, "alice")
    seen = {}
    try:
        for minutes in range(0, 205, 5):
            if minutes == 5:
                broken.write_text("")  # from now on every fit of alice raises
            if minutes == 140:
                broken.unlink()  # and from now on it fits again
            seen[minutes], _ = run.at(minutes)
            if minutes == 100:
                assert run.metric("forescale_model_fit_failures_total", "alice") == 4
                assert run.metric("forescale_model_fit_timestamp_seconds", "alice") == START.timestamp()
    finally:
        run.d.shutdown(30)
    # fitted at 0; due at 60, failing: tried again 5, 10, 20, 40, then at
    # most the hour (fit_retry_max) apart; fitted again at 195
    assert run.tried == [0, 60, 65, 75, 95, 135, 195]
    for minutes, res in seen.items():
        d = res.decision
        # the model fitted at 0 forecast all along: the policy sized from a forecast
        assert res.ok and res.forecast is not None and not d.fallback, (minutes, d.steps[0].message)
        fit = d.extra.get("fit")
        if 60 <= minutes < 195:
            assert fit["status"] == ("failed" if minutes in run.tried else "waiting"), minutes
            assert fit["fitted_at"] == "2024-03-02T00:00:00Z" and "exists" in fit["error"]
        else:
            assert fit is None, minutes
    assert seen[135].decision.extra["fit"]["failures"] == 5
    assert seen[135].decision.extra["fit"]["next_try"] == "2024-03-02T03:15:00Z"
    assert run.metric("forescale_model_fit_failures_total", "alice") == 5
    assert run.metric("forescale_model_fit_timestamp_seconds", "alice") == (START + timedelta(minutes=195)).timestamp()
    # the console's target page marks the decisions made while it failed
    page = console_page(cfg, "/targets/alice")
    assert page.count("refit failing") == 18, page  # the 20 newest: 105-190 failing, 195 and 200 fitted
    assert ("Model fit_probe: 5 fit(s) failed, the last at 2024-03-02T02:15:00Z (RuntimeError: the fit of alice "
            "fails while broken exists); forecasting with the model fitted at 2024-03-02T00:00:00Z; next try "
            "2024-03-02T03:15:00Z.") in " ".join(page.split())
    # forescale decisions says so, for a decision made while it failed
    assert main(["decisions", "--config", str(cfg), "--target", "alice", "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert ("! model fit_probe: 5 fit(s) failed, the last at 2024-03-02T02:15:00Z (RuntimeError: the fit of "
            "alice fails while broken exists); forecasting with the model fitted at 2024-03-02T00:00:00Z; "
            "next try 2024-03-02T03:15:00Z") in out, out


def test_a_model_that_never_fitted_falls_back_never_down_and_its_fit_backs_off(tmp_path, fit_probe):
    trace = daily_trace(tmp_path)
    cfg = write_config(tmp_path / "c.yaml", [probe_target("bob", trace, tmp_path, raise_for="bob")])
    run = Run(cfg, "bob")
    try:
        for minutes in range(0, 140, 5):
            res, attempted = run.at(minutes)
            d = res.decision
            assert d.fallback and d.desired >= d.current and res.forecast is None
            why = res.details["forecast_error"]
            if attempted:
                assert "the fit of bob fails" in why, why
            else:  # waiting: no fit, and no model to forecast with
                assert why.startswith("ForecastError: no usable model of fit_probe: it failed at "), why
        assert run.metric("forescale_model_fit_failures_total", "bob") == len(run.tried)
        assert run.metric("forescale_model_fit_timestamp_seconds", "bob") is None  # no model
    finally:
        run.d.shutdown(30)
    assert run.tried == [0, 5, 15, 35, 75, 135]


def test_a_new_model_short_of_history_is_fitted_once_it_has_enough_and_is_not_counted_failing(tmp_path, fit_probe):
    # 13 observations at the first cycle (an hour), 20 (the history the
    # model needs) 35 minutes later
    trace = write_trace(tmp_path / "load.csv", 40 + 10 * np.sin(np.arange(200) / 9), start=START - timedelta(hours=1))
    cfg = write_config(tmp_path / "c.yaml", [probe_target("carol", trace, tmp_path, need=20)])
    run = Run(cfg, "carol")
    try:
        for minutes in range(0, 60, 5):
            res, _ = run.at(minutes)
            d = res.decision
            assert "fit" not in d.extra  # warming up is not a failing model
            if minutes < 35:
                assert d.fallback and d.desired >= d.current and res.forecast is None
                why = res.details["forecast_error"]
                assert "fit_probe needs at least 20 observations, has 13" in why, why
                if minutes:
                    assert why.endswith("; the fit is tried again at 2024-03-02T00:35:00Z"), why
            else:  # fitted at the first cycle with the history it needs
                assert res.forecast is not None and not d.fallback, minutes
        assert run.metric("forescale_model_fit_failures_total", "carol") == 0
    finally:
        run.d.shutdown(30)
    assert run.tried == [0, 35]


def test_a_restart_keeps_the_back_off_of_a_failing_fit_and_a_changed_forecaster_is_fitted_at_once(tmp_path, fit_probe):
    """The daemon restarted while a model's fits were failing: the next fit
    waits as the decision before the restart recorded it (not one at once,
    then 5, 10, 20 minutes again), and the count goes on. A restart with the
    forecaster section changed (the usual way to mend a failing model) fits
    at its first cycle."""
    trace = daily_trace(tmp_path)
    cfg = write_config(tmp_path / "c.yaml", [probe_target("bob", trace, tmp_path, raise_for="bob")])
    first = Run(cfg, "bob")
    try:
        for minutes in range(0, 40, 5):
            first.at(minutes)
    finally:
        first.d.shutdown(30)
    assert first.tried == [0, 5, 15, 35]  # the next at 75
    second = Run(cfg, "bob")  # a new process on the same state
    try:
        seen = {m: second.at(m)[0] for m in range(40, 140, 5)}
    finally:
        second.d.shutdown(30)
    assert second.tried == [75, 135]
    waiting = seen[40].decision
    assert waiting.fallback and waiting.desired >= waiting.current
    assert seen[40].details["forecast_error"].startswith(
        "ForecastError: no usable model of fit_probe: it failed at 2024-03-02T00:35:00Z"), seen[40].details
    assert seen[40].details["forecast_error"].endswith("the next fit at 2024-03-02T01:15:00Z")
    assert seen[75].decision.extra["fit"]["failures"] == 5 and seen[130].decision.extra["fit"]["failures"] == 5
    assert seen[135].decision.extra["fit"]["failures"] == 6
    # the forecaster section changed before the next restart: fitted at once
    cfg = write_config(tmp_path / "c.yaml", [probe_target("bob", trace, tmp_path, raise_for="bob", need=10)])
    third = Run(cfg, "bob")
    try:
        third.at(140)
    finally:
        third.d.shutdown(30)
    assert third.tried == [140]


def test_a_fit_under_way_when_the_daemon_is_stopped_is_not_a_failure_and_the_restart_fits_at_once(tmp_path,
                                                                                                   fit_probe, caplog):
    """A daemon stopped (SIGTERM: a deploy, a restart) while a fit runs
    longer than its grace abandons that cycle; it was not the fit that ended
    the process, so the fit is marked interrupted, not left as one the
    process did not outlive: the restarted daemon fits at once, counting no
    failure and backing nothing off."""
    hold = tmp_path / "hold"
    hold.mkdir()
    cfg = write_config(tmp_path / "c.yaml", [probe_target("bob", daily_trace(tmp_path), tmp_path, hold=str(hold))])
    first = Run(cfg, "bob")
    second = None
    try:
        first.clock.set(START)
        first.d.tick()
        for _ in range(500):
            if (hold / "1.fitting").exists():
                break
            time.sleep(0.02)
        with Store(tmp_path / "state.db") as s:
            assert s.started_fit("bob") is not None  # under way
        first.d.shutdown(0.5)  # the fit outlasts the grace
        with Store(tmp_path / "state.db") as s:
            assert s.started_fit("bob") is None
        assert "shutting down in the middle of the fit of bob: interrupted, not counted as failed" in caplog.text
        (hold / "2.go").touch()
        second = Run(cfg, "bob")
        r, tried = second.at(5)
    finally:
        for f in ("1.go", "2.go"):
            (hold / f).touch()
        if second is not None:
            second.d.shutdown(30)
    assert tried and not r.decision.fallback and "fit" not in r.decision.extra, r.decision.extra
    assert not r.details.get("forecast_error"), r.details


#: a daemon process on the hand-driven clock of :class:`Run`: the cycles of
#: ``bob`` from minute ``start`` to ``end``, each announced before it runs
#: and its result printed after (a process killed inside a cycle's fit
#: leaves that cycle announced, with no result)
DAEMON = """
import json, sys
from pathlib import Path
from forecasters import registry
from tests.support.fleet_models import FitProbe
from tests.engine.test_fit_failures import Run

registry.register("fit_probe", FitProbe)
run = Run(Path(sys.argv[1]), "bob")
for m in range(int(sys.argv[2]), int(sys.argv[3]), 5):
    print(json.dumps({"begins": m}), flush=True)
    r, tried = run.at(m)
    d = r.decision
    print(json.dumps({"m": m, "fallback": d.fallback, "current": d.current, "desired": d.desired,
                      "error": r.details.get("forecast_error"), "fit": d.extra.get("fit")}), flush=True)
run.d.shutdown(30)
"""


def test_a_fit_the_process_does_not_outlive_counts_as_failing_after_the_restart_and_backs_off(tmp_path):
    """A model whose fit ends the daemon's process (the kernel's OOM killer
    does this): the supervisor restarts it, and the restarted process does
    not fit again at once (and die again, every cycle, with no decision
    recorded for any target); it counts the fit it did not outlive as a
    failure, backs off as for a fit that raised (the next at 5, 15, 35
    minutes), and meanwhile decides reactively, never down."""
    trace = daily_trace(tmp_path)
    cfg = write_config(tmp_path / "c.yaml", [probe_target("bob", trace, tmp_path, exit_for="bob")])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FORESCALE_TEST_MAY_EXIT": "1"}
    start, deaths, seen = 0, [], {}
    while start < 45 and len(deaths) < 10:
        p = subprocess.run([sys.executable, "-c", DAEMON, str(cfg), str(start), "45"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=180)
        lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
        seen.update({x["m"]: x for x in lines if "m" in x})
        if p.returncode == 0:
            break
        assert p.returncode == 137, p.stderr[-3000:]
        died = lines[-1]["begins"]  # the cycle announced and never finished: its fit ended the process
        deaths.append(died)
        start = died + 5  # restarted in time for the next cycle
    assert deaths == [0, 5, 15, 35]
    assert (tmp_path / "fits.log").read_text().split() == ["bob"] * 4
    assert sorted(seen) == [10, 20, 25, 30, 40]
    for m, x in seen.items():  # no model: the reactive fallback, never down
        assert x["fallback"] and x["desired"] >= x["current"], (m, x)
    assert seen[10]["fit"]["failures"] == 2 and seen[20]["fit"]["failures"] == 3 and seen[30]["fit"]["failures"] == 3
    assert "the process ended during this fit, begun at 2024-03-02T00:05:00Z" in seen[10]["error"], seen[10]
    assert seen[10]["error"].endswith("the next fit at 2024-03-02T00:15:00Z"), seen[10]
    assert seen[20]["error"].endswith("the next fit at 2024-03-02T00:35:00Z"), seen[20]
    assert seen[40]["fit"]["failures"] == 4 and seen[40]["error"].endswith("the next fit at 2024-03-02T01:15:00Z")
    with Store(tmp_path / "state.db") as s:  # taken up once: the decisions carry it on
        assert s.started_fit("bob") is None


def test_a_fit_under_way_when_its_lease_moves_to_a_replica_that_joined_is_not_counted_failed(tmp_path, fit_probe,
                                                                                              pg_url):
    """Two replicas on one PostgreSQL state. The first, alone, is fitting a
    target's model when a second joins and the first hands it the target's
    shard (its fair share): the fit the new leader finds under way was
    begun by a replica that still runs, so it is no failure (no back-off, no
    "the process ended during this fit"): the new leader fits at once. The
    first replica's fit, ending after that, deletes its own record only, not
    the new leader's fit under way; that one's end leaves none."""
    from engine.leases import shard_of

    hold = tmp_path / "hold"
    hold.mkdir()
    name = next(n for n in (f"svc-{i}" for i in range(20)) if shard_of(n, 2) == 1)  # the shard handed back
    cfg = write_config(tmp_path / "c.yaml", [probe_target(name, daily_trace(tmp_path), tmp_path, hold=str(hold))],
                       state=pg_url, ha={"shards": 2, "lease": "30s"})
    clock = ManualClock(START)

    def replica(mono: list[float], results: list) -> Daemon:
        return Daemon(cfg, clock=clock, monotonic=lambda: mono[0], on_result=results.append,
                      build_actuator=lambda t, c=None: Platform(capacity=3))

    def wait_for(path: Path) -> None:
        for _ in range(500):
            if path.exists():
                return
            time.sleep(0.02)
        raise AssertionError(f"{path.name} never appeared")

    def under_way() -> tuple | None:
        row = a.lock_store.db.execute("SELECT holder, failures FROM fits_started WHERE target=?", (name,)).fetchone()
        return None if row is None else tuple(row)

    mono_a, mono_b, res_a, res_b = [1000.0], [1000.0], [], []
    a = replica(mono_a, res_a)
    b = None
    try:
        assert len(a.leases.held()) == 2  # alone: every shard
        a.tick()
        wait_for(hold / "1.fitting")  # a's fit is under way, recorded under a
        assert under_way() == (a.leases.holder, 0)
        b = replica(mono_b, res_b)  # joins: a keeps its share and hands the rest back
        a.leases.renew()
        b.leases.renew()
        assert b.leases.holds(name) and not a.leases.holds(name)
        for _ in range(50):  # b's first cycle of the target (after its jitter)
            b.tick()
            if b.workers[name].busy or res_b:
                break
            mono_b[0] += 30
        wait_for(hold / "2.fitting")  # not backed off: b fits at once
        assert under_way() == (b.leases.holder, 0)
        (hold / "1.go").touch()  # a's fit ends while b's is under way
        assert a.workers[name].wait(30)
        assert under_way() == (b.leases.holder, 0)  # a deleted its own record only
        (hold / "2.go").touch()
        assert b.workers[name].wait(30)
        assert under_way() is None
    finally:
        for f in ("1.go", "2.go"):
            (hold / f).touch()
        a.shutdown(30)
        if b is not None:
            b.shutdown(30)
    (r,) = res_b
    assert r.ok and not r.decision.fallback and "fit" not in r.decision.extra, r.decision.extra
    assert not r.details.get("forecast_error"), r.details
    assert (tmp_path / "fits.log").read_text().split() == [name, name]
