"""A kept cluster's install, reused only when nothing it rests on changed (install.kept): the pure parts."""

from __future__ import annotations

import json

from custom_ca_conformance.install import kept
from custom_ca_conformance.model.run_record import CSR_LOG_FILE, RunRecord
from custom_ca_conformance.model.vocabulary import Stage


def _manifests(tmp_path, text: str):
    folder = tmp_path / "manifests"
    folder.mkdir(exist_ok=True)
    (folder / "50-workloads.yaml").write_text(text)
    return folder


def test_the_intent_changes_with_any_manifest_cert_manager_object_or_fact(tmp_path):
    base = kept.intent_fingerprint(_manifests(tmp_path, "a"), [{"kind": "Deployment"}], {"versions": {"istio": "1"}})
    assert base == kept.intent_fingerprint(_manifests(tmp_path, "a"), [{"kind": "Deployment"}],
                                           {"versions": {"istio": "1"}})
    assert base != kept.intent_fingerprint(_manifests(tmp_path, "b"), [{"kind": "Deployment"}],
                                           {"versions": {"istio": "1"}})
    assert base != kept.intent_fingerprint(_manifests(tmp_path, "a"), [{"kind": "Service"}],
                                           {"versions": {"istio": "1"}})
    assert base != kept.intent_fingerprint(_manifests(tmp_path, "a"), [{"kind": "Deployment"}],
                                           {"versions": {"istio": "2"}})


def test_the_first_difference_is_named_in_words():
    saved = {"Deployment bar/curl": "10", "pods bar/curl": "curl-1 ready=True restarts=0"}
    assert kept.first_difference(saved, dict(saved)) is None
    assert kept.first_difference(saved, {**saved, "pods bar/curl": "curl-2 ready=True restarts=0"}) == (
        "pods bar/curl: curl-1 ready=True restarts=0 then, curl-2 ready=True restarts=0 now")
    assert kept.first_difference(saved, {"pods bar/curl": saved["pods bar/curl"]}) == (
        "Deployment bar/curl: 10 then, not there now")


def test_a_saved_install_comes_back_with_its_csr_log_in_the_new_workdir(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    record = RunRecord(kubeconfig="kc", context=None, workdir=str(old), run_id="abc", stage=Stage.READY,
                       signer_roots={"foo": {"namespace": "cert-manager", "name": "foo-ca", "key": "ca.crt"}})
    (old / CSR_LOG_FILE).write_text('{"name": "csr-1"}\n')
    store = tmp_path / "kept"
    kept.save(store, kept.KeptInstall(record, "intent", {"x": "1"}))

    loaded = kept.load(store)
    new = tmp_path / "new"
    new.mkdir()
    run = RunRecord(kubeconfig="kc", context=None, workdir=str(new), run_id="new", manifests=str(new / "manifests"),
                    timings={"cluster_seconds": 1.0})
    reused = kept.reused_record(loaded, store, run, 0.25)

    assert (loaded.intent, loaded.cluster) == ("intent", {"x": "1"})
    assert reused.run_id == "abc" and reused.workdir == str(new) and reused.stage is Stage.READY
    assert reused.signer_roots == record.signer_roots and reused.timings == {"cluster_seconds": 1.0}
    assert (new / CSR_LOG_FILE).read_text() == '{"name": "csr-1"}\n'
    assert [step.name for step in reused.steps] == ["reusing the install kept by run abc"]


def test_a_saved_install_this_version_cannot_read_is_no_install(tmp_path):
    assert kept.load(tmp_path) is None
    (tmp_path / kept.RECORD_FILE).write_text(json.dumps({"record": {"unknown_field": 1}, "intent": "i",
                                                         "cluster": {}}))
    assert kept.load(tmp_path) is None
