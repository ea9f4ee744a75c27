"""The ``vllm.general_plugins`` entry point: what the plugin changes in vLLM, and when.

vLLM calls ``register()`` in every process it starts (API server, engine core, workers),
possibly more than once. It is cheap, idempotent, never raises, never touches CUDA, and does
nothing unless ``VLLM_POC_ENABLED`` is true. When enabled it applies two patches:

1. ``EngineArgs.create_engine_config``: the config it returns names the PoC worker extension
   (combined with the operator's ``--worker-extension-cls``, if any), so every worker gains the
   ``poc_*`` methods reached with ``collective_rpc``.
2. In the API server process only, ``build_app`` (adds the ``/api/v1/pow`` router and pauses
   inference routes during PoC) and ``init_app_state`` (creates the ``PoCManager``), wrapped in
   the module that calls them (``compat.api_server_module``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from vllm_poc import envs
from vllm_poc.log import get_logger

logger = get_logger(__name__)

_ORIGINAL = "__vllm_poc_original__"


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group."""
    try:
        _declare_settings()
        if not envs.enabled():
            return
        _patch_engine_config()
        _patch_api_server()
    except Exception:
        logger.exception("vllm-poc: registration failed; PoC is unavailable in this process")


def _patch(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``owner.name`` by ``make(original)`` once; later calls are no-ops."""
    original = getattr(owner, name)
    if hasattr(original, _ORIGINAL):
        return
    replacement = make(original)
    functools.update_wrapper(replacement, original)
    setattr(replacement, _ORIGINAL, original)
    setattr(owner, name, replacement)
    logger.info("vllm-poc: replaced %s.%s", getattr(owner, "__name__", owner), name)


def _declare_settings() -> None:
    """Tell vLLM our ``VLLM_POC_*`` variables exist, when any is set.

    vLLM warns about (or, with ``--fail-on-environ-validation``, refuses) unknown ``VLLM_*``
    variables.
    """
    if any(name in os.environ for name in envs.SETTINGS):
        from vllm_poc import compat

        compat.declare_environment_variables({n: s.get for n, s in envs.SETTINGS.items()})


def _patch_engine_config() -> None:
    from vllm_poc import compat

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
            from vllm_poc.worker import extension_qualname

            config = original(self, *args, **kwargs)
            parallel = config.parallel_config
            parallel.worker_extension_cls = extension_qualname(parallel.worker_extension_cls)
            return config

        return create_engine_config

    _patch(compat.engine_args_class(), "create_engine_config", make)


def _patch_api_server() -> None:
    from vllm_poc import compat

    module = compat.api_server_module()
    if module is None:
        return  # not the API server process

    def make_build_app(original: Callable[..., Any]) -> Callable[..., Any]:
        def build_app(*args: Any, **kwargs: Any) -> Any:
            from vllm_poc import routes

            app = original(*args, **kwargs)
            guarded = routes.attach(app)
            logger.info(
                "vllm-poc: added /api/v1/pow routes; paused during PoC: %s", ", ".join(guarded)
            )
            return app

        return build_app

    def make_init_app_state(original: Callable[..., Any]) -> Callable[..., Any]:
        async def init_app_state(engine_client: Any, *args: Any, **kwargs: Any) -> Any:
            from vllm_poc.manager import PoCManager

            result = await original(engine_client, *args, **kwargs)
            state = compat.find_app_state(args, kwargs)
            model_config = await compat.model_config(engine_client)
            state.poc_manager = PoCManager(
                engine_client,
                max_model_len=int(model_config.max_model_len),
                model_name=compat.served_model_name(model_config),
            )
            logger.info("vllm-poc: PoC manager ready (vLLM %s)", compat.vllm_version())
            return result

        return init_app_state

    _patch(module, "build_app", make_build_app)
    _patch(module, "init_app_state", make_init_app_state)
