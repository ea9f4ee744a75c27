"""What guards the HTTP side: the PoC routes' key and body size, and the inference pause.

Applied by wrapping routes' ASGI handlers, not as middleware: vLLM >= 0.32 forbids adding
middleware once the app is built, and both ways of entering vLLM (the endpoint plugin and the
fallback patch) run after that.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.routing import Route

from vllm_poc import envs
from vllm_poc.protocol.round import PoCState
from vllm_poc.protocol.wire import POW_PREFIX


def api_keys(request: Request) -> list[str]:
    """VLLM_POC_API_KEY, else vLLM's own ``--api-key`` / ``VLLM_API_KEY``; empty: no auth."""
    own = envs.get("VLLM_POC_API_KEY")
    if own:
        return [own]
    args = getattr(request.app.state, "args", None)
    keys = getattr(args, "api_key", None) or os.environ.get("VLLM_API_KEY") or []
    return [k for k in ([keys] if isinstance(keys, str) else keys) if k]


def _check_api_key(request: Request) -> None:
    """Reject requests without the right ``Authorization: Bearer`` key (constant-time check)."""
    keys = api_keys(request)
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


def guard_pow_routes(app: FastAPI) -> None:
    """Check key and declared size of every PoC route before it reads or parses the body."""
    for route in app.router.routes:
        if (
            isinstance(route, Route)
            and route.path.startswith(POW_PREFIX)
            and not hasattr(route.app, "__wrapped__")
        ):
            route.app = _pow_guarded(route.app)
