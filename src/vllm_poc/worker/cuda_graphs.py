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

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vllm_poc import compat, envs
from vllm_poc.log import get_logger
from vllm_poc.worker.batch_shape import BatchShape, BatchShapes

logger = get_logger(__name__)

WARMUP_RUNS = 2
"""Runs before capture: lazy initialisations (workspaces, autotuning) must not be captured."""


@dataclass
class _Captured:
    shape: BatchShape
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor
    output: torch.Tensor


Run = Callable[["BatchShape", torch.Tensor], "torch.Tensor | None"]
"""A forward to capture: the last hidden states of a batch's inputs (``PoCForward.run_*``)."""


class PoCGraphs:
    """The captured ``run`` of the current round shape (one at a time: graphs hold memory).

    Whatever ``run`` reads besides its inputs (the artifact protocol's reflection vectors) must
    stay at one address, updated in place: a replay reads it where the capture found it.
    """

    @staticmethod
    def wanted(shapes: BatchShapes) -> bool:
        if not envs.VLLM_POC_CUDA_GRAPHS or shapes.device.type != "cuda":
            return False
        if shapes.vllm_config.parallel_config.pipeline_parallel_size > 1:
            logger.warning("vllm-poc: no PoC CUDA graphs with pipeline parallelism")
            return False
        return True

    def __init__(self, shapes: BatchShapes, run: Run) -> None:
        self.shapes = shapes
        self.run = run
        self._captured: _Captured | None = None

    def last_hidden(self, inputs: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
        """The captured forward replayed on ``inputs``. A smaller batch of the captured
        ``seq_len`` (a round's last chunk) fills the first sequences of the captured one:
        sequences never see each other, so the rest cost time but change nothing."""
        captured = self._captured
        if captured is None or captured.shape.seq_len != seq_len or captured.shape.batch < batch:
            captured = self._capture(inputs, batch, seq_len)
        captured.inputs[: inputs.shape[0]].copy_(inputs)
        captured.graph.replay()
        return captured.output[:batch]

    def _capture(self, inputs: torch.Tensor, batch: int, seq_len: int) -> _Captured:
        self._captured = None  # the previous shape's graph and buffers go first
        shape = self.shapes.prepare(batch, seq_len)
        static = inputs.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.run(shape, static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with (
            compat.graph_capture(self.shapes.device) as stream,
            torch.cuda.graph(graph, stream=stream),
        ):
            output = self.run(shape, static)
        if output is None:
            raise RuntimeError("the PoC forward gave no hidden states to capture")
        self._captured = _Captured(shape, graph, static, output)
        logger.info("vllm-poc: captured a CUDA graph of the PoC forward, %d x %d", batch, seq_len)
        return self._captured
