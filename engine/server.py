"""The daemon's one HTTP server: Starlette under uvicorn, in a background
thread the daemon starts and stops.

Routes (:func:`create_app`):

- ``/metrics``: the engine's metrics (Prometheus text, or OpenMetrics when
  the scraper asks for it);
- ``/healthz``: 200 while the process serves;
- ``/readyz``: 200 when every target is ready, else 503 with a JSON body
  naming the targets that are not and why;
- ``/api/v1/...``: the forecast API (:mod:`engine.api`), when a targets view
  is given;
- whatever the caller mounts: ``routes=[Mount("/console", app=...)]`` at
  creation, or :meth:`Server.mount` / ``app.mount(path, app)`` before start.

Binding: loopback (``127.0.0.1``) by default. Any other address is refused
unless ``server.auth`` is configured (:class:`engine.config.AuthConfig`):
every request then needs ``Authorization: Bearer <token>`` except the
probes (``/healthz``, ``/readyz``). Tokens are held only as SHA-256 digests
and compared with :func:`hmac.compare_digest` (constant time); a token is
never logged or echoed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import socket
import threading
import time
from typing import Any, Mapping, Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import is_loopback
from .core.errors import ConfigError, ForescaleError
from .metrics import EngineMetrics, Readiness

log = logging.getLogger("forescale.server")

#: paths served without authentication: the liveness/readiness probes
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) -> ``(host, port)``."""
    host, _, port = listen.rpartition(":")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class BearerAuth:
    """Accepts a request whose bearer token's SHA-256 digest is one of
    ``digests``. Every digest is compared (no early exit), each in constant
    time."""

    def __init__(self, digests: Sequence[str]) -> None:
        if not digests:
            raise ConfigError("server.auth: no token configured")
        self.digests = tuple(bytes.fromhex(d) for d in digests)

    @classmethod
    def from_config(cls, auth: Any, environ: Mapping[str, str] | None = None) -> "BearerAuth":
        """From ``server.auth``: the configured ``token_sha256`` digests plus
        the token in the environment variable ``token_env`` (hashed here;
        the plain token is not kept)."""
        env = os.environ if environ is None else environ
        digests = list(auth.token_sha256)
        if auth.token_env:
            token = env.get(auth.token_env)
            if not token:
                raise ConfigError(f"server.auth.token_env: the environment variable {auth.token_env} "
                                  "is not set or empty")
            digests.append(token_digest(token))
        return cls(digests)

    def allows(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        presented = hashlib.sha256(token.strip().encode("utf-8")).digest()
        ok = False
        for d in self.digests:
            ok |= hmac.compare_digest(presented, d)
        return ok


class _AuthMiddleware:
    """Pure ASGI middleware (also guards mounted apps): 401 without a valid
    bearer token, except on :data:`PUBLIC_PATHS`."""

    def __init__(self, app: ASGIApp, auth: BearerAuth, own_auth: Sequence[str] = ()) -> None:
        self.app, self.auth = app, auth
        #: path prefixes of mounted apps that authenticate every request
        #: themselves (the web console: a browser cannot send a bearer token)
        self.own_auth = tuple(p.rstrip("/") for p in own_auth)

    def _own(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.own_auth)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS and not self._own(scope["path"]):
            headers = dict(scope.get("headers") or [])
            value = headers.get(b"authorization")
            if not self.auth.allows(value.decode("latin-1") if value else None):
                why, challenge = "unauthorized: send Authorization: Bearer <token>", {
                    "WWW-Authenticate": 'Bearer realm="forescale"'}
                # the API answers its errors as JSON ({"error": ...}), the rest as text
                resp = (JSONResponse({"error": why}, 401, headers=challenge) if _api(scope["path"])
                        else PlainTextResponse(why + "\n", 401, headers=challenge))
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _api(path: str) -> bool:
    """Whether ``path`` is the forecast API's (its errors are JSON)."""
    return path == "/api" or path.startswith("/api/")


def default_readiness(metrics: EngineMetrics) -> Readiness:
    """Without a daemon: a target is ready once it has had one successful
    cycle."""
    return lambda: {t: None if metrics.last_success_time(t) else "no successful cycle yet"
                    for t in metrics.targets}


def create_app(metrics: EngineMetrics, *, readiness: Readiness | None = None, view: Any = None,
               auth: BearerAuth | None = None, routes: Sequence[BaseRoute] = (),
               own_auth: Sequence[str] = ()) -> Starlette:
    """The ASGI app: ``/metrics``, ``/healthz``, ``/readyz``; the forecast
    API under ``/api/v1`` when ``view`` (an :class:`engine.api.TargetsView`)
    is given; then ``routes`` (e.g. ``Mount("/console", app=console)``).
    With ``auth``, every path but the probes needs a bearer token, mounted
    apps included."""
    ready = readiness or default_readiness(metrics)

    async def metrics_endpoint(request: Request) -> Response:
        body, ctype = metrics.exposition(request.headers.get("accept"))
        return Response(body, 200, media_type=ctype)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        try:
            state = dict(ready())
        except Exception as exc:  # a broken readiness check must not kill the endpoint
            log.exception("readiness check failed")
            return JSONResponse({"ready": False, "error": f"readiness check failed: {type(exc).__name__}"}, 503)
        waiting = {t: why for t, why in sorted(state.items()) if why is not None}
        # no targets at all is not ready: the daemon has not set up yet
        ok = bool(state) and not waiting
        return JSONResponse({"ready": ok, "not_ready": waiting, "targets": sorted(state)}, 200 if ok else 503)

    async def not_found(request: Request, exc: Exception) -> Response:
        why = "not found: try /metrics, /healthz, /readyz, /api/v1/targets"
        return JSONResponse({"error": why}, 404) if _api(request.url.path) else PlainTextResponse(why + "\n", 404)

    table: list[BaseRoute] = [Route("/metrics", metrics_endpoint), Route("/healthz", healthz),
                              Route("/readyz", readyz)]
    if view is not None:
        from .api import api_routes

        table += api_routes(view)
    table += list(routes)
    middleware = [Middleware(_AuthMiddleware, auth=auth, own_auth=own_auth)] if auth is not None else []
    return Starlette(routes=table, middleware=middleware, exception_handlers={404: not_found})


def refuse_open(host: str, port: int, auth: "BearerAuth | None") -> None:
    """A non-loopback address is served only with bearer tokens."""
    if not is_loopback(host) and auth is None:
        raise ConfigError(f"server.listen {host}:{port}: not a loopback address; refusing to serve "
                          "without server.auth (bearer tokens) configured")


class Server:
    """uvicorn serving an app in a background thread.

    The socket is bound in the constructor, so a port in use is an
    ``OSError`` at once in the caller (port 0: any free one, see
    :attr:`port`)."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 9464, *,
                 auth: BearerAuth | None = None) -> None:
        import uvicorn

        refuse_open(host, port, auth)
        self.app = app
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.host = host
        self.port: int = int(self.sock.getsockname()[1])
        self.config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                     timeout_graceful_shutdown=2)
        self.uvicorn = uvicorn.Server(self.config)
        self._thread = threading.Thread(target=self._run, name="forescale-http", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self.uvicorn.serve(sockets=[self.sock]))
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc

    def mount(self, path: str, app: ASGIApp) -> None:
        """Mount another ASGI app (say, the web console) under ``path``;
        before :meth:`start`."""
        self.app.mount(path, app)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "Server":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if self._error is not None or not self._thread.is_alive():
                raise ForescaleError(f"the HTTP server did not start: {self._error!r}")
            if time.monotonic() > deadline:
                raise ForescaleError(f"the HTTP server did not start within {timeout}s")
            time.sleep(0.01)
        return self

    def close(self, timeout: float = 5.0) -> None:
        self.uvicorn.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(metrics: EngineMetrics, host: str = "127.0.0.1", port: int = 9464, *,
          readiness: Readiness | None = None, view: Any = None, auth: BearerAuth | None = None,
          routes: Sequence[BaseRoute] = (), own_auth: Sequence[str] = ()) -> Server:
    """:func:`create_app` served on ``host:port``, started. ``own_auth``:
    prefixes of ``routes`` that authenticate each request themselves, left
    out of the bearer check."""
    app = create_app(metrics, readiness=readiness, view=view, auth=auth, routes=routes, own_auth=own_auth)
    return Server(app, host, port, auth=auth).start()


def serve_config(server_cfg: Any, metrics: EngineMetrics, *, readiness: Readiness | None = None,
                 view: Any = None, routes: Sequence[BaseRoute] = (), own_auth: Sequence[str] = (),
                 environ: Mapping[str, str] | None = None) -> Server:
    """The daemon's server from ``server`` in the config (listen, auth)."""
    host, port = split_listen(server_cfg.listen)
    auth = BearerAuth.from_config(server_cfg.auth, environ) if server_cfg.auth is not None else None
    try:
        return serve(metrics, host, port, readiness=readiness, view=view, auth=auth, routes=routes,
                     own_auth=own_auth)
    except OSError as exc:
        raise ForescaleError(f"server.listen {server_cfg.listen}: cannot listen: {exc.strerror}") from None


def check_listen(server_cfg: Any, environ: Mapping[str, str] | None = None) -> None:
    """What :func:`serve_config` would refuse, found before anything else
    starts (``forescale run`` checks it before it opens the state): a
    non-loopback address without auth, auth whose variable is unset, an
    address that cannot be bound (in use, not this host's). The probe socket
    is closed again; the server binds its own."""
    host, port = split_listen(server_cfg.listen)
    refuse_open(host, port, BearerAuth.from_config(server_cfg.auth, environ) if server_cfg.auth is not None else None)
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        raise ForescaleError(f"server.listen {server_cfg.listen}: cannot listen: {exc.strerror}") from None
    finally:
        probe.close()


__all__ = ["BearerAuth", "PUBLIC_PATHS", "Server", "check_listen", "create_app", "is_loopback", "serve",
           "serve_config", "split_listen", "token_digest"]
