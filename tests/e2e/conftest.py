"""Fixtures for the end-to-end suite: a tiny local model and real vLLM server processes.

Server starts are the expensive part (~40 s each on a 2-core machine), so the PoC-enabled
server is shared by the whole session and the plugin-disabled one by its module only.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vllm_poc.testing.server import LocalServer

from .helpers import LIMITS, start_server, stop_round

REPO_ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end test against a real vLLM API server process (slow)"
    )
    config.addinivalue_line(
        "markers",
        "runs_last: e2e test that leaves callback retries behind on the shared server; "
        "run after every other test so no other receiver can be affected",
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session: pytest.Session) -> None:
    # A SIGTERM (a `timeout`, a CI limit) must still run fixture teardown, which stops the vLLM
    # servers: they live in their own process groups and would outlive pytest otherwise.
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
    # Stable sort: order is kept otherwise.
    items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The random-weight tiny Qwen3 folder, made once and cached across sessions."""
    from vllm_poc.testing.tiny_model import make_tiny_model

    cache = os.environ.get("VLLM_POC_TEST_MODEL_DIR") or str(REPO_ROOT / ".models" / "tiny-qwen3")
    return make_tiny_model(Path(cache))


TUNED_API_KEY = "e2e-secret"
TUNED_HEADERS = {"Authorization": f"Bearer {TUNED_API_KEY}"}
TUNED_ENV = {
    "VLLM_PLUGINS": "vllm_poc",
    "VLLM_POC_API_KEY": TUNED_API_KEY,
    "VLLM_POC_INFERENCE_DURING_VALIDATION": "1",
    "VLLM_POC_CALLBACK_MAX_RETRIES": "10",
    "VLLM_POC_CALLBACK_BACKOFF_BASE": "0.1",
    "VLLM_POC_CALLBACK_BACKOFF_MAX": "0.8",
    "VLLM_POC_CALLBACK_QUEUE_SIZE": "8",
    "VLLM_POC_CALLBACK_TIMEOUT": "1.0",
    "VLLM_POC_MAX_VALIDATE_NONCES": "64",
    "VLLM_POC_MAX_BODY_BYTES": "65536",
}
"""Settings of the ``tuned_server``: entered through vLLM's endpoint-plugin contract
(``VLLM_PLUGINS``), auth on, inference during validation, fast and small callback retries, low
limits. One server for all tests of non-default settings; ``poc_server`` runs the operator's
default (``VLLM_POC_ENABLED=1`` alone, the fallback patch)."""


def _start(
    model: Path,
    factory: pytest.TempPathFactory,
    name: str,
    *,
    poc_enabled: bool,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    headers: dict[str, str] | None = None,
    enforce_eager: bool = True,
) -> LocalServer:
    log = factory.mktemp("vllm-logs") / f"{name}.log"
    server = LocalServer(
        model,
        log,
        poc_enabled=poc_enabled,
        extra_env=extra_env,
        extra_args=extra_args or (),
        enforce_eager=enforce_eager,
    )
    start_server(server, headers)
    print(f"\n[e2e] {name} healthy after {server.startup_seconds:.1f} s (log: {log})")
    return server


def _require_installed_plugin() -> None:
    from importlib.metadata import entry_points

    names = [ep.name for ep in entry_points(group="vllm.general_plugins")]
    if "vllm_poc" not in names:
        pytest.fail(
            "vllm-poc is not installed as a distribution (no vllm.general_plugins entry point "
            f"'vllm_poc'; found {names}): run `make install` first"
        )


@pytest.fixture(scope="session")
def poc_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One vLLM server with ``VLLM_POC_ENABLED=1`` for the whole session."""
    _require_installed_plugin()
    server = _start(tiny_model, tmp_path_factory, "poc-server", poc_enabled=True)
    try:
        r = httpx.get(f"{server.base_url}/api/v1/pow/status", timeout=30.0)
        assert r.status_code == 200, (
            f"VLLM_POC_ENABLED=1 but GET /api/v1/pow/status answered {r.status_code}: "
            f"{r.text[:500]}; log tail:\n{server.log_tail()}"
        )
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    """A vLLM server with the plugin installed but ``VLLM_POC_ENABLED`` unset."""
    server = _start(tiny_model, tmp_path_factory, "plain-server", poc_enabled=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(poc_server: LocalServer) -> Iterator[httpx.Client]:
    """HTTP client for the PoC server; stops any round and checks the server survived."""
    with httpx.Client(base_url=poc_server.base_url, timeout=60.0, limits=LIMITS) as c:
        yield c
        alive = poc_server.alive()
        if alive:
            stop_round(poc_server)
        assert alive, f"the vLLM server died during the test; log tail:\n{poc_server.log_tail()}"


@pytest.fixture(scope="session")
def tuned_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    """A PoC server with ``TUNED_ENV``, shared by the session (started on first use)."""
    _require_installed_plugin()
    server = _start(
        tiny_model,
        tmp_path_factory,
        "tuned-server",
        poc_enabled=True,
        extra_env=TUNED_ENV,
        headers=TUNED_HEADERS,
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tuned_client(tuned_server: LocalServer) -> Iterator[httpx.Client]:
    """Authenticated client of the tuned server; stops any round afterwards."""
    headers = TUNED_HEADERS
    with httpx.Client(base_url=tuned_server.base_url, timeout=60.0, headers=headers) as c:
        yield c
        alive = tuned_server.alive()
        if alive:
            stop_round(tuned_server, headers)
        assert alive, f"the vLLM server died during the test; log tail:\n{tuned_server.log_tail()}"


@pytest.fixture(scope="module")
def tuned_module_client(tuned_server: LocalServer) -> Iterator[httpx.Client]:
    """An authenticated client of the tuned server for a module's fixtures; stops any round."""
    headers = TUNED_HEADERS
    with httpx.Client(base_url=tuned_server.base_url, timeout=120.0, headers=headers) as c:
        yield c
        if tuned_server.alive():
            stop_round(tuned_server, headers)


@pytest.fixture
def plain_client(plain_server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=plain_server.base_url, timeout=60.0, limits=LIMITS) as c:
        yield c
        assert plain_server.alive(), f"server died; log tail:\n{plain_server.log_tail()}"
