"""The library's folders are its layers: each imports only folders below it, and a few folder rules.

Read from the source with ``ast`` (nothing is imported), so a new upward import fails here
with the module, the line and both folders named.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "custom_ca_conformance"
LIBRARY = Path(__file__).resolve().parents[1] / "fixtures"

# Bottom to top: a module may import its own folder and the folders listed before it.
FOLDERS = (
    ("model", "what the suite knows: topology, names of external objects, records, PKI, outcomes"),
    ("render", "the objects a topology needs, from manifests/"),
    ("reports", "the run's results in every format"),
    ("process", "this Python process: cancel signals, its environment"),
    ("kube", "talking to a Kubernetes API"),
    ("localplane", "the local node and its build"),
    ("tools", "the command-line tools the suite downloads and runs"),
    ("signer", "the reference CSR signer"),
    ("probes", "what the tests ask a mesh or a signer"),
    ("evidence", "what the cluster says, and the causes named from it"),
    ("install", "the one install-and-verify sequence"),
    ("cluster", "providers: how a cluster is obtained and released"),
    ("plugin", "the pytest front door"),
)
RANKS = {name: rank for rank, (name, _) in enumerate(FOLDERS)}
# Pure logic: no cluster, process or network I/O.
PURE = ("model", "render", "reports", "evidence.diagnoses")
IO_MODULES = ("kubernetes", "subprocess", "socket", "urllib", "http", "tenacity")


def module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def folder_of(module: str) -> str:
    return module.split(".")[0]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the package in ``path``, as names relative to the package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            base = node.module[len(PACKAGE):].lstrip(".")
            found += [(node.lineno, base)] if base else [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name[len(PACKAGE) + 1:]) for alias in node.names
                      if alias.name.startswith(PACKAGE + ".")]
    return found


SOURCES = sorted(LIBRARY.rglob("*.py"))
IDS = [module_name(p) or "(package)" for p in SOURCES]


def third_party_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] != PACKAGE]


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_module_imports_no_folder_above_its_own(path):
    module = module_name(path)
    if not module:
        return  # the package's own __init__
    own = folder_of(module)
    assert own in RANKS, f"{module} is in no known folder: add {own!r} to FOLDERS in {__file__} (or move it)"
    upward = [f"line {line}: {dep} (folder {folder_of(dep)})"
              for line, dep in imports_of(path) if RANKS.get(folder_of(dep), -1) > RANKS[own]]
    assert not upward, f"{module} (folder {own}) imports a folder above it:\n  " + "\n  ".join(upward)


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_only_the_plugin_imports_pytest(path):
    module = module_name(path)
    if folder_of(module or "plugin") == "plugin":
        return
    seen = [f"line {line}: {name}" for line, name in third_party_imports(path)
            if name.split(".")[0] in ("pytest", "_pytest")]
    assert not seen, f"{module} imports pytest; only the plugin folder may:\n  " + "\n  ".join(seen)


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_no_module_imports_pytest_internals(path):
    seen = [f"line {line}: {name}" for line, name in third_party_imports(path) if name.split(".")[0] == "_pytest"]
    assert not seen, f"{module_name(path)} imports pytest's private modules:\n  " + "\n  ".join(seen)


@pytest.mark.parametrize("path", [p for p in SOURCES if module_name(p).startswith(PURE)],
                         ids=[i for i in IDS if i.startswith(PURE)])
def test_pure_logic_does_no_io(path):
    seen = [f"line {line}: {name}" for line, name in third_party_imports(path) if name.split(".")[0] in IO_MODULES]
    assert not seen, f"{module_name(path)} is pure logic but imports I/O:\n  " + "\n  ".join(seen)


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_no_module_is_over_500_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 500, f"{module_name(path)} has {lines} lines: split it by what its parts hold"


def test_the_checks_see_an_upward_import_and_an_io_import(tmp_path):
    source = tmp_path / "render.py"
    source.write_text("import subprocess\nfrom custom_ca_conformance.cluster.contract import Provider\n")
    assert [RANKS[folder_of(dep)] > RANKS["render"] for _, dep in imports_of(source)] == [True]
    assert [name for _, name in third_party_imports(source) if name in IO_MODULES] == ["subprocess"]


def test_installing_the_project_adds_no_top_level_fixtures_package(tmp_path):
    # Run elsewhere: `python -m pytest` puts the checkout itself on sys.path, which no user has.
    probe = "import importlib.util as u; s = u.find_spec('fixtures'); print(s.origin if s else 'absent')"
    seen = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, check=True).stdout.strip()
    assert seen == "absent" or LIBRARY not in Path(seen).parents, (
        f"`import fixtures` resolves to this project's {seen}: it would shadow PyPI's fixtures package")


# Names of objects the suite does not own, and its own fixed names: each written in one module only.
STATED_ONCE = {
    "istiod": "model/names.py", "discovery": "model/names.py", "istio-proxy": "model/names.py",
    "istio-system": "model/names.py", "istiod-clusterrole-istio-system": "model/names.py",
    "istio": "model/names.py", "istio-sidecar-injector": "model/names.py", "istio-injection": "model/names.py",
    "istio.io/rev": "model/names.py", "sidecar.istio.io/inject": "model/names.py",
    "sidecar.istio.io/status": "model/names.py", "ISTIO_META_CERT_SIGNER": "model/names.py",
    "proxyconfigs.networking.istio.io": "model/names.py", "istio.io/config=true": "model/names.py",
    "cert-manager-webhook": "model/names.py", "cert-manager.io/v1": "model/names.py",
    "clusterissuers.cert-manager.io": "model/names.py",
    "ExperimentalCertificateSigningRequestControllers": "model/names.py",
    "app.kubernetes.io/managed-by": "model/ownership.py", "custom-ca-conformance/run": "model/ownership.py",
    "custom-ca::setup": "model/vocabulary.py", "ACK ERROR": "evidence/diagnoses/quoting.py",
    "v1.21.2": "localplane/gobuild/pins.py", "1.30.3": "tools/downloads.py",
}
# The same words meaning something else, and why.
ALSO_MEANING = {
    ("istio-proxy", "localplane/images/recipes.py"): "the proxy image's Unix user, named so by Istio's Dockerfile",
    ("istio-system", "model/topology.py"): "the Istio task's name for the default signer",
    ("istio", "cluster/local.py"): "the versions entry of the Istio under test",
    ("istio", "cluster/provider.py"): "the versions entry of the Istio under test",
    ("istio", "cluster/releases.py"): "the versions entry of the Istio under test",
    ("istio", "localplane/gobuild/pins.py"): "the Istio source tree's module directory",
    ("istio", "localplane/toolchain.py"): "the cache folder of Istio builds",
}


def test_each_fixed_name_is_written_in_one_module():
    found: dict[str, set[str]] = {value: set() for value in STATED_ONCE}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in found:
                found[node.value].add(str(path.relative_to(LIBRARY)))
    wrong = {value: sorted(where) for value, where in found.items()
             if {m for m in where if (value, m) not in ALSO_MEANING} != {STATED_ONCE[value]}}
    assert not wrong, ("written outside the one module that names it (import the constant instead): "
                       + "; ".join(f"{value!r} in {where}" for value, where in wrong.items()))
