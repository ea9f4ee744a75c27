"""The protocols a node speaks, by name: what ``VLLM_POC_PROTOCOL`` picks, and what the
endpoint attaches and builds for it.

Each protocol is a wing of its own (``server/<name>/`` with its routes and node, and
``protocol/`` with its math and messages); the shared plumbing never names one. Adding a protocol
or a scheme is its folder and one line in ``PROTOCOLS``; both entries are imported when chosen.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI

from vllm_poc import envs
from vllm_poc.protocol import POW_PREFIX
from vllm_poc.server import guards
from vllm_poc.server.node import Node, NodeFactory


@dataclass(frozen=True)
class Wing:
    """Where a protocol lives: the module of its ``router``, and its node's factory
    (``module:function``)."""

    routes: str
    node: str

    def router(self) -> APIRouter:
        router: APIRouter = importlib.import_module(self.routes).router
        return router

    def factory(self) -> NodeFactory:
        module, _, name = self.node.partition(":")
        factory: NodeFactory = getattr(importlib.import_module(module), name)
        return factory


PROTOCOLS: dict[str, Wing] = {
    "distance": Wing("vllm_poc.server.distance.routes", "vllm_poc.server.distance.manager:node"),
    "artifact": Wing("vllm_poc.server.artifact.routes", "vllm_poc.server.artifact.node:node"),
}


def served() -> Wing:
    """The protocol ``VLLM_POC_PROTOCOL`` names."""
    return PROTOCOLS[envs.VLLM_POC_PROTOCOL]


def make_node(
    engines: Any, model_config: Any, served_names: list[str], unsupported: list[str]
) -> Node:
    """The served protocol's node, over ``engines``."""
    return served().factory()(engines, model_config, served_names, unsupported)


def attach(app: FastAPI) -> list[str]:
    """Add the served protocol's router with the PoC guards, and pause inference routes during
    PoC. Returns the paused paths. Idempotent: guarded routes are not wrapped twice."""
    if not any(getattr(r, "path", "").startswith(POW_PREFIX) for r in app.router.routes):
        app.include_router(served().router())
    guards.guard_pow_routes(app)
    return guards.guard_inference_routes(app)
