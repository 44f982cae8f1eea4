"""Contract of a Kubernetes CSR signer that Istio's registration authority relies on.

Every CSR here is shaped as istiod sends it: empty subject, one SPIFFE URI SAN and nothing else,
usages digital signature, key encipherment, server auth and client auth. Property tests share
one issued certificate per signer and key type; when there is none they skip and point at the
issuance test that failed, so one defect fails one test.
"""

from __future__ import annotations

import datetime as dt

import pytest

from custom_ca_conformance.model import pki
from custom_ca_conformance.model.certificates import describe_cert, same_public_key, spiffe_ids
from custom_ca_conformance.model.chains import verify_workload_chain
from custom_ca_conformance.model.messages import mismatch
from custom_ca_conformance.model.vocabulary import Feature, Stage, declared_gap
from custom_ca_conformance.probes.csr_contract import CONTRACT_EXPIRATION_SECONDS, FOREIGN_SIGNER, ISTIO_USAGES, KEY_KINDS, CsrDriver, read_ca_bundle

pytestmark = [pytest.mark.signer, pytest.mark.requires(Stage.SIGNERS)]

EXPIRATION_TOLERANCE = dt.timedelta(seconds=90)
BAD_DURATION_ANNOTATION = {"experimental.cert-manager.io/request-duration": "not-a-duration"}


@pytest.fixture
def driver(signer_cluster, request):
    d = CsrDriver(signer_cluster.api_client, request.node.nodeid)
    yield d
    d.cleanup()


# Each key kind is a signer feature a profile may declare unsupported.
KEY_KIND_PARAMS = [pytest.param(kind, marks=pytest.mark.requires(Feature(kind))) for kind in KEY_KINDS]


def _issued(issued_certificates, signer, profile, key_kind=None):
    """The shared certificate of ``key_kind`` (default: the first kind the signer supports)."""
    if key_kind is None:
        supported = [kind for kind in KEY_KINDS if profile.supports(Feature(kind))]
        if not supported:
            pytest.skip(declared_gap(Feature(KEY_KINDS[0]), profile.name, f"every key kind, {profile.source}"))
        key_kind = supported[0]
    case = issued_certificates(signer, key_kind)
    if case.outcome.certificate_pem is None:
        pytest.skip(f"no certificate was issued for {signer.signer_name} ({key_kind}): "
                    "see test_approved_istio_csr_is_issued for this signer and key kind")
    return case


def _issues_at_all(signer, profile, issued_certificates) -> bool:
    """Whether the signer issued the shared CSR of any key kind it supports (or supports none)."""
    kinds = [kind for kind in KEY_KINDS if profile.supports(Feature(kind))]
    return not kinds or any(issued_certificates(signer, kind).outcome.certificate_pem for kind in kinds)


def _parsed_chain(case):
    try:
        return pki.load_pem_chain(case.outcome.certificate_pem)
    except pki.PkiError as exc:
        pytest.skip(f"status.certificate does not parse ({exc}): see test_issued_certificate_is_wellformed_pem")


@pytest.mark.parametrize("key_kind", KEY_KIND_PARAMS)
def test_approved_istio_csr_is_issued(signer, key_kind, signer_profile, issued_certificates):
    case = issued_certificates(signer, key_kind)
    assert case.outcome.certificate_pem and not case.outcome.has_condition("Failed"), mismatch(
        f"status.certificate within {signer_profile.issue_timeout_seconds:.0f}s of approval, no Failed condition",
        case.description,
        f"CertificateSigningRequest {case.csr.name} and the signer controller's log",
    )


def test_issued_certificate_is_wellformed_pem(signer, signer_profile, issued_certificates):
    case = _issued(issued_certificates, signer, signer_profile)
    text = case.outcome.certificate_pem.decode(errors="replace")
    block_types = {line[len("-----BEGIN "):-5] for line in text.splitlines() if line.startswith("-----BEGIN ")}
    try:
        chain = pki.load_pem_chain(case.outcome.certificate_pem)
    except pki.PkiError as exc:
        chain, problem = [], str(exc)
    else:
        problem = ""
    assert chain and block_types == {"CERTIFICATE"}, mismatch(
        "one or more PEM CERTIFICATE blocks, each an X.509 certificate",
        problem or f"PEM block types {sorted(block_types)}",
        f"status.certificate of CertificateSigningRequest {case.csr.name}",
    )


@pytest.mark.parametrize("key_kind", KEY_KIND_PARAMS)
def test_issued_certificate_carries_the_request_public_key(signer, key_kind, signer_profile, issued_certificates):
    case = _issued(issued_certificates, signer, signer_profile, key_kind)
    leaf = _parsed_chain(case)[0]
    assert same_public_key(leaf, case.csr.key), mismatch(
        "the leaf certificate's public key is the CSR's", describe_cert(leaf), case.csr.name)


def test_issued_certificate_carries_the_spiffe_uri_san(signer, signer_profile, issued_certificates):
    case = _issued(issued_certificates, signer, signer_profile)
    leaf = _parsed_chain(case)[0]
    assert spiffe_ids(leaf) == [case.csr.spiffe_id], mismatch(
        f"exactly the URI SAN {case.csr.spiffe_id}", describe_cert(leaf), case.csr.name)


@pytest.mark.requires(Feature.EXPIRATION_SECONDS)
def test_expiration_seconds_is_honoured(signer, signer_profile, issued_certificates):
    case = _issued(issued_certificates, signer, signer_profile)
    leaf = _parsed_chain(case)[0]
    requested_until = case.created_at + dt.timedelta(seconds=CONTRACT_EXPIRATION_SECONDS)
    drift = abs(leaf.not_valid_after_utc - requested_until)
    assert drift <= EXPIRATION_TOLERANCE, mismatch(
        f"notAfter {requested_until:%Y-%m-%dT%H:%M:%SZ} (spec.expirationSeconds={CONTRACT_EXPIRATION_SECONDS}) "
        f"within {EXPIRATION_TOLERANCE.seconds}s",
        f"notAfter {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, off by {drift}",
        case.csr.name,
    )


def test_chain_verifies_to_the_published_ca_bundle(signer, signer_profile, signer_cluster, issued_certificates):
    case = _issued(issued_certificates, signer, signer_profile)
    chain = _parsed_chain(case)
    published = read_ca_bundle(signer.ca_bundle, signer_cluster.api_client)
    bundle = pki.load_pem_chain(published) if published else chain[-1:]
    check = verify_workload_chain(chain, bundle)
    assert check.ok, mismatch(
        f"the chain in status.certificate verifies, as a sidecar uses it, to {signer.ca_bundle.describe()} "
        f"({'; '.join(describe_cert(c) for c in bundle)}): leaf CA:FALSE with usages {list(ISTIO_USAGES)}, "
        "each issuer a CA allowed to sign certificates within its pathLenConstraint, all valid now",
        check.detail,
        f"CertificateSigningRequest {case.csr.name}",
    )


def test_unapproved_csr_is_not_issued(signer, signer_profile, unissued_cases):
    csr, outcome = unissued_cases.case(signer.signer_name, "unapproved")
    assert outcome.certificate_pem is None, mismatch(
        f"no certificate while the CSR is not approved (watched {signer_profile.observe_seconds:.0f}s)",
        "status.certificate set", unissued_cases.driver.describe(csr))


def test_denied_csr_is_not_issued(signer, signer_profile, unissued_cases):
    csr, outcome = unissued_cases.case(signer.signer_name, "denied")
    unapproved = unissued_cases.case(signer.signer_name, "unapproved")[1]
    if outcome.certificate_pem is not None and unapproved.certificate_pem is not None:
        pytest.skip(f"{signer.signer_name} issues CSRs nobody approved, so it may have issued {csr.name} "
                    "before it was denied: see test_unapproved_csr_is_not_issued")
    assert outcome.certificate_pem is None, mismatch(
        f"no certificate for a Denied CSR (watched {signer_profile.observe_seconds:.0f}s)",
        "status.certificate set", unissued_cases.driver.describe(csr))


def test_csr_for_a_foreign_signer_is_ignored(signer_profile, unissued_cases):
    csr, outcome = unissued_cases.case(FOREIGN_SIGNER, "approved")
    assert outcome.certificate_pem is None and not outcome.has_condition("Failed"), mismatch(
        f"a CSR for {FOREIGN_SIGNER} left untouched by the signers of {signer_profile.name}",
        f"conditions {outcome.conditions}, certificate {'set' if outcome.certificate_pem else 'empty'}",
        unissued_cases.driver.describe(csr))


@pytest.mark.requires(Feature.FAILED_CONDITION)
def test_permanent_error_sets_failed(signer, signer_profile, driver, issued_certificates):
    if not _issues_at_all(signer, signer_profile, issued_certificates):
        pytest.skip(f"{signer.signer_name} issued no certificate at all, so it is not acting on approved CSRs: "
                    "see test_approved_istio_csr_is_issued for this signer")
    csr = driver.submit(signer.signer_name, annotations=BAD_DURATION_ANNOTATION)
    driver.approve(csr)
    outcome = driver.wait(csr, signer_profile.issue_timeout_seconds)
    assert outcome.has_condition("Failed") and outcome.certificate_pem is None, mismatch(
        "condition Failed=True for a request that can never be signed (unparseable request-duration annotation)",
        f"conditions {outcome.conditions}, certificate {'set' if outcome.certificate_pem else 'empty'}",
        driver.describe(csr))
