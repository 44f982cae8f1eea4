"""Self-tests for custom_ca_conformance.localplane.toolchain: no cluster, no network, no real build."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from custom_ca_conformance.localplane import toolchain
from custom_ca_conformance.localplane.toolchain import PINS, Pins

REPO_ROOT = Path(__file__).resolve().parent.parent

needs_go = pytest.mark.skipif(
    shutil.which("go") is None, reason="go is not on PATH (go.mod parsing uses `go mod edit -json`)"
)


def _served_gomod(module: str, version: str) -> str:
    """Returns a go.mod from the local module download cache, or skips."""
    if shutil.which("go") is None:
        pytest.skip("go is not on PATH, so GOMODCACHE is unknown")
    go_env = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True)
    modcache = go_env.stdout.strip()
    path = Path(modcache) / "cache" / "download" / module / "@v" / f"{version}.mod"
    if not path.is_file():
        pytest.skip(f"{path} is absent; run `go mod download {module}@{version}`")
    return path.read_text()


def _replace_lines(gomod: str) -> list[str]:
    replaces = toolchain.read_gomod(gomod)["Replace"] or []
    return [f"{r['Old']['Path']} => {r['New']['Path']} {r['New'].get('Version', '')}".strip() for r in replaces]


# --- kubernetes wrapper, against the real v1.36.3 go.mod ------------------------------


@pytest.fixture(scope="module")
def kubernetes_wrapper() -> str:
    text = _served_gomod("k8s.io/kubernetes", "v1.36.3")
    return toolchain.kubernetes_wrapper_gomod(text, "v1.36.3")


def test_kubernetes_wrapper_maps_all_33_staging_modules_to_published_twins(kubernetes_wrapper):
    replaces = _replace_lines(kubernetes_wrapper)
    staging = [line for line in replaces if line.startswith("k8s.io/")]

    assert len(staging) == 33
    assert "k8s.io/cri-streaming => k8s.io/cri-streaming v0.36.3" in staging
    assert "k8s.io/streaming => k8s.io/streaming v0.36.3" in staging
    assert all(line.endswith(" v0.36.3") for line in staging)


def test_kubernetes_wrapper_has_no_local_paths(kubernetes_wrapper):
    assert "./staging" not in kubernetes_wrapper
    assert all(r["New"].get("Version") for r in toolchain.read_gomod(kubernetes_wrapper)["Replace"])


def test_kubernetes_wrapper_repeats_go_and_godebug_and_requires_the_release(kubernetes_wrapper):
    parsed = toolchain.read_gomod(kubernetes_wrapper)

    assert parsed["Go"] == "1.26.0"
    godebug = parsed.get("GoDebug") or parsed.get("Godebug")
    assert [(d["Key"], d["Value"]) for d in godebug] == [("default", "go1.26")]
    requires = [(r["Path"], r["Version"]) for r in parsed["Require"]]
    assert requires == [("k8s.io/kubernetes", "v1.36.3")]


def test_kubernetes_wrapper_keeps_every_node_component_in_the_graph(kubernetes_wrapper):
    tools = {tool["Path"] for tool in toolchain.read_gomod(kubernetes_wrapper)["Tool"]}

    commands = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")
    assert tools == {"go.etcd.io/etcd/server/v3", *(f"k8s.io/kubernetes/cmd/{name}" for name in commands)}


# --- replace handling, against synthetic go.mod text --------------------------------------

SYNTHETIC_KUBERNETES_GOMOD = """\
module k8s.io/kubernetes

go 1.27.0

godebug (
	default=go1.27
	x509sha1=1
)

require (
	github.com/example/pinned v1.2.0
	k8s.io/api v0.0.0
)

exclude github.com/example/broken v0.3.0

replace github.com/example/pinned => github.com/example/pinned v1.1.0 // differs from MVS

replace (
	// comment inside the block
	k8s.io/api => ./staging/src/k8s.io/api
	github.com/example/fork v1.0.0 => github.com/other/fork v1.0.1
)
"""


@needs_go
def test_kubernetes_wrapper_copies_third_party_pins_and_excludes():
    wrapper = toolchain.kubernetes_wrapper_gomod(SYNTHETIC_KUBERNETES_GOMOD, "v1.37.0-rc.1")
    parsed = toolchain.read_gomod(wrapper)

    assert sorted(_replace_lines(wrapper)) == [
        "github.com/example/fork => github.com/other/fork v1.0.1",
        "github.com/example/pinned => github.com/example/pinned v1.1.0",
        "k8s.io/api => k8s.io/api v0.37.0-rc.1",
    ]
    assert parsed["Replace"][2]["Old"] == {"Path": "github.com/example/fork", "Version": "v1.0.0"}
    assert parsed["Exclude"] == [{"Path": "github.com/example/broken", "Version": "v0.3.0"}]
    godebug = parsed.get("GoDebug") or parsed.get("Godebug")
    assert [d["Key"] for d in godebug] == ["default", "x509sha1"]
    assert parsed["Go"] == "1.27.0"


@needs_go
def test_kubernetes_wrapper_rejects_a_local_replace_outside_staging():
    gomod = "module k8s.io/kubernetes\n\ngo 1.26.0\n\nreplace k8s.io/api => ../elsewhere/api\n"

    with pytest.raises(toolchain.ToolchainError, match="not a staging module"):
        toolchain.kubernetes_wrapper_gomod(gomod, "v1.36.3")


@needs_go
def test_istio_wrapper_requires_the_pseudo_version_and_lists_three_commands():
    text = _served_gomod("istio.io/istio", PINS.istio_pseudo_version)
    parsed = toolchain.read_gomod(toolchain.istio_wrapper_gomod(text, PINS.istio_pseudo_version))
    requires = [(r["Path"], r["Version"]) for r in parsed["Require"]]
    commands = {tool["Path"].rsplit("/", 1)[1] for tool in parsed["Tool"]}

    assert requires == [("istio.io/istio", PINS.istio_pseudo_version)]
    assert commands == {"pilot-discovery", "pilot-agent", "istioctl"}
    assert not any(r["Path"].startswith("k8s.io/") for r in parsed["Require"])


@needs_go
def test_read_gomod_reports_invalid_text_as_toolchain_error():
    with pytest.raises(toolchain.ToolchainError, match="rejected go.mod"):
        toolchain.read_gomod("module x\n\nrequire (\n")


# --- version stamping -----------------------------------------------------------------------


def test_kubernetes_ldflags_stamp_both_version_packages():
    flags = toolchain.kubernetes_ldflags("v1.36.3", "2026-07-22T18:07:38Z", git_commit="abc123")

    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.36.3" in flags
        assert f"-X {package}.gitMajor=1" in flags
        assert f"-X {package}.gitMinor=36" in flags
        assert f"-X {package}.gitCommit=abc123" in flags
        assert f"-X {package}.gitTreeState=clean" in flags
        assert f"-X {package}.buildDate=2026-07-22T18:07:38Z" in flags


def test_kubernetes_ldflags_leave_git_commit_alone_when_unknown():
    assert not any("gitCommit" in flag for flag in toolchain.kubernetes_ldflags("v1.36.3", "d"))


def test_istio_ldflags_stamp_version_but_not_hub():
    flags = " ".join(toolchain.istio_ldflags(PINS))

    assert "istio.io/istio/pkg/version.buildVersion=1.31-dev-eed52ebb66ad" in flags
    assert "istio.io/istio/pkg/version.buildGitRevision=eed52ebb66ad" in flags
    assert "istio.io/istio/pkg/version.buildStatus=Clean" in flags
    assert "buildHub" not in flags


def test_pins_derive_staging_version_and_istio_revision():
    assert Pins(kubernetes_version="v1.36.3").kubernetes_staging_version == "v0.36.3"
    assert Pins(kubernetes_version="v1.37.0-rc.1").kubernetes_staging_version == "v0.37.0-rc.1"
    assert PINS.istio_revision == "eed52ebb66ad"


# --- cache layout ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bump",
    [
        {"kubernetes_version": "v1.36.4"},
        {"istio_pseudo_version": "v0.0.0-20260901000000-0123456789ab"},
        {"kubernetes_git_commit": "0" * 40},
    ],
)
def test_cache_key_changes_with_every_pin(bump):
    bumped = dataclasses.replace(PINS, **bump)

    assert toolchain.toolchain_key(bumped, "go1.26.8") != toolchain.toolchain_key(PINS, "go1.26.8")


def test_cache_key_changes_with_go_version_and_is_stable():
    assert toolchain.toolchain_key(PINS, "go1.26.9") != toolchain.toolchain_key(PINS, "go1.26.8")
    assert toolchain.toolchain_key(PINS, "go1.26.8") == toolchain.toolchain_key(Pins(), "go1.26.8")


def test_cache_root_honours_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path))
    assert toolchain.cache_root() == tmp_path

    monkeypatch.delenv(toolchain.CACHE_ENV)
    assert toolchain.cache_root() == Path.home() / ".cache" / "custom-ca-conformance"


@pytest.fixture
def fake_cache(monkeypatch, tmp_path) -> Path:
    """Points the cache at tmp_path and pins the Go version; returns the toolchain dir."""
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(toolchain, "go_version", lambda: "go1.26.8")
    root = toolchain.toolchain_dir(PINS)
    assert root.parent == tmp_path / "toolchain"
    (root / "bin").mkdir(parents=True)
    return root


def _install_fake_binaries(root: Path, names) -> None:
    for name in names:
        binary = root / "bin" / name
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
        if name in toolchain.OWN_SOURCES:
            _stamp_source(root, name, toolchain.own_source_hash(name))


def _stamp_source(root: Path, name: str, digest: str) -> None:
    (root / "bin" / f".{name}{toolchain.SOURCE_HASH_SUFFIX}").write_text(digest + "\n")


def test_cached_toolchain_returns_paths_when_complete(fake_cache):
    _install_fake_binaries(fake_cache, toolchain.BINARIES)
    (fake_cache / toolchain.STAMP_NAME).write_text("{}")

    ready = toolchain.cached_toolchain(PINS)

    assert ready is not None
    assert ready.bin_dir == fake_cache / "bin"
    assert ready.kube_apiserver == fake_cache / "bin" / "kube-apiserver"
    assert ready.pilot_discovery.is_file() and ready.istioctl.is_file()
    assert ready.pins == PINS


def test_cached_toolchain_is_none_without_stamp(fake_cache):
    _install_fake_binaries(fake_cache, toolchain.BINARIES)

    assert toolchain.cached_toolchain(PINS) is None


def test_cached_toolchain_is_none_when_a_binary_is_missing(fake_cache):
    _install_fake_binaries(fake_cache, [name for name in toolchain.BINARIES if name != "etcd"])
    (fake_cache / "bin" / ".etcd.partial").write_text("interrupted build")
    (fake_cache / toolchain.STAMP_NAME).write_text("{}")

    assert toolchain.cached_toolchain(PINS) is None


def test_cached_toolchain_is_none_when_our_own_main_changed(fake_cache):
    _install_fake_binaries(fake_cache, toolchain.BINARIES)
    _stamp_source(fake_cache, "pause", "a hash of older sources")
    (fake_cache / toolchain.STAMP_NAME).write_text("{}")

    assert toolchain.cached_toolchain(PINS) is None


def test_own_source_hash_covers_the_go_files():
    assert len(toolchain.own_source_hash("pause")) == 64
    assert (toolchain.own_source_dir("pause") / "main.go").is_file()


def test_module_wrapper_builds_the_cni_plugins_at_their_pin():
    build = next(b for b in toolchain.MODULE_BUILDS if b.name == "cni-plugins")
    gomod = toolchain.module_wrapper_gomod(build, "module github.com/containernetworking/plugins\n\ngo 1.26.8\n", "v1.10.0")
    parsed = toolchain.read_gomod(gomod)

    assert {r["Path"]: r["Version"] for r in parsed["Require"]} == {build.module: "v1.10.0"}
    assert {tool["Path"].rsplit("/", 1)[1] for tool in parsed["Tool"]} == {
        "bridge", "host-local", "loopback", "portmap", "firewall"}


def test_cached_toolchain_is_none_for_other_pins(fake_cache):
    _install_fake_binaries(fake_cache, toolchain.BINARIES)
    (fake_cache / toolchain.STAMP_NAME).write_text("{}")

    assert toolchain.cached_toolchain(dataclasses.replace(PINS, kubernetes_version="v1.36.4")) is None


# --- CLI -----------------------------------------------------------------------------------------


def _run_cli(args: list[str], tmp_path: Path, path_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    env.update(PATH=path_env, CUSTOM_CA_CONFORMANCE_CACHE=str(tmp_path / "cache"))
    return subprocess.run(
        [sys.executable, "-m", "custom_ca_conformance.localplane.toolchain", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_build_without_go_prints_one_line_and_exits_2(tmp_path):
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()

    result = _run_cli(["build"], tmp_path, path_env=str(empty_bin))

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("toolchain: Go is required to build kube-apiserver, etcd,")
    assert lines[0].endswith("; install Go >= 1.26")
    assert not (tmp_path / "cache").exists()


@needs_go
def test_path_before_build_exits_1_with_one_line(tmp_path):
    go_dir = str(Path(shutil.which("go")).parent)

    result = _run_cli(["path"], tmp_path, path_env=go_dir)

    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "not built yet" in result.stderr


# --- other Istio builds (upgrade runs) ----------------------------------------------------------


def test_istio_builds_differ_from_the_pins_only_in_istio():
    older = toolchain.istio_pins("b01690e6db7d")
    assert older.istio_revision == "b01690e6db7d" and older.istio_build_version.endswith("b01690e6db7d")
    assert dataclasses.replace(older, istio_pseudo_version=PINS.istio_pseudo_version,
                               istio_build_version=PINS.istio_build_version,
                               istio_release_label=PINS.istio_release_label) == PINS
    assert toolchain.istio_pins(PINS.istio_revision) == PINS


def test_an_unknown_istio_build_is_one_line_naming_the_known_ones():
    with pytest.raises(toolchain.ToolchainError, match=r"no Istio build 'deadbeef0000' here; the toolchain builds "
                                                       r"b01690e6db7d, eed52ebb66ad"):
        toolchain.istio_pins("deadbeef0000")


def test_another_istio_build_is_cached_apart_from_the_toolchain(fake_cache):
    older = toolchain.istio_pins("b01690e6db7d")
    assert toolchain.cached_istio(older) is None
    layout = toolchain._istio_layout(older, "go1.26.8")
    assert layout.root.parent == fake_cache.parent.parent / "istio"
    for target in toolchain.ISTIO_TARGETS:
        (layout.bin_dir).mkdir(parents=True, exist_ok=True)
        (layout.bin_dir / target.binary).write_text("#!/bin/sh\n")
        (layout.bin_dir / target.binary).chmod(0o755)
    assert toolchain.cached_istio(older) is None  # no stamp: a build that did not finish
    (layout.root / toolchain.STAMP_NAME).write_text("{}")
    assert toolchain.cached_istio(older).istioctl == layout.bin_dir / "istioctl"
    assert toolchain.cached_toolchain(PINS) is None  # the toolchain itself is untouched
