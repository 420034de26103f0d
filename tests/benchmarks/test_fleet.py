"""The fleet benchmark end to end on a small fleet: targets made from the
traces (time-shifted, scaled copies), one template in the daemon, a cold and
a steady batched cycle, each target decided from one batched forecast."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

import benchmarks.fleet as bench  # noqa: E402
from engine.core.types import Series  # noqa: E402
from forecasters.lstm import LevelFreeLSTM  # noqa: E402
from tests.support import TRACES  # noqa: E402


@pytest.fixture()
def fixture_traces(monkeypatch):
    monkeypatch.setattr(bench, "TRACES_DIR", TRACES)
    monkeypatch.setattr(bench, "qualifying_traces", lambda root: sorted((root / "nab").glob("ec2_cpu*.csv"))[:3])


def test_targets_are_shifted_and_scaled_copies_of_the_traces(fixture_traces):
    fleet = bench.fleet_series(8)
    assert len(fleet) == 8 and len({len(s) for s in fleet.values()}) == 1
    ends = {int(s.timestamps[-1]) for s in fleet.values()}
    assert len(ends) == 1  # every target reports up to the same step
    assert all(np.isfinite(s.values).all() for s in fleet.values())
    assert len({round(float(s.values.mean()), 6) for s in fleet.values()}) == 8  # no two alike


def test_one_size_runs_a_cold_and_a_steady_batched_cycle(fixture_traces, tmp_path):
    start = 1_700_000_000
    t = np.arange(3000)
    model = LevelFreeLSTM({"hidden_size": 8, "head_width": 16, "epochs": 1, "device": "cpu"}).fit(
        {"a": Series(start + 300 * t, 50 + 10 * np.sin(2 * np.pi * t / 288))})
    path = tmp_path / "g.pt"
    model.save(path)
    out = bench.one_size(12, str(path), 1)
    assert out["discovered"] == 12 and [c["cycle"] for c in out["cycles"]] == ["cold", "steady"]
    for c in out["cycles"]:
        assert (c["ok"], c["fallback"], c["batched"], c["batched_calls"]) == (12, 0, 12, 1)
        assert set(c["seconds"]) == {"fetch", "gather", "forecast", "decide", "record", "act"}
    assert "| 12 | in-process | steady |" in bench.markdown(
        {"command": "x", "model": {}, "threads": 1, "machine": "m", "runs": [out]})
