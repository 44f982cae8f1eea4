"""What the local provider does in a kubelet's place, on the objects istioctl really renders."""

import pytest
import yaml

from custom_ca_conformance import pki, render
from custom_ca_conformance.injection import injected_signer, pod_from_deployment, sidecar_container
from custom_ca_conformance.localplane import istio
from custom_ca_conformance.errors import ProvisioningError
from custom_ca_conformance.toolchain import cached_toolchain
from custom_ca_conformance.topology import default_topology

POD = {
    "metadata": {"name": "curl-local", "namespace": "foo", "uid": "u-1",
                 "labels": {"app": "curl"}, "annotations": {"team": "a"}},
    "spec": {"serviceAccountName": "curl"},
}


@pytest.mark.parametrize("text, expected", [
    ("$(POD_NAMESPACE).svc.cluster.local", "foo.svc.cluster.local"),
    ("$(UNDEFINED)/x", "$(UNDEFINED)/x"),  # undefined references stay as written, as in Kubernetes
    ("$$(POD_NAMESPACE)", "$(POD_NAMESPACE)"),  # $$ escapes
    ("plain", "plain"),
])
def test_expand_follows_kubernetes_dependent_variables(text, expected):
    assert istio.expand(text, {"POD_NAMESPACE": "foo"}) == expected


@pytest.mark.parametrize("path, expected", [
    ("metadata.name", "curl-local"), ("metadata.namespace", "foo"), ("spec.serviceAccountName", "curl"),
    ("status.podIP", "127.0.0.1"), ("metadata.labels['app']", "curl"), ("metadata.annotations['team']", "a"),
])
def test_downward_values_resolve_against_the_pod(path, expected):
    assert istio.downward_value(POD, path) == expected


def test_an_unknown_field_ref_is_a_provisioning_error_not_an_empty_value():
    with pytest.raises(ProvisioningError, match="status.phase"):
        istio.downward_value(POD, "status.phase")


def test_container_environment_resolves_values_refs_and_leaves_memory_limits_unset():
    container = {"env": [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "DOMAIN", "value": "$(POD_NAMESPACE).svc"},
        {"name": "GOMEMLIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
        {"name": "GOMAXPROCS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
    ]}
    env = istio.container_environment(POD, container)
    assert env["DOMAIN"] == "foo.svc"
    assert "GOMEMLIMIT" not in env
    assert int(env["GOMAXPROCS"]) >= 1


def _injected(env: list[dict], native: bool = False) -> dict:
    sidecar = {"name": "istio-proxy", "env": env, "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc"]}
    spec = {"serviceAccountName": "curl", "containers": [{"name": "curl"}]}
    if native:
        spec["initContainers"] = [{**sidecar, "restartPolicy": "Always"}]
    else:
        spec["containers"].append(sidecar)
    return {"metadata": POD["metadata"], "spec": spec}


@pytest.mark.parametrize("native", [False, True], ids=["container", "native-sidecar"])
def test_injected_signer_is_read_from_the_sidecar_env_last_value_winning(native):
    pod = _injected([{"name": "ISTIO_META_CERT_SIGNER", "value": "istio-system"},
                     {"name": "ISTIO_META_CERT_SIGNER", "value": "foo"}], native)
    assert sidecar_container(pod)["name"] == "istio-proxy"
    assert injected_signer(pod) == "foo"


def test_a_pod_without_sidecar_has_no_injected_signer():
    assert injected_signer({"spec": {"containers": [{"name": "curl"}]}}) is None


def test_agent_process_keeps_the_injected_env_and_changes_only_the_local_overrides(tmp_path):
    pod = _injected([
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "ISTIO_META_CERT_SIGNER", "value": "foo"},
        {"name": "CA_ADDR", "value": "istiod.istio-system.svc:15012"},
        {"name": "PROXY_CONFIG", "value": '{"proxyMetadata": {"ISTIO_META_CERT_SIGNER": "foo"}}'},
    ])
    argv, env = istio.agent_process(pod, tmp_path / "pilot-agent", tmp_path / "certs", "localhost:15012", 40000)
    assert argv[1:] == ["proxy", "sidecar", "--domain", "foo.svc"]
    assert env["ISTIO_META_CERT_SIGNER"] == "foo"
    assert env["CA_ADDR"] == "localhost:15012" and env["DISABLE_ENVOY"] == "true"
    assert env["OUTPUT_CERTS"] == str(tmp_path / "certs")
    assert yaml.safe_load(env["PROXY_CONFIG"]) == {"proxyMetadata": {"ISTIO_META_CERT_SIGNER": "foo"},
                                                   "discoveryAddress": "localhost:15012", "statusPort": 40000}
    assert "KUBERNETES_SERVICE_HOST" not in env


def test_agent_process_refuses_a_pod_that_was_not_injected(tmp_path):
    with pytest.raises(ProvisioningError, match="injection webhook did not inject"):
        istio.agent_process({"metadata": POD["metadata"], "spec": {"containers": [{"name": "curl"}]}},
                            tmp_path / "pilot-agent", tmp_path, "localhost:1", 1)


def test_pod_from_deployment_copies_the_template():
    deployment = render.workload_objects(default_topology())[2]
    assert deployment["kind"] == "Deployment"
    pod = pod_from_deployment(deployment, "httpbin-local")
    assert pod["metadata"]["namespace"] == "foo" and pod["metadata"]["labels"]["app"] == "httpbin"
    assert pod["spec"] == deployment["spec"]["template"]["spec"]
    assert pod["spec"] is not deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    toolchain = cached_toolchain()
    if toolchain is None:
        pytest.skip("the toolchain is not built: python -m custom_ca_conformance.toolchain build")
    topology = default_topology()
    roots = {s: pki.make_self_signed_ca(s).cert_pem for s in topology.signers}
    path = render.write_document(render.istio_operator(topology, roots), tmp_path_factory.mktemp("iop") / "iop.yaml")
    return istio.manifest_generate(toolchain.istioctl, path)


def test_control_plane_objects_point_every_webhook_at_the_local_istiod(generated):
    objects = istio.control_plane_objects(generated, "https://localhost:1234")
    webhooks = [w for o in objects if o["kind"].endswith("WebhookConfiguration") for w in o["webhooks"]]
    assert webhooks and all(w["clientConfig"]["url"].startswith("https://localhost:1234/") for w in webhooks)
    assert {w["clientConfig"]["url"] for w in webhooks} >= {"https://localhost:1234/inject"}
    assert not [o for o in objects if o["kind"] in ("Deployment", "HorizontalPodAutoscaler")]
    assert not [o for o in objects if "ingressgateway" in o["metadata"]["name"]]
    assert {"ConfigMap", "ClusterRole", "CustomResourceDefinition"} <= {o["kind"] for o in objects}


def test_istiod_process_takes_the_rendered_environment(generated, tmp_path):
    ports = istio.IstiodPorts(1, 2, 3, 4, 5, 6)
    argv, env = istio.istiod_process(generated, tmp_path / "pilot-discovery", tmp_path / "kubeconfig", ports)
    assert env["EXTERNAL_CA"] == "ISTIOD_RA_KUBERNETES_API"
    assert env["PILOT_CERT_PROVIDER"] == "k8s.io/clusterissuers.cert-manager.io/istio-system"
    assert env["CERT_SIGNER_DOMAIN"] == "clusterissuers.cert-manager.io"
    assert env["POD_NAMESPACE"] == "istio-system" and env["REVISION"] == "default"
    assert env["KUBECONFIG"] == str(tmp_path / "kubeconfig")
    assert "--secureGRPCAddr=127.0.0.1:3" in argv and "--httpsAddr=127.0.0.1:4" in argv
    assert argv.count(next(a for a in argv if a.startswith("--monitoringAddr"))) == 1
