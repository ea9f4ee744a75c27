"""A test run killed at its limit leaves nothing behind: ``make test`` started in its own
process group, sent SIGTERM (what ``timeout`` and a CI job limit do) once a vLLM server is up;
30 s later no process of that run is alive."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from .conftest import REPO_ROOT
from .helpers import record_start, wait_until
from .servers import Servers

pytestmark = pytest.mark.e2e

MARK = "E2E_RUN_ID"
"""An environment variable only the processes of the killed run carry, as /proc shows it where no
process title overwrote it: those the run started after the snapshot of its processes."""


Process = tuple[int, str]
"""A process: its pid and its start time (a pid alone may be reused)."""


def _table() -> dict[Process, tuple[int, bytes, str]]:
    """Every live process: its parent, its environment as /proc shows it and its command."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if stat[0] != "Z":
            command = cmdline.decode(errors="replace")
            table[(int(entry), stat[19])] = (int(stat[1]), environ, command)
    return table


def _processes_of(run_id: str, known: Iterable[Process] = ()) -> dict[Process, str]:
    """The run's live processes and their commands: those whose environment carries the mark,
    and those of ``known`` (a process title hides the environment in /proc: vLLM's engine
    processes set one)."""
    mark, known = f"{MARK}={run_id}".encode(), set(known)
    return {
        process: command[:120]
        for process, (_, environ, command) in _table().items()
        if process in known or mark in environ.split(b"\0")
    }


def _descendants(root: int) -> dict[Process, str]:
    """The live processes under ``root`` (whatever session they lead) and their commands."""
    table = _table()
    found: dict[Process, str] = {}
    parents = {root}
    while parents:
        children = {p: c for p, (ppid, _, c) in table.items() if ppid in parents and p not in found}
        found.update(children)
        parents = {pid for pid, _ in children}
    return found


def test_make_test_stopped_by_sigterm_leaves_no_process(servers: Servers, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    log = tmp_path / "make-test.log"
    env = {
        **os.environ,
        MARK: run_id,
        # One module whose server is forked from the run's zygote (the case of most servers)
        # and has engine processes (two); the report goes to this test's folder.
        "PYTEST_ADDOPTS": "-p no:cacheprovider tests/e2e/test_data_parallel.py",
    }
    report = tmp_path / "report"  # `make test` empties its report folder first: not the log's
    command = ["make", "--no-print-directory", "test", "OLD_RELEASES=", f"REPORT={report}"]
    servers.make_room()
    with open(log, "wb") as out:
        run = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = report / "starts.jsonl"  # a line once a server answered /health
        wait_until(
            lambda: started.exists() or run.poll() is not None, 420, "the run's first server"
        )
        assert run.poll() is None, f"make test ended by itself:\n{log.read_text()[-3000:]}"
        record_start("killed run's server")
        assert _processes_of(run_id), "no process carries the run's mark"
        known = _descendants(run.pid)
        engines = [command for command in known.values() if command.startswith("VLLM::")]
        assert len(engines) >= 2, f"the server's engine processes are not seen: {known}"
        os.killpg(run.pid, signal.SIGTERM)
        killed = time.monotonic()
        deadline = killed + 30
        while _processes_of(run_id, known) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _processes_of(run_id, known)
        print(
            f"\n[e2e] killed run: {len(known)} processes, {len(engines)} of vLLM's engines; "
            f"nothing left after {time.monotonic() - killed:.1f} s"
        )
        assert not left, "alive 30 s after SIGTERM:\n" + "\n".join(
            f"{pid} {command}" for (pid, _), command in left.items()
        )
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
