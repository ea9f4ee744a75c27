"""CUDA graphs of the PoC forward: one per round shape, replayed for every batch of the round.

A round runs one shape (``batch_size x seq_len``) for its whole life, and everything of a batch
but its input embeddings is the same in every batch: positions, attention metadata, slot
mapping, scratch KV. So the forward is captured once per shape with those fixed, and each
batch copies its inputs into the captured input tensor and replays: no per-layer kernel
launches, no metadata building. vLLM's own graphs cover decode-sized token counts, not a PoC
batch of thousands of tokens.

Opt-in (``VLLM_POC_CUDA_GRAPHS=1``) until a GPU session has measured it
(``tests/e2e/test_cuda_graphs.py``); CUDA only, and without pipeline parallelism, whose stages
exchange tensors through calls a graph cannot hold. Capture runs inside vLLM's
``graph_capture`` context, which prepares its tensor-parallel all-reduce for graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vllm_poc import compat, envs
from vllm_poc.log import get_logger

if TYPE_CHECKING:
    from vllm_poc.worker.forward import BatchShape, PoCForward

logger = get_logger(__name__)

WARMUP_RUNS = 2
"""Runs before capture: lazy initialisations (workspaces, autotuning) must not be captured."""


@dataclass
class _Captured:
    shape: BatchShape
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor
    output: torch.Tensor


class PoCGraphs:
    """The captured forward of the current round shape (one at a time: graphs hold memory)."""

    @staticmethod
    def wanted(forward: PoCForward) -> bool:
        if not envs.get("VLLM_POC_CUDA_GRAPHS") or forward.device.type != "cuda":
            return False
        if forward.vllm_config.parallel_config.pipeline_parallel_size > 1:
            logger.warning("vllm-poc: no PoC CUDA graphs with pipeline parallelism")
            return False
        return True

    def __init__(self, forward: PoCForward) -> None:
        self.forward = forward
        self._captured: _Captured | None = None

    def last_hidden(self, inputs: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
        captured = self._captured
        if captured is None or (captured.shape.batch, captured.shape.seq_len) != (batch, seq_len):
            captured = self._capture(inputs, batch, seq_len)
        captured.inputs.copy_(inputs)
        captured.graph.replay()
        return captured.output

    def _capture(self, inputs: torch.Tensor, batch: int, seq_len: int) -> _Captured:
        self._captured = None  # the previous shape's graph and buffers go first
        shape = self.forward.prepare(batch, seq_len)
        static = inputs.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.forward.run(shape, static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with (
            compat.graph_capture(self.forward.device) as stream,
            torch.cuda.graph(graph, stream=stream),
        ):
            output = self.forward.run(shape, static)
        if output is None:
            raise RuntimeError("the PoC forward gave no hidden states to capture")
        self._captured = _Captured(shape, graph, static, output)
        logger.info("vllm-poc: captured a CUDA graph of the PoC forward, %d x %d", batch, seq_len)
        return self._captured
