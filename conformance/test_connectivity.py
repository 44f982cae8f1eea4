"""Same-signer workloads talk mutual TLS; workloads of different signers fail certificate verification."""

import pytest

from custom_ca_conformance.model.messages import mismatch
from custom_ca_conformance.model.certificates import expected_spiffe_id
from custom_ca_conformance.model.outcomes import Outcome, describe, expected_outcome
from custom_ca_conformance.model.vocabulary import Capability

pytestmark = pytest.mark.connectivity


def _where(result) -> str:
    return f"{result.classification.evidence}\n  transcript: {result.transcript}"


def test_mtls(pair, probe):
    """The full matrix: each client reaches each server exactly when both share a signer."""
    result = probe(pair)
    expected = expected_outcome(pair.same_signer)
    assert result.outcome is expected, mismatch(
        f"{expected.value} ({pair.client_signer} client -> {pair.server_signer} server)",
        describe(result.classification),
        _where(result),
    )


def test_same_signer_request_is_mutual_tls(same_signer_pair, probe, topology):
    """The server saw the client's SPIFFE identity: the request really was mutual TLS."""
    pair = same_signer_pair
    result = probe(pair)
    assert result.outcome is Outcome.OK, mismatch("ok", describe(result.classification), _where(result))
    client_id = expected_spiffe_id(topology.trust_domain, pair.client.namespace, pair.client.service_account)
    server_id = expected_spiffe_id(topology.trust_domain, pair.server.namespace, pair.server.service_account)
    assert result.client_identity_seen == client_id, mismatch(
        f"server {pair.server.id} saw client identity {client_id}",
        f"{result.client_identity_seen!r}",
        _where(result),
    )
    assert result.server_identity_seen == server_id, mismatch(
        f"client {pair.client.id} saw server identity {server_id}",
        f"{result.server_identity_seen!r}",
        _where(result),
    )


def test_cross_signer_request_fails_certificate_verification(cross_signer_pair, probe):
    """Not just any failure: the TLS handshake must fail on verifying the peer's certificate."""
    result = probe(cross_signer_pair)
    assert result.outcome is Outcome.TLS_VERIFY_FAILED, mismatch(
        "tls-verify-failed (the peer's certificate does not chain to this workload's signer root)",
        describe(result.classification),
        _where(result),
    )


@pytest.mark.requires(Capability.ENVOY_DATA_PLANE)
def test_cross_signer_failure_names_certificate_verification_in_envoy_log(cross_signer_pair, probe):
    """The client sidecar's access log carries the TLS reason, whatever the 503 body says."""
    result = probe(cross_signer_pair)
    assert "CERTIFICATE_VERIFY_FAILED" in result.classification.reason or "ALERT" in result.classification.reason, \
        mismatch("CERTIFICATE_VERIFY_FAILED (or a peer's certificate alert) in the client istio-proxy access log",
                 result.classification.reason, _where(result))


# The page Istio's task prints with `curl http://httpbin.foo:8000/html` from foo's curl pod.
TASK_PAGE_TITLE = "<h1>Herman Melville - Moby-Dick</h1>"


def test_task_page_is_served_within_a_tenant(in_tenant_pair, mesh):
    """The task's own check: curl in the tenant's client pod prints httpbin's Moby-Dick page."""
    result, status, body, pod = mesh.fetch(in_tenant_pair, "/html")
    assert status == 200 and TASK_PAGE_TITLE in body, mismatch(
        f"HTTP 200 with {TASK_PAGE_TITLE}",
        f"curl exit {result.exit_code}, HTTP {status}, body {body.strip()[:300]!r}, stderr {result.stderr.strip()[:300]!r}",
        f"kubectl exec -n {in_tenant_pair.client.namespace} {pod} -c curl -- curl "
        f"http://{in_tenant_pair.server.name}.{in_tenant_pair.server.namespace}:8000/html",
    )
