"""Reported distances match an independent reference; /validate recomputes them, flags fraud."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vllm_poc.testing.server import LocalServer

from .helpers import LIMITS, POW, generate, ok, post_ok, round_body, status
from .reference import reference_distances

pytestmark = pytest.mark.e2e

BLOCK = "correctness-block"
PROVER = "prover-node"
SEQ_LEN = 32
N_NONCES = 24

# Tolerance on distances, bf16 server vs float32 reference. A distance is ||x - t|| with x the
# unit-normalised permuted logits, so |d_server - d_ref| <= ||x_server - x_ref||, about the
# relative error of the logits row. bf16 keeps 8 significand bits (relative rounding 2^-9 ~ 2e-3
# per operation), and errors partly cancel over the 512-wide row: transformers' own bf16 vs fp32
# forward of this model differs by at most 3.1e-4 in distance (32 nonces, seq_len 32). 5e-3 is
# ~16x that, and well below the spread of distances between nonces (~0.1), so a wrong
# permutation, target, input or position would fail it.
DIST_TOL = 5e-3


def _as_map(s: dict[str, Any]) -> dict[int, float]:
    return dict(zip(s["valid_nonces"], s["valid_distances"], strict=True))


@pytest.fixture(scope="module")
def module_client(poc_server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=poc_server.base_url, timeout=120.0, limits=LIMITS) as c:
        yield c
        if poc_server.alive():
            c.post(POW + "/stop")


@pytest.fixture(scope="module")
def generated(module_client: httpx.Client) -> dict[int, float]:
    """nonce -> distance from a round with batch_size 8 (r_target 2: every nonce reported)."""
    final = generate(
        module_client,
        N_NONCES,
        block_hash=BLOCK,
        public_key=PROVER,
        batch_size=8,
        seq_len=SEQ_LEN,
    )
    got = _as_map(final)
    assert len(got) == final["total_checked"] >= N_NONCES
    return got


def test_distances_match_independent_reference(
    generated: dict[int, float], tiny_model: Path
) -> None:
    nonces = sorted(generated)[:N_NONCES]
    ref = reference_distances(tiny_model, BLOCK, PROVER, nonces, SEQ_LEN)
    diffs = [abs(generated[n] - r) for n, r in zip(nonces, ref, strict=True)]
    print(
        f"\n[e2e] max |distance - reference| over {len(nonces)} nonces: {max(diffs):.3e} "
        f"(mean {sum(diffs) / len(diffs):.3e}, tolerance {DIST_TOL})"
    )
    assert max(diffs) <= DIST_TOL, list(zip(nonces, diffs, strict=True))
    # The distances must not be a constant or a copy of one another.
    assert max(ref) - min(ref) > 10 * DIST_TOL


def test_results_do_not_depend_on_batch_size(
    generated: dict[int, float], module_client: httpx.Client
) -> None:
    other = _as_map(
        generate(
            module_client,
            N_NONCES,
            block_hash=BLOCK,
            public_key=PROVER,
            batch_size=3,
            seq_len=SEQ_LEN,
        )
    )
    common = sorted(set(generated) & set(other))
    assert len(common) >= N_NONCES
    diffs = [abs(generated[n] - other[n]) for n in common]
    print(f"\n[e2e] max |distance(batch 8) - distance(batch 3)|: {max(diffs):.3e}")
    assert max(diffs) <= DIST_TOL


def _split(generated: dict[int, float]) -> tuple[float, list[int], list[int]]:
    """An r_target between two distances, cut at the widest gap of the middle half."""
    items = sorted(generated.items(), key=lambda kv: kv[1])
    lo, hi = len(items) // 4, 3 * len(items) // 4
    k = max(range(lo, hi), key=lambda i: items[i + 1][1] - items[i][1])
    r_target = (items[k][1] + items[k + 1][1]) / 2
    below = [n for n, _ in items[: k + 1]]
    above = [n for n, _ in items[k + 1 :]]
    return r_target, below, above


def _proof(nonces: list[int], dist: list[float]) -> dict[str, Any]:
    return {
        "public_key": PROVER,
        "block_hash": BLOCK,
        "block_height": 100,
        "nonces": nonces,
        "dist": dist,
        "node_id": 0,
    }


def test_validate_honest_batch_and_flag_forged_one(
    generated: dict[int, float], module_client: httpx.Client
) -> None:
    c = module_client
    r_target, below, above = _split(generated)
    # The validator is another node: its own public key differs from the prover's.
    post_ok(
        c,
        "/init/validate",
        round_body(
            block_hash=BLOCK, public_key="validator-node", r_target=r_target, seq_len=SEQ_LEN
        ),
    )
    assert status(c)["state"] == "VALIDATING"

    honest = ok(c.post(POW + "/validate", json=_proof(below, [generated[n] for n in below])))
    assert honest["nonces"] == below
    assert len(honest["distances"]) == len(below)
    diffs = [abs(d - generated[n]) for n, d in zip(below, honest["distances"], strict=True)]
    print(f"\n[e2e] max |validated - generated| distance: {max(diffs):.3e}")
    assert max(diffs) <= DIST_TOL
    assert honest["valid"] == [True] * len(below)
    assert honest["n_invalid"] == 0
    assert honest["fraud_detected"] is False
    assert honest["probability_honest"] == pytest.approx(1.0)

    # Forged: nonces whose real distance is above r_target, claimed well below it.
    forged = ok(c.post(POW + "/validate", json=_proof(above, [r_target / 2] * len(above))))
    assert forged["nonces"] == above
    assert all(d > r_target for d in forged["distances"]), (r_target, forged["distances"])
    assert forged["valid"] == [False] * len(above)
    assert forged["n_invalid"] == len(above)
    assert forged["fraud_detected"] is True
    assert forged["probability_honest"] < 0.01

    # One forged nonce among honest ones: the verdict follows the binomial test exactly.
    mixed = ok(
        c.post(
            POW + "/validate",
            json=_proof(below + above[:1], [generated[n] for n in below] + [r_target / 2]),
        )
    )
    assert mixed["n_invalid"] == 1
    from scipy.stats import binomtest

    p = binomtest(1, len(below) + 1, 5e-4, alternative="greater").pvalue
    assert mixed["probability_honest"] == pytest.approx(p, rel=1e-6)
    assert mixed["fraud_detected"] is bool(p < 0.01)

    assert status(c)["state"] == "VALIDATING", "/validate must not change the round state"


def test_validate_works_after_stop(
    generated: dict[int, float], module_client: httpx.Client
) -> None:
    c = module_client
    post_ok(
        c,
        "/init/validate",
        round_body(block_hash=BLOCK, public_key="validator-node", seq_len=SEQ_LEN),
    )
    post_ok(c, "/stop")
    nonces = sorted(generated)[:4]
    res = ok(c.post(POW + "/validate", json=_proof(nonces, [generated[n] for n in nonces])))
    assert max(abs(d - generated[n]) for n, d in zip(nonces, res["distances"], strict=True)) <= (
        DIST_TOL
    )
