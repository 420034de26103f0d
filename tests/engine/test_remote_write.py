"""Remote write: the wire format, retries and drops against a recording
receiver, and the written series queried back from a real Prometheus."""

from __future__ import annotations

import threading

import cramjam
import httpx
import pytest

from engine.config import RemoteWriteConfig
from engine.core.errors import ConfigError
from engine.remote_write import RemoteWriter, TimeSeries, backoff, cycle_series, encode_write_request
from tests.support.prom import PrometheusServer, free_port, require_binaries
from tests.support.remote_write import Receiver, decode
from tests.support.replay import demo_replay


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    return demo_replay(tmp_path_factory.mktemp("rw"), cycles=8)


def writer(url: str, metrics, sleeps: list | None = None, **cfg) -> RemoteWriter:
    config = RemoteWriteConfig(url=url, **cfg)
    return RemoteWriter(config, metrics, sleep=(sleeps.append if sleeps is not None else None),
                        environ={"RW_TOKEN": "tok-123"}).start()


def dropped(metrics) -> float:
    return metrics.registry.get_sample_value("forescale_remote_write_dropped_samples_total") or 0.0


def test_encoding_round_trips_and_sorts_labels():
    ts = TimeSeries((("target", "web"), ("__name__", "x")), ((1.5, 1700000000123), (-2.0, 5)))
    (series,) = decode(bytes(cramjam.snappy.compress_raw(encode_write_request([ts]))))
    assert list(series[0]) == ["__name__", "target"] and series[0]["target"] == "web"
    assert series[1] == [(1.5, 1700000000123), (-2.0, 5)]


def test_a_cycle_is_written_with_the_protocol_headers_at_the_cycles_now(replay):
    rec = Receiver(204)
    try:
        w = writer(rec.url, replay.metrics, bearer_token_env="RW_TOKEN")
        res = replay.results[-1]
        w.on_result(res)
        assert w.flush()
        w.close()
    finally:
        rec.close()
    (headers, body), = rec.got
    assert headers["Content-Encoding"] == "snappy" and headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert headers["Authorization"] == "Bearer tok-123"
    got = {tuple(sorted(labels.items())): samples for labels, samples in decode(body)}
    now_ms = int(res.now.timestamp() * 1000)
    point600 = (("__name__", "forescale_forecast_demand"), ("horizon", "600"), ("level", "point"),
                ("target", "rds-demo"))
    expected = {h: v for h, lv, v in replay.metrics.forecast_series("rds-demo", res.forecast) if lv == "point"}
    assert got[point600] == [(pytest.approx(expected["600"]), now_ms)]
    mape = (("__name__", "forescale_forecast_mape_ratio"), ("horizon", "600"), ("target", "rds-demo"))
    assert 0 < got[mape][0][0] < 1 and got[mape][0][1] == now_ms
    assert all(s[0][1] == now_ms for s in got.values())  # never a future timestamp


def test_5xx_and_429_are_retried_with_backoff_then_sent(replay):
    rec, sleeps = Receiver(503, 429, 204), []
    try:
        w = writer(rec.url, replay.metrics, sleeps)
        before = dropped(replay.metrics)
        w.submit(cycle_series(replay.metrics, replay.results[-1]))
        assert w.flush()
        w.close()
    finally:
        rec.close()
    assert len(rec.got) == 3 and sleeps == [0.5, 1.0] and dropped(replay.metrics) == before


def test_a_4xx_is_not_retried_and_out_of_retries_is_dropped_and_counted(replay):
    series = cycle_series(replay.metrics, replay.results[-1])
    n = sum(len(s.samples) for s in series)
    rec, sleeps = Receiver(400), []
    try:
        w = writer(rec.url, replay.metrics, sleeps)
        before = dropped(replay.metrics)
        w.submit(series)
        assert w.flush()
        assert len(rec.got) == 1 and sleeps == [] and dropped(replay.metrics) == before + n
        rec.statuses = [500]
        w.submit(series)
        assert w.flush()
        w.close()
    finally:
        rec.close()
    assert len(rec.got) == 1 + 4 and sleeps == [0.5, 1.0, 2.0]  # max_retries 3
    assert dropped(replay.metrics) == before + 2 * n


def test_a_slow_receiver_never_blocks_the_cycle_a_full_queue_drops(replay):
    gate = threading.Event()
    series = cycle_series(replay.metrics, replay.results[-1])
    n = sum(len(s.samples) for s in series)

    class Slow(httpx.BaseTransport):
        def handle_request(self, request):
            gate.wait(10)
            return httpx.Response(204)

    w = RemoteWriter(RemoteWriteConfig(url="http://127.0.0.1:1/w", queue_size=1), replay.metrics,
                     transport=Slow(), environ={}).start()
    before = dropped(replay.metrics)
    import time

    t0 = time.perf_counter()
    for _ in range(4):
        w.submit(series)  # the first is in flight, one waits, the rest drop
        time.sleep(0.05)
    assert time.perf_counter() - t0 < 5.0  # a blocking submit would wait out the 10 s gate
    gate.set()
    assert w.flush()
    w.close()
    assert dropped(replay.metrics) == before + 2 * n


def test_missing_credentials_are_one_clear_error(replay):
    with pytest.raises(ConfigError, match="bearer_token_env: the environment variable NOPE is not set"):
        RemoteWriter(RemoteWriteConfig(url="http://x/w", bearer_token_env="NOPE"), replay.metrics, environ={})
    with pytest.raises(ValueError, match="not both"):
        RemoteWriteConfig(url="http://x/w", bearer_token_env="A", basic_auth={"username": "u", "password_env": "P"})


def test_backoff():
    assert [backoff(i) for i in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff(0, "3") == 3.0 and backoff(0, "soon") == 0.5


def receiving_prometheus(tmp_path) -> PrometheusServer:
    """A real Prometheus, started, taking remote writes."""
    prom, _tool = require_binaries()
    data = tmp_path / "data"
    data.mkdir()
    return PrometheusServer(prom, data, tmp_path, port=free_port(),
                            extra_args=("--web.enable-remote-write-receiver",)).start()


@pytest.mark.prometheus
def test_written_series_are_queried_back_from_a_real_prometheus(tmp_path, replay):
    server = receiving_prometheus(tmp_path)
    try:
        w = writer(f"{server.url}/api/v1/write", replay.metrics)
        for res in replay.results[-3:]:
            w.on_result(res)
        assert w.flush()
        w.close()
        last = replay.results[-1]
        expected = {(h, lv): v for h, lv, v in replay.metrics.forecast_series("rds-demo", last.forecast)}
        r = httpx.get(f"{server.url}/api/v1/query", timeout=10,
                      params={"query": 'forescale_forecast_demand{target="rds-demo"}', "time": last.now.timestamp()})
        result = r.json()["data"]["result"]
        got = {(s["metric"]["horizon"], s["metric"]["level"]): float(s["value"][1]) for s in result}
        assert got == pytest.approx(expected)
        assert {s["value"][0] for s in result} == {last.now.timestamp()}
        # the documented query shape works on the written series
        q = 'max by (target) (forescale_forecast_demand{level="0.9",horizon="600"})'
        r = httpx.get(f"{server.url}/api/v1/query", params={"query": q, "time": last.now.timestamp()}, timeout=10)
        (row,) = r.json()["data"]["result"]
        assert float(row["value"][1]) == pytest.approx(expected[("600", "0.9")])
        r = httpx.get(f"{server.url}/api/v1/query", timeout=10,
                      params={"query": "forescale_forecast_mape_ratio", "time": last.now.timestamp()})
        (mape,) = r.json()["data"]["result"]
        assert mape["metric"]["horizon"] == "600" and 0 < float(mape["value"][1]) < 1
        # three cycles, three samples per series, at each cycle's now
        r = httpx.get(f"{server.url}/api/v1/query", timeout=10, params={
            "query": 'forescale_forecast_demand{level="point",horizon="600"}[20m]', "time": last.now.timestamp()})
        (rng,) = r.json()["data"]["result"]
        assert [int(t) for t, _ in rng["values"]] == [int(x.now.timestamp()) for x in replay.results[-3:]]
    finally:
        server.stop()


@pytest.mark.prometheus
def test_the_configured_labels_tell_two_daemons_series_apart_in_a_real_prometheus(tmp_path, replay):
    """Two daemons with a target of one name wrote into one series, their
    values interleaved; the same Prometheus scraping forescale held each
    series twice, with nothing to tell the written one apart."""
    server = receiving_prometheus(tmp_path)
    try:
        last = replay.results[-1]
        for instance in ("staging", "prod"):
            w = writer(f"{server.url}/api/v1/write", replay.metrics,
                       labels={"job": "forescale", "instance": instance})
            w.on_result(last)
            assert w.flush()
            w.close()
        r = httpx.get(f"{server.url}/api/v1/query", timeout=10, params={
            "query": 'forescale_forecast_demand{target="rds-demo",level="point",horizon="600"}',
            "time": last.now.timestamp()})
        got = sorted((s["metric"]["job"], s["metric"]["instance"]) for s in r.json()["data"]["result"])
        assert got == [("forescale", "prod"), ("forescale", "staging")]
    finally:
        server.stop()
    # forescale's own labels cannot be overwritten
    with pytest.raises(Exception, match="target: forescale's own series labels"):
        RemoteWriteConfig(url="http://127.0.0.1:9/api/v1/write", labels={"target": "x"})


def test_tls_with_a_configured_ca_and_basic_auth(tmp_path, replay):
    import base64

    from engine.config import parse_config
    from tests.support.prom import self_signed

    cert, ctx = self_signed(tmp_path)
    (tmp_path / "ca.pem").write_bytes(cert.read_bytes())
    rec = Receiver(204, tls=ctx)
    try:
        cfg = parse_config({"server": {"remote_write": {
            "url": rec.url, "basic_auth": {"username": "fs", "password_env": "RW_PASSWORD"},
            "tls": {"ca_file": "ca.pem"}}},  # relative: next to the config file
            "targets": [{"name": "web", "source": {"type": "replay", "path": "x.csv"},
                         "policy": {"capacity_per_replica": 10}}]}, base_dir=tmp_path)
        rw = cfg.server.remote_write
        assert rw.tls.ca_file == tmp_path / "ca.pem"
        w = RemoteWriter(rw, replay.metrics, environ={"RW_PASSWORD": "pw"}).start()
        w.submit(cycle_series(replay.metrics, replay.results[-1]))
        assert w.flush()
        w.close()
        # without the CA the handshake fails: retried, then dropped
        before = dropped(replay.metrics)
        plain = RemoteWriter(RemoteWriteConfig(url=rec.url, max_retries=0), replay.metrics, environ={}).start()
        plain.submit(cycle_series(replay.metrics, replay.results[-1]))
        assert plain.flush()
        plain.close()
    finally:
        rec.close()
    (headers, _body), = rec.got
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"fs:pw").decode()
    assert dropped(replay.metrics) > before
    with pytest.raises(ConfigError, match="server.remote_write.tls.ca_file: no such file"):
        parse_config({"server": {"remote_write": {"url": rec.url, "tls": {"ca_file": "nope.pem"}}},
                      "targets": [{"name": "web", "source": {"type": "replay", "path": "x.csv"},
                                   "policy": {"capacity_per_replica": 10}}]}, base_dir=tmp_path)


def test_remote_write_without_cramjam_is_one_line_naming_the_extra(tmp_path):
    import subprocess
    import sys

    from tests.support import ROOT

    cfg = tmp_path / "c.yaml"
    cfg.write_text("server: {enabled: false, remote_write: {url: 'http://127.0.0.1:1/w'}}\n"
                   "targets:\n  - name: web\n    source: {type: replay, path: x.csv}\n"
                   "    policy: {capacity_per_replica: 10}\n")
    code = ("import sys; sys.modules['cramjam'] = None\nfrom engine.cli import main\n"
            f"sys.exit(main(['run', '--config', {str(cfg)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        "forescale: error: server.remote_write needs cramjam, which is not installed: "
        "pip install 'forescale[remote-write]'"]
    assert not (tmp_path / "forescale.db").exists()  # refused before the daemon started


def test_a_remote_write_url_with_credentials_is_refused_without_echoing_them():
    from engine.config import parse_config
    from engine.core.errors import ConfigError

    doc = {"server": {"remote_write": {"url": "http://bob:s3cr3t-pw@127.0.0.1:9/api/v1/write"}},
           "targets": [{"name": "web", "source": {"type": "csv", "path": "x.csv"},
                        "policy": {"capacity_per_replica": 1}}]}
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    assert "server.remote_write.url" in str(exc.value) and "s3cr3t-pw" not in str(exc.value)


def test_a_changed_remote_write_takes_effect_on_reload(tmp_path, caplog):
    """The daemon's running config drives the writer: a reload to another
    URL writes there from the next cycle on (the old receiver gets no more),
    removing the section stops writing, unusable settings keep the running
    writer and say why."""
    import logging
    import os
    from datetime import timedelta

    import yaml

    from engine.core.clock import ManualClock
    from engine.core.units import from_epoch, to_epoch
    from engine.daemon import Daemon
    from engine.demo import DEMO_TRACE
    from engine.metrics import EngineMetrics
    from engine.remote_write import FollowingWriter
    from engine.sources.csv import read_csv
    from tests.support.replay import target

    a, b = Receiver(204), Receiver(204)
    path = tmp_path / "c.yaml"

    def write(rw):
        server = {"enabled": False, **({"remote_write": rw} if rw else {})}
        path.write_text(yaml.safe_dump({"state": "s.db", "server": server,
                                        "targets": [target("rds-demo", DEMO_TRACE)]}))

    write({"url": a.url, "max_retries": 0})
    clock = ManualClock(from_epoch(to_epoch(read_csv(DEMO_TRACE).end - timedelta(hours=2)) // 300 * 300))
    metrics = EngineMetrics()
    holder: list[Daemon] = []
    writer = FollowingWriter(lambda: holder[0].config.server.remote_write if holder else None, metrics)
    daemon = Daemon(path, clock=clock, metrics=metrics, on_result=writer.on_result)
    holder.append(daemon)

    def cycle():
        res = daemon.workers["rds-demo"].live.run(clock.now())
        daemon.on_result(res)
        clock.advance(timedelta(minutes=5))
        if writer.writer is not None:
            assert writer.writer.flush()

    try:
        cycle()
        assert len(a.got) == 1 and writer.writer is not None and writer.writer.url == a.url
        write({"url": b.url, "max_retries": 0})
        assert daemon.reload()
        cycle()
        cycle()
        assert len(a.got) == 1 and len(b.got) == 2
        # a credential variable that is not set: logged, the running writer goes on
        write({"url": a.url, "bearer_token_env": "FORESCALE_TEST_NO_SUCH_TOKEN"})
        os.environ.pop("FORESCALE_TEST_NO_SUCH_TOKEN", None)
        with caplog.at_level(logging.ERROR, logger="forescale.remote_write"):
            assert daemon.reload()
            cycle()
        assert len(b.got) == 3 and len(a.got) == 1
        assert any("FORESCALE_TEST_NO_SUCH_TOKEN" in r.getMessage() and f"still writing to {b.url}" in r.getMessage()
                   for r in caplog.records)
        # the section removed (SIGHUP sets the daemon's reload_event; its
        # next tick calls this same reload): writing stops
        write(None)
        assert daemon.reload() and daemon.config.server.remote_write is None
        cycle()
        cycle()
        assert writer.writer is None and len(b.got) == 3 and len(a.got) == 1
    finally:
        daemon.shutdown(0)
        writer.close()
        a.close()
        b.close()
