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
- ``plans``          approve-mode plans and their current state;
- ``plan_transitions`` every transition of every plan, appended, never
                     overwritten (who, when, through which channel, why);
- ``actuations``     how long each action took to be observed in service;
- ``samples``        a cache of fetched metric history (incremental fetch);
- ``anomaly_masks``  the samples the anomaly detector keeps out of training
                     (:mod:`engine.anomaly`), per series, so a restart's
                     refit still masks an incident;
- ``notify_cursors`` per notification channel, where it started (its first
                     start, or the cursor it had before schema 5);
- ``notify_shard_cursors`` per notification channel and shard of targets,
                     the last plan transition told (:class:`engine.notify.PlanNotices`),
                     advanced only by the shard's lease holder, so a
                     restarted daemon (or the replica that takes a shard
                     over) tells what happened meanwhile, each event once;
- ``calibration_pairs`` each forecaster's raw forecasts at the calibration
                     anchors with the actuals observed later
                     (:class:`engine.calibration.StoreCalibrator`), so a
                     restart keeps its conformal offsets;
- ``audit``          the tamper-evident hash chain (:mod:`engine.audit`), one
                     record per change to decisions, plans and actuations,
                     written in the same transaction as the change.

Writes are transactions (``BEGIN IMMEDIATE``: one writer at a time, so a
plan is claimed by exactly one process; the connections of one process to a
file queue on one lock first, so a busy daemon's threads take turns instead
of timing out); the database runs in WAL mode so
readers (the CLI) do not block the daemon, with ``synchronous=FULL`` so a
committed audit record survives a crash or power loss. ``open`` checks the
schema version, migrates a version-1 file (adds the plan history and the
audit chain, sealing the rows it finds as they are), and refuses a file
written by a newer forescale.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from . import audit
from .core.errors import PlanNotFound, PlanStateError, StateError, StateLocked
from .core.types import (
    ActuationResult, Decision, Forecast, Observation, Plan, PlanStatus, PlanTransition, ScaleEvent,
    ScalingState, Series,
)
from .core.units import from_epoch, isoformat, parse_time, to_epoch

#: 1: the first release; 2: plan_transitions, decisions.plan_id, the audit
#: chain, decisions.approval a list of every decision on the plan;
#: 3: anomaly_masks, notify_cursors; 4: calibration_pairs; 5:
#: notify_shard_cursors and an index of plan_transitions by seq; 6:
#: fits_started; 7: sample_sources
SCHEMA_VERSION = 7

#: the schema of version 1, frozen: a new file is created as version 1 and
#: migrated, so a fresh file and an upgraded one take the same path
_SCHEMA_V1 = """
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

#: what schema version 2 adds to a version-1 file (besides the audit tables)
_V2_TABLES = """
CREATE TABLE IF NOT EXISTS plan_transitions (
    plan_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    identity TEXT,
    channel TEXT,
    comment TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (plan_id, seq)
);
CREATE INDEX IF NOT EXISTS decisions_plan ON decisions(plan_id);
"""

#: what schema version 3 adds: the anomaly detector's masked samples (epoch
#: second -> the value the forecaster sees instead), per series; and per
#: notification channel the audit seq of the last plan transition told
_V3_TABLES = """
CREATE TABLE IF NOT EXISTS anomaly_masks (
    target TEXT NOT NULL,
    ts INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (target, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notify_cursors (
    channel TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
"""

#: what schema version 4 adds: the calibration pairs (one row per forecast
#: and anchor lead; ``forecast`` is ``{level: value}`` as JSON, ``actual``
#: filled in when observed)
_V4_TABLES = """
CREATE TABLE IF NOT EXISTS calibration_pairs (
    target TEXT NOT NULL,
    model TEXT NOT NULL,
    lead_s INTEGER NOT NULL,
    made_at INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    forecast TEXT NOT NULL,
    actual REAL,
    PRIMARY KEY (target, model, lead_s, made_at)
);
CREATE INDEX IF NOT EXISTS calibration_pairs_ts ON calibration_pairs(target, ts);
"""

#: what schema version 5 adds: per notification channel and shard of
#: targets (``shards``: how many the config had; a SQLite state has one),
#: the audit seq of the last plan transition told, with the lease it was
#: written under (``epoch`` NULL: no leases); the notifier reads the
#: transitions after a seq, so they are indexed by it
_V5_TABLES = """
CREATE TABLE IF NOT EXISTS notify_shard_cursors (
    channel TEXT NOT NULL,
    shards INTEGER NOT NULL,
    shard INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER,
    holder TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (channel, shards, shard)
);
CREATE INDEX IF NOT EXISTS plan_transitions_seq ON plan_transitions(seq);
"""

#: version 6: the fit of a target's configured model under way in this
#: process (written, committed, before the fit begins; deleted when it
#: ends, failed or not): a row left behind is a fit the process did not
#: outlive (killed for memory, say), which a restart counts as a failure
#: of that fit (engine.cycle.TargetRunner.resume_fits). ``failures``: the
#: fits that had failed before it, ``key``: the forecaster section's key,
#: ``holder``: who began it (:attr:`Store.replica`, or host and pid), so
#: that a fit's end deletes its own row only, and a replica that takes the
#: target over while the one fitting is alive does not count it failed.
_V6_TABLES = """
CREATE TABLE IF NOT EXISTS fits_started (
    target TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    key TEXT NOT NULL,
    failures INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    holder TEXT NOT NULL
);
"""

#: version 7: which metric source the cached samples of a series came from
#: (a digest of its ``source:`` section), so that a changed query or path
#: is not answered from the old source's cache
_V7_TABLES = """
CREATE TABLE IF NOT EXISTS sample_sources (
    target TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
"""

#: the decision status that mirrors each plan state
DECISION_STATUS = {
    PlanStatus.PENDING: "planned", PlanStatus.APPROVED: "approved", PlanStatus.REJECTED: "rejected",
    PlanStatus.EXPIRED: "expired", PlanStatus.SUPERSEDED: "superseded", PlanStatus.APPLYING: "intent",
    PlanStatus.APPLIED: "applied", PlanStatus.FAILED: "failed", PlanStatus.REFUSED: "refused",
}


def check_version(where: str, version: int, newest: int = SCHEMA_VERSION) -> None:
    """Refuse state written by a newer forescale (either backend; ``newest``:
    the backend's own latest version)."""
    if version > newest:
        raise StateError(f"{where}: schema version {version} is newer than this forescale understands "
                         f"({newest}); upgrade forescale")


# ------------------------------------------------------------------ state <-> json
def _execute(db: sqlite3.Connection, script: str) -> None:
    for stmt in script.split(";"):
        if stmt.strip():
            db.execute(stmt)


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
        note=d.get("note", ""), channel=d.get("channel"),
        waiting_since=parse_time(d["waiting_since"]) if d.get("waiting_since") else None,
        schedule=d.get("schedule"),
    )


def plan_digest(row: sqlite3.Row) -> str:
    """SHA-256 of a ``plans`` row (its status column and its JSON), carried
    by every audit record of the plan: an approval is only believed for the
    plan exactly as it was approved."""
    return hashlib.sha256(audit.canonical({"status": row["status"], "plan": json.loads(row["plan"])})
                          .encode()).hexdigest()


def _approvals(text: str | None) -> list[dict[str, Any]]:
    if not text:
        return []
    v = json.loads(text)
    return v if isinstance(v, list) else [v]


def _decision_record(row: sqlite3.Row) -> dict[str, Any]:
    rec = json.loads(row["decision"])
    rec["mode"] = row["mode"]
    rec["status"] = row["status"]
    rec["plan_id"] = row["plan_id"]
    rec["approvals"] = _approvals(row["approval"])
    rec["approval"] = next((a for a in reversed(rec["approvals"]) if a.get("decision") == "approved"), None)
    rec["outcome"] = json.loads(row["outcome"]) if row["outcome"] else None
    return rec


#: how long a write waits for the other writers of this process to the same
#: state file (SQLite's own ``busy_timeout`` is for other processes)
WRITER_WAIT_S = 60.0
_writers: dict[str, threading.RLock] = {}
_writers_guard = threading.Lock()


def _writer_lock(path: str) -> threading.RLock | None:
    """One lock per state file for every connection of this process: its
    writers queue here, in turn, instead of polling SQLite's lock (which
    under load lets some wait past ``busy_timeout`` while others pass)."""
    if path == ":memory:":
        return None
    key = os.path.realpath(path)
    with _writers_guard:
        return _writers.setdefault(key, threading.RLock())


class Store:
    """The SQLite state file. Use as a context manager or call :meth:`close`.

    :class:`engine.postgres.PgStore` is the same store on PostgreSQL;
    :func:`open_store` opens whichever a config names."""

    #: several processes may act on this state at once (PostgreSQL): the
    #: daemon then elects a leader per shard instead of taking :meth:`lock`
    shared = False
    #: what errors call it ("state file", a PostgreSQL store "state database")
    kind = "state file"
    #: ``fence(db, target, lock=True) -> dict``, set by the daemon on a
    #: shared store: called inside the transaction that records an intent to
    #: act (or claims a plan; ``lock=False``: writes a model checkpoint) and
    #: raises :class:`engine.core.errors.LeaseLost` when this process no
    #: longer leads the target; what it returns is written with the intent
    #: (which lease, which epoch)
    fence: Callable[..., dict[str, Any]] | None = None
    #: model checkpoints live in the store (PostgreSQL's ``models`` table,
    #: shared by the replicas) rather than in files beside it
    #: (:mod:`engine.checkpoints`)
    keeps_models = False
    #: on a shared store, the holder id of this replica's leases and how
    #: long its heartbeat in ``replicas`` counts as alive (set by the
    #: daemon with :attr:`fence`): the fits it begins are recorded under it
    #: (:meth:`fit_started`) and :meth:`started_fit` can tell whether the
    #: replica that began one is still running
    replica: str | None = None
    replica_ttl: float | None = None

    def __init__(self, path: str | Path, *, audit_key: bytes | None = None) -> None:
        """``audit_key``: the HMAC key of the audit chain (default: the
        ``FORESCALE_AUDIT_KEY`` environment variable; none: plain SHA-256)."""
        self.path = str(path)
        #: where model checkpoints go (``<checkpoint_base>.models/``)
        self.checkpoint_base: str | None = self.path
        self.audit_key: bytes | None = (audit_key if audit_key is not None else audit.key_from_env()) or None
        self._lock_fd: int | None = None
        self._batch_depth = 0  # inside batch(): tx() is a savepoint
        self._savepoints = 0
        self._writer = _writer_lock(self.path)
        self._writing = False  # this connection holds the process's writer lock
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                      check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            if self.path != ":memory:":
                self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when it returns, so an acknowledged
            # audit record survives power loss too (NORMAL survives kill -9)
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=10000")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            check_version(self.path, version)
            if version < SCHEMA_VERSION:
                with self.tx() as db:
                    if version == 0:
                        _execute(db, _SCHEMA_V1)
                    if version < 2:
                        self._migrate_from_1(db)
                    if version < 3:
                        _execute(db, _V3_TABLES)
                    if version < 4:
                        _execute(db, _V4_TABLES)
                    if version < 5:
                        _execute(db, _V5_TABLES)
                    if version < 6:
                        _execute(db, _V6_TABLES)
                    if version < 7:
                        _execute(db, _V7_TABLES)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise StateError(f"cannot open the state file {self.path}: {exc}") from exc
        except StateError:
            self._close_quietly()
            raise

    def _migrate_from_1(self, db: sqlite3.Connection) -> None:
        """Version 1 -> 2, inside the opening transaction: the new tables and
        column, each decision's approval as a list of decisions, the plan each
        decision proposed, and one audit record sealing every existing
        decision and plan as found (what happened before the chain cannot be
        proven, but from here on an edit of those rows is detected)."""
        from .core.clock import SystemClock

        now = SystemClock().now()  # the migration's own time, not a cycle's
        db.execute("ALTER TABLE decisions ADD COLUMN plan_id TEXT")
        _execute(db, audit.SCHEMA + _V2_TABLES)
        for row in db.execute("SELECT id, approval, outcome FROM decisions").fetchall():
            entries = []
            for a in _approvals(row["approval"]):
                entries.append({"decision": "rejected" if a.get("rejected") else "approved",
                                "identity": None, "channel": None, "at": a.get("at"),
                                "comment": a.get("note", ""), "claimed_actor": a.get("actor"),
                                "plan_id": None, "legacy": True})
            outcome = json.loads(row["outcome"]) if row["outcome"] else {}
            plan_id = outcome.get("plan_id") if isinstance(outcome, dict) else None
            db.execute("UPDATE decisions SET approval=?, plan_id=? WHERE id=?",
                       (json.dumps(entries) if entries else None, plan_id, row["id"]))
        for row in db.execute("SELECT id, status FROM decisions ORDER BY at, id").fetchall():
            audit.append(db, "decision", {"migrated": True, "decision_id": row["id"], "status": row["status"]},
                         now, key=self.audit_key, decision_id=row["id"], rows=audit.seal_rows(db, [row["id"]]))
        for row in db.execute("SELECT * FROM plans ORDER BY created_at, id").fetchall():
            seq = audit.append(db, "plan_transition", {
                "migrated": True, "plan_id": row["id"], "to": row["status"], "plan_sha256": plan_digest(row)},
                now, key=self.audit_key, plan_id=row["id"], decision_id=row["decision_id"])
            db.execute("INSERT INTO plan_transitions VALUES (?,?,?,?,?,?,?,?,?)",
                       (row["id"], seq, to_epoch(now), None, row["status"], None, None, "",
                        "as found when the state file was upgraded to schema 2"))

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
        and the transaction rolls back (nothing half-written). Inside
        :meth:`batch` it is a savepoint of the batch's transaction: its
        failure rolls back its own writes only."""
        if self._batch_depth:
            yield from self._savepoint()
            return
        try:
            self._begin()
        except sqlite3.OperationalError as exc:
            raise StateError(f"{self.kind} {self.path}: {exc}") from exc
        try:
            yield self.db
        except sqlite3.Error as exc:
            self._rollback()
            raise StateError(f"{self.kind} {self.path}: {exc}") from exc
        except BaseException:
            self._rollback()
            raise
        else:
            try:
                self._commit()
            except sqlite3.Error as exc:
                self._rollback()
                raise StateError(f"{self.kind} {self.path}: {exc}") from exc

    def _begin(self) -> None:
        mine = self._writer is not None and not self._writing
        if mine:
            if not self._writer.acquire(timeout=WRITER_WAIT_S):  # type: ignore[union-attr]
                raise sqlite3.OperationalError(
                    f"database is locked: the other writers of this process held it for {WRITER_WAIT_S:g} s")
            self._writing = True
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            if mine:  # a transaction begun inside this one's is this one's to end
                self._release_writer()
            raise

    def _commit(self) -> None:
        self.db.execute("COMMIT")
        self._release_writer()

    def _release_writer(self) -> None:
        if self._writing:
            self._writing = False
            self._writer.release()  # type: ignore[union-attr]

    def _savepoint(self) -> Iterator[sqlite3.Connection]:
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        self.db.execute(f"SAVEPOINT {name}")
        try:
            yield self.db
        except BaseException as exc:
            self.db.execute(f"ROLLBACK TO {name}")
            self.db.execute(f"RELEASE {name}")
            if isinstance(exc, sqlite3.Error):
                raise StateError(f"{self.kind} {self.path}: {exc}") from exc
            raise
        else:
            self.db.execute(f"RELEASE {name}")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The writes of many targets' cycles in one transaction (one commit,
        one ``fsync``, instead of one per write: 2.3 ms each on this
        machine's disk). Each write inside stays its own savepoint, so one
        target's failed write leaves the others'. Nothing that must be
        durable before the platform is touched (an intent) belongs inside a
        batch: the batched cycle finishes acting targets outside it. A batch
        inside a batch is the same batch."""
        if self._batch_depth:
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1
            return
        with self.tx():
            self._batch_depth = 1
            try:
                yield
            finally:
                self._batch_depth = 0

    @property
    def in_batch(self) -> bool:
        """Whether a :meth:`batch` is open: a write now is not durable
        until the batch commits."""
        return bool(self._batch_depth)

    def _rollback(self) -> None:
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        finally:
            self._release_writer()

    def _fenced(self, db: Any, target: str, outcome: dict | None) -> dict | None:
        """The outcome of an intent to act, with the lease it was recorded
        under (raises LeaseLost, rolling the transaction back, when the
        lease is gone)."""
        if self.fence is None:
            return outcome
        return {**(outcome or {}), "lease": self.fence(db, target)}

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

    def last_cycle(self, target: str) -> int | None:
        """When ``target`` last ran a cycle that left a record (epoch s of
        its state's update or its newest decision; None: never)."""
        row = self.db.execute(
            "SELECT (SELECT updated_at FROM target_state WHERE target=?), "
            "(SELECT MAX(at) FROM decisions WHERE target=?)", (target, target)).fetchone()
        seen = [int(v) for v in row if v is not None]
        return max(seen) if seen else None

    # ------------------------------------------------------------ fits under way
    def fit_started(self, target: str, model: str, key: str, failures: int, at: datetime) -> None:
        """Record, durably, that ``target``'s configured model (``model``,
        its forecaster section's ``key``) begins a fit at ``at`` in this
        process, ``failures`` fits having failed before it (replacing the
        target's earlier record, whoever wrote it). Not inside :meth:`batch`:
        a fit a batch's commit has not reached would leave no trace if the
        process died."""
        with self.tx() as db:
            db.execute("INSERT INTO fits_started(target, model, key, failures, started_at, pid, holder) "
                       "VALUES (?,?,?,?,?,?,?) ON CONFLICT(target) DO UPDATE SET model=excluded.model, "
                       "key=excluded.key, failures=excluded.failures, started_at=excluded.started_at, "
                       "pid=excluded.pid, holder=excluded.holder",
                       (target, model, key, int(failures), to_epoch(at), os.getpid(), self._fitter()))

    def _fitter(self) -> str:
        """Who this process is in ``fits_started.holder``."""
        return self.replica or f"{socket.gethostname()}:{os.getpid()}"

    def fit_ended(self, target: str, holder: str | None = None) -> None:
        """The fit recorded by :meth:`fit_started` ended (succeeded or
        raised): its row goes if this process wrote it (``holder``: the row
        of that holder, one taken up); a row another replica wrote since,
        having taken the target over and begun a fit of its own, stays."""
        with self.tx() as db:
            db.execute("DELETE FROM fits_started WHERE target=? AND holder=?",
                       (target, holder or self._fitter()))

    def fits_interrupted(self) -> list[str]:
        """Forget the fits this process recorded as under way and has not
        seen end (:meth:`fit_started`): at a clean stop, whose cycles were
        abandoned in the middle of a fit. The process chose to stop, so
        they are no failures (a restart fits at once). Returns their
        targets."""
        with self.tx() as db:
            rows = db.execute("SELECT target FROM fits_started WHERE holder=?", (self._fitter(),)).fetchall()
            db.execute("DELETE FROM fits_started WHERE holder=?", (self._fitter(),))
        return sorted(str(r[0]) for r in rows)

    def started_fit(self, target: str) -> dict[str, Any] | None:
        """The fit of ``target`` recorded as begun and not ended, or None:
        ``model``, ``key``, ``failures``, ``started_at`` (datetime), ``pid``,
        ``holder`` and ``alive``: whether the replica that began it is
        another one still running (:meth:`replica_alive`; if not, the
        process that began it did not outlive it)."""
        row = self.db.execute("SELECT model, key, failures, started_at, pid, holder FROM fits_started "
                              "WHERE target=?", (target,)).fetchone()
        if row is None:
            return None
        model, key, failures, started, pid, holder = tuple(row)
        alive = holder != self._fitter() and self.replica_alive(holder)
        return {"model": model, "key": key, "failures": int(failures), "started_at": from_epoch(int(started)),
                "pid": int(pid), "holder": holder, "alive": alive}

    def replica_alive(self, holder: str) -> bool:
        """Whether the replica ``holder`` still runs (its heartbeat is
        younger than :attr:`replica_ttl`). A SQLite state has one process
        (:meth:`lock`): never another."""
        return False

    # ---------------------------------------------------------------- decisions
    def record_decision(self, decision: Decision, mode: str, status: str, now: datetime,
                        state: ScalingState | None = None, outcome: dict | None = None, *,
                        context: dict[str, Any] | None = None, plan_id: str | None = None,
                        masks: Mapping[str, Mapping[int, float]] | None = None) -> None:
        """Insert the decision (and, atomically, the state after it and its
        audit record). ``context``: what the audit record carries beyond the
        Decision (:func:`engine.audit.decision_context`: inputs digest,
        forecast summary, config digest); ``plan_id``: the plan it proposed;
        ``masks``: by series, the anomaly detector's masked samples now
        (each series' set replaces the stored one), written only while
        this decision is the target's newest: a late cycle (abandoned past
        its timeout, released after a newer cycle recorded) never replaces
        a newer cycle's masks with its older ones."""
        with self.tx() as db:
            if status == "intent":
                outcome = self._fenced(db, decision.target, outcome)
            self._write_decision(db, decision, mode, status, now, outcome, context, plan_id)
            if state is not None:
                _upsert_state(db, decision.target, state, now)
            if masks and self.decided_after(decision.target, decision.at, db):
                masks = None  # a newer cycle of this target recorded: its masks stand
            for series, masked in (masks or {}).items():
                db.execute("DELETE FROM anomaly_masks WHERE target=?", (series,))
                db.executemany("INSERT INTO anomaly_masks(target, ts, value) VALUES (?,?,?)",
                               [(series, int(t), float(v)) for t, v in sorted(masked.items())])

    def decided_after(self, target: str, at: datetime, db: Any = None) -> bool:
        """Whether a decision of ``target`` later than ``at`` is recorded (a
        cycle at ``at`` is late: what it derived, its anomaly masks and its
        model checkpoints, must not replace the newer cycle's)."""
        return (db or self.db).execute("SELECT 1 FROM decisions WHERE target=? AND at>? LIMIT 1",
                                       (target, to_epoch(at))).fetchone() is not None

    def notify_cursors(self) -> dict[str, int]:
        """Per notification channel, the seq of the last plan transition it
        was told (:class:`engine.notify.PlanNotices`)."""
        return {str(r[0]): int(r[1]) for r in self.db.execute("SELECT channel, seq FROM notify_cursors")}

    def save_notify_cursors(self, cursors: Mapping[str, int], now: datetime) -> None:
        with self.tx() as db:
            db.executemany(
                "INSERT INTO notify_cursors(channel, seq, updated_at) VALUES (?,?,?) ON CONFLICT(channel) "
                "DO UPDATE SET seq=excluded.seq, updated_at=excluded.updated_at",
                [(name, int(seq), to_epoch(now)) for name, seq in cursors.items()])

    def start_notify_cursors(self, cursors: Mapping[str, int], now: datetime) -> dict[str, int]:
        """Each channel's start: the one stored, else ``cursors``' (stored
        now, so a replica that loads a shard later starts from the same
        place)."""
        with self.tx() as db:
            db.executemany("INSERT INTO notify_cursors(channel, seq, updated_at) VALUES (?,?,?) "
                           "ON CONFLICT(channel) DO NOTHING",
                           [(name, int(seq), to_epoch(now)) for name, seq in cursors.items()])
        saved = self.notify_cursors()
        return {name: saved[name] for name in cursors}

    def notify_shard_cursors(self) -> dict[tuple[str, int, int], int]:
        """(channel, shards, shard) -> the seq of the last plan transition
        told there (:class:`engine.notify.PlanNotices`)."""
        return {(str(r[0]), int(r[1]), int(r[2])): int(r[3])
                for r in self.db.execute("SELECT channel, shards, shard, seq FROM notify_shard_cursors")}

    def save_notify_shard_cursor(self, channel: str, shards: int, shard: int, seq: int, now: datetime,
                                 fence: Callable[[Any], dict[str, Any]] | None = None) -> None:
        """Advance one cursor. ``fence(db)``: the shard's lease check, in
        the same transaction (LeaseLost: nothing written); a cursor written
        under a newer epoch is never replaced by an older one."""
        with self.tx() as db:
            lease = fence(db) if fence is not None else None
            db.execute(
                "INSERT INTO notify_shard_cursors(channel, shards, shard, seq, epoch, holder, updated_at) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(channel, shards, shard) DO UPDATE SET seq=excluded.seq, "
                "epoch=excluded.epoch, holder=excluded.holder, updated_at=excluded.updated_at "
                "WHERE excluded.epoch IS NULL OR notify_shard_cursors.epoch IS NULL "
                "OR notify_shard_cursors.epoch <= excluded.epoch",
                (channel, shards, shard, int(seq), None if lease is None else lease["epoch"],
                 None if lease is None else lease["holder"], to_epoch(now)))

    def anomaly_masks(self, series: str) -> dict[int, float]:
        """The masked samples of ``series`` (epoch second -> the value its
        forecaster sees instead), as the last recorded cycle left them."""
        rows = self.db.execute("SELECT ts, value FROM anomaly_masks WHERE target=? ORDER BY ts", (series,))
        return {int(r[0]): float(r[1]) for r in rows}

    def _write_decision(self, db: sqlite3.Connection, decision: Decision, mode: str, status: str,
                        now: datetime, outcome: dict | None, context: dict[str, Any] | None,
                        plan_id: str | None) -> None:
        db.execute(
            "INSERT INTO decisions(id, target, at, mode, action, current, desired, fallback, status,"
            " decision, outcome, updated_at, plan_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET status=excluded.status, decision=excluded.decision,"
            " outcome=excluded.outcome, updated_at=excluded.updated_at,"
            " plan_id=COALESCE(excluded.plan_id, decisions.plan_id)",
            (decision.id, decision.target, to_epoch(decision.at), mode, decision.action.value,
             decision.current, decision.desired, int(decision.fallback), status, decision.to_json(),
             None if outcome is None else json.dumps(outcome, default=str), to_epoch(now), plan_id))
        payload = {**decision.to_dict(), "mode": mode, "status": status, "outcome": outcome,
                   "plan_id": plan_id, "context": context or {}}
        audit.append(db, "decision", payload, now, key=self.audit_key, decision_id=decision.id, plan_id=plan_id,
                     rows=audit.seal_rows(db, [decision.id]))

    def set_decision_status(self, decision_id: str, status: str, now: datetime, *,
                            outcome: dict | None = None, approval: dict | None = None) -> None:
        """A later status of a decision (and its audit record). ``approval``
        is appended to the decision's approvals, never replacing one."""
        with self.tx() as db:
            row = db.execute("SELECT approval FROM decisions WHERE id=?", (decision_id,)).fetchone()
            if row is None:
                raise StateError(f"no decision {decision_id!r} in {self.path}")
            approvals = _approvals(row["approval"]) + ([approval] if approval is not None else [])
            db.execute(
                "UPDATE decisions SET status=?, outcome=COALESCE(?, outcome), approval=?, updated_at=? WHERE id=?",
                (status, None if outcome is None else json.dumps(outcome, default=str),
                 json.dumps(approvals, default=str) if approvals else None, to_epoch(now), decision_id))
            audit.append(db, "decision", {"decision_id": decision_id, "status": status, "outcome": outcome,
                                          "approval": approval}, now, key=self.audit_key,
                         decision_id=decision_id, rows=audit.seal_rows(db, [decision_id]))

    def decisions(self, target: str | None = None, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        """Newest first: each the serialized Decision plus mode, status, the
        plan it proposed, every decision on that plan (``approvals``, oldest
        first; ``approval``: the latest approving one) and the outcome."""
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
        return [_decision_record(row) for row in self.db.execute(q, args)]

    def targets(self) -> list[str]:
        """Every target name this state holds a record of (its state, a
        decision, a plan, a forecast: a further resource's series is
        ``target/resource``), sorted. A full scan: for telling a typo from
        a target with nothing to list, not for a cycle."""
        rows = self.db.execute(
            "SELECT target FROM target_state UNION SELECT target FROM decisions "
            "UNION SELECT target FROM plans UNION SELECT target FROM forecasts").fetchall()
        return sorted({r[0] for r in rows})

    def decision(self, decision_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM decisions WHERE id=?", (decision_id,)).fetchone()
        return None if row is None else _decision_record(row)

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
                "INSERT INTO forecasts(target, made_at, ts, horizon_s, model, model_version, point, quantiles)"
                " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(target, made_at, ts) DO UPDATE SET"
                " horizon_s=excluded.horizon_s, model=excluded.model, model_version=excluded.model_version,"
                " point=excluded.point, quantiles=excluded.quantiles, actual=NULL", rows)

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
        accepted action not yet verified, a plan still open or being applied)
        is never dropped, and neither is the audit chain (append-only) nor
        the plans' transition history. Per target
        (``targets``; default: every target in the file), so each delete
        uses the target's index and holds the write lock briefly."""
        forecasts_before = forecasts_before or before
        samples_before = samples_before or before
        if targets is None:
            targets = [r[0] for r in self.db.execute(
                "SELECT target FROM target_state UNION SELECT target FROM forecasts "
                "UNION SELECT target FROM samples UNION SELECT target FROM decisions "
                "UNION SELECT target FROM anomaly_masks")]
        gone = {"forecasts": 0, "samples": 0, "anomaly_masks": 0, "decisions": 0, "plans": 0, "actuations": 0}
        for t in targets:
            with self.tx() as db:
                if forecasts_before is not None:
                    gone["forecasts"] += db.execute("DELETE FROM forecasts WHERE target=? AND ts<?",
                                                    (t, to_epoch(forecasts_before))).rowcount
                if samples_before is not None:
                    gone["samples"] += db.execute("DELETE FROM samples WHERE target=? AND ts<?",
                                                  (t, to_epoch(samples_before))).rowcount
                    # a masked sample older than the samples kept is in no fit
                    gone["anomaly_masks"] += db.execute("DELETE FROM anomaly_masks WHERE target=? AND ts<?",
                                                        (t, to_epoch(samples_before))).rowcount
                if decisions_before is not None:
                    # each target's newest decision stays, whatever its age:
                    # the clock check, the fit back-off (extra.fit) and the
                    # restart read it (a retention shorter than the time a
                    # daemon was down deleted every target's last one)
                    cut = to_epoch(decisions_before)
                    newest = "(SELECT id FROM decisions WHERE target=? ORDER BY at DESC, id DESC LIMIT 1)"
                    gone["actuations"] += db.execute(
                        "DELETE FROM actuations WHERE target=? AND at<? AND decision_id NOT IN (SELECT id "
                        "FROM decisions WHERE target=? AND status IN ('intent', 'accepted')) "
                        f"AND decision_id NOT IN {newest}", (t, cut, t, t)).rowcount
                    gone["plans"] += db.execute(
                        "DELETE FROM plans WHERE target=? AND created_at<? AND status NOT IN ('pending', 'approved', "
                        f"'applying') AND decision_id NOT IN {newest}",
                        (t, cut, t)).rowcount
                    gone["decisions"] += db.execute(
                        "DELETE FROM decisions WHERE target=? AND at<? AND status NOT IN ('intent', 'accepted') "
                        f"AND id NOT IN {newest}", (t, cut, t)).rowcount
        return gone

    # ------------------------------------------------------- calibration pairs
    def record_calibration(self, target: str, model: str, rows: list[tuple[int, int, int, dict[float, float]]],
                           *, drop_before: int | None = None) -> None:
        """Keep ``model``'s raw forecasts at its calibration anchors: rows
        of (lead_s, made_at, ts, level -> value); pairs of the series whose
        time is before ``drop_before`` (epoch s) go (the window has passed)."""
        with self.tx() as db:
            db.executemany(
                "INSERT INTO calibration_pairs(target, model, lead_s, made_at, ts, forecast) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT(target, model, lead_s, made_at) DO UPDATE SET ts=excluded.ts,"
                " forecast=excluded.forecast, actual=NULL",
                [(target, model, lead, made, ts, json.dumps({str(q): v for q, v in levels.items()}))
                 for lead, made, ts, levels in rows])
            if drop_before is not None:
                db.execute("DELETE FROM calibration_pairs WHERE target=? AND model=? AND ts<?",
                           (target, model, drop_before))

    def fill_calibration_actuals(self, target: str, observed: Series) -> int:
        """The observed values next to the calibration pairs waiting for them
        (every model's of ``target``)."""
        ok = ~np.isnan(observed.values)
        if not ok.any():
            return 0
        with self.tx() as db:
            return db.executemany(
                "UPDATE calibration_pairs SET actual=? WHERE target=? AND ts=? AND actual IS NULL",
                [(v, target, t) for v, t in zip(observed.values[ok].tolist(), observed.timestamps[ok].tolist())]
            ).rowcount

    def calibration_pairs(self, target: str, model: str, since: int) -> list[tuple[int, int, int, dict[float, float],
                                                                                  float | None]]:
        """``model``'s calibration rows of ``target`` whose time is at or
        after ``since`` (epoch s), oldest first: (lead_s, made_at, ts,
        level -> value, actual or None)."""
        rows = self.db.execute(
            "SELECT lead_s, made_at, ts, forecast, actual FROM calibration_pairs"
            " WHERE target=? AND model=? AND ts>=? ORDER BY ts, made_at", (target, model, since)).fetchall()
        return [(int(r[0]), int(r[1]), int(r[2]), {float(k): float(v) for k, v in json.loads(r[3]).items()},
                 None if r[4] is None else float(r[4])) for r in rows]

    # -------------------------------------------------------------------- plans
    def save_plan(self, plan: Plan, *, decision: tuple[Decision, str, dict[str, Any] | None] | None = None,
                  state: ScalingState | None = None, identity: str | None = None, channel: str | None = None,
                  reason: str = "") -> None:
        """Store a new plan, its first transition and its audit record in one
        transaction; with ``decision`` = (Decision, mode, context), the
        decision that proposed it is recorded in the same transaction (and
        ``state``, the target's state after it)."""
        with self.tx() as db:
            if decision is not None:
                d, mode, context = decision
                self._write_decision(db, d, mode, DECISION_STATUS[plan.status], plan.created_at,
                                     {"plan_id": plan.id}, context, plan.id)
                if state is not None:
                    _upsert_state(db, d.target, state, plan.created_at)
            db.execute(
                "INSERT INTO plans(id, target, decision_id, status, plan, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET status=excluded.status,"
                " plan=excluded.plan, updated_at=excluded.updated_at",
                (plan.id, plan.target, plan.decision_id, plan.status.value, json.dumps(plan.to_dict()),
                 to_epoch(plan.created_at), to_epoch(plan.updated_at or plan.created_at)))
            db.execute("UPDATE decisions SET plan_id=? WHERE id=? AND plan_id IS NULL", (plan.id, plan.decision_id))
            self._log_transition(db, plan, None, plan.created_at, identity=identity, channel=channel,
                                 comment="", reason=reason or "planned")

    def _log_transition(self, db: sqlite3.Connection, plan: Plan, before: PlanStatus | None, now: datetime, *,
                        identity: str | None, channel: str | None, comment: str, reason: str,
                        rows: dict[str, str] | None = None) -> int:
        """Append a plan's transition to its history and to the audit chain
        (an ``approval`` record when a person or a policy approved or
        rejected it)."""
        row = db.execute("SELECT * FROM plans WHERE id=?", (plan.id,)).fetchone()
        kind = "approval" if plan.status in (PlanStatus.APPROVED, PlanStatus.REJECTED) else "plan_transition"
        payload = {"plan_id": plan.id, "target": plan.target, "decision_id": plan.decision_id,
                   "from": None if before is None else before.value, "to": plan.status.value,
                   "identity": identity, "channel": channel, "comment": comment, "reason": reason,
                   "from_capacity": plan.from_capacity, "to_capacity": plan.to_capacity,
                   "observed_capacity": plan.observed_capacity, "action": plan.action.value,
                   "plan_sha256": plan_digest(row)}
        if plan.schedule is not None:
            payload["schedule"] = dict(plan.schedule)
        seq = audit.append(db, kind, payload, now, key=self.audit_key, decision_id=plan.decision_id,
                           plan_id=plan.id, rows=rows)
        db.execute("INSERT INTO plan_transitions VALUES (?,?,?,?,?,?,?,?,?)",
                   (plan.id, seq, to_epoch(now), None if before is None else before.value, plan.status.value,
                    identity, channel, comment, reason))
        return seq

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
        q += " ORDER BY created_at DESC, id"
        return [plan_from_row(r) for r in self.db.execute(q, args)]

    def plan_history(self, plan_id: str) -> list[PlanTransition]:
        """Every transition of a plan, oldest first."""
        rows = self.db.execute("SELECT * FROM plan_transitions WHERE plan_id=? ORDER BY seq", (plan_id,))
        return [PlanTransition(r["plan_id"], from_epoch(r["at"]),
                               None if r["from_status"] is None else PlanStatus(r["from_status"]),
                               PlanStatus(r["to_status"]), r["identity"], r["channel"], r["comment"],
                               r["reason"], r["seq"]) for r in rows]

    def transition_plan(self, plan_id: str, to: PlanStatus, now: datetime, *,
                        allowed_from: tuple[PlanStatus, ...], identity: str | None = None,
                        channel: str | None = None, comment: str = "", reason: str = "",
                        outcome: dict[str, Any] | None = None, decision_status: str | None = None,
                        guard: Callable[[sqlite3.Connection, Plan], tuple[PlanStatus, str] | None] | None = None,
                        actuation: ActuationResult | None = None,
                        state: ScalingState | None = None) -> Plan:
        """Move a plan between states in one transaction (``BEGIN
        IMMEDIATE``, so two processes cannot both make the same move):
        check where it is now, append the transition to its history and to
        the audit chain, and mirror it on the decision that proposed it and
        on every decision that re-planned it while it was open.

        ``guard(db, plan)``, run inside the transaction on the plan as it is
        now, may redirect the move: it returns (state, reason) to go to
        instead (e.g. ``refused`` when the approval cannot be verified), and
        the returned Plan then has that state. ``actuation`` and ``state``
        are written in the same transaction (the actuation record, the
        target's state after it); ``decision_status`` overrides the mirrored
        status (e.g. ``unverified``); ``outcome`` goes on the proposing
        decision."""
        with self.tx() as db:
            row = db.execute("SELECT * FROM plans WHERE id=?", (plan_id,)).fetchone()
            if row is None:
                raise PlanNotFound(f"no plan {plan_id!r}")
            plan = plan_from_row(row)
            if plan.status not in allowed_from:
                raise PlanStateError(
                    f"plan {plan_id} is {plan.status.value}; cannot make it {to.value} "
                    f"(only from {', '.join(s.value for s in allowed_from)})")
            if to == PlanStatus.APPLYING and self.fence is not None:
                outcome = self._fenced(db, plan.target, outcome)
            if guard is not None:
                redirect = guard(db, plan)
                if redirect is not None:
                    to, reason = redirect
                    decision_status = None
                    outcome = {**(outcome or {}), "refused" if to == PlanStatus.REFUSED else to.value: reason}
            decided = to in (PlanStatus.APPROVED, PlanStatus.REJECTED)
            new = replace(plan, status=to, updated_at=now, actor=identity if decided and identity else plan.actor,
                          channel=channel if decided and channel else plan.channel,
                          note=comment or reason or plan.note)
            db.execute("UPDATE plans SET status=?, plan=?, updated_at=? WHERE id=?",
                       (to.value, json.dumps(new.to_dict()), to_epoch(now), plan_id))
            touched = self._mirror(db, new, now, identity=identity, channel=channel, comment=comment,
                                   reason=reason, outcome=outcome, status=decision_status or DECISION_STATUS[to])
            if actuation is not None:
                self._write_actuation(db, plan.target, plan.decision_id, now, actuation, plan_id=plan.id)
            if state is not None:
                _upsert_state(db, plan.target, state, now)
            self._log_transition(db, new, plan.status, now, identity=identity, channel=channel, comment=comment,
                                 reason=reason, rows=audit.seal_rows(db, touched))
            return new

    def _mirror(self, db: sqlite3.Connection, plan: Plan, now: datetime, *, identity: str | None,
                channel: str | None, comment: str, reason: str, outcome: dict[str, Any] | None,
                status: str) -> list[str]:
        """The plan's new state on its decisions: the proposing one (status,
        outcome, and an appended approval entry when approved or rejected),
        and those that re-planned the same change while it was open (status
        only, except ``intent``, which only the proposing one carries)."""
        touched = []
        origin = db.execute("SELECT approval FROM decisions WHERE id=?", (plan.decision_id,)).fetchone()
        if origin is not None:
            approvals = _approvals(origin["approval"])
            if plan.status in (PlanStatus.APPROVED, PlanStatus.REJECTED):
                approvals.append({"decision": plan.status.value, "plan_id": plan.id, "identity": identity,
                                  "channel": channel, "at": isoformat(now), "comment": comment})
            db.execute("UPDATE decisions SET status=?, outcome=COALESCE(?, outcome), approval=?, updated_at=?"
                       " WHERE id=?", (status, None if outcome is None else json.dumps(outcome, default=str),
                                       json.dumps(approvals) if approvals else None, to_epoch(now),
                                       plan.decision_id))
            touched.append(plan.decision_id)
        if plan.status != PlanStatus.APPLYING:
            others = [r["id"] for r in db.execute(
                "SELECT id FROM decisions WHERE plan_id=? AND id!=? AND status IN ('planned', 'approved')",
                (plan.id, plan.decision_id))]
            for did in others:
                db.execute("UPDATE decisions SET status=?, updated_at=? WHERE id=?", (status, to_epoch(now), did))
            touched += others
        return touched

    # --------------------------------------------------------------- actuations
    def record_actuation(self, target: str, decision_id: str, at: datetime, result: ActuationResult) -> None:
        with self.tx() as db:
            self._write_actuation(db, target, decision_id, at, result)

    def _write_actuation(self, db: sqlite3.Connection, target: str, decision_id: str, at: datetime,
                         result: ActuationResult, plan_id: str | None = None) -> None:
        db.execute(
            "INSERT INTO actuations(decision_id, target, at, requested, observed, verified, elapsed_s, result)"
            " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(decision_id) DO UPDATE SET target=excluded.target,"
            " at=excluded.at, requested=excluded.requested, observed=excluded.observed,"
            " verified=excluded.verified, elapsed_s=excluded.elapsed_s, result=excluded.result",
            (decision_id, target, to_epoch(at), result.requested, result.observed,
             int(result.verified), result.elapsed.total_seconds(), json.dumps(result.to_dict())))
        audit.append(db, "actuation", {"target": target, "decision_id": decision_id, **result.to_dict()}, at,
                     key=self.audit_key, decision_id=decision_id, plan_id=plan_id)

    def actuation_delays(self, target: str, limit: int = 50) -> list[float]:
        rows = self.db.execute(
            "SELECT elapsed_s FROM actuations WHERE target=? AND verified=1 ORDER BY at DESC LIMIT ?",
            (target, limit)).fetchall()
        return [r["elapsed_s"] for r in rows]

    # ------------------------------------------------------------------ samples
    def cache_samples(self, target: str, series: Series, source: str | None = None,
                      now: datetime | None = None) -> None:
        """Keep ``series`` as ``target``'s samples; ``source``: the digest
        of the metric source they came from (:meth:`samples_source`),
        recorded at ``now``."""
        if len(series) == 0:
            return
        vals = [None if np.isnan(v) else float(v) for v in series.values.tolist()]
        with self.tx() as db:
            db.executemany("INSERT INTO samples(target, ts, value) VALUES (?,?,?) "
                           "ON CONFLICT(target, ts) DO UPDATE SET value=excluded.value",
                           list(zip([target] * len(series), series.timestamps.tolist(), vals)))
            if source is not None:
                # (rewritten only when it changes: this runs with every cycle's samples)
                db.execute("INSERT INTO sample_sources(target, source, updated_at) VALUES (?,?,?) "
                           "ON CONFLICT(target) DO UPDATE SET source=excluded.source, updated_at=excluded.updated_at "
                           "WHERE sample_sources.source <> excluded.source",
                           (target, source, 0 if now is None else to_epoch(now)))

    def samples_source(self, target: str) -> str | None:
        """The digest of the source ``target``'s cached samples came from
        (None: none recorded, a cache older than schema 7)."""
        row = self.db.execute("SELECT source FROM sample_sources WHERE target=?", (target,)).fetchone()
        return None if row is None else str(row[0])

    def drop_samples(self, target: str) -> int:
        """Forget ``target``'s cached samples (its source changed); how many."""
        with self.tx() as db:
            n = db.execute("DELETE FROM samples WHERE target=?", (target,)).rowcount
            db.execute("DELETE FROM sample_sources WHERE target=?", (target,))
        return int(n or 0)

    def cached_samples(self, target: str, since: datetime | None = None) -> Series:
        q, args = "SELECT ts, value FROM samples WHERE target=?", [target]
        if since is not None:
            q += " AND ts>?"
            args.append(to_epoch(since))
        rows = self.db.execute(q + " ORDER BY ts", args).fetchall()
        ts = np.array([r[0] for r in rows], dtype=np.int64)
        vs = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
        return Series(ts, vs, target)


def open_store(config: Any, *, audit_key: bytes | None = None, read_only: bool = False) -> Store:
    """The store a loaded :class:`engine.config.Config` names (its ``state``):
    a SQLite file (:class:`Store`) or a PostgreSQL database
    (:class:`engine.postgres.PgStore`, sharing the process's connection
    pool). ``config`` may also be a path or a ``postgresql://`` URL.
    ``audit_key`` defaults to the key the config's ``audit.hmac_key_env``
    names. ``read_only``: no schema set-up, no writes (the API); a SQLite
    file that does not exist yet is a StateError."""
    from .db import is_url

    if isinstance(config, (str, Path)):
        if is_url(config):
            from .postgres import PgStore

            return PgStore(str(config), audit_key=audit_key, read_only=read_only)
        return ReadOnlyStore(config) if read_only else Store(config, audit_key=audit_key)
    key = audit_key if audit_key is not None else audit.key_for(config)
    if config.state_url is not None:
        from .postgres import PgStore

        return PgStore(config.state_url, audit_key=key, password=config.state_password(), read_only=read_only,
                       pool=config.ha.pool)
    return ReadOnlyStore(config.state_path, audit_key=key) if read_only else Store(config.state_path, audit_key=key)


class ReadOnlyStore(Store):
    """The store's queries over a read-only SQLite connection: never
    writes, never creates a state file."""

    def __init__(self, path: str | Path, *, audit_key: bytes | None = None) -> None:  # noqa: D107
        self.path = str(path)
        self.checkpoint_base = None
        self.audit_key = audit_key
        self._lock_fd = None
        if not Path(self.path).exists():
            raise StateError(f"no state file {self.path} yet")
        self.db = sqlite3.connect(f"file:{Path(self.path).resolve()}?mode=ro", uri=True, timeout=5.0,
                                  check_same_thread=False)
        self.db.row_factory = sqlite3.Row


__all__ = ["SCHEMA_VERSION", "ReadOnlyStore", "Store", "isoformat", "open_store", "state_from_json",
           "state_to_json"]
