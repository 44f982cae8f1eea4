"""The kind and existing providers without a cluster: probe parsing, install order, teardown rules."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from custom_ca_conformance.cluster import builtin_provider, existing, provider as provider_module
from custom_ca_conformance.cluster.contract import ProviderSettings
from custom_ca_conformance.model.evidence import CsrRecord
from custom_ca_conformance.model.run_record import RunRecord
from custom_ca_conformance.install import checks, sources
from custom_ca_conformance.tools import commands
from custom_ca_conformance.model.errors import ProviderUnavailable, ProvisioningError
from custom_ca_conformance.model.pki import cert_to_pem, make_intermediate_ca, make_self_signed_ca
from custom_ca_conformance.model.topology import default_topology, from_document
from custom_ca_conformance.probes import sidecar
from custom_ca_conformance.render import templates

FOO_CURL = "spiffe://cluster.local/ns/foo/sa/curl"
FOO_HTTPBIN = "spiffe://cluster.local/ns/foo/sa/httpbin"


# --- probe command and its output -------------------------------------------------------------


def _fake_curl(directory: Path, status: str, body: str, exit_code: int) -> None:
    """A curl that honours -o and -w like the real one, for running the probe's shell script."""
    script = textwrap.dedent(f"""\
        #!/bin/sh
        out=""
        while [ $# -gt 0 ]; do
          case "$1" in -o) out="$2"; shift;; esac
          shift
        done
        printf '%s' '{body}' > "$out"
        printf '%s' '{status}'
        exit {exit_code}
    """)
    (directory / "curl").write_text(script)
    (directory / "curl").chmod(0o755)


@pytest.mark.parametrize(("status", "body", "exit_code"), [
    ("200", '{"headers": {}}', 0),
    ("503", "upstream connect error or disconnect/reset before headers. reset reason: connection failure", 0),
    ("000", "", 28),
])
def test_probe_script_reports_status_body_and_curl_exit_code(tmp_path, status, body, exit_code):
    _fake_curl(tmp_path, status, body, exit_code)
    command = sidecar.curl_command("http://httpbin.foo:8000/headers?probe=abc", str(tmp_path / "body"))
    result = subprocess.run(command, capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == exit_code
    seen_status, seen_body = sidecar.split_probe_output(result.stdout)
    assert seen_status == (int(status) or None)
    assert seen_body == body
    assert not (tmp_path / "body").exists()


def test_curl_command_passes_url_as_an_argument_not_in_the_script():
    command = sidecar.curl_command("http://x/'$(reboot)'", "/tmp/b")
    assert command[:2] == ["sh", "-c"] and command[-1] == "http://x/'$(reboot)'" and "reboot" not in command[2]
    assert "--max-time 10" in command[2] and '-w "%{http_code}"' in command[2]


BATCH_FAKE_CURL = textwrap.dedent("""\
    #!/bin/sh
    out=""; url=""
    while [ $# -gt 0 ]; do
      case "$1" in -o) out="$2"; shift;; -w|--max-time) shift;; -*) ;; *) url="$1";; esac
      shift
    done
    case "$url" in
      *fail*) echo "curl: (7) Failed to connect" >&2; printf '000'; exit 7;;
      *) printf 'line one\\nurl %s' "$url" > "$out"; printf '200'; exit 0;;
    esac
""")


def test_the_batch_probe_runs_every_request_and_reports_each_apart(tmp_path):
    (tmp_path / "curl").write_text(BATCH_FAKE_CURL)
    (tmp_path / "curl").chmod(0o755)
    urls = ["http://httpbin.foo:8000/headers?probe=a", "http://httpbin.bar:8000/fail", "http://x/'$(reboot)'"]
    command = sidecar.batch_curl_command("sentinel-1", urls)
    assert command[:2] == ["sh", "-c"] and command[-3:] == urls and "reboot" not in command[2]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr

    ok, failed, odd = sidecar.split_batch_output(result.stdout, "sentinel-1", 3)
    assert ok == sidecar.CurlOutput(0, 200, f"line one\nurl {urls[0]}", "")
    assert failed == sidecar.CurlOutput(7, None, "", "curl: (7) Failed to connect\n")
    assert odd.body == f"line one\nurl {urls[2]}" and odd.status == 200
    assert sidecar.split_batch_output("", "sentinel-1", 1) == [
        sidecar.CurlOutput(None, None, "", "no output for this request")]


COUNTING_FAKE_CURL = textwrap.dedent("""\
    #!/bin/sh
    # Notes how many requests are in flight while this one is (a file per request in $INFLIGHT).
    touch "$INFLIGHT/$$"; sleep 0.3; ls "$INFLIGHT" | wc -l >> "$INFLIGHT.seen"; rm "$INFLIGHT/$$"
    printf '200'
""")


def test_the_batch_probe_keeps_at_most_requests_at_once_in_flight(tmp_path):
    (tmp_path / "curl").write_text(COUNTING_FAKE_CURL)
    (tmp_path / "curl").chmod(0o755)
    inflight = tmp_path / "inflight"
    inflight.mkdir()
    count = sidecar.REQUESTS_AT_ONCE * 2 + 3
    urls = [f"http://httpbin.t{i}:8000/headers" for i in range(count)]
    result = subprocess.run(sidecar.batch_curl_command("s", urls), capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
                                 "INFLIGHT": str(inflight)})
    assert result.returncode == 0, result.stderr
    seen = [int(n) for n in (tmp_path / "inflight.seen").read_text().split()]
    assert len(seen) == count and max(seen) <= sidecar.REQUESTS_AT_ONCE, (
        f"expected {count} requests, at most {sidecar.REQUESTS_AT_ONCE} at once; seen in flight {seen}")
    assert max(seen) > 1, f"expected requests side by side, seen {seen}"
    assert [o.status for o in sidecar.split_batch_output(result.stdout, "s", count)] == [200] * count


# --- XFCC ------------------------------------------------------------------------------------------

XFCC = f'By={FOO_HTTPBIN};Hash=abc123;Subject="";URI={FOO_CURL}'


def test_identities_come_from_the_xfcc_httpbin_echoed():
    body = json.dumps({"headers": {"X-Forwarded-Client-Cert": [XFCC], "Host": ["httpbin.foo:8000"]}})
    assert sidecar.identities_from_xfcc(sidecar.xfcc_from_headers_json(body)) == (FOO_CURL, FOO_HTTPBIN)


def test_xfcc_header_lookup_is_case_insensitive_and_accepts_strings():
    assert sidecar.xfcc_from_headers_json(json.dumps({"headers": {"x-forwarded-client-cert": XFCC}})) == XFCC
    assert sidecar.xfcc_from_headers_json("not json") is None
    assert sidecar.xfcc_from_headers_json(json.dumps({"headers": {}})) is None


def test_xfcc_quoted_values_may_hold_separators_and_the_last_element_is_the_nearest_hop():
    value = f'By=spiffe://a;URI=spiffe://old,By={FOO_HTTPBIN};Subject="CN=x,O=y;z";URI={FOO_CURL}'
    elements = sidecar.parse_xfcc(value)
    assert elements[1]["Subject"] == "CN=x,O=y;z"
    assert sidecar.identities_from_xfcc(value) == (FOO_CURL, FOO_HTTPBIN)
    assert sidecar.identities_from_xfcc(None) == (None, None)


# --- proxy-config secret ----------------------------------------------------------------------------


def _secret_dump(chain_pem: str, root_pem: str, *, snake: bool = False) -> dict:
    def key(camel: str) -> str:
        return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel) if snake else camel

    def inline(pem: str) -> dict:
        return {key("inlineBytes"): base64.b64encode(pem.encode()).decode()}

    return {key("dynamicActiveSecrets"): [
        {"name": "default", "secret": {"name": "default", key("tlsCertificate"): {
            key("certificateChain"): inline(chain_pem), key("privateKey"): inline("[redacted]")}}},
        {"name": "ROOTCA", "secret": {"name": "ROOTCA",
                                      key("validationContext"): {key("trustedCa"): inline(root_pem)}}},
    ]}


@pytest.mark.parametrize("snake", [False, True])
def test_proxy_config_secret_yields_the_chain_and_the_trusted_root(snake):
    root = make_self_signed_ca("foo")
    intermediate = make_intermediate_ca(root, "foo-int")
    chain = intermediate.chain_pem
    chain_pem, root_pem = sidecar.secrets_from_proxy_config(_secret_dump(chain, cert_to_pem(root.cert), snake=snake),
                                                             "src")
    assert chain_pem.decode() == chain and root_pem.decode() == cert_to_pem(root.cert)


def test_a_sidecar_without_rootca_is_reported():
    dump = _secret_dump("x", "y")
    dump["dynamicActiveSecrets"].pop()
    with pytest.raises(ProvisioningError, match="no ROOTCA secret"):
        sidecar.secrets_from_proxy_config(dump, "istioctl proxy-config secret curl.foo")


# --- install helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    (["--v=2", "--feature-gates=ExperimentalCertificateSigningRequestControllers=true"], True),
    (["--feature-gates=A=true,ExperimentalCertificateSigningRequestControllers=false"], False),
    (["--v=2"], False),
    (["--config=/var/cert-manager/config/config.yaml"], None),
])
def test_feature_gate_detection(args, expected):
    assert checks.feature_gate_enabled(args, "ExperimentalCertificateSigningRequestControllers") is expected


def test_run_id_annotates_only_deployment_pod_templates_without_touching_the_input():
    objects = templates.workload_objects(default_topology())
    stamped = checks.with_run_id(objects, "r1")
    for before, after in zip(objects, stamped):
        if after["kind"] == "Deployment":
            own = before["spec"]["template"]["metadata"].get("annotations", {})
            assert after["spec"]["template"]["metadata"]["annotations"] == {**own, "custom-ca-conformance/run-id": "r1"}
            assert "custom-ca-conformance/run-id" not in own
        else:
            assert after == before


def _record(spiffe_id: str, issued: bool) -> CsrRecord:
    return CsrRecord(event="MODIFIED", name="c", signer_name="s", username="u", issued=issued, spiffe_ids=[spiffe_id])


def test_tenants_missing_issued_csrs():
    topology = default_topology()
    assert checks.tenants_missing_issued_csrs(topology, []) == ["foo", "bar"]
    records = [_record(FOO_CURL, True), _record("spiffe://cluster.local/ns/bar/sa/curl", False)]
    assert checks.tenants_missing_issued_csrs(topology, records) == ["bar"]


@pytest.mark.parametrize("vanilla_envoy", [False, True])
def test_rejected_pushes_hint_at_the_vanilla_envoy_settings_only_on_a_vanilla_envoy(vanilla_envoy):
    rejected = ["ADS:LDS: ACK ERROR curl-1.foo-3 Internal:Error adding/updating listener(s) virtualInbound"]
    error = checks.xds_rejected_error("istiod-1", rejected, templates.Platform(vanilla_envoy=vanilla_envoy))
    text = str(error)
    assert rejected[0] in text and "istio-system/istiod-1 container discovery" in text
    hinted = all(f"{name}={value}" in text for name, value in templates.VANILLA_ENVOY_ISTIOD_ENV.items())
    assert hinted is vanilla_envoy, text
    assert ("PILOT_ENABLE" in text) is vanilla_envoy, text


# --- provider requirements ---------------------------------------------------------------------------


def _settings(tmp_path, **overrides) -> ProviderSettings:
    return ProviderSettings(topology=default_topology(), workdir=tmp_path / "work", **overrides)


def test_kind_without_kind_on_path_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ProviderUnavailable) as raised:
        builtin_provider("kind", _settings(tmp_path)).check_requirements()
    assert str(raised.value).startswith("kind is required for --custom-ca-cluster kind but was not found on PATH")


def test_kind_without_docker_says_docker(tmp_path, monkeypatch):
    (tmp_path / "kind").write_text("#!/bin/sh\n")
    (tmp_path / "kind").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProviderUnavailable, match="^docker is required for --custom-ca-cluster kind"):
        builtin_provider("kind", _settings(tmp_path)).check_requirements()


def test_providers_refuse_signers_that_are_not_cert_manager_cluster_issuers(tmp_path):
    topology = from_document({"signerDomain": "example.com", "signers": ["x"],
                              "tenants": [{"namespace": "t", "signer": "x"}]}, source="topology file t.yaml")
    settings = ProviderSettings(topology=topology, workdir=tmp_path)
    for provider in (builtin_provider("kind", settings), builtin_provider("existing", settings)):
        with pytest.raises(ProviderUnavailable, match="t.yaml: signerDomain example.com is not supported"):
            provider.check_requirements()


def test_existing_without_a_kubeconfig_says_how_to_pass_one(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(ProviderUnavailable, match="--custom-ca-kubeconfig .*missing is not a readable file"):
        builtin_provider("existing", _settings(tmp_path, kubeconfig=str(tmp_path / "missing"))).check_requirements()


def _kubeconfig(path: Path, server: str = "https://127.0.0.1:1") -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c1",
        "clusters": [{"name": "k", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c1", "context": {"cluster": "k", "user": "u"}}],
    }))
    return path


def test_existing_with_an_unknown_context_lists_the_contexts(tmp_path):
    kubeconfig = _kubeconfig(tmp_path / "kc")
    with pytest.raises(ProviderUnavailable, match="has no context 'nope'; contexts: c1"):
        existing.require_api_reachable(str(kubeconfig), "nope")


def test_existing_with_an_unreachable_api_server_says_so(tmp_path):
    kubeconfig = _kubeconfig(tmp_path / "kc")
    with pytest.raises(ProviderUnavailable, match="the API server of context c1 does not answer"):
        existing.require_api_reachable(str(kubeconfig), None)


# --- kind cluster lifecycle -------------------------------------------------------------------------


class _Recorder:
    def __init__(self, clusters: str = ""):
        self.commands: list[list[str]] = []
        self.clusters = clusters

    def run(self, argv, *, what, timeout, log_file=None):
        self.commands.append(argv)
        return self.clusters if argv[1:3] == ["get", "clusters"] else ""


class _NullClient:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture(autouse=True)
def no_real_clients(monkeypatch):
    import kubernetes.config

    monkeypatch.setattr(kubernetes.config, "new_client_from_config", lambda **kwargs: _NullClient())


def _new_kind_provider(tmp_path, monkeypatch, clusters: str = "", **overrides):
    recorder = _Recorder(clusters)
    monkeypatch.setattr(commands, "run", recorder.run)
    provider = builtin_provider("kind", _settings(tmp_path, **overrides))
    provider.adapter._kind = "kind"
    provider.adapter.sources._tools = sources.Tools(istioctl="istioctl", helm="helm")
    monkeypatch.setattr(provider, "installer", lambda api_client, run, **hooks: SimpleNamespace(install=lambda: None))
    return provider, recorder


def test_kind_creates_a_cluster_with_the_pinned_image_and_deletes_it_afterwards(tmp_path, monkeypatch):
    provider, recorder = _new_kind_provider(tmp_path, monkeypatch)
    run = provider.provision()
    create = next(c for c in recorder.commands if c[1:3] == ["create", "cluster"])
    assert create[create.index("--image") + 1].startswith("kindest/node:v1.36.1@sha256:")
    assert run.created_cluster and run.context == "kind-custom-ca-conformance"
    assert run.kubeconfig == str(tmp_path / "work" / "kubeconfig")
    assert not run.signer_roots, "roots are read from the ClusterIssuers once they are Ready, not named ahead"
    assert run.csr_log == tmp_path / "work" / "csr-events.jsonl"
    provider.teardown(run)
    assert recorder.commands[-1][:5] == ["kind", "delete", "cluster", "--name", "custom-ca-conformance"]


def test_kind_keeps_a_cluster_it_created_with_keep_cluster(tmp_path, monkeypatch):
    provider, recorder = _new_kind_provider(tmp_path, monkeypatch, keep=True)
    provider.teardown(provider.provision())
    assert not any(c[1:3] == ["delete", "cluster"] for c in recorder.commands)


def test_kind_refuses_an_existing_cluster_without_keep_cluster(tmp_path, monkeypatch):
    provider, recorder = _new_kind_provider(tmp_path, monkeypatch, clusters="custom-ca-conformance\n")
    with pytest.raises(ProvisioningError, match="already exists and was not created by this run"):
        provider.provision()
    provider.teardown(provider.record)
    assert not any(c[1] in ("create", "delete") for c in recorder.commands)


def test_kind_reuses_an_existing_cluster_with_keep_cluster_and_never_deletes_it(tmp_path, monkeypatch):
    provider, recorder = _new_kind_provider(tmp_path, monkeypatch, clusters="other\ncustom-ca-conformance\n", keep=True)
    run = provider.provision()
    assert ["kind", "export", "kubeconfig"] == recorder.commands[-1][:3] and not run.created_cluster
    provider.teardown(run)
    assert not any(c[1] in ("create", "delete") for c in recorder.commands)


# --- install order ------------------------------------------------------------------------------------


def test_existing_teardown_keeps_everything_with_keep_cluster(tmp_path, monkeypatch):
    monkeypatch.setattr(provider_module, "uninstall",
                        lambda *a: pytest.fail("nothing may be removed with --custom-ca-keep-cluster"))
    run = RunRecord(kubeconfig="kc", context=None, workdir=str(tmp_path), run_id="r",
                    ledger=[{"tool": "istioctl", "istioctl": "istioctl", "operator_file": "iop.yaml"}])
    builtin_provider("existing", _settings(tmp_path, keep=True)).teardown(run)
