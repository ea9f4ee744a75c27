"""One PoC batch through the worker's model runner.

The model sees ``batch`` independent causal prefills of ``seq_len`` tokens fed as
``inputs_embeds``, with the attention metadata and scratch KV of ``batch_shape``: the engine's
KV cache is never touched. Work arrives as ``Work`` units; with the next unit named, its inputs
are made on a side stream while this forward runs (``prefetch``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from vllm_poc import compat, envs
from vllm_poc.log import get_logger
from vllm_poc.protocol.distance import math as distance
from vllm_poc.protocol.inputs import generate_inputs
from vllm_poc.work import Work
from vllm_poc.worker import auto_batch
from vllm_poc.worker.batch_shape import BatchShape, BatchShapes
from vllm_poc.worker.compiled import EmbedsGraph
from vllm_poc.worker.cuda_graphs import PoCGraphs
from vllm_poc.worker.prefetch import Prefetch, Tensors
from vllm_poc.worker.token_routing import TokenRouting

logger = get_logger(__name__)


class PoCForward:
    """Computes PoC distances with the model loaded in one worker."""

    def __init__(self, model_runner: Any) -> None:
        self.runner = model_runner
        self.vllm_config = model_runner.vllm_config
        self.device = model_runner.device
        self.dtype = self.vllm_config.model_config.dtype
        self.hidden_size = self.vllm_config.model_config.get_hidden_size()
        self.vocab_size = self.vllm_config.model_config.get_vocab_size()
        # vLLM's graph, traced with token ids, refuses ``input_ids=None``; with prompt embeds
        # enabled it was traced with ``inputs_embeds`` and runs PoC, up to the scheduler's
        # token budget. Otherwise the PoC forward compiles its own graph (``compiled``).
        self.skip_compiled = not self.vllm_config.model_config.enable_prompt_embeds
        self.max_compiled_tokens = self.vllm_config.scheduler_config.max_num_batched_tokens
        self.compiles = bool(
            compat.compiles_model(self.vllm_config) and envs.VLLM_POC_COMPILED_FORWARD
        )
        self.embeds_graph = EmbedsGraph(model_runner.get_model()) if self.compiles else None
        self.shapes = BatchShapes(model_runner)
        self.prefetch = Prefetch(self.device)
        self.answers_logits = False
        """This rank gave logits before: it is one that answers distances."""
        self._round_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self.routing = TokenRouting.of(
            model_runner.get_model(),
            getattr(self.vllm_config.model_config.hf_config, "model_type", ""),
            self.vocab_size,
        )
        wanted = PoCGraphs.wanted(self.shapes) and not self.token_routed
        self.graphs = PoCGraphs(self.shapes, self.run_distance) if wanted else None

    @property
    def token_routed(self) -> bool:
        """The model routes experts by token id: its forwards get pseudo token ids (captured
        CUDA graphs hold inputs alone, so these run without them)."""
        return self.routing.vocab_size is not None

    @torch.inference_mode()
    def distances(self, work: Work) -> list[float] | None:
        """Distances of ``work.nonces`` in order, or None on ranks that do not hold the logits."""
        made = self.prefetch.take(work) or self.distance_tensors(work)
        with self.prefetch.behind(work.following(), self.distance_tensors):
            last = self.last_hidden(
                made["inputs"], len(work.nonces), work.seq_len, work.eager, made.get("token_ids")
            )
        if last is None:
            return None
        logits = self.head(last, work.block_hash, work.random_projection)
        if logits is None:
            return None
        self.answers_logits = True
        perms = made.get("permutations")
        if perms is None or perms.shape[1] != logits.shape[-1]:
            perms = self.permutations(work, logits.shape[-1])
        target = self.target(work.block_hash, logits.shape[-1])
        return distance.compute_distances(logits, perms, target).cpu().tolist()

    def distance_tensors(self, work: Work) -> Tensors:
        """What a distance batch needs of its nonces alone: inputs, and permutations where this
        rank answers."""
        made = self.nonce_inputs(work)
        if self.answers_logits:
            made["permutations"] = self.permutations(work, self.vocab_size)
        return made

    def permutations(self, work: Work, vocab: int) -> torch.Tensor:
        return distance.generate_permutations(
            work.block_hash, work.public_key, work.nonces, vocab, self.device
        )

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

    def nonce_inputs(self, work: Work) -> Tensors:
        """The forward's inputs of ``work``, and its pseudo token ids where the model routes
        by them (``token_routing``)."""
        made = {"inputs": self.inputs(work)}
        ids = self.routing.ids(work, self.device)
        if ids is not None:
            made["token_ids"] = ids
        return made

    def inputs(self, work: Work) -> torch.Tensor:
        """Flat ``[batch * seq_len, hidden]`` inputs in the model dtype.

        Flat because a ``[batch, seq_len, hidden]`` tensor corrupted the CPU backend's heap.
        """
        inputs = generate_inputs(
            work.block_hash,
            work.public_key,
            work.nonces,
            self.hidden_size,
            work.seq_len,
            self.device,
            self.dtype,
            work.seed_derivation,
        ).view(len(work.nonces) * work.seq_len, self.hidden_size)
        if work.random_projection:
            inputs = distance.apply_projection(inputs, self.projection(work.block_hash, "pre"))
        return inputs

    def last_hidden(
        self,
        inputs: torch.Tensor,
        batch: int,
        seq_len: int,
        eager: bool = False,
        token_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Hidden states of each sequence's last position (None off the last PP stage)."""

        def forward(part: torch.Tensor, rows: int, ids: torch.Tensor | None) -> Any:
            if eager:
                return self.run(self.prepare(rows, seq_len), part, token_ids=ids)
            if self.graphs is not None:
                return self.graphs.last_hidden(part, rows, seq_len)
            return self.run_distance(self.prepare(rows, seq_len), part, ids)

        return self.in_forwards(inputs, batch, seq_len, forward, token_ids)

    def rows_per_forward(self, seq_len: int) -> int:
        """Sequences of ``seq_len`` that one forward may run: ``VLLM_POC_MAX_TOKENS_PER_FORWARD``
        and vLLM's ``max_num_batched_tokens``, whichever is less (at least one)."""
        budget = min(envs.VLLM_POC_MAX_TOKENS_PER_FORWARD, self.max_compiled_tokens)
        return max(1, budget // seq_len)

    def in_forwards(
        self,
        inputs: torch.Tensor,
        batch: int,
        seq_len: int,
        forward: Callable[[torch.Tensor, int, torch.Tensor | None], torch.Tensor | None],
        token_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """``forward(inputs, batch, token_ids)`` in forwards of at most ``rows_per_forward``
        sequences, the last hidden states put back together: the same rows as one forward
        would give (sequences never see each other), without the memory of one too large."""
        rows = self.rows_per_forward(seq_len)
        if batch <= rows:
            return forward(inputs, batch, token_ids)
        parts = []
        for first in range(0, batch, rows):
            count = min(rows, batch - first)
            span = slice(first * seq_len, (first + count) * seq_len)
            parts.append(
                forward(inputs[span], count, None if token_ids is None else token_ids[span])
            )
        if parts[0] is None:
            return None
        return torch.cat([p for p in parts if p is not None])

    def run_distance(
        self, shape: BatchShape, inputs: torch.Tensor, token_ids: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The distance protocol's forward: vLLM's own graph where it takes input embeddings
        and the batch, else the PoC forward's graph (eager where nothing compiles)."""
        return self.run(shape, inputs, self.embeds_graph, vllm_graph=True, token_ids=token_ids)

    def prepare(self, batch: int, seq_len: int) -> BatchShape:
        """Everything of a batch but its inputs (``batch_shape``)."""
        return self.shapes.prepare(batch, seq_len)

    def run(
        self,
        shape: BatchShape,
        inputs: torch.Tensor,
        graph: EmbedsGraph | None = None,
        vllm_graph: bool = False,
        token_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The model's forward on ``inputs`` of ``shape``: the last positions' hidden states.

        ``graph`` is the PoC graph to run (None: the modules' plain forward, eager);
        ``vllm_graph`` lets vLLM's own graph run instead where it was traced with input
        embeddings and holds the batch (it knows nothing of what a protocol puts in the layers).
        ``token_ids``: the pseudo ids of a token-routed model, beside the embeddings (vLLM's
        graph, traced with embeddings alone, is not used for them).
        """
        tokens = shape.batch * shape.seq_len
        skip = (
            not vllm_graph
            or self.skip_compiled
            or tokens > self.max_compiled_tokens
            or token_ids is not None
        )
        own_graph = graph.active() if graph is not None and skip else nullcontext()
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
            hidden = compat.run_model(
                self.runner, self.runner.get_model(), shape.positions, inputs, token_ids
            )
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
        """Layer kinds, cache layouts and routing this forward cannot compute (empty: none)."""
        refused = [self.routing.refusal] if self.routing.refusal else []
        return self.shapes.unsupported() + refused

    def max_batch_size(self, seq_len: int, max_tokens: int) -> int:
        """The largest batch this worker should run (rule: ``auto_batch``)."""
        per_nonce = auto_batch.bytes_per_nonce(
            seq_len,
            self.hidden_size,
            self.vllm_config.model_config.get_vocab_size(),
            self.dtype.itemsize,
            self.shapes.scratch_bytes_per_nonce(seq_len),
        )
        # The scratch KV tensors already allocated are reused (or freed) by the next batch.
        free = auto_batch.free_memory_bytes(self.device) + self.shapes.scratch.nbytes()
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
