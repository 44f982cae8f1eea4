"""The pure parts of custom_ca_conformance.kube and the CSR recorder's watch loop, against a fake API."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import threading
import time
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from custom_ca_conformance import kube
from custom_ca_conformance.model.errors import ProvisioningError
from custom_ca_conformance.model.evidence import CsrRecord
from custom_ca_conformance.model.pki import istio_style_csr, new_private_key
from custom_ca_conformance.model.pods import (
    container_env,
    injected_signer,
    sidecar_container,
)

FOO_CURL = "spiffe://cluster.local/ns/foo/sa/curl"


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    from tenacity import wait_fixed

    monkeypatch.setattr(kube.waits, "POLL_WAIT", wait_fixed(0.01))


def _request(spiffe_id: str = FOO_CURL) -> str:
    return base64.b64encode(istio_style_csr(spiffe_id, new_private_key())).decode()


def _csr(name: str = "csr-workload-abc", *, request: str | None = None, approved: bool = False, issued: bool = False,
         signer: str = "clusterissuers.cert-manager.io/foo", version: str = "1") -> dict:
    status: dict = {}
    if approved:
        status["conditions"] = [{"type": "Approved", "status": "True", "reason": "RAApproved",
                                 "message": f"CSR ({name}) for the certificate () is approved",
                                 "lastUpdateTime": "2026-08-30T10:00:00Z"}]
    if issued:
        status["certificate"] = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    return {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "resourceVersion": version},
        "spec": {"request": request if request is not None else _request(), "signerName": signer,
                 "username": "system:serviceaccount:istio-system:istiod", "expirationSeconds": 86400,
                 "usages": ["digital signature", "key encipherment", "server auth", "client auth"]},
        "status": status,
    }


# --- CSR events -> records ------------------------------------------------------------------


def test_a_csr_event_becomes_a_record_with_its_spiffe_id_signer_and_requester():
    record = kube.csr_record("MODIFIED", _csr(approved=True, issued=True))
    assert record == CsrRecord(
        event="MODIFIED", name="csr-workload-abc", signer_name="clusterissuers.cert-manager.io/foo",
        username="system:serviceaccount:istio-system:istiod",
        conditions=[{"type": "Approved", "status": "True", "reason": "RAApproved",
                     "message": "CSR (csr-workload-abc) for the certificate () is approved"}],
        issued=True, spiffe_ids=[FOO_CURL], expiration_seconds=86400,
    )
    assert record.has_condition("Approved")


def test_record_json_has_exactly_the_csr_record_fields():
    line = json.dumps(dataclasses.asdict(kube.csr_record("ADDED", _csr())))
    assert set(json.loads(line)) == {f.name for f in dataclasses.fields(CsrRecord)}
    assert CsrRecord(**json.loads(line)).spiffe_ids == [FOO_CURL]


def test_a_pending_csr_is_not_issued():
    record = kube.csr_record("ADDED", _csr())
    assert not record.issued and record.conditions == [] and not record.has_condition("Approved")


def test_spiffe_ids_ignore_other_sans_and_unparsable_requests():
    key = new_private_key()
    san = x509.SubjectAlternativeName([x509.DNSName("istiod.istio-system.svc"),
                                       x509.UniformResourceIdentifier("https://example.com")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).add_extension(san, False).sign(
        key, hashes.SHA256())
    from cryptography.hazmat.primitives.serialization import Encoding

    assert kube.csr_spiffe_ids(base64.b64encode(csr.public_bytes(Encoding.PEM)).decode()) == []
    assert kube.csr_spiffe_ids("bm90IGEgY3Ny") == []
    assert kube.csr_spiffe_ids("") == []


# --- exec status -----------------------------------------------------------------------------


def test_exec_status_success_is_exit_code_zero():
    assert kube.exit_code_from_status('{"metadata":{},"status":"Success"}') == 0


def test_exec_status_carries_the_process_exit_code():
    status = {"status": "Failure", "reason": "NonZeroExitCode", "message": "command terminated with non-zero exit code",
              "details": {"causes": [{"reason": "ExitCode", "message": "28"}]}}
    assert kube.exit_code_from_status(json.dumps(status)) == 28


def test_an_exec_failure_that_is_not_an_exit_is_an_error():
    status = {"status": "Failure", "message": 'container "curl" not found'}
    with pytest.raises(ProvisioningError, match='container "curl" not found'):
        kube.exit_code_from_status(json.dumps(status))
    with pytest.raises(ProvisioningError, match="without a status"):
        kube.exit_code_from_status("")


# --- pods and deployments ----------------------------------------------------------------------


def test_sidecar_counts_as_a_regular_or_native_sidecar_container():
    regular = {"spec": {"containers": [{"name": "curl"}, {"name": "istio-proxy"}]}}
    native = {"spec": {"containers": [{"name": "curl"}],
                       "initContainers": [{"name": "istio-init"}, {"name": "istio-proxy", "restartPolicy": "Always"}]}}
    plain_init = {"spec": {"containers": [{"name": "curl"}], "initContainers": [{"name": "istio-proxy"}]}}
    none = {"spec": {"containers": [{"name": "curl"}]}}
    assert sidecar_container(regular) == {"name": "istio-proxy"}
    assert sidecar_container(native) == {"name": "istio-proxy", "restartPolicy": "Always"}
    assert sidecar_container(plain_init) is None and sidecar_container(none) is None
    assert injected_signer(plain_init) is None, "an init container that exited is no sidecar"


def test_container_env_merges_as_the_kubelet_does():
    containers = [{"name": "discovery", "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {}}]},
                  {"name": "other", "env": [{"name": "A", "value": "2"}]}]
    assert container_env(containers) == {"A": "2", "B": ""}


@pytest.mark.parametrize(("status", "ready"), [
    ({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}, True),
    ({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}, False),
    ({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1}, False),
    ({}, False),
])
def test_deployment_ready_needs_the_current_generation_rolled_out_and_available(status, ready):
    deployment = {"metadata": {"generation": 2}, "spec": {"replicas": 1}, "status": status}
    assert kube.deployment_ready(deployment) is ready


def test_describe_pod_names_waiting_reasons():
    pod = {"metadata": {"name": "curl-1"}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "curl", "ready": False, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no"}}}]}}
    assert kube.describe_pod(pod) == "curl-1 Pending [curl waiting ImagePullBackOff no; curl not ready]"


def test_describe_conditions():
    assert kube.describe_conditions(None) == "no conditions"
    assert kube.describe_conditions([{"type": "Ready", "status": "False", "reason": "Pending", "message": "m"}]) == (
        "Ready=False (Pending: m)")


# --- errors and waits ------------------------------------------------------------------------


def test_transient_errors_are_throttling_server_and_connection_errors():
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import ProtocolError

    assert kube.is_transient(ApiException(status=503))
    assert kube.is_transient(ApiException(status=429))
    assert kube.is_transient(ProtocolError("reset"))
    assert not kube.is_transient(ApiException(status=404))
    assert not kube.is_transient(ApiException(status=422))
    assert not kube.is_transient(ValueError())


def test_api_error_message_reads_the_status_body():
    from kubernetes.client.exceptions import ApiException

    exc = ApiException(status=422, reason="Unprocessable Entity")
    exc.body = json.dumps({"kind": "Status", "message": 'spec.ports[0].port: Invalid value: 0'})
    assert kube.api_error_message(exc) == "HTTP 422: spec.ports[0].port: Invalid value: 0"


def test_wait_for_returns_the_first_truthy_value():
    answers = iter([None, False, [], "ready"])
    assert kube.wait_for(lambda: next(answers), timeout=20, expected="x", diagnose=lambda: ("", "")) == "ready"


def test_wait_for_timeout_says_expected_seen_and_where_to_look():
    with pytest.raises(ProvisioningError) as raised:
        kube.wait_for(lambda: None, timeout=0.3, expected="Secret cert-manager/foo-ca-selfsigned with key ca.crt",
                      diagnose=lambda: ("Secret not found", "events for cert-manager/foo-ca-selfsigned: none"))
    message = str(raised.value)
    assert "timed out after 0.3s" in message
    assert "expected: Secret cert-manager/foo-ca-selfsigned with key ca.crt" in message
    assert "seen:     Secret not found" in message
    assert "look at:  events for cert-manager/foo-ca-selfsigned: none" in message


def test_wait_for_does_not_retry_a_real_failure():
    calls = []

    def check():
        calls.append(1)
        raise PermissionError("forbidden")

    with pytest.raises(PermissionError):
        kube.wait_for(check, timeout=10, expected="x", diagnose=lambda: ("", ""))
    assert len(calls) == 1


def test_wait_for_retries_transient_api_errors():
    from kubernetes.client.exceptions import ApiException

    answers = iter([ApiException(status=503), "ok"])

    def check():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert kube.wait_for(check, timeout=20, expected="x", diagnose=lambda: ("", "")) == "ok"


# --- CSR recorder against a fake API -----------------------------------------------------------


class _FakeResponse:
    def __init__(self, events: list[dict]):
        self._payload = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        self.data = self._payload

    def stream(self, amt=None, decode_content=False):
        if self._payload:
            yield self._payload
        else:
            time.sleep(0.02)  # an idle watch until the server's timeout

    def close(self):
        pass

    def release_conn(self):
        pass


class _FakeCsrApi:
    """Serves a scripted list, then scripted watch responses, then idle watches."""

    def __init__(self, watches: list[list[dict]], relist: list[dict]):
        self._watches = list(watches)
        self._relist = relist
        self.watch_versions: list[str] = []
        self.lock = threading.Lock()

    def list_certificate_signing_request(self, watch=False, resource_version=None, _preload_content=True, **kwargs):
        with self.lock:
            if watch:
                self.watch_versions.append(resource_version)
                return _FakeResponse(self._watches.pop(0) if self._watches else [])
            if _preload_content:
                kubelet = SimpleNamespace(metadata=SimpleNamespace(name="csr-kubelet", resource_version="5"))
                return SimpleNamespace(items=[kubelet], metadata=SimpleNamespace(resource_version="10"))
            return _FakeResponse([])._replace_data({"metadata": {"resourceVersion": "50"}, "items": self._relist})


def _replace_data(self, document):
    self.data = json.dumps(document).encode()
    return self


_FakeResponse._replace_data = _replace_data


def test_recorder_records_workload_csr_events_and_relists_after_410(tmp_path, monkeypatch):
    kubelet = _csr("csr-kubelet", request=base64.b64encode(b"nope").decode(), signer="kubernetes.io/kubelet-serving",
                   version="11")
    first = [
        {"type": "ADDED", "object": _csr(version="12")},
        {"type": "ADDED", "object": kubelet},
        {"type": "MODIFIED", "object": _csr(approved=True, version="13")},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}},
    ]
    expired = [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}]
    # While unwatched, csr-workload-abc was issued and deleted and a bar CSR appeared.
    relisted = [_csr("csr-workload-bar", request=_request("spiffe://cluster.local/ns/bar/sa/curl"),
                     signer="clusterissuers.cert-manager.io/bar", approved=True, issued=True, version="40")]
    api = _FakeCsrApi([first, expired], relisted)
    recorder = kube.CsrRecorder(api_client=None, path=tmp_path / "csr.jsonl", watch_timeout_seconds=1)
    monkeypatch.setattr(recorder, "_api", lambda: api)
    recorder.start()
    try:
        done = recorder.wait_until(
            lambda rs: any(r.issued and "/ns/bar/" in r.spiffe_ids[0] for r in rs if r.spiffe_ids), timeout=10)
        kube.wait_for(lambda: len(api.watch_versions) >= 3, timeout=10, expected="a watch after the relist",
                      diagnose=lambda: (str(api.watch_versions), "fake API"))
    finally:
        recorder.stop()
    assert done, recorder.records()
    events = [(r.event, r.name) for r in recorder.records()]
    assert events == [("ADDED", "csr-workload-abc"), ("MODIFIED", "csr-workload-abc"),
                      ("ADDED", "csr-workload-bar"), ("DELETED", "csr-workload-abc")]
    assert api.watch_versions[:3] == ["10", "20", "50"]  # list, bookmark, relist
    lines = (tmp_path / "csr.jsonl").read_text().splitlines()
    assert [CsrRecord(**json.loads(line)) for line in lines] == recorder.records()


def test_recorder_reports_a_dead_watch(tmp_path, monkeypatch):
    forbidden = [{"type": "ERROR", "object": {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "no"}}]
    api = _FakeCsrApi([forbidden], [])
    recorder = kube.CsrRecorder(api_client=None, path=tmp_path / "csr.jsonl", watch_timeout_seconds=1)
    monkeypatch.setattr(recorder, "_api", lambda: api)
    recorder.start()
    try:
        with pytest.raises(ProvisioningError, match="the CSR watch stopped: HTTP 403: Forbidden: no"):
            recorder.wait_until(lambda records: False, timeout=10)
    finally:
        recorder.stop()


def test_recorder_wait_until_times_out_with_false(tmp_path, monkeypatch):
    api = _FakeCsrApi([], [])
    recorder = kube.CsrRecorder(api_client=None, path=tmp_path / "csr.jsonl", watch_timeout_seconds=1)
    monkeypatch.setattr(recorder, "_api", lambda: api)
    recorder.start()
    try:
        assert recorder.wait_until(lambda records: bool(records), timeout=0.3) is False
    finally:
        recorder.stop()


def test_a_watch_stops_every_wait_in_its_block_between_polls():
    calls = []

    def watch():
        calls.append(1)
        if len(calls) == 2:
            raise ProvisioningError("the signer never signs")

    with kube.watching(watch), pytest.raises(ProvisioningError, match="never signs"):
        kube.wait_for(lambda: None, timeout=60, expected="x", diagnose=lambda: ("", ""))
    assert len(calls) == 2
    assert kube.wait_for(lambda: "ready", timeout=5, expected="x", diagnose=lambda: ("", "")) == "ready"


def test_a_killed_processs_discovery_cache_is_removed_by_the_next_and_a_live_ones_stays(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from custom_ca_conformance.kube.apply import (
        DISCOVERY_DIR_PREFIX,
        remove_discovery_dirs_of_ended_processes,
    )

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.kill()
    killed.wait()
    left = tmp_path / f"{DISCOVERY_DIR_PREFIX}{killed.pid}-abc"
    live = tmp_path / f"{DISCOVERY_DIR_PREFIX}{os.getpid()}-def"
    for path in (left, live):
        path.mkdir()
        (path / "discovery-0123.json").write_text("{}")

    remove_discovery_dirs_of_ended_processes()

    assert not left.exists() and live.exists(), sorted(p.name for p in tmp_path.iterdir())
