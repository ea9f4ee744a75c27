"""The distance protocol's ``/api/v1/pow`` router: parse the body, call the manager, answer.

Bodies and query parameters are parsed here into the strict pydantic models of ``protocol``
(a malformed one is a 400 with pydantic's errors); the manager's ``PoCRequestError`` types carry
their status code (``server.errors``) and every refusal is answered by ``errors.response``,
never by vLLM's exception handlers. Nothing here decides a state or a limit.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, get_args

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from vllm_poc import __version__, compat, envs
from vllm_poc.log import get_logger
from vllm_poc.protocol import POW_PREFIX
from vllm_poc.protocol.distance.math import PROTOCOL_VERSION
from vllm_poc.protocol.distance.round import CalibrationRequest, RoundRequest, SeedDerivation
from vllm_poc.protocol.distance.wire import (
    ProofBatchRequest,
    StatusResponse,
    ValidateResponse,
)
from vllm_poc.protocol.state import PoCState
from vllm_poc.server import guards, versions
from vllm_poc.server.bodies import openapi_body, parsed
from vllm_poc.server.distance import requests
from vllm_poc.server.distance.manager import PoCManager
from vllm_poc.server.errors import EngineFailure, MalformedBody, PoCRequestError, response

logger = get_logger(__name__)

router = APIRouter(prefix=POW_PREFIX, tags=["PoC"])

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)


def answers_errors(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | Response]]:
    """Turn the manager's errors into HTTP answers; engine failures are logged with context."""

    @functools.wraps(handler)
    async def route(*args: P.args, **kwargs: P.kwargs) -> R | Response:
        try:
            return await handler(*args, **kwargs)
        except PoCRequestError as e:
            if isinstance(e, EngineFailure):
                logger.error("vllm-poc: %s: %s", handler.__name__, e, exc_info=e.__cause__)
            return response(e)

    return route


def get_poc_manager(request: Request) -> PoCManager:
    manager = getattr(request.app.state, "poc_manager", None)
    if manager is None:
        raise EngineFailure("PoC not enabled")
    return manager


def _ok(manager: PoCManager) -> dict[str, Any]:
    return {"status": "OK", "pow_status": manager.get_status()}


@router.post("/init", openapi_extra=openapi_body(RoundRequest))
@answers_errors
async def init_round(request: Request) -> dict[str, Any]:
    """Initialize a round without starting generation."""
    manager = get_poc_manager(request)
    await requests.open_round(manager, await parsed(request, RoundRequest, 400))
    return _ok(manager)


@router.post("/init/generate", openapi_extra=openapi_body(RoundRequest))
@answers_errors
async def init_generate(request: Request) -> dict[str, Any]:
    """Initialize a round and start generating."""
    manager = get_poc_manager(request)
    await requests.open_round(
        manager, await parsed(request, RoundRequest, 400), PoCState.GENERATING
    )
    return _ok(manager)


@router.post("/init/validate", openapi_extra=openapi_body(RoundRequest))
@answers_errors
async def init_validate(request: Request) -> dict[str, Any]:
    """Initialize a round and start validating."""
    manager = get_poc_manager(request)
    await requests.open_round(
        manager, await parsed(request, RoundRequest, 400), PoCState.VALIDATING
    )
    return _ok(manager)


@router.post("/phase/generate")
@answers_errors
async def start_generate(request: Request) -> dict[str, Any]:
    """Switch the initialized round to generation."""
    manager = get_poc_manager(request)
    manager.switch_phase(PoCState.GENERATING)
    return _ok(manager)


@router.post("/phase/validate")
@answers_errors
async def start_validate(request: Request) -> dict[str, Any]:
    """Switch the initialized round to validation."""
    manager = get_poc_manager(request)
    manager.switch_phase(PoCState.VALIDATING)
    return _ok(manager)


@router.post("/stop")
@answers_errors
async def stop_round(request: Request) -> dict[str, Any]:
    manager = get_poc_manager(request)
    manager.stop_round()
    return _ok(manager)


@router.get("/status", response_model=StatusResponse, response_model_exclude_unset=True)
@answers_errors
async def get_status(request: Request) -> StatusResponse:
    """The round's state and results; ``?since=N``: valid nonces from index N on, and ``next``."""
    raw = request.query_params.get("since")
    try:
        since = None if raw is None else int(raw)
    except ValueError as e:
        raise MalformedBody(400, f"since must be an integer, got {raw!r}") from e
    return StatusResponse(**get_poc_manager(request).get_status(since))


@router.post(
    "/validate", response_model=ValidateResponse, openapi_extra=openapi_body(ProofBatchRequest)
)
@answers_errors
async def validate_nonces(request: Request) -> ValidateResponse:
    """Recompute the distances of a submitted ProofBatch and judge it."""
    manager = get_poc_manager(request)
    verdict = await requests.validate(manager, await parsed(request, ProofBatchRequest, 400))
    return ValidateResponse.from_verdict(verdict)


@router.post("/calibrate", openapi_extra=openapi_body(CalibrationRequest))
@answers_errors
async def calibrate(request: Request) -> dict[str, Any]:
    """Sample a block's distance distribution; the r_target giving ``valid_rate`` valid nonces.

    With trained weights the distribution moves from block to block, so a fixed r_target can
    give anything from 1% to 99% valid nonces. Does not change the round's state.
    """
    manager = get_poc_manager(request)
    return await requests.calibrate(manager, await parsed(request, CalibrationRequest, 400))


@router.get("/versions")
@answers_errors
async def get_versions(request: Request) -> dict[str, Any]:
    """What gonka's MLNode reads of a node (``vllm_version``, ``poc_validation_inference``) and
    what an operator checks (``versions``)."""
    return versions.of(request, get_poc_manager(request))


@router.get("/version")
@answers_errors
async def version(request: Request) -> dict[str, Any]:
    """Versions of the plugin, the protocol math and vLLM, the model, a fingerprint of its
    loaded weights (``fingerprint``; null while it is being computed) and enabled options."""
    manager = get_poc_manager(request)
    weights = getattr(request.app.state, "poc_weights", None)
    return {
        "plugin_version": __version__,
        "protocol_version": PROTOCOL_VERSION,
        "vllm_version": compat.vllm_version(),
        "model": manager.model_name,
        "weights": weights.figures() if weights else None,
        "unsupported": manager.unsupported,
        "options": {
            "random_projection": True,
            "seed_derivations": list(get_args(SeedDerivation)),
            "compiled_poc_forward": bool(getattr(request.app.state, "poc_forward_compiled", False)),
            "validation_rule": ["tolerance", "p_mismatch", "fraud_threshold"],
            "inference_during_validation": envs.inference_during_validation(),
            "callbacks": True,
            "auth": bool(guards.api_key()),
        },
    }
