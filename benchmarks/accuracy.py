"""Forecast accuracy for planning: hours ahead, whole distribution, paired per trace.

Traces: the shared traces with at least 14 days (18), each at its own step
(5 minutes; ``nab/nyc_taxi`` stays at its 30-minute step, so its 10- and
30-minute horizons are both its first step, 30 minutes ahead). A fixed third
is held out of every training and tuning decision, by the same rule as the
frontier benchmark (:func:`held_out`: sorted by name, every third from the
third); every table reports the tuning and the held-out part apart.

Rolling origins: the last ``--test-days`` of each trace are its test period;
``--origins`` forecast origins are spread evenly over it (each leaves 24 h of
actuals after it), or, with ``--origins-every-min``, every origin of a grid
over it (60: 73 hourly origins on a 4-day test period, so one origin moves a
trace's coverage by 0.014 instead of 0.04 at 24 origins; with
``--calibrate`` on the calibration origins' grid, so no extra forecasts). At
each origin a model sees only the samples up to it.
The statistical models are fitted at the first origin and run forward
(``update``) at the others, refitted every ``--refit-hours``; Prophet, too
slow for every origin, is fitted afresh at ``--prophet-origins`` of them
(its rows are scored on those origins only). The global LSTM
(``lstm_global``) is trained once on the tuning traces' samples before their
test periods and never sees a held-out trace before forecasting it
(zero-shot); its quantiles are calibrated per trace on the trace's own
errors before each origin's refit (``lstm_global``), or only by the offsets
pooled in training (``lstm_global_pooled``).

Horizons: 10 min, 30 min, 1 h, 6 h, 24 h. Per trace, method and horizon:

- MASE: mean absolute error of the point forecast / the in-sample MAE of the
  one-day seasonal naive forecast over the 14 days before the test period;
- MAPE (%), left out (``null``) on traces whose actuals come near zero
  (an actual below 5 % of the trace's median magnitude): flagged in the table;
- pinball: mean pinball loss over the levels 0.5/0.8/0.9/0.95/0.99 / the
  same MASE denominator (comparable across traces);
- coverage of each level: the share of actuals at or below it.

Summaries per part: geometric means over traces, paired ratios and win
counts of each method against Holt-Winters and against the better
statsforecast baseline (autoets or mstl, whichever has the lower geometric
mean on that part and horizon), and the median coverage per level.

    nice -n 19 python -m benchmarks.accuracy --threads 1
    nice -n 19 python -m benchmarks.accuracy --threads 1 --traces nab/ec2 --origins 4 --models persistence,lstm_global
    nice -n 19 python -m benchmarks.accuracy --threads 1 --speed-only
    nice -n 10 python -m benchmarks.accuracy --threads 1 --calibrate --origins-every-min 60 --cal-days 7 \
        --cal-window-days 3,7 --cal-adaptive 0.005,0.02 --merge --models seasonal_persistence

(``--cal-adaptive``: each calibration also with adaptive conformal
inference at those steps per pair, ``+cal-aci<gamma>``.)

Writes benchmarks/results/accuracy.json and accuracy.md (after every trace,
so an interrupted run keeps what it measured) and the trained global model
to lstm_global.pt beside them (not kept in the repository: rerun to get it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.config import PLAN_FORECASTER  # noqa: E402
from engine.core.types import Series  # noqa: E402
from engine.core.units import from_epoch  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces"
RESULTS = Path(__file__).resolve().parent / "results"
DAY = 86400
MIN_DAYS = 14
HORIZONS_MIN = (10, 30, 60, 360, 1440)
LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
STATSFORECAST = ("autoets", "mstl")
BUILTIN = ("persistence", "seasonal_naive", "seasonal_persistence", "holt_winters")
#: ``lstm_global_median``: ``lstm_global`` whose per-trace calibration also
#: shifts the median (``calibrate_median``)
LEARNED = ("lstm_global", "lstm_global_pooled", "lstm_global_median")
#: the per-series LSTM (``lstm``) is trained for the next hour only (its
#: default horizon, 12 steps): scored at 10 min to 1 h; ``lstm_h6`` is the
#: same model trained for the planner: 6 hours ahead (72 steps) at the
#: planner's levels (:data:`VARIANTS`), its other settings the defaults
#: ``auto`` (one choice for every lead) and ``auto_lead`` (a choice per lead
#: band, the bands ending at the scored horizons) over :data:`AUTO_CANDIDATES`,
#: backtested on the trace's own last ``AUTO_EVAL_DAYS`` at every step to
#: 24 h, reselected every day (:func:`auto_params`)
SELECTED = ("auto", "auto_lead")
#: ``blend_sp_hw``: seasonal persistence and Holt-Winters averaged half and
#: half at every lead, the planner's default forecaster
#: (``engine.config.PLAN_FORECASTER``, chosen on its frontier: docs/planner.md)
MODELS = BUILTIN + STATSFORECAST + ("prophet", "lstm", "lstm_h6", "blend_sp_hw") + LEARNED + SELECTED
#: the candidates docs/forecasters.md recommends for the planner
#: (``lstm_global`` on the benchmark's checkpoint)
AUTO_CANDIDATES = ("lstm_global", "holt_winters", "seasonal_persistence", "persistence")
AUTO_EVAL_DAYS = 3.0
AUTO_MARGIN = 0.0
#: the models run with ``--calibrate`` also as ``<name>+cal``: the engine's
#: conformal calibration (engine.calibration) on their forecasts (Prophet,
#: fitted afresh at a few origins, and the one-hour per-series LSTM, whose
#: first run predates the calibration origins, are not; ``lstm_h6`` is)
CALIBRATED = BUILTIN + STATSFORECAST + LEARNED + ("lstm_h6",)
CAL = "+cal"
#: ``--blend``: ``lstm_global`` averaged with ``seasonal_naive`` (the
#: ``blend`` forecaster) at these weights of the LSTM, stored as
#: ``lstm_global~<w>``; the weight per horizon is chosen on the tuning traces
#: by pinball loss (1: the LSTM alone, 0: the seasonal naive alone)
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
BASELINES = BUILTIN + STATSFORECAST + ("prophet",)
#: parameters of the benchmark's models (defaults otherwise)
PARAMS: dict[str, dict] = {"prophet": {"uncertainty_samples": 200}}
#: a benchmark name for a registered forecaster with other parameters
VARIANTS: dict[str, tuple[str, dict]] = {
    "lstm_h6": ("lstm", {"horizon": 72, "quantiles": list(LEVELS)}),
    "blend_sp_hw": (PLAN_FORECASTER["name"], PLAN_FORECASTER["params"]),
}
#: the steps a model forecasts, where fewer than every scored horizon
REACH = {"lstm": 12, "lstm_h6": 72}


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


def traces(filters: Sequence[str] = ()) -> list[Series]:
    out = []
    for p in sorted(TRACES.rglob("*.csv")):
        s = load_trace(p)
        if (s.timestamps[-1] - s.timestamps[0]) < MIN_DAYS * DAY - 3600:
            continue
        if filters and not any(f in s.name for f in filters):
            continue
        out.append(s)
    return out


def held_out(names: Sequence[str]) -> set[str]:
    """The fixed held-out part, the frontier benchmark's rule: sorted by
    name, every third from the third (6 of the 18 traces)."""
    return {n for i, n in enumerate(sorted(names)) if i % 3 == 2}


def _step_of(s: Series) -> int:
    return int(np.median(np.diff(s.timestamps)))


# ---------------------------------------------------------------- evaluation
class Evaluation:
    """One trace's split, origins, horizons and MASE denominator."""

    def __init__(self, s: Series, args, held: bool) -> None:
        self.s, self.held = s, held
        self.step = _step_of(s)
        self.S = DAY // self.step
        n = len(s)
        self.test_start = n - int(args.test_days * DAY // self.step)
        self.hsteps = [max(1, math.ceil(m * 60 / self.step)) for m in HORIZONS_MIN]
        self.H = max(self.hsteps)
        last = n - 1 - self.H
        if args.origins_every_min:  # every origin of a grid over the test period
            grid = max(1, int(args.origins_every_min * 60 // self.step))
            self.origins = np.arange(self.test_start - 1, last + 1, grid, dtype=np.int64)
        else:
            self.origins = np.unique(np.linspace(self.test_start - 1, last, args.origins).round().astype(np.int64))
        # --calibrate: forecasts every --cal-every-min from --cal-days before
        # the test period on (on the test origins' grid, so each test origin
        # of that grid is one of them), whose pairs (once their actuals are
        # in) calibrate the forecasts at the test origins
        every = max(1, int(args.cal_every_min * 60 // self.step))
        first = max(self.test_start - 1 - int(args.cal_days * self.S), self.S)
        self.cal_origins = np.union1d(np.arange(self.test_start - 1, first - 1, -every, dtype=np.int64),
                                      np.arange(self.test_start - 1, last + 1, every, dtype=np.int64))
        self.train = s[: self.test_start]
        y = self.train.values[-MIN_DAYS * self.S:]
        self.scale = float(np.nanmean(np.abs(y[self.S:] - y[: -self.S])))
        mag = float(np.nanmedian(np.abs(y)))
        test = s.values[self.test_start:]
        self.near_zero = bool(np.nanmin(np.abs(test)) < 0.05 * mag) if mag > 0 else True

    def score(self, origins: np.ndarray, fcs: dict[float, np.ndarray], point: np.ndarray) -> dict:
        """``fcs``: level -> (origins, H) values; ``point`` (origins, H)."""
        y = self.s.values
        out = {}
        for m, h in zip(HORIZONS_MIN, self.hsteps):
            act = y[origins + h]
            p = point[:, h - 1]
            ok = np.isfinite(act) & np.isfinite(p)
            if not ok.any():
                continue
            a = act[ok]
            err = np.abs(a - p[ok])
            pin = []
            cover = {}
            for q in LEVELS:
                f = fcs[q][ok, h - 1]
                d = a - f
                pin.append(np.maximum(q * d, (q - 1) * d).mean())
                cover[str(q)] = float(np.mean(a <= f))
            mape = None if self.near_zero else float(np.mean(err / np.abs(a)) * 100)
            out[str(m)] = {"mase": float(err.mean() / self.scale), "mape": mape,
                           "pinball": float(np.mean(pin) / self.scale), "coverage": cover, "n": int(ok.sum())}
        return out


def make(name: str, ev: "Evaluation | None" = None, args: Any = None):
    import forecasters

    if name in SELECTED:
        return forecasters.create("auto", auto_params(name, ev, args))
    if name in VARIANTS:
        return forecasters.create(*VARIANTS[name])
    return forecasters.create(name, PARAMS.get(name, {}))


def auto_params(name: str, ev: "Evaluation", args: Any) -> dict:
    """``auto``'s parameters on one trace: every step to 24 h scored, and for
    ``auto_lead`` one band per scored horizon (ending at its step)."""
    cands = [{"name": c, **({"params": {"checkpoint": str(args.model), "device": "cpu"}} if c == "lstm_global" else {})}
             for c in AUTO_CANDIDATES]
    out = {"candidates": cands, "horizon_steps": ev.H, "eval_window": int(args.auto_eval_days * ev.S),
           "n_origins": 48, "margin": args.auto_margin}
    if name == "auto_lead":
        out["lead_bands"] = sorted(set(ev.hsteps[:-1]) - {ev.H})
    return out


class _Scored:
    """The forecasts at the test origins, for :meth:`Evaluation.score`."""

    def __init__(self, ev: Evaluation, origins: np.ndarray) -> None:
        self.origins = origins
        self.fcs = {q: np.full((origins.size, ev.H), np.nan) for q in LEVELS}
        self.point = np.full((origins.size, ev.H), np.nan)

    def put(self, i: int, fc, reach: int) -> None:
        self.point[i, :reach] = fc.point[:reach]
        for q in LEVELS:
            self.fcs[q][i, :reach] = fc.quantiles[q][:reach]


#: ``--cal-adaptive``: the calibration with adaptive conformal inference at
#: step gamma (per pair: here one pair per anchor an hour), stored as
#: ``<name>+cal-aci<gamma>`` (``+cal7d-aci<gamma>`` for the 7-day window);
#: ``--cal-adaptive-lead``: the same with gamma divided at each lead by the
#: pairs still waiting for their actuals when one is made (``-acil<gamma>``)
ACI = "-aci"


def cal_suffixes(args) -> dict[str, tuple[float, float, bool]]:
    """``+cal`` for the first ``--cal-window-days``, ``+cal<N>d`` for each
    further one, and for each gamma of ``--cal-adaptive`` (and of
    ``--cal-adaptive-lead``) the same with ``-aci<gamma>`` (``-acil<gamma>``)
    -> (window in days, gamma, gamma divided by the pairs in flight)."""
    def gammas(option: str) -> list[float]:
        return [g for g in (float(x) for x in str(getattr(args, option, "") or "").split(",") if x) if g]

    out = {}
    for i, d in enumerate(float(x) for x in str(args.cal_window_days).split(",") if x):
        sfx = CAL if i == 0 else f"{CAL}{d:g}d"
        out[sfx] = (d, 0.0, False)
        out.update({f"{sfx}{ACI}{g:g}": (d, g, False) for g in gammas("cal_adaptive")})
        out.update({f"{sfx}{ACI}l{g:g}": (d, g, True) for g in gammas("cal_adaptive_lead")})
    return out


def calibrators(ev: Evaluation, args) -> dict:
    """The engine's conformal calibration, as ``forecaster.calibration``
    configures it, once per window of ``--cal-window-days`` and gamma of
    ``--cal-adaptive`` / ``--cal-adaptive-lead`` (suffix -> calibrator;
    ``--cal-min-samples``)."""
    from engine.calibration import QuantileCalibrator

    return {sfx: QuantileCalibrator(LEVELS, ev.step, timedelta(days=d), args.cal_min_samples, g, in_flight=lead)
            for sfx, (d, g, lead) in cal_suffixes(args).items()}


def model_names(results: dict) -> list[str]:
    """Every model name in ``results`` (a base model, ``+cal`` variants,
    ``~w`` blends), in the order of :data:`MODELS`."""
    seen = {k for r in results.values() for k, v in r.items() if isinstance(v, dict) and "horizons" in v}

    def key(x: str) -> tuple:
        base = x.split("+")[0].split("~")[0]
        return (MODELS.index(base) if base in MODELS else len(MODELS), base, x)

    return sorted(seen, key=key)


def _timeline(ev: Evaluation, origins: np.ndarray, calibrate: bool) -> tuple[np.ndarray, dict[int, int]]:
    """Every origin forecast from (the test ``origins``, and with
    ``calibrate`` the calibration origins), and each test origin's row."""
    every = np.union1d(origins, ev.cal_origins) if calibrate else origins
    return every, {int(o): i for i, o in enumerate(origins)}


def run_model(ev: Evaluation, name: str, args, calibrate: bool = False) -> dict[str, dict]:
    """``name``'s scores (and with ``calibrate`` also ``name+cal``'s: the same
    forecasts through the engine's conformal calibration, fed at every origin
    with the pairs whose actuals are in by then)."""
    s = ev.s
    origins = ev.origins
    # Prophet on a few origins is fitted afresh at each; with --prophet-origins
    # at least the test origins it runs as the others (and the engine) do:
    # refitted every --refit-hours, updated in between
    few = name == "prophet" and args.prophet_origins < origins.size
    if few:
        origins = origins[np.linspace(0, origins.size - 1, args.prophet_origins).round().astype(int)]
        calibrate = False
    refit = 0 if few else int(args.refit_hours * 3600 // ev.step)
    reach = min(ev.H, REACH.get(name, ev.H))  # steps forecast
    raw = _Scored(ev, origins)
    every, rows = _timeline(ev, origins, calibrate)
    cbs = calibrators(ev, args) if calibrate else {}
    cals = {sfx: _Scored(ev, origins) for sfx in cbs}
    fit_s, pred_s, fits = 0.0, 0.0, 0
    model, fitted_at = None, None
    for o in every:
        hist = s[: o + 1]
        now = from_epoch(int(s.timestamps[o]))
        if model is None or o - fitted_at >= refit:
            model = make(name, ev, args)
            t = time.perf_counter()
            model.fit(hist)
            fit_s += time.perf_counter() - t
            fits += 1
            fitted_at = o
        else:
            model.update(hist)
        t = time.perf_counter()
        fc = model.predict(now, reach, LEVELS)
        pred_s += time.perf_counter() - t
        i = rows.get(int(o))
        if i is not None:
            raw.put(i, fc, reach)
        for sfx, cb in cbs.items():
            fcal = cb.calibrate(hist, fc)
            if i is not None:
                cals[sfx].put(i, fcal, reach)
    meta = {"fit_s": fit_s, "fits": fits, "predict_ms": 1000 * pred_s / max(every.size, 1),
            "origins": int(origins.size), "forecast_origins": int(every.size)}
    out = {name: {"horizons": ev.score(origins, raw.fcs, raw.point), **meta}}
    for sfx, cal in cals.items():
        out[name + sfx] = {"horizons": ev.score(origins, cal.fcs, cal.point), **meta}
    return out


def run_global(ev: Evaluation, g, args, calibrate: bool = False,
               variants: Sequence[str] = LEARNED) -> dict[str, dict]:
    """``lstm_global`` (calibrated on the trace's own errors up to the
    origin, recalibrated every ``--refit-hours``), ``lstm_global_median``
    (the same, the median shifted too) and ``lstm_global_pooled``, or only
    those of ``variants``; with ``calibrate`` also each through the
    engine's conformal calibration (``+cal``), as :func:`run_model`."""
    s = ev.s
    out: dict[str, dict] = {}
    every, rows = _timeline(ev, ev.origins, calibrate)
    blends = {(n, w): _Scored(ev, ev.origins) for n in variants for w in BLEND_WEIGHTS} if args.blend else {}
    sn, fs_at = None, {}  # the seasonal naive's forecast at each test origin
    for name in variants:
        raw = _Scored(ev, ev.origins)
        cbs = calibrators(ev, args) if calibrate else {}
        cals = {sfx: _Scored(ev, ev.origins) for sfx in cbs}
        cal_s, pred_s, calibrated_at = 0.0, 0.0, None
        refit = int(args.refit_hours * 3600 // ev.step)
        key = s.name if name == "lstm_global" else f"{s.name}#{name.rsplit('_', 1)[1]}"
        g._series_offsets.pop(key, None)
        for o in every:
            hist = s[: o + 1]
            if name != "lstm_global_pooled" and (calibrated_at is None or o - calibrated_at >= refit):
                t = time.perf_counter()
                g.calibrate({key: hist}, median=True if name == "lstm_global_median" else None)
                cal_s += time.perf_counter() - t
                calibrated_at = o
            t = time.perf_counter()
            fc = g.predict_many({key: hist}, from_epoch(int(s.timestamps[o])), ev.H, LEVELS)[key]
            pred_s += time.perf_counter() - t
            i = rows.get(int(o))
            if i is not None:
                raw.put(i, fc, ev.H)
            for sfx, cb in cbs.items():
                fcal = cb.calibrate(hist, fc)
                if i is not None:
                    cals[sfx].put(i, fcal, ev.H)
            if blends and i is not None:
                if i not in fs_at:
                    if sn is None:
                        sn = make("seasonal_naive")
                        sn.fit(hist)
                    else:
                        sn.update(hist)
                    fs_at[i] = sn.predict(from_epoch(int(s.timestamps[o])), ev.H, LEVELS)
                fs = fs_at[i]
                for w in BLEND_WEIGHTS:
                    acc = blends[name, w]
                    acc.point[i] = w * fc.point + (1 - w) * fs.point
                    for q in LEVELS:
                        acc.fcs[q][i] = w * fc.quantiles[q] + (1 - w) * fs.quantiles[q]
        meta = {"fit_s": cal_s, "fits": 0, "predict_ms": 1000 * pred_s / max(every.size, 1),
                "origins": int(ev.origins.size), "forecast_origins": int(every.size)}
        out[name] = {"horizons": ev.score(ev.origins, raw.fcs, raw.point), **meta}
        for sfx, cal in cals.items():
            out[name + sfx] = {"horizons": ev.score(ev.origins, cal.fcs, cal.point), **meta}
    for (n, w), acc in blends.items():
        out[f"{n}~{w}"] = {"horizons": ev.score(ev.origins, acc.fcs, acc.point), "fit_s": 0.0, "fits": 0,
                           "predict_ms": 0.0, "origins": int(ev.origins.size)}
    return out


def blend_study(results: dict, held: set[str], lstm: str = "lstm_global") -> dict:
    """Per horizon: the weight of ``lstm`` (``--blend-base``) against ``seasonal_naive``
    with the lowest geometric-mean pinball on the tuning traces, and what it
    scores on both parts next to the best baseline of each."""
    out: dict = {}
    for m in map(str, HORIZONS_MIN):
        def gm(model: str, part: str, metric: str = "pinball") -> float | None:
            return _gmean([r[model]["horizons"][m][metric] for n, r in results.items()
                           if (n in held) == (part == "held_out") and model in r
                           and m in r[model].get("horizons", {})])

        tuned = {w: gm(f"{lstm}~{w}", "tuning") for w in BLEND_WEIGHTS}
        tuned = {w: v for w, v in tuned.items() if v is not None}
        if not tuned:
            continue
        w = min(tuned, key=lambda k: (tuned[k], -k))
        row: dict = {"weight": w, "tuning_pinball_by_weight": tuned}
        for part in ("tuning", "held_out"):
            base = {b: gm(b, part) for b in BASELINES}
            base = {b: v for b, v in base.items() if v is not None}
            best = min(base, key=base.get) if base else None
            row[part] = {"pinball": gm(f"{lstm}~{w}", part), "mase": gm(f"{lstm}~{w}", part, "mase"),
                         "lstm_global_pinball": gm(lstm, part), "best_baseline": best,
                         "best_baseline_pinball": base.get(best) if best else None}
        out[m] = row
    return out


def fit_global(evals: list[Evaluation], args):
    """The level-free global LSTM on the tuning traces' pre-test samples."""
    from forecasters.lstm import LevelFreeLSTM

    series = {ev.s.name: ev.train for ev in evals if not ev.held}
    g = LevelFreeLSTM({"epochs": args.epochs, "device": args.device, "seed": args.seed})
    t = time.perf_counter()
    g.fit(series, on_epoch=lambda e, n: print(f"  epoch {e}/{n} {time.perf_counter() - t:.0f}s", flush=True))
    return g, time.perf_counter() - t


# --------------------------------------------------------------------- speed
def speed(all_traces: list[Series], g, args) -> dict:
    """Batched inference for 1,000 targets (4-hour and 24-hour horizons) and
    the cost of calibrating them."""
    five = [s for s in all_traces if _step_of(s) == 300]
    need = 3 * 288
    latest = max(int(s.timestamps[-1]) for s in five)
    histories = {}
    for i in range(1000):
        s = five[i % len(five)]
        cut = len(s) - 1 - (i // len(five)) * 37  # a different window per copy
        h = s[max(0, cut - need): cut + 1]
        histories[f"t{i:04d}"] = Series(h.timestamps - int(h.timestamps[-1]) + latest, h.values, f"t{i:04d}")
    now = from_epoch(latest)
    out: dict[str, Any] = {"targets": 1000, "device": str(g._device), "parameters": g.n_parameters}
    for horizon in (48, 288):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            res = g.predict_many(histories, now, horizon, LEVELS)
            times.append(time.perf_counter() - t)
        assert len(res) == 1000
        out[f"predict_many_1000_h{horizon}_s_median"] = float(np.median(times))
    t = time.perf_counter()
    g.calibrate(dict(list(histories.items())[:100]))
    out["calibrate_100_s"] = time.perf_counter() - t
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# -------------------------------------------------------------------- report
def _gmean(v: Sequence[float]) -> float | None:
    v = [x for x in v if x is not None and x > 0 and math.isfinite(x)]
    return float(np.exp(np.mean(np.log(v)))) if v else None


def summarize(results: dict, held: set[str]) -> dict:
    """Per part ("tuning", "held_out") and horizon: geometric means, paired
    ratios and wins against Holt-Winters and the better statsforecast
    baseline, median coverage per level."""
    out: dict = {}
    for part in ("tuning", "held_out"):
        names = [n for n in results if (n in held) == (part == "held_out")]
        ps: dict = {}
        for m in map(str, HORIZONS_MIN):
            def vals(model: str, metric: str) -> dict[str, float]:
                return {n: results[n][model]["horizons"][m][metric] for n in names
                        if model in results[n] and m in results[n][model].get("horizons", {})}

            models = [x for x in model_names(results) if vals(x, "mase")]
            g = {x: {"mase": _gmean(vals(x, "mase").values()), "pinball": _gmean(vals(x, "pinball").values())}
                 for x in models}
            sf = [x for x in STATSFORECAST if x in g and g[x]["mase"] is not None]
            best_sf = min(sf, key=lambda x: g[x]["mase"]) if sf else None
            rows = {}
            for x in models:
                row = {"traces": len(vals(x, "mase")), **g[x],
                       "origins": int(np.median([results[n][x]["origins"] for n in vals(x, "mase")])),
                       "coverage": {str(q): float(np.median([results[n][x]["horizons"][m]["coverage"][str(q)]
                                                             for n in vals(x, "mase")])) for q in LEVELS}}
                for ref_label, ref in (("holt_winters", "holt_winters"), ("best_statsforecast", best_sf)):
                    if ref is None or ref == x:
                        continue
                    for metric in ("mase", "pinball"):
                        a, b = vals(x, metric), vals(ref, metric)
                        common = [n for n in a if n in b and b[n] > 0 and a[n] > 0]
                        if common:
                            row[f"{metric}_ratio_vs_{ref_label}"] = _gmean([a[n] / b[n] for n in common])
                            row[f"{metric}_wins_vs_{ref_label}"] = f"{sum(a[n] < b[n] for n in common)}/{len(common)}"
                rows[x] = row
            ps[m] = {"best_statsforecast": best_sf, "models": rows}
        out[part] = {"traces": sorted(names), "horizons": ps}
    return out


def _f(v, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _hname(m: int) -> str:
    return f"{m} min" if m < 60 else f"{m // 60} h"


def best_baseline(rows: dict, model: str) -> str | None:
    """Of a part's horizon rows (``summarize``), the baseline with the
    lowest geometric-mean pinball among those scored on as many traces as
    ``model`` (None: none is, e.g. where ``model`` reaches that far on a
    few traces only)."""
    pins = {b: rows[b]["pinball"] for b in BASELINES if b in rows and rows[b]["traces"] == rows[model]["traces"]}
    return min(pins, key=pins.get) if pins else None


def docs_tables(doc: dict, model: str) -> str:
    """The tables docs/forecasters.md shows for ``model`` (from a stored
    run): per part and horizon its MASE, the paired ratios and wins
    against Holt-Winters and the best statsforecast baseline, its pinball
    against the baseline with the lowest pinball there (on the same
    traces), and its median coverage per level."""
    summary = summarize(doc["results"], set(doc["held_out"]))
    lines = []
    for part in ("held_out", "tuning"):
        lines += [f"{part.replace('_', '-')} ({len(summary[part]['traces'])} traces), `{model}`:", "",
                  "| horizon | lstm MASE | MASE / HW (wins) | MASE / best SF (wins) | lstm pinball "
                  "| best baseline pinball | pinball / best baseline | coverage "
                  + " / ".join(map(str, LEVELS)) + " |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for m in HORIZONS_MIN:
            h = summary[part]["horizons"].get(str(m))
            if not h or not (h["models"].get(model) or {}).get("traces"):
                continue  # (a model that does not forecast this far)
            r = h["models"][model]
            best = best_baseline(h["models"], model)
            if best is None:
                continue
            bp = h["models"][best]["pinball"]
            lines.append(f"| {_hname(m)} | {_f(r['mase'])} | {_f(r.get('mase_ratio_vs_holt_winters'))} "
                         f"({r.get('mase_wins_vs_holt_winters', '-')}) "
                         f"| {_f(r.get('mase_ratio_vs_best_statsforecast'))} "
                         f"({r.get('mase_wins_vs_best_statsforecast', '-')}, {h['best_statsforecast']}) "
                         f"| {_f(r['pinball'])} | {_f(bp)} ({best}) | {_f(r['pinball'] / bp)} | "
                         + " / ".join(_f(r["coverage"][str(q)], 2) for q in LEVELS) + " |")
        lines.append("")
    return "\n".join(lines)


#: the variants of the global model the calibration notes compare
CAL_VARIANTS = ("lstm_global", "lstm_global_pooled", "lstm_global+cal", "lstm_global+cal7d",
                "lstm_global_pooled+cal", "lstm_global_pooled+cal7d")


def calibration_choice(doc: dict, variants: Sequence[str] = CAL_VARIANTS) -> tuple[str, dict[str, float]]:
    """The calibration variant the tuning traces choose (of ``variants``):
    of those whose geometric-mean pinball over 10 min - 6 h is within 1 % of
    the lowest, the one with the smallest worst level (largest distance of a
    level's median coverage from nominal, at any of those horizons). Returns
    it and every variant's pinball."""
    part = summarize(doc["results"], set(doc["held_out"]))["tuning"]["horizons"]
    hs = [str(m) for m in HORIZONS_MIN if m <= 360]
    have = [v for v in variants if all(v in part[m]["models"] for m in hs)]
    pin = {v: _gmean([part[m]["models"][v]["pinball"] for m in hs]) for v in have}
    worst = {v: max(abs(part[m]["models"][v]["coverage"][str(q)] - q) for m in hs for q in LEVELS) for v in have}
    near = [v for v in have if pin[v] <= 1.01 * min(pin.values())]
    return min(near, key=worst.get), pin


def calibration_notes(doc: dict) -> str:
    """Per trace, each global-model variant's worst coverage level and
    pinball at 10 min - 6 h (``benchmarks/results/accuracy-calibration.md``)."""
    results, held = doc["results"], set(doc["held_out"])
    hs = [str(m) for m in HORIZONS_MIN if m <= 360]
    choice, pin = calibration_choice(doc)
    lines = ["# Calibration of the lstm_global variants, per trace (benchmark notes)", "",
             f"From `benchmarks/results/accuracy.json` (the run `{doc['command'].split(' ; ')[-1]}`, "
             f"origins every {doc['args'].get('origins_every_min')} min over each trace's test period on the "
             "shared traces). The variant chosen on the tuning traces only (lowest geometric-mean "
             "pinball over 10 min - 6 h, within 1 %: the smallest worst level): "
             f"`{choice}` (tuning pinball: " + ", ".join(f"{v} {pin[v]:.4f}" for v in pin) + "). "
             "`*` marks a held-out trace.", ""]
    variants = [v for v in CAL_VARIANTS if v in pin]
    for title, cell in (("Largest distance of a level's coverage from nominal",
                         lambda h: f"{max(abs(h['coverage'][str(q)] - q) for q in LEVELS):.2f}"),
                        ("Pinball (over the seasonal-naive MAE)", lambda h: f"{h['pinball']:.3f}")):
        lines += [f"## {title}, per trace (10 min / 30 min / 1 h / 6 h)", "",
                  "| trace | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
        for n in sorted(results):
            r = results[n]
            if not all(v in r for v in variants):
                continue
            name = n.removesuffix(".csv") + ("*" if n in held else "")
            lines.append(f"| {name} | " + " | ".join(" / ".join(cell(r[v]["horizons"][m]) for m in hs)
                                                     for v in variants) + " |")
        lines.append("")
    return "\n".join(lines)


def markdown(doc: dict) -> str:
    summary, results = doc["summary"], doc["results"]
    lines = ["# Forecast accuracy for planning on the shared traces", "", f"Command: `{doc['command']}`", "",
             f"Machine: {doc['machine']}", ""]
    if doc.get("global"):
        gm = doc["global"]
        lines += [f"Global LSTM: {gm['parameters']} parameters, trained on the {gm['series']} tuning traces in "
                  f"{gm['fit_s']:.0f} s ({gm['epochs_run']} epochs, best {gm['best_epoch']}, "
                  f"{gm['train_windows']} windows, torch threads {gm['threads']}).", ""]
    for part in ("held_out", "tuning"):
        ps = summary[part]
        lines += [f"## {part.replace('_', '-')} traces ({len(ps['traces'])})", "", ", ".join(ps["traces"]), ""]
        for m in HORIZONS_MIN:
            h = ps["horizons"].get(str(m))
            if not h:
                continue
            lines += [f"### {_hname(m)} (best statsforecast: {h['best_statsforecast']})", "",
                      "| model | traces | gmean MASE | gmean pinball | MASE / HW | wins v HW | MASE / best SF "
                      "| wins v SF | pinball / HW | pinball / SF | pin wins v SF | "
                      + " | ".join(f"cov {q}" for q in LEVELS) + " |",
                      "|---|---:|" + "---:|" * (10 + len(LEVELS))]
            for x, r in h["models"].items():
                lines.append(
                    f"| {x} | {r['traces']} | {_f(r['mase'])} | {_f(r['pinball'])} "
                    f"| {_f(r.get('mase_ratio_vs_holt_winters'))} | {r.get('mase_wins_vs_holt_winters', '-')} "
                    f"| {_f(r.get('mase_ratio_vs_best_statsforecast'))} | {r.get('mase_wins_vs_best_statsforecast', '-')} "
                    f"| {_f(r.get('pinball_ratio_vs_holt_winters'))} | {_f(r.get('pinball_ratio_vs_best_statsforecast'))} "
                    f"| {r.get('pinball_wins_vs_best_statsforecast', '-')} | "
                    + " | ".join(_f(r["coverage"][str(q)], 2) for q in LEVELS) + " |")
            lines.append("")
    for lstm, study in doc.get("blends", {}).items():
        lines += [f"## Blend of {lstm} and seasonal_naive (weight chosen on the tuning traces)", "",
                  "The LSTM's weight per horizon minimizes the geometric-mean pinball over the tuning traces "
                  f"(grid {', '.join(map(str, BLEND_WEIGHTS))}); the held-out traces only report it.", "",
                  f"| horizon | weight | tuning pinball ({lstm}) | tuning best baseline | held-out pinball "
                  f"({lstm}) | held-out best baseline | held-out MASE |", "|---|---:|---|---|---|---|---:|"]
        for m in HORIZONS_MIN:
            r = study.get(str(m))
            if not r:
                continue
            t, h = r["tuning"], r["held_out"]
            lines.append(f"| {_hname(m)} | {r['weight']} | {_f(t['pinball'])} ({_f(t['lstm_global_pinball'])}) "
                         f"| {_f(t['best_baseline_pinball'])} ({t['best_baseline']}) "
                         f"| {_f(h['pinball'])} ({_f(h['lstm_global_pinball'])}) "
                         f"| {_f(h['best_baseline_pinball'])} ({h['best_baseline']}) | {_f(h['mase'])} |")
        lines.append("")
    names = model_names(results)
    cal_models = [(x, y) for x in names if "+" not in x and "~" not in x for y in names if y.startswith(x + CAL)]
    if cal_models:
        lines += ["## Conformal calibration: before -> after", "",
                  "Median realized coverage over the part's traces per level, and the geometric-mean pinball, "
                  "of each model's forecasts as they are and through the engine's conformal calibration "
                  "(`+cal`; the point, and so MASE, is unchanged). `max |dev|`: the largest distance of a "
                  "level's median coverage from nominal.", ""]
        for part in ("held_out", "tuning"):
            ps = summary[part]
            lines += [f"### {part.replace('_', '-')}", "",
                      "| model | horizon | coverage " + " / ".join(map(str, LEVELS)) + " | max \\|dev\\| "
                      "| pinball | -> coverage +cal | max \\|dev\\| +cal | pinball +cal |",
                      "|---|---|---|---:|---:|---|---:|---:|"]
            for x, y in cal_models:
                for m in HORIZONS_MIN:
                    rows = ps["horizons"].get(str(m), {}).get("models", {})
                    a, b = rows.get(x), rows.get(y)
                    if not a or not b:
                        continue

                    def cov(r):
                        return " / ".join(_f(r["coverage"][str(q)], 2) for q in LEVELS)

                    def dev(r):
                        return max(abs(r["coverage"][str(q)] - q) for q in LEVELS)

                    label = x if y == x + CAL else f"{x} ({y[len(x):]})"
                    lines.append(f"| {label} | {_hname(m)} | {cov(a)} | {dev(a):.2f} | {_f(a['pinball'])} "
                                 f"| {cov(b)} | {dev(b):.2f} | {_f(b['pinball'])} |")
            lines.append("")
    lines += ["## Per trace", "", "MASE / pinball (both scaled by the trace's seasonal-naive MAE) per horizon; "
              "`*` marks a held-out trace, `~0` a trace whose actuals come near zero (no MAPE).", ""]
    models = names
    for m in HORIZONS_MIN:
        lines += [f"### {_hname(m)}", "", "| trace | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for n, r in results.items():
            tag = ("*" if n in doc["held_out"] else "") + (" ~0" if r.get("_near_zero") else "")
            cells = []
            for x in models:
                v = r.get(x, {}).get("horizons", {}).get(str(m))
                cells.append("-" if not v else f"{v['mase']:.3f} / {v['pinball']:.3f}")
            lines.append(f"| {n}{tag} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Time and origins per trace (median)", "",
              "Origins: the forecasts scored per trace; one origin moves a trace's coverage of a level by "
              "1 / origins (the resolution of the coverage columns).", "",
              "| model | fit s (all fits) | predict ms | origins | coverage resolution |", "|---|---:|---:|---:|---:|"]
    for x in models:
        rows = [r[x] for r in results.values() if x in r]
        n = int(np.median([r["origins"] for r in rows]))
        lines.append(f"| {x} | {np.median([r['fit_s'] for r in rows]):.2f} | "
                     f"{np.median([r['predict_ms'] for r in rows]):.1f} | {n} | {1 / n:.3f} |")
    if doc.get("speed"):
        lines += ["", "## Global LSTM speed", "", "| check | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in doc["speed"].items()]
    if doc.get("errors"):
        lines += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in doc["errors"].items()]
    lines.append("")
    return "\n".join(lines)


def write(doc: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc["summary"] = summarize(doc["results"], set(doc["held_out"]))
    doc["blends"] = {n: blend_study(doc["results"], set(doc["held_out"]), n) for n in LEARNED
                     if any(f"{n}~1.0" in r for r in doc["results"].values())}
    doc.pop("blend", None)  # the one-base form of earlier runs
    (out / "accuracy.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
    (out / "accuracy.md").write_text(markdown(doc))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", default="", help="comma-separated substrings of trace paths to keep")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {','.join(MODELS)}")
    ap.add_argument("--origins", type=int, default=24, help="forecast origins per trace")
    ap.add_argument("--origins-every-min", type=float, default=0.0,
                    help="instead of --origins: every origin of a grid this many minutes apart over the test "
                         "period (with --calibrate best a multiple of --cal-every-min: then no extra forecasts)")
    ap.add_argument("--prophet-origins", type=int, default=4)
    ap.add_argument("--test-days", type=float, default=4.0)
    ap.add_argument("--refit-hours", type=float, default=24.0)
    ap.add_argument("--epochs", type=int, default=12, help="global LSTM epochs (early stopping may end sooner)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--auto-eval-days", type=float, default=AUTO_EVAL_DAYS,
                    help="auto, auto_lead: days of the trace's own history backtested")
    ap.add_argument("--auto-margin", type=float, default=AUTO_MARGIN,
                    help="auto, auto_lead: how much lower another candidate's score must be than lstm_global's")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--speed", action="store_true", help="also the batched-inference speed checks")
    ap.add_argument("--speed-only", action="store_true", help="only those (loads --model)")
    ap.add_argument("--model", type=Path, default=None, help="the global model file (default: in --out)")
    ap.add_argument("--reuse-model", action="store_true", help="load --model instead of training it")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models' results of the last run in --out (same traces and origins)")
    ap.add_argument("--calibrate", action="store_true",
                    help=f"also score {', '.join(CALIBRATED)} through the engine's conformal calibration (+cal)")
    ap.add_argument("--cal-days", type=float, default=3.0,
                    help="calibration origins start this long before the test period")
    ap.add_argument("--cal-every-min", type=float, default=60.0, help="minutes between calibration origins")
    ap.add_argument("--cal-window-days", default="3",
                    help="calibration.window in days; a comma-separated list scores each (+cal, +cal<N>d)")
    ap.add_argument("--cal-min-samples", type=int, default=24, help="calibration.min_samples")
    ap.add_argument("--cal-adaptive", default="",
                    help="comma-separated gammas (per pair: one an hour per lead here): also each window's "
                         "calibration with adaptive conformal inference at that step (+cal-aci<g>, +cal7d-aci<g>)")
    ap.add_argument("--cal-adaptive-lead", default="",
                    help="the same with gamma divided at each lead by the pairs in flight (+cal-acil<g>)")
    ap.add_argument("--blend", action="store_true",
                    help="also lstm_global averaged with seasonal_naive at the weights "
                         f"{', '.join(map(str, BLEND_WEIGHTS))} (the weight per horizon chosen on the tuning traces)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--calibration-notes", action="store_true",
                    help="write accuracy-calibration.md (per trace, the global model's calibration variants, and "
                         "the one the tuning traces choose) from the stored run, run nothing")
    ap.add_argument("--docs-tables", default=None, metavar="MODEL",
                    help="print the docs' tables for MODEL (e.g. lstm_global+cal7d) from the stored run, run nothing")
    args = ap.parse_args(argv)
    if args.calibration_notes:
        doc = json.loads((args.out / "accuracy.json").read_text())
        (args.out / "accuracy-calibration.md").write_text(calibration_notes(doc))
        print(f"chosen on the tuning traces: {calibration_choice(doc)[0]}")
        return 0
    if args.docs_tables:
        print(docs_tables(json.loads((args.out / "accuracy.json").read_text()), args.docs_tables))
        return 0
    args.model = args.model or args.out / "lstm_global.pt"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        ap.error(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")
    all_traces = traces([f for f in args.traces.split(",") if f])
    everything = traces()
    held = held_out([s.name for s in everything])
    doc: dict = {"command": "python -m benchmarks.accuracy " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start",
                 "held_out": sorted(held), "results": {}, "errors": {}}
    if args.speed_only:
        from forecasters.lstm import LevelFreeLSTM

        doc["speed"] = speed(everything, LevelFreeLSTM.load(args.model, device=args.device), args)
        (args.out / "accuracy_speed.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
        print(json.dumps(doc["speed"], indent=1))
        return 0
    if args.merge and (args.out / "accuracy.json").exists():
        last = json.loads((args.out / "accuracy.json").read_text())
        doc["results"], doc["errors"] = last["results"], last.get("errors", {})
        for key in ("global", "speed"):
            if key in last:
                doc[key] = last[key]
        doc["command"] = last["command"] + " ; " + doc["command"]
    evals = [Evaluation(s, args, s.name in held) for s in all_traces]
    g = None
    if any(m in LEARNED for m in models):
        if args.reuse_model:
            from forecasters.lstm import LevelFreeLSTM

            g = LevelFreeLSTM.load(args.model, device=args.device)
            fit_s = float(g.metrics.get("fit_s", math.nan))
        else:
            g, fit_s = fit_global(evals, args)  # the tuning traces among those selected
            # rows of an earlier global model are not this one's: none is merged
            for r in doc["results"].values():
                for k in [k for k in r if k.split("+")[0].split("~")[0] in LEARNED]:
                    del r[k]
            g.metrics["fit_s"] = fit_s
            args.out.mkdir(parents=True, exist_ok=True)
            g.save(args.model)
        import torch

        doc["global"] = {**{k: g.metrics[k] for k in ("series", "epochs_run", "best_epoch", "train_windows")},
                         "fit_s": fit_s, "parameters": g.n_parameters, "threads": torch.get_num_threads()}
        print(f"global lstm: {doc['global']}", flush=True)
    for ev in evals:
        name = ev.s.name
        r: dict = {**doc["results"].get(name, {}), "_near_zero": ev.near_zero, "_held_out": ev.held}
        for model in models:
            if model in LEARNED:
                if not r.get("_learned_done"):
                    r["_learned_done"] = True
                    wanted = [m for m in LEARNED if m in models]
                    r.update({k: v for k, v in run_global(ev, g, args, args.calibrate, wanted).items()
                              if k.split("+")[0].split("~")[0] in models})
                continue
            try:
                r.update(run_model(ev, model, args, args.calibrate and model in CALIBRATED))
            except Exception as exc:  # one model's failure must not end the run
                doc["errors"][f"{name}/{model}"] = f"{type(exc).__name__}: {exc}"
        r.pop("_learned_done", None)
        doc["results"][name] = r
        write(doc, args.out)
        print(name, {m: round(v["horizons"].get("60", {}).get("mase", float("nan")), 3)
                     for m, v in r.items() if isinstance(v, dict)}, flush=True)
    if args.speed and g is not None:
        doc["speed"] = speed(everything, g, args)
    write(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
