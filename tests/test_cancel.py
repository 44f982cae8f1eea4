"""Cancelling a run: signals end it as Ctrl-C does, and nothing of the local node is left.

The first tests send real signals to a Python process using ``custom_ca_conformance.signals``
and hold the real machine lock in a throwaway cache dir (no node). The rest start the
installed conformance suite on the real local node in a subprocess, as a user or a CI job
does, signal it at a chosen moment and look at the whole machine afterwards: processes,
mounts, network namespaces, veths and the bridge, iptables chains, cgroups, the node's
directory. They need root and the built toolchain and images, and hold the machine's one node.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from custom_ca_conformance.localplane import node
from custom_ca_conformance.toolchain import CACHE_ENV, cache_root

CACHE_ROOT = cache_root()
NODE_SCRIPT = [sys.executable, "-m", "custom_ca_conformance.localplane.node"]


def _python(script: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kwargs)


# --- signals, no node ------------------------------------------------------------------------------


def test_sigterm_and_sighup_interrupt_as_ctrl_c_and_a_second_signal_waits_for_teardown():
    script = """
        import os, signal, time
        from custom_ca_conformance import signals
        signals.install(lambda line: print("said:", line, flush=True))
        for name in ("SIGTERM", "SIGHUP"):
            try:
                os.kill(os.getpid(), getattr(signal, name))
                time.sleep(5)
                print("not interrupted")
            except KeyboardInterrupt as exc:
                print("interrupted:", exc)
                with signals.shielded():
                    os.kill(os.getpid(), signal.SIGINT)
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.2)
                    print("teardown ran to its end")
            signals.uninstall(); signals.install(lambda line: print("said:", line, flush=True))
        print("received", signals.received())
    """
    result = _python(script)
    output = result.communicate(timeout=60)[0]

    assert result.returncode == 0, output
    lines = output.splitlines()
    for name in ("SIGTERM", "SIGHUP"):
        start = lines.index(f"interrupted: {name} received")
        assert lines[start + 1].startswith("said: SIGINT received: removing what the run made first"), output
        assert lines[start + 2].startswith("said: SIGTERM received"), output
        assert f"`kill -9 {result.pid}`" in lines[start + 1], output
        assert lines[start + 3] == "teardown ran to its end", output
    assert "not interrupted" not in output


def test_a_first_signal_during_teardown_does_not_interrupt_it():
    script = """
        import os, signal, time
        from custom_ca_conformance import signals
        signals.install(print)
        with signals.shielded():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            print("teardown ran to its end")
        print("received", signals.received())
        signals.uninstall()
        print("restored", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    """
    result = _python(script)
    output = result.communicate(timeout=60)[0]

    assert result.returncode == 0, output
    assert "teardown ran to its end\nreceived ['SIGTERM']\nrestored True" in output, output


# --- the node's owner, no node ---------------------------------------------------------------------

HOLDER = """
    import sys, time
    from pathlib import Path
    from custom_ca_conformance import signals
    from custom_ca_conformance.localplane import node
    workdir = Path(sys.argv[1])
    node._lock_machine(workdir)
    node._record_active(workdir)
    signals.install(print)
    print("holding", flush=True)
    try:
        time.sleep(120)
    except KeyboardInterrupt as exc:
        print("cancelled:", exc, flush=True)
"""


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache dir of this test's own: its machine lock and owner record are nobody else's."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _hold(workdir: Path) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(workdir)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_node_owned_by_a_live_process_is_refused_naming_its_pid_and_the_command_that_stops_it(own_cache, tmp_path):
    workdir = tmp_path / "node-of-another-run"
    holder = _hold(workdir)
    try:
        with pytest.raises(node.NodeBusy) as refusal:
            node.check_machine_free(grace=1)
        status = subprocess.run([*NODE_SCRIPT, "status"], capture_output=True, text=True, timeout=60)
    except BaseException:
        holder.kill()
        raise

    message = str(refusal.value)
    assert f"belongs to pid {holder.pid} (" in message and "which is still running" in message, message
    assert f"`custom-ca-conformance-node stop {workdir}`" in message, message
    assert "\n" not in message
    assert status.stdout.strip().startswith(f"{workdir}: owned by pid {holder.pid} ("), status.stdout

    stop = subprocess.run([*NODE_SCRIPT, "stop"], capture_output=True, text=True, timeout=180)

    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert f"pid {holder.pid}" in stop.stdout and "sent it SIGTERM" in stop.stdout, stop.stdout
    assert f"removed the local node in {workdir}" in stop.stdout, stop.stdout
    assert holder.wait(timeout=30) == 0 and "cancelled: SIGTERM received" in holder.stdout.read()
    assert not workdir.exists()
    assert node.machine_owner() is None


def test_a_node_whose_owner_was_killed_is_no_obstacle_and_is_named_as_left(own_cache, tmp_path):
    workdir = tmp_path / "node-of-a-killed-run"
    holder = _hold(workdir)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)

    node.check_machine_free(grace=1)  # no refusal: start_node removes what it left
    status = subprocess.run([*NODE_SCRIPT, "status"], capture_output=True, text=True, timeout=60)

    assert status.stdout.strip() == (f"{workdir}: left by pid {holder.pid}, which is gone "
                                     "(`custom-ca-conformance-node stop` removes it); no process of it runs")


def test_stop_without_a_recorded_node_says_so(own_cache):
    result = subprocess.run([*NODE_SCRIPT, "stop"], capture_output=True, text=True, timeout=60)

    assert (result.returncode, result.stdout) == (0, "no local node is recorded on this machine\n")
