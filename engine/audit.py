"""The audit log: append-only and tamper-evident (a hash chain).

Every change to what forescale decided, planned, approved or did appends one
record to the ``audit`` table of the state file, in the *same* transaction
as the change it describes (:mod:`engine.store` calls :func:`append` inside
its transactions), so a record exists exactly when its state does::

    seq  at  kind  decision_id  plan_id  payload  prev  hash  mac

- ``seq`` counts from 1 without gaps; ``prev`` is the ``hash`` of record
  ``seq - 1`` (64 zeros for the first);
- ``hash`` is SHA-256 over the canonical JSON (sorted keys, no spaces) of
  ``{seq, at, kind, decision_id, plan_id, payload, prev}``, where ``payload``
  is the record's canonical JSON text; with a key (``FORESCALE_AUDIT_KEY``,
  or the variable named by the config's ``audit.hmac_key_env``) it is
  HMAC-SHA256 under that key and ``mac`` says ``hmac-sha256``, so someone who
  can edit the database but does not hold the key cannot recompute the chain;
- ``kind`` is one of :data:`KINDS`. A ``decision`` record is the serialized
  Decision (inputs digest, forecaster and model version, forecast summary,
  every policy step, result, the SHA-256 of the config in force) plus its
  mode, status, approvals and outcome.

Records that change a row of the ``decisions`` table carry the SHA-256 of
the row as written (``rows``: decision id -> digest), so a row edited behind
forescale's back no longer matches its latest record (:func:`check_rows`,
shown by ``forescale decisions``).

:func:`verify` walks the whole chain and names the first bad record: an
edited record fails its hash, a deleted one leaves a gap in ``seq``, an
inserted or reordered one breaks ``prev``. What a hash chain cannot show by
itself is a cut at the tail (the newest records deleted): compare the head
that ``forescale audit verify`` prints with one kept elsewhere (an export).
With a key, a record without an HMAC after one with it is a downgrade and
fails; records written before the key was configured stay plain SHA-256 and
are counted as ``unkeyed``.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Iterable, Iterator, Mapping

from .core.errors import ConfigError
from .core.units import from_epoch, isoformat, to_epoch

#: what a record can describe
KINDS = ("decision", "plan_transition", "approval", "actuation", "config_reload", "mode_change")
GENESIS = "0" * 64
#: the environment variable holding the HMAC key (the config's
#: ``audit.hmac_key_env`` names another one)
KEY_ENV = "FORESCALE_AUDIT_KEY"

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    decision_id TEXT,
    plan_id TEXT,
    payload TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    mac TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_decision ON audit(decision_id);
CREATE INDEX IF NOT EXISTS audit_plan ON audit(plan_id);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
CREATE TABLE IF NOT EXISTS audit_rows (
    decision_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (decision_id, seq)
) WITHOUT ROWID;
"""


# ------------------------------------------------------------------ hashing
def canonical(obj: Any) -> str:
    """The one JSON form that is hashed: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def key_from_env(var: str = KEY_ENV) -> bytes | None:
    """The HMAC key from the environment (``None`` when unset or empty)."""
    value = os.environ.get(var, "")
    return value.encode() if value else None


def key_for(config: Any) -> bytes | None:
    """The HMAC key for a loaded :class:`engine.config.Config`: from the
    variable its ``audit.hmac_key_env`` names."""
    return key_from_env(config.audit.hmac_key_env)


def _digest(seq: int, at: int, kind: str, decision_id: str | None, plan_id: str | None,
            payload_text: str, prev: str, key: bytes | None) -> str:
    body = canonical({"seq": seq, "at": at, "kind": kind, "decision_id": decision_id,
                      "plan_id": plan_id, "payload": payload_text, "prev": prev}).encode()
    if key:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


def row_digest(row: Mapping[str, Any]) -> str:
    """SHA-256 of one ``decisions`` row as forescale wrote it (JSON columns
    parsed, so the digest does not depend on how they were spelled)."""
    out = {}
    for k in ("id", "target", "at", "mode", "action", "current", "desired", "fallback", "status", "plan_id"):
        out[k] = row[k]
    for k in ("decision", "approval", "outcome"):
        out[k] = json.loads(row[k]) if row[k] else None
    return hashlib.sha256(canonical(out).encode()).hexdigest()


def seal_rows(db: sqlite3.Connection, decision_ids: Iterable[str]) -> dict[str, str]:
    """Digests of the current rows of ``decision_ids`` (inside the writing
    transaction, after the write): the ``rows`` of the record about to be
    appended."""
    out = {}
    for did in dict.fromkeys(decision_ids):
        row = db.execute("SELECT * FROM decisions WHERE id=?", (did,)).fetchone()
        if row is not None:
            out[did] = row_digest(row)
    return out


# ------------------------------------------------------------------ writing
def append(db: sqlite3.Connection, kind: str, payload: Mapping[str, Any], at: datetime, *,
           key: bytes | None, decision_id: str | None = None, plan_id: str | None = None,
           rows: Mapping[str, str] | None = None) -> int:
    """Append one record; the caller holds the write transaction (``BEGIN
    IMMEDIATE``), so reading the head and inserting after it cannot race.
    ``rows``: digests of the decision rows this change wrote. Returns the
    record's ``seq``."""
    if kind not in KINDS:
        raise ValueError(f"unknown audit kind {kind!r}; known: {', '.join(KINDS)}")
    head = db.execute("SELECT seq, hash, mac FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if head is not None and not key and head[2] == "hmac-sha256":
        # a record without the HMAC after one with it breaks the chain for
        # good (every later verify fails there, hiding what follows): refused
        raise ConfigError(f"the audit chain is HMAC-signed (record {head[0]} is): set {KEY_ENV} (or the variable "
                         "the config's audit.hmac_key_env names) to the key to write to it; nothing was written")
    seq, prev = (1, GENESIS) if head is None else (head[0] + 1, head[1])
    body = dict(payload)
    if rows:
        body["rows"] = dict(rows)
    text = canonical(body)
    epoch = to_epoch(at)
    h = _digest(seq, epoch, kind, decision_id, plan_id, text, prev, key)
    db.execute("INSERT INTO audit(seq, at, kind, decision_id, plan_id, payload, prev, hash, mac)"
               " VALUES (?,?,?,?,?,?,?,?,?)",
               (seq, epoch, kind, decision_id, plan_id, text, prev, h, "hmac-sha256" if key else "sha256"))
    for did in rows or ():
        db.execute("INSERT INTO audit_rows(decision_id, seq) VALUES (?,?) ON CONFLICT DO NOTHING", (did, seq))
    return seq


# ---------------------------------------------------------------- verifying
@dataclass(frozen=True)
class AuditStatus:
    """The result of checking the chain (or its tail).

    ``ok``: every checked record verifies; ``first_bad``: the seq of the first
    record that does not (``None`` when ok); ``reason``: why, in one line;
    ``records``: how many the chain holds; ``checked``: how many were checked;
    ``head``: the last record's (seq, hash); ``unkeyed``: checked records
    without an HMAC (with a key configured, those written before it was)."""

    ok: bool
    records: int
    checked: int
    first_bad: int | None = None
    reason: str = ""
    head: tuple[int, str] | None = None
    keyed: bool = False
    unkeyed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "checked": self.checked, "first_bad": self.first_bad,
                "reason": self.reason, "head": list(self.head) if self.head else None,
                "keyed": self.keyed, "unkeyed": self.unkeyed}

    def summary(self) -> str:
        if not self.ok:
            return f"audit chain BROKEN at record {self.first_bad}: {self.reason}"
        head = f"; head {self.head[0]} {self.head[1]}" if self.head else ""
        if not self.keyed:
            mac = "SHA-256 (no key: anyone who can edit the file can recompute it)"
        elif self.checked and self.unkeyed == self.checked:
            mac = "SHA-256 (a key is set; no record written with it yet)"
        else:
            mac = "HMAC-SHA256"
        extra = f", {self.unkeyed} written before the key" if self.keyed and 0 < self.unkeyed < self.checked else ""
        return f"audit chain ok: {self.checked} of {self.records} record(s) verified, {mac}{extra}{head}"


def _check_one(row: sqlite3.Row, expect_seq: int, prev_hash: str, key: bytes | None,
               seen_keyed: bool) -> str | None:
    """Why one record fails (``None``: it verifies)."""
    seq = row["seq"]
    if seq != expect_seq:
        missing = f"record {expect_seq}" if seq == expect_seq + 1 else f"records {expect_seq}..{seq - 1}"
        return f"follows record {expect_seq - 1}: {missing} missing (deleted or renumbered)"
    if row["prev"] != prev_hash:
        return (f"its prev does not match the hash of record {seq - 1} "
                "(a record was inserted, reordered or edited before it)")
    if row["kind"] not in KINDS:
        return f"unknown kind {row['kind']!r}"
    keyed = row["mac"] == "hmac-sha256"
    if keyed and not key:
        return f"it is HMAC-signed; set {KEY_ENV} (or the config's audit.hmac_key_env) to verify it"
    if not keyed and row["mac"] != "sha256":
        return f"unknown mac {row['mac']!r}"
    if key and not keyed and seen_keyed:
        return "it has no HMAC though earlier records do (rewritten without the key)"
    want = _digest(seq, row["at"], row["kind"], row["decision_id"], row["plan_id"], row["payload"],
                   row["prev"], key if keyed else None)
    if not hmac.compare_digest(want, row["hash"]):
        # the first keyed record failing is also what a wrong key looks like
        other_key = ", or signed with another key than the one set" if keyed and not seen_keyed else ""
        return f"its hash does not match its content ({row['kind']} {row['decision_id'] or row['plan_id'] or ''}" \
               f"{' at ' + isoformat(from_epoch(row['at']))}): edited{other_key}"
    return None


def _walk(db: sqlite3.Connection, first: int, key: bytes | None) -> AuditStatus:
    total = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    if not total:
        return AuditStatus(ok=True, records=0, checked=0, keyed=bool(key))
    prev, seen_keyed = GENESIS, False
    if first > 1:
        before = db.execute("SELECT hash, mac FROM audit WHERE seq=?", (first - 1,)).fetchone()
        if before is None:
            return AuditStatus(False, total, 0, first - 1, f"record {first - 1} is missing")
        prev, seen_keyed = before[0], before[1] == "hmac-sha256"
    expect, checked, unkeyed = max(first, 1), 0, 0
    head: tuple[int, str] | None = None
    for row in db.execute("SELECT * FROM audit WHERE seq>=? ORDER BY seq", (expect,)):
        why = _check_one(row, expect, prev, key, seen_keyed)
        if why is not None:
            return AuditStatus(False, total, checked, row["seq"], why, head, bool(key), unkeyed)
        seen_keyed = seen_keyed or row["mac"] == "hmac-sha256"
        unkeyed += row["mac"] != "hmac-sha256"
        prev, expect, checked = row["hash"], row["seq"] + 1, checked + 1
        head = (row["seq"], row["hash"])
    return AuditStatus(True, total, checked, None, "", head, bool(key), unkeyed)


def verify(store: Any) -> AuditStatus:
    """Check every record of ``store``'s chain (with the store's key), then
    every decision, plan and plan history row against its latest record: a
    row edited with ``sqlite3`` (desired 8 -> 60, a plan's status set to
    approved, who approved it), or put back to an older version, fails here
    even though the chain itself is intact."""
    status = _walk(store.db, 1, store.audit_key)
    if not status.ok:
        return status
    for bad_seq, why in _row_problems(store):
        return replace(status, ok=False, first_bad=bad_seq, reason=why)
    return status


def _covering(db: Any) -> dict[str, tuple[int, str]]:
    """Decision id -> (seq, row digest) of the newest record that wrote its
    row, read from the chain itself (the ``rows`` of every record's
    payload), not from the ``audit_rows`` index, which no hash covers."""
    out: dict[str, tuple[int, str]] = {}
    for seq, payload in db.execute("SELECT seq, payload FROM audit WHERE payload LIKE '%\"rows\":{%' ORDER BY seq"):
        for did, digest in (json.loads(payload).get("rows") or {}).items():
            out[did] = (int(seq), digest)
    return out


#: a plan's history row (``plan_transitions``) against its record's payload
_HISTORY_FIELDS = (("from", "from_status"), ("to", "to_status"), ("identity", "identity"),
                   ("channel", "channel"), ("comment", "comment"), ("reason", "reason"))


def history_problems(store: Any, plan_ids: Iterable[str] | None = None) -> dict[int, str]:
    """Record seq -> why, for each plan transition whose history row
    (``plan_transitions``, what ``forescale plans --history`` shows) does not
    match the audit record that wrote it: edited (who approved, when, why),
    or deleted (the history is never pruned), or a row no record wrote.
    ``plan_ids``: only those plans' (default every plan's)."""
    db = store.db
    where, args = "", []
    if plan_ids is not None:
        ids = list(dict.fromkeys(plan_ids))
        if not ids:
            return {}
        where, args = f" AND plan_id IN ({','.join('?' * len(ids))})", ids
    recs = {int(r[0]): r for r in db.execute(
        "SELECT seq, at, plan_id, payload FROM audit WHERE kind IN ('plan_transition', 'approval')"
        + where, args)}
    rows = {int(r["seq"]): r for r in db.execute("SELECT * FROM plan_transitions WHERE 1=1" + where, args)}
    out: dict[int, str] = {}
    for seq in sorted(recs.keys() | rows.keys()):
        rec, row = recs.get(seq), rows.get(seq)
        if row is None:
            out[seq] = (f"plan {rec['plan_id']}: the history row of audit record {seq} is missing "
                        "(deleted outside forescale; the history is never pruned)")
            continue
        if rec is None:
            out[seq] = f"plan {row['plan_id']}: history row {seq} was written by no audit record (inserted outside forescale)"
            continue
        body = json.loads(rec["payload"])
        diff = [col for key, col in _HISTORY_FIELDS if key in body and (body[key] or None) != (row[col] or None)]
        if row["plan_id"] != rec["plan_id"] or int(row["at"]) != int(rec["at"]):
            diff.insert(0, "plan_id" if row["plan_id"] != rec["plan_id"] else "at")
        if diff:
            out[seq] = (f"plan {rec['plan_id']}: history row {seq} differs from its audit record in "
                        f"{', '.join(diff)} (edited outside forescale)")
    return out


def plan_problems(store: Any, plan_ids: Iterable[str]) -> dict[str, tuple[int | None, str]]:
    """Plan id -> (seq of the record it disagrees with, why), for each of
    ``plan_ids`` whose row does not match its latest record (the plan's
    newest transition, which carries the plan's SHA-256): a status set to
    approved with ``sqlite3``, say."""
    from .store import plan_digest

    out: dict[str, tuple[int | None, str]] = {}
    for plan_id in dict.fromkeys(plan_ids):
        row = store.db.execute("SELECT * FROM plans WHERE id=?", (plan_id,)).fetchone()
        if row is None:
            continue
        rec = store.db.execute("SELECT seq, payload FROM audit WHERE plan_id=? AND kind IN "
                               "('plan_transition', 'approval') ORDER BY seq DESC LIMIT 1", (plan_id,)).fetchone()
        if rec is None:
            out[plan_id] = (None, "no audit record covers this row")
        elif json.loads(rec["payload"]).get("plan_sha256") != plan_digest(row):
            out[plan_id] = (rec["seq"], f"row (status {row['status']}) differs from audit record {rec['seq']} "
                                        "(edited outside forescale)")
    return out


def _row_problems(store: Any) -> Iterator[tuple[int | None, str]]:
    """(seq of the record a row disagrees with, why) for each decision row,
    plan row and plan history row that does not match the chain."""
    db = store.db
    head = db.execute("SELECT MAX(seq) FROM audit").fetchone()[0] or 0
    named = max(db.execute("SELECT MAX(seq) FROM audit_rows").fetchone()[0] or 0,
                db.execute("SELECT MAX(seq) FROM plan_transitions").fetchone()[0] or 0)
    if named > head:
        # what a hash chain alone cannot show, its own indexes still do
        gone = f"record {head + 1}" if named == head + 1 else f"records {head + 1}..{named}"
        yield head + 1, (f"{gone} missing after the newest, {head}: the chain's tail was cut (the rows "
                         f"index and the plans' history still name {'it' if named == head + 1 else 'them'})")
    covering = _covering(db)
    for row in db.execute("SELECT * FROM decisions ORDER BY at, id").fetchall():
        did = row["id"]
        hit = covering.get(did)
        if hit is None:
            yield None, f"decision {did}: no audit record covers this row"
        elif hit[1] != row_digest(row):
            yield hit[0], f"decision {did}: row differs from audit record {hit[0]} (edited outside forescale)"
    indexed = {str(r[0]): int(r[1]) for r in db.execute(
        "SELECT decision_id, MAX(seq) FROM audit_rows GROUP BY decision_id")}
    for did, (seq, _) in covering.items():
        if indexed.get(did) != seq:
            yield seq, (f"decision {did}: the audit_rows index names record {indexed.get(did)} as its newest, "
                        f"the chain record {seq} (the index was edited outside forescale)")
    ids = [r[0] for r in db.execute("SELECT id FROM plans ORDER BY created_at, id")]
    for plan_id, (seq, why) in plan_problems(store, ids).items():
        yield seq, f"plan {plan_id}: {why}"
    for seq, why in history_problems(store).items():
        yield seq, why


def verify_tail(store: Any, n: int) -> AuditStatus:
    """Check the newest ``n`` records and their link to the one before (the
    daemon's check at start: cheap on a long chain)."""
    last = store.db.execute("SELECT MAX(seq) FROM audit").fetchone()[0] or 0
    return _walk(store.db, max(1, last - n + 1), store.audit_key)


def record_ok(store: Any, seq: int, *, require_key: bool = True) -> str | None:
    """Why one record cannot be trusted (``None``: it verifies and the next
    record, if any, still links to it). Cheap: used before applying a plan on
    the strength of its approval record (``require_key``: with a key set, the
    record must carry its HMAC), and by :func:`check_rows` (a row written
    before the key was configured is still genuine)."""
    db, key = store.db, store.audit_key
    row = db.execute("SELECT * FROM audit WHERE seq=?", (seq,)).fetchone()
    if row is None:
        return f"audit record {seq} is missing"
    before = db.execute("SELECT hash, mac FROM audit WHERE seq=?", (seq - 1,)).fetchone()
    if seq > 1 and before is None:
        return f"audit record {seq - 1} is missing"
    prev = GENESIS if seq == 1 else before[0]
    why = _check_one(row, seq, prev, key, seq > 1 and before[1] == "hmac-sha256")
    if why is not None:
        return f"audit record {seq}: {why}"
    if require_key and key and row["mac"] != "hmac-sha256":
        return f"audit record {seq} is not HMAC-signed with the configured key"
    nxt = db.execute("SELECT prev FROM audit WHERE seq=?", (seq + 1,)).fetchone()
    if nxt is not None and nxt[0] != row["hash"]:
        return f"audit record {seq + 1} does not link to record {seq} (the chain was rewritten)"
    return None


def check_rows(store: Any, recs: list[dict[str, Any]]) -> dict[str, str | None]:
    """For each decision record (as returned by ``Store.decisions``) whether
    its row matches its latest audit record: ``None`` if it does, else why
    not. A row that disagrees with the chain was edited outside forescale.

    The latest record is the newest of those the ``audit_rows`` index names
    *and* those the chain itself ties to the row (its decision id or its
    plan in the hashed columns), so a row put back to an older version
    with the index's newer entries deleted still disagrees with the record
    that changed it since. :func:`verify` reads every record instead."""
    out: dict[str, str | None] = {}
    for rec in recs:
        did = rec["id"]
        row = store.db.execute("SELECT * FROM decisions WHERE id=?", (did,)).fetchone()
        if row is None:
            out[did] = "no such row"
            continue
        hit = None
        for cand in store.db.execute(
                "SELECT seq, payload FROM audit WHERE seq IN (SELECT seq FROM audit_rows WHERE decision_id=?) "
                "OR decision_id=? OR plan_id=? ORDER BY seq DESC", (did, did, row["plan_id"])):
            if did in (json.loads(cand["payload"]).get("rows") or {}):
                hit = cand
                break
        if hit is None:
            out[did] = "no audit record covers this row"
            continue
        want = json.loads(hit["payload"])["rows"][did]
        if want != row_digest(row):
            out[did] = f"row differs from audit record {hit['seq']} (edited outside forescale)"
            continue
        out[did] = record_ok(store, hit["seq"], require_key=False)
    return out


# ------------------------------------------------------------ reading back
def _record(row: sqlite3.Row) -> dict[str, Any]:
    return {"seq": row["seq"], "at": isoformat(from_epoch(row["at"])), "kind": row["kind"],
            "decision_id": row["decision_id"], "plan_id": row["plan_id"],
            "payload": json.loads(row["payload"]), "prev": row["prev"], "hash": row["hash"], "mac": row["mac"]}


def records(store: Any, *, since: datetime | None = None, until: datetime | None = None,
            kind: str | None = None, after: int | None = None) -> Iterator[dict[str, Any]]:
    """Records in chain order, ``since <= at < until``; ``after``: only those
    with a greater ``seq`` — a durable feed of what happened (a notifier
    remembers the last seq it sent and asks for the rest, so nothing
    committed is missed across a crash)."""
    q, args = "SELECT * FROM audit", []
    where = []
    if after is not None:
        where.append("seq>?")
        args.append(after)
    if since is not None:
        where.append("at>=?")
        args.append(to_epoch(since))
    if until is not None:
        where.append("at<?")
        args.append(to_epoch(until))
    if kind is not None:
        where.append("kind=?")
        args.append(kind)
    if where:
        q += " WHERE " + " AND ".join(where)
    for row in store.db.execute(q + " ORDER BY seq", args):
        yield _record(row)


EXPORT_FIELDS = ("seq", "at", "kind", "decision_id", "plan_id", "payload", "prev", "hash", "mac")


def export(store: Any, out: io.TextIOBase, fmt: str = "jsonl", *, since: datetime | None = None,
           until: datetime | None = None) -> int:
    """Write records as JSON lines or CSV (the payload a JSON string column);
    returns how many were written."""
    n = 0
    if fmt == "csv":
        w = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
        w.writeheader()
        for rec in records(store, since=since, until=until):
            w.writerow({**rec, "payload": canonical(rec["payload"])})
            n += 1
    elif fmt == "jsonl":
        for rec in records(store, since=since, until=until):
            out.write(canonical(rec) + "\n")
            n += 1
    else:
        raise ValueError(f"unknown export format {fmt!r}; known: jsonl, csv")
    return n


def reconstruct(store: Any, decision_id: str) -> dict[str, Any] | None:
    """One decision end to end from the chain: the decision records (inputs,
    forecast summary, steps, config hash), the history of its plan(s) with who
    decided through which channel, and the actuations; each record's own
    verification. ``None`` if the chain holds nothing about it."""
    rows = store.db.execute("SELECT * FROM audit WHERE decision_id=? ORDER BY seq", (decision_id,)).fetchall()
    plan_ids = sorted({r["plan_id"] for r in rows if r["plan_id"]})
    plan_ids += [r["plan_id"] for r in store.db.execute(
        "SELECT DISTINCT plan_id FROM decisions WHERE id=? AND plan_id IS NOT NULL", (decision_id,))
        if r["plan_id"] not in plan_ids]
    seqs = {r["seq"] for r in rows}
    for pid in plan_ids:
        for r in store.db.execute("SELECT * FROM audit WHERE plan_id=? ORDER BY seq", (pid,)):
            if r["seq"] not in seqs:
                rows.append(r)
                seqs.add(r["seq"])
    if not rows:
        return None
    rows.sort(key=lambda r: r["seq"])
    recs = [{**_record(r), "verified": record_ok(store, r["seq"]) is None} for r in rows]
    full = [r["payload"] for r in recs if r["kind"] == "decision" and r["decision_id"] == decision_id
            and "steps" in r["payload"]]
    decision = None
    if full:  # the latest record of the Decision, with the context of the first that carried one
        context = next((p["context"] for p in full if p.get("context")), {})
        decision = {**full[-1], "context": full[-1].get("context") or context}
    return {
        "decision_id": decision_id,
        "decision": decision,
        "plans": plan_ids,
        "transitions": [r for r in recs if r["kind"] in ("plan_transition", "approval")],
        "approvals": [r["payload"] for r in recs if r["kind"] == "approval"],
        "actuations": [r["payload"] for r in recs if r["kind"] == "actuation"],
        "records": recs,
        "verified": all(r["verified"] for r in recs),
    }


# ------------------------------------------------------ config and mode changes
def record_config(store: Any, old: Any | None, new: Any, now: datetime, *, source: str = "") -> list[int]:
    """Record the configuration now in force (``old`` None: at start; else a
    reload): one ``config_reload`` record with every target's config digest
    and what changed, and one ``mode_change`` record per target whose mode
    changed (or that was added or removed), all in one transaction. The
    daemon calls this at start and after each reload. Returns the seqs."""
    before = {} if old is None else {t.name: t for t in old.targets}
    after = {t.name: t for t in new.targets}
    digests = {n: config_digest(t) for n, t in after.items()}
    changed = sorted(n for n in after if n in before and config_digest(before[n]) != digests[n])
    payload = {"event": "start" if old is None else "reload", "source": source, "targets": digests,
               "changed": changed, "added": sorted(set(after) - set(before)) if old is not None else [],
               "removed": sorted(set(before) - set(after))}
    seqs = []
    with store.tx() as db:
        seqs.append(append(db, "config_reload", payload, now, key=store.audit_key))
        for name in sorted(set(before) | set(after)):
            was = before[name].mode if name in before else None
            now_mode = after[name].mode if name in after else None
            if old is not None and was != now_mode:
                seqs.append(append(db, "mode_change", {"target": name, "from": was, "to": now_mode}, now,
                                   key=store.audit_key))
    return seqs


# ------------------------------------------------------- the decision context
def config_digest(target: Any) -> str:
    """SHA-256 of a target's configuration in force (its validated model,
    canonical JSON): which config a decision was made under."""
    return hashlib.sha256(target.model_dump_json().encode()).hexdigest()


def decision_context(target: Any, history: Any | None, forecast: Any | None,
                     resources: Mapping[str, tuple[Any | None, Any | None]] | None = None) -> dict[str, Any]:
    """What the audit record of a decision carries beyond the Decision: a
    digest of the inputs (the history the policy saw), a summary of the
    forecast, and the config digest; for a target with several resources
    the same for each further one (``resources``: name -> (history,
    forecast)), under ``resources``. The cycle passes this to
    ``Store.record_decision(context=...)``."""
    ctx: dict[str, Any] = {"config_sha256": config_digest(target), **_signal_context(history, forecast)}
    if resources:
        ctx["resources"] = {name: _signal_context(h, f) for name, (h, f) in resources.items()}
    return ctx


def _signal_context(history: Any | None, forecast: Any | None) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    if history is not None and len(history):
        h = hashlib.sha256()
        h.update(history.timestamps.tobytes())
        h.update(history.values.tobytes())
        ctx["inputs"] = {"sha256": h.hexdigest(), "points": len(history), "valid": history.n_valid,
                         "first": isoformat(history.start), "last": isoformat(history.end)}
    if forecast is not None:
        ctx["forecast"] = {
            "model": forecast.model, "model_version": forecast.model_version,
            "made_at": isoformat(forecast.made_at), "horizon": forecast.horizon,
            "point_max": None if not forecast.horizon else round(float(forecast.point.max()), 6),
            "quantiles_max": {str(k): round(float(v.max()), 6) for k, v in forecast.quantiles.items()
                              if v.size},
        }
    return ctx


__all__ = ["AuditStatus", "GENESIS", "KEY_ENV", "KINDS", "append", "canonical", "check_rows", "config_digest",
           "decision_context", "export", "key_for", "key_from_env", "reconstruct", "record_config", "record_ok",
           "history_problems", "plan_problems", "records", "row_digest", "seal_rows", "verify", "verify_tail"]
