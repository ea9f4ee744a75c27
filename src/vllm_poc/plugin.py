"""The ``vllm.general_plugins`` entry point.

vLLM calls ``register()`` in every process it starts (API server, engine core, workers),
possibly more than once. It must be cheap, idempotent, never raise and never touch CUDA.
"""

from __future__ import annotations

import logging

from vllm_poc import envs

logger = logging.getLogger(__name__)


def register() -> None:
    """Do nothing unless ``VLLM_POC_ENABLED`` is true."""
    try:
        if not envs.enabled():
            return
    except Exception:
        logger.exception("vllm-poc: could not read VLLM_POC_ENABLED; the plugin stays off")
        return
