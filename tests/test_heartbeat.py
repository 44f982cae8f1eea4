"""No long wait is silent: a "still …" line at least every HEARTBEAT_SECONDS, from real waits.

The interval is shortened here; each wait is a real one: a command running, an object not there
yet on a real kube-apiserver, a download trickling from a server on loopback. A host that cannot be
reached fails the download at once, naming what replaces it.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time

import pytest

from custom_ca_conformance.kube.waits import wait_for
from custom_ca_conformance.model.errors import ProviderUnavailable, ProvisioningError
from custom_ca_conformance.process import heartbeat
from custom_ca_conformance.process.heartbeat import Heartbeat, beating, run_with_heartbeat
from custom_ca_conformance.tools import commands, downloads

EVERY = 0.3


@pytest.fixture
def lines(monkeypatch) -> list[str]:
    """What the heartbeats said, every EVERY seconds, inside ``beating``."""
    monkeypatch.setattr(heartbeat, "HEARTBEAT_SECONDS", EVERY)
    said: list[str] = []
    with beating(said.append):
        yield said


def test_a_heartbeat_says_what_is_awaited_and_for_how_long_only_when_due():
    said: list[str] = []
    beat = Heartbeat("waiting for the answer", said.append, every=0.2)
    beat.tick()
    assert said == []
    time.sleep(0.25)
    beat.tick("3 seen")
    beat.tick()
    assert said == ["still waiting for the answer (0s, 3 seen)"]


def test_without_anyone_to_tell_a_heartbeat_is_silent():
    Heartbeat("waiting", every=0).tick()  # no beating block, no say: nothing to call


def test_a_running_command_beats_and_its_result_is_that_of_subprocess_run(lines):
    result = run_with_heartbeat(["sh", "-c", "sleep 1.5; echo out; echo err >&2; exit 3"], "sleeping",
                                capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert lines and all(line.startswith("still sleeping (") for line in lines), lines


def test_a_command_past_its_timeout_is_killed():
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_with_heartbeat(["sleep", "30"], "sleeping", timeout=1)
    assert time.monotonic() - started < 5


def test_a_provisioning_command_beats_with_its_purpose(lines, monkeypatch):
    monkeypatch.setattr(commands, "WATCH_INTERVAL_SECONDS", 0.1)
    commands.run(["sleep", "1"], what="installing nothing", timeout=30)
    assert lines and all(line.startswith("still installing nothing: `sleep 1 …` running (") for line in lines), lines


def test_a_wait_for_an_object_beats_with_what_it_expects(lines):
    ready_at = time.monotonic() + 1.0
    assert wait_for(lambda: time.monotonic() >= ready_at, timeout=10, expected="Deployment x/y Available",
                    diagnose=lambda: ("", ""))
    assert lines and all(line.startswith("still waiting: Deployment x/y Available (") for line in lines), lines


def test_a_wait_that_times_out_still_says_what_was_expected(lines):
    with pytest.raises(ProvisioningError, match="timed out after 0.8s"):
        wait_for(lambda: None, timeout=0.8, expected="never", diagnose=lambda: ("nothing", "nowhere"))
    assert lines


class _Trickle(http.server.BaseHTTPRequestHandler):
    """3 MB in 1 MB pieces, 0.4 s apart, with a Content-Length."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(3 << 20))
        self.end_headers()
        for _ in range(3):
            self.wfile.write(b"x" * (1 << 20))
            self.wfile.flush()
            time.sleep(0.4)

    def log_message(self, *args):
        pass


@pytest.fixture
def trickling_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/istioctl.tar.gz"
    server.shutdown()
    server.server_close()


def test_a_download_beats_with_the_bytes_read_of_how_many(lines, trickling_server):
    body = downloads._download(trickling_server, "a file of your own")
    assert len(body) == 3 << 20
    assert lines and all(line.startswith(f"still downloading {trickling_server} (") for line in lines), lines
    assert any(" MB of 3.1 MB)" in line for line in lines), lines


def test_a_host_that_refuses_the_connection_fails_the_download_at_once_naming_what_replaces_it():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as error:
        downloads._download(f"http://127.0.0.1:{port}/istioctl.tar.gz", "--custom-ca-istioctl PATH")
    assert time.monotonic() - started < 5, "retried although the host cannot be reached"
    assert str(error.value).startswith(f"cannot download http://127.0.0.1:{port}/istioctl.tar.gz: 127.0.0.1:{port} "
                                       "cannot be reached: ")
    assert str(error.value).endswith("; without access to it, use --custom-ca-istioctl PATH")
