"""Random projections end to end: the validator recomputes the prover's distances exactly,
the projections change the distances as an independent computation says, and rounds without
them are unaffected (on the ``tuned_server``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import torch

from vllm_poc.protocol.distance.math import generate_projection
from vllm_poc.protocol.inputs import generate_inputs

from .helpers import (
    POW,
    generated,
    ok,
    post_ok,
    proof_body,
    round_body,
    status,
    validate_claimed,
)
from .reference import distances_from_logits, load_model, reference_distances
from .test_correctness import DIST_TOL

pytestmark = pytest.mark.e2e


PROJ_BLOCK = "projection-block"
PROVER = "projection-prover"
PROJ_SEQ_LEN = 32
PROJ_BATCH = 4
PROJ_NONCES = list(range(32))  # eight whole batches: validation runs the very same forwards


def _project(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``x + x @ P`` of a bf16 tensor, in float32, rounded back to bf16 (as the server does)."""
    x32 = x.to(torch.bfloat16).to(torch.float32)
    return (x32 + x32 @ p).to(torch.bfloat16).to(torch.float32)


def projected_reference_distances(
    model_dir: Path, block_hash: str, public_key: str, nonces: Sequence[int], seq_len: int
) -> list[float]:
    """The reference of ``reference.py`` with the round's random projections around the model.

    transformers' Qwen3 in float32; inputs generated in bf16, projected with ``P_pre`` (bf16
    again), the last hidden state rounded to bf16 (the server's model dtype), projected with
    ``P_post`` (bf16 again), then the (bf16-valued) lm_head in float32.
    """
    model = load_model(str(model_dir))
    hidden = model.config.hidden_size
    p_pre = generate_projection(block_hash, "pre", hidden)
    p_post = generate_projection(block_hash, "post", hidden)
    embeds = generate_inputs(
        block_hash, public_key, list(nonces), hidden, seq_len, dtype=torch.bfloat16
    )
    embeds = _project(embeds, p_pre)
    rows = []
    with torch.no_grad():
        for i in range(len(nonces)):
            positions = torch.arange(seq_len).unsqueeze(0)
            out = model.model(
                inputs_embeds=embeds[i : i + 1], position_ids=positions, use_cache=False
            )
            last = _project(out.last_hidden_state[0, -1], p_post)
            rows.append(model.lm_head(last).float())
    return distances_from_logits(torch.stack(rows), block_hash, public_key, nonces)


@pytest.fixture(scope="module")
def projection_rounds(tuned_module_client: httpx.Client) -> dict[str, dict[int, float]]:
    """Distances of the same nonces from a round with the projection and one without."""
    common = {
        "block_hash": PROJ_BLOCK,
        "public_key": PROVER,
        "batch_size": PROJ_BATCH,
        "seq_len": PROJ_SEQ_LEN,
    }
    n = len(PROJ_NONCES)
    rounds = {
        "projected": generated(tuned_module_client, n, random_projection=True, **common),
        "plain": generated(tuned_module_client, n, **common),
    }
    for name, got in rounds.items():
        assert set(PROJ_NONCES) <= set(got), (name, sorted(got)[:20])
    return rounds


def _validator_distances(client: httpx.Client, random_projection: bool) -> list[float]:
    post_ok(
        client,
        "/init/validate",
        round_body(
            block_hash=PROJ_BLOCK,
            public_key="phase6-validator",
            batch_size=PROJ_BATCH,
            seq_len=PROJ_SEQ_LEN,
            random_projection=random_projection,
        ),
    )
    s = status(client)
    assert s["state"] == "VALIDATING", s
    assert s["config"]["random_projection"] is random_projection, s["config"]
    res = validate_claimed(client, PROJ_BLOCK, PROVER, PROJ_NONCES)
    assert res["nonces"] == PROJ_NONCES
    return res["distances"]


def test_projection_validator_recomputes_generated_distances_exactly(
    tuned_module_client: httpx.Client, projection_rounds: dict[str, dict[int, float]]
) -> None:
    generated = [projection_rounds["projected"][n] for n in PROJ_NONCES]
    validated = _validator_distances(tuned_module_client, random_projection=True)
    diffs = [abs(a - b) for a, b in zip(generated, validated, strict=True)]
    print(f"\n[e2e] projection: max |generated - validated| = {max(diffs):.3e}")
    assert validated == generated, list(zip(PROJ_NONCES, generated, validated, strict=True))

    # An honest submission of those distances passes a validator with the option on.
    post_ok(
        tuned_module_client,
        "/init/validate",
        round_body(
            block_hash=PROJ_BLOCK,
            public_key="phase6-validator",
            batch_size=PROJ_BATCH,
            seq_len=PROJ_SEQ_LEN,
            r_target=max(generated) + 1e-3,
            random_projection=True,
        ),
    )
    res = ok(
        tuned_module_client.post(
            POW + "/validate", json=proof_body(PROJ_BLOCK, PROVER, PROJ_NONCES, generated)
        )
    )
    assert res["distances"] == generated
    assert res["n_invalid"] == 0 and res["fraud_detected"] is False, res


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def test_projection_changes_the_distances(
    projection_rounds: dict[str, dict[int, float]],
) -> None:
    projected, plain = projection_rounds["projected"], projection_rounds["plain"]
    diffs = [abs(projected[n] - plain[n]) for n in PROJ_NONCES]
    print(
        f"\n[e2e] |projected - plain| distance: min {min(diffs):.3e}, "
        f"mean {_mean(diffs):.3e}, max {max(diffs):.3e}"
    )
    # The distance of unit-normalised logits to a random target concentrates near sqrt(2), so
    # even a ~10% change of the logits moves it by only ~1e-3..1e-2: no nonce keeps its
    # distance, and on average they move ~30x more than bf16 rounding does (next test).
    assert all(d > 0 for d in diffs), list(zip(PROJ_NONCES, diffs, strict=True))
    assert _mean(diffs) > 1e-3, diffs


def test_projection_matches_independent_reference(
    projection_rounds: dict[str, dict[int, float]], tiny_model: Path
) -> None:
    projected, plain = projection_rounds["projected"], projection_rounds["plain"]
    ref = projected_reference_distances(tiny_model, PROJ_BLOCK, PROVER, PROJ_NONCES, PROJ_SEQ_LEN)
    ref_plain = reference_distances(tiny_model, PROJ_BLOCK, PROVER, PROJ_NONCES, PROJ_SEQ_LEN)
    diffs = [abs(projected[n] - r) for n, r in zip(PROJ_NONCES, ref, strict=True)]
    # How far the projected distances are from the reference WITHOUT the projection, and the
    # plain round from the reference with it: what a missing or misplaced projection would give.
    off = [abs(projected[n] - r) for n, r in zip(PROJ_NONCES, ref_plain, strict=True)]
    off_plain = [abs(plain[n] - r) for n, r in zip(PROJ_NONCES, ref, strict=True)]
    print(
        f"\n[e2e] projection: |distance - reference| over {len(diffs)} nonces: max "
        f"{max(diffs):.3e}, mean {_mean(diffs):.3e} (tolerance {DIST_TOL}); against the plain "
        f"reference: mean {_mean(off):.3e}; plain round against this reference: mean "
        f"{_mean(off_plain):.3e}"
    )
    assert max(diffs) <= DIST_TOL, list(zip(PROJ_NONCES, diffs, strict=True))
    assert max(ref) - min(ref) > 10 * DIST_TOL, "reference distances should spread"
    # The tolerance alone cannot tell the projection apart (see the previous test); the means
    # can: the server is much closer to the projected reference than to the plain one.
    assert 5 * _mean(diffs) < _mean(off), (_mean(diffs), _mean(off))
    assert 5 * _mean(diffs) < _mean(off_plain), (_mean(diffs), _mean(off_plain))


def test_round_without_projection_is_unaffected(
    tuned_module_client: httpx.Client, projection_rounds: dict[str, dict[int, float]]
) -> None:
    plain = [projection_rounds["plain"][n] for n in PROJ_NONCES]
    # A validator with the option off recomputes the plain round exactly, also after the
    # server has run (and cached the matrices of) projected forwards of the same block.
    _validator_distances(tuned_module_client, random_projection=True)
    validated = _validator_distances(tuned_module_client, random_projection=False)
    assert validated == plain, list(zip(PROJ_NONCES, plain, validated, strict=True))
    # A fresh plain round on the same block reproduces the first one exactly.
    again = generated(
        tuned_module_client,
        len(PROJ_NONCES),
        block_hash=PROJ_BLOCK,
        public_key=PROVER,
        batch_size=PROJ_BATCH,
        seq_len=PROJ_SEQ_LEN,
    )
    assert [again[n] for n in PROJ_NONCES] == plain
