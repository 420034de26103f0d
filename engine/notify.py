"""Notifications: tell people that a plan waits, and what became of it.

Events (``Notifier.event(kind, target, payload)``)::

    plan_created    a plan waits for approval (carries approve/reject links)
    plan_approved   someone approved it (who, through which channel, comment)
    plan_rejected   someone rejected it
    plan_expired    nobody decided in time (or a newer plan superseded it)
    applied         a plan (or an auto-mode decision) was carried out
    failed          carrying it out failed
    fallback_streak N consecutive cycles of a target fell back to reactive
                    (``Notifier.cycle(target, decision)`` counts them)
    missed          after a restart (or a takeover of a shard of targets),
                    more plan transitions of a shard happened while nobody
                    told them than ``notify.catch_up``: how many were left
                    out (the newest ``catch_up`` follow)

Each event becomes one line that says what is proposed and why, e.g.
``web: scale 4 -> 8 at 13:35 (forecast peak 1.9k needs 8); approve: <link>
reject: <link>``, sent to every configured channel that takes the event:
a generic webhook (JSON), a Slack incoming webhook, a DingTalk robot (signed
with its secret) and email (SMTP with STARTTLS).

A failing channel never blocks or delays the cycle: ``event`` only puts the
message on the channel's bounded queue and returns; one background thread
per channel sends, retrying with exponential backoff, and drops a message
after ``max_attempts`` (or when the queue is full), counting each drop in
:attr:`Notifier.dropped` (the daemon exports it as a metric). Secrets (the
webhook URLs with their keys, the DingTalk and SMTP secrets) never appear in
a log line or an error: every text that leaves this module goes through the
:class:`engine.auth.Redactor` of the configured secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import smtplib
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence

import httpx

from .auth import Redactor
from .core.errors import ConfigError
from .core.units import isoformat

log = logging.getLogger("forescale.notify")

EVENTS = ("plan_created", "plan_approved", "plan_rejected", "plan_expired", "applied", "failed",
          "fallback_streak", "missed")

#: (plan id, action, channel name) -> an absolute approve/reject URL
LinkMaker = Callable[[str, str, str], str]


# ------------------------------------------------------------------ messages
def _amount(x: float) -> str:
    """1900 -> '1.9k', 0.42 -> '0.42': short enough for one line."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _hhmm(at: Any) -> str:
    text = str(at or "")
    # isoformat: 2024-03-01T13:35:00Z -> 13:35
    return text[11:16] if len(text) >= 16 else text


_SIZING = ("data", "partial_data", "forecast", "margin", "smoothing", "capacity")


def _why(decision: Mapping[str, Any] | None) -> str:
    """Why the decision wants this capacity, in a few words."""
    if not decision:
        return ""
    steps = decision.get("steps") or []
    if decision.get("fallback"):
        data = next((s for s in steps if s.get("name") == "data"), None)
        return f"fallback: {data['message']}" if data else "fallback to reactive"
    parts = []
    demand = decision.get("forecast_demand")
    planned = next((s for s in steps if s.get("name") == "plan"), None)
    sized = next((s for s in steps if s.get("name") == "capacity"), None)
    if planned is not None:
        # the planner says why in words (the peak it sizes for, when it
        # orders it); its forecast_demand is only the first step's median
        parts.append(str(planned.get("message", "")).split("; plan over", 1)[0])
    elif demand is not None:
        # what the forecast needs is the capacity step's, before the
        # reactive rule, limits and bounds (named after it) moved it
        need = decision.get("capacity_label") or (sized.get("value") if sized is not None
                                                  else decision.get("recommendation"))
        parts.append(f"forecast peak {_amount(float(demand))} needs {need}")
    # the steps after sizing that moved the value (a reactive override, a rate limit, a bound)
    overrides = [s["reason"] for s in steps if s.get("changed") and s.get("name") not in _SIZING
                 and s.get("name") != "plan"]
    if overrides:
        parts.append(", ".join(overrides))
    return "; ".join(parts)


def _change(plan: Mapping[str, Any] | None, decision: Mapping[str, Any] | None) -> tuple[Any, Any]:
    src = plan or {}
    if plan:
        return src.get("from_capacity"), src.get("to_capacity")
    d = decision or {}
    return d.get("current"), d.get("desired")


def summarize(kind: str, target: str, payload: Mapping[str, Any]) -> str:
    """The one line for an event, without links."""
    plan, decision = payload.get("plan"), payload.get("decision")
    a, b = _change(plan, decision)
    pid = f"plan {plan['id']} " if plan else ""
    who = payload.get("identity")
    via = f" via {payload['channel']}" if payload.get("channel") else ""
    comment = f": {payload['comment']}" if payload.get("comment") else ""
    if kind == "plan_created":
        why = _why(decision)
        at = _hhmm((plan or {}).get("created_at") or (decision or {}).get("at"))
        return f"{target}: scale {a} -> {b} at {at}" + (f" ({why})" if why else "")
    if kind == "plan_approved":
        return f"{target}: {pid}({a} -> {b}) approved by {who}{via}{comment}"
    if kind == "plan_rejected":
        return f"{target}: {pid}({a} -> {b}) rejected by {who}{via}{comment}"
    if kind == "plan_expired":
        why = payload.get("reason") or "nobody approved it in time"
        return f"{target}: {pid}({a} -> {b}) expired: {why}"
    if kind == "applied":
        return f"{target}: scaled {a} -> {b}" + (f" ({pid.strip()})" if pid else "")
    if kind == "failed":
        return f"{target}: scaling {a} -> {b} failed" + (f" ({pid.strip()})" if pid else "") + \
            f": {payload.get('error', 'unknown error')}"
    if kind == "missed":
        return (f"{target}: {payload.get('skipped')} plan events while notifications were down are not sent "
                f"(the newest {payload.get('sent')} follow); see forescale plans --all")
    if kind == "fallback_streak":
        return (f"{target}: {payload.get('streak')} consecutive fallback cycles ({_why(decision)}); "
                f"capacity held at {(decision or {}).get('desired')}, no scale-down")
    raise ValueError(f"unknown notification kind {kind!r}; known: {', '.join(EVENTS)}")


def _brief_decision(d: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not d:
        return None
    return {k: d.get(k) for k in ("id", "at", "current", "desired", "recommendation", "fallback",
                                   "forecast_demand", "capacity_label", "model")} | {
        "reasons": [s["reason"] for s in d.get("steps") or [] if s.get("changed")]}


@dataclass(frozen=True)
class Message:
    """One event as a channel sends it (links made for that channel)."""

    kind: str
    target: str
    at: datetime
    summary: str
    links: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    #: the plan transition it tells (its audit seq), for the channel's cursor
    seq: int | None = None

    @property
    def line(self) -> str:
        if not self.links:
            return self.summary
        return self.summary + "; " + " ".join(f"{k}: {v}" for k, v in self.links.items())

    def to_json(self) -> dict[str, Any]:
        """The generic webhook's body."""
        return {"kind": self.kind, "target": self.target, "at": isoformat(self.at), "text": self.line,
                "summary": self.summary, "links": dict(self.links), "details": dict(self.details)}


# ------------------------------------------------------------------ channels
class ChannelError(Exception):
    """A send failed; the message is redacted (no URL with its key)."""


class Channel(Protocol):
    name: str
    events: frozenset[str]

    def send(self, message: Message) -> None: ...

    def close(self) -> None: ...


class _HttpChannel:
    def __init__(self, name: str, url: str, events: frozenset[str], timeout: float) -> None:
        self.name = name
        self.url = url
        self.events = events
        self.timeout = httpx.Timeout(timeout).as_dict()
        # the transport, not a Client: httpx.Client logs every request's URL
        # at INFO, and these URLs carry the channel's key
        self.transport = httpx.HTTPTransport(retries=0)

    def body(self, message: Message) -> dict[str, Any]:
        raise NotImplementedError

    def post_url(self) -> str:
        return self.url

    def check(self, response: httpx.Response) -> None:
        if not 200 <= response.status_code < 300:
            raise ChannelError(f"HTTP {response.status_code}")

    def send(self, message: Message) -> None:
        request = httpx.Request("POST", self.post_url(), json=self.body(message),
                                extensions={"timeout": self.timeout})
        try:
            response = self.transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        except httpx.HTTPError as exc:
            # httpx's messages may carry the URL (and the key in it): name the kind only
            raise ChannelError(f"{type(exc).__name__}") from None
        self.check(response)

    def close(self) -> None:
        self.transport.close()


class WebhookChannel(_HttpChannel):
    """POST the message as JSON (:meth:`Message.to_json`)."""

    def body(self, message: Message) -> dict[str, Any]:
        return message.to_json()


class SlackChannel(_HttpChannel):
    """A Slack incoming webhook: ``{"text": ...}`` with Slack's link markup."""

    def body(self, message: Message) -> dict[str, Any]:
        links = " ".join(f"<{url}|{action}>" for action, url in message.links.items())
        return {"text": slack_escape(message.summary) + (f" {links}" if links else "")}


def slack_escape(text: str) -> str:
    """``text`` as Slack shows it literally: its control characters ``&``,
    ``<`` and ``>`` escaped, as Slack's message formatting asks, so a
    comment cannot add a link (``<https://...|Approve>``) or a mention
    (``<!channel>``) of its own to the message."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's robot signature: HMAC-SHA256 keyed with the secret over
    ``"<timestamp>\\n<secret>"``, base64, URL-encoded (DingTalk's custom robot
    security settings, "加签")."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest))


class DingTalkChannel(_HttpChannel):
    """A DingTalk robot: ``{"msgtype": "text", ...}``, signed when a secret
    is set (``&timestamp=<ms>&sign=<signature>`` on the URL)."""

    def __init__(self, name: str, url: str, events: frozenset[str], timeout: float, secret: str | None,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        super().__init__(name, url, events, timeout)
        self.secret = secret
        self.clock_ms = clock_ms

    def post_url(self) -> str:
        if not self.secret:
            return self.url
        ts = self.clock_ms()
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}timestamp={ts}&sign={dingtalk_sign(self.secret, ts)}"

    def body(self, message: Message) -> dict[str, Any]:
        return {"msgtype": "text", "text": {"content": "forescale " + message.line}}

    def check(self, response: httpx.Response) -> None:
        super().check(response)
        try:
            errcode = response.json().get("errcode", 0)
        except ValueError:
            return
        if errcode:  # DingTalk answers 200 with an error code (bad signature, rate limit)
            raise ChannelError(f"DingTalk errcode {errcode}")


class EmailChannel:
    """Email through an SMTP server, upgraded with STARTTLS (certificate
    verified against the system's CAs or ``ca_file``)."""

    def __init__(self, name: str, events: frozenset[str], *, host: str, port: int, sender: str,
                 to: Sequence[str], username: str | None, password: str | None, starttls: bool,
                 timeout: float, ca_file: str | None = None) -> None:
        self.name = name
        self.events = events
        self.host, self.port, self.sender, self.to = host, port, sender, tuple(to)
        self.username, self.password = username, password
        self.starttls, self.timeout, self.ca_file = starttls, timeout, ca_file

    def compose(self, message: Message) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        # one line: a comment's line breaks would be refused in a header
        msg["Subject"] = f"[forescale] {' '.join(message.summary.split())}"[:200]
        body = [message.summary, ""]
        body += [f"{action}: {url}" for action, url in message.links.items()]
        msg.set_content("\n".join(body) + "\n")
        return msg

    def send(self, message: Message) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.ehlo()
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=self.ca_file))
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(self.compose(message))
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            code = getattr(exc, "smtp_code", None)
            raise ChannelError(f"{type(exc).__name__}" + (f" {code}" if code else "")) from None

    def close(self) -> None:
        return None


def build_channels(cfg: Any, environ: Mapping[str, str] | None = None) -> list[Channel]:
    """The channels of a ``notify:`` section (:class:`engine.config.NotifyConfig`);
    a missing environment variable is a ConfigError naming the field."""
    out: list[Channel] = []
    timeout = cfg.timeout.total_seconds()
    for i, ch in enumerate(cfg.channels):
        events = frozenset(ch.events or EVENTS)
        try:
            if ch.type == "email":
                out.append(EmailChannel(
                    ch.label, events, host=ch.host, port=ch.port, sender=ch.sender, to=ch.to,
                    username=ch.username, password=ch.reveal("password", environ), starttls=ch.starttls,
                    timeout=timeout, ca_file=None if ch.ca_file is None else str(ch.ca_file)))
                continue
            url = ch.reveal("url", environ)
            if ch.type == "webhook":
                out.append(WebhookChannel(ch.label, url, events, timeout))
            elif ch.type == "slack":
                out.append(SlackChannel(ch.label, url, events, timeout))
            else:
                out.append(DingTalkChannel(ch.label, url, events, timeout, ch.reveal("secret", environ)))
        except ConfigError as exc:
            raise ConfigError(f"notify.channels[{i}].{exc}") from None
    return out


def channel_secrets(cfg: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value of the channels (for the redactor)."""
    out = []
    for ch in cfg.channels:
        for name in ch.SECRETS:
            try:
                value = ch.reveal(name, environ)
            except ConfigError:
                continue
            if value:
                out.append(value)
    return out


# ------------------------------------------------------------------ notifier
def exponential_backoff(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, 4, ... capped)."""
    return min(cap, base * 2 ** (attempt - 1))


class _Worker:
    """One channel's bounded queue and the thread that drains it."""

    def __init__(self, notifier: "Notifier", channel: Channel, size: int) -> None:
        self.notifier = notifier
        self.channel = channel
        self.queue: queue.Queue[Message | None] = queue.Queue(maxsize=size)
        self.thread = threading.Thread(target=self._drain, name=f"notify-{channel.name}", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            msg = self.queue.get()
            try:
                if msg is None:
                    return
                if self.notifier._may_send(self.channel.name, msg):
                    self._deliver(msg)
            finally:
                if msg is not None and msg.seq is not None:
                    self.notifier._settled(self.channel.name, msg.seq)
                self.queue.task_done()

    def _deliver(self, msg: Message) -> None:
        n = self.notifier
        name = self.channel.name
        for attempt in range(1, n.max_attempts + 1):
            try:
                self.channel.send(msg)
            except Exception as exc:  # noqa: BLE001 - a channel bug must not kill its thread
                why = n.redact(str(exc) if isinstance(exc, ChannelError) else type(exc).__name__)
                if attempt == n.max_attempts:
                    n._count(n.dropped, name)
                    log.warning("notify %s: dropped %s for %s after %d attempts (%s)", name, msg.kind,
                                msg.target, attempt, why)
                    return
                log.info("notify %s: attempt %d of %s failed (%s); retrying", name, attempt, msg.kind, why)
                if n._stopping.wait(n.backoff(attempt)):
                    n._count(n.dropped, name)
                    return
            else:
                n._count(n.sent, name)
                log.debug("notify %s: sent %s for %s", name, msg.kind, msg.target)
                return


class Notifier:
    """Fan events out to channels without ever blocking the caller.

    ``links`` makes the approve/reject URLs of a new plan (one pair per
    channel, so the record says through which one a plan was decided);
    without it (no ``console.public_url`` or no server secret) messages
    name the CLI command instead.
    """

    def __init__(self, channels: Sequence[Channel], *, links: LinkMaker | None = None,
                 queue_size: int = 100, max_attempts: int = 5, fallback_streak: int = 3,
                 backoff: Callable[[int], float] = exponential_backoff, redactor: Redactor | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        self.channels = list(channels)
        self.links = links
        self.max_attempts = max_attempts
        self.fallback_streak = fallback_streak
        self.backoff = backoff
        self.redact = redactor or Redactor(())
        self._now = now
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        #: per channel: messages sent, and dropped (queue full or out of attempts)
        self.sent: dict[str, int] = {c.name: 0 for c in self.channels}
        self.dropped: dict[str, int] = {c.name: 0 for c in self.channels}
        self._streaks: dict[str, int] = {}
        #: per channel: the seqs of plan transitions queued and not yet sent
        #: or given up (what a cursor must not pass), with their targets
        self._outstanding: dict[str, dict[int, list]] = {c.name: {} for c in self.channels}
        #: ``gate(channel, message)``: asked just before a plan transition's
        #: message is sent; False: it is not sent (another replica leads
        #: its target now and tells it); ``on_settled(channel, seq)``: after
        #: such a message was sent, given up or left out (PlanNotices sets both)
        self.gate: Callable[[str, Message], bool] | None = None
        self.on_settled: Callable[[str, int], None] | None = None
        self._workers = [_Worker(self, c, queue_size) for c in self.channels]

    @classmethod
    def from_config(cls, cfg: Any, *, links: LinkMaker | None = None, redactor: Redactor | None = None,
                    environ: Mapping[str, str] | None = None, **kw: Any) -> "Notifier":
        """From a ``notify:`` section (:class:`engine.config.NotifyConfig`)."""
        secrets = channel_secrets(cfg, environ)
        red = redactor.extend(secrets) if redactor is not None else Redactor(secrets)
        return cls(build_channels(cfg, environ), links=links, queue_size=cfg.queue_size,
                   max_attempts=cfg.max_attempts, fallback_streak=cfg.fallback_streak, redactor=red, **kw)

    def _may_send(self, channel: str, msg: Message) -> bool:
        if msg.seq is None or self.gate is None:
            return True
        try:
            return self.gate(channel, msg)
        except Exception:  # noqa: BLE001 - unsure whether it is still ours: send (told twice, never lost)
            log.exception("notify %s: the send check failed", channel)
            return True

    def _settled(self, channel: str, seq: int) -> None:
        with self._lock:
            out = self._outstanding[channel]
            held = out.get(seq)
            if held is not None:
                held[1] -= 1
                if held[1] <= 0:
                    del out[seq]
        if self.on_settled is not None:
            try:
                self.on_settled(channel, seq)
            except Exception:  # noqa: BLE001 - the cursor is saved again after the next poll
                log.exception("notify %s: saving the cursor after a message failed", channel)

    def unsettled(self, channel: str, targets: Callable[[str], bool] | None = None) -> int | None:
        """The oldest plan transition (seq) queued for ``channel`` and not
        yet sent or given up (``targets``: of the targets it accepts); None
        when there is none."""
        with self._lock:
            out = self._outstanding.get(channel) or {}
            return min((q for q, (t, _) in out.items() if targets is None or targets(t)), default=None)

    def _count(self, counter: dict[str, int], name: str) -> None:
        with self._lock:
            counter[name] = counter.get(name, 0) + 1

    def _message(self, kind: str, target: str, payload: Mapping[str, Any], channel: str,
                 at: datetime, seq: int | None = None) -> Message:
        plan = payload.get("plan")
        links: dict[str, str] = {}
        if kind == "plan_created" and plan:
            if self.links is not None:
                links = {a: self.links(plan["id"], a, channel) for a in ("approve", "reject")}
            else:
                links = {"approve": f"forescale approve {plan['id']}",
                         "reject": f"forescale reject {plan['id']}"}
        details = {k: v for k, v in payload.items() if k != "decision"}
        if payload.get("decision"):
            details["decision"] = _brief_decision(payload["decision"])
        summary = self.redact(summarize(kind, target, payload))
        return Message(kind, target, at, summary, links, json.loads(self.redact(json.dumps(details, default=str))),
                       seq)

    def event(self, kind: str, target: str, payload: Mapping[str, Any], *, at: datetime | None = None,
              seq: int | None = None, channels: Collection[str] | None = None) -> None:
        """Queue one event for every channel that takes it (``channels``:
        only those named); never blocks, never raises for a channel's sake
        (an unknown ``kind`` is a bug and raises ValueError). ``seq``: the
        plan transition it tells, held as the channel's unsettled until the
        message is sent or given up."""
        if kind not in EVENTS:
            raise ValueError(f"unknown notification kind {kind!r}; known: {', '.join(EVENTS)}")
        when = at or (self._now() if self._now else None) or _utcnow()
        for w in self._workers:
            if kind not in w.channel.events or (channels is not None and w.channel.name not in channels):
                continue
            msg = self._message(kind, target, payload, w.channel.name, when, seq)
            if seq is not None:
                with self._lock:
                    held = self._outstanding[w.channel.name].setdefault(seq, [target, 0])
                    held[1] += 1  # (queued twice: a shard loaded again while its first was waiting)
            try:
                w.queue.put_nowait(msg)
            except queue.Full:
                if seq is not None:
                    self._settled(w.channel.name, seq)
                self._count(self.dropped, w.channel.name)
                log.warning("notify %s: queue full; dropped %s for %s", w.channel.name, kind, target)

    def cycle(self, target: str, decision: Mapping[str, Any], *, at: datetime | None = None) -> None:
        """Count a target's consecutive fallback decisions; at the
        ``fallback_streak``-th one in a row, send ``fallback_streak`` (once
        per streak)."""
        with self._lock:
            n = self._streaks.get(target, 0) + 1 if decision.get("fallback") else 0
            self._streaks[target] = n
        if n == self.fallback_streak:
            self.event("fallback_streak", target, {"decision": decision, "streak": n}, at=at)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queue is drained (tests, shutdown); True if so."""
        deadline = time.monotonic() + timeout
        for w in self._workers:
            while w.queue.unfinished_tasks:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``), then stop the threads."""
        self.flush(timeout)
        self._stopping.set()
        for w in self._workers:
            try:
                w.queue.put_nowait(None)
            except queue.Full:
                pass
        for w in self._workers:
            w.thread.join(timeout=1.0)
            w.channel.close()


# ------------------------------------------------------------------ engine hooks
#: plan transition (to status) -> notification kind
_TRANSITION_KINDS = {"pending": "plan_created", "approved": "plan_approved", "rejected": "plan_rejected",
                     "expired": "plan_expired", "superseded": "plan_expired", "applied": "applied",
                     "failed": "failed", "refused": "failed"}


class PlanNotices:
    """Turn the plans' appended transitions into notifications.

    Every move of every plan, whoever made it (the daemon's cycle, the CLI,
    the console, a signed link, in any process), is a row of the state's
    ``plan_transitions``, ordered by its audit ``seq``. :meth:`poll` sends
    one event per row it has not told; the daemon calls it after each
    cycle, so exactly one process notifies.

    Targets fall into shards (one on a SQLite state; ``ha.shards`` with
    :attr:`leases`, a PostgreSQL state's replicas, :mod:`engine.leases`),
    and each channel has a cursor per shard in the store
    (``notify_shard_cursors``): the last transition of the shard's targets
    told on it, or given up on after its retries. A replica tells only the
    shards whose lease it holds, and only it moves their cursors: each
    write checks the lease in its own transaction (a takeover commits
    before or after it, never beside it) and never replaces a cursor
    written under a newer epoch. A shard's cursor moves only past messages
    that are settled (sent, or dropped and counted), and is saved as each
    one settles (``save_as_sent``), after each poll and at shutdown
    (:meth:`save`); a message whose shard this replica no longer leads when
    its turn to be sent comes is not sent (the new holder tells it from the
    cursor). So every event is told once across restarts and failovers: a
    replica that takes a shard over (or starts) reads its cursor after the
    lease is its own and tells from there. After a crash (SIGKILL), at most
    the messages being sent at that moment (sent, their cursor not yet
    written) are told twice (without ``save_as_sent``: those sent since the
    last poll).

    The catch-up is bounded: past ``catch_up`` transitions of a shard
    (default 20), only the newest that many are sent, after one ``missed``
    event saying how many were left out, so a long outage does not flood a
    channel with stale plans. A channel seen for the first time starts
    after the newest row (no old news); that start is stored
    (``notify_cursors``), so every replica starts its shards there."""

    def __init__(self, notifier: Notifier, store: Any, leases: Any = None, *, catch_up: int = 20,
                 save_as_sent: bool | None = None) -> None:
        self.notifier = notifier
        self.store = store
        self.catch_up = catch_up
        #: write a cursor from the channel's thread as each message settles
        #: (default: on a PostgreSQL store, whose transactions are per
        #: thread; a SQLite store only when this object has it to itself, as
        #: the daemon's has: one connection cannot hold two threads'
        #: transactions); else after each poll and at close only
        self.save_as_sent = getattr(store, "shared", False) if save_as_sent is None else save_as_sent
        #: :class:`engine.leases.Leases` of this replica (None: one process, one shard)
        self.leases = leases
        self._lock = threading.RLock()  # the cycle threads poll, the channels' threads settle
        #: per (channel, shard) held: the newest transition looked at for it
        self.polled: dict[tuple[str, int], int] = {}
        self._saved: dict[tuple[str, int], int | None] = {}
        #: per shard loaded: the lease epoch it was loaded under, and its generation
        self._epoch: dict[int, int | None] = {}
        self._gen: dict[int, int] = {}
        self._generations = 0
        #: (channel, seq) queued -> the shard's generation it was queued under
        self._queued: dict[tuple[str, int], int] = {}
        self._events = {ch.name: ch.events for ch in notifier.channels}
        notifier.gate = self._may_send
        notifier.on_settled = self._after_settle
        with self._lock:
            self._sync(store)
            self.save(store)

    # ------------------------------------------------------------ shards
    @property
    def shards(self) -> int:
        return int(self.leases.shards) if self.leases is not None else 1

    def shard(self, target: str) -> int:
        return self.leases.shard(target) if self.leases is not None else 0

    def _held(self) -> dict[int, int | None]:
        return dict(self.leases.held()) if self.leases is not None else {0: None}

    def _drop(self, s: int) -> None:
        self._epoch.pop(s, None)
        self._gen.pop(s, None)
        for key in [k for k in self.polled if k[1] == s]:
            del self.polled[key]
            self._saved.pop(key, None)

    def _sync(self, store: Any) -> None:
        """Drop the shards no longer held (or held again under a newer
        epoch), load the ones newly held from their stored cursors."""
        held = self._held()
        for s in list(self._epoch):
            if s not in held or held[s] != self._epoch[s]:
                self._drop(s)
        new = sorted(s for s in held if s not in self._epoch)
        if new and self.notifier.channels:
            self._load(store, new, held)

    def _load(self, store: Any, shards: list[int], held: Mapping[int, int | None]) -> None:
        from .core.clock import SystemClock

        newest = int(store.db.execute("SELECT MAX(seq) FROM plan_transitions").fetchone()[0] or 0)
        names = [ch.name for ch in self.notifier.channels]
        base = store.start_notify_cursors(dict.fromkeys(names, newest), SystemClock().now())
        rows = store.notify_shard_cursors()
        n = self.shards
        starts: dict[tuple[str, int], int] = {}
        for name in names:
            # cursors of another shard count (ha.shards changed): the oldest,
            # so nothing is left out (a few events may be told again)
            other = [v for (c, k, _), v in rows.items() if c == name and k != n]
            for s in shards:
                stored = rows.get((name, n, s))
                starts[name, s] = stored if stored is not None else min(other) if other else base[name]
                self._saved[name, s] = stored
        told = ", ".join(f"'{k}'" for k in _TRANSITION_KINDS)
        low = min(starts.values())
        found = store.db.execute(
            f"SELECT t.seq, p.target FROM plan_transitions t JOIN plans p ON p.id = t.plan_id "
            f"WHERE t.seq > ? AND t.to_status IN ({told}) ORDER BY t.seq", (low,)).fetchall()
        by_shard: dict[int, list[int]] = {}
        for r in found:
            by_shard.setdefault(self.shard(r[1]), []).append(int(r[0]))
        for (name, s), start in starts.items():
            waiting = [q for q in by_shard.get(s, ()) if q > start]
            if len(waiting) > self.catch_up:
                # start after the oldest of those left out: the newest catch_up follow
                start = waiting[-self.catch_up - 1]
                log.warning("notify %s: %d plan events while notifications were down; sending the newest %d",
                            name, len(waiting), self.catch_up)
                self.notifier.event("missed", "forescale", {"skipped": len(waiting) - self.catch_up,
                                                            "sent": self.catch_up, "shard": s}, channels=(name,))
            self.polled[name, s] = start
        for s in shards:
            self._generations += 1
            self._epoch[s], self._gen[s] = held[s], self._generations

    # ------------------------------------------------------------ cursors
    @property
    def last_seq(self) -> int:
        """The newest transition looked at for every channel and shard
        (set it to look again from there, for every one)."""
        return min(self.polled.values(), default=0)

    @last_seq.setter
    def last_seq(self, seq: int) -> None:
        self.polled = dict.fromkeys(self.polled, seq)

    def _cursor(self, name: str, s: int) -> int:
        polled = self.polled[name, s]
        oldest = self.notifier.unsettled(name, lambda t: self.shard(t) == s)
        return polled if oldest is None else min(polled, oldest - 1)

    def cursors(self) -> dict[tuple[str, int], int]:
        """Per (channel, shard) held, the last transition settled for it:
        looked at, and its message (if any) sent or given up."""
        with self._lock:
            return {(name, s): self._cursor(name, s) for name, s in self.polled}

    def _save_one(self, store: Any, name: str, s: int, now: datetime) -> None:
        from .core.errors import LeaseLost

        value = self._cursor(name, s)
        if self._saved.get((name, s)) == value:
            return
        leases = self.leases
        fence = None if leases is None else (lambda db: leases.check_shard(db, s, what="notify cursor"))
        try:
            store.save_notify_shard_cursor(name, self.shards, s, value, now, fence=fence)
        except LeaseLost:
            log.info("notify %s: shard %d is led by another replica now; it tells from here", name, s)
            self._drop(s)
            return
        self._saved[name, s] = value

    def save(self, store: Any) -> None:
        """Write the cursors that moved (after a poll; at shutdown, after the
        notifier sent what was queued)."""
        from .core.clock import SystemClock

        with self._lock:
            now = SystemClock().now()
            for name, s in list(self.polled):
                if (name, s) in self.polled:
                    self._save_one(store, name, s, now)

    def _may_send(self, channel: str, msg: Message) -> bool:
        """A plan transition's message goes out only while its shard is
        still held under the load it was queued from."""
        with self._lock:
            s = self.shard(msg.target)
            gen = self._queued.get((channel, msg.seq))  # type: ignore[arg-type]
            if gen is None or gen != self._gen.get(s):
                return False  # loaded again since: queued anew from the stored cursor
            if self.leases is not None and not self.leases.holds(msg.target):
                # dropped at once, so the settling of this unsent message
                # cannot move the shard's cursor past it; loaded again
                # from the stored cursor when it is held again
                self._drop(s)
                return False
            return True

    def _after_settle(self, channel: str, seq: int) -> None:
        from .core.clock import SystemClock

        with self._lock:
            self._queued.pop((channel, seq), None)
            if not self.save_as_sent:
                return
            for (name, s) in list(self.polled):
                if name == channel and (name, s) in self.polled:
                    self._save_one(self.store, name, s, SystemClock().now())

    # --------------------------------------------------------------- poll
    def poll(self, store: Any) -> int:
        """Send what happened since the last poll; returns how many events."""
        with self._lock:
            self._sync(store)
            sent = self._poll(store)
            self.save(store)
            return sent

    def _poll(self, store: Any) -> int:
        from .core.units import from_epoch

        if not self.polled:
            return 0
        head = int(store.db.execute("SELECT MAX(seq) FROM plan_transitions").fetchone()[0] or 0)
        rows = store.db.execute("SELECT t.*, p.target AS target FROM plan_transitions t LEFT JOIN plans p "
                                "ON p.id = t.plan_id WHERE t.seq > ? AND t.seq <= ? ORDER BY t.seq",
                                (self.last_seq, head)).fetchall()
        names = [ch.name for ch in self.notifier.channels]
        sent = 0
        for r in rows:
            seq = int(r["seq"])
            if r["target"] is None:
                continue  # the plan was pruned
            s = self.shard(r["target"])
            if s not in self._epoch:
                continue  # another replica leads it and tells
            due = [name for name in names if self.polled[name, s] < seq]
            for name in due:
                self.polled[name, s] = seq
            kind = _TRANSITION_KINDS.get(r["to_status"])
            if kind is None or not due:  # applying: the claim before the write, not news
                continue
            plan = store.plan(r["plan_id"])
            payload: dict[str, Any] = {"plan": plan.to_dict(), "status": r["to_status"]}
            if kind == "plan_created":
                payload["decision"] = store.decision(plan.decision_id)
            if r["identity"]:
                payload.update(identity=r["identity"], channel=r["channel"], comment=r["comment"])
            if r["reason"]:
                # a failure's reason is its error; any other transition's
                # ("planned", "superseded by ...") is no error
                payload["error" if kind == "failed" else "reason"] = r["reason"]
            for name in due:
                if kind in self._events[name]:
                    self._queued[name, seq] = self._gen[s]
            self.notifier.event(kind, plan.target, payload, at=from_epoch(r["at"]), seq=seq, channels=due)
            sent += 1
        for key in self.polled:
            self.polled[key] = max(self.polled[key], head)
        return sent


def notify_result(notifier: Notifier, result: Any) -> None:
    """The events of one cycle that are not plan transitions: an auto-mode
    action (applied or failed), and the fallback streak count."""
    d = result.decision
    if d is None:
        return
    rec = d.to_dict()
    notifier.cycle(result.target, rec, at=result.now)
    if result.plan is not None or d.desired == d.current:
        return  # approve mode: told through the plan's transitions
    if result.status in ("applied", "unverified"):
        notifier.event("applied", result.target, {"decision": rec}, at=result.now)
    elif result.status == "failed":
        notifier.event("failed", result.target, {"decision": rec, "error": result.actuation_error or ""},
                       at=result.now)


def _utcnow() -> datetime:
    from .core.clock import SystemClock

    return SystemClock().now()
