"""The admission layer on the artifact API of a real server: every limit a clear 4xx with a
message, nothing started, the server serving, and an honest round afterwards (the shared
artifact server: callbacks to 127.0.0.1 only, 128 tokens per forward)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.testing.server import LocalServer

from .helpers import LIMITS, POW, ok
from .reference import reference_artifacts
from .servers import Servers
from .test_artifact_api import ARTIFACT
from .test_artifact_forward import L2_TOL

pytestmark = pytest.mark.e2e

BLOCK, KEY = "limits-block", "limits-prover"


@pytest.fixture(scope="module")
def server(servers: Servers) -> Iterator[LocalServer]:
    with servers.shared("artifact-server", ARTIFACT) as started:
        yield started


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url + POW, timeout=120.0, limits=LIMITS) as c:
        yield c


def _round(server: LocalServer, **extra: Any) -> dict[str, Any]:
    body = {
        "block_hash": BLOCK,
        "block_height": 5,
        "public_key": KEY,
        "node_id": 0,
        "node_count": 1,
        "params": {"model": str(server.model_dir), "seq_len": 16},
        "batch_size": 4,
    }
    return body | extra


REFUSED = {
    "seq_len beyond the model": (
        "/init/generate",
        {"params": {"seq_len": 513}},
        400,
        "max length 512",
    ),
    "batch_size above the cap": ("/init/generate", {"batch_size": 4097}, 413, "MAX_BATCH_SIZE"),
    "callback not http(s)": ("/init/generate", {"url": "ftp://127.0.0.1/x"}, 400, "http(s)"),
    "callback host not allowed": (
        "/init/generate",
        {"url": "http://192.0.2.7:9/cb"},
        400,
        "VLLM_POC_CALLBACK_ALLOWED_HOSTS",
    ),
    "node_id outside node_count": (
        "/init/generate",
        {"node_id": 2, "node_count": 2},
        400,
        "node_id",
    ),
    "group_id outside n_groups": (
        "/init/generate",
        {"group_id": 3, "n_groups": 3},
        400,
        "group_id",
    ),
    "node_count beyond 2^31": ("/init/generate", {"node_count": 2**40}, 400, "node_count"),
    "block_height beyond 2^62": ("/init/generate", {"block_height": 2**63}, 400, "block_height"),
    "nonce of 2^63": ("/generate", {"nonces": [2**63], "wait": True}, 400, "2^62"),
    "inline nonces above the cap": (
        "/generate",
        {"nonces": list(range(4097)), "wait": True},
        413,
        "VLLM_POC_MAX_VALIDATE_NONCES",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_each_limit_is_a_clear_4xx_and_nothing_starts(
    case: str, server: LocalServer, client: httpx.Client
) -> None:
    path, extra, code, words = REFUSED[case]
    body = _round(server, **extra)
    if "params" in extra:
        body["params"] = {"model": str(server.model_dir), **extra["params"]}
    refused = client.post(path, json=body)
    assert refused.status_code == code, (case, refused.status_code, refused.text[:500])
    assert words in refused.json()["error"]["message"], refused.text[:500]
    assert ok(client.get("/status"))["status"] == "IDLE"
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_nested_junk_is_a_422(client: httpx.Client) -> None:
    body = b"[" * 1500 + b"]" * 1500
    refused = client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    assert refused.status_code == 422 and "not JSON" in refused.json()["error"]["message"]


def test_negative_nonces_are_computed_as_the_reference_computes_them(
    server: LocalServer, client: httpx.Client
) -> None:
    nonces = [-3, -1, 2]
    got = ok(client.post("/generate", json=_round(server, nonces=nonces, wait=True)))
    served = torch.tensor([artifact.decode(a["vector_b64"]).tolist() for a in got["artifacts"]])
    assert [a["nonce"] for a in got["artifacts"]] == nonces
    ref = reference_artifacts(server.model_dir, BLOCK, KEY, nonces, 16)
    assert float((served - ref).norm(dim=1).max()) <= L2_TOL


def test_a_batch_over_the_token_budget_is_split_invisibly(
    server: LocalServer, client: httpx.Client
) -> None:
    """32 nonces of 16 tokens in forwards of 128 tokens: the artifacts of one forward each."""
    nonces = list(range(100, 132))
    split = ok(
        client.post("/generate", json=_round(server, nonces=nonces, wait=True, batch_size=32))
    )
    alone = {}
    for n in nonces[:4]:
        one = ok(client.post("/generate", json=_round(server, nonces=[n], wait=True, batch_size=1)))
        alone[n] = one["artifacts"][0]["vector_b64"]
    got = {a["nonce"]: a["vector_b64"] for a in split["artifacts"]}
    assert sorted(got) == nonces
    for n, vector in alone.items():
        l2 = float(
            (torch.tensor(artifact.decode(vector)) - torch.tensor(artifact.decode(got[n]))).norm()
        )
        assert l2 <= L2_TOL, (n, l2)
