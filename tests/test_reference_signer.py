"""Self-tests for the reference signer: its decisions and breakages (pure), then as a process."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from kubernetes import client
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from custom_ca_conformance.model import certificates, chains, pki
from custom_ca_conformance.probes.csr_contract import ISTIO_USAGES, CsrDriver
from custom_ca_conformance.signer import Breakage, SignerCA, ca_secret_name, signer_rbac_objects, start_reference_signer
from custom_ca_conformance.signer.decisions import Action, decide, parse_go_duration
from custom_ca_conformance.signer.issuing import DEFAULT_EXPIRATION_SECONDS, issue_chain

FOO = "clusterissuers.cert-manager.io/foo"
BAR = "clusterissuers.cert-manager.io/bar"
NOT_MINE = "clusterissuers.cert-manager.io/not-mine"
SPIFFE_ID = "spiffe://cluster.local/ns/foo/sa/httpbin"
ISSUE_TIMEOUT_SECONDS = 10
EXPIRATION_TOLERANCE = dt.timedelta(seconds=60)


@pytest.fixture(scope="module")
def foo_ca() -> SignerCA:
    return SignerCA.generate(FOO)


@pytest.fixture(scope="module")
def istio_request() -> bytes:
    return pki.istio_style_csr(SPIFFE_ID, pki.new_private_key("ec-p256"))


def _csr_object(request_pem: bytes, *, signer=FOO, conditions=(), certificate=None, expiration=3600,
                annotations=None, usages=ISTIO_USAGES) -> client.V1CertificateSigningRequest:
    return client.V1CertificateSigningRequest(
        metadata=client.V1ObjectMeta(name="csr-test", annotations=annotations),
        spec=client.V1CertificateSigningRequestSpec(
            request=base64.b64encode(request_pem).decode(), signer_name=signer, usages=list(usages),
            expiration_seconds=expiration),
        status=client.V1CertificateSigningRequestStatus(
            certificate=certificate,
            conditions=[client.V1CertificateSigningRequestCondition(type=kind, status="True") for kind in conditions]),
    )


def _ca_request(key) -> bytes:
    builder = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([]))
               .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SPIFFE_ID)]), critical=True)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# --- decisions (no cluster) --------------------------------------------------------------


@pytest.mark.parametrize(("state", "breakages", "expected"), [
    (dict(conditions=["Approved"]), (), Action.SIGN),
    (dict(conditions=[]), (), Action.IGNORE),
    (dict(conditions=["Denied"]), (), Action.IGNORE),
    (dict(conditions=["Approved"], signer=NOT_MINE), (), Action.IGNORE),
    (dict(conditions=["Approved", "Failed"]), (), Action.IGNORE),
    (dict(conditions=["Approved"], certificate="c2VlbiBiZWZvcmU="), (), Action.IGNORE),
    (dict(conditions=["Approved"], annotations={"experimental.cert-manager.io/request-duration": "soon"}), (),
     Action.FAIL),
    (dict(conditions=["Approved"], usages=["digital signature", "code signing"]), (), Action.FAIL),
    (dict(conditions=["Approved"], annotations={"experimental.cert-manager.io/request-is-ca": "true"}), (),
     Action.FAIL),
    (dict(conditions=[]), (Breakage.SIGN_UNAPPROVED,), Action.SIGN),
    (dict(conditions=["Denied"]), (Breakage.SIGN_DENIED,), Action.SIGN),
    (dict(conditions=["Approved"], signer=NOT_MINE), (Breakage.SIGN_FOREIGN,), Action.SIGN),
    (dict(conditions=["Approved"]), (Breakage.NEVER_SIGN,), Action.IGNORE),
    (dict(conditions=["Approved"], usages=["code signing"]), (Breakage.NEVER_FAIL,), Action.IGNORE),
], ids=["approved", "unapproved", "denied", "foreign", "failed", "issued", "bad-duration-annotation",
        "refused-usage", "ca-annotation", "sign-unapproved", "sign-denied", "sign-foreign", "never-sign",
        "never-fail"])
def test_decision(istio_request, state, breakages, expected):
    decision = decide(_csr_object(istio_request, **state), [FOO, BAR], frozenset(breakages))

    assert decision.action is expected, decision


def test_ca_request_in_the_pkcs10_extensions_fails():
    decision = decide(_csr_object(_ca_request(pki.new_private_key("ec-p256")), conditions=["Approved"]), [FOO])

    assert (decision.action, decision.reason) == (Action.FAIL, "CARequested")


def test_go_durations_parse_like_time_parse_duration():
    assert parse_go_duration("1h30m") == 5400
    assert parse_go_duration("90m") == parse_go_duration("5400s") == 5400
    for invalid in ("", "soon", "1x", "1h 30m"):
        with pytest.raises(ValueError):
            parse_go_duration(invalid)


# --- issued chains and breakages (no cluster) -------------------------------------------------


def _issue(request_pem, ca, *breakages, expiration_seconds=3600, other_ca=None):
    return issue_chain(request_pem, ca, expiration_seconds=expiration_seconds, usages=ISTIO_USAGES,
                       breakages=frozenset(breakages), other_ca=other_ca)


def test_chain_is_leaf_and_intermediate_verifying_to_the_root(foo_ca, istio_request):
    chain = _issue(istio_request, foo_ca)

    assert len(chain) == 2 and foo_ca.root not in chain
    assert chains.verify_workload_chain(chain, [foo_ca.root]).ok
    assert certificates.spiffe_ids(chain[0]) == [SPIFFE_ID]
    assert not certificates.is_ca(chain[0])
    assert certificates.kube_usages(chain[0]) == set(ISTIO_USAGES)


def test_each_breakage_shows_in_the_chain(foo_ca, istio_request):
    other = SignerCA.generate("unpublished")
    lifetime = lambda chain: chain[0].not_valid_after_utc - chain[0].not_valid_before_utc  # noqa: E731

    assert certificates.is_ca(_issue(istio_request, foo_ca, Breakage.SET_CA_TRUE)[0])
    assert certificates.spiffe_ids(_issue(istio_request, foo_ca, Breakage.DROP_URI_SAN)[0]) == []
    assert _issue(istio_request, foo_ca, Breakage.INCLUDE_ROOT)[-1] == foo_ca.root
    assert lifetime(_issue(istio_request, foo_ca, Breakage.IGNORE_EXPIRATION_SECONDS)) > dt.timedelta(
        seconds=DEFAULT_EXPIRATION_SECONDS)
    foreign_chain = _issue(istio_request, foo_ca, Breakage.SIGN_WITH_OTHER_CA, other_ca=other)
    assert not chains.verify_workload_chain(foreign_chain, [foo_ca.root]).ok
    garbage = _issue(istio_request, foo_ca, Breakage.GARBAGE_CERTIFICATE)
    assert not certificates.same_public_key(garbage[0], x509.load_pem_x509_csr(istio_request))


@pytest.mark.parametrize(("breakage", "explanation"), [
    (Breakage.SET_CA_TRUE, "the leaf is marked as a CA"),
    (Breakage.VIOLATE_PATH_LENGTH, "2nd issuer CN=pathLen 0 CA"),
    (Breakage.ISSUER_WITHOUT_CERT_SIGN, "1st issuer CN=CA without keyCertSign"),
    (Breakage.EXPIRED_INTERMEDIATE, "1st issuer expired"),
    (Breakage.DROP_CLIENT_AUTH, "the leaf lacks extended key usage client_auth"),
    (Breakage.DROP_SERVER_AUTH, "the leaf lacks extended key usage server_auth"),
])
def test_each_chain_breakage_fails_path_validation_and_nothing_else(foo_ca, istio_request, breakage, explanation):
    chain = _issue(istio_request, foo_ca, breakage)
    leaf = chain[0]

    check = chains.verify_workload_chain(chain, [foo_ca.root])
    assert not check.ok and explanation in check.detail, check.detail
    # What the other contract tests judge is intact: key, identity, lifetime.
    assert certificates.same_public_key(leaf, x509.load_pem_x509_csr(istio_request))
    assert certificates.spiffe_ids(leaf) == [SPIFFE_ID]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc >= dt.timedelta(seconds=3600)


def test_ca_survives_a_round_trip_through_its_secret(foo_ca):
    loaded = SignerCA.from_secret_data(FOO, foo_ca.secret_data())

    assert loaded.root == foo_ca.root and loaded.issuing.cert == foo_ca.issuing.cert
    assert loaded.issuing.key_pem == foo_ca.issuing.key_pem


def test_rbac_grants_sign_on_exactly_the_signer_names():
    objects = signer_rbac_objects([FOO, BAR])
    cluster_role = next(o for o in objects if o["kind"] == "ClusterRole")
    sign = next(rule for rule in cluster_role["rules"] if rule["resources"] == ["signers"])

    assert sign == {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "verbs": ["sign"],
                    "resourceNames": sorted([FOO, BAR])}
    assert {o["kind"] for o in objects} == {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


# --- the signer process against the real apiserver --------------------------------------------


@pytest.fixture(scope="module")
def running_signer(control_plane, tmp_path_factory):
    signer = start_reference_signer(control_plane, [FOO, BAR], tmp_path_factory.mktemp("signer"),
                                    control_plane.processes)
    yield signer
    control_plane.processes.stop_process(signer.process_name)


@pytest.fixture
def driver(control_plane, running_signer, request):
    with control_plane.api_client() as api:
        csr_driver = CsrDriver(api, request.node.nodeid)
        yield csr_driver
        csr_driver.cleanup()


def _published_root(driver: CsrDriver, signer_name: str) -> x509.Certificate:
    secret = driver.core.read_namespaced_secret(ca_secret_name(signer_name), "cert-manager")
    return pki.load_pem_chain(base64.b64decode(secret.data["ca.crt"]))[0]


def _settle_earlier_events(driver: CsrDriver) -> None:
    """Wait until the signer has handled every CSR event so far.

    The signer handles its watch events in order, so once a CSR approved after the others
    is issued, it has decided about them too: no fixed observation window needed.
    """
    barrier = driver.submit(FOO)
    driver.approve(barrier)
    assert driver.wait(barrier, ISSUE_TIMEOUT_SECONDS).certificate_pem, driver.describe(barrier)


def _signer_log_once_it_has(running_signer, text: str, budget: float = 5) -> str:
    """The signer's log, read again for a moment: it logs right after writing status.certificate."""
    retrying = Retrying(stop=stop_after_delay(budget), wait=wait_fixed(0.1), retry=retry_if_result(lambda log: text not in log),
                        retry_error_callback=lambda state: state.outcome.result())
    return retrying(_signer_log, running_signer)


def _signer_log(running_signer) -> str:
    return running_signer.log_path.read_text()


@pytest.mark.parametrize("key_kind", ["rsa", "ecdsa", "ed25519"])
def test_approved_istio_csr_is_issued_and_verifies_to_the_published_root(driver, running_signer, key_kind):
    csr = driver.submit(BAR, key_kind=key_kind, spiffe_id=SPIFFE_ID)
    driver.approve(csr)

    outcome = driver.wait(csr, ISSUE_TIMEOUT_SECONDS)

    assert outcome.certificate_pem, driver.describe(csr)
    chain = pki.load_pem_chain(outcome.certificate_pem)
    check = chains.verify_workload_chain(chain, [_published_root(driver, BAR)])
    assert check.ok, check.detail
    assert certificates.same_public_key(chain[0], csr.key)
    assert certificates.spiffe_ids(chain[0]) == [SPIFFE_ID]
    assert f"signed {csr.name} ({BAR}) for {SPIFFE_ID} ttl 3600s" in _signer_log_once_it_has(
        running_signer, f"signed {csr.name} ")


def test_unapproved_denied_and_foreign_csrs_are_left_alone(driver, running_signer):
    unapproved = driver.submit(FOO)
    denied = driver.submit(FOO)
    driver.deny(denied)
    foreign = driver.submit(NOT_MINE)
    driver.approve(foreign)

    _settle_earlier_events(driver)

    for csr in (unapproved, denied, foreign):
        status = driver.api.read_certificate_signing_request(csr.name).status
        failed = any(c.type == "Failed" for c in status.conditions or [])
        assert not status.certificate and not failed, driver.describe(csr)
    log = _signer_log(running_signer)
    assert f"ignored {unapproved.name}: not approved" in log
    assert f"ignored {denied.name}: denied" in log
    assert f"ignored {foreign.name}: signer {NOT_MINE} is not mine" in log


def test_a_wait_for_a_signer_that_never_signs_ends_soon_after_stop(driver, running_signer):
    """At the end of a run nobody needs the certificate a contract CSR waits for: ``stop`` ends the wait."""
    import threading
    import time

    from custom_ca_conformance.probes.csr_contract import STOP_CHECK_SECONDS

    csr = driver.submit(NOT_MINE)
    driver.approve(csr)
    outcome: list = []
    waiting = threading.Thread(target=lambda: outcome.append(driver.wait(csr, 120)))
    waiting.start()
    time.sleep(0.5)
    stopped_at = time.monotonic()
    driver.stop()
    waiting.join(timeout=30)
    took = time.monotonic() - stopped_at
    assert not waiting.is_alive() and took <= STOP_CHECK_SECONDS + 1.5, f"the wait ended {took:.1f} s after stop"
    assert outcome and outcome[0].certificate_pem is None and outcome[0].has_condition("Approved"), outcome


@pytest.mark.parametrize("expiration_seconds", [3600, 600])
def test_expiration_seconds_is_honoured(driver, expiration_seconds):
    csr = driver.submit(FOO, expiration_seconds=expiration_seconds)
    driver.approve(csr)

    outcome = driver.wait(csr, ISSUE_TIMEOUT_SECONDS)

    assert outcome.certificate_pem, driver.describe(csr)
    leaf = pki.load_pem_chain(outcome.certificate_pem)[0]
    requested = outcome.created_at + dt.timedelta(seconds=expiration_seconds)
    assert abs(leaf.not_valid_after_utc - requested) <= EXPIRATION_TOLERANCE, certificates.describe_cert(leaf)
    assert outcome.created_at - leaf.not_valid_before_utc <= dt.timedelta(minutes=1)


@pytest.mark.parametrize(("annotations", "reason"), [
    ({"experimental.cert-manager.io/request-is-ca": "true"}, "CARequested"),
    ({"experimental.cert-manager.io/request-duration": "not-a-duration"}, "ErrorParseDuration"),
    ({"experimental.cert-manager.io/request-duration": "5m"}, "InvalidDuration"),
], ids=["ca-request", "unparseable-duration", "duration-below-600s"])
def test_unsignable_request_gets_failed_with_a_reason(driver, annotations, reason):
    csr = driver.submit(FOO, annotations=annotations)
    driver.approve(csr)

    outcome = driver.wait(csr, ISSUE_TIMEOUT_SECONDS)

    failed = [c for c in outcome.conditions if c["type"] == "Failed"]
    assert outcome.certificate_pem is None, driver.describe(csr)
    assert failed and failed[0]["status"] == "True" and failed[0]["reason"] == reason, driver.describe(csr)
    assert failed[0]["message"]


def test_signer_identity_may_sign_only_its_own_signer_names(control_plane, running_signer):
    user = "system:serviceaccount:cert-manager:reference-signer"

    def allowed(signer_name: str) -> bool:
        review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=user, groups=["system:serviceaccounts", "system:serviceaccounts:cert-manager"],
            resource_attributes=client.V1ResourceAttributes(
                group="certificates.k8s.io", resource="signers", verb="sign", name=signer_name)))
        with control_plane.api_client() as api:
            return client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed

    assert allowed(FOO) and allowed(BAR)
    assert not allowed(NOT_MINE)
