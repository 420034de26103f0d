"""Cold start end to end: `forescale train-global` trains one LSTM on the
history of existing targets, and a new target with an hour of history
starts from it through `forecaster.init_from`."""

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
from engine.core.errors import ConfigError
from engine.store import Store
from engine.core.units import from_epoch
from tests.support import ROOT

SMALL = {"lookback": 12, "horizon": 4, "hidden_size": 8, "epochs": 1, "seed": 3}


def _trace(path: Path, end: int, n: int, phase: float) -> Path:
    t = np.arange(n)
    v = 50 + 20 * np.sin(2 * np.pi * t / 288 + phase)
    path.write_text("timestamp,value\n" + "".join(f"{end - 300 * (n - 1 - i)},{x:.4f}\n" for i, x in enumerate(v)))
    return path


def test_a_new_target_starts_from_a_global_model(tmp_path):
    pytest.importorskip("torch", reason="the LSTM needs torch (pip install 'forescale[lstm]')")
    end = int(time.time()) // 300 * 300
    targets = [{"name": f"old{i}", "source": {"type": "csv", "path": str(_trace(tmp_path / f"o{i}.csv", end,
                                                                                   3 * 288, i))},
                "forecaster": {"name": "lstm", "history": "3d", "params": SMALL},
                "policy": {"capacity_per_replica": 5}} for i in range(2)]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state": str(tmp_path / "s.db"), "targets": targets}))
    model = tmp_path / "global.pt"
    r = subprocess.run([sys.executable, "-m", "engine.cli", "train-global", "--config", str(cfg), "--out",
                        str(model), "--params", json.dumps(SMALL)], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert model.exists() and "trained on 2 target(s)" in r.stdout

    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({"state": str(tmp_path / "n.db"), "targets": [{
        "name": "new", "mode": "observe",
        "source": {"type": "csv", "path": str(_trace(tmp_path / "new.csv", end, 13, 0.5))},  # one hour
        "forecaster": {"name": "lstm", "init_from": "global.pt", "params": {**SMALL, "finetune_epochs": 0}},
        "policy": {"capacity_per_replica": 5}}]}))
    conf = load_config(new)
    assert conf.targets[0].forecaster.init_from == model  # relative to the config file
    with Store(conf.state_path) as store:
        (lt,) = build_targets(conf, store)
        res = lt.run(from_epoch(end))
    assert res.decision is not None and not res.decision.fallback, res.decision.steps[0].message
    assert res.forecast.model == "lstm"


def test_init_from_a_missing_file_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"targets": [{"name": "w", "source": {"type": "csv", "path": "x"},
                                                "forecaster": {"name": "lstm", "init_from": "nope.pt"},
                                                "policy": {"capacity_per_replica": 1}}]}))
    with pytest.raises(ConfigError, match=r"targets\[0\]\.forecaster\.init_from: no such file"):
        load_config(cfg)


def test_init_from_on_a_model_that_cannot_is_a_config_error(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"targets": [{"name": "w", "source": {"type": "csv", "path": "x"},
                                                "forecaster": {"name": "persistence", "init_from": "m.pt"},
                                                "policy": {"capacity_per_replica": 1}}]}))
    with pytest.raises(ConfigError, match="cannot start from a saved model"):
        load_config(cfg)
