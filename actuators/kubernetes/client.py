"""What both Kubernetes actuators share: the connection config, the
resources and their error mapping, the credentials, and the official
client's APIs behind :class:`actuators.base.PlatformCalls`.

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
from typing import Any, Callable, ClassVar, Sequence

from pydantic import field_validator, model_validator

from engine.core.errors import (
    ActuatorError,
    ConfigError,
    PermanentActuatorError,
    TransientActuatorError,
)

from ..base import ActuatorConfig, Monotonic, PlatformCalls, Sleep

log = logging.getLogger("actuators.kubernetes")

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



def object_name(v: str) -> str:
    if not _DNS_SUBDOMAIN.match(v) or len(v) > 253:
        raise ValueError(f"{v!r} is not a valid object name (DNS-1123 subdomain)")
    return v


# ------------------------------------------------------------------ the client
@dataclass(frozen=True)
class Resource:
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


def resource_of(kind: str) -> Resource:
    for k, plural in BUILTIN_KINDS.values():
        if kind == k:
            return Resource("apps", "v1", plural, k, True)
    m = _CUSTOM_KIND.match(kind)
    assert m, kind  # the config validator guarantees it
    return Resource(m["group"], m["version"], m["plural"], None, False)


HPA = Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True)


@dataclass(frozen=True)
class Op:
    """One API call, described for error messages."""

    verb: str  # get, list, update, patch (RBAC verbs)
    resource: Resource
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


def map_api_error(exc: Any, op: Op, needs: str) -> ActuatorError:
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
            # no retries inside urllib3: forescale's own (retry_attempts,
            # backoff) are the only ones, so they bound the attempts and
            # urllib3 logs no "Retrying (Retry(total=2 ..." per try
            configuration.retries = 0
            return client.ApiClient(configuration)
        except kconfig.ConfigException as exc:
            failures.append(f"{source}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a broken file; its text may hold a token
            failures.append(f"{source}: unusable configuration ({type(exc).__name__})")
    if cfg.kubeconfig or cfg.context:
        # the settings named already: say what to fix in them, not to set them
        fix = ("check actuator.kubeconfig" if cfg.kubeconfig else "check actuator.context") + \
            (" and actuator.context" if cfg.kubeconfig and cfg.context else "")
    else:
        fix = ("set actuator.kubeconfig (and actuator.context) to use a kubeconfig other than the default, "
               "or run in a pod with a ServiceAccount (actuator.in_cluster: true)")
    raise PermanentActuatorError(
        "no usable Kubernetes credentials: " + "; ".join(failures) + f". Tried {' then '.join(sources)}; {fix}.")


class _Kube:
    """The official client's APIs over one ApiClient. Every call returns the
    response body as a plain dict, records the ``Audit-Id`` and maps errors."""

    def __init__(self, api_client: Any, *, timeout: float, needs: str) -> None:
        from kubernetes import client

        self.apps = client.AppsV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.ApiException = client.exceptions.ApiException
        self.timeout = timeout
        self.needs = needs
        # audit ids of recent calls; apply() takes those made since it began
        self.audit_ids: collections.deque[str] = collections.deque(maxlen=256)

    def call(self, op: Op, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict:
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


class KubeActuator:
    """What both actuators share: the lazily built client, the retried call."""

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
        self._monotonic = monotonic
        self.calls = PlatformCalls(
            config, sleep=sleep,
            connect=lambda: _Kube(api_client if api_client is not None else build_api_client(config),
                                  timeout=config.request_timeout.total_seconds(), needs=self._needs))

    @property
    def _kube(self) -> "_Kube":
        return self.calls.client

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        """``fn`` (one call, or a read-modify-write) retried as a whole."""
        return self.calls.retried(fn)

    def _elapsed(self, t0: float) -> float:
        return self._monotonic() - t0


def group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def as_int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) else 0
