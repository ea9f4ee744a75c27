"""Compiled PoC forwards that leave inference's compiled model alone.

vLLM compiles its model as traced with token ids, and that graph refuses the input embeddings
PoC feeds; the PoC forward then asks vLLM to skip it (``skip_compiled``), and vLLM calls the
compiled modules' plain ``forward``. For the PoC forward only, that ``forward`` is replaced by a
``torch.compile`` of it: a second graph, traced with ``inputs_embeds``, compiled on the first
batch of each shape and reused by every later batch (a round runs one shape). Enabling vLLM's
prompt-embeds input path instead would trace the one graph with embeddings for inference too
(completions took 1.03x to 1.79x as long on CPU, ``benchmarks/bench_compiled.py``).

The artifact protocol's forward is a graph of its own: traced with the reflecting layer forwards
installed (``reflections``), entered through a function of its own code object, since dynamo
keeps its graphs per code object and the distance graph must never be taken for it (or the
other way round).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from vllm_poc import compat
from vllm_poc.log import get_logger

logger = get_logger(__name__)


def _own_frame(forward: Callable[..., Any]) -> Callable[..., Any]:
    def artifact_forward(*args: Any, **kwargs: Any) -> Any:
        return forward(*args, **kwargs)

    return artifact_forward


class EmbedsGraph:
    """``torch.compile`` of each module vLLM compiles, swapped in for a PoC forward only.

    ``name`` says which forward: ``"distance"`` compiles the modules' own ``forward``; any other
    compiles it through a frame of its own (see the module's docstring). ``compilations`` counts
    the graphs compiled: one per round shape, never one per round.
    """

    def __init__(self, model: torch.nn.Module, name: str = "distance") -> None:
        self.name = name
        self.modules = compat.compiled_modules(model)
        self.compilations = 0
        self.compiled: list[Callable[..., Any]] = [
            torch.compile(m.forward if name == "distance" else _own_frame(m.forward), backend=self)
            for m in self.modules
        ]
        logger.info(
            "vllm-poc: the %s forward compiles its own graph of %s",
            name,
            ", ".join(type(m).__name__ for m in self.modules) or "nothing",
        )

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        """The backend: inductor, counted."""
        from torch._inductor.compile_fx import compile_fx

        self.compilations += 1
        logger.info("vllm-poc: compiling the %s forward (graph %d)", self.name, self.compilations)
        return compile_fx(graph, example_inputs, config_patches={"emulate_precision_casts": True})

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside, vLLM's uncompiled path of each module runs this graph instead."""
        for module, compiled in zip(self.modules, self.compiled, strict=True):
            module.forward = compiled
        try:
            yield
        finally:
            for module in self.modules:
                del module.forward
