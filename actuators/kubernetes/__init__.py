"""Kubernetes actuators, over the official ``kubernetes`` Python client.

``kubernetes`` (:class:`ScaleSubresourceActuator`, :mod:`.scale`)
    Sets ``spec.replicas`` through the ``/scale`` subresource of a Deployment,
    StatefulSet, ReplicaSet or custom resource.

``kubernetes-hpa-floor`` (:class:`HpaFloorActuator`, :mod:`.hpa_floor`)
    Raises an existing HPA's ``spec.minReplicas`` to the forecast.

Both annotate what they changed with the decision id
(``forescale.io/decision-id``, ``forescale.io/desired-replicas``) so
``kubectl describe`` shows which forescale decision set the value. Both
return once the API server accepted the write; the engine verifies on later
cycles with ``read()``.

The client is imported lazily (importing ``actuators`` imports no Kubernetes
code). An ``api_client=`` keyword injects a ready ``kubernetes.client.ApiClient``
(tests point one at a loopback fake); otherwise credentials come from the
``kubeconfig`` / ``context`` fields, from the pod's ServiceAccount
(``in_cluster: true``), or, with neither set, in-cluster first and then the
default kubeconfig (:mod:`.client`, which also holds the error mapping).
Missing or unusable credentials are one PermanentActuatorError, raised by
``validate()``.
"""

from .client import (
    ANNOTATION_BASE_MIN,
    ANNOTATION_DECISION,
    ANNOTATION_DESIRED,
    ANNOTATION_MIN,
    ANNOTATION_PREVIOUS,
    ANNOTATION_PREVIOUS_MIN,
    KubernetesConnection,
    build_api_client,
    map_api_error,
)
from .hpa_floor import HpaFloorActuator, HpaFloorConfig
from .scale import ScaleSubresourceActuator, ScaleSubresourceConfig

__all__ = ["ANNOTATION_BASE_MIN", "ANNOTATION_DECISION", "ANNOTATION_DESIRED", "ANNOTATION_MIN",
           "ANNOTATION_PREVIOUS", "ANNOTATION_PREVIOUS_MIN", "HpaFloorActuator", "HpaFloorConfig",
           "KubernetesConnection", "ScaleSubresourceActuator", "ScaleSubresourceConfig",
           "build_api_client", "map_api_error"]
