"""What guards the HTTP side: the PoC routes' clients, key and body size, and the inference
pause.

Applied by wrapping routes' ASGI handlers, not as middleware: vLLM >= 0.32 forbids adding
middleware once the app is built, and both ways of entering vLLM (the endpoint plugin and the
fallback patch) run after that.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import Route

from vllm_poc import envs
from vllm_poc.protocol import POW_PREFIX
from vllm_poc.server.errors import (
    ForbiddenClient,
    PoCRequestError,
    TooLarge,
    Unauthorized,
    response,
)
from vllm_poc.server.node import pausing
from vllm_poc.setting import networks


def api_key() -> str:
    """``VLLM_POC_API_KEY`` (empty: no key). vLLM's ``--api-key`` guards vLLM's own routes only:
    gonka's MLNode calls the PoC routes without one."""
    return str(envs.VLLM_POC_API_KEY)


def _check_api_key(scope: dict[str, Any]) -> None:
    """Refuse requests without the right ``Authorization: Bearer`` key (constant-time check)."""
    key = api_key()
    if not key:
        return
    given = Request(scope).headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
        raise Unauthorized("missing or wrong API key (Authorization: Bearer <key>)")


def _check_client(scope: dict[str, Any]) -> None:
    """Refuse clients outside ``VLLM_POC_ALLOWED_CLIENTS`` (empty: every client)."""
    allowed = networks(envs.VLLM_POC_ALLOWED_CLIENTS)
    if not allowed:
        return
    host = (scope.get("client") or ("", 0))[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not any(address in network for network in allowed):
        raise ForbiddenClient(f"client {host or '(unknown)'} is not in VLLM_POC_ALLOWED_CLIENTS")


def _check_size(size: int) -> None:
    limit = envs.VLLM_POC_MAX_BODY_BYTES
    if size > limit:
        raise TooLarge(f"body of {size} bytes exceeds VLLM_POC_MAX_BODY_BYTES={limit}")


async def _read_body(receive: Any) -> bytes:
    """The whole body of a request without a declared length, refused once over the limit."""
    limit = envs.VLLM_POC_MAX_BODY_BYTES
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            _check_size(size)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def open_on(host: str | None) -> bool:
    """Whether the PoC routes answer anyone who can reach ``host`` (no key, no allow-list, a
    host other than loopback)."""
    if api_key() or envs.VLLM_POC_ALLOWED_CLIENTS:
        return False
    try:
        return not ipaddress.ip_address(host or "0.0.0.0").is_loopback
    except ValueError:
        return host not in ("localhost",)


BLOCKED_PREFIXES = ("/v1/", "/v2/", "/inference/")
BLOCKED_PATHS = frozenset({"/invocations", "/pooling", "/classify", "/score", "/rerank"})


def is_inference_route(route: Any) -> bool:
    """POST routes that run the model for a client (OpenAI API and vLLM's own)."""
    if not isinstance(route, Route) or "POST" not in (route.methods or ()):
        return False
    return route.path.startswith(BLOCKED_PREFIXES) or route.path in BLOCKED_PATHS


ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _guarded(inner: ASGIApp, app: FastAPI) -> ASGIApp:
    async def guard(scope: dict[str, Any], receive: Any, send: Any) -> None:
        manager = getattr(app.state, "poc_manager", None)
        activity = None if manager is None else pausing(manager)
        if activity is not None:
            body = {
                "error": {
                    "message": f"PoC in progress ({activity}); inference is paused",
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
        if (
            isinstance(route, Route)
            and is_inference_route(route)
            and not hasattr(route.app, "__wrapped__")
        ):
            route.app = _guarded(route.app, app)  # type: ignore[assignment]
            guarded.append(route.path)
    return guarded


def _pow_guarded(inner: ASGIApp) -> ASGIApp:
    """The client, the key and the body size, checked before the route reads or parses the
    body; a refusal is answered here (``errors.response``), never by vLLM's handlers."""

    async def guard(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            _check_client(scope)
            _check_api_key(scope)
            declared = Request(scope).headers.get("content-length")
            if declared is not None and declared.isdigit():
                _check_size(int(declared))
            elif scope.get("method") in ("POST", "PUT"):
                receive = _replay(await _read_body(receive))
        except PoCRequestError as e:
            await response(e)(scope, receive, send)
            return
        await inner(scope, receive, send)

    guard.__wrapped__ = inner  # type: ignore[attr-defined]
    return guard


def _replay(body: bytes) -> Any:
    """A ``receive`` that hands the route the body read by the guard."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def guard_pow_routes(app: FastAPI) -> None:
    """Check key and declared size of every PoC route before it reads or parses the body."""
    for route in app.router.routes:
        if (
            isinstance(route, Route)
            and route.path.startswith(POW_PREFIX)
            and not hasattr(route.app, "__wrapped__")
        ):
            route.app = _pow_guarded(route.app)  # type: ignore[assignment]
