"""Accuracy and speed of the forecasters on the real traces in ../shared/traces.

For every trace with at least 14 days: resample to 5 minutes by mean (30-minute
traces stay at 30 minutes), hold out the last ``--test-days``, and run a
rolling-origin evaluation over them: at each origin the model sees only the
samples up to the origin (``update``), forecasts the next hour, and is scored
at 5, 10, 15, 30 and 60 minutes ahead (on a 30-minute trace the shorter
horizons are its first step). Models are fitted at the start of the test
period and refitted every ``--refit-every`` (Prophet, Holt-Winters and the
naive models daily; the LSTM once unless ``--lstm-refit``).

Metrics per trace, model and horizon: MASE (mean absolute error divided by
the in-sample MAE of the one-day seasonal naive forecast on the training
period), sMAPE (%), coverage of the 0.9 quantile (share of actuals at or
below it), fit seconds and predict milliseconds. The tables report the median
over traces.

    python -m benchmarks.accuracy                     # everything (long)
    python -m benchmarks.accuracy --max-origins 48 --traces nab/ --models persistence,lstm
    python -m benchmarks.accuracy --speed-only        # the LSTM speed checks

Writes benchmarks/results/accuracy.json and accuracy.md (after every trace,
so an interrupted run keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.core.types import Series  # noqa: E402
from engine.core.units import from_epoch  # noqa: E402
from engine.progress import progress  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces"
RESULTS = Path(__file__).resolve().parent / "results"
DAY = 86400
HORIZONS_MIN = (5, 10, 15, 30, 60)
MODELS = ("persistence", "seasonal_naive", "holt_winters", "prophet", "lstm", "lstm_global")
MIN_DAYS = 14


# ------------------------------------------------------------------- loading
def parse_timestamps(col: np.ndarray) -> np.ndarray:
    """The three forms of the traces README: ISO with Z, ISO without zone
    (taken as UTC), integer seconds."""
    first = col[0]
    if first.lstrip("-").isdigit():
        return col.astype(np.int64)
    iso = np.char.rstrip(col.astype(str), "Z")
    return iso.astype("datetime64[s]").astype(np.int64)


def load_trace(path: Path) -> Series:
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=str, ndmin=2)
    ts = parse_timestamps(raw[:, 0])
    vals = np.array([float(v) if v else np.nan for v in raw[:, 1]])
    s = Series(ts, vals, str(path.relative_to(TRACES)))
    step = 1800 if np.median(np.diff(ts)) >= 1800 else 300
    return s.regular(timedelta(seconds=step))


def traces(filters: list[str]) -> list[Series]:
    out = []
    for p in sorted(TRACES.rglob("*.csv")):
        rel = str(p.relative_to(TRACES))
        if filters and not any(f in rel for f in filters):
            continue
        s = load_trace(p)
        if (s.timestamps[-1] - s.timestamps[0]) >= MIN_DAYS * DAY - 3600:
            out.append(s)
    return out


# -------------------------------------------------------------------- models
def lstm_params(args, step: int) -> dict:
    return {"epochs": args.epochs, "max_train_steps": int(args.train_days * DAY // step),
            "device": args.device}


def make(name: str, args, step: int):
    import forecasters

    if name == "lstm":
        return forecasters.create("lstm", lstm_params(args, step))
    if name == "prophet":
        return forecasters.create("prophet", {"uncertainty_samples": 200})
    return forecasters.create(name, {})


def _step_of(s: Series) -> int:
    return int(np.median(np.diff(s.timestamps)))


# ---------------------------------------------------------------- evaluation
class Evaluation:
    def __init__(self, s: Series, args) -> None:
        self.s = s
        self.step = _step_of(s)
        n = len(s)
        self.test_start = n - int(args.test_days * DAY // self.step)
        self.hsteps = [max(1, math.ceil(m * 60 / self.step)) for m in HORIZONS_MIN]
        self.H = max(self.hsteps)
        every = max(1, int(args.origin_every * 60 // self.step))
        origins = np.arange(self.test_start - 1, n - 1 - self.H, every)
        if args.max_origins and origins.size > args.max_origins:
            origins = origins[np.linspace(0, origins.size - 1, args.max_origins).round().astype(int)]
        self.origins = origins
        train = s[: self.test_start]
        S = DAY // self.step
        y = train.values[-int(args.train_days * DAY // self.step):]
        d = np.abs(y[S:] - y[:-S])
        self.scale = float(np.nanmean(d))
        self.train = train

    def score(self, preds: np.ndarray, q90: np.ndarray) -> dict:
        """preds, q90: (origins, H). Per horizon: MASE, sMAPE, coverage."""
        y = self.s.values
        out = {}
        for m, h in zip(HORIZONS_MIN, self.hsteps):
            act = y[self.origins + h]
            p, q = preds[:, h - 1], q90[:, h - 1]
            ok = np.isfinite(act) & np.isfinite(p)
            if not ok.any():
                continue
            err = np.abs(act[ok] - p[ok])
            den = np.abs(act[ok]) + np.abs(p[ok])
            smape = np.where(den > 0, 200 * err / np.where(den > 0, den, 1), 0.0)
            out[str(m)] = {"mase": float(err.mean() / self.scale), "smape": float(smape.mean()),
                           "coverage90": float(np.mean(act[ok] <= q[ok])), "n": int(ok.sum())}
        return out


def run_model(ev: Evaluation, name: str, args, global_model=None) -> dict:
    s, step = ev.s, ev.step
    refit = int(args.refit_every * 3600 // step)
    if name == "lstm" and not args.lstm_refit:
        refit = 10**9
    preds = np.full((ev.origins.size, ev.H), np.nan)
    q90 = np.full_like(preds, np.nan)
    fit_s, pred_s, n_pred, fits = 0.0, 0.0, 0, 0
    model, fitted_at = None, None
    for i, o in enumerate(ev.origins):
        hist = s[: o + 1]
        now = from_epoch(int(s.timestamps[o]))
        if name == "lstm_global":
            t = time.perf_counter()
            fc = global_model.predict_many({s.name: hist}, now, ev.H, (0.5, 0.9))[s.name]
            pred_s += time.perf_counter() - t
        else:
            if model is None or o - fitted_at >= refit:
                model = make(name, args, step)
                t = time.perf_counter()
                model.fit(hist)
                fit_s += time.perf_counter() - t
                fits += 1
                fitted_at = o
            else:
                model.update(hist)
            t = time.perf_counter()
            fc = model.predict(now, ev.H, (0.5, 0.9))
            pred_s += time.perf_counter() - t
        n_pred += 1
        preds[i], q90[i] = fc.point, fc.quantiles[0.9]
    return {"horizons": ev.score(preds, q90), "fit_s": fit_s, "fits": fits,
            "predict_ms": 1000 * pred_s / max(n_pred, 1), "origins": int(ev.origins.size)}


def fit_global(evals: list[Evaluation], args):
    from forecasters.lstm import GlobalLSTM

    params = lstm_params(args, 300)
    series = {ev.s.name: ev.train.tail(int(args.train_days * DAY // ev.step)) for ev in evals}
    t = time.perf_counter()
    g = GlobalLSTM(params).fit(series)
    return g, time.perf_counter() - t


# --------------------------------------------------------------------- speed
def speed(all_traces: list[Series], args) -> dict:
    """The issue's speed targets, on 5-minute traces."""
    from forecasters.lstm import GlobalLSTM, LSTMForecaster

    five = [s for s in all_traces if _step_of(s) == 300]
    n14 = 14 * 288
    out: dict = {}
    s = five[0].tail(n14)
    f = LSTMForecaster(lstm_params(args, 300))
    t = time.perf_counter()
    f.fit(s)
    out["per_series_fit_s"] = time.perf_counter() - t
    out["per_series_fit_trace"] = s.name
    out["per_series_epochs_run"] = f.metrics.get("epochs_run")
    now = from_epoch(int(s.timestamps[-1]))
    lat = []
    for _ in range(100):
        t = time.perf_counter()
        f.predict(now, 12, (0.5, 0.9))
        lat.append(time.perf_counter() - t)
    out["per_series_predict_ms_median"] = 1000 * float(np.median(lat))
    out["per_series_predict_ms_p95"] = 1000 * float(np.percentile(lat, 95))

    # twenty 14-day series: every 5-min trace, then more 14-day windows
    # from the long ones until there are twenty
    twenty: dict[str, Series] = {}
    k = 0
    while len(twenty) < 20 and k < 20:
        for tr in five:
            if len(tr) >= (k + 1) * n14 and len(twenty) < 20:
                twenty[f"{tr.name}#{k}"] = tr[len(tr) - (k + 1) * n14: len(tr) - k * n14]
        k += 1
    g = GlobalLSTM(lstm_params(args, 300))
    t = time.perf_counter()
    g.fit(twenty)
    out["global_fit_s"] = time.perf_counter() - t
    out["global_series"] = len(twenty)
    out["global_epochs_run"] = g.metrics.get("epochs_run")
    out["global_train_windows"] = g.metrics.get("train_windows")

    keys = list(twenty)
    histories = {f"t{i:04d}": twenty[keys[i % len(keys)]].tail(2 * 288) for i in range(1000)}
    # one clock for all: each history ends at its own time, forecast from the latest
    latest = max(int(h.timestamps[-1]) for h in histories.values())
    histories = {k: Series(h.timestamps - int(h.timestamps[-1]) + latest, h.values, k)
                 for k, h in histories.items()}
    now = from_epoch(latest)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        res = g.predict_many(histories, now, 12, (0.5, 0.9))
        times.append(time.perf_counter() - t)
    assert len(res) == 1000
    out["predict_many_1000_s_median"] = float(np.median(times))
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# -------------------------------------------------------------------- report
def summarize(results: dict) -> dict:
    table: dict = {}
    for model in MODELS:
        rows = [r[model] for r in results.values() if model in r and "horizons" in r[model]]
        if not rows:
            continue
        t = {}
        for m in HORIZONS_MIN:
            vals = [r["horizons"][str(m)] for r in rows if str(m) in r["horizons"]]
            if vals:
                t[str(m)] = {k: float(np.median([v[k] for v in vals])) for k in ("mase", "smape", "coverage90")}
        t["fit_s"] = float(np.median([r["fit_s"] for r in rows]))
        t["predict_ms"] = float(np.median([r["predict_ms"] for r in rows]))
        t["traces"] = len(rows)
        table[model] = t
    return table


def markdown(doc: dict) -> str:
    table = doc["summary"]
    lines = ["# Forecast accuracy on the shared traces", "",
             f"Command: `{doc['command']}`", "",
             f"Traces: {len(doc['traces'])}; origins per trace: up to {doc['args']['max_origins'] or 'all'} "
             f"(every {doc['args']['origin_every']} min over the last {doc['args']['test_days']} days). "
             "Median over traces.", ""]
    for metric, label in (("mase", "MASE"), ("smape", "sMAPE %"), ("coverage90", "0.9-quantile coverage")):
        lines += [f"## {label}", "",
                  "| model | " + " | ".join(f"{m} min" for m in HORIZONS_MIN) + " | traces |",
                  "|---" * (len(HORIZONS_MIN) + 2) + "|"]
        for model, t in table.items():
            cells = [f"{t[str(m)][metric]:.3f}" if str(m) in t else "-" for m in HORIZONS_MIN]
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {t['traces']} |")
        lines.append("")
    lines += ["## Time (median per trace)", "", "| model | fit s (all fits) | predict ms |", "|---|---|---|"]
    for model, t in table.items():
        lines.append(f"| {model} | {t['fit_s']:.2f} | {t['predict_ms']:.2f} |")
    if doc.get("global_fit_s") is not None:
        lines += ["", f"Global LSTM trained once on all traces' training periods: {doc['global_fit_s']:.1f} s."]
    if doc.get("speed"):
        lines += ["", "## LSTM speed", "", "| check | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in doc["speed"].items()]
    if doc.get("errors"):
        lines += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in doc["errors"].items()]
    lines.append("")
    return "\n".join(lines)


def write(doc: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc["summary"] = summarize(doc["results"])
    (out / "accuracy.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
    (out / "accuracy.md").write_text(markdown(doc))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", default="", help="comma-separated substrings of trace paths to keep")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {','.join(MODELS)}")
    ap.add_argument("--max-origins", type=int, default=96, help="origins per trace (0: all)")
    ap.add_argument("--origin-every", type=float, default=30, help="minutes between origins")
    ap.add_argument("--test-days", type=float, default=2.0)
    ap.add_argument("--train-days", type=float, default=14.0, help="LSTM training window")
    ap.add_argument("--refit-every", type=float, default=24.0, help="hours between refits")
    ap.add_argument("--lstm-refit", action="store_true", help="refit the per-series LSTM on the schedule too")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--speed", action="store_true", help="also run the speed checks")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar (drawn only on a terminal)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        ap.error(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")
    all_traces = traces([f for f in args.traces.split(",") if f])
    doc: dict = {"command": "python -m benchmarks.accuracy " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 "traces": [s.name for s in all_traces], "results": {}, "errors": {}}
    if args.speed_only:
        doc["speed"] = speed(all_traces, args)
        write(doc, args.out)
        print(json.dumps(doc["speed"], indent=1))
        return 0
    evals = [Evaluation(s, args) for s in all_traces]
    g = None
    if "lstm_global" in models:
        g, doc["global_fit_s"] = fit_global(evals, args)
        print(f"global lstm fitted in {doc['global_fit_s']:.1f}s", flush=True)
    with progress(len(evals) * len(models), "accuracy", args.quiet) as bar:
        for ev in evals:
            res = doc["results"].setdefault(ev.s.name, {})
            for model in models:
                bar.update()
                try:
                    res[model] = run_model(ev, model, args, g)
                except Exception as exc:  # a benchmark reports, it does not stop
                    doc["errors"][f"{ev.s.name}/{model}"] = f"{type(exc).__name__}: {exc}"
                    continue
                h = res[model]["horizons"]
                bar.print(f"{ev.s.name:55s} {model:15s} MASE@10 {h.get('10', {}).get('mase', float('nan')):.3f} "
                          f"cov {h.get('10', {}).get('coverage90', float('nan')):.2f} "
                          f"fit {res[model]['fit_s']:.1f}s")
            write(doc, args.out)
    if args.speed:
        doc["speed"] = speed(all_traces, args)
    doc["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write(doc, args.out)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
