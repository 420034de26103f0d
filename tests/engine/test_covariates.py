"""Extra metrics (covariates) reach a forecaster that takes them, through the
live loop: config -> sources -> fetch -> grid -> fit/update."""

from __future__ import annotations

import numpy as np
import pytest

from engine.build import build_targets
from engine.config import parse_config
from engine.core.errors import ConfigError
from engine.store import Store
from engine.core.units import from_epoch

T0 = 1_700_000_000 - (1_700_000_000 % 300)


def _csv(path, values):
    path.write_text("timestamp,value\n" + "".join(f"{T0 + 300 * i},{v}\n" for i, v in enumerate(values)))
    return path


def test_covariates_are_fetched_and_passed_to_the_forecaster(tmp_path):
    pytest.importorskip("torch", reason="the LSTM needs torch (pip install 'forescale[lstm]')")
    n = 3 * 288
    t = np.arange(n)
    req = 100 + 50 * np.sin(2 * np.pi * t / 288)
    cpu = 0.3 * req + 5
    cfg = parse_config({"state": str(tmp_path / "s.db"), "targets": [{
        "name": "web", "mode": "observe",
        "source": {"type": "replay", "path": str(_csv(tmp_path / "cpu.csv", cpu))},
        "covariates": {"requests": {"type": "replay", "path": str(_csv(tmp_path / "req.csv", req))}},
        "forecaster": {"name": "lstm", "params": {"covariates": ["requests"], "lookback": 12, "horizon": 4,
                                                  "hidden_size": 8, "epochs": 1, "seed": 1}},
        "policy": {"capacity_per_replica": 5},
    }]})
    with Store(cfg.state_path) as store:
        (lt,) = build_targets(cfg, store)
        res = lt.run(from_epoch(T0 + 300 * (n - 1)))
    assert res.decision is not None and not res.decision.fallback, res.decision.steps[0].message
    assert res.forecast is not None and res.forecast.model == "lstm"
    got = lt.runner.forecaster._cov_history
    assert set(got) == {"requests"}
    assert np.allclose(got["requests"].values[-5:], req[-5:])


def test_a_failing_covariate_is_reported_and_not_fatal(tmp_path):
    n = 2 * 288
    cfg = parse_config({"state": str(tmp_path / "s.db"), "targets": [{
        "name": "web", "mode": "observe",
        "source": {"type": "replay", "path": str(_csv(tmp_path / "cpu.csv", [10.0] * n))},
        "covariates": {"requests": {"type": "csv", "path": str(tmp_path / "missing.csv")}},
        "forecaster": {"name": "persistence"},
        "policy": {"capacity_per_replica": 5},
    }]})
    with Store(cfg.state_path) as store:
        (lt,) = build_targets(cfg, store)
        res = lt.run(from_epoch(T0 + 300 * (n - 1)))
    assert res.decision is not None and not res.decision.fallback
    assert "requests" in res.details["covariate_errors"]


def test_a_bad_covariate_section_names_its_path():
    with pytest.raises(ConfigError, match=r"targets\[0\]\.covariates\.requests"):
        parse_config({"targets": [{"name": "w", "source": {"type": "csv", "path": "x"},
                                   "covariates": {"requests": {"type": "csv", "pth": "y"}},
                                   "policy": {"capacity_per_replica": 1}}]})
