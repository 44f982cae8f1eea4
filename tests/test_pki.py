"""custom_ca_conformance.model's pki, certificates and chains against real certificates minted with cryptography."""

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from custom_ca_conformance.model import certificates, chains, pki

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


def _restricted_ca(parent, ekus):
    """An intermediate CA of ``parent`` whose extendedKeyUsage is ``ekus``."""
    key = pki.new_private_key()
    cert = (x509.CertificateBuilder().subject_name(pki._common_name("restricted")).issuer_name(parent.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_in(-1)).not_valid_after(_in(24))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(pki._key_usage(set(pki.CA_KEY_USAGES)), critical=True)
            .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
            .sign(parent.key, hashes.SHA256()))
    return pki.CertificateAuthority(key, cert, "", "", issuers=(parent.cert,))


@pytest.fixture(scope="module")
def other_root():
    return pki.make_self_signed_ca("signer-bar root")


# --- verify_workload_chain: the verdict (cryptography's path validator) ----------------------


def _verify(chain, *bundle, **kwargs):
    return chains.verify_workload_chain([c.cert if isinstance(c, pki.CertificateAuthority) else c for c in chain],
                                        [ca.cert for ca in bundle], **kwargs)


@pytest.mark.parametrize("ca_key_kind", ["rsa-2048", "ec-p256"])
def test_leaf_chains_through_intermediate_to_root(ca_key_kind):
    root = pki.make_self_signed_ca("root", key=pki.new_private_key(ca_key_kind))
    intermediate = pki.make_intermediate_ca(root, "intermediate", key=pki.new_private_key(ca_key_kind))
    check = _verify([_leaf(intermediate), intermediate], root)
    assert check.ok, check.detail
    assert check.detail.endswith("-> CN=intermediate -> CN=root")


@pytest.mark.parametrize("leaf_key_kind", pki.KEY_KINDS)
def test_istio_shaped_leaf_of_every_key_kind_is_accepted(intermediate, root, leaf_key_kind):
    # Empty subject, a critical URI SAN as the only name: what a sidecar presents.
    check = _verify([_leaf(intermediate, key_kind=leaf_key_kind), intermediate], root)
    assert check.ok, check.detail


def test_ca_with_an_ed25519_key_fails_naming_the_algorithm(root):
    ed_intermediate = pki.make_intermediate_ca(root, "ed25519 intermediate", key=pki.new_private_key("ed25519"))
    check = _verify([_leaf(ed_intermediate), ed_intermediate], root)
    assert not check.ok
    assert "1st issuer CN=ed25519 intermediate" in check.detail and "Ed25519PublicKey key" in check.detail


def test_chain_that_ends_with_the_root_itself_is_accepted(root, intermediate):
    check = _verify([_leaf(intermediate), intermediate, root], root)
    assert check.ok, check.detail


def test_leaf_issued_directly_by_root_needs_no_intermediates(root):
    check = _verify([_leaf(root)], root)
    assert check.ok, check.detail


def test_bundle_of_two_roots_accepts_leaves_of_either(root, intermediate, other_root):
    # A root rotation publishes old and new root together; the order must not matter.
    for bundle in ((root, other_root), (other_root, root)):
        for leaf_chain in ([_leaf(intermediate), intermediate], [_leaf(other_root)]):
            check = _verify(leaf_chain, *bundle)
            assert check.ok, check.detail


def test_missing_intermediate_fails_naming_the_unknown_issuer(root, intermediate):
    check = _verify([_leaf(intermediate)], root)
    assert not check.ok
    assert "wrong issuer" in check.detail and "CN=signer-foo intermediate" in check.detail


def test_other_signers_root_fails_naming_the_issuer_and_the_bundle(intermediate, other_root):
    check = _verify([_leaf(intermediate), intermediate], other_root)
    assert not check.ok
    assert "names issuer CN=signer-foo root" in check.detail
    assert "bundle: CN=signer-bar root" in check.detail


def test_same_named_root_of_another_signer_fails_on_signature():
    # Two self-signed issuers may share a name; only the signature tells them apart.
    mine = pki.make_self_signed_ca("istio-ca")
    impostor = pki.make_self_signed_ca("istio-ca")
    check = _verify([_leaf(mine)], impostor)
    assert not check.ok
    assert "signature does not verify" in check.detail


def test_self_signed_leaf_outside_the_bundle_fails(root):
    stranger = pki.make_self_signed_ca("stranger")
    check = _verify([stranger], root)
    assert not check.ok and "ends at the self-signed CN=stranger" in check.detail


def _not_a_ca(root):
    key = pki.new_private_key()
    cert = pki.issue_leaf(root, pki.istio_style_csr(WORKLOAD_ID, key), not_after=_in(1), usages=ISTIO_USAGES)
    return pki.CertificateAuthority(key, cert, "", "", issuers=(root.cert,))


def test_issuer_without_ca_flag_fails(root):
    not_a_ca = _not_a_ca(root)
    grandchild = _leaf(not_a_ca, spiffe_id="spiffe://cluster.local/ns/foo/sa/other")
    check = _verify([grandchild, not_a_ca], root)
    assert not check.ok
    assert "1st issuer <empty subject, URI:spiffe://cluster.local/ns/foo/sa/curl>" in check.detail
    assert "is not a CA" in check.detail


def test_intermediate_violating_path_length_fails(root):
    capped = pki.make_intermediate_ca(root, "capped", path_length=0)
    below = pki.make_intermediate_ca(capped, "below capped")
    check = _verify([_leaf(below), below, capped], root)
    assert not check.ok
    assert "2nd issuer CN=capped" in check.detail
    assert "pathLenConstraint 0 but 1 CA certificate(s) lie between it and the leaf" in check.detail


def test_path_length_zero_allows_signing_leaves(root):
    capped = pki.make_intermediate_ca(root, "capped", path_length=0)
    check = _verify([_leaf(capped), capped], root)
    assert check.ok, check.detail


def test_issuer_without_key_cert_sign_fails(root):
    no_sign = pki.make_intermediate_ca(root, "no keyCertSign", key_usages={"digital_signature", "crl_sign"})
    check = _verify([_leaf(no_sign), no_sign], root)
    assert not check.ok
    assert "1st issuer CN=no keyCertSign" in check.detail and "without keyCertSign" in check.detail


def test_leaf_marked_ca_fails(root):
    leaf = _leaf(root)
    builder = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(leaf.issuer)
               .public_key(leaf.public_key()).serial_number(leaf.serial_number)
               .not_valid_before(leaf.not_valid_before_utc).not_valid_after(leaf.not_valid_after_utc))
    for extension in leaf.extensions:
        value = extension.value
        if isinstance(value, x509.BasicConstraints):
            value = x509.BasicConstraints(ca=True, path_length=None)
        builder = builder.add_extension(value, extension.critical)
    check = _verify([builder.sign(root.key, hashes.SHA256())], root)
    assert not check.ok
    assert check.detail.startswith("the leaf is marked as a CA (basicConstraints CA:TRUE)"), check.detail


@pytest.mark.parametrize(("usages", "missing"), [
    (ISTIO_USAGES - {"client auth"}, "extended key usage client_auth"),
    (ISTIO_USAGES - {"server auth"}, "extended key usage server_auth"),
    (ISTIO_USAGES - {"server auth", "client auth"}, "extended key usage client_auth, server_auth"),
    (ISTIO_USAGES - {"key encipherment"}, "key usage key_encipherment"),
    (ISTIO_USAGES - {"digital signature"}, "key usage digital_signature"),
])
def test_leaf_without_a_workload_usage_fails_naming_it(root, usages, missing):
    check = _verify([_leaf(root, usages=usages)], root)
    assert not check.ok
    assert f"the leaf lacks {missing}:" in check.detail


def test_intermediate_restricted_to_server_auth_fails(root):
    server_only = _restricted_ca(root, [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])
    check = _verify([_leaf(server_only), server_only], root)
    assert not check.ok and "restricts extended key usage to ['server_auth']" in check.detail


def test_intermediate_allowing_both_tls_purposes_is_accepted(root):
    both = _restricted_ca(root, [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
    check = _verify([_leaf(both), both], root)
    assert check.ok, check.detail


def test_expired_leaf_fails(root):
    expired = _leaf(root, not_before=_in(-3), not_after=_in(-1))
    check = _verify([expired], root)
    assert not check.ok
    assert check.detail.startswith("the leaf expired before")


def test_expired_intermediate_fails_naming_it(root):
    expired = pki.make_intermediate_ca(root, "expired intermediate", not_before=_in(-48), not_after=_in(-24))
    check = _verify([_leaf(expired), expired], root)
    assert not check.ok
    assert "1st issuer expired before" in check.detail and "subject=CN=expired intermediate" in check.detail


def test_not_yet_valid_root_fails_naming_it():
    future_root = pki.make_self_signed_ca("future root")
    check = _verify([_leaf(future_root, not_before=_in(-1))], future_root, at=_in(-1))
    assert not check.ok and "1st issuer is not yet valid" in check.detail


def test_validity_is_checked_at_the_given_moment(root):
    leaf = _leaf(root, not_after=_in(1))
    assert _verify([leaf], root, at=_in(0.5)).ok
    later = _verify([leaf], root, at=_in(2))
    assert not later.ok and "expired" in later.detail


def test_every_broken_rule_is_named_and_the_validator_message_kept(root):
    expired_no_sign = pki.make_intermediate_ca(root, "worst", key_usages={"crl_sign"}, not_before=_in(-48),
                                               not_after=_in(-24))
    leaf = _leaf(expired_no_sign, usages={"digital signature", "key encipherment"})
    check = _verify([leaf, expired_no_sign], root)
    assert not check.ok
    for phrase in ("lacks extended key usage client_auth, server_auth", "without keyCertSign", "1st issuer expired",
                   "(path validator: validation failed"):
        assert phrase in check.detail, check.detail


def test_empty_inputs_are_named():
    root = pki.make_self_signed_ca("root")
    assert chains.verify_workload_chain([], [root.cert]).detail == "no certificate to verify"
    assert "empty trust bundle" in chains.verify_workload_chain([root.cert], []).detail


# --- explanation helpers ------------------------------------------------------------------------


def test_presented_path_follows_issuers_into_the_bundle(root, intermediate):
    leaf = _leaf(intermediate)
    assert chains.presented_path([leaf, intermediate.cert], [root.cert]) == [leaf, intermediate.cert, root.cert]
    assert chains.presented_path([leaf], [root.cert]) == [leaf]


def test_explanation_falls_back_to_the_validator_message(root, intermediate):
    chain = [_leaf(intermediate), intermediate.cert]
    text = chains.explain_chain_failure(chain, [root.cert], _in(0), "some rule of its own")
    assert text == "none of the checked rules explains it (path validator: some rule of its own)"


def test_path_length_reads_basic_constraints(root):
    assert certificates.path_length(root.cert) is None
    assert certificates.path_length(pki.make_intermediate_ca(root, "capped", path_length=2).cert) == 2


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
    assert certificates.is_ca(root.cert)
    assert certificates.is_ca(intermediate.cert)
    assert not certificates.is_ca(_leaf(intermediate))


def test_expected_spiffe_id_format():
    assert certificates.expected_spiffe_id("cluster.local", "foo", "curl") == WORKLOAD_ID


def test_spiffe_ids_reads_uri_sans(root):
    assert certificates.spiffe_ids(_leaf(root)) == [WORKLOAD_ID]
    assert certificates.spiffe_ids(root.cert) == []


def test_fingerprint_is_colon_separated_sha256_of_der(root):
    der = root.cert.public_bytes(serialization.Encoding.DER)
    expected = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert certificates.fingerprint(root.cert) == expected


def test_describe_cert_names_subject_issuer_sans_and_fingerprint(intermediate):
    leaf = _leaf(intermediate)
    line = certificates.describe_cert(leaf)
    assert "subject=<empty>" in line
    assert "issuer=CN=signer-foo intermediate" in line
    assert f"URI:{WORKLOAD_ID}" in line
    assert certificates.fingerprint(leaf) in line
    assert "\n" not in line


def test_same_public_key_compares_subject_public_key_info(root, other_root):
    assert certificates.same_public_key(root.cert, root.key.public_key())
    assert not certificates.same_public_key(root.cert, other_root.cert)


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
    assert certificates.same_public_key(leaf, key.public_key())
    assert certificates.same_public_key(leaf, x509.load_pem_x509_csr(csr_pem))
    assert certificates.spiffe_ids(leaf) == [WORKLOAD_ID]
    assert certificates.kube_usages(leaf) == ISTIO_USAGES


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
    assert certificates.key_usage_names(leaf) == {"digital_signature"}
    assert certificates.extended_key_usage_names(leaf) == {"server_auth"}
    assert certificates.kube_usages(leaf) == {"digital signature", "server auth"}


def test_kubernetes_signing_alias_means_digital_signature(root):
    leaf = _leaf(root, usages={"signing", "client auth"})
    assert certificates.kube_usages(leaf) == {"digital signature", "client auth"}


def test_extended_usages_alone_leave_key_usage_out(root):
    leaf = _leaf(root, usages={"client auth"})
    assert certificates.key_usage_names(leaf) == set()
    assert certificates.extended_key_usage_names(leaf) == {"client_auth"}


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


@pytest.mark.parametrize(("uri", "namespace"), [
    ("spiffe://cluster.local/ns/foo/sa/curl", "foo"),
    ("spiffe://td.example/ns/team-a/sa/default", "team-a"),
    ("spiffe://cluster.local/ns/foo", None),
    ("spiffe://cluster.local/sa/curl/ns/foo", None),
    ("https://example.com/ns/foo/sa/curl", None),
])
def test_spiffe_namespace_reads_istio_workload_identities_only(uri, namespace):
    assert certificates.spiffe_namespace(uri) == namespace
