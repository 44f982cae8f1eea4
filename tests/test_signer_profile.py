"""Signer profiles: built-ins derive from the topology; files are validated with one-line errors."""

import json
import re
from pathlib import Path

import pytest

from custom_ca_conformance.model.signer_profile import SignerProfileError, builtin_profile, load_signer_profile
from custom_ca_conformance.model.topology import default_topology
from custom_ca_conformance.model.vocabulary import Feature

REPO = Path(__file__).resolve().parent.parent


def test_builtin_profiles_cover_the_topology_signers_with_roots_where_each_publishes_them():
    profile = builtin_profile("cert-manager", default_topology())
    assert [s.signer_name for s in profile.signers] == list(default_topology().signer_names)
    # cert-manager's roots as the task exports them: from the Secret the ClusterIssuer names.
    assert profile.signers[1].ca_bundle.describe() == (
        "ClusterIssuer foo: key ca.crt of the Secret its spec.ca.secretName names")
    reference = builtin_profile("reference", default_topology())
    assert reference.signers[1].ca_bundle.describe() == "Secret cert-manager/foo-ca-selfsigned key ca.crt"
    assert all(profile.supports(f) for f in Feature)


def test_the_readme_profile_is_complete_and_valid(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = re.search(r"A complete profile:\n\n```yaml\n(.*?)```", readme, re.S).group(1)
    path = tmp_path / "profile.yaml"
    path.write_text(block)
    profile = load_signer_profile(path)
    assert profile.name == "acme-ca-signer" and len(profile.signers) == 2
    assert profile.signers[1].ca_bundle.config_map == {"namespace": "acme-ca", "name": "tenant-b-root", "key": "root.pem"}
    assert not profile.supports(Feature.FAILED_CONDITION) and profile.supports(Feature.ED25519)
    assert profile.install["helm"]["chart"].startswith("oci://")


def test_the_example_reference_profile_is_valid():
    profile = load_signer_profile(REPO / "examples" / "reference-signer-profile.yaml")
    assert profile.install == {"builtin": "reference"}


@pytest.mark.parametrize("text, message", [
    ("name: x\nsigners: []\n", "signers: [] should be non-empty"),
    ("name: x\nsigners:\n- signerName: nodomain\n  caBundle: {file: /r.pem}\n",
     "signers[0].signerName: 'nodomain' is not a signerName: a DNS domain with at least one dot (lowercase letters, "
     "digits, '-'), a slash, then a name of letters, digits, '-' or '.', e.g. acme.example.com/team-a"),
    ("name: x\nsigners:\n- signerName: a.example/s\n  caBundle: {secret: {namespace: n, name: s}}\n",
     "signers[0].caBundle.secret: the key 'key' is missing, e.g. key: ca.crt"),
    ("name: x\nsigners:\n- signerName: a.example/s\n  caBundle: {secrets: {namespace: n, name: s, key: k}}\n",
     "signers[0].caBundle: expected exactly one of the keys secret, configMap, file, chainIncludesRoot; "
     "found 'secrets' (did you mean 'secret'?)"),
    ("name: x\nsigners:\n- signerName: a.example/s\n  caBundle: {file: r.pem, secret: {namespace: n, name: s, key: k}}\n",
     "signers[0].caBundle: expected exactly one of the keys secret, configMap, file, chainIncludesRoot; "
     "found 'file', 'secret'"),
    ("name: x\nsigners:\n- signerNmae: a.example/s\n  caBundle: {file: r.pem}\n",
     "signers[0]: unknown key 'signerNmae' (did you mean 'signerName'?); the keys here are signerName, caBundle"),
    ("name: x\nsigners:\n- signerName: a.example/s\n  caBundle: {file: r.pem}\ninstall: {builtin: cert-manger}\n",
     "install.builtin: 'cert-manger' is not one of cert-manager, reference (did you mean 'cert-manager'?)"),
    ("name: x\nsigners:\n- signerName: a.example/s\n  caBundle: {file: r.pem}\nobserveSeconds: five\n",
     "observeSeconds: expected a number, found a string ('five')"),
    ("name: x\nsigners:\n- signerName: a.example/s\n  caBundle: {file: r.pem}\nunsupported: [teleport]\n",
     "unsupported[0]: 'teleport' is not one of expiration-seconds, failed-condition, rsa, ecdsa, ed25519"),
    ("name: x\nsigners:\n- signerName: a.example/s\n  caBundle: {file: r.pem}\n- signerName: a.example/s\n"
     "  caBundle: {file: r.pem}\n", "signers: ['a.example/s'] listed twice"),
    ("name: [x\n", "not valid YAML at line"),
])
def test_invalid_profiles_fail_with_one_line_naming_the_field(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(SignerProfileError) as error:
        load_signer_profile(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def _patterned(schema: object, path: str = ""):
    if isinstance(schema, dict):
        if "pattern" in schema:
            yield path, schema
        for key, value in schema.items():
            yield from _patterned(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from _patterned(value, f"{path}/{index}")


@pytest.mark.parametrize("schema_file", ["signer_profile.schema.json", "topology.schema.json"])
def test_every_pattern_of_a_user_document_is_explained_in_words_with_an_example(schema_file):
    """A value that does not match is answered with these words, never with the regular expression."""
    schema = json.loads((REPO / "fixtures" / "model" / schema_file).read_text())
    patterned = list(_patterned(schema))
    assert patterned
    for path, field in patterned:
        assert "e.g. " in field.get("expected", ""), f"{schema_file}{path}: a pattern without 'expected' words"
