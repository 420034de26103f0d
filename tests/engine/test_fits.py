"""Per-series fits on an executor (``forescale fit``): every target's model
fitted in a worker process and saved as its checkpoint; the engine's first
cycle then restores it instead of fitting, and forecasts with it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine.build import build_targets
from engine.config import load_config
from engine.core.types import Series
from engine.core.units import from_epoch, isoformat
from engine.executor import LocalExecutor, TaskFailure
from engine.fits import FitJob, FittedModel, fit_models
from engine.sources.csv import read_csv
from engine.store import Store
from tests.support import ROOT, TRACES, write_trace

CPU = TRACES / "nab" / "ec2_cpu_utilization_53ea38.csv"


def test_a_fitted_model_comes_back_as_bytes_that_load_and_forecast() -> None:
    s = read_csv(CPU)
    h = Series(s.timestamps[-2000:], s.values[-2000:])
    [fitted, short] = fit_models([FitJob("cpu", h, "seasonal_naive", {"season": "daily"}),
                                  FitJob("short", h[:3], "seasonal_naive", {})],
                                 LocalExecutor(workers=1)).values()
    assert isinstance(fitted, FittedModel) and fitted.history_end == int(h.timestamps[-1])
    model = fitted.load()
    assert model.version == fitted.version
    fc = model.predict(from_epoch(int(h.timestamps[-1])), 3, (0.5, 0.9))
    assert np.all(np.isfinite(fc.point))
    assert isinstance(short, TaskFailure) and short.reason.startswith("InsufficientHistory")
    assert short.attempts == 1  # a history that cannot fit is not retried


def test_fit_on_a_local_cluster_saves_checkpoints_the_engine_restores(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    pytest.importorskip("statsmodels")
    end = int(time.time()) // 300 * 300
    n = 4 * 288
    real = read_csv(CPU).values[-n:]
    targets = [
        {"name": "cpu", "source": {"type": "csv", "path": write_trace(tmp_path / "cpu.csv", end, real)},
         "forecaster": {"name": "holt_winters", "history": "4d"}, "policy": {"capacity_per_replica": 5}},
        {"name": "naive", "source": {"type": "csv", "path": write_trace(tmp_path / "n.csv", end, real * 2)},
         "forecaster": {"name": "seasonal_naive", "history": "4d"}, "policy": {"capacity_per_replica": 5}},
        {"name": "new", "source": {"type": "csv", "path": write_trace(tmp_path / "new.csv", end, np.ones(1))},
         "forecaster": {"name": "holt_winters"}, "policy": {"capacity_per_replica": 5}},
    ]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state": "s.db", "targets": targets}))
    r = subprocess.run([sys.executable, "-m", "engine.cli", "fit", "--config", str(cfg), "--executor", "dask",
                        "--workers", "2", "--at", isoformat(from_epoch(end)), "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert r.returncode == 1, r.stderr  # "new" has one sample
    doc = json.loads(r.stdout)
    assert doc["executor"]["kind"] == "dask" and doc["executor"]["tasks"] == 3
    rows = doc["targets"]
    assert rows["cpu"]["fitted"].startswith("holt_winters:") and rows["naive"]["fitted"].startswith("seasonal_naive:")
    assert "InsufficientHistory" in rows["new"]["error"]
    assert (tmp_path / "s.db.models" / "cpu.model").exists()

    conf = load_config(cfg)
    with Store(conf.state_path) as store:
        live = {t.target.name: t for t in build_targets(conf, store)}
        res = live["cpu"].run(from_epoch(end))
    assert res.details.get("model", "").startswith(f"model {rows['cpu']['fitted']} restored"), res.details
    assert res.forecast is not None and res.forecast.model_version == rows["cpu"]["fitted"]  # not refitted
    assert not res.decision.fallback
