"""The release smoke: what every supported vLLM release must do with the plugin, on one server.

``make release-check`` runs this module (and the contract tests) on each older release in its
own environment; the main suite runs it too, on the session's default server (no extra start).
One server covers the seams of a release's layout: the entry into the API server (the patch of
``build_app``/``init_app_state``, or vLLM's endpoint plugins with ``E2E_ENTRY=endpoint-plugins``),
the worker extension, the KV-cache layout, the attention metadata and the forward context (a
round and a validation), the forward against an independent transformers computation, inference
beside PoC, and error bodies as vLLM's exception handlers deliver them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from vllm_poc import compat
from vllm_poc.compat.releases import release_of
from vllm_poc.testing.server import LocalServer

from .conftest import POC
from .helpers import LIMITS, POW, generated, ok, round_body, validate_claimed
from .reference import reference_distances
from .servers import Config, Servers
from .test_correctness import DIST_TOL

pytestmark = pytest.mark.e2e

ENTRY = os.environ.get("E2E_ENTRY", "patch")
"""How the smoke server enters vLLM: ``patch`` (the operator's default command) or
``endpoint-plugins`` (``VLLM_PLUGINS=vllm_poc``, vLLM >= 0.26)."""
SMOKE = POC if ENTRY == "patch" else Config.of(env={"VLLM_PLUGINS": "vllm_poc"})
BLOCK, PROVER = "smoke-block", "smoke-prover"
SEQ_LEN = 24
PROMPT = "the quick brown fox jumps over the lazy dog kato rimuse lano vide po " * 4


@pytest.fixture(scope="module")
def server(servers: Servers) -> Iterator[LocalServer]:
    with servers.shared("smoke-server", SMOKE) as started:
        yield started


@pytest.fixture(scope="module")
def smoke(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120.0, limits=LIMITS) as c:
        yield c


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


def test_a_round_validates_and_matches_the_reference(
    smoke: httpx.Client, server: LocalServer
) -> None:
    before = _greedy(smoke, server)
    found = generated(smoke, 8, block_hash=BLOCK, public_key=PROVER, seq_len=SEQ_LEN)
    nonces = sorted(found)[:8]
    ref = reference_distances(server.model_dir, BLOCK, PROVER, nonces, SEQ_LEN)
    worst = max(abs(found[n] - r) for n, r in zip(nonces, ref, strict=True))
    print(f"\n[e2e] smoke on vLLM {compat.vllm_version()}: max |distance - reference| {worst:.2e}")
    assert worst <= DIST_TOL
    recomputed = validate_claimed(smoke, BLOCK, PROVER, nonces)["distances"]
    assert max(abs(a - found[n]) for n, a in zip(nonces, recomputed, strict=True)) <= DIST_TOL
    assert _greedy(smoke, server) == before, "a round changed inference"


def test_refusals_reach_the_client_as_json_a_person_can_read(smoke: httpx.Client) -> None:
    """vLLM's own exception handlers sit between the plugin and the client on every release."""
    wrong_type = smoke.post(POW + "/init/generate", json=round_body(batch_size="many"))
    assert wrong_type.status_code in (400, 422), wrong_type.text
    assert "batch_size" in wrong_type.text
    not_json = smoke.post(POW + "/init/generate", content=b"{", headers={"Content-Type": "x"})
    assert 400 <= not_json.status_code < 500, not_json.text
    for refused in (wrong_type, not_json):
        assert isinstance(refused.json(), dict), refused.text
    assert ok(smoke.get(POW + "/status"))["state"] in ("IDLE", "STOPPED")
