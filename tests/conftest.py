"""Fixtures for self-tests that need the real kube-apiserver and etcd of the pinned toolchain."""

from __future__ import annotations

import fcntl
import os

import pytest

from custom_ca_conformance.localplane import toolchain


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
        pytest.skip("kube-apiserver/etcd are not built: run `python -m custom_ca_conformance.localplane.toolchain build`")
    return binaries


@pytest.fixture(scope="session")
def control_plane(control_plane_toolchain, tmp_path_factory):
    """One etcd + kube-apiserver shared by every self-test of a pytest process."""
    from custom_ca_conformance.localplane.controlplane import start_control_plane

    plane = start_control_plane(control_plane_toolchain, tmp_path_factory.mktemp("controlplane"),
                                progress=lambda line: None)
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def local_provider_available() -> None:
    """The local provider can run here: in CI its tests must run, elsewhere they may skip."""
    from custom_ca_conformance.cluster import builtin_provider
    from custom_ca_conformance.cluster.contract import ProviderSettings
    from custom_ca_conformance.model.errors import ProviderUnavailable
    from custom_ca_conformance.model.topology import default_topology

    try:
        builtin_provider("local", ProviderSettings(topology=default_topology())).check_requirements()
    except ProviderUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the local provider must run in CI: {exc}", pytrace=False)
        pytest.skip(f"the local provider cannot run here: {exc}")


NODE_GROUP = "node"


def is_node_module(module) -> bool:
    marks = getattr(module, "pytestmark", [])
    marks = marks if isinstance(marks, list) else [marks]
    return any(m.name == "xdist_group" and m.args[:1] == (NODE_GROUP,) for m in marks)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The node modules first, as one xdist group: under ``--dist loadgroup`` one worker takes every
    node test from the start while the other runs the tests that need no node (the same order on
    every worker, which xdist requires).

    pytest-xdist 3.8 names a test's group by appending ``@group`` to ``item._nodeid``, an attribute
    pytest 9 no longer reads (its node id lives in ``item._id``), so every node test was a group of
    its own and both workers waited on the node in turn; the suffix is set here where pytest reads it.
    """
    items.sort(key=lambda item: not is_node_module(getattr(item, "module", None)))
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers under --dist loadgroup
        return
    from _pytest.nodeid import NodeId

    suffix = f"@{NODE_GROUP}"
    for item in items:
        if is_node_module(getattr(item, "module", None)) and not item.nodeid.endswith(suffix):
            item._id = NodeId.parse(item.nodeid + suffix)


@pytest.fixture(scope="module", autouse=True)
def one_node_module_at_a_time(request):
    """The modules that start this machine's one local node (marked ``xdist_group("node")``) take turns.

    xdist keeps them on one worker (``pytest_collection_modifyitems``); without xdist's grouping (another
    ``--dist`` mode) two workers would start nodes at once, and a run refuses a node a live process owns
    instead of queueing for it. So each such module holds a file lock from its first fixture to its
    last teardown, module-scoped nodes included.
    """
    if not is_node_module(request.module):
        yield
        return
    root = toolchain.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "selftests-node.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
