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
from vllm_poc.worker.scratch import Scratch, block_bytes, cache_role, scratch_key

Cache = tuple[torch.Tensor, int]
"""A cache tensor and the dimension that counts its blocks."""


@dataclass(frozen=True)
class GroupLayout:
    """How the sequences of a batch address one KV-cache group."""

    groups: list[Any]
    """The group's attention groups (one metadata builder each)."""
    blocks: compat.GroupBlocks
    blocks_per_seq: int
    """Columns of the group's block table: the blocks a sequence of ``seq_len`` spans."""
    slots_per_seq: int
    """Scratch blocks a sequence owns: ``blocks_per_seq`` for attention; one for a recurrent
    group, whose every column names that one state slot (vLLM reads the state at the column of
    the sequence's last token; with prefix caching of the state, ``align``, there are several)."""
    caches: dict[str, list[Cache]]
    """The group's layers' cache tensors (one, or a recurrent layer's states)."""

    def block_table(self, batch: int, device: torch.device) -> torch.Tensor:
        """Block 0 is the null block: sequence i owns slots ``1 + i * slots_per_seq`` on."""
        owned = torch.arange(batch * self.slots_per_seq, dtype=torch.int32, device=device) + 1
        owned = owned.view(batch, self.slots_per_seq)
        if self.slots_per_seq == self.blocks_per_seq:
            return owned
        return owned.expand(batch, self.blocks_per_seq).contiguous()


@dataclass(frozen=True)
class BatchShape:
    """A batch of ``batch`` sequences of ``seq_len`` tokens, all but its input embeddings."""

    batch: int
    seq_len: int
    positions: torch.Tensor
    attn_metadata: dict[str, Any]
    slot_mappings: dict[str, torch.Tensor]
    scratch_for: dict[str, tuple[torch.Tensor, ...]]
    """Each layer's scratch cache tensors (one for attention, the states of a recurrent layer)."""
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
        """Scratch KV bytes per sequence: its blocks in each scratch tensor (cache role and
        layout)."""
        per_layout: dict[tuple[Any, ...], int] = {}
        for layout in self.block_groups(seq_len):
            for name, tensors in layout.caches.items():
                for kv, block_dim in tensors:
                    key = scratch_key(cache_role(name), kv, block_dim)
                    need = layout.slots_per_seq * block_bytes(kv, block_dim)
                    per_layout[key] = max(per_layout.get(key, 0), need)
        return sum(per_layout.values())

    def block_groups(self, seq_len: int) -> Iterator[GroupLayout]:
        """Each KV cache group's layout for sequences of ``seq_len``."""
        kv_caches = compat.layer_kv_caches(self.vllm_config)
        specs = [g.kv_cache_spec for g in self.runner.kv_cache_config.kv_cache_groups]
        for gid, groups in enumerate(self.runner.attn_groups):
            blocks = compat.group_blocks(self.runner, gid, groups)
            count = blocks.num_blocks
            caches = {
                name: [(t, compat.kv_block_dim(t, count, name)) for t in kv_caches[name]]
                for group in groups
                for name in group.layer_names
                if name in kv_caches
            }
            blocks_per_seq = math.ceil(seq_len / blocks.block_size)
            slots = 1 if compat.holds_state(specs[gid]) else blocks_per_seq
            yield GroupLayout(groups, blocks, blocks_per_seq, slots, caches)

    def attention(
        self, batch: int, seq_len: int, positions: torch.Tensor
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, ...]]]:
        """Per-layer attention metadata, slot mappings and scratch cache tensors for one batch."""
        attn_metadata: dict[str, Any] = {}
        slot_mappings: dict[str, torch.Tensor] = {}
        scratch_for: dict[str, tuple[torch.Tensor, ...]] = {}
        for layout in self.block_groups(seq_len):
            block_table = layout.block_table(batch, self.device)
            t = torch.arange(seq_len, device=self.device)
            size = layout.blocks.block_size
            slot_mapping = (block_table[:, t // size].to(torch.int64) * size + t % size).flatten()
            common = compat.common_attn_metadata(
                batch, seq_len, block_table, slot_mapping, positions, self.device
            )
            for group in layout.groups:
                metadata = compat.build_group_metadata(group, common, layout.blocks)
                for name in group.layer_names:
                    attn_metadata[name] = metadata
                    slot_mappings[name] = slot_mapping
            for name, tensors in layout.caches.items():
                role = cache_role(name)
                scratch_for[name] = tuple(
                    self.scratch.get(kv, 1 + batch * layout.slots_per_seq, block_dim, role)
                    for kv, block_dim in tensors
                )
        return attn_metadata, slot_mappings, scratch_for
