"""The artifact protocol's per-layer reflections, hooked onto the decoder layers for the duration
of one PoC forward only: installed before it, removed after it, so inference never runs them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch

from vllm_poc.protocol.artifact import reflect


def reflect_output(w: torch.Tensor, module: torch.nn.Module, args: Any, output: Any) -> Any:
    """A decoder layer's output with its residual-stream tensors reflected: both of vLLM's
    ``(hidden, residual)``, or a bare tensor; further tuple entries untouched."""
    if isinstance(output, torch.Tensor):
        return reflect(output, w)
    if isinstance(output, tuple):
        return tuple(
            reflect(t, w) if j < 2 and isinstance(t, torch.Tensor) else t
            for j, t in enumerate(output)
        )
    return output


@contextlib.contextmanager
def reflected(layers: list[tuple[int, torch.nn.Module]], vectors: torch.Tensor) -> Iterator[None]:
    """Hook reflection ``vectors[n]`` after ``layers[n]`` (the n-th of this rank's layers)."""
    handles = [
        layer.register_forward_hook(partial(reflect_output, vectors[n]))
        for n, (_, layer) in enumerate(layers)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
