"""The console's Starlette app: pages, forms, approval links and the
approval API.

Routes (relative to where the app is mounted)::

    GET  /login, POST /login, POST /logout      token login (rate-limited)
    GET  /                                      pending plans, every target's chart
    GET  /targets/{name}?window=1d|7d           chart, schedule, decisions, accuracy
    POST /plans/{id}/approve, /plans/{id}/reject  forms (session + CSRF)
    GET  /audit                                 the audit trail and its verification
    GET  /l/{token}, POST /l/{token}            a signed approval link: confirm, then act
    GET  /api/plans                             JSON (Authorization: Bearer <token>)
    POST /api/plans/{id}/approve|reject         JSON {"comment": ...} (bearer)
    GET  /static/...                            the stylesheet and a little optional JS

Every approval or rejection goes through :func:`engine.plans.approve` /
:func:`engine.plans.reject` with the authenticated identity (``user:<name>``
for a logged-in or bearer user, ``link:<channel>`` for a link opened without
a session) and the channel (``console``, ``http`` or ``link``). The console
only moves plans between states; the daemon applies an approved plan at the
target's next cycle. Each request opens its own connection to the state
file, so the app can run beside the daemon's cycles (or in another process).
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.parse
from pathlib import Path
from typing import Any, Awaitable, Callable

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import ACTIONS, AuthError, Security, Session, Sessions
from ..core.clock import Clock, SystemClock
from ..core.errors import ForescaleError, PlanNotFound
from ..core.units import isoformat, to_epoch
from . import chart, views

log = logging.getLogger("forescale.console")

HERE = Path(__file__).parent
LOGIN_COOKIE = "forescale_login"
#: the largest form or JSON body accepted (a comment, a token, a CSRF field)
MAX_BODY = 16 * 1024

SECURITY_HEADERS = {
    # no inline script or style anywhere; forms post only to this origin
    "content-security-policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """Pure ASGI middleware: the security headers on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _session_id(s: Session) -> str:
    """A session's id in ``used_links`` once logged out (its CSRF token is
    its own random value; only a digest of it is stored)."""
    return "session:" + hashlib.sha256(s.csrf.encode()).hexdigest()[:32]


def _ensure_used_links(store: Any) -> None:
    from ..auth import _ensure_table

    _ensure_table(store)


async def _body(request: Request) -> bytes:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise AuthError("request body too large")
    return raw


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the only kind the
    console's forms send), last value of each field."""
    raw = await _body(request)
    return {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode("utf-8", "replace"),
                                                        keep_blank_values=True).items()}


class Console:
    """The console over a config (``config()`` returns the config in force,
    so a daemon's reload is seen at the next request)."""

    def __init__(self, config: Callable[[], Any], security: Security, *, clock: Clock | None = None,
                 open_store: Callable[[Any], Any] | None = None) -> None:
        self.config = config
        self.security = security
        self.clock = clock or SystemClock()
        self.open_store = open_store or _open_store
        self._logged_out: set[str] | None = None
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
        self.env.filters["hhmm"] = lambda s: (s or "")[11:16]
        self.env.filters["day"] = lambda s: (s or "")[:10]

    # ------------------------------------------------------------- plumbing
    def root(self, request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def secure(self, request: Request) -> bool:
        return self.security.secure_cookies or request.url.scheme == "https"

    def session(self, request: Request) -> Session | None:
        """The request's session: signed, unexpired, of a user still in
        ``console.users`` and not logged out. A cookie copied before a
        logout, or of a user since removed, approved plans for its 12 h."""
        s = self.security.sessions.read(request.cookies.get(Sessions.COOKIE), self.clock.now())
        if s is None or not s.user or s.user not in {name for name, _ in self.security.users.entries}:
            return None
        return None if _session_id(s) in self._ended() else s

    def _ended(self) -> set[str]:
        """The sessions logged out (read once from the state, then kept)."""
        if self._logged_out is None:
            def read(store: Any) -> set[str]:
                _ensure_used_links(store)
                return {r[0] for r in store.db.execute("SELECT id FROM used_links WHERE action='logout'")}
            store = self.open_store(self.config())
            try:
                self._logged_out = read(store)
            finally:
                store.close()
        return self._logged_out

    def page(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("session", self.session(request))
        ctx.setdefault("title", "forescale")
        html = self.env.get_template(name).render(root=self.root(request), now=isoformat(self.clock.now()),
                                                  has_users=bool(self.security.users), **ctx)
        return HTMLResponse(html, status)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.page(request, "message.html", status, heading="Not done",
                         message=self.security.redactor(message))

    def cookie(self, response: Response, request: Request, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path=(self.root(request) or "/"), httponly=True,
                            samesite="strict", secure=self.secure(request))

    def client(self, request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def with_store(self, fn: Callable[[Any], Any]) -> Awaitable[Any]:
        def run() -> Any:
            store = self.open_store(self.config())
            try:
                return fn(store)
            finally:
                store.close()
        return run_in_threadpool(run)

    def targets(self) -> dict[str, Any]:
        return {t.name: t for t in self.config().targets}

    # ---------------------------------------------------------------- login
    async def login_form(self, request: Request) -> Response:
        if not self.security.users:
            return self.page(request, "message.html", 200, heading="Read-only console",
                             message="No console.users are configured, so nobody can log in or approve here. "
                                     "Add a user (console.users) to approve plans from the console.")
        cookie, pre = self.security.sessions.create("", self.clock.now())
        resp = self.page(request, "login.html", csrf=pre.csrf, title="forescale: log in")
        self.cookie(resp, request, LOGIN_COOKIE, cookie, 600)
        return resp

    async def login(self, request: Request) -> Response:
        addr = self.client(request)
        if self.security.limiter.blocked(addr):
            resp = self.page(request, "login.html", 429, csrf="", title="forescale: log in",
                             failure="Too many failed logins from your address; wait a minute.")
            resp.headers["retry-after"] = "60"
            return resp
        form = await _form(request)
        pre = self.security.sessions.read(request.cookies.get(LOGIN_COOKIE), self.clock.now())
        try:
            if pre is None:
                raise AuthError("the login form expired; reload it")
            Sessions.check_csrf(pre, form.get("csrf"))
        except AuthError as exc:
            return self.error(request, 403, str(exc))
        user = self.security.users.authenticate(form.get("token", ""))
        if user is None:
            self.security.limiter.failed(addr)
            log.warning("console: failed login from %s", addr)
            return self.page(request, "login.html", 401, csrf=pre.csrf, title="forescale: log in",
                             failure="That token is not valid.")
        cookie, _ = self.security.sessions.create(user, self.clock.now())
        resp = RedirectResponse(f"{self.root(request)}/", 303)
        self.cookie(resp, request, Sessions.COOKIE, cookie, int(self.security.sessions.ttl.total_seconds()))
        resp.delete_cookie(LOGIN_COOKIE, path=self.root(request) or "/")
        log.info("console: %s logged in from %s", user, addr)
        return resp

    async def logout(self, request: Request) -> Response:
        s = self.session(request)
        form = await _form(request)
        if s is not None:
            try:
                Sessions.check_csrf(s, form.get("csrf"))
            except AuthError as exc:
                return self.error(request, 403, str(exc))
        if s is not None:  # ended for good: a copy of the cookie is refused too, across restarts
            sid, now = _session_id(s), self.clock.now()

            def record(store: Any) -> None:
                _ensure_used_links(store)
                with store.tx() as db:
                    db.execute("INSERT INTO used_links(id, plan_id, action, channel, used_at) VALUES (?,?,?,?,?) "
                               "ON CONFLICT(id) DO NOTHING", (sid, "", "logout", "console", to_epoch(now)))
            await self.with_store(record)
            self._ended().add(sid)
        resp = RedirectResponse(f"{self.root(request)}/login", 303)
        resp.delete_cookie(Sessions.COOKIE, path=self.root(request) or "/")
        return resp

    # ---------------------------------------------------------------- pages
    def _login_required(self, request: Request) -> Response | None:
        if self.security.users and self.session(request) is None:
            return RedirectResponse(f"{self.root(request)}/login", 303)
        return None

    async def index(self, request: Request) -> Response:
        if (r := self._login_required(request)) is not None:
            return r
        now = self.clock.now()
        targets = self.targets()

        def gather(store: Any) -> dict[str, Any]:
            cards = []
            for t in targets.values():
                data = views.chart_data(store, t, now, views.WINDOWS["1d"])
                cards.append({"name": t.name, "mode": t.mode, "svg": chart.render(data, title=f"{t.name}, last day"),
                              "last": (store.decisions(t.name, limit=1) or [None])[0]})
            return {"plans": views.plan_rows(store, targets, now), "cards": cards}

        ctx = await self.with_store(gather)
        return self.page(request, "index.html", **ctx, done=request.query_params.get("done"),
                         done_plan=request.query_params.get("plan", ""))

    async def target(self, request: Request) -> Response:
        if (r := self._login_required(request)) is not None:
            return r
        name = request.path_params["name"]
        t = self.targets().get(name)
        if t is None:
            return self.error(request, 404, f"no target named {name!r}")
        window_key = request.query_params.get("window", "1d")
        if window_key not in views.WINDOWS:
            return self.error(request, 400, f"window: one of {', '.join(views.WINDOWS)} (got {window_key!r})")
        window = views.WINDOWS[window_key]
        now = self.clock.now()

        def gather(store: Any) -> dict[str, Any]:
            data = views.chart_data(store, t, now, window)
            decisions = views.decision_rows(store, name, 20)
            sched = next((d.get("schedule") for d in decisions if d.get("schedule")), None)
            return {"svg": chart.render(data, title=f"{name}, last {window_key}"), "decisions": decisions,
                    "schedule": sched, "schedule_rows": views.schedule_rows(sched),
                    "accuracy": views.accuracy_rows(store, name, window),
                    "plans": [p for p in views.plan_rows(store, self.targets(), now) if p["plan"]["target"] == name]}

        ctx = await self.with_store(gather)
        return self.page(request, "target.html", target=t, window=window_key, windows=list(views.WINDOWS),
                         title=f"forescale: {name}", **ctx)

    async def audit(self, request: Request) -> Response:
        if (r := self._login_required(request)) is not None:
            return r
        ctx = await self.with_store(views.audit_view)
        return self.page(request, "audit.html", title="forescale: audit", audit=ctx)

    # ------------------------------------------------------------- deciding
    def _decide(self, store: Any, plan_id: str, action: str, identity: str, channel: str, comment: str) -> Any:
        """The one call into the plan state machine for every channel."""
        from ..plans import approve, reject

        fn = {"approve": approve, "reject": reject}[action]
        return fn(store, plan_id, self.clock.now(), identity=identity, channel=channel, comment=comment[:500])

    async def decide_form(self, request: Request) -> Response:
        s = self.session(request)
        if s is None:
            return self.error(request, 403, "log in to approve or reject plans")
        form = await _form(request)
        try:
            Sessions.check_csrf(s, form.get("csrf"))
        except AuthError as exc:
            return self.error(request, 403, str(exc))
        plan_id, action = request.path_params["plan_id"], request.path_params["action"]
        if action not in ACTIONS:
            return self.error(request, 404, "no such page")
        try:
            plan = await self.with_store(lambda st: self._decide(st, plan_id, action, f"user:{s.user}", "console",
                                                                 form.get("comment", "")))
        except ForescaleError as exc:
            return self.error(request, 404 if isinstance(exc, PlanNotFound) else 409, str(exc))
        log.info("console: plan %s %s by user:%s", plan.id, plan.status.value, s.user)
        done = "approved" if action == "approve" else "rejected"
        return RedirectResponse(f"{self.root(request)}/?done={done}&plan={urllib.parse.quote(plan.id)}", 303)

    async def link_page(self, request: Request) -> Response:
        try:
            link = self.security.links.read(request.path_params["token"], self.clock.now())
            used = await self.with_store(lambda st: self.security.links.used(st, link))
            if used:
                raise AuthError("this approval link was already used")
            plan = await self.with_store(lambda st: views.plan_rows(st, self.targets(), self.clock.now()))
        except AuthError as exc:
            return self.error(request, 403, str(exc))
        view = next((p for p in plan if p["plan"]["id"] == link.plan_id), None)
        return self.page(request, "link.html", link=link, view=view, token=request.path_params["token"],
                         title=f"forescale: {link.action} plan {link.plan_id}")

    async def link_act(self, request: Request) -> Response:
        now = self.clock.now()
        form = await _form(request)
        try:
            link = self.security.links.read(request.path_params["token"], now)
        except AuthError as exc:
            return self.error(request, 403, str(exc))
        s = self.session(request)
        identity = f"user:{s.user}" if s is not None else f"link:{link.channel or 'notification'}"

        def act(store: Any) -> Any:
            # one transaction: a decision refused (the plan expired,
            # refused, superseded) leaves the link unspent, as it did nothing
            with store.batch():
                self.security.links.spend(store, link, now)
                return self._decide(store, link.plan_id, link.action, identity, "link", form.get("comment", ""))

        try:
            plan = await self.with_store(act)
        except AuthError as exc:
            return self.error(request, 403, str(exc))
        except ForescaleError as exc:
            return self.error(request, 409, str(exc))
        log.info("console: plan %s %s through a signed link (%s)", plan.id, plan.status.value, identity)
        return self.page(request, "message.html", heading=f"Plan {plan.id} {plan.status.value}",
                         message=f"{plan.target}: {plan.from_capacity} -> {plan.to_capacity} is now "
                                 f"{plan.status.value} ({identity})." + (
                                     " The daemon applies it at the target's next cycle."
                                     if plan.status.value == "approved" else ""))

    # ------------------------------------------------------------------ API
    def _bearer(self, request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.security.users.authenticate(token.strip())

    async def api_plans(self, request: Request) -> Response:
        addr = self.client(request)
        if self.security.limiter.blocked(addr):  # token guesses are counted here too, as on every API call
            return JSONResponse({"error": "too many failed attempts; wait a minute"}, 429,
                                headers={"retry-after": "60"})
        if self._bearer(request) is None:
            self.security.limiter.failed(addr)
            return _unauthorized()
        rows = await self.with_store(lambda st: views.plan_rows(st, self.targets(), self.clock.now()))
        for r in rows:
            r.pop("schedule_rows", None)
        return JSONResponse({"plans": rows})

    async def api_decide(self, request: Request) -> Response:
        addr = self.client(request)
        if self.security.limiter.blocked(addr):
            return JSONResponse({"error": "too many failed attempts; wait a minute"}, 429,
                                headers={"retry-after": "60"})
        user = self._bearer(request)
        if user is None:
            self.security.limiter.failed(addr)
            return _unauthorized()
        try:
            body = json.loads(await _body(request) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except (ValueError, AuthError):
            return JSONResponse({"error": "the body must be a JSON object, e.g. {\"comment\": \"...\"}"}, 400)
        comment = body.get("comment", "")
        if not isinstance(comment, str):  # (a list was recorded as its repr, "['x']")
            return JSONResponse({"error": "comment must be a string"}, 400)
        plan_id, action = request.path_params["plan_id"], request.path_params["action"]
        if action not in ACTIONS:
            return JSONResponse({"error": "the action is approve or reject"}, 404)
        try:
            plan = await self.with_store(lambda st: self._decide(st, plan_id, action, f"user:{user}", "http",
                                                                 str(comment)))
        except ForescaleError as exc:
            return JSONResponse({"error": self.security.redactor(str(exc))},
                                404 if isinstance(exc, PlanNotFound) else 409)
        return JSONResponse({"plan": plan.to_dict()})

    # ------------------------------------------------------------------ app
    def app(self) -> Starlette:
        routes = [
            Route("/", self.index),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/targets/{name}", self.target),
            Route("/audit", self.audit),
            Route("/plans/{plan_id}/{action:str}", self.decide_form, methods=["POST"]),
            Route("/l/{token}", self.link_page, methods=["GET"]),
            Route("/l/{token}", self.link_act, methods=["POST"]),
            Route("/api/plans", self.api_plans, methods=["GET"]),
            Route("/api/plans/{plan_id}/{action:str}", self.api_decide, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        app = Starlette(routes=routes, exception_handlers={404: self._not_found})
        app.add_middleware(SecurityHeaders)
        return app

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self.error(request, 404, "no such page")


def _unauthorized() -> Response:
    return JSONResponse({"error": "send Authorization: Bearer <your console token>"}, 401,
                        headers={"www-authenticate": 'Bearer realm="forescale console"'})


def _open_store(cfg: Any) -> Any:
    from ..store import open_store

    return open_store(cfg)


def create_console(config: Any, security: Security | None = None, *, clock: Clock | None = None) -> Starlette:
    """The console as an ASGI app, for ``forescale console`` and for the
    daemon to mount: ``config`` is a loaded Config or a callable returning
    the config in force."""
    get = config if callable(config) else (lambda: config)
    sec = security or Security.from_config(get())
    return Console(get, sec, clock=clock).app()


__all__ = ["Console", "SECURITY_HEADERS", "create_console"]
