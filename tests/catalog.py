"""Every ``/api/v1/pow`` route with a body it accepts, and the ways a key can be wrong: the
authentication matrix runs on an in-process node in full and on a real server as a sample."""

from __future__ import annotations

from typing import Any

from tests.e2e.helpers import round_body


def proof(block_hash: str, block_height: int, **overrides: Any) -> dict[str, Any]:
    """A ProofBatch body for ``/validate`` (two nonces of node 0)."""
    body: dict[str, Any] = {
        "public_key": "e2e-node",
        "block_hash": block_hash,
        "block_height": block_height,
        "nonces": [0, 1],
        "dist": [0.5, 0.6],
        "node_id": 0,
    }
    body.update(overrides)
    return body


def pow_routes(block_hash: str, block_height: int) -> list[tuple[str, str, Any]]:
    """(method, path, body) of every PoC route, for a round of ``block_hash``."""
    calibration = {"block_hash": block_hash, "valid_rate": 0.5, "n_samples": 4}
    return [
        ("GET", "/status", None),
        ("GET", "/version", None),
        ("GET", "/versions", None),
        ("POST", "/init", round_body(block_hash="auth-other", block_height=901)),
        ("POST", "/init/generate", round_body(block_hash="auth-other", block_height=902)),
        ("POST", "/init/validate", round_body(block_hash="auth-other", block_height=903)),
        ("POST", "/phase/generate", None),
        ("POST", "/phase/validate", None),
        ("POST", "/validate", proof(block_hash, block_height)),
        ("POST", "/stop", None),
        ("POST", "/calibrate", {**calibration, "batch_size": 4, "seq_len": 8}),
    ]


def wrong_auth(key: str) -> dict[str, dict[str, str]]:
    """Authorization headers that must all be refused when the node's key is ``key``."""
    return {
        "no-key": {},
        "wrong-key": {"Authorization": "Bearer not-the-key"},
        "bare-bearer": {"Authorization": "Bearer"},
        "key-without-scheme": {"Authorization": key},
        "basic-scheme": {"Authorization": f"Basic {key}"},
        "key-prefix": {"Authorization": f"Bearer {key[:-1]}"},
        "key-with-suffix": {"Authorization": f"Bearer {key}x"},
        "vllm-header": {"X-API-Key": key},
    }
