"""The cluster shows none of the misconfigurations the suite can name (the diagnoses of a failed run)."""

import pytest

from custom_ca_conformance.evidence.collection import collect_evidence
from custom_ca_conformance.evidence.diagnoses import diagnose
from custom_ca_conformance.kube.cert_manager import recorded_resource_namespace
from custom_ca_conformance.model.messages import mismatch
from custom_ca_conformance.model.vocabulary import Stage

pytestmark = pytest.mark.health


def test_the_cluster_shows_none_of_the_known_faults(mesh, topology):
    evidence = collect_evidence(mesh.api_client, topology, Stage.READY, mesh.csr_records(),
                                resource_namespace=recorded_resource_namespace(mesh.record))
    found = diagnose(topology, evidence)
    assert not found, mismatch(
        "no known fault in the evidence (signers sign, istiod may approve them, caCertificates hold each "
        "signer's own root, ProxyConfigs applied, istiod running, no ACK ERROR)",
        "\n            ".join(d.line() for d in found),
        "; ".join(sorted({d.look_at for d in found})))
