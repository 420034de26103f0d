"""``kubernetes``: set ``spec.replicas`` through the ``/scale`` subresource of a
Deployment, StatefulSet, ReplicaSet or custom resource, the one generic verb
the HPA controller itself uses (``pkg/controller/podautoscaler``).

The write is a PUT carrying the ``metadata.resourceVersion`` just read
(optimistic concurrency): a 409 Conflict means another writer got there
first, so the scale is read again and the write retried, bounded by
``retry_attempts``. If a HorizontalPodAutoscaler targets the same object, the
two would fight over ``spec.replicas``: ``on_hpa: refuse`` (the default)
refuses, ``on_hpa: warn`` logs a warning and proceeds.

``apply`` returns once the API server accepted the write; ``read`` reports
``count`` = spec.replicas and ``ready`` = the ready replicas, and the engine
verifies on its later cycles.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal, Sequence

from pydantic import field_validator

from engine.core.errors import ActuatorError, PermanentActuatorError
from engine.core.plugins import Capabilities
from engine.core.types import ActionPlan, ActuationResult, CapacityReading

from ..base import Monotonic, Sleep, accepted, require_non_negative, status_after_write
from .client import (
    ANNOTATION_DECISION,
    ANNOTATION_DESIRED,
    ANNOTATION_PREVIOUS,
    BUILTIN_KINDS,
    HPA,
    MERGE_PATCH,
    _CUSTOM_KIND,
    KubeActuator,
    KubernetesConnection,
    Op,
    as_int,
    group_of,
    log,
    object_name,
    resource_of,
)


class ScaleSubresourceConfig(KubernetesConnection):
    type: str = "kubernetes"
    #: Deployment, StatefulSet, ReplicaSet, or ``group/version/plural`` of a
    #: custom resource that has a scale subresource (e.g. ``argoproj.io/v1alpha1/rollouts``)
    kind: str = "Deployment"
    name: str
    #: what ``read()`` reports as ``ready``: ``status`` (the replicas the
    #: controller observes, ready ones for apps/v1 kinds with ``wait_ready``)
    #: or ``spec`` (none: ``ready`` None, spec.replicas taken as in service)
    read: Literal["status", "spec"] = "status"
    #: an HPA already targets the object: ``refuse`` or ``warn`` and proceed
    on_hpa: Literal["refuse", "warn"] = "refuse"
    #: apps/v1 kinds: ``ready`` is ``status.readyReplicas`` at the current
    #: ``observedGeneration`` (GET of the workload itself), not status.replicas
    wait_ready: bool = True

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        return object_name(v)

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


class ScaleSubresourceActuator(KubeActuator):
    """Set ``spec.replicas`` through the ``/scale`` subresource."""

    name: ClassVar[str] = "kubernetes"
    capabilities: ClassVar[Capabilities] = Capabilities()
    Config = ScaleSubresourceConfig
    config: ScaleSubresourceConfig

    def __init__(self, config: ScaleSubresourceConfig, *, target: str, ladder: Sequence[str] | None = None,
                 sleep: Sleep = time.sleep, monotonic: Monotonic = time.monotonic,
                 api_client: Any = None) -> None:
        super().__init__(config, target=target, ladder=ladder, sleep=sleep, monotonic=monotonic,
                         api_client=api_client)
        self.resource = resource_of(config.kind)
        self._kind: str | None = self.resource.kind
        r = self.resource.rbac
        self._needs = (f"get, update on {r('scale')}; get, patch on {r()}; "
                       f'list on horizontalpodautoscalers (API group "autoscaling")')

    # -------------------------------------------------------- raw calls
    def _op(self, verb: str, sub: str | None = None) -> Op:
        return Op(verb, self.resource, self.config.namespace, self.config.name, sub)

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
            # the body as a plain dict: the client serializes it as it is
            # (kubernetes 36 models have no from_dict any more)
            return k.call(self._op("update", "scale"), fn, c.name, c.namespace, body, **extra)
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
        body = k.call(Op("list", HPA, self.config.namespace),
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
                    and group_of(str(ref.get("apiVersion") or "")) in groups):
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
        probe = self._scale_body(meta, as_int((scale.get("spec") or {}).get("replicas")))
        self._retrying(lambda: self._put_scale(probe, dry_run=True))
        self._retrying(lambda: self._patch_object(
            {"metadata": {"annotations": {ANNOTATION_DECISION: "validate"}}}, dry_run=True))

    def read(self) -> CapacityReading:
        """``count`` = spec.replicas; ``ready`` = readyReplicas of an apps/v1
        workload (``wait_ready``), else status.replicas of the scale; none
        with ``read: spec``."""
        if self.config.read == "status" and self.resource.builtin and self.config.wait_ready:
            obj = self._retrying(self._get_object)
            meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
            caught_up = as_int(status.get("observedGeneration")) >= as_int(meta.get("generation"))
            return CapacityReading(
                count=as_int(spec.get("replicas")), ready=as_int(status.get("readyReplicas")),
                details={"status_replicas": as_int(status.get("replicas")), "caught_up": caught_up})
        scale = self._retrying(self._get_scale)
        count = as_int((scale.get("spec") or {}).get("replicas"))
        observed = as_int((scale.get("status") or {}).get("replicas"))
        return CapacityReading(count=count, ready=None if self.config.read == "spec" else observed,
                               details={"status_replicas": observed})

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        scale = self._retrying(self._get_scale)
        spec = as_int((scale.get("spec") or {}).get("replicas"))
        observed = as_int((scale.get("status") or {}).get("replicas"))
        cur = (observed if self.config.read == "status" else spec) if current is None else current
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

    def apply(self, desired: int, *, decision_id: str) -> ActuationResult:
        """Set spec.replicas to ``desired`` and return once the API server
        accepted it (the pods come on their own time).

        1. refuse (or warn) if an HPA targets the object;
        2. read the scale and PUT it with that resourceVersion, unless
           spec.replicas already equals ``desired``; a 409 reads again and
           retries (bounded by retry_attempts);
        3. annotate the object with the decision id (a merge patch; a failure
           here is logged and reported in ``details``, the scale change stands);
        4. read the status once: ``verified`` if all ``desired`` replicas
           already are ready (a transient failure of this read leaves the
           result unverified; the engine reads again next cycle).
        """
        require_non_negative(desired)
        t0 = self._monotonic()
        kube = self._kube
        kube.audit_ids.clear()
        hpas = self._check_hpa()
        before: dict[str, int] = {}

        def write() -> None:
            scale = self._get_scale()
            spec = as_int((scale.get("spec") or {}).get("replicas"))
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
        status = status_after_write(self.read, target=self.target)
        return accepted(desired, desired, status, elapsed=self._elapsed(t0),
                        request_ids=list(kube.audit_ids), details=details)


