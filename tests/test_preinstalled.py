"""--custom-ca-preinstalled: cert-manager found wherever it runs, roots read from the ClusterIssuers, access logs required.

The pure checks run everywhere; the last tests install the mesh on a real local node and then
test it as a user's ``--custom-ca-cluster existing --custom-ca-preinstalled`` cluster (the local
node's images passed as the platform, since it has no registry).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from custom_ca_conformance import kube
from custom_ca_conformance.cluster import builtin_provider
from custom_ca_conformance.cluster.contract import ProviderSettings
from custom_ca_conformance.cluster.existing import ExistingCluster
from custom_ca_conformance.cluster.provider import Provider
from custom_ca_conformance.evidence import diagnoses
from custom_ca_conformance.install.checks import access_logging_gap
from custom_ca_conformance.kube import cert_manager
from custom_ca_conformance.model.errors import ProvisioningError
from custom_ca_conformance.model.names import CERT_MANAGER_NAMESPACE, ISTIO_NAMESPACE
from custom_ca_conformance.model.run_record import RunRecord
from custom_ca_conformance.model.topology import ca_secret_name, default_topology

pytestmark = pytest.mark.xdist_group("node")

CHART_CONTROLLER = {
    "name": "cert-manager-controller",
    "image": "quay.io/jetstack/cert-manager-controller:v1.21.0",
    "args": ["--v=2", "--cluster-resource-namespace=$(POD_NAMESPACE)", "--leader-election-namespace=kube-system"],
    "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
}
POD = {"metadata": {"namespace": "security-tools", "name": "certs-7d9f-abcde"}}


def test_the_controller_is_recognised_by_its_image_or_its_flag_whatever_its_names():
    assert cert_manager.is_controller_container(CHART_CONTROLLER)
    renamed = {"name": "manager", "image": "registry.example/mirror/cert-manager-controller@sha256:" + "a" * 64}
    assert cert_manager.is_controller_container(renamed)
    own_build = {"name": "c", "image": "localhost/ccc:1", "args": ["--cluster-resource-namespace=certs"]}
    assert cert_manager.is_controller_container(own_build)
    webhook = {"name": "cert-manager-webhook", "image": "quay.io/jetstack/cert-manager-webhook:v1.21.0",
               "args": ["--secure-port=10250"]}
    assert not cert_manager.is_controller_container(webhook)


def test_the_resource_namespace_is_the_controllers_flag_with_its_variables_expanded():
    assert cert_manager.resource_namespace(POD, CHART_CONTROLLER) == "security-tools"
    literal = {"args": ["--cluster-resource-namespace=pki"]}
    assert cert_manager.resource_namespace(POD, literal) == "pki"
    # cert-manager's own default when the flag is not given.
    assert cert_manager.resource_namespace(POD, {"args": []}) == "kube-system"


def test_a_cluster_issuer_names_its_ca_secret_or_none():
    assert cert_manager.ca_secret_name({"spec": {"ca": {"secretName": "team-a-ca"}}}) == "team-a-ca"
    assert cert_manager.ca_secret_name({"spec": {"selfSigned": {}}}) is None


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


# --- on a real local node, tested as a user's preinstalled cluster ---------------------------------
# One node per machine: with the node self-tests on one xdist worker ("node" in the names keeps them out of
# the pure runs, which select -k "not node").

@pytest.fixture(scope="module")
def local_mesh(local_provider_available, tmp_path_factory):
    """The default topology installed on a fresh local node: (the local provider, its run record)."""
    provider = builtin_provider("local", ProviderSettings(topology=default_topology(), progress=lambda line: None,
                                                          workdir=tmp_path_factory.mktemp("local") / "work"))
    provider.check_requirements()
    run = provider.provision()
    try:
        yield provider, run
    finally:
        provider.teardown(run)


def provision_preinstalled(local_mesh, workdir: Path) -> RunRecord:
    """``--custom-ca-cluster existing --custom-ca-preinstalled`` on the local node (its images as the platform).

    No teardown: what a preinstalled run leaves is the user's (the local node's own teardown removes it all).
    """
    local, run = local_mesh
    settings = ProviderSettings(topology=default_topology(), workdir=workdir, kubeconfig=run.kubeconfig,
                                preinstalled=True, progress=lambda line: None)
    provider = Provider(ExistingCluster(settings, sources=local.adapter.sources), settings)
    provider.check_requirements()
    return provider.provision()


def test_node_preinstalled_reads_each_root_from_the_secret_its_cluster_issuer_names(local_mesh, tmp_path):
    """bar's ClusterIssuer is moved to a copy of its CA Secret under a name the suite never creates."""
    from kubernetes import client, config

    _, run = local_mesh
    with config.new_client_from_config(config_file=run.kubeconfig) as api:
        core = client.CoreV1Api(api)
        original = core.read_namespaced_secret(ca_secret_name("bar"), CERT_MANAGER_NAMESPACE)
        core.create_namespaced_secret(CERT_MANAGER_NAMESPACE, client.V1Secret(
            metadata=client.V1ObjectMeta(name="team-bar-ca"), type=original.type, data=original.data))
        _patch_ca_secret(api, "bar", "team-bar-ca")
        try:
            preinstalled = provision_preinstalled(local_mesh, tmp_path / "work")
        finally:
            _patch_ca_secret(api, "bar", ca_secret_name("bar"))
            core.delete_namespaced_secret("team-bar-ca", CERT_MANAGER_NAMESPACE)
    assert preinstalled.signer_roots["bar"] == {"namespace": CERT_MANAGER_NAMESPACE, "name": "team-bar-ca",
                                                   "key": "ca.crt"}, preinstalled.signer_roots
    assert preinstalled.cert_manager.namespace == CERT_MANAGER_NAMESPACE, preinstalled.cert_manager


def test_node_preinstalled_without_access_logs_fails_setup_naming_the_gap(local_mesh, tmp_path):
    from kubernetes import client, config

    _, run = local_mesh
    with config.new_client_from_config(config_file=run.kubeconfig) as api:
        core = client.CoreV1Api(api)
        original = core.read_namespaced_config_map("istio", ISTIO_NAMESPACE).data["mesh"]
        mesh = yaml.safe_load(original)
        mesh.pop("accessLogFile")
        core.patch_namespaced_config_map("istio", ISTIO_NAMESPACE, {"data": {"mesh": yaml.safe_dump(mesh)}})
        try:
            with pytest.raises(ProvisioningError) as caught:
                provision_preinstalled(local_mesh, tmp_path / "work")
        finally:
            core.patch_namespaced_config_map("istio", ISTIO_NAMESPACE, {"data": {"mesh": original}})
    kinds = [d.kind for d in caught.value.diagnoses]
    assert kinds[:1] == [diagnoses.KIND_ACCESS_LOGS_OFF], f"{kinds}\n{caught.value}"
    assert "tenants whose sidecars write no access log: foo, bar" in str(caught.value), caught.value


def test_node_preinstalled_without_a_running_cert_manager_controller_fails_at_once_in_one_line(local_mesh, tmp_path):
    from kubernetes import client, config

    _, run = local_mesh
    with config.new_client_from_config(config_file=run.kubeconfig) as api:
        apps = client.AppsV1Api(api)
        apps.patch_namespaced_deployment_scale("cert-manager", CERT_MANAGER_NAMESPACE, {"spec": {"replicas": 0}})
        try:
            kube.wait_for(lambda: not kube.list_pods(api, CERT_MANAGER_NAMESPACE, "app.kubernetes.io/name=cert-manager"),
                          timeout=60, expected="cert-manager's controller Pod gone", diagnose=lambda: ("", ""))
            with pytest.raises(ProvisioningError) as caught:
                provision_preinstalled(local_mesh, tmp_path / "work")
        finally:
            apps.patch_namespaced_deployment_scale("cert-manager", CERT_MANAGER_NAMESPACE, {"spec": {"replicas": 1}})
    first = str(caught.value).splitlines()[0]
    assert "cert-manager's CRDs are installed but its controller runs nowhere" in first, caught.value
    assert "timed out" not in str(caught.value), caught.value


def _patch_ca_secret(api_client, signer: str, secret_name: str) -> None:
    from kubernetes import client

    client.CustomObjectsApi(api_client).patch_cluster_custom_object(
        "cert-manager.io", "v1", "clusterissuers", signer, {"spec": {"ca": {"secretName": secret_name}}})
