"""Strong seeds, stated parameters, the tolerance and the weights fingerprint on a real server:
a strong round's distances are the model's (independent transformers reference), its batches
state what they were computed with, a validator of another ``seq_len`` answers 409, and the
tolerance of a request decides a nonce just above ``r_target``."""

from __future__ import annotations

import httpx

from vllm_poc.client import batch_from_status
from vllm_poc.protocol.distance.batches import to_json_dict
from vllm_poc.testing.server import LocalServer

from .helpers import POW, first_nonces, generate, ok, post_ok, round_body, status, version_weights
from .reference import reference_distances
from .test_correctness import DIST_TOL

SEQ_LEN = 16
BLOCK = "strong-block"


def test_a_strong_round_computes_the_models_distances(
    client: httpx.Client, poc_server: LocalServer
) -> None:
    final = generate(client, 16, block_hash=BLOCK, seq_len=SEQ_LEN, seed_derivation="strong")
    assert final["config"]["seed_derivation"] == "strong"
    found = dict(zip(final["valid_nonces"], final["valid_distances"], strict=True))
    sample = sorted(found)[:8]
    model = poc_server.model_dir
    strong = reference_distances(model, BLOCK, "e2e-node", sample, SEQ_LEN, "strong")
    v1 = reference_distances(model, BLOCK, "e2e-node", sample, SEQ_LEN)
    assert max(abs(found[n] - r) for n, r in zip(sample, strong, strict=True)) <= DIST_TOL
    assert min(abs(found[n] - r) for n, r in zip(sample, v1, strict=True)) > DIST_TOL


def test_batches_state_their_parameters_and_a_validator_follows_or_refuses(
    client: httpx.Client,
) -> None:
    final = generate(client, 16, block_hash=BLOCK, seq_len=SEQ_LEN, seed_derivation="strong")
    model = ok(client.get(POW + "/version"))["model"]
    batch = batch_from_status(
        first_nonces(final), block_hash=BLOCK, public_key="e2e-node", node_id=0
    )
    batch.model = model
    assert batch.parameters() == {
        "seq_len": SEQ_LEN,
        "random_projection": False,
        "seed_derivation": "strong",
        "model": model,
    }
    body = to_json_dict(batch)

    other = round_body(block_hash=BLOCK, public_key="validator", seq_len=24)
    post_ok(client, "/init/validate", other)
    refused = client.post(POW + "/validate", json=body)
    assert refused.status_code == 409, refused.text
    assert "seq_len: batch 16, this node 24" in refused.text
    assert "seed_derivation: batch 'strong', this node 'v1'" in refused.text
    assert status(client)["state"] == "VALIDATING"

    same = round_body(
        block_hash=BLOCK, public_key="validator", seq_len=SEQ_LEN, seed_derivation="strong"
    )
    post_ok(client, "/init/validate", same)
    verdict = ok(client.post(POW + "/validate", json=body))
    assert verdict["n_invalid"] == 0 and not verdict["fraud_detected"]
    diffs = [abs(a - b) for a, b in zip(verdict["distances"], batch.dist, strict=True)]
    assert max(diffs) <= DIST_TOL


def test_a_request_tolerance_decides_a_nonce_just_above_r_target(client: httpx.Client) -> None:
    post_ok(client, "/init/validate", round_body(block_hash=BLOCK, seq_len=SEQ_LEN))
    probe = {
        "public_key": "e2e-node",
        "block_hash": BLOCK,
        "block_height": 100,
        "nonces": [0, 1],
        "dist": [0.0, 0.0],
        "node_id": 0,
    }
    recomputed = ok(client.post(POW + "/validate", json=probe))["distances"]
    r_target = min(recomputed) - 1e-4  # both recomputed distances are above it
    post_ok(
        client, "/init/validate", round_body(block_hash=BLOCK, seq_len=SEQ_LEN, r_target=r_target)
    )
    claimed = {**probe, "dist": [r_target / 2] * 2}
    strict = ok(client.post(POW + "/validate", json=claimed))
    tolerant = ok(client.post(POW + "/validate", json={**claimed, "tolerance": 1.0}))
    nearly = ok(client.post(POW + "/validate", json={**claimed, "tolerance": 5e-5}))
    assert strict["mismatch"] == [True, True] and strict["tolerance"] == 0.0
    assert tolerant["mismatch"] == [False, False] and tolerant["tolerance"] == 1.0
    assert nearly["mismatch"] == [True, True]


def test_version_reports_a_fingerprint_of_the_loaded_weights(client: httpx.Client) -> None:
    weights = version_weights(client)
    assert len(weights["fingerprint"]) == 64 and int(weights["fingerprint"], 16) >= 0
    assert weights["error"] is None and "sha256" in weights["method"]
    assert version_weights(client) == weights  # computed once
