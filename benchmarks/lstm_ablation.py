"""One ``lstm_global`` setting on the accuracy benchmark's traces, fast.

Trains the level-free global LSTM with the given parameters on the tuning
traces (their samples before the test period, as ``benchmarks.accuracy``),
forecasts every hourly origin of each trace's test period the way that
benchmark scores ``lstm_global`` (``run_global``: calibrated on the trace's
own errors every 24 h, the model's own calibration only) and prints per
horizon: the geometric-mean MASE, its ratio against Holt-Winters and the
wins, the pinball against the best baseline, and the largest distance of a
level's median coverage from nominal (``summarize`` on the new rows beside
the baselines' of the last ``benchmarks/results/accuracy.json``, the same
origins). The held-out part is only scored with ``--part held_out``.

    python -m benchmarks.lstm_ablation '{"ensemble": 1, "median_gate": false}'
    python -m benchmarks.lstm_ablation '{}' --part held_out --out /tmp/x.json
    python -m benchmarks.lstm_ablation '{}' --then '[{"seasonal_gate": false}, {}]' --model /tmp/d.pt

About 30 s a setting with one network on this 2-core CPU, 3 minutes with
the defaults (three networks, every origin).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import accuracy as A  # noqa: E402

#: the scored model's name beside the stored ones
CANDIDATE = "candidate"


def score(params: dict, part: str, results: Path, then: list[dict] | None = None,
          model: Path | None = None) -> list[dict]:
    """Train once with ``params``; score it as trained, or once per update
    in ``then`` (settings that do not change training: the calibration's,
    the gate's), each applied to the trained model's parameters. ``model``:
    load the trained model from this file if it exists (``params`` then
    ignored), else save it there."""
    from forecasters.lstm import LevelFreeLSTM

    args = argparse.Namespace(test_days=4.0, origins_every_min=60, origins=24, cal_every_min=60,
                              cal_days=7, refit_hours=24.0, blend=False)
    every = A.traces()
    held = A.held_out([s.name for s in every])
    evals = [A.Evaluation(s, args, s.name in held) for s in every]
    base = json.loads(results.read_text())["results"]
    t = time.perf_counter()
    if model is not None and model.exists():
        g = LevelFreeLSTM.load(model)
    else:
        g = LevelFreeLSTM({"epochs": 12, "seed": 0, **params})
        g.fit({ev.s.name: ev.train for ev in evals if not ev.held})
        if model is not None:
            g.save(model)
    fit_s, trained = time.perf_counter() - t, g.params
    scores = []
    for update in then or [{}]:
        g.params = type(trained).model_validate({**trained.model_dump(), **update})
        scores.append(_scored(g, evals, args, base, held, part, fit_s))
    return scores


def _scored(g, evals, args, base: dict, held: set[str], part: str, fit_s: float) -> dict:
    out: dict = {"params": g.params.model_dump(mode="json"), "fit_s": fit_s,
                 "train_windows": g.metrics.get("train_windows"), "part": part, "per_trace": {}, "horizons": {}}
    for ev in evals:
        if ev.held == (part == "held_out"):
            out["per_trace"][ev.s.name] = A.run_global(ev, g, args, variants=("lstm_global",))["lstm_global"]
    merged = {n: {**base[n], CANDIDATE: r} for n, r in out["per_trace"].items()}
    for m, h in A.summarize(merged, held)[part]["horizons"].items():
        rows = h["models"]
        me = rows[CANDIDATE]
        best = A.best_baseline(rows, CANDIDATE)
        out["horizons"][m] = {"mase": me["mase"], "mase_vs_hw": me["mase_ratio_vs_holt_winters"],
                              "wins_vs_hw": me["mase_wins_vs_holt_winters"], "pinball": me["pinball"],
                              "best_baseline": best, "pinball_vs_best": me["pinball"] / rows[best]["pinball"],
                              "worst_coverage": max(abs(me["coverage"][str(q)] - q) for q in A.LEVELS)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("params", nargs="?", default="{}", help="LevelFreeLSTM parameters, JSON")
    ap.add_argument("--part", choices=("tuning", "held_out"), default="tuning")
    ap.add_argument("--results", type=Path, default=A.RESULTS / "accuracy.json",
                    help="the accuracy benchmark's results (the baselines' scores)")
    ap.add_argument("--then", default=None,
                    help="JSON list of parameter updates that do not change training (calibration, gate): "
                         "train once, score each")
    ap.add_argument("--model", type=Path, default=None,
                    help="load the trained model from this file if it exists, else train and save it there")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", type=Path, default=None, help="write the scores here (JSON)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    then = json.loads(args.then) if args.then else None
    scores = score(json.loads(args.params), args.part, args.results, then, args.model)
    for update, out in zip(then or [{}], scores):
        print(f"{args.part} {json.dumps(update)}: trained in {out['fit_s']:.0f} s on {out['train_windows']} windows")
        for m, r in out["horizons"].items():
            print(f"{m:>5} min  MASE {r['mase']:.3f}  / HW {r['mase_vs_hw']:.3f} (wins {r['wins_vs_hw']})"
                  f"  pinball {r['pinball']:.3f} / {r['best_baseline']} {r['pinball_vs_best']:.3f}"
                  f"  worst coverage {r['worst_coverage']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(scores if then else scores[0], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
