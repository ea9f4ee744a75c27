"""Without VLLM_POC_ENABLED the installed plugin does nothing: no routes, no blocking."""

from __future__ import annotations

import httpx
import pytest

from vllm_poc.testing.server import LocalServer

from .helpers import ok, round_body

pytestmark = pytest.mark.e2e


def test_no_pow_routes_without_the_switch(plain_client: httpx.Client) -> None:
    for method, path in [
        ("GET", "/api/v1/pow/status"),
        ("POST", "/api/v1/pow/init"),
        ("POST", "/api/v1/pow/init/generate"),
        ("POST", "/api/v1/pow/stop"),
        ("POST", "/api/v1/pow/validate"),
    ]:
        r = plain_client.request(method, path, json=round_body())
        assert r.status_code == 404, (method, path, r.status_code, r.text[:300])
    paths = ok(plain_client.get("/openapi.json"))["paths"]
    assert not [p for p in paths if p.startswith("/api/v1/pow")], sorted(paths)
    assert "/v1/completions" in paths  # the check above looked at a real route table


def test_inference_never_blocked_without_the_switch(
    plain_client: httpx.Client, plain_server: LocalServer
) -> None:
    model = str(plain_server.model_dir)
    # Trying to start a round must not do anything, so inference keeps answering.
    plain_client.post("/api/v1/pow/init/generate", json=round_body())
    for _ in range(3):
        r = plain_client.post(
            "/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 4}
        )
        assert ok(r)["choices"][0]["text"] is not None
    r = plain_client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )
    assert ok(r)["choices"][0]["message"]["role"] == "assistant"
