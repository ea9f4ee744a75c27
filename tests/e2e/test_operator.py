"""What an operator reads off a running node: /metrics, /version and /calibrate."""

from __future__ import annotations

import re

import httpx
import pytest

from .helpers import POW, generate, metric_total, ok, status

pytestmark = pytest.mark.e2e


def test_metrics_count_what_status_reports(client: httpx.Client) -> None:
    before = client.get("/metrics").text
    checked_before = metric_total(before, "vllm_poc_nonces_checked_total")
    final = generate(client, 8, block_hash="metrics-block")
    after = client.get("/metrics").text
    checked = metric_total(after, "vllm_poc_nonces_checked_total") - checked_before
    assert checked == final["total_checked"]
    # One engine: every generation series is labelled with its data-parallel rank, 0.
    assert metric_total(after, "vllm_poc_batches_total", 'dp_rank="0"') >= 1
    assert metric_total(after, "vllm_poc_batch_seconds_count", 'dp_rank="0"') >= 1
    assert re.search(r'^vllm_poc_state\{state="STOPPED"\} 1\.0$', after, re.MULTILINE)
    assert re.search(r'^vllm_poc_state\{state="GENERATING"\} 0\.0$', after, re.MULTILINE)
    # vLLM's own series are still there
    assert "vllm:" in after


def test_version(client: httpx.Client) -> None:
    from vllm_poc import __version__
    from vllm_poc.protocol.distance.math import PROTOCOL_VERSION

    data = ok(client.get(POW + "/version"))
    assert data["plugin_version"] == __version__
    assert data["protocol_version"] == PROTOCOL_VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", data["vllm_version"])
    assert data["model"].endswith("tiny-qwen3")
    assert data["options"]["random_projection"] is True
    assert data["options"]["inference_during_validation"] is False


def test_calibrate_gives_the_wanted_valid_rate(client: httpx.Client) -> None:
    body = {"block_hash": "calibration-block", "valid_rate": 0.25, "n_samples": 64, "seq_len": 16}
    before = status(client)
    result = ok(client.post(POW + "/calibrate", json={**body, "batch_size": 16}))
    assert result["n_samples"] == 64 and result["n_nonfinite"] == 0
    quantiles = [result["quantiles"][k] for k in sorted(result["quantiles"], key=float)]
    assert quantiles == sorted(quantiles)
    assert result["min"] <= result["r_target"] <= result["max"]
    # the state of the node is untouched
    after = status(client)
    assert (after["state"], after["config"]) == (before["state"], before["config"])

    # A round at that r_target finds about the wanted share of valid nonces: the nonces a
    # calibration samples are those a node with the same key checks first.
    final = generate(
        client,
        64,
        block_hash="calibration-block",
        public_key="calibration",
        r_target=result["r_target"],
        seq_len=16,
        batch_size=16,
    )
    first = [n for n in final["valid_nonces"] if n < 64]
    assert 0.15 <= len(first) / 64 <= 0.35, len(first)


def test_calibrate_is_refused_while_generating(client: httpx.Client) -> None:
    ok(
        client.post(
            POW + "/init/generate",
            json={
                "block_hash": "b",
                "block_height": 1,
                "public_key": "k",
                "r_target": 1.0,
                "node_id": 0,
                "node_count": 1,
                "batch_size": 4,
                "seq_len": 16,
            },
        )
    )
    response = client.post(POW + "/calibrate", json={"block_hash": "b", "valid_rate": 0.5})
    assert response.status_code == 400
    assert "while generating" in response.text
    assert status(client)["state"] == "GENERATING"
