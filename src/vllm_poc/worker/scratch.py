"""Scratch KV tensors for PoC forwards: the engine's KV cache (and the prefix cache living in
it) is never written by PoC; caches of one role (the same cache of every decoder layer) that
share a layout share one scratch tensor."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from vllm_poc.log import get_logger

logger = get_logger(__name__)


@dataclass
class Scratch:
    """Scratch KV tensors, one per cache role and layout, shared by the decoder layers."""

    tensors: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)

    def get(
        self, like: torch.Tensor, num_blocks: int, block_dim: int, role: str = ""
    ) -> torch.Tensor:
        """Zeros shaped like ``like`` but with ``num_blocks`` blocks in ``block_dim``, same
        stride order, for the caches of ``role`` (``cache_role``).

        Zero-filled because kernels read whole pages: uninitialised memory gave NaN logits.
        """
        key = scratch_key(role, like, block_dim)
        have = self.tensors.get(key)
        if have is None or have.shape[block_dim] < num_blocks:
            self.tensors.pop(key, None)
            have = _zeros_like_layout(like, num_blocks, block_dim)
            self.tensors[key] = have
            logger.info(
                "vllm-poc: scratch KV cache of %d blocks (%.1f MiB)",
                num_blocks,
                have.numel() * have.element_size() / 2**20,
            )
        return have

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def cache_role(layer: str) -> str:
    """What a cache is within its decoder layer: its layer name without numeric parts.

    Layers run one after another, so one layer's cache may reuse the scratch of the layer
    before; two caches of one layer may not. A DeepSeek-V4 attention layer reads its
    sliding-window cache and its compressed cache in the same call, and both have the same
    shape, so a layout alone would hand them one tensor."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", layer)


def scratch_key(role: str, like: torch.Tensor, block_dim: int) -> tuple[Any, ...]:
    """Caches with this key share one scratch tensor: the same role, the same layout."""
    return (role, *layout_key(like, block_dim))


def layout_key(like: torch.Tensor, block_dim: int) -> tuple[Any, ...]:
    """A cache's layout: its shape but the block dimension, that dimension, dtype, device and
    dimension order."""
    shape = tuple(n for d, n in enumerate(like.shape) if d != block_dim)
    return (shape, block_dim, like.dtype, like.device, _stride_order(like))


def block_bytes(like: torch.Tensor, block_dim: int) -> int:
    """Bytes of one block of a cache shaped like ``like``."""
    return like.numel() // like.shape[block_dim] * like.element_size()


def _stride_order(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(sorted(range(t.dim()), key=lambda d: -t.stride()[d]))


def _zeros_like_layout(like: torch.Tensor, num_blocks: int, block_dim: int) -> torch.Tensor:
    """Zeros with ``num_blocks`` in ``block_dim`` and the dimension order (strides) of ``like``."""
    shape = list(like.shape)
    shape[block_dim] = num_blocks
    order = _stride_order(like)
    dense = torch.zeros([shape[d] for d in order], dtype=like.dtype, device=like.device)
    return dense.permute([order.index(d) for d in range(len(shape))])
