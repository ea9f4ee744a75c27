"""The ``/api/v1/pow`` router (seed Phase 4) and inference blocking during PoC.

Request bodies are strict pydantic models; the manager's ``ValueError`` (impossible values) and
``RuntimeError`` (a transition the current state forbids) become 4xx answers with the message,
never a 500.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Route

from vllm_poc import envs
from vllm_poc.client import POW_PREFIX
from vllm_poc.config import PoCConfig, PoCState
from vllm_poc.data import ProofBatch, to_json_dict
from vllm_poc.log import get_logger

logger = get_logger(__name__)


def _api_keys(request: Request) -> list[str]:
    """VLLM_POC_API_KEY, else vLLM's own ``--api-key`` / ``VLLM_API_KEY``; empty: no auth."""
    own = envs.get("VLLM_POC_API_KEY")
    if own:
        return [own]
    args = getattr(request.app.state, "args", None)
    keys = getattr(args, "api_key", None) or os.environ.get("VLLM_API_KEY") or []
    return [k for k in ([keys] if isinstance(keys, str) else keys) if k]


def _check_api_key(request: Request) -> None:
    """Reject requests without the right ``Authorization: Bearer`` key (constant-time check)."""
    keys = _api_keys(request)
    if not keys:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token.encode(), key.encode())
    if scheme.lower() != "bearer" or not ok:
        raise HTTPException(
            status_code=401,
            detail="missing or wrong API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _check_size(size: int) -> None:
    limit = envs.get("VLLM_POC_MAX_BODY_BYTES")
    if size > limit:
        raise HTTPException(
            status_code=413, detail=f"body of {size} bytes exceeds VLLM_POC_MAX_BODY_BYTES={limit}"
        )


def _check_declared_size(request: Request) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        _check_size(int(declared))


async def require_api_key(request: Request) -> None:
    _check_api_key(request)


async def limit_body_size(request: Request) -> None:
    """Refuse bodies above VLLM_POC_MAX_BODY_BYTES (chunked bodies are measured once read)."""
    _check_declared_size(request)
    if request.headers.get("content-length") is None and request.method in ("POST", "PUT"):
        _check_size(len(await request.body()))


router = APIRouter(
    prefix=POW_PREFIX,
    tags=["PoC"],
    dependencies=[Depends(require_api_key), Depends(limit_body_size)],
)

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
MAX_INT = 2**62
"""Bound of every integer field: nonces and striding must fit the RPC's 64-bit integers."""
BoundedInt = Annotated[int, Field(le=MAX_INT)]


class PoCInitRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    block_hash: Annotated[str, Field(min_length=1)]
    block_height: Annotated[int, Field(ge=0, le=MAX_INT)]
    public_key: Annotated[str, Field(min_length=1)]
    r_target: Annotated[float, Field(gt=0, le=2, allow_inf_nan=False)]
    fraud_threshold: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.01
    node_id: Annotated[int, Field(ge=-1, le=2**31)] = -1
    node_count: Annotated[int, Field(ge=-1, le=2**31)] = -1
    batch_size: Annotated[int, Field(ge=1, le=2**20)] | None = None
    """None: ``VLLM_POC_BATCH_SIZE`` (by default sized by the server, ``auto_batch``)."""
    seq_len: Annotated[int, Field(ge=1)] = Field(
        default_factory=lambda: envs.get("VLLM_POC_SEQ_LEN")
    )
    callback_url: str | None = None
    random_projection: bool = False


class ProofBatchRequest(BaseModel):
    """A ProofBatch as submitted for validation."""

    model_config = ConfigDict(strict=True)

    public_key: Annotated[str, Field(min_length=1)]
    block_hash: Annotated[str, Field(min_length=1)]
    block_height: BoundedInt
    nonces: list[Annotated[int, Field(ge=0, le=MAX_INT)]]
    dist: list[FiniteFloat]
    node_id: BoundedInt


class PoCStatusResponse(BaseModel):
    state: str
    valid_nonces: list[int]
    valid_distances: list[float]
    total_checked: int
    total_valid: int
    elapsed_seconds: float
    rate_per_second: float
    block_height: int | None = None
    error: str | None = None
    callbacks: dict[str, int] | None = None
    total_nonfinite: int = 0
    config: dict[str, Any] | None = None
    """The round's settings (block_hash, public_key, node, batch_size, seq_len, ...)."""


class PoCValidateResponse(BaseModel):
    nonces: list[int]
    distances: list[float | None]
    """Recomputed distances; ``null`` where the model gave a non-finite number."""
    valid: list[bool]
    n_invalid: int
    probability_honest: float
    fraud_detected: bool


def get_poc_manager(request: Request) -> Any:
    manager = getattr(request.app.state, "poc_manager", None)
    if manager is None:
        raise HTTPException(status_code=503, detail="PoC not enabled")
    return manager


async def _batch_size(manager: Any, requested: int | None, seq_len: int) -> int:
    """The request's batch size, or the server's default for ``seq_len``."""
    if requested is not None:
        return requested
    try:
        return await manager.default_batch_size(seq_len)
    except ValueError as e:
        raise HTTPException(status_code=400, detail=str(e)) from e
    except Exception as e:
        raise _engine_failure(e, "sizing the batch", f"for seq_len {seq_len}") from e


def _engine_failure(error: Exception, what: str, context: str) -> HTTPException:
    """Log an engine-side failure with its context; the client gets a 503 naming it."""
    logger.exception("vllm-poc: %s %s failed", what, context)
    return HTTPException(
        status_code=503, detail=f"{what} failed in the engine: {type(error).__name__}: {error}"
    )


async def _create_config(manager: Any, body: PoCInitRequest) -> PoCConfig:
    fields = body.model_dump()
    fields["batch_size"] = await _batch_size(manager, body.batch_size, body.seq_len)
    try:
        config = PoCConfig(**fields)
    except ValueError as e:
        raise HTTPException(status_code=400, detail=str(e)) from e
    allowed = {h.strip().lower() for h in envs.get("VLLM_POC_CALLBACK_ALLOWED_HOSTS").split(",")}
    allowed.discard("")
    if config.callback_url and allowed:
        host = (urlsplit(config.callback_url).hostname or "").lower()
        if host not in allowed:
            raise HTTPException(
                status_code=400,
                detail=f"callback host {host!r} is not in VLLM_POC_CALLBACK_ALLOWED_HOSTS",
            )
    return config


def _ok(manager: Any) -> dict[str, Any]:
    return {"status": "OK", "pow_status": manager.get_status()}


def _transition(action: Callable[[], None]) -> None:
    """Run a state change; refused transitions and impossible configs answer 400."""
    try:
        action()
    except (RuntimeError, ValueError) as e:
        raise HTTPException(status_code=400, detail=str(e)) from e


def _require_node(config: PoCConfig) -> None:
    if not config.has_node:
        raise HTTPException(status_code=400, detail="Node ID and node count must be set")


@router.post("/init")
async def init_round(request: Request, body: PoCInitRequest) -> dict[str, Any]:
    """Initialize a round without starting generation."""
    manager = get_poc_manager(request)
    if manager.state == PoCState.GENERATING:
        raise HTTPException(status_code=400, detail="Round already in progress")
    config = await _create_config(manager, body)
    _transition(lambda: manager.init_round(config))
    return _ok(manager)


@router.post("/init/generate")
async def init_generate(request: Request, body: PoCInitRequest) -> dict[str, Any]:
    """Initialize a round and start generating."""
    manager = get_poc_manager(request)
    if manager.state == PoCState.GENERATING:
        raise HTTPException(status_code=400, detail="Round already in progress")
    config = await _create_config(manager, body)
    _require_node(config)
    _transition(lambda: manager.init_round(config))
    _transition(manager.start_generate)
    return _ok(manager)


@router.post("/init/validate")
async def init_validate(request: Request, body: PoCInitRequest) -> dict[str, Any]:
    """Initialize a round and start validating."""
    manager = get_poc_manager(request)
    if manager.state == PoCState.GENERATING:
        raise HTTPException(status_code=400, detail="Round already in progress")
    config = await _create_config(manager, body)
    _transition(lambda: manager.init_round(config))
    _transition(manager.start_validate)
    return _ok(manager)


@router.post("/phase/generate")
async def start_generate(request: Request) -> dict[str, Any]:
    """Switch the initialized round to generation."""
    manager = get_poc_manager(request)
    if manager.config is None:
        raise HTTPException(status_code=400, detail="PoC not initialized")
    _require_node(manager.config)
    _transition(manager.start_generate)
    return _ok(manager)


@router.post("/phase/validate")
async def start_validate(request: Request) -> dict[str, Any]:
    """Switch the initialized round to validation."""
    manager = get_poc_manager(request)
    if manager.config is None:
        raise HTTPException(status_code=400, detail="PoC not initialized")
    _transition(manager.start_validate)
    return _ok(manager)


@router.post("/stop")
async def stop_round(request: Request) -> dict[str, Any]:
    manager = get_poc_manager(request)
    manager.stop_round()
    return _ok(manager)


@router.get("/status", response_model=PoCStatusResponse)
async def get_status(request: Request) -> PoCStatusResponse:
    manager = get_poc_manager(request)
    return PoCStatusResponse(**manager.get_status())


@router.post("/validate", response_model=PoCValidateResponse)
async def validate_nonces(request: Request, body: ProofBatchRequest) -> PoCValidateResponse:
    """Recompute the distances of a submitted ProofBatch and judge it."""
    manager = get_poc_manager(request)
    if manager.config is None:
        raise HTTPException(status_code=400, detail="No round configured")
    if manager.config.block_hash != body.block_hash:
        raise HTTPException(status_code=400, detail="Block hash mismatch")
    limit = envs.get("VLLM_POC_MAX_VALIDATE_NONCES")
    if len(body.nonces) > limit:
        raise HTTPException(
            status_code=413,
            detail=f"{len(body.nonces)} nonces exceed VLLM_POC_MAX_VALIDATE_NONCES={limit}",
        )
    try:
        batch = ProofBatch(**body.model_dump())
    except ValueError as e:
        raise HTTPException(status_code=400, detail=str(e)) from e
    try:
        verdict = await manager.validate_batch(batch)
    except RuntimeError as e:
        raise HTTPException(status_code=400, detail=str(e)) from e
    except Exception as e:
        logger.exception("vllm-poc: validation of %d nonces failed", len(batch))
        raise HTTPException(
            status_code=503, detail=f"validation failed in the engine: {type(e).__name__}: {e}"
        ) from e
    v = to_json_dict(verdict)
    return PoCValidateResponse(
        nonces=v["nonces"],
        distances=v["dist"],
        valid=[d < verdict.r_target for d in verdict.dist],
        n_invalid=v["n_invalid"],
        probability_honest=v["probability_honest"],
        fraud_detected=v["fraud_detected"],
    )


class CalibrateRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    block_hash: Annotated[str, Field(min_length=1)]
    public_key: Annotated[str, Field(min_length=1)] = "calibration"
    valid_rate: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    n_samples: Annotated[int, Field(ge=1)] = 256
    batch_size: Annotated[int, Field(ge=1)] | None = None
    seq_len: Annotated[int, Field(ge=1)] = Field(
        default_factory=lambda: envs.get("VLLM_POC_SEQ_LEN")
    )
    random_projection: bool = False


@router.post("/calibrate")
async def calibrate(request: Request, body: CalibrateRequest) -> dict[str, Any]:
    """Sample a block's distance distribution; the r_target giving ``valid_rate`` valid nonces.

    With trained weights the distribution moves from block to block, so a fixed r_target can
    give anything from 1% to 99% valid nonces. Does not change the round's state.
    """
    manager = get_poc_manager(request)
    limit = envs.get("VLLM_POC_MAX_CALIBRATION_SAMPLES")
    if body.n_samples > limit:
        raise HTTPException(
            status_code=413,
            detail=f"n_samples {body.n_samples} exceeds VLLM_POC_MAX_CALIBRATION_SAMPLES={limit}",
        )
    batch_size = await _batch_size(manager, body.batch_size, body.seq_len)
    try:
        config = PoCConfig(
            block_hash=body.block_hash,
            block_height=0,
            public_key=body.public_key,
            r_target=1.0,
            batch_size=batch_size,
            seq_len=body.seq_len,
            random_projection=body.random_projection,
        )
    except ValueError as e:
        raise HTTPException(status_code=400, detail=str(e)) from e
    try:
        return await manager.calibrate(config, body.n_samples, body.valid_rate)
    except (RuntimeError, ValueError) as e:
        raise HTTPException(status_code=400, detail=str(e)) from e
    except Exception as e:
        raise _engine_failure(e, "calibration", f"of {body.n_samples} nonces") from e


@router.get("/version")
async def version(request: Request) -> dict[str, Any]:
    """Versions of the plugin, the protocol math and vLLM, the model, and enabled options."""
    from vllm_poc import __version__, compat, gpu_random

    manager = get_poc_manager(request)
    return {
        "plugin_version": __version__,
        "protocol_version": gpu_random.PROTOCOL_VERSION,
        "vllm_version": compat.vllm_version(),
        "model": manager.model_name,
        "options": {
            "random_projection": True,
            "inference_during_validation": bool(envs.get("VLLM_POC_INFERENCE_DURING_VALIDATION")),
            "callbacks": True,
            "auth": bool(_api_keys(request)),
        },
    }


# ---------------------------------------------------------------------- inference blocking

BLOCKED_PREFIXES = ("/v1/", "/v2/", "/inference/")
BLOCKED_PATHS = frozenset({"/invocations", "/pooling", "/classify", "/score", "/rerank"})


def is_inference_route(route: Any) -> bool:
    """POST routes that run the model for a client (OpenAI API and vLLM's own)."""
    if not isinstance(route, Route) or "POST" not in (route.methods or ()):
        return False
    return route.path.startswith(BLOCKED_PREFIXES) or route.path in BLOCKED_PATHS


def blocking_states() -> frozenset[PoCState]:
    """GENERATING always blocks; VALIDATING unless the operator lets inference run then."""
    if envs.get("VLLM_POC_INFERENCE_DURING_VALIDATION"):
        return frozenset({PoCState.GENERATING})
    return frozenset({PoCState.GENERATING, PoCState.VALIDATING})


ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _guarded(inner: ASGIApp, app: FastAPI) -> ASGIApp:
    async def guard(scope: dict[str, Any], receive: Any, send: Any) -> None:
        manager = getattr(app.state, "poc_manager", None)
        if manager is not None and manager.state in blocking_states():
            body = {
                "error": {
                    "message": f"PoC in progress ({manager.state.value}); inference is paused",
                    "type": "ServiceUnavailable",
                    "code": 503,
                }
            }
            response = JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
            await response(scope, receive, send)
            return
        await inner(scope, receive, send)

    guard.__wrapped__ = inner  # type: ignore[attr-defined]
    return guard


def guard_inference_routes(app: FastAPI) -> list[str]:
    """Make every inference route answer 503 while a round generates or validates.

    Wraps each route's ASGI handler instead of adding middleware, which vLLM >= 0.32 forbids
    once the app is built. Returns the guarded paths.
    """
    guarded = []
    for route in app.router.routes:
        if is_inference_route(route) and not hasattr(route.app, "__wrapped__"):
            route.app = _guarded(route.app, app)
            guarded.append(route.path)
    return guarded


def _pow_guarded(inner: ASGIApp) -> ASGIApp:
    """Check the key and the declared body size before the route reads or parses the body.

    vLLM's exception handlers would drop the ``WWW-Authenticate`` header, and FastAPI parses the
    body before running the router's dependencies; answering here avoids both.
    """

    async def guard(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            request = Request(scope)
            _check_api_key(request)
            _check_declared_size(request)
        except HTTPException as e:
            body = {
                "error": {"message": e.detail, "type": "PoCRequestRefused", "code": e.status_code}
            }
            await JSONResponse(body, status_code=e.status_code, headers=e.headers)(
                scope, receive, send
            )
            return
        await inner(scope, receive, send)

    guard.__wrapped__ = inner  # type: ignore[attr-defined]
    return guard


def attach(app: FastAPI) -> list[str]:
    """Add the PoC router (auth and size checked before parsing) and inference blocking."""
    app.include_router(router)
    for route in app.router.routes:
        if (
            isinstance(route, Route)
            and route.path.startswith(router.prefix)
            and not hasattr(route.app, "__wrapped__")
        ):
            route.app = _pow_guarded(route.app)
    return guard_inference_routes(app)


__all__ = ["attach", "guard_inference_routes", "router"]
