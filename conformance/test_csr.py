"""istiod turns each tenant's certificate requests into CSRs for the tenant's signer, approves them, and they get issued."""

import pytest

from custom_ca_conformance.model.certificates import spiffe_namespace
from custom_ca_conformance.model.messages import mismatch
from custom_ca_conformance.model.names import CERT_SIGNER_ENV, ISTIOD_USER
from custom_ca_conformance.model.pods import injected_signer
from custom_ca_conformance.model.vocabulary import Stage

# The CSR watch log is complete once workloads started, even if a signer never issued.
pytestmark = [pytest.mark.csr, pytest.mark.requires(Stage.WORKLOADS)]


def _tenant_records(mesh, tenant):
    return [r for r in mesh.csr_records() if any(spiffe_namespace(s) == tenant.namespace for s in r.spiffe_ids)]


def _summary(records) -> str:
    if not records:
        return "no CSR event"
    return "; ".join(f"{r.event} {r.name} signer={r.signer_name} by={r.username}" for r in records[:6])


def test_istiod_requests_the_tenant_signer(tenant, mesh, topology):
    expected = topology.signer_name(tenant.signer)
    records = [r for r in _tenant_records(mesh, tenant) if r.event == "ADDED"]
    assert records and all(r.signer_name == expected and r.username == ISTIOD_USER for r in records), mismatch(
        f"CSRs for workloads of {tenant.namespace} with signerName {expected}, requested by {ISTIOD_USER}",
        _summary(records),
        f"CSR watch log {mesh.record.csr_log}",
    )


def test_istiod_approves_the_tenant_csrs(tenant, mesh):
    records = _tenant_records(mesh, tenant)
    approved = [r for r in records if r.has_condition("Approved")]
    assert approved, mismatch(
        f"condition Approved=True on a CSR of {tenant.namespace} (istiod approves through /approval)",
        _summary(records),
        f"CSR watch log {mesh.record.csr_log}; istiod log (approve RBAC on certificates.k8s.io/signers)",
    )


def test_signer_issues_the_tenant_csrs(tenant, mesh, topology):
    records = _tenant_records(mesh, tenant)
    issued = [r for r in records if r.issued]
    failed = [r for r in records if r.has_condition("Failed")]
    assert issued and not failed, mismatch(
        f"status.certificate set by signer {topology.signer_name(tenant.signer)} on an approved CSR, no Failed condition",
        _summary(records) + (f"; Failed: {[r.conditions for r in failed][:2]}" if failed else ""),
        f"CSR watch log {mesh.record.csr_log}; the signer controller's log",
    )


def test_no_csr_names_an_unconfigured_signer(mesh, topology):
    unknown = sorted({r.signer_name for r in mesh.csr_records()} - set(topology.signer_names))
    assert not unknown, mismatch(
        f"CSRs only for {sorted(topology.signer_names)}",
        f"also {unknown}",
        f"CSR watch log {mesh.record.csr_log}",
    )


def test_workload_sidecar_asks_for_the_tenant_signer(workload, mesh, topology):
    """The tenant's ProxyConfig reached the injected sidecar (it is applied at injection only)."""
    pod = mesh.workload_pod(workload)
    expected = topology.signer_of(workload)
    seen = injected_signer(pod)
    assert seen == expected, mismatch(
        f"{CERT_SIGNER_ENV}={expected} in the istio-proxy container of {workload.id}",
        "no istio-proxy container (not injected)" if seen is None else f"{CERT_SIGNER_ENV}={seen!r}",
        f"Pod {workload.namespace}/{pod['metadata']['name']}, ProxyConfig in namespace {workload.namespace}, "
        "istiod's injection log",
    )
