"""The broken-variant x contract-test matrix: the signer contract tests catch each breakage, and only it.

For the intact reference signer and for each ``Breakage`` it can be started with, this module
starts the signer on the local control plane under signerNames of its own, writes a vendor
signer profile for it, runs the real contract tests (``pytest conformance -m signer --custom-ca-cluster
existing --custom-ca-preinstalled --custom-ca-signer-profile FILE``) in a subprocess and compares the contract
tests that failed with ``EXPECTED_FAILURES``: exactly those, no more (caught by no unrelated
test), no fewer (caught by the right one).

The runs are independent (each variant has its own signerNames, ServiceAccount and CA), so
they run a few at a time; ``sign-foreign`` signs every signerName and runs alone, after the
others. Skipped when kube-apiserver/etcd are not built (``python -m custom_ca_conformance.localplane.toolchain build``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from custom_ca_conformance.localplane.processes import ProcessGroup
from custom_ca_conformance.process.environment import environ_copy
from custom_ca_conformance.signer import Breakage, start_reference_signer

pytestmark = pytest.mark.xdist_group("signer-breakages")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTRACT_FILE = REPO_ROOT / "conformance" / "test_signer_contract.py"
CONTRACT_CLASSNAME = "conformance.test_signer_contract"

INTACT = "intact"
# Short on purpose: the reference signer names its CAs "<signerName> intermediate CA" in a
# certificate CN, which X.509 caps at 64 characters.
SIGNER_DOMAIN = "breakage.cca.test"
CN_MAX = 64
# Variants that sign outside their own signerNames must not share the cluster with another run.
EXCLUSIVE = frozenset({Breakage.SIGN_FOREIGN})
# Legal deviations: the contract must accept them.
LEGAL = frozenset({Breakage.INCLUDE_ROOT})
# Run first: if even the intact signer cannot be tested, the other variants are not run.
CANARY = None
# Started right away, so they overlap with the short ones.
LONG_RUNS = (Breakage.NEVER_SIGN, Breakage.NEVER_FAIL)
PARALLEL_RUNS = 4
# The profile's timings: a "must not happen" test watches OBSERVE_SECONDS; the issuance test
# waits ISSUE_TIMEOUT_SECONDS, in full for never-sign (three key kinds) and never-fail.
OBSERVE_SECONDS = 3
ISSUE_TIMEOUT_SECONDS = 8
RUN_TIMEOUT_SECONDS = 150

# Property tests judge the one certificate issued per key kind; without one they skip.
PROPERTY_TESTS = frozenset({
    "test_issued_certificate_is_wellformed_pem",
    "test_issued_certificate_carries_the_request_public_key",
    "test_issued_certificate_carries_the_spiffe_uri_san",
    "test_expiration_seconds_is_honoured",
    "test_chain_verifies_to_the_published_ca_bundle",
})
CONTRACT_TESTS = PROPERTY_TESTS | {
    "test_approved_istio_csr_is_issued",
    "test_unapproved_csr_is_not_issued",
    "test_denied_csr_is_not_issued",
    "test_csr_for_a_foreign_signer_is_ignored",
    "test_permanent_error_sets_failed",
}

CHAIN_TEST = frozenset({"test_chain_verifies_to_the_published_ca_bundle"})
# The contract tests each variant must fail (any parametrization of the function failing
# counts): exactly these, so a breakage caught by an unrelated test fails this matrix too.
EXPECTED_FAILURES: dict[Breakage | None, frozenset[str]] = {
    None: frozenset(),
    Breakage.SIGN_UNAPPROVED: frozenset({"test_unapproved_csr_is_not_issued"}),
    Breakage.SIGN_DENIED: frozenset({"test_denied_csr_is_not_issued"}),
    Breakage.IGNORE_EXPIRATION_SECONDS: frozenset({"test_expiration_seconds_is_honoured"}),
    Breakage.DROP_URI_SAN: frozenset({"test_issued_certificate_carries_the_spiffe_uri_san"}),
    Breakage.SIGN_WITH_OTHER_CA: CHAIN_TEST,
    # The chain test verifies the chain as a sidecar uses it (path validation with the workload
    # policy), so a leaf a sidecar cannot use in both TLS roles fails there, and only there.
    Breakage.SET_CA_TRUE: CHAIN_TEST,
    Breakage.VIOLATE_PATH_LENGTH: CHAIN_TEST,
    Breakage.ISSUER_WITHOUT_CERT_SIGN: CHAIN_TEST,
    Breakage.EXPIRED_INTERMEDIATE: CHAIN_TEST,
    Breakage.DROP_CLIENT_AUTH: CHAIN_TEST,
    Breakage.DROP_SERVER_AUTH: CHAIN_TEST,
    # A well-formed certificate for another key and name, self-signed, valid 1 h, without
    # extensions: unrelated to the request in every property the request asks for (key,
    # identity, usages, lifetime, issuer). Only the PEM test holds.
    Breakage.GARBAGE_CERTIFICATE: frozenset({
        "test_issued_certificate_carries_the_request_public_key",
        "test_issued_certificate_carries_the_spiffe_uri_san",
        "test_expiration_seconds_is_honoured",
        "test_chain_verifies_to_the_published_ca_bundle",
    }),
    Breakage.NEVER_SIGN: frozenset({"test_approved_istio_csr_is_issued"}),
    Breakage.SIGN_FOREIGN: frozenset({"test_csr_for_a_foreign_signer_is_ignored"}),
    Breakage.INCLUDE_ROOT: frozenset(),
    Breakage.NEVER_FAIL: frozenset({"test_permanent_error_sets_failed"}),
}
# The contract tests each variant must skip (they point at the failing test instead).
EXPECTED_SKIPS: dict[Breakage | None, frozenset[str]] = {
    Breakage.NEVER_SIGN: PROPERTY_TESTS | {"test_permanent_error_sets_failed"},
}
# Skips that depend on a race and may or may not happen: a sign-unapproved signer may issue
# the denied test's CSR before the suite denies it (then that test skips, pointing at the
# unapproved test), or see it only once Denied (then it leaves it alone and the test passes).
MAY_SKIP: dict[Breakage | None, frozenset[str]] = {
    Breakage.SIGN_UNAPPROVED: frozenset({"test_denied_csr_is_not_issued"}),
}

VARIANTS: list[Breakage | None] = [None, *Breakage]


def _variant_id(variant: Breakage | None) -> str:
    return INTACT if variant is None else variant.value


# --- reading a contract run ------------------------------------------------------------------


def contract_outcomes(junit_xml: Path) -> dict[str, set[str]]:
    """``{test function name: outcomes of its parametrizations}`` from pytest's JUnit XML.

    Outcomes are ``passed``, ``failed``, ``error`` and ``skipped``; only the signer contract
    module's test cases count.
    """
    outcomes: dict[str, set[str]] = {}
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        if case.get("classname") != CONTRACT_CLASSNAME:
            continue
        name = case.get("name", "").split("[", 1)[0]
        tags = {child.tag for child in case}
        outcome = ("error" if "error" in tags else "failed" if "failure" in tags
                   else "skipped" if "skipped" in tags else "passed")
        outcomes.setdefault(name, set()).add(outcome)
    return outcomes


def short_summary(stdout: str, lines: int = 60) -> str:
    """The "short test summary info" section of a pytest run (else its last lines)."""
    text = stdout.splitlines()
    for index, line in enumerate(text):
        if "short test summary info" in line:
            return "\n".join(text[index + 1:index + 1 + lines])
    return "\n".join(text[-lines:])


@dataclass
class ContractRun:
    """One run of the signer contract tests against one variant of the reference signer."""

    variant: Breakage | None
    returncode: int | None
    outcomes: dict[str, set[str]]
    summary: str
    seconds: float
    junit: Path
    signer_log: Path
    problem: str = ""  # the run could not be made (signer did not start, timeout, no report)

    def names(self, *kinds: str) -> set[str]:
        """Test functions with at least one parametrization of one of ``kinds``."""
        return {name for name, seen in self.outcomes.items() if seen & set(kinds)}

    @property
    def failed(self) -> set[str]:
        return self.names("failed", "error")

    @property
    def skipped(self) -> set[str]:
        return self.names("skipped") - self.failed

    def describe(self) -> str:
        counts = {kind: len(self.names(kind)) for kind in ("passed", "failed", "error", "skipped")}
        return (f"contract run for {_variant_id(self.variant)}: exit code {self.returncode}, {self.seconds:.1f}s, "
                f"test functions {counts}; JUnit {self.junit}; signer log {self.signer_log}"
                + (f"\n  problem: {self.problem}" if self.problem else "")
                + "\n  short test summary:\n    " + self.summary.replace("\n", "\n    "))


# --- running the matrix ----------------------------------------------------------------------


def signer_name(variant: Breakage | None) -> str:
    return f"{SIGNER_DOMAIN}/{_variant_id(variant)}"


def write_profile(path: Path, variant: Breakage | None, ca_secret: tuple[str, str]) -> Path:
    namespace, name = ca_secret
    document = {
        "name": f"reference-signer-{_variant_id(variant)}",
        "description": "the project's reference signer"
                       + (f" with breakage {variant.value}" if variant else ", intact"),
        "signers": [{"signerName": signer_name(variant),
                     "caBundle": {"secret": {"namespace": namespace, "name": name, "key": "ca.crt"}}}],
        "install": {"preinstalled": True},
        "observeSeconds": OBSERVE_SECONDS,
        "issueTimeoutSeconds": ISSUE_TIMEOUT_SECONDS,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def contract_argv(kubeconfig: Path, profile: Path, junit: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", "conformance", "-m", "signer",
            "--custom-ca-cluster", "existing", "--custom-ca-kubeconfig", str(kubeconfig), "--custom-ca-preinstalled",
            "--custom-ca-signer-profile", str(profile), "--custom-ca-workdir", str(workdir),
            "-p", "no:cacheprovider", "--junitxml", str(junit), "-q"]


def _child_env(tmpdir: Path) -> dict[str, str]:
    """Ours, without what would make the inner pytest act as an xdist worker or pick another cluster."""
    env = {key: value for key, value in environ_copy().items()  # called from the variants' threads
           if not key.startswith(("PYTEST_", "CUSTOM_CA_CONFORMANCE_")) and key != "KUBECONFIG"}
    env["TMPDIR"] = str(tmpdir)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # what it printed is kept even if it has to be killed
    return env


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def _tail(path: Path, what: str, lines: int = 5) -> str:
    if not path.is_file():
        return f"; no {what} at {path} yet"
    return f"; {what} {path} ends:\n      " + "\n      ".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_contract(control_plane, variant: Breakage | None, workdir: Path) -> ContractRun:
    """Start the variant, run the contract tests against it, stop it; never raises for the variant's sake."""
    vid = _variant_id(variant)
    workdir.mkdir(parents=True, exist_ok=True)
    junit = workdir / "contract.xml"
    started = time.monotonic()
    processes = ProcessGroup(workdir / "logs")  # ours alone: the control plane's group is not thread-safe
    signer_log = processes.logs_dir / f"breakage-signer-{vid}.log"
    try:
        try:
            signer = start_reference_signer(control_plane, [signer_name(variant)], workdir / "signer", processes,
                                            variant, process_name=f"breakage-signer-{vid}")
        except Exception as exc:
            return ContractRun(variant, None, {}, "", time.monotonic() - started, junit, signer_log,
                               problem=f"the signer did not start: {exc}")
        profile = write_profile(workdir / "profile.yaml", variant, signer.root_secret(signer_name(variant)))
        (workdir / "tmp").mkdir(exist_ok=True)
        argv = contract_argv(control_plane.kubeconfig, profile, junit, workdir / "run")
        try:
            result = subprocess.run(argv, cwd=REPO_ROOT, env=_child_env(workdir / "tmp"), capture_output=True,
                                    text=True, timeout=RUN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired as exc:
            output = "".join(_text(part) for part in (exc.stdout, exc.stderr))
            return ContractRun(variant, None, {}, short_summary(output, lines=15), time.monotonic() - started,
                               junit, signer_log,
                               problem=f"no result within {RUN_TIMEOUT_SECONDS}s: {' '.join(argv)}"
                                       + _tail(workdir / "run" / "provision.log", "provisioning log"))
        (workdir / "contract.out").write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
        problem = ""
        outcomes: dict[str, set[str]] = {}
        if junit.is_file():
            outcomes = contract_outcomes(junit)
        else:
            problem = f"no JUnit report; stderr: {result.stderr.strip()[-1500:]}"
        return ContractRun(variant, result.returncode, outcomes, short_summary(result.stdout),
                           time.monotonic() - started, junit, signer_log, problem)
    finally:
        processes.stop()


class BreakageMatrix:
    """Runs the selected variants in the background, a few at a time.

    The intact signer runs first, alongside the long runs; the others start once it is done,
    and are not run at all when it could not be run (a harness problem: one clear failure
    instead of one timeout per variant). Exclusive variants run alone, after everything else.
    """

    def __init__(self, control_plane, workdir: Path, variants: Iterable[Breakage | None]):
        variants = list(variants)
        shared = sorted((v for v in variants if v not in EXCLUSIVE),
                        key=lambda v: (v is not CANARY, v not in LONG_RUNS))
        exclusive = [v for v in variants if v in EXCLUSIVE]
        self._executor = ThreadPoolExecutor(max_workers=PARALLEL_RUNS, thread_name_prefix="breakage")
        self._stopping = threading.Event()
        self.started = time.monotonic()
        self.futures: dict[Breakage | None, Future] = {}
        canary: Future | None = None

        def run(variant, after: Iterable[Future] = ()):
            # Whatever ``variant`` waits for was submitted before it, so is running or done: no deadlock.
            wait(list(after))
            if self._stopping.is_set():
                raise RuntimeError("the module is being torn down")
            if canary is not None and canary in after and canary.result().problem:
                vdir = workdir / _variant_id(variant)
                return ContractRun(variant, None, {}, "", 0.0, vdir / "contract.xml", vdir / "logs",
                                   problem=f"not run: the {INTACT} signer's contract run could not be made "
                                           f"({canary.result().problem.splitlines()[0]})")
            return run_contract(control_plane, variant, workdir / _variant_id(variant))

        for variant in shared:
            waits_for = [canary] if canary is not None and variant not in LONG_RUNS else []
            self.futures[variant] = self._executor.submit(run, variant, waits_for)
            if variant is CANARY:
                canary = self.futures[variant]
        for variant in exclusive:
            self.futures[variant] = self._executor.submit(run, variant, list(self.futures.values()))

    def result(self, variant: Breakage | None) -> ContractRun:
        return self.futures[variant].result(timeout=RUN_TIMEOUT_SECONDS * (1 + len(self.futures)))

    def close(self) -> None:
        self._stopping.set()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _selected_variants(request: pytest.FixtureRequest) -> list[Breakage | None]:
    """The variants whose tests this session runs (all of them unless -k or node ids narrow it)."""
    selected = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec and "variant" in callspec.params:
            selected.append(callspec.params["variant"])
    return selected or VARIANTS


@pytest.fixture(scope="module")
def breakage_matrix(control_plane, tmp_path_factory, request):
    matrix = BreakageMatrix(control_plane, tmp_path_factory.mktemp("signer-breakages"), _selected_variants(request))
    yield matrix
    matrix.close()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    done = {v: f.result() for v, f in matrix.futures.items() if f.done() and not f.cancelled() and not f.exception()}
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter and capture and done:
        timings = ", ".join(f"{_variant_id(v)} {run.seconds:.0f}s" for v, run in done.items())
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nsigner breakage matrix: {len(done)} contract runs in "
                                f"{time.monotonic() - matrix.started:.0f}s ({timings})")


# --- the expectations themselves (no cluster) --------------------------------------------------


def _contract_test_functions() -> set[str]:
    tree = ast.parse(CONTRACT_FILE.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_the_matrix_names_every_contract_test_and_only_those():
    named = set().union(*EXPECTED_FAILURES.values(), *EXPECTED_SKIPS.values(), *MAY_SKIP.values())

    assert _contract_test_functions() == CONTRACT_TESTS
    assert named <= CONTRACT_TESTS, sorted(named - CONTRACT_TESTS)


def test_every_breakage_has_an_expectation_and_each_illegal_one_is_caught():
    assert set(EXPECTED_FAILURES) == set(VARIANTS)
    assert not EXPECTED_FAILURES[None]
    uncaught = [b.value for b in Breakage if b not in LEGAL and not EXPECTED_FAILURES[b]]
    assert not uncaught, f"breakages no contract test is expected to catch: {uncaught}"
    assert all(not EXPECTED_FAILURES[b] for b in LEGAL)


def test_signer_names_fit_the_reference_signer_ca_names():
    too_long = [signer_name(v) for v in VARIANTS if len(f"{signer_name(v)} intermediate CA") > CN_MAX]

    assert not too_long, f"the reference signer cannot name its CAs after {too_long} (CN over {CN_MAX} characters)"


def test_contract_outcomes_reads_pytest_junit_xml(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        f'<testcase classname="{CONTRACT_CLASSNAME}" name="test_a[s-rsa]"/>'
        f'<testcase classname="{CONTRACT_CLASSNAME}" name="test_a[s-ecdsa]"><failure message="x"/></testcase>'
        f'<testcase classname="{CONTRACT_CLASSNAME}" name="test_b[s]"><skipped message="y"/></testcase>'
        f'<testcase classname="{CONTRACT_CLASSNAME}" name="test_c"><error message="z"/></testcase>'
        '<testcase classname="conformance.test_csr" name="test_d"/>'
        '</testsuite></testsuites>')

    outcomes = contract_outcomes(report)

    assert outcomes == {"test_a": {"passed", "failed"}, "test_b": {"skipped"}, "test_c": {"error"}}
    run = ContractRun(None, 1, outcomes, "", 0.0, report, report)
    assert run.failed == {"test_a", "test_c"} and run.skipped == {"test_b"}


# --- the matrix against the real contract tests -----------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_contract_catches_exactly_the_breakage(breakage_matrix, variant):
    run = breakage_matrix.result(variant)
    expected_failed = EXPECTED_FAILURES[variant]
    must_skip = EXPECTED_SKIPS.get(variant, frozenset())
    may_skip = must_skip | MAY_SKIP.get(variant, frozenset())

    if run.problem or set(run.outcomes) != CONTRACT_TESTS:
        pytest.fail(f"every contract test should have run against {_variant_id(variant)}; "
                    f"ran {sorted(run.outcomes)}\n" + run.describe(), pytrace=False)
    assert run.failed == expected_failed, (
        f"{_variant_id(variant)}: the contract tests that failed are not the expected ones"
        f"\n  expected failed:     {sorted(expected_failed)}"
        f"\n  seen failed:         {sorted(run.failed)}"
        f"\n  caught by unrelated: {sorted(run.failed - expected_failed)}"
        f"\n  not caught by:       {sorted(expected_failed - run.failed)}\n" + run.describe())
    assert must_skip <= run.skipped <= may_skip, (
        f"{_variant_id(variant)}: the contract tests that skipped are not the expected ones"
        f"\n  expected skipped: {sorted(must_skip)}" + (f" (may also skip {sorted(may_skip - must_skip)})"
                                                       if may_skip != must_skip else "")
        + f"\n  seen skipped:     {sorted(run.skipped)}\n" + run.describe())
    assert (run.returncode == 0) == (not expected_failed), run.describe()
