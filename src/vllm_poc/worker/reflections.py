"""The artifact protocol's per-layer reflections, put into the decoder layers' forwards for the
duration of one artifact forward only, so inference never runs them.

The round's vectors live in one persistent tensor that a new round overwrites in place: a graph
compiled (or a CUDA graph captured) with the reflections reads them as data, so a new block hash
never recompiles. Each layer's reflecting forward is made once and reused, so the graph's guards
see the same functions in every round.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from vllm_poc.protocol.artifact import math as artifact


def reflect_output(w: torch.Tensor, output: Any) -> Any:
    """A decoder layer's output with its residual-stream tensors reflected: both of vLLM's
    ``(hidden, residual)``, or a bare tensor; further tuple entries untouched."""
    if isinstance(output, torch.Tensor):
        return artifact.reflect(output, w)
    if isinstance(output, tuple):
        return tuple(
            artifact.reflect(t, w) if j < 2 and isinstance(t, torch.Tensor) else t
            for j, t in enumerate(output)
        )
    return output


def _reflecting(forward: Callable[..., Any], w: torch.Tensor) -> Callable[..., Any]:
    def reflected_forward(*args: Any, **kwargs: Any) -> Any:
        return reflect_output(w, forward(*args, **kwargs))

    return reflected_forward


class Reflections:
    """Reflection ``vectors[n]`` after ``layers[n]`` (the n-th of this rank's decoder layers,
    ``(global index, module)``), inside ``installed()``."""

    def __init__(
        self, layers: list[tuple[int, torch.nn.Module]], dim: int, device: torch.device | str
    ) -> None:
        self.layers = layers
        self.dim = dim
        self.vectors = torch.zeros(len(layers), dim, dtype=torch.float32, device=device)
        self.block_hash: str | None = None
        self._forwards = [
            _reflecting(module.forward, self.vectors[n]) for n, (_, module) in enumerate(layers)
        ]

    def load(self, block_hash: str) -> None:
        """The round's vectors (float32 unit vectors of the global layer indices), in place."""
        if block_hash != self.block_hash:
            indices = [i for i, _ in self.layers]
            w = artifact.layer_vectors(block_hash, indices, self.dim, self.vectors.device)
            self.vectors.copy_(w)
            self.block_hash = block_hash

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Inside, every decoder layer's forward reflects its output."""
        for (_, module), forward in zip(self.layers, self._forwards, strict=True):
            module.forward = forward
        try:
            yield
        finally:
            for _, module in self.layers:
                del module.forward
