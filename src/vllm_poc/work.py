"""The unit of PoC work that crosses the RPC from the API server to the workers.

Every parameter a worker needs for one forward of either protocol is named here once; the RPC
carries it as plain data (``payload``: the fields that differ from their defaults) to the one
worker method ``poc_run``. ``next_nonces`` names the nonces of the call queued behind this one,
so that a worker on a GPU prepares their inputs while this forward runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_INT = 2**62
"""Bound of nonces, heights and striding: they must fit the RPC's 64-bit integers."""
Kind = Literal["distances", "artifacts"]
KINDS: tuple[Kind, ...] = ("distances", "artifacts")
SEED_DERIVATIONS = ("v1", "strong")


@dataclass(frozen=True)
class Work:
    """One forward's work: what to compute (``kind``) for which nonces of which round."""

    kind: Kind
    block_hash: str
    public_key: str
    nonces: tuple[int, ...]
    seq_len: int
    seed_derivation: str = "v1"
    """How the inputs are seeded: ``v1``, or ``strong`` (the artifact protocol's stronger RNG,
    also the distance protocol's ``seed_derivation``)."""
    random_projection: bool = False
    """Distance protocol: the round's random projections before and after the model."""
    k_dim: int = 12
    """Artifact protocol: components of an artifact."""
    eager: bool = False
    """Compute with the modules' plain forward even where the PoC forward compiles: the
    reference of the compiled graph (tests and benchmarks)."""
    next_nonces: tuple[int, ...] = field(default=(), compare=False)
    """The nonces of the call queued behind this one (same round), if known."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"work kind must be one of {KINDS}, got {self.kind!r}")
        if self.seed_derivation not in SEED_DERIVATIONS:
            raise ValueError(
                f"seed_derivation must be one of {SEED_DERIVATIONS}, got {self.seed_derivation!r}"
            )
        object.__setattr__(self, "nonces", tuple(self.nonces))
        object.__setattr__(self, "next_nonces", tuple(self.next_nonces))

    def payload(self) -> dict[str, Any]:
        """The RPC's argument: plain data, defaults left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _ALWAYS or value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Work:
        return cls(**payload)

    def with_nonces(self, nonces: Sequence[int], next_nonces: Sequence[int] = ()) -> Work:
        """The same round's work for other nonces."""
        return dataclasses.replace(self, nonces=tuple(nonces), next_nonces=tuple(next_nonces))

    def following(self) -> Work | None:
        """The work queued behind this one, as far as it is known (None: nothing named)."""
        return self.with_nonces(self.next_nonces) if self.next_nonces else None


_ALWAYS = ("kind", "block_hash", "public_key", "nonces", "seq_len")
