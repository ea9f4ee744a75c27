"""The inputs of every protocol: each nonce's input embeddings, standard normals of its seeds
(docs/protocol.md), batched over nonces on the model's device."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vllm_poc.protocol.randomness import (
    inputs_seed,
    inputs_seeds_strong,
    normal_keys,
    normals_rows,
    seed_column,
)

MAX_CHUNK_ELEMENTS = 1 << 25
"""Bound on the hash grid evaluated at once, so big batches don't need gigabytes of temps."""
CPU_CHUNK_ELEMENTS = 1 << 20
"""On CPU a smaller grid keeps the hash's passes in cache: 1.3-2.4x faster inputs than 2^25 on
the 2-core test machine (tiny and 0.6B shapes); GPUs prefer fewer, larger kernels."""


def rows_per_chunk(row_elements: int, device: torch.device | str) -> int:
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
        step = rows_per_chunk(length, device)
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
