"""Each named diagnosis, from a real fault injected into a real local run.

Every test starts a local node (the same local provider users run), injects one
misconfiguration through the ``adjust`` hook provisioning offers (the rendered objects are
changed before they are applied, so the cluster really is misconfigured), and asserts that
provisioning stops naming that cause. The last test runs the installed conformance suite
through pytest with a fault and checks how the run reports it: once, no traceback, the
tests that need less still run, and the evidence is still there afterwards.

They need root and the built toolchain and images (``python -m custom_ca_conformance.localplane.machine_setup``).
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from custom_ca_conformance.cluster import builtin_provider
from custom_ca_conformance.cluster.contract import ProviderSettings
from custom_ca_conformance.evidence import diagnoses
from custom_ca_conformance.localplane import node
from custom_ca_conformance.localplane.toolchain import cache_root
from custom_ca_conformance.model import pki
from custom_ca_conformance.model.errors import ProvisioningError
from custom_ca_conformance.model.names import CERT_MANAGER_NAMESPACE, INJECT_KEY
from custom_ca_conformance.model.topology import (
    ca_secret_name,
    default_topology,
    from_document,
)
from custom_ca_conformance.model.vocabulary import Stage
from custom_ca_conformance.plugin import exit_status

pytest_plugins = ("pytester",)

# One node per machine: keep these with the node self-tests on one xdist worker.
pytestmark = pytest.mark.xdist_group("node")

CACHE_ROOT = cache_root()  # read before pytester moves HOME
# No wait of provisioning is silent for longer (each says what it waits for every 15 s).
MAX_SILENCE_SECONDS = 20

# The controllers of fixtures/gosrc/cert-manager-controller without the CA issuer's CSR signer.
CONTROLLERS_WITHOUT_CSR_CA_SIGNER = ",".join([
    "issuers", "clusterissuers", "certificaterequests-approver", "certificaterequests-issuer-ca",
    "certificaterequests-issuer-selfsigned", "certificates-trigger", "certificates-issuing",
    "certificates-key-manager", "certificates-request-manager", "certificates-readiness",
    "certificates-revision-manager", "certificatesigningrequests-issuer-selfsigned",
])



def provision_with_fault(tmp_path: Path, fault, topology=None, upgrade_from=None,
                         states: list | None = None) -> ProvisioningError:
    """Provision a fresh local node with ``fault`` as the adjust hook; return the error it must end in.

    ``states``, when given, receives the run record as provisioning left it.
    """
    lines: list[str] = []
    said_at: list[float] = []

    def progress(line: str) -> None:
        said_at.append(time.monotonic())
        lines.append(line)

    settings = ProviderSettings(topology=topology or default_topology(), workdir=tmp_path / "work",
                                adjust=fault, progress=progress, istio_upgrade_from=upgrade_from)
    provider = builtin_provider("local", settings)
    provider.check_requirements()
    started = time.monotonic()
    try:
        provider.provision()
    except ProvisioningError as exc:
        silences = [later - earlier for earlier, later in zip([started, *said_at], said_at)]
        assert max(silences, default=0) <= MAX_SILENCE_SECONDS, (
            f"provisioning was silent for {max(silences):.0f}s (a wait without a heartbeat); lines:\n"
            + "\n".join(lines))
        return exc
    finally:
        if states is not None:
            states.append(provider.record)
        node_dir = provider.record.node_workdir if provider.record else None
        provider.teardown(provider.record)
        # Under this node's directory only: the other xdist worker's node may start as soon as this one stops.
        left = node.leftovers(Path(node_dir), machine_wide=False) if node_dir else {}
        assert left == {}, left
    pytest.fail("provisioning succeeded although a fault was injected; steps:\n" + "\n".join(lines), pytrace=False)


def named(error: ProvisioningError) -> set[tuple[str, str]]:
    return {(d.kind, d.subject) for d in error.diagnoses}


def explain(error: ProvisioningError) -> str:
    return f"diagnoses: {sorted(named(error))}\nerror: {error}"


def _operator_env(operator: dict) -> list[dict]:
    return operator["spec"]["components"]["pilot"]["k8s"]["env"]


def _set_istiod_env(operator: dict, name: str, value: str | None) -> None:
    env = [e for e in _operator_env(operator) if e["name"] != name]
    if value is not None:
        env.append({"name": name, "value": value})
    operator["spec"]["components"]["pilot"]["k8s"]["env"] = env


# --- faults in the signers ----------------------------------------------------------------------


def test_a_signer_that_never_signs_is_named(local_provider_available, tmp_path):
    def fault(kind, value):
        if kind == "cert-manager":
            for obj in value:
                if obj["kind"] == "Deployment":
                    container = obj["spec"]["template"]["spec"]["containers"][0]
                    container["args"].append(f"--controllers={CONTROLLERS_WITHOUT_CSR_CA_SIGNER}")

    error = provision_with_fault(tmp_path, fault)
    assert (diagnoses.KIND_SIGNER_NOT_SIGNING, "clusterissuers.cert-manager.io/istio-system") in named(error), \
        explain(error)


def test_a_signer_without_a_published_root_is_named(local_provider_available, tmp_path):
    """bar's CA Secret holds only its key pair (no ca.crt), and cert-manager's CA issuer sends no root."""
    own_ca = pki.make_self_signed_ca("bar root without ca.crt")

    def fault(kind, value):
        if kind == "signers":
            value[:] = [o for o in value if o["metadata"]["name"] not in ("bar-ca", "selfsigned-bar-issuer")]
            value.append({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                          "metadata": {"name": ca_secret_name("bar"), "namespace": CERT_MANAGER_NAMESPACE},
                          "stringData": {"tls.crt": own_ca.cert_pem, "tls.key": own_ca.key_pem}})

    error = provision_with_fault(tmp_path, fault)
    assert (diagnoses.KIND_CHAIN_WITHOUT_ROOT, "bar") in named(error), explain(error)



def _set_ca_secret_of(issuers: list[dict], signer: str, secret_name: str) -> None:
    issuer = next(o for o in issuers if o["kind"] == "ClusterIssuer" and o["metadata"]["name"] == signer)
    issuer["spec"]["ca"]["secretName"] = secret_name


def test_two_signers_on_one_ca_are_named_with_both_signers_and_the_secret(local_provider_available, tmp_path):
    """ClusterIssuer bar signs with foo's CA Secret: foo's and bar's tenants would trust each other."""
    error = provision_with_fault(tmp_path, lambda kind, value: kind == "signers" and _set_ca_secret_of(
        value, "bar", ca_secret_name("foo")))
    assert error.diagnoses and error.diagnoses[0].kind == diagnoses.KIND_SIGNERS_SHARE_A_CA, explain(error)
    assert error.diagnoses[0].cause == (
        f"ClusterIssuer bar signs with Secret {CERT_MANAGER_NAMESPACE}/{ca_secret_name('foo')}, the CA of signer "
        "foo: foo's and bar's workloads trust each other"), explain(error)


def test_a_cluster_issuer_whose_ca_secret_nothing_creates_is_named_without_a_timeout(local_provider_available,
                                                                                      tmp_path):
    error = provision_with_fault(tmp_path, lambda kind, value: kind == "signers" and _set_ca_secret_of(
        value, "bar", "bar-ca-nobody-creates"))
    assert (diagnoses.KIND_ISSUER_NOT_READY, "bar") in named(error), explain(error)
    not_ready = next(d for d in error.diagnoses if d.kind == diagnoses.KIND_ISSUER_NOT_READY)
    assert f"Secret {CERT_MANAGER_NAMESPACE}/bar-ca-nobody-creates" in not_ready.cause, not_ready.cause
    assert "ErrGetKeyPair" in not_ready.cause, not_ready.cause
    assert "timed out" not in str(error), explain(error)


# --- faults in istiod's configuration -------------------------------------------------------------


def test_mesh_config_and_rbac_faults_are_named_per_signer(local_provider_available, tmp_path):
    """One mesh, three broken tenants: each cause is named for its own signer, none for the healthy foo."""
    topology = from_document({
        "defaultSigner": "istio-system", "signers": ["istio-system", "foo", "bar", "baz", "qux"],
        "tenants": [{"namespace": n, "signer": n} for n in ("foo", "bar", "baz", "qux")]}, source="fault topology")
    qux = topology.signer_name("qux")

    def fault(kind, value):
        if kind != "istio-operator":
            return
        spec = value["spec"]
        entries = spec["meshConfig"]["caCertificates"]
        by_signer = {e["certSigners"][0]: e for e in entries}
        by_signer[topology.signer_name("baz")]["pem"] = by_signer[topology.signer_name("foo")]["pem"]
        entries.remove(by_signer[topology.signer_name("bar")])
        spec["values"]["global"]["certSigners"].remove(qux)
        spec["components"]["pilot"]["k8s"]["overlays"][0]["patches"][0]["value"]["resourceNames"].remove(qux)

    error = provision_with_fault(tmp_path, fault, topology)
    found = named(error)
    assert (diagnoses.KIND_CA_CERTIFICATES_MISSING, "bar") in found, explain(error)
    assert (diagnoses.KIND_CA_CERTIFICATES_WRONG_ROOT, "baz") in found, explain(error)
    wrong_root = next(d for d in error.diagnoses if d.kind == diagnoses.KIND_CA_CERTIFICATES_WRONG_ROOT)
    assert "foo" in wrong_root.cause, wrong_root.cause
    assert (diagnoses.KIND_APPROVAL_FORBIDDEN, qux) in found, explain(error)
    assert not [d for d in error.diagnoses if d.subject in ("foo", topology.signer_name("foo"))], explain(error)


def test_a_wrong_signer_domain_is_named(local_provider_available, tmp_path):
    error = provision_with_fault(tmp_path, lambda kind, value: kind == "istio-operator" and _set_istiod_env(
        value, "CERT_SIGNER_DOMAIN", "signers.example.com"))
    assert diagnoses.KIND_SIGNER_DOMAIN_WRONG in {kind for kind, _ in named(error)}, explain(error)


def test_an_istiod_that_exits_is_named_with_its_last_lines(local_provider_available, tmp_path):
    # PILOT_CERT_PROVIDER=kubernetes is fatal at istiod's start (upstream facts §1.6).
    error = provision_with_fault(tmp_path, lambda kind, value: kind == "istio-operator" and _set_istiod_env(
        value, "PILOT_CERT_PROVIDER", "kubernetes"))
    crashed = [d for d in error.diagnoses if d.kind == diagnoses.KIND_ISTIOD_CRASHED]
    assert crashed and crashed[0].evidence, explain(error)


def test_a_missing_proxy_config_is_named_for_its_tenant(local_provider_available, tmp_path):
    def fault(kind, value):
        if kind == "proxy-configs":
            value[:] = [o for o in value if o["metadata"]["namespace"] != "bar"]

    error = provision_with_fault(tmp_path, fault)
    assert (diagnoses.KIND_PROXY_CONFIG_NOT_APPLIED, "bar") in named(error), explain(error)


def test_configuration_the_sidecars_reject_is_named(local_provider_available, tmp_path):
    """Without these settings istiod sends the vanilla Envoy filters it does not have: it NACKs them."""
    def fault(kind, value):
        if kind == "istio-operator":
            for name in ("PILOT_ENABLE_METADATA_EXCHANGE", "PILOT_ENABLE_ALPN_FILTER"):
                _set_istiod_env(value, name, None)

    error = provision_with_fault(tmp_path, fault)
    assert diagnoses.KIND_ENVOY_REJECTED_CONFIG in {kind for kind, _ in named(error)}, explain(error)


# --- faults in the workloads and the mesh's mTLS policy -------------------------------------------


def test_a_workload_whose_pod_declines_injection_is_named_at_once(local_provider_available, tmp_path):
    """bar's curl Deployment says sidecar.istio.io/inject=false: the injection dry run stops before any workload starts.

    The adjust hook is called once per kind, so the dry run sees exactly the Deployment that would be started.
    """
    def fault(kind, value):
        if kind == "workloads":
            deployment = next(o for o in value if o["kind"] == "Deployment"
                              and o["metadata"]["namespace"] == "bar" and o["metadata"]["name"] == "curl")
            deployment["spec"]["template"]["metadata"]["labels"][INJECT_KEY] = "false"

    error = provision_with_fault(tmp_path, fault)
    assert (diagnoses.KIND_INJECTION_DECLINED, "bar/curl") in named(error), explain(error)
    declined = next(d for d in error.diagnoses if d.kind == diagnoses.KIND_INJECTION_DECLINED)
    assert "label sidecar.istio.io/inject='false' on the pod template of Deployment bar/curl" in declined.cause, \
        declined.cause
    assert str(error).startswith("stopped while"), f"expected the wait to stop on the verdict, seen: {error}"


def test_a_workload_container_the_node_cannot_start_is_named_at_once(local_provider_available, tmp_path):
    """foo's httpbin asks for an image the node does not hold, with pull policy Never (nothing is fetched)."""
    def fault(kind, value):
        if kind == "workloads":
            deployment = next(o for o in value if o["kind"] == "Deployment"
                              and o["metadata"]["namespace"] == "foo" and o["metadata"]["name"] == "httpbin")
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            container["image"] = container["image"].rpartition(":")[0] + ":absent-from-the-node"
            container["imagePullPolicy"] = "Never"

    error = provision_with_fault(tmp_path, fault)
    assert (diagnoses.KIND_WORKLOAD_CONTAINER_FAILING, "foo/httpbin") in named(error), explain(error)
    failing = next(d for d in error.diagnoses if d.kind == diagnoses.KIND_WORKLOAD_CONTAINER_FAILING)
    assert "container httpbin of foo/httpbin cannot start: ErrImageNeverPull" in failing.cause, failing.cause
    assert str(error).startswith("stopped while"), f"expected the wait to stop on the verdict, seen: {error}"


MTLS_FAULT_PLUGIN = textwrap.dedent('''
    def pytest_custom_ca_adjust(kind, value, config):
        """Plaintext on every path: foo's PeerAuthentication DISABLE, a DestinationRule DISABLE to bar, bar's curl
        sending port 8000 around its sidecar; and a VirtualService naming a Gateway nobody made (istioctl analyze)."""
        if kind == "proxy-configs":
            value.append({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                          "metadata": {"name": "no-mtls", "namespace": "foo"}, "spec": {"mtls": {"mode": "DISABLE"}}})
            value.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                          "metadata": {"name": "plain-to-bar", "namespace": "bar"},
                          "spec": {"host": "httpbin.bar.svc.cluster.local",
                                   "trafficPolicy": {"tls": {"mode": "DISABLE"}}}})
            value.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                          "metadata": {"name": "via-missing-gateway", "namespace": "bar"},
                          "spec": {"hosts": ["httpbin.example.com"], "gateways": ["missing-gateway"],
                                   "http": [{"route": [{"destination": {"host": "httpbin"}}]}]}})
        if kind == "workloads":
            for obj in value:
                if obj["kind"] == "Deployment" and obj["metadata"]["namespace"] == "bar" \\
                        and obj["metadata"]["name"] == "curl":
                    annotations = obj["spec"]["template"]["metadata"].setdefault("annotations", {})
                    annotations["traffic.sidecar.istio.io/excludeOutboundPorts"] = "8000"
''')


def test_plaintext_pairs_are_explained_by_the_mesh_mtls_policy(local_provider_available, pytester, monkeypatch):
    """Every pair connects without mutual TLS; each failed test names the PeerAuthentication and DestinationRule."""
    pytester.makepyfile(mtls_fault_plugin=MTLS_FAULT_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", f"{pytester.path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("CUSTOM_CA_CONFORMANCE_CACHE", str(CACHE_ROOT))
    report_dir = pytester.path / "reports"
    result = pytester.runpytest_subprocess(
        "-p", "mtls_fault_plugin", "--pyargs", "custom_ca_conformance.conformance.test_connectivity",
        "--custom-ca-cluster", "local", "-k", "test_mtls or mutual_tls", "--custom-ca-report-dir", str(report_dir),
        "-p", "no:cacheprovider", timeout=900)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output[-3000:]
    assert "Traceback" not in output and "none of the known causes" not in output, output[-3000:]

    report = json.loads((report_dir / "report.json").read_text())
    failed = {r["nodeid"].rsplit("::", 1)[-1]: r for r in report["tests"] if r["outcome"] == "failed"}
    assert {"test_mtls[foo-to-bar]", "test_mtls[bar-to-foo]", "test_same_signer_request_is_mutual_tls[foo-to-foo]",
            "test_same_signer_request_is_mutual_tls[bar-to-bar]"} <= set(failed), sorted(failed)
    named_kinds = {(d["kind"], d["subject"]) for d in failed["test_mtls[foo-to-bar]"]["diagnoses"]}
    assert {(diagnoses.KIND_PEER_AUTHENTICATION_DISABLED, "foo/httpbin"),
            (diagnoses.KIND_DESTINATION_RULE_NOT_ISTIO_MUTUAL, "bar/plain-to-bar"),
            (diagnoses.KIND_TRAFFIC_BYPASSES_SIDECAR, "bar/curl"),
            (diagnoses.KIND_ISTIO_ANALYZER, "IST0101")} <= named_kinds, named_kinds
    first = failed["test_mtls[bar-to-foo]"]["diagnoses"][0]
    assert first["subject"] in ("foo/httpbin", "bar/curl"), f"expected bar-to-foo's own cause first, seen {first}"
    analyses = list((report_dir / "evidence").glob("after-test-failure-*/istioctl-analyze.json"))
    assert analyses and json.loads(analyses[0].read_text()) is not None, sorted((report_dir / "evidence").iterdir())


# --- how a pytest run reports a setup fault ------------------------------------------------------------


FAULT_PLUGIN = textwrap.dedent('''
    def pytest_custom_ca_adjust(kind, value, config):
        """The istio.io task's step 'CERT_SIGNER_DOMAIN' forgotten."""
        if kind == "istio-operator":
            env = value["spec"]["components"]["pilot"]["k8s"]["env"]
            env[:] = [e for e in env if e["name"] != "CERT_SIGNER_DOMAIN"]
''')


def test_a_setup_fault_is_reported_once_and_the_tests_that_need_less_still_run(
        local_provider_available, pytester, monkeypatch):
    pytester.makepyfile(fault_plugin=FAULT_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", f"{pytester.path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("CUSTOM_CA_CONFORMANCE_CACHE", str(CACHE_ROOT))
    monkeypatch.setenv("CI", "true")  # pytest prints whole failure messages in the short summary on CI
    report_dir = pytester.path / "reports"
    result = pytester.runpytest_subprocess(
        "-p", "fault_plugin", "--pyargs", "custom_ca_conformance.conformance", "--custom-ca-cluster", "local",
        "-m", "not signer", "-n", "2", "--custom-ca-report-dir", str(report_dir), "-p", "no:cacheprovider", timeout=900)
    output = result.stdout.str() + result.stderr.str()

    assert result.ret == exit_status.SETUP_FAILED, output[-3000:]  # the rbac tests that ran passed
    assert "INTERNALERROR" not in output and "Traceback" not in output, output[-3000:]
    assert output.count("likely cause:") == 1, output[-3000:]
    assert "signer domain" in output.lower(), output[-3000:]

    report = json.loads((report_dir / "report.json").read_text())
    outcomes = {r["nodeid"]: r["outcome"] for r in report["tests"]}
    rbac = {n: o for n, o in outcomes.items() if "test_rbac.py" in n}
    assert rbac and set(rbac.values()) == {"passed"}, rbac
    blocked = {n for n, o in outcomes.items() if o == "blocked"}
    assert any("test_connectivity.py" in n for n in blocked), outcomes
    assert outcomes.get("custom-ca::setup") == "failed", outcomes

    kinds = {d["kind"] for d in report["setup_failure"]["diagnoses"]}
    assert diagnoses.KIND_SIGNER_DOMAIN_MISSING in kinds, report["setup_failure"]
    evidence = report_dir / "evidence"
    assert f"evidence kept in {evidence}" in output, output[-3000:]
    assert (evidence / "provision.log").is_file() and (evidence / "evidence" / "evidence.json").is_file()
    assert (evidence / "evidence" / "istioctl-analyze.json").is_file(), sorted((evidence / "evidence").iterdir())
    assert list((evidence / "node-logs").glob("kubelet*")), sorted(p.name for p in evidence.iterdir())
    node_dir = Path(json.loads((evidence / "state.json").read_text())["state"]["node_workdir"])
    assert node.leftovers(node_dir, machine_wide=False) == {} and not node_dir.exists(), node_dir


def test_an_upgrade_that_breaks_istiod_is_named_after_the_before_phase(local_provider_available, tmp_path):
    """Istio A installs and passes; the upgrade to B forgets CERT_SIGNER_DOMAIN (the second IstioOperator)."""
    operators = []

    def fault(kind, value):
        if kind == "istio-operator":
            operators.append(kind)
            if len(operators) == 2:
                _set_istiod_env(value, "CERT_SIGNER_DOMAIN", None)

    states: list = []
    error = provision_with_fault(tmp_path, fault, upgrade_from="b01690e6db7d", states=states)

    assert diagnoses.KIND_SIGNER_DOMAIN_MISSING in {kind for kind, _ in named(error)}, explain(error)
    record = states[0].upgrade
    assert {pair: seen["seen"] == seen["expected"] for pair, seen in record["before"].items()} == {
        "foo-to-foo": True, "foo-to-bar": True, "bar-to-foo": True, "bar-to-bar": True}, record["before"]
    assert record["rollout"]["sent"] > 0 and states[0].stage == Stage.WORKLOADS, (record, states[0].stage)

