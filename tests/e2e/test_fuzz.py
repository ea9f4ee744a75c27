"""A sample of the fuzzed requests (``tests/fuzzing.py``) on a real server: what the
in-process run cannot see (vLLM's own exception handlers, uvicorn's parsing, the engine)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import ENDPOINTS, Tracker, requests
from vllm_poc.testing.server import LocalServer

from .helpers import ok, post_ok, round_body, wait_checked

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("VLLM_POC_FUZZ_E2E_EXAMPLES", "12"))


@pytest.fixture
def tracker(client: httpx.Client, poc_server: LocalServer) -> Iterator[Tracker]:
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=poc_server.base_url, timeout=120.0, limits=limits) as c:
        yield Tracker(c)


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_fuzzed_requests_never_break_the_server(
    poc_server: LocalServer, tracker: Tracker, endpoint: str, data: st.DataObject
) -> None:
    method, path, content, headers = data.draw(requests(endpoint), label="request")
    tracker.start_example()
    tracker.send(method, path, content, headers)
    assert poc_server.alive(), f"server died; log tail:\n{poc_server.log_tail()}"


def test_server_serves_after_the_fuzzing(poc_server: LocalServer, client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    body = {"model": str(poc_server.model_dir), "prompt": "Hello", "max_tokens": 4}
    post_ok(client, "/stop")
    assert ok(client.post("/v1/completions", json=body))["choices"]
    post_ok(client, "/init/generate", round_body(block_height=4244))
    wait_checked(client, 4)
