"""The plugin loads into every pytest run of its environment: it must start beside its neighbours.

Each neighbour is installed from PyPI into a fresh venv that sees this environment's packages
(the plugin among them), and pytest is started there with ``--help`` and ``--collect-only`` of
the conformance tests. pytest-kind and pytest-helm-charts both define ``--kubeconfig``, so each
gets a venv of its own.
"""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

NEIGHBOURS = ("pytest-kind==22.11.1", "pytest-kind-ng==26.7.0", "pytest-kubernetes==0.9.0",
              "pytest-helm-charts==1.3.5")


@pytest.fixture(params=NEIGHBOURS)
def python_beside(request, tmp_path) -> Path:
    """The python of a fresh venv holding the neighbour and seeing the plugin's environment."""
    root = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(root)
    python = root / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", request.param],
                   check=True, timeout=300)
    return python


def pytest_in(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_pytest_starts_beside_the_neighbour(python_beside, tmp_path):
    helped = pytest_in(python_beside, tmp_path, "--help")
    assert helped.returncode == 0, helped.stdout + helped.stderr
    assert "--custom-ca-cluster" in helped.stdout
    collected = pytest_in(python_beside, tmp_path, "--pyargs", "custom_ca_conformance.conformance",
                          "--collect-only", "-q")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert "test_mtls[foo-to-bar]" in collected.stdout


def test_no_option_outside_the_plugins_prefix():
    """Every option the plugin adds starts with --custom-ca-: no name another plugin could hold."""
    from custom_ca_conformance import plugin

    class Group:
        def __init__(self):
            self.names: list[str] = []

        def addoption(self, *names, **_):
            self.names += names

    class Parser:
        def __init__(self):
            self.group = Group()

        def getgroup(self, *_):
            return self.group

        def addini(self, *_, **__):
            pass

    parser = Parser()
    plugin.pytest_addoption(parser)
    assert parser.group.names
    assert [n for n in parser.group.names if not n.startswith("--custom-ca-")] == []
