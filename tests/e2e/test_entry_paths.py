"""The two ways the plugin enters vLLM's API server, and a node that cannot enter refusing to
start: what an operator reads in the server log."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_poc import compat
from vllm_poc.compat.releases import release_of
from vllm_poc.testing.server import LocalServer

from .helpers import start_server

pytestmark = pytest.mark.e2e


def _log(server: LocalServer) -> str:
    return server.log_path.read_text(errors="replace")


def _said_at_load(log: str) -> str:
    """The API server's line that repeats what the plugin did when vLLM loaded it: the only one
    an operator reads on vLLM 0.32 where vLLM forks its EngineCore (GPUs), since the API server
    loads plugins before vLLM's logging is set and the forked EngineCore does not load them."""
    lines = [ln for ln in log.splitlines() if "at plugin load in this API server:" in ln]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_default_command_enters_through_the_declared_patch(poc_server: LocalServer) -> None:
    log = _log(poc_server)
    said = _said_at_load(log)
    assert "patch api-server-app replaced" in said
    assert "patch worker-extension replaced" in said
    assert "Loaded endpoint plugin vllm_poc" not in log
    assert "added /api/v1/pow routes" in log


def test_vllm_plugins_enters_through_the_endpoint_plugin(tuned_server: LocalServer) -> None:
    """Releases before 0.26 have no endpoint plugins: the same server enters through the patch."""
    log = _log(tuned_server)
    release = release_of(compat.vllm_version())
    assert release is not None
    if release.endpoint_plugins:
        assert "Loaded endpoint plugin vllm_poc" in log
        assert "patch api-server-app" not in log
    else:
        assert "patch api-server-app replaced" in _said_at_load(log)
    assert "patch worker-extension replaced" in _said_at_load(log)
    assert "added /api/v1/pow routes" in log


HIDE_THE_SEAM = """\
import vllm_poc.compat.frontend as frontend

frontend.API_SERVER_MODULES = ("vllm.entrypoints.moved.entry", "vllm.entrypoints.moved.api_server")
"""


def test_a_hidden_seam_stops_the_server_at_start(tiny_model: Path, tmp_path: Path) -> None:
    """A release that moved build_app/init_app_state: the server exits naming the seam, never
    serving inference without PoC."""
    (tmp_path / "sitecustomize.py").write_text(HIDE_THE_SEAM)
    server = LocalServer(
        tiny_model, tmp_path / "server.log", extra_env={"PYTHONPATH": str(tmp_path)}
    )
    with pytest.raises(RuntimeError, match="exited with code") as e:
        start_server(server)
    assert "build_app and init_app_state was not found in vLLM" in str(e.value)
    assert compat.vllm_version() in str(e.value)
    assert "vllm.entrypoints.moved.entry" in str(e.value)
    assert not server.alive()
