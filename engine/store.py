"""The embedded state store: one SQLite file, schema versioned.

Tables:

- ``target_state``   per-target ScalingState (current capacity, recommendation
                     history, scale events, smoothing memory) as JSON, so a
                     restart resumes with cooldowns and windows intact;
- ``decisions``      the decision log: the serialized Decision plus mode,
                     status (``decided`` -> ``intent`` -> ``applied`` /
                     ``failed`` / ``skipped`` / ``planned``), approval and outcome;
- ``forecasts``      every forecast point, with the actual value filled in
                     when it is observed (predicted-versus-actual);
- ``plans``          approve-mode plans and their states;
- ``actuations``     how long each action took to be observed in service;
- ``samples``        a cache of fetched metric history (incremental fetch).

Writes are transactions; the database runs in WAL mode so readers (the CLI)
do not block the daemon. ``open`` checks the schema version and refuses a
file written by a newer forescale.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .core.errors import PlanNotFound, PlanStateError, StateError, StateLocked
from .core.types import (
    ActuationResult, Decision, Forecast, Observation, Plan, PlanStatus, ScaleEvent, ScalingState, Series,
)
from .core.units import from_epoch, isoformat, parse_time, to_epoch

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS target_state (
    target TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    at INTEGER NOT NULL,
    mode TEXT NOT NULL,
    action TEXT NOT NULL,
    current INTEGER NOT NULL,
    desired INTEGER NOT NULL,
    fallback INTEGER NOT NULL,
    status TEXT NOT NULL,
    decision TEXT NOT NULL,
    approval TEXT,
    outcome TEXT,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_target_at ON decisions(target, at);
CREATE INDEX IF NOT EXISTS decisions_status ON decisions(status);
CREATE TABLE IF NOT EXISTS forecasts (
    target TEXT NOT NULL,
    made_at INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    horizon_s INTEGER NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    point REAL NOT NULL,
    quantiles TEXT NOT NULL,
    actual REAL,
    PRIMARY KEY (target, made_at, ts)
);
CREATE INDEX IF NOT EXISTS forecasts_pending ON forecasts(target, ts) WHERE actual IS NULL;
CREATE INDEX IF NOT EXISTS forecasts_target_ts ON forecasts(target, ts, horizon_s);
CREATE TABLE IF NOT EXISTS plans (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    status TEXT NOT NULL,
    plan TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS plans_status ON plans(target, status);
CREATE TABLE IF NOT EXISTS actuations (
    decision_id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    at INTEGER NOT NULL,
    requested INTEGER NOT NULL,
    observed INTEGER NOT NULL,
    verified INTEGER NOT NULL,
    elapsed_s REAL NOT NULL,
    result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    target TEXT NOT NULL,
    ts INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY (target, ts)
) WITHOUT ROWID;
"""


# ------------------------------------------------------------------ state <-> json
def state_to_json(s: ScalingState) -> str:
    return json.dumps({
        "current": s.current,
        "in_service": s.in_service,
        "observation": None if s.observation is None else [s.observation.value, to_epoch(s.observation.at)],
        "recommendations": [[to_epoch(t), r] for t, r in s.recommendations],
        "events": [[to_epoch(e.at), e.from_capacity, e.to_capacity] for e in s.events],
        "smoothed": list(s.smoothed),
        "headroom": s.headroom,
        "learned_lead_time_s": None if s.learned_lead_time is None else s.learned_lead_time.total_seconds(),
        "history_points": s.history_points,
    })


def state_from_json(text: str) -> ScalingState:
    d = json.loads(text)
    obs = d.get("observation")
    llt = d.get("learned_lead_time_s")
    return ScalingState(
        current=int(d["current"]),
        in_service=d.get("in_service"),
        observation=None if obs is None else Observation(float(obs[0]), from_epoch(obs[1])),
        recommendations=tuple((from_epoch(t), int(r)) for t, r in d.get("recommendations", [])),
        events=tuple(ScaleEvent(from_epoch(t), int(a), int(b)) for t, a, b in d.get("events", [])),
        smoothed=tuple(float(x) for x in d.get("smoothed", [])),
        headroom=d.get("headroom"),
        learned_lead_time=None if llt is None else timedelta(seconds=llt),
        history_points=int(d.get("history_points", 0)),
    )


def _upsert_state(db: sqlite3.Connection, target: str, state: ScalingState, now: datetime) -> None:
    db.execute(
        "INSERT INTO target_state(target, state, updated_at) VALUES (?,?,?) "
        "ON CONFLICT(target) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at",
        (target, state_to_json(state), to_epoch(now)))


def plan_from_row(row: sqlite3.Row) -> Plan:
    d = json.loads(row["plan"])
    return Plan(
        id=d["id"], target=d["target"], decision_id=d["decision_id"],
        from_capacity=d["from_capacity"], to_capacity=d["to_capacity"],
        observed_capacity=d["observed_capacity"],
        created_at=parse_time(d["created_at"]), expires_at=parse_time(d["expires_at"]),
        status=PlanStatus(row["status"]), description=d.get("description", ""),
        actor=d.get("actor"), updated_at=parse_time(d["updated_at"]) if d.get("updated_at") else None,
        note=d.get("note", ""),
    )


class Store:
    """The SQLite state file. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock_fd: int | None = None
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                      check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            if self.path != ":memory:":
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=10000")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path}: schema version {version} is newer than this forescale "
                    f"understands ({SCHEMA_VERSION}); upgrade forescale")
            if version == 0:
                with self.tx() as db:
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            db.execute(stmt)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise StateError(f"cannot open the state file {self.path}: {exc}") from exc
        except StateError:
            self._close_quietly()
            raise

    # ----------------------------------------------------------------- plumbing
    def _close_quietly(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            db.close()

    def close(self) -> None:
        self.unlock()
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; a full disk or a locked file becomes a StateError
        and the transaction rolls back (nothing half-written)."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StateError(f"state file {self.path}: {exc}") from exc
        try:
            yield self.db
        except sqlite3.Error as exc:
            self._rollback()
            raise StateError(f"state file {self.path}: {exc}") from exc
        except BaseException:
            self._rollback()
            raise
        else:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StateError(f"state file {self.path}: {exc}") from exc

    def _rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def lock(self) -> None:
        """Take the daemon lock (one daemon per state file): an exclusive
        ``flock`` on ``<state>.lock``, released when the process exits."""
        import fcntl

        if self.path == ":memory:" or self._lock_fd is not None:
            return
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StateLocked(
                f"another forescale process (pid {holder or '?'}) holds the lock on {self.path}; "
                "one daemon per state file") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -------------------------------------------------------------------- state
    def load_state(self, target: str) -> ScalingState | None:
        row = self.db.execute("SELECT state FROM target_state WHERE target=?", (target,)).fetchone()
        return None if row is None else state_from_json(row["state"])

    def save_state(self, target: str, state: ScalingState, now: datetime) -> None:
        with self.tx() as db:
            _upsert_state(db, target, state, now)

    # ---------------------------------------------------------------- decisions
    def record_decision(self, decision: Decision, mode: str, status: str, now: datetime,
                        state: ScalingState | None = None, outcome: dict | None = None) -> None:
        """Insert the decision (and, atomically, the state after it)."""
        with self.tx() as db:
            db.execute(
                "INSERT INTO decisions(id, target, at, mode, action, current, desired, fallback, status,"
                " decision, outcome, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET status=excluded.status, decision=excluded.decision,"
                " outcome=excluded.outcome, updated_at=excluded.updated_at",
                (decision.id, decision.target, to_epoch(decision.at), mode, decision.action.value,
                 decision.current, decision.desired, int(decision.fallback), status, decision.to_json(),
                 None if outcome is None else json.dumps(outcome, default=str), to_epoch(now)))
            if state is not None:
                _upsert_state(db, decision.target, state, now)

    def set_decision_status(self, decision_id: str, status: str, now: datetime, *,
                            outcome: dict | None = None, approval: dict | None = None) -> None:
        with self.tx() as db:
            cur = db.execute(
                "UPDATE decisions SET status=?, outcome=COALESCE(?, outcome),"
                " approval=COALESCE(?, approval), updated_at=? WHERE id=?",
                (status, None if outcome is None else json.dumps(outcome, default=str),
                 None if approval is None else json.dumps(approval, default=str), to_epoch(now), decision_id))
            if cur.rowcount == 0:
                raise StateError(f"no decision {decision_id!r} in {self.path}")

    def decisions(self, target: str | None = None, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        """Newest first: each the serialized Decision plus mode, status,
        approval and outcome (the audit record)."""
        q = "SELECT * FROM decisions"
        where, args = [], []
        if target:
            where.append("target=?")
            args.append(target)
        if status:
            where.append("status=?")
            args.append(status)
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY at DESC, id DESC LIMIT ?"
        args.append(limit)
        out = []
        for row in self.db.execute(q, args):
            rec = json.loads(row["decision"])
            rec["mode"] = row["mode"]
            rec["status"] = row["status"]
            rec["approval"] = json.loads(row["approval"]) if row["approval"] else None
            rec["outcome"] = json.loads(row["outcome"]) if row["outcome"] else None
            out.append(rec)
        return out

    def decision(self, decision_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT id FROM decisions WHERE id=?", (decision_id,)).fetchone()
        if row is None:
            return None
        for rec in self.decisions(limit=1_000_000):
            if rec["id"] == decision_id:
                return rec
        return None

    def unfinished_intents(self, target: str) -> list[dict[str, Any]]:
        """Decisions recorded as an intent to act whose outcome was never
        recorded (the process died between deciding and the end of actuation)."""
        return list(reversed(self.decisions(target, limit=100, status="intent")))

    # ---------------------------------------------------------------- forecasts
    def record_forecast(self, target: str, forecast: Forecast) -> None:
        made = to_epoch(forecast.made_at)
        rows = []
        for i, ts in enumerate(forecast.timestamps.tolist()):
            q = {str(k): float(v[i]) for k, v in forecast.quantiles.items()}
            rows.append((target, made, ts, ts - made, forecast.model, forecast.model_version,
                         float(forecast.point[i]), json.dumps(q)))
        with self.tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO forecasts(target, made_at, ts, horizon_s, model, model_version,"
                " point, quantiles) VALUES (?,?,?,?,?,?,?,?)", rows)

    def fill_actuals(self, target: str, observed: Series) -> int:
        """Store observed values next to the forecasts for the same times."""
        ok = ~np.isnan(observed.values)
        if not ok.any():
            return 0
        pairs = list(zip(observed.values[ok].tolist(), observed.timestamps[ok].tolist()))
        with self.tx() as db:
            cur = db.executemany(
                "UPDATE forecasts SET actual=? WHERE target=? AND ts=? AND actual IS NULL",
                [(v, target, t) for v, t in pairs])
            return cur.rowcount

    def forecast_records(self, target: str, *, since: datetime | None = None,
                         horizon_s: int | tuple[int, int] | None = None,
                         with_actual: bool = True) -> list[sqlite3.Row]:
        """Forecast points of ``target`` (oldest first); ``horizon_s`` is
        one horizon or an inclusive (low, high) range."""
        q = "SELECT * FROM forecasts WHERE target=?"
        args: list[Any] = [target]
        if since is not None:
            q += " AND ts>=?"
            args.append(to_epoch(since))
        if isinstance(horizon_s, tuple):
            q += " AND horizon_s BETWEEN ? AND ?"
            args.extend(horizon_s)
        elif horizon_s is not None:
            q += " AND horizon_s=?"
            args.append(horizon_s)
        if with_actual:
            q += " AND actual IS NOT NULL"
        q += " ORDER BY ts"
        return self.db.execute(q, args).fetchall()

    def prune(self, before: datetime | None = None, *, forecasts_before: datetime | None = None,
              samples_before: datetime | None = None, decisions_before: datetime | None = None,
              targets: list[str] | None = None) -> dict[str, int]:
        """Drop rows older than the given times (``before``: forecasts and
        samples both) and return how many went, by table. Decisions go with
        their plans and actuation records; an unfinished one (an intent, an
        accepted action not yet verified) is never dropped. Per target
        (``targets``; default: every target in the file), so each delete
        uses the target's index and holds the write lock briefly."""
        forecasts_before = forecasts_before or before
        samples_before = samples_before or before
        if targets is None:
            targets = [r[0] for r in self.db.execute(
                "SELECT target FROM target_state UNION SELECT target FROM forecasts "
                "UNION SELECT target FROM samples UNION SELECT target FROM decisions")]
        gone = {"forecasts": 0, "samples": 0, "decisions": 0, "plans": 0, "actuations": 0}
        for t in targets:
            with self.tx() as db:
                if forecasts_before is not None:
                    gone["forecasts"] += db.execute("DELETE FROM forecasts WHERE target=? AND ts<?",
                                                    (t, to_epoch(forecasts_before))).rowcount
                if samples_before is not None:
                    gone["samples"] += db.execute("DELETE FROM samples WHERE target=? AND ts<?",
                                                  (t, to_epoch(samples_before))).rowcount
                if decisions_before is not None:
                    cut = to_epoch(decisions_before)
                    gone["actuations"] += db.execute(
                        "DELETE FROM actuations WHERE target=? AND at<? AND decision_id NOT IN (SELECT id "
                        "FROM decisions WHERE target=? AND status IN ('intent', 'accepted'))", (t, cut, t)).rowcount
                    gone["plans"] += db.execute(
                        "DELETE FROM plans WHERE target=? AND created_at<? AND status NOT IN ('pending', 'approved')",
                        (t, cut)).rowcount
                    gone["decisions"] += db.execute(
                        "DELETE FROM decisions WHERE target=? AND at<? AND status NOT IN ('intent', 'accepted')",
                        (t, cut)).rowcount
        return gone

    # -------------------------------------------------------------------- plans
    def save_plan(self, plan: Plan) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO plans(id, target, decision_id, status, plan, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET status=excluded.status,"
                " plan=excluded.plan, updated_at=excluded.updated_at",
                (plan.id, plan.target, plan.decision_id, plan.status.value, json.dumps(plan.to_dict()),
                 to_epoch(plan.created_at), to_epoch(plan.updated_at or plan.created_at)))

    def plan(self, plan_id: str) -> Plan:
        row = self.db.execute("SELECT * FROM plans WHERE id=?", (plan_id,)).fetchone()
        if row is None:
            raise PlanNotFound(f"no plan {plan_id!r}")
        return plan_from_row(row)

    def plans(self, target: str | None = None, status: PlanStatus | None = None) -> list[Plan]:
        q, args = "SELECT * FROM plans", []
        where = []
        if target:
            where.append("target=?")
            args.append(target)
        if status:
            where.append("status=?")
            args.append(status.value)
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY created_at DESC"
        return [plan_from_row(r) for r in self.db.execute(q, args)]

    def transition_plan(self, plan_id: str, to: PlanStatus, now: datetime, *, actor: str | None = None,
                        note: str = "", allowed_from: tuple[PlanStatus, ...]) -> Plan:
        """Move a plan between states, atomically checking where it is now."""
        with self.tx() as db:
            row = db.execute("SELECT * FROM plans WHERE id=?", (plan_id,)).fetchone()
            if row is None:
                raise PlanNotFound(f"no plan {plan_id!r}")
            plan = plan_from_row(row)
            if plan.status not in allowed_from:
                raise PlanStateError(
                    f"plan {plan_id} is {plan.status.value}; cannot make it {to.value} "
                    f"(only from {', '.join(s.value for s in allowed_from)})")
            new = replace(plan, status=to, updated_at=now, actor=actor or plan.actor,
                          note=note or plan.note)
            db.execute("UPDATE plans SET status=?, plan=?, updated_at=? WHERE id=?",
                       (to.value, json.dumps(new.to_dict()), to_epoch(now), plan_id))
            return new

    # --------------------------------------------------------------- actuations
    def record_actuation(self, target: str, decision_id: str, at: datetime, result: ActuationResult) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO actuations VALUES (?,?,?,?,?,?,?,?)",
                (decision_id, target, to_epoch(at), result.requested, result.observed,
                 int(result.verified), result.elapsed.total_seconds(), json.dumps(result.to_dict())))

    def actuation_delays(self, target: str, limit: int = 50) -> list[float]:
        rows = self.db.execute(
            "SELECT elapsed_s FROM actuations WHERE target=? AND verified=1 ORDER BY at DESC LIMIT ?",
            (target, limit)).fetchall()
        return [r["elapsed_s"] for r in rows]

    # ------------------------------------------------------------------ samples
    def cache_samples(self, target: str, series: Series) -> None:
        if len(series) == 0:
            return
        vals = [None if np.isnan(v) else float(v) for v in series.values.tolist()]
        with self.tx() as db:
            db.executemany("INSERT OR REPLACE INTO samples(target, ts, value) VALUES (?,?,?)",
                           list(zip([target] * len(series), series.timestamps.tolist(), vals)))

    def cached_samples(self, target: str, since: datetime | None = None) -> Series:
        q, args = "SELECT ts, value FROM samples WHERE target=?", [target]
        if since is not None:
            q += " AND ts>?"
            args.append(to_epoch(since))
        rows = self.db.execute(q + " ORDER BY ts", args).fetchall()
        ts = np.array([r[0] for r in rows], dtype=np.int64)
        vs = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
        return Series(ts, vs, target)


__all__ = ["SCHEMA_VERSION", "Store", "isoformat", "state_from_json", "state_to_json"]
