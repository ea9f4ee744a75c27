"""What can go wrong with a PoC request, one type per HTTP answer, and the one way an error
becomes an answer (``response``).

The nodes raise these; the routes turn them into a JSON answer themselves, never through vLLM's
exception handlers, which differ between releases and cannot take a structured ``detail``
(a dict or list there became a 400 "a bytes-like object is required"). Anything else escaping a
route is a bug (vLLM answers it with a JSON 500). The manager's original API raised
``RuntimeError`` for refused transitions and ``ValueError`` for impossible values; the types
below keep those bases, so its callers see what they expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi.responses import JSONResponse


class PoCRequestError(Exception):
    """Base: a request the node refuses or cannot serve."""

    status_code = 500
    headers: ClassVar[dict[str, str] | None] = None

    @property
    def detail(self) -> Any:
        """The body's ``detail``, shaped as the network's reference node shapes it."""
        return str(self)


class ForbiddenInState(PoCRequestError, RuntimeError):
    """The round's current state forbids this call (a second round while generating)."""

    status_code = 400


class BadValue(PoCRequestError, ValueError):
    """A value this server cannot run (beyond the model's length, the token budget, ...)."""

    status_code = 400


class MalformedBody(PoCRequestError, ValueError):
    """A body that is not JSON or not the request's shape: 400 on the distance API, 422 with
    pydantic's error list as ``detail`` on the artifact API (as the network's nodes answer)."""

    def __init__(
        self, status_code: int, errors: Sequence[dict[str, Any]] | str, listed: bool = False
    ) -> None:
        self.status_code = status_code
        self.errors = errors
        self.listed = listed and not isinstance(errors, str)
        if isinstance(errors, str):
            message = errors
        else:
            message = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', '')}"
                for e in errors
            )
        super().__init__(f"malformed body: {message}")

    @property
    def detail(self) -> Any:
        return list(self.errors) if self.listed else str(self)


class Unauthorized(PoCRequestError):
    """A PoC route called without the operator's ``VLLM_POC_API_KEY``."""

    status_code = 401
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class ForbiddenClient(PoCRequestError):
    """A client outside ``VLLM_POC_ALLOWED_CLIENTS``."""

    status_code = 403


class NotFound(PoCRequestError):
    status_code = 404


class TooLarge(PoCRequestError):
    """A request over one of the operator's limits."""

    status_code = 413


class Busy(PoCRequestError):
    """A queue of the node is full; the client may come back later."""

    status_code = 429


class EngineFailure(PoCRequestError, RuntimeError):
    """The engine failed, timed out or gave no answer."""

    status_code = 503


class Unsupported(PoCRequestError):
    """The served model has layers the PoC forward cannot compute (found at start); inference
    is served, PoC is refused before any work."""

    status_code = 422

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(
            "this model cannot run PoC: it has layers the PoC forward does not compute (it "
            f"computes full, MLA and sliding-window attention): {'; '.join(reasons)}"
        )


class Conflict(PoCRequestError):
    """A request made under other parameters than this node's round or model."""

    status_code = 409


class ParamsMismatch(Conflict):
    """``params.model`` is not this server's model: 409 with what was asked and what is served
    (the reference node's ``detail``)."""

    def __init__(self, requested: dict[str, Any], served: list[str]) -> None:
        super().__init__(
            f"params mismatch: model {requested.get('model')!r} is not served here "
            f"(served: {', '.join(served)})"
        )
        self._detail = {
            "error": "params mismatch",
            "requested": requested,
            "deployed": {"model": served, "seq_len": None, "k_dim": None},
        }

    @property
    def detail(self) -> Any:
        return self._detail


class BadBatches(EngineFailure):
    """Too many consecutive batches rejected as non-finite: the round stops with this error (a
    ``/generate`` answers 503 with it)."""


def response(error: PoCRequestError) -> JSONResponse:
    """The one HTTP answer of an error, on every vLLM release: its status, the reference node's
    ``detail``, and vLLM's ``error`` object whose ``message`` a person can read."""
    body = {
        "detail": error.detail,
        "error": {
            "message": str(error),
            "type": type(error).__name__,
            "code": error.status_code,
        },
    }
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)
