"""Kubernetes actuators, over the official ``kubernetes`` Python client.

``kubernetes`` (:class:`ScaleSubresourceActuator`)
    Sets ``spec.replicas`` through the ``/scale`` subresource of a Deployment,
    StatefulSet, ReplicaSet or custom resource, the one generic verb the HPA
    controller itself uses (``pkg/controller/podautoscaler``). The write is a
    PUT carrying the ``metadata.resourceVersion`` just read (optimistic
    concurrency): a 409 Conflict means another writer got there first, so the
    scale is read again and the write retried, bounded by ``retry_attempts``.
    If a HorizontalPodAutoscaler targets the same object, the two would fight
    over ``spec.replicas``: ``on_hpa: refuse`` (the default) refuses,
    ``on_hpa: warn`` logs a warning and proceeds.

``kubernetes-hpa-floor`` (:class:`HpaFloorActuator`)
    Leaves ``spec.replicas`` to an existing HPA and raises its
    ``spec.minReplicas`` to the forecast (never below ``base_min_replicas``,
    never above ``spec.maxReplicas``): the forecast provisions ahead, the HPA
    still reacts to load above it. ``apply(n)`` with ``n <= base_min_replicas``
    puts the floor back at the base, so a forecast that falls returns the HPA
    to its configured floor without any extra call; :meth:`HpaFloorActuator.restore`
    is for taking forescale off a target.

Both annotate what they changed with the decision id
(``forescale.io/decision-id``, ``forescale.io/desired-replicas``) so
``kubectl describe`` shows which forescale decision set the value.

The client is imported lazily (importing ``actuators`` imports no Kubernetes
code). An ``api_client=`` keyword injects a ready ``kubernetes.client.ApiClient``
(tests point one at a loopback fake); otherwise credentials come from the
``kubeconfig`` / ``context`` fields, from the pod's ServiceAccount
(``in_cluster: true``), or, with neither set, in-cluster first and then the
default kubeconfig. Missing or unusable credentials are one
PermanentActuatorError, raised by ``validate()``.

Error mapping (the request's ``Audit-Id`` response header, which API servers
set on every response, is carried as the error's ``request_ids``):

====================================  =========================================
409 Conflict                          TransientActuatorError: read again, retry
429, 5xx, connection errors, timeouts TransientActuatorError: retried
401, 403                              PermanentActuatorError, naming the verbs
                                      and resources the account needs
404                                   PermanentActuatorError naming
                                      kind/namespace/name
422 and other 4xx                     PermanentActuatorError with the server's
                                      message
spec above the HPA's maxReplicas      LimitExceeded (unless ``clamp_to_max``)
====================================  =========================================
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ClassVar, Literal, Sequence

from pydantic import Field, field_validator, model_validator

from engine.core.errors import (
    ActuatorError,
    ConfigError,
    LimitExceeded,
    PermanentActuatorError,
    TransientActuatorError,
)
from engine.core.types import ActionPlan, ActuationResult

from .base import ActuatorConfig, Monotonic, Sleep, require_non_negative, retrying, wait_until

log = logging.getLogger(__name__)

ANNOTATION_DECISION = "forescale.io/decision-id"
ANNOTATION_DESIRED = "forescale.io/desired-replicas"
ANNOTATION_PREVIOUS = "forescale.io/previous-replicas"
ANNOTATION_MIN = "forescale.io/min-replicas"
ANNOTATION_PREVIOUS_MIN = "forescale.io/previous-min-replicas"
ANNOTATION_BASE_MIN = "forescale.io/base-min-replicas"

MERGE_PATCH = "application/merge-patch+json"

#: the apps/v1 workloads with a scale subresource: lower-case name -> (Kind, plural)
BUILTIN_KINDS = {
    "deployment": ("Deployment", "deployments"),
    "statefulset": ("StatefulSet", "statefulsets"),
    "replicaset": ("ReplicaSet", "replicasets"),
}
_CUSTOM_KIND = re.compile(r"^(?P<group>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)/(?P<version>v[0-9a-z]+)/(?P<plural>[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
# DNS-1123 label (namespaces) and subdomain (object names)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# ---------------------------------------------------------------------- config
class KubernetesConnection(ActuatorConfig):
    """Where the API server is and who we are; shared by both actuators."""

    namespace: str = "default"
    #: path to a kubeconfig file (None: $KUBECONFIG or ~/.kube/config)
    kubeconfig: str | None = None
    #: kubeconfig context (None: the file's current-context)
    context: str | None = None
    #: True: only the pod's ServiceAccount; False: only kubeconfig;
    #: None: in-cluster first, then kubeconfig (kubeconfig only when
    #: ``kubeconfig`` or ``context`` is set)
    in_cluster: bool | None = None
    #: per-request timeout (connect + read)
    request_timeout: timedelta = timedelta(seconds=30)
    #: the fieldManager recorded in managedFields for our writes
    field_manager: str = "forescale"

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_label(cls, v: str) -> str:
        if not _DNS_LABEL.match(v) or len(v) > 63:
            raise ValueError(f"{v!r} is not a valid namespace name (DNS-1123 label)")
        return v

    @field_validator("request_timeout")
    @classmethod
    def _positive_timeout(cls, v: timedelta) -> timedelta:
        if v.total_seconds() <= 0:
            raise ValueError("must be positive")
        return v

    @model_validator(mode="after")
    def _one_credential_source(self) -> "KubernetesConnection":
        if self.in_cluster is True and (self.kubeconfig or self.context):
            raise ValueError("in_cluster: true cannot be combined with kubeconfig/context; "
                             "drop one of them")
        return self


def _object_name(v: str) -> str:
    if not _DNS_SUBDOMAIN.match(v) or len(v) > 253:
        raise ValueError(f"{v!r} is not a valid object name (DNS-1123 subdomain)")
    return v


class ScaleSubresourceConfig(KubernetesConnection):
    type: str = "kubernetes"
    #: Deployment, StatefulSet, ReplicaSet, or ``group/version/plural`` of a
    #: custom resource that has a scale subresource (e.g. ``argoproj.io/v1alpha1/rollouts``)
    kind: str = "Deployment"
    name: str
    #: what ``read()`` returns: ``status`` (replicas observed) or ``spec``
    read: Literal["status", "spec"] = "status"
    #: an HPA already targets the object: ``refuse`` or ``warn`` and proceed
    on_hpa: Literal["refuse", "warn"] = "refuse"
    #: apps/v1 kinds: verification also waits for ``status.readyReplicas``
    #: and ``status.observedGeneration`` (GET of the workload itself)
    wait_ready: bool = True

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        return _object_name(v)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        key = v.strip().lower().removesuffix("s") if "/" not in v else v
        if key in BUILTIN_KINDS:
            return BUILTIN_KINDS[key][0]
        if _CUSTOM_KIND.match(v):
            return v
        raise ValueError(
            f"{v!r} is neither Deployment, StatefulSet, ReplicaSet nor group/version/plural "
            "of a custom resource (e.g. argoproj.io/v1alpha1/rollouts)"
        )


class HpaFloorConfig(KubernetesConnection):
    type: str = "kubernetes-hpa-floor"
    #: name of the autoscaling/v2 HorizontalPodAutoscaler
    hpa: str
    #: the HPA's own floor, restored when the forecast is at or below it
    base_min_replicas: int = Field(ge=1)
    #: a forecast above the HPA's maxReplicas: True sets the floor to
    #: maxReplicas, False raises LimitExceeded
    clamp_to_max: bool = False

    @field_validator("hpa")
    @classmethod
    def _valid_hpa(cls, v: str) -> str:
        return _object_name(v)


# ------------------------------------------------------------------ the client
@dataclass(frozen=True)
class _Resource:
    """One API resource: the group/version/plural and (when known) Kind."""

    group: str
    version: str
    plural: str
    kind: str | None
    builtin: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def snake(self) -> str:
        """The Kind as the client's method names spell it (stateful_set)."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.kind or "").lower()

    def rbac(self, sub: str | None = None) -> str:
        name = f"{self.plural}/{sub}" if sub else self.plural
        return f'{name} (API group "{self.group}")'


def _resource_of(kind: str) -> _Resource:
    for k, plural in BUILTIN_KINDS.values():
        if kind == k:
            return _Resource("apps", "v1", plural, k, True)
    m = _CUSTOM_KIND.match(kind)
    assert m, kind  # the config validator guarantees it
    return _Resource(m["group"], m["version"], m["plural"], None, False)


HPA = _Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True)


@dataclass(frozen=True)
class _Op:
    """One API call, described for error messages."""

    verb: str  # get, list, update, patch (RBAC verbs)
    resource: _Resource
    namespace: str
    name: str | None = None
    sub: str | None = None

    @property
    def what(self) -> str:
        kind = self.resource.kind or self.resource.plural
        obj = f"{kind} {self.namespace}/{self.name}" if self.name else f"{kind} in namespace {self.namespace}"
        return f"{obj} ({self.resource.plural}/{self.sub})" if self.sub else obj


def _audit_id(headers: Any) -> str | None:
    if not headers:
        return None
    try:
        return headers.get("Audit-Id") or headers.get("audit-id")
    except AttributeError:
        return None


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            status = json.loads(body)
            if isinstance(status, dict) and status.get("message"):
                return str(status["message"])
        except ValueError:
            return str(body)[:500]
    return str(getattr(exc, "reason", "") or "")


def map_api_error(exc: Any, op: _Op, needs: str) -> ActuatorError:
    """Map a ``kubernetes.client.ApiException`` onto the forescale hierarchy.

    ``needs`` lists every permission the actuator needs, for 401/403."""
    code = int(getattr(exc, "status", 0) or 0)
    ids = tuple(i for i in (_audit_id(getattr(exc, "headers", None)),) if i)
    msg = _server_message(exc)
    if code == 409:
        return TransientActuatorError(
            f"conflict writing {op.what}: it was modified concurrently (stale resourceVersion); "
            f"reading it again: {msg}", request_ids=ids)
    if code == 429 or 500 <= code <= 599:
        return TransientActuatorError(
            f"{op.verb} {op.what}: API server answered {code} {getattr(exc, 'reason', '')}: {msg}",
            request_ids=ids)
    if code == 401:
        return PermanentActuatorError(
            f"unauthorized: the API server rejected the credentials while trying to {op.verb} "
            f"{op.what} (expired token or wrong kubeconfig user?): {msg}", request_ids=ids)
    if code == 403:
        return PermanentActuatorError(
            f"forbidden: the ServiceAccount (or kubeconfig user) needs verb {op.verb!r} on "
            f"{op.resource.rbac(op.sub)} in namespace {op.namespace!r}; this actuator needs {needs}. "
            f"Server said: {msg}", request_ids=ids)
    if code == 404:
        return PermanentActuatorError(
            f"not found: {op.what} does not exist (or the API {op.resource.api_version} "
            f"{op.resource.plural} is not served): {msg}", request_ids=ids)
    if code == 422:
        return PermanentActuatorError(f"invalid: the API server refused to {op.verb} {op.what}: {msg}",
                                      request_ids=ids)
    if code == 0:
        # the client raises status 0 for TLS failures: a certificate problem, not a blip
        return PermanentActuatorError(
            f"cannot talk to the API server to {op.verb} {op.what}: {getattr(exc, 'reason', exc)}",
            request_ids=ids)
    return PermanentActuatorError(f"{op.verb} {op.what}: API server answered {code}: {msg}",
                                  request_ids=ids)


def build_api_client(cfg: KubernetesConnection) -> Any:
    """An ApiClient from kubeconfig or the pod's ServiceAccount, per ``cfg``.

    Raises one PermanentActuatorError listing why each source failed. The
    messages never include file contents (a kubeconfig holds tokens)."""
    try:
        from kubernetes import client
        from kubernetes import config as kconfig
    except ImportError as exc:
        raise PermanentActuatorError(
            "the kubernetes actuators need the 'kubernetes' package, which is not installed; "
            "install it with: pip install 'forescale[k8s]'") from exc
    if cfg.in_cluster is True:
        sources = ["in-cluster"]
    elif cfg.in_cluster is False or cfg.kubeconfig or cfg.context:
        sources = ["kubeconfig"]
    else:
        sources = ["in-cluster", "kubeconfig"]
    failures = []
    for source in sources:
        configuration = client.Configuration()
        try:
            if source == "in-cluster":
                kconfig.load_incluster_config(client_configuration=configuration)
            else:
                if cfg.kubeconfig:
                    path = os.path.expanduser(cfg.kubeconfig)
                    if not os.path.isfile(path):
                        raise kconfig.ConfigException(f"kubeconfig file {path} does not exist")
                else:
                    # read $KUBECONFIG now, not when the client was imported; it
                    # may list several files (os.pathsep), which the client merges
                    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
                kconfig.load_kube_config(config_file=path, context=cfg.context,
                                         client_configuration=configuration, persist_config=False)
            return client.ApiClient(configuration)
        except kconfig.ConfigException as exc:
            failures.append(f"{source}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a broken file; its text may hold a token
            failures.append(f"{source}: unusable configuration ({type(exc).__name__})")
    where = (f"kubeconfig {cfg.kubeconfig}" if cfg.kubeconfig else "the default kubeconfig")
    raise PermanentActuatorError(
        "no usable Kubernetes credentials: " + "; ".join(failures)
        + f". Tried {' then '.join(sources)}; set actuator.kubeconfig/actuator.context to use "
        f"{where}, or run in a pod with a ServiceAccount (actuator.in_cluster: true).")


class _Kube:
    """The official client's APIs over one ApiClient. Every call returns the
    response body as a plain dict, records the ``Audit-Id`` and maps errors."""

    def __init__(self, api_client: Any, *, timeout: float, needs: str) -> None:
        from kubernetes import client

        self.apps = client.AppsV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.V1Scale = client.V1Scale
        self.ApiException = client.exceptions.ApiException
        self.timeout = timeout
        self.needs = needs
        # audit ids of recent calls; apply() takes those made since it began
        self.audit_ids: collections.deque[str] = collections.deque(maxlen=256)

    def call(self, op: _Op, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict:
        import urllib3

        try:
            resp = fn(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
        except self.ApiException as exc:
            err = map_api_error(exc, op, self.needs)
            self.audit_ids.extend(err.request_ids)
            raise err from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientActuatorError(
                f"{op.verb} {op.what}: cannot reach the API server: {type(exc).__name__}: {exc}") from exc
        audit = _audit_id(getattr(resp, "headers", None))
        if audit:
            self.audit_ids.append(audit)
        try:
            data = json.loads(resp.data or b"{}")
        except ValueError as exc:
            raise TransientActuatorError(f"{op.verb} {op.what}: the API server sent a body that is "
                                         "not JSON", request_ids=(audit,) if audit else ()) from exc
        return data if isinstance(data, dict) else {}


class _KubeActuator:
    """What both actuators share: lazy client, retries, verification."""

    name: ClassVar[str]
    config: KubernetesConnection
    #: every permission the actuator needs, quoted in 401/403 errors
    _needs: str

    def __init__(self, config: KubernetesConnection, *, target: str, ladder: Sequence[str] | None = None,
                 sleep: Sleep = time.sleep, monotonic: Monotonic = time.monotonic,
                 api_client: Any = None) -> None:
        if ladder:
            raise ConfigError(f"the {self.name} actuator scales replicas; it takes no instance-type "
                              "ladder", path="ladder")
        self.config = config
        self.target = target
        self._sleep = sleep
        self._monotonic = monotonic
        self._api_client = api_client
        self._kube_client: _Kube | None = None

    @property
    def _kube(self) -> _Kube:
        if self._kube_client is None:
            api_client = self._api_client if self._api_client is not None else build_api_client(self.config)
            self._kube_client = _Kube(api_client, timeout=self.config.request_timeout.total_seconds(),
                                      needs=self._needs)
        return self._kube_client

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        return retrying(fn, attempts=self.config.retry_attempts,
                        max_wait=self.config.retry_max_wait.total_seconds(), sleep=self._sleep)

    def _verify(self, check: Callable[[], tuple[bool, int]], initial: int) -> tuple[bool, int]:
        last = {"value": initial}

        def tolerant() -> tuple[bool, int]:
            # a blip while polling is not a failed apply: poll again
            try:
                done, value = check()
            except TransientActuatorError as exc:
                log.info("%s: verification poll failed, polling again: %s", self.target, exc)
                return False, last["value"]
            last["value"] = value
            return done, value

        done, value, _ = wait_until(tolerant, timeout=self.config.verify_timeout.total_seconds(),
                                    interval=self.config.poll_interval.total_seconds(),
                                    sleep=self._sleep, monotonic=self._monotonic)
        return done, value


def _group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def _int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) else 0


# ------------------------------------------------------- scale subresource
class ScaleSubresourceActuator(_KubeActuator):
    """Set ``spec.replicas`` through the ``/scale`` subresource."""

    name: ClassVar[str] = "kubernetes"
    Config = ScaleSubresourceConfig
    config: ScaleSubresourceConfig

    def __init__(self, config: ScaleSubresourceConfig, *, target: str, ladder: Sequence[str] | None = None,
                 sleep: Sleep = time.sleep, monotonic: Monotonic = time.monotonic,
                 api_client: Any = None) -> None:
        super().__init__(config, target=target, ladder=ladder, sleep=sleep, monotonic=monotonic,
                         api_client=api_client)
        self.resource = _resource_of(config.kind)
        self._kind: str | None = self.resource.kind
        r = self.resource.rbac
        self._needs = (f"get, update on {r('scale')}; get, patch on {r()}; "
                       f'list on horizontalpodautoscalers (API group "autoscaling")')

    # -------------------------------------------------------- raw calls
    def _op(self, verb: str, sub: str | None = None) -> _Op:
        return _Op(verb, self.resource, self.config.namespace, self.config.name, sub)

    def _get_scale(self) -> dict:
        c, k, r = self.config, self._kube, self.resource
        if r.builtin:
            fn = getattr(k.apps, f"read_namespaced_{r.snake}_scale")
            return k.call(self._op("get", "scale"), fn, c.name, c.namespace)
        return k.call(self._op("get", "scale"), k.custom.get_namespaced_custom_object_scale,
                      r.group, r.version, c.namespace, r.plural, c.name)

    def _put_scale(self, body: dict, *, dry_run: bool = False) -> dict:
        c, k, r = self.config, self._kube, self.resource
        extra: dict[str, Any] = {"field_manager": c.field_manager}
        if dry_run:
            extra["dry_run"] = "All"
        if r.builtin:
            fn = getattr(k.apps, f"replace_namespaced_{r.snake}_scale")
            return k.call(self._op("update", "scale"), fn, c.name, c.namespace,
                          k.V1Scale.from_dict(body), **extra)
        return k.call(self._op("update", "scale"), k.custom.replace_namespaced_custom_object_scale,
                      r.group, r.version, c.namespace, r.plural, c.name, body, **extra)

    def _get_object(self) -> dict:
        c, k, r = self.config, self._kube, self.resource
        if r.builtin:
            fn = getattr(k.apps, f"read_namespaced_{r.snake}")
            return k.call(self._op("get"), fn, c.name, c.namespace)
        return k.call(self._op("get"), k.custom.get_namespaced_custom_object,
                      r.group, r.version, c.namespace, r.plural, c.name)

    def _patch_object(self, patch: dict, *, dry_run: bool = False) -> dict:
        c, k, r = self.config, self._kube, self.resource
        extra: dict[str, Any] = {"field_manager": c.field_manager, "_content_type": MERGE_PATCH}
        if dry_run:
            extra["dry_run"] = "All"
        if r.builtin:
            fn = getattr(k.apps, f"patch_namespaced_{r.snake}")
            return k.call(self._op("patch"), fn, c.name, c.namespace, patch, **extra)
        return k.call(self._op("patch"), k.custom.patch_namespaced_custom_object,
                      r.group, r.version, c.namespace, r.plural, c.name, patch, **extra)

    def _list_hpas(self) -> list[dict]:
        k = self._kube
        body = k.call(_Op("list", HPA, self.config.namespace),
                      k.autoscaling.list_namespaced_horizontal_pod_autoscaler, self.config.namespace)
        return [h for h in body.get("items") or [] if isinstance(h, dict)]

    # ------------------------------------------------------------ logic
    @property
    def _label(self) -> str:
        return f"{self._kind or self.resource.plural} {self.config.namespace}/{self.config.name}"

    def _target_kind(self) -> str:
        """The object's Kind (for custom resources: read once from the object)."""
        if self._kind is None:
            obj = self._retrying(self._get_object)
            self._kind = str(obj.get("kind") or "")
        return self._kind

    def competing_hpas(self) -> list[str]:
        """Names of the HPAs in the namespace whose scaleTargetRef is our object."""
        kind = self._target_kind()
        groups = {self.resource.group} | ({"extensions"} if self.resource.builtin else set())
        found = []
        for hpa in self._retrying(self._list_hpas):
            ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            if (ref.get("kind") == kind and ref.get("name") == self.config.name
                    and _group_of(str(ref.get("apiVersion") or "")) in groups):
                found.append(str((hpa.get("metadata") or {}).get("name")))
        return found

    def _check_hpa(self) -> list[str]:
        hpas = self.competing_hpas()
        if not hpas:
            return hpas
        names = ", ".join(f"HorizontalPodAutoscaler {self.config.namespace}/{h}" for h in hpas)
        if self.config.on_hpa == "refuse":
            raise PermanentActuatorError(
                f"{names} already scales {self._label}; two controllers writing spec.replicas "
                "undo each other. Use the kubernetes-hpa-floor actuator to raise the HPA's "
                "minReplicas instead, delete the HPA, or set actuator.on_hpa: warn")
        log.warning("%s: %s also scales %s; proceeding because on_hpa is 'warn' (the HPA may "
                    "undo this change)", self.target, names, self._label)
        return hpas

    def validate(self) -> None:
        """The credentials work, the object and its scale exist, no HPA
        competes (per ``on_hpa``), and the account may update the scale and
        patch the object (checked with server-side dry runs)."""
        scale = self._retrying(self._get_scale)
        self._retrying(self._get_object)
        self._check_hpa()
        meta = scale.get("metadata") or {}
        probe = self._scale_body(meta, _int((scale.get("spec") or {}).get("replicas")))
        self._retrying(lambda: self._put_scale(probe, dry_run=True))
        self._retrying(lambda: self._patch_object(
            {"metadata": {"annotations": {ANNOTATION_DECISION: "validate"}}}, dry_run=True))

    def read(self) -> int:
        scale = self._retrying(self._get_scale)
        part = scale.get(self.config.read) or {}
        return _int(part.get("replicas"))

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        scale = self._retrying(self._get_scale)
        spec = _int((scale.get("spec") or {}).get("replicas"))
        observed = _int((scale.get("status") or {}).get("replicas"))
        cur = _int((scale.get(self.config.read) or {}).get("replicas")) if current is None else current
        hpas = self.competing_hpas()
        summary = (f"kubernetes: set {self._label} spec.replicas {spec} -> {desired} "
                   f"(PUT {self.resource.api_version} {self.resource.plural}/{self.config.name}/scale)")
        if hpas:
            summary += (f"; HPA {', '.join(hpas)} also targets it (on_hpa: {self.config.on_hpa}"
                        f"{', apply will refuse' if self.config.on_hpa == 'refuse' else ''})")
        return ActionPlan(
            actuator=self.name, target=self.target, from_capacity=cur, to_capacity=desired,
            summary=summary,
            details={"kind": self._kind or self.config.kind, "api_version": self.resource.api_version,
                     "namespace": self.config.namespace, "name": self.config.name,
                     "spec_replicas": spec, "status_replicas": observed, "hpas": hpas},
        )

    def _scale_body(self, meta: dict, replicas: int) -> dict:
        return {
            "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": self.config.name, "namespace": self.config.namespace,
                         "resourceVersion": meta.get("resourceVersion")},
            "spec": {"replicas": replicas},
        }

    def _observe(self, desired: int) -> tuple[bool, int]:
        if self.resource.builtin and self.config.wait_ready:
            obj = self._get_object()
            meta, status = obj.get("metadata") or {}, obj.get("status") or {}
            replicas, ready = _int(status.get("replicas")), _int(status.get("readyReplicas"))
            caught_up = _int(status.get("observedGeneration")) >= _int(meta.get("generation"))
            return caught_up and replicas == desired and ready >= desired, ready
        observed = _int((self._get_scale().get("status") or {}).get("replicas"))
        return observed == desired, observed

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        """Set spec.replicas to ``desired`` and wait until it is observed.

        1. refuse (or warn) if an HPA targets the object;
        2. read the scale and PUT it with that resourceVersion, unless
           spec.replicas already equals ``desired``; a 409 reads again and
           retries (bounded by retry_attempts);
        3. annotate the object with the decision id (a merge patch; a failure
           here is logged and reported in ``details``, the scale change stands);
        4. poll until status.replicas == desired (and, for apps/v1 kinds with
           ``wait_ready``, readyReplicas >= desired at the new generation) or
           verify_timeout passes; ``observed`` is readyReplicas in that case.
        """
        require_non_negative(desired)
        t0 = self._monotonic()
        kube = self._kube
        kube.audit_ids.clear()
        hpas = self._check_hpa()
        before: dict[str, int] = {}

        def write() -> None:
            scale = self._get_scale()
            spec = _int((scale.get("spec") or {}).get("replicas"))
            before.setdefault("spec", spec)
            if spec == desired:
                return
            self._put_scale(self._scale_body(scale.get("metadata") or {}, desired))
            before["changed_from"] = spec

        self._retrying(write)
        changed = "changed_from" in before
        annotations = {ANNOTATION_DECISION: decision_id, ANNOTATION_DESIRED: str(desired)}
        if changed:
            annotations[ANNOTATION_PREVIOUS] = str(before["changed_from"])
            log.info("%s: set %s spec.replicas %d -> %d (decision %s)", self.target, self._label,
                     before["changed_from"], desired, decision_id)
        details: dict[str, Any] = {"kind": self._kind or self.config.kind,
                                   "namespace": self.config.namespace, "name": self.config.name,
                                   "previous_spec_replicas": before.get("spec"), "changed": changed,
                                   "hpas": hpas}
        try:
            self._retrying(lambda: self._patch_object({"metadata": {"annotations": annotations}}))
        except ActuatorError as exc:
            # the replicas are set; losing the audit annotation must not make
            # the engine believe the change failed
            log.warning("%s: spec.replicas is %d but annotating %s failed: %s",
                        self.target, desired, self._label, exc)
            details["annotation_error"] = str(exc)
        done, observed = self._verify(lambda: self._observe(desired), before.get("spec", 0))
        return ActuationResult(
            requested=desired, observed=observed, verified=done,
            elapsed=timedelta(seconds=max(0.0, self._monotonic() - t0)),
            request_ids=tuple(kube.audit_ids), details=details,
        )


# ------------------------------------------------------------- HPA floor
class HpaFloorActuator(_KubeActuator):
    """Raise an HPA's ``spec.minReplicas`` to the forecast; the HPA does the rest."""

    name: ClassVar[str] = "kubernetes-hpa-floor"
    Config = HpaFloorConfig
    config: HpaFloorConfig
    _needs = 'get, patch on horizontalpodautoscalers (API group "autoscaling")'

    def _op(self, verb: str) -> _Op:
        return _Op(verb, HPA, self.config.namespace, self.config.hpa)

    def _get(self) -> dict:
        k, c = self._kube, self.config
        return k.call(self._op("get"), k.autoscaling.read_namespaced_horizontal_pod_autoscaler,
                      c.hpa, c.namespace)

    def _patch(self, patch: dict, *, dry_run: bool = False) -> dict:
        k, c = self._kube, self.config
        extra: dict[str, Any] = {"field_manager": c.field_manager, "_content_type": MERGE_PATCH}
        if dry_run:
            extra["dry_run"] = "All"
        return k.call(self._op("patch"), k.autoscaling.patch_namespaced_horizontal_pod_autoscaler,
                      c.hpa, c.namespace, patch, **extra)

    @property
    def _label(self) -> str:
        return f"HorizontalPodAutoscaler {self.config.namespace}/{self.config.hpa}"

    def floor_for(self, desired: int, max_replicas: int) -> tuple[int, str]:
        """The minReplicas for ``desired``: (value, reason code)."""
        base = self.config.base_min_replicas
        if desired <= base:
            return base, "BaseFloor"
        if desired > max_replicas:
            if not self.config.clamp_to_max:
                raise LimitExceeded(
                    f"{desired} replicas exceeds spec.maxReplicas ({max_replicas}) of {self._label}; "
                    "raise maxReplicas or set actuator.clamp_to_max: true")
            return max_replicas, "TooManyReplicas"
        return desired, "ForecastFloor"

    def validate(self) -> None:
        """The HPA exists, base_min_replicas fits under its maxReplicas, and
        the account may patch it (a server-side dry run)."""
        hpa = self._retrying(self._get)
        spec = hpa.get("spec") or {}
        max_replicas = _int(spec.get("maxReplicas"))
        if self.config.base_min_replicas > max_replicas:
            raise LimitExceeded(
                f"actuator.base_min_replicas ({self.config.base_min_replicas}) is above "
                f"spec.maxReplicas ({max_replicas}) of {self._label}")
        probe = {"spec": {"minReplicas": _int(spec.get("minReplicas")) or 1}}
        self._retrying(lambda: self._patch(probe, dry_run=True))

    def read(self) -> int:
        hpa = self._retrying(self._get)
        return _int((hpa.get("status") or {}).get("currentReplicas"))

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        hpa = self._retrying(self._get)
        spec, status = hpa.get("spec") or {}, hpa.get("status") or {}
        min_now, max_replicas = _int(spec.get("minReplicas")) or 1, _int(spec.get("maxReplicas"))
        cur = _int(status.get("currentReplicas")) if current is None else current
        try:
            floor, reason = self.floor_for(desired, max_replicas)
            summary = (f"kubernetes-hpa-floor: set {self._label} spec.minReplicas {min_now} -> {floor} "
                       f"({reason}; base {self.config.base_min_replicas}, max {max_replicas})")
        except LimitExceeded as exc:
            floor, reason = None, "TooManyReplicas"
            summary = f"kubernetes-hpa-floor: would refuse: {exc}"
        return ActionPlan(
            actuator=self.name, target=self.target, from_capacity=cur, to_capacity=desired,
            summary=summary,
            details={"hpa": self.config.hpa, "namespace": self.config.namespace,
                     "min_replicas": min_now, "new_min_replicas": floor, "reason": reason,
                     "max_replicas": max_replicas, "base_min_replicas": self.config.base_min_replicas},
        )

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        """Set the HPA's minReplicas to ``max(desired, base_min_replicas)``
        (LimitExceeded above maxReplicas unless ``clamp_to_max``), then wait
        until status.currentReplicas >= minReplicas.

        The patch is a merge patch that carries the resourceVersion just read
        (the server answers 409 if the HPA changed since; it is read again and
        the patch retried) and the decision annotations, in one write.
        ``observed`` is currentReplicas, which may exceed ``desired`` when the
        HPA's metrics ask for more: the floor is a floor.
        """
        require_non_negative(desired)
        t0 = self._monotonic()
        kube = self._kube
        kube.audit_ids.clear()
        outcome: dict[str, Any] = {}

        def write() -> None:
            hpa = self._get()
            meta, spec = hpa.get("metadata") or {}, hpa.get("spec") or {}
            min_now = _int(spec.get("minReplicas")) or 1  # the API default
            floor, reason = self.floor_for(desired, _int(spec.get("maxReplicas")))
            outcome.setdefault("previous_min_replicas", min_now)
            outcome.update(min_replicas=floor, reason=reason,
                           current=_int((hpa.get("status") or {}).get("currentReplicas")))
            annotations = meta.get("annotations") or {}
            if min_now == floor and annotations.get(ANNOTATION_DECISION) == decision_id:
                return
            new_annotations = {ANNOTATION_DECISION: decision_id, ANNOTATION_DESIRED: str(desired),
                               ANNOTATION_MIN: str(floor),
                               ANNOTATION_BASE_MIN: str(self.config.base_min_replicas)}
            if min_now != floor:
                new_annotations[ANNOTATION_PREVIOUS_MIN] = str(min_now)
            self._patch({"metadata": {"resourceVersion": meta.get("resourceVersion"),
                                      "annotations": new_annotations},
                         "spec": {"minReplicas": floor}})
            outcome["changed"] = min_now != floor

        self._retrying(write)
        floor = outcome["min_replicas"]
        if outcome.get("changed"):
            log.info("%s: set %s spec.minReplicas %d -> %d (%s, decision %s)", self.target, self._label,
                     outcome["previous_min_replicas"], floor, outcome["reason"], decision_id)

        def check() -> tuple[bool, int]:
            hpa = self._get()
            meta, status = hpa.get("metadata") or {}, hpa.get("status") or {}
            current = _int(status.get("currentReplicas"))
            # an HPA that has not yet observed our spec change may report the old count
            seen = ("observedGeneration" not in status
                    or _int(status.get("observedGeneration")) >= _int(meta.get("generation")))
            return seen and current >= floor, current

        done, observed = self._verify(check, outcome["current"])
        return ActuationResult(
            requested=desired, observed=observed, verified=done,
            elapsed=timedelta(seconds=max(0.0, self._monotonic() - t0)),
            request_ids=tuple(kube.audit_ids),
            details={"hpa": self.config.hpa, "namespace": self.config.namespace,
                     "min_replicas": floor, "previous_min_replicas": outcome["previous_min_replicas"],
                     "reason": outcome["reason"], "changed": bool(outcome.get("changed"))},
        )

    def restore(self, *, decision_id: str = "forescale-restore") -> ActuationResult:
        """Put minReplicas back to ``base_min_replicas``.

        The engine need not call this in normal operation: ``apply(n)`` with
        ``n <= base_min_replicas`` does the same. Call it when forescale stops
        managing the target (target removed from the config, ``forescale
        restore``), so the HPA is left with its own floor."""
        return self.apply(self.config.base_min_replicas, decision_id=decision_id)
