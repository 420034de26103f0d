"""Quality gate: stop trusting a forecaster whose live error is too high.

Pure functions over plain values (no I/O, no clock). The engine computes each
model's live error from its predicted-vs-actual records (:func:`live_mase`)
and asks :func:`gate` which model to use for the target::

    model, reason = gate({"lstm": 1.7, "holt_winters": 0.6}, bound=1.0,
                         candidates=["lstm", "holt_winters"])
    # -> ("holt_winters", GateReason("SwitchedModel", "lstm live error 1.7 > bound 1.0; ..."))

The live error may be the point forecast's MASE (:func:`live_mase`) or,
as ``auto`` scores, the whole distribution's: :func:`live_pinball`, the mean
pinball loss over the quantile levels the policy sizes from, at the horizons
it reads, over the same scale; the engine's gate (``score: pinball``, its
default) uses :func:`live_quantile_loss`, twice that, so one bound reads the
same as for MASE. ``gate`` compares whichever it is given with the bound.

``candidates`` is the preference order (the ``auto`` backtest ranking, or
the configured order); the first is the model in use. ``None`` means
reactive: no forecaster is trusted, the policy sizes from the observation
(STYLE principle 5: a failed forecast never drives a scale-down).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

WITHIN_BOUND = "WithinBound"
NO_LIVE_ERROR = "NoLiveError"
SWITCHED = "SwitchedModel"
REACTIVE = "FellBackToReactive"
NO_CANDIDATES = "NoCandidates"


@dataclass(frozen=True)
class GateReason:
    """A stable reason code and a message for people."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def gate(live_errors_by_model: Mapping[str, float | None], bound: float,
         candidates: Sequence[str]) -> tuple[str | None, GateReason]:
    """Which model to use: the current one (``candidates[0]``) while its live
    error is within ``bound`` (or not yet known), else the next candidate
    whose live error is known and within the bound, else ``None``
    (reactive). A candidate without a live error is not switched *to*: an
    unmeasured model is no evidence of a better one."""
    if not bound > 0:
        raise ValueError(f"bound must be positive, got {bound}")
    if not candidates:
        return None, GateReason(NO_CANDIDATES, "no forecaster is configured; using reactive")
    current = candidates[0]
    err = _error(live_errors_by_model.get(current))
    if err is None:
        return current, GateReason(NO_LIVE_ERROR, f"{current} has no live error yet; keeping it")
    if err <= bound:
        return current, GateReason(WITHIN_BOUND, f"{current} live error {err:.3g} <= bound {bound:g}")
    why = f"{current} live error {err:.3g} > bound {bound:g}"
    passed = []
    for name in candidates[1:]:
        e = _error(live_errors_by_model.get(name))
        if e is not None and e <= bound:
            return name, GateReason(SWITCHED, f"{why}; switched to {name} (live error {e:.3g})")
        passed.append(f"{name}: {'unknown' if e is None else f'{e:.3g}'}")
    tried = f" (other candidates: {', '.join(passed)})" if passed else ""
    return None, GateReason(REACTIVE, f"{why}; no other candidate is within the bound{tried}; using reactive")


def _error(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if np.isnan(v) else v


def live_mase(predicted: Sequence[float], actual: Sequence[float], scale: float,
              last_n: int | None = None) -> float | None:
    """MASE of the last ``last_n`` predicted-vs-actual pairs (pairs with a
    missing side are ignored): mean absolute error / ``scale`` (the in-sample
    MAE of the one-day seasonal naive forecast, as in the benchmark).
    ``None`` without any complete pair."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    p = np.asarray(predicted, dtype=float)
    a = np.asarray(actual, dtype=float)
    if p.shape != a.shape:
        raise ValueError(f"predicted and actual differ in length ({p.size} vs {a.size})")
    if last_n is not None:
        p, a = p[-last_n:], a[-last_n:]
    ok = np.isfinite(p) & np.isfinite(a)
    if not ok.any():
        return None
    return float(np.mean(np.abs(p[ok] - a[ok])) / scale)


def live_quantile_loss(predicted: Mapping[float, Sequence[float]], actual: Sequence[float], scale: float,
                       last_n: int | None = None) -> float | None:
    """Twice :func:`live_pinball` (GluonTS' weighted quantile loss
    convention): a forecast whose every level sits on its point scores its
    :func:`live_mase`, so one gate bound reads the same for both."""
    v = live_pinball(predicted, actual, scale, last_n)
    return None if v is None else 2.0 * v


def live_pinball(predicted: Mapping[float, Sequence[float]], actual: Sequence[float], scale: float,
                 last_n: int | None = None) -> float | None:
    """Mean pinball loss of the last ``last_n`` forecasts of each level
    (level -> predicted values, aligned with ``actual``) / ``scale``, the
    same denominator as :func:`live_mase` (so a perfect median scores half
    its MASE at level 0.5 alone). Pairs with a missing side are ignored;
    ``None`` without any complete pair."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if not predicted:
        raise ValueError("predicted: at least one quantile level is needed")
    a = np.asarray(actual, dtype=float)
    losses = []
    for q, values in predicted.items():
        if not 0.0 < float(q) < 1.0:
            raise ValueError(f"quantile level {q} is not in (0, 1)")
        p = np.asarray(values, dtype=float)
        if p.shape != a.shape:
            raise ValueError(f"level {q}: predicted and actual differ in length ({p.size} vs {a.size})")
        pp, aa = (p[-last_n:], a[-last_n:]) if last_n is not None else (p, a)
        ok = np.isfinite(pp) & np.isfinite(aa)
        d = aa[ok] - pp[ok]
        losses.append(np.maximum(float(q) * d, (float(q) - 1) * d))
    flat = np.concatenate(losses)
    return None if flat.size == 0 else float(flat.mean() / scale)


__all__ = ["GateReason", "gate", "live_mase", "live_pinball", "live_quantile_loss", "WITHIN_BOUND", "NO_LIVE_ERROR", "SWITCHED",
           "REACTIVE", "NO_CANDIDATES"]
