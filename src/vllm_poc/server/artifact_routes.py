"""The artifact protocol's ``/api/v1/pow`` routes (``VLLM_POC_PROTOCOL=artifact``): the API that
gonka's MLNode calls, with its status codes (docs/protocol.md, Part II §A.6).

Bodies are validated here, not by FastAPI: this API answers 422 for a malformed body (as the
network's nodes do) where vLLM's handler would answer 400.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ValidationError

from vllm_poc.log import get_logger
from vllm_poc.protocol.artifact_wire import Generate, InitGenerate
from vllm_poc.protocol.wire import POW_PREFIX
from vllm_poc.server import guards
from vllm_poc.server.artifact_node import ArtifactNode, ParamsMismatch
from vllm_poc.server.errors import EngineFailure, PoCRequestError

logger = get_logger(__name__)

router = APIRouter(
    prefix=POW_PREFIX,
    tags=["PoC (artifact protocol)"],
    dependencies=[Depends(guards.require_api_key), Depends(guards.limit_body_size)],
)

M = TypeVar("M", bound=BaseModel)


def _node(request: Request) -> ArtifactNode:
    node = getattr(request.app.state, "poc_manager", None)
    if not isinstance(node, ArtifactNode):
        raise HTTPException(status_code=503, detail="Engine not available")
    return node


async def _body(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate(await request.json())
    except ValidationError as e:
        raise HTTPException(
            status_code=422, detail=e.errors(include_url=False, include_context=False)
        ) from e
    except ValueError as e:
        raise HTTPException(status_code=422, detail=f"body is not JSON: {e}") from e


def _http(e: PoCRequestError) -> HTTPException:
    if isinstance(e, EngineFailure):
        logger.error("vllm-poc: artifact request failed in the engine: %s", e)
    detail: Any = e.detail if isinstance(e, ParamsMismatch) else str(e)
    return HTTPException(status_code=e.status_code, detail=detail)


@router.post("/init/generate")
async def init_generate(request: Request) -> dict[str, Any]:
    """Generate until stopped: this instance's nonces, artifacts posted to ``{url}/generated``."""
    node, body = _node(request), await _body(request, InitGenerate)
    try:
        return await node.init_generate(body)
    except PoCRequestError as e:
        raise _http(e) from e


@router.post("/generate")
async def generate(request: Request) -> dict[str, Any]:
    """Compute the given nonces: inline (``wait``) or as a queued job; with ``validation``,
    judge the received artifacts."""
    node, body = _node(request), await _body(request, Generate)
    try:
        node.check_params(body.params)
        node.jobs.check(body)
        return await node.jobs.run_inline(body) if body.wait else node.jobs.submit(body)
    except PoCRequestError as e:
        raise _http(e) from e


@router.get("/generate/{request_id}")
async def generate_result(request: Request, request_id: str) -> dict[str, Any]:
    try:
        return _node(request).jobs.get(request_id)
    except PoCRequestError as e:
        raise _http(e) from e


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    return _node(request).status()


@router.post("/stop")
async def stop(request: Request) -> dict[str, Any]:
    """Stop generating and cancel the jobs (the body is ignored)."""
    return await _node(request).stop()
