"""A whole run on the real local node used as ``--custom-ca-cluster existing``: it deletes exactly what it made.

The node starts bare; the existing provider (with the node's images as its platform and
cert-manager from the local manifests, since nothing can be pulled here) installs cert-manager,
the signers, Istio and the workloads, then tears down. Every object of every listable kind is
listed before and after: the lists must be equal. A user's object put into a namespace the
run created is left, with its namespace, named, and unchanged.
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from custom_ca_conformance.cluster import builtin_provider
from custom_ca_conformance.cluster.contract import ProviderSettings
from custom_ca_conformance.cluster.existing import ExistingCluster
from custom_ca_conformance.cluster.provider import Provider
from custom_ca_conformance.kube.apply import dynamic_client
from custom_ca_conformance.model.errors import ProvisioningError
from custom_ca_conformance.model.ownership import DERIVED_KINDS
from custom_ca_conformance.model.topology import default_topology

# One node per machine: keep these with the node self-tests on one xdist worker.
pytestmark = pytest.mark.xdist_group("node")

# Kinds whose objects come and go by themselves while any cluster runs.
VOLATILE_KINDS = DERIVED_KINDS | {"CertificateSigningRequest"}


@pytest.fixture(scope="module")
def bare_node(local_provider_available, tmp_path_factory):
    local = builtin_provider("local", ProviderSettings(topology=default_topology(), progress=lambda line: None,
                                                       workdir=tmp_path_factory.mktemp("node") / "work"))
    local.check_requirements()
    local.adapter.obtain(local.new_record)
    local.adapter.node.wait_ready()  # settled: what the controllers make at start is in `before`
    try:
        yield local, local.adapter.node
    finally:
        local.teardown(local.record)


def as_existing(local: Provider, kubeconfig: str, workdir) -> Provider:
    """The existing adapter on the local node, installing from the local node's images."""
    settings = ProviderSettings(topology=default_topology(), workdir=workdir, kubeconfig=kubeconfig,
                                progress=lambda line: None)
    return Provider(ExistingCluster(settings, sources=local.adapter.sources), settings)


def cluster_objects(api) -> set[tuple[str, str, str, str]]:
    """(group, kind, namespace, name) of every object of every listable kind, one version per kind."""
    dynamic = dynamic_client(api)
    dynamic.resources.invalidate_cache()
    kinds = {}
    for item in dynamic.resources:
        for resource in item if isinstance(item, list) else [item]:
            if ("list" in (getattr(resource, "verbs", None) or []) and "/" not in resource.name
                    and not resource.kind.endswith("List") and resource.kind not in VOLATILE_KINDS):
                if (resource.group, resource.kind) not in kinds or resource.preferred:
                    kinds[(resource.group, resource.kind)] = resource
    found = set()
    for resource in kinds.values():
        for obj in dynamic.get(resource).items:
            found.add((resource.group, resource.kind, obj.metadata.namespace or "", obj.metadata.name))
    return found


def wait_settled(api, timeout: float = 180) -> None:
    """Until no namespace is terminating and no CRD is being deleted: deletion is asynchronous."""
    deadline = time.monotonic() + timeout
    while True:
        terminating = [ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items
                       if ns.metadata.deletion_timestamp]
        terminating += [crd.metadata.name for crd in client.ApiextensionsV1Api(api).list_custom_resource_definition().items
                        if crd.metadata.deletion_timestamp]
        if not terminating:
            return
        assert time.monotonic() < deadline, f"still being deleted after {timeout}s: {terminating}"
        time.sleep(1)


def test_node_a_clean_run_deletes_exactly_what_it_created_and_leaves_a_users_object(bare_node, tmp_path):
    local, node = bare_node
    with node.api_client() as api:
        before = cluster_objects(api)
        existing = as_existing(local, str(node.kubeconfig), tmp_path / "work")
        existing.check_requirements()
        run = existing.provision()
        core = client.CoreV1Api(api)
        core.create_namespaced_config_map("foo", {"metadata": {"name": "users-notes"}, "data": {"a": "b"}})
        version = core.read_namespaced_config_map("users-notes", "foo").metadata.resource_version
        with pytest.raises(ProvisioningError) as left:
            existing.teardown(run)
        assert str(left.value) == ("teardown left objects behind: left Namespace foo, which this run created: it now "
                                   "holds 1 object(s) this run did not create (ConfigMap foo/users-notes)")
        assert core.read_namespaced_config_map("users-notes", "foo").metadata.resource_version == version
        core.delete_namespaced_config_map("users-notes", "foo")
        core.delete_namespace("foo")
        wait_settled(api)
        after = cluster_objects(api)
    assert sorted(after - before) == [], "left behind"
    assert sorted(before - after) == [], "deleted although the run did not create them"


def test_node_plan_lists_the_local_run_without_provisioning(local_provider_available, tmp_path):
    """`--custom-ca-plan` on local: Istio's own objects from the run's istioctl, the built images; no node."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--pyargs",
                             "custom_ca_conformance.conformance", "--custom-ca-cluster", "local", "--custom-ca-plan"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "plan for local (single node: Kubernetes v1.36.3" in text
    assert "    create  Deployment istio-system/istiod" in text
    assert "    create  Deployment cert-manager/cert-manager" in text
    assert "  image docker.io/custom-ca-conformance/pilot:" in text
    assert "REFUSE" not in text and "istioctl is not at hand" not in text
    assert not (tmp_path / "custom-ca-report" / "evidence" / "state.json").exists()  # nothing was provisioned
