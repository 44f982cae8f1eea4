"""README's Layout names every folder and module of the package, and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "fixtures"


def layout_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout\n"):]
    start = section.index("```\n") + 4
    return section[start:section.index("```\n", start)].splitlines()


def modules_named_in_layout() -> dict[str, set[str]]:
    """folder (relative to fixtures/) -> the module files its entry names."""
    named: dict[str, set[str]] = {}
    folder = None
    for line in layout_block():
        entry = re.match(r"  ([a-z_/]+)/ ", line)
        if entry:
            folder = entry.group(1)
            named[folder] = set()
        elif not line.startswith("    "):
            folder = None
        if folder is not None:
            named[folder] |= set(re.findall(r"\b([a-z_]+\.py)\b", line))
    return named


def modules_in_tree() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in LIBRARY.rglob("*.py"):
        if path.parent == LIBRARY or "gosrc" in path.parts:
            continue
        folder = str(path.parent.relative_to(LIBRARY))
        found.setdefault(folder, set())
        if not path.name.startswith("__"):
            found[folder].add(path.name)
    return found


def test_readme_layout_matches_the_tree():
    named, present = modules_named_in_layout(), modules_in_tree()
    missing = {f"{folder}/{m}" for folder, modules in present.items() for m in modules - named.get(folder, set())}
    missing |= {f"{folder}/" for folder in present if folder not in named}
    stale = {f"{folder}/{m}" for folder, modules in named.items() for m in modules - present.get(folder, set())}
    stale |= {f"{folder}/" for folder in named if folder not in present}
    assert not missing and not stale, (
        f"README's Layout does not match fixtures/: not named there {sorted(missing)}, named but absent {sorted(stale)}")


def test_the_layout_check_reads_the_entries():
    named = modules_named_in_layout()
    assert "sequence.py" in named["install"] and "templates.py" in named["render"]
