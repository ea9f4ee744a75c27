"""Scratch KV tensors for PoC forwards: the engine's KV cache (and the prefix cache living in
it) is never written by PoC; layers whose caches share a layout share one scratch tensor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vllm_poc.log import get_logger

logger = get_logger(__name__)


@dataclass
class Scratch:
    """Scratch KV tensors, one per distinct layer cache layout, shared by all layers."""

    tensors: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)

    def get(self, like: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """Zeros shaped like ``like`` but with ``num_blocks`` blocks in dim 0, same stride order.

        Zero-filled because kernels read whole pages: uninitialised memory gave NaN logits.
        """
        key = layout_key(like)
        have = self.tensors.get(key)
        if have is None or have.shape[0] < num_blocks:
            self.tensors.pop(key, None)
            have = _zeros_like_layout(like, num_blocks)
            self.tensors[key] = have
            logger.info(
                "vllm-poc: scratch KV cache of %d blocks (%.1f MiB)",
                num_blocks,
                have.numel() * have.element_size() / 2**20,
            )
        return have

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def layout_key(like: torch.Tensor) -> tuple[Any, ...]:
    """Layers whose caches share this key share one scratch tensor."""
    return (tuple(like.shape[1:]), like.dtype, like.device, _stride_order(like))


def _stride_order(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(sorted(range(t.dim()), key=lambda d: -t.stride(d)))


def _zeros_like_layout(like: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Zeros with ``num_blocks`` in dim 0 and the dimension order (strides) of ``like``."""
    shape = (num_blocks, *like.shape[1:])
    order = _stride_order(like)
    dense = torch.zeros([shape[d] for d in order], dtype=like.dtype, device=like.device)
    return dense.permute([order.index(d) for d in range(len(shape))])
