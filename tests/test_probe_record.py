"""The run's probe record: each pair probed once however many processes ask, the same result for each."""

from __future__ import annotations

import concurrent.futures
import datetime as dt

import pytest

from custom_ca_conformance.model.outcomes import Classification, Outcome
from custom_ca_conformance.model.run_record import RunRecord
from custom_ca_conformance.model.topology import default_topology
from custom_ca_conformance.probes.mesh import Mesh, ProbeResult
from custom_ca_conformance.probes.probe_record import probe_once

TOPOLOGY = default_topology()


class CountingMesh(Mesh):
    """Answers every probe with a verify failure and counts what it was asked to send (no cluster)."""

    capabilities = frozenset()
    data_plane = "none"

    def __init__(self):
        super().__init__(TOPOLOGY, RunRecord.__new__(RunRecord))
        self.sent: list[str] = []

    def probe_all(self, pairs):
        self.sent += [p.id for p in pairs]
        return {p.id: ProbeResult(p, Classification(Outcome.TLS_VERIFY_FAILED, "CERTIFICATE_VERIFY_FAILED",
                                                    f"access log of {p.client.id}"), None, None, f"curl {p.server.id}")
                for p in pairs}

    def workload_certificate(self, workload):
        raise NotImplementedError


def test_processes_asking_at_once_share_one_probe_of_each_pair(tmp_path):
    record = tmp_path / "probes.json"
    meshes = [CountingMesh() for _ in range(4)]
    pairs = TOPOLOGY.pairs()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda mesh: probe_once(mesh, pairs, record), meshes))
    sent = sorted(pair for mesh in meshes for pair in mesh.sent)
    assert sent == sorted(p.id for p in pairs), f"expected each pair sent once, seen {sent}"
    assert all(r == results[0] for r in results), "expected the same results for every process"
    first = results[0][pairs[1].id]
    assert (first.pair, first.outcome, first.classification.evidence, first.transcript) == (
        pairs[1], Outcome.TLS_VERIFY_FAILED, f"access log of {pairs[1].client.id}", f"curl {pairs[1].server.id}")


def test_pairs_not_yet_in_the_record_are_probed_and_added(tmp_path):
    record, mesh = tmp_path / "probes.json", CountingMesh()
    pairs = TOPOLOGY.pairs()
    probe_once(mesh, pairs[:1], record)
    probe_once(mesh, pairs, record)
    assert mesh.sent == [p.id for p in pairs], mesh.sent


def test_a_workload_certificate_reads_back_from_the_run_record_as_its_proxy_held_it(tmp_path):
    from custom_ca_conformance.model import pki
    from custom_ca_conformance.probes.made_once import made_once
    from custom_ca_conformance.probes.mesh import WorkloadCertificate

    workload = TOPOLOGY.workloads[0]
    root = pki.make_self_signed_ca("foo root")
    intermediate = pki.make_intermediate_ca(root, "foo intermediate")
    key = pki.new_private_key("ec-p256")
    leaf = pki.issue_leaf(intermediate, pki.istio_style_csr(f"spiffe://cluster.local/ns/{workload.namespace}/sa/x", key),
                          usages=["digital signature", "server auth", "client auth"],
                          not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    held = WorkloadCertificate(workload, [leaf, intermediate.cert], [root.cert], "istioctl proxy-config secret x")
    entry = tmp_path / "certificates" / "foo.httpbin.json"
    made_once(entry, lambda: held, WorkloadCertificate.as_dict, lambda v: WorkloadCertificate.from_dict(v, workload))

    read = made_once(entry, lambda: pytest.fail("read twice from the proxy"), WorkloadCertificate.as_dict,
                     lambda v: WorkloadCertificate.from_dict(v, workload))
    assert read == held, (read, held)
