"""Self-tests for .github/workflows: actionlint accepts them, and they run the kind provider itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from custom_ca_conformance.localplane import toolchain

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"


@pytest.fixture(scope="module")
def actionlint() -> Path:
    try:
        return toolchain.ensure_actionlint(progress=lambda line: None)
    except toolchain.GoNotFoundError as exc:
        pytest.skip(f"actionlint is built with Go: {exc}")


def _lint(actionlint: Path, *paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(actionlint), "-no-color", *map(str, paths)], capture_output=True, text=True,
                          timeout=120, cwd=WORKFLOWS.parent.parent)


def _workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def test_actionlint_accepts_every_workflow(actionlint):
    result = _lint(actionlint, *sorted(WORKFLOWS.glob("*.yml")))

    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_rejects_a_broken_workflow(actionlint, tmp_path):
    # The check above can fail: a reusable workflow reading an input it does not declare.
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text((WORKFLOWS / "conformance.yml").read_text().replace(
        "inputs.pytest-args", "inputs.pytest-arguments"))

    result = _lint(actionlint, broken)

    assert result.returncode != 0 and "pytest-arguments" in result.stdout, result.stdout + result.stderr


def test_the_reusable_workflow_runs_the_kind_provider_and_keeps_the_report():
    workflow = _workflow("conformance.yml")
    called = workflow[True]["workflow_call"]["inputs"]  # PyYAML reads the key `on` as True
    steps = workflow["jobs"]["conformance"]["steps"]
    script = next(step["run"] for step in steps if step.get("name") == "Conformance")
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))

    assert {"istio-version", "kubernetes-version", "istio-upgrade-from", "signer-profile"} <= set(called)
    assert "--custom-ca-cluster kind" in script and "--custom-ca-cluster existing" not in script
    assert "--custom-ca-report-dir \"$RUNNER_TEMP/report\"" in script
    assert upload["if"] == "always()" and upload["with"]["path"] == "${{ runner.temp }}/report"


def test_the_reusable_workflow_checks_out_the_suite_it_was_called_from_by_default():
    """No placeholder: left empty, the suite is the repository and commit of the workflow file (job.workflow_*)."""
    workflow = _workflow("conformance.yml")
    called = workflow[True]["workflow_call"]["inputs"]
    checkout = next(step for step in workflow["jobs"]["conformance"]["steps"]
                    if step.get("name") == "Check out the suite")["with"]

    assert called["suite-repository"]["default"] == "" and called["suite-ref"]["default"] == ""
    assert checkout["repository"].startswith("${{ inputs.suite-repository || job.workflow_repository")
    assert checkout["ref"].startswith("${{ inputs.suite-ref || (!inputs.suite-repository && (job.workflow_sha")
    for name, job in _workflow("kind-matrix.yml")["jobs"].items():
        assert not {"suite-repository", "suite-ref"} & set(job["with"]), f"{name} should use the default"


def test_the_lint_exception_covers_only_the_job_workflow_properties(actionlint, tmp_path):
    """The same workflow with another unknown job property is still refused by actionlint under the config."""
    project = tmp_path / "project"
    (project / ".github" / "workflows").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(project)], check=True, timeout=30)  # actionlint's project root
    (project / ".github" / "actionlint.yaml").write_text((WORKFLOWS.parent / "actionlint.yaml").read_text())
    copy = project / ".github" / "workflows" / "conformance.yml"

    def lint() -> subprocess.CompletedProcess:
        return subprocess.run([str(actionlint), "-no-color", ".github/workflows/conformance.yml"],
                              capture_output=True, text=True, timeout=120, cwd=project)

    copy.write_text((WORKFLOWS / "conformance.yml").read_text())
    accepted = lint()
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    copy.write_text((WORKFLOWS / "conformance.yml").read_text().replace("job.workflow_sha", "job.workflow_shaa"))
    refused = lint()
    assert refused.returncode != 0 and 'property "workflow_shaa"' in refused.stdout, refused.stdout + refused.stderr


def test_the_matrix_calls_the_reusable_workflow_without_fail_fast():
    jobs = _workflow("kind-matrix.yml")["jobs"]

    for name, job in jobs.items():
        assert job["uses"] == "./.github/workflows/conformance.yml", name
        assert job["strategy"]["fail-fast"] is False, name
    cells = jobs["kind"]["strategy"]["matrix"]
    assert len(cells["istio"]) * len(cells["kubernetes"]) - len(cells["exclude"]) >= 5
    assert all(cell["from"] != cell["to"] for cell in jobs["upgrade"]["strategy"]["matrix"]["include"])


# --- README's first screen --------------------------------------------------------------------------

README = WORKFLOWS.parent.parent / "README.md"
FIRST_SCREEN_LINES = 40


def _first_screen_blocks(language: str) -> list[str]:
    text = "\n".join(README.read_text().splitlines()[:FIRST_SCREEN_LINES])
    return [block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith(language + "\n")]


def test_the_first_screen_holds_the_three_quickstarts():
    [actions] = _first_screen_blocks("yaml")
    shells = _first_screen_blocks("sh")
    assert "uses: OWNER/custom-ca-conformance/.github/workflows/conformance.yml@" in actions
    assert [any(f"--custom-ca-cluster {cluster}" in block for block in shells) for cluster in ("existing", "local")] \
        == [True, True], shells


def test_the_actions_quickstart_calls_the_reusable_workflow_with_what_it_requires(actionlint, tmp_path):
    """Linted as a caller of the workflow in this checkout: unknown or missing inputs would be refused."""
    [actions] = _first_screen_blocks("yaml")
    caller = yaml.safe_load(actions)
    job = caller["jobs"]["custom-ca"]
    job["uses"] = "./.github/workflows/conformance.yml"
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # actionlint reads local workflows of a repository
    (workflows / "conformance.yml").write_text((WORKFLOWS / "conformance.yml").read_text())
    (workflows / "caller.yml").write_text(yaml.safe_dump({"name": "caller", "on": {"push": {}}, **caller}))
    result = subprocess.run([str(actionlint), "-no-color", ".github/workflows/caller.yml"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    job["with"]["istio-versions"] = job["with"].pop("istio-version")  # the check can fail: a misspelt input
    (workflows / "caller.yml").write_text(yaml.safe_dump({"name": "caller", "on": {"push": {}}, **caller}))
    missing = subprocess.run([str(actionlint), "-no-color", ".github/workflows/caller.yml"], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
    assert missing.returncode != 0 and "istio-version" in missing.stdout, missing.stdout


def test_every_option_of_the_first_screen_is_an_option_of_the_plugin():
    import re

    from custom_ca_conformance.plugin import options

    class Group:
        def __init__(self):
            self.names: set[str] = set()

        def addoption(self, name, **_):
            self.names.add(name)

    class Parser:
        group = Group()

        def getgroup(self, *_):
            return self.group

        def addini(self, *_, **__):
            pass

    parser = Parser()
    options.add_options(parser)
    shown = set(re.findall(r"--custom-ca-[a-z-]+", "\n".join(README.read_text().splitlines()[:FIRST_SCREEN_LINES])))
    assert shown and shown <= parser.group.names, sorted(shown - parser.group.names)
