"""Faults the live loop must survive, each with the same four checks: no
scale-down on missing data, a clear reason in the decision log, an error
recorded (in the CycleResult, and as a metric through the daemon), and
recovery without a restart once the fault clears. Plus crash safety: a
process that dies between deciding and the end of actuation neither loses
the decision nor applies it twice after a restart."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta

import pytest

from engine.build import build_source
from engine.core.clock import ManualClock
from engine.daemon import Daemon
from engine.core.errors import PermanentActuatorError
from engine.metrics import EngineMetrics
from engine.store import Store

from tests.support.live import (
    STEP, T0, FlakySource, Platform, build_live, hanging_platform, target_dict, write_config, write_trace,
)
from tests.support import ROOT

# demand 100 (20 replicas) for 20 samples, then 20 (4 replicas): a cycle
# that sees the fall would scale down
VALUES = [100.0] * 20 + [20.0] * 40
HIGH = T0 + 19 * STEP  # last high sample


@pytest.fixture
def env(tmp_path):
    trace = write_trace(tmp_path / "load.csv", VALUES)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace)])
    store = Store(tmp_path / "state.db")
    platform = Platform(capacity=5)
    source = None

    def make(**kw):
        nonlocal source
        from engine.config import load_config

        c = load_config(cfg)
        source = FlakySource(build_source(c.targets[0], c))
        return build_live(cfg, store, kw.get("platform", platform), source=source)

    yield make, store, platform, trace, tmp_path
    store.close()


def data_step(store, decision_id):
    rec = store.decision(decision_id)
    return rec, rec["steps"][0]


def integrity(path) -> str:
    with sqlite3.connect(path) as c:
        return c.execute("PRAGMA integrity_check").fetchone()[0]


# ----------------------------------------------------------- metric source
def test_source_down_at_start_holds_and_recovers(env):
    make, store, platform, *_ = env
    live = make()
    live.source.mode = "down"
    res = live.run(HIGH)
    assert "connection refused" in res.fetch_error and not res.ok
    d = res.decision
    assert d.fallback and d.desired == d.current == 5  # nothing known: hold what is there
    rec, step = data_step(store, d.id)
    assert step["reason"] == "MissingObservation" and "connection refused" in step["message"]
    assert platform.applies == []
    live.source.mode = "ok"
    res = live.run(HIGH + timedelta(seconds=30))
    assert res.ok and res.status == "applied" and platform.capacity == 20


@pytest.mark.parametrize("fault, message", [
    ("down", "connection refused"),
    ("slow", "read timed out"),  # the source's own timeout fired
    ("garbage", "returned dict, not a Series"),
    ("bug", "ZeroDivisionError"),
])
def test_source_failing_mid_run_never_scales_down(env, fault, message):
    make, store, platform, *_ = env
    live = make()
    assert live.run(HIGH).status == "applied" and platform.capacity == 20
    live.source.mode = fault
    live.source.release.set()  # "slow" returns its timeout at once here
    for k in range(1, 5):  # the demand has fallen meanwhile; the source does not say so
        res = live.run(HIGH + k * STEP)
        assert message in res.fetch_error
        assert res.decision.fallback and res.decision.desired == 20
        rec, step = data_step(store, res.decision.id)
        assert step["reason"] in ("NoForecast", "StaleObservation") and message in step["message"] \
            or "old (max" in step["message"]
    assert platform.capacity == 20 and len(platform.applies) == 1
    live.source.mode = "ok"
    res = live.run(HIGH + 5 * STEP)
    assert res.ok and not res.decision.fallback and res.decision.desired == 4 and platform.capacity == 4


def test_a_source_that_answers_with_nothing_new_goes_stale(env):
    make, store, platform, *_ = env
    live = make()
    live.run(HIGH)
    live.source.mode = "empty"
    res = live.run(HIGH + STEP)
    assert res.fetch_error is None  # one missing sample is normal
    res = live.run(HIGH + 4 * STEP)
    assert "no new samples since" in res.fetch_error
    assert res.decision.fallback and res.decision.desired == 20
    assert store.decision(res.decision.id)["steps"][0]["reason"] in ("NoForecast", "StaleObservation")
    live.source.mode = "ok"
    assert live.run(HIGH + 5 * STEP).ok


def test_a_garbage_csv_is_a_clear_fetch_error(env):
    make, store, platform, trace, _ = env
    live = make()
    live.run(HIGH)
    good = trace.read_text()
    trace.write_text(good + "2024-03-01T05:00:00Z,<html>\n")
    res = live.run(HIGH + STEP)
    assert "is not a number" in res.fetch_error and "load.csv:62" in res.fetch_error
    assert res.decision.desired == 20
    trace.write_text(good)
    assert live.run(HIGH + 2 * STEP).ok


# -------------------------------------------------------------------- clock
def test_clock_jumping_backwards_decides_nothing_until_it_catches_up(env):
    make, store, platform, *_ = env
    live = make()
    live.run(HIGH)
    live.run(HIGH + STEP)
    res = live.run(HIGH - 3 * STEP)
    assert res.decision is None and "moved backwards" in res.error and not res.ok
    assert [r["at"] for r in store.decisions("web")] == ["2024-03-01T01:40:00Z", "2024-03-01T01:35:00Z"]
    # a fresh process (restart) knows the last cycle from the store
    again = make()
    assert "moved backwards" in again.run(HIGH).error
    assert again.run(HIGH + 2 * STEP).ok


def test_clock_jumping_forward_past_the_data_holds(env):
    make, store, platform, trace, _ = env
    live = make()
    live.run(HIGH)
    far = HIGH + timedelta(days=3)  # beyond the trace's end
    res = live.run(far)
    assert res.fetch_error == "metric source: no samples in the history window"
    assert res.decision.fallback and res.decision.desired == 20
    assert store.decision(res.decision.id)["steps"][0]["reason"] == "MissingObservation"
    # data arrives for the new time: the loop resumes by itself
    write_trace(trace, [30.0] * 24, start=far - 23 * STEP)
    res = live.run(far + STEP)
    assert res.ok and res.decision.desired == 6


# -------------------------------------------------------------------- state
HOLDER = textwrap.dedent("""
    import sqlite3, sys
    c = sqlite3.connect(sys.argv[1], isolation_level=None)
    c.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_state_file_locked_by_another_process(env):
    make, store, platform, _, tmp = env
    live = make()
    live.run(HIGH)
    store.db.execute("PRAGMA busy_timeout=200")  # the daemon waits 10 s; the test need not
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp / "state.db")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = live.run(HIGH + STEP)
        assert res.error.startswith("state: state file") and "locked" in res.error
        assert platform.applies[-1][1] == 20 and len(platform.applies) == 1
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert integrity(tmp / "state.db") == "ok"
    res = live.run(HIGH + 2 * STEP)
    assert res.ok and platform.capacity == 4  # recovered, no restart


def test_state_file_full_mid_actuation_is_reconciled_without_applying_twice(env):
    make, store, platform, _, tmp = env
    live = make()

    def disk_fills(desired, p):
        # the disk fills while the platform works; the provider's answer
        # (kept in the outcome) needs new pages
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count={pages}")
        p.result_details = {"response": "x" * 50_000}

    platform.on_apply = disk_fills
    res = live.run(HIGH)
    assert "database or disk is full" in res.error
    assert platform.capacity == 20 and len(platform.applies) == 1
    rec = store.decision(res.decision.id) if res.decision else store.decisions("web")[0]
    assert rec["status"] == "intent"  # the outcome could not be written; the intent was
    assert integrity(tmp / "state.db") == "ok"
    platform.on_apply = None
    store.db.execute("PRAGMA max_page_count=1073741823")  # space again
    res = live.run(HIGH + timedelta(seconds=30))
    assert res.ok and res.status == "hold", res
    assert res.details["reconciled"][0].endswith("applied before the restart (observed 20)")
    assert store.decision(rec["id"])["status"] == "applied"
    assert len(platform.applies) == 1


# ----------------------------------------------------------------- actuator
def test_actuator_failing_then_recovering(env):
    make, store, platform, *_ = env
    live = make()

    def refuse(desired, p):
        raise PermanentActuatorError("AccessDenied: not allowed", request_ids=("req-x",))

    platform.on_apply, platform.set_first = refuse, False
    res = live.run(HIGH)
    assert res.status == "failed" and "AccessDenied" in res.actuation_error
    assert store.decision(res.decision.id)["outcome"]["request_ids"] == ["req-x"]
    platform.read_error = PermanentActuatorError("read: AccessDenied")
    res = live.run(HIGH + STEP)
    assert res.status == "skipped" and "read: AccessDenied" in res.actuation_error
    assert platform.capacity == 5
    platform.on_apply, platform.read_error = None, None
    res = live.run(HIGH + 2 * STEP)
    assert res.ok and platform.capacity == 4  # the demand fell meanwhile


def test_a_hanging_actuator_is_abandoned_by_the_daemon_and_its_outcome_kept(tmp_path):
    trace = write_trace(tmp_path / "load.csv", VALUES)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, timeout="30s")])
    platform, gate, entered = hanging_platform()
    mono = [1000.0]
    results, metrics = [], EngineMetrics()
    d = Daemon(cfg, clock=ManualClock(HIGH), monotonic=lambda: mono[0], metrics=metrics,
               build_actuator=lambda t, c: platform, on_result=results.append)
    try:
        d.tick()
        assert entered.wait(5)
        mono[0] += 31
        d.tick()
        assert "cycle timed out" in results[-1].error
        assert metrics.registry.get_sample_value("forescale_last_success_timestamp_seconds",
                                                 {"target": "web"}) is None
        rec = d.workers["web"].store.decisions("web")[0]
        assert rec["status"] == "intent"  # recorded before the hanging call
        gate.set()
        assert d.workers["web"].wait(5)
        assert results[-1].details["abandoned"] and results[-1].status == "applied"
        assert d.workers["web"].store.decision(rec["id"])["status"] == "applied"
        assert platform.applies == [(rec["id"], 20)]
    finally:
        gate.set()
        d.shutdown(2)


# ------------------------------------------------------------ crash safety
@pytest.mark.parametrize("crash", [SystemExit(1), KeyboardInterrupt()])
def test_crash_after_the_platform_changed_is_not_applied_twice(env, crash):
    make, store, platform, _, tmp = env

    def die(desired, p):
        raise crash  # the platform took the change, the process dies before recording it

    platform.on_apply = die
    with pytest.raises(type(crash)):
        make().run(HIGH)
    assert platform.capacity == 20
    (rec,) = store.decisions("web")
    assert rec["status"] == "intent"
    # restart: a new process on the same state file
    platform.on_apply = None
    with Store(tmp / "state.db") as again:
        live = build_live(tmp / "c.yaml", again, platform)
        res = live.run(HIGH + timedelta(seconds=20))
        assert res.details["reconciled"] == [f"{rec['id']}: applied before the restart (observed 20)"]
        assert res.status == "hold" and len(platform.applies) == 1
        assert again.decision(rec["id"])["status"] == "applied"
        state = again.load_state("web")
        assert state.current == 20 and state.events[-1].to_capacity == 20


def test_crash_before_the_platform_changed_is_decided_again_once(env):
    make, store, platform, _, tmp = env

    def die(desired, p):
        raise SystemExit(1)

    platform.on_apply, platform.set_first = die, False
    with pytest.raises(SystemExit):
        make().run(HIGH)
    assert platform.capacity == 5
    platform.on_apply = None
    with Store(tmp / "state.db") as again:
        live = build_live(tmp / "c.yaml", again, platform)
        res = live.run(HIGH + timedelta(seconds=20))
        first = again.decisions("web")[-1]
        assert first["status"] == "abandoned" and first["outcome"]["observed"] == 5
        assert res.status == "applied" and platform.capacity == 20
        assert [d for _, d in platform.applies] == [20, 20]  # the crashed call, then one real apply
        assert len(again.decisions("web", status="applied")) == 1


def test_killed_process_mid_apply_is_reconciled_on_restart(tmp_path):
    """A real process killed (SIGKILL) while its actuator call runs."""
    trace = write_trace(tmp_path / "load.csv", VALUES)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace)])
    marker = tmp_path / "platform.txt"
    marker.write_text("5")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(tmp_path.parent)!r})
        from engine.store import Store
        from tests.support.live import Platform, build_live, T0, STEP
        from pathlib import Path
        m = Path({str(marker)!r})
        def hang(desired, p):
            m.write_text(str(desired))   # the platform changed...
            print("applying", flush=True)
            time.sleep(60)               # ...and the process is killed before recording it
        p = Platform(capacity=int(m.read_text()), on_apply=hang)
        build_live(Path({str(cfg)!r}), Store({str(tmp_path / "state.db")!r}), p).run(T0 + 19 * STEP)
    """)

    root = ROOT
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    try:
        assert proc.stdout.readline().strip() == "applying"
    finally:
        proc.kill()
        proc.wait(10)
    assert integrity(tmp_path / "state.db") == "ok"
    platform = Platform(capacity=int(marker.read_text()))
    with Store(tmp_path / "state.db") as store:
        res = build_live(cfg, store, platform).run(HIGH + timedelta(seconds=20))
        assert res.details["reconciled"][0].endswith("applied before the restart (observed 20)")
        assert res.status == "hold" and platform.applies == []


# --------------------------------------- a Prometheus-like endpoint on loopback
class FakePrometheus:
    """``/api/v1/query_range`` over HTTP on 127.0.0.1, answering like
    Prometheus from ``VALUES`` (one series, 5-minute grid from T0), or
    failing as ``mode`` says: ``down`` (connection dropped), ``503``,
    ``slow`` (answers after 2 s), ``garbage`` (an HTML page), ``empty``,
    ``negative`` (every sample -5: a delta or a difference in the query)."""

    def __init__(self) -> None:
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlparse

        from engine.core.units import to_epoch

        fake = self
        self.mode = "ok"
        self.requests = 0
        t0 = to_epoch(T0)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # Prometheus takes query_range as a form POST too
                n = int(self.headers.get("Content-Length", 0))
                self.do_GET(self.rfile.read(n).decode())

            def do_GET(self, form: str = ""):
                fake.requests += 1
                q = {k: v[0] for k, v in parse_qs(urlparse(self.path).query + "&" + form).items()}
                if fake.mode == "down":
                    self.connection.close()
                    return
                if fake.mode == "503":
                    return self._send(503, b"service unavailable", "text/plain")
                if fake.mode == "slow":
                    import time

                    time.sleep(2)
                if fake.mode == "garbage":
                    return self._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
                start, end, step = int(float(q["start"])), int(float(q["end"])), int(q["step"])
                values = [] if fake.mode == "empty" else [
                    [t, "-5" if fake.mode == "negative" else str(VALUES[(t - t0) // 300])]
                    for t in range(start, end + 1, step) if 0 <= (t - t0) // 300 < len(VALUES)]
                result = [{"metric": {"job": "web"}, "values": values}] if values else []
                body = {"status": "success", "data": {"resultType": "matrix", "result": result}}
                self._send(200, json.dumps(body).encode())

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # the dropped connections of "down" are on purpose

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prom(tmp_path):
    fake = FakePrometheus()
    source = {"type": "prometheus", "url": fake.url, "query": "sum(rate(http_requests_total[5m]))",
              "step": "5m", "timeout": "1s", "retry_attempts": 2, "max_backoff": "1s"}
    target = target_dict("web", tmp_path / "unused.csv")
    target["source"] = source
    cfg = write_config(tmp_path / "c.yaml", [target])
    yield fake, cfg, tmp_path
    fake.close()


def test_prometheus_faults_through_the_daemon(prom):
    """Down at start, then up; down, slow, garbage and empty mid-run; each
    time: fetch error counted, no scale-down, a reason in the decision log,
    and recovery at the next cycle."""
    fake, cfg, tmp = prom
    platform = Platform(capacity=5)
    clock, mono, metrics, results = ManualClock(HIGH - 2 * STEP), [1000.0], EngineMetrics(), []
    d = Daemon(cfg, clock=clock, monotonic=lambda: mono[0], metrics=metrics,
               build_actuator=lambda t, c: platform, on_result=results.append)
    d.workers["web"].live.source._sleep = lambda s: None  # no real backoff waits

    def cycle():
        d.tick()
        assert d.workers["web"].wait(10)
        mono[0] += 300
        clock.advance(STEP)
        return results[-1]

    def errors():
        return metrics.registry.get_sample_value("forescale_fetch_errors_total", {"target": "web"})

    try:
        fake.mode = "down"
        res = cycle()
        assert "prometheus" in res.fetch_error and res.decision.desired == 5 and errors() == 1
        assert d.workers["web"].store.decision(res.decision.id)["steps"][0]["reason"] == "MissingObservation"
        fake.mode = "ok"
        res = cycle()
        assert res.ok and platform.capacity == 20
        cycle()  # HIGH: the last high sample
        n = 1
        for mode, words in (("503", "503"), ("slow", "timed out"), ("garbage", "not a Prometheus API answer"),
                            ("negative", "negative sample(s), the newest -5 at"), ("down", "")):
            fake.mode = mode
            res = cycle()  # the demand has fallen to 20 (4 replicas) meanwhile
            n += 1
            assert res.fetch_error and words.lower() in res.fetch_error.lower(), (mode, res.fetch_error)
            assert res.decision.fallback and res.decision.desired == 20 and errors() == n
            step = d.workers["web"].store.decision(res.decision.id)["steps"][0]
            assert step["reason"] in ("NoForecast", "StaleObservation") and "fallback" in step["message"]
        # a negative sample (it once sized 13 -> 1 in one cycle) is neither cached nor trained on
        assert (d.workers["web"].store.db.execute("SELECT COUNT(*) FROM samples WHERE value < 0").fetchone()[0]
                == 0)
        fake.mode = "empty"
        res = cycle()  # answers, but nothing new: stale after max_staleness (15 m)
        assert res.fetch_error and "no new samples" in res.fetch_error and res.decision.desired == 20
        assert platform.capacity == 20
        fake.mode = "ok"
        res = cycle()
        assert res.ok and not res.decision.fallback and platform.capacity == 4
    finally:
        d.shutdown(2)


def test_a_source_that_hangs_costs_each_cycle_a_fallback_never_the_cycle(tmp_path):
    """A source whose fetch blocks far past the cycle's timeout: the fetch is
    abandoned at its deadline (half the timeout), so the daemon records a
    decision every interval, each a fallback, none scaling down, and no
    cycle outlives its timeout or holds up the next."""
    trace = write_trace(tmp_path / "load.csv", VALUES)
    cfg = write_config(tmp_path / "c.yaml", [target_dict("web", trace, timeout="2s")])
    platform, clock, mono, results = Platform(capacity=5), ManualClock(HIGH), [1000.0], []
    sources: list[FlakySource] = []

    def bsource(t, c):
        sources.append(FlakySource(build_source(t, c)))
        return sources[-1]

    d = Daemon(cfg, clock=clock, monotonic=lambda: mono[0], build_source=bsource,
               build_actuator=lambda t, c: platform, on_result=results.append)
    w = d.workers["web"]
    try:
        d.tick()
        assert w.wait(10) and results[-1].status == "applied" and platform.capacity == 20
        sources[-1].mode = "slow"  # blocks up to 10 s per call, 5 times the timeout
        for k in range(1, 7):  # the demand falls meanwhile; the source cannot say so
            mono[0] += 300
            clock.advance(STEP)
            d.tick()
            assert w.wait(5), "the cycle did not end by itself"
            res = results[-1]
            assert res.now == HIGH + k * STEP and res.duration_s < 2.0
            assert "metric source" in res.fetch_error
            assert res.decision.fallback and res.decision.desired >= res.decision.current == 20
        assert "no answer within 1s" in results[1].fetch_error
        recs = w.store.decisions("web", limit=100)
        assert len(recs) == 7 and all(r["fallback"] for r in recs[:6])
        assert platform.capacity == 20 and len(platform.applies) == 1
        assert not any(r.details.get("timeout") for r in results)
        sources[-1].mode = "ok"
        sources[-1].release.set()  # the stuck calls end; their answers are dropped
        for _ in range(100):
            if w.live.abandoned_fetches == 0:
                break
            time.sleep(0.05)
        mono[0] += 300
        clock.advance(STEP)
        d.tick()
        assert w.wait(10) and results[-1].ok and not results[-1].decision.fallback
    finally:
        for s in sources:
            s.release.set()
        d.shutdown(2)
