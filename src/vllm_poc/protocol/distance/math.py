"""The distance protocol's math: permutations, target, projections and distances (the inputs
are every protocol's, ``protocol.inputs``).

Specified in ``docs/protocol.md``; batched over nonces on the model's device. The only per-nonce
Python work is the sha256 of each nonce's seed strings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vllm_poc.protocol.inputs import rows_per_chunk
from vllm_poc.protocol.randomness import (
    INT32_MIN,
    key_mix,
    normals,
    permutation_seed,
    projection_seed,
    seed_column,
    seed_mix,
    target_seed,
)

PROTOCOL_VERSION = "poc-2.0-murmur3-boxmuller-v1"
"""Version of this protocol's numbers; bump it whenever any number here would change."""


def generate_permutations(
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    vocab_size: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``argsort(H(arange(vocab), seed), stable)`` per nonce: int64 ``[len(nonces), vocab]``."""
    seeds = seed_column([permutation_seed(block_hash, public_key, x) for x in nonces], device)
    k = key_mix(torch.arange(vocab_size, device=device))
    out = torch.empty(len(nonces), vocab_size, dtype=torch.int64, device=device)
    step = rows_per_chunk(vocab_size, device)
    for start in range(0, len(nonces), step):
        # Flipping the sign bit orders the int32 bits as their uint32 values.
        keys = seed_mix(k, seeds[start : start + step]).bitwise_xor_(INT32_MIN)
        out[start : start + step] = torch.argsort(keys, dim=1, stable=True)
    return out


def generate_target(
    block_hash: str, vocab_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The round's unit target vector: float32 ``[vocab]``."""
    t = normals(target_seed(block_hash), vocab_size, device)
    return t / torch.linalg.vector_norm(t)


PROJECTION_SCALE = 0.01


def generate_projection(
    block_hash: str, which: str, dim: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A round's random projection matrix: ``0.01 * N(seed, dim*dim).view(dim, dim)``, float32."""
    seed = projection_seed(block_hash, which)
    return normals(seed, dim * dim, device).view(dim, dim) * PROJECTION_SCALE


def apply_projection(x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """The residual projection ``x + x @ P`` computed in float32, returned in ``x``'s dtype."""
    x32 = x.to(torch.float32)
    return (x32 + x32 @ projection).to(x.dtype)


def compute_distances(
    logits: torch.Tensor, permutations: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """``|| normalize(logits[perm]) - target ||`` per row, in float32: ``[batch]``."""
    x = torch.gather(logits.to(torch.float32), 1, permutations)
    x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.linalg.vector_norm(x - target.to(torch.float32).unsqueeze(0), dim=1)
