"""Loopback servers that notification channels talk to in tests: an HTTP
server that records every request (for the webhook, Slack and DingTalk
channels) and a real SMTP server (aiosmtpd) that requires STARTTLS and
AUTH, with a self-signed certificate made for the test."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    raw_query: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True})
    #: hold the request until this event is set (a hung endpoint)
    hold: threading.Event | None = None


class RecordingServer:
    """Answers POSTs from a script of :class:`Answer` (the last repeats) and
    records each request."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers) or [Answer()]
        self.requests: list[Recorded] = []
        self.arrived = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                parts = urlsplit(self.path)
                rec = Recorded("POST", parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()},
                               parts.query, dict(self.headers), body)
                with server._lock:
                    server.requests.append(rec)
                    answer = server.answers.pop(0) if len(server.answers) > 1 else server.answers[0]
                server.arrived.set()
                if answer.hold is not None:
                    answer.hold.wait(30)
                raw = json.dumps(answer.body).encode() if not isinstance(answer.body, bytes) else answer.body
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "RecordingServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class SmtpServer:
    """A real SMTP server on loopback (aiosmtpd) that offers STARTTLS with a
    self-signed certificate, refuses mail before it, and accepts one
    username/password over TLS only. ``messages`` holds what was delivered
    (envelope and parsed message)."""

    def __init__(self, workdir: Path, username: str, password: str) -> None:
        pytest.importorskip("aiosmtpd")
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        from tests.support.prom import free_port, self_signed

        self.cert, ctx = self_signed(workdir)
        self.messages: list[dict[str, Any]] = []
        self.logins: list[tuple[str, bool]] = []
        self.tls_seen: list[bool] = []
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
                from email import message_from_bytes, policy

                outer.tls_seen.append(session.ssl is not None)
                outer.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                       "message": message_from_bytes(envelope.content, policy=policy.default)})
                return "250 OK"

        def authenticate(server, session, envelope, mechanism, auth_data):
            user = auth_data.login.decode()
            ok = user == username and auth_data.password.decode() == password
            outer.logins.append((user, ok))
            return AuthResult(success=ok)

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=ctx,
                                     require_starttls=True, authenticator=authenticate, auth_require_tls=True)

    def __enter__(self) -> "SmtpServer":
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
