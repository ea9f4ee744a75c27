"""Inference and PoC on one server: blocked (503) during a round, untouched after it."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from vllm_poc.testing.server import LocalServer

from .helpers import POW, generate, ok, post_ok, round_body, status, wait_checked

pytestmark = pytest.mark.e2e


def _completion(server: LocalServer, **extra: Any) -> dict[str, Any]:
    return {"model": str(server.model_dir), "prompt": "Hello world", "max_tokens": 4, **extra}


def _chat(server: LocalServer) -> dict[str, Any]:
    return {
        "model": str(server.model_dir),
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 4,
    }


def _assert_blocked(client: httpx.Client, server: LocalServer) -> None:
    for path, body in [
        ("/v1/completions", _completion(server)),
        ("/v1/chat/completions", _chat(server)),
    ]:
        r = client.post(path, json=body)
        assert r.status_code == 503, (path, r.status_code, r.text[:500])
        assert r.headers["content-type"].startswith("application/json"), r.headers
        assert isinstance(r.json(), dict) and r.json(), r.text
    # Health, metrics and the PoC API keep answering.
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get(POW + "/status").status_code == 200


def _assert_serving(client: httpx.Client, server: LocalServer) -> None:
    assert ok(client.post("/v1/completions", json=_completion(server)))["choices"]
    assert ok(client.post("/v1/chat/completions", json=_chat(server)))["choices"]


def test_inference_answers_503_while_generating(
    client: httpx.Client, poc_server: LocalServer
) -> None:
    _assert_serving(client, poc_server)
    post_ok(client, "/init/generate", round_body())
    wait_checked(client, 1)
    _assert_blocked(client, poc_server)
    assert status(client)["state"] == "GENERATING"
    post_ok(client, "/stop")
    _assert_serving(client, poc_server)


def test_inference_answers_503_while_validating(
    client: httpx.Client, poc_server: LocalServer
) -> None:
    post_ok(client, "/init/validate", round_body())
    assert status(client)["state"] == "VALIDATING"
    _assert_blocked(client, poc_server)
    post_ok(client, "/stop")
    _assert_serving(client, poc_server)


def _prefix_cache_hits(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    m = re.search(r"^vllm:prefix_cache_hits_total\{[^}]*\} ([0-9.e+]+)$", text, re.MULTILINE)
    assert m, "vllm:prefix_cache_hits_total not in /metrics"
    return float(m.group(1))


# ~450 tokens with the tiny tokenizer: three full 128-token KV blocks get prefix-cached.
LONG_PROMPT = "the quick brown fox jumps over the lazy dog kato rimuse lano vide po " * 30


def test_greedy_completions_identical_across_a_round(
    client: httpx.Client, poc_server: LocalServer
) -> None:
    body = _completion(poc_server, prompt=LONG_PROMPT, max_tokens=16, temperature=0, logprobs=3)
    n_tokens = ok(client.post("/tokenize", json={"model": body["model"], "prompt": LONG_PROMPT}))
    assert 128 < n_tokens["count"] <= 512 - 16, n_tokens["count"]

    def run() -> str:
        return json.dumps(ok(client.post("/v1/completions", json=body))["choices"], sort_keys=True)

    first = run()
    hits = _prefix_cache_hits(client)
    second = run()
    assert _prefix_cache_hits(client) >= hits + 128, "prefix caching must be on for this test"
    assert first == second

    # A round with many forwards, each writing K/V for batch_size * seq_len tokens.
    generate(client, 64, batch_size=8, seq_len=200, block_hash="kv-block")

    hits = _prefix_cache_hits(client)
    after = run()
    print(
        f"\n[e2e] prefix-cache hits on the completion after the round: "
        f"{_prefix_cache_hits(client) - hits:.0f} tokens"
    )
    assert after == second, "a PoC round changed a greedy completion (KV cache corrupted?)"
