"""A target's chart as server-rendered SVG: forecast band vs actual vs
capacity, with scale events and the planned schedule marked.

Pure: :func:`render` takes plain data (epoch seconds and values, already in
the metric's units) and returns SVG markup. Styling lives in the console's
stylesheet (classes, no ``style`` attributes: the Content-Security-Policy
allows no inline style), so the chart needs no JavaScript at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from typing import Sequence

WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 28


@dataclass(frozen=True)
class Event:
    at: int
    label: str
    kind: str = "applied"  # applied | planned | failed


@dataclass
class ChartData:
    """Everything a chart shows, in epoch seconds and metric units."""

    start: int
    end: int
    now: int
    #: observed load
    actual: list[tuple[int, float]] = field(default_factory=list)
    #: the forecast made lead-time ahead of each point: (ts, low, point, high)
    band: list[tuple[int, float, float, float]] = field(default_factory=list)
    #: the newest forecast, ahead of now: (ts, low, point, high)
    ahead: list[tuple[int, float, float, float]] = field(default_factory=list)
    #: the load the capacity in service serves at the target utilization (a step line)
    capacity: list[tuple[int, float]] = field(default_factory=list)
    #: the planner's schedule ahead, same units (a dashed step line)
    schedule: list[tuple[int, float]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.actual or self.band or self.ahead or self.capacity)


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """Round tick values covering [lo, hi] (1-2-5 steps)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _amount(x: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _time_label(ts: int, span: int) -> str:
    t = datetime.fromtimestamp(ts, tz=timezone.utc)
    return t.strftime("%H:%M") if span <= 2 * 86400 else t.strftime("%d %b")


def _steps(points: Sequence[tuple[int, float]], end: int) -> list[tuple[int, float]]:
    """A step line: each value holds until the next point (and the last until ``end``)."""
    out: list[tuple[int, float]] = []
    for i, (t, v) in enumerate(points):
        if out:
            out.append((t, out[-1][1]))
        out.append((t, v))
        if i == len(points) - 1 and end > t:
            out.append((end, v))
    return out


def render(data: ChartData, *, title: str = "", width: int = WIDTH, height: int = HEIGHT) -> str:
    """The chart's SVG markup (an ``<svg>`` element, safe to embed)."""
    t0, t1 = data.start, max(data.end, data.start + 1)
    values = [v for _, v in data.actual] + [v for _, v in data.capacity] + [v for _, v in data.schedule]
    for rows in (data.band, data.ahead):
        values += [x for r in rows for x in r[1:] if x == x]
    values = [v for v in values if math.isfinite(v)]
    vmax = max(values) * 1.1 if values and max(values) > 0 else 1.0
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM

    def x(ts: float) -> float:
        return LEFT + (min(max(ts, t0), t1) - t0) / (t1 - t0) * pw

    def y(v: float) -> float:
        return TOP + ph - (min(max(v, 0.0), vmax) / vmax) * ph

    def path(points: Sequence[tuple[float, float]]) -> str:
        return " ".join(f"{'M' if i == 0 else 'L'}{x(t):.1f},{y(v):.1f}" for i, (t, v) in enumerate(points))

    def band(rows: Sequence[tuple[int, float, float, float]]) -> str:
        if not rows:
            return ""
        upper = [(t, hi) for t, _, _, hi in rows]
        lower = [(t, lo) for t, lo, _, _ in reversed(rows)]
        return path(upper + lower) + " Z"

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">']
    if title:
        out.append(f"<title>{escape(title)}</title>")
    # grid and axes
    for v in _ticks(0.0, vmax / 1.1 if values else 1.0):
        out.append(f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>')
        out.append(f'<text class="axis" x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_amount(v)}</text>')
    span = t1 - t0
    step = max(3600, (span // 6 // 3600) * 3600) if span > 6 * 3600 else max(600, span // 6 // 600 * 600)
    tick = (t0 // step + 1) * step
    while tick < t1:
        out.append(f'<line class="grid" x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{TOP}" y2="{TOP + ph}"/>')
        out.append(f'<text class="axis" x="{x(tick):.1f}" y="{height - 8}" text-anchor="middle">'
                   f"{_time_label(tick, span)}</text>")
        tick += step
    if data.empty:
        out.append(f'<text class="empty" x="{width / 2}" y="{height / 2}" text-anchor="middle">'
                   "no data in this window yet</text>")
    # forecast band, point forecast, actual, capacity, schedule
    if data.band:
        out.append(f'<path class="band" d="{band(data.band)}"/>')
        out.append(f'<path class="forecast" d="{path([(t, p) for t, _, p, _ in data.band])}"/>')
    if data.ahead:
        out.append(f'<path class="band ahead" d="{band(data.ahead)}"/>')
        out.append(f'<path class="forecast ahead" d="{path([(t, p) for t, _, p, _ in data.ahead])}"/>')
    if data.actual:
        # a gap in the samples is a gap in the line
        segs, cur = [], []
        for t, v in data.actual:
            if v == v:
                cur.append((t, v))
            elif cur:
                segs.append(cur)
                cur = []
        if cur:
            segs.append(cur)
        for seg in segs:
            out.append(f'<path class="actual" d="{path(seg)}"/>')
    if data.capacity:
        out.append(f'<path class="capacity" d="{path(_steps(data.capacity, data.now))}"/>')
    if data.schedule:
        out.append(f'<path class="schedule" d="{path(_steps(data.schedule, data.schedule[-1][0]))}"/>')
    if t0 <= data.now <= t1:
        out.append(f'<line class="now" x1="{x(data.now):.1f}" x2="{x(data.now):.1f}" y1="{TOP}" y2="{TOP + ph}"/>')
    for e in data.events:
        if not t0 <= e.at <= t1:
            continue
        cx = x(e.at)
        out.append(f'<g class="event {escape(e.kind)}"><title>{escape(e.label)}</title>'
                   f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{TOP}" y2="{TOP + ph}"/>'
                   f'<circle cx="{cx:.1f}" cy="{TOP + 6}" r="4"/></g>')
    out.append("</svg>")
    return "".join(out)
