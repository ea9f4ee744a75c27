"""A process that has imported vLLM's API server once and forks local servers from it.

A test server spends 13-15 s of its start on 2 cores importing vLLM; a suite starts dozens.
``Zygote`` starts this module once (``python -m vllm_poc.testing.zygote``) with the environment
its servers share at interpreter start (``PYTHONPATH``, its ``sitecustomize``), and each
``LocalServer(zygote=...)`` is then forked from it: vLLM's modules are already in memory.
(``python -m vllm_poc.testing.zygote MODULE...`` imports those modules instead of ``PRELOAD``.)

Each request forks a leash, as ``leash`` is one: the leader of a new session, which ends its
group when the zygote is gone (the zygote ends when its stdin closes: the test process is gone).
The leash forks the server, which runs its module as ``python -m`` would, in the environment,
folder and log file asked for, and exits with the server's code. Each titles itself with the
command it stands for before the environment is replaced (``setproctitle`` cannot find the
memory it writes titles into after that): vLLM's engine processes keep their ``VLLM::`` titles.
The protocol is JSON lines: requests on stdin, ``{"pid": leash}`` then ``{"exit": [leash,
code]}`` on stdout.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from vllm_poc.testing import leash
from vllm_poc.testing.startup_env import FORK_ENV

PRELOAD = ("vllm.entrypoints.openai.api_server",)
"""What the zygote imports before it forks anything: what ``LocalServer`` runs."""
START_ENV = (
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "PYTHONSAFEPATH",
    "PYTHONNOUSERSITE",
    FORK_ENV,  # read by cpu_startup's sitecustomize
)
"""Variables read at the interpreter's start: a server is forked only where they are the
zygote's (its ``sys.path`` and ``sitecustomize``, and what that did, are the zygote's)."""


# ------------------------------------------------------------------ the zygote process


def _send(message: Mapping[str, Any]) -> None:
    """One JSON line on stdout, in one ``write`` (also from the SIGCHLD handler)."""
    os.write(1, (json.dumps(message) + "\n").encode())


def _reap(signum: int, frame: FrameType | None) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send({"exit": [pid, os.waitstatus_to_exitcode(status)]})


def serve(preload: Sequence[str]) -> None:
    """Import ``preload``, then fork a leash per request line until stdin closes."""
    for module in preload:
        importlib.import_module(module)
    zygote = os.getpid()
    signal.signal(signal.SIGCHLD, _reap)
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _lead(request, zygote)
        _send({"pid": pid})


def _lead(request: Mapping[str, Any], zygote: int) -> NoReturn:
    """The leash: leads a new session, forks the server, holds the group as ``leash`` does."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        _title(["vllm_poc.testing.leash", *request["argv"]])
        server = os.fork()
        if server == 0:
            _run(request)
        leash.hold(zygote)
        code = leash.finish(os.waitstatus_to_exitcode(os.waitpid(server, 0)[1]))
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code & 0xFF)


def _run(request: Mapping[str, Any]) -> NoReturn:
    """The server: ``python -m MODULE ARGS`` in the requested environment and folder."""
    code: Any = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _title(request["argv"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        module, *args = request["argv"]
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # what the interpreter's exit would have run
        if not isinstance(code, int | None):
            print(code, file=sys.stderr)
            code = 1
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit((code or 0) & 0xFF)


def _title(argv: Sequence[str]) -> None:
    """Name the process after the command it stands for (it would show the zygote's)."""
    with contextlib.suppress(ImportError):
        import setproctitle

        setproctitle.setproctitle(" ".join([Path(sys.executable).name, "-m", *argv]))


# ------------------------------------------------------------------ the test process's side


class Zygote:
    """The zygote process, started at construction (it imports vLLM in the background)."""

    def __init__(self, env: Mapping[str, str], preload: Sequence[str] = PRELOAD) -> None:
        self.env = dict(env)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "vllm_poc.testing.zygote", *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            start_new_session=True,  # a Ctrl-C at the terminal is the test process's to handle
        )
        self._cond = threading.Condition()
        self._forking = threading.Lock()
        """Held from a request to its answer: answers come in the order of the requests."""
        self._pids: list[int] = []
        self._exits: dict[int, int] = {}
        threading.Thread(target=self._read, name="zygote-reader", daemon=True).start()

    def fits(self, env: Mapping[str, str]) -> bool:
        """Whether a server with ``env`` may be forked from this zygote."""
        return all(env.get(name) == self.env.get(name) for name in START_ENV)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = json.loads(line)
            with self._cond:
                if "pid" in message:
                    self._pids.append(message["pid"])
                elif "exit" in message:
                    pid, code = message["exit"]
                    self._exits[pid] = code
                self._cond.notify_all()
        with self._cond:
            self._proc.wait()
            self._cond.notify_all()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def exit_code(self, pid: int) -> int | None:
        """The exit code of child ``pid`` once the zygote reported it."""
        with self._cond:
            return self._exits.get(pid)

    def await_news(self, timeout: float) -> None:
        """Wait at most ``timeout`` s for the zygote's next message."""
        with self._cond:
            self._cond.wait(timeout)

    def fork(self, argv: Sequence[str], env: Mapping[str, str], log: Path) -> ForkedProcess:
        """Fork ``python -m argv...`` (``argv`` without the ``-m``) with ``env``, its output
        to ``log``; the process stands for its leash, as ``LocalServer.proc`` does."""
        if not self.fits(env):
            raise ValueError(f"the zygote was started with other {START_ENV} than {dict(env)}")
        request = {"argv": list(argv), "env": dict(env), "cwd": os.getcwd(), "log": str(log)}
        assert self._proc.stdin is not None
        with self._forking, self._cond:
            count = len(self._pids)
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
            while len(self._pids) == count:
                if not self.alive():
                    raise RuntimeError(f"the zygote exited with code {self._proc.returncode}")
                self._cond.wait(1.0)
            return ForkedProcess(self, self._pids[count])

    def close(self) -> None:
        """Close the zygote's stdin: it exits, and the leashes it forked end their groups."""
        with contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class ForkedProcess:
    """The part of ``subprocess.Popen`` that ``LocalServer`` uses, for a zygote's child."""

    UNKNOWN = 255
    """The exit code of a child that outlived its zygote: nobody was left to report it."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.returncode = self.zygote.exit_code(self.pid)
        orphan = self.returncode is None and not self.zygote.alive()
        if orphan and not Path(f"/proc/{self.pid}").exists():
            self.returncode = self.UNKNOWN
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            self.zygote.await_news(min(left, 0.5) if left is not None else 0.5)
        assert self.returncode is not None
        return self.returncode


if __name__ == "__main__":
    serve(sys.argv[1:] or PRELOAD)
