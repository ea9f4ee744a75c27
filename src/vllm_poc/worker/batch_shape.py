"""Everything of a PoC batch but its inputs: positions, attention metadata built by the model
runner's own metadata builders, and the private zero-filled scratch KV tensors the attention
layers write into for the call, so the engine's KV cache (and the prefix cache living in it) is
never touched."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from vllm_poc import compat
from vllm_poc.worker.scratch import Scratch, block_bytes, layout_key


@dataclass(frozen=True)
class BatchShape:
    """A batch of ``batch`` sequences of ``seq_len`` tokens, all but its input embeddings."""

    batch: int
    seq_len: int
    positions: torch.Tensor
    attn_metadata: dict[str, Any]
    slot_mappings: dict[str, torch.Tensor]
    scratch_for: dict[str, torch.Tensor]
    last: torch.Tensor
    """Index of each sequence's last token in the flat batch."""


class BatchShapes:
    """Builds ``BatchShape``s over one worker's model runner and KV-cache groups."""

    def __init__(self, model_runner: Any) -> None:
        self.runner = model_runner
        self.vllm_config = model_runner.vllm_config
        self.device = model_runner.device
        self.scratch = Scratch()

    def prepare(self, batch: int, seq_len: int) -> BatchShape:
        """The shape of one batch: the same for every batch of a round."""
        positions = torch.arange(seq_len, device=self.device, dtype=torch.int64).repeat(batch)
        attn_metadata, slot_mappings, scratch_for = self.attention(batch, seq_len, positions)
        return BatchShape(
            batch=batch,
            seq_len=seq_len,
            positions=positions,
            attn_metadata=attn_metadata,
            slot_mappings=slot_mappings,
            scratch_for=scratch_for,
            last=torch.arange(1, batch + 1, device=self.device) * seq_len - 1,
        )

    def unsupported(self) -> list[str]:
        """Layer kinds and cache layouts the PoC forward cannot compute (empty: none)."""
        reasons = compat.unsupported_layers(self.runner)
        if not reasons:
            try:
                list(self.block_groups(1))
            except compat.UnsupportedLayout as e:
                reasons.append(str(e))
        return reasons

    def scratch_bytes_per_nonce(self, seq_len: int) -> int:
        """Scratch KV bytes per sequence: its blocks in each distinct cache layout."""
        per_layout: dict[tuple[Any, ...], int] = {}
        for _, _, blocks_per_seq, caches in self.block_groups(seq_len):
            for kv, block_dim in caches.values():
                key = layout_key(kv, block_dim)
                need = blocks_per_seq * block_bytes(kv, block_dim)
                per_layout[key] = max(per_layout.get(key, 0), need)
        return sum(per_layout.values())

    def block_groups(
        self, seq_len: int
    ) -> Iterator[tuple[list[Any], compat.GroupBlocks, int, dict[str, tuple[torch.Tensor, int]]]]:
        """Each KV cache group's attention groups, block geometry, blocks per sequence and its
        layers' caches with the dimension that counts their blocks."""
        kv_caches = compat.layer_kv_caches(self.vllm_config)
        for gid, groups in enumerate(self.runner.attn_groups):
            blocks = compat.group_blocks(self.runner, gid, groups)
            caches = {
                name: (
                    kv_caches[name],
                    compat.kv_block_dim(kv_caches[name], blocks.num_blocks, name),
                )
                for group in groups
                for name in group.layer_names
                if name in kv_caches
            }
            yield groups, blocks, math.ceil(seq_len / blocks.block_size), caches

    def attention(
        self, batch: int, seq_len: int, positions: torch.Tensor
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-layer attention metadata, slot mappings and scratch KV tensors for one batch."""
        attn_metadata: dict[str, Any] = {}
        slot_mappings: dict[str, torch.Tensor] = {}
        scratch_for: dict[str, torch.Tensor] = {}
        for groups, blocks, blocks_per_seq, caches in self.block_groups(seq_len):
            # Block 0 is the null block: sequences use blocks 1 .. batch * blocks_per_seq.
            block_table = (
                torch.arange(batch * blocks_per_seq, dtype=torch.int32, device=self.device) + 1
            ).view(batch, blocks_per_seq)
            t = torch.arange(seq_len, device=self.device)
            size = blocks.block_size
            slot_mapping = (block_table[:, t // size].to(torch.int64) * size + t % size).flatten()
            common = compat.common_attn_metadata(
                batch, seq_len, block_table, slot_mapping, positions, self.device
            )
            for group in groups:
                metadata = compat.build_group_metadata(group, common, blocks)
                for name in group.layer_names:
                    attn_metadata[name] = metadata
                    slot_mappings[name] = slot_mapping
            for name, (kv, block_dim) in caches.items():
                scratch_for[name] = self.scratch.get(kv, 1 + batch * blocks_per_seq, block_dim)
        return attn_metadata, slot_mappings, scratch_for
