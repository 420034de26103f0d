"""Cold start end to end: `forescale train-global` trains one network on the
history of existing targets: the level-free global model (the default), which
a new target uses through `forecaster: {name: lstm_global, params:
{checkpoint: ...}}`, or the multi-series lstm (`--model lstm`), which a new
target with an hour of history starts from through `forecaster.init_from`."""

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
    r = subprocess.run([sys.executable, "-m", "engine.cli", "train-global", "--model", "lstm", "--config", str(cfg),
                        "--out", str(model), "--params", json.dumps(SMALL)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
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


LEVELFREE = {"hidden_size": 8, "head_width": 16, "epochs": 1, "horizons": [1, 2, 3, 6, 12], "lookback": 12,
             "origin_stride": 4, "seed": 1}


def _levelfree_setup(tmp_path, end):
    targets = [{"name": f"old{i}", "source": {"type": "csv", "path": str(_trace(tmp_path / f"o{i}.csv", end,
                                                                                   4 * 288, i))},
                "forecaster": {"history": "4d"}, "policy": {"capacity_per_replica": 5}} for i in range(2)]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state": str(tmp_path / "s.db"), "targets": targets}))
    return cfg


def test_train_global_trains_the_level_free_model_that_lstm_global_targets_forecast_with(tmp_path):
    pytest.importorskip("torch", reason="the LSTM needs torch (pip install 'forescale[lstm]')")
    end = int(time.time()) // 300 * 300
    cfg = _levelfree_setup(tmp_path, end)
    model = tmp_path / "models" / "global.pt"
    model.parent.mkdir()
    r = subprocess.run([sys.executable, "-m", "engine.cli", "train-global", "--config", str(cfg), "--out",
                        str(model), "--params", json.dumps(LEVELFREE), "--json"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["kind"] == "lstm_global" and out["model"].startswith("lstm_global:") and model.exists()
    assert out["use"] == f"forecaster: {{name: lstm_global, params: {{checkpoint: {model}}}}}"

    new = tmp_path / "new.yaml"  # the checkpoint relative to the config file
    new.write_text(yaml.safe_dump({"state": str(tmp_path / "n.db"), "targets": [{
        "name": "new", "mode": "observe",
        "source": {"type": "csv", "path": str(_trace(tmp_path / "new.csv", end, 2 * 288, 0.5))},
        "forecaster": {"name": "lstm_global", "params": {"checkpoint": "models/global.pt", "device": "cpu"}},
        "policy": {"capacity_per_replica": 5}}]}))
    conf = load_config(new)
    assert conf.targets[0].forecaster.params.checkpoint == str(model)
    with Store(conf.state_path) as store:
        (lt,) = build_targets(conf, store)
        res = lt.run(from_epoch(end))
    assert res.decision is not None and not res.decision.fallback, res.decision.steps[0].message
    assert res.forecast.model == "lstm_global" and res.forecast.model_version.startswith("lstm_global:")

    # the level-free model is not an lstm init_from: one clear error naming what takes it
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"state": str(tmp_path / "b.db"), "targets": [{
        "name": "b", "mode": "observe", "source": {"type": "csv", "path": str(tmp_path / "new.csv")},
        "forecaster": {"name": "lstm", "init_from": "models/global.pt"}, "policy": {"capacity_per_replica": 5}}]}))
    conf = load_config(bad)
    from forecasters.lstm import LSTMForecaster
    from engine.core.errors import ForecastError

    with pytest.raises(ForecastError, match=r"level-free global model \(lstm_global\).*name: lstm_global"):
        LSTMForecaster(conf.targets[0].forecaster.params, init_from=conf.targets[0].forecaster.init_from)


def test_a_multi_series_checkpoint_as_lstm_global_says_how_to_train_the_right_one(tmp_path):
    torch = pytest.importorskip("torch", reason="the LSTM needs torch (pip install 'forescale[lstm]')")
    from engine.core.errors import ForecastError
    from forecasters.lstm import CHECKPOINT_FORMAT, LevelFreeLSTM

    old = tmp_path / "old.pt"  # what train-global wrote before it trained lstm_global by default
    torch.save({"format": CHECKPOINT_FORMAT, "kind": "global"}, old)
    with pytest.raises(ForecastError, match=r"multi-series lstm model.*train-global --model lstm_global"):
        LevelFreeLSTM.load(old)


def test_a_missing_lstm_global_checkpoint_is_a_config_error_naming_the_field(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"targets": [{"name": "w", "source": {"type": "csv", "path": "x"},
                                                "forecaster": {"name": "lstm_global",
                                                               "params": {"checkpoint": "nope.pt"}},
                                                "policy": {"capacity_per_replica": 1}}]}))
    with pytest.raises(ConfigError, match=r"targets\[0\]\.forecaster\.params\.checkpoint: .*no such file"):
        load_config(cfg)


def test_bad_params_for_the_chosen_model_are_one_clear_error(tmp_path):
    pytest.importorskip("torch", reason="the LSTM needs torch (pip install 'forescale[lstm]')")
    cfg = _levelfree_setup(tmp_path, int(time.time()) // 300 * 300)
    r = subprocess.run([sys.executable, "-m", "engine.cli", "train-global", "--config", str(cfg), "--out",
                        str(tmp_path / "m.pt"), "--params", '{"epochs": -1}'], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "--params for lstm_global: epochs" in r.stderr, r.stderr
