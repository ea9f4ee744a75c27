"""Bad requests get a clear 4xx, never a 500, and leave the server and the round untouched."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from vllm_poc.testing.server import LocalServer

from .helpers import POW, ok, post_ok, round_body, status

pytestmark = pytest.mark.e2e

ROUND_HEIGHT = 555
STATUS_KEYS = ("state", "block_height", "total_checked", "total_valid", "valid_nonces", "error")


def _proof(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "public_key": "e2e-node",
        "block_hash": "bad-input-block",
        "block_height": ROUND_HEIGHT,
        "nonces": [0, 1],
        "dist": [0.5, 0.6],
        "node_id": 0,
    }
    body.update(overrides)
    return body


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


NAN = math.nan
INF = math.inf

# (id, path, json body or raw bytes, words expected in the answer (any case))
CASES: list[tuple[str, str, Any, list[str]]] = [
    ("malformed-json", "/init", b'{"block_hash": "x", ', ["json"]),
    ("not-an-object", "/init", b"[1, 2, 3]", ["block_hash", "dict", "object"]),
    ("empty-body", "/init", b"", ["block_hash", "body", "required", "json"]),
    ("missing-fields", "/init", {"block_hash": "x"}, ["block_height", "public_key", "r_target"]),
    ("missing-r_target", "/init", _without(round_body(), "r_target"), ["r_target"]),
    ("wrong-type-height", "/init", round_body(block_height="tall"), ["block_height"]),
    ("wrong-type-hash", "/init", round_body(block_hash=123), ["block_hash"]),
    ("wrong-type-batch", "/init", round_body(batch_size="many"), ["batch_size"]),
    ("zero-batch", "/init", round_body(batch_size=0), ["batch_size"]),
    ("negative-batch", "/init/generate", round_body(batch_size=-4), ["batch_size"]),
    ("zero-seq-len", "/init", round_body(seq_len=0), ["seq_len"]),
    ("nan-r_target", "/init", round_body(r_target=NAN), ["r_target"]),
    ("inf-r_target", "/init/generate", round_body(r_target=INF), ["r_target"]),
    ("nan-fraud-threshold", "/init", round_body(fraud_threshold=NAN), ["fraud_threshold"]),
    (
        "huge-forward",
        "/init/generate",
        round_body(batch_size=100_000, seq_len=512),
        ["batch_size", "seq_len"],
    ),
    ("seq-len-over-model-len", "/init", round_body(batch_size=1, seq_len=4096), ["seq_len"]),
    ("no-node-info", "/init/generate", round_body(node_id=-1, node_count=-1), ["node id"]),
    ("validate-missing", "/validate", _without(_proof(), "nonces"), ["nonces"]),
    ("validate-wrong-type", "/validate", _proof(nonces=["a", "b"]), ["nonces"]),
    ("validate-length-mismatch", "/validate", _proof(dist=[0.5]), ["dist"]),
    ("validate-nan-dist", "/validate", _proof(dist=[NAN, 0.5]), ["dist"]),
    ("validate-inf-dist", "/validate", _proof(dist=[0.5, INF]), ["dist"]),
    ("validate-wrong-block", "/validate", _proof(block_hash="other-block"), ["block hash"]),
    (
        "validate-too-many-nonces",
        "/validate",
        _proof(nonces=list(range(5000)), dist=[0.5] * 5000),
        ["nonces"],
    ),
    (
        "validate-huge-body",
        "/validate",
        _proof(nonces=list(range(200_000)), dist=[0.5] * 200_000),
        ["nonces", "body", "bytes", "large"],
    ),
]


def _post(client: httpx.Client, path: str, payload: Any) -> httpx.Response:
    # json.dumps writes NaN/Infinity literals, as a careless client would (httpx's json= refuses).
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post(POW + path, content=content, headers={"Content-Type": "application/json"})


@pytest.fixture
def configured(client: httpx.Client) -> dict[str, Any]:
    """A configured (IDLE) round whose status the bad requests must not change."""
    post_ok(
        client,
        "/init",
        round_body(block_hash="bad-input-block", block_height=ROUND_HEIGHT),
    )
    before = status(client)
    assert before["state"] == "IDLE" and before["block_height"] == ROUND_HEIGHT
    return before


@pytest.mark.parametrize(
    ("path", "payload", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_is_a_clear_4xx_and_changes_nothing(
    client: httpx.Client,
    configured: dict[str, Any],
    path: str,
    payload: Any,
    words: list[str],
) -> None:
    r = _post(client, path, payload)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:1000])
    text = r.text.lower()
    assert any(w.lower() in text for w in words), (words, r.text[:1000])
    assert r.json(), "the error must be a JSON body"
    after = status(client)
    for key in STATUS_KEYS:
        assert after[key] == configured[key], f"a refused request changed {key}"
    assert client.get("/health").status_code == 200


def test_server_keeps_serving_after_bad_input(
    client: httpx.Client, poc_server: LocalServer, configured: dict[str, Any]
) -> None:
    for _, path, payload, _ in CASES:
        assert _post(client, path, payload).status_code < 500
    body = {"model": str(poc_server.model_dir), "prompt": "Hello", "max_tokens": 4}
    assert ok(client.post("/v1/completions", json=body))["choices"]
    # And a good round still runs after all that.
    post_ok(client, "/init/generate", round_body(block_height=ROUND_HEIGHT + 1))
    from .helpers import wait_checked

    wait_checked(client, 4)
    post_ok(client, "/stop")
