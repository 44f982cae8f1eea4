"""A vendor's signer installed from its profile: helm commands, manifests applied and removed for real."""

import pytest
from kubernetes import client

from custom_ca_conformance.cluster.contract import ProviderSettings
from custom_ca_conformance.cluster import builtin_provider
from custom_ca_conformance.install import vendor_signer
from custom_ca_conformance.model.errors import ProviderUnavailable, ProvisioningError
from custom_ca_conformance.model.topology import default_topology

HELM = {"release": "acme-signer", "chart": "oci://registry.acme.example/charts/csr-signer", "version": "2.3.0",
        "namespace": "acme-ca", "values": {"approval": {"enforce": True}}}


def test_helm_install_waits_in_the_profile_namespace_with_the_values_file(tmp_path):
    argv = vendor_signer.helm_install_argv(HELM, tmp_path / "v.yaml", helm="helm", kubeconfig="/k", context="c")
    assert argv[:5] == ["helm", "upgrade", "--install", "acme-signer", "oci://registry.acme.example/charts/csr-signer"]
    assert argv[argv.index("--version") + 1] == "2.3.0"
    assert argv[argv.index("--namespace") + 1] == "acme-ca" and "--create-namespace" in argv and "--wait" in argv
    assert argv[argv.index("--values") + 1] == str(tmp_path / "v.yaml")
    assert argv[-4:] == ["--kubeconfig", "/k", "--kube-context", "c"]


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(ProvisioningError, match=r"missing.yaml: cannot be read"):
        vendor_signer.manifest_objects(["missing.yaml"], tmp_path)
    (tmp_path / "bad.yaml").write_text("kind: [")
    with pytest.raises(ProvisioningError, match=r"bad.yaml: not valid YAML"):
        vendor_signer.manifest_objects(["bad.yaml"], tmp_path)


def test_the_local_provider_refuses_a_signer_it_cannot_run(tmp_path):
    settings = ProviderSettings(topology=default_topology(), workdir=tmp_path, signer_only=True,
                                signer_install={"manifests": ["signer.yaml"]}, signer_profile_dir=tmp_path)
    with pytest.raises(ProviderUnavailable, match="cannot pull a vendor signer's chart or images"):
        builtin_provider("local", settings).check_requirements()


MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: acme-ca}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: acme-signer-config, namespace: acme-ca}
data: {signerName: ca.acme.example/istio-workloads}
"""


def test_existing_provider_installs_the_profile_manifests_for_signer_runs_and_removes_them(control_plane, tmp_path):
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "signer.yaml").write_text(MANIFEST)
    settings = ProviderSettings(topology=default_topology(), workdir=tmp_path / "work", signer_only=True,
                                kubeconfig=str(control_plane.kubeconfig),
                                signer_install={"manifests": ["signer.yaml"]},
                                signer_profile_dir=tmp_path / "profile")
    provider = builtin_provider("existing", settings)
    provider.check_requirements()  # needs neither helm nor istioctl for a manifests-only signer run
    run = provider.provision()
    with control_plane.api_client() as api:
        core = client.CoreV1Api(api)
        assert core.read_namespaced_config_map("acme-signer-config", "acme-ca").data == {
            "signerName": "ca.acme.example/istio-workloads"}
        provider.teardown(run)
        with pytest.raises(client.ApiException) as gone:
            core.read_namespaced_config_map("acme-signer-config", "acme-ca")
        assert gone.value.status == 404
    assert run.istioctl is None  # cert-manager and Istio were not installed
    assert [(e["kind"], e["name"]) for e in run.ledger] == [("Namespace", "acme-ca"),
                                                                 ("ConfigMap", "acme-signer-config")]
