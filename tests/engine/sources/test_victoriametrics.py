"""The Prometheus source against a real VictoriaMetrics server (the Debian
package): the same query_range API, the same code path. Weeks of a shared
trace are imported over VictoriaMetrics' own import API and read back."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import timedelta

import httpx
import numpy as np
import pytest

from engine.core.errors import ConfigError
from engine.sources.csv import read_csv
from engine.sources.prometheus import PrometheusConfig, PrometheusSource
from engine.core.units import from_epoch

from tests.support.prom import TRACES, free_port


@pytest.fixture(scope="module")
def victoria(tmp_path_factory):
    binary = shutil.which("victoria-metrics")
    if binary is None:
        pytest.skip("victoria-metrics not installed (apt-get install victoria-metrics)")
    traces = {name: TRACES / "nab" / f"{name}.csv" for name in ("ec2_cpu_utilization_5f5533", "ec2_cpu_utilization_53ea38")}
    port = free_port()
    data = tmp_path_factory.mktemp("vm")
    proc = subprocess.Popen([binary, f"-storageDataPath={data}", f"-httpListenAddr=127.0.0.1:{port}",
                             "-retentionPeriod=100y", "-search.latencyOffset=0s"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/health", timeout=1).text.strip() == "OK":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("victoria-metrics did not start")
        end = int(time.time()) // 300 * 300 - 600
        served = {}
        lines = []
        for name, path in traces.items():
            s = read_csv(path)
            ts = s.timestamps - s.timestamps[-1] + end
            served[name] = (ts, s.values)
            lines += [f'load{{trace="{name}"}} {v} {t * 1000}' for t, v in zip(ts.tolist(), s.values.tolist())
                      if v == v]
        r = httpx.post(f"{url}/api/v1/import/prometheus", content="\n".join(lines), timeout=30)
        assert r.status_code == 204, r.text
        httpx.get(f"{url}/internal/force_flush", timeout=10)
        yield url, end, served
    finally:
        proc.terminate()
        proc.wait(10)


def test_two_weeks_read_back_equal_in_chunks(victoria):
    url, end, served = victoria
    name = "ec2_cpu_utilization_5f5533"
    ts, vs = served[name]
    # 600 points per request: the 14 days arrive in 7 requests
    src = PrometheusSource(PrometheusConfig(url=url, query=f'load{{trace="{name}"}}', step="5m",
                                            max_points_per_request=600))
    got = src.fetch(from_epoch(int(ts[0]) - 300), from_epoch(end))
    assert np.array_equal(got.timestamps, ts)
    assert np.allclose(got.values, vs, rtol=1e-12, atol=1e-12)


def test_several_series_need_an_aggregate(victoria):
    url, end, served = victoria
    cfg = dict(url=url, query="load", step="5m")
    with pytest.raises(ConfigError, match="aggregate"):
        PrometheusSource(PrometheusConfig(**cfg)).fetch(from_epoch(end - 3600), from_epoch(end))
    got = PrometheusSource(PrometheusConfig(**cfg, aggregate="sum")).fetch(from_epoch(end - 3600),
                                                                          from_epoch(end))
    a, b = (dict(zip(*[x.tolist() for x in served[n]])) for n in served)
    assert got.values.tolist() == pytest.approx([a[t] + b[t] for t in got.timestamps.tolist()])


def test_a_bad_query_is_a_config_error_naming_it(victoria):
    url, end, _ = victoria
    src = PrometheusSource(PrometheusConfig(url=url, query="sum(load", step="5m"),
                           interval=timedelta(minutes=5))
    with pytest.raises(ConfigError, match=r"sum\(load"):
        src.fetch(from_epoch(end - 3600), from_epoch(end))
