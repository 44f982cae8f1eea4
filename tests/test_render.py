"""Rendered objects match Istio's custom-ca-k8s task and the upstream facts, for any topology."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import yaml
from kubernetes.utils.quantity import parse_quantity

from custom_ca_conformance.model.errors import ProvisioningError
from custom_ca_conformance.model.names import ISTIOD_CLUSTER_ROLE
from custom_ca_conformance.model.pki import make_self_signed_ca
from custom_ca_conformance.model.topology import (
    Role,
    Topology,
    default_topology,
    from_document,
    generated_topology,
)
from custom_ca_conformance.render import templates


@pytest.fixture(scope="module")
def topology() -> Topology:
    return default_topology()


@pytest.fixture(scope="module")
def roots(topology) -> dict[str, str]:
    return {signer: make_self_signed_ca(signer).cert_pem for signer in topology.signers}


def _by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _cluster_objects(topology, roots) -> list[dict]:
    documents = templates.all_documents(topology, roots)
    return [o for name, objs in documents.items() if name != "20-istio-operator.yaml" for o in objs]


def _key(obj: dict) -> tuple:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


# --- signers --------------------------------------------------------------------------------


def test_every_signer_gets_a_self_signed_issuer_a_ca_certificate_and_a_ca_issuer(topology):
    objects = templates.signer_issuer_objects(topology)
    issuers = _by_kind(objects, "ClusterIssuer")
    certificates = _by_kind(objects, "Certificate")
    assert len(objects) == 3 * len(topology.signers)
    for signer in topology.signers:
        assert issuers[f"selfsigned-{signer}-issuer"]["spec"] == {"selfSigned": {}}
        certificate = certificates[f"{signer}-ca"]
        assert certificate["apiVersion"] == "cert-manager.io/v1"
        assert certificate["metadata"]["namespace"] == "cert-manager"
        assert certificate["spec"]["isCA"] is True
        assert certificate["spec"]["commonName"] == signer
        assert certificate["spec"]["secretName"] == f"{signer}-ca-selfsigned"
        assert certificate["spec"]["issuerRef"] == {
            "name": f"selfsigned-{signer}-issuer", "kind": "ClusterIssuer", "group": "cert-manager.io"}
        # The CA ClusterIssuer is named after the signer: signerName clusterissuers.cert-manager.io/<signer>.
        assert issuers[signer]["spec"] == {"ca": {"secretName": f"{signer}-ca-selfsigned"}}


# --- istiod and mesh config -----------------------------------------------------------------


def test_istiod_env_enables_the_kubernetes_ra_with_the_default_signer(topology):
    assert templates.istiod_env(topology) == {
        "EXTERNAL_CA": "ISTIOD_RA_KUBERNETES_API",
        "CERT_SIGNER_DOMAIN": "clusterissuers.cert-manager.io",
        "PILOT_CERT_PROVIDER": "k8s.io/clusterissuers.cert-manager.io/istio-system",
    }


def test_mesh_config_has_one_ca_certificate_entry_per_signer_with_its_own_pem(topology, roots):
    config = templates.mesh_config(topology, roots)
    entries = {tuple(e["certSigners"]): e["pem"] for e in config["caCertificates"]}
    assert entries == {(topology.signer_name(s),): roots[s].strip() + "\n" for s in topology.signers}


def test_mesh_config_sets_default_signer_access_log_and_trust_domain(topology, roots):
    config = templates.mesh_config(topology, roots)
    assert config["defaultConfig"] == {"proxyMetadata": {"ISTIO_META_CERT_SIGNER": "istio-system"}}
    assert config["accessLogFile"] == "/dev/stdout"
    assert config["trustDomain"] == "cluster.local"


@pytest.mark.parametrize("bad", [None, "", "not a certificate"])
def test_mesh_config_refuses_a_signer_without_a_root_pem(topology, roots, bad):
    broken = {**roots, "foo": bad}
    with pytest.raises(ProvisioningError, match="signer 'foo'"):
        templates.mesh_config(topology, broken)


def test_approval_rule_lists_exactly_the_topology_signers(topology):
    rule = templates.signer_approval_rule(topology)
    assert rule["apiGroups"] == ["certificates.k8s.io"]
    assert rule["resources"] == ["signers"]
    assert rule["verbs"] == ["approve"]
    assert sorted(rule["resourceNames"]) == sorted(
        f"clusterissuers.cert-manager.io/{s}" for s in ("istio-system", "foo", "bar"))


def test_istio_operator_sets_external_ca_in_chart_values_so_csr_rbac_renders(topology, roots):
    operator = templates.istio_operator(topology, roots)
    assert operator["apiVersion"] == "install.istio.io/v1alpha1"
    assert operator["kind"] == "IstioOperator"
    assert operator["spec"]["values"]["pilot"]["env"] == {"EXTERNAL_CA": "ISTIOD_RA_KUBERNETES_API"}


def test_istio_operator_limits_the_chart_approve_rule_to_the_signers(topology, roots):
    operator = templates.istio_operator(topology, roots)
    # Empty certSigners renders a signers rule without resourceNames: approve on every signer.
    assert sorted(operator["spec"]["values"]["global"]["certSigners"]) == sorted(topology.signer_names)


def test_istio_operator_passes_signer_domain_and_cert_provider_to_istiod(topology, roots):
    operator = templates.istio_operator(topology, roots)
    env = {e["name"]: e["value"] for e in operator["spec"]["components"]["pilot"]["k8s"]["env"]}
    assert env == {
        "CERT_SIGNER_DOMAIN": "clusterissuers.cert-manager.io",
        "PILOT_CERT_PROVIDER": "k8s.io/clusterissuers.cert-manager.io/istio-system",
    }


def test_istio_operator_appends_the_approval_rule_to_the_istiod_cluster_role(topology, roots):
    [overlay] = templates.istio_operator(topology, roots)["spec"]["components"]["pilot"]["k8s"]["overlays"]
    assert (overlay["kind"], overlay["name"]) == ("ClusterRole", "istiod-clusterrole-istio-system")
    assert overlay["patches"] == [{"path": "rules[-1]", "value": templates.signer_approval_rule(topology)}]


# kind's own kube-system requests: kube-apiserver 250m, kube-controller-manager 200m, kube-scheduler
# 100m, etcd 100m, CoreDNS 2 x 100m, kindnet 100m (kube-proxy and local-path-provisioner ask none).
KIND_KUBE_SYSTEM_CPU = parse_quantity("950m")
RUNNER_CPU = parse_quantity("2")  # a 2-vCPU CI runner (GitHub's ubuntu-latest for private repositories)


def _cpu(resources: dict) -> Decimal:
    return parse_quantity(resources["requests"]["cpu"])


def test_kind_requests_fit_a_two_cpu_runner_with_the_posture_client_and_a_surged_istiod(topology, roots):
    """Every kind pod's CPU request summed: scheduling, not speed, is what a 2-vCPU runner lacks first."""
    from custom_ca_conformance.cluster.kind import KIND_PLATFORM

    spec = templates.istio_operator(topology, roots, KIND_PLATFORM)["spec"]
    [gateway] = spec["components"]["ingressGateways"]
    assert gateway["enabled"], "kind installs the default profile's ingress gateway, as the task does"
    proxy = _cpu(spec["values"]["global"]["proxy"]["resources"])
    # Each workload and its replacement during a rollout restart, plus the posture client.
    sidecars = 2 * len(topology.workloads) + 1
    istiods = 2  # the old and the surged new istiod during an upgrade
    total = (KIND_KUBE_SYSTEM_CPU + istiods * _cpu(spec["values"]["pilot"]["resources"])
             + _cpu(gateway["k8s"]["resources"]) + sidecars * proxy)
    assert total <= RUNNER_CPU, f"kind's pods request {total} CPU, more than the runner's {RUNNER_CPU}"


def test_the_default_platform_keeps_the_charts_requests(topology, roots):
    spec = templates.istio_operator(topology, roots)["spec"]
    assert "resources" not in spec["values"]["pilot"] and "proxy" not in spec["values"]["global"]
    assert "ingressGateways" not in spec["components"]


def test_istio_operator_carries_the_mesh_config(topology, roots):
    operator = templates.istio_operator(topology, roots)
    assert operator["spec"]["meshConfig"] == templates.mesh_config(topology, roots)


# --- tenants --------------------------------------------------------------------------------


def test_every_tenant_namespace_has_sidecar_injection_enabled(topology):
    namespaces = _by_kind(templates.namespace_objects(topology), "Namespace")
    assert set(namespaces) == {t.namespace for t in topology.tenants}
    for namespace in namespaces.values():
        assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"


def test_every_tenant_gets_a_proxy_config_naming_its_signer(topology):
    configs = templates.proxy_config_objects(topology)
    assert len(configs) == len(topology.tenants)
    for tenant in topology.tenants:
        [config] = [c for c in configs if c["metadata"]["namespace"] == tenant.namespace]
        assert config["apiVersion"] == "networking.istio.io/v1beta1"
        assert config["kind"] == "ProxyConfig"
        assert config["metadata"]["name"] == f"{tenant.namespace}-signer"
        assert config["spec"] == {"environmentVariables": {"ISTIO_META_CERT_SIGNER": tenant.signer}}
        assert "selector" not in config["spec"]  # namespace-wide


def test_httpbin_service_maps_port_http_8000_to_8080_and_selects_its_pods(topology):
    objects = [o for o in templates.workload_objects(topology) if o["metadata"]["namespace"] == "foo"]
    service = _by_kind(objects, "Service")["httpbin"]
    deployment = _by_kind(objects, "Deployment")["httpbin"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": 8080}]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "docker.io/mccutchen/go-httpbin:v2.15.0"
    assert container["ports"] == [{"containerPort": 8080}]


def test_curl_idles_so_probes_can_exec_into_it(topology):
    objects = [o for o in templates.workload_objects(topology) if o["metadata"]["namespace"] == "foo"]
    deployment = _by_kind(objects, "Deployment")["curl"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "docker.io/curlimages/curl:8.16.0"
    assert container["command"] == ["/bin/sleep", "infinity"]
    assert "Service" not in {o["kind"] for o in objects if o["metadata"]["name"] == "curl"}


def test_each_workload_runs_as_its_own_service_account(topology):
    objects = templates.workload_objects(topology)
    for workload in topology.workloads:
        mine = [o for o in objects if o["metadata"]["namespace"] == workload.namespace
                and o["metadata"]["name"] == workload.name]
        assert {o["kind"] for o in mine} >= {"ServiceAccount", "Deployment"}
        deployment = _by_kind(mine, "Deployment")[workload.name]
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == workload.service_account


def test_workload_images_are_pinned(topology):
    for deployment in _by_kind(templates.workload_objects(topology), "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            name, _, tag = container["image"].rpartition(":")
            assert name and tag and tag != "latest", container["image"]


def test_workloads_follow_the_tenant_workload_list():
    topology = from_document(
        {"signers": ["a"], "tenants": [{"namespace": "only-client", "signer": "a", "workloads": ["curl"]}]},
        source="test",
    )
    objects = templates.workload_objects(topology)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == {("ServiceAccount", "curl"), ("Deployment", "curl")}
    assert topology.tenants[0].workload(Role.SERVER) is None


# --- whole documents ------------------------------------------------------------------------


def test_every_cluster_object_is_labelled_as_managed_by_the_suite(topology, roots):
    for obj in _cluster_objects(topology, roots):
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "custom-ca-conformance", _key(obj)


def test_no_placeholder_is_left_unfilled(topology, roots):
    text = yaml.safe_dump_all([o for objs in templates.all_documents(topology, roots).values() for o in objs])
    assert "${" not in text


def test_documents_come_in_apply_order_with_proxy_configs_before_workloads(topology, roots):
    names = list(templates.all_documents(topology, roots))
    assert names == sorted(names)
    assert names.index("40-proxy-configs.yaml") < names.index("50-workloads.yaml")


def test_rendering_does_not_depend_on_the_order_signers_and_tenants_are_listed(roots):
    forward = default_topology()
    backward = from_document(
        {
            "defaultSigner": "istio-system",
            "signers": ["bar", "foo", "istio-system"],
            "tenants": [{"namespace": "bar", "signer": "bar"}, {"namespace": "foo", "signer": "foo"}],
        },
        source="reversed",
    )
    assert sorted(_cluster_objects(forward, roots), key=_key) == sorted(_cluster_objects(backward, roots), key=_key)
    mesh_forward = templates.mesh_config(forward, roots)
    mesh_backward = templates.mesh_config(backward, roots)
    assert sorted(mesh_forward.pop("caCertificates"), key=str) == sorted(mesh_backward.pop("caCertificates"), key=str)
    assert mesh_forward == mesh_backward


def test_generated_topologies_scale_every_per_tenant_object():
    topology = generated_topology(5)
    roots = {s: make_self_signed_ca(s).cert_pem for s in topology.signers}
    assert len(templates.namespace_objects(topology)) == 5
    assert len(templates.proxy_config_objects(topology)) == 5
    assert len(templates.signer_issuer_objects(topology)) == 3 * 6
    assert len(templates.mesh_config(topology, roots)["caCertificates"]) == 6
    assert len(templates.signer_approval_rule(topology)["resourceNames"]) == 6


def test_custom_signer_domain_and_trust_domain_reach_istiod_and_the_mesh():
    topology = from_document(
        {"signerDomain": "example.com", "trustDomain": "td.example", "signers": ["x"],
         "tenants": [{"namespace": "t", "signer": "x"}]},
        source="test",
    )
    roots = {"x": make_self_signed_ca("x").cert_pem}
    assert templates.istiod_env(topology)["PILOT_CERT_PROVIDER"] == "k8s.io/example.com/x"
    assert templates.mesh_config(topology, roots)["caCertificates"][0]["certSigners"] == ["example.com/x"]
    assert templates.mesh_config(topology, roots)["trustDomain"] == "td.example"


def test_write_manifests_round_trips_through_yaml(tmp_path, topology, roots):
    paths = templates.write_manifests(templates.all_documents(topology, roots), tmp_path / "manifests")
    documents = templates.all_documents(topology, roots)
    assert [p.name for p in paths] == list(documents)
    for path in paths:
        assert list(yaml.safe_load_all(path.read_text())) == documents[path.name]


# --- what istioctl makes of the IstioOperator (the pinned toolchain's istioctl, if built) ----


@pytest.fixture(scope="module")
def istioctl() -> str:
    from custom_ca_conformance.localplane import toolchain

    try:
        built = toolchain.cached_toolchain()
    except toolchain.ToolchainError as exc:
        pytest.skip(f"toolchain unavailable: {exc}")
    if built is None:
        pytest.skip("istioctl is not built: run `python -m custom_ca_conformance.localplane.toolchain build`")
    return str(built.istioctl)


def _generate(istioctl: str, operator: dict, tmp_path) -> list[dict]:
    import subprocess

    path = tmp_path / "istio-operator.yaml"
    path.write_text(yaml.safe_dump(operator, sort_keys=False))
    result = subprocess.run([istioctl, "manifest", "generate", "-f", str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _approve_rules(manifest: list[dict]) -> list[dict]:
    [role] = [d for d in manifest if d["kind"] == "ClusterRole" and d["metadata"]["name"] == ISTIOD_CLUSTER_ROLE]
    return [r for r in role["rules"] if "signers" in r.get("resources", []) and "approve" in r.get("verbs", [])]


def test_istioctl_renders_approve_rules_for_exactly_the_signers(istioctl, topology, roots, tmp_path):
    rules = _approve_rules(_generate(istioctl, templates.istio_operator(topology, roots), tmp_path))
    assert rules and all(r.get("resourceNames") for r in rules), rules
    assert {name for r in rules for name in r["resourceNames"]} == set(topology.signer_names)


def test_without_cert_signers_the_chart_rule_would_allow_every_signer(istioctl, topology, roots, tmp_path):
    """Why istio_operator sets values.global.certSigners: the task's overlay alone is not enough."""
    operator = templates.istio_operator(topology, roots)
    del operator["spec"]["values"]["global"]["certSigners"]
    rules = _approve_rules(_generate(istioctl, operator, tmp_path))
    assert any(not r.get("resourceNames") for r in rules)


def test_istioctl_renders_the_small_cpu_requests_into_istiod_the_gateway_and_the_injector(istioctl, topology, roots,
                                                                                           tmp_path):
    """The fields small_cpu_requests sets are the ones istioctl reads: istiod, the gateway and every sidecar."""
    platform = templates.Platform(small_cpu_requests=True)
    manifest = _generate(istioctl, templates.istio_operator(topology, roots, platform), tmp_path)
    deployments = {d["metadata"]["name"]: d for d in manifest if d["kind"] == "Deployment"}
    requests = {name: d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
                for name, d in deployments.items() if name in ("istiod", "istio-ingressgateway")}
    assert requests == {"istiod": templates.SMALL_ISTIOD_REQUESTS["cpu"],
                        "istio-ingressgateway": templates.SMALL_PROXY_REQUESTS["cpu"]}
    [injector] = [d for d in manifest if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "istio-sidecar-injector"]
    proxy = json.loads(injector["data"]["values"])["global"]["proxy"]["resources"]["requests"]
    assert proxy["cpu"] == templates.SMALL_PROXY_REQUESTS["cpu"]


def test_istioctl_renders_istiod_env_and_mesh_config(istioctl, topology, roots, tmp_path):
    manifest = _generate(istioctl, templates.istio_operator(topology, roots), tmp_path)
    [istiod] = [d for d in manifest if d["kind"] == "Deployment" and d["metadata"]["name"] == "istiod"]
    env: dict[str, str] = {}
    for variable in istiod["spec"]["template"]["spec"]["containers"][0]["env"]:
        env[variable["name"]] = variable.get("value")  # the last definition wins, as in the kubelet
    assert {k: env.get(k) for k in templates.istiod_env(topology)} == templates.istiod_env(topology)
    [mesh_map] = [d for d in manifest if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "istio"]
    mesh = yaml.safe_load(mesh_map["data"]["mesh"])
    assert mesh["caCertificates"] == templates.mesh_config(topology, roots)["caCertificates"]
    assert mesh["defaultConfig"]["proxyMetadata"] == {"ISTIO_META_CERT_SIGNER": topology.default_signer}
    assert mesh["accessLogFile"] == "/dev/stdout"


@pytest.mark.parametrize("reference, expected", [
    ("docker.io/curlimages/curl:8.16.0", "mirror.example:5000/curlimages/curl:8.16.0"),
    ("quay.io/jetstack/cert-manager-controller:v1.21.2", "mirror.example:5000/jetstack/cert-manager-controller:v1.21.2"),
    ("curl:8", "mirror.example:5000/library/curl:8"),
    ("mccutchen/go-httpbin:v2.15.0", "mirror.example:5000/mccutchen/go-httpbin:v2.15.0"),
    ("localhost/x/y:1", "mirror.example:5000/x/y:1"),
    ("docker.io/istio", "mirror.example:5000/istio"),  # a hub
])
def test_an_image_under_a_registry_keeps_its_repository_path_and_tag(reference, expected):
    assert templates.under_registry(reference, "mirror.example:5000") == expected
    assert templates.under_registry(reference, None) == reference


def test_a_platform_under_a_registry_moves_the_workloads_and_istios_hub():
    platform = templates.under_registry_platform(templates.DEFAULT_PLATFORM, "mirror.example:5000/proxy")
    assert platform.workload_images == {"httpbin": "mirror.example:5000/proxy/mccutchen/go-httpbin:v2.15.0",
                                        "curl": "mirror.example:5000/proxy/curlimages/curl:8.16.0"}
    assert platform.istio_hub == "mirror.example:5000/proxy/istio" and platform.istio_tag is None
    assert templates.under_registry_platform(templates.DEFAULT_PLATFORM, None) is templates.DEFAULT_PLATFORM
