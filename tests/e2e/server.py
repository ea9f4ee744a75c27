"""Start and stop a real vLLM OpenAI API server process for the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

HEALTH_TIMEOUT_S = float(os.environ.get("E2E_SERVER_START_TIMEOUT", "300"))
"""Seconds a server may take to answer /health: ~40 s on an idle 2-core machine, 150 s+ when
other servers share the CPU. A server that dies is reported at once, whatever this says."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """One ``python -m vllm.entrypoints.openai.api_server`` process in its own process group."""

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        *,
        poc_enabled: bool,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path)
        self.poc_enabled = poc_enabled
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--max-model-len",
            "512",
            "--dtype",
            "bfloat16",
            "--enforce-eager",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        # Hermetic: no PoC setting or API key leaks in from the caller's environment.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("VLLM_POC_") and k != "VLLM_API_KEY"
        }
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"
        if self.poc_enabled:
            env["VLLM_POC_ENABLED"] = "1"
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = HEALTH_TIMEOUT_S) -> VllmServer:
        """Start the process and wait until ``GET /health`` answers 200."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                start_new_session=True,  # own process group: stop() reaches EngineCore too
            )
        try:
            self._wait_healthy(t0 + timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_healthy(self, deadline: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited with code {self.proc.returncode} before it was "
                    f"healthy; log tail:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM server not healthy in time; log tail:\n{self.log_tail()}")
            time.sleep(0.5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n_chars: int = 6000) -> str:
        """The end of the server log, after its first lines that name an error."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<no log: {e}>"
        errors = [ln for ln in text.splitlines() if "Error" in ln or "error:" in ln][:15]
        head = "first error lines:\n" + "\n".join(errors) + "\n---\n" if errors else ""
        return head + text[-n_chars:]

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after ``grace`` s."""
        if self.proc is None:
            return
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = self.proc.pid  # the leader is gone; children keep the group id
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                if self.proc.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(timeout=0.2)
                else:
                    time.sleep(0.2)
            if not _group_alive(pgid):
                break
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
