"""How the HTTP side enters vLLM's API server: the ``vllm.endpoint_plugins`` contract.

vLLM (>= 0.26) calls ``attach_router`` inside ``build_app`` and ``init_state`` at the end of
``init_app_state`` when ``VLLM_PLUGINS`` names ``vllm_poc``. Otherwise the ``api-server-app``
patch of ``vllm_poc.patches`` calls the same two functions, ``attach_http`` and
``init_manager``, from the same places.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from fastapi import FastAPI

from vllm_poc import compat, envs
from vllm_poc.compat.releases import RELEASES, release_of
from vllm_poc.log import get_logger, said_at_load
from vllm_poc.server import guards, protocols
from vllm_poc.server.engines import Engines
from vllm_poc.server.errors import EngineFailure
from vllm_poc.server.fingerprint import WeightsFingerprint

logger = get_logger(__name__)


def attach_http(app: FastAPI) -> None:
    """Add the PoC routes and pause inference routes during PoC."""
    paused = protocols.attach(app)
    logger.info("vllm-poc: added /api/v1/pow routes; paused during PoC: %s", ", ".join(paused))


async def init_manager(engine_client: Any, state: Any, args: Any = None) -> None:
    """Create the round manager, after checking that every worker has the PoC extension.

    Raises at start when they do not: a server asked to run PoC never serves without it.
    """
    if getattr(state, "poc_manager", None) is not None:
        return
    args = args or getattr(state, "args", None)
    servers = getattr(args, "api_server_count", None) or 1
    if servers > 1:
        raise RuntimeError(
            f"vllm-poc: --api-server-count {servers} with VLLM_POC_ENABLED: a node's PoC state "
            "lives in one API server process; run it with one (the default)"
        )
    engines = Engines.of(engine_client)
    try:
        await engines.ready()
    except EngineFailure as e:
        raise compat.SeamNotFound(
            "the PoC worker extension", f"the workers do not answer poc_ready: {e}"
        ) from e
    if release_of(compat.vllm_version()) is None:
        logger.warning(
            "vllm-poc: vLLM %s is not a supported release (%s to %s, see the README); its seams "
            "were found but have not been checked by the contract tests",
            compat.vllm_version(),
            RELEASES[0].minor,
            RELEASES[-1].minor,
        )
    model_config = await compat.model_config(engine_client)
    unsupported = await engines.unsupported()
    if unsupported:
        logger.error(
            "vllm-poc: this model cannot run PoC (%s); PoC requests answer 422, inference is "
            "served",
            "; ".join(unsupported),
        )
    served = sorted({compat.served_model_name(model_config), str(model_config.model)})
    state.poc_manager = protocols.make_node(engines, model_config, served, unsupported)
    warn_if_open(getattr(args, "host", None))
    state.poc_weights = WeightsFingerprint(engines)
    state.poc_weights.start()
    state.poc_forward_compiled = poc_forward_compiled(compat.engine_vllm_config(engine_client))
    logger.info(
        "vllm-poc: PoC manager ready (vLLM %s), data-parallel ranks %s of %d, PoC forward %s",
        compat.vllm_version(),
        engines.ranks,
        engines.dp_size,
        "compiled" if state.poc_forward_compiled else "eager",
    )
    if said_at_load():
        logger.info("vllm-poc: at plugin load in this API server: %s", "; ".join(said_at_load()))


def warn_if_open(host: str | None) -> None:
    """Say once, at start, when anyone who reaches the server may drive its PoC routes."""
    if guards.open_on(host):
        logger.warning(
            "vllm-poc: /api/v1/pow/* is open to every client that reaches %s (no "
            "VLLM_POC_API_KEY, no VLLM_POC_ALLOWED_CLIENTS): set either to close it",
            host or "all interfaces",
        )


def poc_forward_compiled(vllm_config: Any) -> bool:
    """Whether the workers' PoC forward runs a compiled model (``worker.compiled``)."""
    if not compat.compiles_model(vllm_config):
        return False
    return bool(vllm_config.model_config.enable_prompt_embeds) or envs.VLLM_POC_COMPILED_FORWARD


class PoCEndpointPlugin:
    """The ``vllm.endpoint_plugins`` entry point (vLLM's ``EndpointPlugin`` protocol)."""

    name = "vllm_poc"
    required_tasks = ("generate",)
    """PoC runs the model's logits: servers without generation (render-only, pooling) skip it."""

    def attach_router(self, app: FastAPI) -> None:
        if not envs.enabled():
            logger.warning("vllm-poc: VLLM_PLUGINS names vllm_poc but VLLM_POC_ENABLED is off")
            return
        attach_http(app)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        if not envs.enabled():
            return
        if engine_client is None:
            raise RuntimeError("vllm-poc: this server has no engine; PoC cannot run here")
        await init_manager(engine_client, state, args)
