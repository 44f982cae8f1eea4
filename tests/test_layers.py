"""The library's import layers: no module imports one above it, and every module has a layer.

Read from the source with ``ast`` (nothing is imported), so a new upward import fails here
with the module, the line and both layers named.
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

# Bottom to top. A module may import modules of its own layer or below. The most specific
# prefix wins, so "localplane.node" sits above the rest of "localplane".
LAYERS = (
    ("records", ("errors", "evidence", "messages", "vocabulary", "hookspecs")),
    ("pure logic and pins", ("topology", "documents", "pki", "outcomes", "toolchain",
                             "reports", "diagnoses", "posture", "ownership", "access")),
    ("cluster I/O and rendering", ("kube", "cert_manager_cluster", "injection", "installers", "tools", "render",
                                   "csr_contract", "survey", "signals",
                                   "signer_profile", "localplane", "images", "signer.reference",
                                   "signer.__main__")),
    ("install sequences", ("evidence_collection", "mesh_installer", "plan", "signer_install", "signer.deploy", "signer", "localplane.node")),
    ("providers", ("providers", "upgrade")),
    ("session", ("session",)),
    ("run configuration", ("run_config",)),
    ("front doors: pytest plugin, setup command", ("fixtures", "plugin", "report_hooks", "machine_setup", "")),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix and module.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (rank, prefix)
    if best is None:
        raise KeyError(module)
    return best[0]


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


@pytest.mark.parametrize("path", SOURCES, ids=[_module_name(p) or "(package)" for p in SOURCES])
def test_module_imports_nothing_above_its_layer(path):
    module = _module_name(path)
    try:
        own = layer_of(module)
    except KeyError:
        pytest.fail(f"{module} has no layer: add it to LAYERS in {__file__}", pytrace=False)
    upward = [f"line {line}: {dep} ({LAYERS[layer_of(dep)][0]})"
              for line, dep in imports_of(path) if layer_of(dep) > own]
    assert not upward, f"{module} ({LAYERS[own][0]}) imports upward:\n  " + "\n  ".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    source = tmp_path / "render.py"
    source.write_text("from custom_ca_conformance.providers.base import Mesh\n")
    assert [(layer_of(dep) > layer_of("render")) for _, dep in imports_of(source)] == [True]


def test_installing_the_project_adds_no_top_level_fixtures_package(tmp_path):
    # Run elsewhere: `python -m pytest` puts the checkout itself on sys.path, which no user has.
    probe = "import importlib.util as u; s = u.find_spec('fixtures'); print(s.origin if s else 'absent')"
    seen = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, check=True).stdout.strip()
    assert seen == "absent" or LIBRARY not in Path(seen).parents, (
        f"`import fixtures` resolves to this project's {seen}: it would shadow PyPI's fixtures package")
