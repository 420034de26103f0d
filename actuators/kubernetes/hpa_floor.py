"""``kubernetes-hpa-floor``: leave ``spec.replicas`` to an existing HPA and
raise its ``spec.minReplicas`` to the forecast (never below
``base_min_replicas``, never above ``spec.maxReplicas``): the forecast
provisions ahead, the HPA still reacts to load above it. ``apply(n)`` with
``n <= base_min_replicas`` puts the floor back at the base, so a forecast
that falls returns the HPA to its configured floor without any extra call;
:meth:`HpaFloorActuator.restore` is for taking forescale off a target.

``apply`` returns once the API server accepted the patch; ``read`` reports
``count`` = minReplicas and ``ready`` = the replicas running up to it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from pydantic import Field, field_validator

from engine.core.errors import LimitExceeded
from engine.core.plugins import Capabilities
from engine.core.types import ActionPlan, ActuationResult, CapacityReading

from ..base import require_non_negative, status_after_write
from .client import (
    ANNOTATION_BASE_MIN,
    ANNOTATION_DECISION,
    ANNOTATION_DESIRED,
    ANNOTATION_MIN,
    ANNOTATION_PREVIOUS_MIN,
    HPA,
    MERGE_PATCH,
    KubeActuator,
    KubernetesConnection,
    Op,
    as_int,
    log,
    object_name,
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
        return object_name(v)


class HpaFloorActuator(KubeActuator):
    """Raise an HPA's ``spec.minReplicas`` to the forecast; the HPA does the rest."""

    name: ClassVar[str] = "kubernetes-hpa-floor"
    capabilities: ClassVar[Capabilities] = Capabilities()
    Config = HpaFloorConfig
    config: HpaFloorConfig
    _needs = 'get, patch on horizontalpodautoscalers (API group "autoscaling")'

    def _op(self, verb: str) -> Op:
        return Op(verb, HPA, self.config.namespace, self.config.hpa)

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
        max_replicas = as_int(spec.get("maxReplicas"))
        if self.config.base_min_replicas > max_replicas:
            raise LimitExceeded(
                f"actuator.base_min_replicas ({self.config.base_min_replicas}) is above "
                f"spec.maxReplicas ({max_replicas}) of {self._label}")
        probe = {"spec": {"minReplicas": as_int(spec.get("minReplicas")) or 1}}
        self._retrying(lambda: self._patch(probe, dry_run=True))

    def read(self) -> CapacityReading:
        """``count`` = spec.minReplicas (the floor forescale sets), ``ready``
        = the replicas running up to that floor (``status.currentReplicas``,
        which the HPA's own metrics may take above it, is in ``details``)."""
        return self._reading(self._retrying(self._get))

    @staticmethod
    def _reading(hpa: dict) -> CapacityReading:
        meta, spec, status = hpa.get("metadata") or {}, hpa.get("spec") or {}, hpa.get("status") or {}
        floor = as_int(spec.get("minReplicas")) or 1  # the API default
        current = as_int(status.get("currentReplicas"))
        # an HPA that has not yet observed our spec change may report the old count
        seen = ("observedGeneration" not in status
                or as_int(status.get("observedGeneration")) >= as_int(meta.get("generation")))
        return CapacityReading(count=floor, ready=min(current, floor),
                               details={"current_replicas": current, "hpa_caught_up": seen})

    def describe(self, desired: int, current: int | None = None) -> ActionPlan:
        hpa = self._retrying(self._get)
        spec, status = hpa.get("spec") or {}, hpa.get("status") or {}
        min_now, max_replicas = as_int(spec.get("minReplicas")) or 1, as_int(spec.get("maxReplicas"))
        cur = as_int(status.get("currentReplicas")) if current is None else current
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
        (LimitExceeded above maxReplicas unless ``clamp_to_max``) and return
        once the API server accepted the patch; ``verified`` when the HPA
        already observed it and runs at least minReplicas.

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
            min_now = as_int(spec.get("minReplicas")) or 1  # the API default
            floor, reason = self.floor_for(desired, as_int(spec.get("maxReplicas")))
            outcome.setdefault("previous_min_replicas", min_now)
            outcome.update(min_replicas=floor, reason=reason,
                           current=as_int((hpa.get("status") or {}).get("currentReplicas")))
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

        status = status_after_write(self.read, target=self.target)
        current = outcome["current"] if status is None else status.details["current_replicas"]
        seen = status is not None and status.details["hpa_caught_up"] and status.count == floor
        return ActuationResult(
            requested=desired, observed=current, verified=bool(seen and current >= floor),
            elapsed=timedelta(seconds=max(0.0, self._elapsed(t0))),
            request_ids=tuple(dict.fromkeys(kube.audit_ids)),
            details={"hpa": self.config.hpa, "namespace": self.config.namespace,
                     "status": "read" if status is not None else "unread", "target": floor,
                     "min_replicas": floor,
                     "previous_min_replicas": outcome["previous_min_replicas"],
                     "reason": outcome["reason"], "changed": bool(outcome.get("changed"))},
        )

    def restore(self, *, decision_id: str = "forescale-restore") -> ActuationResult:
        """Put minReplicas back to ``base_min_replicas``.

        The engine need not call this in normal operation: ``apply(n)`` with
        ``n <= base_min_replicas`` does the same. Call it when forescale stops
        managing the target (target removed from the config, ``forescale
        restore``), so the HPA is left with its own floor."""
        return self.apply(self.config.base_min_replicas, decision_id=decision_id)
