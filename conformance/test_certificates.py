"""Each workload holds a certificate from its own tenant's signer, for its own SPIFFE identity."""

import pytest

from custom_ca_conformance.model.messages import mismatch
from custom_ca_conformance.model.certificates import describe_cert, expected_spiffe_id, fingerprint, spiffe_ids
from custom_ca_conformance.model.chains import verify_workload_chain

pytestmark = pytest.mark.certificates


def test_workload_certificate_chains_to_its_signer(workload, mesh, topology):
    signer = topology.signer_of(workload)
    held = mesh.workload_certificate(workload)
    root = mesh.signer_root(signer)
    check = verify_workload_chain(held.chain, [root])
    assert check.ok, mismatch(
        f"the certificate of {workload.id} chains to signer {signer!r} root {describe_cert(root)}",
        f"{check.detail}; leaf {describe_cert(held.leaf)}",
        f"{held.source}; signer root from {mesh.signer_root_source(signer)}",
    )


def test_workload_trusts_only_its_signer_root(workload, mesh, topology):
    signer = topology.signer_of(workload)
    held = mesh.workload_certificate(workload)
    root = mesh.signer_root(signer)
    trusted = [fingerprint(c) for c in held.trusted_roots]
    assert trusted == [fingerprint(root)], mismatch(
        f"{workload.id} trusts exactly signer {signer!r} root {fingerprint(root)}",
        f"trusted roots {[describe_cert(c) for c in held.trusted_roots]}",
        f"{held.source}; signer root from {mesh.signer_root_source(signer)}",
    )


def test_workload_certificate_names_its_spiffe_identity(workload, mesh, topology):
    held = mesh.workload_certificate(workload)
    expected = expected_spiffe_id(topology.trust_domain, workload.namespace, workload.service_account)
    assert spiffe_ids(held.leaf) == [expected], mismatch(
        f"exactly one URI SAN {expected}",
        f"{spiffe_ids(held.leaf)} in {describe_cert(held.leaf)}",
        held.source,
    )
