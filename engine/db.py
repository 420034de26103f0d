"""One connection interface over SQLite and PostgreSQL.

The store and the modules that read it (audit, plans, notify, accuracy, the
API, the console, auth) speak the interface of :class:`sqlite3.Connection`:
``db.execute(sql, params)`` with ``?`` placeholders, rows readable by index
and by column name, ``fetchone``/``fetchall``/iteration/``rowcount``, and
:mod:`sqlite3`'s DB-API error classes. On SQLite that is the connection
itself. :class:`PgConnection` gives PostgreSQL (psycopg 3) the same face, so
those modules run unchanged on both backends:

- ``?`` placeholders become ``$1, $2, ...`` (outside quoted text; the
  query is sent as written, with server-side parameters);
- rows are :class:`Row` (``row[0]``, ``row["seq"]``, ``keys()``), like
  :class:`sqlite3.Row`;
- psycopg's errors are raised as :class:`sqlite3.IntegrityError`,
  :class:`sqlite3.OperationalError` or :class:`sqlite3.DatabaseError` (the
  original as ``__cause__``), so a duplicate key or a lost server is caught
  by the same ``except`` clauses as on SQLite; messages never carry the
  password;
- a process shares one small pool of connections per database (threads
  take one per statement, or hold one for a transaction: a statement run
  by the thread inside its transaction goes to that transaction's
  connection, as on SQLite's single connection);
- a write transaction (:meth:`PgConnection.begin`) first takes one
  transaction-scoped advisory lock, so writers run one at a time as with
  SQLite's ``BEGIN IMMEDIATE``: the read-check-write of a plan claim and the
  read-the-head-then-append of the audit chain stay correct with several
  replicas writing (the lock goes with the transaction, also when the
  process dies).

Everything written here is portable SQL (``INSERT ... ON CONFLICT``, no
``INSERT OR REPLACE``); the schemas themselves differ by backend
(:mod:`engine.store`, :mod:`engine.postgres`).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

#: the advisory lock every write transaction takes (one writer at a time)
WRITE_LOCK = 0x666F7265  # "fore"
#: how long a statement waits for a lock, or a thread for a free connection
#: (SQLite's busy timeout is the same 10 s)
LOCK_TIMEOUT_S = 10.0


def is_url(state: str | Any) -> bool:
    """Whether a ``state`` setting names a PostgreSQL database (else a file)."""
    return isinstance(state, str) and state.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """The URL without its password (and without query parameters, which
    may carry one): what errors and logs show."""
    try:
        p = urlsplit(url)
    except ValueError:
        return "postgresql://<unparsable url>"
    netloc = p.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    if not netloc:  # postgresql:///db?host=/run/postgresql (urlunsplit would drop the '//')
        return f"{p.scheme}://{p.path}"
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class Row:
    """A result row by index or by column name (like :class:`sqlite3.Row`)."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = tuple(values)
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            try:
                return self._values[self._index[key]]
            except KeyError:
                raise IndexError(f"no such column: {key}") from None
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values and self._index == other._index
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values))!r})"


class Result:
    """What :meth:`PgConnection.execute` returns: the rows, fetched at once
    (so the connection goes back to the pool), and the affected row count."""

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self._rows = rows
        self._pos = 0
        self.rowcount = rowcount

    def fetchone(self) -> Row | None:
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchall(self) -> list[Row]:
        rest, self._pos = self._rows[self._pos:], len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """``?`` placeholders -> ``$n`` (never inside quoted text or identifiers)."""
    out, n, quote = [], 0, None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


def _mapped(exc: Exception, secret: str | None) -> sqlite3.Error:
    """A psycopg error as the matching :mod:`sqlite3` error class."""
    import psycopg

    msg = str(exc).strip() or type(exc).__name__
    if secret:
        msg = msg.replace(secret, "***")
    if isinstance(exc, psycopg.errors.IntegrityError):
        return sqlite3.IntegrityError(msg)
    if isinstance(exc, (psycopg.OperationalError, psycopg.errors.LockNotAvailable,
                        psycopg.errors.QueryCanceled)):
        return sqlite3.OperationalError(msg)
    return sqlite3.DatabaseError(msg)


class PgConnection:
    """A pool of psycopg connections with the interface of a
    :class:`sqlite3.Connection` (see the module doc). One per database URL
    per process (:func:`connect`); ``close`` when its last user closes."""

    def __init__(self, url: str, *, password: str | None = None, size: int = 10) -> None:
        try:
            import psycopg  # noqa: F401 - the extra
        except ImportError as exc:
            raise sqlite3.OperationalError(
                "state: a PostgreSQL URL needs psycopg 3: pip install 'forescale[postgres]'") from exc
        self.url = url
        self.shown = redact_url(url)
        self._password = password
        self._secret = password or url_password(url)
        self._idle: list[Any] = []
        self._slots = threading.BoundedSemaphore(size)
        self._guard = threading.Lock()
        self._local = threading.local()
        self._users = 0
        self.closed = False

    # --------------------------------------------------------------- the pool
    def _connect(self) -> Any:
        import psycopg

        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10, "application_name": "forescale",
                                  "options": f"-c lock_timeout={int(LOCK_TIMEOUT_S * 1000)}"}
        if self._password is not None:
            kwargs["password"] = self._password
        try:
            return psycopg.connect(self.url, **kwargs)
        except psycopg.Error as exc:
            raise _mapped(exc, self._secret) from None

    def _take(self) -> Any:
        if self.closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        if not self._slots.acquire(timeout=LOCK_TIMEOUT_S):
            raise sqlite3.OperationalError(f"no free connection to {self.shown} within {LOCK_TIMEOUT_S:g}s")
        with self._guard:
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed or conn.broken:
            try:
                conn = self._connect()
            except BaseException:
                self._slots.release()
                raise
        return conn

    def _give(self, conn: Any) -> None:
        import psycopg

        if conn.closed or conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
        else:
            with self._guard:
                self._idle.append(conn)
        self._slots.release()

    # ------------------------------------------------------------ statements
    def _run(self, conn: Any, sql: str, params: Sequence[Any] | None, many: Iterable[Sequence[Any]] | None
             ) -> Result:
        import psycopg

        query = translate(sql)
        try:
            with psycopg.RawCursor(conn) as cur:
                if many is not None:
                    cur.executemany(query, [tuple(p) for p in many])
                    return Result([], cur.rowcount)
                cur.execute(query, None if params is None else tuple(params))
                rows: list[Row] = []
                if cur.description is not None:
                    index = {d.name: i for i, d in enumerate(cur.description)}
                    rows = [Row(v, index) for v in cur.fetchall()]
                return Result(rows, cur.rowcount)
        except psycopg.Error as exc:
            raise _mapped(exc, self._secret) from exc

    def _statement(self, sql: str, params: Sequence[Any] | None = None,
                   many: Iterable[Sequence[Any]] | None = None) -> Result:
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # inside this thread's transaction
            return self._run(conn, sql, params, many)
        conn = self._take()
        try:
            return self._run(conn, sql, params, many)
        finally:
            self._give(conn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return self._statement(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Result:
        rows = list(rows)
        if not rows:
            return Result([], 0)
        return self._statement(sql, many=rows)

    # ---------------------------------------------------------- transactions
    @property
    def in_transaction(self) -> bool:
        return getattr(self._local, "conn", None) is not None

    def begin(self, *, write: bool = True) -> None:
        """Start this thread's transaction (one writer at a time: the write
        lock is taken first, waiting up to the lock timeout)."""
        if self.in_transaction:
            raise sqlite3.OperationalError("cannot start a transaction within a transaction")
        conn = self._take()
        try:
            self._run(conn, "BEGIN", None, None)
            if write:
                self._run(conn, "SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,), None)
        except BaseException:
            if conn.info.transaction_status != 0:
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - the connection is dropped below
                    conn.close()
            self._give(conn)
            raise
        self._local.conn = conn

    def _end(self, verb: str) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        try:
            self._run(conn, verb, None, None)
        finally:
            self._give(conn)

    def commit(self) -> None:
        self._end("COMMIT")

    def rollback(self) -> None:
        try:
            self._end("ROLLBACK")
        except sqlite3.Error:
            pass  # a lost connection has rolled back already

    # ---------------------------------------------------------------- sharing
    def dedicated(self, size: int = 2) -> "PgConnection":
        """A pool of its own to the same database (the leases' renewals must
        not wait behind the cycles' transactions for a connection)."""
        return PgConnection(self.url, password=self._password, size=size)

    def close(self) -> None:
        """Drop one user; the pool closes with the last (a dedicated pool
        at once)."""
        with _SHARED_GUARD:
            key = (self.url, self._password)
            if _SHARED.get(key) is self:
                self._users -= 1
                if self._users > 0:
                    return
                del _SHARED[key]
        self.closed = True
        with self._guard:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


_SHARED: dict[tuple[str, str | None], PgConnection] = {}
_SHARED_GUARD = threading.Lock()


def connect(url: str, *, password: str | None = None, size: int = 10) -> PgConnection:
    """The process's pool for ``url`` (made on first use; each call is one
    user, released by :meth:`PgConnection.close`)."""
    with _SHARED_GUARD:
        pool = _SHARED.get((url, password))
        if pool is None:
            pool = _SHARED[(url, password)] = PgConnection(url, password=password, size=size)
        pool._users += 1
        return pool


__all__ = ["LOCK_TIMEOUT_S", "PgConnection", "Result", "Row", "WRITE_LOCK", "connect", "is_url", "redact_url",
           "translate", "url_password"]
