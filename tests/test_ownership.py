"""Ownership on a real API server: the suite refuses what it did not create and undoes exactly what it did.

Against the pinned kube-apiserver and etcd (tests/conftest.py), through the same front door a
user meets: ``--custom-ca-cluster existing`` refuses in one line before anything changes,
and the run's ledger applies, records and undoes. Every foreign object must keep its
``resourceVersion``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kubernetes import client

from custom_ca_conformance.cluster import builtin_provider
from custom_ca_conformance.cluster.contract import ProviderSettings
from custom_ca_conformance.install import survey
from custom_ca_conformance.kube.ledger import Ledger
from custom_ca_conformance.localplane.toolchain import CERT_MANAGER_VERSION
from custom_ca_conformance.model import access
from custom_ca_conformance.model.errors import ProviderUnavailable
from custom_ca_conformance.model.ownership import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    RUN_LABEL,
    Refused,
)
from custom_ca_conformance.model.run_record import RunRecord
from custom_ca_conformance.model.topology import from_document

pytest_plugins = ("pytester",)


@pytest.fixture(scope="module")
def control_plane(control_plane_toolchain, tmp_path_factory):
    """A control plane of this module's own: what the suite refuses depends on what else is there."""
    from custom_ca_conformance.localplane.controlplane import start_control_plane

    plane = start_control_plane(control_plane_toolchain, tmp_path_factory.mktemp("ownership-plane"),
                                progress=lambda line: None)
    yield plane
    plane.stop()


@pytest.fixture
def pytester_run(pytester):
    """A real pytest run of the installed conformance tests, in a directory of its own."""
    def run(*args: str):
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pyargs",
                                             "custom_ca_conformance.conformance", *args, timeout=180)
    return run


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _topology(*namespaces: str):
    """A topology whose tenants live in the given namespaces, one signer each."""
    return from_document({"signers": [f"s{i}" for i in range(len(namespaces))],
                          "tenants": [{"namespace": ns, "signer": f"s{i}"} for i, ns in enumerate(namespaces)]},
                         source="test")


def _deployment(namespace: str, name: str, labels: dict, image: str = "docker.io/library/user:1") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace,
                                                                        "labels": labels},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image}]}}}}


def _create_namespace(api, name: str, labels: dict | None = None) -> None:
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name, "labels": labels or {}}})


def _versions(api, *reads) -> list[str]:
    return [read().metadata.resource_version for read in reads]


def _refusal_of(control_plane, tmp_path, topology) -> str:
    settings = ProviderSettings(topology=topology, workdir=tmp_path, kubeconfig=str(control_plane.kubeconfig))
    with pytest.raises(ProviderUnavailable) as refused:
        builtin_provider("existing", settings).check_requirements()
    return str(refused.value)


def test_an_istio_under_a_revision_in_another_namespace_is_refused_and_left_unchanged(control_plane, tmp_path):
    namespace = _name("istio-canary")
    with control_plane.api_client() as api:
        _create_namespace(api, namespace)
        client.AppsV1Api(api).create_namespaced_deployment(namespace, _deployment(
            namespace, "istiod-canary", {"app": "istiod", "istio.io/rev": "canary"}, "docker.io/istio/pilot:1.30.3"))
        read = lambda: client.AppsV1Api(api).read_namespaced_deployment("istiod-canary", namespace)  # noqa: E731
        before = _versions(api, read)
        message = _refusal_of(control_plane, tmp_path, _topology(_name("t")))
        assert _versions(api, read) == before
        client.AppsV1Api(api).delete_namespaced_deployment("istiod-canary", namespace)
        client.CoreV1Api(api).delete_namespace(namespace)
    line = next(line for line in message.splitlines() if "istiod-canary" in line)
    assert line.startswith(f"refused to touch Deployment {namespace}/istiod-canary: an Istio control plane "
                           "(revision canary)")
    assert "--custom-ca-preinstalled" in line


def test_a_cert_manager_in_another_namespace_is_refused_and_left_unchanged(control_plane, tmp_path):
    namespace = _name("security")
    with control_plane.api_client() as api:
        _create_namespace(api, namespace)
        control_plane.ensure_service_account(namespace, "default")  # no controller-manager makes it here
        pod = {"metadata": {"name": "cm-controller"}, "spec": {"containers": [
            {"name": "controller", "image": "quay.io/jetstack/cert-manager-controller:v1.21.1"}]}}
        client.CoreV1Api(api).create_namespaced_pod(namespace, pod)
        read = lambda: client.CoreV1Api(api).read_namespaced_pod("cm-controller", namespace)  # noqa: E731
        before = _versions(api, read)
        message = _refusal_of(control_plane, tmp_path, _topology(_name("t")))
        assert _versions(api, read) == before
        client.CoreV1Api(api).delete_namespaced_pod("cm-controller", namespace, grace_period_seconds=0)
        client.CoreV1Api(api).delete_namespace(namespace)
    assert f"refused to touch Pod {namespace}/cm-controller: a cert-manager controller " \
           "(quay.io/jetstack/cert-manager-controller:v1.21.1) that this suite did not install is running" in message


def test_a_tenant_namespace_holding_a_users_httpbin_is_refused_and_left_unchanged(control_plane, tmp_path):
    namespace = _name("team")
    with control_plane.api_client() as api:
        _create_namespace(api, namespace, {"istio-injection": "disabled"})
        client.AppsV1Api(api).create_namespaced_deployment(namespace, _deployment(namespace, "httpbin", {}))
        reads = (lambda: client.CoreV1Api(api).read_namespace(namespace),
                 lambda: client.AppsV1Api(api).read_namespaced_deployment("httpbin", namespace))
        before = _versions(api, *reads)
        message = _refusal_of(control_plane, tmp_path, _topology(namespace))
        assert _versions(api, *reads) == before
        assert client.CoreV1Api(api).read_namespace(namespace).metadata.labels.get("istio-injection") == "disabled"
        client.AppsV1Api(api).delete_namespaced_deployment("httpbin", namespace)
        client.CoreV1Api(api).delete_namespace(namespace)
    assert (f"refused to touch Namespace {namespace}: it exists without the label {MANAGED_BY_LABEL}={MANAGED_BY} "
            f"(it holds Deployment httpbin), and this run would install into it") in message


def _record(run_id: str) -> RunRecord:
    return RunRecord(kubeconfig="kc", context=None, workdir="/nonexistent", run_id=run_id)


def test_the_ledger_refuses_to_apply_over_a_users_object(control_plane):
    namespace = _name("mine")
    with control_plane.api_client() as api:
        ledger = Ledger(api, _record("r1"))
        ledger.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
        users = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "httpbin", "namespace": namespace}}
        client.CoreV1Api(api).create_namespaced_service_account(namespace, users)
        read = lambda: client.CoreV1Api(api).read_namespaced_service_account("httpbin", namespace)  # noqa: E731
        before = _versions(api, read)
        with pytest.raises(Refused) as refused:
            ledger.apply([users])
        assert _versions(api, read) == before
        assert str(refused.value) == (
            f"refused to touch ServiceAccount {namespace}/httpbin: it exists without the label "
            f"{MANAGED_BY_LABEL}={MANAGED_BY}, so this suite did not create it; remove it yourself, choose other "
            "namespaces in a topology file (--custom-ca-topology), test what is installed with "
            "--custom-ca-preinstalled, or use another cluster")
        client.CoreV1Api(api).delete_namespace(namespace)


def test_undo_leaves_a_namespace_the_run_made_when_a_user_put_an_object_in_it(control_plane):
    namespace = _name("run")
    with control_plane.api_client() as api:
        core = client.CoreV1Api(api)
        ledger = Ledger(api, _record("r2"))
        ledger.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                      {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ours", "namespace": namespace}}])
        assert core.read_namespace(namespace).metadata.labels[RUN_LABEL] == "r2"
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "users-notes"}, "data": {"a": "b"}})
        before = _versions(api, lambda: core.read_namespaced_config_map("users-notes", namespace))
        problems = ledger.undo(lambda entry: [])
        assert problems == [f"left Namespace {namespace}, which this run created: it now holds 1 object(s) this "
                            f"run did not create (ConfigMap {namespace}/users-notes)"]
        assert _versions(api, lambda: core.read_namespaced_config_map("users-notes", namespace)) == before
        assert [c.metadata.name for c in core.list_namespaced_config_map(namespace).items
                if c.metadata.name != "kube-root-ca.crt"] == ["users-notes"]  # ours is gone
        core.delete_namespace(namespace)


def test_undo_reverses_the_ledger_newest_first_and_runs_each_install_once(control_plane):
    namespace = _name("order")
    undone: list[str] = []
    with control_plane.api_client() as api:
        ledger = Ledger(api, _record("r3"))
        ledger.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
        ledger.record_install("helm", release="r", namespace=namespace)
        ledger.apply([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": namespace}}])
        ledger.record_install("helm", release="r", namespace=namespace)  # recorded once
        def uninstall(entry):
            undone.append(f"{entry['tool']} {entry['release']}")
            assert client.CoreV1Api(api).list_namespaced_config_map(
                namespace, field_selector="metadata.name=c").items == []  # newer than the install: gone already
            return []
        assert ledger.undo(uninstall) == []
    assert undone == ["helm r"]


def test_a_user_without_the_rights_learns_every_missing_permission_at_once(control_plane, tmp_path):
    name = _name("viewer")
    control_plane.ensure_service_account("default", name)
    with control_plane.api_client() as api:
        rbac = client.RbacAuthorizationV1Api(api)
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
        rbac.create_cluster_role_binding({
            "metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                    "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}]})
    kubeconfig = control_plane.kubeconfig_for_token(control_plane.service_account_token("default", name, []),
                                                    tmp_path / "viewer.kubeconfig")
    settings = ProviderSettings(topology=_topology("foo"), workdir=tmp_path, kubeconfig=str(kubeconfig))
    with pytest.raises(ProviderUnavailable) as refused:
        builtin_provider("existing", settings).check_requirements()
    message = str(refused.value)
    assert message.startswith(f"user system:serviceaccount:default:{name} lacks ")
    assert "  - create customresourcedefinitions.apiextensions.k8s.io (install CRDs)" in message
    assert "  - approve signers.certificates.k8s.io clusterissuers.cert-manager.io/s0" in message
    assert "  - get pods (read the mesh)" not in message and "  - list pods (read the mesh)" not in message
    with control_plane.api_client() as api:
        client.RbacAuthorizationV1Api(api).delete_cluster_role_binding(name)
        client.RbacAuthorizationV1Api(api).delete_cluster_role(name)


def test_the_admin_has_every_permission_a_run_needs(control_plane):
    needed = access.probe_permissions(_topology("foo")) + access.install_permissions(
        cert_manager=True, istio=True, tenants=True)
    with control_plane.api_client() as api:
        assert survey.missing_permissions(api, needed) == []


def test_ownership_checks_change_nothing(control_plane, tmp_path):
    """The survey only reads: a refusal-free cluster comes out of check_requirements as it went in."""
    with control_plane.api_client() as api:
        before = sorted(ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items)
        assert survey.foreign_installs(api, _topology(_name("t")), cert_manager=True, istio=True, tenants=True) == []
        assert sorted(ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items) == before
    assert not list(Path(tmp_path).iterdir())


def test_the_plan_lists_what_the_run_would_apply_and_refuses_a_users_namespace(control_plane, tmp_path, pytester_run):
    namespace = _name("team")
    topology = tmp_path / "topology.yaml"
    topology.write_text(f"signers: [a]\ntenants:\n  - {{namespace: {namespace}, signer: a}}\n")
    with control_plane.api_client() as api:
        _create_namespace(api, namespace)
        client.AppsV1Api(api).create_namespaced_deployment(namespace, _deployment(namespace, "httpbin", {}))
        before = sorted(ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items)
        result = pytester_run("--custom-ca-cluster", "existing", "--custom-ca-kubeconfig",
                              str(control_plane.kubeconfig), "--custom-ca-topology", str(topology),
                              "--custom-ca-plan")
        after = sorted(ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items)
        client.AppsV1Api(api).delete_namespaced_deployment("httpbin", namespace)
        client.CoreV1Api(api).delete_namespace(namespace)
    text = result.stdout.str()
    assert result.ret == 0, text
    assert after == before
    assert "plan for existing (local): nothing is changed" in text
    assert f"  refused to touch Namespace {namespace}: it exists without the label" in text
    assert f"    REFUSE  Namespace {namespace}" in text
    assert f"    create  Deployment {namespace}/httpbin" not in text
    assert f"    REFUSE  Deployment {namespace}/httpbin" in text
    assert "    create  ClusterIssuer a" in text and "    create  Namespace cert-manager" in text
    assert f"  Helm chart oci://quay.io/jetstack/charts/cert-manager {CERT_MANAGER_VERSION}" in text
    assert "plan printed, nothing changed" in text
