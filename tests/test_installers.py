"""Command construction, pinned versions, checksum parsing and tool discovery, all offline."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import textwrap

import pytest

from custom_ca_conformance.tools import commands, downloads
from custom_ca_conformance.model.errors import ProviderUnavailable, ProvisioningError

DIGEST = "3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"


# --- argv builders ---------------------------------------------------------------------------


def test_cert_manager_is_installed_from_the_oci_chart_with_crds_and_the_csr_gate():
    argv = commands.helm_install_cert_manager_argv("v1.21.1", helm="/bin/helm")
    assert argv[:5] == [
        "/bin/helm", "upgrade", "--install", "cert-manager", "oci://quay.io/jetstack/charts/cert-manager"]
    assert _flag(argv, "--version") == "v1.21.1"
    assert _flag(argv, "--namespace") == "cert-manager" and "--create-namespace" in argv
    assert _values(argv) == ["crds.enabled=true", "crds.keep=false",
                             "featureGates=ExperimentalCertificateSigningRequestControllers=true"]
    assert "--wait" in argv and _flag(argv, "--timeout") == "5m"
    assert "--kubeconfig" not in argv and "--kube-context" not in argv


def test_a_mirrored_or_local_chart_pulls_its_images_from_the_given_registry():
    argv = commands.helm_install_cert_manager_argv("v1.21.1", chart="/charts/cert-manager-v1.21.1.tgz",
                                                   image_registry="mirror.example:5000")
    assert argv[4] == "/charts/cert-manager-v1.21.1.tgz" and "--version" not in argv  # a .tgz is its version
    assert "imageRegistry=mirror.example:5000" in _values(argv)
    mirrored = commands.helm_install_cert_manager_argv("v1.21.1", chart="oci://mirror.example:5000/charts/cert-manager")
    assert mirrored[4] == "oci://mirror.example:5000/charts/cert-manager" and _flag(mirrored, "--version") == "v1.21.1"


def test_helm_targets_the_given_kubeconfig_and_context():
    argv = commands.helm_install_cert_manager_argv("v1.21.1", kubeconfig="/k", context="kind-x")
    assert _flag(argv, "--kubeconfig") == "/k" and _flag(argv, "--kube-context") == "kind-x"
    uninstall = commands.helm_uninstall_argv("cert-manager", "cert-manager", kubeconfig="/k", context="kind-x")
    assert uninstall[:3] == ["helm", "uninstall", "cert-manager"] and _flag(uninstall, "--kube-context") == "kind-x"


def test_istioctl_install_skips_confirmation_and_reads_the_operator_file(tmp_path):
    argv = commands.istioctl_install_argv("/bin/istioctl", tmp_path / "iop.yaml", kubeconfig="/k", context="c")
    assert argv == ["/bin/istioctl", "install", "--skip-confirmation", "-f", str(tmp_path / "iop.yaml"),
                    "--kubeconfig", "/k", "--context", "c"]


def test_istio_is_removed_by_its_own_manifest_never_by_purge():
    assert commands.istioctl_manifest_generate_argv("istioctl", "/w/iop.yaml") == [
        "istioctl", "manifest", "generate", "-f", "/w/iop.yaml"]
    assert not hasattr(commands, "istioctl_uninstall_argv")


def test_proxy_config_secret_names_pod_dot_namespace_as_json():
    assert commands.istioctl_proxy_secret_argv("istioctl", "curl-1", "foo") == [
        "istioctl", "proxy-config", "secret", "curl-1.foo", "-o", "json"]


def test_kind_create_pins_the_image_and_waits_with_a_unit(tmp_path):
    image = downloads.kind_node_image(None)
    argv = commands.kind_create_argv("ccc", image, kubeconfig=tmp_path / "kc")
    assert argv == ["kind", "create", "cluster", "--name", "ccc", "--image", image, "--wait", "120s",
                    "--kubeconfig", str(tmp_path / "kc")]
    assert argv[argv.index("--wait") + 1].endswith("s")


def test_kind_create_passes_a_config_file(tmp_path):
    argv = commands.kind_create_argv("ccc", "img", wait="3m", config=tmp_path / "kind.yaml", kind="/bin/kind")
    assert argv[0] == "/bin/kind" and _flag(argv, "--config") == str(tmp_path / "kind.yaml")
    assert _flag(argv, "--wait") == "3m"


def test_kind_delete_get_and_export():
    assert commands.kind_delete_argv("ccc") == ["kind", "delete", "cluster", "--name", "ccc"]
    assert commands.kind_get_clusters_argv() == ["kind", "get", "clusters"]
    assert commands.kind_export_kubeconfig_argv("ccc", "/k") == [
        "kind", "export", "kubeconfig", "--name", "ccc", "--kubeconfig", "/k"]
    assert commands.kind_context("ccc") == "kind-ccc"


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _values(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]


# --- pins ------------------------------------------------------------------------------------


def test_default_node_image_is_kind_v0_32_0s_digest_pinned_v1_36_1():
    assert downloads.KIND_VERSION == "v0.32.0"
    assert downloads.kind_node_image(None) == f"kindest/node:v1.36.1@sha256:{DIGEST}"


@pytest.mark.parametrize("version", ["v1.35.5", "1.35.5"])
def test_selectable_node_images_are_digest_pinned(version):
    assert downloads.kind_node_image(version) == (
        "kindest/node:v1.35.5@sha256:ce977ae6d65918d0b58a5f8b5e940429c2ce42fa3a5619ec2bbc60b949c0ac95")


def test_every_pinned_node_image_carries_a_sha256_digest():
    for version, image in downloads.KIND_NODE_IMAGES.items():
        name, _, digest = image.partition("@sha256:")
        assert name == f"kindest/node:{version}" and len(digest) == 64


def test_an_unpinned_kubernetes_version_is_refused_with_the_choices():
    with pytest.raises(ProviderUnavailable, match=r"v1\.99\.0.*v1\.36\.1"):
        downloads.kind_node_image("v1.99.0")


def test_versions_pinned_as_the_facts_say():
    assert (downloads.ISTIO_VERSION, downloads.CERT_MANAGER_VERSION) == ("1.30.3", "v1.21.2")


def test_one_cert_manager_version_for_the_chart_and_the_local_controllers():
    from importlib import resources

    gomod = resources.files("custom_ca_conformance.localplane").joinpath("gosrc/cert-manager-controller/go.mod").read_text()
    assert f"github.com/cert-manager/cert-manager {downloads.CERT_MANAGER_VERSION}\n" in gomod
    assert downloads.CERT_MANAGER_CHART == "oci://quay.io/jetstack/charts/cert-manager"


# --- checksums and versions -------------------------------------------------------------------

HEX = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize("text", [
    f"{HEX}\n",  # bare digest (kubectl .sha256, helm .sha256)
    f"{HEX} istioctl-1.30.3-linux-amd64.tar.gz\n",  # Istio release .sha256
    f"{HEX}  kind-linux-amd64\n",  # shasum format (kind .sha256sum, helm .sha256sum)
    f"{HEX.upper()}  FILE",
])
def test_checksum_is_the_first_token_of_every_layout(text):
    assert downloads.parse_checksum(text) == HEX


@pytest.mark.parametrize("text", ["", "not-a-digest file", HEX[:-1]])
def test_a_malformed_checksum_is_refused(text):
    with pytest.raises(ValueError, match="not a SHA-256"):
        downloads.parse_checksum(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("client version: 1.30.3", (1, 30, 3)),
    ("1.30.3", (1, 30, 3)),
    ("v3.21.4", (3, 21, 4)),
    ("no version", None),
])
def test_parse_version(text, expected):
    assert downloads.parse_version(text) == expected


@pytest.mark.parametrize(("system", "machine", "expected"), [
    ("Linux", "x86_64", "linux-amd64"), ("Linux", "aarch64", "linux-arm64"),
    ("Darwin", "x86_64", "osx"), ("Darwin", "arm64", "osx-arm64"),
])
def test_istio_platform_names(system, machine, expected):
    assert downloads.istio_platform(system, machine) == expected


def test_istioctl_archive_url():
    assert downloads.istioctl_archive_url("1.30.3", "linux-amd64") == (
        "https://github.com/istio/istio/releases/download/1.30.3/istioctl-1.30.3-linux-amd64.tar.gz")


# --- tool discovery ----------------------------------------------------------------------------


def test_a_missing_tool_is_one_line_naming_it_and_how_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ProviderUnavailable) as raised:
        downloads.require_tool("kind")
    message = str(raised.value)
    assert message.startswith("kind is required for --custom-ca-cluster kind but was not found on PATH; install kind v0.32.0")
    assert "\n" not in message


def _fake_tool(directory, name: str, script: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(script))
    path.chmod(0o755)
    return str(path)


def test_docker_without_a_daemon_is_reported(tmp_path):
    docker = _fake_tool(tmp_path, "docker", "echo 'Cannot connect to the Docker daemon' >&2; exit 1\n")
    with pytest.raises(ProviderUnavailable, match="docker info` failed \\(Cannot connect to the Docker daemon\\)"):
        downloads.require_docker_daemon(docker)


def test_helm_older_than_3_8_is_refused(tmp_path):
    with pytest.raises(ProviderUnavailable, match="v3.7.0"):
        downloads.require_helm(_fake_tool(tmp_path, "helm", "echo v3.7.0\n"))
    downloads.require_helm(_fake_tool(tmp_path, "helm2", "echo v3.21.4\n"))


def test_istioctl_explicit_path_must_be_executable(tmp_path):
    with pytest.raises(ProviderUnavailable, match="not an executable file"):
        downloads.istioctl_for("1.30.3", str(tmp_path / "missing"))


def test_istioctl_on_path_is_used_when_its_version_matches(tmp_path, monkeypatch):
    istioctl = _fake_tool(tmp_path, "istioctl", "echo 'client version: 1.30.3'\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert downloads.istioctl_for("1.30.3") == istioctl


def test_istioctl_is_downloaded_verified_and_cached_when_path_has_another_version(tmp_path, monkeypatch):
    _fake_tool(tmp_path, "istioctl", "echo 'client version: 1.29.0'\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUSTOM_CA_CONFORMANCE_CACHE", str(tmp_path / "cache"))
    archive = _tarball("istioctl", b"#!/bin/sh\necho 'client version: 1.30.3'\n")
    served = {}

    def fake_get(url):
        served[url] = True
        return (hashlib.sha256(archive).hexdigest() + "  istioctl.tar.gz\n").encode() if url.endswith(".sha256") \
            else archive

    monkeypatch.setattr(downloads, "_get", fake_get)
    path = downloads.istioctl_for("1.30.3")
    assert path == str(tmp_path / "cache" / "istioctl" / "1.30.3" / "istioctl")
    assert downloads.istioctl_version(path) == (1, 30, 3)
    assert any(url.endswith(f"istioctl-1.30.3-{downloads.istio_platform()}.tar.gz") for url in served)
    served.clear()
    assert downloads.istioctl_for("1.30.3") == path and not served  # cached


def test_a_download_with_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSTOM_CA_CONFORMANCE_CACHE", str(tmp_path / "cache"))
    archive = _tarball("istioctl", b"binary")
    monkeypatch.setattr(downloads, "_get", lambda url: (HEX + "\n").encode() if url.endswith(".sha256") else archive)
    with pytest.raises(ProviderUnavailable, match="does not match the published"):
        downloads.download_istioctl("1.30.3", tmp_path / "istioctl")
    assert not (tmp_path / "istioctl").exists()


def _tarball(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


# --- runner -------------------------------------------------------------------------------------


def test_run_returns_stdout_and_logs_the_command(tmp_path):
    log = tmp_path / "commands.log"
    assert commands.run([sys.executable, "-c", "print(42)"], what="saying 42", timeout=30, log_file=log) == "42\n"
    assert "print(42)" in log.read_text() and "exit code 0" in log.read_text()


def test_run_failure_names_command_exit_code_and_stderr_tail(tmp_path):
    script = "import sys; [print(f'line {i}', file=sys.stderr) for i in range(40)]; sys.exit(3)"
    with pytest.raises(ProvisioningError) as raised:
        commands.run([sys.executable, "-c", script], what="installing x", timeout=30, log_file=tmp_path / "log")
    message = str(raised.value)
    assert message.startswith("installing x: `")
    assert "exited 3 (expected 0)" in message and str(tmp_path / "log") in message
    assert "line 39" in message and "line 10" not in message


def test_run_timeout_and_missing_binary_are_provisioning_errors():
    with pytest.raises(ProvisioningError, match="did not finish within 0.5s"):
        commands.run([sys.executable, "-c", "import time; time.sleep(5)"], what="sleeping", timeout=0.5)
    with pytest.raises(ProvisioningError, match="not found"):
        commands.run(["/nonexistent/tool"], what="running", timeout=5)


def test_a_watch_that_sees_a_pointless_wait_stops_the_command_at_once(tmp_path):
    import time

    def watch():
        raise ProvisioningError("istiod crashed")

    started = time.monotonic()
    with pytest.raises(ProvisioningError, match="istiod crashed"):
        commands.run([sys.executable, "-c", "import time; time.sleep(60)"], what="waiting", timeout=120,
                       log_file=tmp_path / "log", watch=watch)
    assert time.monotonic() - started < commands.WATCH_INTERVAL_SECONDS + 5
    assert "stopped: waiting was pointless" in (tmp_path / "log").read_text()


# --- what kind and existing install from, named by the user ----------------------------------------


def test_the_users_registry_hub_tag_and_workload_images_are_what_the_install_renders():
    from custom_ca_conformance.cluster.contract import ProviderSettings
    from custom_ca_conformance.cluster.releases import ReleaseSources
    from custom_ca_conformance.model.topology import default_topology

    settings = ProviderSettings(topology=default_topology(), image_registry="mirror.example:5000",
                                istio_hub="harbor.example.com/istio", istio_tag="1.30.3-distroless",
                                workload_images={"curl": "harbor.example.com/tools/curl:8"},
                                cert_manager_chart="./cert-manager-v1.21.2.tgz")
    sources = ReleaseSources(settings, "existing")
    platform = sources.platform()
    assert platform.istio_hub == "harbor.example.com/istio" and platform.istio_tag == "1.30.3-distroless"
    assert platform.workload_images == {"httpbin": "mirror.example:5000/mccutchen/go-httpbin:v2.15.0",
                                        "curl": "harbor.example.com/tools/curl:8"}
    assert sources._source_platform().istio_tag is None  # an upgrade's first Istio keeps its own tag
    cert_manager = sources.cert_manager()
    assert (cert_manager.chart, cert_manager.image_registry) == ("./cert-manager-v1.21.2.tgz", "mirror.example:5000")
