"""``forescale accuracy``: rolling accuracy per target and horizon from the
predicted-versus-actual records, and a plot of the band against actuals."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np

from .feedback import LIVE_ACCURACY_WINDOW, accuracy, grid_horizon, grid_step, seasonal_naive_scale
from .core.units import format_duration, from_epoch, to_epoch


def accuracy_table(store: Any, target: str | None, *, window: timedelta = timedelta(days=7),
                   upper_level: float = 0.9) -> list[dict[str, Any]]:
    targets = [target] if target else [r[0] for r in store.db.execute(
        "SELECT DISTINCT target FROM forecasts ORDER BY target")]
    out = []
    for t in targets:
        last = store.db.execute("SELECT MAX(ts) FROM forecasts WHERE target=? AND actual IS NOT NULL",
                                (t,)).fetchone()[0]
        if last is None:
            continue
        since = from_epoch(last) - window
        rows = store.forecast_records(t, since=since)
        if not rows:
            continue
        # MASE's scale over the samples of the times scored (and the day
        # before, the seasonal naive's season), not over the window asked:
        # the same forecasts scored MASE 0.336 with --window 3d and 0.523
        # with 7d when the sample cache reached back further than they did
        first = min(int(r["ts"]) for r in rows)
        samples = store.cached_samples(t, since=from_epoch(first) - timedelta(days=1)).until(from_epoch(last))
        step = _step(rows, samples.timestamps)
        scale = seasonal_naive_scale(samples.regular(timedelta(seconds=step))) if len(samples) > 2 else None
        by_h: dict[int, list] = {}
        for r in rows:
            # steps ahead, as configured: a cycle runs off the grid (at :08),
            # so its points lie 52 s, 592 s ... after it, the 1st and 10th
            # step of a 1-minute interval
            by_h.setdefault(grid_horizon(r["horizon_s"], step), []).append(r)
        for h, rs in sorted(by_h.items()):
            a = np.array([r["actual"] for r in rs], dtype=float)
            p = np.array([r["point"] for r in rs], dtype=float)
            up = np.array([_upper(r["quantiles"], upper_level, r["point"]) for r in rs], dtype=float)
            acc = accuracy(a, p, up, scale)
            out.append({"target": t, "horizon": format_duration(timedelta(seconds=h)), "horizon_s": h, **acc})
    return out


def _step(rows: list, sample_ts: Any = ()) -> int:
    """The forecasts' grid step (seconds): the usual spacing of the times
    they were made for (not the smallest horizon, which a cycle off the grid
    makes a few seconds); with one such time yet (right after a start), the
    spacing of the cached samples (it printed a "42s" row)."""
    step = grid_step([int(r["ts"]) for r in rows]) or grid_step(sample_ts)
    if step:
        return max(1, step)
    hs = sorted({r["horizon_s"] for r in rows})
    return hs[0] if hs and hs[0] > 0 else 300


def _upper(qjson: str, level: float, point: float) -> float:
    import json

    q = json.loads(qjson)
    return float(q.get(str(level), max(q.values(), default=point)))


def plot_accuracy(store: Any, target: str | None, path: str, *, window: timedelta = timedelta(days=2)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [target] if target else [r[0] for r in store.db.execute("SELECT DISTINCT target FROM forecasts")]
    fig, axes = plt.subplots(len(targets) or 1, 1, figsize=(12, 3.5 * max(1, len(targets))), squeeze=False)
    for ax, t in zip(axes[:, 0], targets):
        h = store.db.execute("SELECT MIN(horizon_s) FROM forecasts WHERE target=?", (t,)).fetchone()[0]
        rows = store.forecast_records(t, horizon_s=h, with_actual=False)
        if not rows:
            continue
        end = rows[-1]["ts"]
        rows = [r for r in rows if r["ts"] >= end - window.total_seconds()]
        x = np.array([r["ts"] for r in rows]).astype("datetime64[s]")
        ax.fill_between(x, [r["point"] for r in rows], [_upper(r["quantiles"], 0.9, r["point"]) for r in rows],
                        alpha=0.3, label=f"forecast point..q0.9 ({h // 60} min ahead)")
        ax.plot(x, [np.nan if r["actual"] is None else r["actual"] for r in rows], color="black", lw=1,
                label="actual")
        ax.set_title(t)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def live_accuracy(feedback: Any, history: Any, target: Any, now: Any, *, lead: Any = None,
                  window: timedelta = LIVE_ACCURACY_WINDOW) -> dict[str, float | None]:
    """Rolling accuracy over the cycle's lead window ``lead`` (a
    :class:`policies.window.LeadWindow`; None: the configured one) for the
    metrics endpoint: ``mae``, ``mape`` (a ratio), ``mase``, ``bias``,
    ``coverage`` (``None`` where not computable yet; MAPE stays exported
    where it is meaningless, so the gauge does not flap in and out as the
    share of near-zero actuals crosses the line). From the pairs ``feedback`` (the
    target's :class:`engine.feedback.StoreFeedback`) keeps in memory, and the
    MASE scale from the fetched ``history``: nothing is read from the store."""
    from policies.window import lead_window

    horizons = (lead or lead_window(target.policy, None)).horizons_s
    a, p, up = feedback.at(horizons, now).triples(to_epoch(now - window))
    if a.size == 0:
        return {}
    recent = history.since(to_epoch(now - window - timedelta(days=1))) if history is not None else None
    scale = seasonal_naive_scale(recent.regular(target.interval)) if recent is not None and len(recent) > 2 else None
    acc = accuracy(a, p, up, scale)
    return {k: (None if k not in acc or acc[k] != acc[k] else acc[k])
            for k in ("mae", "mape", "mase", "bias", "coverage")}
