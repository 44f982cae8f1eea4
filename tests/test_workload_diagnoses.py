"""Workload containers that do not run, from Pods as the API returns them (plain dicts, camelCase)."""

from __future__ import annotations

import dataclasses

from custom_ca_conformance.evidence import diagnoses
from custom_ca_conformance.evidence.diagnoses import blocking, checked, diagnose
from custom_ca_conformance.model.evidence import Evidence
from custom_ca_conformance.model.pods import workload_pod_health
from custom_ca_conformance.model.topology import default_topology

TOPOLOGY = default_topology()
NOW = 1_796_230_900.0


def _status(name: str, *, ready=True, restarts=0, waiting=None, message="", last=None, code=None) -> dict:
    state = {"waiting": {"reason": waiting, "message": message}} if waiting else {"running": {"startedAt": "2026-12-07T16:00:00Z"}}
    last_state = {"terminated": {"reason": last, "exitCode": code}} if last or code is not None else {}
    return {"name": name, "ready": ready, "restartCount": restarts, "state": state, "lastState": last_state,
            "image": f"{name}:pinned", "imageID": "", "started": ready}


def _pod(namespace: str, workload: str, *containers: dict, init: tuple[dict, ...] = ()) -> dict:
    return {"metadata": {"name": f"{workload}-5d8f7c9b6-x2x7q", "namespace": namespace, "labels": {"app": workload}},
            "status": {"phase": "Running", "initContainerStatuses": list(init),
                       "containerStatuses": list(containers or (_status(workload), _status("istio-proxy")))}}


def _evidence(*troubled) -> Evidence:
    """Every workload's Pod running, except those of ``troubled`` (WorkloadPodHealth) in their place."""
    replaced = {(h.namespace, h.workload) for h in troubled}
    healthy = [workload_pod_health(_pod(w.namespace, w.name), w.name)
               for w in TOPOLOGY.workloads if (w.namespace, w.name) not in replaced]
    return Evidence(now=NOW, workload_health=(*healthy, *troubled))


def _only(found, kind: str):
    matching = [d for d in found if d.kind == kind]
    assert len(matching) == 1, f"expected one {kind}, seen {[(d.kind, d.subject) for d in found]}"
    return matching[0]


def test_running_containers_name_nothing():
    found = diagnose(TOPOLOGY, _evidence())
    assert found == [], f"expected no diagnosis for running workloads, seen {[(d.kind, d.subject) for d in found]}"


def test_a_crash_looping_sidecar_is_named_with_its_previous_lines_and_stops_the_wait():
    pod = _pod("bar", "httpbin", _status("httpbin"),
               _status("istio-proxy", ready=False, restarts=4, waiting="CrashLoopBackOff",
                       message="back-off 40s restarting failed container=istio-proxy", last="Error", code=255))
    health = workload_pod_health(pod, "httpbin")
    proxy = dataclasses.replace(health.containers[1], previous_log=(
        "2026-12-07T16:00:01Z\tinfo\tEnvoy proxy is NOT ready: config not received from XDS server (is Istiod running?)",
        "2026-12-07T16:00:02Z\terror\tfailed to start envoy: exit status 255"))
    evidence = _evidence(dataclasses.replace(
        health, containers=(health.containers[0], proxy),
        warnings=("BackOff: Back-off restarting failed container istio-proxy in pod httpbin-5d8f7c9b6-x2x7q (x7)",)))
    found = diagnose(TOPOLOGY, evidence)
    crashed = _only(found, diagnoses.KIND_WORKLOAD_CONTAINER_FAILING)
    assert crashed.subject == "bar/httpbin", crashed.subject
    assert crashed.cause == ("the sidecar (istio-proxy) of bar/httpbin restarted 4 times, now CrashLoopBackOff, "
                             "its last run ended Error (exit code 255): failed to start envoy: exit status 255"), crashed.cause
    assert "2026-12-07T16:00:02Z\terror\tfailed to start envoy: exit status 255" in crashed.evidence, crashed.evidence
    assert any(line.startswith("BackOff: Back-off restarting") for line in crashed.evidence), crashed.evidence
    assert "logs httpbin-5d8f7c9b6-x2x7q -c istio-proxy --previous" in crashed.look_at, crashed.look_at
    assert blocking(found) == crashed


def test_a_container_that_restarted_once_is_named_but_does_not_stop_the_wait():
    pod = _pod("foo", "curl", _status("curl"), _status("istio-proxy", restarts=1, last="Error", code=1))
    found = diagnose(TOPOLOGY, _evidence(workload_pod_health(pod, "curl")))
    restarted = _only(found, diagnoses.KIND_WORKLOAD_CONTAINER_RESTARTED)
    assert restarted.cause == ("the sidecar (istio-proxy) of foo/curl restarted once, "
                               "its last run ended Error (exit code 1)"), restarted.cause
    assert blocking(found) is None, blocking(found)


def test_an_image_the_node_may_not_pull_is_named_at_once():
    message = 'Container image "docker.io/mccutchen/go-httpbin:absent" is not present with pull policy of Never'
    pod = _pod("foo", "httpbin", _status("httpbin", ready=False, waiting="ErrImageNeverPull", message=message),
               _status("istio-proxy"))
    found = diagnose(TOPOLOGY, _evidence(workload_pod_health(pod, "httpbin")))
    failing = _only(found, diagnoses.KIND_WORKLOAD_CONTAINER_FAILING)
    assert failing.cause == f"container httpbin of foo/httpbin cannot start: ErrImageNeverPull ({message})", failing.cause
    assert "image of container httpbin" in failing.fix, failing.fix
    assert blocking(found) == failing


def test_a_native_sidecar_is_read_from_the_init_containers():
    pod = _pod("bar", "curl", _status("curl"),
               init=(_status("istio-proxy", ready=False, restarts=3, waiting="CrashLoopBackOff", last="Error", code=2),))
    found = diagnose(TOPOLOGY, _evidence(workload_pod_health(pod, "curl")))
    assert _only(found, diagnoses.KIND_WORKLOAD_CONTAINER_FAILING).subject == "bar/curl"


def test_what_was_checked_counts_the_workload_containers():
    lines = checked(TOPOLOGY, _evidence())
    assert "workload containers: 4 Pods, none restarted or failing to start" in lines, lines


def test_a_sidecar_that_exits_for_want_of_inotify_instances_names_the_node_setting():
    """pilot-agent's own lines (tenant21 of a 30-tenant run on a node with Linux's default 128 instances)."""
    pod = _pod("bar", "httpbin", _status("httpbin"),
               _status("istio-proxy", ready=False, restarts=3, waiting="CrashLoopBackOff", last="Error", code=255))
    health = workload_pod_health(pod, "httpbin")
    log = ("2026-12-07T16:31:42.372187Z\tinfo\tStarting default Istio SDS Server",
           "2026-12-07T16:31:42.372398Z\tinfo\tOpening status port 15020",
           "Error: failed to start default Istio SDS server: failed to start workload secret manager couldn't "
           "initialize inotify: too many open files",
           "2026-12-07T16:31:42.372706Z\terror\tfailed to start default Istio SDS server: failed to start workload "
           "secret manager couldn't initialize inotify: too many open files")
    proxy = dataclasses.replace(health.containers[1], previous_log=log)
    found = diagnose(TOPOLOGY, _evidence(dataclasses.replace(health, containers=(health.containers[0], proxy))))
    crashed = _only(found, diagnoses.KIND_WORKLOAD_CONTAINER_FAILING)
    assert crashed.cause.endswith(": failed to start default Istio SDS server: failed to start workload secret "
                                  "manager couldn't initialize inotify: too many open files"), crashed.cause
    assert crashed.evidence[1:3] == log[2:], crashed.evidence
    assert "sysctl -w fs.inotify.max_user_instances=1024" in crashed.fix, crashed.fix
