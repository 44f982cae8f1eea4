"""Every rendered object validates against the upstream schema of its kind, unknown fields rejected."""

from __future__ import annotations

import copy
import textwrap

import pytest
import upstream_schemas as schemas

from custom_ca_conformance.model.pki import make_self_signed_ca
from custom_ca_conformance.model.topology import default_topology, generated_topology
from custom_ca_conformance.render import templates

TOPOLOGIES = {"default": default_topology(), "generated-3": generated_topology(3)}


@pytest.fixture(scope="module")
def catalog() -> schemas.SchemaCatalog:
    try:
        return schemas.default_catalog()
    except schemas.SchemaUnavailable as exc:
        pytest.skip(f"upstream schemas unavailable: {exc}")


def _rendered(topology) -> list[dict]:
    roots = {signer: make_self_signed_ca(signer).cert_pem for signer in topology.signers}
    return [obj for objects in templates.all_documents(topology, roots).values() for obj in objects]


def _object_id(obj: dict) -> str:
    namespace = obj["metadata"].get("namespace")
    return f"{obj['kind']}/{namespace + '/' if namespace else ''}{obj['metadata']['name']}"


RENDERED = [(name, obj) for name, topology in TOPOLOGIES.items() for obj in _rendered(topology)]


@pytest.mark.parametrize("obj", [obj for _, obj in RENDERED],
                         ids=[f"{name}:{_object_id(obj)}" for name, obj in RENDERED])
def test_rendered_object_conforms_to_its_upstream_schema(catalog, obj):
    assert catalog.errors(obj) == []


def test_every_rendered_kind_has_a_schema(catalog):
    kinds = {(obj["apiVersion"], obj["kind"]) for _, obj in RENDERED}
    assert kinds <= set(catalog.kinds), kinds - set(catalog.kinds)


def test_every_schema_reference_resolves(catalog):
    defined = catalog.document["components"]["schemas"]
    dangling = {ref for ref in _references(defined) if ref not in defined}
    assert not dangling


def _references(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"].rsplit("/", 1)[-1]
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def _first(kind: str, api_version: str | None = None) -> dict:
    return copy.deepcopy(next(obj for _, obj in RENDERED
                              if obj["kind"] == kind and api_version in (None, obj["apiVersion"])))


def _misspell(obj: dict, path: list, bad_key: str) -> dict:
    node = obj
    for part in path:
        node = node[part]
    node[bad_key] = node.pop(next(iter(node))) if node else "x"
    return obj


TYPOS = {
    "kubernetes container field": (lambda: _misspell(
        _first("Deployment"), ["spec", "template", "spec", "containers", 0], "imagee"), "'imagee' was unexpected"),
    "kubernetes metadata": (lambda: _misspell(_first("Namespace"), ["metadata"], "lables"), "'lables' was unexpected"),
    "cert-manager Certificate": (lambda: _misspell(_first("Certificate"), ["spec"], "isCa"), "'isCa' was unexpected"),
    "cert-manager ClusterIssuer": (lambda: _misspell(_first("ClusterIssuer"), ["spec"], "selfsigned"),
                                   "'selfsigned' was unexpected"),
    "istio ProxyConfig": (lambda: _misspell(_first("ProxyConfig"), ["spec"], "environmentVariable"),
                          "'environmentVariable' was unexpected"),
    "IstioOperator meshConfig caCertificates": (lambda: _misspell(
        _first("IstioOperator"), ["spec", "meshConfig", "caCertificates", 0], "certSigner"),
        "'certSigner' was unexpected"),
    "IstioOperator values": (lambda: _misspell(_first("IstioOperator"), ["spec", "values", "global"], "certSigner"),
                             "'certSigner' was unexpected"),
    "IstioOperator component env": (lambda: _misspell(
        _first("IstioOperator"), ["spec", "components", "pilot", "k8s", "env", 0], "nam"), "'nam' was unexpected"),
    "IstioOperator overlay patch": (lambda: _misspell(
        _first("IstioOperator"), ["spec", "components", "pilot", "k8s", "overlays", 0, "patches", 0], "paths"),
        "'paths' was unexpected"),
}


@pytest.mark.parametrize("case", list(TYPOS))
def test_a_misspelt_field_fails_validation(catalog, case):
    make, expected = TYPOS[case]
    errors = catalog.errors(make())
    assert any(expected in error for error in errors), errors


def test_wrong_types_fail_validation(catalog):
    service = _first("Service")
    service["spec"]["ports"][0]["port"] = "8000"
    deployment = _first("Deployment")
    deployment["spec"]["replicas"] = "one"
    assert catalog.errors(service) and catalog.errors(deployment)


def test_an_unknown_kind_is_reported_not_passed(catalog):
    assert catalog.errors({"apiVersion": "example.com/v1", "kind": "Nope", "metadata": {"name": "x"}}) == [
        "Nope/x: no schema for apiVersion 'example.com/v1' kind 'Nope'"]


# --- the schema builders themselves (no Go needed) ------------------------------------------


def test_close_objects_rejects_unknown_properties_but_keeps_preserved_ones():
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "string", "nullable": True}}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {}},
        "properties": {"type": "object", "properties": {"x": {"type": "string"}}},
    }}
    closed = schemas.close_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["properties"]["a"]["properties"]["b"]["type"] == ["string", "null"]
    assert "additionalProperties" not in closed["properties"]["free"]
    # A property literally named "properties" is a schema, not a property map.
    assert set(closed["properties"]["properties"]["properties"]) == {"x"}


def test_proto_parser_reads_nested_messages_oneofs_maps_and_enums(tmp_path):
    (tmp_path / "a.proto").write_text(textwrap.dedent("""
        syntax = "proto3";
        package demo.v1;
        import "google/protobuf/duration.proto";
        option go_package = "x";
        // Mesh-like message
        message Outer {
          message Inner { repeated string cert_signers = 3 [deprecated = true]; }
          enum Mode { A = 0; B = 1; }
          oneof choice {
            string pem = 1;
            string spiffe_bundle_url = 2;
          }
          repeated Inner entries = 4;
          map<string, string> proxy_metadata = 5;
          Mode mode = 6;
          google.protobuf.Duration timeout = 7;
          reserved 8, 9;
          /* trailing */ Outer.Inner last = 10;
        }
    """))
    definitions = schemas.parse_proto_files([tmp_path / "a.proto"], include_dir=tmp_path)
    outer = definitions["demo.v1.Outer"]
    assert [f.name for f in outer.fields] == [
        "pem", "spiffe_bundle_url", "entries", "proxy_metadata", "mode", "timeout", "last"]
    assert [f.name for f in definitions["demo.v1.Outer.Inner"].fields] == ["cert_signers"]
    assert isinstance(definitions["demo.v1.Outer.Mode"], schemas.ProtoEnum)
    assert schemas.resolve_proto_type("Inner", outer.scope, definitions) == "demo.v1.Outer.Inner"
    duration = "google.protobuf.Duration"
    assert schemas.resolve_proto_type(duration, outer.scope, definitions) == duration


def test_go_struct_parser_reads_json_names_and_embedded_structs():
    source = textwrap.dedent('''
        import (
        \tcorev1 "k8s.io/api/core/v1"
        \tmetav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
        )
        type Thing struct {
        \tmetav1.TypeMeta `json:",inline"`
        \t// comment
        \tmetav1.ObjectMeta `json:"metadata,omitempty""`
        \tEnv []*corev1.EnvVar `json:"env,omitempty"`
        \tRaw map[string]any `json:"-"`
        }
    ''')
    assert schemas.go_imports(source) == {
        "corev1": "k8s.io/api/core/v1", "metav1": "k8s.io/apimachinery/pkg/apis/meta/v1"}
    assert schemas.go_structs(source) == {
        "Thing": [("", "metav1.TypeMeta"), ("metadata", "metav1.ObjectMeta"), ("env", "[]*corev1.EnvVar")]}


def test_go_module_dir_without_go_says_so(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(schemas.SchemaUnavailable, match="go is not on PATH"):
        schemas.go_module_dir("example.com/m", "v1.0.0")
