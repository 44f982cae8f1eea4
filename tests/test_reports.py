"""Self-tests of the reports: the pure package (fixtures/reports/) directly, the hooks through pytester.

The pytester runs follow tests/test_plugin.py: a real ``python -m pytest`` subprocess in
pytester's directory, the plugin loaded through its entry point, PATH holding only ``python``
(nothing can be provisioned). Their test files put the ``custom_ca_probe`` user property on
their nodes themselves, or get it from the real ``probe`` fixture over a fake mesh.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import textwrap
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from custom_ca_conformance.model.evidence import Diagnosis
from custom_ca_conformance.model.outcomes import expected_outcome
from custom_ca_conformance.model.setup_failure import SetupFailure
from custom_ca_conformance.model.vocabulary import TIER_MARKERS
from custom_ca_conformance.plugin.session import STATE_ENV
from custom_ca_conformance.reports import (
    formats,
    markdown,
    records,
    report_json,
    svg,
    tables,
    terminal,
)
from custom_ca_conformance.reports.records import (
    TIER_PROPERTY,
    PairSpec,
    Phase,
    RecordCollector,
    RunFacts,
    RunReport,
)
from custom_ca_conformance.reports.tables import AS_EXPECTED, NOT_RUN, UNEXPECTED

pytest_plugins = ("pytester",)

SVG = "{http://www.w3.org/2000/svg}"
TENANTS = ("foo", "bar")


# --- builders ------------------------------------------------------------------------------------


def probe_property(client: str, server: str, seen: str | None = None) -> tuple[str, dict]:
    expected = expected_outcome(client == server).value
    return (records.PROBE_PROPERTY, {
        "pair": f"{client}-to-{server}", "client": client, "server": server, "expected": expected,
        "seen": seen or expected, "reason": f"reason {client} {server}", "evidence": "client istio-proxy access log",
    })


# A diagnosis as a test report's user property carries it, and as the reports hold it.
DIAGNOSIS = {"kind": "signer-not-signing", "subject": "clusterissuers.cert-manager.io/bar",
             "cause": "the bar signer never signed istiod's CSR", "evidence": ["csr-1 Approved, no certificate"],
             "fix": "check the ClusterIssuer bar", "look_at": "kubectl get csr"}
FOUND = Diagnosis.from_dict(DIAGNOSIS)


def tier(marker: str) -> tuple[str, str]:
    return (TIER_PROPERTY, marker)


def pair_specs(*tenants: str) -> tuple[PairSpec, ...]:
    return tuple(PairSpec(f"{c}-to-{s}", c, s, expected_outcome(c == s).value) for c in tenants for s in tenants)


def sample_report() -> RunReport:
    """foo/bar: foo->foo ok, foo->bar verify-fail, bar->foo a mismatch (ok), bar->bar not run."""
    collector = RecordCollector()
    tests = [
        ("conformance/test_connectivity.py::test_mtls[foo-to-foo]", "passed", [probe_property("foo", "foo")]),
        ("conformance/test_connectivity.py::test_mtls[foo-to-bar]", "passed", [probe_property("foo", "bar")]),
        ("conformance/test_connectivity.py::test_mtls[bar-to-foo]", "failed",
         [probe_property("bar", "foo", "ok"), (records.DIAGNOSES_PROPERTY, [DIAGNOSIS])]),
    ]
    for nodeid, outcome, properties in tests:
        collector.add(nodeid, Phase("setup", "passed", 0.25), [tier("connectivity")])
        collector.add(nodeid, Phase("call", outcome, 1.0, message="AssertionError: \n  expected: x" if
                                    outcome == "failed" else ""), [tier("connectivity"), *properties])
        collector.add(nodeid, Phase("teardown", "passed", 0.25), [tier("connectivity"), *properties])
    collector.add("conformance/test_rbac.py::test_istiod_may_approve[bar]",
                  Phase("setup", "skipped", message="blocked: the bar signer is not installed"), [tier("rbac")])
    collector.add("conformance/test_csr.py::test_csr_is_approved", Phase("call", "passed", 0.5), [tier("csr")])
    facts = RunFacts.from_dict({
        "provider": "kind", "versions": {"istio": "1.24.1", "cert-manager": "v1.16.2"},
        "phases": [{"name": "cluster", "seconds": 30.0}, {"name": "istio", "seconds": 12.5}],
        "setup_failure": None, "evidence_dir": None,
    })
    return RunReport(collector.records(), facts, pair_specs(*TENANTS), exitstatus=1)


# --- tiers and outcomes --------------------------------------------------------------------------


@pytest.mark.parametrize(("nodeid", "properties", "expected"), [
    ("conformance/test_connectivity.py::test_mtls[foo->bar]", [tier("connectivity")], "connectivity"),
    ("conformance/test_signer_contract.py::test_x[cert-manager]", [tier("signer")], "signer_contract"),
    ("test_anything.py::test_y", [("other", 1), tier("csr")], "csr"),
    ("custom-ca::setup", [], "setup"),
    ("::custom-ca::setup", [], "setup"),
    ("conformance/test_csr.py::test_y", [], "untiered"),  # the file's name is not a tier
    ("tests/test_plugin.py::test_markers_are_registered", [], "untiered"),
])
def test_tier_is_the_tests_tier_marker(nodeid, properties, expected):
    assert records.tier_of(nodeid, properties) == expected


def test_every_tier_marker_names_a_tier_of_the_reports():
    assert sorted(records.tier_of("t", [tier(marker)]) for marker in TIER_MARKERS) == sorted(records.TIERS)


def test_every_conformance_module_carries_the_marker_of_its_tier():
    """The tier a module's tests are counted in is the one its name says (a missing pytestmark shows here)."""
    package = resources.files("custom_ca_conformance.conformance")
    modules = sorted(path.name.removesuffix(".py") for path in package.iterdir() if path.name.startswith("test_"))
    assert modules
    for name in modules:
        marks = importlib.import_module(f"custom_ca_conformance.conformance.{name}").pytestmark
        tiers = [mark.name for mark in (marks if isinstance(marks, list) else [marks]) if mark.name in TIER_MARKERS]
        assert len(tiers) == 1, f"{name}: tier markers {tiers}"
        assert records.tier_of(name, [tier(tiers[0])]) == name.removeprefix("test_")


@pytest.mark.parametrize(("phases", "outcome"), [
    ([Phase("setup", "passed"), Phase("call", "passed"), Phase("teardown", "passed")], "passed"),
    ([Phase("setup", "passed"), Phase("call", "failed"), Phase("teardown", "passed")], "failed"),
    ([Phase("setup", "failed"), Phase("teardown", "passed")], "error"),
    ([Phase("setup", "skipped", message="needs ed25519"), Phase("teardown", "passed")], "skipped"),
    ([Phase("setup", "skipped", message="blocked: provisioning failed"), Phase("teardown", "passed")], "blocked"),
    ([Phase("setup", "passed"), Phase("call", "skipped", message="blocked: no mesh")], "blocked"),
    ([Phase("setup", "passed"), Phase("call", "skipped", xfail=True, message="known")], "xfailed"),
    ([Phase("setup", "passed"), Phase("call", "passed", xfail=True, message="known")], "xpassed"),
    ([Phase("setup", "passed"), Phase("call", "passed"), Phase("teardown", "failed")], "error"),
    ([Phase("call", "failed")], "failed"),  # e.g. the custom-ca::setup report
])
def test_each_test_counts_once_with_the_deciding_phase(phases, outcome):
    assert records.outcome_of(phases) == outcome


def test_collector_makes_one_record_per_test_with_all_its_properties():
    collector = RecordCollector()
    nodeid = "conformance/test_connectivity.py::test_mtls[foo-to-foo]"
    collector.add(nodeid, Phase("setup", "passed", 0.5), [])
    collector.add(nodeid, Phase("call", "passed", 1.0), [tier("connectivity"), probe_property("foo", "foo")])
    collector.add(nodeid, Phase("teardown", "passed", 0.5), [tier("connectivity"), probe_property("foo", "foo")])
    collector.add("custom-ca::setup", Phase("call", "failed", message="istio: install failed\nmore"),
                  [(records.DIAGNOSES_PROPERTY, [DIAGNOSIS]), ("other", 1)])
    mtls, setup = collector.records()  # sorted by nodeid
    assert (setup.tier, setup.outcome, setup.diagnoses) == ("setup", "failed", (FOUND,))
    assert setup.message.startswith("istio: install failed")
    assert (mtls.tier, mtls.outcome, mtls.duration) == ("connectivity", "passed", 2.0)
    assert [p.pair for p in mtls.probes] == ["foo-to-foo"]


def test_properties_only_one_report_has_are_kept_and_repeated_probes_counted():
    # The diagnosis hook adds to the call report only; the teardown report has the node's list.
    collector = RecordCollector()
    nodeid = "conformance/test_connectivity.py::test_mtls[bar-to-foo]"
    probe = probe_property("bar", "foo", "ok")
    collector.add(nodeid, Phase("setup", "passed"), [])
    collector.add(nodeid, Phase("call", "failed"), [probe, probe, (records.DIAGNOSES_PROPERTY, [DIAGNOSIS])])
    collector.add(nodeid, Phase("teardown", "passed"), [probe, probe])
    (record,) = collector.records()
    assert len(record.probes) == 2 and record.diagnoses == (FOUND,)


# --- matrix --------------------------------------------------------------------------------------


def test_matrix_has_a_cell_per_pair_with_mismatch_and_not_run():
    grid = tables.matrix(sample_report().records, pair_specs(*TENANTS))
    assert (grid.clients, grid.servers) == (TENANTS, TENANTS)
    states = {key: cell.state for key, cell in grid.cells.items()}
    assert states == {("foo", "foo"): AS_EXPECTED, ("foo", "bar"): AS_EXPECTED,
                      ("bar", "foo"): UNEXPECTED, ("bar", "bar"): NOT_RUN}
    mismatch = grid.cell("bar", "foo")
    assert (mismatch.expected, mismatch.seen, mismatch.symbol) == ("tls-verify-failed", ("ok",), "ok!")
    assert grid.cell("foo", "bar").symbol == "verify-fail"
    assert grid.cell("bar", "bar").symbol == "-" and grid.cell("bar", "bar").expected == "ok"


def test_matrix_without_topology_pairs_uses_the_probed_tenants():
    grid = tables.matrix(sample_report().records)
    assert set(grid.clients) == set(grid.servers) == set(TENANTS)
    assert grid.cell("bar", "bar").expected is None and grid.cell("bar", "bar").state == NOT_RUN


def test_a_pair_seen_differently_by_two_tests_is_not_as_expected():
    collector = RecordCollector()
    collector.add("test_connectivity.py::test_a", Phase("call", "passed"), [probe_property("foo", "foo")])
    collector.add("test_connectivity.py::test_b", Phase("call", "failed"),
                  [probe_property("foo", "foo", "connection-failure")])
    cell = tables.matrix(collector.records()).cell("foo", "foo")
    assert cell.state == UNEXPECTED and cell.seen == ("ok", "connection-failure")
    assert cell.symbol == "ok/conn-fail!" and cell.reason == "reason foo foo"


def test_totals_per_tier_and_all():
    counts = tables.totals(sample_report().records)
    assert list(counts) == ["connectivity", "csr", "rbac", "all"]
    assert (counts["connectivity"]["passed"], counts["connectivity"]["failed"]) == (2, 1)
    assert counts["rbac"]["blocked"] == 1
    assert counts["all"] == {"passed": 3, "failed": 1, "error": 0, "skipped": 0, "blocked": 1,
                             "xfailed": 0, "xpassed": 0}


# --- terminal ------------------------------------------------------------------------------------


def test_terminal_lines_show_versions_phases_matrix_totals_and_diagnoses():
    text = terminal.plain_text(terminal.terminal_lines(sample_report(), colour=False,
                                                     written=[Path("/r/report.json")]))
    lines = text.splitlines()
    assert "versions: istio 1.24.1, cert-manager v1.16.2" in lines
    assert "setup phases: cluster 30.0s, istio 12.5s (total 42.5s)" in lines
    assert "  client\\server  foo  bar" in lines
    assert "  foo            ok   verify-fail" in lines
    assert "  bar            ok!  -" in lines
    assert "  ! bar-to-foo: expected tls-verify-failed, seen ok (reason bar foo)" in lines
    assert "  connectivity  2 passed  1 failed  0 skipped  0 blocked" in lines
    assert "  all           3 passed  1 failed  0 skipped  1 blocked" in lines
    assert ("  conformance/test_connectivity.py::test_mtls[bar-to-foo]: "
            "[signer-not-signing] the bar signer never signed istiod's CSR") in lines
    assert lines[-1] == "reports: /r/report.json"


def test_terminal_lines_colour_mismatches_red_and_matches_green():
    lines = terminal.terminal_lines(sample_report(), colour=True)
    segments = {text: markup for line in lines for text, markup in line if text.strip()}
    assert segments["ok!"] == {"red": True, "bold": True}
    assert segments["verify-fail"] == {"green": True}
    plain = terminal.terminal_lines(sample_report(), colour=False)
    assert all(markup == {} for line in plain for _, markup in line)


def test_tests_without_a_tier_marker_are_counted_and_named_untiered():
    report = dataclasses.replace(sample_report(), records=(
        *sample_report().records, records.record_from_phases("test_mine.py::test_a", [Phase("call", "passed")])))
    assert list(tables.totals(report.records)) == ["connectivity", "csr", "rbac", "untiered", "all"]
    lines = terminal.plain_text(terminal.terminal_lines(report, colour=False)).splitlines()
    assert "  untiered      1 passed  0 failed  0 skipped  0 blocked" in lines
    assert ("untiered: 1 test(s) carry none of the tier markers "
            "(certificates, connectivity, csr, health, posture, rbac, signer, upgrade)") in lines
    assert "| untiered | 1 | 0 | 0 | 0 | 0 | 0 | 0 |" in markdown.render(report)


def test_short_terminal_lines_are_the_matrix_and_the_totals():
    lines = terminal.plain_text(terminal.terminal_lines(sample_report(), colour=False, short=True)).splitlines()
    assert lines[0].startswith("  client\\server")
    assert len(lines) == 1 + len(TENANTS) + len(tables.totals(sample_report().records))
    assert not any(line.startswith(("versions:", "setup phases:", "reports:")) for line in lines)


def test_setup_failure_is_reported_with_its_headline_and_diagnoses():
    failure = SetupFailure(stage="istio", step="installing Istio", message="istioctl install failed\ntrace",
                           diagnoses=(FOUND,), evidence_dir="/r/evidence")
    facts = RunFacts.from_dict({"provider": "kind", "versions": {"istio": None}, "phases": [],
                                "setup_failure": failure, "evidence_dir": "/r/evidence"})
    report = RunReport((), facts, pair_specs("foo"))
    text = terminal.plain_text(terminal.terminal_lines(report, colour=False))
    assert "versions: istio unknown" in text
    assert ("setup failed at istio: custom-ca setup failed while installing Istio (stages reached: istio)\n"
            "  [signer-not-signing] the bar") in text
    assert "evidence: /r/evidence" in text
    assert "**istio**: custom-ca setup failed while installing Istio" in markdown.render(report)
    document = report_json.document(report)
    report_json.validate(document)
    assert document["setup_failure"] == {"stage": "istio", "message": failure.describe(), "diagnoses": [DIAGNOSIS]}


# --- JSON, Markdown, SVG, files --------------------------------------------------------------------


def test_json_document_validates_and_has_one_record_per_test():
    report = sample_report()
    document = report_json.document(report)
    report_json.validate(document)
    jsonschema.Draft202012Validator.check_schema(report_json.SCHEMA)
    assert document["schema_version"] == 1
    assert document["versions"] == {"istio": "1.24.1", "cert-manager": "v1.16.2"}
    nodeids = [test["nodeid"] for test in document["tests"]]
    assert nodeids == sorted(nodeids) and len(nodeids) == len(set(nodeids)) == 5
    mismatch = next(t for t in document["tests"] if t["nodeid"].endswith("[bar-to-foo]"))
    assert (mismatch["tier"], mismatch["outcome"], mismatch["duration"]) == ("connectivity", "failed", 1.5)
    assert (mismatch["pair"], mismatch["expected"], mismatch["seen"]) == ("bar-to-foo", "tls-verify-failed", "ok")
    assert mismatch["evidence"] == "client istio-proxy access log"
    assert mismatch["diagnoses"] == [DIAGNOSIS]
    blocked = next(t for t in document["tests"] if t["tier"] == "rbac")
    assert (blocked["outcome"], blocked["pair"], blocked["probes"]) == ("blocked", None, [])
    assert {(c["client"], c["server"]): c["state"] for c in document["matrix"]["cells"]}[("bar", "bar")] == NOT_RUN
    json.dumps(document)


def test_the_schema_states_the_outcomes_and_cell_states_the_reports_use():
    schema = report_json.SCHEMA
    counts = schema["$defs"]["counts"]
    outcome = schema["properties"]["tests"]["items"]["properties"]["outcome"]
    state = schema["properties"]["matrix"]["properties"]["cells"]["items"]["properties"]["state"]
    assert outcome["enum"] == counts["required"] == list(counts["properties"]) == list(records.OUTCOMES)
    assert state["enum"] == list(tables.CELL_STATES)


def test_report_json_may_gain_keys_but_not_leave_its_schema(tmp_path):
    written = formats.write_reports(sample_report(), tmp_path / "ok", lambda document: document.update(ci={"job": 7}))
    assert list(read_report(tmp_path / "ok"))[-1] == "ci" and written[0].name == "report.json"
    with pytest.raises(report_json.ReportError, match=r"report\.json: tests: 'none' is not of type 'array'"):
        formats.write_reports(sample_report(), tmp_path / "off", lambda document: document.update(tests="none"))
    assert not (tmp_path / "off").exists()


def test_a_document_off_the_schema_is_refused_naming_the_field():
    document = report_json.document(sample_report())
    document["tests"][0]["outcome"] = "sort of"
    with pytest.raises(report_json.ReportError, match=r"report\.json: tests\[0\]\.outcome: 'sort of' is not one of"):
        report_json.validate(document)


def test_markdown_has_the_matrix_table_and_the_totals():
    text = markdown.render(sample_report())
    assert text.startswith("## custom-ca conformance: failed (3 passed, 1 failed, 1 blocked)\n")
    assert "| client \\ server | **foo** | **bar** |" in text
    assert "| **foo** | ✅ ok | ✅ verify-fail |" in text
    assert "| **bar** | ❌ ok (expected verify-fail) | ⬜ not run |" in text
    assert "| connectivity | 2 | 1 | 0 | 0 | 0 | 0 | 0 |" in text
    assert "| **total** | **42.5** |" in text
    assert "- `conformance/test_connectivity.py::test_mtls[bar-to-foo]` (failed): AssertionError:" in text
    assert "**[signer-not-signing]** the bar signer never signed istiod's CSR — fix: check" in text


def test_svg_parses_with_a_coloured_cell_per_pair():
    root = ET.fromstring(svg.render(sample_report()))
    assert root.tag == f"{SVG}svg"
    assert "istio 1.24.1" in root.find(f"{SVG}title").text
    cells = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "cell"]
    assert len(cells) == len(TENANTS) ** 2
    colours = {(c.get("data-client"), c.get("data-server")): c.get("fill") for c in cells}
    assert colours == {("foo", "foo"): svg.CELL_COLOURS[AS_EXPECTED],
                       ("foo", "bar"): svg.CELL_COLOURS[AS_EXPECTED],
                       ("bar", "foo"): svg.CELL_COLOURS[UNEXPECTED],
                       ("bar", "bar"): svg.CELL_COLOURS[NOT_RUN]}
    assert svg.CELL_COLOURS[AS_EXPECTED] != svg.CELL_COLOURS[UNEXPECTED] != svg.CELL_COLOURS[NOT_RUN]
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert labels.count("foo") == 2 and labels.count("bar") == 2  # a row and a column label each
    legend = root.find(f".//{SVG}g[@id='legend']")
    assert {r.get("data-state") for r in legend.iter(f"{SVG}rect")} == {AS_EXPECTED, UNEXPECTED, NOT_RUN}


def test_svg_of_a_larger_topology_is_n_by_n():
    tenants = tuple(f"tenant{i}" for i in range(1, 6))
    root = ET.fromstring(svg.render(RunReport((), RunFacts(), pair_specs(*tenants))))
    cells = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "cell"]
    assert len(cells) == 25 and {c.get("data-state") for c in cells} == {NOT_RUN}


def test_write_reports_writes_every_format(tmp_path):
    written = formats.write_reports(sample_report(), tmp_path / "new" / "dir")
    assert [f.file_name for f in formats.formats()] == ["report.json", "summary.md", "matrix.svg", "contract.svg"]
    assert [p.name for p in written] == ["report.json", "summary.md", "matrix.svg"]  # no contract test ran
    report_json.validate(json.loads(written[0].read_text()))
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    formats.append_markdown(summary, written[1].read_text())
    assert summary.read_text().startswith("earlier step\n## custom-ca conformance:")


def test_a_diagnosis_is_a_dict_only_in_json():
    """state.json and a report's user property hold dicts; everything else holds the one Diagnosis type."""
    failure = SetupFailure(stage="signers", step=None, message="m", diagnoses=(FOUND,), checked=("istiod: fine",))
    assert SetupFailure.from_dict(json.loads(json.dumps(failure.as_dict()))) == failure
    assert records.diagnoses_from([(records.DIAGNOSES_PROPERTY, [DIAGNOSIS, FOUND, "junk"])]) == (FOUND, FOUND)
    assert FOUND.as_dict() == DIAGNOSIS and Diagnosis.from_dict({"kind": "k"}).cause == ""


UPGRADE = {
    "from": "1.29.6", "to": "1.30.3", "how": "in place", "to_tag": "1.30.3",
    "before": {"foo-to-foo": {"expected": "ok", "seen": "ok", "detail": "ok"},
               "foo-to-bar": {"expected": "tls-verify-failed", "seen": "ok", "detail": "ok: HTTP 200"}},
    "rollout": {"sent": 40, "failed": 1, "interrupted": 3, "unsent": 2, "seconds": 15.0,
                "failures": ["3.0s foo-to-foo: HTTP 503"]},
}


def upgrade_report() -> RunReport:
    report = sample_report()
    facts = dataclasses.replace(report.facts, upgrade=UPGRADE)
    return dataclasses.replace(report, facts=facts)


def test_an_upgrade_run_shows_each_pair_before_and_after_side_by_side():
    rows = {row.pair: row for row in tables.upgrade_rows(upgrade_report())}

    assert (rows["foo-to-foo"].before, rows["foo-to-foo"].after) == ("ok", "ok")
    assert (rows["foo-to-bar"].expected, rows["foo-to-bar"].before) == ("tls-verify-failed", "ok")
    assert (rows["bar-to-bar"].before, rows["bar-to-bar"].after) == ("not run", "not run")


def test_an_upgrade_run_is_in_every_report_form():
    report = upgrade_report()
    document = report_json.document(report)
    report_json.validate(document)
    text = terminal.plain_text(terminal.terminal_lines(report, colour=False))
    summary = markdown.render(report)

    assert document["upgrade"]["rollout"]["failed"] == 1
    assert {"pair": "foo-to-bar", "expected": "tls-verify-failed", "before": "ok", "after": "tls-verify-failed"} \
        in document["upgrade"]["pairs"]
    assert "upgrade Istio 1.29.6 -> 1.30.3 (in place)" in text
    assert "rollout: 40 requests in 15s, 1 failed, 3 interrupted by their client pod's replacement, 2 not sent" \
        in text
    assert "| pair | expected | before (1.29.6) | after (1.30.3) |" in summary
    columns = [line.index("tls-verify-failed") for line in text.splitlines() if line.startswith("  foo-to-bar")]
    assert columns == [len("  pair        ")], "the upgrade table's expected column does not line up"
    assert "| foo-to-bar | tls-verify-failed | ❌ ok | ✅ tls-verify-failed |" in summary
    assert report_json.document(sample_report())["upgrade"] is None


def test_run_facts_tolerate_absence():
    assert RunFacts.from_dict(None) == RunFacts.from_dict({}) == RunFacts()
    assert RunFacts().setup_seconds == 0


# --- the hooks, through pytester ------------------------------------------------------------------


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory):
    """Run ``python -m pytest ARGS`` in pytester's directory, as tests/test_plugin.py does."""
    bare = tmp_path_factory.mktemp("bin")
    (bare / "python").symlink_to(sys.executable)
    for name in (STATE_ENV, "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID",
                 "KUBECONFIG", "GITHUB_STEP_SUMMARY", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(bare))
    monkeypatch.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmpdir")))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")

    def run_pytest(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--custom-ca-cluster", "local", *args, timeout=120)

    return run_pytest


def output(result: pytest.RunResult) -> str:
    return "\n".join(result.outlines + result.errlines)


def assert_clean(result: pytest.RunResult) -> None:
    text = output(result)
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    assert "custom-ca: provisioning" not in text, text


@pytest.fixture
def probe_tests(pytester: pytest.Pytester) -> None:
    """Tiers connectivity and rbac: foo->bar is not as expected, bar->bar is not run, one test is blocked."""
    pytester.makepyfile(test_connectivity=textwrap.dedent("""
        import pytest

        pytestmark = pytest.mark.connectivity
        SEEN = {("foo", "foo"): "ok", ("foo", "bar"): "ok", ("bar", "foo"): "tls-verify-failed"}

        @pytest.mark.parametrize(("client", "server"), sorted(SEEN), ids=lambda v: v)
        def test_mtls(request, client, server):
            expected = "ok" if client == server else "tls-verify-failed"
            seen = SEEN[(client, server)]
            request.node.user_properties.append(("custom_ca_probe", {
                "pair": f"{client}-to-{server}", "client": client, "server": server,
                "expected": expected, "seen": seen, "reason": "HTTP 200" if seen == "ok" else "VERIFY_FAILED",
                "evidence": "client istio-proxy access log"}))
            if seen != expected:
                request.node.user_properties.append(("custom_ca_diagnoses", [{
                    "kind": "shared-root", "subject": "bar", "cause": "bar trusts foo's root", "evidence": ["x"],
                    "fix": "split the roots", "look_at": "meshConfig.caCertificates"}]))
            assert seen == expected
        """))
    pytester.makepyfile(test_rbac=textwrap.dedent("""
        import pytest

        pytestmark = pytest.mark.rbac

        def test_approve():
            pass

        def test_blocked():
            pytest.skip("blocked: the mesh was not provisioned")
        """))


def read_report(directory: Path) -> dict:
    document = json.loads((directory / "report.json").read_text())
    report_json.validate(document)
    return document


def test_report_dir_gets_the_three_files_and_the_terminal_a_summary(run, probe_tests, pytester):
    result = run("--custom-ca-report-dir", "out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output(result)
    assert_clean(result)
    out = pytester.path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["matrix.svg", "report.json", "summary.md"]
    document = read_report(out)
    assert len(document["tests"]) == 5 and document["exitstatus"] == 1
    outcomes = {t["nodeid"]: t["outcome"] for t in document["tests"]}
    assert outcomes["test_rbac.py::test_blocked"] == "blocked"
    assert outcomes["test_connectivity.py::test_mtls[foo-bar]"] == "failed"
    failed = next(t for t in document["tests"] if t["outcome"] == "failed")
    assert failed["seen"] == "ok" and failed["diagnoses"][0]["kind"] == "shared-root"
    ET.fromstring((out / "matrix.svg").read_text())
    result.stdout.fnmatch_lines([
        "*= custom-ca summary =*",
        "versions: *",
        "matrix (rows: client tenant, columns: server tenant):",
        "  client\\server  foo*bar",
        "  foo            ok*ok!",
        "  bar            verify-fail  -",  # the default topology's foo/bar: bar->bar was not probed
        "*! foo-to-bar: expected tls-verify-failed, seen ok (HTTP 200)",
        "totals:",
        "  connectivity  2 passed  1 failed  0 skipped  0 blocked",
        "  rbac          1 passed  0 failed  0 skipped  1 blocked",
        "  all           3 passed  1 failed  0 skipped  1 blocked",
        "diagnoses:",
        "  test_connectivity.py::test_mtls[[]foo-bar[]]: [[]shared-root[]] bar trusts foo's root",
        f"reports: {out / 'report.json'}, {out / 'summary.md'}, {out / 'matrix.svg'}",
    ])


def test_without_a_report_dir_nothing_is_written_or_printed(run, probe_tests, pytester, monkeypatch):
    summary = pytester.path.parent / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output(result)
    assert "custom-ca summary" not in output(result)
    assert not summary.exists() and not (pytester.path / "custom-ca-report").exists()


@pytest.mark.parametrize("option", ["--collect-only", "--fixtures"])
def test_a_run_that_runs_no_tests_writes_no_reports(run, probe_tests, pytester, option):
    result = run(option, "--custom-ca-report-dir", "out")
    assert result.ret == pytest.ExitCode.OK, output(result)
    assert "custom-ca summary" not in output(result) and not (pytester.path / "out").exists()


def test_github_step_summary_is_appended(run, probe_tests, pytester, monkeypatch):
    summary = pytester.path.parent / "step-summary.md"
    summary.write_text("# an earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run("--custom-ca-report-dir", "out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output(result)
    text = summary.read_text()
    assert text.startswith("# an earlier step\n## custom-ca conformance: failed (3 passed, 1 failed, 1 blocked)\n")
    assert "| **foo** | ✅ ok | ❌ ok (expected verify-fail) |" in text
    assert text.count("## custom-ca conformance") == 1
    assert (pytester.path / "out" / "summary.md").read_text() in text


def test_quiet_prints_only_the_matrix_and_the_totals(run, probe_tests):
    result = run("-q", "--custom-ca-report-dir", "out")
    text = output(result)
    section = text.split("custom-ca summary", 1)[1].splitlines()[1:]
    section = section[:next(i for i, line in enumerate(section) if line.startswith(("=", "FAILED", "SKIPPED")))]
    assert section == [
        "  client\\server  foo          bar",
        "  foo            ok           ok!",
        "  bar            verify-fail  -",
        "  connectivity  2 passed  1 failed  0 skipped  0 blocked",
        "  rbac          1 passed  0 failed  0 skipped  1 blocked",
        "  all           3 passed  1 failed  0 skipped  1 blocked",
    ], text


def test_colour_marks_the_mismatch_red(run, probe_tests):
    result = run("--color=yes", "--custom-ca-report-dir", "out")
    assert "\x1b[31m\x1b[1mok!" in output(result)
    assert "\x1b[32mverify-fail" in output(result)


def test_xdist_workers_records_reach_the_report(run, probe_tests, pytester):
    result = run("-n", "2", "--custom-ca-report-dir", "out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output(result)
    assert_clean(result)
    document = read_report(pytester.path / "out")
    assert len(document["tests"]) == 5
    assert {t["pair"] for t in document["tests"] if t["tier"] == "connectivity"} == {
        "foo-to-foo", "foo-to-bar", "bar-to-foo"}
    states = {(c["client"], c["server"]): c["state"] for c in document["matrix"]["cells"]}
    assert states == {("foo", "foo"): AS_EXPECTED, ("foo", "bar"): UNEXPECTED,
                      ("bar", "foo"): AS_EXPECTED, ("bar", "bar"): NOT_RUN}
    assert "custom-ca summary" in output(result)


def test_without_the_terminal_plugin_the_files_are_still_written(run, probe_tests, pytester):
    result = run("-p", "no:terminal", "--custom-ca-report-dir", "out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output(result)
    assert "Traceback" not in output(result)
    assert len(read_report(pytester.path / "out")["tests"]) == 5


def test_probe_fixture_and_session_facts_make_the_report(run, pytester):
    # The real `pair` parametrization and `probe` fixture over a fake mesh; the session's facts stubbed.
    pytester.makeconftest("""
        import pytest
        from custom_ca_conformance.model.outcomes import Classification, Outcome
        from custom_ca_conformance.probes.mesh import ProbeResult
        from custom_ca_conformance.plugin.session import MeshSession

        MeshSession.report_facts = lambda self: {
            "provider": "local", "versions": {"istio": "1.99.0", "cert-manager": "v9.9.9"},
            "phases": [{"name": "signers", "seconds": 1.5}, {"name": "istio", "seconds": 2.0}],
            "setup_failure": None, "evidence_dir": None}

        class FakeMesh:
            def probe_all(self, pairs):
                return {pair.id: ProbeResult(pair, Classification(
                    outcome := Outcome.OK if pair.same_signer else Outcome.CONNECTION_FAILURE,
                    f"{outcome.value} reason", "fake log")) for pair in pairs}

        @pytest.fixture(scope="session")
        def mesh():
            return FakeMesh()
        """)
    pytester.makepyfile(test_connectivity="""
        def test_mtls(pair, probe):
            probe(pair)
            probe(pair)  # each call is recorded; the result comes from the cache
        """)
    result = run("--custom-ca-report-dir", "out")
    assert result.ret == pytest.ExitCode.OK, output(result)
    assert_clean(result)
    document = read_report(pytester.path / "out")
    assert document["versions"] == {"istio": "1.99.0", "cert-manager": "v9.9.9"}
    assert [p["name"] for p in document["phases"]] == ["signers", "istio"]
    assert {len(t["probes"]) for t in document["tests"]} == {2}
    cross = [t for t in document["tests"] if t["expected"] == "tls-verify-failed"]
    assert len(cross) == 2 and {t["seen"] for t in cross} == {"connection-failure"}
    assert {t["evidence"] for t in document["tests"]} == {"fake log"}
    result.stdout.fnmatch_lines([
        "provider: local",
        "versions: istio 1.99.0, cert-manager v9.9.9",
        "setup phases: signers 1.5s, istio 2.0s (total 3.5s)",
        "  foo            ok*conn-fail!",
    ])


def test_what_was_checked_is_said_once_for_all_unexplained_failures(run, pytester):
    """Two failed tests without a named cause: the summary lists what was checked once, not per test."""
    pytester.makepyfile(test_unexplained=textwrap.dedent("""
        import pytest

        @pytest.mark.parametrize("n", [1, 2])
        def test_fails(request, n):
            request.node.user_properties.append(("custom_ca_checked", ["istiod: fine", "mTLS policy: fine"]))
            assert False
        """))
    result = run("--custom-ca-report-dir", "out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output(result)
    result.stdout.fnmatch_lines([
        "*= custom-ca summary =*",
        "custom-ca: none of the known causes shows in the evidence for 2 failed test(s); checked:",
        "  - istiod: fine",
        "  - mTLS policy: fine",
    ])
    assert output(result).count("  - istiod: fine") == 1, output(result)


def test_a_conftest_adds_to_report_json_through_the_hook(run, probe_tests, pytester):
    pytester.makeconftest("""
        def pytest_custom_ca_update_json(config, document):
            document["ci"] = {"job": "build-42", "tests": len(document["tests"])}
        """)
    result = run("--custom-ca-report-dir", "out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output(result)
    assert_clean(result)
    document = read_report(pytester.path / "out")  # validated
    assert document["ci"] == {"job": "build-42", "tests": 5}


def test_the_tier_is_the_tests_marker_and_a_test_without_one_shows(run, pytester):
    pytester.makepyfile(test_mixed=textwrap.dedent("""
        import pytest

        @pytest.mark.signer
        def test_signer():
            pass

        @pytest.mark.health
        def test_health():
            pass

        def test_unmarked():
            pass
        """))
    result = run("-n", "2", "--custom-ca-report-dir", "out")  # the markers are read where the items are
    assert result.ret == pytest.ExitCode.OK, output(result)
    tiers = {t["nodeid"].rpartition("::")[2]: t["tier"] for t in read_report(pytester.path / "out")["tests"]}
    assert tiers == {"test_signer": "signer_contract", "test_health": "health", "test_unmarked": "untiered"}
    result.stdout.fnmatch_lines(["  untiered  *1 passed*", "untiered: 1 test(s) carry none of the tier markers (*)"])


# --- the signer contract, for CA vendors ---------------------------------------------------------

SIGNERS = ("acme.example.com/team-a", "acme.example.com/team-b")


def contract_report() -> RunReport:
    """A -m signer run: two signers; team-b fails the chain test; ed25519 declared unsupported; one check for all."""
    from custom_ca_conformance.model.vocabulary import Feature, declared_gap

    collector = RecordCollector()

    def add(point: str, signer: str, key_kind: str, outcome: str, message: str = "") -> None:
        nodeid = f"conformance/test_signer_contract.py::{point}[{signer}{'-' + key_kind if key_kind else ''}]"
        properties = [tier("signer"), (records.CONTRACT_PROPERTY, {"signer": signer, "point": point,
                                                                   "key_kind": key_kind})]
        when = "setup" if outcome == "skipped" else "call"
        collector.add(nodeid, Phase(when, outcome, 0.1, message=message), properties)

    gap = declared_gap(Feature("ed25519"), "acme", "profile acme.yaml")
    for signer in SIGNERS:
        add("test_approved_istio_csr_is_issued", signer, "ecdsa", "passed")
        add("test_approved_istio_csr_is_issued", signer, "ed25519", "skipped", gap)
    add("test_chain_verifies_to_the_published_ca_bundle", SIGNERS[0], "", "passed")
    add("test_chain_verifies_to_the_published_ca_bundle", SIGNERS[1], "", "failed",
        "AssertionError: \n  expected: the chain verifies")
    add("test_csr_for_a_foreign_signer_is_ignored", "", "", "passed")
    facts = RunFacts.from_dict({"provider": "existing (staging)", "versions": {"cert-manager": "v1.21.2"}})
    return RunReport(collector.records(), facts, pair_specs(*TENANTS), exitstatus=1,
                     finished_at="2026-12-07 21:40 UTC")


def test_the_contract_table_has_a_row_per_point_and_key_kind_and_a_column_per_signer():
    table = tables.contract_table(contract_report().records)
    assert table.signers == SIGNERS
    assert set(table.points) == {"approved istio csr is issued (ecdsa)", "approved istio csr is issued (ed25519)",
                                 "chain verifies to the published ca bundle", "csr for a foreign signer is ignored"}
    state = {key: cell.state for key, cell in table.cells.items()}
    assert state[("approved istio csr is issued (ed25519)", SIGNERS[0])] == tables.GAP
    assert state[("chain verifies to the published ca bundle", SIGNERS[1])] == tables.FAIL
    assert state[("csr for a foreign signer is ignored", SIGNERS[1])] == tables.PASS  # one test, every signer
    assert table.cell("chain verifies to the published ca bundle", SIGNERS[1]).message == "AssertionError:"


def test_a_signer_run_shows_the_contract_table_and_not_an_empty_matrix():
    report = contract_report()
    text = terminal.plain_text(terminal.terminal_lines(report, colour=False))
    assert "matrix" not in text and "client\\server" not in text, text
    assert "signer contract (rows: contract point, columns: signer):" in text
    row = next(line for line in text.splitlines() if "approved istio csr is issued (ed25519)" in line)
    assert row.split()[-2:] == ["gap", "gap"], row
    assert f"  fail {SIGNERS[1]}: chain verifies to the published ca bundle (AssertionError:)" in text
    summary = markdown.render(report)
    assert summary.startswith("## custom-ca conformance: failed (")
    assert "### Matrix" not in summary and "### Signer contract" in summary
    assert ("| approved istio csr is issued (ed25519) | ➖ declared unsupported (profile) "
            "| ➖ declared unsupported (profile) |") in summary
    assert svg.render(report) is None  # no matrix.svg for a run that probed nothing


def test_the_contract_picture_heads_with_the_verdict_and_writes_each_state():
    root = ET.fromstring(svg.render_contract(contract_report()))
    assert root.find(f".//{SVG}text[@id='verdict']").text == "FAILED"
    assert root.find(f".//{SVG}text[@id='summary']").text == (
        "4 passed, 1 failed, 2 skipped · 2026-12-07 21:40 UTC")
    assert "provider: existing (staging)" in [t.text for t in root.iter(f"{SVG}text")]
    cells = {(r.get("data-point"), r.get("data-signer")): r.get("data-state")
             for r in root.iter(f"{SVG}rect") if r.get("class") == "cell"}
    assert len(cells) == 8 and cells[("chain verifies to the published ca bundle", SIGNERS[1])] == tables.FAIL
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts.count("declared unsupported (profile)") == 3  # two cells and the legend


def test_an_unexpected_matrix_cell_says_what_was_expected_in_visible_text():
    report = dataclasses.replace(sample_report(), finished_at="2026-12-07 21:40 UTC")
    root = ET.fromstring(svg.render(report))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "seen ok, expected verify-fail" in texts, texts
    assert root.find(f".//{SVG}text[@id='verdict']").text == "FAILED"
    assert root.find(f".//{SVG}text[@id='summary']").text == "3 passed, 1 failed, 1 blocked · 2026-12-07 21:40 UTC"
    assert "provider: kind" in texts
