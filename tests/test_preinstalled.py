"""--custom-ca-preinstalled: cert-manager found wherever it runs, roots read from the ClusterIssuers, access logs required.

The pure checks run everywhere; the last tests install the mesh on a real local node and then
test it as a user's ``--custom-ca-cluster existing --custom-ca-preinstalled`` cluster (the local
node's images passed as the platform, since it has no registry).
"""

from __future__ import annotations

import pytest

from custom_ca_conformance import cert_manager_cluster, diagnoses
from custom_ca_conformance.mesh_installer import access_logging_gap

CHART_CONTROLLER = {
    "name": "cert-manager-controller",
    "image": "quay.io/jetstack/cert-manager-controller:v1.21.0",
    "args": ["--v=2", "--cluster-resource-namespace=$(POD_NAMESPACE)", "--leader-election-namespace=kube-system"],
    "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
}
POD = {"metadata": {"namespace": "security-tools", "name": "certs-7d9f-abcde"}}


def test_the_controller_is_recognised_by_its_image_or_its_flag_whatever_its_names():
    assert cert_manager_cluster.is_controller_container(CHART_CONTROLLER)
    renamed = {"name": "manager", "image": "registry.example/mirror/cert-manager-controller@sha256:" + "a" * 64}
    assert cert_manager_cluster.is_controller_container(renamed)
    own_build = {"name": "c", "image": "localhost/ccc:1", "args": ["--cluster-resource-namespace=certs"]}
    assert cert_manager_cluster.is_controller_container(own_build)
    webhook = {"name": "cert-manager-webhook", "image": "quay.io/jetstack/cert-manager-webhook:v1.21.0",
               "args": ["--secure-port=10250"]}
    assert not cert_manager_cluster.is_controller_container(webhook)


def test_the_resource_namespace_is_the_controllers_flag_with_its_variables_expanded():
    assert cert_manager_cluster.resource_namespace(POD, CHART_CONTROLLER) == "security-tools"
    literal = {"args": ["--cluster-resource-namespace=pki"]}
    assert cert_manager_cluster.resource_namespace(POD, literal) == "pki"
    # cert-manager's own default when the flag is not given.
    assert cert_manager_cluster.resource_namespace(POD, {"args": []}) == "kube-system"


def test_a_cluster_issuer_names_its_ca_secret_or_none():
    assert cert_manager_cluster.ca_secret_name({"spec": {"ca": {"secretName": "team-a-ca"}}}) == "team-a-ca"
    assert cert_manager_cluster.ca_secret_name({"spec": {"selfSigned": {}}}) is None


def _telemetry(namespace: str, *entries: dict, selector: dict | None = None) -> dict:
    spec = {"accessLogging": list(entries)}
    if selector:
        spec["selector"] = selector
    return {"metadata": {"namespace": namespace, "name": "logs"}, "spec": spec}


@pytest.mark.parametrize("mesh, telemetries", [
    ({"accessLogFile": "/dev/stdout"}, []),
    ({}, [_telemetry("istio-system", {"providers": [{"name": "envoy"}]})]),
    ({}, [_telemetry("foo", {"providers": [{"name": "envoy"}]}), _telemetry("bar", {})]),
], ids=["mesh-config", "mesh-wide-telemetry", "telemetry-per-tenant"])
def test_access_logs_from_mesh_config_or_telemetry_are_enough(mesh, telemetries):
    assert access_logging_gap(mesh, telemetries, ["foo", "bar"]) is None


def test_a_mesh_without_access_logs_names_the_tenants_left_without():
    gap = access_logging_gap({}, [_telemetry("foo", {"providers": [{"name": "envoy"}]})], ["foo", "bar"])
    assert gap is not None and gap.endswith("tenants whose sidecars write no access log: bar"), gap
    assert "meshConfig.accessLogFile unset" in gap, gap


def test_a_tenant_telemetry_that_disables_access_logs_wins_over_mesh_config():
    gap = access_logging_gap({"accessLogFile": "/dev/stdout"}, [_telemetry("bar", {"disabled": True})], ["foo", "bar"])
    assert gap is not None and gap.endswith(": bar"), gap
    # A Telemetry for some workloads only (a selector) does not speak for the namespace.
    assert access_logging_gap({}, [_telemetry("foo", {}, selector={"matchLabels": {"app": "x"}})], ["foo"])


def test_the_access_log_gap_is_a_blocking_diagnosis():
    found = diagnoses.access_logs_off("meshConfig.accessLogFile unset", "ConfigMap istio-system/istio")
    assert found.kind == diagnoses.KIND_ACCESS_LOGS_OFF and diagnoses.blocking([found]) is found
    assert "connection-failure" in found.cause
