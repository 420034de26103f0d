"""What each console page shows, read from the state file: plain data for
the templates (no HTML here, no request objects)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Mapping

from ..core.units import isoformat, parse_time, to_epoch
from .chart import ChartData, Event

WINDOWS = {"1d": timedelta(days=1), "7d": timedelta(days=7)}
#: decision statuses that changed the capacity in service
APPLIED = ("applied", "unverified")


def serves(policy: Any, capacity: float) -> float:
    """The load ``capacity`` serves at the policy's target utilization, in
    the metric's units (replicas x capacity per replica, or the rung's
    capacity on a vertical ladder)."""
    if policy.ladder is not None:
        idx = min(max(int(capacity), 0), len(policy.ladder) - 1)
        return policy.ladder[idx].capacity * policy.target_utilization
    return capacity * (policy.capacity_per_replica or 0.0) * policy.target_utilization


def _band_row(row: Any) -> tuple[int, float, float, float]:
    q = {float(k): v for k, v in json.loads(row["quantiles"]).items()}
    lo = q[min(q)] if q else row["point"]
    hi = q[max(q)] if q else row["point"]
    return int(row["ts"]), float(min(lo, row["point"])), float(row["point"]), float(max(hi, row["point"]))


def chart_data(store: Any, target: Any, now: datetime, window: timedelta) -> ChartData:
    """The chart of ``target`` (a TargetConfig) over ``window`` up to now,
    plus the newest forecast and the planned schedule ahead."""
    name, policy = target.name, target.policy
    since = now - window
    lead_s = int(policy.lead_time.total_seconds())
    data = ChartData(start=to_epoch(since), end=to_epoch(now), now=to_epoch(now))
    samples = store.cached_samples(name, since=since)
    data.actual = [(int(t), float(v)) for t, v in zip(samples.timestamps.tolist(), samples.values.tolist())]
    # the forecast as it was made one lead time ahead of each point (what the policy acted on)
    best: dict[int, tuple[int, Any]] = {}
    for r in store.forecast_records(name, since=since, horizon_s=(lead_s, lead_s + int(policy.hold.total_seconds())),
                                    with_actual=False):
        if r["ts"] <= data.end and (r["ts"] not in best or r["horizon_s"] < best[r["ts"]][0]):
            best[r["ts"]] = (r["horizon_s"], r)
    data.band = [_band_row(r) for _, (_, r) in sorted(best.items())]
    newest = store.db.execute("SELECT MAX(made_at) FROM forecasts WHERE target=?", (name,)).fetchone()[0]
    if newest is not None and newest >= data.start:
        rows = store.db.execute("SELECT * FROM forecasts WHERE target=? AND made_at=? ORDER BY ts",
                                (name, newest)).fetchall()
        data.ahead = [_band_row(r) for r in rows]
        if data.ahead:
            data.end = max(data.end, data.ahead[-1][0])
    # capacity in service and scale events, from the decision log (oldest first)
    recs = [r for r in reversed(store.decisions(name, limit=5000)) if parse_time(r["at"]) >= since]
    cap: list[tuple[int, float]] = []
    for r in recs:
        at = to_epoch(parse_time(r["at"]))
        cap.append((at, serves(policy, r["current"])))
        if r["status"] in APPLIED and r["desired"] != r["current"]:
            cap.append((at, serves(policy, r["desired"])))
            data.events.append(Event(at, f"{r['current']} -> {r['desired']} at {r['at'][11:16]} ({r['status']})"))
        elif r["status"] in ("planned", "pending", "approved"):
            data.events.append(Event(at, f"planned {r['current']} -> {r['desired']} at {r['at'][11:16]}",
                                     "planned"))
        elif r["status"] in ("failed", "refused"):
            data.events.append(Event(at, f"{r['current']} -> {r['desired']} {r['status']}", "failed"))
    data.capacity = cap
    sched = next((r.get("schedule") for r in reversed(recs) if r.get("schedule")), None)
    if sched:
        data.schedule = [(to_epoch(parse_time(s["at"])), serves(policy, s["capacity"]))
                         for s in sched.get("steps", []) if not s.get("fixed")]
        if data.schedule:
            data.end = max(data.end, data.schedule[-1][0])
    return data


def schedule_rows(schedule: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """A schedule as runs of equal capacity: capacity, from, until."""
    if not schedule:
        return []
    out: list[dict[str, Any]] = []
    for s in schedule.get("steps", []):
        cap = s.get("label") or s.get("capacity")
        if out and out[-1]["capacity"] == cap and out[-1]["fixed"] == bool(s.get("fixed")):
            out[-1]["until"] = s["at"]
        else:
            out.append({"capacity": cap, "from": s["at"], "until": s["at"], "fixed": bool(s.get("fixed"))})
    return out


def decision_rows(store: Any, target: str | None, limit: int = 20) -> list[dict[str, Any]]:
    return store.decisions(target, limit=limit)


def plan_rows(store: Any, targets: Mapping[str, Any], now: datetime) -> list[dict[str, Any]]:
    """Plans waiting for a person at ``now`` (one past its expiry waits for
    nobody), newest first, with the decision behind each (its steps), its
    schedule and history."""
    from ..plans import pending

    out = []
    for v in pending(store, targets=targets, now=now):
        d = v.to_dict()
        d["schedule_rows"] = schedule_rows(v.schedule or (v.decision or {}).get("schedule"))
        out.append(d)
    return out


def accuracy_rows(store: Any, target: str | None, window: timedelta) -> list[dict[str, Any]]:
    from ..accuracy import accuracy_table

    return accuracy_table(store, target, window=window)


def audit_view(store: Any, limit: int = 100) -> dict[str, Any]:
    """The chain's verification status and its newest records."""
    from .. import audit

    status = audit.verify(store)
    rows = store.db.execute("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
    recs = []
    for r in rows:
        body = json.loads(r["payload"])
        recs.append({"seq": r["seq"], "at": isoformat(_epoch(r["at"])), "kind": r["kind"],
                     "decision_id": r["decision_id"], "plan_id": r["plan_id"], "hash": r["hash"][:12],
                     "summary": _audit_summary(r["kind"], body)})
    return {"status": status, "ok": status.ok, "summary": status.summary(), "records": recs}


def _epoch(ts: int) -> datetime:
    from ..core.units import from_epoch

    return from_epoch(ts)


def _audit_summary(kind: str, body: Mapping[str, Any]) -> str:
    if body.get("to"):
        who = f" by {body['identity']}" if body.get("identity") else ""
        via = f" via {body['channel']}" if body.get("channel") else ""
        return f"{body.get('from') or '-'} -> {body['to']}{who}{via}"
    if kind == "decision" and "desired" in body:
        return f"{body.get('current')} -> {body.get('desired')} ({body.get('action', '')}, {body.get('status')})"
    if kind == "decision":
        return f"status {body.get('status')}"
    if kind == "actuation":
        return f"set to {body.get('requested')}, observed {body.get('observed')}"
    return ", ".join(sorted(body)[:5])
