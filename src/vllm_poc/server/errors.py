"""What can go wrong with a PoC request, one type per HTTP answer.

The manager raises these; the routes map them to a status code with the message. Anything else
escaping a route is a bug (vLLM answers it with a JSON 500). The manager's original API raised
``RuntimeError`` for refused transitions and ``ValueError`` for impossible values; the types
below keep those bases, so its callers see what they expect.
"""

from __future__ import annotations


class PoCRequestError(Exception):
    """Base: a request the node refuses or cannot serve."""

    status_code = 500


class ForbiddenInState(PoCRequestError, RuntimeError):
    """The round's current state forbids this call (a second round while generating)."""

    status_code = 400


class BadValue(PoCRequestError, ValueError):
    """A value this server cannot run (beyond the model's length, the token budget, ...)."""

    status_code = 400


class TooLarge(PoCRequestError):
    """A request over one of the operator's limits."""

    status_code = 413


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
