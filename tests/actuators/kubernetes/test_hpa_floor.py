"""``kubernetes-hpa-floor`` (actuators/kubernetes/hpa_floor.py) against
tests/support/fake_kube.py, driven by the official ``kubernetes`` client over
HTTP on 127.0.0.1."""

from __future__ import annotations

import pytest

from actuators.kubernetes import ANNOTATION_DECISION, ANNOTATION_MIN
from engine.core.errors import LimitExceeded, PermanentActuatorError

from tests.support.actuator_contract import ActuatorContract, settled_at
from tests.support.fake_kube import NS, floor_actuator, frozen, writes


# ------------------------------------------------------------------ contract
class TestHpaFloorContract(ActuatorContract):
    initial_capacity = 1  # count is minReplicas, the floor forescale sets
    capacities = (4, 3)

    @pytest.fixture
    def actuator(self, kube, clock):
        kube.add_workload("web", namespace=NS, replicas=2)
        kube.add_hpa("web", namespace=NS, target="web", min_replicas=1, max_replicas=10,
                     recommendation=2)
        return floor_actuator(kube, clock)

    @pytest.fixture
    def slow_platform(self, actuator, kube):
        return actuator, frozen(kube)


# ------------------------------------------------------------------ HPA floor
@pytest.fixture
def hpa(kube):
    kube.add_workload("web", namespace=NS, replicas=2)
    return kube.add_hpa("web", namespace=NS, target="web", min_replicas=2, max_replicas=10,
                        recommendation=3)


def test_floor_raises_min_replicas_and_the_hpa_follows(kube, clock, hpa):
    act = floor_actuator(kube, clock, base_min_replicas=2)
    result = act.apply(7, decision_id="d-floor")
    got = kube.get("horizontalpodautoscalers", "web", namespace=NS)
    assert got["spec"]["minReplicas"] == 7
    assert got["metadata"]["annotations"][ANNOTATION_DECISION] == "d-floor"
    assert got["metadata"]["annotations"][ANNOTATION_MIN] == "7"
    assert result.verified and result.observed == 7
    assert kube.get("deployments", "web", namespace=NS)["spec"]["replicas"] == 7
    patch = next(r for r in kube.requests if r.method == "PATCH")
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body["metadata"]["resourceVersion"] == hpa["metadata"]["resourceVersion"]


def test_floor_returns_to_base_when_the_forecast_falls(kube, clock, hpa):
    act = floor_actuator(kube, clock, base_min_replicas=2)
    act.apply(7, decision_id="d-up")
    result = act.apply(1, decision_id="d-down")
    assert kube.get("horizontalpodautoscalers", "web", namespace=NS)["spec"]["minReplicas"] == 2
    assert result.details["reason"] == "BaseFloor"
    # asked for 1, floored at the base: the count to verify against is 2
    assert result.details["target"] == 2 and settled_at(act.read(), 2)
    # the HPA's own metrics ask for 3: the floor is a floor
    assert result.observed == 3 and result.verified


def test_restore_sets_the_base_floor(kube, clock, hpa):
    act = floor_actuator(kube, clock, base_min_replicas=2)
    act.apply(9, decision_id="d-up")
    result = act.restore()
    got = kube.get("horizontalpodautoscalers", "web", namespace=NS)
    assert got["spec"]["minReplicas"] == 2
    assert got["metadata"]["annotations"][ANNOTATION_DECISION] == "forescale-restore"
    assert result.verified


def test_floor_above_max_replicas_is_limit_exceeded_and_writes_nothing(kube, clock, hpa):
    with pytest.raises(LimitExceeded, match=r"maxReplicas \(10\)"):
        floor_actuator(kube, clock).apply(11, decision_id="d-max")
    assert writes(kube) == 0
    result = floor_actuator(kube, clock, clamp_to_max=True).apply(11, decision_id="d-clamp")
    assert kube.get("horizontalpodautoscalers", "web", namespace=NS)["spec"]["minReplicas"] == 10
    assert result.details["reason"] == "TooManyReplicas" and result.observed == 10


def test_floor_conflict_is_retried_with_the_new_resource_version(kube, clock, hpa):
    kube.concurrent_write("horizontalpodautoscalers", "web", namespace=NS)
    result = floor_actuator(kube, clock).apply(5, decision_id="d-409")
    patches = [r for r in kube.requests if r.method == "PATCH"]
    assert [p.status for p in patches] == [409, 200]
    assert int(patches[1].body["metadata"]["resourceVersion"]) > int(patches[0].body["metadata"]["resourceVersion"])
    assert result.verified and result.observed == 5


def test_floor_validate_checks_the_hpa(kube, clock, hpa):
    floor_actuator(kube, clock, base_min_replicas=2).validate()
    assert writes(kube) == kube.count("PATCH") == 1  # the dry run
    assert kube.get("horizontalpodautoscalers", "web", namespace=NS)["metadata"]["resourceVersion"] == \
        hpa["metadata"]["resourceVersion"]
    with pytest.raises(LimitExceeded, match="base_min_replicas"):
        floor_actuator(kube, clock, base_min_replicas=11).validate()
    with pytest.raises(PermanentActuatorError, match=f"HorizontalPodAutoscaler {NS}/nope"):
        floor_actuator(kube, clock, hpa="nope").validate()
    kube.forbid("PATCH", "horizontalpodautoscalers")
    with pytest.raises(PermanentActuatorError, match="forbidden.*'patch'.*horizontalpodautoscalers"):
        floor_actuator(kube, clock).validate()


def test_floor_describe_changes_nothing(kube, clock, hpa):
    act = floor_actuator(kube, clock, base_min_replicas=2)
    plan = act.describe(6)
    assert "spec.minReplicas 2 -> 6" in plan.summary
    assert plan.from_capacity == 3
    assert "would refuse" in act.describe(12).summary
    assert writes(kube) == 0


