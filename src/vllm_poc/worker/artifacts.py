"""Artifact-protocol batches in one worker: the PoC forward with the round's reflection after
every decoder layer, then the artifact math of ``protocol.artifact`` on the device.

Where vLLM compiles the model, the forward is a graph of its own (``compiled``) traced with the
reflections inside and their vectors read as data, and, with ``VLLM_POC_CUDA_GRAPHS``, captured
as a CUDA graph; the modules' plain forward with the same reflections (eager) is the reference
it is tested against, and what ``--enforce-eager`` or ``VLLM_POC_COMPILED_FORWARD=0`` run.
"""

from __future__ import annotations

from typing import Any

import torch

from vllm_poc import compat
from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.work import Work
from vllm_poc.worker.batch_shape import BatchShape
from vllm_poc.worker.compiled import EmbedsGraph
from vllm_poc.worker.cuda_graphs import PoCGraphs
from vllm_poc.worker.forward import PoCForward
from vllm_poc.worker.prefetch import Tensors
from vllm_poc.worker.reflections import Reflections


class NoDecoderLayers(RuntimeError):
    """The model's decoder layers were not found: an artifact would lack its reflections."""


class ArtifactForward:
    """Computes artifacts with the model of one worker (through its ``PoCForward``)."""

    def __init__(self, forward: PoCForward) -> None:
        self.forward = forward
        config = forward.vllm_config.model_config.hf_text_config
        model = forward.runner.get_model()
        self.layers = compat.decoder_layers(model, config.num_hidden_layers)
        self.reflections: Reflections | None = None
        self.graph: EmbedsGraph | None = None
        self.cuda_graphs: PoCGraphs | None = None
        if self.layers:
            self.reflections = Reflections(self.layers, forward.hidden_size, forward.device)
            self.graph = EmbedsGraph(model, "artifact") if forward.compiles else None
            if (
                self.graph is not None
                and PoCGraphs.wanted(forward.shapes)
                and not forward.token_routed
            ):
                self.cuda_graphs = PoCGraphs(forward.shapes, self.run)

    def run(
        self,
        shape: BatchShape,
        inputs: torch.Tensor,
        compiled: bool = True,
        token_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The reflected forward's last hidden states (None off the last pipeline stage)."""
        assert self.reflections is not None
        graph = self.graph if compiled else None
        with self.reflections.installed():
            return self.forward.run(shape, inputs, graph, token_ids=token_ids)

    @torch.inference_mode()
    def artifacts(self, work: Work) -> list[str] | None:
        """base64 artifacts of ``work.nonces`` in order; ``[]`` when the batch holds a
        non-finite value (rejected whole); None on ranks without the final hidden states."""
        if self.reflections is None:
            raise NoDecoderLayers(
                "vllm-poc: no decoder-layer list of the model was found; artifacts need a "
                "reflection after every decoder layer"
            )
        fwd = self.forward
        self.reflections.load(work.block_hash)
        made = fwd.prefetch.take(work) or self.nonce_tensors(work)
        with fwd.prefetch.behind(work.following(), self.nonce_tensors):
            last = self.last_hidden(made["inputs"], work, made.get("token_ids"))
        if last is None:
            return None
        rows = artifact.artifacts_from(last, made["coordinates"], made["rotations"])
        if not bool(artifact.finite_rows(last).all() and artifact.finite_rows(rows).all()):
            return []
        return artifact.encode_all(rows)

    def nonce_tensors(self, work: Work) -> Tensors:
        """What an artifact batch needs of its nonces alone: inputs and the pick."""
        fwd = self.forward
        coordinates, rotations = artifact.pick(
            work.block_hash, work.public_key, work.nonces, fwd.hidden_size, work.k_dim, fwd.device
        )
        return {**fwd.nonce_inputs(work), "coordinates": coordinates, "rotations": rotations}

    def last_hidden(
        self, inputs: torch.Tensor, work: Work, token_ids: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The reflected forward's last hidden states, in forwards that fit the token budget."""
        seq_len = work.seq_len

        def forward(part: torch.Tensor, rows: int, ids: torch.Tensor | None) -> Any:
            if self.cuda_graphs is not None and not work.eager:
                return self.cuda_graphs.last_hidden(part, rows, seq_len)
            shape = self.forward.prepare(rows, seq_len)
            return self.run(shape, part, compiled=not work.eager, token_ids=ids)

        return self.forward.in_forwards(inputs, len(work.nonces), seq_len, forward, token_ids)

    def compilations(self) -> dict[str, int]:
        """Graphs compiled so far by each PoC forward (none where nothing compiles)."""
        graphs = [g for g in (self.forward.embeds_graph, self.graph) if g is not None]
        return {g.name: g.compilations for g in graphs}
