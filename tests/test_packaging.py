"""The distribution users install: built as pip builds it, it says its licence and carries the text."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_declares_apache_2_and_carries_the_license_file(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(REPO)], check=True, timeout=300)
    [wheel] = tmp_path.glob("custom_ca_conformance-*.whl")
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
