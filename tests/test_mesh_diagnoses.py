"""Diagnoses of how a mesh loses its sidecars or mutual TLS, from evidence as the collectors read it.

Injection follows Istio's own decision (the webhooks' selectors, then pkg/kube/inject
injectRequired); mTLS the precedence of PeerAuthentication and the client's DestinationRule.
"""

from __future__ import annotations

import dataclasses

import pytest

from custom_ca_conformance.evidence import diagnoses
from custom_ca_conformance.evidence.collection import parse_analyzer_output
from custom_ca_conformance.evidence.diagnoses import (
    blocking,
    checked,
    diagnose,
    injection_decline,
    server_mtls,
)
from custom_ca_conformance.model.evidence import (
    AnalyzerMessage,
    DestinationRuleTls,
    Evidence,
    InjectorConfig,
    PeerAuthenticationPolicy,
    PodInjection,
)
from custom_ca_conformance.model.names import INJECTION_STATUS_ANNOTATION
from custom_ca_conformance.model.topology import default_topology

TOPOLOGY = default_topology()
NOW = 1_796_230_900.0
ENABLED = {"istio-injection": "enabled", "kubernetes.io/metadata.name": "bar"}
WEBHOOKS = ("istio-sidecar-injector",)
STATUS = {INJECTION_STATUS_ANNOTATION: '{"containers":["istio-proxy"]}'}


def _pod(namespace: str, workload: str, **changes) -> PodInjection:
    pod = PodInjection(namespace=namespace, pod=f"{workload}-7d9f6c8b4-qwert", workload=workload, has_sidecar=True,
                       injected=True, labels={"app": workload}, annotations=dict(STATUS),
                       template_labels={"app": workload}, namespace_labels={**ENABLED,
                                                                            "kubernetes.io/metadata.name": namespace})
    return dataclasses.replace(pod, **changes)


def _bare(namespace: str, workload: str, **changes) -> PodInjection:
    """A Pod the injector did not touch: no sidecar, no status annotation."""
    return _pod(namespace, workload, **{"has_sidecar": False, "injected": False, "annotations": {}, **changes})


def _evidence(**changes) -> Evidence:
    pods = tuple(_pod(w.namespace, w.name) for w in TOPOLOGY.workloads)
    return dataclasses.replace(Evidence(now=NOW, pod_injection=pods, injection_webhooks=WEBHOOKS,
                                        peer_authentications=(), destination_rules=(), analyzer_messages=()),
                               **changes)


def _replace_pod(evidence: Evidence, pod: PodInjection) -> Evidence:
    pods = tuple(pod if (p.namespace, p.workload) == (pod.namespace, pod.workload) else p
                 for p in evidence.pod_injection)
    return dataclasses.replace(evidence, pod_injection=pods)


def _named(found) -> list[tuple[str, str]]:
    return [(d.kind, d.subject) for d in found]


def _only(found, kind: str, subject: str):
    assert _named(found) == [(kind, subject)], (
        f"expected exactly [({kind!r}, {subject!r})], seen {_named(found)}:\n" + "\n".join(d.describe() for d in found))
    return found[0]


def _contains(text: str, wanted: str, what: str) -> None:
    assert wanted in text, f"expected {what} to contain {wanted!r}, seen {text!r}"


def test_a_healthy_mesh_names_nothing_and_says_what_it_checked():
    evidence = _evidence()
    assert diagnose(TOPOLOGY, evidence) == [], _named(diagnose(TOPOLOGY, evidence))
    looked = "\n".join(checked(TOPOLOGY, evidence))
    for wanted in ("sidecar injection: 4 workload Pods, each with a sidecar", "foo/httpbin PERMISSIVE",
                   "0 DestinationRules", "istioctl analyze: 0 messages"):
        _contains(looked, wanted, "what was checked")


# --- injection-declined ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pod", "setting", "origin"), [
    (_bare("bar", "curl", labels={"app": "curl", "sidecar.istio.io/inject": "false"},
           template_labels={"app": "curl", "sidecar.istio.io/inject": "false"}),
     "label sidecar.istio.io/inject='false'", "the pod template of Deployment bar/curl"),
    (_bare("bar", "curl", annotations={"sidecar.istio.io/inject": "no"}),
     "annotation sidecar.istio.io/inject='no'", "Pod bar/curl-7d9f6c8b4-qwert only"),
    (_bare("bar", "curl", host_network=True), "spec.hostNetwork: true", "the pod template of Deployment bar/curl"),
    (_bare("bar", "curl", namespace_labels={"istio-injection": "disabled"}), "label istio-injection=disabled",
     "Namespace bar"),
    (_bare("bar", "curl", namespace_labels={}), "neither label istio-injection=enabled nor istio.io/rev",
     "Namespace bar"),
    (_bare("bar", "curl"), "no sidecar.istio.io/status annotation although istio-sidecar-injector exists",
     "Pod bar/curl-7d9f6c8b4-qwert"),
], ids=["template-label", "pod-annotation", "host-network", "namespace-disabled", "namespace-unlabelled",
        "never-injected"])
def test_a_declined_pod_is_named_with_its_setting_and_where_it_came_from(pod, setting, origin):
    found = diagnose(TOPOLOGY, _replace_pod(_evidence(), pod))
    diagnosis = _only(found, diagnoses.KIND_INJECTION_DECLINED, "bar/curl")
    _contains(diagnosis.cause, f"{setting} on {origin}", "the cause")
    _contains(diagnosis.fix, "then restart Deployment bar/curl", "the fix")
    assert blocking(found) is diagnosis, "a declined Pod never gets a sidecar by waiting: it must block"


def test_the_label_wins_over_the_annotation_as_in_istio():
    pod = _bare("bar", "curl", labels={"app": "curl", "sidecar.istio.io/inject": "true"},
                annotations={"sidecar.istio.io/inject": "false"})
    decline = injection_decline(pod, webhooks=None)
    assert decline is None, f"expected no decline from the settings (label true wins), seen {decline}"


def test_truthy_settings_and_an_injected_pod_are_not_declined():
    for value in ("y", "Yes", "TRUE", "on"):
        pod = _bare("bar", "curl", annotations={"sidecar.istio.io/inject": value})
        assert injection_decline(pod, webhooks=None) is None, value
    assert injection_decline(_pod("bar", "curl", host_network=True), WEBHOOKS) is None


def test_istiods_injection_policy_is_read_as_injectrequired_reads_it():
    never = InjectorConfig("enabled", never_inject=({"matchExpressions": [{"key": "app", "operator": "In",
                                                                             "values": ["curl"]}]},))
    found = diagnose(TOPOLOGY, _replace_pod(_evidence(injector_config=never), _bare("bar", "curl")))
    diagnosis = _only(found, diagnoses.KIND_INJECTION_DECLINED, "bar/curl")
    _contains(diagnosis.cause, "neverInjectSelector", "the cause")
    _contains(diagnosis.cause, "ConfigMap istio-system/istio-sidecar-injector key config", "the cause")
    asked = _bare("bar", "curl", annotations={"sidecar.istio.io/inject": "true"})
    assert injection_decline(asked, None, never) is None, "a Pod asking for a sidecar is not never-injected"
    disabled = InjectorConfig("disabled", always_inject=({"matchLabels": {"app": "httpbin"}},))
    assert "policy: disabled" in injection_decline(_bare("bar", "curl"), None, disabled).setting
    assert injection_decline(_bare("bar", "httpbin", labels={"app": "httpbin"}), None, disabled) is None
    assert injection_decline(_bare("bar", "curl"), None, InjectorConfig("disabled", never_inject=({},))) \
        .setting == "policy: disabled", "an empty selector selects nothing"


def test_a_cluster_without_an_injector_webhook_says_so():
    found = diagnose(TOPOLOGY, _replace_pod(_evidence(injection_webhooks=()), _bare("foo", "httpbin")))
    diagnosis = _only(found, diagnoses.KIND_INJECTION_DECLINED, "foo/httpbin")
    _contains(diagnosis.cause, "no MutatingWebhookConfiguration with Istio's sidecar injector", "the cause")


def test_the_analyzer_message_about_the_pod_is_quoted():
    message = AnalyzerMessage("IST0103", "Warning", "The pod bar/curl-7d9f6c8b4-qwert is missing the Istio proxy.",
                              "Pod bar/curl-7d9f6c8b4-qwert")
    pod = _bare("bar", "curl", annotations={"sidecar.istio.io/inject": "false"})
    found = diagnose(TOPOLOGY, _replace_pod(_evidence(analyzer_messages=(message,)), pod))
    assert _named(found) == [(diagnoses.KIND_INJECTION_DECLINED, "bar/curl"),
                             (diagnoses.KIND_ISTIO_ANALYZER, "IST0103")], _named(found)
    _contains(" ".join(found[0].evidence), "[IST0103]", "the injection diagnosis's evidence")


# --- mTLS on the path ---------------------------------------------------------------------------------------------


def _peer(namespace: str, mode: str, selector=None, ports=None, name="default") -> PeerAuthenticationPolicy:
    return PeerAuthenticationPolicy(namespace=namespace, name=name, selector=selector or {}, mode=mode,
                                    port_modes=ports or {})


def test_precedence_of_peer_authentications_is_istios():
    mesh, namespace = _peer("istio-system", "STRICT"), _peer("bar", "PERMISSIVE")
    workload = _peer("bar", "DISABLE", selector={"app": "httpbin"}, name="httpbin")
    labels = {"app": "httpbin"}
    assert server_mtls([], "bar", labels).mode == "PERMISSIVE"
    assert server_mtls([mesh], "bar", labels).mode == "STRICT"
    assert server_mtls([mesh, namespace], "bar", labels).mode == "PERMISSIVE"
    assert server_mtls([mesh, namespace, workload], "bar", labels).policy == workload
    assert server_mtls([mesh, _peer("bar", "UNSET")], "bar", labels).mode == "STRICT", "UNSET inherits"
    assert server_mtls([workload], "foo", labels).mode == "PERMISSIVE", "another namespace's policy"
    port = _peer("bar", "STRICT", selector={"app": "httpbin"}, ports={"8080": "DISABLE"})
    assert (server_mtls([port], "bar", labels).mode, server_mtls([port], "bar", labels).port) == ("DISABLE", "8080")


@pytest.mark.parametrize("policy", [_peer("istio-system", "DISABLE"), _peer("bar", "DISABLE"),
                                    _peer("bar", "DISABLE", selector={"app": "httpbin"}, name="httpbin")],
                         ids=["mesh-wide", "namespace", "workload"])
def test_a_server_whose_peer_authentication_disables_mtls_is_named(policy):
    found = diagnose(TOPOLOGY, _evidence(peer_authentications=(policy,)))
    subjects = {"istio-system": ["foo/httpbin", "bar/httpbin"]}.get(policy.namespace, ["bar/httpbin"])
    assert _named(found) == [(diagnoses.KIND_PEER_AUTHENTICATION_DISABLED, s) for s in subjects], _named(found)
    _contains(found[-1].cause, f"PeerAuthentication {policy.namespace}/{policy.name}", "the cause")
    _contains(found[-1].cause, "a cross-signer client connects", "the cause")
    assert blocking(found) is None, "mTLS policy explains failed tests; provisioning does not wait on it"


@pytest.mark.parametrize(("host", "rule_namespace"), [
    ("httpbin", "bar"), ("httpbin.bar", "foo"), ("httpbin.bar.svc.cluster.local", "foo"),
    ("*.bar.svc.cluster.local", "istio-system"), ("*", "foo")])
def test_a_destination_rule_without_istio_mutual_tls_is_named_with_the_servers_mode(host, rule_namespace):
    rule = DestinationRuleTls(namespace=rule_namespace, name="plain", host=host, mode="DISABLE")
    found = diagnose(TOPOLOGY, _evidence(destination_rules=(rule,)))
    diagnosis = _only(found, diagnoses.KIND_DESTINATION_RULE_NOT_ISTIO_MUTUAL, f"{rule_namespace}/plain")
    _contains(diagnosis.cause, "bar/httpbin (PERMISSIVE) accept", "the cause")
    _contains(" ".join(diagnosis.evidence), "no PeerAuthentication applies: the mesh default", "the evidence")


def test_a_destination_rule_to_a_strict_server_explains_failing_requests_instead():
    rule = DestinationRuleTls(namespace="bar", name="plain", host="httpbin", mode="ISTIO_MUTUAL",
                              port_modes={"8000": "SIMPLE"})
    found = diagnose(TOPOLOGY, _evidence(destination_rules=(rule,),
                                         peer_authentications=(_peer("istio-system", "STRICT"),)))
    diagnosis = _only(found, diagnoses.KIND_DESTINATION_RULE_NOT_ISTIO_MUTUAL, "bar/plain")
    _contains(diagnosis.cause, "SIMPLE on port 8000", "the cause")
    _contains(diagnosis.cause, "the servers' STRICT mode refuses", "the cause")


def test_istio_mutual_and_other_hosts_are_not_named():
    rules = (DestinationRuleTls("bar", "ok", "httpbin", "ISTIO_MUTUAL"),
             DestinationRuleTls("bar", "other", "reviews.bar.svc.cluster.local", "DISABLE"),
             DestinationRuleTls("foo", "short", "httpbin", "DISABLE", subset_modes={}))
    found = diagnose(TOPOLOGY, _evidence(destination_rules=rules))
    assert _named(found) == [(diagnoses.KIND_DESTINATION_RULE_NOT_ISTIO_MUTUAL, "foo/short")], _named(found)
    _contains(found[0].cause, "(server foo/httpbin)", "a short host in foo names foo's server only")


@pytest.mark.parametrize(("annotation", "value"), [
    ("traffic.sidecar.istio.io/excludeOutboundPorts", "8000"), ("traffic.sidecar.istio.io/excludeInboundPorts", "*"),
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/8")])
def test_a_pod_that_keeps_traffic_out_of_its_sidecar_is_named(annotation, value):
    pod = _pod("bar", "curl", annotations={**STATUS, annotation: value})
    diagnosis = _only(diagnose(TOPOLOGY, _replace_pod(_evidence(), pod)), diagnoses.KIND_TRAFFIC_BYPASSES_SIDECAR,
                      "bar/curl")
    _contains(diagnosis.cause, f"{annotation}={value!r}", "the cause")
    harmless = _pod("bar", "curl", annotations={**STATUS, "traffic.sidecar.istio.io/includeOutboundIPRanges": "*"})
    assert diagnose(TOPOLOGY, _replace_pod(_evidence(), harmless)) == []


def test_the_diagnoses_about_a_failed_pair_come_first():
    rule = DestinationRuleTls("bar", "plain", "httpbin", "DISABLE")
    found = diagnose(TOPOLOGY, _evidence(destination_rules=(rule,), peer_authentications=(_peer("foo", "DISABLE"),)))
    assert [d.subject for d in found] == ["foo/httpbin", "bar/plain"], _named(found)
    assert [d.subject for d in diagnoses.about_first(found, ("bar/curl", "bar/httpbin"))] == ["bar/plain",
                                                                                              "foo/httpbin"]


# --- istioctl analyze ---------------------------------------------------------------------------------------


ANALYZE_OUTPUT = """[
  {"code": "IST0102", "documentationUrl": "https://istio.io/v1.30/docs/reference/config/analysis/ist0102",
   "level": "Info", "message": "The namespace is not enabled for Istio injection.", "origin": "Namespace default"},
  {"code": "IST0103", "documentationUrl": "https://istio.io/v1.30/docs/reference/config/analysis/ist0103",
   "level": "Warning", "message": "The pod bar/curl-1 is missing the Istio proxy.", "origin": "Pod bar/curl-1"},
  {"code": "IST0103", "level": "Warning", "message": "The pod other/app-1 is missing the Istio proxy.",
   "origin": "Pod other/app-1"}
]"""


def test_analyzer_output_is_parsed_and_only_tenant_errors_and_warnings_are_named():
    messages = parse_analyzer_output("Warning: some notice on stdout\n" + ANALYZE_OUTPUT)
    assert [(m.code, m.level, m.resource) for m in messages] == [
        ("IST0102", "Info", "Namespace default"), ("IST0103", "Warning", "Pod bar/curl-1"),
        ("IST0103", "Warning", "Pod other/app-1")]
    found = diagnose(TOPOLOGY, _evidence(analyzer_messages=messages))
    diagnosis = _only(found, diagnoses.KIND_ISTIO_ANALYZER, "IST0103")
    assert diagnosis.evidence == ("istioctl analyze: Warning [IST0103] (Pod bar/curl-1) The pod bar/curl-1 is "
                                  "missing the Istio proxy.",), diagnosis.evidence
    _contains(diagnosis.fix, "analysis/ist0103/", "the fix")


def test_analyzer_output_without_json_is_one_clear_error():
    with pytest.raises(ValueError, match="no JSON list"):
        parse_analyzer_output("Error: failed to connect to the cluster")


def test_what_was_checked_names_what_could_not_be_read():
    evidence = Evidence(now=NOW, sources={"mtls_policies": "unavailable: ApiException: (403) Forbidden",
                                          "analyzer_messages": "unavailable: istioctl analyze failed: TimeoutExpired"})
    looked = "\n".join(checked(TOPOLOGY, evidence))
    _contains(looked, "PeerAuthentications not read (unavailable: ApiException: (403) Forbidden)", "what was checked")
    _contains(looked, "istioctl analyze: not run (unavailable: istioctl analyze failed", "what was checked")
    _contains(looked, "istiod: no Deployment istio-system/istiod to read", "what was checked")


def test_a_setup_failure_without_a_named_cause_says_what_was_checked():
    from custom_ca_conformance.model.setup_failure import SetupFailure

    text = SetupFailure(stage="workloads", step="waiting for workloads", message="timed out after 60s",
                        checked=("istiod: fine", "mTLS policy: fine")).describe()
    assert f"likely cause: {diagnoses.NO_KNOWN_CAUSE}; checked:\n  - istiod: fine\n  - mTLS policy: fine" in text, text


def test_an_analyzer_that_fails_is_recorded_as_unavailable_never_raised(tmp_path):
    from custom_ca_conformance.evidence.collection import istioctl_analysis
    from custom_ca_conformance.model.run_record import RunRecord

    broken = tmp_path / "istioctl"
    broken.write_text("#!/bin/sh\necho 'Error: could not connect to the cluster' >&2\nexit 1\n")
    broken.chmod(0o755)
    for istioctl in (str(broken), str(tmp_path / "absent")):
        run = RunRecord(kubeconfig="kubeconfig", context=None, workdir=str(tmp_path), run_id="r", istioctl=istioctl)
        evidence = istioctl_analysis(run, tmp_path / "out", Evidence(now=NOW))
        assert evidence.analyzer_messages is None, evidence.analyzer_messages
        _contains(evidence.sources["analyzer_messages"], "unavailable: ", "the analyzer's source")
    assert "not run (unavailable:" in "\n".join(checked(TOPOLOGY, evidence))
