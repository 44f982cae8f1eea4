"""Cancelling a run: signals end it as Ctrl-C does, and nothing of the local node is left.

The first tests send real signals to a Python process using ``custom_ca_conformance.process.signals``
and hold the real machine lock in a throwaway cache dir (no node). The rest start the
installed conformance suite on the real local node in a subprocess, as a user or a CI job
does, signal it at a chosen moment and look at the whole machine afterwards: processes,
mounts, network namespaces, veths and the bridge, iptables chains, cgroups, the node's
directory. A run that only has to be in its tests is the vendors' run (``-m signer`` with the
reference signer: the node, no mesh, its tests in ~10 s); Ctrl-C twice interrupts a whole
mesh run. They need root and the built toolchain and images, and hold the machine's one node.
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
from local_runs import REFERENCE_SIGNER_RUN

from custom_ca_conformance.localplane import host, node
from custom_ca_conformance.localplane.toolchain import CACHE_ENV, cache_root

# One node per machine: these modules take turns (tests/conftest.py, one_node_module_at_a_time).
pytestmark = pytest.mark.xdist_group("node")

CACHE_ROOT = cache_root()
NODE_SCRIPT = [sys.executable, "-m", "custom_ca_conformance.localplane.node"]
NODE_COMMAND = [str(Path(sys.executable).with_name("custom-ca-conformance-node"))]  # the console script


def _python(script: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kwargs)


# --- signals, no node ------------------------------------------------------------------------------


def test_sigterm_and_sighup_interrupt_as_ctrl_c_and_a_second_signal_waits_for_teardown():
    script = """
        import os, signal, time
        from custom_ca_conformance.process import signals
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
        from custom_ca_conformance.process import signals
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


def test_a_signal_to_the_whole_group_during_teardown_does_not_cut_its_commands_short():
    """Ctrl-C pressed again (or a CI cancel) signals the run's whole process group: a teardown command must finish.

    Seen in CI: the second SIGINT and the SIGTERM after it killed `nft delete table` half-way, and the node's
    directory was left.
    """
    script = """
        import sys, time
        from custom_ca_conformance.process import signals
        signals.install(print)
        with signals.shielded():
            print("tearing down", flush=True)
            result = signals.run_unreached(["sh", "-c", "sleep 1; echo command finished"], capture_output=True,
                                           text=True)
            print(result.returncode, result.stdout.strip(), flush=True)
        print("received", signals.received())
    """
    result = _python(script, start_new_session=True)  # a group of its own, as a terminal's foreground job
    assert result.stdout.readline().strip() == "tearing down"
    time.sleep(0.3)
    os.killpg(result.pid, signal.SIGINT)
    time.sleep(0.2)
    os.killpg(result.pid, signal.SIGTERM)
    output = result.communicate(timeout=60)[0]

    assert result.returncode == 0, output
    assert "0 command finished" in output and "received ['SIGINT', 'SIGTERM']" in output, output


# --- the node's owner, no node ---------------------------------------------------------------------

HOLDER = """
    import sys, time
    from pathlib import Path
    from custom_ca_conformance.process import signals
    from custom_ca_conformance.localplane import host, node
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


def test_a_live_owner_is_refused_naming_its_pid_and_the_command_that_stops_it(own_cache, tmp_path):
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


STOPPING_HOLDER = """
    import sys, time
    from pathlib import Path
    from custom_ca_conformance.localplane import machine_lock, node
    workdir = Path(sys.argv[1])
    node._lock_machine(workdir)
    node._record_active(workdir)
    machine_lock.mark_stopping(workdir)  # as stop_node does first
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    node.release_machine(workdir)
"""


def test_only_an_owner_removing_its_node_is_waited_for(own_cache, tmp_path):
    """A live owner that is not stopping is refused at once; one removing its node is waited for, then the machine is free."""
    holder = _hold(tmp_path / "node-of-a-live-run")
    started = time.monotonic()
    try:
        with pytest.raises(node.NodeBusy):
            node.check_machine_free(grace=20)
        refused_after = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert refused_after < 5, f"expected a live owner to be refused at once, refused after {refused_after:.1f}s"

    (tmp_path / "node-being-removed").mkdir()
    stopping = subprocess.Popen([sys.executable, "-c", textwrap.dedent(STOPPING_HOLDER), str(tmp_path / "node-being-removed"),
                                 "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert stopping.stdout.readline().strip() == "holding", stopping.stdout.read()
    assert node.machine_owner().stopping
    started = time.monotonic()
    node.check_machine_free(grace=20)  # no refusal: the owner let go within the grace
    waited = time.monotonic() - started
    assert stopping.wait(timeout=30) == 0
    assert 1 <= waited < 20, f"expected a wait of about 2 s for the stopping owner, waited {waited:.1f}s"


def test_a_killed_owner_is_no_obstacle_and_is_named_as_gone(own_cache, tmp_path):
    workdir = tmp_path / "node-of-a-killed-run"
    holder = _hold(workdir)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)

    node.check_machine_free(grace=1)  # no refusal: start_node removes what it left
    status = subprocess.run([*NODE_SCRIPT, "status"], capture_output=True, text=True, timeout=60)

    assert status.stdout.strip() == (f"{workdir}: left by pid {holder.pid}, which is gone "
                                     "(`custom-ca-conformance-node stop` removes it); no process of it runs")


@pytest.mark.parametrize("command", [NODE_COMMAND, NODE_SCRIPT], ids=["console-script", "python-m"])
def test_stop_with_nothing_recorded_says_so(own_cache, command):
    result = subprocess.run([*command, "stop"], capture_output=True, text=True, timeout=60)

    assert (result.returncode, result.stdout) == (0, "no local node is recorded on this machine\n")


# --- a real local run, signalled ------------------------------------------------------------------

NODE_READY = re.compile(r"custom-ca: node \S+ Ready in")
A_TEST_DONE = re.compile(r" (PASSED|FAILED|SKIPPED|ERROR)\b")
NODE_DIR = re.compile(r"\(logs in (/\S+)/logs\)")
RUN_TIMEOUT = 900


# Every LiveRun of the test under way: one that outlives its test (a failed assertion) is ended by
# ``end_live_runs``, so it cannot hold the machine's one node for the tests that follow.
STARTED: list["LiveRun"] = []


@pytest.fixture(autouse=True)
def end_live_runs():
    yield
    while STARTED:
        run = STARTED.pop()
        if run.process.poll() is None:
            run.signal(signal.SIGTERM, group=True)
            try:
                run.process.wait(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                run.signal(signal.SIGKILL, group=True)
                run.process.wait()


class LiveRun:
    """The installed conformance suite on the local node, in a subprocess (and session) of its own."""

    def __init__(self, directory: Path, *args: str):
        directory.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, CACHE_ENV: str(CACHE_ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "--pyargs", "custom_ca_conformance.conformance",
             "--custom-ca-cluster", "local", "--custom-ca-report-dir", str(directory / "report"),
             "-p", "no:cacheprovider", "-v", *args],
            cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)  # its own process group, as a terminal's foreground job
        self.lines: list[str] = []
        STARTED.append(self)
        self._ended = False  # its output closed
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern, timeout: float = RUN_TIMEOUT) -> re.Match:
        """The first output line matching ``pattern``; fails if the run ends or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next(filter(None, map(pattern.search, self.lines)), None)
                if found:
                    return found
                if self._ended or time.monotonic() > deadline:
                    pytest.fail(f"expected a line matching {pattern.pattern!r}, the run printed:\n{self.output}")
                self._changed.wait(timeout=1)

    def node_dir(self) -> Path:
        return Path(self.wait_for(NODE_DIR).group(1))

    def signal(self, signum: int, *, group: bool = False) -> None:
        (os.killpg if group else os.kill)(self.process.pid, signum)

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL, group=True)
            pytest.fail(f"the run did not end within {timeout}s after its signal; it printed:\n{self.output}")
        with self._changed:  # the last lines (a child of the run may hold its output a moment longer)
            self._changed.wait_for(lambda: self._ended, timeout=30)
        return code



def _assert_nothing_left(node_dir: Path, run: LiveRun) -> None:
    # Machine-wide: this test holds the machine's one node (xdist group "node").
    assert node.leftovers(node_dir) == {}, run.output
    assert host.mounts_under(["/run/netns", "/run/containerd", "/var/lib/kubelet"]) == [], run.output
    assert not node_dir.exists(), run.output
    assert node.machine_owner() is None, run.output


def _assert_interrupted(code: int, run: LiveRun, name: str) -> None:
    assert code == pytest.ExitCode.INTERRUPTED, run.output
    assert f"KeyboardInterrupt: {name} received" in run.output or f"{name} received" in run.output, run.output
    assert "none of the known causes" not in run.output


def _assert_next_run_starts(tmp_path: Path) -> None:
    """A run after the cancelled one gets its node (then it is cancelled too, and cleans up as well)."""
    run = LiveRun(tmp_path / "next")
    run.wait_for(NODE_READY)
    node_dir = run.node_dir()
    run.signal(signal.SIGTERM)
    _assert_interrupted(run.finish(), run, "SIGTERM")
    _assert_nothing_left(node_dir, run)


def test_sigterm_during_provisioning_removes_the_node_and_the_next_run_starts(local_provider_available, tmp_path):
    run = LiveRun(tmp_path / "first")
    run.wait_for(NODE_READY)  # the node runs pods; cert-manager and Istio are being installed
    node_dir = run.node_dir()

    run.signal(signal.SIGTERM)  # as `timeout` and `docker stop` do: to pytest only

    _assert_interrupted(run.finish(), run, "SIGTERM")
    _assert_nothing_left(node_dir, run)
    _assert_next_run_starts(tmp_path)


def test_sigterm_during_the_tests_removes_the_node(local_provider_available, tmp_path):
    run = LiveRun(tmp_path / "first", "-n", "2", *REFERENCE_SIGNER_RUN)
    node_dir = run.node_dir()
    run.wait_for(A_TEST_DONE)

    run.signal(signal.SIGTERM)

    _assert_interrupted(run.finish(), run, "SIGTERM")
    _assert_nothing_left(node_dir, run)


def test_ctrl_c_twice_during_the_tests_removes_the_node(local_provider_available, tmp_path):
    # A terminal sends SIGINT to the whole foreground group (pytest and its xdist workers); an
    # impatient user presses again a second later, as a CI cancel follows SIGINT with SIGTERM.
    run = LiveRun(tmp_path / "first", "-n", "2")
    node_dir = run.node_dir()
    run.wait_for(A_TEST_DONE)

    run.signal(signal.SIGINT, group=True)
    time.sleep(1)
    run.signal(signal.SIGINT, group=True)
    time.sleep(1)
    run.signal(signal.SIGTERM, group=True)

    code = run.finish()
    # Interrupted as a rule; once in four runs xdist ended with another code when the workers went first.
    assert code != pytest.ExitCode.OK, run.output
    assert "received: removing what the run made first" in run.output, run.output
    _assert_nothing_left(node_dir, run)


def test_a_node_left_by_a_killed_run_is_removed_by_the_next_run_which_says_so(local_provider_available, tmp_path):
    killed = LiveRun(tmp_path / "killed")
    killed.wait_for(NODE_READY)
    node_dir = killed.node_dir()
    killed.signal(signal.SIGKILL)
    killed.finish()
    assert node.leftovers(node_dir, machine_wide=False).get("processes"), "expected the killed run's node to run on"
    status = subprocess.run([*NODE_SCRIPT, "status"], capture_output=True, text=True, timeout=60)
    assert status.stdout.startswith(f"{node_dir}: left by pid {killed.process.pid}, which is gone"), status.stdout

    run = LiveRun(tmp_path / "next")
    said = run.wait_for(re.compile(r"custom-ca: removing the node pid (\d+) left in (\S+) "))
    run.wait_for(NODE_READY)
    new_dir = run.node_dir()
    run.signal(signal.SIGTERM)
    code = run.finish()

    assert (int(said.group(1)), Path(said.group(2))) == (killed.process.pid, node_dir), run.output
    assert not node_dir.exists()
    _assert_interrupted(code, run, "SIGTERM")
    _assert_nothing_left(new_dir, run)


def test_a_node_left_by_a_killed_run_is_removed_by_the_stop_command(local_provider_available, tmp_path):
    killed = LiveRun(tmp_path / "killed")
    killed.wait_for(NODE_READY)
    node_dir = killed.node_dir()
    killed.signal(signal.SIGKILL)
    killed.finish()

    stop = subprocess.run([*NODE_COMMAND, "stop"], capture_output=True, text=True, timeout=300)

    assert (stop.returncode, stop.stdout) == (0, f"removed the local node in {node_dir}\n"), stop.stdout + stop.stderr
    _assert_nothing_left(node_dir, killed)


# Keeps a live run in its first test until it is signalled: how long a whole run lasts is not the test's business.
HOLD_PLUGIN = """
import time


def pytest_runtest_call(item):
    time.sleep(3600)
"""


def test_a_node_owned_by_a_live_run_is_refused_and_the_stop_command_ends_that_run(local_provider_available, tmp_path,
                                                                                 monkeypatch):
    (tmp_path / "hold_plugin.py").write_text(HOLD_PLUGIN)
    with monkeypatch.context() as only_for_the_owner:
        only_for_the_owner.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        owner = LiveRun(tmp_path / "owner", "-p", "hold_plugin", *REFERENCE_SIGNER_RUN)
    owner.wait_for(NODE_READY)
    node_dir = owner.node_dir()

    refused = LiveRun(tmp_path / "refused")
    code = refused.finish()

    assert code == pytest.ExitCode.USAGE_ERROR, refused.output
    assert f"belongs to pid {owner.process.pid} (" in refused.output, refused.output
    assert f"`custom-ca-conformance-node stop {node_dir}`" in refused.output, refused.output
    assert "none of the known causes" not in refused.output and "Traceback" not in refused.output

    stop = subprocess.run([*NODE_COMMAND, "stop"], capture_output=True, text=True, timeout=300)

    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert f"pid {owner.process.pid}" in stop.stdout and "sent it SIGTERM" in stop.stdout, stop.stdout
    assert f"pid {owner.process.pid} removed its node in {node_dir}" in stop.stdout, stop.stdout
    _assert_interrupted(owner.finish(), owner, "SIGTERM")
    _assert_nothing_left(node_dir, owner)
