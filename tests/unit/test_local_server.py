"""``LocalServer``'s command lines: the demo starts the command operators run (compiled), the
tests' default servers are eager (faster to start), and the demo prints what it runs."""

import os
from pathlib import Path

from vllm_poc.testing.server import LocalServer


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
