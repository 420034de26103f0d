"""Leader election per shard of targets, through the PostgreSQL state.

Targets are hashed onto ``ha.shards`` shards (:func:`shard_of`, CRC-32 of
the name: the same on every replica). Each shard has one row in ``leases``:
``holder``, ``epoch`` and ``expires_at`` (the database's clock, so replicas'
clocks do not matter). A replica (``holder``: host, pid and a random part)
runs a target's cycles only while it holds the target's shard:

- every ``renew`` (a third of ``lease`` by default) it renews what it holds
  and takes free shards (no row, or expired) up to its fair share
  (``ceil(shards / live replicas)``, replicas counted by their heartbeat in
  ``replicas``), and hands back what exceeds its share, so a replica that
  joins gets work. Taking a shard from another holder increments its
  ``epoch``; renewing keeps it;
- :meth:`Leases.holds` answers from memory: the lease counts as held until
  ``lease`` after the renewal *started* (before the database's own expiry),
  so a replica cut off from the database stops starting cycles before
  another can take over;
- fencing: the transaction that records an intent to act (or claims a
  plan) calls :meth:`Leases.check`, which locks the lease row (``FOR
  SHARE``) and requires it to be this replica's, unexpired, with at least
  the renew interval left; else :class:`engine.core.errors.LeaseLost` rolls
  the intent back and nothing is applied. A takeover cannot commit while
  that transaction holds the row, and the intent carries (shard, epoch,
  holder), so every action in the log names the lease it was taken under;
- one layout at a time: each heartbeat records the replica's
  ``ha.shards`` and when it started; the count of the live replica that
  started first is the one in force. A replica with another count (a
  rolling change of ``ha.shards``, one replica started with a different
  file) leads nothing and says why (:meth:`Leases.trouble`, the log) until
  the replicas of the other layout are gone: a target hashed under two
  counts would have two leaders, and another none;
- a replica killed with SIGKILL stops renewing: its leases expire after at
  most ``lease``, and the next renew pass of another replica takes them;
  the new leader's first cycle reconciles any intent the dead one left
  (:meth:`engine.cycle.LiveTarget.reconcile`: marked applied if the
  platform shows it, else abandoned; never applied again). A replica that
  stops (SIGTERM) hands its leases back at once.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import socket
import threading
import time
import zlib
from typing import Any, Callable

from .core.errors import LeaseLost

log = logging.getLogger("forescale.leases")


def shard_of(target: str, shards: int) -> int:
    """The shard a target belongs to (stable across replicas and restarts)."""
    return zlib.crc32(target.encode()) % shards


def holder_id(role: str = "daemon") -> str:
    return f"{role}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


_TAKE = (
    "INSERT INTO leases(shard, holder, epoch, expires_at, acquired_at) "
    "SELECT s, ?, 1, clock_timestamp() + ? * interval '1 second', clock_timestamp() FROM unnest(?::int[]) AS s "
    "ON CONFLICT (shard) DO UPDATE SET "
    "epoch = CASE WHEN leases.holder = excluded.holder THEN leases.epoch ELSE leases.epoch + 1 END, "
    "acquired_at = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at ELSE excluded.acquired_at END, "
    "holder = excluded.holder, expires_at = excluded.expires_at "
    "WHERE leases.holder = excluded.holder OR leases.expires_at <= clock_timestamp() "
    "RETURNING shard, epoch")


class Leases:
    """This replica's leases (see the module doc). ``store``: a
    :class:`engine.postgres.PgStore`; ``dedicated``: renew over a
    connection pool of their own (the daemon's: renewals never wait for a
    connection behind busy cycles); ``monotonic``: the local clock for
    :meth:`holds`."""

    def __init__(self, store: Any, *, shards: int, lease_s: float, renew_s: float | None = None,
                 holder: str | None = None, role: str = "daemon", dedicated: bool = False,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db = store.db.dedicated() if dedicated else store.db
        self._own_db = dedicated
        self.shards = shards
        self.lease_s = float(lease_s)
        self.renew_s = float(renew_s) if renew_s is not None else self.lease_s / 3
        self.holder = holder or holder_id(role)
        self.role = role
        self.monotonic = monotonic
        #: shard -> (epoch, local expiry on the monotonic clock)
        self._held: dict[int, tuple[int, float]] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._renewed: float | None = None  # monotonic start of the last pass that succeeded
        self._thread: threading.Thread | None = None
        #: why this replica leads nothing (another layout is in force), or None
        self.mismatch: str | None = None

    # ---------------------------------------------------------------- asking
    def shard(self, target: str) -> int:
        return shard_of(target, self.shards)

    def holds(self, target: str) -> bool:
        """Whether this replica leads ``target`` now (from memory, cheap)."""
        with self._guard:
            got = self._held.get(self.shard(target))
        return got is not None and self.monotonic() < got[1]

    def held(self) -> dict[int, int]:
        """shard -> epoch of the leases held now."""
        now = self.monotonic()
        with self._guard:
            return {s: e for s, (e, until) in self._held.items() if now < until}

    def trouble(self) -> str | None:
        """Why this replica could not take over now (``None``: its renew
        passes succeed)."""
        if self.mismatch is not None:
            return self.mismatch
        if self._renewed is None:
            return "leases not renewed yet"
        late = self.monotonic() - self._renewed
        return None if late < self.lease_s else f"leases not renewed for {late:.0f}s (is the database reachable?)"

    def check(self, db: Any, target: str, *, lock: bool = True) -> dict[str, Any]:
        """The fence, inside a write transaction: this replica's lease on
        ``target``'s shard, locked for the transaction, with at least the
        renew interval left; raises LeaseLost otherwise. Returns what the
        intent records about it. ``lock=False``: the same check without
        locking the row (a model checkpoint's write, which may share a long
        batch transaction: it must not hold up the lease's renewal, and the
        epoch it records keeps an older leader's write from replacing a
        newer one's)."""
        return self.check_shard(db, self.shard(target), lock=lock, what=f"target {target}")

    def check_shard(self, db: Any, s: int, *, lock: bool = True, what: str = "") -> dict[str, Any]:
        """:meth:`check` for shard ``s`` (the notifier's cursor of a shard)."""
        row = db.execute("SELECT epoch FROM leases WHERE shard=? AND holder=? "
                         "AND expires_at > clock_timestamp() + ? * interval '1 second'"
                         + (" FOR SHARE" if lock else ""), (s, self.holder, self.renew_s)).fetchone()
        if row is None:
            with self._guard:
                self._held.pop(s, None)
            raise LeaseLost(f"this replica ({self.holder}) no longer holds the lease of shard {s} "
                            f"({what or 'its targets'}); another replica leads it: nothing applied")
        return {"shard": s, "epoch": int(row[0]), "holder": self.holder}

    # -------------------------------------------------------------- renewing
    def _live_replicas(self) -> tuple[int, str | None]:
        """Heartbeat; the live replicas of the layout in force (the shard
        count of the live replica that started first), and why this one
        must lead nothing (``None``: its count is the one in force)."""
        db = self.db
        db.execute("INSERT INTO replicas(holder, seen_at, shards, started_at) "
                   "VALUES (?, clock_timestamp(), ?, clock_timestamp()) "
                   "ON CONFLICT (holder) DO UPDATE SET seen_at = excluded.seen_at, shards = excluded.shards",
                   (self.holder, self.shards))
        rows = db.execute("SELECT holder, shards FROM replicas "
                          "WHERE seen_at > clock_timestamp() - ? * interval '1 second' "
                          "ORDER BY started_at NULLS FIRST, holder", (self.lease_s,)).fetchall()
        # a heartbeat written before the count was kept (NULL) is of an
        # older forescale that runs the same file: taken as this count
        counts = [int(r[1]) if r[1] is not None else self.shards for r in rows]
        in_force = counts[0] if counts else self.shards
        if in_force != self.shards:
            first = rows[0][0]
            return 0, (f"ha.shards is {self.shards} here but {in_force} on replica {first}, which started "
                       f"first: this replica leads nothing until every live replica runs {self.shards} "
                       "shards (a target hashed under two counts would have two leaders)")
        return max(1, sum(1 for c in counts if c == in_force)), None

    def _take(self, shards: list[int], t0: float) -> dict[int, int]:
        if not shards:
            return {}
        rows = self.db.execute(_TAKE, (self.holder, self.lease_s, sorted(shards))).fetchall()
        got = {int(r[0]): int(r[1]) for r in rows}
        with self._guard:
            for s, e in got.items():
                self._held[s] = (e, t0 + self.lease_s)
        return got

    def _give_back(self, shards: list[int]) -> None:
        if shards:
            self.db.execute("UPDATE leases SET expires_at = clock_timestamp() WHERE holder=? "
                                  "AND shard = ANY(?::int[])", (self.holder, sorted(shards)))
        with self._guard:
            for s in shards:
                self._held.pop(s, None)

    def renew(self) -> tuple[set[int], set[int]]:
        """One pass: renew, rebalance, take free shards. Returns the shards
        (gained, lost) since the previous pass."""
        t0 = self.monotonic()
        before = set(self.held())
        live, mismatch = self._live_replicas()
        if mismatch is not None:
            if mismatch != self.mismatch:
                log.error("leases of %s: %s", self.holder, mismatch)
            self.mismatch = mismatch
            self._give_back(sorted(before))
            self._renewed = t0
            return set(), before
        if self.mismatch is not None:
            log.info("leases of %s: every live replica runs %d shards now; taking leases", self.holder,
                     self.shards)
            self.mismatch = None
        share = math.ceil(self.shards / live)
        mine = sorted(before)
        renewed = set(self._take(mine, t0))
        lost = set(mine) - renewed
        with self._guard:
            for s in lost:
                self._held.pop(s, None)
        surplus = sorted(renewed)[share:]
        if surplus:
            self._give_back(surplus)
        need = share - (len(renewed) - len(surplus))
        if need > 0:
            free = self._free(exclude=renewed)
            random.shuffle(free)  # replicas starting together try different shards first
            self._take(free[:need], t0)
        self._renewed = t0
        after = set(self.held())
        gained, dropped = after - before, before - after
        if gained or dropped:
            log.info("leases of %s: %d shard(s) held%s%s", self.holder, len(after),
                     f"; took {sorted(gained)}" if gained else "", f"; lost {sorted(dropped)}" if dropped else "")
        return gained, dropped

    def _free(self, exclude: set[int]) -> list[int]:
        rows = self.db.execute("SELECT shard, expires_at > clock_timestamp() FROM leases").fetchall()
        taken = {int(r[0]) for r in rows if r[1]}
        return [s for s in range(self.shards) if s not in taken and s not in exclude]

    def acquire_all(self) -> str | None:
        """Take every shard (the CLI's lock); returns the holder of one that
        is taken by someone else (``None``: all are this one's now)."""
        t0 = self.monotonic()
        self._take(list(range(self.shards)), t0)
        if len(self.held()) == self.shards:
            return None
        row = self.db.execute("SELECT holder FROM leases WHERE holder<>? AND expires_at > clock_timestamp() "
                                    "ORDER BY shard LIMIT 1", (self.holder,)).fetchone()
        return row[0] if row is not None else "unknown"

    def release(self) -> None:
        """Hand every lease back at once (a clean stop: another replica
        takes over at its next renew pass, not after the lease)."""
        with self._guard:
            mine = list(self._held)
        self._give_back(mine)
        self.db.execute("DELETE FROM replicas WHERE holder=?", (self.holder,))

    # ------------------------------------------------------ background loop
    def start(self) -> None:
        """Renew every ``renew_s`` in a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, daemon=True, name="leases")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - keep trying; holds() runs out by itself
                log.error("leases of %s: renewing failed (%s: %s); leases run out unless renewed",
                          self.holder, type(exc).__name__, exc)

    def stop(self, *, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if release:
            try:
                self.release()
            except Exception as exc:  # noqa: BLE001 - they expire by themselves
                log.warning("leases of %s: could not hand them back (%s); they expire in %gs", self.holder,
                            exc, self.lease_s)
        if self._own_db:
            self.db.close()


__all__ = ["Leases", "holder_id", "shard_of"]
