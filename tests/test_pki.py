"""custom_ca_conformance.pki against real certificates minted with cryptography."""

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from custom_ca_conformance import pki

WORKLOAD_ID = "spiffe://cluster.local/ns/foo/sa/curl"
ISTIO_USAGES = {"digital signature", "key encipherment", "server auth", "client auth"}


def _in(hours: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)


def _leaf(ca, *, key_kind="ec-p256", spiffe_id=WORKLOAD_ID, usages=ISTIO_USAGES, **validity):
    key = pki.new_private_key(key_kind)
    validity.setdefault("not_after", _in(1))
    return pki.issue_leaf(ca, pki.istio_style_csr(spiffe_id, key), usages=usages, **validity)


@pytest.fixture(scope="module")
def root():
    return pki.make_self_signed_ca("signer-foo root")


@pytest.fixture(scope="module")
def intermediate(root):
    return pki.make_intermediate_ca(root, "signer-foo intermediate")


@pytest.fixture(scope="module")
def other_root():
    return pki.make_self_signed_ca("signer-bar root")


# --- chain_verifies_to -----------------------------------------------------------------------


@pytest.mark.parametrize("ca_key_kind", pki.KEY_KINDS)
def test_leaf_chains_through_intermediate_to_root(ca_key_kind):
    root = pki.make_self_signed_ca("root", key=pki.new_private_key(ca_key_kind))
    intermediate = pki.make_intermediate_ca(root, "intermediate", key=pki.new_private_key(ca_key_kind))
    check = pki.chain_verifies_to(_leaf(intermediate), [intermediate.cert], root.cert)
    assert check.ok, check.detail


def test_chain_that_ends_with_the_root_itself_is_accepted(root, intermediate):
    check = pki.chain_verifies_to(_leaf(intermediate), [intermediate.cert, root.cert], root.cert)
    assert check.ok, check.detail


def test_leaf_issued_directly_by_root_needs_no_intermediates(root):
    check = pki.chain_verifies_to(_leaf(root), [], root.cert)
    assert check.ok, check.detail


def test_missing_intermediate_fails_instead_of_passing_silently(root, intermediate):
    check = pki.chain_verifies_to(_leaf(intermediate), [], root.cert)
    assert not check.ok
    assert "issuer mismatch" in check.detail
    assert "signer-foo intermediate" in check.detail


def test_other_signers_root_fails_naming_the_issuer_mismatch(intermediate, other_root):
    check = pki.chain_verifies_to(_leaf(intermediate), [intermediate.cert], other_root.cert)
    assert not check.ok
    assert "issuer mismatch" in check.detail
    assert "CN=signer-foo root" in check.detail
    assert "CN=signer-bar root" in check.detail


def test_same_named_root_of_another_signer_fails_on_signature():
    # Two self-signed issuers may share a name; only the signature tells them apart.
    mine = pki.make_self_signed_ca("istio-ca")
    impostor = pki.make_self_signed_ca("istio-ca")
    check = pki.chain_verifies_to(_leaf(mine), [], impostor.cert)
    assert not check.ok
    assert "bad signature" in check.detail


def test_issuer_without_ca_flag_fails(root):
    leaf_key = pki.new_private_key()
    not_a_ca_cert = pki.issue_leaf(
        root, pki.istio_style_csr(WORKLOAD_ID, leaf_key), not_after=_in(1), usages=ISTIO_USAGES
    )
    not_a_ca = pki.CertificateAuthority(leaf_key, not_a_ca_cert, "", "", issuers=(root.cert,))
    grandchild = _leaf(not_a_ca, spiffe_id="spiffe://cluster.local/ns/foo/sa/other")
    check = pki.chain_verifies_to(grandchild, [not_a_ca_cert], root.cert)
    assert not check.ok
    assert "not a CA" in check.detail


def test_expired_leaf_fails(root):
    expired = _leaf(root, not_before=_in(-3), not_after=_in(-1))
    check = pki.chain_verifies_to(expired, [], root.cert)
    assert not check.ok
    assert check.detail.startswith("expired")


def test_validity_is_checked_at_the_given_moment(root):
    leaf = _leaf(root, not_after=_in(1))
    assert pki.chain_verifies_to(leaf, [], root.cert, at=_in(0.5)).ok
    later = pki.chain_verifies_to(leaf, [], root.cert, at=_in(2))
    assert not later.ok and "expired" in later.detail


def test_intermediate_never_outlives_its_parent():
    short_root = pki.make_self_signed_ca("short-lived root", days=1)
    intermediate = pki.make_intermediate_ca(short_root, "long intermediate", days=365)
    assert intermediate.cert.not_valid_after_utc <= short_root.cert.not_valid_after_utc


def test_intermediate_records_its_issuers(root, intermediate):
    assert intermediate.issuers == (root.cert,)
    assert intermediate.root == root.cert
    assert pki.load_pem_chain(intermediate.chain_pem) == [intermediate.cert, root.cert]


# --- inspection ------------------------------------------------------------------------------


def test_ca_flag_is_detected(root, intermediate):
    assert pki.is_ca(root.cert)
    assert pki.is_ca(intermediate.cert)
    assert not pki.is_ca(_leaf(intermediate))


def test_expected_spiffe_id_format():
    assert pki.expected_spiffe_id("cluster.local", "foo", "curl") == WORKLOAD_ID


def test_spiffe_ids_reads_uri_sans(root):
    assert pki.spiffe_ids(_leaf(root)) == [WORKLOAD_ID]
    assert pki.spiffe_ids(root.cert) == []


def test_fingerprint_is_colon_separated_sha256_of_der(root):
    der = root.cert.public_bytes(serialization.Encoding.DER)
    expected = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert pki.fingerprint(root.cert) == expected


def test_describe_cert_names_subject_issuer_sans_and_fingerprint(intermediate):
    leaf = _leaf(intermediate)
    line = pki.describe_cert(leaf)
    assert "subject=<empty>" in line
    assert "issuer=CN=signer-foo intermediate" in line
    assert f"URI:{WORKLOAD_ID}" in line
    assert pki.fingerprint(leaf) in line
    assert "\n" not in line


def test_same_public_key_compares_subject_public_key_info(root, other_root):
    assert pki.same_public_key(root.cert, root.key.public_key())
    assert not pki.same_public_key(root.cert, other_root.cert)


# --- Istio-shaped CSR ---------------------------------------------------------------------------


@pytest.mark.parametrize("key_kind", pki.KEY_KINDS)
def test_istio_style_csr_has_empty_subject_and_only_a_uri_san(key_kind):
    csr = x509.load_pem_x509_csr(pki.istio_style_csr(WORKLOAD_ID, pki.new_private_key(key_kind)))
    assert csr.is_signature_valid
    assert len(csr.subject) == 0
    assert [ext.oid for ext in csr.extensions] == [x509.OID_SUBJECT_ALTERNATIVE_NAME]
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # RFC 5280: SAN must be critical when the subject is empty
    assert list(san.value) == [x509.UniformResourceIdentifier(WORKLOAD_ID)]


# --- issue_leaf -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_kind", pki.KEY_KINDS)
def test_issued_leaf_keeps_csr_public_key_and_uri_san(intermediate, key_kind):
    key = pki.new_private_key(key_kind)
    csr_pem = pki.istio_style_csr(WORKLOAD_ID, key)
    leaf = pki.issue_leaf(intermediate, csr_pem, not_after=_in(1), usages=ISTIO_USAGES)
    assert pki.same_public_key(leaf, key.public_key())
    assert pki.same_public_key(leaf, x509.load_pem_x509_csr(csr_pem))
    assert pki.spiffe_ids(leaf) == [WORKLOAD_ID]
    assert pki.kube_usages(leaf) == ISTIO_USAGES


@pytest.mark.parametrize("ca_key_kind", pki.KEY_KINDS)
def test_issued_leaf_is_a_critical_non_ca_with_key_identifiers(ca_key_kind):
    ca = pki.make_self_signed_ca("issuer", key=pki.new_private_key(ca_key_kind))
    leaf = _leaf(ca)
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    leaf.verify_directly_issued_by(ca.cert)


def test_usages_map_to_exact_key_usage_bits(root):
    leaf = _leaf(root, usages={"digital signature", "server auth"})
    assert pki.key_usage_names(leaf) == {"digital_signature"}
    assert pki.extended_key_usage_names(leaf) == {"server_auth"}
    assert pki.kube_usages(leaf) == {"digital signature", "server auth"}


def test_kubernetes_signing_alias_means_digital_signature(root):
    leaf = _leaf(root, usages={"signing", "client auth"})
    assert pki.kube_usages(leaf) == {"digital signature", "client auth"}


def test_extended_usages_alone_leave_key_usage_out(root):
    leaf = _leaf(root, usages={"client auth"})
    assert pki.key_usage_names(leaf) == set()
    assert pki.extended_key_usage_names(leaf) == {"client_auth"}


def test_leaf_validity_is_as_requested(root):
    not_before = _in(-1).replace(microsecond=0)
    not_after = _in(2).replace(microsecond=0)
    leaf = _leaf(root, not_before=not_before, not_after=not_after)
    assert (leaf.not_valid_before_utc, leaf.not_valid_after_utc) == (not_before, not_after)


def test_unknown_usage_is_rejected(root):
    with pytest.raises(pki.PkiError, match="unknown Kubernetes CSR usage 'world domination'"):
        _leaf(root, usages={"digital signature", "world domination"})


def test_csr_without_san_is_rejected(root):
    key = pki.new_private_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    csr_pem = csr.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(pki.PkiError, match="no SubjectAlternativeName"):
        pki.issue_leaf(root, csr_pem, not_after=_in(1), usages=ISTIO_USAGES)


def test_empty_validity_window_is_rejected(root):
    moment = _in(1)
    with pytest.raises(pki.PkiError, match="is not after not_before"):
        _leaf(root, not_before=moment, not_after=moment)


def test_unknown_key_kind_is_rejected():
    with pytest.raises(pki.PkiError, match="unknown key kind 'dsa-1024'"):
        pki.new_private_key("dsa-1024")


# --- load_pem_chain -----------------------------------------------------------------------------------


def test_pem_chain_loads_in_file_order(root, intermediate):
    leaf = _leaf(intermediate)
    bundle = pki.cert_to_pem(leaf) + intermediate.chain_pem
    assert pki.load_pem_chain(bundle) == [leaf, intermediate.cert, root.cert]
    assert pki.load_pem_chain(bundle.encode()) == [leaf, intermediate.cert, root.cert]


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   \n",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"\x30\x82\x01\x0a",
    ],
    ids=["empty", "whitespace", "text", "broken-base64-block", "der-bytes"],
)
def test_garbage_pem_raises_pki_error(garbage):
    with pytest.raises(pki.PkiError):
        pki.load_pem_chain(garbage)


def test_private_key_pem_is_not_a_certificate_chain(root):
    with pytest.raises(pki.PkiError):
        pki.load_pem_chain(root.key_pem)
