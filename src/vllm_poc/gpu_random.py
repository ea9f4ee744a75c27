"""The PoC protocol math of ``shared/spec/gpu-random.md``: deterministic inputs, permutations,
target and distances, identical on every device.

No library RNG is used anywhere: all randomness is one 32-bit murmur3-style hash of an index and
a seed, evaluated with int64 tensor arithmetic masked to 32 bits, so CPU and any GPU produce the
same integers. Everything is batched over nonces: the only per-nonce Python work is the sha256 of
each nonce's seed string.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

PROTOCOL_VERSION = "poc-2.0-murmur3-boxmuller-v1"
"""Version of this wire protocol; bump it whenever any number below would change."""

_MASK = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_MAX_CHUNK_ELEMENTS = 1 << 25
"""Bound on the hash grid evaluated at once, so big batches don't need gigabytes of int64 temps."""
_CPU_CHUNK_ELEMENTS = 1 << 20
"""On CPU a smaller grid keeps the hash's passes in cache: 1.3-2.4x faster inputs than 2^25 on
the 2-core test machine (tiny and 0.6B shapes); GPUs prefer fewer, larger kernels."""


def seed_from_string(s: str) -> int:
    """``int(sha256(utf8(s)).hexdigest()[:8], 16)``: a uint32 seed."""
    return int(hashlib.sha256(s.encode("utf-8")).hexdigest()[:8], 16)


def inputs_seed(block_hash: str, public_key: str, nonce: int) -> int:
    return seed_from_string(f"{block_hash}_{public_key}_nonce{nonce}")


def permutation_seed(block_hash: str, public_key: str, nonce: int) -> int:
    return seed_from_string(f"{block_hash}_{public_key}_nonce_{nonce}_permutations")


def target_seed(block_hash: str) -> int:
    return seed_from_string(f"{block_hash}_target")


def projection_seed(block_hash: str, which: str) -> int:
    """Seed of the ``"pre"`` or ``"post"`` random projection of a round."""
    if which not in ("pre", "post"):
        raise ValueError(f"projection must be 'pre' or 'post', got {which!r}")
    return seed_from_string(f"{block_hash}_proj_{which}")


def _rotl32_(x: torch.Tensor, r: int) -> torch.Tensor:
    """In place: ``rotl32(x, r)`` of values in [0, 2^32)."""
    high = x >> (32 - r)
    return x.bitwise_left_shift_(r).bitwise_or_(high).bitwise_and_(_MASK)


def _key_mix(indices: torch.Tensor) -> torch.Tensor:
    """The seed-independent half of the hash (int64 in [0, 2^32))."""
    k = (indices.to(torch.int64) * _C1).bitwise_and_(_MASK)
    return _rotl32_(k, 15).mul_(_C2).bitwise_and_(_MASK)


def _seed_mix(k: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Combine mixed keys with seeds (broadcasting) and finalise, without the length step.

    In-place after the first op: the hash is most of the input generation's memory traffic
    (half the time on CPU compared with a new tensor per op).
    """
    h = _rotl32_(seeds ^ k, 13)
    h.mul_(5).add_(0xE6546B64).bitwise_and_(_MASK)
    h ^= h >> 16
    h.mul_(0x85EBCA6B).bitwise_and_(_MASK)
    h ^= h >> 13
    h.mul_(0xC2B2AE35).bitwise_and_(_MASK)
    h ^= h >> 16
    return h


def murmur_hash(indices: torch.Tensor, seed: int | torch.Tensor) -> torch.Tensor:
    """``H(i, seed)`` for every index: int64 tensor with values in [0, 2^32).

    ``seed`` may be an int or an int64 tensor that broadcasts against ``indices``.
    """
    seeds = torch.as_tensor(seed, dtype=torch.int64, device=indices.device)
    return _seed_mix(_key_mix(indices), seeds)


def _uniform_from_hash(h: torch.Tensor) -> torch.Tensor:
    return h.to(torch.float32) / 4294967296.0


def uniforms(seed: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``U(seed, n)``: float32 uniforms in [0, 1]."""
    return _uniform_from_hash(murmur_hash(torch.arange(n, device=device), seed))


def _box_muller(u1: torch.Tensor, u2: torch.Tensor, n: int) -> torch.Tensor:
    r = torch.sqrt(-2.0 * torch.log(torch.clamp_min(u1, 1e-10)))
    theta = 2.0 * math.pi * u2
    return torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=-1)[..., :n]


def _normals_rows(seeds: torch.Tensor, n: int) -> torch.Tensor:
    """``N(seed, n)`` for a column of seeds ``[rows, 1]``: float32 ``[rows, n]``."""
    p = (n + 1) // 2
    idx = torch.arange(2 * p, device=seeds.device)
    k = _key_mix(idx)
    u1 = _uniform_from_hash(_seed_mix(k[:p], seeds))
    u2 = _uniform_from_hash(_seed_mix(k[p:], seeds))
    return _box_muller(u1, u2, n)


def normals(seed: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``N(seed, n)``: float32 standard normals by Box-Muller over ``U(seed, 2*ceil(n/2))``."""
    seeds = torch.tensor([[seed]], dtype=torch.int64, device=device)
    return _normals_rows(seeds, n)[0]


def _seed_column(seeds: Sequence[int], device: torch.device | str) -> torch.Tensor:
    return torch.tensor(list(seeds), dtype=torch.int64, device=device).unsqueeze(1)


def _rows_per_chunk(row_elements: int, device: torch.device | str) -> int:
    limit = _MAX_CHUNK_ELEMENTS
    if torch.device(device).type == "cpu":
        limit = min(limit, _CPU_CHUNK_ELEMENTS)
    return max(1, limit // max(1, row_elements))


def generate_inputs(
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    dim: int,
    seq_len: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The ``inputs_embeds`` of every nonce: ``[len(nonces), seq_len, dim]`` in ``dtype``."""
    n = seq_len * dim
    seeds = _seed_column([inputs_seed(block_hash, public_key, x) for x in nonces], device)
    out = torch.empty(len(nonces), seq_len, dim, dtype=dtype, device=device)
    step = _rows_per_chunk(n, device)
    for start in range(0, len(nonces), step):
        rows = _normals_rows(seeds[start : start + step], n)
        out[start : start + step] = rows.view(-1, seq_len, dim).to(dtype)
    return out


def generate_permutations(
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    vocab_size: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``argsort(H(arange(vocab), seed), stable)`` per nonce: int64 ``[len(nonces), vocab]``."""
    seeds = _seed_column([permutation_seed(block_hash, public_key, x) for x in nonces], device)
    k = _key_mix(torch.arange(vocab_size, device=device))
    out = torch.empty(len(nonces), vocab_size, dtype=torch.int64, device=device)
    step = _rows_per_chunk(vocab_size, device)
    for start in range(0, len(nonces), step):
        h = _seed_mix(k, seeds[start : start + step])
        # Shifting [0, 2^32) down by 2^31 keeps the order and fits int32, which sorts faster.
        keys = (h - (1 << 31)).to(torch.int32)
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
