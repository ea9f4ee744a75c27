"""A test run killed at its limit leaves nothing behind: ``make test`` started in its own
process group, sent SIGTERM (what ``timeout`` and a CI job limit do) once a vLLM server is up;
30 s later no process of that run is alive."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from .conftest import REPO_ROOT
from .helpers import record_start, wait_until
from .servers import Servers

pytestmark = pytest.mark.e2e

MARK = "E2E_RUN_ID"
"""An environment variable only the processes of the killed run carry (vLLM's inherit it)."""


def _processes_of(run_id: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            status = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if f"{MARK}={run_id}".encode() in environ.split(b"\0") and status != "Z":
            found.append(f"{entry} {cmdline.decode(errors='replace')[:120]}")
    return found


def test_make_test_stopped_by_sigterm_leaves_no_process(servers: Servers, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    log = tmp_path / "make-test.log"
    env = {
        **os.environ,
        MARK: run_id,
        # One module that starts a server, forked from the run's zygote (the leash under a
        # process of the run's, the case of most servers); the report goes to this test's folder.
        "PYTEST_ADDOPTS": "-p no:cacheprovider tests/e2e/test_round.py",
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
        os.killpg(run.pid, signal.SIGTERM)
        killed = time.monotonic()
        deadline = killed + 30
        while _processes_of(run_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _processes_of(run_id)
        print(f"\n[e2e] killed run: nothing left after {time.monotonic() - killed:.1f} s")
        assert not left, "alive 30 s after SIGTERM:\n" + "\n".join(left)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
