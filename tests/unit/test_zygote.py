"""The zygote forks a leash per request, which runs the module as ``python -m`` would in the
requested environment, folder and log, reports its exit code, and ends its group once the zygote
is gone (the suite's servers are forked from one; ``tests/e2e/servers.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.servers import process_title
from vllm_poc.testing.leash import group_members
from vllm_poc.testing.startup_env import FORK_ENV
from vllm_poc.testing.zygote import ForkedProcess, Zygote

PROBE = """
import json, os, sys, time
print(json.dumps({"argv": sys.argv[1:], "probe": os.environ.get("PROBE"), "cwd": os.getcwd(),
                  "pid": os.getpid(), "pgid": os.getpgid(0), "name": __name__}), flush=True)
if sys.argv[1] == "raise":
    raise RuntimeError("the probe fails")
if sys.argv[1] == "sleep":
    time.sleep(600)
if sys.argv[1] == "title":
    import setproctitle
    setproctitle.setproctitle("VLLM::Probe")
    if os.fork() == 0:
        setproctitle.setproctitle("VLLM::Child")
        print(open("/proc/self/cmdline").read().strip("\\0"), flush=True)
        os._exit(0)
    os.wait()
    print(open("/proc/self/cmdline").read().strip("\\0"), flush=True)
    sys.exit(0)
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    (tmp_path / "probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != FORK_ENV}
    env.update(PYTHONPATH=str(tmp_path), PROBE="the zygote's")
    z = Zygote(env, preload=["json"])
    try:
        yield z
    finally:
        z.close()


def _said(log: Path, timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if lines:
            return json.loads(lines[0])
        time.sleep(0.05)
    raise TimeoutError(f"{log} stayed empty")


def test_the_module_runs_as_main_where_and_as_asked(zygote: Zygote, tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    log.write_text("left from before\n")
    env = {**zygote.env, "PROBE": "the request's"}
    proc = zygote.fork(["probe", "3", "--flag"], env, log)
    assert proc.wait(timeout=30) == 3 and proc.poll() == 3
    said = _said(log)
    assert said["argv"] == ["3", "--flag"] and said["name"] == "__main__"
    assert said["probe"] == "the request's" and said["cwd"] == os.getcwd()
    assert said["pgid"] == proc.pid != said["pid"], "the leash leads the server's group"


def test_a_forked_server_and_its_children_can_name_themselves(
    zygote: Zygote, tmp_path: Path
) -> None:
    """vLLM titles its engine processes (``VLLM::EngineCore``), and the suite's layout checks and
    the killed-run test read those titles."""
    log = tmp_path / "sleep.log"
    proc = zygote.fork(["probe", "sleep"], dict(zygote.env), log)
    server = _said(log)["pid"]
    assert process_title(proc.pid).endswith("-m vllm_poc.testing.leash probe sleep")
    assert process_title(server).endswith("-m probe sleep"), process_title(server)
    log = tmp_path / "titled.log"
    proc = zygote.fork(["probe", "title"], dict(zygote.env), log)
    assert proc.wait(timeout=30) == 0
    assert log.read_text().splitlines()[1:] == ["VLLM::Child", "VLLM::Probe"]


def test_a_failing_module_exits_1_with_its_traceback(zygote: Zygote, tmp_path: Path) -> None:
    log = tmp_path / "raise.log"
    proc = zygote.fork(["probe", "raise"], dict(zygote.env), log)
    assert proc.wait(timeout=30) == 1
    assert "RuntimeError: the probe fails" in log.read_text()


def test_another_start_environment_is_not_forked(zygote: Zygote, tmp_path: Path) -> None:
    env = {**zygote.env, "PYTHONPATH": f"{tmp_path}:/elsewhere"}
    assert zygote.fits(zygote.env) and not zygote.fits(env)
    assert not zygote.fits({**zygote.env, FORK_ENV: "1"}), "its hook is set at the start"
    with pytest.raises(ValueError, match="PYTHONPATH"):
        zygote.fork(["probe", "0"], env, tmp_path / "never.log")


def test_the_group_ends_with_the_zygote(zygote: Zygote, tmp_path: Path) -> None:
    log = tmp_path / "sleep.log"
    proc = zygote.fork(["probe", "sleep"], dict(zygote.env), log)
    server = int(_said(log)["pid"])  # type: ignore[call-overload]
    assert proc.poll() is None and server in group_members(proc.pid)
    zygote.close()
    deadline = time.monotonic() + 30
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_members(proc.pid) == [], "the leash left its group running"


class _GoneZygote:
    """A zygote that died without reporting its children's exits."""

    def exit_code(self, pid: int) -> int | None:
        return None

    def alive(self) -> bool:
        return False


def test_a_child_that_outlived_its_zygote_reads_unknown_once_it_is_gone() -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()  # reaped: its /proc entry is gone
    gone = ForkedProcess(_GoneZygote(), ended.pid)  # type: ignore[arg-type]
    assert gone.poll() == ForkedProcess.UNKNOWN
    living = ForkedProcess(_GoneZygote(), os.getpid())  # type: ignore[arg-type]
    assert living.poll() is None, "still running: no code yet"
