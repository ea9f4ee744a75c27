"""The HTTP messages of the distance protocol under ``/api/v1/pow``, one model each.

Shared by the routes, the client and the tests. Round bodies are ``round.RoundRequest`` and
``round.CalibrationRequest``; this module holds the rest.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from vllm_poc.protocol.distance.batches import ProofBatch, ValidatedBatch, to_json_dict
from vllm_poc.protocol.distance.round import (
    MAX_INT,
    FraudThreshold,
    Height,
    NonEmpty,
    PMismatch,
    SeedDerivation,
    SeqLen,
    Tolerance,
)

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Nonce = Annotated[int, Field(ge=0, le=MAX_INT)]

STATISTICS = ("tolerance", "p_mismatch", "fraud_threshold")
"""The fields of ``/validate`` that override the round's validation rule for one request."""


class ProofBatchRequest(BaseModel):
    """The body of ``/validate``: a ProofBatch (finite distances, nonces in the RPC's range, the
    parameters it states) and, optionally, this request's statistical parameters; ``None``
    takes the round's."""

    model_config = ConfigDict(strict=True)

    public_key: NonEmpty
    block_hash: NonEmpty
    block_height: Height
    nonces: list[Nonce]
    dist: list[FiniteFloat]
    node_id: Annotated[int, Field(le=MAX_INT)]
    seq_len: SeqLen | None = None
    random_projection: bool | None = None
    seed_derivation: SeedDerivation | None = None
    model: str | None = None
    tolerance: Tolerance | None = None
    p_mismatch: PMismatch | None = None
    fraud_threshold: FraudThreshold | None = None

    def to_batch(self) -> ProofBatch:
        """The ProofBatch (ValueError when ``nonces`` and ``dist`` differ in length)."""
        return ProofBatch(**self.model_dump(exclude=set(STATISTICS)))

    def statistics(self) -> dict[str, float]:
        """The statistical parameters this request sets (the others are the round's)."""
        return {k: getattr(self, k) for k in STATISTICS if getattr(self, k) is not None}


class EngineStatus(BaseModel):
    """One data-parallel engine's share of the round."""

    dp_rank: int
    checked: int
    valid: int
    error: str | None = None
    """Why this engine's generation failed (the round stopped with it)."""


class StatusResponse(BaseModel):
    state: str
    valid_nonces: list[int]
    valid_distances: list[float]
    total_checked: int
    total_valid: int
    elapsed_seconds: float
    rate_per_second: float
    block_height: int | None = None
    error: str | None = None
    callbacks: dict[str, int] | None = None
    total_nonfinite: int = 0
    config: dict[str, Any] | None = None
    """The round's settings (block_hash, public_key, node, batch_size, seq_len, ...)."""
    engines: list[EngineStatus] = []
    """One entry per data-parallel engine of this server; they sum to the totals."""
    next: int | None = None
    """With ``?since=N`` only: the index to ask for next (valid nonces found so far)."""


class ValidateResponse(BaseModel):
    nonces: list[int]
    distances: list[float | None]
    """Recomputed distances; ``null`` where the model gave a non-finite number."""
    valid: list[bool]
    """Per nonce: the recomputed distance is below ``r_target``."""
    mismatch: list[bool]
    """Per nonce: it counts against the node (what ``n_invalid`` counts)."""
    n_invalid: int
    probability_honest: float
    fraud_detected: bool
    tolerance: float
    p_mismatch: float
    fraud_threshold: float
    """The rule this verdict applied: the request's values where it set them, else the round's."""

    @classmethod
    def from_verdict(cls, verdict: ValidatedBatch) -> ValidateResponse:
        return cls(
            nonces=verdict.nonces,
            distances=to_json_dict(verdict)["dist"],
            valid=verdict.valid,
            mismatch=verdict.mismatch,
            n_invalid=verdict.n_invalid,
            probability_honest=verdict.probability_honest,
            fraud_detected=verdict.fraud_detected,
            tolerance=verdict.tolerance,
            p_mismatch=verdict.p_mismatch,
            fraud_threshold=verdict.fraud_threshold,
        )
