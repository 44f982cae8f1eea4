"""A cluster added by a plugin through ``pytest_custom_ca_cluster``, and the adjust hook, on the real local node.

The plugin is README's example (an adapter named ``second-lab`` that reuses the local node's
adapter); it also implements ``pytest_custom_ca_adjust``, counting its calls per kind and
changing objects, and a test of its own compares the evidence manifests with what the
cluster holds while the mesh is up.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest

from custom_ca_conformance.localplane.toolchain import cache_root

pytestmark = pytest.mark.xdist_group("node")
pytest_plugins = ("pytester",)
CACHE_ROOT = cache_root()  # read before pytester moves HOME

README = Path(__file__).resolve().parents[1] / "README.md"

ADJUSTING_PLUGIN = textwrap.dedent('''
    import json
    import os

    CALLS = os.environ["ADJUST_CALLS_FILE"]


    def pytest_custom_ca_adjust(kind, value, config):
        with open(CALLS, "a") as calls:
            calls.write(kind + "\\n")
        if kind == "namespaces":
            for obj in value:
                obj["metadata"].setdefault("labels", {})["lab.example/adjusted"] = "namespace"
        if kind == "workloads":
            for obj in value:
                if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "httpbin":
                    obj["spec"]["template"]["metadata"].setdefault("annotations", {})["lab.example/adjusted"] = "pod"
            value.append({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "lab-notes", "namespace": "foo"}, "data": {"added": "by a hook"}})
''')

EVIDENCE_TEST = textwrap.dedent('''
    from pathlib import Path

    import yaml
    from kubernetes import client


    def test_the_evidence_manifests_are_what_the_cluster_holds(mesh):
        folder = Path(mesh.record.manifests)
        written = [o for name in ("30-namespaces.yaml", "50-workloads.yaml")
                   for o in yaml.safe_load_all((folder / name).read_text()) if o]
        core, apps = client.CoreV1Api(mesh.api_client), client.AppsV1Api(mesh.api_client)
        namespaces = [o for o in written if o["kind"] == "Namespace"]
        assert namespaces and all(o["metadata"]["labels"]["lab.example/adjusted"] == "namespace" for o in namespaces)
        for obj in namespaces:
            held = core.read_namespace(obj["metadata"]["name"]).metadata.labels
            assert held["lab.example/adjusted"] == "namespace", held
        [notes] = [o for o in written if o["kind"] == "ConfigMap"]
        assert core.read_namespaced_config_map("lab-notes", "foo").data == notes["data"] == {"added": "by a hook"}
        for obj in (o for o in written if o["kind"] == "Deployment" and o["metadata"]["name"] == "httpbin"):
            held = apps.read_namespaced_deployment("httpbin", obj["metadata"]["namespace"])
            wanted = obj["spec"]["template"]["metadata"]["annotations"]["lab.example/adjusted"]
            assert held.spec.template.metadata.annotations["lab.example/adjusted"] == wanted == "pod"
''')


def readme_cluster_example() -> str:
    """The hook example README shows under 'Adding a cluster of your own'."""
    text = README.read_text()
    section = text[text.index("**Adding a cluster of your own.**"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_node_a_cluster_from_a_plugin_runs_the_suite_and_the_adjust_hook_shapes_what_is_applied(
        local_provider_available, pytester, monkeypatch):
    pytester.makepyfile(lab_cluster=readme_cluster_example() + ADJUSTING_PLUGIN, test_evidence=EVIDENCE_TEST)
    calls = pytester.path / "adjust-calls.txt"
    monkeypatch.setenv("ADJUST_CALLS_FILE", str(calls))
    monkeypatch.setenv("PYTHONPATH", f"{pytester.path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("CUSTOM_CA_CONFORMANCE_CACHE", str(CACHE_ROOT))
    report_dir = pytester.path / "reports"
    result = pytester.runpytest_subprocess(
        "-p", "lab_cluster", "--custom-ca-cluster", "second-lab", "--custom-ca-report-dir", str(report_dir),
        "--pyargs", "custom_ca_conformance.conformance", str(pytester.path / "test_evidence.py"),
        "-k", "rbac or foo-to-bar or evidence_manifests", "-p", "no:cacheprovider", timeout=900)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.OK, output[-3000:]
    report = json.loads((report_dir / "report.json").read_text())
    assert report["provider"].startswith("local (single node"), report["provider"]
    passed = {t["nodeid"].rsplit("::", 1)[-1] for t in report["tests"] if t["outcome"] == "passed"}
    assert "test_the_evidence_manifests_are_what_the_cluster_holds" in passed, sorted(passed)
    assert any(name.startswith("test_mtls[foo-to-bar]") for name in passed), sorted(passed)
    kinds = calls.read_text().split()
    assert sorted(kinds) == sorted(set(kinds)) == sorted(
        ["cert-manager", "signers", "istio-operator", "namespaces", "proxy-configs", "workloads"]), kinds
