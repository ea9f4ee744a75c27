"""Proof and validation batches (seed Phase 1, after gonka's ``pow/data.py``).

Both are plain dataclasses that round-trip through ``dataclasses.asdict`` and JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

PROBABILITY_MISMATCH = 5e-4
"""Probability that an honest node's nonce fails re-validation (numerical noise across devices)."""


def _check_lengths(nonces: list[int], **lists: list[float]) -> None:
    for name, values in lists.items():
        if len(values) != len(nonces):
            raise ValueError(
                f"nonces and {name} must have the same length, got {len(nonces)} and {len(values)}"
            )


@dataclass
class ProofBatch:
    """Nonces a node checked and their distances to the round's target."""

    public_key: str
    block_hash: str
    block_height: int
    nonces: list[int]
    dist: list[float]
    node_id: int

    def __post_init__(self) -> None:
        _check_lengths(self.nonces, dist=self.dist)

    def sub_batch(self, r_target: float) -> ProofBatch:
        """The nonces with ``dist < r_target`` (NaN distances are never valid)."""
        keep = [i for i, d in enumerate(self.dist) if d < r_target]
        return ProofBatch(
            public_key=self.public_key,
            block_hash=self.block_hash,
            block_height=self.block_height,
            nonces=[self.nonces[i] for i in keep],
            dist=[self.dist[i] for i in keep],
            node_id=self.node_id,
        )

    def __len__(self) -> int:
        return len(self.nonces)

    @staticmethod
    def empty() -> ProofBatch:
        return ProofBatch(
            public_key="", block_hash="", block_height=-1, nonces=[], dist=[], node_id=-1
        )


@dataclass
class ValidatedBatch:
    """A validator's verdict on a ProofBatch: reported vs recomputed distances and a binomial test.

    A nonce counts as invalid when the reported distance is not below ``r_target`` or the
    recomputed one is above it (NaN on either side is invalid). Passing ``n_invalid >= 0``
    skips the computation, which is how a batch is rebuilt from its JSON.
    """

    public_key: str
    block_hash: str
    block_height: int
    nonces: list[int]
    received_dist: list[float]
    dist: list[float]
    r_target: float
    fraud_threshold: float
    node_id: int
    n_invalid: int = field(default=-1)
    probability_honest: float = field(default=-1.0)
    fraud_detected: bool = field(default=False)

    def __post_init__(self) -> None:
        _check_lengths(self.nonces, received_dist=self.received_dist, dist=self.dist)
        if self.n_invalid >= 0:
            return
        self.n_invalid = sum(
            1
            for rd, cd in zip(self.received_dist, self.dist, strict=True)
            if not rd < self.r_target or not cd <= self.r_target
        )
        if self.nonces:
            # Imported here: scipy.stats costs ~0.3 s, and the plugin module is loaded by every
            # vLLM process while only the API server validates.
            from scipy.stats import binomtest

            self.probability_honest = float(
                binomtest(
                    k=self.n_invalid,
                    n=len(self.nonces),
                    p=PROBABILITY_MISMATCH,
                    alternative="greater",
                ).pvalue
            )
            self.fraud_detected = self.probability_honest < self.fraud_threshold


def to_json_dict(batch: ProofBatch | ValidatedBatch) -> dict[str, Any]:
    """``asdict(batch)`` with non-finite distances as ``None``: strict JSON has no NaN."""
    out = asdict(batch)
    for key in ("dist", "received_dist"):
        if key in out:
            out[key] = [d if math.isfinite(d) else None for d in out[key]]
    return out
