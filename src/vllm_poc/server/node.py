"""What the shared plumbing (guards, ``/versions``, the endpoint) sees of a protocol's node: the
small interface every protocol's node provides, whatever else it does."""

from __future__ import annotations

from typing import Any, Protocol

from vllm_poc import envs
from vllm_poc.protocol.state import PoCState


class Node(Protocol):
    """A node of ``VLLM_POC_PROTOCOL``: its round's state, what it serves, what it refuses."""

    @property
    def state(self) -> PoCState:
        """GENERATING pauses inference; the other states say what a node reports."""

    @property
    def validating(self) -> bool:
        """Recomputing another node's work now (inference pauses unless
        ``VLLM_POC_INFERENCE_DURING_VALIDATION``)."""

    @property
    def served_models(self) -> list[str]:
        """The model names a round's parameters may give."""

    @property
    def unsupported(self) -> list[str]:
        """Why this model cannot run PoC (empty: it can)."""


class NodeFactory(Protocol):
    """Builds a protocol's node at start (``protocols``)."""

    def __call__(
        self, engines: Any, model_config: Any, served: list[str], unsupported: list[str]
    ) -> Node: ...


def pausing(node: Node) -> str | None:
    """What of the node's work pauses inference now (None: nothing): generating always,
    validating unless ``VLLM_POC_INFERENCE_DURING_VALIDATION`` (``auto``: the protocol's way)."""
    if node.state == PoCState.GENERATING:
        return "GENERATING"
    if node.validating and not envs.inference_during_validation():
        return "VALIDATING"
    return None
