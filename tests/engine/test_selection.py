"""Per-target model selection on an executor (``forescale select``): the
same scores as the ``auto`` forecaster, folds that combine exactly, failures
as data, and a written config whose chosen forecaster the engine then uses."""

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
from engine.core.units import from_epoch
from engine.executor import DaskExecutor, LocalExecutor
from engine.selection import SelectionJob, select_models, split_folds
from engine.sources.csv import read_csv
from engine.store import Store
from forecasters.auto import AutoForecaster, AutoParams, Candidate
from tests.support import ROOT, TRACES, write_trace

NAIVES = (Candidate(name="seasonal_persistence"), Candidate(name="persistence"), Candidate(name="seasonal_naive"))
CPU = TRACES / "nab" / "ec2_cpu_utilization_53ea38.csv"


def _history(path: Path = CPU, n: int = 6 * 288) -> Series:
    s = read_csv(path).regular(__import__("datetime").timedelta(minutes=5))
    return s[len(s) - n:]


def _sine(n: int, end: int, noise: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50 + 30 * np.sin(2 * np.pi * t / 288) + noise * rng.standard_normal(n)


def test_one_fold_scores_exactly_as_the_auto_forecaster() -> None:
    h = _history()
    params = AutoParams(candidates=NAIVES, horizon_steps=3, eval_window=288, n_origins=24)
    auto = AutoForecaster(params)
    auto.fit(h)
    [sel] = select_models([SelectionJob("cpu", h, params, folds=1)], LocalExecutor(workers=1)).values()
    assert sel.ok and sel.choice.key == auto.choice
    assert dict(sel.scores) == auto.scores  # the same arithmetic, bit for bit
    assert sel.origins == 24 and sel.folds == 1


def test_folds_split_the_origins_into_contiguous_blocks() -> None:
    assert split_folds(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split_folds([5, 6], 4) == [[5], [6]]


def test_a_dask_cluster_gives_the_same_choices_and_scores_as_the_local_pool() -> None:
    pytest.importorskip("distributed")
    end = 1_700_000_000 // 300 * 300
    n = 4 * 288
    ts = end - 300 * np.arange(n)[::-1]
    jobs = [SelectionJob("cpu", _history(), AutoParams(candidates=NAIVES, horizon_steps=2, n_origins=16), 4),
            SelectionJob("daily", Series(ts, _sine(n, end)), AutoParams(candidates=NAIVES, horizon_steps=6,
                                                                        n_origins=16), 4),
            SelectionJob("short", Series(ts[:3], np.ones(3)), AutoParams(candidates=NAIVES), 4)]
    local = select_models(jobs, LocalExecutor(workers=1))
    with DaskExecutor(workers=2, memory_limit="300MiB") as ex:
        remote = select_models(jobs, ex)
    for name in ("cpu", "daily"):
        assert remote[name].choice == local[name].choice
        assert dict(remote[name].scores) == pytest.approx(dict(local[name].scores), rel=1e-12)
    assert local["daily"].choice.name in ("seasonal_naive", "seasonal_persistence")
    assert local["daily"].scores[local["daily"].choice.key] < local["daily"].scores["persistence"]
    # too little history: a typed failure with the reason, on both
    for res in (local["short"], remote["short"]):
        assert not res.ok and res.reason.startswith("InsufficientHistory")


def test_a_candidate_whose_tasks_keep_failing_is_skipped_with_the_reason(monkeypatch) -> None:
    import engine.selection as selection
    from forecasters.auto import create_candidate

    class Broken:
        def fit(self, history):
            raise RuntimeError("segfault in the solver")

    monkeypatch.setattr(selection, "create_candidate",
                        lambda c: Broken() if c.name == "seasonal_naive" else create_candidate(c))
    h = _history()
    [sel] = select_models([SelectionJob("cpu", h, AutoParams(candidates=NAIVES, n_origins=8), 2)],
                          LocalExecutor(workers=1, retries=1)).values()
    assert sel.ok and sel.choice.key != "seasonal_naive" and "seasonal_naive" not in sel.scores
    assert sel.skipped["seasonal_naive"] == ("task cpu/seasonal_naive/0 failed (error): "
                                             "RuntimeError: segfault in the solver")


def test_select_on_a_local_cluster_writes_a_config_the_engine_then_uses(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    end = int(time.time()) // 300 * 300
    n = 5 * 288
    real = read_csv(CPU).values[-n:]
    targets = [
        {"name": "cpu", "source": {"type": "csv", "path": write_trace(tmp_path / "cpu.csv", end, real)},
         "forecaster": {"name": "seasonal_naive", "history": "5d", "refit_every": "6h"},
         "policy": {"capacity_per_replica": 5}},
        {"name": "daily", "source": {"type": "csv", "path": write_trace(tmp_path / "daily.csv", end, _sine(n, end))},
         "forecaster": {"name": "persistence", "history": "5d"},
         "policy": {"capacity_per_replica": 5, "lead_time": "30m"}},
        {"name": "new", "source": {"type": "csv", "path": write_trace(tmp_path / "new.csv", end, np.ones(4))},
         "forecaster": {"name": "persistence"}, "policy": {"capacity_per_replica": 5}},
    ]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state": str(tmp_path / "s.db"), "targets": targets}))
    out = tmp_path / "chosen.yaml"
    r = subprocess.run([sys.executable, "-m", "engine.cli", "select", "--config", str(cfg), "--executor", "dask",
                        "--workers", "2", "--candidate", "persistence", "--candidate", "seasonal_naive",
                        "--folds", "3", "--write-config", str(out), "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert r.returncode == 1, r.stderr  # one target could not be evaluated
    # the LocalCluster's two dozen INFO lines (scheduler at, worker registered) stay out of stderr
    assert "INFO distributed" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert doc["executor"]["kind"] == "dask" and doc["executor"]["workers"] == 2
    assert doc["executor"]["tasks"] == 2 * 2 * 3 and doc["executor"]["failed_tasks"] == 0
    res = {t["target"]: t for t in doc["targets"]}
    assert res["daily"]["choice"]["name"] == "seasonal_naive"
    assert res["daily"]["scores"]["seasonal_naive"] < res["daily"]["scores"]["persistence"]
    assert res["new"]["choice"] is None and "InsufficientHistory" in res["new"]["reason"]
    assert doc["written"] == {"path": str(out), "targets": ["cpu", "daily"]}

    chosen = load_config(out)
    assert chosen.target("daily").forecaster.name == "seasonal_naive"
    assert chosen.target("cpu").forecaster.name == res["cpu"]["choice"]["name"]
    assert chosen.target("cpu").forecaster.refit_every.total_seconds() == 6 * 3600  # other settings kept
    assert chosen.target("new").forecaster.name == "persistence"  # no choice: unchanged
    # the engine forecasts the target with the chosen model
    with Store(chosen.state_path) as store:
        daily = next(t for t in build_targets(chosen, store) if t.target.name == "daily")
        result = daily.run(from_epoch(end))
    assert result.decision is not None and not result.decision.fallback, result.decision.steps[0].message
    assert result.forecast.model == "seasonal_naive"


def test_select_text_report_on_the_local_pool(tmp_path: Path) -> None:
    end = int(time.time()) // 300 * 300
    n = 3 * 288
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"executor": {"kind": "local", "workers": 1}, "targets": [
        {"name": "daily", "source": {"type": "csv", "path": write_trace(tmp_path / "d.csv", end, _sine(n, end))},
         "forecaster": {"name": "persistence", "history": "3d"}, "policy": {"capacity_per_replica": 5}}]}))
    r = subprocess.run([sys.executable, "-m", "engine.cli", "select", "--config", str(cfg), "--candidate",
                        "persistence", "--candidate", "seasonal_naive", "--folds", "2"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split()[:2] == ["daily", "seasonal_naive"]
    assert "executor local (1 worker(s)): 4 tasks" in r.stdout


def test_select_connects_to_the_scheduler_named_in_the_config(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    end = int(time.time()) // 300 * 300
    n = 3 * 288
    with DaskExecutor(workers=2, memory_limit="300MiB") as cluster:
        address = cluster.cluster.scheduler_address
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"executor": {"kind": "dask", "address": address}, "targets": [
            {"name": "daily", "source": {"type": "csv", "path": write_trace(tmp_path / "d.csv", end, _sine(n, end))},
             "forecaster": {"name": "persistence", "history": "3d"}, "policy": {"capacity_per_replica": 5}}]}))
        r = subprocess.run([sys.executable, "-m", "engine.cli", "select", "--config", str(cfg), "--candidate",
                            "persistence", "--candidate", "seasonal_naive", "--folds", "2", "--json"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["executor"] == {**doc["executor"], "kind": "dask", "workers": 2, "tasks": 4, "failed_tasks": 0}
        assert doc["targets"][0]["choice"]["name"] == "seasonal_naive"
        # the tasks ran on that cluster's workers
        prefixes = cluster.client.run_on_scheduler(lambda dask_scheduler: sorted(map(str, dask_scheduler.task_prefixes)))
        assert any(p.startswith("score_fold") for p in prefixes), prefixes


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "executor.workers (the config with --executor/--workers/--address): Input should be "
                         "greater than or equal to 1"),
    (["--executor", "local", "--address", "tcp://127.0.0.1:9"], "--address is a Dask scheduler's"),
    (["--address", "http://127.0.0.1:9"], "executor.address"),
])
def test_bad_executor_flags_are_one_clear_error(tmp_path: Path, capsys, flags, message) -> None:
    from engine.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"targets": [{"name": "t", "source": {"type": "csv", "path": "x.csv"},
                                                "policy": {"capacity_per_replica": 1}}]}))
    assert main(["select", "--config", str(cfg), *flags]) == 2
    assert message in capsys.readouterr().err


def test_an_auto_target_is_scored_over_its_own_candidates_and_a_plain_one_keeps_its_model_first() -> None:
    from engine.config import parse_config
    from engine.selection import auto_params_for

    cfg = parse_config({"targets": [
        {"name": "a", "source": {"type": "csv", "path": "x.csv"}, "policy": {"capacity_per_replica": 1},
         "forecaster": {"name": "auto", "params": {"horizon_steps": 5, "candidates": [{"name": "persistence"},
                                                                                     {"name": "seasonal_naive"}]}}},
        {"name": "p", "source": {"type": "csv", "path": "x.csv"},
         "policy": {"capacity_per_replica": 1, "lead_time": "20m", "hold": "5m"},
         "forecaster": {"name": "seasonal_naive", "params": {"season": "weekly"}}}]})
    auto = auto_params_for(cfg.target("a"))
    assert [c.name for c in auto.candidates] == ["persistence", "seasonal_naive"] and auto.horizon_steps == 5
    assert [c.name for c in auto_params_for(cfg.target("a"), ["holt_winters"]).candidates] == ["holt_winters"]
    plain = auto_params_for(cfg.target("p"))
    assert plain.candidates[0] == Candidate(name="seasonal_naive", params={"season": "weekly"})
    assert [c.name for c in plain.candidates[1:]] == ["seasonal_persistence", "persistence", "holt_winters"]
    assert plain.horizon_steps == cfg.target("p").horizon_steps == 5


def test_write_config_into_another_folder_with_relative_paths_is_refused_before_any_backtest(tmp_path: Path):
    """``state: state.db`` copied into another folder named a new, empty
    state there: the daemon pointed at the written file started without its
    decisions, cooldowns, audit chain and models, silently."""
    end = 1_700_000_000
    (tmp_path / "here").mkdir()
    write_trace(tmp_path / "here" / "load.csv", end, np.ones(2000))
    cfg = tmp_path / "here" / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state": "state.db", "targets": [
        {"name": "web", "source": {"type": "csv", "path": "load.csv"}, "policy": {"capacity_per_replica": 5}}]}))
    (tmp_path / "other").mkdir()
    r = subprocess.run([sys.executable, "-m", "engine.cli", "select", "--config", str(cfg), "--write-config",
                        str(tmp_path / "other" / "chosen.yaml"), "--candidate", "persistence", "--folds", "1", "-q"],
                       capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert "relative paths (state: state.db, targets[0].source.path: load.csv) would name other files" in r.stderr
    assert not (tmp_path / "other" / "chosen.yaml").exists()
