"""The artifact protocol's math (docs/protocol.md, part II): per-round layer reflections, and the
12-component fp16 artifact made from a final hidden state.

Everything is vectorised over a batch of nonces on the hidden state's device. The randomness is
the distance protocol's (``randomness``): the same hash, uniforms and Box-Muller normals, and the
same input embeddings (``inputs.generate_inputs``; ``seed_derivation="strong"`` is this
protocol's "stronger RNG").
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vllm_poc.protocol import validation
from vllm_poc.protocol.randomness import murmur_hash, normals_rows, seed_column, seed_from_string
from vllm_poc.protocol.validation import FRAUD_THRESHOLD

K_DIM = 12
"""Components of an artifact."""
ARTIFACT_BYTES = 2 * K_DIM
"""An artifact on the wire: ``K_DIM`` little-endian binary16 values, base64 (32 characters)."""
DIST_THRESHOLD = 0.02
"""L2 above which a recomputed artifact mismatches: the nodes' default (the chain sends 0.2)."""
P_MISMATCH = 0.001
"""The binomial test's honest mismatch rate: the nodes' default (the chain sends 0.1)."""


def layer_seed_string(block_hash: str, layer: int) -> str:
    return f"{block_hash}_layer_{layer}_householder"


def pick_seed_string(block_hash: str, public_key: str, nonce: int, k: int = K_DIM) -> str:
    return f"{block_hash}_{public_key}_nonce_{nonce}_pick_{k}"


def rotation_seed_string(block_hash: str, public_key: str, nonce: int, k: int, j: int) -> str:
    return f"{block_hash}_{public_key}_nonce_{nonce}_haar_hh_{k}_{j}"


def _seeds(strings: Sequence[str], device: torch.device | str) -> torch.Tensor:
    return seed_column([seed_from_string(s) for s in strings], device)


def layer_vectors(
    block_hash: str, layers: Sequence[int], dim: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[len(layers), dim]`` float32 unit vectors ``w_i`` of the given global layer indices."""
    z = normals_rows(_seeds([layer_seed_string(block_hash, i) for i in layers], device), dim)
    return z / torch.linalg.vector_norm(z, dim=1, keepdim=True)


def reflect(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x - 2 (w . x) w`` for every row of ``x``, in ``x``'s dtype with the protocol's order of
    operations (each step rounded to that dtype; the row sum accumulated in float32)."""
    wt = w.to(x.dtype)
    p = x * wt
    s = p.sum(dim=-1, keepdim=True, dtype=torch.float32).to(x.dtype)
    return x - (s * 2) * wt


def coordinates(
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    dim: int,
    k: int = K_DIM,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[B, k]`` selected coordinates in the protocol's order: the ``k`` with the smallest hash,
    the ``k - 1`` smaller ones by increasing index, then the one with the largest hash (what
    CUDA's ``topk(sorted=False)`` leaves, computed here explicitly on every device)."""
    seeds = _seeds([pick_seed_string(block_hash, public_key, n, k) for n in nonces], device)
    hashes = murmur_hash(torch.arange(dim, device=device), seeds)
    smallest = torch.topk(hashes, k, dim=1, largest=False, sorted=True).indices
    return torch.cat([smallest[:, :-1].sort(dim=1).values, smallest[:, -1:]], dim=1)


def rotation_vectors(
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    k: int = K_DIM,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[B, k - 1, k]`` float32 unit vectors of each nonce's chain of reflections."""
    strings = [
        rotation_seed_string(block_hash, public_key, n, k, j) for n in nonces for j in range(k - 1)
    ]
    z = normals_rows(_seeds(strings, device), k).view(len(nonces), k - 1, k)
    return z / (torch.linalg.vector_norm(z, dim=-1, keepdim=True) + 1e-30)


def rotate(x: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Apply each row's reflections in order: ``q <- q - 2 (q . v_j) v_j`` in float32."""
    q = x
    for j in range(vectors.shape[1]):
        v = vectors[:, j]
        q = q - 2 * (q * v).sum(dim=-1, keepdim=True) * v
    return q


def pick(
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    dim: int,
    k: int = K_DIM,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """What of the artifacts depends on the nonces alone: the coordinates ``[B, k]`` and the
    rotation vectors ``[B, k - 1, k]``."""
    return (
        coordinates(block_hash, public_key, nonces, dim, k, device),
        rotation_vectors(block_hash, public_key, nonces, k, device),
    )


def artifacts_from(
    hidden: torch.Tensor, coordinates: torch.Tensor, rotations: torch.Tensor
) -> torch.Tensor:
    """``[B, k]`` float16 artifacts of the final hidden rows ``[B, d]`` (any float dtype) with
    the nonces' ``pick``."""
    y = hidden.to(torch.float32)
    x = y / (torch.linalg.vector_norm(y, dim=1, keepdim=True) + 1e-8)
    q = rotate(x.gather(1, coordinates), rotations)
    a = q / (torch.linalg.vector_norm(q, dim=1, keepdim=True) + 1e-8)
    return a.to(torch.float16)


def artifacts(
    hidden: torch.Tensor,
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    k: int = K_DIM,
) -> torch.Tensor:
    """``[B, k]`` float16 artifacts of the final hidden rows ``[B, d]`` (any float dtype)."""
    chosen = pick(block_hash, public_key, nonces, hidden.shape[1], k, hidden.device)
    return artifacts_from(hidden, *chosen)


def finite_rows(values: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: rows without a NaN or an infinity."""
    return torch.isfinite(values).all(dim=-1)


def encode(artifact: torch.Tensor) -> str:
    """One float16 artifact as base64 of its little-endian bytes."""
    raw = artifact.detach().to(torch.float16).cpu().numpy().astype("<f2").tobytes()
    return base64.b64encode(raw).decode("ascii")


def encode_all(rows: torch.Tensor) -> list[str]:
    return [encode(row) for row in rows]


def decode(vector_b64: str, k: int = K_DIM) -> np.ndarray | None:
    """The float32 values of a received artifact; None when it is not ``2 k`` bytes of base64."""
    try:
        raw = base64.b64decode(vector_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 2 * k:
        return None
    return np.frombuffer(raw, dtype="<f2").astype(np.float32)


def is_mismatch(computed: np.ndarray, received_b64: str, dist_threshold: float) -> bool:
    """A received artifact that is malformed, holds a non-finite half, or lies farther than
    ``dist_threshold`` (L2 over the components, float32) from the recomputed one."""
    received = decode(received_b64, len(computed))
    if received is None or not np.isfinite(received).all():
        return True
    diff = computed.astype(np.float32) - received
    return bool(np.sqrt(np.sum(diff * diff, dtype=np.float32)) > dist_threshold)


@dataclass(frozen=True)
class BinomialTest:
    n_total: int
    n_mismatch: int
    p_value: float
    fraud_detected: bool


def binomial_test(
    n_mismatch: int,
    n_total: int,
    p_mismatch: float = P_MISMATCH,
    fraud_threshold: float = FRAUD_THRESHOLD,
) -> BinomialTest:
    """One-sided exact test: ``P[X >= n_mismatch]`` for ``X ~ Binomial(n_total, p_mismatch)``;
    1 without mismatches or without nonces; fraud strictly below ``fraud_threshold``."""
    p = validation.p_value(n_mismatch, n_total, p_mismatch) if n_total and n_mismatch else 1.0
    return BinomialTest(n_total, n_mismatch, p, p < fraud_threshold)
