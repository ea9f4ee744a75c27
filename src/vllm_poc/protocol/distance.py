"""The distance protocol: inputs, permutations, target, projections and distances.

Specified in ``docs/protocol.md``; batched over nonces on the model's device. The only per-nonce
Python work is the sha256 of each nonce's seed strings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vllm_poc.protocol.randomness import (
    INT32_MIN,
    inputs_seed,
    inputs_seeds_strong,
    key_mix,
    normal_keys,
    normals,
    normals_rows,
    permutation_seed,
    projection_seed,
    seed_column,
    seed_mix,
    target_seed,
)

PROTOCOL_VERSION = "poc-2.0-murmur3-boxmuller-v1"
"""Version of this protocol's numbers; bump it whenever any number here would change."""

MAX_CHUNK_ELEMENTS = 1 << 25
"""Bound on the hash grid evaluated at once, so big batches don't need gigabytes of temps."""
CPU_CHUNK_ELEMENTS = 1 << 20
"""On CPU a smaller grid keeps the hash's passes in cache: 1.3-2.4x faster inputs than 2^25 on
the 2-core test machine (tiny and 0.6B shapes); GPUs prefer fewer, larger kernels."""


def _rows_per_chunk(row_elements: int, device: torch.device | str) -> int:
    limit = MAX_CHUNK_ELEMENTS
    if torch.device(device).type == "cpu":
        limit = min(limit, CPU_CHUNK_ELEMENTS)
    return max(1, limit // max(1, row_elements))


def generate_inputs(
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    dim: int,
    seq_len: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed_derivation: str = "v1",
) -> torch.Tensor:
    """The ``inputs_embeds`` of every nonce: ``[len(nonces), seq_len, dim]`` in ``dtype``.

    ``v1``: one stream ``N(seed, seq_len*dim)`` per nonce. ``strong``: the flat row is cut into
    ``STRONG_SEGMENTS`` segments of ``ceil(n/8)`` values (the last may be shorter), segment ``j``
    being ``N(seed_j, its length)`` with the ``j``-th of the nonce's 8 seeds.
    """
    n = seq_len * dim
    out = torch.empty(len(nonces), seq_len, dim, dtype=dtype, device=device)
    rows = out.view(len(nonces), n)
    for stream, start, length in _input_streams(block_hash, public_key, nonces, n, seed_derivation):
        seeds = seed_column(stream, device)
        k = normal_keys(length, device)
        step = _rows_per_chunk(length, device)
        for first in range(0, len(nonces), step):
            chunk = rows[first : first + step, start : start + length]
            normals_rows(seeds[first : first + step], length, chunk, k)
    return out


STRONG_SEGMENTS = 8


def _input_streams(
    block_hash: str, public_key: str, nonces: Sequence[int], n: int, seed_derivation: str
) -> list[tuple[list[int], int, int]]:
    """``(seed of every nonce, first element, length)`` of each normal stream in a flat row."""
    if seed_derivation == "v1":
        return [([inputs_seed(block_hash, public_key, x) for x in nonces], 0, n)]
    if seed_derivation != "strong":
        raise ValueError(f"seed_derivation must be 'v1' or 'strong', got {seed_derivation!r}")
    per_nonce = [inputs_seeds_strong(block_hash, public_key, x) for x in nonces]
    segment = -(-n // STRONG_SEGMENTS)
    return [
        ([seeds[j] for seeds in per_nonce], j * segment, min(segment, n - j * segment))
        for j in range(STRONG_SEGMENTS)
        if j * segment < n
    ]


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
    step = _rows_per_chunk(vocab_size, device)
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
