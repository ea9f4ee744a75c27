"""The end-to-end suite's server registry keeps memory for the next server: idle servers stop,
least recently used first, while too little is available (a fake meter, fake servers)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from tests.e2e.servers import MIN_AVAILABLE_BYTES, Config, Servers, process_title
from vllm_poc.testing.leash import group_members
from vllm_poc.testing.server import LocalServer

GIB = 2**30


class FakeServer:
    """Gives its memory back when stopped."""

    def __init__(self, meter: list[float], size: float) -> None:
        self.meter, self.size, self.stopped = meter, size, False

    def alive(self) -> bool:
        return not self.stopped

    def stop(self) -> None:
        self.stopped = True
        self.meter[0] += self.size


def registry(free: float, held: int, idle: int) -> tuple[Servers, list[FakeServer], list[float]]:
    """A registry with ``idle`` idle servers (least recently used first) after ``held`` held
    ones, each holding 3 GiB, and ``free`` bytes available."""
    meter = [free]
    servers = Servers(Path("models"), Path("logs"), available=lambda: meter[0])
    fakes = [FakeServer(meter, 3 * GIB) for _ in range(held + idle)]
    for i, fake in enumerate(fakes):
        config = Config.of(env={"N": str(i)})
        servers._running[config] = fake  # type: ignore[assignment]
        if i < held:
            servers._holders[config] += 1
    return servers, fakes, meter


def test_idle_servers_stop_oldest_first_until_there_is_room() -> None:
    servers, fakes, meter = registry(free=MIN_AVAILABLE_BYTES - 4 * GIB, held=1, idle=3)
    servers.make_room()
    assert [f.stopped for f in fakes] == [False, True, True, False]
    assert meter[0] >= MIN_AVAILABLE_BYTES
    assert len(servers._running) == 2


def test_nothing_stops_while_there_is_room() -> None:
    servers, fakes, _ = registry(free=MIN_AVAILABLE_BYTES, held=1, idle=2)
    servers.make_room()
    assert not any(f.stopped for f in fakes)


def test_held_servers_never_stop_even_when_memory_stays_short() -> None:
    servers, fakes, _ = registry(free=0.0, held=2, idle=1)
    servers.make_room()
    assert [f.stopped for f in fakes] == [False, False, True]


def test_a_start_that_needs_more_asks_for_more_room() -> None:
    servers, fakes, _ = registry(free=MIN_AVAILABLE_BYTES, held=0, idle=2)
    servers.make_room(MIN_AVAILABLE_BYTES + 2 * GIB)
    assert [f.stopped for f in fakes] == [True, False]


def test_servers_run_their_worker_in_the_engine_process_unless_asked() -> None:
    single = Config.of(env={"VLLM_POC_PROTOCOL": "artifact"}).environment()
    assert single == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_POC_PROTOCOL": "artifact"}
    assert Config.of(worker_process=True).environment() == {}
    assert Config.of() != Config.of(worker_process=True)


def test_a_process_group_lists_its_members_by_title() -> None:
    titles = [process_title(pid) for pid in group_members(os.getpgid(0))]
    assert any("pytest" in t or "xdist" in t or "python" in t for t in titles), titles
    assert group_members(2**22 + 1) == [] and process_title(2**22 + 1) == ""


def test_servers_fork_vllms_engine_processes_unless_asked() -> None:
    assert Config.of().fork and not Config.of(fork=False).fork
    assert Config.of() != Config.of(fork=False)


class FakeZygote:
    """Fits the start environment it was made with."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)

    def alive(self) -> bool:
        return True

    def fits(self, env: Mapping[str, str]) -> bool:
        return env.get("PYTHONPATH") == self.env.get("PYTHONPATH")


def test_forking_servers_share_one_zygote_unless_their_start_differs() -> None:
    started: list[FakeZygote] = []

    def start(env: Mapping[str, str]) -> FakeZygote:
        started.append(FakeZygote(env))
        return started[-1]

    servers = Servers(Path("models"), Path("logs"), start_zygote=start)  # type: ignore[arg-type]
    model, log = Path("models/tiny"), Path("logs/x.log")
    assert servers.zygote(LocalServer(model, log, fork=False)) is None, "spawned: as operators run"
    first = servers.zygote(LocalServer(model, log, fork=True, extra_env={"VLLM_POC_X": "1"}))
    again = servers.zygote(LocalServer(model, log, fork=True, extra_env={"VLLM_POC_X": "2"}))
    assert first is again is started[0] and len(started) == 1
    own = LocalServer(model, log, fork=True, extra_env={"PYTHONPATH": "/a/sitecustomize"})
    assert servers.zygote(own) is None, "a sitecustomize of its own needs a fresh interpreter"
    assert "VLLM_POC_X" not in started[0].env, "the zygote starts with no server's settings"
