"""custom_ca_conformance.kube and the rendered objects against a real kube-apiserver (the pinned local toolchain).

No kubelet or controllers run: objects are stored and validated, nothing is scheduled.
Skipped when kube-apiserver/etcd are not built (``python -m custom_ca_conformance.localplane.toolchain build``).
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid

import pytest
import upstream_schemas as schemas
import yaml

from custom_ca_conformance import kube
from custom_ca_conformance.model.errors import ProvisioningError
from custom_ca_conformance.model.names import CERT_MANAGER_NAMESPACE
from custom_ca_conformance.model.ownership import MANAGED_BY, MANAGED_BY_LABEL
from custom_ca_conformance.model.pki import (
    cert_to_pem,
    issue_leaf,
    istio_style_csr,
    make_self_signed_ca,
    new_private_key,
)
from custom_ca_conformance.model.topology import from_document
from custom_ca_conformance.render import templates

FOO_CURL = "spiffe://cluster.local/ns/{ns}/sa/curl"


@pytest.fixture
def api(control_plane):
    with control_plane.api_client() as api_client:
        yield api_client


@pytest.fixture
def namespace(control_plane) -> str:
    name = f"ns-{uuid.uuid4().hex[:8]}"  # kube-* is reserved for Kubernetes (and refused as a tenant)
    control_plane.ensure_namespace(name)
    return name


def _unique_topology():
    suffix = uuid.uuid4().hex[:6]
    return from_document({"signers": [f"s-{suffix}"], "defaultSigner": f"s-{suffix}",
                          "tenants": [{"namespace": f"t-{suffix}", "signer": f"s-{suffix}"}]}, source="test")


def _crds_from(path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "CustomResourceDefinition"]


def test_apply_creates_cluster_scoped_and_namespaced_objects_and_is_idempotent(api):
    from kubernetes import client

    topology = _unique_topology()
    objects = templates.namespace_objects(topology) + [
        o for o in templates.workload_objects(topology) if o["kind"] in ("ServiceAccount", "Service", "Deployment")]
    kube.apply(api, objects)
    kube.apply(api, objects)  # re-applying converges
    namespace = topology.tenants[0].namespace
    stored = client.CoreV1Api(api).read_namespace(namespace)
    assert stored.metadata.labels["istio-injection"] == "enabled"
    service = client.CoreV1Api(api).read_namespaced_service("httpbin", namespace)
    assert service.spec.ports[0].target_port == 8080
    assert client.AppsV1Api(api).read_namespaced_deployment("curl", namespace).metadata.labels[
        MANAGED_BY_LABEL] == MANAGED_BY
    assert kube.delete(api, list(reversed(objects))) == []
    assert kube.delete(api, objects[1:]) == []  # already gone: fine


def test_apply_reports_a_rejected_object(api, namespace):
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": namespace},
               "spec": {"ports": [{"port": 0}]}}
    with pytest.raises(ProvisioningError, match=rf"applying Service {namespace}/bad failed: HTTP 422: .*port"):
        kube.apply(api, [service])


def test_apply_of_an_unserved_kind_says_so(api, monkeypatch):
    monkeypatch.setattr(kube, "DISCOVERY_BUDGET_SECONDS", 1)
    with pytest.raises(ProvisioningError, match="does not serve example.com/v1 Nope"):
        kube.apply(api, [{"apiVersion": "example.com/v1", "kind": "Nope", "metadata": {"name": "x"}}])


def test_rendered_custom_resources_are_accepted_once_their_crds_are_established(api, control_plane):
    """The real cert-manager and Istio CRDs, then the rendered signers and ProxyConfigs through them."""
    try:
        cert_manager = schemas.go_module_dir(*schemas.CERT_MANAGER_MODULE)
        istio = schemas.go_module_dir(*schemas.ISTIO_MODULE)
    except schemas.SchemaUnavailable as exc:
        pytest.skip(str(exc))
    crds = _crds_from(cert_manager / "deploy" / "crds" / "cert-manager.io_clusterissuers.yaml")
    crds += _crds_from(cert_manager / "deploy" / "crds" / "cert-manager.io_certificates.yaml")
    crds += [c for c in _crds_from(istio / "manifests" / "charts" / "base" / "files" / "crd-all.gen.yaml")
             if c["metadata"]["name"] == "proxyconfigs.networking.istio.io"]
    kube.apply(api, crds)
    for crd in crds:
        kube.wait_crd_established(api, crd["metadata"]["name"], timeout=60)
    topology = _unique_topology()
    control_plane.ensure_namespace(CERT_MANAGER_NAMESPACE)
    kube.apply(api, templates.namespace_objects(topology))
    kube.apply(api, templates.signer_issuer_objects(topology) + templates.proxy_config_objects(topology))
    issuer = kube.dynamic_client(api).resources.get(api_version="cert-manager.io/v1", kind="ClusterIssuer")
    stored = kube.dynamic_client(api).get(issuer, name=topology.signers[0]).to_dict()
    assert stored["spec"] == {"ca": {"secretName": f"{topology.signers[0]}-ca-selfsigned"}}


def test_wait_secret_and_read_secret_pem(api, namespace):
    from kubernetes import client

    root = make_self_signed_ca("foo")
    client.CoreV1Api(api).create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="foo-ca-selfsigned"), type="kubernetes.io/tls",
        data={"ca.crt": base64.b64encode(root.cert_pem.encode()).decode(),
              "tls.crt": base64.b64encode(root.cert_pem.encode()).decode(),
              "tls.key": base64.b64encode(root.key_pem.encode()).decode()}))
    assert kube.wait_secret(api, namespace, "foo-ca-selfsigned", "ca.crt", timeout=10) == root.cert_pem
    ref = {"namespace": namespace, "name": "foo-ca-selfsigned", "key": "ca.crt"}
    assert kube.read_secret_pem(api, ref) == root.cert_pem
    with pytest.raises(ProvisioningError, match="(?s)no root certificate in Secret .*missing.*Secret not found"):
        kube.read_secret_pem(api, {**ref, "name": "missing"})


def test_wait_deployment_ready_timeout_shows_status_and_events(api, namespace, monkeypatch):
    from kubernetes import client
    from tenacity import wait_fixed

    monkeypatch.setattr(kube, "POLL_WAIT", wait_fixed(0.2))
    topology = from_document({"signers": ["a"], "tenants": [{"namespace": namespace, "signer": "a"}]}, source="t")
    kube.apply(api, [o for o in templates.workload_objects(topology) if o["metadata"]["name"] == "curl"])
    client.CoreV1Api(api).create_namespaced_event(namespace, client.CoreV1Event(
        metadata=client.V1ObjectMeta(name=f"curl.{uuid.uuid4().hex[:6]}"),
        involved_object=client.V1ObjectReference(kind="Deployment", name="curl", namespace=namespace),
        reason="Testing", message="no controller runs here", type="Warning",
        first_timestamp=dt.datetime.now(dt.timezone.utc), last_timestamp=dt.datetime.now(dt.timezone.utc)))
    with pytest.raises(ProvisioningError) as raised:
        kube.wait_deployment_ready(api, namespace, "curl", timeout=1)
    message = str(raised.value)
    assert f"expected: Deployment {namespace}/curl available" in message
    assert "conditions: no conditions; pods: none" in message
    assert "Warning Testing Deployment/curl: no controller runs here" in message


def test_csr_recorder_sees_a_csr_approved_signed_and_deleted(api, tmp_path):
    """The istiod round trip (facts §1.4) replayed by hand: create, approve, sign, delete."""
    from kubernetes import client

    certificates = client.CertificatesV1Api(api)
    recorder = kube.CsrRecorder(api, tmp_path / "csr.jsonl", watch_timeout_seconds=2).start()
    name = f"csr-workload-{uuid.uuid4().hex[:6]}"
    spiffe_id = FOO_CURL.format(ns="foo")
    key = new_private_key()
    csr_pem = istio_style_csr(spiffe_id, key)
    try:
        certificates.create_certificate_signing_request(client.V1CertificateSigningRequest(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1CertificateSigningRequestSpec(
                request=base64.b64encode(csr_pem).decode(), signer_name="clusterissuers.cert-manager.io/foo",
                expiration_seconds=3600, usages=["digital signature", "key encipherment", "server auth",
                                                 "client auth"])))
        csr = certificates.read_certificate_signing_request(name)
        csr.status.conditions = [client.V1CertificateSigningRequestCondition(
            type="Approved", status="True", reason="RAApproved", message="approved by the test")]
        certificates.replace_certificate_signing_request_approval(name, csr)
        ca = make_self_signed_ca("foo")
        leaf = issue_leaf(ca, csr_pem, not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
                          usages=["digital signature", "key encipherment", "server auth", "client auth"])
        csr = certificates.read_certificate_signing_request(name)
        csr.status.certificate = base64.b64encode(cert_to_pem(leaf).encode()).decode()
        certificates.replace_certificate_signing_request_status(name, csr)
        certificates.delete_certificate_signing_request(name)
        assert recorder.wait_until(lambda rs: any(r.name == name and r.event == "DELETED" for r in rs), timeout=30)
    finally:
        recorder.stop()
    mine = [r for r in recorder.records() if r.name == name]
    assert [r.event for r in mine][0] == "ADDED" and mine[-1].event == "DELETED"
    assert any(r.has_condition("Approved") for r in mine) and any(r.issued for r in mine)
    assert all(r.spiffe_ids == [spiffe_id] and r.signer_name == "clusterissuers.cert-manager.io/foo"
               and r.expiration_seconds == 3600 for r in mine)
    assert mine[0].username  # filled in by the API server: the admin user here, istiod on a cluster


def test_events_for_a_name_without_events(api, namespace):
    assert kube.events_for(api, namespace, "nothing-here") == f"events for {namespace}/nothing-here: none"
