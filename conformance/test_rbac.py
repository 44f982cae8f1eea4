"""istiod may approve CSRs of exactly the configured signers: no more (wildcards), no fewer."""

import pytest

from custom_ca_conformance.evidence.collection import istiod_may_approve
from custom_ca_conformance.model.messages import mismatch
from custom_ca_conformance.model.names import ISTIOD_USER
from custom_ca_conformance.model.vocabulary import Stage

# istiod's ClusterRole exists once Istio's objects are applied, whether or not istiod got ready.
pytestmark = [pytest.mark.rbac, pytest.mark.requires(Stage.ISTIO)]


def _approve_rules(role: dict) -> list[dict]:
    return [
        rule for rule in role.get("rules") or []
        if "certificates.k8s.io" in (rule.get("apiGroups") or [])
        and "signers" in (rule.get("resources") or [])
        and ({"approve", "*"} & set(rule.get("verbs") or []))
    ]


def test_istiod_may_approve_exactly_the_configured_signers(mesh, topology):
    role = mesh.istiod_cluster_role()
    rules = _approve_rules(role)
    unrestricted = [r for r in rules if not r.get("resourceNames")]
    approvable = {name for r in rules for name in r.get("resourceNames") or []}
    where = f"ClusterRole {role['metadata']['name']} rules on certificates.k8s.io signers"
    assert not unrestricted, mismatch("approve limited by resourceNames", f"unrestricted rule {unrestricted}", where)
    assert approvable == set(topology.signer_names), mismatch(
        f"approve on {sorted(topology.signer_names)}", f"approve on {sorted(approvable)}", where
    )


def test_istiod_is_authorized_to_approve_each_configured_signer(mesh, topology):
    denied = [name for name in topology.signer_names if not istiod_may_approve(mesh.api_client, name)]
    assert not denied, mismatch(
        f"{ISTIOD_USER} may approve {sorted(topology.signer_names)}",
        f"SubjectAccessReview denies {denied}",
        "ClusterRoles bound to istiod (kubectl get clusterrolebindings -o wide | grep istiod)",
    )


def test_istiod_is_not_authorized_to_approve_other_signers(mesh, topology):
    others = [topology.signer_name("not-a-configured-signer"), "kubernetes.io/kube-apiserver-client"]
    allowed = [name for name in others if istiod_may_approve(mesh.api_client, name)]
    assert not allowed, mismatch(
        f"{ISTIOD_USER} may not approve signers outside the topology",
        f"SubjectAccessReview allows {allowed}",
        "ClusterRoles bound to istiod: look for a wildcard or an unrestricted signers rule",
    )
