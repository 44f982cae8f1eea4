"""custom_ca_conformance.evidence.diagnoses against evidence of each fault, with real CA roots minted by cryptography."""

from __future__ import annotations

import dataclasses

import pytest

from custom_ca_conformance.evidence import diagnoses
from custom_ca_conformance.evidence.diagnoses import blocking, diagnose
from custom_ca_conformance.model.evidence import CaCertificateEntry, CsrRecord, Evidence, IssuerState, PodState
from custom_ca_conformance.model import pki
from custom_ca_conformance.model.topology import default_topology, from_document

TOPOLOGY = default_topology()
DOMAIN = TOPOLOGY.signer_domain
FOO, BAR = TOPOLOGY.signer_name("foo"), TOPOLOGY.signer_name("bar")
NOW = 1_796_230_900.0
ISTIOD_USER = "system:serviceaccount:istio-system:istiod"

ORDINARY_ISTIOD_LOG = "\n".join([
    "2026-12-02T17:00:40.101Z\tinfo\tFLAG: --domain=\"cluster.local\"",
    "2026-12-02T17:00:41.220Z\tinfo\tsecurity\tUse external signer for workload certificates",
    "2026-12-02T17:00:52.907Z\tinfo\tads\tADS: new connection for node:curl-5b8f7d9c6-abcde.foo-1",
    "2026-12-02T17:00:52.910Z\tinfo\tads\tCDS: PUSH request for node:curl-5b8f7d9c6-abcde.foo resources:22",
    "2026-12-02T17:00:53.004Z\tinfo\tads\tLDS: PUSH request for node:httpbin-7d9f6c8b4-qwert.bar resources:4",
])
ORDINARY_SIGNER_LOG = (
    'I1202 17:00:53.001234       1 controller.go:162] "re-queuing item due to optimistic locking on resource" '
    'logger="cert-manager.controller" key="csr-workload-foo-curl"'
)
WATCH_TIMEOUT_LINE = "2026-12-02T17:01:33.015Z\terror\tsecurity\ttimeout when watching CSR csr-workload-bar-1"
RA_FAILED_LINE = ("2026-12-02T17:00:41.305Z\terror\tfailed to create discovery service: failed to create RA: "
                  "certSignerDomain is required for signer bar")
BUNDLE_LINE = ("2026-12-02T17:00:41.301Z\twarn\tsecurity\tfailed to load Certificate Bundle "
               "./etc/external-ca-cert/root-cert.pem: open ./etc/external-ca-cert/root-cert.pem: no such file")
FORBIDDEN_LINE = ('2026-12-02T17:00:55.120Z\terror\tsecurity\tfailed to approve CSR request: '
                  'certificatesigningrequests.certificates.k8s.io "csr-workload-bar-1" is forbidden: '
                  f'user not permitted to approve requests with signerName "{BAR}"')
NOT_IN_MESH_CONFIG_LINE = (f"2026-12-02T17:00:52.907Z\terror\tsecurity\tfailed to find root cert for signer: {BAR} "
                           "in mesh config")
NO_ROOT_LINE = ("2026-12-02T17:00:52.908Z\terror\tsecurity\tCSR signing error: failed to find root cert from "
                "either signed cert-chain or mesh config\tclient=10.244.0.17:51234")
ROOT_INVALID_LINE = ("2026-12-02T17:00:52.911Z\terror\tsecurity\tCSR signing error: root cert from signed "
                     "cert-chain is invalid (x509: certificate signed by unknown authority)")
ACK_ERROR_LINE = ("2026-12-02T17:01:10.442Z\twarn\tads\tADS:LDS: ACK ERROR curl-5b8f7d9c6-abcde.foo-3 "
                  "Internal:Error adding/updating listener(s) virtualInbound: Didn't find a registered "
                  "implementation for 'envoy.filters.network.metadata_exchange' with type URL: "
                  "'envoy.tcp.metadataexchange.config.MetadataExchange' " + "x" * 200)


@pytest.fixture(scope="module")
def roots():
    return {signer: pki.make_self_signed_ca(f"{signer} root") for signer in TOPOLOGY.signers}


@pytest.fixture(scope="module")
def healthy(roots) -> Evidence:
    return healthy_evidence(roots)


def healthy_evidence(roots) -> Evidence:
    """The default topology working: roots exported and listed, approval allowed, ProxyConfigs applied, CSRs issued."""
    pems = {signer: ca.cert_pem for signer, ca in roots.items()}
    return Evidence(
        now=NOW,
        csr_records=tuple(event for t in TOPOLOGY.tenants for w in t.workloads
                          for event in _csr_events(f"csr-workload-{t.namespace}-{w.name}",
                                                   TOPOLOGY.signer_name(t.signer), t.namespace, w.name)),
        istiod_env={"EXTERNAL_CA": "ISTIOD_RA_KUBERNETES_API", "CERT_SIGNER_DOMAIN": DOMAIN,
                    "PILOT_CERT_PROVIDER": "istiod"},
        istiod_pods=(PodState("istiod-6d4f8b9c7-x2x9q", "Running", ready=True),),
        istiod_log=ORDINARY_ISTIOD_LOG,
        ca_certificates=tuple(CaCertificateEntry((TOPOLOGY.signer_name(s),), pems[s]) for s in TOPOLOGY.signers),
        signer_roots=pems,
        approval_allowed={name: True for name in TOPOLOGY.signer_names},
        proxy_config_signers={t.namespace: t.signer for t in TOPOLOGY.tenants},
        injected_signers={t.namespace: t.signer for t in TOPOLOGY.tenants},
        cluster_issuers={s: _issuer(s) for s in TOPOLOGY.signers},
        signer_log=ORDINARY_SIGNER_LOG,
        sources={"istiod_log": "kubectl -n istio-system logs deploy/istiod -c discovery",
                 "signer_log": "kubectl -n cert-manager logs deploy/cert-manager"},
    )


def _issuer(signer: str, secret_of: str | None = None, **changes) -> IssuerState:
    """A Ready CA ClusterIssuer on the CA Secret of ``secret_of`` (its own by default), as the suite creates it."""
    owner = secret_of or signer
    state = IssuerState(secret=f"cert-manager/{owner}-ca-selfsigned", ready=True, reason="KeyPairVerified",
                        message="Signing CA verified", secret_present=True, certificate=f"cert-manager/{owner}-ca",
                        certificate_ready=True)
    return dataclasses.replace(state, **changes)


def _csr_events(name, signer_name, namespace, service_account, *, age=3.0, approved=True, issued=True,
                failed=None) -> list[CsrRecord]:
    """The watch events of one istiod CSR: created, approved by istiod, then signed (or not)."""
    common = dict(name=name, signer_name=signer_name, username=ISTIOD_USER, expiration_seconds=86400,
                  spiffe_ids=[f"spiffe://cluster.local/ns/{namespace}/sa/{service_account}"])
    conditions = []
    events = [CsrRecord(event="ADDED", observed_at=NOW - age, **common)]
    if approved:
        conditions.append({"type": "Approved", "status": "True", "reason": "IstiodApproved",
                           "message": f"CSR ({name}) for the certificate () is approved"})
        events.append(CsrRecord(event="MODIFIED", conditions=list(conditions), observed_at=NOW - age + 0.01, **common))
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": "SigningError", "message": failed})
        events.append(CsrRecord(event="MODIFIED", conditions=list(conditions), observed_at=NOW - age + 0.2, **common))
    if issued:
        events.append(CsrRecord(event="MODIFIED", conditions=list(conditions), issued=True,
                                observed_at=NOW - age + 0.3, **common))
    return events


def _with(evidence: Evidence, **changes) -> Evidence:
    return dataclasses.replace(evidence, **changes)


def _named(found) -> list[tuple[str, str]]:
    return [(d.kind, d.subject) for d in found]


def _expect_only(found, kind: str, subject: str):
    assert _named(found) == [(kind, subject)], (
        f"expected exactly [({kind!r}, {subject!r})], seen {_named(found)}:\n"
        + "\n".join(d.describe() for d in found))
    return found[0]


def _expect_in(text: str, wanted: str, what: str) -> None:
    assert wanted in text, f"expected {what} to contain {wanted!r}, seen {text!r}"


def _expect_quoted(diagnosis, line: str) -> None:
    assert line[:300] in diagnosis.evidence or any(line.startswith(e.rstrip("…")) for e in diagnosis.evidence), (
        f"expected the evidence of {diagnosis.kind} to quote {line!r}, seen {diagnosis.evidence}")


# --- no fault -------------------------------------------------------------------------------


def test_healthy_cluster_gives_no_diagnosis(healthy):
    found = diagnose(TOPOLOGY, healthy)
    assert found == [], "expected [] for a healthy cluster, seen:\n" + "\n".join(d.describe() for d in found)
    assert blocking(found) is None, f"expected no blocking diagnosis for [], seen {blocking(found)}"


def test_evidence_with_nothing_collected_gives_no_diagnosis():
    nothing = Evidence(now=NOW, istiod_env=None, ca_certificates=None, signer_roots={}, approval_allowed={},
                       proxy_config_signers={}, injected_signers={})
    found = diagnose(TOPOLOGY, nothing)
    assert found == [], f"expected [] when nothing was collected, seen {_named(found)}"


# A mesh's mTLS policy and the analyzer's words explain failed tests, and a container that restarted fewer
# times than a crash loop may still come up; provisioning never waits on them.
NON_BLOCKING = {diagnoses.KIND_PEER_AUTHENTICATION_DISABLED, diagnoses.KIND_DESTINATION_RULE_NOT_ISTIO_MUTUAL,
                diagnoses.KIND_TRAFFIC_BYPASSES_SIDECAR, diagnoses.KIND_ISTIO_ANALYZER,
                diagnoses.KIND_WORKLOAD_CONTAINER_RESTARTED}


def test_every_kind_has_a_distinct_constant_and_blocks_unless_it_only_explains_tests():
    kinds = [v for k, v in vars(diagnoses).items() if k.startswith("KIND_")]
    assert len(kinds) == len(set(kinds)), f"expected distinct KIND_ constants, seen {kinds}"
    assert set(kinds) - NON_BLOCKING == diagnoses.BLOCKING_KINDS, (
        f"expected every other kind to block, seen non-blocking {set(kinds) - diagnoses.BLOCKING_KINDS}")


# --- 1. signer-not-signing --------------------------------------------------------------------


def test_approved_csrs_without_certificate_name_the_signer_count_and_age(healthy):
    stuck = [e for i in (1, 2, 3) for e in _csr_events(f"csr-workload-bar-{i}", BAR, "bar", "curl",
                                                       age=41.0 - i, issued=False)]
    evidence = _with(healthy, csr_records=(*_only_tenant(healthy, "foo"), *stuck),
                     istiod_log=ORDINARY_ISTIOD_LOG + "\n" + WATCH_TIMEOUT_LINE)
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_SIGNER_NOT_SIGNING, BAR)
    _expect_in(diagnosis.cause, f"signer {BAR} approved 3 CSRs 40 s ago and issued none", "the cause")
    _expect_quoted(diagnosis, WATCH_TIMEOUT_LINE)
    _expect_in(diagnosis.look_at, f"spec.signerName={BAR}", "look_at")
    _expect_in(diagnosis.look_at, "logs deploy/cert-manager", "look_at (from evidence.sources)")
    assert blocking([diagnosis]) is diagnosis, f"expected {diagnosis.kind} to block, seen {blocking([diagnosis])}"


def test_approved_csr_younger_than_the_limit_is_not_stuck_yet(healthy):
    fresh = _csr_events("csr-workload-bar-1", BAR, "bar", "curl", age=diagnoses.STUCK_CSR_SECONDS - 5, issued=False)
    found = diagnose(TOPOLOGY, _with(healthy, csr_records=(*_only_tenant(healthy, "foo"), *fresh)))
    assert found == [], f"expected [] for a CSR approved {diagnoses.STUCK_CSR_SECONDS - 5} s ago, seen {_named(found)}"


def test_failed_condition_names_its_reason_and_message(healthy):
    failed = _csr_events("csr-workload-bar-1", BAR, "bar", "curl", age=2.0, issued=False,
                         failed='issuer "bar" not found')
    evidence = _with(healthy, csr_records=(*_only_tenant(healthy, "foo"), *failed))
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_SIGNER_NOT_SIGNING, BAR)
    _expect_in(diagnosis.cause, 'Failed (SigningError: issuer "bar" not found)', "the cause")


# --- 2. approval-forbidden --------------------------------------------------------------------


def test_approval_forbidden_names_the_signer_and_the_cluster_role(healthy):
    pending = _csr_events("csr-workload-bar-1", BAR, "bar", "curl", approved=False, issued=False)
    evidence = _with(healthy, approval_allowed={**healthy.approval_allowed, BAR: False},
                     csr_records=(*_only_tenant(healthy, "foo"), *pending),
                     istiod_log=ORDINARY_ISTIOD_LOG + "\n" + FORBIDDEN_LINE)
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_APPROVAL_FORBIDDEN, BAR)
    _expect_quoted(diagnosis, FORBIDDEN_LINE)
    _expect_in(" ".join(diagnosis.evidence), "CSR csr-workload-bar-1: pending", "the evidence")
    _expect_in(diagnosis.fix, "ClusterRole istiod-clusterrole-istio-system", "the fix")
    _expect_in(diagnosis.fix, "global.certSigners", "the fix")


# --- 3. and 4. the signer domain ----------------------------------------------------------------


def test_missing_signer_domain_quotes_the_ra_failure(healthy):
    env = {k: v for k, v in healthy.istiod_env.items() if k != "CERT_SIGNER_DOMAIN"}
    evidence = _with(healthy, istiod_env=env, istiod_previous_log=f"{BUNDLE_LINE}\n{RA_FAILED_LINE}")
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_SIGNER_DOMAIN_MISSING, "istiod")
    _expect_in(diagnosis.cause.lower(), "signer domain", "the cause")
    _expect_quoted(diagnosis, RA_FAILED_LINE)
    _expect_quoted(diagnosis, BUNDLE_LINE)
    _expect_in(diagnosis.fix, f"CERT_SIGNER_DOMAIN={DOMAIN}", "the fix")
    _expect_in(diagnosis.fix, "Deployment istio-system/istiod", "the fix")


def test_empty_signer_domain_is_missing(healthy):
    found = diagnose(TOPOLOGY, _with(healthy, istiod_env={**healthy.istiod_env, "CERT_SIGNER_DOMAIN": ""}))
    _expect_only(found, diagnoses.KIND_SIGNER_DOMAIN_MISSING, "istiod")


def test_wrong_signer_domain_in_istiod_env_says_both_values(healthy):
    evidence = _with(healthy, istiod_env={**healthy.istiod_env, "CERT_SIGNER_DOMAIN": "issuers.cert-manager.io"})
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_SIGNER_DOMAIN_WRONG, "istiod")
    _expect_in(diagnosis.cause, "'issuers.cert-manager.io'", "the cause")
    _expect_in(diagnosis.cause, repr(DOMAIN), "the cause")


def test_csrs_under_another_domain_show_a_wrong_signer_domain(healthy):
    wrong = _csr_events("csr-workload-foo-1", "issuers.cert-manager.io/foo", "foo", "curl",
                        approved=False, issued=False)
    evidence = _with(healthy, csr_records=(*_only_tenant(healthy, "bar"), *wrong))
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_SIGNER_DOMAIN_WRONG, "istiod")
    _expect_in(" ".join(diagnosis.evidence), "signerName issuers.cert-manager.io/foo", "the evidence")
    _expect_in(diagnosis.cause, f"signer domain 'issuers.cert-manager.io' is not the signers' domain {DOMAIN!r}",
               "the cause")


# --- 5., 6. and 7. roots ----------------------------------------------------------------------


def test_missing_ca_certificates_entry_names_the_signer(healthy):
    entries = tuple(e for e in healthy.ca_certificates if BAR not in e.cert_signers)
    # istiod's "no root anywhere" follows; the missing entry explains it, so chain-without-root is not named.
    evidence = _with(healthy, ca_certificates=entries,
                     istiod_log=f"{ORDINARY_ISTIOD_LOG}\n{NOT_IN_MESH_CONFIG_LINE}\n{NO_ROOT_LINE}")
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_CA_CERTIFICATES_MISSING, "bar")
    _expect_quoted(diagnosis, NOT_IN_MESH_CONFIG_LINE)
    _expect_in(diagnosis.look_at, "ConfigMap istio-system/istio key mesh", "look_at")
    _expect_in(diagnosis.fix, "Secret cert-manager/bar-ca-selfsigned key ca.crt", "the fix")


def test_entry_without_pem_counts_as_missing(healthy):
    entries = tuple(CaCertificateEntry(e.cert_signers, "" if BAR in e.cert_signers else e.pem)
                    for e in healthy.ca_certificates)
    _expect_only(diagnose(TOPOLOGY, _with(healthy, ca_certificates=entries)),
                 diagnoses.KIND_CA_CERTIFICATES_MISSING, "bar")


def test_entry_holding_another_signers_root_names_its_owner(healthy):
    foo_pem = healthy.signer_roots["foo"]
    entries = tuple(CaCertificateEntry(e.cert_signers, foo_pem if BAR in e.cert_signers else e.pem)
                    for e in healthy.ca_certificates)
    evidence = _with(healthy, ca_certificates=entries, istiod_log=f"{ORDINARY_ISTIOD_LOG}\n{ROOT_INVALID_LINE}")
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_CA_CERTIFICATES_WRONG_ROOT, "bar")
    _expect_in(diagnosis.cause, "holds foo's root", "the cause")
    _expect_in(diagnosis.cause, BAR, "the cause")
    _expect_quoted(diagnosis, ROOT_INVALID_LINE)


def test_entry_holding_a_root_of_no_signer(healthy):
    stranger = pki.make_self_signed_ca("stranger root").cert_pem
    entries = tuple(CaCertificateEntry(e.cert_signers, stranger if FOO in e.cert_signers else e.pem)
                    for e in healthy.ca_certificates)
    diagnosis = _expect_only(diagnose(TOPOLOGY, _with(healthy, ca_certificates=entries)),
                             diagnoses.KIND_CA_CERTIFICATES_WRONG_ROOT, "foo")
    _expect_in(diagnosis.cause, "no signer's", "the cause")


def test_unparseable_entry_pem_is_said(healthy):
    garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    entries = tuple(CaCertificateEntry(e.cert_signers, garbage if BAR in e.cert_signers else e.pem)
                    for e in healthy.ca_certificates)
    diagnosis = _expect_only(diagnose(TOPOLOGY, _with(healthy, ca_certificates=entries)),
                             diagnoses.KIND_CA_CERTIFICATES_WRONG_ROOT, "bar")
    _expect_in(diagnosis.cause, "no parseable certificate", "the cause")


def test_signer_without_exported_root_is_only_chain_without_root(healthy):
    entries = tuple(e for e in healthy.ca_certificates if BAR not in e.cert_signers)
    evidence = _with(healthy, signer_roots={**healthy.signer_roots, "bar": None}, ca_certificates=entries,
                     istiod_log=f"{ORDINARY_ISTIOD_LOG}\n{NOT_IN_MESH_CONFIG_LINE}\n{NO_ROOT_LINE}")
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_CHAIN_WITHOUT_ROOT, "bar")
    _expect_quoted(diagnosis, NO_ROOT_LINE)
    _expect_in(diagnosis.cause, "Secret cert-manager/bar-ca-selfsigned key ca.crt", "the cause")
    _expect_in(diagnosis.fix, "meshConfig.caCertificates", "the fix")


def test_istiod_finding_no_root_anywhere_is_chain_without_root(healthy):
    evidence = _with(healthy, ca_certificates=None,
                     istiod_log=f"{ORDINARY_ISTIOD_LOG}\n{NOT_IN_MESH_CONFIG_LINE}\n{NO_ROOT_LINE}")
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_CHAIN_WITHOUT_ROOT, "bar")
    _expect_quoted(diagnosis, NO_ROOT_LINE)


# --- 8. proxy-config-not-applied ----------------------------------------------------------------


def test_tenant_without_proxy_config_names_the_default_signer_used(healthy):
    by_default = _csr_events("csr-workload-foo-curl", TOPOLOGY.signer_name("istio-system"), "foo", "curl")
    evidence = _with(healthy, proxy_config_signers={**healthy.proxy_config_signers, "foo": None},
                     injected_signers={"bar": "bar"},
                     csr_records=(*_only_tenant(healthy, "bar"), *by_default))
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_PROXY_CONFIG_NOT_APPLIED, "foo")
    _expect_in(diagnosis.cause, "use signer istio-system instead of foo", "the cause")
    _expect_in(diagnosis.fix, "ProxyConfig foo/foo-signer", "the fix")


def test_a_missing_proxy_config_alone_is_named(healthy):
    evidence = _with(healthy, proxy_config_signers={**healthy.proxy_config_signers, "bar": None},
                     injected_signers={}, csr_records=_only_tenant(healthy, "foo"))
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_PROXY_CONFIG_NOT_APPLIED, "bar")
    _expect_in(" ".join(diagnosis.evidence), "no ProxyConfig in namespace bar", "the evidence")


def test_a_tenant_of_the_default_signer_needs_no_proxy_config(healthy):
    topology = from_document({"signers": ["istio-system", "foo"], "defaultSigner": "istio-system",
                              "tenants": [{"namespace": "legacy", "signer": "istio-system"}]}, source="test")
    evidence = Evidence(now=NOW, proxy_config_signers={"legacy": None})
    found = diagnose(topology, evidence)
    assert found == [], f"expected [] (the mesh default is legacy's signer), seen {_named(found)}"


def test_injected_sidecar_with_another_signer(healthy):
    evidence = _with(healthy, injected_signers={**healthy.injected_signers, "bar": "foo"})
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_PROXY_CONFIG_NOT_APPLIED, "bar")
    _expect_in(diagnosis.cause, "use signer foo instead of bar", "the cause")


# --- 9. istiod-crashed and 10. envoy-rejected-config ------------------------------------------


def test_restarting_istiod_quotes_the_end_of_its_previous_run(healthy):
    previous = "\n".join(f"2026-12-02T17:00:4{i}.000Z\tinfo\tline {i}" for i in range(10))
    pods = (PodState("istiod-6d4f8b9c7-x2x9q", "Running", restarts=3, waiting_reason="CrashLoopBackOff",
                     last_exit_code=255),)
    evidence = _with(healthy, istiod_pods=pods, istiod_previous_log=previous)
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_ISTIOD_CRASHED, "istiod")
    tail = [e for e in diagnosis.evidence if "\tline " in e]
    assert tail == previous.splitlines()[-8:], f"expected the last 8 lines of the previous log, seen {tail}"
    _expect_in(diagnosis.cause, "restarts=3, waiting CrashLoopBackOff, last exit code 255", "the cause")


def test_rejected_xds_push_is_quoted_shortened(healthy):
    evidence = _with(healthy, istiod_log=f"{ORDINARY_ISTIOD_LOG}\n{ACK_ERROR_LINE}")
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_ENVOY_REJECTED_CONFIG, "istiod")
    assert len(diagnosis.evidence) == 1 and len(diagnosis.evidence[0]) <= 300, (
        f"expected one quoted line of at most 300 characters, seen {[len(e) for e in diagnosis.evidence]}")
    _expect_quoted(diagnosis, ACK_ERROR_LINE)
    _expect_in(diagnosis.fix, "PILOT_ENABLE_METADATA_EXCHANGE=false", "the fix")


def test_a_source_that_could_not_be_read_is_not_offered_as_the_place_to_look(healthy):
    evidence = _with(healthy, istiod_log=f"{ORDINARY_ISTIOD_LOG}\n{ACK_ERROR_LINE}",
                     sources={"istiod_log": "unavailable: ApiException: (500) Internal Server Error"})
    diagnosis = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_ENVOY_REJECTED_CONFIG, "istiod")
    assert "unavailable" not in diagnosis.look_at, f"expected a place to look, seen {diagnosis.look_at!r}"


# --- order --------------------------------------------------------------------------------------


def test_missing_signer_domain_comes_before_the_crash_it_causes(healthy):
    env = {k: v for k, v in healthy.istiod_env.items() if k != "CERT_SIGNER_DOMAIN"}
    pods = (PodState("istiod-6d4f8b9c7-x2x9q", "Running", restarts=4, waiting_reason="CrashLoopBackOff",
                     last_exit_code=1),)
    evidence = _with(healthy, istiod_env=env, istiod_pods=pods, istiod_previous_log=RA_FAILED_LINE)
    found = diagnose(TOPOLOGY, evidence)
    expected = [(diagnoses.KIND_SIGNER_DOMAIN_MISSING, "istiod"), (diagnoses.KIND_ISTIOD_CRASHED, "istiod")]
    assert _named(found) == expected, f"expected {expected}, seen {_named(found)}"
    assert blocking(found) is found[0], f"expected blocking() to return {found[0].kind}, seen {blocking(found)}"


def test_every_diagnosis_is_filled_and_one_per_kind_and_subject(healthy):
    broken = _with(
        healthy,
        istiod_env={**healthy.istiod_env, "CERT_SIGNER_DOMAIN": "issuers.cert-manager.io"},
        approval_allowed={**healthy.approval_allowed, FOO: False},
        signer_roots={**healthy.signer_roots, "bar": None},
        proxy_config_signers={"foo": None, "bar": None},
        istiod_pods=(PodState("istiod-a", "Running", restarts=1), PodState("istiod-b", "Running", restarts=2)),
        istiod_log=f"{ORDINARY_ISTIOD_LOG}\n{ACK_ERROR_LINE}\n{ACK_ERROR_LINE.replace('-3 ', '-4 ')}",
    )
    found = diagnose(TOPOLOGY, broken)
    assert len(set(_named(found))) == len(found), f"expected one diagnosis per (kind, subject), seen {_named(found)}"
    empty = [(d.kind, f) for d in found for f in ("subject", "cause", "evidence", "fix", "look_at")
             if not getattr(d, f)]
    assert not empty, f"expected every field filled, seen empty {empty}"
    assert _named(found)[-1] == (diagnoses.KIND_ISTIOD_CRASHED, "istiod"), (
        f"expected istiod-crashed last, seen {_named(found)}")


def _only_tenant(evidence: Evidence, namespace: str) -> tuple[CsrRecord, ...]:
    return tuple(r for r in evidence.csr_records if f"/ns/{namespace}/" in r.spiffe_ids[0])


# --- signers' CAs: shared, or a ClusterIssuer that can never be Ready ------------------------------


def test_a_cluster_issuer_on_another_signers_ca_secret_names_both_signers_and_the_secret(healthy, roots):
    """bar's ClusterIssuer names foo's CA Secret: the roots exported from it are foo's, so caCertificates agrees."""
    foo_pem = roots["foo"].cert_pem
    issuers = {**healthy.cluster_issuers, "bar": _issuer("bar", secret_of="foo")}
    entries = tuple(CaCertificateEntry((TOPOLOGY.signer_name(s),), foo_pem if s == "bar" else roots[s].cert_pem)
                    for s in TOPOLOGY.signers)
    evidence = _with(healthy, cluster_issuers=issuers, signer_roots={**healthy.signer_roots, "bar": foo_pem},
                     ca_certificates=entries)
    shared = _expect_only(diagnose(TOPOLOGY, evidence), diagnoses.KIND_SIGNERS_SHARE_A_CA, "bar")
    assert shared.cause == ("ClusterIssuer bar signs with Secret cert-manager/foo-ca-selfsigned, the CA of signer "
                            "foo: foo's and bar's workloads trust each other"), shared.cause
    assert blocking([shared]) is shared


def test_a_shared_ca_is_named_first_and_not_masked_by_the_stale_root_in_mesh_config(healthy, roots):
    """The mesh still lists bar's own old root: ca-certificates-wrong-root shows too, but the shared CA leads."""
    issuers = {**healthy.cluster_issuers, "bar": _issuer("bar", secret_of="foo")}
    evidence = _with(healthy, cluster_issuers=issuers,
                     signer_roots={**healthy.signer_roots, "bar": roots["foo"].cert_pem})
    found = diagnose(TOPOLOGY, evidence)
    assert _named(found)[0] == (diagnoses.KIND_SIGNERS_SHARE_A_CA, "bar"), _named(found)
    assert blocking(found).kind == diagnoses.KIND_SIGNERS_SHARE_A_CA


def test_two_ca_secrets_holding_one_root_are_a_shared_ca(healthy, roots):
    pems = {**healthy.signer_roots, "bar": roots["foo"].cert_pem}
    entries = tuple(CaCertificateEntry((TOPOLOGY.signer_name(s),), pems[s]) for s in TOPOLOGY.signers)
    shared = _expect_only(diagnose(TOPOLOGY, _with(healthy, signer_roots=pems, ca_certificates=entries)),
                          diagnoses.KIND_SIGNERS_SHARE_A_CA, "bar")
    _expect_in(shared.cause, "Secret cert-manager/bar-ca-selfsigned", "the cause")
    _expect_in(shared.cause, "Secret cert-manager/foo-ca-selfsigned", "the cause")


def test_a_cluster_issuer_whose_ca_secret_nothing_creates_is_not_ready_at_once(healthy):
    message = 'Error getting keypair for CA issuer: secret "bar-ca-missing" not found'
    issuers = {**healthy.cluster_issuers, "bar": IssuerState(
        secret="cert-manager/bar-ca-missing", ready=False, reason="ErrGetKeyPair", message=message)}
    found = diagnose(TOPOLOGY, _with(healthy, cluster_issuers=issuers))
    not_ready = _expect_only(found, diagnoses.KIND_ISSUER_NOT_READY, "bar")
    _expect_in(not_ready.cause, "ClusterIssuer bar", "the cause")
    _expect_in(not_ready.cause, message, "the cause")
    _expect_in(not_ready.cause, "Secret cert-manager/bar-ca-missing", "the cause")
    _expect_in(not_ready.cause, "no Certificate fills", "the cause")
    assert blocking(found) is not_ready


def test_a_cluster_issuer_whose_ca_certificate_is_still_being_issued_is_waited_for(healthy):
    """Right after creation the CA Secret is legitimately absent while its Certificate is issued."""
    issuers = {**healthy.cluster_issuers, "bar": _issuer(
        "bar", ready=False, reason="ErrGetKeyPair", secret_present=False, certificate_ready=False,
        message='Error getting keypair for CA issuer: secret "bar-ca-selfsigned" not found')}
    assert diagnose(TOPOLOGY, _with(healthy, cluster_issuers=issuers)) == []


def test_a_cluster_issuer_on_a_key_pair_that_is_not_a_ca_is_not_ready(healthy):
    issuers = {**healthy.cluster_issuers, "foo": _issuer(
        "foo", ready=False, reason="ErrInvalidKeyPair",
        message="Error getting keypair for CA issuer: certificate is not a CA")}
    _expect_only(diagnose(TOPOLOGY, _with(healthy, cluster_issuers=issuers)), diagnoses.KIND_ISSUER_NOT_READY, "foo")


def test_the_ca_secret_named_in_root_diagnoses_is_the_one_the_cluster_issuer_names(healthy):
    issuers = {**healthy.cluster_issuers, "bar": _issuer("bar", secret="cert-manager/team-bar-ca")}
    found = diagnose(TOPOLOGY, _with(healthy, cluster_issuers=issuers, signer_roots={**healthy.signer_roots,
                                                                                     "bar": None}))
    rootless = next(d for d in found if d.kind == diagnoses.KIND_CHAIN_WITHOUT_ROOT)
    _expect_in(rootless.cause, "Secret cert-manager/team-bar-ca key ca.crt", "the cause")
