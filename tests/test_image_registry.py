"""Every image under a registry of the user's (a mirror, a pull-through proxy), on the real local node.

The node imports its images under ``--custom-ca-image-registry``'s names only (the built names are
removed), so a pod that still named an image of its own registry could not start: the sandbox,
CoreDNS, cert-manager, istiod, the sidecars and the workloads all run from the registry's names.
The registry is a name that resolves nowhere; nothing is pulled.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from custom_ca_conformance.localplane.toolchain import cache_root

pytestmark = pytest.mark.xdist_group("node")
pytest_plugins = ("pytester",)
CACHE_ROOT = cache_root()  # read before pytester moves HOME

REGISTRY = "mirror.invalid:5000/proxy"

IMAGES_TEST = textwrap.dedent(f'''
    from kubernetes import client


    def test_every_pod_runs_images_under_the_registry(mesh):
        pods = client.CoreV1Api(mesh.api_client).list_pod_for_all_namespaces().items
        images = {{c.image for p in pods for c in p.spec.containers + (p.spec.init_containers or [])}}
        assert {{"coredns", "cert-manager-controller", "pilot", "proxyv2", "curl", "httpbin"}} <= {{
            image.rsplit("/", 1)[-1].split(":")[0] for image in images}}, images
        elsewhere = sorted(image for image in images if not image.startswith("{REGISTRY}/"))
        assert not elsewhere, elsewhere
''')


def test_node_a_run_with_every_image_under_another_registry_passes(local_provider_available, pytester, monkeypatch):
    pytester.makepyfile(test_images=IMAGES_TEST)
    monkeypatch.setenv("CUSTOM_CA_CONFORMANCE_CACHE", str(CACHE_ROOT))
    report_dir = pytester.path / "reports"
    common = ("--custom-ca-cluster", "local", "--custom-ca-image-registry", REGISTRY, "-p", "no:cacheprovider")

    plan = pytester.runpytest_subprocess("--pyargs", "custom_ca_conformance.conformance", "--custom-ca-plan",
                                         *common, timeout=300)
    planned = [line.strip() for line in plan.stdout.lines if line.strip().startswith("image ")]
    assert plan.ret == pytest.ExitCode.OK and planned, plan.stdout.str()[-3000:]
    assert all(line.startswith(f"image {REGISTRY}/") for line in planned), planned

    result = pytester.runpytest_subprocess(
        "--pyargs", "custom_ca_conformance.conformance", str(pytester.path / "test_images.py"),
        "-k", "foo-to-bar or foo-to-foo or chains_to_its_signer or every_pod_runs",
        "--custom-ca-report-dir", str(report_dir), *common, timeout=900)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.OK, output[-3000:]
    passed = {t["nodeid"].rsplit("::", 1)[-1] for t in json.loads((report_dir / "report.json").read_text())["tests"]
              if t["outcome"] == "passed"}
    assert "test_every_pod_runs_images_under_the_registry" in passed, sorted(passed)
    assert {"test_mtls[foo-to-bar]", "test_mtls[foo-to-foo]"} <= passed, sorted(passed)
