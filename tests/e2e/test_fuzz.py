"""Fuzzed requests (``tests/fuzzing.py``) on a real server of each protocol: what the in-process
run cannot see (vLLM's own exception handlers, uvicorn's parsing, the engine). At least 500
seeded requests per protocol, zero 5xx; then ``/health``, inference and an honest round.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import ENDPOINTS, Tracker, artifact_endpoints, requests
from vllm_poc.testing.server import LocalServer

from .helpers import POW, ok, post_ok, round_body, wait_checked
from .servers import Servers
from .test_artifact_api import ARTIFACT

pytestmark = pytest.mark.e2e

REQUESTS = int(os.environ.get("VLLM_POC_FUZZ_E2E_REQUESTS", "500"))
"""Fuzzed requests per protocol, spread evenly over its endpoints."""
ARTIFACT_NAMES = list(artifact_endpoints("model"))
SURFACES = [("distance", e) for e in ENDPOINTS] + [("artifact", e) for e in ARTIFACT_NAMES]
ANSWERS: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
"""Status codes answered to the fuzzed requests, per protocol."""


@pytest.fixture(scope="module")
def artifact_server(servers: Servers) -> Iterator[LocalServer]:
    with servers.shared("artifact-server", ARTIFACT) as server:
        yield server


def _examples(protocol: str) -> int:
    count = len(ENDPOINTS) if protocol == "distance" else len(ARTIFACT_NAMES)
    return -(-REQUESTS // count)


@pytest.mark.parametrize(("protocol", "endpoint"), SURFACES)
def test_fuzzed_requests_never_break_the_server(
    poc_server: LocalServer, artifact_server: LocalServer, protocol: str, endpoint: str
) -> None:
    server = poc_server if protocol == "distance" else artifact_server
    endpoints = ENDPOINTS if protocol == "distance" else artifact_endpoints(str(server.model_dir))
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.base_url, timeout=120.0, limits=limits) as c:
        tracker = Tracker(c, protocol)

        @settings(
            max_examples=_examples(protocol),
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=st.data())
        def fuzz(data: st.DataObject) -> None:
            method, path, content, headers = data.draw(requests(endpoint, endpoints))
            tracker.start_example()
            tracker.send(method, path, content, headers)

        try:
            fuzz()
        finally:
            ANSWERS[protocol].update(tracker.answers)
    assert server.alive(), f"server died; log tail:\n{server.log_tail()}"


def _figures(protocol: str) -> str:
    answers = ANSWERS[protocol]
    return f"{sum(answers.values())} requests, answers {dict(sorted(answers.items()))}"


def test_the_distance_server_serves_after_the_fuzzing(
    poc_server: LocalServer, client: httpx.Client
) -> None:
    print(f"\n[e2e] fuzz, distance protocol: {_figures('distance')}")
    assert sum(ANSWERS["distance"].values()) >= REQUESTS
    assert not [code for code in ANSWERS["distance"] if code >= 500]
    assert client.get("/health").status_code == 200
    body = {"model": str(poc_server.model_dir), "prompt": "Hello", "max_tokens": 4}
    post_ok(client, "/stop")
    assert ok(client.post("/v1/completions", json=body))["choices"]
    post_ok(client, "/init/generate", round_body(block_height=4244))
    wait_checked(client, 4)


def test_the_artifact_server_serves_after_the_fuzzing(artifact_server: LocalServer) -> None:
    print(f"\n[e2e] fuzz, artifact protocol: {_figures('artifact')}")
    assert sum(ANSWERS["artifact"].values()) >= REQUESTS
    assert not [code for code in ANSWERS["artifact"] if code >= 500]
    with httpx.Client(base_url=artifact_server.base_url, timeout=120.0) as c:
        assert c.get("/health").status_code == 200
        body = {"model": str(artifact_server.model_dir), "prompt": "Hello", "max_tokens": 4}
        assert ok(c.post("/v1/completions", json=body))["choices"]
        request = artifact_endpoints(str(artifact_server.model_dir))["generate"][2]
        assert request is not None
        computed = ok(c.post(POW + "/generate", json=request))["artifacts"]
        received = {"artifacts": computed}
        verdict = ok(c.post(POW + "/generate", json={**request, "validation": received}))
        assert verdict["n_total"] == len(computed) > 0 and verdict["n_mismatch"] == 0, verdict
