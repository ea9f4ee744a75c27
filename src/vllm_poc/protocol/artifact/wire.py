"""The artifact protocol's HTTP messages: the bodies gonka's MLNode and DAPI send to
``/api/v1/pow`` (docs/protocol.md, Part II §A.6), as pydantic models.

Unknown top-level keys and unknown ``stat_test`` keys are ignored, as the network's nodes do;
``params`` is strict (an unknown key is a 422).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.work import Work


class Params(BaseModel):
    """What the round was made with; ``model`` must be this server's."""

    model_config = ConfigDict(extra="forbid")

    model: str
    seq_len: int = Field(gt=0)
    k_dim: int = Field(default=artifact.K_DIM, ge=2, le=64)


class ArtifactItem(BaseModel):
    nonce: int
    vector_b64: str


class Validation(BaseModel):
    artifacts: list[ArtifactItem]


class StatTest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    dist_threshold: float = Field(default=artifact.DIST_THRESHOLD, ge=0)
    p_mismatch: float = Field(default=artifact.P_MISMATCH, gt=0, lt=1)
    fraud_threshold: float = Field(default=artifact.FRAUD_THRESHOLD, gt=0, le=1)


class Round(BaseModel):
    """What both requests share: the round, the node, the parameters."""

    model_config = ConfigDict(extra="ignore")

    block_hash: str = Field(min_length=1)
    block_height: int
    public_key: str = Field(min_length=1)
    node_id: int = Field(ge=0)
    node_count: int = Field(ge=1)
    params: Params
    batch_size: int = Field(default=32, ge=1)
    url: str | None = None
    poc_stronger_rng: bool = False

    def work(self) -> Work:
        """This round's artifact work (nonces named later)."""
        return Work(
            "artifacts",
            self.block_hash,
            self.public_key,
            (),
            self.params.seq_len,
            seed_derivation="strong" if self.poc_stronger_rng else "v1",
            k_dim=self.params.k_dim,
        )


class InitGenerate(Round):
    """``POST /init/generate``: generate until stopped, nonces strided over nodes and groups."""

    group_id: int = Field(default=0, ge=0)
    n_groups: int = Field(default=1, ge=1)

    def nonce(self, x: int) -> int:
        """The ``x``-th nonce of this instance: disjoint from every other node's and group's."""
        offset = self.node_id + self.group_id * self.node_count
        return offset + x * self.n_groups * self.node_count


class Generate(Round):
    """``POST /generate``: compute the given nonces (validating received artifacts if given)."""

    nonces: list[int]
    wait: bool = False
    validation: Validation | None = None
    stat_test: StatTest | None = None


def encoding(k: int) -> dict[str, object]:
    return {"dtype": "f16", "k_dim": k, "endian": "le"}
