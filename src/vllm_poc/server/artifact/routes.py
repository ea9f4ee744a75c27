"""The artifact protocol's ``/api/v1/pow`` routes (``VLLM_POC_PROTOCOL=artifact``): the API that
gonka's MLNode calls, with its status codes (docs/protocol.md, Part II §A.6).

Bodies are validated here, not by FastAPI: this API answers 422 for a malformed body (as the
network's nodes do) where vLLM's handler would answer 400. Every refusal is answered by
``errors.response``, never by vLLM's exception handlers.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from vllm_poc.log import get_logger
from vllm_poc.protocol import POW_PREFIX
from vllm_poc.protocol.artifact.wire import Generate, InitGenerate
from vllm_poc.server import versions
from vllm_poc.server.artifact.node import ArtifactNode
from vllm_poc.server.bodies import openapi_body, parsed
from vllm_poc.server.errors import EngineFailure, PoCRequestError, response

logger = get_logger(__name__)

router = APIRouter(prefix=POW_PREFIX, tags=["PoC (artifact protocol)"])

M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")


def answers_errors(
    handler: Callable[P, Awaitable[dict[str, Any]]],
) -> Callable[P, Awaitable[dict[str, Any] | Response]]:
    """A refusal becomes its JSON answer; engine failures are logged with context."""

    @functools.wraps(handler)
    async def route(*args: P.args, **kwargs: P.kwargs) -> dict[str, Any] | Response:
        try:
            return await handler(*args, **kwargs)
        except PoCRequestError as e:
            if isinstance(e, EngineFailure):
                logger.error("vllm-poc: %s failed in the engine: %s", handler.__name__, e)
            return response(e)

    return route


def _node(request: Request) -> ArtifactNode:
    node = getattr(request.app.state, "poc_manager", None)
    if not isinstance(node, ArtifactNode):
        raise EngineFailure("Engine not available")
    return node


@router.post("/init/generate", openapi_extra=openapi_body(InitGenerate))
@answers_errors
async def init_generate(request: Request) -> dict[str, Any]:
    """Generate until stopped: this instance's nonces, artifacts posted to ``{url}/generated``."""
    node, body = _node(request), await parsed(request, InitGenerate, 422, listed=True)
    return await node.init_generate(body)


@router.post("/generate", openapi_extra=openapi_body(Generate))
@answers_errors
async def generate(request: Request) -> dict[str, Any]:
    """Compute the given nonces: inline (``wait``) or as a queued job; with ``validation``,
    judge the received artifacts."""
    node, body = _node(request), await parsed(request, Generate, 422, listed=True)
    node.check_params(body.params)
    node.jobs.check(body)
    return await node.jobs.run_inline(body) if body.wait else node.jobs.submit(body)


@router.get("/generate/{request_id}")
@answers_errors
async def generate_result(request: Request, request_id: str) -> dict[str, Any]:
    return _node(request).jobs.get(request_id)


@router.get("/status")
@answers_errors
async def status(request: Request) -> dict[str, Any]:
    return _node(request).status()


@router.post("/stop")
@answers_errors
async def stop(request: Request) -> dict[str, Any]:
    """Stop generating and cancel the jobs (the body is ignored)."""
    return await _node(request).stop()


@router.get("/versions")
@answers_errors
async def get_versions(request: Request) -> dict[str, Any]:
    """What gonka's MLNode reads once per backend (``vllm_version``,
    ``poc_validation_inference``), and what an operator checks (``versions``)."""
    return versions.of(request, _node(request))
