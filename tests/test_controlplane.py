"""Self-tests for custom_ca_conformance.localplane: process handling (no binaries) and the real control plane."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from custom_ca_conformance.localplane import toolchain
from custom_ca_conformance.localplane.controlplane import ControlPlaneError, attach_control_plane, start_control_plane
from custom_ca_conformance.localplane.processes import ProcessExitedError, ProcessGroup, free_port, port_is_free, stop_from_pid_file

REPO_ROOT = Path(__file__).resolve().parent.parent
# Target from the brief is < 10 s; the bound leaves room for slow CI machines.
STARTUP_BOUND_SECONDS = 30


def _pid_exists(pid: int) -> bool:
    """True while ``pid`` names a process that is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _trap_term(name: str, record: Path) -> list[str]:
    return ["sh", "-c", f'trap "echo {name} >> {record}; exit 0" TERM; while :; do sleep 0.05; done']


# --- processes ----------------------------------------------------------------------------


def test_free_port_can_be_bound():
    assert port_is_free(free_port())


def test_stop_terminates_in_reverse_start_order(tmp_path):
    record = tmp_path / "terminated"
    group = ProcessGroup(tmp_path / "logs")
    first = group.start("first", _trap_term("first", record))
    second = group.start("second", _trap_term("second", record))
    time.sleep(0.2)  # let both shells install their trap

    group.stop()

    assert record.read_text().split() == ["second", "first"]
    assert not _pid_exists(first.pid) and not _pid_exists(second.pid)


def test_process_ignoring_sigterm_is_killed(tmp_path):
    group = ProcessGroup(tmp_path / "logs")
    stubborn = group.start("stubborn", ["sh", "-c", 'trap "" TERM; sleep 30'])
    time.sleep(0.1)

    group.stop(timeout=0.5)

    assert not _pid_exists(stubborn.pid)


def test_early_exit_is_reported_with_exit_code_and_log_tail(tmp_path):
    group = ProcessGroup(tmp_path / "logs")
    group.start("crasher", ["sh", "-c", "echo cannot bind port; exit 3"])
    group["crasher"].wait(timeout=5)

    with pytest.raises(ProcessExitedError) as failure:
        group.check_running()

    message = str(failure.value)
    assert "crasher exited with code 3" in message
    assert str(tmp_path / "logs" / "crasher.log") in message
    assert "cannot bind port" in message
    group.stop()


def test_another_process_stops_the_group_through_the_pid_file(tmp_path):
    pid_file = tmp_path / "pids.json"
    group = ProcessGroup(tmp_path / "logs", pid_file=pid_file)
    sleeper = group.start("sleeper", ["sleep", "30"])

    subprocess.run(
        [sys.executable, "-c",
         f"from custom_ca_conformance.localplane.processes import stop_from_pid_file; stop_from_pid_file({str(pid_file)!r})"],
        cwd=REPO_ROOT, check=True, timeout=30,
    )

    assert group["sleeper"].wait(timeout=5) is not None
    assert not _pid_exists(sleeper.pid)
    assert not pid_file.exists()


def test_recycled_pid_is_never_signalled(tmp_path):
    pid_file = tmp_path / "pids.json"
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        ProcessGroup(tmp_path / "logs", pid_file=pid_file).save()  # empty group: no file
        pid_file.write_text(
            '{"version": 1, "logs_dir": "%s", "processes": [{"name": "old", "pid": %d, "argv": ["sleep"],'
            ' "log_path": "x", "start_time": "1"}]}' % (tmp_path, bystander.pid)
        )
        stop_from_pid_file(pid_file, timeout=0.5)
        assert bystander.poll() is None, "a pid whose start time differs from the record was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_apiserver_that_exits_at_start_is_reported_and_nothing_is_left(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "etcd").write_text("#!/bin/sh\nexec sleep 30\n")
    (fake / "kube-apiserver").write_text("#!/bin/sh\necho 'Error: unknown flag: --frobnicate'\nexit 1\n")
    for binary in fake.iterdir():
        binary.chmod(0o755)
    binaries = SimpleNamespace(etcd=fake / "etcd", kube_apiserver=fake / "kube-apiserver")

    with pytest.raises(ControlPlaneError) as failure:
        start_control_plane(binaries, tmp_path / "plane", progress=lambda line: None)

    message = str(failure.value)
    assert "kube-apiserver exited with code 1" in message and "unknown flag: --frobnicate" in message
    assert str(tmp_path / "plane" / "logs" / "kube-apiserver.log") in message
    assert not (tmp_path / "plane" / "pids.json").exists()


# --- the real control plane ----------------------------------------------------------------


def test_apiserver_reports_the_pinned_version(control_plane):
    versions = control_plane.versions()

    assert versions["kube-apiserver"] == toolchain.PINS.kubernetes_version
    assert versions["etcd"].startswith("3.")


def test_istio_ca_token_passes_token_review_with_that_audience(control_plane):
    token = control_plane.service_account_token("tokens", "workload", audiences=["istio-ca"])

    with control_plane.api_client() as api:
        authentication = client.AuthenticationV1Api(api)
        review = authentication.create_token_review(client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=["istio-ca"])))
        without_audience = authentication.create_token_review(client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token)))

    assert review.status.authenticated, review.status.error
    assert review.status.user.username == "system:serviceaccount:tokens:workload"
    assert review.status.audiences == ["istio-ca"]
    # Without spec.audiences the API audiences (the issuer) apply, which the token lacks.
    assert not without_audience.status.authenticated


def test_token_kubeconfig_authenticates_as_the_service_account(control_plane, tmp_path):
    token = control_plane.service_account_token("tokens", "kubeconfig-user", audiences=[])
    kubeconfig = control_plane.kubeconfig_for_token(token, tmp_path / "token.kubeconfig")

    from kubernetes import config

    with config.new_client_from_config(config_file=str(kubeconfig)) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview())

    assert review.status.user_info.username == "system:serviceaccount:tokens:kubeconfig-user"


def test_pod_is_admitted_only_once_its_service_account_exists(control_plane):
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(generate_name="admission-"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="example.invalid/none")]),
    )
    with control_plane.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="no-default-sa")))
        with pytest.raises(ApiException) as rejected:
            core.create_namespaced_pod("no-default-sa", pod)
        control_plane.ensure_namespace("with-default-sa")
        admitted = core.create_namespaced_pod("with-default-sa", pod)

    assert rejected.value.status == 403
    assert 'serviceaccount "default" not found' in json.loads(rejected.value.body)["message"]
    assert any(v.name.startswith("kube-api-access-") for v in admitted.spec.volumes)


def test_kept_control_plane_can_be_attached(control_plane):
    attached = attach_control_plane(control_plane.workdir)

    assert attached is not None
    assert attached.server == control_plane.server
    assert attached.processes.pids == control_plane.processes.pids


def test_start_is_fast_and_stop_leaves_no_process_and_frees_ports(control_plane_toolchain, tmp_path):
    plane = start_control_plane(control_plane_toolchain, tmp_path, progress=lambda line: None)
    pids = list(plane.processes.pids.values())
    ports = [urlsplit(plane.server).port, urlsplit(plane.etcd_url).port]
    print(f"control plane ready in {plane.startup_seconds:.2f}s")

    plane.stop()

    assert plane.startup_seconds < STARTUP_BOUND_SECONDS
    assert [pid for pid in pids if _pid_exists(pid)] == []
    assert all(port_is_free(port) for port in ports), f"ports still bound after stop: {ports}"
    assert not (tmp_path / "pids.json").exists()
    assert attach_control_plane(tmp_path) is None


# --- PKI and flags for a node (no binaries) ------------------------------------------------------


def test_pki_keeps_both_ca_keys_and_issues_the_apiservers_kubelet_client_certificate(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from custom_ca_conformance.localplane.controlplane_config import write_pki
    from custom_ca_conformance.model import certificates

    files = write_pki(tmp_path, extra_ips=["198.18.0.1"])
    serving = x509.load_pem_x509_certificate(files.serving_cert.read_bytes())
    kubelet_client = x509.load_pem_x509_certificate(files.kubelet_client_cert.read_bytes())
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert "198.18.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert "198.19.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert certificates.same_public_key(files.serving_ca().key.public_key(), files.serving_ca().cert.public_key())
    assert certificates.same_public_key(files.client_ca().key.public_key(), files.client_ca().cert.public_key())
    assert kubelet_client.issuer == files.client_ca().cert.subject
    assert kubelet_client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert files.ca_key.stat().st_mode & 0o077 == 0 and files.client_ca_key.stat().st_mode & 0o077 == 0


def test_apiserver_bound_to_a_node_address_advertises_it_as_the_kubernetes_endpoint(tmp_path):
    from custom_ca_conformance.localplane.controlplane_config import PkiFiles, apiserver_argv

    files = PkiFiles.in_dir(tmp_path)
    on_node = apiserver_argv(Path("kube-apiserver"), files, "http://127.0.0.1:1", "https://198.18.0.1:6443", tmp_path)
    on_loopback = apiserver_argv(Path("kube-apiserver"), files, "http://127.0.0.1:1", "https://127.0.0.1:6443",
                                 tmp_path)

    assert {"--bind-address=198.18.0.1", "--advertise-address=198.18.0.1",
            "--endpoint-reconciler-type=lease"} <= set(on_node)
    assert {"--bind-address=127.0.0.1", "--endpoint-reconciler-type=none"} <= set(on_loopback)
    assert "--service-cluster-ip-range=198.19.0.0/24" in on_node
    assert f"--kubelet-client-certificate={files.kubelet_client_cert}" in on_node
    assert "--authorization-mode=Node,RBAC" in on_node
