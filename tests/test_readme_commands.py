"""Commands README shows, run as shown on the real local node, so a documented path cannot break unseen.

They need root and the built toolchain and images (``python -m custom_ca_conformance.localplane.machine_setup``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from custom_ca_conformance.cluster.contract import ProviderSettings
from custom_ca_conformance.cluster.local import LocalCluster
from custom_ca_conformance.model.run_record import RunRecord
from custom_ca_conformance.model.topology import default_topology
from custom_ca_conformance.plugin.session import STATE_ENV

# One node per machine: keep these with the node self-tests on one xdist worker.
pytestmark = pytest.mark.xdist_group("node")

REPO = Path(__file__).resolve().parents[1]
VENDOR_EXAMPLE = ("pytest conformance -m signer --custom-ca-cluster local "
                  "--custom-ca-signer-profile examples/reference-signer-profile.yaml")


def readme_command(command: str) -> list[str]:
    """The command's arguments after ``pytest``, if README shows it on a line of its own."""
    lines = [line.strip() for line in (REPO / "README.md").read_text().splitlines()]
    assert command in lines, f"README no longer shows `{command}`: update this self-test with it"
    return shlex.split(command)[1:]



def test_a_signer_only_run_records_its_figures_without_a_csr_watch(tmp_path):
    """-m signer starts no workloads and so no CSR watch: its figures are the provisioning time alone."""
    local = LocalCluster(ProviderSettings(topology=default_topology(), workdir=tmp_path, signer_only=True))
    run = RunRecord(kubeconfig="kc", context=None, workdir=str(tmp_path), run_id="r")
    local.provisioned(run, attach=lambda run: pytest.fail("-m signer has no CSR watch to read"))
    assert set(run.timings) == {"provision_seconds"}, run


def test_the_vendor_example_with_the_reference_signer_passes_on_the_local_node(local_provider_available, tmp_path):
    """For CA vendors: the reference signer's profile, -m signer, on the local node (no Istio, no CSR watch)."""
    report_dir = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if k != STATE_ENV and not k.startswith("PYTEST_XDIST")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *readme_command(VENDOR_EXAMPLE), "-p", "no:cacheprovider",
         "--custom-ca-report-dir", str(report_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr

    assert result.returncode == pytest.ExitCode.OK, output[-4000:]
    assert "INTERNALERROR" not in output and "internal error" not in output, output[-4000:]
    outcomes = {r["nodeid"]: r["outcome"] for r in json.loads((report_dir / "report.json").read_text())["tests"]}
    assert outcomes and all("test_signer_contract.py" in n for n in outcomes), outcomes
    assert "passed" in outcomes.values() and "blocked" not in outcomes.values(), outcomes
