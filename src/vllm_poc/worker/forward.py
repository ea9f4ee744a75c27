"""One PoC batch through the worker's model runner.

The model sees ``batch`` independent causal prefills of ``seq_len`` tokens fed as
``inputs_embeds``. Attention metadata is built by the runner's own metadata builders, so every
attention backend sees the same kind of metadata as during inference. K/V are written to a
private zero-filled scratch tensor swapped into the attention layers for the call, so the engine's
KV cache (and the prefix cache living in it) is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from vllm_poc import compat, envs
from vllm_poc.log import get_logger
from vllm_poc.protocol import distance
from vllm_poc.worker import auto_batch
from vllm_poc.worker.compiled import EmbedsGraph
from vllm_poc.worker.cuda_graphs import PoCGraphs
from vllm_poc.worker.scratch import Scratch, block_bytes, layout_key

logger = get_logger(__name__)


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


class PoCForward:
    """Computes PoC distances with the model loaded in one worker."""

    def __init__(self, model_runner: Any) -> None:
        self.runner = model_runner
        self.vllm_config = model_runner.vllm_config
        self.device = model_runner.device
        self.dtype = self.vllm_config.model_config.dtype
        self.hidden_size = self.vllm_config.model_config.get_hidden_size()
        # vLLM's graph, traced with token ids, refuses ``input_ids=None``; with prompt embeds
        # enabled it was traced with ``inputs_embeds`` and runs PoC, up to the scheduler's
        # token budget. Otherwise the PoC forward compiles its own graph (``compiled``).
        self.skip_compiled = not self.vllm_config.model_config.enable_prompt_embeds
        self.max_compiled_tokens = self.vllm_config.scheduler_config.max_num_batched_tokens
        self.embeds_graph = (
            EmbedsGraph(model_runner.get_model())
            if compat.compiles_model(self.vllm_config) and envs.get("VLLM_POC_COMPILED_FORWARD")
            else None
        )
        self._scratch = Scratch()
        self._round_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self.graphs = PoCGraphs(self) if PoCGraphs.wanted(self) else None

    @torch.inference_mode()
    def distances(
        self,
        block_hash: str,
        public_key: str,
        nonces: list[int],
        seq_len: int,
        random_projection: bool = False,
        seed_derivation: str = "v1",
    ) -> list[float] | None:
        """Distances of ``nonces`` in order, or None on ranks that do not hold the logits."""
        logits = self.logits(
            block_hash, public_key, nonces, seq_len, random_projection, seed_derivation
        )
        if logits is None:
            return None
        vocab = logits.shape[-1]
        perms = distance.generate_permutations(block_hash, public_key, nonces, vocab, self.device)
        dist = distance.compute_distances(logits, perms, self.target(block_hash, vocab))
        return dist.cpu().tolist()

    def target(self, block_hash: str, vocab: int) -> torch.Tensor:
        return self._round_tensor(
            ("target", block_hash, vocab),
            lambda: distance.generate_target(block_hash, vocab, self.device),
        )

    def projection(self, block_hash: str, which: str) -> torch.Tensor:
        return self._round_tensor(
            ("projection", block_hash, which),
            lambda: distance.generate_projection(block_hash, which, self.hidden_size, self.device),
        )

    def _round_tensor(self, key: tuple[Any, ...], make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Per-round tensors, cached until a call asks for another block hash."""
        if key not in self._round_cache:
            if any(k[1] != key[1] for k in self._round_cache):
                self._round_cache.clear()
            self._round_cache[key] = make()
        return self._round_cache[key]

    def logits(
        self,
        block_hash: str,
        public_key: str,
        nonces: list[int],
        seq_len: int,
        random_projection: bool = False,
        seed_derivation: str = "v1",
    ) -> torch.Tensor | None:
        """Float32 last-position logits ``[batch, vocab]`` (None off the answering ranks)."""
        inputs = self.inputs(
            block_hash, public_key, nonces, seq_len, random_projection, seed_derivation
        )
        last = self.last_hidden(inputs, len(nonces), seq_len)
        if last is None:
            return None
        return self.head(last, block_hash, random_projection)

    def inputs(
        self,
        block_hash: str,
        public_key: str,
        nonces: list[int],
        seq_len: int,
        random_projection: bool = False,
        seed_derivation: str = "v1",
    ) -> torch.Tensor:
        """Flat ``[batch * seq_len, hidden]`` inputs in the model dtype.

        Flat because a ``[batch, seq_len, hidden]`` tensor corrupted the CPU backend's heap.
        """
        inputs = distance.generate_inputs(
            block_hash,
            public_key,
            nonces,
            self.hidden_size,
            seq_len,
            self.device,
            self.dtype,
            seed_derivation,
        ).view(len(nonces) * seq_len, self.hidden_size)
        if random_projection:
            inputs = distance.apply_projection(inputs, self.projection(block_hash, "pre"))
        return inputs

    def last_hidden(self, inputs: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor | None:
        """Hidden states of each sequence's last position (None off the last PP stage)."""
        if self.graphs is not None:
            return self.graphs.last_hidden(inputs, batch, seq_len)
        return self.run(self.prepare(batch, seq_len), inputs)

    def prepare(self, batch: int, seq_len: int) -> BatchShape:
        """Everything of a batch but its inputs: the same for every batch of a round."""
        positions = torch.arange(seq_len, device=self.device, dtype=torch.int64).repeat(batch)
        attn_metadata, slot_mappings, scratch_for = self._attention(batch, seq_len, positions)
        return BatchShape(
            batch=batch,
            seq_len=seq_len,
            positions=positions,
            attn_metadata=attn_metadata,
            slot_mappings=slot_mappings,
            scratch_for=scratch_for,
            last=torch.arange(1, batch + 1, device=self.device) * seq_len - 1,
        )

    def run(
        self, shape: BatchShape, inputs: torch.Tensor, eager: bool = False
    ) -> torch.Tensor | None:
        """The model's forward on ``inputs`` of ``shape``: the last positions' hidden states.

        ``eager`` runs the modules' plain forward (module hooks fire), never a compiled graph.
        """
        tokens = shape.batch * shape.seq_len
        skip = eager or self.skip_compiled or tokens > self.max_compiled_tokens
        compiled = self.embeds_graph and skip and not eager
        own_graph = self.embeds_graph.active() if compiled else nullcontext()
        with (
            compat.swapped_kv_caches(self.vllm_config, shape.scratch_for),
            compat.forward_context(
                shape.attn_metadata,
                self.vllm_config,
                num_tokens=tokens,
                slot_mapping=shape.slot_mappings,
                skip_compiled=skip,
            ),
            own_graph,
        ):
            hidden = compat.run_model(self.runner, self.runner.get_model(), shape.positions, inputs)
        return None if hidden is None else hidden[shape.last]

    def head(
        self, last: torch.Tensor, block_hash: str, random_projection: bool = False
    ) -> torch.Tensor | None:
        """Float32 logits from last hidden states (None on TP ranks that don't gather them)."""
        if random_projection:
            last = distance.apply_projection(last, self.projection(block_hash, "post"))
        logits = self.runner.get_model().compute_logits(last)
        return None if logits is None else logits.to(torch.float32)

    def unsupported(self) -> list[str]:
        """Layer kinds and cache layouts this forward cannot compute (empty: none)."""
        reasons = compat.unsupported_layers(self.runner)
        if not reasons:
            try:
                list(self._block_groups(1))
            except compat.UnsupportedLayout as e:
                reasons.append(str(e))
        return reasons

    def max_batch_size(self, seq_len: int, max_tokens: int) -> int:
        """The largest batch this worker should run (rule: ``auto_batch``)."""
        per_nonce = auto_batch.bytes_per_nonce(
            seq_len,
            self.hidden_size,
            self.vllm_config.model_config.get_vocab_size(),
            self.dtype.itemsize,
            self._scratch_bytes_per_nonce(seq_len),
        )
        # The scratch KV tensors already allocated are reused (or freed) by the next batch.
        free = auto_batch.free_memory_bytes(self.device) + self._scratch.nbytes()
        token_budget = min(max_tokens, self.max_compiled_tokens)
        size = auto_batch.choose_batch_size(token_budget, seq_len, free, per_nonce)
        logger.info(
            "vllm-poc: auto batch_size %d for seq_len %d (token budget %d, %.2f MiB per nonce, "
            "%.2f GiB free)",
            size,
            seq_len,
            token_budget,
            per_nonce / 2**20,
            free / 2**30,
        )
        return size

    def _scratch_bytes_per_nonce(self, seq_len: int) -> int:
        """Scratch KV bytes per sequence: its blocks in each distinct cache layout."""
        per_layout: dict[tuple[Any, ...], int] = {}
        for _, _, blocks_per_seq, caches in self._block_groups(seq_len):
            for kv, block_dim in caches.values():
                key = layout_key(kv, block_dim)
                need = blocks_per_seq * block_bytes(kv, block_dim)
                per_layout[key] = max(per_layout.get(key, 0), need)
        return sum(per_layout.values())

    def _block_groups(
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

    def _attention(
        self, batch: int, seq_len: int, positions: torch.Tensor
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-layer attention metadata, slot mappings and scratch KV tensors for one batch."""
        attn_metadata: dict[str, Any] = {}
        slot_mappings: dict[str, torch.Tensor] = {}
        scratch_for: dict[str, torch.Tensor] = {}
        for groups, blocks, blocks_per_seq, caches in self._block_groups(seq_len):
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
                scratch_for[name] = self._scratch.get(kv, 1 + batch * blocks_per_seq, block_dim)
        return attn_metadata, slot_mappings, scratch_for
