"""Who may approve, and how that is checked: the console's and approval
API's security.

- **Binding.** The console and API listen on 127.0.0.1 by default; any other
  address refuses to start unless at least one user is configured
  (:func:`check_bind`).
- **Tokens.** ``console.users`` lists people with the sha256 of their token
  (``token_sha256``) or the environment variable holding it (``token_env``,
  hashed at load and the plain value dropped). A presented token is hashed
  and compared with every user's hash in constant time
  (``hmac.compare_digest``, all of them, so the time does not say which one
  was close).
- **Sessions.** Logging in sets a signed cookie (HMAC-SHA256 with a key
  derived from the server secret; ``HttpOnly``, ``SameSite=Strict``,
  ``Secure`` over TLS) holding the user, an expiry and a per-session CSRF
  token that every POST form must echo.
- **Approval links.** A link in a notification is a signed token bound to
  one plan, one action (approve or reject) and the channel it was sent to,
  with an expiry and a random id. Opening it shows a confirmation page
  (a GET changes nothing, so a chat client's link preview cannot approve);
  confirming spends it: its id is inserted into the ``used_links`` table of
  the state file, and a second use fails.
- **Rate limit.** Failed logins per client address are counted over a
  sliding minute; past the limit the login answers 429.
- **Redaction.** :class:`Redactor` replaces every configured secret (user
  tokens, the server secret, webhook URLs and signing secrets, SMTP
  passwords, source credentials, cloud keys in the environment) in any text;
  :class:`RedactingFilter` applies it to every log record.

The server secret (``console.secret`` or ``console.secret_env``) signs
sessions and links with separate derived keys. Without one, sessions are
signed with a random key per process (a restart logs everyone out) and no
approval links are made: the daemon and ``forescale console`` are separate
processes and must share the secret for a link made by one to work in the
other.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import logging
import os
import secrets as _random
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping

from .config import is_loopback
from .core.errors import ConfigError, ForescaleError
from .core.units import to_epoch
from .server import split_listen, token_digest

#: environment variables that hold cloud credentials the actuators read
CLOUD_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
                    "ALIBABA_CLOUD_SECURITY_TOKEN", "AZURE_CLIENT_SECRET", "GOOGLE_APPLICATION_CREDENTIALS_JSON")


class AuthError(ForescaleError):
    """A credential, session, CSRF token or link was not accepted. The
    message says which check failed, never the value presented."""


# ------------------------------------------------------------------ redaction
class Redactor:
    """Replace known secret values in text with ``***``.

    Each secret is also matched in its URL-encoded and JSON-escaped forms
    (as it appears in a query string or a serialized record). Values shorter
    than 6 characters are ignored: they would redact ordinary words and are
    no real secret anyway.
    """

    MIN_LENGTH = 6

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for s in secrets:
            if not s or len(s) < self.MIN_LENGTH:
                continue
            forms.update({s, urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s),
                          json.dumps(s)[1:-1]})
        self.secrets = tuple(sorted(forms, key=len, reverse=True))

    def extend(self, secrets: Iterable[str]) -> "Redactor":
        return Redactor((*self.secrets, *secrets))

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return text


class RedactingFilter(logging.Filter):
    """A handler filter that redacts the formatted message and traceback."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        red = self.redactor(msg)
        if red != msg:
            record.msg, record.args = red, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        return True


def install_redaction(redactor: Redactor, logger: logging.Logger | None = None) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (the
    root logger by default): a handler filter sees the records of every
    child logger, a logger filter would not."""
    for h in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter(redactor))


def config_secrets(cfg: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value a loaded config makes reachable: each ``SecretStr``
    in the config tree (plugin configs included), each ``*_env`` secret of
    the console and notify sections, users' tokens, and the cloud
    credentials in the environment."""
    from pydantic import BaseModel, SecretStr

    from .config import SecretSection

    env = os.environ if environ is None else environ
    out: list[str] = []
    seen: set[int] = set()

    def walk(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, SecretStr):
            out.append(obj.get_secret_value())
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                walk(getattr(obj, name))
            if isinstance(obj, SecretSection):
                for name in obj.SECRETS:
                    var = getattr(obj, f"{name}_env")
                    if var and env.get(var):
                        out.append(env[var])
        elif isinstance(obj, (list, tuple)):
            for x in obj:
                walk(x)
        elif isinstance(obj, dict):
            for x in obj.values():
                walk(x)

    walk(cfg)
    for t in getattr(cfg, "targets", ()):
        walk(t.source_config)
        walk(t.actuator_config)
        for c in t.covariate_configs.values():
            walk(c)
    console = getattr(cfg, "console", None)
    for u in getattr(console, "users", ()):
        if u.token_env and env.get(u.token_env):
            out.append(env[u.token_env])
    server = getattr(cfg, "server", None)
    auth = getattr(server, "auth", None)
    remote = getattr(server, "remote_write", None)
    basic = getattr(remote, "basic_auth", None)
    for var in (getattr(cfg.audit, "hmac_key_env", None) if getattr(cfg, "audit", None) else None,
                getattr(auth, "token_env", None), getattr(remote, "bearer_token_env", None),
                getattr(basic, "password_env", None)):
        if var and env.get(var):
            out.append(env[var])
    out += [env[v] for v in CLOUD_SECRET_ENV if env.get(v)]
    state_url = getattr(cfg, "state_url", None)
    if state_url:  # the PostgreSQL password: in the URL, the named variable, or libpq's own
        from .db import url_password

        out += [pw for pw in (url_password(state_url), env.get(cfg.state_password_env or ""),
                              env.get("PGPASSWORD")) if pw]
    return out


# ------------------------------------------------------------------ binding
def check_bind(listen: str, users: "Users", field: str = "console.listen") -> tuple[str, int]:
    """``(host, port)`` to listen on; a non-loopback address without any
    configured user is refused (the API could approve plans for anyone who
    can reach it)."""
    _, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{field}: {listen!r} is not host:port")
    host, port = split_listen(listen)
    if not is_loopback(host) and not users:
        raise ConfigError(f"{field}: {host} is not a loopback address and no console.users are configured; "
                          "refusing to serve approvals without authentication (add console.users, or listen "
                          "on 127.0.0.1)")
    return host, port


# ------------------------------------------------------------------ tokens
class Users:
    """The people allowed in, as (name, sha256 of token) pairs."""

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        self.entries = tuple(entries)

    @classmethod
    def from_config(cls, console: Any, environ: Mapping[str, str] | None = None) -> "Users":
        env = os.environ if environ is None else environ
        out = []
        for i, u in enumerate(console.users):
            if u.token_sha256:
                out.append((u.name, u.token_sha256))
                continue
            token = env.get(u.token_env or "")
            if not token:
                raise ConfigError(f"console.users[{i}].token_env: environment variable {u.token_env} is not set")
            out.append((u.name, token_digest(token)))
        return cls(out)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def authenticate(self, token: str) -> str | None:
        """The user whose token this is, or None. Every entry is compared
        (constant time each), whichever matches."""
        presented = token_digest(token or "")
        found = None
        for name, digest in self.entries:
            if hmac.compare_digest(presented, digest):
                found = name
        return found


# ------------------------------------------------------------------ signing
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """HMAC-SHA256 signed JSON tokens (``<payload>.<mac>``, base64url), with
    one key per purpose derived from the server secret, so a session cookie
    can never be replayed as an approval link."""

    def __init__(self, secret: bytes, purpose: str) -> None:
        self.key = hmac.new(secret, f"forescale {purpose}".encode(), hashlib.sha256).digest()

    def sign(self, data: Mapping[str, Any]) -> str:
        body = _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())}"

    def unsign(self, token: str) -> dict[str, Any] | None:
        """The payload, or None for anything not signed with this key."""
        body, dot, mac = (token or "").partition(".")
        if not dot:
            return None
        want = _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(want, mac):
            return None
        try:
            data = json.loads(_unb64(body))
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str
    expires: int


class Sessions:
    """Signed-cookie sessions carrying the user and a CSRF token."""

    COOKIE = "forescale_session"

    def __init__(self, signer: Signer, ttl: timedelta) -> None:
        self.signer = signer
        self.ttl = ttl

    def create(self, user: str, now: datetime) -> tuple[str, Session]:
        s = Session(user, _random.token_urlsafe(24), to_epoch(now + self.ttl))
        return self.signer.sign({"u": s.user, "c": s.csrf, "e": s.expires}), s

    def read(self, cookie: str | None, now: datetime) -> Session | None:
        data = self.signer.unsign(cookie or "")
        if data is None or not isinstance(data.get("e"), int) or data["e"] <= to_epoch(now):
            return None
        return Session(str(data.get("u")), str(data.get("c")), data["e"])

    @staticmethod
    def check_csrf(session: Session, presented: str | None) -> None:
        if not presented or not hmac.compare_digest(session.csrf, presented):
            raise AuthError("the form's CSRF token does not match this session; reload the page and retry")


# ------------------------------------------------------------------ links
ACTIONS = ("approve", "reject")


@dataclass(frozen=True)
class Link:
    id: str
    plan_id: str
    action: str
    channel: str
    expires: int


_USED_LINKS = """CREATE TABLE IF NOT EXISTS used_links (
    id TEXT PRIMARY KEY,
    plan_id TEXT NOT NULL,
    action TEXT NOT NULL,
    channel TEXT NOT NULL,
    used_at INTEGER NOT NULL
)"""


class Links:
    """Signed, expiring, single-use approval links, each bound to one plan
    and one action."""

    def __init__(self, signer: Signer, ttl: timedelta, base_url: str | None) -> None:
        self.signer = signer
        self.ttl = ttl
        self.base_url = base_url.rstrip("/") if base_url else None

    def token(self, plan_id: str, action: str, channel: str, now: datetime) -> str:
        if action not in ACTIONS:
            raise ValueError(f"unknown link action {action!r}")
        return self.signer.sign({"i": _random.token_urlsafe(12), "p": plan_id, "a": action, "ch": channel,
                                 "e": to_epoch(now + self.ttl)})

    def url(self, plan_id: str, action: str, channel: str, now: datetime) -> str:
        if self.base_url is None:
            raise ValueError("no console.public_url configured")
        return f"{self.base_url}/l/{self.token(plan_id, action, channel, now)}"

    def maker(self, now: Callable[[], datetime]) -> Callable[[str, str, str], str] | None:
        """A :data:`engine.notify.LinkMaker`, or None without a public URL."""
        if self.base_url is None:
            return None
        return lambda plan_id, action, channel: self.url(plan_id, action, channel, now())

    def read(self, token: str, now: datetime) -> Link:
        data = self.signer.unsign(token)
        if data is None or data.get("a") not in ACTIONS or not isinstance(data.get("e"), int):
            raise AuthError("this approval link is not valid (altered, or signed with another secret)")
        link = Link(str(data["i"]), str(data["p"]), data["a"], str(data.get("ch", "")), data["e"])
        if link.expires <= to_epoch(now):
            raise AuthError("this approval link has expired; use the console or the CLI")
        return link

    @staticmethod
    def used(store: Any, link: Link) -> bool:
        _ensure_table(store)
        return store.db.execute("SELECT 1 FROM used_links WHERE id=?", (link.id,)).fetchone() is not None

    @staticmethod
    def spend(store: Any, link: Link, now: datetime) -> None:
        """Mark the link used; a second use raises AuthError (the insert is
        atomic: two clicks at once cannot both pass)."""
        _ensure_table(store)
        try:
            with store.tx() as db:
                db.execute("INSERT INTO used_links(id, plan_id, action, channel, used_at) VALUES (?,?,?,?,?)",
                           (link.id, link.plan_id, link.action, link.channel, to_epoch(now)))
        except Exception as exc:  # the store wraps sqlite3.IntegrityError in a StateError
            if isinstance(exc.__cause__, sqlite3.IntegrityError) or isinstance(exc, sqlite3.IntegrityError):
                raise AuthError("this approval link was already used") from None
            raise


def _ensure_table(store: Any) -> None:
    store.db.execute(_USED_LINKS)


# ------------------------------------------------------------------ rate limit
class RateLimiter:
    """At most ``limit`` failures per key within ``window`` seconds (a
    sliding window of failure times; ``clock`` is monotonic seconds)."""

    def __init__(self, limit: int = 5, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._fails: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str) -> collections.deque[float]:
        q = self._fails.setdefault(key, collections.deque())
        cutoff = self.clock() - self.window
        while q and q[0] <= cutoff:
            q.popleft()
        return q

    def blocked(self, key: str) -> bool:
        with self._lock:
            return len(self._recent(key)) >= self.limit

    def failed(self, key: str) -> None:
        with self._lock:
            self._recent(key).append(self.clock())
            if len(self._fails) > 10_000:  # bound the memory an address scan can take
                for k in [k for k, q in self._fails.items() if not q][:5_000]:
                    del self._fails[k]


# ------------------------------------------------------------------ bundle
@dataclass
class Security:
    """Everything the console checks, built once from ``console:``."""

    users: Users
    sessions: Sessions
    links: Links
    limiter: RateLimiter
    redactor: Redactor
    #: False when the server secret is a random per-process key (no links)
    has_secret: bool
    secure_cookies: bool

    @classmethod
    def from_config(cls, cfg: Any, environ: Mapping[str, str] | None = None,
                    clock: Callable[[], float] = time.monotonic) -> "Security":
        """From a loaded :class:`engine.config.Config` (its ``console``
        section; every secret of the whole config goes to the redactor)."""
        console = cfg.console
        try:
            secret = console.reveal("secret", environ)
        except ConfigError as exc:
            raise ConfigError(f"console.{exc}") from None
        users = Users.from_config(console, environ)
        key = secret.encode() if secret else os.urandom(32)
        return cls(
            users=users,
            sessions=Sessions(Signer(key, "session"), console.session_ttl),
            links=Links(Signer(key, "link"), console.link_ttl, console.public_url if secret else None),
            limiter=RateLimiter(console.login_attempts_per_minute, 60.0, clock),
            redactor=Redactor(config_secrets(cfg, environ)),
            has_secret=bool(secret),
            secure_cookies=console.tls_cert is not None or (console.public_url or "").startswith("https://"),
        )
