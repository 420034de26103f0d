"""The daemon: independent targets, per-cycle timeout, jitter, config reload
(mode change without restart, invalid file rejected), graceful SIGTERM and
one daemon per state file — the last two against a real ``forescale run``
subprocess."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from engine import audit
from engine.build import build_source
from engine.core.clock import ManualClock
from engine.daemon import Daemon
from engine.core.errors import StateLocked
from engine.metrics import EngineMetrics
from engine.store import Store
from engine.core.units import to_epoch

from tests.support.live import STEP, T0, FlakySource, Platform, target_dict, write_config, write_trace
from tests.support import ROOT
from tests.support.postgres import pg_server, pg_url  # noqa: F401 - fixtures

NOW = T0 + 20 * STEP


class FakeMono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def trace(tmp_path):
    return write_trace(tmp_path / "load.csv", [100.0] * 60)


def make_daemon(cfg: Path, *, sources=None, platforms=None, **kw):
    sources = {} if sources is None else sources
    platforms = {} if platforms is None else platforms

    def bsource(t, config):
        if t.name not in sources:
            sources[t.name] = FlakySource(build_source(t, config))
        return sources[t.name]

    def bactuator(t, c=None):
        return platforms.setdefault(t.name, Platform(capacity=5))

    results = []
    d = Daemon(cfg, clock=kw.pop("clock", ManualClock(NOW)), build_source=bsource, build_actuator=bactuator,
               on_result=results.append, **kw)
    return d, sources, platforms, results


def settle(daemon: Daemon, *names: str) -> None:
    for n in names or list(daemon.workers):
        assert daemon.workers[n].wait(5), f"cycle of {n} did not finish"


def test_a_hanging_target_never_blocks_another_and_is_abandoned_at_its_timeout(tmp_path, trace):
    cfg = write_config(tmp_path / "c.yaml", [target_dict("slow", trace, timeout="60s"),
                                             target_dict("fast", trace)])
    mono, clock, metrics = FakeMono(), ManualClock(NOW), EngineMetrics()
    d, sources, platforms, results = make_daemon(cfg, monotonic=mono, clock=clock, metrics=metrics)
    sources_slow = d.workers["slow"].live.source
    sources_slow.mode = "slow"
    try:
        d.tick()
        assert sources_slow.entered.wait(5)
        settle(d, "fast")
        assert platforms["fast"].capacity == 20  # fast acted while slow hangs
        for k in range(1, 4):  # three more intervals: fast keeps cycling, slow is stuck
            mono.t += 300
            clock.advance(STEP)
            d.tick()
            settle(d, "fast")
        fast = [r for r in results if r.target == "fast"]
        assert len(fast) == 4 and all(r.ok for r in fast)
        timeouts = [r for r in results if r.target == "slow"]
        # the stuck cycle is abandoned at its timeout and the next starts on
        # schedule beside it (with a fresh fetch, stuck here too, so it is
        # abandoned in turn); while both run, no third starts
        assert len(timeouts) == 2 and all("cycle timed out" in r.error and r.details["timeout"] for r in timeouts)
        assert d.errors["slow"] == {"timeout": 2}
        assert sources_slow.calls == 2
        assert metrics.registry.get_sample_value("forescale_last_success_timestamp_seconds",
                                                 {"target": "slow"}) is None
        assert d.ready()["slow"] == "no successful cycle yet" and d.ready()["fast"] is None
        # the fault clears: the stuck call returns, the target resumes by itself
        sources_slow.mode = "ok"
        sources_slow.release.set()
        settle(d, "slow")
        late = [r for r in results if r.target == "slow"][-1]
        assert late.details.get("abandoned") and "read timed out" in late.fetch_error
        mono.t += 300
        clock.advance(STEP)
        d.tick()
        settle(d)
        last = [r for r in results if r.target == "slow"][-1]
        assert last.ok and last.status in ("applied", "hold") and platforms["slow"].capacity == 20
    finally:
        sources_slow.release.set()
        d.shutdown(5)


def test_a_target_whose_source_raises_does_not_affect_the_other(tmp_path, trace):
    cfg = write_config(tmp_path / "c.yaml", [target_dict("bad", trace), target_dict("good", trace)])
    mono, metrics = FakeMono(), EngineMetrics()
    d, sources, platforms, results = make_daemon(cfg, monotonic=mono, metrics=metrics)
    d.workers["bad"].live.source.mode = "bug"
    d.tick()
    settle(d)
    d.shutdown(1)
    by = {r.target: r for r in results}
    assert by["good"].ok and platforms["good"].capacity == 20
    assert "ZeroDivisionError" in by["bad"].fetch_error
    # no data: never a scale-down, a reason in the log, an error metric
    assert by["bad"].decision.fallback and by["bad"].decision.desired >= 5
    assert metrics.registry.get_sample_value("forescale_fetch_errors_total", {"target": "bad"}) == 1
    assert metrics.registry.get_sample_value("forescale_fetch_errors_total", {"target": "good"}) == 0


def test_starts_follow_the_interval_grid_plus_jitter(tmp_path, trace):
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, jitter="30s")])
    mono = FakeMono()
    d, *_ = make_daemon(cfg, monotonic=mono, rng=random.Random(7))
    w = d.workers["web"]
    offsets, starts = [], 0
    try:
        for _ in range(5 * 300 // 5 + 1):  # five intervals in 5 s ticks
            before = w.thread
            d.tick()
            if w.thread is not before:
                starts += 1
                offsets.append((mono.t - 1000.0) % 300)
                settle(d)
            mono.t += 5
    finally:
        d.shutdown(1)
    assert starts >= 5
    assert all(0 <= o <= 35 for o in offsets[1:]), offsets  # grid + jitter (+ one 5 s tick)
    assert len({round(o) for o in offsets[1:]}) > 1  # the jitter varies


def edit_then_tick(d: Daemon, path: Path, doc: dict, mono: FakeMono, clock: ManualClock | None = None,
                   later: float = 5) -> None:
    """Write ``doc`` as the config file (its mtime ``later`` s ahead, so the
    daemon sees the change), then run the next interval's tick to the end."""
    path.write_text(yaml.safe_dump(doc))
    os.utime(path, (time.time() + later, time.time() + later))
    mono.t += 300
    if clock is not None:
        clock.advance(STEP)
    d.tick()
    settle(d)


def test_mode_change_by_editing_the_file_needs_no_restart_and_a_bad_file_is_rejected(tmp_path, trace, caplog):
    path = tmp_path / "c.yaml"
    write_config(path, [target_dict("web", trace, mode="observe")])
    mono, clock = FakeMono(), ManualClock(NOW)
    d, sources, platforms, results = make_daemon(path, monotonic=mono, clock=clock)
    try:
        d.tick()
        settle(d)
        assert results[-1].status == "observed" and platforms["web"].applies == []
        # an invalid edit: rejected, the running config stays
        doc = yaml.safe_load(path.read_text())
        doc["targets"][0]["mode"] = "yolo"
        edit_then_tick(d, path, doc, mono, clock)
        assert d.config.targets[0].mode == "observe"
        assert "config reload rejected" in caplog.text and "targets[0].mode" in caplog.text
        assert results[-1].status == "observed"
        # a valid edit: auto from the next cycle on
        doc["targets"][0]["mode"] = "auto"
        edit_then_tick(d, path, doc, mono, clock, later=10)
        assert d.workers["web"].target.mode == "auto"
        assert results[-1].status == "applied" and platforms["web"].capacity == 20
    finally:
        d.shutdown(1)


def test_a_target_removed_from_the_file_leaves_the_metrics(tmp_path, trace):
    """Its series stayed, frozen: ForescaleCycleStale fired minutes later for
    a target that no longer existed, and its mode series kept
    ForescaleNeverSucceeded pending."""
    from prometheus_client import generate_latest

    from engine.metrics import EngineMetrics

    path = tmp_path / "c.yaml"
    write_config(path, [target_dict("web", trace, mode="observe"), target_dict("disk", trace, mode="observe")])
    mono, clock, metrics = FakeMono(), ManualClock(NOW), EngineMetrics()
    d, *_ = make_daemon(path, monotonic=mono, clock=clock, metrics=metrics)
    try:
        d.tick()
        settle(d)
        text = generate_latest(metrics.registry).decode()
        assert 'target="disk"' in text and 'forescale_last_success_timestamp_seconds{target="disk"}' in text
        doc = yaml.safe_load(path.read_text())
        doc["targets"] = doc["targets"][:1]
        edit_then_tick(d, path, doc, mono, clock)
        assert list(d.workers) == ["web"]
        text = generate_latest(metrics.registry).decode()
        assert 'target="disk"' not in text and 'target="web"' in text
    finally:
        d.shutdown(1)


def test_a_file_whose_bytes_did_not_change_is_not_reloaded(tmp_path, trace, caplog):
    """A new mtime alone (an editor saving in two writes, a touch) reloaded
    the config, logged it, and moved the next cycle off its schedule."""
    import logging

    path = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe")])
    mono = FakeMono()
    d, *_ = make_daemon(path, monotonic=mono)
    try:
        with caplog.at_level(logging.INFO, logger="forescale"):
            os.utime(path, (time.time() + 5, time.time() + 5))
            d.tick()
            settle(d)
            assert "config reloaded" not in caplog.text
            doc = yaml.safe_load(path.read_text())
            doc["targets"][0]["mode"] = "dry-run"
            edit_then_tick(d, path, doc, mono, later=10)
        assert caplog.text.count("config reloaded") == 1 and d.workers["web"].target.mode == "dry-run"
    finally:
        d.shutdown(1)


def test_sighup_asks_for_a_reload(tmp_path, trace):
    path = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe")])
    d, *_ = make_daemon(path, monotonic=FakeMono())
    old = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        d.install_signals()
        os.kill(os.getpid(), signal.SIGHUP)
        assert d.reload_event.wait(2)
        os.kill(os.getpid(), signal.SIGTERM)
        assert d.stop_event.wait(2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        d.shutdown(1)


def test_a_second_daemon_on_the_same_state_file_is_refused(tmp_path, trace):
    path = write_config(tmp_path / "c.yaml", [target_dict("web", trace)])
    d, *_ = make_daemon(path)
    try:
        with pytest.raises(StateLocked, match="one daemon per state file"):
            make_daemon(path)
    finally:
        d.shutdown(1)
    make_daemon(path)[0].shutdown(1)  # released on shutdown


def test_daemons_on_a_postgresql_state_share_the_targets_and_each_runs_only_those_it_leads(tmp_path, trace,
                                                                                         pg_url):
    names = [f"svc-{i}" for i in range(6)]
    path = write_config(tmp_path / "c.yaml", [target_dict(n, trace) for n in names], state=pg_url,
                        ha={"shards": 4, "lease": "30s"})
    mono_a, mono_b, clock = FakeMono(), FakeMono(), ManualClock(NOW)
    a, _, plat_a, res_a = make_daemon(path, monotonic=mono_a, clock=clock)
    b, _, plat_b, res_b = make_daemon(path, monotonic=mono_b, clock=clock)  # no file lock: a second replica
    try:
        a.leases.renew()  # a sees b: keeps its share, hands the rest back
        b.leases.renew()
        assert len(a.leases.held()) == len(b.leases.held()) == 2
        for d in (a, b):
            d.tick()
            settle(d)
        ran_a, ran_b = {r.target for r in res_a}, {r.target for r in res_b}
        assert ran_a | ran_b == set(names) and not ran_a & ran_b  # each target once, by one replica
        assert ran_a == {n for n in names if a.leases.holds(n)}
        assert set(plat_a) >= ran_a and not any(p.applies for n, p in plat_a.items() if n not in ran_a)
        assert all(r.ok and r.status == "applied" for r in res_a + res_b)
        assert all(v is None for v in a.ready().values())  # led and run, or led by b while a renews
        # every intent names the lease it was taken under
        rec = a.workers[sorted(ran_a)[0]].store.decisions(sorted(ran_a)[0], limit=5)
        intent = [x for x in audit.records(a.lock_store, kind="decision") if x["payload"]["status"] == "intent"]
        assert {x["payload"]["outcome"]["lease"]["holder"] for x in intent} == {a.leases.holder, b.leases.holder}
        assert rec[0]["status"] == "applied"
        # a stops: hands its shards back; b takes them at its next pass and runs those targets too
        a.shutdown(1)
        b.leases.renew()
        assert len(b.leases.held()) == 4
        mono_b.t += 300
        clock.advance(STEP)
        b.tick()
        settle(b)
        assert {r.target for r in res_b} == set(names)
    finally:
        a.shutdown(1)
        b.shutdown(1)


# ----------------------------------------------------------- real processes
def _live_config(tmp_path: Path) -> Path:
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    start = now - 40 * STEP
    write_trace(tmp_path / "live.csv", [100.0] * 60, start=start)  # runs 20 steps into the future
    return write_config(tmp_path / "live.yaml", [target_dict("web", tmp_path / "live.csv")])


def _forescale(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_decision(db: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db.exists():
            try:
                with sqlite3.connect(db) as c:
                    if c.execute("SELECT COUNT(*) FROM decisions WHERE status='applied'").fetchone()[0]:
                        return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no decision within {timeout}s: {proc.communicate()}")


def test_forescale_run_exits_cleanly_on_sigterm_and_refuses_a_second_instance(tmp_path):
    cfg = _live_config(tmp_path)
    db = tmp_path / "state.db"
    first = _forescale("run", "--config", str(cfg), "--tick", "0.05")
    try:
        _wait_for_decision(db, first)
        second = _forescale("run", "--config", str(cfg))
        out, err = second.communicate(timeout=30)
        assert second.returncode == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("forescale: error:") and "holds the lock" in lines[0]
        t0 = time.monotonic()
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=10)
        assert first.returncode == 0, err
        assert time.monotonic() - t0 < 5
        assert "forescale stopped" in err
    finally:
        if first.poll() is None:
            first.kill()
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        statuses = [r[0] for r in c.execute("SELECT status FROM decisions")]
    assert "intent" not in statuses and "applied" in statuses


# ------------------------------------------------------------- deployment
def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined."""
    out, buf = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        buf += s[:-1] + " " if s.endswith("\\") else s
        if not s.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def test_dockerfile_runs_the_daemon_as_non_root_with_state_on_a_volume():
    ins = _dockerfile()
    stages = [a for i, a in ins if i == "FROM"]
    assert len(stages) == 2 and stages[0].startswith("${PYTHON_IMAGE}")
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in ins
    assert ("ARG", "EXTRAS=holt-winters,prophet,aws,alibaba,k8s") in ins  # no torch unless asked; the planner's default needs holt-winters
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM"):]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1] == "forescale"
    assert ("VOLUME", '["/var/lib/forescale"]') in final
    assert ("EXPOSE", "9464") in final
    assert ("ENTRYPOINT", '["forescale"]') in final
    assert ("CMD", '["run", "--config", "/etc/forescale/config.yaml"]') in final
    (health,) = [a for i, a in final if i == "HEALTHCHECK"]
    assert "http://127.0.0.1:9464/healthz" in health
    for instr, args in ins:
        if instr == "COPY" and "--from=" not in args:
            *sources, _dest = args.split()
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for instr, args in ins:
        if instr == "COPY" and "--from=" not in args:
            for src in args.split()[:-1]:
                assert src.split("/")[0] not in ignored


def test_dockerfile_healthcheck_command_runs(tmp_path):
    """The HEALTHCHECK's command, run against a real metrics endpoint."""
    (health,) = [a for i, a in _dockerfile() if i == "HEALTHCHECK"]
    cmd = yaml.safe_load(health[health.index("CMD") + 3:].strip())
    from engine.server import serve

    metrics = EngineMetrics()
    with serve(metrics, "127.0.0.1", 0) as server:
        code = cmd[2].replace("127.0.0.1:9464", f"127.0.0.1:{server.port}")
        assert subprocess.run([sys.executable, "-c", code], timeout=10).returncode == 0
    code = cmd[2].replace("127.0.0.1:9464", f"127.0.0.1:{server.port}")
    assert subprocess.run([sys.executable, "-c", code], timeout=10, capture_output=True).returncode != 0
    # a daemon listening elsewhere: the URL from the environment (it was fixed to 9464)
    with serve(metrics, "127.0.0.1", 0) as server:
        env = {**os.environ, "FORESCALE_HEALTHCHECK_URL": f"http://127.0.0.1:{server.port}/healthz"}
        assert subprocess.run([sys.executable, "-c", cmd[2]], timeout=10, env=env).returncode == 0


def _unit() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    cur = None
    for line in (ROOT / "deploy/systemd/forescale.service").read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("["):
            cur = sections.setdefault(s.strip("[]"), {})
            continue
        k, _, v = s.partition("=")
        cur.setdefault(k, []).append(v)
    return sections


def test_systemd_unit_is_hardened_and_reloads_with_sighup():
    svc = _unit()["Service"]
    assert svc["User"] == ["forescale"] or svc.get("DynamicUser") == ["yes"]
    assert svc["StateDirectory"] == ["forescale"]
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert svc["Restart"] == ["on-failure"]
    assert svc["ExecStart"][0].endswith("forescale run --config /etc/forescale/config.yaml")
    for k, v in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                 ("PrivateTmp", "yes"), ("CapabilityBoundingSet", "")):
        assert svc[k] == [v], k
    assert _unit()["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    import shutil

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "forescale.service"
    # verify checks that ExecStart exists; point it at a binary that does
    unit.write_text((ROOT / "deploy/systemd/forescale.service").read_text()
                    .replace("/opt/forescale/bin/forescale", "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


# ---------------------------------------------------------------- examples
@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_example_configs_validate(example, capsys):
    from engine import cli

    assert cli.main(["validate", "--config", str(ROOT / "examples" / example)]) == 0
    assert "valid" in capsys.readouterr().out


def test_the_examples_cover_each_kind_of_target():
    from engine.config import load_config

    seen = {}
    for p in (ROOT / "examples").glob("*.yaml"):
        for t in load_config(p).targets:
            seen.setdefault((t.source.type, t.actuator.type, t.mode), p.name)
    kinds = {(s, a) for s, a, _ in seen}
    assert ("csv", "dry-run") in kinds and ("prometheus", "kubernetes") in kinds
    assert ("prometheus", "aws-asg") in kinds and ("prometheus", "alibaba-ecs") in kinds
    assert any(m == "approve" for *_, m in seen)


def test_json_log_lines_carry_the_target_and_decision_id(tmp_path, trace):
    import io
    import json
    import logging

    from engine.logs import JsonFormatter

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("forescale")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace)])
        d, sources, platforms, results = make_daemon(cfg, monotonic=FakeMono())
        d.workers["web"].live.source.mode = "down"
        d.tick()
        settle(d)
        d.shutdown(1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    about = [x for x in lines if x["logger"] == "forescale.daemon" and "web" in x["msg"]]
    assert about and all(x["target"] == "web" for x in about)
    err = [x for x in about if x["level"] == "error"]
    assert err and "connection refused" in err[0]["msg"]
    assert err[0]["decision_id"] == results[0].decision.id


def test_a_reload_whose_plugins_cannot_be_built_is_rejected(tmp_path, trace):
    from engine.core.errors import PluginError

    path = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe")])

    def bactuator(t, c=None):
        if t.name == "boom":
            raise PluginError("actuator 'aws-asg' needs the aws extra: pip install 'forescale[aws]'")
        return Platform(capacity=5)

    d = Daemon(path, clock=ManualClock(NOW), monotonic=FakeMono(),
               build_source=lambda t, c: build_source(t, c), build_actuator=bactuator)
    try:
        write_config(path, [target_dict("web", trace, mode="auto"), target_dict("boom", trace)])
        assert d.reload() is False
        assert list(d.workers) == ["web"] and d.workers["web"].target.mode == "observe"
        write_config(path, [target_dict("web", trace, mode="auto")])
        assert d.reload() is True and d.workers["web"].target.mode == "auto"
    finally:
        d.shutdown(1)


def test_forecast_error_and_coverage_reach_the_metrics_endpoint(tmp_path):
    # a ramp: persistence lags it by exactly the lead time, so the error is known
    values = [100.0 + 2 * i for i in range(60)]
    trace = write_trace(tmp_path / "ramp.csv", values)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe")])
    mono, clock, metrics = FakeMono(), ManualClock(NOW), EngineMetrics()
    d, sources, platforms, results = make_daemon(cfg, monotonic=mono, clock=clock, metrics=metrics)
    try:
        for _ in range(8):
            d.tick()
            settle(d)
            mono.t += 300
            clock.advance(STEP)
        at = {"target": "web", "horizon": "300"}  # the lead time
        mae = metrics.registry.get_sample_value("forescale_forecast_mae", at)
        bias = metrics.registry.get_sample_value("forescale_forecast_bias", at)
        cov = metrics.registry.get_sample_value("forescale_forecast_coverage_ratio", at)
        # lead 5 min + hold 5 min: persistence on a +2/step ramp is 2 (one
        # step ahead) or 4 (two steps ahead) below the actual
        assert mae is not None and 2.0 < mae < 4.0
        assert bias is not None and bias == pytest.approx(-mae)
        assert cov is not None and 0.0 <= cov <= 1.0
    finally:
        d.shutdown(5)


def test_forecasts_are_pushed_to_a_configured_pushgateway(tmp_path, trace):
    from tests.support.prom import recording_pushgateway

    with recording_pushgateway() as (url, got):
        cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe")],
                           server={"enabled": False, "pushgateway": url})
        d, sources, platforms, results = make_daemon(cfg, monotonic=FakeMono(), metrics=EngineMetrics())
        try:
            d.tick()
            settle(d)
        finally:
            d.shutdown(5)
    assert len(got) == 1 and got[0][1] == "/metrics/job/forescale/target/web"
    assert 'forescale_forecast_demand{horizon="300",level="point",target="web"}' in got[0][2].decode()


def test_a_pushgateway_that_is_down_only_counts_an_error(tmp_path, trace):
    from tests.support.prom import free_port

    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe")],
                       server={"enabled": False, "pushgateway": f"http://127.0.0.1:{free_port()}"})
    metrics = EngineMetrics()
    d, sources, platforms, results = make_daemon(cfg, monotonic=FakeMono(), metrics=metrics)
    try:
        d.tick()
        settle(d)
    finally:
        d.shutdown(5)
    assert results[0].ok and results[0].decision is not None
    assert d.errors["web"] == {"push": 1}
    # the error count the docs promise is on /metrics (it was only in memory)
    from prometheus_client import generate_latest

    assert 'forescale_push_errors_total{target="web"} 1.0' in generate_latest(metrics.registry).decode()


def test_the_daemon_prunes_the_state_file_as_retention_says_and_keeps_every_decision(tmp_path):
    trace = write_trace(tmp_path / "load.csv", [100.0] * 100)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe")],
                       retention={"forecasts": "1h", "samples": "3h"})
    mono, clock = FakeMono(), ManualClock(NOW)
    d, *_ = make_daemon(cfg, monotonic=mono, clock=clock)
    try:
        for _ in range(48):  # four hours of cycles; the daemon prunes once an hour
            d.tick()
            settle(d)
            mono.t += 300
            clock.advance(STEP)
    finally:
        d.shutdown(5)
    with Store(tmp_path / "state.db") as s:
        last_prune = NOW + 36 * STEP  # the 37th tick is 3 h after the first
        rows = s.forecast_records("web", with_actual=False)
        assert min(r["ts"] for r in rows) >= to_epoch(last_prune - timedelta(hours=1))
        # everything recorded since that prune is still there
        assert len([r for r in rows if r["made_at"] > to_epoch(last_prune)]) == 2 * 11
        samples = s.cached_samples("web")
        assert samples.timestamps[0] >= to_epoch(last_prune - timedelta(hours=3))
        assert samples.timestamps[0] > to_epoch(T0)  # the first fetch cached from T0 on: those went
        assert len(s.decisions("web", limit=1000)) == 48  # the audit log is kept (decisions: forever)


@pytest.mark.parametrize("retention, message", [
    ({"forecasts": "0s"}, "retention.forecasts: 0:00:00 must be positive, or null to keep forever"),
    ({"decisions": "soon"}, "retention.decisions"),
    ({"models": "-1d"}, "retention.models"),
])
def test_a_bad_retention_is_a_config_error_naming_the_field(tmp_path, trace, retention, message):
    from engine.config import load_config
    from engine.core.errors import ConfigError

    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace)], retention=retention)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(cfg)


def test_the_daemon_counts_fallback_cycles_by_reason_and_logs_their_share(tmp_path, trace, caplog):
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, mode="observe")])
    mono, clock, metrics = FakeMono(), ManualClock(NOW), EngineMetrics()
    d, sources, platforms, results = make_daemon(cfg, monotonic=mono, clock=clock, metrics=metrics)
    try:
        for k in range(4):  # one good cycle, then the source is down for three
            if k == 1:
                d.workers["web"].live.source.mode = "down"
            d.tick()
            settle(d)
            mono.t += 300
            clock.advance(STEP)
        assert d.fallback_summary() == [("web", 0.75, {"NoForecast": 3})]
        assert metrics.registry.get_sample_value("forescale_fallback_cycles_total",
                                                 {"target": "web", "reason": "NoForecast"}) == 3
        caplog.set_level("INFO", logger="forescale.daemon")
        mono.t += 3600  # the hourly summary
        d.tick()
        settle(d)
    finally:
        d.shutdown(1)
    assert "target web: 75% of cycles fell back to reactive since the last summary (NoForecast 3)" in caplog.text


def test_the_next_cycle_starts_beside_one_stuck_in_the_actuator_and_never_acts_with_it(tmp_path, trace):
    from tests.support.live import hanging_platform

    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, timeout="30s")])
    platform, gate, entered = hanging_platform()
    mono, clock = FakeMono(), ManualClock(NOW)
    d, sources, platforms, results = make_daemon(cfg, monotonic=mono, clock=clock, platforms={"web": platform})
    w = d.workers["web"]
    try:
        d.tick()
        assert entered.wait(5)
        mono.t += 300  # past the timeout, and the next start is due
        clock.advance(STEP)
        d.tick()
        assert w.thread is not w.stuck and w.stuck.is_alive()
        for _ in range(100):  # the cycle started beside it ends by itself
            if not w.busy:
                break
            time.sleep(0.05)
        timeout, beside = results[-2:]
        assert "cycle timed out" in timeout.error and timeout.details["timeout"]
        assert beside.now == NOW + STEP and beside.status == "skipped" and beside.decision.desired == 20
        rec = w.store.decision(beside.decision.id)
        assert rec["status"] == "skipped" and "still acting" in rec["outcome"]["error"]
        assert len(platform.applies) == 1  # never two cycles in the actuator at once
        gate.set()
        assert w.wait(5)
        first = w.store.decisions("web", limit=10)[-1]
        assert first["at"] == "2024-03-01T01:40:00Z" and first["status"] == "applied"
        mono.t += 300
        clock.advance(STEP)
        platform.on_apply = None
        d.tick()
        settle(d)
        assert results[-1].ok and results[-1].status == "hold" and platform.capacity == 20
        assert len(platform.applies) == 1
    finally:
        gate.set()
        d.shutdown(2)
