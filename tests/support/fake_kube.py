"""A small Kubernetes API server on 127.0.0.1 for the actuator tests.

It speaks the real wire protocol to the official ``kubernetes`` client and
implements, with Kubernetes semantics, exactly what the forescale actuators
use:

- ``GET|PUT|PATCH /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}``
  for ``apps/v1`` deployments, statefulsets, replicasets and any custom
  resource added with :meth:`FakeKube.add_workload`;
- ``GET|PUT /apis/.../{plural}/{name}/scale`` (the scale subresource, kind
  ``Scale`` of ``autoscaling/v1``);
- ``GET /apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers`` (list)
  and ``GET|PUT|PATCH .../horizontalpodautoscalers/{name}``.

Semantics kept: ``metadata.resourceVersion`` increases on every write
(status updates by the simulated controllers included); a PUT, or a patch
that sets ``metadata.resourceVersion``, with a stale version gets
``409 Conflict``; ``metadata.generation`` increases when the spec changes;
``?dryRun=All`` authorizes and validates but persists nothing; merge-patch
(RFC 7386) and strategic-merge-patch bodies are accepted as the client sends
them (for the maps and scalars used here the two agree), JSON patch gets 415;
errors are ``kind: Status`` bodies with the real reasons; every response
carries an ``Audit-Id`` header.

The simulated controllers: a workload's ``status.replicas`` (and
``readyReplicas``) follows ``spec.replicas`` after ``settle_after`` GETs of
it (0: at once), or when the test calls :meth:`FakeKube.settle`; an HPA's
``status.currentReplicas`` becomes ``clamp(recommendation, minReplicas,
maxReplicas)`` the same way and drives its target's replicas.

With ``token`` set, a request without ``Authorization: Bearer <token>`` gets
401. Fault hooks: :meth:`forbid` (403 for a verb on a resource),
:meth:`concurrent_write` (another writer bumps the resourceVersion between
the client's read and its write, so the write gets 409), :meth:`fail_next`
(429 / 500 / 422 ... for the next matching requests).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

APPS_KINDS = {"deployments": "Deployment", "statefulsets": "StatefulSet", "replicasets": "ReplicaSet"}
HPA_PLURAL = "horizontalpodautoscalers"

_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>scale|status))?/?$"
)

_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 409: "Conflict", 415: "UnsupportedMediaType",
    422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
    504: "Timeout",
}


def status_body(code: int, message: str, *, reason: str | None = None,
                details: dict | None = None) -> dict:
    """A ``kind: Status`` failure object, as the API server sends it."""
    body = {
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message,
        "reason": reason or _REASONS.get(code, "Unknown"), "code": code,
    }
    if details:
        body["details"] = details
    return body


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any
    status: int = 0
    audit_id: str = ""


@dataclass
class _Fault:
    status: int
    method: str | None
    path: str | None  # a regex searched in the request path
    remaining: int
    message: str
    retry_after: int | None = None


@dataclass
class _Forbidden:
    method: str
    plural: str
    sub: str | None


@dataclass
class _Pending:
    """A controller's pending status update of one object."""

    gets_left: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeKube:
    """The fake API server. Use as a context manager or call start/stop."""

    user = "system:serviceaccount:forescale:forescale"

    def __init__(self, *, settle_after: int = 1, token: str | None = None) -> None:
        self.settle_after = settle_after
        self.token = token  # when set, requests need "Authorization: Bearer <token>"
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.requests: list[Recorded] = []
        self.frozen = False  # controllers stop working (verification timeouts)
        self._rv = 100
        self._pending: dict[tuple[str, str, str, str], _Pending] = {}
        self._faults: list[_Fault] = []
        self._forbidden: list[_Forbidden] = []
        self._concurrent: dict[tuple[str, str, str, str], int] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------- lifecycle
    def start(self) -> "FakeKube":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeKube":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def api_client(self):
        """An official-client ``ApiClient`` pointed at this server."""
        from kubernetes import client

        return client.ApiClient(client.Configuration(host=self.host))

    # -------------------------------------------------------------- objects
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def add_workload(self, name: str, *, namespace: str = "default", replicas: int = 1,
                     plural: str = "deployments", group: str = "apps", version: str = "v1",
                     kind: str | None = None) -> dict:
        """A Deployment / StatefulSet / ReplicaSet, or a custom resource with
        a scale subresource (``group``, ``version``, ``plural``, ``kind``)."""
        kind = kind or APPS_KINDS[plural]
        obj = {
            "apiVersion": f"{group}/{version}", "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                         "resourceVersion": self._next_rv(), "generation": 1,
                         "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": name, "image": "nginx:1.27"}]}}},
            "status": {"replicas": replicas, "readyReplicas": replicas,
                       "observedGeneration": 1},
        }
        with self.lock:
            self.objects[(f"{group}/{version}", plural, namespace, name)] = obj
        return obj

    def add_hpa(self, name: str, *, namespace: str = "default", target: str,
                target_kind: str = "Deployment", target_api_version: str = "apps/v1",
                min_replicas: int = 1, max_replicas: int = 10,
                recommendation: int | None = None) -> dict:
        """An autoscaling/v2 HPA. ``recommendation`` is what its metrics ask
        for; the simulated controller keeps ``currentReplicas`` at
        ``clamp(recommendation, minReplicas, maxReplicas)``."""
        rec = min_replicas if recommendation is None else recommendation
        obj = {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                         "resourceVersion": self._next_rv(), "generation": 1,
                         "annotations": {"fake.forescale.io/recommendation": str(rec)}},
            "spec": {
                "scaleTargetRef": {"apiVersion": target_api_version, "kind": target_kind,
                                   "name": target},
                "minReplicas": min_replicas, "maxReplicas": max_replicas,
                "metrics": [{"type": "Resource", "resource": {
                    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}],
            },
            "status": {"currentReplicas": max(min_replicas, min(rec, max_replicas)),
                       "desiredReplicas": max(min_replicas, min(rec, max_replicas)),
                       "observedGeneration": 1},
        }
        with self.lock:
            self.objects[("autoscaling/v2", HPA_PLURAL, namespace, name)] = obj
        return obj

    def get(self, plural: str, name: str, *, namespace: str = "default",
            api_version: str | None = None) -> dict:
        """A deep copy of a stored object (for assertions)."""
        api_version = api_version or ("autoscaling/v2" if plural == HPA_PLURAL else "apps/v1")
        with self.lock:
            return copy.deepcopy(self.objects[(api_version, plural, namespace, name)])

    # ---------------------------------------------------------------- hooks
    def forbid(self, method: str, plural: str, sub: str | None = None) -> None:
        """Answer ``method`` on ``plural`` (``/sub``) with 403 Forbidden."""
        with self.lock:
            self._forbidden.append(_Forbidden(method.upper(), plural, sub))

    def fail_next(self, status: int, *, count: int = 1, method: str | None = None,
                  path: str | None = None, message: str | None = None,
                  retry_after: int | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` whose method is
        ``method`` and whose path matches the regex ``path`` (None: any)."""
        with self.lock:
            self._faults.append(_Fault(status, method and method.upper(), path, count,
                                       message or f"injected {status}", retry_after))

    def concurrent_write(self, plural: str, name: str, *, namespace: str = "default",
                         api_version: str | None = None, times: int = 1) -> None:
        """Before each of the next ``times`` writes to the object, another
        writer updates it (a label changes, resourceVersion increases), so a
        write carrying the version the client read gets 409 Conflict."""
        api_version = api_version or ("autoscaling/v2" if plural == HPA_PLURAL else "apps/v1")
        with self.lock:
            self._concurrent[(api_version, plural, namespace, name)] = times

    def settle(self) -> None:
        """Let every controller catch up now (a controllable clock tick)."""
        with self.lock:
            for key in list(self._pending):
                self._reconcile(key)

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self.lock:
            return sum(1 for r in self.requests
                       if (method is None or r.method == method.upper()) and contains in r.path)

    # ----------------------------------------------------------- controllers
    def _schedule(self, key: tuple[str, str, str, str]) -> None:
        if self.settle_after <= 0 and not self.frozen:
            self._reconcile(key)
        else:
            self._pending[key] = _Pending(self.settle_after)

    def _observe_get(self, key: tuple[str, str, str, str]) -> None:
        pending = self._pending.get(key)
        if pending is None or self.frozen:
            return
        pending.gets_left -= 1
        if pending.gets_left <= 0:
            self._reconcile(key)

    def _reconcile(self, key: tuple[str, str, str, str]) -> None:
        if self.frozen:
            return
        self._pending.pop(key, None)
        obj = self.objects.get(key)
        if obj is None:
            return
        if key[1] == HPA_PLURAL:
            spec = obj["spec"]
            rec = int(obj["metadata"].get("annotations", {}).get(
                "fake.forescale.io/recommendation", spec.get("minReplicas", 1)))
            current = max(spec.get("minReplicas", 1), min(rec, spec["maxReplicas"]))
            obj["status"].update(currentReplicas=current, desiredReplicas=current,
                                 observedGeneration=obj["metadata"]["generation"])
            ref = spec["scaleTargetRef"]
            for tkey, target in self.objects.items():
                if (tkey[2] == key[2] and target["kind"] == ref["kind"]
                        and target["metadata"]["name"] == ref["name"]):
                    target["spec"]["replicas"] = current
                    target["status"].update(replicas=current, readyReplicas=current)
                    target["metadata"]["resourceVersion"] = self._next_rv()
        else:
            want = obj["spec"].get("replicas", 0)
            obj["status"].update(replicas=want, readyReplicas=want,
                                 observedGeneration=obj["metadata"]["generation"])
        obj["metadata"]["resourceVersion"] = self._next_rv()

    # -------------------------------------------------------------- dispatch
    def handle(self, method: str, raw_path: str, content_type: str | None,
               raw_body: bytes, audit_id: str = "",
               authorization: str | None = None) -> tuple[int, dict, dict[str, str]]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            return 400, status_body(400, "the request body is not valid JSON"), {}
        rec = Recorded(method, parts.path, query, content_type, body, audit_id=audit_id)
        with self.lock:
            self.requests.append(rec)
            if self.token is not None and authorization != f"Bearer {self.token}":
                rec.status = 401
                return 401, status_body(401, "Unauthorized"), {}
            code, payload, headers = self._dispatch(method, parts.path, query, content_type, body)
            rec.status = code
            return code, payload, headers

    def _dispatch(self, method, path, query, content_type, body):
        for fault in self._faults:
            if (fault.remaining > 0 and (fault.method in (None, method))
                    and (fault.path is None or re.search(fault.path, path))):
                fault.remaining -= 1
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
                return fault.status, status_body(fault.status, fault.message), headers
        m = _PATH.match(path)
        if not m:
            return 404, status_body(404, f"the server could not find the requested resource ({path})"), {}
        api_version = f"{m['group']}/{m['version']}"
        plural, ns, name, sub = m["plural"], m["ns"], m["name"], m["sub"]
        resource = f"{plural}/{sub}" if sub else plural
        group = m["group"]
        verb = {"GET": "get" if name else "list", "PUT": "update", "PATCH": "patch"}.get(method)
        if verb is None:
            return 405, status_body(405, f"{method} is not supported"), {}
        for f in self._forbidden:
            if f.method == method and f.plural == plural and f.sub == sub:
                what = f'{plural}.{group} "{name}"' if name else f"{plural}.{group}"
                return 403, status_body(
                    403,
                    f'{what} is forbidden: User "{self.user}" cannot {verb} resource '
                    f'"{resource}" in API group "{group}" in the namespace "{ns}"',
                    details={"name": name or "", "group": group, "kind": plural}), {}
        if name is None:
            if method != "GET":
                return 405, status_body(405, f"{method} on a collection is not supported"), {}
            items = [copy.deepcopy(o) for k, o in sorted(self.objects.items())
                     if k[0] == api_version and k[1] == plural and k[2] == ns]
            kind = items[0]["kind"] if items else _list_kind(plural)
            return 200, {"apiVersion": api_version, "kind": f"{kind}List",
                         "metadata": {"resourceVersion": str(self._rv)}, "items": items}, {}
        key = (api_version, plural, ns, name)
        obj = self.objects.get(key)
        if obj is None:
            return 404, status_body(
                404, f'{plural}.{group} "{name}" not found',
                details={"name": name, "group": group, "kind": plural}), {}
        if sub == "status":
            return 405, status_body(405, "status writes are not supported by the fake"), {}
        if method == "GET":
            self._observe_get(key)
            return 200, self._scale_of(obj) if sub == "scale" else copy.deepcopy(obj), {}
        dry_run = query.get("dryRun", [None])[0] == "All"
        if self._concurrent.get(key, 0) > 0 and not dry_run:
            self._concurrent[key] -= 1
            obj["metadata"].setdefault("labels", {})["concurrent-writer"] = obj["metadata"]["resourceVersion"]
            obj["metadata"]["resourceVersion"] = self._next_rv()
        if method == "PUT":
            return self._put(key, obj, sub, body, dry_run)
        return self._patch(key, obj, sub, content_type, body, dry_run)

    def _scale_of(self, obj: dict) -> dict:
        meta = obj["metadata"]
        return {
            "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                         "resourceVersion": meta["resourceVersion"]},
            "spec": {"replicas": obj["spec"].get("replicas", 0)},
            "status": {"replicas": obj["status"].get("replicas", 0),
                       "selector": ",".join(f"{k}={v}" for k, v in sorted(
                           obj["spec"].get("selector", {}).get("matchLabels", {}).items()))},
        }

    def _conflict(self, key) -> tuple[int, dict, dict]:
        group = key[0].split("/")[0]
        return 409, status_body(
            409,
            f'Operation cannot be fulfilled on {key[1]}.{group} "{key[3]}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            details={"name": key[3], "group": group, "kind": key[1]}), {}

    def _invalid(self, key, field_path: str, value: Any, why: str) -> tuple[int, dict, dict]:
        group = key[0].split("/")[0]
        kind = self.objects[key]["kind"]
        return 422, status_body(
            422, f'{kind}.{group} "{key[3]}" is invalid: {field_path}: Invalid value: {value}: {why}',
            details={"name": key[3], "group": group, "kind": kind,
                     "causes": [{"reason": "FieldValueInvalid", "message": f"Invalid value: {value}: {why}",
                                 "field": field_path}]}), {}

    def _put(self, key, obj, sub, body, dry_run):
        if not isinstance(body, dict):
            return 400, status_body(400, "the request body must be an object"), {}
        sent_rv = (body.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != obj["metadata"]["resourceVersion"]:
            return self._conflict(key)
        if sub == "scale":
            replicas = (body.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                return self._invalid(key, "spec.replicas", replicas, "must be greater than or equal to 0")
            new = copy.deepcopy(obj)
            new["spec"]["replicas"] = replicas
        else:
            new = copy.deepcopy(body)
            new["metadata"] = {**obj["metadata"], **{k: v for k, v in (body.get("metadata") or {}).items()
                                                      if k in ("labels", "annotations")}}
            new["status"] = obj["status"]
        return self._commit(key, obj, new, dry_run, scale=sub == "scale")

    def _patch(self, key, obj, sub, content_type, body, dry_run):
        ctype = (content_type or "").split(";")[0].strip()
        if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            return 415, status_body(415, f"the body of the request was in an unknown format - "
                                         f"accepted media types include: application/merge-patch+json, "
                                         f"application/strategic-merge-patch+json (got {ctype!r})"), {}
        if sub == "scale":
            return 405, status_body(405, "PATCH of scale is not implemented by the fake"), {}
        if not isinstance(body, dict):
            return 400, status_body(400, "a merge patch must be a JSON object"), {}
        sent_rv = (body.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != obj["metadata"]["resourceVersion"]:
            return self._conflict(key)
        new = merge_patch(obj, body)
        for frozen in ("uid", "name", "namespace", "generation"):
            new["metadata"][frozen] = obj["metadata"][frozen]
        new["status"] = obj["status"]
        return self._commit(key, obj, new, dry_run)

    def _commit(self, key, old, new, dry_run, scale=False):
        if key[1] == HPA_PLURAL:
            spec = new.get("spec", {})
            lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas")
            if not isinstance(lo, int) or lo < 1:
                return self._invalid(key, "spec.minReplicas", lo, "must be greater than or equal to 1")
            if not isinstance(hi, int) or hi < lo:
                return self._invalid(key, "spec.maxReplicas", hi,
                                     "must be greater than or equal to `minReplicas`")
        spec_changed = new.get("spec") != old.get("spec")
        if dry_run:
            return 200, self._scale_of(new) if scale else copy.deepcopy(new), {}
        if spec_changed:
            new["metadata"]["generation"] = old["metadata"]["generation"] + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[key] = new
        if spec_changed:
            self._schedule(key)
        return 200, self._scale_of(new) if scale else copy.deepcopy(new), {}


def _list_kind(plural: str) -> str:
    if plural in APPS_KINDS:
        return APPS_KINDS[plural]
    if plural == HPA_PLURAL:
        return "HorizontalPodAutoscaler"
    return plural.capitalize()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKube
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes; without this, Nagle's algorithm
    # and delayed ACKs add ~40 ms to every loopback request
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        audit_id = str(uuid.uuid4())
        code, payload, headers = self.fake.handle(self.command, self.path,
                                                  self.headers.get("Content-Type"), raw, audit_id,
                                                  self.headers.get("Authorization"))
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", audit_id)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _serve


# ------------------------------------------------------------ actuator builders
NS = "shop"


def writes(kube: FakeKube) -> int:
    """The writes (PUT and PATCH) the server received."""
    return kube.count("PUT") + kube.count("PATCH")


def frozen(kube: FakeKube):
    """Until ``finish()`` is called the simulated controllers do not run
    (the pods of a scale-up never come); returns ``finish``."""
    kube.frozen = True

    def finish():
        kube.frozen = False
        kube.settle()
    return finish


def scale_actuator(kube: FakeKube, clock, api_client=None, *, namespace: str = "shop", **cfg):
    """A ``kubernetes`` actuator on ``kube`` (object ``web`` unless told)."""
    from actuators.kubernetes import ScaleSubresourceActuator, ScaleSubresourceConfig

    cfg.setdefault("name", "web")
    return ScaleSubresourceActuator(
        ScaleSubresourceConfig(namespace=namespace, **cfg), target=f"{namespace}/{cfg['name']}",
        sleep=clock.sleep, monotonic=clock.monotonic,
        api_client=api_client if api_client is not None else kube.api_client())


def floor_actuator(kube: FakeKube, clock, *, namespace: str = "shop", **cfg):
    """A ``kubernetes-hpa-floor`` actuator on ``kube`` (HPA ``web`` unless told)."""
    from actuators.kubernetes import HpaFloorActuator, HpaFloorConfig

    cfg.setdefault("hpa", "web")
    cfg.setdefault("base_min_replicas", 1)
    return HpaFloorActuator(HpaFloorConfig(namespace=namespace, **cfg), target=f"{namespace}/web",
                            sleep=clock.sleep, monotonic=clock.monotonic, api_client=kube.api_client())
