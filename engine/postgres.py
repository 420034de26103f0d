"""The state store on PostgreSQL, shared by several daemon replicas.

:class:`PgStore` is :class:`engine.store.Store` over a
:class:`engine.db.PgConnection`: the same queries, the same transactions
(one writer at a time, through an advisory lock taken at the start of each
write transaction), the same audit chain. What differs:

- the schema is PostgreSQL's own (:data:`MIGRATIONS`), versioned in a
  ``schema_version`` table; the first replica to open the database creates
  or upgrades it inside one write transaction (others wait on the lock and
  then find it current); a database written by a newer forescale is refused;
- there is no file lock: replicas elect a leader per shard of targets
  (:mod:`engine.leases`, the ``leases`` table), and :meth:`PgStore.lock`
  (what a CLI ``apply``/``once`` takes so it never acts beside a running
  daemon) takes every shard's lease;
- the password comes from the URL, from the variable the config's
  ``state_password_env`` names, or from libpq's own ``PGPASSWORD`` /
  ``~/.pgpass``; the URL the store shows (``path``) carries none.
"""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime
from typing import Any, Collection

from . import audit
from .auth import _USED_LINKS
from .core.errors import StateError, StateLocked
from .core.units import to_epoch
from .db import connect, redact_url
from .store import _SCHEMA_V1, _V2_TABLES, _V3_TABLES, _V4_TABLES, _V5_TABLES, _V6_TABLES, _V7_TABLES, Store, check_version

def dialect(sqlite_ddl: str) -> str:
    """SQLite DDL as PostgreSQL DDL, so each table is declared once (in
    :mod:`engine.store`, :mod:`engine.audit`, :mod:`engine.auth`): 64-bit
    integers, double-precision reals, text compared byte by byte as SQLite
    compares it (``COLLATE "C"``: ids and names sort the same on both), no
    ``WITHOUT ROWID``."""
    out = re.sub(r"\bINTEGER\b", "BIGINT", sqlite_ddl)
    out = re.sub(r"\bREAL\b", "DOUBLE PRECISION", out)
    out = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', out)
    return re.sub(r"\)\s*WITHOUT ROWID", ")", out)


#: what PostgreSQL has and SQLite does not: the leases of leader election
_LEASES = """
CREATE TABLE IF NOT EXISTS leases (
    shard INTEGER PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS replicas (
    holder TEXT PRIMARY KEY,
    seen_at TIMESTAMPTZ NOT NULL
);
"""

#: model checkpoints, shared by the replicas (:mod:`engine.checkpoints`):
#: one row per target (or ``target/resource``), the model's ``save()``
#: bytes and what it was fitted on, with the lease it was written under
#: (``epoch`` NULL: written by ``forescale fit``, outside any lease)
_MODELS = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT COLLATE "C" PRIMARY KEY,
    meta TEXT NOT NULL,
    model BYTEA NOT NULL,
    shard INTEGER,
    epoch BIGINT,
    holder TEXT,
    saved_at TIMESTAMPTZ NOT NULL
)
"""

#: schema version -> the statements that bring the database from the
#: previous version to it. Version 2 is the first on PostgreSQL: the SQLite
#: path from nothing (version 1, then what version 2 adds), the used
#: approval links, and the leases. Version 3 is SQLite's own step 3 (anomaly
#: masks, notify cursors). Version 4 (PostgreSQL only; a SQLite state keeps
#: its checkpoints as files): the shared model checkpoints.
MIGRATIONS: dict[int, str] = {2: ";".join((
    dialect(_SCHEMA_V1), "ALTER TABLE decisions ADD COLUMN plan_id TEXT COLLATE \"C\"",
    dialect(audit.SCHEMA + _V2_TABLES), dialect(_USED_LINKS), _LEASES)),
    3: dialect(_V3_TABLES),
    4: _MODELS}

#: version 5 is SQLite's own step 4: the calibration pairs
#: (engine.calibration.StoreCalibrator)
MIGRATIONS[5] = dialect(_V4_TABLES)

#: version 6 is SQLite's own step 5: the notifier's cursors per channel
#: and shard, fenced by the shard's lease (engine.notify.PlanNotices)
MIGRATIONS[6] = dialect(_V5_TABLES)

#: version 7 is SQLite's own step 6: the fits under way (a fit a replica
#: did not outlive counts as a failure where the target runs next)
MIGRATIONS[7] = dialect(_V6_TABLES)

#: version 8 is SQLite's own step 7: the source of each series' cached
#: samples (a changed query or path is not answered from the old cache)
#: ; and each replica's shard count and start in its heartbeat (replicas
#: of two ``ha.shards`` would lead one target twice: the layout of the
#: replica that started first is the one in force, :mod:`engine.leases`)
MIGRATIONS[8] = ";".join((dialect(_V7_TABLES),
                          "ALTER TABLE replicas ADD COLUMN IF NOT EXISTS shards INTEGER",
                          "ALTER TABLE replicas ADD COLUMN IF NOT EXISTS started_at TIMESTAMPTZ"))

#: the newest schema of a PostgreSQL state (a SQLite file's is SCHEMA_VERSION)
PG_SCHEMA_VERSION = 8

assert max(MIGRATIONS) == PG_SCHEMA_VERSION and min(MIGRATIONS) == 2

#: a checkpoint's write: never over one written under a newer epoch of the
#: same shard (the lease check before it already refuses a deposed leader)
_SAVE_MODEL = (
    "INSERT INTO models(name, meta, model, shard, epoch, holder, saved_at) "
    "VALUES (?, ?, ?, ?, ?, ?, clock_timestamp()) ON CONFLICT (name) DO UPDATE SET meta = excluded.meta, "
    "model = excluded.model, shard = excluded.shard, epoch = excluded.epoch, holder = excluded.holder, "
    "saved_at = excluded.saved_at WHERE excluded.epoch IS NULL OR models.epoch IS NULL "
    "OR models.shard IS DISTINCT FROM excluded.shard OR models.epoch <= excluded.epoch")


def _statements(script: str) -> list[str]:
    return [s for s in (x.strip() for x in script.split(";")) if s]


class PgStore(Store):
    """The store on a PostgreSQL database (see the module doc)."""

    shared = True
    keeps_models = True
    kind = "state database"

    def __init__(self, url: str, *, audit_key: bytes | None = None, password: str | None = None,
                 read_only: bool = False, pool: int = 10) -> None:
        self.path = redact_url(url)
        self.audit_key = (audit_key if audit_key is not None else audit.key_from_env()) or None
        self._lock_fd = None
        self._cli_leases: Any = None
        self._batch_depth = 0  # inside batch(): tx() is a savepoint
        self._savepoints = 0
        self.db: Any = None
        try:
            self.db = connect(url, password=password, size=pool)
            if read_only:
                check_version(self.path, self._version(), PG_SCHEMA_VERSION)
            else:
                self._migrate()
        except sqlite3.Error as exc:
            self._close_quietly()
            raise StateError(f"cannot open the state database {self.path}: {exc}") from exc
        except StateError:
            self._close_quietly()
            raise

    # ------------------------------------------------------------ the schema
    def _version(self) -> int:
        have = self.db.execute("SELECT to_regclass('schema_version')").fetchone()[0]
        if have is None:
            return 0
        row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        """Bring the schema to :data:`PG_SCHEMA_VERSION` (one transaction under
        the write lock: two replicas starting at once do it once)."""
        if self._version() == PG_SCHEMA_VERSION:
            return
        with self.tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, "
                       "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            version = self._version()
            check_version(self.path, version, PG_SCHEMA_VERSION)
            for v in sorted(MIGRATIONS):
                if v > version:
                    for stmt in _statements(MIGRATIONS[v]):
                        db.execute(stmt)
                    db.execute("INSERT INTO schema_version(version) VALUES (?)", (v,))

    @property
    def schema_version(self) -> int:
        return self._version()

    # -------------------------------------------------------------- models
    def load_model(self, name: str) -> tuple[dict[str, Any], bytes] | None:
        """The checkpoint of ``name`` (a target, or ``target/resource``): what
        it was fitted on and the model's bytes; None when there is none."""
        row = self.db.execute("SELECT meta, model FROM models WHERE name=?", (name,)).fetchone()
        return None if row is None else (json.loads(row[0]), bytes(row[1]))

    def save_model(self, name: str, meta: dict[str, Any], blob: bytes) -> None:
        """Write the checkpoint of ``name``, fenced: with :attr:`fence` set
        (a daemon replica), only while this replica holds the target's lease
        (LeaseLost otherwise, nothing written), and never over a checkpoint
        written under a newer epoch; without (``forescale fit``), as an
        operator's write. The lease row is checked, not locked (a fit inside
        a batched cycle's transaction must not hold up the lease's renewal):
        a takeover that commits meanwhile has not fitted yet, and its first
        write, under the newer epoch, replaces this one."""
        with self.tx() as db:
            lease = self.fence(db, name.split("/", 1)[0], lock=False) if self.fence is not None else None
            db.execute(_SAVE_MODEL, (name, json.dumps(meta), blob, None if lease is None else lease["shard"],
                                     None if lease is None else lease["epoch"],
                                     None if lease is None else lease["holder"]))

    # ------------------------------------------------------- fits under way
    def replica_alive(self, holder: str) -> bool:
        """Whether the replica ``holder`` still runs: its heartbeat in
        ``replicas`` (:mod:`engine.leases`, written at every renewal, deleted
        when it stops) is younger than :attr:`replica_ttl`, by the
        database's clock. A replica that handed a target's lease to one
        that joined is alive; one killed (or cut off from the database)
        stops beating."""
        if self.replica_ttl is None:
            return False
        row = self.db.execute("SELECT 1 FROM replicas WHERE holder=? AND "
                              "seen_at > clock_timestamp() - ? * interval '1 second'",
                              (holder, float(self.replica_ttl))).fetchone()
        return row is not None

    def prune_models(self, before: datetime, keep: Collection[str] = ()) -> list[str]:
        """Delete the checkpoints of the targets that have not been seen
        since ``before``: no cycle recorded (its state, its newest decision)
        and no fit after it, and not in ``keep`` (the targets live now).
        One transaction under the write lock, so a checkpoint written
        meanwhile (a target back, refitted) is seen before the delete.
        Returns the names deleted (``target`` or ``target/resource``)."""
        cut = to_epoch(before)
        with self.tx() as db:
            rows = db.execute(
                "SELECT m.name, m.meta, "
                "(SELECT s.updated_at FROM target_state s WHERE s.target = split_part(m.name, '/', 1)), "
                "(SELECT MAX(d.at) FROM decisions d WHERE d.target = split_part(m.name, '/', 1)) "
                "FROM models m").fetchall()
            gone = []
            for name, meta, state_at, decided_at in rows:
                if name.split("/", 1)[0] in keep:
                    continue
                seen = [int(v) for v in (state_at, decided_at, json.loads(meta).get("last_fit")) if v is not None]
                if not seen or max(seen) < cut:
                    gone.append(name)
            for name in gone:
                db.execute("DELETE FROM models WHERE name=?", (name,))
        return gone

    # -------------------------------------------------------- transactions
    def _begin(self) -> None:
        self.db.begin()

    def _commit(self) -> None:
        self.db.commit()

    def _rollback(self) -> None:
        self.db.rollback()

    def _close_quietly(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def close(self) -> None:
        self.unlock()
        self._close_quietly()

    # ------------------------------------------------------------- the lock
    def lock(self, shards: int | None = None) -> None:
        """What the CLI takes before acting (``apply``, ``once``): the lease
        of every shard (``shards``: how many the config has; default: every
        shard in the table, at least one), so it never acts beside a
        running replica. StateLocked when a replica holds one."""
        from .leases import Leases

        if self._cli_leases is not None:
            return
        if shards is None:
            shards = max(1, int(self.db.execute("SELECT COALESCE(MAX(shard) + 1, 1) FROM leases").fetchone()[0]))
        leases = Leases(self, shards=shards, lease_s=60.0, role="cli")
        held = leases.acquire_all()
        if held is not None:
            leases.release()
            raise StateLocked(f"a forescale replica ({held}) leads targets on {self.path}; "
                              "one process acts on a target at a time")
        self._cli_leases = leases

    def unlock(self) -> None:
        if self._cli_leases is not None:
            leases, self._cli_leases = self._cli_leases, None
            try:
                leases.release()
            except Exception:  # noqa: BLE001 - the leases expire by themselves
                pass


__all__ = ["MIGRATIONS", "PG_SCHEMA_VERSION", "PgStore"]
