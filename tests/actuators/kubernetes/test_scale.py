"""``kubernetes`` (actuators/kubernetes/scale.py and client.py) against tests/support/fake_kube.py, driven by the
official ``kubernetes`` client over HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from pathlib import Path

import pydantic
import pytest
import yaml

from actuators import registry
from actuators.kubernetes import (
    ANNOTATION_DECISION,
    ANNOTATION_DESIRED,
    ANNOTATION_PREVIOUS,
    HpaFloorActuator,
    HpaFloorConfig,
    ScaleSubresourceActuator,
    ScaleSubresourceConfig,
)
from engine.core.errors import (
    ConfigError,
    PermanentActuatorError,
    TransientActuatorError,
)

from tests.support import ROOT
from tests.support.actuator_contract import ActuatorContract, settled_at
from tests.support.fake_kube import NS, FakeKube, floor_actuator, frozen, scale_actuator, writes

DEPLOY = ROOT / "deploy" / "kubernetes"




# ------------------------------------------------------------------ contracts
class TestScaleSubresourceContract(ActuatorContract):
    initial_capacity = 3
    capacities = (5, 2)

    @pytest.fixture(params=["Deployment", "StatefulSet", "example.com/v1/widgets"])
    def actuator(self, request, kube, clock):
        if request.param == "example.com/v1/widgets":
            kube.add_workload("web", namespace=NS, replicas=3, group="example.com", version="v1",
                              plural="widgets", kind="Widget")
        else:
            plural = {"Deployment": "deployments", "StatefulSet": "statefulsets"}[request.param]
            kube.add_workload("web", namespace=NS, replicas=3, plural=plural)
        return scale_actuator(kube, clock, kind=request.param)

    @pytest.fixture
    def slow_platform(self, actuator, kube):
        return actuator, frozen(kube)


def test_registry_names_resolve_to_the_actuators():
    assert registry.get("kubernetes") is ScaleSubresourceActuator
    assert registry.get("kubernetes-hpa-floor") is HpaFloorActuator
    assert ScaleSubresourceConfig(name="web").type == "kubernetes"
    assert HpaFloorConfig(hpa="web", base_min_replicas=2).type == "kubernetes-hpa-floor"


# ------------------------------------------------------- scale subresource
def test_apply_puts_the_scale_with_the_resource_version_it_read(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    act = scale_actuator(kube, clock)
    rv = kube.get("deployments", "web", namespace=NS)["metadata"]["resourceVersion"]
    act.apply(6, decision_id="d-1")
    put = next(r for r in kube.requests if r.method == "PUT")
    assert put.path == f"/apis/apps/v1/namespaces/{NS}/deployments/web/scale"
    assert put.body["kind"] == "Scale"
    assert put.body["spec"] == {"replicas": 6}
    assert put.body["metadata"]["resourceVersion"] == rv
    assert put.query["fieldManager"] == ["forescale"]
    assert kube.get("deployments", "web", namespace=NS)["spec"]["replicas"] == 6


def test_conflict_is_retried_with_the_new_resource_version(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    act = scale_actuator(kube, clock)
    kube.concurrent_write("deployments", "web", namespace=NS)
    result = act.apply(5, decision_id="d-409")
    puts = [r for r in kube.requests if r.method == "PUT"]
    assert [p.status for p in puts] == [409, 200]
    # the retry read the scale again and sent the version the other writer left
    assert int(puts[1].body["metadata"]["resourceVersion"]) > int(puts[0].body["metadata"]["resourceVersion"])
    assert result.verified and result.observed == 5
    assert puts[0].audit_id in result.request_ids and puts[1].audit_id in result.request_ids
    assert clock.sleeps, "the retry backs off through the injected sleep"
    # the other writer's change survives: we changed replicas, nothing else
    assert "concurrent-writer" in kube.get("deployments", "web", namespace=NS)["metadata"]["labels"]


def test_conflicts_past_the_retry_budget_are_transient(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    act = scale_actuator(kube, clock, retry_attempts=3)
    kube.concurrent_write("deployments", "web", namespace=NS, times=10)
    with pytest.raises(TransientActuatorError, match="modified concurrently") as err:
        act.apply(5, decision_id="d-409s")
    assert kube.count("PUT") == 3
    assert err.value.request_ids == (kube.requests[-1].audit_id,)
    assert kube.get("deployments", "web", namespace=NS)["spec"]["replicas"] == 3


def test_not_found_is_permanent_names_the_object_and_is_not_retried(kube, clock):
    act = scale_actuator(kube, clock, name="missing")
    with pytest.raises(PermanentActuatorError, match=f"Deployment {NS}/missing") as err:
        act.validate()
    assert len(kube.requests) == 1
    assert err.value.request_ids == (kube.requests[0].audit_id,)
    assert kube.requests[0].audit_id


def test_forbidden_names_the_missing_verb_and_is_not_retried(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    kube.forbid("PUT", "deployments", "scale")
    act = scale_actuator(kube, clock)
    with pytest.raises(PermanentActuatorError) as err:
        act.apply(5, decision_id="d-403")
    msg = str(err.value)
    assert msg.startswith("forbidden:")
    assert "'update'" in msg and "deployments/scale" in msg and 'namespace \'shop\'' in msg
    assert kube.count("PUT") == 1
    assert err.value.request_ids == (next(r for r in kube.requests if r.method == "PUT").audit_id,)
    assert kube.get("deployments", "web", namespace=NS)["spec"]["replicas"] == 3


def test_validate_finds_a_missing_permission_with_a_dry_run_and_changes_nothing(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    before = kube.get("deployments", "web", namespace=NS)
    scale_actuator(kube, clock).validate()
    assert kube.get("deployments", "web", namespace=NS) == before
    assert all(r.query.get("dryRun") == ["All"] for r in kube.requests if r.method in ("PUT", "PATCH"))
    kube.forbid("PATCH", "deployments")
    with pytest.raises(PermanentActuatorError, match="'patch'"):
        scale_actuator(kube, clock).validate()


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_retried(kube, clock, status):
    kube.add_workload("web", namespace=NS, replicas=3)
    kube.fail_next(status, count=2, method="GET", path="/scale$")
    assert scale_actuator(kube, clock, read="spec").read().count == 3
    assert kube.count("GET", "/scale") == 3
    assert len(clock.sleeps) == 2
    kube.fail_next(status, count=2, method="GET", path="/deployments/web$")
    assert scale_actuator(kube, clock).read().count == 3  # readiness: the workload itself
    assert kube.count("GET", "/deployments/web") == 3 + 3
    assert len(clock.sleeps) == 4


def test_server_errors_past_the_retry_budget_are_transient(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    kube.fail_next(500, count=100, method="PUT")
    with pytest.raises(TransientActuatorError, match="500") as err:
        scale_actuator(kube, clock, retry_attempts=4).apply(5, decision_id="d-500")
    assert kube.count("PUT") == 4
    assert err.value.request_ids


def test_unprocessable_is_permanent_with_the_server_message(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    kube.fail_next(422, method="PUT", message='Scale.autoscaling "web" is invalid: spec.replicas: '
                                              "Invalid value: 5: exceeds quota")
    with pytest.raises(PermanentActuatorError, match="exceeds quota"):
        scale_actuator(kube, clock).apply(5, decision_id="d-422")
    assert kube.count("PUT") == 1


def test_unreachable_api_server_is_transient(clock):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from kubernetes import client

    api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))
    act = ScaleSubresourceActuator(ScaleSubresourceConfig(name="web", namespace=NS, retry_attempts=2),
                                   target="t", sleep=clock.sleep, monotonic=clock.monotonic,
                                   api_client=api)
    with pytest.raises(TransientActuatorError, match="cannot reach the API server"):
        act.read()


def test_rejected_credentials_are_permanent(clock):
    with FakeKube(token="right") as fake:
        fake.add_workload("web", namespace=NS, replicas=3)
        with pytest.raises(PermanentActuatorError, match="unauthorized"):
            scale_actuator(fake, clock).read()
        assert len(fake.requests) == 1


def test_annotations_carry_the_decision_id_in_a_merge_patch(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    result = scale_actuator(kube, clock).apply(7, decision_id="shop/web@2024-05-01T10:00:00Z")
    ann = kube.get("deployments", "web", namespace=NS)["metadata"]["annotations"]
    assert ann[ANNOTATION_DECISION] == "shop/web@2024-05-01T10:00:00Z"
    assert ann[ANNOTATION_DESIRED] == "7"
    assert ann[ANNOTATION_PREVIOUS] == "3"
    patch = next(r for r in kube.requests if r.method == "PATCH")
    assert patch.content_type == "application/merge-patch+json"
    assert result.details["changed"] is True and result.details["previous_spec_replicas"] == 3


def test_a_failed_annotation_is_reported_but_the_scale_change_stands(kube, clock, caplog):
    kube.add_workload("web", namespace=NS, replicas=3)
    kube.forbid("PATCH", "deployments")
    with caplog.at_level(logging.WARNING, logger="actuators.kubernetes"):
        result = scale_actuator(kube, clock).apply(4, decision_id="d-ann")
    assert result.verified and result.observed == 4
    assert "forbidden" in result.details["annotation_error"]
    assert "annotating" in caplog.text


def test_reapplying_the_same_value_writes_no_scale(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    act = scale_actuator(kube, clock)
    act.apply(5, decision_id="d-a")
    puts = kube.count("PUT")
    result = act.apply(5, decision_id="d-b")
    assert kube.count("PUT") == puts
    assert result.details["changed"] is False
    ann = kube.get("deployments", "web", namespace=NS)["metadata"]["annotations"]
    assert ann[ANNOTATION_DECISION] == "d-b" and ann[ANNOTATION_PREVIOUS] == "3"


def test_apply_returns_before_the_controller_catches_up_and_read_sees_it_later(clock):
    with FakeKube(settle_after=3) as fake:
        fake.add_workload("web", namespace=NS, replicas=3)
        act = scale_actuator(fake, clock)
        result = act.apply(6, decision_id="d-poll")
        assert result.verified is False and result.observed == 3
        assert fake.get("deployments", "web", namespace=NS)["spec"]["replicas"] == 6
        assert clock.sleeps == [] and result.elapsed == timedelta(0)
        first = act.read()
        assert (first.count, first.ready, first.settled) == (6, 3, False)
        assert settled_at(act.read(), 6)  # the third GET: the controller caught up


def test_pods_that_never_come_leave_it_unverified_and_unsettled(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    kube.frozen = True
    act = scale_actuator(kube, clock, verify_timeout=timedelta(seconds=60))
    result = act.apply(6, decision_id="d-slow")
    assert result.verified is False
    assert result.observed == 3
    assert result.elapsed == timedelta(0)
    reading = act.read()
    assert (reading.count, reading.ready) == (6, 3)
    spec_only = scale_actuator(kube, clock, read="spec").read()
    assert (spec_only.count, spec_only.ready, spec_only.settled) == (6, None, True)


def test_a_transient_error_reading_the_status_after_the_write_does_not_fail_the_apply(clock):
    with FakeKube(settle_after=2) as fake:
        fake.add_workload("web", namespace=NS, replicas=3)
        act = scale_actuator(fake, clock, retry_attempts=1)
        fake.fail_next(503, method="GET", path="/deployments/web$")
        # the PUT goes first; then the status GET fails with 503
        result = act.apply(4, decision_id="d-blip")
        assert result.verified is False and result.details["status"] == "unread"
        assert result.observed == 4 and result.request_ids
        assert fake.get("deployments", "web", namespace=NS)["spec"]["replicas"] == 4
        assert not settled_at(act.read(), 4)  # the controller catches up on the second GET
        assert settled_at(act.read(), 4)


def test_a_competing_hpa_is_refused_by_default(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    kube.add_hpa("web-cpu", namespace=NS, target="web", min_replicas=2, max_replicas=8)
    act = scale_actuator(kube, clock)
    with pytest.raises(PermanentActuatorError, match=f"HorizontalPodAutoscaler {NS}/web-cpu"):
        act.validate()
    with pytest.raises(PermanentActuatorError, match="kubernetes-hpa-floor"):
        act.apply(5, decision_id="d-hpa")
    assert kube.count("PUT") == kube.count("PATCH") == 0
    assert "web-cpu" in act.describe(5).summary


def test_a_competing_hpa_only_warns_when_told(kube, clock, caplog):
    kube.add_workload("web", namespace=NS, replicas=3)
    kube.add_hpa("web-cpu", namespace=NS, target="web", min_replicas=2, max_replicas=8)
    act = scale_actuator(kube, clock, on_hpa="warn")
    with caplog.at_level(logging.WARNING, logger="actuators.kubernetes"):
        act.validate()
        result = act.apply(5, decision_id="d-warn")
    assert "web-cpu" in caplog.text
    assert result.verified and result.details["hpas"] == ["web-cpu"]


def test_hpas_on_other_objects_do_not_count(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    kube.add_workload("api", namespace=NS, replicas=3)
    kube.add_hpa("api", namespace=NS, target="api")
    kube.add_hpa("web-sts", namespace=NS, target="web", target_kind="StatefulSet")
    kube.add_hpa("web", namespace="other", target="web")
    act = scale_actuator(kube, clock)
    act.validate()
    assert act.competing_hpas() == []


def test_an_hpa_on_a_custom_resource_is_matched_by_its_kind(kube, clock):
    kube.add_workload("w", namespace=NS, replicas=1, group="example.com", version="v1",
                      plural="widgets", kind="Widget")
    kube.add_hpa("w", namespace=NS, target="w", target_kind="Widget", target_api_version="example.com/v1")
    act = scale_actuator(kube, clock, name="w", kind="example.com/v1/widgets")
    with pytest.raises(PermanentActuatorError, match=f"HorizontalPodAutoscaler {NS}/w already scales Widget"):
        act.validate()


def test_describe_changes_nothing_and_names_the_scale_path(kube, clock):
    kube.add_workload("web", namespace=NS, replicas=3)
    plan = scale_actuator(kube, clock).describe(8)
    assert plan.from_capacity == 3 and plan.to_capacity == 8
    assert "spec.replicas 3 -> 8" in plan.summary and "deployments/web/scale" in plan.summary
    assert writes(kube) == 0


# ---------------------------------------------------------------------- config
def test_config_errors_name_the_field():
    with pytest.raises(pydantic.ValidationError, match="kind"):
        ScaleSubresourceConfig(name="web", kind="CronJob")
    with pytest.raises(pydantic.ValidationError, match="namespace"):
        ScaleSubresourceConfig(name="web", namespace="Not_A_Namespace")
    with pytest.raises(pydantic.ValidationError, match="in_cluster"):
        ScaleSubresourceConfig(name="web", in_cluster=True, kubeconfig="/x")
    with pytest.raises(pydantic.ValidationError, match="base_min_replicas"):
        HpaFloorConfig(hpa="web", base_min_replicas=0)
    with pytest.raises(pydantic.ValidationError, match="on_hpa"):
        ScaleSubresourceConfig(name="web", on_hpa="ignore")
    assert ScaleSubresourceConfig(name="web", kind="statefulsets").kind == "StatefulSet"
    with pytest.raises(ConfigError, match="ladder"):
        ScaleSubresourceActuator(ScaleSubresourceConfig(name="web"), target="t", ladder=["m5.large"])


def _kubeconfig(path: Path, server: str, token: str, context: str = "test") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "forescale", "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": "fake", "user": "forescale"}}],
    }))
    return path


def test_credentials_come_from_a_kubeconfig_file_and_context(tmp_path, clock):
    with FakeKube(token="t0ken") as fake:
        fake.add_workload("web", namespace=NS, replicas=3)
        path = _kubeconfig(tmp_path / "config", fake.host, "t0ken", context="prod")
        act = ScaleSubresourceActuator(
            ScaleSubresourceConfig(name="web", namespace=NS, kubeconfig=str(path), context="prod"),
            target="t", sleep=clock.sleep, monotonic=clock.monotonic)
        act.validate()
        assert act.read().count == 3


def test_retry_attempts_bound_the_connections_and_urllib3_retries_nothing_itself(tmp_path, clock, caplog):
    """urllib3's own three retries ran inside each of forescale's attempts
    (5 x 4 connections) and logged a "Retrying (Retry(total=2 ..." warning
    for each."""
    import logging
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []

    def hang_up():  # an API server that accepts and closes at once
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        path = _kubeconfig(tmp_path / "config", f"http://127.0.0.1:{server.getsockname()[1]}", "t0ken")
        act = ScaleSubresourceActuator(
            ScaleSubresourceConfig(name="web", namespace=NS, kubeconfig=str(path), retry_attempts=3),
            target="t", sleep=clock.sleep, monotonic=clock.monotonic)
        with caplog.at_level(logging.WARNING), pytest.raises(TransientActuatorError):
            act.read()
    finally:
        server.close()
    assert len(accepted) == 3
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]


def test_auto_mode_falls_back_from_in_cluster_to_kubeconfig(tmp_path, clock, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with FakeKube(token="t0ken") as fake:
        fake.add_workload("web", namespace=NS, replicas=3)
        monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", fake.host, "t0ken")))
        act = ScaleSubresourceActuator(ScaleSubresourceConfig(name="web", namespace=NS), target="t",
                                       sleep=clock.sleep, monotonic=clock.monotonic)
        assert act.read().count == 3


def test_missing_credentials_are_one_permanent_error_from_validate(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    missing = tmp_path / "nope"
    act = ScaleSubresourceActuator(ScaleSubresourceConfig(name="web", kubeconfig=str(missing)), target="t")
    with pytest.raises(PermanentActuatorError, match=f"kubeconfig file {missing} does not exist") as err:
        act.validate()
    # the setting in use is to be checked, not set (it said "set actuator.kubeconfig ... to use kubeconfig X")
    assert str(err.value).endswith("; check actuator.kubeconfig.") and "set actuator" not in str(err.value)
    act = ScaleSubresourceActuator(ScaleSubresourceConfig(name="web", in_cluster=True), target="t")
    with pytest.raises(PermanentActuatorError, match="in-cluster"):
        act.validate()


def test_a_broken_kubeconfig_is_reported_without_its_contents(tmp_path):
    path = tmp_path / "config"
    path.write_text("users:\n- name: x\n  user: {token: SECRET-TOKEN\n")  # unclosed flow mapping
    act = ScaleSubresourceActuator(ScaleSubresourceConfig(name="web", kubeconfig=str(path)), target="t")
    with pytest.raises(PermanentActuatorError) as err:
        act.validate()
    assert "SECRET-TOKEN" not in str(err.value)
    assert "kubeconfig" in str(err.value)


# ------------------------------------------------------------------ manifests
def _manifests() -> list[dict]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_manifests_validate_against_the_kubernetes_schemas():
    kv = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (pip install kubernetes-validate); "
               "the deploy/kubernetes manifests were not schema-checked")
    docs = _manifests()
    assert {d["kind"] for d in docs} >= {"ServiceAccount", "Role", "RoleBinding", "Deployment",
                                         "HorizontalPodAutoscaler"}
    for doc in docs:
        kv.validate(doc, "1.30", strict=True)


def test_the_shipped_role_grants_every_request_the_actuators_make(kube, clock):
    """Run both actuators through validate/read/describe/apply, then check
    each (API group, resource, verb) they used against deploy/kubernetes/rbac.yaml."""
    kube.add_workload("web", namespace=NS, replicas=3)
    kube.add_workload("db", namespace=NS, replicas=1, plural="statefulsets")
    kube.add_hpa("front", namespace=NS, target="front", min_replicas=1, max_replicas=5)
    kube.add_workload("front", namespace=NS, replicas=1)
    for act in (scale_actuator(kube, clock), scale_actuator(kube, clock, name="db", kind="StatefulSet"),
                floor_actuator(kube, clock, hpa="front")):
        act.validate()
        act.read()
        act.describe(2)
        act.apply(2, decision_id="rbac")
    role = next(d for d in _manifests() if d["kind"] == "Role")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    used = set()
    for req in kube.requests:
        parts = req.path.split("/")  # /apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}[/{sub}]]
        resource = parts[6] + (f"/{parts[8]}" if len(parts) > 8 else "")
        verb = {"GET": "get" if len(parts) > 7 else "list", "PUT": "update", "PATCH": "patch"}[req.method]
        used.add((parts[2], resource, verb))
    assert used - granted == set()
    assert ("apps", "deployments/scale", "update") in used and ("autoscaling", "horizontalpodautoscalers", "patch") in used
