"""Reading os.environ, and building kubernetes clients and watches, while another thread changes it.

pytest sets and deletes PYTEST_CURRENT_TEST around every test while the run's background threads
(the signer contract's CSRs, the reference signer) build watches and clients; the churn thread here
does the same to a variable of its own, with the interpreter switching threads as often as it can.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from custom_ca_conformance.kube.clients import new_api_client, new_watch
from custom_ca_conformance.process.environment import ATTEMPTS, environ_copy, read_whole_environ

CHURNED = "CUSTOM_CA_CONFORMANCE_TEST_CHURN"
CALLS = 400


@pytest.fixture
def churning_environ():
    """Another thread setting and deleting a variable until the test ends."""
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            os.environ[CHURNED] = "1"
            os.environ.pop(CHURNED, None)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()
    sys.setswitchinterval(interval)


def test_the_race_is_real(churning_environ):
    """Without the guard, iterating os.environ fails within seconds (else the tests below prove nothing)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            dict(os.environ)
        except KeyError as error:
            assert error.args == (CHURNED,)
            return
    pytest.fail(f"iterating os.environ for 10 s while {CHURNED} churned never raised KeyError")


def test_environ_copy_is_whole(churning_environ):
    for _ in range(CALLS):
        copy = environ_copy()
        assert copy["PATH"] == os.environ["PATH"]


def test_watches_and_clients_build_while_the_environ_churns(churning_environ, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    for _ in range(CALLS):
        new_watch()
    for _ in range(CALLS // 4):
        new_api_client(kubeconfig).close()


def test_another_key_error_is_raised_at_once():
    calls = []

    def read():
        calls.append(1)
        return {}["missing"]

    with pytest.raises(KeyError, match="missing"):
        read_whole_environ(read)
    assert len(calls) == 1


def test_a_variable_missing_every_time_is_raised():
    calls = []

    def read():
        calls.append(1)
        return os.environ["CUSTOM_CA_CONFORMANCE_TEST_NEVER_SET"]

    with pytest.raises(KeyError):
        read_whole_environ(read)
    assert len(calls) == ATTEMPTS
