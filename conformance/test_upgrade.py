"""Upgrade runs (``--custom-ca-istio-upgrade-from A``): the before phase on A, the rollout to B, B in force.

The *after* phase is the rest of the suite, run on B. These tests exist only in an upgrade
run; the plugin deselects them otherwise.
"""

import pytest

from custom_ca_conformance import kube
from custom_ca_conformance.model.messages import mismatch
from custom_ca_conformance.model.names import (
    ISTIO_NAMESPACE,
    ISTIOD_SELECTOR,
    SIDECAR_CONTAINER,
)
from custom_ca_conformance.model.vocabulary import Stage, blocked_phase
from custom_ca_conformance.reports import rollout_summary

pytestmark = pytest.mark.upgrade


def _record(mesh, part: str) -> dict:
    record = mesh.record.upgrade or {}
    if part not in record:
        pytest.skip(blocked_phase(part))
    return record


@pytest.mark.requires(Stage.WORKLOADS)
def test_before_the_upgrade(pair, mesh):
    """On Istio A, before the upgrade, the pair behaved as the matrix says."""
    record = _record(mesh, "before")
    seen = record["before"][pair.id]
    assert seen["seen"] == seen["expected"], mismatch(
        f"{seen['expected']} on Istio {record['from']} before the upgrade",
        seen["detail"], f"state.json state.upgrade.before.{pair.id} in the evidence directory")


@pytest.mark.requires(Stage.WORKLOADS)
def test_no_request_failed_during_the_rollout(mesh):
    """Requests between same-signer workloads kept working while istiod and every workload were replaced.

    A request cut off because its own client pod was being replaced is listed but not counted:
    any rollout does that to its pods' own connections.
    """
    record = _record(mesh, "rollout")
    figures = record["rollout"]
    assert not figures.get("prober_error"), mismatch(
        "the prober running through the whole rollout", f"it stopped: {figures['prober_error']}",
        "state.json state.upgrade.rollout in the evidence directory")
    assert figures["sent"] > 0, mismatch(
        "requests sent during the rollout", f"none sent, {figures['unsent']} could not be sent",
        "\n    ".join(figures["failures"]) or "the prober never ran")
    assert figures["failed"] == 0, mismatch(
        f"every request answered with HTTP 200 during the upgrade {record['from']} -> {record['to']}",
        rollout_summary(figures),
        "\n    ".join(figures["failures"]))


def test_istiod_and_every_sidecar_run_the_new_istio(mesh, topology):
    """After the upgrade nothing of Istio A is left: istiod's and each workload's proxy image are B's."""
    record = _record(mesh, "rollout")
    tag = record["to_tag"]
    api = mesh.api_client
    images = {}
    for pod in kube.list_pods(api, ISTIO_NAMESPACE, ISTIOD_SELECTOR):
        images[f"Pod {ISTIO_NAMESPACE}/{pod['metadata']['name']}"] = [
            c["image"] for c in pod["spec"]["containers"]]
    for workload in topology.workloads:
        for pod in kube.list_pods(api, workload.namespace, f"app={workload.name}"):
            if pod["metadata"].get("deletionTimestamp"):
                continue  # an old pod on its way out
            containers = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]  # a native sidecar is an init container
            images[f"Pod {workload.namespace}/{pod['metadata']['name']}"] = [
                c["image"] for c in containers if c["name"] == SIDECAR_CONTAINER]
    stale = {where: found for where, found in images.items() if not found or any(
        not image.endswith(f":{tag}") for image in found)}
    assert images and not stale, mismatch(
        f"istiod and every istio-proxy container on image tag {tag} (Istio {record['to']})",
        "; ".join(f"{where}: {found or 'no such container'}" for where, found in stale.items()) or "no pods",
        "kubectl get pods -A -o jsonpath='{..image}'")
