"""Run a command that dies with the process that started it.

``python -m vllm_poc.testing.leash COMMAND...`` leads the process group it runs in (the caller
starts it in a new session) and runs COMMAND in that group. When the caller exits by any means,
SIGKILL included, the leash sees its parent gone (it looks twice a second) and ends the whole
group: vLLM's API server with its EngineCore and workers. A stopped test run, a CI job killed at
its limit or a demo interrupted with Ctrl-C leaves no server behind. (Linux's parent-death
signal would fire when the caller's *thread* ends, and servers are started from threads.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

GRACE_S = 10.0
"""How long the group may take to exit after SIGTERM before it is killed."""
WATCH_S = 0.5
"""How often the leash looks whether its parent is still there."""


def watch(parent: int) -> None:
    """Signal this process (SIGTERM, handled in the main thread) once ``parent`` is gone."""

    def look() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=look, daemon=True).start()


def end_group(grace: float = GRACE_S) -> None:
    """SIGTERM every other process of this group, SIGKILL those alive after ``grace`` s."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _others_alive():
        time.sleep(0.1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.killpg(0, signal.SIGKILL)  # the leash goes too: nothing of the group is left


def kill_others() -> None:
    """SIGKILL every other process of this group: what a command that failed left behind. The
    leash stays, to exit with the command's code."""
    for pid in group_members(os.getpgid(0)):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _others_alive() -> bool:
    """Whether a process of this group other than the leash is still running."""
    return any(pid != os.getpid() for pid in group_members(os.getpgid(0)))


def group_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that still run (zombies left out), from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def hold(parent: int) -> None:
    """Be the leash of this group: end it on SIGTERM or SIGINT, or once ``parent`` is gone."""

    def stop(signum: int, frame: FrameType | None) -> None:
        end_group()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    watch(parent)


def finish(code: int) -> int:
    """The command's exit ``code``, once whatever a failed command left behind is killed."""
    if code != 0:
        kill_others()
    return code


def main(argv: list[str]) -> int:
    parent = int(os.environ.pop("VLLM_POC_LEASH_PARENT", os.getppid()))  # server.LEASH_PARENT
    if os.getppid() != parent:
        return 1  # the parent died before the leash was on
    hold(parent)
    return finish(subprocess.Popen(argv).wait())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
