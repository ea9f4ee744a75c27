"""Request bodies parsed into the protocols' pydantic models, by the routes themselves.

FastAPI's own parsing would answer malformed bodies through vLLM's exception handlers, which
differ between releases; a body the JSON parser cannot take (nested thousands deep) raised a
500 there. Here every such body is a ``MalformedBody`` with a message a person can read.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from vllm_poc.server.errors import MalformedBody

M = TypeVar("M", bound=BaseModel)


async def parsed(request: Request, model: type[M], status: int, listed: bool = False) -> M:
    """The body as ``model``; otherwise ``MalformedBody(status)`` (``listed``: pydantic's error
    list as the answer's ``detail``, as FastAPI gives it)."""
    try:
        data = json.loads(await request.body())
    except (ValueError, RecursionError) as e:
        reason = "nested too deep" if isinstance(e, RecursionError) else str(e)
        raise MalformedBody(status, f"body is not JSON: {reason}") from e
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_context=False, include_input=False)
        raise MalformedBody(status, [dict(error) for error in errors], listed) from e


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI description of a body that a route parses itself (``openapi_extra``)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
