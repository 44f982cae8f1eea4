"""The topology model: the default is the Istio task, files are validated with one-line errors."""

import pytest

from custom_ca_conformance.model.topology import Role, TopologyError, default_topology, from_document, generated_topology, load_topology


def test_default_topology_is_the_istio_task():
    topology = default_topology()
    assert topology.signers == ("istio-system", "foo", "bar")
    assert topology.default_signer == "istio-system"
    assert {t.namespace: t.signer for t in topology.tenants} == {"foo": "foo", "bar": "bar"}
    assert topology.signer_names == ("clusterissuers.cert-manager.io/istio-system",
                                     "clusterissuers.cert-manager.io/foo", "clusterissuers.cert-manager.io/bar")
    assert [w.id for w in topology.workloads] == ["foo/httpbin", "foo/curl", "bar/httpbin", "bar/curl"]


def test_pairs_are_every_client_against_every_server_with_signer_equality():
    pairs = {p.id: p for p in default_topology().pairs()}
    assert set(pairs) == {"foo-to-foo", "foo-to-bar", "bar-to-foo", "bar-to-bar"}
    assert pairs["foo-to-foo"].same_signer and not pairs["foo-to-bar"].same_signer
    assert pairs["foo-to-bar"].client.role is Role.CLIENT and pairs["foo-to-bar"].server.role is Role.SERVER


def test_tenants_sharing_a_signer_make_same_signer_pairs():
    topology = from_document({"signers": ["s"], "tenants": [{"namespace": "a", "signer": "s"},
                                                            {"namespace": "b", "signer": "s"}]}, source="t")
    assert all(p.same_signer for p in topology.pairs())


def test_a_tenant_without_client_has_no_outgoing_pairs():
    topology = from_document({"signers": ["s", "t"], "tenants": [
        {"namespace": "a", "signer": "s", "workloads": ["httpbin"]},
        {"namespace": "b", "signer": "t"}]}, source="t")
    assert sorted(p.id for p in topology.pairs()) == ["b-to-a", "b-to-b"]


def test_generated_topology_has_one_signer_per_tenant():
    topology = generated_topology(10)
    assert len(topology.tenants) == 10 and len(topology.pairs()) == 100
    assert sum(p.same_signer for p in topology.pairs()) == 10


def test_a_topology_of_more_tenants_than_supported_is_refused_in_one_line():
    from custom_ca_conformance.model.topology import MAX_TENANTS

    assert len(generated_topology(MAX_TENANTS).tenants) == MAX_TENANTS
    with pytest.raises(TopologyError) as error:
        generated_topology(MAX_TENANTS + 1)
    assert str(error.value) == (f"generated topology of {MAX_TENANTS + 1} tenants: tenants: {MAX_TENANTS + 1} tenants "
                                f"would make {(MAX_TENANTS + 1) ** 2} pairs; at most {MAX_TENANTS} tenants "
                                f"({MAX_TENANTS ** 2} pairs) are supported")


@pytest.mark.parametrize("namespace, why", [
    ("kube-system", "a Kubernetes system namespace"),
    ("kube-public", "a Kubernetes system namespace"),
    ("kube-node-lease", "a Kubernetes system namespace"),
    ("istio-system", "Istio's control-plane namespace"),
    ("default", "the cluster's default namespace"),
    ("cert-manager", "cert-manager's namespace"),
    ("local-path-storage", "kind's storage provisioner"),
])
def test_a_system_namespace_as_tenant_is_refused_in_one_line(namespace, why):
    with pytest.raises(TopologyError) as error:
        from_document({"signers": ["a"], "tenants": [{"namespace": "x", "signer": "a"},
                                                     {"namespace": namespace, "signer": "a"}]},
                      source="topology file t.yaml")
    text = str(error.value)
    assert text.startswith(f"topology file t.yaml: tenants[1].namespace: {namespace!r} is ") and "\n" not in text
    assert why in text and "name a namespace of the tenant's own" in text


def test_a_namespace_merely_resembling_a_system_one_is_a_tenant():
    topology = from_document({"signers": ["a"], "tenants": [{"namespace": "istio-system-tenant", "signer": "a"},
                                                            {"namespace": "my-kube-ns", "signer": "a"}]}, source="t")
    assert [t.namespace for t in topology.tenants] == ["istio-system-tenant", "my-kube-ns"]


@pytest.mark.parametrize("document, message", [
    ({"signers": ["a"], "tenants": [{"namespace": "x", "signer": "b"}]},
     "tenants[0].signer: 'b' is not listed in signers ['a']"),
    ({"signers": ["a"], "tenants": [{"namespace": "Bad_NS", "signer": "a"}]},
     "tenants[0].namespace: 'Bad_NS' is not a namespace name: at most 63 lowercase letters, digits and '-', "
     "starting and ending with a letter or digit, e.g. team-a"),
    ({"signers": ["a"], "tenants": [{"namespace": "x", "signer": "a"}, {"namespace": "x", "signer": "a"}]},
     "tenants[1].namespace: 'x' is listed twice"),
    ({"signers": ["a"], "defaultSigner": "z", "tenants": [{"namespace": "x", "signer": "a"}]},
     "defaultSigner: 'z' is not listed in signers"),
    ({"signers": ["a"], "tenants": [{"namespace": "x", "signer": "a", "workloads": ["nginx"]}]},
     "tenants[0].workloads[0]: 'nginx' is not one of"),
    ({"signers": ["a"], "tenants": [{"namespace": "x", "signer": "a"}], "colour": "red"},
     "top level: unknown key 'colour'; the keys here are signerDomain, defaultSigner, trustDomain, signers, tenants"),
    ({"signers": ["a"], "tenants": [{"namespace": "x", "signer": "a"}], "trustdomain": "example.org"},
     "top level: unknown key 'trustdomain' (did you mean 'trustDomain'?)"),
    ({"signers": ["foo", "bar"], "tenants": [{"namespace": "x", "singer": "foo"}]},
     "tenants[0]: unknown key 'singer' (did you mean 'signer'?); the keys here are namespace, signer, workloads"),
    ({"signers": ["foo", "bar"], "tenants": [{"namespace": "x", "signer": "fooo"}]},
     "tenants[0].signer: 'fooo' is not listed in signers ['foo', 'bar'] (did you mean 'foo'?)"),
    ({"signers": ["a"], "tenants": [{"namespace": "x", "signer": "a", "workloads": ["curll"]}]},
     "tenants[0].workloads[0]: 'curll' is not one of httpbin, curl (did you mean 'curl'?)"),
    ({"signers": "a", "tenants": [{"namespace": "x", "signer": "a"}]}, "signers: expected a list, found a string ('a')"),
    ({"signers": ["a"], "signerDomain": "nodots", "tenants": [{"namespace": "x", "signer": "a"}]},
     "signerDomain: 'nodots' is not a DNS domain with at least one dot, of lowercase letters, digits and '-', "
     "e.g. clusterissuers.cert-manager.io"),
    ({"tenants": [{"namespace": "x", "signer": "a"}]},
     "top level: the key 'signers' is missing, e.g. signers: [istio-system, foo, bar]"),
])
def test_invalid_documents_fail_with_one_line_naming_the_field(document, message):
    with pytest.raises(TopologyError) as error:
        from_document(document, source="topology file t.yaml")
    text = str(error.value)
    assert text.startswith("topology file t.yaml: ") and message in text and "\n" not in text


def test_load_topology_reads_yaml_and_reports_syntax_errors_with_the_line(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("signers: [a, b]\ntenants:\n  - {namespace: x, signer: b}\n")
    assert load_topology(good).tenant("x").signer == "b"
    bad = tmp_path / "bad.yaml"
    bad.write_text("signers: [a\ntenants: []\n")
    with pytest.raises(TopologyError, match=r"bad.yaml: not valid YAML at line \d+$"):
        load_topology(bad)
    with pytest.raises(TopologyError, match="cannot be read"):
        load_topology(tmp_path / "missing.yaml")


def test_the_readme_topology_example_is_valid():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"## Topology file\n\n```yaml\n(.*?)```", readme, re.S).group(1)
    import yaml

    topology = from_document(yaml.safe_load(block), source="README")
    assert len(topology.pairs()) == 6  # baz has no client: 2 clients x 3 servers
