"""A compiled PoC forward that leaves inference's compiled model alone.

vLLM compiles its model as traced with token ids, and that graph refuses the input embeddings
PoC feeds; the PoC forward then asks vLLM to skip it (``skip_compiled``), and vLLM calls the
compiled modules' plain ``forward``. For the PoC forward only, that ``forward`` is replaced by a
``torch.compile`` of it: a second graph, traced with ``inputs_embeds``, compiled on the first
batch of each shape and reused by every later batch (a round runs one shape). Enabling vLLM's
prompt-embeds input path instead would trace the one graph with embeddings for inference too
(completions took 1.03x to 1.79x as long on CPU, ``benchmarks/bench_compiled.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from vllm_poc import compat
from vllm_poc.log import get_logger

logger = get_logger(__name__)


class EmbedsGraph:
    """``torch.compile`` of each module vLLM compiles, swapped in for the PoC forward only."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.modules = compat.compiled_modules(model)
        self.compiled: list[Callable[..., Any]] = [torch.compile(m.forward) for m in self.modules]
        logger.info(
            "vllm-poc: the PoC forward compiles its own graph of %s",
            ", ".join(type(m).__name__ for m in self.modules) or "nothing",
        )

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside, vLLM's uncompiled path of each module runs the PoC graph instead."""
        for module, compiled in zip(self.modules, self.compiled, strict=True):
            module.forward = compiled
        try:
            yield
        finally:
            for module in self.modules:
                del module.forward
