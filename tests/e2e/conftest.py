"""Fixtures for the end-to-end suite: a tiny local model and real vLLM server processes.

Server starts are the expensive part (~30-60 s each on a 2-core machine): every server comes
from the session's registry (``servers``), which starts one process per configuration and
shares it with every module that asks for the same one.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vllm_poc.testing.server import LocalServer
from vllm_poc.testing.startup_env import INDUCTOR_CACHE_ENV, shared_inductor_cache

from .helpers import LIMITS, STARTS, STARTS_FILE_ENV, stop_round
from .servers import Config, Servers

REPO_ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "runs_last: e2e test that leaves callback retries behind on the shared server; "
        "run after every other test so no other receiver can be affected",
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def _e2e_session() -> Iterator[None]:
    """Before the first server of the session starts. (Not ``pytest_sessionstart``: pytest
    calls it for the conftests of the paths it was given only, so not under ``pytest -m e2e``.)"""
    # A SIGTERM (a `timeout`, a CI limit) must still run fixture teardown, which stops the vLLM
    # servers (and they die with this process anyway: ``testing.leash``).
    signal.signal(signal.SIGTERM, _interrupt)
    # The servers and engines compile the tiny model under several configurations: one
    # inductor cache for all of them (``testing/cpu_startup``), inherited from here.
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get(INDUCTOR_CACHE_ENV):
            patch.setenv(INDUCTOR_CACHE_ENV, str(shared_inductor_cache()))
        yield


MODULES_BY_SERVER = (
    # The artifact protocol's server (``test_artifact_api.ARTIFACT``; the release smoke's under
    # the default entry, MLNode's open variant) and MLNode's keyed one.
    "test_artifact_api",
    "test_artifact_limits",
    "test_fuzz",
    "test_mlnode_contract",
    "test_release_smoke",
    # The plugin installed but off, compiled (``PLAIN``).
    "test_as_run",
    "test_off_switch",
)
"""Modules that share a server configuration, run one after the other so that it starts once
(the registry keeps only ``servers.IDLE_CAPACITY`` idle servers); every other module follows in
file order."""


def _order(item: pytest.Item) -> tuple[bool, int]:
    here = item.path.parent == Path(__file__).parent
    module = item.path.stem if here else ""
    group = (
        MODULES_BY_SERVER.index(module) if module in MODULES_BY_SERVER else len(MODULES_BY_SERVER)
    )
    return item.get_closest_marker("runs_last") is not None, group


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Stable sort: the order within a module, and of the other modules, is kept.
    items.sort(key=_order)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if STARTS:
        seconds = sum(s for _, s in STARTS)
        terminalreporter.write_line(
            f"[e2e] {len(STARTS)} vLLM starts ({seconds:.0f} s until healthy); "
            f"{STARTS_FILE_ENV}={os.environ.get(STARTS_FILE_ENV, '')}"
        )


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The session's server registry; every server it started is stopped at the end."""
    _require_installed_plugin()
    registry = Servers(REPO_ROOT / ".models", tmp_path_factory.mktemp("vllm-logs"))
    try:
        yield registry
    finally:
        registry.stop_all()


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


def _require_installed_plugin() -> None:
    from importlib.metadata import entry_points

    names = [ep.name for ep in entry_points(group="vllm.general_plugins")]
    if "vllm_poc" not in names:
        pytest.fail(
            "vllm-poc is not installed as a distribution (no vllm.general_plugins entry point "
            f"'vllm_poc'; found {names}): run `make install` first"
        )


POC = Config.of()
"""The operator's default: ``VLLM_POC_ENABLED=1`` alone (the fallback patch)."""
TUNED = Config.of(env=TUNED_ENV, headers=TUNED_HEADERS)
PLAIN = Config.of(poc=False, eager=False, worker_process=True)
"""The plugin installed but off, vLLM compiled as operators run it (``AS_RUN`` without PoC)."""


@pytest.fixture(scope="session")
def poc_server(servers: Servers) -> Iterator[LocalServer]:
    """One vLLM server with ``VLLM_POC_ENABLED=1`` for the whole session."""
    with servers.shared("poc-server", POC) as server:
        r = httpx.get(f"{server.base_url}/api/v1/pow/status", timeout=30.0)
        assert r.status_code == 200, (
            f"VLLM_POC_ENABLED=1 but GET /api/v1/pow/status answered {r.status_code}: "
            f"{r.text[:500]}; log tail:\n{server.log_tail()}"
        )
        yield server


@pytest.fixture(scope="module")
def plain_server(servers: Servers) -> Iterator[LocalServer]:
    """A vLLM server with the plugin installed but ``VLLM_POC_ENABLED`` unset."""
    with servers.shared("plain-server", PLAIN) as server:
        yield server


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
def tuned_server(servers: Servers) -> Iterator[LocalServer]:
    """A PoC server with ``TUNED_ENV``, shared by the session (started on first use)."""
    with servers.shared("tuned-server", TUNED) as server:
        yield server


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
