"""The release smoke: what every supported vLLM release must do with the plugin, on one server
of the network's protocol.

``make release-check`` runs this module (and the contract tests) on each older release in its
own environment; the main suite runs it too, on the artifact server other modules share (no extra
start). One server covers the seams of a release's layout: the entry into the API server (the
patch of ``build_app``/``init_app_state``, or vLLM's endpoint plugins with
``E2E_ENTRY=endpoint-plugins``), the worker extension, the KV-cache layout, the attention
metadata and the forward context (a round streamed to a receiver, a validation), the forward
against an independent transformers computation, inference beside PoC, and refusals as the
client receives them through that release's exception handlers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
import torch

from vllm_poc import compat
from vllm_poc.compat.releases import release_of
from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.testing.receiver import CallbackReceiver
from vllm_poc.testing.server import LocalServer

from .helpers import LIMITS, POW, ok, wait_until
from .reference import reference_artifacts
from .servers import Config, Servers
from .test_artifact_api import ARTIFACT
from .test_artifact_forward import L2_TOL

pytestmark = pytest.mark.e2e

ENTRY = os.environ.get("E2E_ENTRY", "patch")
"""How the smoke server enters vLLM: ``patch`` (the operator's default command) or
``endpoint-plugins`` (``VLLM_PLUGINS=vllm_poc``, vLLM >= 0.26)."""
SMOKE = (
    ARTIFACT
    if ENTRY == "patch"
    else Config.of(
        env={**dict(ARTIFACT.env), "VLLM_PLUGINS": "vllm_poc"}, worker_process=True, fork=False
    )
)
BLOCK, KEY = "smoke-block", "smoke-prover"
SEQ_LEN = 24
NONCES = list(range(8))
PROMPT = "the quick brown fox jumps over the lazy dog kato rimuse lano vide po " * 4


@pytest.fixture(scope="module")
def server(servers: Servers) -> Iterator[LocalServer]:
    with servers.shared("smoke-server", SMOKE) as started:
        yield started


@pytest.fixture(scope="module")
def smoke(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120.0, limits=LIMITS) as c:
        yield c


def _round(server: LocalServer, **extra: object) -> dict[str, object]:
    return {
        "block_hash": BLOCK,
        "block_height": 77,
        "public_key": KEY,
        "node_id": 0,
        "node_count": 1,
        "params": {"model": str(server.model_dir), "seq_len": SEQ_LEN},
        "batch_size": 4,
        **extra,
    }


def _greedy(client: httpx.Client, server: LocalServer) -> str:
    body = {"model": str(server.model_dir), "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    return ok(client.post("/v1/completions", json=body))["choices"][0]["text"]


def test_the_server_enters_as_its_command_says(server: LocalServer) -> None:
    log = server.log_path.read_text(errors="replace")
    release = release_of(compat.vllm_version())
    assert release is not None, compat.vllm_version()
    if ENTRY == "endpoint-plugins" and release.endpoint_plugins:
        assert "Loaded endpoint plugin vllm_poc" in log
        assert "patch api-server-app" not in log
    else:
        assert "patch api-server-app replaced" in log
    assert "patch worker-extension replaced" in log
    assert "added /api/v1/pow routes" in log


def test_a_round_a_validation_and_the_reference(smoke: httpx.Client, server: LocalServer) -> None:
    before = _greedy(smoke, server)
    with CallbackReceiver() as receiver:
        ok(smoke.post(POW + "/init/generate", json=_round(server, url=receiver.url)))
        wait_until(lambda: receiver.records("/generated"), 120, "the round's first post")
        ok(smoke.post(POW + "/stop"))
    streamed = [a for b in receiver.unique_bodies("/generated") for a in b["artifacts"]]
    assert streamed and len({a["nonce"] for a in streamed}) == len(streamed)
    inline = ok(smoke.post(POW + "/generate", json=_round(server, nonces=NONCES, wait=True)))
    computed = {a["nonce"]: a["vector_b64"] for a in inline["artifacts"]}
    served = torch.tensor([artifact.decode(computed[n]).tolist() for n in NONCES])
    l2 = (served - reference_artifacts(server.model_dir, BLOCK, KEY, NONCES, SEQ_LEN)).norm(dim=1)
    print(f"\n[e2e] smoke on vLLM {compat.vllm_version()}: max L2 to the reference {l2.max():.4f}")
    assert float(l2.max()) <= L2_TOL
    received = [{"nonce": n, "vector_b64": v} for n, v in computed.items()]
    validation = _round(server, nonces=NONCES, wait=True, validation={"artifacts": received})
    verdict = ok(smoke.post(POW + "/generate", json=validation))
    assert verdict["n_total"] == len(NONCES) and verdict["n_mismatch"] == 0, verdict
    assert _greedy(smoke, server) == before, "a round changed inference"


def test_409_and_422_reach_the_client_as_json_a_person_can_read(
    smoke: httpx.Client, server: LocalServer
) -> None:
    """vLLM's own exception handlers sit between the plugin and the client on every release;
    the node answers these itself."""
    other_model = _round(server, nonces=NONCES, wait=True)
    other_model["params"] = {"model": "someone/else", "seq_len": SEQ_LEN}
    mismatch = smoke.post(POW + "/generate", json=other_model)
    assert mismatch.status_code == 409, mismatch.text
    assert mismatch.json()["detail"]["error"] == "params mismatch"
    assert "someone/else" in mismatch.json()["error"]["message"]
    malformed = smoke.post(POW + "/init/generate", json=_round(server, batch_size="many"))
    assert malformed.status_code == 422, malformed.text
    assert malformed.json()["detail"][0]["loc"] == ["batch_size"]
    assert "batch_size" in malformed.json()["error"]["message"]
    not_json = smoke.post(POW + "/generate", content=b"{", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 422 and "not JSON" in not_json.json()["error"]["message"]
    assert ok(smoke.get(POW + "/status"))["status"] == "IDLE"
