"""The signer-choice probe's pure helpers: which pair it uses and the Deployment it starts."""

import json

from custom_ca_conformance.model.topology import default_topology, from_document
from custom_ca_conformance.probes.posture import CHOOSER_NAME, PROXY_CONFIG_ANNOTATION, chooser_deployment, chooser_pair, signer_choice_pair

CURL = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "curl", "namespace": "foo", "labels": {"app": "curl"}, "uid": "u", "resourceVersion": "7",
                 "annotations": {"deployment.kubernetes.io/revision": "1"}},
    "spec": {"selector": {"matchLabels": {"app": "curl"}},
             "template": {"metadata": {"labels": {"app": "curl"}}, "spec": {"serviceAccountName": "curl"}}},
    "status": {"replicas": 1},
}


def test_the_probe_uses_a_client_and_a_server_of_different_signers():
    pair = signer_choice_pair(default_topology())
    assert (pair.client.namespace, pair.server.namespace, pair.same_signer) == ("foo", "bar", False)
    chooser = chooser_pair(pair)
    assert (chooser.client.namespace, chooser.client.name, chooser.server) == ("foo", CHOOSER_NAME, pair.server)


def test_a_topology_of_one_signer_has_no_probe():
    topology = from_document({"signers": ["s"], "tenants": [{"namespace": "a", "signer": "s"},
                                                            {"namespace": "b", "signer": "s"}]}, source="t")
    assert signer_choice_pair(topology) is None


def test_the_chooser_keeps_the_clients_identity_and_asks_for_the_other_signer():
    chooser = chooser_deployment(CURL, "bar")
    template = chooser["spec"]["template"]
    assert chooser["metadata"]["name"] == CHOOSER_NAME and "status" not in chooser
    assert not {"uid", "resourceVersion", "annotations"} & set(chooser["metadata"])
    assert chooser["spec"]["selector"]["matchLabels"] == {"app": CHOOSER_NAME} == {"app": template["metadata"]["labels"]["app"]}
    assert template["spec"]["serviceAccountName"] == "curl"
    assert json.loads(template["metadata"]["annotations"][PROXY_CONFIG_ANNOTATION]) == {
        "proxyMetadata": {"ISTIO_META_CERT_SIGNER": "bar"}}
    assert CURL["metadata"]["name"] == "curl"  # the original is not changed
