"""The ``/api/v1/pow`` router: parse the body, call the manager, map its errors to statuses.

Bodies are the strict pydantic models of ``protocol``; malformed ones answer 400 through vLLM's
handler of validation errors. The manager's ``PoCRequestError`` types carry their status code
(``server.errors``); nothing here decides a state or a limit.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, get_args

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request

from vllm_poc import __version__, compat, envs
from vllm_poc.log import get_logger
from vllm_poc.protocol.distance import PROTOCOL_VERSION
from vllm_poc.protocol.round import CalibrationRequest, PoCState, RoundRequest, SeedDerivation
from vllm_poc.protocol.wire import POW_PREFIX, ProofBatchRequest, StatusResponse, ValidateResponse
from vllm_poc.server import guards
from vllm_poc.server.errors import EngineFailure, PoCRequestError
from vllm_poc.server.manager import PoCManager

logger = get_logger(__name__)

router = APIRouter(
    prefix=POW_PREFIX,
    tags=["PoC"],
    dependencies=[Depends(guards.require_api_key), Depends(guards.limit_body_size)],
)

P = ParamSpec("P")
R = TypeVar("R")


def answers_errors(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn the manager's errors into HTTP answers; engine failures are logged with context."""

    @functools.wraps(handler)
    async def route(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except PoCRequestError as e:
            if isinstance(e, EngineFailure):
                logger.error("vllm-poc: %s: %s", handler.__name__, e, exc_info=e.__cause__)
            raise HTTPException(status_code=e.status_code, detail=str(e)) from e

    return route


def get_poc_manager(request: Request) -> PoCManager:
    manager = getattr(request.app.state, "poc_manager", None)
    if manager is None:
        raise HTTPException(status_code=503, detail="PoC not enabled")
    return manager


def _ok(manager: PoCManager) -> dict[str, Any]:
    return {"status": "OK", "pow_status": manager.get_status()}


@router.post("/init")
@answers_errors
async def init_round(request: Request, body: RoundRequest) -> dict[str, Any]:
    """Initialize a round without starting generation."""
    manager = get_poc_manager(request)
    await manager.open_round(body)
    return _ok(manager)


@router.post("/init/generate")
@answers_errors
async def init_generate(request: Request, body: RoundRequest) -> dict[str, Any]:
    """Initialize a round and start generating."""
    manager = get_poc_manager(request)
    await manager.open_round(body, PoCState.GENERATING)
    return _ok(manager)


@router.post("/init/validate")
@answers_errors
async def init_validate(request: Request, body: RoundRequest) -> dict[str, Any]:
    """Initialize a round and start validating."""
    manager = get_poc_manager(request)
    await manager.open_round(body, PoCState.VALIDATING)
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
async def stop_round(request: Request) -> dict[str, Any]:
    manager = get_poc_manager(request)
    manager.stop_round()
    return _ok(manager)


@router.get("/status", response_model=StatusResponse, response_model_exclude_unset=True)
@answers_errors
async def get_status(request: Request, since: int | None = None) -> StatusResponse:
    """The round's state and results; ``?since=N``: valid nonces from index N on, and ``next``."""
    return StatusResponse(**get_poc_manager(request).get_status(since))


@router.post("/validate", response_model=ValidateResponse)
@answers_errors
async def validate_nonces(request: Request, body: ProofBatchRequest) -> ValidateResponse:
    """Recompute the distances of a submitted ProofBatch and judge it."""
    verdict = await get_poc_manager(request).validate_request(body)
    return ValidateResponse.from_verdict(verdict)


@router.post("/calibrate")
@answers_errors
async def calibrate(request: Request, body: CalibrationRequest) -> dict[str, Any]:
    """Sample a block's distance distribution; the r_target giving ``valid_rate`` valid nonces.

    With trained weights the distribution moves from block to block, so a fixed r_target can
    give anything from 1% to 99% valid nonces. Does not change the round's state.
    """
    return await get_poc_manager(request).calibrate_request(body)


@router.get("/version")
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
            "inference_during_validation": bool(envs.get("VLLM_POC_INFERENCE_DURING_VALIDATION")),
            "callbacks": True,
            "auth": bool(guards.api_keys(request)),
        },
    }


def attach(app: FastAPI) -> list[str]:
    """Add the PoC router of ``VLLM_POC_PROTOCOL`` with its guards, and pause inference routes
    during PoC.

    Returns the paused paths. Idempotent: guarded routes are not wrapped twice.
    """
    if not any(getattr(r, "path", "").startswith(POW_PREFIX) for r in app.router.routes):
        from vllm_poc.server import artifact_routes

        artifact = envs.get("VLLM_POC_PROTOCOL") == "artifact"
        app.include_router(artifact_routes.router if artifact else router)
    guards.guard_pow_routes(app)
    return guards.guard_inference_routes(app)
