"""ProofBatch helpers of a chain-side driver: from ``/status``, samples, forgeries, files."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from vllm_poc.protocol.distance.batches import PARAMETERS, ProofBatch

DEFAULT_SAMPLE_SIZE = 200
"""How many nonces a validator recomputes from one batch (all of them when there are fewer)."""


def batch_from_status(
    status: dict[str, Any], *, block_hash: str, public_key: str, node_id: int
) -> ProofBatch:
    """The ProofBatch a node would submit: its valid nonces and distances from ``/status``, with
    the parameters of its round (``config``; ``model`` is not in ``/status``).

    ``/status`` does not repeat the round's block hash or public key, so the caller supplies
    them (the chain knows both).
    """
    height = status.get("block_height")
    config = status.get("config") or {}
    return ProofBatch(
        public_key=public_key,
        block_hash=block_hash,
        block_height=int(height) if height is not None else 0,
        nonces=[int(n) for n in status["valid_nonces"]],
        dist=[float(d) for d in status["valid_distances"]],
        node_id=node_id,
        seq_len=config.get("seq_len"),
        random_projection=config.get("random_projection"),
        seed_derivation=config.get("seed_derivation"),
    )


def sample_batch(batch: ProofBatch, k: int = DEFAULT_SAMPLE_SIZE, seed: int = 0) -> ProofBatch:
    """A random sample of ``k`` nonces of ``batch`` (all of them when it has no more than ``k``).

    Validators recompute a sample instead of every nonce: the binomial test only needs enough
    draws to catch a cheater who forged a noticeable fraction, and recomputing costs as much as
    generating did. A fixed ``seed`` makes the sample reproducible; the original order is kept.
    """
    if k < 0:
        raise ValueError(f"sample size must be >= 0, got {k}")
    if len(batch) <= k:
        return batch.select(range(len(batch)))
    return batch.select(sorted(random.Random(seed).sample(range(len(batch)), k)))


def forge_batch(batch: ProofBatch, nonces: Iterable[int], claimed_dist: float) -> ProofBatch:
    """``batch`` with ``nonces`` claimed at ``claimed_dist``: what a cheating node would submit.

    Pass nonces that are NOT valid and a ``claimed_dist`` below ``r_target``; a validator that
    recomputes them finds distances above ``r_target`` and flags the batch.
    """
    nonces = list(nonces)
    return replace(batch, nonces=nonces, dist=[claimed_dist] * len(nonces))


def load_batch(path: Path | str) -> ProofBatch:
    """Read a ProofBatch from a JSON file (the fields of :class:`vllm_poc.ProofBatch`)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (a ProofBatch)")
    missing = {"public_key", "block_hash", "block_height", "nonces", "dist", "node_id"} - set(data)
    if missing:
        raise ValueError(f"{path}: missing ProofBatch fields {sorted(missing)}")
    return ProofBatch(
        public_key=str(data["public_key"]),
        block_hash=str(data["block_hash"]),
        block_height=int(data["block_height"]),
        nonces=[int(n) for n in data["nonces"]],
        dist=[float(d) for d in data["dist"]],
        node_id=int(data["node_id"]),
        **{name: data[name] for name in PARAMETERS if data.get(name) is not None},
    )


def save_batch(batch: ProofBatch, path: Path | str) -> Path:
    """Write ``batch`` as JSON (readable by :func:`load_batch` and the examples)."""
    path = Path(path)
    path.write_text(json.dumps(asdict(batch), indent=1) + "\n")
    return path
