"""Proof and validation batches: what a node reports and what a validator answers.

Plain dataclasses that round-trip through ``dataclasses.asdict`` and JSON (``to_json_dict``
writes non-finite distances as ``null``). The rules they apply live in ``validation``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from vllm_poc.protocol import validation


def _check_lengths(nonces: list[int], **lists: list[float]) -> None:
    for name, values in lists.items():
        if len(values) != len(nonces):
            raise ValueError(
                f"nonces and {name} must have the same length, got {len(nonces)} and {len(values)}"
            )


PARAMETERS = ("seq_len", "random_projection", "seed_derivation", "model")
"""What a batch's distances depend on besides the round's block and the node's key: a validator
using other values reads an honest node as fraud. ``None`` (absent) means "the round's"."""


@dataclass
class ProofBatch:
    """Nonces a node checked and their distances to the round's target, with the parameters
    that the distances were computed with (``PARAMETERS``)."""

    public_key: str
    block_hash: str
    block_height: int
    nonces: list[int]
    dist: list[float]
    node_id: int
    seq_len: int | None = None
    random_projection: bool | None = None
    seed_derivation: str | None = None
    model: str | None = None
    """The served model's name."""

    def __post_init__(self) -> None:
        _check_lengths(self.nonces, dist=self.dist)

    def select(self, indices: Iterable[int]) -> ProofBatch:
        """The nonces (and distances) at ``indices``, in that order, of the same round."""
        picked = list(indices)
        return replace(
            self, nonces=[self.nonces[i] for i in picked], dist=[self.dist[i] for i in picked]
        )

    def parameters(self) -> dict[str, Any]:
        """The ``PARAMETERS`` this batch states (the absent ones left out)."""
        return {k: getattr(self, k) for k in PARAMETERS if getattr(self, k) is not None}

    def sub_batch(self, r_target: float) -> ProofBatch:
        """The valid nonces (``validation.is_valid``)."""
        return self.select(i for i, d in enumerate(self.dist) if validation.is_valid(d, r_target))

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

    ``n_invalid`` counts the mismatches of ``validation`` under ``r_target``, ``tolerance``,
    ``p_mismatch`` and ``fraud_threshold``; the ``PARAMETERS`` fields say what the validator
    recomputed with. Passing ``n_invalid >= 0`` skips the computation, which is how a batch is
    rebuilt from its JSON.
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
    tolerance: float = 0.0
    p_mismatch: float = validation.PROBABILITY_MISMATCH
    seq_len: int | None = None
    random_projection: bool | None = None
    seed_derivation: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        _check_lengths(self.nonces, received_dist=self.received_dist, dist=self.dist)
        if self.n_invalid >= 0:
            return
        self.n_invalid = sum(self.mismatch)
        verdict = validation.fraud_test(
            self.n_invalid, len(self.nonces), self.fraud_threshold, self.p_mismatch
        )
        self.probability_honest = verdict.probability_honest
        self.fraud_detected = verdict.fraud_detected

    @property
    def mismatch(self) -> list[bool]:
        """Per nonce: does it count against the node (``validation.is_mismatch``)?"""
        return validation.mismatches(self.received_dist, self.dist, self.r_target, self.tolerance)

    @property
    def valid(self) -> list[bool]:
        """Per nonce: is the recomputed distance valid (``validation.is_valid``)?"""
        return [validation.is_valid(d, self.r_target) for d in self.dist]


def to_json_dict(batch: ProofBatch | ValidatedBatch) -> dict[str, Any]:
    """``asdict(batch)`` with non-finite distances as ``None``: strict JSON has no NaN."""
    out = asdict(batch)
    for key in ("dist", "received_dist"):
        if key in out:
            out[key] = [d if math.isfinite(d) else None for d in out[key]]
    return out
