"""Run a command that dies with the process that started it.

``python -m vllm_poc.testing.leash COMMAND...`` leads the process group it runs in (the caller
starts it in a new session) and runs COMMAND in that group. When the caller exits by any means,
SIGKILL included, the kernel sends the leash SIGTERM (Linux's parent-death signal), and the leash
ends the whole group: vLLM's API server with its EngineCore and workers. A stopped test run, a
CI job killed at its limit or a demo interrupted with Ctrl-C leaves no server behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from types import FrameType

PR_SET_PDEATHSIG = 1
GRACE_S = 10.0
"""How long the group may take to exit after SIGTERM before it is killed."""


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent exits (and exit now if it already has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        sys.exit(1)


def end_group(grace: float = GRACE_S) -> None:
    """SIGTERM every other process of this group, SIGKILL those alive after ``grace`` s."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _others_alive():
        time.sleep(0.1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.killpg(0, signal.SIGKILL)  # the leash goes too: nothing of the group is left


def _others_alive() -> bool:
    """Whether a process of this group other than the leash is still running (not a zombie)."""
    group, me = os.getpgid(0), os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def main(argv: list[str]) -> int:
    parent = int(os.environ.pop("VLLM_POC_LEASH_PARENT", os.getppid()))
    die_with_parent(parent)

    def stop(signum: int, frame: FrameType | None) -> None:
        end_group()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    child = subprocess.Popen(argv)
    code = child.wait()
    if code != 0:
        end_group(grace=0.0)  # whatever it left behind
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
