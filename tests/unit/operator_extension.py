"""An operator's own ``--worker-extension-cls``, for the tests that combine it with ours."""

from __future__ import annotations

QUALNAME = f"{__name__}.OperatorExtension"


class OperatorExtension:
    """Stands for an extension an operator already runs vLLM with."""

    def operator_ping(self) -> str:
        return "pong"
