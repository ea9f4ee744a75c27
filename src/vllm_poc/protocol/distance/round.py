"""A round's parameters and states: the one place where their values are checked.

``PoCConfig`` is what a node runs; ``RoundRequest`` is the body of ``/init``,
``/init/generate`` and ``/init/validate``, the same fields with the node's defaults left open
(``batch_size``, ``seq_len``, the node). Both reject impossible values at construction with a
``ValueError`` (pydantic's ``ValidationError``) that names the field. What depends on the
server (the model's length, the token budget, allowed callback hosts) is the manager's to check.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vllm_poc.protocol import validation
from vllm_poc.work import MAX_INT, Work

NODE_UNSET = -1
"""The round body's sentinel for "node id / node count not given"."""

NonEmpty = Annotated[str, Field(min_length=1)]
Height = Annotated[int, Field(ge=0, le=MAX_INT)]
RTarget = Annotated[float, Field(gt=0, le=2, allow_inf_nan=False)]
FraudThreshold = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Tolerance = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PMismatch = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
SeedDerivation = Literal["v1", "strong"]
"""How a nonce's input seed comes from its string (docs/protocol.md, section 1): ``v1`` keeps 32
bits of the hash, ``strong`` all 256 (8 segments with their own seeds)."""
NodeField = Annotated[int, Field(ge=NODE_UNSET, le=2**31)]
BatchSize = Annotated[int, Field(ge=1, le=2**20)]
SeqLen = Annotated[int, Field(ge=1, le=2**20)]


class PoCConfig(BaseModel):
    """Everything a node needs to run one PoC round."""

    model_config = ConfigDict(strict=True)

    block_hash: NonEmpty
    block_height: Height
    public_key: NonEmpty
    r_target: RTarget
    fraud_threshold: FraudThreshold = validation.FRAUD_THRESHOLD
    tolerance: Tolerance = 0.0
    """Validation: how far above ``r_target`` a recomputed distance may be (distance units)."""
    p_mismatch: PMismatch = validation.PROBABILITY_MISMATCH
    """Validation: the binomial test's probability that an honest nonce mismatches."""
    node_id: NodeField = 0
    node_count: NodeField = 1
    batch_size: BatchSize = 32
    seq_len: SeqLen = 256
    callback_url: str | None = None
    random_projection: bool = False
    """Apply the round's random residual projections around the forward."""
    seed_derivation: SeedDerivation = "v1"

    def work(self, public_key: str | None = None) -> Work:
        """This round's distance work (nonces named later) for ``public_key`` (default: the
        round's own)."""
        return Work(
            "distances",
            self.block_hash,
            public_key or self.public_key,
            (),
            self.seq_len,
            seed_derivation=self.seed_derivation,
            random_projection=self.random_projection,
        )

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"callback_url must be an http(s) URL with a host, got {url!r}")
        return url

    @model_validator(mode="after")
    def _node_in_range(self) -> PoCConfig:
        if self.node_count == 0:
            raise ValueError("node_count must be >= 1 (or -1 for unset), got 0")
        if self.has_node and not self.node_id < self.node_count:
            raise ValueError(
                f"node_id must be in [0, node_count={self.node_count}), got {self.node_id}"
            )
        return self

    @property
    def has_node(self) -> bool:
        """True when both node_id and node_count are set, as generation requires."""
        return self.node_id != NODE_UNSET and self.node_count != NODE_UNSET


class RoundRequest(PoCConfig):
    """The body that starts a round; ``None`` leaves a value to the node's settings."""

    node_id: NodeField = NODE_UNSET
    node_count: NodeField = NODE_UNSET
    batch_size: BatchSize | None = None  # type: ignore[assignment]  # the node's to choose
    """None: ``VLLM_POC_BATCH_SIZE`` (by default sized by the workers)."""
    seq_len: SeqLen | None = None  # type: ignore[assignment]  # the node's to choose
    """None: ``VLLM_POC_SEQ_LEN``."""

    def to_config(self, batch_size: int, seq_len: int) -> PoCConfig:
        """The round to run, with the node's values where the request left them open."""
        fields = self.model_dump()
        fields.update(batch_size=batch_size, seq_len=seq_len)
        return PoCConfig(**fields)


class CalibrationRequest(BaseModel):
    """The body of ``/calibrate``: which block to sample, and the wanted share of valid nonces."""

    model_config = ConfigDict(strict=True)

    block_hash: NonEmpty
    public_key: NonEmpty = "calibration"
    valid_rate: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    n_samples: Annotated[int, Field(ge=1, le=MAX_INT)] = 256
    batch_size: BatchSize | None = None
    seq_len: SeqLen | None = None
    random_projection: bool = False
    seed_derivation: SeedDerivation = "v1"

    def to_config(self, batch_size: int, seq_len: int) -> PoCConfig:
        """A round of this block used only to compute distances (its r_target is unused)."""
        return PoCConfig(
            block_hash=self.block_hash,
            block_height=0,
            public_key=self.public_key,
            r_target=1.0,
            batch_size=batch_size,
            seq_len=seq_len,
            random_projection=self.random_projection,
            seed_derivation=self.seed_derivation,
        )
