"""Self-tests for the local node (custom_ca_conformance.localplane.node and its config modules).

The first part renders configuration and parses host state without a cluster. The second
starts a real node (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
containerd + runc, kubelet, kube-proxy, CNI, CoreDNS), with the pause and CoreDNS images of
``custom_ca_conformance.localplane.images``, runs pods from a locally imported image, and checks exec,
logs, DNS, a ClusterIP Service, the machine lock and that stopping leaves nothing. It needs
root and the built toolchain: it is skipped (with the reason) without them, and fails when
the toolchain is built but a node binary is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from custom_ca_conformance.localplane import cni, containerd, coredns, host, images, iptables, kubelet, node
from custom_ca_conformance.localplane.images import oci

# One node per machine, and the tests below share one: keep them on one xdist worker, in order.
pytestmark = pytest.mark.xdist_group("node")

PAUSE_REF = "docker.io/custom-ca-conformance/pause:3.10"
COREDNS_REF = "docker.io/custom-ca-conformance/coredns:1.15.0"

# --- pure: rendering -------------------------------------------------------------------------


def test_containerd_config_has_the_settings_this_machine_needs(tmp_path):
    paths = containerd.ContainerdPaths(tmp_path / "containerd")
    text = containerd.config_toml(paths, sandbox_image=PAUSE_REF,
                                  cni_bin_dir=tmp_path / "bin", cni_conf_dir=tmp_path / "conf")

    assert "restrict_oom_score_adj = true" in text
    assert "SystemdCgroup = false" in text
    assert 'snapshotter = "overlayfs"' in text
    assert f'sandbox_image = "{PAUSE_REF}"' in text
    assert "netns_mounts_under_state_dir = true" in text
    assert f'address = "{paths.socket}"' in text
    assert f'Root = "{paths.runc_root}"' in text
    assert '"io.containerd.internal.v1.opt"' in text  # would create /opt/containerd


def test_containerd_config_is_valid_toml(tmp_path):
    import tomllib

    paths = containerd.ContainerdPaths(tmp_path)
    parsed = tomllib.loads(containerd.config_toml(paths, sandbox_image="x/pause:1", cni_bin_dir=tmp_path,
                                                  cni_conf_dir=tmp_path))
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]

    assert parsed["version"] == 2 and parsed["root"] == str(paths.root) and parsed["state"] == str(paths.state)
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"] == {"bin_dir": str(tmp_path), "conf_dir": str(tmp_path), "max_conf_num": 1}


def test_kubelet_config_has_the_settings_this_machine_needs(tmp_path):
    files = kubelet.KubeletFiles(tmp_path)
    config = kubelet.kubelet_config(files, node_ip="198.18.0.1", client_ca=tmp_path / "ca.crt",
                                    runtime_endpoint="unix:///x.sock", cluster_dns="198.19.0.10",
                                    pod_cidr="198.18.0.0/24", healthz_port=1234)

    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failSwapOn"] is False
    assert config["oomScoreAdj"] == 0
    assert config["resolvConf"] == str(files.resolv_conf)  # not the host's resolvers
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["imageGCHighThresholdPercent"] == 100  # imported images cannot be pulled back
    assert yaml.safe_load(kubelet.dump(config)) == config


def test_kube_proxy_config_leaves_host_sysctls_alone():
    config = kubelet.kube_proxy_config(kubeconfig=Path("/k"), node_name="n", cluster_cidr=cni.POD_CIDR,
                                       routed_range=cni.ROUTED_RANGE, healthz_port=1, metrics_port=2)

    assert config["mode"] == "iptables"
    assert config["conntrack"]["maxPerCore"] == 0 and config["conntrack"]["min"] == 0
    assert config["iptables"]["localhostNodePorts"] is False  # no route_localnet
    assert config["oomScoreAdj"] == 0
    assert config["nodePortAddresses"] == ["198.18.0.0/15"]


def test_cni_chain_has_firewall_and_routes_only_the_benchmarking_range():
    conflist = cni.conflist("/ipam")
    types = [plugin["type"] for plugin in conflist["plugins"]]
    ipam = conflist["plugins"][0]["ipam"]

    assert types == ["bridge", "portmap", "firewall"]
    assert ipam["type"] == "host-local" and ipam["dataDir"] == "/ipam"
    assert ipam["routes"] == [{"dst": "198.18.0.0/15"}]  # no default route out of a pod
    assert conflist["plugins"][0]["ipMasq"] is False


def test_all_addresses_are_in_the_benchmarking_range():
    import ipaddress

    from custom_ca_conformance.localplane.controlplane_config import SERVICE_CLUSTER_IP_RANGE, SERVICE_IP

    allowed = ipaddress.ip_network("198.18.0.0/15")
    networks = [cni.POD_CIDR, SERVICE_CLUSTER_IP_RANGE, cni.ROUTED_RANGE]
    addresses = [cni.GATEWAY, SERVICE_IP, node.DNS_SERVICE_IP]

    assert all(ipaddress.ip_network(n).subnet_of(allowed) for n in networks)
    assert all(ipaddress.ip_address(a) in allowed for a in addresses)
    assert ipaddress.ip_address(node.DNS_SERVICE_IP) in ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE)


def test_corefile_forwards_nothing():
    corefile = coredns.corefile()

    assert "kubernetes cluster.local in-addr.arpa ip6.arpa" in corefile
    assert "forward" not in corefile and "/etc/resolv.conf" not in corefile


def test_coredns_manifests_use_the_given_image_and_fixed_cluster_ip():
    objects = coredns.manifests("198.19.0.10", image=COREDNS_REF)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    service = next(o for o in objects if o["kind"] == "Service")
    container = deployment["spec"]["template"]["spec"]["containers"][0]

    assert container["image"] == COREDNS_REF
    assert container["imagePullPolicy"] == "Never"
    assert service["spec"]["clusterIP"] == "198.19.0.10"
    assert {(p["port"], p["protocol"]) for p in service["spec"]["ports"]} >= {(53, "UDP"), (53, "TCP")}


# --- pure: host state ----------------------------------------------------------------------------


def test_iptables_cleanup_removes_jumps_then_our_chains_only():
    saved = "\n".join([
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":KUBE-SERVICES - [0:0]",
        ":CNI-HOSTPORT-DNAT - [0:0]",
        ":DOCKER - [0:0]",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        "-A OUTPUT -j DOCKER",
        "-A KUBE-SERVICES -j RETURN",
        "COMMIT",
    ])

    commands = iptables.cleanup_commands(saved)

    assert commands == [
        ["-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
        ["-D", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"],
        ["-F", "KUBE-SERVICES"], ["-F", "CNI-HOSTPORT-DNAT"],
        ["-X", "KUBE-SERVICES"], ["-X", "CNI-HOSTPORT-DNAT"],
    ]


REMOVE_IN_OWN_NETNS = """
import subprocess, sys
from custom_ca_conformance.localplane import iptables
for rule in (["-N", "KUBE-SERVICES"], ["-N", "KUBE-SVC-X"], ["-N", "CNI-HOSTPORT-DNAT"], ["-N", "DOCKER"],
             ["-A", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
             ["-A", "KUBE-SERVICES", "-j", "KUBE-SVC-X"], ["-A", "OUTPUT", "-j", "CNI-HOSTPORT-DNAT"],
             ["-A", "OUTPUT", "-j", "DOCKER"]):
    subprocess.run(["iptables", "-w", "5", "-t", "nat", *rule], check=True)
print("restored in one go", iptables._restore("iptables", "nat", iptables.cleanup_commands(iptables._save("iptables", "nat"))))
print("problems", iptables.remove_iptables())
print(subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout)
"""


def test_iptables_removal_leaves_only_what_is_not_ours_in_a_network_namespace_of_its_own():
    """The real iptables tools, in a fresh network namespace (never the host's rules): one restore per table."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("iptables-restore") is None:
        pytest.skip("needs root, unshare and iptables-restore")
    result = subprocess.run(["unshare", "--net", sys.executable, "-c", REMOVE_IN_OWN_NETNS],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "restored in one go True" in result.stdout and "problems []" in result.stdout, result.stdout
    assert "KUBE-" not in result.stdout and "CNI-" not in result.stdout, result.stdout
    assert ":DOCKER" in result.stdout and "-A OUTPUT -j DOCKER" in result.stdout, result.stdout


def test_mounts_under_roots_deepest_first():
    mountinfo = "\n".join([
        "22 1 8:1 / / rw - ext4 /dev/vda rw",
        "30 22 0:40 / /w/node/containerd/state/x/rootfs rw - overlay overlay rw",
        "31 30 0:41 / /w/node/containerd/state/x/rootfs/dev/shm rw - tmpfs shm rw",
        "32 22 0:42 / /w/nodes-other rw - tmpfs t rw",
        "33 22 0:43 / /w/node/kubelet/root/pods/u/volumes/v rw - tmpfs t rw",
    ])

    points = host.mounts_under(["/w/node"], mountinfo)

    assert points.index("/w/node/containerd/state/x/rootfs/dev/shm") < points.index("/w/node/containerd/state/x/rootfs")
    assert set(points) == {"/w/node/containerd/state/x/rootfs/dev/shm", "/w/node/containerd/state/x/rootfs",
                           "/w/node/kubelet/root/pods/u/volumes/v"}


def test_missing_packages_are_those_without_their_command():
    present = set(host.HOST_PACKAGES.values()) - {"runc", "conntrack"}

    missing = host.missing_packages(lambda command: f"/usr/bin/{command}" if command in present else None)

    assert missing == ["runc", "conntrack"]


def test_dns_answer_parsing():
    # Response to "a.b" A: header, question, one answer with a compression pointer to the question.
    question = b"\x01a\x01b\x00" + b"\x00\x01\x00\x01"
    answer = b"\xc0\x0c" + b"\x00\x01\x00\x01" + b"\x00\x00\x00\x1e" + b"\x00\x04" + bytes([198, 19, 0, 1])
    response = b"\x43\x43\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer

    assert node.parse_a_records(response) == ["198.19.0.1"]


def test_missing_binaries_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv(node.NODE_BIN_ENV, raising=False)
    toolchain = type("T", (), {"bin_dir": tmp_path})()

    with pytest.raises(node.NodeError) as failure:
        node.find_node_binaries(toolchain)

    assert "kubelet" in str(failure.value) and "kube-proxy" in str(failure.value) and "firewall" in str(failure.value)
    assert str(tmp_path) in str(failure.value)
    # pause and CoreDNS come as images (custom_ca_conformance.localplane.images), not as node binaries.
    assert "pause" not in str(failure.value) and "coredns" not in str(failure.value)


def _archive(tmp_path: Path, ref: str) -> Path:
    layer = oci.write_layer([oci.FileEntry("hello", data=b"hi\n")], tmp_path / f"{ref.rsplit(':', 1)[1]}.layer.tar")
    return oci.write_oci_archive(ref, [layer], oci.ImageConfig(), tmp_path / f"{ref.rsplit(':', 1)[1]}.oci.tar").archive


def test_start_refuses_images_without_the_sandbox_and_coredns_before_starting_anything(tmp_path):
    binaries = type("B", (), {})()  # never used: the check comes first
    workdir = tmp_path / "wd"
    other = _archive(tmp_path, "docker.io/custom-ca-conformance/other:1")
    pause = _archive(tmp_path, PAUSE_REF)

    with pytest.raises(node.NodeError) as failure:
        node.start_node(None, workdir, progress=lambda line: None, binaries=binaries, images=[other, pause],
                        sandbox_image=PAUSE_REF, coredns_image=COREDNS_REF)

    message = str(failure.value)
    assert COREDNS_REF in message and PAUSE_REF not in message.split(", saw")[0]
    assert "docker.io/custom-ca-conformance/other:1" in message
    assert not workdir.exists() and workdir.resolve() not in node._LOCKS


# --- the real node ---------------------------------------------------------------------------------

PROBE_IMAGE = "docker.io/library/ccc-probe:1"
PROBE_SOURCE = r'''
// probe: a tiny test workload. "serve ADDR" answers HTTP; "dns NAME" resolves with the
// pod's resolv.conf; "get URL" fetches; "echo WORDS" prints.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	arg := ""
	if len(os.Args) > 2 {
		arg = os.Args[2]
	}
	switch os.Args[1] {
	case "serve":
		fmt.Println("serving on", arg)
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			host, _ := os.Hostname()
			fmt.Fprintf(w, "hello from %s path %s\n", host, r.URL.Path)
		})
		if err := http.ListenAndServe(arg, nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "dns":
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		addrs, err := (&net.Resolver{PreferGo: true}).LookupHost(ctx, arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(strings.Join(addrs, " "))
	case "get":
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Printf("%d %s", resp.StatusCode, body)
	case "echo":
		fmt.Println(strings.Join(os.Args[2:], " "))
	default:
		os.Exit(2)
	}
}
'''


def _node_toolchain(binaries):
    from custom_ca_conformance.localplane import toolchain

    try:
        node.find_node_binaries(binaries)
    except node.NodeError as exc:
        if toolchain.cached_toolchain() is not None:
            pytest.fail(f"the toolchain is built, yet: {exc}")
        pytest.skip(f"node binaries are not built: {exc}")
    return binaries


@pytest.fixture(scope="module")
def node_images():
    """The node's pause and CoreDNS images, from the project's image package (cached after the first build)."""
    return images.build_images(("pause", "coredns"), progress=lambda line: None)


def _image_arguments(node_images) -> dict:
    return {"sandbox_image": node_images["pause"].ref, "coredns_image": node_images["coredns"].ref}


@pytest.fixture(scope="module")
def probe_archive(tmp_path_factory):
    if shutil.which("go") is None:
        pytest.skip("go is needed to build the probe image")
    source = tmp_path_factory.mktemp("probe-src")
    (source / "main.go").write_text(PROBE_SOURCE)
    (source / "go.mod").write_text("module probe\n\ngo 1.26\n")
    env = dict(os.environ, CGO_ENABLED="0", GOWORK="off", GOFLAGS="-mod=mod")
    subprocess.run(["go", "build", "-ldflags=-s -w", "-o", "probe", "."], cwd=source, env=env, check=True,
                   capture_output=True, timeout=300)
    layer = oci.write_layer([oci.FileEntry("probe", mode=0o755, source=source / "probe")], source / "layer.tar")
    return oci.write_oci_archive(PROBE_IMAGE, [layer], oci.ImageConfig(entrypoint=("/probe",)),
                                 source / "probe.oci.tar").archive


@pytest.fixture(scope="module")
def node_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("node")


@pytest.fixture(scope="module")
def running_node(node_workdir, probe_archive, node_images, control_plane_toolchain):
    if os.geteuid() != 0:
        pytest.skip("the node needs root (network namespaces, iptables, mounts)")
    toolchain = _node_toolchain(control_plane_toolchain)
    archives = [probe_archive] + [image.archive for image in node_images.values()]
    started = node.start_node(toolchain, node_workdir, progress=lambda line: None, images=archives,
                              **_image_arguments(node_images))
    print(f"node timings: {started.timings}; RSS: {started.rss_bytes()}")
    yield started
    started.stop()


def _pod(name: str, args: list[str], labels: dict | None = None) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "bar", "labels": labels or {}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "main", "image": PROBE_IMAGE, "imagePullPolicy": "Never", "args": args}]},
    }


@pytest.fixture(scope="module")
def workloads(running_node):
    """httpbin.bar:8000 (a probe serving HTTP behind a ClusterIP Service) and a client pod, both Running."""
    from kubernetes import client

    from custom_ca_conformance import kube

    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bar"}},
        _pod("httpbin", ["serve", ":8000"], {"app": "httpbin"}),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "httpbin", "namespace": "bar"},
         "spec": {"selector": {"app": "httpbin"}, "ports": [{"port": 8000, "targetPort": 8000}]}},
        _pod("client", ["serve", ":9000"]),
    ]
    with running_node.api_client() as api:
        # The ServiceAccount controller makes bar/default; pods are admitted only after it.
        kube.apply(api, objects[:1])
        kube.wait_for(lambda: any(sa.metadata.name == "default" for sa in client.CoreV1Api(api)
                                  .list_namespaced_service_account("bar").items),
                      timeout=30, expected="ServiceAccount bar/default",
                      diagnose=lambda: ("no default ServiceAccount", str(running_node.processes.log_path(
                          "kube-controller-manager"))))
        started = time.monotonic()
        kube.apply(api, objects[1:])
        for name in ("httpbin", "client"):
            kube.wait_for(lambda name=name: client.CoreV1Api(api).read_namespaced_pod(name, "bar").status.phase
                          == "Running",
                          timeout=60, expected=f"pod bar/{name} Running",
                          diagnose=lambda: (node._pods_summary(running_node, "bar"),
                                            str(running_node.processes.log_path("kubelet"))))
    print(f"pods applied -> Running in {time.monotonic() - started:.2f}s")
    running_node.wait_service_reachable("bar", "httpbin", 8000)
    print(f"pods applied -> Service httpbin.bar:8000 reachable in {time.monotonic() - started:.2f}s")
    return running_node


def _exec(node_, pod: str, command: list[str]):
    from custom_ca_conformance import kube

    with node_.api_client() as api:  # a client of its own: stream() swaps its call_api
        return kube.exec_in_pod(api, "bar", pod, "main", command, timeout=20)


def test_node_is_ready_and_runs_from_the_pinned_kubelet(running_node):
    from kubernetes import client

    from custom_ca_conformance.localplane import toolchain

    with running_node.api_client() as api:
        found = client.CoreV1Api(api).read_node(running_node.name)

    ready = next(c for c in found.status.conditions if c.type == "Ready")
    assert ready.status == "True", ready.message
    assert found.status.node_info.kubelet_version == toolchain.PINS.kubernetes_version
    assert found.status.node_info.container_runtime_version.startswith("containerd://")
    assert [a.address for a in found.status.addresses if a.type == "InternalIP"] == [cni.GATEWAY]


def test_the_sandbox_and_coredns_run_from_the_image_package(running_node, node_images):
    import tomllib

    from kubernetes import client

    pause, dns = node_images["pause"].ref, node_images["coredns"].ref
    config = tomllib.loads(running_node.layout.containerd.config.read_text())
    with running_node.api_client() as api:
        pods = client.CoreV1Api(api).list_namespaced_pod(coredns.NAMESPACE, label_selector="k8s-app=kube-dns").items

    assert (pause, dns) == (PAUSE_REF, COREDNS_REF)
    assert {pause, dns, PROBE_IMAGE} <= running_node.images()
    assert config["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"] == pause
    assert [status.image for pod in pods for status in pod.status.container_statuses] == [dns]
    assert not (running_node.layout.base / "images").exists()  # the node writes no images of its own


def test_pod_from_an_imported_image_runs_and_exec_works(workloads):
    result = _exec(workloads, "client", ["/probe", "echo", "hello", "from", "exec"])

    assert result.exit_code == 0, result.stderr
    assert result.stdout == "hello from exec\n"


def test_exec_reports_the_exit_code(workloads):
    result = _exec(workloads, "client", ["/probe", "no-such-mode"])

    assert result.exit_code == 2


def test_logs_are_served_through_the_apiserver(workloads):
    from custom_ca_conformance import kube

    with workloads.api_client() as api:
        log = kube.pod_log(api, "bar", "httpbin", "main")

    assert "serving on :8000" in log


def test_service_name_resolves_through_coredns_from_a_pod(workloads):
    from kubernetes import client

    with workloads.api_client() as api:
        cluster_ip = client.CoreV1Api(api).read_namespaced_service("httpbin", "bar").spec.cluster_ip

    result = _exec(workloads, "client", ["/probe", "dns", "httpbin.bar"])

    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [cluster_ip]


def test_cluster_ip_service_is_reached_from_a_pod(workloads):
    result = _exec(workloads, "client", ["/probe", "get", "http://httpbin.bar:8000/status"])

    assert result.exit_code == 0, result.stderr
    assert result.stdout == "200 hello from httpbin path /status\n"


def test_kubernetes_service_reaches_the_apiserver_from_a_pod(workloads):
    # No CA in the probe: a certificate error proves the TLS handshake with the apiserver happened.
    result = _exec(workloads, "client", ["/probe", "get", "https://kubernetes.default.svc/version"])

    assert result.exit_code == 1
    assert "x509: certificate signed by unknown authority" in result.stderr


def test_port_forward_reaches_the_pod(workloads):
    from kubernetes import client
    from kubernetes.stream import portforward

    with workloads.api_client() as api:
        forward = portforward(client.CoreV1Api(api).connect_get_namespaced_pod_portforward, "httpbin", "bar",
                              ports="8000")
        sock = forward.socket(8000)
        sock.setblocking(True)
        sock.settimeout(10)
        sock.sendall(b"GET /pf HTTP/1.0\r\nHost: x\r\n\r\n")
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
        sock.close()
        forward.close()

    assert response.startswith(b"HTTP/1.0 200")
    assert response.endswith(b"hello from httpbin path /pf\n")


def test_kept_node_can_be_attached(running_node):
    attached = node.attach_node(running_node.layout.workdir)

    assert attached is not None
    assert attached.processes.pids == running_node.processes.pids
    assert list(node._LOCKS) == [running_node.layout.workdir]  # still this process's, once


def test_attaching_waits_for_the_machine_lock_of_the_run_using_the_node(running_node):
    # Another run (a process of its own) may not reuse the node while this one holds it.
    script = textwrap.dedent(f"""
        import time
        from custom_ca_conformance.localplane import node
        node.MACHINE_LOCK_TIMEOUT = 2
        started = time.monotonic()
        try:
            node.attach_node({str(running_node.layout.workdir)!r})
        except node.NodeError as exc:
            print(f"{{time.monotonic() - started:.1f}}s", exc)
        else:
            print("attached")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "another process still holds" in result.stdout and str(node.LOCK_FILE) in result.stdout, result.stdout
    assert float(result.stdout.split("s ", 1)[0]) >= 1.5  # it waited, bounded
    assert node._node_ready_seen(running_node) is None  # and left the node alone


def test_stopping_a_directory_where_no_node_ran_leaves_the_running_node_alone(workloads, tmp_path):
    # What a run whose provisioning never reached the node does at teardown, while another
    # run's node is up: the bridge, chains and pods are that node's.
    commands = [command for command in iptables.IPTABLES_COMMANDS if shutil.which(command)]
    chains_before = {command: iptables.our_chains(command) for command in commands}

    assert node.stop_node(tmp_path / "never-started") == []

    assert host.bridge_exists(cni.BRIDGE)
    assert {command: iptables.our_chains(command) for command in commands} == chains_before
    assert node._node_ready_seen(workloads) is None
    workloads.wait_service_reachable("bar", "httpbin", 8000)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stop_leaves_nothing_behind(running_node, workloads):
    before = iptables.nft_tables()
    snapshot = host.HostSnapshot.load(running_node.layout.host_record)
    pids = list(running_node.processes.pids.values())
    shims = host.shim_pids(running_node.layout.containerd.socket)
    assert shims, "expected containerd shims for the running pods"

    problems = running_node.stop()

    assert problems == []
    assert node.leftovers(running_node.layout.workdir) == {}
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []  # exited and reaped
    assert [pid for pid in shims if _running(pid)] == []  # not our children: init reaps them
    assert not host.bridge_exists(cni.BRIDGE)
    assert sorted(iptables.nft_tables()) == sorted(snapshot.nft_tables), f"nf_tables before stop: {before}"
    for path in host.FIXED_PATHS:
        assert os.path.lexists(path) == (path in snapshot.preexisting_paths), path
    for name, value in snapshot.sysctls.items():
        assert (Path("/proc/sys") / name).read_text().strip() == value, name
    assert node.attach_node(running_node.layout.workdir) is None


def test_a_component_that_exits_at_start_is_reported_and_nothing_is_left(tmp_path, control_plane_toolchain,
                                                                         node_images):
    # Runs after the shared node is stopped: one node per machine.
    import dataclasses

    if os.geteuid() != 0:
        pytest.skip("the node needs root (network namespaces, iptables, mounts)")
    real = _node_toolchain(control_plane_toolchain)
    fake = tmp_path / "kubelet"
    fake.write_text("#!/bin/sh\necho 'E1202 run.go:72] \"command failed\" err=\"frobnicated cgroups\"'\nexit 1\n")
    fake.chmod(0o755)
    binaries = dataclasses.replace(node.find_node_binaries(real), kubelet=fake)
    workdir = tmp_path / "wd"

    with pytest.raises(node.NodeError) as failure:
        node.start_node(real, workdir, progress=lambda line: None, binaries=binaries,
                        images=[image.archive for image in node_images.values()], **_image_arguments(node_images))

    message = str(failure.value)
    assert "expected Node ccc-node Ready" in message and "kubelet exited with code 1" in message
    assert str(workdir / "logs" / "kubelet.log") in message and "frobnicated cgroups" in message
    assert node.leftovers(workdir) == {}
    assert not (workdir / "pids.json").exists()
