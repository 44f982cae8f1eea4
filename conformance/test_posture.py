"""Security posture: can a workload in one tenant obtain another tenant's signer, and so be trusted by it?

Istio lets a pod's own ``proxy.istio.io/config`` annotation set ``ISTIO_META_CERT_SIGNER``;
nothing binds a namespace to its signer. This probe starts a copy of a tenant's client that
asks for another tenant's signer, reads which CA signed the certificate it got, and sends a
request to the other tenant's server. An open posture (the certificate issued and the
request accepted) is reported as an expected failure with the finding, never as a pass;
a closed one passes. Run it alone with ``-m posture``.
"""

import pytest

from custom_ca_conformance import kube
from custom_ca_conformance.model.certificates import describe_cert
from custom_ca_conformance.model.chains import verify_workload_chain
from custom_ca_conformance.model.messages import mismatch
from custom_ca_conformance.model.outcomes import Outcome, describe
from custom_ca_conformance.probes.posture import apply_chooser, chooser_pair, signer_choice_pair

pytestmark = pytest.mark.posture


def _issuing_signer(mesh, topology, chain) -> str | None:
    for signer in topology.signers:
        if verify_workload_chain(chain, [mesh.signer_root(signer)]).ok:
            return signer
    return None


def test_a_workload_cannot_obtain_another_tenants_signer(mesh, topology, request):
    pair = signer_choice_pair(topology)
    if pair is None:
        pytest.skip("declared gap: the topology has no two tenants with different signers")
    api = mesh.api_client
    probe_pair = chooser_pair(pair)
    chooser = apply_chooser(api, pair)  # started when the run attached, if it could: the same object again
    try:
        kube.wait_deployment_ready(api, pair.client.namespace, probe_pair.client.name, timeout=120)
        held = mesh.workload_certificate(probe_pair.client)
        issued_by = _issuing_signer(mesh, topology, held.chain)
        result = mesh.probe(probe_pair)
    finally:
        kube.delete(api, [chooser])

    finding = (f"a pod in tenant {pair.client.namespace} annotated to ask for signer {pair.server_signer} "
               f"got a certificate issued by {issued_by or 'no configured signer'} "
               f"({describe_cert(held.leaf)}); its request to {pair.server.id}: {describe(result.classification)}")
    request.node.user_properties.append(("custom_ca_posture", {
        "client_namespace": pair.client.namespace, "asked_signer": pair.server_signer, "issued_by": issued_by,
        "request_outcome": result.outcome.value, "finding": finding}))
    if issued_by == pair.server_signer and result.outcome is Outcome.OK:
        pytest.xfail(f"security posture OPEN: {finding}. Istio does not bind a namespace to its signer; "
                     "restrict the annotation (admission policy) or the signers istiod may approve per namespace")
    assert issued_by in (None, pair.client_signer) and result.outcome is not Outcome.OK, mismatch(
        f"either no certificate from {pair.server_signer} for a workload of {pair.client.namespace}, "
        f"or one that {pair.server.id} rejects", finding, f"{held.source}; CSRs of signer {pair.server_signer}")
