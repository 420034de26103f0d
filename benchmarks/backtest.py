"""Backtest benchmark: the default predictive policy against the reactive HPA
on every shared trace with at least 14 days of data, plus a timing run.

    python benchmarks/backtest.py                      # default forecaster, all qualifying traces
    python benchmarks/backtest.py --forecasters seasonal_persistence,holt_winters
    python benchmarks/backtest.py --no-timing          # skip the 30-day timing runs

Writes ``benchmarks/results/backtest.json`` and ``backtest.md``: per trace
the violation_fraction, unserved_fraction, cost_vs_oracle and actions of
oracle, reactive and predictive (and the forecast's MASE and coverage),
medians and means, how many traces the predictive policy beats reactive on
both violations and cost, the time of each backtest and the peak memory.

The scenario is REFERENCE.md section 3's defaults (``engine.backtest.Scenario``).
The timing part replays the first 30 days of a 5-minute trace with
``seasonal_naive`` and with ``prophet`` refitting once per simulated day, each
in a fresh process so its peak memory (``ru_maxrss``) is its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.backtest import DEFAULT_FORECASTER, DEFAULT_POLICY, Scenario, run_backtest  # noqa: E402
from engine.config import ForecasterConfig  # noqa: E402
from engine.progress import progress  # noqa: E402
from engine.sources.csv import read_csv  # noqa: E402

TRACES_DIR = ROOT.parent / "shared" / "traces"
RESULTS = ROOT / "benchmarks" / "results"
MIN_DAYS = 14
TIMING_TRACE = "internet_traffic_tsdl/isp_eu_transatlantic_bits_per_5min.csv"
TIMING_DAYS = 30
METRICS = ("violation_fraction", "unserved_fraction", "cost_vs_oracle", "actions")


def trace_days(path: Path, interval: timedelta = Scenario().interval) -> float:
    """Days of data the trace covers on the backtest's grid (intervals x step)."""
    s = read_csv(path).regular(interval)
    return len(s) * interval.total_seconds() / 86400


def qualifying_traces(root: Path = TRACES_DIR, min_days: float = MIN_DAYS) -> list[Path]:
    # a trace of 14 days' samples may cover one interval less on the grid
    # (samples just after the boundaries): allow that interval
    slack = Scenario().interval.total_seconds() / 86400
    return [p for p in sorted(root.glob("*/*.csv")) if trace_days(p) >= min_days - slack - 1e-9]


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_trace(path: str, forecaster: str, params: dict[str, Any] | None = None,
              torch_threads: int | None = None) -> dict[str, Any]:
    if torch_threads:  # one torch thread per worker process: --jobs processes share the cores
        import torch

        torch.set_num_threads(torch_threads)
    t0, c0 = time.perf_counter(), time.process_time()
    fcfg = ForecasterConfig(name=forecaster, params=params or {})
    result = run_backtest(read_csv(path), forecaster=fcfg, trace=Path(path).name)
    out = result.to_dict()
    out["trace"] = str(Path(path).relative_to(TRACES_DIR)) if TRACES_DIR in Path(path).parents else path
    out["wall_s"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - c0
    out["days"] = len(result.timestamps) * result.scenario.interval.total_seconds() / 86400
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def timing_run(path: str, forecaster: str, days: int) -> dict[str, Any]:
    raw = read_csv(path)
    end = int(raw.timestamps[0]) + days * 86400
    raw = raw[: int((raw.timestamps < end).sum())]
    t0, c0 = time.perf_counter(), time.process_time()
    result = run_backtest(raw, forecaster=ForecasterConfig(name=forecaster, refit_every=timedelta(days=1)),
                          trace=Path(path).name)
    return {"forecaster": forecaster, "trace": Path(path).name, "days": days,
            "intervals": int(result.timestamps.size), "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0, "peak_rss_mib": peak_rss_mib(),
            "predictive": result.runs["predictive"].metrics}


def in_fresh_process(fn, *args) -> dict[str, Any]:
    with ProcessPoolExecutor(1) as ex:
        return ex.submit(fn, *args).result()


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def col(policy: str, metric: str) -> list[float]:
        return [r["policies"][policy][metric] for r in rows]

    out: dict[str, Any] = {}
    for policy in ("oracle", "reactive", "predictive"):
        out[policy] = {}
        for m in METRICS:
            vals = col(policy, m)
            out[policy][m] = {"median": statistics.median(vals), "mean": statistics.fmean(vals)}
    pv, rv = col("predictive", "violation_fraction"), col("reactive", "violation_fraction")
    pc, rc = col("predictive", "cost_vs_oracle"), col("reactive", "cost_vs_oracle")
    out["traces"] = len(rows)
    out["dominates"] = sum(a <= b and c <= d for a, b, c, d in zip(pv, rv, pc, rc))
    out["fewer_or_equal_violations"] = sum(a <= b for a, b in zip(pv, rv))
    out["lower_or_equal_cost"] = sum(c <= d for c, d in zip(pc, rc))
    mv, mc = statistics.median(pv), statistics.median(pc)
    out["target_met"] = mv < statistics.median(rv) and mc <= statistics.median(rc) + 0.05
    return out


def _f(v: float, nd: int = 4) -> str:
    return "-" if v != v else f"{v:.{nd}f}"


def markdown(forecaster: str, rows: list[dict[str, Any]], summary: dict[str, Any], command: str) -> str:
    lines = [
        f"Default policy: forecaster `{forecaster}`, "
        f"target utilization {DEFAULT_POLICY['target_utilization']}, conformal headroom "
        f"(under-forecast rate {DEFAULT_POLICY['margin']['conformal_target']}, cap "
        f"{DEFAULT_POLICY['margin']['cap']}), reactive override at the policy's utilization "
        f"(tolerance {DEFAULT_POLICY['reactive']['tolerance']}), scale-down stabilization "
        f"{DEFAULT_POLICY['stabilization']['scale_down']}. Baseline: the HPA at utilization "
        f"{Scenario().target_utilization}, tolerance 0.1, 300 s scale-down stabilization. "
        f"Scenario: REFERENCE.md section 3 defaults (5-minute interval, 10-minute lead time, 2-day warm-up).",
        "",
        f"Command: `{command}`",
        "",
        "v = violation_fraction, u = unserved_fraction, c = cost_vs_oracle, a = actions; "
        "**bold** trace: predictive has at most reactive's violations *and* cost.",
        "",
        "| trace | days | reactive v | predictive v | reactive u | predictive u | reactive c | predictive c "
        "| oracle a | reactive a | predictive a | MASE | coverage | time s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p, re, o = r["policies"]["predictive"], r["policies"]["reactive"], r["policies"]["oracle"]
        dom = p["violation_fraction"] <= re["violation_fraction"] and p["cost_vs_oracle"] <= re["cost_vs_oracle"]
        name = f"**{r['trace']}**" if dom else r["trace"]
        lines.append(
            f"| {name} | {r['days']:.0f} | {_f(re['violation_fraction'])} | {_f(p['violation_fraction'])} "
            f"| {_f(re['unserved_fraction'])} | {_f(p['unserved_fraction'])} "
            f"| {_f(re['cost_vs_oracle'], 3)} | {_f(p['cost_vs_oracle'], 3)} "
            f"| {o['actions']} | {re['actions']} | {p['actions']} "
            f"| {_f(p.get('mase', float('nan')), 2)} | {_f(p.get('coverage', float('nan')), 3)} | {r['wall_s']:.1f} |")
    s = summary
    for stat in ("median", "mean"):
        re, p = s["reactive"], s["predictive"]
        lines.append(
            f"| *{stat}* | | {_f(re['violation_fraction'][stat])} | {_f(p['violation_fraction'][stat])} "
            f"| {_f(re['unserved_fraction'][stat])} | {_f(p['unserved_fraction'][stat])} "
            f"| {_f(re['cost_vs_oracle'][stat], 3)} | {_f(p['cost_vs_oracle'][stat], 3)} "
            f"| {s['oracle']['actions'][stat]:.0f} | {re['actions'][stat]:.0f} | {p['actions'][stat]:.0f} | | | |")
    lines += [
        "",
        f"Predictive beats or ties reactive on both violations and cost on **{s['dominates']} of {s['traces']}** "
        f"traces (violations <= reactive on {s['fewer_or_equal_violations']}, cost <= reactive on "
        f"{s['lower_or_equal_cost']}). Target (median violations below reactive's at a median cost at most "
        f"0.05 above): **{'met' if s['target_met'] else 'NOT met'}**.",
    ]
    return "\n".join(lines) + "\n"


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Backtest benchmark over the shared traces.")
    ap.add_argument("--traces", default=None, help="folder of <dataset>/<trace>.csv files "
                    "(default: ../shared/traces from the repository root)")
    ap.add_argument("--forecasters", default=DEFAULT_FORECASTER.name,
                    help="comma-separated forecaster names; the first is the headline (default: the default)")
    ap.add_argument("--params", default=None,
                    help='forecaster parameters as JSON, for every forecaster named, e.g. \'{"epochs": 8}\'')
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch threads per worker process (the LSTM; default: torch's own)")
    ap.add_argument("--jobs", type=int, default=2, help="traces replayed in parallel")
    ap.add_argument("--no-timing", action="store_true", help="skip the 30-day timing runs")
    ap.add_argument("--timing-forecasters", default="seasonal_naive,prophet")
    ap.add_argument("--out", default=str(RESULTS), help="folder for backtest.json and backtest.md")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar (drawn only on a terminal)")
    args = ap.parse_args(argv)

    global TRACES_DIR
    if args.traces:
        TRACES_DIR = Path(args.traces).resolve()
    traces = qualifying_traces(TRACES_DIR)
    params = json.loads(args.params) if args.params else None
    command = "python benchmarks/backtest.py" + ("" if args.forecasters == DEFAULT_FORECASTER.name
                                                 else f" --forecasters {args.forecasters}")
    if params:
        command += f" --params '{args.params}'"
    if args.torch_threads:
        command += f" --torch-threads {args.torch_threads}"
    report: dict[str, Any] = {"scenario": Scenario().to_dict(), "policy": DEFAULT_POLICY,
                              "min_days": MIN_DAYS, "forecasters": {}, "timing": []}
    md = ["# Backtest benchmark", ""]
    for fname in args.forecasters.split(","):
        print(f"forecaster {fname}: {len(traces)} traces with >= {MIN_DAYS} days", flush=True)
        with ProcessPoolExecutor(args.jobs) as ex, progress(len(traces), f"backtest {fname}", args.quiet) as bar:
            futs = [ex.submit(one_trace, str(t), fname, params, args.torch_threads) for t in traces]
            rows = []
            for f in futs:
                r = f.result()
                rows.append(r)
                p, re = r["policies"]["predictive"], r["policies"]["reactive"]
                bar.update()
                bar.print(f"  {r['trace']:<58} reactive v {re['violation_fraction']:.4f} c "
                          f"{re['cost_vs_oracle']:.3f} | predictive v {p['violation_fraction']:.4f} c "
                          f"{p['cost_vs_oracle']:.3f}  ({r['wall_s']:.1f} s)")
        summary = summarize(rows)
        report["forecasters"][fname] = {"traces": rows, "summary": summary}
        print(f"  median v reactive {summary['reactive']['violation_fraction']['median']:.4f} predictive "
              f"{summary['predictive']['violation_fraction']['median']:.4f}; median c reactive "
              f"{summary['reactive']['cost_vs_oracle']['median']:.3f} predictive "
              f"{summary['predictive']['cost_vs_oracle']['median']:.3f}; mean c reactive "
              f"{summary['reactive']['cost_vs_oracle']['mean']:.3f} predictive "
              f"{summary['predictive']['cost_vs_oracle']['mean']:.3f}; dominates {summary['dominates']}/"
              f"{summary['traces']}; target {'met' if summary['target_met'] else 'NOT met'}", flush=True)
        md += [f"## Forecaster `{fname}`", ""]
        md.append(markdown(fname, rows, summary, command))
    if not args.no_timing:
        path = str(TRACES_DIR / TIMING_TRACE)
        for fname in args.timing_forecasters.split(","):
            try:
                t = in_fresh_process(timing_run, path, fname, TIMING_DAYS)
            except Exception as exc:  # noqa: BLE001 - e.g. the prophet extra not installed
                t = {"forecaster": fname, "trace": Path(path).name, "error": f"{type(exc).__name__}: {exc}"}
            report["timing"].append(t)
            print(f"timing {fname}: " + (t.get("error") or f"{t['intervals']} intervals, wall {t['wall_s']:.1f} s, "
                                         f"CPU {t['cpu_s']:.1f} s, peak {t['peak_rss_mib']:.0f} MiB"), flush=True)
        md += ["## Timing", "",
               f"The first {TIMING_DAYS} days of `{TIMING_TRACE}`: oracle, reactive and predictive in one fresh "
               "process (prophet refits once per simulated day).", "",
               "| forecaster | intervals | wall s | CPU s | peak memory MiB |", "|---|---:|---:|---:|---:|"]
        for t in report["timing"]:
            if "error" in t:
                md.append(f"| {t['forecaster']} | {t['error']} | | | |")
            else:
                md.append(f"| {t['forecaster']} | {t['intervals']} | {t['wall_s']:.1f} | {t['cpu_s']:.1f} "
                          f"| {t['peak_rss_mib']:.0f} |")
        md.append(f"\nMachine: {platform.machine()}, Python {platform.python_version()}, {_cpus()} CPUs; wall "
                  "times depend on what else the machine runs, CPU times less so.\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backtest.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=float))
    (out / "backtest.md").write_text("\n".join(md))
    print(f"wrote {out / 'backtest.json'} and {out / 'backtest.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
