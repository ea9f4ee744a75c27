"""``GET /api/v1/pow/versions``: what the node runs, for gonka's MLNode and for the operator.

MLNode (since chain v0.2.14) reads ``vllm_version`` and ``poc_validation_inference`` once per
backend; the latter must be true for DAPI to keep routing inference to a node while it
validates (a 404 reads as false).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from vllm_poc import __version__, compat, envs
from vllm_poc.server import guards
from vllm_poc.setting import networks


def of(request: Request, node: Any) -> dict[str, Any]:
    """The versions and what follows from the node's settings."""
    weights = getattr(request.app.state, "poc_weights", None)
    allowed = networks(envs.VLLM_POC_ALLOWED_CLIENTS)
    return {
        "vllm_version": compat.vllm_version(),
        "poc_validation_inference": envs.inference_during_validation(),
        "vllm_poc_version": __version__,
        "protocol": envs.VLLM_POC_PROTOCOL,
        "models": node.served_models,
        "weights": weights.figures() if weights else None,
        "compiled_poc_forward": bool(getattr(request.app.state, "poc_forward_compiled", False)),
        "unsupported": node.unsupported,
        "auth": {"api_key": bool(guards.api_key()), "allowed_clients": [str(n) for n in allowed]},
    }
