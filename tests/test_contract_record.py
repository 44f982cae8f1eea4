"""The run's contract record: each shared CSR made once however many processes ask, read back as the tests use it."""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import threading
import time

import pytest

from custom_ca_conformance.model import pki
from custom_ca_conformance.model.certificates import same_public_key
from custom_ca_conformance.probes.contract_record import ContractRecord
from custom_ca_conformance.probes.csr_contract import (
    FOREIGN_SIGNER,
    ISTIO_USAGES,
    CsrOutcome,
    IssuedCase,
    SubmittedCsr,
    UnissuedCases,
)
from custom_ca_conformance.probes.made_once import made_once

SIGNER = "clusterissuers.cert-manager.io/foo"
SPIFFE_ID = "spiffe://cluster.local/ns/conformance/sa/record"


def csr_as_the_api_returns_it(name: str, certificate_pem: bytes | None, conditions: list[dict]) -> dict:
    status = {"conditions": [{**c, "lastUpdateTime": "2026-12-07T19:49:18Z"} for c in conditions]}
    if certificate_pem:
        status["certificate"] = base64.b64encode(certificate_pem).decode()
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name, "creationTimestamp": "2026-12-07T19:49:17Z"},
            "spec": {"signerName": SIGNER, "usages": list(ISTIO_USAGES), "expirationSeconds": 5400}, "status": status}


def test_processes_asking_at_once_make_each_entry_once(tmp_path):
    made: list[str] = []

    def make() -> dict:
        made.append(threading.current_thread().name)
        time.sleep(0.3)  # the window a maker holds the entry while the others ask
        return {"made_by": made[-1]}

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: made_once(tmp_path / "entry.json", make, dict, dict), range(4)))
    assert len(made) == 1, f"expected one maker, seen {made}"
    assert results == [{"made_by": made[0]}] * 4, results


def test_a_failed_make_writes_nothing_and_the_next_asker_makes_it(tmp_path):
    def failing() -> dict:
        raise RuntimeError("the API server went away")

    with pytest.raises(RuntimeError):
        made_once(tmp_path / "entry.json", failing, dict, dict)
    assert not (tmp_path / "entry.json").exists()
    assert made_once(tmp_path / "entry.json", lambda: {"made": True}, dict, dict) == {"made": True}


def test_an_issued_case_reads_back_with_its_key_certificate_time_and_conditions(tmp_path):
    key = pki.new_private_key("ec-p256")
    ca = pki.make_self_signed_ca("contract record CA")
    leaf = pki.issue_leaf(ca, pki.istio_style_csr(SPIFFE_ID, key), usages=ISTIO_USAGES,
                          not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    certificate_pem = pki.cert_to_pem(leaf).encode()
    approved = [{"type": "Approved", "status": "True", "reason": "CustomCAConformance", "message": "approved"}]
    outcome = CsrOutcome(csr_as_the_api_returns_it("csr-conformance-abc", certificate_pem, approved))
    case = IssuedCase(SubmittedCsr("csr-conformance-abc", SIGNER, SPIFFE_ID, key, 5400), outcome,
                      "CertificateSigningRequest csr-conformance-abc …", outcome.created_at)
    record = ContractRecord(tmp_path / "contract", "run1")

    record.issued(SIGNER, "ecdsa", lambda: case)
    read = record.issued(SIGNER, "ecdsa", lambda: pytest.fail("made twice"))

    assert same_public_key(leaf, read.csr.key), "expected the recorded public key to be the CSR's"
    assert (read.csr.name, read.csr.spiffe_id, read.csr.expiration_seconds) == ("csr-conformance-abc", SPIFFE_ID, 5400)
    assert read.outcome.certificate_pem == certificate_pem
    assert read.created_at == dt.datetime(2026, 12, 7, 19, 49, 17, tzinfo=dt.timezone.utc)
    assert read.outcome.has_condition("Approved") and not read.outcome.has_condition("Failed")
    assert read.description == case.description
    assert not list((tmp_path / "contract").glob("*.json"))[0].read_text().count("PRIVATE KEY"), \
        "expected no private key in the record"


def test_unissued_cases_read_back_per_signer_and_kind(tmp_path):
    keys = {(SIGNER, "unapproved"): [], (SIGNER, "denied"): [
        {"type": "Denied", "status": "True", "reason": "CustomCAConformance", "message": "denied"}],
        (FOREIGN_SIGNER, "approved"): [
        {"type": "Approved", "status": "True", "reason": "CustomCAConformance", "message": "approved"}]}
    csrs = {key: SubmittedCsr(f"csr-{i}", key[0], SPIFFE_ID, pki.new_private_key("ec-p256"), 3600)
            for i, key in enumerate(keys)}
    outcomes = {key: CsrOutcome(csr_as_the_api_returns_it(csrs[key].name, None, conditions))
                for key, conditions in keys.items()}
    driver = object()  # the reading process's own driver: only handed on, for describing a CSR in a failure
    record = ContractRecord(tmp_path / "contract", "run1")

    record.unissued(lambda: UnissuedCases(driver, csrs, outcomes), driver)
    read = record.unissued(lambda: pytest.fail("made twice"), driver)

    assert read.driver is driver
    for key in keys:
        csr, outcome = read.case(*key)
        assert (csr.name, csr.signer_name, outcome.certificate_pem) == (csrs[key].name, key[0], None)
        assert outcome.conditions == outcomes[key].conditions
    assert read.case(SIGNER, "denied")[1].has_condition("Denied")
    assert read.case(FOREIGN_SIGNER, "approved")[1].has_condition("Approved")
