"""Data parallelism on a real ``--data-parallel-size 2`` server (vLLM's internal load balancer,
one core bound to each engine): every engine checks its own nonces, the distances are the
model's, and /status and /metrics show each engine's share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vllm_poc.testing.server import LocalServer

from .helpers import (
    POW,
    live_client,
    metric_total,
    ok,
    post_ok,
    round_body,
    status,
    version_weights,
    wait_every_engine,
)
from .reference import reference_distances
from .servers import Config, Servers
from .test_correctness import DIST_TOL

pytestmark = pytest.mark.e2e

BLOCK = "dp-block"
NODE_ID, NODE_COUNT = 1, 2
SEQ_LEN = 16


DP2 = Config.of(
    args=["--data-parallel-size", "2"],
    env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"},
    worker_process=True,
)


@pytest.fixture(scope="module")
def dp_server(servers: Servers) -> Iterator[LocalServer]:
    with servers.shared("dp2-server", DP2) as server:
        yield server


@pytest.fixture
def dp_client(dp_server: LocalServer) -> Iterator[httpx.Client]:
    with live_client(dp_server) as c:
        yield c


def _checked_by_rank(client: httpx.Client) -> list[float]:
    text = client.get("/metrics").text
    return [metric_total(text, "vllm_poc_nonces_checked_total", f'dp_rank="{r}"') for r in (0, 1)]


def test_every_engine_checks_its_own_nonces(dp_client: httpx.Client, tiny_model: Path) -> None:
    c = dp_client
    metrics_before = _checked_by_rank(c)
    body = round_body(block_hash=BLOCK, node_id=NODE_ID, node_count=NODE_COUNT, seq_len=SEQ_LEN)
    post_ok(c, "/init/generate", body)
    wait_every_engine(c, 16)
    post_ok(c, "/stop")
    final = status(c)
    assert final["state"] == "STOPPED" and final["error"] is None, final
    engines = final["engines"]
    print(f"\n[e2e] DP=2 round: {final['total_checked']} nonces, engines {engines}")
    assert [e["dp_rank"] for e in engines] == [0, 1]
    assert all(e["checked"] > 0 and e["error"] is None for e in engines), engines
    assert sum(e["checked"] for e in engines) == final["total_checked"]
    assert sum(e["valid"] for e in engines) == final["total_valid"] == final["total_checked"]
    # Each nonce of the node's stride once: no engine repeats another's work.
    nonces = final["valid_nonces"]
    assert len(set(nonces)) == len(nonces)
    assert all(n % NODE_COUNT == NODE_ID for n in nonces)
    # The Prometheus series show each engine's share.
    metrics_after = _checked_by_rank(c)
    by_rank = [after - before for after, before in zip(metrics_after, metrics_before, strict=True)]
    assert by_rank == [e["checked"] for e in engines]
    # Distances are the model's, whichever engine computed them.
    found = dict(zip(nonces, final["valid_distances"], strict=True))
    sample = sorted(found)[:12]
    ref = reference_distances(tiny_model, BLOCK, body["public_key"], sample, SEQ_LEN)
    diffs = [abs(found[n] - r) for n, r in zip(sample, ref, strict=True)]
    print(f"[e2e] DP=2: max |distance - reference| over {len(sample)} nonces: {max(diffs):.3e}")
    assert max(diffs) <= DIST_TOL


def test_validation_and_calibration_run_on_the_engines(
    dp_client: httpx.Client, tiny_model: Path
) -> None:
    c = dp_client
    post_ok(c, "/init/validate", round_body(block_hash=BLOCK, seq_len=SEQ_LEN, batch_size=4))
    nonces = list(range(40, 54))  # four chunks of at most 4, two per engine
    batch = {
        "public_key": "dp-prover",
        "block_hash": BLOCK,
        "block_height": 100,
        "nonces": nonces,
        "dist": [1.0] * len(nonces),
        "node_id": 0,
    }
    got = ok(c.post(POW + "/validate", json=batch))["distances"]
    ref = reference_distances(tiny_model, BLOCK, "dp-prover", nonces, SEQ_LEN)
    assert max(abs(g - r) for g, r in zip(got, ref, strict=True)) <= DIST_TOL
    post_ok(c, "/stop")
    body = {"block_hash": BLOCK, "public_key": "dp-cal", "batch_size": 4, "seq_len": SEQ_LEN}
    calibrated = ok(c.post(POW + "/calibrate", json=dict(body, n_samples=24, valid_rate=0.5)))
    assert 0.0 < calibrated["r_target"] < 2.0, calibrated


def test_inference_is_served_by_the_data_parallel_server(dp_client: httpx.Client) -> None:
    model = ok(dp_client.get("/v1/models"))["data"][0]["id"]
    for _ in range(2):  # the internal load balancer reaches both engines
        out = ok(
            dp_client.post(
                "/v1/completions",
                json={"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 0},
            )
        )
        assert out["choices"][0]["text"]


def test_replicas_give_the_one_engine_fingerprint(
    dp_client: httpx.Client, client: httpx.Client
) -> None:
    """Both engines hash the same weights: the fingerprint is a one-engine server's."""
    assert version_weights(dp_client) == version_weights(client)
