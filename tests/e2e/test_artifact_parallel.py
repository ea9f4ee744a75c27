"""The artifact protocol's API on vLLM's distributed engine: a ``--data-parallel-size 2`` server
of the tiny Qwen3, a ``--tensor-parallel-size 2`` server of the tiny Qwen3-MoE and a
``--pipeline-parallel-size 2`` one of the tiny Qwen3 (reflections by global layer index). On
each, ``/generate`` equals the independent transformers computation and a round delivers every
artifact once; with two engines, each step of a round is split between them (each engine's
share on ``/metrics``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.server.engines import PIPELINE_DEPTH
from vllm_poc.testing.receiver import CallbackReceiver
from vllm_poc.testing.server import LocalServer

from .helpers import POW, live_client, metric_total, ok, wait_until
from .reference import reference_artifacts
from .servers import Config, Servers
from .test_artifact_forward import L2_TOL

pytestmark = pytest.mark.e2e

BLOCK = "artifact-parallel-block"
KEY = "artifact-parallel-prover"
SEQ_LEN = 24
NONCES = list(range(12))
LAYOUTS = {
    "dp2": ("qwen3", ["--data-parallel-size", "2"]),
    "tp2-moe": ("qwen3-moe", ["--tensor-parallel-size", "2"]),
    "pp2": ("qwen3", ["--pipeline-parallel-size", "2"]),
}
"""MoE models run PoC under tensor parallelism, never with data parallelism (refused at start:
vLLM runs their data-parallel engines in lockstep)."""


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout(request: pytest.FixtureRequest) -> str:
    return request.param


def layout_config(layout: str) -> Config:
    architecture, args = LAYOUTS[layout]
    env = {
        "VLLM_POC_PROTOCOL": "artifact",
        "VLLM_POC_CALLBACK_INTERVAL": "0.5",
        "VLLM_CPU_OMP_THREADS_BIND": "0|1",
    }
    return Config.of(architecture, env=env, args=args, worker_process=True)


@pytest.fixture(scope="module")
def server(layout: str, servers: Servers) -> Iterator[LocalServer]:
    with servers.shared(f"artifact-{layout}", layout_config(layout)) as started:
        yield started


@pytest.fixture
def client(server: LocalServer) -> Iterator[httpx.Client]:
    with live_client(server) as c:
        yield c


def _round(server: LocalServer, **extra: Any) -> dict[str, Any]:
    return {
        "block_hash": BLOCK,
        "block_height": 1300,
        "public_key": KEY,
        "node_id": 0,
        "node_count": 1,
        "params": {"model": str(server.model_dir), "seq_len": SEQ_LEN},
        **extra,
    }


def _checked_by_rank(client: httpx.Client) -> list[float]:
    text = client.get("/metrics").text
    return [metric_total(text, "vllm_poc_nonces_checked_total", f'dp_rank="{r}"') for r in (0, 1)]


def test_generate_equals_the_independent_reference(
    layout: str, server: LocalServer, client: httpx.Client
) -> None:
    body = _round(server, nonces=NONCES, batch_size=3, wait=True)
    answer = ok(client.post(POW + "/generate", json=body))
    assert [a["nonce"] for a in answer["artifacts"]] == NONCES
    served = torch.tensor([artifact.decode(a["vector_b64"]).tolist() for a in answer["artifacts"]])
    ref = reference_artifacts(server.model_dir, BLOCK, KEY, NONCES, SEQ_LEN)
    l2 = (served - ref).norm(dim=1)
    print(f"\n[e2e] {layout} artifacts vs reference: max L2 {l2.max():.4f}")
    assert float(l2.max()) <= L2_TOL


def test_a_round_delivers_every_artifact_once_from_every_engine(
    layout: str, server: LocalServer, client: httpx.Client
) -> None:
    before = _checked_by_rank(client)
    with CallbackReceiver() as receiver:

        def delivered() -> list[int]:
            bodies = receiver.unique_bodies("/generated")
            return [a["nonce"] for b in bodies for a in b["artifacts"]]

        body = _round(server, node_id=1, node_count=2, url=receiver.url, batch_size=4)
        ok(client.post(POW + "/init/generate", json=body))
        wait_until(
            lambda: ok(client.get(POW + "/status"))["stats"]["total_processed"] >= 32, 120, "nonces"
        )
        ok(client.post(POW + "/stop", json={}))
        shares = [a - b for a, b in zip(_checked_by_rank(client), before, strict=True)]
        # /stop hands the last artifacts to the sender: every one counted arrives.
        wait_until(lambda: len(delivered()) >= sum(shares), 30, "the round's artifacts")
        nonces = delivered()
    print(f"\n[e2e] {layout} round: {len(nonces)} artifacts, per engine {shares}")
    assert len(nonces) == len(set(nonces)) == sum(shares) >= 32, "each artifact exactly once"
    assert all(n % 2 == 1 for n in nonces), "node 1 of 2 owns the odd nonces"
    # Missing are only whole chunks that an engine had in flight, queued or named as its next
    # at /stop: at most PIPELINE_DEPTH + 1 of its chunks of 4.
    missing = sorted(set(range(1, max(nonces), 2)) - set(nonces))
    engines = 2 if layout.startswith("dp2") else 1
    assert len(missing) % 4 == 0 and len(missing) <= engines * (PIPELINE_DEPTH + 1) * 4, missing
    if layout.startswith("dp2"):
        assert min(shares) > 0, "each engine takes chunks as it frees up"
    else:
        assert shares[1] == 0 and shares[0] > 0
