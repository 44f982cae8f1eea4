"""Fixtures for self-tests that need the real kube-apiserver and etcd of the pinned toolchain."""

from __future__ import annotations

import pytest

from custom_ca_conformance import toolchain


def control_plane_binaries():
    """The toolchain's paths if kube-apiserver and etcd are built (the Istio binaries may not be yet)."""
    try:
        built = toolchain.cached_toolchain()
        if built is not None:
            return built
        partial = toolchain.Toolchain.in_dir(toolchain.toolchain_dir() / "bin", toolchain.PINS)
    except toolchain.ToolchainError:
        return None
    if partial.kube_apiserver.is_file() and partial.etcd.is_file():
        return partial
    return None


@pytest.fixture(scope="session")
def control_plane_toolchain():
    binaries = control_plane_binaries()
    if binaries is None:
        pytest.skip("kube-apiserver/etcd are not built: run `python -m custom_ca_conformance.toolchain build`")
    return binaries


@pytest.fixture(scope="session")
def control_plane(control_plane_toolchain, tmp_path_factory):
    """One etcd + kube-apiserver shared by every self-test of a pytest process."""
    from custom_ca_conformance.localplane.controlplane import start_control_plane

    plane = start_control_plane(control_plane_toolchain, tmp_path_factory.mktemp("controlplane"),
                                progress=lambda line: None)
    yield plane
    plane.stop()
