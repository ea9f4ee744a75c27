"""Tensor and pipeline parallelism, and an operator's own worker extension, on real TP=2 and
PP=2 servers.

vLLM's CPU backend runs TP=2 and PP=2 on this 2-core machine with one OpenMP thread per rank.
Every TP rank computes the PoC batch and one answer is used; with PP the last stage answers. The
operator's ``--worker-extension-cls`` keeps working beside ours (reached through vLLM's dev
``/collective_rpc`` route).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vllm_poc.testing.server import LocalServer

from .helpers import POW, generate, generated, ok, post_ok, round_body
from .reference import reference_distances
from .servers import Config, Servers
from .test_correctness import DIST_TOL

BLOCK = "tp-block"
PROVER = "tp-prover"
SEQ_LEN = 32
NONCES = list(range(12))


TP2 = Config.of(
    args=[
        "--tensor-parallel-size",
        "2",
        "--worker-extension-cls",
        "tests.unit.operator_extension.OperatorExtension",
    ],
    env={"VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_SERVER_DEV_MODE": "1"},
    worker_process=True,
)
PP2 = Config.of(
    args=["--pipeline-parallel-size", "2"],
    env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"},
    worker_process=True,
)


@pytest.fixture(scope="module")
def tp_server(servers: Servers) -> Iterator[LocalServer]:
    with servers.shared("tp2-server", TP2) as server:
        yield server


@pytest.fixture
def tp_client(tp_server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tp_server.base_url, timeout=120.0) as c:
        yield c
        assert tp_server.alive(), f"server died; log tail:\n{tp_server.log_tail()}"


def test_operator_extension_still_answers_on_every_rank(tp_client: httpx.Client) -> None:
    data = ok(tp_client.post("/collective_rpc", json={"method": "operator_ping"}))
    assert data["results"] == ["pong", "pong"]


def test_tensor_parallel_distances_match_reference(
    tp_client: httpx.Client, tiny_model: Path
) -> None:
    post_ok(
        tp_client,
        "/init/validate",
        round_body(block_hash=BLOCK, public_key="validator", seq_len=SEQ_LEN, batch_size=6),
    )
    claimed = [1.0] * len(NONCES)
    batch = {
        "public_key": PROVER,
        "block_hash": BLOCK,
        "block_height": 100,
        "nonces": NONCES,
        "dist": claimed,
        "node_id": 0,
    }
    got = ok(tp_client.post(POW + "/validate", json=batch))["distances"]
    ref = reference_distances(tiny_model, BLOCK, PROVER, NONCES, SEQ_LEN)
    diffs = [abs(g - r) for g, r in zip(got, ref, strict=True)]
    print(f"\n[e2e] TP=2: max |distance - reference| over {len(NONCES)} nonces: {max(diffs):.3e}")
    assert max(diffs) <= DIST_TOL


def test_tensor_parallel_round_generates(tp_client: httpx.Client) -> None:
    final = generate(tp_client, 16, block_hash=BLOCK, seq_len=16)
    assert final["error"] is None
    assert final["valid_nonces"] == list(range(len(final["valid_nonces"])))


def test_pipeline_parallel_distances_match_reference(tiny_model: Path, servers: Servers) -> None:
    """PP=2: the last stage answers; the first sends its hidden states on."""
    with servers.shared("pp2-server", PP2) as server:
        with httpx.Client(base_url=server.base_url, timeout=120.0) as c:
            found = generated(c, len(NONCES), block_hash=BLOCK, seq_len=SEQ_LEN)
        assert server.alive(), f"server died; log tail:\n{server.log_tail()}"
    ref = reference_distances(tiny_model, BLOCK, "e2e-node", NONCES, SEQ_LEN)
    diffs = [abs(found[n] - r) for n, r in zip(NONCES, ref, strict=True)]
    print(f"\n[e2e] PP=2: max |distance - reference| over {len(NONCES)} nonces: {max(diffs):.3e}")
    assert max(diffs) <= DIST_TOL
