"""Round lifecycle against a real server: states, counters, stop, node striding."""

from __future__ import annotations

import time

import httpx
import pytest

from vllm_poc.testing.server import LocalServer

from .helpers import POW, is_4xx, ok, post_ok, round_body, status, wait_checked, wait_until

pytestmark = pytest.mark.e2e


def test_generate_runs_and_stop_freezes_counters(client: httpx.Client) -> None:
    batch = 4
    start = post_ok(client, "/init/generate", round_body(batch_size=batch, block_height=101))
    assert start["pow_status"]["state"] == "GENERATING"

    first = wait_checked(client, 1)
    second = wait_checked(client, first["total_checked"] + 2 * batch)
    assert second["total_checked"] > first["total_checked"]
    assert second["elapsed_seconds"] > first["elapsed_seconds"]
    assert second["rate_per_second"] > 0
    assert second["total_valid"] > 0 and second["valid_nonces"], "r_target=2: all valid"
    assert second["block_height"] == 101
    assert second["error"] is None

    t0 = time.monotonic()
    stopped = post_ok(client, "/stop")["pow_status"]
    stop_seconds = time.monotonic() - t0
    assert stopped["state"] == "STOPPED"
    frozen = status(client)
    assert frozen["state"] == "STOPPED"
    # Stop lands within one batch: at most the batch in flight when /stop was handled is
    # still counted after the stop answer.
    assert frozen["total_checked"] - stopped["total_checked"] <= batch, (stopped, frozen)
    per_batch = batch / max(second["rate_per_second"], 1e-9)
    assert stop_seconds < max(5.0, 3 * per_batch), (stop_seconds, per_batch)

    time.sleep(1.0)  # long enough for several more batches if anything were still running
    later = status(client)
    for key in ("total_checked", "total_valid", "valid_nonces", "valid_distances"):
        assert later[key] == frozen[key], key
    assert len(later["valid_nonces"]) == later["total_valid"]
    assert len(later["valid_distances"]) == later["total_valid"]
    # A driver polling a long round pages through the valid nonces with ?since.
    assert "next" not in later
    half = len(later["valid_nonces"]) // 2
    page = ok(client.get(POW + "/status", params={"since": half}))
    assert page["valid_nonces"] == later["valid_nonces"][half:]
    assert page["valid_distances"] == later["valid_distances"][half:]
    assert page["next"] == len(later["valid_nonces"])
    past = client.get(POW + "/status", params={"since": page["next"] + 1})
    assert past.status_code == 400 and "since must be in" in past.text


def _nonces_of_node(client: httpx.Client, node_id: int, node_count: int, n: int) -> list[int]:
    post_ok(
        client,
        "/init/generate",
        round_body(block_hash="stride-block", node_id=node_id, node_count=node_count),
    )
    wait_checked(client, n)
    post_ok(client, "/stop")
    final = status(client)
    nonces = final["valid_nonces"]
    # r_target=2.0 makes every finite distance valid, so valid_nonces lists every checked nonce.
    assert final["total_valid"] == final["total_checked"] == len(nonces), final
    assert all(0.0 <= d <= 2.0 for d in final["valid_distances"])
    return nonces


def test_node_striding_never_repeats_or_overlaps(client: httpx.Client) -> None:
    node_count = 3
    seen: dict[int, list[int]] = {}
    for node_id in (0, 2):
        nonces = _nonces_of_node(client, node_id, node_count, n=12)
        assert len(set(nonces)) == len(nonces), f"node {node_id} checked a nonce twice"
        assert all(x % node_count == node_id for x in nonces), (node_id, nonces)
        # The node walks its stride from the start: node_id, node_id + n, node_id + 2n, ...
        assert sorted(nonces) == [node_id + k * node_count for k in range(len(nonces))]
        seen[node_id] = nonces
    assert not set(seen[0]) & set(seen[2])


def test_state_machine_init_phase_and_validate(client: httpx.Client) -> None:
    s = post_ok(client, "/init", round_body(block_height=202))["pow_status"]
    assert s["state"] == "IDLE"
    assert status(client)["block_height"] == 202
    assert status(client)["total_checked"] == 0

    assert post_ok(client, "/phase/generate")["pow_status"]["state"] == "GENERATING"
    wait_checked(client, 1)
    assert post_ok(client, "/phase/validate")["pow_status"]["state"] == "VALIDATING"
    checked = status(client)["total_checked"]
    time.sleep(0.5)
    s = status(client)
    assert s["state"] == "VALIDATING"
    assert s["total_checked"] <= checked + 2 * 4, "generation must stop in VALIDATING"

    assert post_ok(client, "/stop")["pow_status"]["state"] == "STOPPED"
    s = post_ok(client, "/init/validate", round_body(block_height=203))["pow_status"]
    assert s["state"] == "VALIDATING"
    assert status(client)["block_height"] == 203
    assert post_ok(client, "/stop")["pow_status"]["state"] == "STOPPED"
    assert status(client)["state"] == "STOPPED"


def test_phase_generate_needs_node_info(client: httpx.Client) -> None:
    post_ok(client, "/init", round_body(node_id=-1, node_count=-1, block_height=204))
    r = client.post(POW + "/phase/generate")
    assert is_4xx(r), (r.status_code, r.text)
    assert "Node ID and node count must be set" in r.text
    assert status(client)["state"] == "IDLE"


def test_second_init_generate_while_generating_is_refused(client: httpx.Client) -> None:
    post_ok(client, "/init/generate", round_body(block_height=301))
    wait_checked(client, 1)
    r = client.post(POW + "/init/generate", json=round_body(block_height=302, block_hash="other"))
    assert is_4xx(r), (r.status_code, r.text)
    assert "progress" in r.text.lower() or "generating" in r.text.lower(), r.text
    s = status(client)
    assert s["state"] == "GENERATING"
    assert s["block_height"] == 301, "the refused request must not replace the round"
    # The first round keeps running.
    wait_until(
        lambda: status(client)["total_checked"] > s["total_checked"], 30, "the round continuing"
    )
    ok(client.post(POW + "/stop"))


def test_server_sizes_the_batch_when_the_round_gives_none(
    client: httpx.Client, poc_server: LocalServer
) -> None:
    """``VLLM_POC_BATCH_SIZE=auto``: the token budget binds on the tiny model (memory is ample),
    so quadrupling seq_len divides the batch by four; a round runs whole batches of that size."""
    sizes = {}
    for seq_len in (16, 64):
        body = round_body(block_hash="auto-batch", seq_len=seq_len)
        del body["batch_size"]
        config = post_ok(client, "/init", body)["pow_status"]["config"]
        assert config["seq_len"] == seq_len
        sizes[seq_len] = config["batch_size"]
    assert sizes[64] >= 1 and sizes[64] * 64 <= 65536, sizes
    assert sizes[64] == sizes[16] // 4, sizes
    assert "vllm-poc: auto batch_size" in poc_server.log_path.read_text()

    post_ok(client, "/phase/generate")
    wait_checked(client, 2 * sizes[64])
    post_ok(client, "/stop")
    final = status(client)
    assert final["total_checked"] % sizes[64] == 0, final["total_checked"]
    assert final["error"] is None
