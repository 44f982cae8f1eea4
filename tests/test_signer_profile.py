"""Signer profiles: built-ins derive from the topology; files are validated with one-line errors."""

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
    ("name: x\nsigners:\n- signerName: nodomain\n  caBundle: {file: /r.pem}\n", "signers[0].signerName: 'nodomain' does not match"),
    ("name: x\nsigners:\n- signerName: a.example/s\n  caBundle: {secret: {namespace: n, name: s}}\n", "signers[0].caBundle"),
    ("name: x\nsigners:\n- signerName: a.example/s\n  caBundle: {file: r.pem}\nunsupported: [teleport]\n",
     "unsupported[0]: 'teleport' is not one of"),
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
