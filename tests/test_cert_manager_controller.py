"""Self-test: our cert-manager controller binary signs Kubernetes CSRs against a real control plane.

etcd + kube-apiserver from the toolchain; cert-manager's CRDs from its module; the
Namespace/ServiceAccount/RBAC of manifests/cert-manager-local.yaml; the controller run out
of cluster with a kubeconfig holding *the cert-manager ServiceAccount's token* (so the
manifest's RBAC is what is tested, not the admin's); then the signer chain of
manifests/signer-issuers.yaml and a CSR for ``clusterissuers.cert-manager.io/<signer>``.
Skips only when kube-apiserver/etcd or the controller binary are not built.
"""

from __future__ import annotations

import base64
import datetime as dt
from importlib import resources

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from custom_ca_conformance.localplane.controlplane import start_control_plane
from custom_ca_conformance.localplane.controlplane_config import SERVICE_ACCOUNT_ISSUER
from custom_ca_conformance.localplane.images import binaries, cert_manager
from custom_ca_conformance.localplane.processes import ProcessGroup

SIGNER = "foo"
NAMESPACE = cert_manager.NAMESPACE
WAIT_SECONDS = 60


class _NotYet(Exception):
    pass


def _eventually(check, seconds: float = WAIT_SECONDS):
    """Run ``check`` until it stops raising _NotYet; its result."""
    return Retrying(stop=stop_after_delay(seconds), wait=wait_fixed(0.1),
                    retry=retry_if_exception_type(_NotYet), reraise=True)(check)


@pytest.fixture(scope="module")
def controller_binary():
    try:
        found = binaries.find_binary(cert_manager.BINARY)
    except Exception:  # noqa: BLE001 - no Go: nothing is built
        found = None
    if found is None:
        pytest.skip("cert-manager-controller is not built: run `python -m custom_ca_conformance.localplane.toolchain build` "
                    "or `python -m custom_ca_conformance.localplane.images build cert-manager-controller`")
    return found


@pytest.fixture(scope="module")
def plane(control_plane_toolchain, tmp_path_factory):
    plane = start_control_plane(control_plane_toolchain, tmp_path_factory.mktemp("cm-controlplane"),
                                progress=lambda line: None)
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def cert_manager_running(plane, controller_binary, tmp_path_factory):
    """CRDs + manifests applied, the controller running as the cert-manager ServiceAccount."""
    with plane.api_client() as api:
        _apply(api, cert_manager.crd_documents())
        _eventually(lambda: _crds_established(api))
        documents = cert_manager.manifest_documents("docker.io/custom-ca-conformance/cert-manager-controller:test")
        # No kubelet here: everything but the Deployment, whose pod could never run.
        _apply(api, [doc for doc in documents if doc["kind"] != "Deployment"])
    token = plane.service_account_token(NAMESPACE, "cert-manager", [SERVICE_ACCOUNT_ISSUER])
    workdir = tmp_path_factory.mktemp("cert-manager")
    kubeconfig = plane.kubeconfig_for_token(token, workdir / "cert-manager.kubeconfig")
    group = ProcessGroup(workdir / "logs")
    process = group.start("cert-manager-controller",
                          cert_manager.controller_argv(controller_binary, kubeconfig=kubeconfig))
    yield process
    group.stop()


def test_crd_paths_come_from_the_required_module_version():
    paths = cert_manager.crd_paths()
    version = cert_manager.module_version()
    assert f"cert-manager@{version}" in str(paths[0])
    assert {p.name for p in paths} >= {"cert-manager.io_clusterissuers.yaml", "cert-manager.io_certificates.yaml",
                                      "cert-manager.io_certificaterequests.yaml", "cert-manager.io_issuers.yaml"}


def test_manifest_renders_the_image_and_namespace():
    documents = cert_manager.manifest_documents("docker.io/x/cert-manager-controller:v1", namespace="cm")
    kinds = [doc["kind"] for doc in documents]
    assert kinds[0] == "Namespace" and kinds[-1] == "Deployment"
    deployment = documents[-1]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "docker.io/x/cert-manager-controller:v1"
    assert "--cluster-resource-namespace=cm" in container["args"]
    assert all(subject["namespace"] == "cm" for doc in documents if doc["kind"] == "ClusterRoleBinding"
               for subject in doc["subjects"])


def test_approved_csr_for_the_ca_cluster_issuer_is_signed(plane, cert_manager_running):
    with plane.api_client() as api:
        objects = _signer_objects(SIGNER)
        _apply(api, objects)
        [ca_certificate] = [obj for obj in objects if obj["kind"] == "Certificate"]
        secret = _eventually(lambda: _ca_secret(api, ca_certificate["spec"]["secretName"]))
        ca = x509.load_pem_x509_certificate(base64.b64decode(secret.data["ca.crt"]))
        _eventually(lambda: _cluster_issuer_ready(api, SIGNER))

        certificates = client.CertificatesV1Api(api)
        approved = _create_csr(certificates, "approved", f"clusterissuers.cert-manager.io/{SIGNER}")
        unapproved = _create_csr(certificates, "unapproved", f"clusterissuers.cert-manager.io/{SIGNER}")
        _approve(certificates, approved)
        pem = _eventually(lambda: _issued(certificates, approved))

        leaf = x509.load_pem_x509_certificates(pem)[0]
        assert leaf.issuer == ca.subject
        ca.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm)) \
            if isinstance(ca.public_key(), ec.EllipticCurvePublicKey) else ca.public_key().verify(
                leaf.signature, leaf.tbs_certificate_bytes, _rsa_padding(), leaf.signature_hash_algorithm)
        assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/foo/sa/httpbin"]
        assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc) <= dt.timedelta(seconds=3600 + 300)
        # Unapproved CSRs are left alone.
        assert not certificates.read_certificate_signing_request(unapproved).status.certificate
    assert cert_manager_running.is_alive(), f"controller exited; see {cert_manager_running.log_path}"


# --- helpers ----------------------------------------------------------------------------------


def _signer_objects(signer: str) -> list[dict]:
    template = resources.files("custom_ca_conformance.manifests").joinpath("signer-issuers.yaml").read_text()
    try:  # the CA Secret's name moved into topology (others edit it); fall back to the old spelling
        from custom_ca_conformance.model.topology import ca_secret_name
    except ImportError:
        def ca_secret_name(name: str) -> str:
            return f"{name}-ca-selfsigned"
    values = {"signer": signer, "cert_manager_namespace": NAMESPACE, "ca_secret": ca_secret_name(signer)}
    return [cert_manager.fill(doc, values) for doc in yaml.safe_load_all(template) if doc]


def _apply(api, documents: list[dict]) -> None:
    """Create each object (409 is fine): built-in kinds via the typed APIs, CRs via CustomObjectsApi."""
    from kubernetes import utils

    custom = client.CustomObjectsApi(api)
    for doc in documents:
        group, _, version = doc["apiVersion"].rpartition("/")
        try:
            if doc["kind"] == "CustomResourceDefinition":
                client.ApiextensionsV1Api(api).create_custom_resource_definition(doc)
            elif group.endswith("cert-manager.io"):
                plural = doc["kind"].lower() + "s"
                namespace = doc["metadata"].get("namespace")
                if namespace:
                    custom.create_namespaced_custom_object(group, version, namespace, plural, doc)
                else:
                    custom.create_cluster_custom_object(group, version, plural, doc)
            else:
                utils.create_from_dict(api, doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
        except utils.FailToCreateError as exc:
            if any(error.status != 409 for error in exc.api_exceptions):
                raise


def _crds_established(api) -> None:
    for crd in client.ApiextensionsV1Api(api).list_custom_resource_definition().items:
        conditions = {c.type: c.status for c in (crd.status.conditions or [])}
        if conditions.get("Established") != "True":
            raise _NotYet(crd.metadata.name)


def _ca_secret(api, name: str):
    try:
        secret = client.CoreV1Api(api).read_namespaced_secret(name, NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:
            raise _NotYet(name) from None
        raise
    if not (secret.data or {}).get("ca.crt"):
        raise _NotYet(f"{name} has no ca.crt yet")
    return secret


def _cluster_issuer_ready(api, name: str) -> None:
    issuer = client.CustomObjectsApi(api).get_cluster_custom_object("cert-manager.io", "v1", "clusterissuers", name)
    conditions = {c["type"]: c["status"] for c in issuer.get("status", {}).get("conditions", [])}
    if conditions.get("Ready") != "True":
        raise _NotYet(f"ClusterIssuer {name}: {conditions}")


def _create_csr(certificates, name: str, signer_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "custom-ca-conformance")]))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/foo/sa/httpbin")]), critical=True)
               .sign(key, hashes.SHA256()))
    body = client.V1CertificateSigningRequest(
        metadata=client.V1ObjectMeta(name=f"csr-{name}"),
        spec=client.V1CertificateSigningRequestSpec(
            request=base64.b64encode(request.public_bytes(serialization.Encoding.PEM)).decode(),
            signer_name=signer_name,
            expiration_seconds=3600,
            usages=["digital signature", "key encipherment", "client auth", "server auth"],
        ),
    )
    return certificates.create_certificate_signing_request(body).metadata.name


def _approve(certificates, name: str) -> None:
    csr = certificates.read_certificate_signing_request(name)
    csr.status.conditions = [client.V1CertificateSigningRequestCondition(
        type="Approved", status="True", reason="SelfTest", message="approved by the self-test")]
    certificates.replace_certificate_signing_request_approval(name, csr)


def _issued(certificates, name: str) -> bytes:
    status = certificates.read_certificate_signing_request(name).status
    if not status.certificate:
        raise _NotYet(f"{name}: {status.conditions}")
    return base64.b64decode(status.certificate)


def _rsa_padding():
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.PKCS1v15()
