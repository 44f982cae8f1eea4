"""--custom-ca-keep-cluster on the real local node: the next run reuses the install while nothing changed.

They need root and the built toolchain and images (``python -m custom_ca_conformance.localplane.machine_setup``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from kubernetes import client, config
from local_runs import REFERENCE_SIGNER_RUN

from custom_ca_conformance.localplane import node
from custom_ca_conformance.localplane.toolchain import CACHE_ENV, cache_root
from custom_ca_conformance.model.ownership import OWNED_SELECTOR
from custom_ca_conformance.plugin.session import STATE_ENV

# One node per machine: keep these with the node self-tests on one xdist worker.
pytestmark = pytest.mark.xdist_group("node")

CACHE_ROOT = cache_root()
CLUSTER = "custom-ca-kept-selftest"


# Notes each kind the adjust hook is called for, one line each, in the run's directory.
ADJUST_COUNTER = textwrap.dedent('''
    def pytest_custom_ca_adjust(kind, value, config):
        with open("adjusted-kinds.txt", "a") as out:
            out.write(kind + "\\n")
''')


def kept_run(directory, *args: str, keyword: str = "foo-to-bar") -> str:
    directory.mkdir(parents=True)
    (directory / "adjust_counter.py").write_text(ADJUST_COUNTER)
    env = {k: v for k, v in os.environ.items() if k != STATE_ENV and not k.startswith("PYTEST_XDIST")}
    env[CACHE_ENV] = str(CACHE_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "custom_ca_conformance.conformance", "--custom-ca-cluster",
         "local", "--custom-ca-keep-cluster", "--custom-ca-cluster-name", CLUSTER,
         *(["-k", keyword] if keyword else []), "--custom-ca-workdir", str(directory / "work"), "-p", "no:cacheprovider", "-p", "adjust_counter", *args],
        cwd=directory, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.OK, output[-4000:]
    return output


@pytest.fixture
def stopped_at_the_end():
    yield
    stop = subprocess.run([sys.executable, "-m", "custom_ca_conformance.localplane.node", "stop"],
                          capture_output=True, text=True, timeout=300)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert node.machine_owner() is None


def test_node_a_kept_install_is_reused_until_something_it_rests_on_changes(local_provider_available, tmp_path,
                                                                             stopped_at_the_end):
    first = kept_run(tmp_path / "first")
    assert "reusing the install" not in first and "not reusing" not in first, first[-3000:]

    second = kept_run(tmp_path / "second")
    assert "reusing the install kept by run " in second and "nothing it rests on changed" in second, second[-3000:]
    assert "installing Istio" not in second, second[-3000:]

    state = json.loads((tmp_path / "second" / "work" / "state.json").read_text())["state"]
    with config.new_client_from_config(config_file=state["kubeconfig"]) as api:
        core = client.CoreV1Api(api)
        pod = core.list_namespaced_pod("bar", label_selector="app=curl").items[0].metadata.name
        core.delete_namespaced_pod(pod, "bar")

    # The whole suite this time: the signer contract's CSRs start while Istio installs again.
    third = kept_run(tmp_path / "third", keyword="")
    reason = next((line for line in third.splitlines() if "not reusing the install kept by run" in line), "")
    assert "bar/curl" in reason and "installing again" in reason, third[-3000:]
    assert "installing Istio" in third, third[-3000:]
    adjusted = (tmp_path / "third" / "adjusted-kinds.txt").read_text().split()
    assert sorted(adjusted) == sorted(set(adjusted)), (
        f"expected the adjust hook called once per kind when the kept install is not reused, seen {adjusted}")
    assert list((tmp_path / "third" / "work" / "contract").glob("*.json")), "expected the run's contract record"
    with config.new_client_from_config(config_file=state["kubeconfig"]) as api:
        left = client.CertificatesV1Api(api).list_certificate_signing_request(label_selector=OWNED_SELECTOR).items
    assert not left, f"expected none of the run's CSRs left on the kept cluster, seen {[c.metadata.name for c in left]}"

    # Images named under another registry: the kept node's are not, so it is not reused. The vendors' run (the
    # reference signer's contract, no mesh) is the quickest that starts a node.
    fourth = kept_run(tmp_path / "fourth", "--custom-ca-image-registry", "mirror.invalid:5000", *REFERENCE_SIGNER_RUN,
                      keyword="")
    assert ("its images are named under their own registries, this run's under mirror.invalid:5000"
            in fourth), fourth[-3000:]
    assert "reusing the kept node" not in fourth, fourth[-3000:]
