"""Planner tuning by replay on an executor: one task per trace (its
settings share the trace's recorded forecasts) on a Dask LocalCluster gives
the rows of the same replay in this process."""

from __future__ import annotations

import pytest

from benchmarks.frontier import POLICIES
from benchmarks.planner_tuning import TraceRows, tune_trace
from engine.executor import DaskExecutor, LocalExecutor, Task, TaskFailure
from engine.sources.csv import read_csv
from tests.support import ROOT, TRACES

CONFIGS = {"default": POLICIES["default"], "calm": POLICIES["predictive-calm"]}


def _traces():
    return {"demo": read_csv(ROOT / "engine" / "data" / "demo_rds_cpu.csv")[:1500],
            "cpu": read_csv(TRACES / "nab" / "ec2_cpu_utilization_5f5533.csv")[:1500]}


def _key(rows: TraceRows):
    return [(c, lead, round(r["violation_ratio"], 12), round(r["actions_ratio"], 12),
             r["policy"]["violation_fraction"]) for c, lead, r in rows.rows]


def test_replays_on_a_local_cluster_equal_the_replays_in_this_process() -> None:
    pytest.importorskip("distributed")
    traces = _traces()
    here = LocalExecutor(workers=1).run(tune_trace, [Task(n, (raw, n, CONFIGS, (10,))) for n, raw in traces.items()])
    with DaskExecutor(workers=2, memory_limit="500MiB") as ex:
        tasks = [Task(n, (ex.share(raw), n, CONFIGS, (10,))) for n, raw in traces.items()]
        there = ex.run(tune_trace, tasks + [Task("bad", (None, "bad", CONFIGS, (10,)))])
    assert not any(isinstance(r, TaskFailure) for r in there[:2])
    assert [_key(r) for r in there[:2]] == [_key(r) for r in here]
    assert [r.trace for r in there[:2]] == ["demo", "cpu"] and len(there[0].rows) == 2
    assert isinstance(there[2], TaskFailure) and there[2].kind == "error"
