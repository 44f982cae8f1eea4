#!/usr/bin/env python3
"""Benchmark of the local provider (the real single node): prints figures, asserts nothing about them.

Figures (each measured here unless the note says otherwise):

* setup, warm: ``python -m custom_ca_conformance.localplane.machine_setup`` with the existing caches
  (Debian packages, toolchain, images);
* toolchain build, cold: ``python -m custom_ca_conformance.localplane.toolchain build`` with fresh
  ``CUSTOM_CA_CONFORMANCE_CACHE`` and ``GOCACHE`` (``--cold``; about 15 minutes on 2 cores).
  Module downloads stay cached (``GOMODCACHE`` is kept): they are network time, not build
  time. Without ``--cold`` the figure recorded in the existing toolchain's ``complete.json``;
* the phases of each conformance run (``-n 2``): getting the cluster (the node), installing,
  the tests, teardown, and the rest (Python, pytest and xdist start-up), as the run records
  them in its state (``timings``), beside the wall time of the command:
  the default topology on a fresh node; a ``--custom-ca-keep-cluster`` run, then a full rerun
  on the kept cluster and a ``-k foo-to-bar`` rerun (serial: one pair); 10 and 30 tenants
  (100 and 900 pairs; ``--skip-scale`` leaves them out). Then the ratios the project aims at:
  kept full rerun / first run, 10 tenants / default;
* the memory of each sidecar's Envoy and pilot-agent when provisioning finished.

A failing pytest run, a failing build or a process left running fails the benchmark
(non-zero exit). A scale run whose setup passed but some tests failed is a figure too: its
phases are printed with its counts, its first failures are logged, and the exit is non-zero.
Everything goes to temporary directories that are removed at the end.

Usage::

    python bench/benchmark.py [--cold] [--skip-scale] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from custom_ca_conformance.localplane import toolchain as toolchain_module
from custom_ca_conformance.localplane.processes import stop_from_pid_file
from custom_ca_conformance.model.run_record import RunRecord
from custom_ca_conformance.model.topology import default_topology, generated_topology

SCALE_TENANTS = (10, 30)
PYTEST_BASE = ["-m", "pytest", "--pyargs", "custom_ca_conformance.conformance", "--custom-ca-cluster", "local", "-q", "-p", "no:cacheprovider"]
OUTCOME_WORDS = ("passed", "failed", "skipped", "error", "errors", "xfailed", "xpassed", "deselected")


class BenchmarkError(RuntimeError):
    """A measured step failed; the message says which and where its output is."""


@dataclass
class Figure:
    name: str
    seconds: float | None
    note: str
    details: dict = field(default_factory=dict)
    unit: str = "s"


# --- helpers ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def temp_dir(label: str) -> Path:
    # Short paths: pilot-agent puts unix sockets under the workdir (108-byte limit).
    return Path(tempfile.mkdtemp(prefix=f"ccb-{label}-"))


def run_timed(argv: list[str], *, env: dict | None = None, output: Path) -> tuple[float, int]:
    """Run ``argv`` from the project root with stdout+stderr in ``output``; returns (seconds, exit code)."""
    log(f"running: {' '.join(argv)}")
    started = time.monotonic()
    with output.open("w") as out:
        code = subprocess.run(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return time.monotonic() - started, code


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 120:
        return f"{seconds:.0f} s ({int(seconds // 60)}m{int(seconds % 60):02d}s)"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def processes_under(directory: Path) -> list[str]:
    """Processes whose command line or working directory lies under ``directory`` (leak check)."""
    needle = str(directory.resolve())
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if needle in cmdline or cwd == needle or cwd.startswith(needle + "/"):
            found.append(f"{proc.name} {cmdline[:120]}")
    return found


def check_nothing_left(workdir: Path, what: str) -> None:
    """Fail if ``what`` left processes running under ``workdir``; stop them through its pid file first."""
    leaked = processes_under(workdir)
    if not leaked:
        return
    pid_file = workdir / "pids.json"
    if pid_file.exists():
        stop_from_pid_file(pid_file)
    raise BenchmarkError(f"{what} left processes running under {workdir}:\n  " + "\n  ".join(leaked))


# --- toolchain ---------------------------------------------------------------------------


def setup_warm() -> Figure:
    if toolchain_module.cached_toolchain() is None:
        raise BenchmarkError(
            f"the toolchain is not built in {toolchain_module.toolchain_dir()}: "
            "run `python -m custom_ca_conformance.localplane.machine_setup` first (the other figures need it)")
    scratch = temp_dir("warm")
    try:
        seconds, code = run_timed([sys.executable, "-m", "custom_ca_conformance.localplane.machine_setup"], output=scratch / "out")
        if code != 0:
            raise BenchmarkError(f"warm setup exited {code}:\n{tail(scratch / 'out')}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Figure("setup, warm", seconds, "packages present, toolchain and images cached: builds nothing")


def toolchain_cold() -> Figure:
    scratch = temp_dir("cold")
    try:
        env = dict(os.environ, **{toolchain_module.CACHE_ENV: str(scratch / "cache"),
                                  "GOCACHE": str(scratch / "gocache")})
        seconds, code = run_timed([sys.executable, "-m", "custom_ca_conformance.localplane.toolchain", "build"], env=env,
                                  output=scratch / "out")
        if code != 0:
            raise BenchmarkError(f"cold toolchain build exited {code}:\n{tail(scratch / 'out')}")
        stamps = list((scratch / "cache" / "toolchain").glob(f"*/{toolchain_module.STAMP_NAME}"))
        per_binary = json.loads(stamps[0].read_text())["build_seconds"] if stamps else {}
    finally:
        # Go writes its cache read-only in places; make it removable.
        subprocess.run(["chmod", "-R", "u+w", str(scratch)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    return Figure("toolchain build, cold", seconds,
                  f"measured now: fresh toolchain cache and GOCACHE, module downloads cached; {_per_binary(per_binary)}",
                  {"build_seconds": per_binary})


def toolchain_cold_recorded() -> Figure:
    stamp_path = toolchain_module.toolchain_dir() / toolchain_module.STAMP_NAME
    stamp = json.loads(stamp_path.read_text())
    per_binary = stamp.get("build_seconds", {})
    return Figure("toolchain build, cold", float(stamp["total_seconds"]),
                  f"recorded at build time {stamp.get('completed_at', '?')} (complete.json, incl. downloads); "
                  f"{_per_binary(per_binary)}",
                  {"recorded": True, "build_seconds": per_binary, "stamp": str(stamp_path)})


def _per_binary(per_binary: dict) -> str:
    return ", ".join(f"{name} {seconds}s" for name, seconds in per_binary.items())


# --- pytest runs ---------------------------------------------------------------------------

PHASES = (("cluster", "cluster_seconds"), ("install", "install_seconds"), ("tests", "tests_seconds"),
          ("teardown", "teardown_seconds"))
KEEP = "--custom-ca-keep-cluster"


@dataclass
class PytestRun:
    label: str
    argv: list[str]
    pairs: int
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)
    summary: str = ""
    timings: dict = field(default_factory=dict)
    rss: dict = field(default_factory=dict)
    failed: bool = False

    @property
    def rest(self) -> float:
        """Wall time outside the recorded phases: interpreter, pytest, plugin and xdist start-up and exit."""
        return self.seconds - sum(self.timings.get(key) or 0 for _, key in PHASES)


def run_conformance(label: str, extra: list[str], pairs: int, *, failures_are_figures: bool = False) -> PytestRun:
    """One run of the suite, timed; a run with failed tests raises, unless ``failures_are_figures`` (the scale
    runs: what failed, and how long the run took, are the figure)."""
    workdir = temp_dir(label.split(",")[0].replace(" ", "-"))
    output = workdir.parent / f"{workdir.name}.log"
    argv = [sys.executable, *PYTEST_BASE, *extra, "--custom-ca-workdir", str(workdir)]
    run = PytestRun(label, argv, pairs)
    try:
        run.seconds, code = run_timed(argv, output=output)
        run.summary = _summary_line(output.read_text(errors="replace"))
        run.counts = _counts(run.summary)
        state_file = workdir / "state.json"
        document = json.loads(state_file.read_text()).get("state") if state_file.exists() else None
        record = RunRecord.from_dict(document) if document else None
        check_nothing_left(workdir, f"pytest ({label})")
        if record and record.node_workdir and KEEP not in extra:  # a kept node runs on, as asked
            check_nothing_left(Path(record.node_workdir), f"pytest ({label}), its node")
        failed = code != 0 or run.counts.get("failed") or run.counts.get("error") or run.counts.get("errors")
        if failed and not (failures_are_figures and run.counts.get("passed")):
            raise BenchmarkError(f"pytest ({label}) exited {code}: {run.summary or 'no summary line'}\n"
                                 f"--- last lines of its output ---\n{tail(output, 60)}")
        run.failed = bool(failed)
        run.timings, run.rss = (record.timings, record.sidecar_rss_bytes) if record else ({}, {})
        log(f"{label}: {run.summary} (wall {run.seconds:.1f}s)" + (f"; first failures:\n{_failures(output)}" if failed else ""))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        output.unlink(missing_ok=True)
    return run


def stop_kept_node() -> None:
    """What the kept-cluster runs left: ``custom-ca-conformance-node stop``."""
    result = subprocess.run([sys.executable, "-m", "custom_ca_conformance.localplane.node", "stop"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchmarkError(f"stopping the kept node exited {result.returncode}: {result.stdout}{result.stderr}")


def _summary_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        stripped = line.strip().strip("=").strip()
        if re.search(r"\bin [\d.]+s\b", stripped) and any(word in stripped for word in OUTCOME_WORDS):
            return stripped
    return ""


def _failures(output: Path, shown: int = 5) -> str:
    """The first ``shown`` FAILED lines of a run's output, and how their reasons ("seen:") are spread."""
    text = output.read_text(errors="replace")
    failed = [line for line in text.splitlines() if line.startswith("FAILED ")][:shown]
    seen = collections.Counter(re.sub(r"tenant\d+", "tenantN", line.strip()) for line in text.splitlines()
                               if line.strip().startswith("E           seen:"))
    return "\n".join(failed + [f"{count} x {line[1:].strip()}" for line, count in seen.most_common(3)])


def _counts(summary: str) -> dict:
    return {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", summary) if word in OUTCOME_WORDS}


def _counts_note(run: PytestRun) -> str:
    counts = ", ".join(f"{number} {word}" for word, number in run.counts.items())
    return f"{counts}; {run.pairs} pairs"


def phase_table(runs: list[PytestRun]) -> list[str]:
    """One line per run: wall time, then each phase (``-`` where the run recorded none)."""
    names = [name for name, _ in PHASES] + ["rest"]
    width = max(len(run.label) for run in runs)
    lines = [f"{'run':<{width}}  {'wall':>8}  " + "  ".join(f"{name:>8}" for name in names) + "  tests run",
             f"{'-' * width}  {'-' * 8}  " + "  ".join("-" * 8 for _ in names) + "  ---------"]
    for run in runs:
        cells = [fmt_seconds(run.timings.get(key)) for _, key in PHASES] + [fmt_seconds(run.rest)]
        lines.append(f"{run.label:<{width}}  {fmt_seconds(run.seconds):>8}  "
                     + "  ".join(f"{cell:>8}" for cell in cells) + f"  {_counts_note(run)}")
    return lines


def ratio_figures(by_label: dict[str, PytestRun]) -> list[Figure]:
    """The aims of the project's speed issue, from runs of this one benchmark."""
    figures = []
    for name, part, whole, aim in (("kept full rerun / first kept run", "kept, full rerun", "kept, first run", "0.25"),
                                   ("10 tenants / default", "10 tenants", "default", "1.5")):
        if part in by_label and whole in by_label:
            ratio = by_label[part].seconds / by_label[whole].seconds
            figures.append(Figure(name, ratio, f"{by_label[part].seconds:.1f} s / {by_label[whole].seconds:.1f} s "
                                               f"(aim: at most {aim})", unit="x"))
    return figures


def sidecar_memory_figure(run: PytestRun) -> Figure:
    sizes = run.rss or {}
    envoy, agent = sizes.get("envoy") or [], sizes.get("pilot-agent") or []
    if not envoy:
        return Figure("memory per sidecar", None, "no Envoy process was seen when provisioning finished")
    mib = 1024 * 1024
    per_sidecar = (sum(envoy) + sum(agent)) / len(envoy) / mib
    return Figure("memory per sidecar (MiB RSS)", per_sidecar,
                  f"Envoy median {statistics.median(envoy) / mib:.0f} MiB + pilot-agent median "
                  f"{statistics.median(agent) / mib if agent else 0:.0f} MiB, {len(envoy)} sidecars",
                  {"envoy_bytes": envoy, "pilot_agent_bytes": agent}, unit="MiB")


# --- report -----------------------------------------------------------------------------------


def environment() -> dict:
    pins = toolchain_module.PINS
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "go": toolchain_module.go_version(),
        "kubernetes": pins.kubernetes_version,
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "istio": pins.istio_release_label,
    }


def print_table(figures: list[Figure], env: dict, runs: list[PytestRun]) -> None:
    print(f"custom-ca-conformance benchmark: {env['cpus']} CPUs {env['machine']}, Python {env['python']}, "
          f"{env['go']}, Kubernetes {env['kubernetes']}, istio {env['istio']}, "
          f"load average {env['load_average_at_start']} at start")
    width = max(len(f.name) for f in figures)
    values = [fmt_seconds(f.seconds) if f.unit == "s" else f"{f.seconds:.2f}{f.unit}" if f.unit == "x"
              else f"{f.seconds:.0f} {f.unit}" for f in figures]
    value_width = max(len(v) for v in values)
    print(f"{'figure':<{width}}  {'value':>{value_width}}  note")
    print(f"{'-' * width}  {'-' * value_width}  {'-' * 4}")
    for figure, value in zip(figures, values):
        print(f"{figure.name:<{width}}  {value:>{value_width}}  {figure.note}")
    print()
    print("conformance runs (-n 2, the -k run serial), phases as each run recorded them:")
    print("\n".join(phase_table(runs)))


def conformance_runs(skip_scale: bool) -> list[PytestRun]:
    """The default run, the kept-cluster runs (the kept node stopped after them, also on failure), the scale runs."""
    pairs = len(default_topology().pairs())
    runs = [run_conformance("default", ["-n", "2"], pairs)]
    try:
        runs.append(run_conformance("kept, first run", ["-n", "2", KEEP], pairs))
        runs.append(run_conformance("kept, full rerun", ["-n", "2", KEEP], pairs))
        runs.append(run_conformance("kept, -k foo-to-bar", [KEEP, "-k", "foo-to-bar"], 1))
    finally:
        stop_kept_node()
    if not skip_scale:
        for tenants in SCALE_TENANTS:
            runs.append(run_conformance(f"{tenants} tenants", ["--custom-ca-tenants", str(tenants), "-n", "2"],
                                        len(generated_topology(tenants).pairs()), failures_are_figures=True))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true",
                        help="measure a cold toolchain build (about 15 minutes on 2 cores); "
                             "default: show the one recorded in the toolchain's complete.json")
    parser.add_argument("--skip-scale", action="store_true",
                        help="leave out the 10- and 30-tenant topology runs")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = parser.parse_args(argv)

    started = time.monotonic()
    try:
        env = environment()
        figures = [setup_warm()]
        figures.append(toolchain_cold() if args.cold else toolchain_cold_recorded())
        runs = conformance_runs(args.skip_scale)
        figures.append(sidecar_memory_figure(runs[0]))
        figures += ratio_figures({run.label: run for run in runs})
    except (BenchmarkError, toolchain_module.ToolchainError) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1
    log(f"benchmark done in {time.monotonic() - started:.0f}s")
    print_table(figures, env, runs)
    if args.json:
        document = {"environment": env, "figures": [asdict(f) for f in figures],
                    "runs": [asdict(run) | {"rest_seconds": round(run.rest, 2)} for run in runs]}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 1 if any(run.failed for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
