"""The distribution users install: built as pip builds it, it says its licence and carries the text."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the checkout's files, as on a clean clone (an in-tree build/ would add stale files)."""
    source, directory = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--wheel-dir", str(directory), str(source)], check=True, timeout=300)
    [built] = directory.glob("custom_ca_conformance-*.whl")
    return built


def test_the_wheel_carries_every_module_and_data_file_of_the_package(wheel):
    """A folder left out of pyproject's package list would be missing from every non-editable install."""
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    sources = {"custom_ca_conformance": REPO / "fixtures", "custom_ca_conformance/conformance": REPO / "conformance",
               "custom_ca_conformance/manifests": REPO / "manifests"}
    wanted = {f"{prefix}/{path.relative_to(root)}" for prefix, root in sources.items()
              for pattern in ("*.py", "*.json", "*.yaml", "gosrc/*/*")
              for path in root.rglob(pattern) if "__pycache__" not in path.parts}
    wanted = {name for name in wanted if not name.startswith("custom_ca_conformance/conformance/conformance")}
    missing = sorted(wanted - shipped)
    assert not missing, f"not in the wheel (add the folder to pyproject's packages or package-data): {missing}"


def test_the_wheel_declares_apache_2_and_carries_the_license_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
        [license_name] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        text = archive.read(license_name).decode()
    assert metadata["License-Expression"] == "Apache-2.0", metadata.items()
    assert metadata.get_all("License-File") == ["LICENSE"], metadata.items()
    assert text == (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
