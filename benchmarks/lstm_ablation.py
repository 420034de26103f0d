"""One ``lstm_global`` setting on the accuracy benchmark's traces, fast.

Trains the level-free global LSTM with the given parameters on the tuning
traces (their samples before the test period, as ``benchmarks.accuracy``),
forecasts every hourly origin of each trace's test period (calibrated on the
trace's own errors every 24 h, the model's own calibration only) and prints
per horizon: the geometric-mean MASE, its ratio against Holt-Winters and the
wins, the pinball against the best baseline, and the largest distance of a
level's median coverage from nominal. The baselines' scores are read from the
last ``benchmarks/results/accuracy.json`` (the same origins); the held-out
part is only scored with ``--part held_out``.

    python -m benchmarks.lstm_ablation '{"ensemble": 1, "median_gate": false}'
    python -m benchmarks.lstm_ablation '{}' --part held_out --out /tmp/x.json

About 30 s a setting with one network on this 2-core CPU, 3 minutes with
the defaults (three networks, every origin).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import accuracy as A  # noqa: E402
from engine.core.units import from_epoch  # noqa: E402

HORIZONS = ("10", "30", "60", "360", "1440")


def _gmean(v) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(v, dtype=float)))))


def score(params: dict, part: str, results: Path) -> dict:
    from forecasters.lstm import LevelFreeLSTM

    args = argparse.Namespace(test_days=4.0, origins_every_min=60, origins=24, cal_every_min=60,
                              cal_days=7, refit_hours=24)
    every = A.traces()
    held = A.held_out([s.name for s in every])
    evals = [A.Evaluation(s, args, s.name in held) for s in every]
    base = json.loads(results.read_text())["results"]
    g = LevelFreeLSTM({"epochs": 12, "seed": 0, **params})
    t = time.perf_counter()
    g.fit({ev.s.name: ev.train for ev in evals if not ev.held})
    out: dict = {"params": g.params.model_dump(mode="json"), "fit_s": time.perf_counter() - t,
                 "train_windows": g.metrics.get("train_windows"), "part": part, "per_trace": {}, "horizons": {}}
    for ev in evals:
        if ev.held != (part == "held_out"):
            continue
        raw = A._Scored(ev, ev.origins)
        key, calibrated_at = ev.s.name, None
        for i, o in enumerate(ev.origins):
            hist = ev.s[: o + 1]
            if calibrated_at is None or o - calibrated_at >= A.DAY // ev.step:
                g.calibrate({key: hist})
                calibrated_at = o
            raw.put(i, g.predict_many({key: hist}, from_epoch(int(ev.s.timestamps[o])), ev.H, A.LEVELS)[key], ev.H)
        out["per_trace"][key] = ev.score(ev.origins, raw.fcs, raw.point)
    res = out["per_trace"]
    names = sorted(res)
    for m in HORIZONS:
        mase = np.array([res[n][m]["mase"] for n in names])
        hw = np.array([base[n]["holt_winters"]["horizons"][m]["mase"] for n in names])
        pins = {b: _gmean([base[n][b]["horizons"][m]["pinball"] for n in names]) for b in A.BASELINES
                if all(b in base[n] and m in base[n][b]["horizons"] for n in names)}
        best = min(pins, key=pins.get)
        pin = _gmean([res[n][m]["pinball"] for n in names])
        cov = {q: float(np.median([res[n][m]["coverage"][str(q)] for n in names])) for q in A.LEVELS}
        out["horizons"][m] = {"mase": _gmean(mase), "mase_vs_hw": _gmean(mase / hw), "wins_vs_hw": int((mase < hw).sum()),
                              "traces": len(names), "pinball": pin, "best_baseline": best,
                              "pinball_vs_best": pin / pins[best],
                              "worst_coverage": max(abs(cov[q] - q) for q in A.LEVELS)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("params", nargs="?", default="{}", help="LevelFreeLSTM parameters, JSON")
    ap.add_argument("--part", choices=("tuning", "held_out"), default="tuning")
    ap.add_argument("--results", type=Path, default=A.RESULTS / "accuracy.json",
                    help="the accuracy benchmark's results (the baselines' scores)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", type=Path, default=None, help="write the scores here (JSON)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = score(json.loads(args.params), args.part, args.results)
    print(f"{args.part}: trained in {out['fit_s']:.0f} s on {out['train_windows']} windows")
    for m, r in out["horizons"].items():
        print(f"{m:>5} min  MASE {r['mase']:.3f}  / HW {r['mase_vs_hw']:.3f} (wins {r['wins_vs_hw']}/{r['traces']})"
              f"  pinball {r['pinball']:.3f} / {r['best_baseline']} {r['pinball_vs_best']:.3f}"
              f"  worst coverage {r['worst_coverage']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
