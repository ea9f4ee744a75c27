"""What a node states in its proof batches, and how it judges another node's.

A batch's distances depend on the round's block and the prover's key, and also on ``seq_len``,
``random_projection``, the seed derivation and the model: the node writes all four into every
batch it reports, and a validator whose round or model differs refuses the batch (409) instead
of reading an honest node as fraud.
"""

from __future__ import annotations

from typing import Any

from vllm_poc.protocol.distance.batches import ProofBatch, ValidatedBatch
from vllm_poc.protocol.distance.round import PoCConfig
from vllm_poc.server.errors import Conflict


def stated(config: PoCConfig, model: str) -> dict[str, Any]:
    """The parameters of ``config`` that a batch states (``batches.PARAMETERS``)."""
    return {
        "seq_len": config.seq_len,
        "random_projection": config.random_projection,
        "seed_derivation": config.seed_derivation,
        "model": model,
    }


def proof_batch(config: PoCConfig, model: str, nonces: list[int], dist: list[float]) -> ProofBatch:
    """A batch of this node's nonces under ``config``, stating its parameters."""
    return ProofBatch(
        public_key=config.public_key,
        block_hash=config.block_hash,
        block_height=config.block_height,
        nonces=nonces,
        dist=dist,
        node_id=config.node_id,
        **stated(config, model),
    )


def check_parameters(batch: ProofBatch, config: PoCConfig, model: str) -> None:
    """Conflict (409), naming every difference, when ``batch`` states parameters other than
    this node's round and model; parameters the batch leaves out are taken as this node's."""
    ours = stated(config, model)
    differences = [
        f"{name}: batch {theirs!r}, this node {ours[name]!r}"
        for name, theirs in batch.parameters().items()
        if theirs != ours[name]
    ]
    if differences:
        raise Conflict(
            "the batch was computed under other parameters than this node's round: "
            + "; ".join(differences)
        )


def judge(
    batch: ProofBatch,
    recomputed: list[float],
    config: PoCConfig,
    model: str,
    statistics: dict[str, float],
) -> ValidatedBatch:
    """The verdict on ``batch`` under the round's rule, with ``statistics`` (``tolerance``,
    ``p_mismatch``, ``fraud_threshold``) overriding the round's values."""
    return ValidatedBatch(
        public_key=batch.public_key,
        block_hash=batch.block_hash,
        block_height=batch.block_height,
        nonces=batch.nonces,
        received_dist=batch.dist,
        dist=recomputed,
        r_target=config.r_target,
        node_id=batch.node_id,
        tolerance=statistics.get("tolerance", config.tolerance),
        p_mismatch=statistics.get("p_mismatch", config.p_mismatch),
        fraud_threshold=statistics.get("fraud_threshold", config.fraud_threshold),
        **stated(config, model),
    )
