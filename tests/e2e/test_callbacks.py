"""Callbacks reach a real local receiver; a broken receiver never slows generation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vllm_poc.testing.receiver import CallbackReceiver, dead_url

from .helpers import POW, ok, post_ok, round_body, status, wait_checked
from .reference import reference_distances

pytestmark = pytest.mark.e2e

PROOF_FIELDS = {"public_key", "block_hash", "block_height", "nonces", "dist", "node_id"}
VALIDATED_FIELDS = PROOF_FIELDS - {"dist"} | {
    "received_dist",
    "dist",
    "r_target",
    "fraud_threshold",
    "n_invalid",
    "probability_honest",
    "fraud_detected",
}


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as r:
        yield r


def _median_r_target(model: Path, block_hash: str, public_key: str, seq_len: int) -> float:
    """An r_target that makes about half of the first nonces valid (from the reference)."""
    d = sorted(reference_distances(model, block_hash, public_key, range(32), seq_len))
    return (d[15] + d[16]) / 2


def test_generated_callbacks_carry_only_valid_nonces(
    client: httpx.Client, receiver: CallbackReceiver, tiny_model: Path
) -> None:
    block, key, seq_len = "callback-block", "callback-node", 16
    r_target = _median_r_target(tiny_model, block, key, seq_len)
    # batch_size 32 (the default) keeps the callback rate near a real node's: with batch 4 the
    # tiny model makes ~250 batches/s, more than one-at-a-time delivery keeps up with.
    body = round_body(
        block_hash=block,
        public_key=key,
        block_height=400,
        batch_size=32,
        seq_len=seq_len,
        r_target=r_target,
        callback_url=receiver.url,
    )
    post_ok(client, "/init/generate", body)
    wait_checked(client, 64)
    post_ok(client, "/stop")
    final = status(client)
    assert 0 < final["total_valid"] < final["total_checked"], "r_target should split the nonces"

    def delivered() -> list[int]:
        return [n for b in receiver.bodies("/generated") for n in b["nonces"]]

    deadline = time.monotonic() + 30
    while len(delivered()) < final["total_valid"] and time.monotonic() < deadline:
        time.sleep(0.1)
    print(
        f"\n[e2e] {final['total_checked']} checked, {final['total_valid']} valid, "
        f"{len(delivered())} delivered; callbacks: {status(client).get('callbacks')}"
    )
    missing = sorted(set(final["valid_nonces"]) - set(delivered()))
    extra = sorted(set(delivered()) - set(final["valid_nonces"]))
    assert not missing and not extra, (
        f"valid nonces never delivered: {missing}; delivered but not in /status: {extra}; "
        f"/status callbacks: {status(client).get('callbacks')}"
    )
    posted = receiver.bodies("/generated")
    for b in posted:
        assert set(b) >= PROOF_FIELDS, sorted(b)
        assert (b["public_key"], b["block_hash"], b["block_height"], b["node_id"]) == (
            key,
            block,
            400,
            0,
        )
        assert len(b["nonces"]) == len(b["dist"])
        assert all(d < r_target for d in b["dist"]), (r_target, b["dist"])
    nonces = delivered()
    assert len(nonces) == len(set(nonces)), "a nonce was delivered twice"
    assert sorted(nonces) == sorted(final["valid_nonces"])
    by_status = dict(zip(final["valid_nonces"], final["valid_distances"], strict=True))
    for b in posted:
        for n, d in zip(b["nonces"], b["dist"], strict=True):
            assert d == pytest.approx(by_status[n], abs=1e-6)
    assert receiver.records("/validated") == []


def test_validate_posts_validated_batch(client: httpx.Client, receiver: CallbackReceiver) -> None:
    block = "validated-block"
    post_ok(
        client,
        "/init/validate",
        round_body(block_hash=block, r_target=1.6, fraud_threshold=0.02, callback_url=receiver.url),
    )
    proof = {
        "public_key": "someone-else",
        "block_hash": block,
        "block_height": 100,
        "nonces": [5, 9, 13],
        "dist": [0.5, 0.6, 1.9],
        "node_id": 7,
    }
    res = ok(client.post(POW + "/validate", json=proof))
    got = receiver.wait_for("/validated", 1, timeout=30)[0].body
    assert set(got) >= VALIDATED_FIELDS, sorted(got)
    assert got["public_key"] == "someone-else"
    assert got["block_hash"] == block
    assert got["block_height"] == 100
    assert got["node_id"] == 7
    assert got["nonces"] == [5, 9, 13]
    assert got["received_dist"] == [0.5, 0.6, 1.9]
    assert got["dist"] == pytest.approx(res["distances"], abs=1e-6)
    assert got["r_target"] == pytest.approx(1.6)
    assert got["fraud_threshold"] == pytest.approx(0.02)
    assert got["n_invalid"] == res["n_invalid"] >= 1  # 1.9 is not below r_target
    assert got["probability_honest"] == pytest.approx(res["probability_honest"])
    assert got["fraud_detected"] == res["fraud_detected"]
    assert receiver.records("/generated") == []


@pytest.mark.runs_last
def test_next_round_callbacks_are_not_stuck_behind_a_dead_receiver(
    client: httpx.Client, receiver: CallbackReceiver
) -> None:
    # A round whose receiver is down leaves undeliverable callbacks behind (one per batch).
    body = round_body(block_hash="dead-block", callback_url=dead_url())
    post_ok(client, "/init/generate", body)
    wait_checked(client, 200)
    post_ok(client, "/stop")
    # The next round reports to a healthy receiver. It is stopped after a few batches, so its
    # own posts cannot push the old ones out of a bounded queue: they must still arrive
    # promptly, not after the old round's retries (~15 s of backoff per undeliverable post).
    body = round_body(block_hash="next-block", callback_url=receiver.url)
    post_ok(client, "/init/generate", body)
    wait_checked(client, 8)
    post_ok(client, "/stop")
    try:
        got = receiver.wait_for("/generated", 1, timeout=20)
    except TimeoutError as e:
        raise AssertionError(
            f"no /generated callback of the new round within 20 s ({e}); "
            f"status callbacks: {status(client).get('callbacks')}"
        ) from None
    assert got[0].body["block_hash"] == "next-block"
