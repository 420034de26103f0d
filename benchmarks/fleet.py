"""Fleet benchmark: one batched decision cycle of a template's targets on the
global LSTM, at 1,000 to 10,000 targets: time split and peak memory.

    flock /work/wt/heavy.lock nice -n 10 python -m benchmarks.fleet --targets 1000 3000 10000
    flock /work/wt/heavy.lock nice -n 10 python -m benchmarks.fleet --targets 1000 --prometheus

Targets are made from the shared traces (every trace with at least 14 days
on the 5-minute grid): target ``i`` is trace ``i mod T``, its window
shifted by a random number of steps and its values scaled by a random factor
(log-uniform 0.2-5x), three days of history each. They are one template's
targets (``templates[]``, forescale's own config, ``dry-run`` mode, the
level-free ``lstm_global`` zero-shot on a checkpoint trained beforehand on
the traces' first 10 days, which is not part of the timing) and run in the
daemon (:class:`engine.daemon.TemplateWorker`: discovery, then
:func:`engine.fleet.run_batch`) with a real SQLite state file.

The metric source is **in-process**: the template's query answered from
memory (a ``fetch_all`` over the prepared series, what the Prometheus source
returns after parsing). ``--prometheus`` runs the fetch part against a real
Prometheus 2.42 instead (the series backfilled with promtool; the backfill
is not timed).

Each size runs in a fresh process: cycle 1 is cold (empty state file: the
whole history fetched and cached, each target's model fitted, i.e.
calibrated on its own recent errors), cycle 2 five minutes later is the
steady state (one new sample per target, models updated). Peak memory is the
process' ``ru_maxrss``; the baseline is the same process with the model
loaded and no targets.

Writes ``benchmarks/results/fleet.json`` and ``fleet.md``.

``--per-series holt_winters prophet`` measures instead templates of
per-series models, whose refits the batched cycle sends to the config's
executor: no executor (the refits in the template's thread), the local
process pool and a Dask LocalCluster, ``--workers`` each (the first
``--targets`` size; a few hundred targets keep a run under ten minutes).
Three cycles each: the first (empty state, the executor starting), one a
day later when every refit is due again (the one compared), one five
minutes after that. Writes ``fleet-per-series.json`` and ``.md``::

    flock /work/wt/heavy.lock nice -n 10 python -m benchmarks.fleet --targets 100 --per-series holt_winters prophet

``--static`` does the same for the file's own targets (``targets:``, each
its cycle in its own thread, its refit sent to the executor from there):
``fleet-per-series-static.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.backtest import RESULTS, TRACES_DIR, in_fresh_process, peak_rss_mib, qualifying_traces  # noqa: E402
from engine.core.types import Series  # noqa: E402
from engine.core.units import to_epoch  # noqa: E402
from engine.sources.csv import read_csv  # noqa: E402

STEP = 300
HISTORY_DAYS = 3
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
MODEL = RESULTS / "fleet-global.pt"  # not kept in the repository (rerun to get it)
TRAIN_DAYS = 10


def _traces() -> list[np.ndarray]:
    out = []
    for p in qualifying_traces(TRACES_DIR):
        v = read_csv(p).regular(timedelta(seconds=STEP)).values.astype(np.float64)
        # the traces' gaps carried forward: every target reports every step
        idx = np.where(np.isfinite(v), np.arange(v.size), 0)
        np.maximum.accumulate(idx, out=idx)
        out.append(np.nan_to_num(v[idx], nan=0.0))
    return out


def train_model(path: Path = MODEL, threads: int = 1) -> dict[str, Any]:
    """The global model, trained on the first ``TRAIN_DAYS`` of every trace."""
    import torch

    from forecasters.lstm import LevelFreeLSTM

    torch.set_num_threads(threads)
    start = to_epoch(NOW) - 400 * 86400
    series = {f"trace{i}": Series(start + STEP * np.arange(min(v.size, TRAIN_DAYS * 288)),
                                  v[: TRAIN_DAYS * 288]) for i, v in enumerate(_traces())}
    t0 = time.perf_counter()
    model = LevelFreeLSTM({"epochs": 6, "device": "auto"}).fit(series)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return {"train_s": time.perf_counter() - t0, "parameters": model.n_parameters, "series": len(series)}


def fleet_series(n: int, seed: int = 0, days: float = HISTORY_DAYS) -> dict[str, Series]:
    """``n`` targets' histories of ``days`` ending at NOW (plus one step for
    the steady cycle)."""
    rng = np.random.default_rng(seed)
    traces = _traces()
    steps = int(days * 288) + 2
    end = to_epoch(NOW) + STEP
    ts = end - STEP * np.arange(steps)[::-1]
    out = {}
    for i in range(n):
        v = traces[i % len(traces)]
        shift = int(rng.integers(0, v.size - steps))
        scale = float(np.exp(rng.uniform(np.log(0.2), np.log(5.0))))
        out[f"t{i:05d}"] = Series(ts, v[shift:shift + steps] * scale)
    return out


class MemoryTemplateSource:
    """The template's query answered in-process: every target's series by
    label set, the slice ``(since, now]`` (what ``PrometheusSource.fetch_all``
    returns after parsing)."""

    def __init__(self, series: dict[str, Series]) -> None:
        self.series = {frozenset({("target", k)}): s for k, s in series.items()}
        self.calls = 0

    def fetch_all(self, since: datetime | None, now: datetime) -> dict[frozenset, Series]:
        self.calls += 1
        return {k: s.since(since).until(now) if since is not None else s.until(now) for k, s in self.series.items()}


def config(folder: Path, url: str, model: Path, forecaster: dict[str, Any] | None = None,
           executor: dict[str, Any] | None = None, state: str | None = None) -> Path:
    import yaml

    doc: dict[str, Any] = {"state": state or str(folder / "state.db"), "server": {"enabled": False}, "templates": [{
        "name": "fleet", "source": {"type": "prometheus", "url": url, "query": "sum by (target) (load)",
                                    "timeout": "120s", "max_response_bytes": 2**31},
        "target_name": "{target}", "discover_every": "1h", "interval": "5m", "mode": "dry-run",
        "timeout": "10m",
        "forecaster": {"name": "lstm_global", "history": f"{HISTORY_DAYS}d", "refit_every": "1d",
                       "params": {"checkpoint": str(model)}},
        "policy": {"capacity_per_replica": 10, "target_utilization": 0.6, "min_replicas": 1,
                   "max_replicas": 10000, "lead_time": "10m", "hold": "10m", "max_staleness": "30m"}}]}
    if forecaster is not None:
        doc["templates"][0]["forecaster"] = forecaster
    if executor is not None:
        doc["executor"] = executor
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_size(n: int, model: str, threads: int, prometheus_url: str | None = None,
             forecaster: dict[str, Any] | None = None, executor: dict[str, Any] | None = None,
             cycles: tuple[tuple[str, int], ...] = (("cold", 0), ("steady", STEP)),
             state_url: str | None = None) -> dict[str, Any]:
    """Build ``n`` targets, run ``cycles`` (name, seconds after NOW) in the
    daemon, report (a fresh process). ``forecaster``: the template's instead
    of the global LSTM; ``executor``: the config's executor section (the
    refits go there); ``state_url``: a PostgreSQL state instead of a SQLite
    file."""
    import torch

    from engine.build import build_source
    from engine.core.clock import ManualClock
    from engine.daemon import Daemon
    from forecasters.lstm import shared_levelfree

    torch.set_num_threads(threads)
    logging.disable(logging.INFO)  # a log line per target is not what is measured
    if forecaster is None:
        shared_levelfree(model)  # the model in memory before the baseline
    base_rss = _rss_mib()
    series = fleet_series(n, days=HISTORY_DAYS - min(at for _, at in cycles) / 86400) \
        if prometheus_url is None else {}
    folder = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    cfg = config(folder, prometheus_url or "http://127.0.0.1:9", Path(model), forecaster, executor, state_url)
    memory = MemoryTemplateSource(series)

    def source(t, c, covariate=None):
        return memory if prometheus_url is None else build_source(t, c)

    clock = ManualClock(NOW)
    mono = [0.0]
    d = Daemon(cfg, clock=clock, monotonic=lambda: mono[0], build_source=source)
    tw = d.templates["fleet"]
    out: dict[str, Any] = {"targets": n, "source": "prometheus" if prometheus_url else "in-process",
                           "state": "postgresql" if state_url else "sqlite",
                           "torch_threads": threads,
                           "device": str(shared_levelfree(model)._device) if forecaster is None else "cpu",
                           "forecaster": (forecaster or {}).get("name", "lstm_global"),
                           "executor": executor, "baseline_rss_mib": base_rss, "cycles": []}
    try:
        for k, (label, at) in enumerate(cycles):
            clock.set(NOW + timedelta(seconds=at))
            t0 = time.perf_counter()
            d.tick()
            assert tw.wait(1200), "cycle did not finish"
            wall = time.perf_counter() - t0
            mono[0] += STEP
            rep = tw.last_report
            assert rep is not None and len(rep.results) == n, (len(tw.members), n)
            ok = sum(r.ok for r in rep.results)
            fallback = sum(bool(r.decision and r.decision.fallback) for r in rep.results)
            out["cycles"].append({
                "cycle": label, "wall_s": wall,
                "seconds": {p: round(v, 3) for p, v in rep.seconds.items()},
                "batched": rep.batched, "batched_calls": rep.calls, "ok": ok, "fallback": fallback,
                "refits": rep.refits, "refit_failures": rep.refit_failures, "rss_mib": _rss_mib()})
            if k == 0 and executor is not None:
                # the executor's start (a pool's processes importing the
                # model's library, a LocalCluster) is part of the first
                # cycle only; the daemon keeps it open after
                out["executor_workers"] = d.executor().workers
        out["discovered"] = len(tw.members)
    finally:
        d.shutdown(5)
        logging.disable(logging.NOTSET)
    out["peak_rss_mib"] = peak_rss_mib()
    if state_url is None:
        out["state_file_mib"] = os.path.getsize(folder / "state.db") / 2**20
    return out


class SeriesSource:
    """One static target's metric answered in-process (``fetch``: the slice
    ``(since, now]`` of its series)."""

    def __init__(self, series: Series) -> None:
        self.series = series

    def fetch(self, since: datetime | None, now: datetime) -> Series:
        return self.series.since(since).until(now) if since is not None else self.series.until(now)


def static_size(n: int, forecaster: dict[str, Any], executor: dict[str, Any] | None,
                cycles: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    """``n`` of the file's own targets (``targets:``, each its cycle in its
    own thread) on the per-series ``forecaster``, their refits on
    ``executor`` (None: each in its target's thread); ``cycles`` as in
    :func:`one_size`. The wall time of a cycle is from the tick that starts
    every target's cycle to the end of the last."""
    import yaml

    from engine.core.clock import ManualClock
    from engine.daemon import Daemon

    logging.disable(logging.INFO)
    series = fleet_series(n, days=HISTORY_DAYS - min(at for _, at in cycles) / 86400)
    folder = Path(tempfile.mkdtemp(prefix="fleet-static-bench-"))
    targets = [{"name": name, "source": {"type": "prometheus", "url": "http://127.0.0.1:9", "query": "load"},
                "interval": "5m", "mode": "dry-run", "timeout": "10m", "forecaster": forecaster,
                "policy": {"capacity_per_replica": 10, "target_utilization": 0.6, "min_replicas": 1,
                           "max_replicas": 10000, "lead_time": "10m", "hold": "10m", "max_staleness": "30m"}}
               for name in series]
    doc: dict[str, Any] = {"state": str(folder / "state.db"), "server": {"enabled": False}, "targets": targets}
    if executor is not None:
        doc["executor"] = executor
    cfg = folder / "fleet.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    clock, mono, results = ManualClock(NOW), [0.0], []
    d = Daemon(cfg, clock=clock, monotonic=lambda: mono[0], on_result=results.append,
               build_source=lambda t, c, covariate=None: SeriesSource(series[t.name]))
    out: dict[str, Any] = {"targets": n, "layout": "static", "forecaster": forecaster["name"],
                           "executor": executor, "cycles": []}
    try:
        for k, (label, at) in enumerate(cycles):
            clock.set(NOW + timedelta(seconds=at))
            results.clear()
            t0 = time.perf_counter()
            d.tick()
            for w in d.workers.values():
                assert w.wait(1200), "cycle did not finish"
            wall = time.perf_counter() - t0
            mono[0] += STEP
            assert len(results) == n, (len(results), n)
            out["cycles"].append({
                "cycle": label, "wall_s": wall, "ok": sum(r.ok for r in results),
                "fallback": sum(bool(r.decision and r.decision.fallback) for r in results),
                "refitted_elsewhere": sum("refitted on the" in str(r.details.get("model", "")) for r in results)})
            if k == 0 and executor is not None:
                out["executor_workers"] = d.executor().workers
    finally:
        d.shutdown(5)
        logging.disable(logging.NOTSET)
    return out


def static_per_series(n: int, models: list[str], executors: list[str], workers: int) -> list[dict[str, Any]]:
    """:func:`per_series` for the file's own targets (:func:`static_size`)."""
    runs = []
    for name in models:
        for ex in executors:
            section = EXECUTORS[ex]
            r = in_fresh_process(static_size, n, PER_SERIES[name], None if section is None else section(workers),
                                 PER_SERIES_CYCLES)
            r["model"], r["executor_kind"] = name, ex
            runs.append(r)
            for c in r["cycles"]:
                print(f"{name:>12} on {ex:<5} {n} static targets: {c['cycle']:<6} {c['wall_s']:6.1f} s  "
                      f"refitted elsewhere {c['refitted_elsewhere']}, fallbacks {c['fallback']}", flush=True)
    return runs


def static_markdown(report: dict[str, Any]) -> str:
    lines = ["# Fleet benchmark: the file's own per-series targets on an executor", "",
             f"Command: `{report['command']}`", "",
             f"{report['targets']} targets of the file (`targets:`, each its cycle in its own thread), three days "
             f"of history each, dry-run, a real SQLite state file; machine: {report['machine']}.", "",
             "| model | executor | workers | refit cycle s | cycles ok | refitted elsewhere | first cycle s (ok) | "
             "steady cycle s (ok) | fallbacks |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        first, c, st = r["cycles"]
        where = r["executor_kind"] if r["executor_kind"] != "none" else "none (each target's thread)"
        lines.append(f"| {r['model']} | {where} | {r.get('executor_workers', 1)} | {c['wall_s']:.1f} | "
                     f"{c['ok']} | {c['refitted_elsewhere']} | {first['wall_s']:.1f} ({first['ok']}) | "
                     f"{st['wall_s']:.1f} ({st['ok']}) | {c['fallback']} |")
    lines.append("\nThe refit cycle comes a day after the first, when every target's refit is due again (the "
                 "executor already started); its time runs from the tick that starts every target's cycle to "
                 "the end of the last. 'cycles ok': the targets whose cycle ended without an error (a cycle "
                 "that could not write the state file in SQLite's busy timeout is an error). The first cycle "
                 "also starts the executor and fetches and caches the whole history.\n")
    return "\n".join(lines)


# --------------------------------------------------------------- Prometheus
def backfilled_prometheus(n: int, work: Path):
    """A real Prometheus serving ``load{target=...}`` for the ``n`` targets."""
    from tests.support.prom import PrometheusServer, Trace, backfill, require_binaries

    prom, tool = require_binaries()
    series = fleet_series(n)
    # the server answers for "now": shift the histories to end at the wall clock
    shift = (int(time.time()) // STEP * STEP - STEP) - to_epoch(NOW) - STEP
    traces = [Trace("load", {"target": k}, s.timestamps + shift, np.nan_to_num(s.values, nan=0.0))
              for k, s in series.items()]
    t0 = time.perf_counter()
    data = backfill(tool, traces, work)
    server = PrometheusServer(prom, data, work).start()
    return server, shift, time.perf_counter() - t0


def prometheus_run(n: int, model: str, threads: int) -> dict[str, Any]:
    """The fetch part against a real Prometheus (the daemon's clock set to
    the backfilled data's time)."""
    global NOW
    work = Path(tempfile.mkdtemp(prefix="fleet-prom-"))
    server, shift, backfill_s = backfilled_prometheus(n, work)
    try:
        NOW = NOW + timedelta(seconds=shift)
        out = one_size(n, model, threads, server.url)
        out["backfill_s"] = backfill_s
        return out
    finally:
        server.stop()


# ------------------------------------------------------- per-series models
#: the per-series models measured (three days of history each, refit daily)
PER_SERIES = {
    "holt_winters": {"name": "holt_winters", "history": f"{HISTORY_DAYS}d", "refit_every": "1d"},
    "prophet": {"name": "prophet", "history": f"{HISTORY_DAYS}d", "refit_every": "1d",
                "params": {"uncertainty_samples": 200}},
}
EXECUTORS = {
    "none": None,  # no executor section: the refits run in the template's thread
    "local": lambda w: {"kind": "local", "workers": w},
    "dask": lambda w: {"kind": "dask", "local_cluster": True, "workers": w, "memory_limit": "1GiB"},
}


#: the per-series runs' cycles: the first (empty state file, the executor
#: starting), a day later when every refit is due again (the cold cycle a
#: running daemon has once per refit_every, the one measured), five minutes
#: after that (updates only)
PER_SERIES_CYCLES = (("first", -86400), ("refit", 0), ("steady", STEP))


def per_series(n: int, models: list[str], executors: list[str], workers: int) -> list[dict[str, Any]]:
    """Each model's template of ``n`` targets on each executor, in a fresh
    process each."""
    runs = []
    for name in models:
        for ex in executors:
            section = EXECUTORS[ex]
            r = in_fresh_process(one_size, n, "", 1, None, PER_SERIES[name],
                                 None if section is None else section(workers), PER_SERIES_CYCLES)
            r["model"], r["executor_kind"] = name, ex
            runs.append(r)
            for c in r["cycles"]:
                print(f"{name:>12} on {ex:<5} {n} targets: {c['cycle']:<6} {c['wall_s']:6.1f} s  "
                      + " ".join(f"{p} {v:.2f}" for p, v in c["seconds"].items())
                      + f"  refits {c['refits']} (failed {c['refit_failures']}), fallbacks {c['fallback']}",
                      flush=True)
    return runs


def per_series_markdown(report: dict[str, Any]) -> str:
    lines = ["# Fleet benchmark: per-series models on an executor", "", f"Command: `{report['command']}`", "",
             f"{report['targets']} targets of one template, three days of history each, dry-run, a real SQLite "
             f"state file; machine: {report['machine']}.", "",
             "| model | executor | workers | refit cycle s | gather | refit | decide | record | speed-up | "
             "first cycle s | steady cycle s | fallbacks |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["model"]: r["cycles"][1]["wall_s"] for r in report["runs"] if r["executor_kind"] == "none"}
    for r in report["runs"]:
        first, c, st = r["cycles"]
        s = c["seconds"]
        up = base.get(r["model"], float("nan")) / c["wall_s"]
        where = r["executor_kind"] if r["executor_kind"] != "none" else "none (in the daemon's thread)"
        lines.append(f"| {r['model']} | {where} | {r.get('executor_workers', 1)} | {c['wall_s']:.1f} | "
                     + " | ".join(f"{s.get(p, 0):.2f}" for p in ("gather", "refit", "decide", "record"))
                     + f" | {up:.2f}x | {first['wall_s']:.1f} | {st['wall_s']:.1f} | {c['fallback']} |")
    lines.append("\nThe refit cycle comes a day after the first, when every target's refit is due again (the "
                 "executor already started, as in a running daemon); its 'refit' part is the executor's run "
                 "(the tasks sent, fitted, returned), then 'decide' updates and predicts each target here. "
                 "Without an executor the fits are in 'decide'. The first cycle also starts the executor and "
                 "fetches and caches the whole history.\n")
    return "\n".join(lines)


# ------------------------------------------------------------------ report
def markdown(report: dict[str, Any]) -> str:
    lines = ["# Fleet benchmark", "", f"Command: `{report['command']}`", "",
             f"Global model: {report['model'].get('parameters', '?')} parameters "
             f"({report['model'].get('note', '')}); torch threads {report['threads']}; "
             f"machine: {report['machine']}.", "",
             "| targets | source | cycle | total s | fetch | gather | forecast | decide | record | act | "
             "batched calls | fallbacks | RSS MiB | peak RSS MiB |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        for c in r["cycles"]:
            s = c["seconds"]
            lines.append(f"| {r['targets']:,} | {r['source']} | {c['cycle']} | {c['wall_s']:.1f} | "
                         + " | ".join(f"{s.get(p, 0):.2f}" for p in ("fetch", "gather", "forecast", "decide",
                                                                      "record", "act"))
                         + f" | {c['batched_calls']} ({c['batched']:,} targets) | {c['fallback']} | "
                           f"{c['rss_mib']:.0f} | {r['peak_rss_mib']:.0f} |")
    mem = report.get("memory")
    if mem:
        lines += ["", "Memory above the baseline (the process with the model loaded, no targets), peak RSS:", "",
                  "| targets | MiB | KiB per target |", "|---:|---:|---:|"]
        for n, mib in mem["above_baseline_mib"].items():
            lines.append(f"| {int(n):,} | {mib:.0f} | {1024 * mib / int(n):.0f} |")
        lines.append(f"\nGrowth {mem['growth']}: {mem['verdict']}.")
    lines.append("\n'total s' is the daemon's tick to the end of the batched cycle (every target decided and "
                 "recorded, results handed to the daemon); the parts are engine.fleet.run_batch's.\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="One batched decision cycle of 1,000-10,000 targets.")
    ap.add_argument("--targets", type=int, nargs="+", default=[1000, 3000, 10000])
    ap.add_argument("--prometheus", action="store_true", help="fetch from a real Prometheus (first size only)")
    ap.add_argument("--postgres", action="store_true",
                    help="the state on a real PostgreSQL server (fsync on; started here) instead of a SQLite file")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--model", default=str(MODEL), help="the trained global model (trained when missing)")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--per-series", nargs="+", choices=sorted(PER_SERIES),
                    help="instead: templates of these per-series models, on each --executors (one size: the "
                         "first --targets)")
    ap.add_argument("--executors", nargs="+", choices=sorted(EXECUTORS), default=["none", "local", "dask"])
    ap.add_argument("--workers", type=int, default=2, help="the pool's processes, the LocalCluster's workers")
    ap.add_argument("--static", action="store_true",
                    help="with --per-series: the file's own targets (a thread each), not a template")
    args = ap.parse_args(argv)
    machine = f"{platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs"
    if args.per_series:
        n = args.targets[0]
        command = (f"python -m benchmarks.fleet --targets {n} --per-series {' '.join(args.per_series)} "
                   f"--executors {' '.join(args.executors)} --workers {args.workers}"
                   + (" --static" if args.static else ""))
        runner, name, render = ((static_per_series, "fleet-per-series-static", static_markdown) if args.static
                                else (per_series, "fleet-per-series", per_series_markdown))
        rep = {"command": command, "targets": n, "machine": machine,
               "runs": runner(n, args.per_series, args.executors, args.workers)}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(rep, indent=2, default=str))
        (out / f"{name}.md").write_text(render(rep))
        print(f"wrote {out / name}.json and .md")
        return 0
    model = Path(args.model)
    info: dict[str, Any] = {}
    if args.retrain or not model.exists():
        info = in_fresh_process(train_model, model, args.threads)
        print(f"global model trained in {info['train_s']:.1f} s ({info['parameters']} parameters)", flush=True)
    else:
        from forecasters.lstm import LevelFreeLSTM

        info = {"parameters": LevelFreeLSTM.load(model, device="cpu").n_parameters}
    info["note"] = f"trained beforehand on the first {TRAIN_DAYS} days of each trace, not timed"
    command = "python -m benchmarks.fleet --targets " + " ".join(map(str, args.targets)) + \
        (" --prometheus" if args.prometheus else "") + (" --postgres" if args.postgres else "")
    runs = []
    srv = None
    if args.postgres:
        from tests.support import postgres

        srv = postgres.start(durable=True)
    try:
        for i, n in enumerate(args.targets):
            if args.prometheus:
                r = in_fresh_process(prometheus_run, n, str(model), args.threads)
            else:
                r = in_fresh_process(one_size, n, str(model), args.threads, None, None, None,
                                     (("cold", 0), ("steady", STEP)),
                                     srv.fresh_database() if srv is not None else None)
            runs.append(r)
            _print_run(n, r)
    finally:
        if srv is not None:
            srv.stop()
    report: dict[str, Any] = {"command": command, "threads": args.threads, "model": info, "runs": runs,
                              "machine": machine}
    return _report(args, report, runs)


def _print_run(n: int, r: dict[str, Any]) -> None:
    for c in r["cycles"]:
        print(f"{n:>6} targets ({r['source']}) {c['cycle']:<6} {c['wall_s']:6.1f} s  "
              + " ".join(f"{p} {v:.2f}" for p, v in c["seconds"].items())
              + f"  batched {c['batched']} in {c['batched_calls']} call(s), fallbacks {c['fallback']}, "
                f"rss {c['rss_mib']:.0f} MiB", flush=True)
    print(f"{n:>6} targets: peak RSS {r['peak_rss_mib']:.0f} MiB (baseline {r['baseline_rss_mib']:.0f})",
          flush=True)


def _report(args: argparse.Namespace, report: dict[str, Any], runs: list[dict[str, Any]]) -> int:
    sizes = [r for r in runs if r["source"] == "in-process"]
    if len(sizes) >= 2:
        above = {str(r["targets"]): r["peak_rss_mib"] - r["baseline_rss_mib"] for r in sizes}
        per = [v / int(k) for k, v in above.items()]
        growth = max(per) / min(per)
        report["memory"] = {"above_baseline_mib": above, "growth": f"per-target memory ratio max/min {growth:.2f}",
                            "verdict": "at most linear" if per[-1] <= per[0] * 1.1 else "MORE than linear"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "fleet-prometheus" if args.prometheus else "fleet-postgres" if args.postgres else "fleet"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    (out / f"{name}.md").write_text(markdown(report))
    print(f"wrote {out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
