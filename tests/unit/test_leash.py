"""``testing.leash``: a command and everything it starts die with the process that started it,
whether that process exits, is stopped with SIGTERM, or is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vllm_poc.testing.leash import group_members

GRANDCHILD = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
"""What the leash runs: a process that starts another and keeps running, as vLLM's API server
starts its EngineCore and workers."""


def _parent_script(pids: Path) -> str:
    """A parent that starts the leash as ``LocalServer`` does and then waits forever."""
    return textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        env = dict(os.environ, VLLM_POC_LEASH_PARENT=str(os.getpid()))
        leash = subprocess.Popen(
            [sys.executable, "-m", "vllm_poc.testing.leash", sys.executable, "-c", {GRANDCHILD!r}],
            start_new_session=True, env=env,
        )
        open({str(pids)!r}, "w").write(str(leash.pid))
        time.sleep(300)
        """
    )


def _until(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_group_dies_with_the_parent(tmp_path: Path, how: signal.Signals) -> None:
    pids = tmp_path / "leash.pid"
    parent = subprocess.Popen([sys.executable, "-c", _parent_script(pids)])
    try:
        assert _until(pids.exists, 30), "the parent never started the leash"
        group = int(pids.read_text())
        assert _until(lambda: len(group_members(group)) >= 3, 30), group_members(group)
        parent.send_signal(how)
        parent.wait(timeout=10)
        assert _until(lambda: not group_members(group), 20), group_members(group)
    finally:
        parent.kill()


def test_stopping_the_group_ends_every_member(tmp_path: Path) -> None:
    """``LocalServer.stop`` signals the group: the leash passes it on, then kills the rest."""
    leash = subprocess.Popen(
        [sys.executable, "-m", "vllm_poc.testing.leash", sys.executable, "-c", GRANDCHILD],
        start_new_session=True,
    )
    try:
        assert _until(lambda: len(group_members(leash.pid)) >= 3, 30)
        os.killpg(leash.pid, signal.SIGTERM)
        assert _until(lambda: not group_members(leash.pid), 20), group_members(leash.pid)
    finally:
        if group_members(leash.pid):
            os.killpg(leash.pid, signal.SIGKILL)


def test_a_server_started_from_a_thread_lives_as_long_as_the_process(tmp_path: Path) -> None:
    """Servers of one deployment are started from a thread pool: the thread ending is not the
    parent ending (Linux's parent-death signal would take it for one)."""
    pids = tmp_path / "leash.pid"
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys, threading, time
        env = dict(os.environ, VLLM_POC_LEASH_PARENT=str(os.getpid()))
        leash = [sys.executable, "-m", "vllm_poc.testing.leash"]
        command = [*leash, sys.executable, "-c", {GRANDCHILD!r}]

        def spawn():
            leash = subprocess.Popen(command, start_new_session=True, env=env)
            open({str(pids)!r}, "w").write(str(leash.pid))

        threading.Thread(target=spawn).start()
        time.sleep(300)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert _until(pids.exists, 30), "the parent never started the leash"
        group = int(pids.read_text())
        assert _until(lambda: len(group_members(group)) >= 3, 30), group_members(group)
        time.sleep(2)  # the spawning thread is long gone
        assert len(group_members(group)) >= 3, "the group died with the thread"
        parent.kill()
        parent.wait(timeout=10)
        assert _until(lambda: not group_members(group), 20), group_members(group)
    finally:
        parent.kill()


def test_a_failing_command_exits_with_its_code_and_leaves_nothing(tmp_path: Path) -> None:
    pids = tmp_path / "child"
    command = (
        f"import subprocess; p = subprocess.Popen(['sleep', '300']); "
        f"open({str(pids)!r}, 'w').write(str(p.pid)); raise SystemExit(3)"
    )
    leash = subprocess.run(
        [sys.executable, "-m", "vllm_poc.testing.leash", sys.executable, "-c", command],
        start_new_session=True,
        timeout=60,
    )
    assert leash.returncode == 3
    assert _until(lambda: not Path(f"/proc/{pids.read_text()}").exists(), 10)
