"""The ledger of every change the plugin makes to vLLM objects: what, why, when it can go.

A patch replaces one attribute by a wrapper of the original, logs "replaced", and is applied at
most once per process (a second ``apply`` is a no-op, a foreign wrapper is never stacked on
ours). Official seams come first: a patch exists only where vLLM offers no contract.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vllm_poc import compat
from vllm_poc.log import get_logger, info_at_load

logger = get_logger(__name__)

_ORIGINAL = "__vllm_poc_original__"

Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclass(frozen=True)
class Patch:
    name: str
    target: str
    why: str
    removal: str
    wanted: Callable[[], bool]
    """Whether this process needs the patch."""
    owners: Callable[[], list[Any]]
    """The objects whose attribute is replaced (``compat.SeamNotFound`` when missing)."""
    wrappers: dict[str, Wrapper]
    """Attribute name -> ``make(original) -> replacement``."""

    def apply(self) -> None:
        for owner in self.owners():
            for attribute, make in self.wrappers.items():
                replace(owner, attribute, make, self.name)


def replace(owner: Any, attribute: str, make: Wrapper, patch: str) -> None:
    """Replace ``owner.attribute`` by ``make(original)`` once; later calls are no-ops."""
    original = getattr(owner, attribute)
    if hasattr(original, _ORIGINAL):
        return
    replacement = make(original)
    functools.update_wrapper(replacement, original)
    setattr(replacement, _ORIGINAL, original)
    setattr(owner, attribute, replacement)
    owner_name = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", "?")
    info_at_load(logger, "vllm-poc: patch %s replaced %s.%s", patch, owner_name, attribute)


def original(function: Callable[..., Any]) -> Callable[..., Any]:
    """The function a patch replaced (the function itself if unpatched)."""
    return getattr(function, _ORIGINAL, function)


def _engine_config_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        from vllm_poc.worker.extension import extension_qualname

        config = original(self, *args, **kwargs)
        parallel = config.parallel_config
        parallel.worker_extension_cls = extension_qualname(parallel.worker_extension_cls)
        return config

    return create_engine_config


def _build_app_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def build_app(*args: Any, **kwargs: Any) -> Any:
        from vllm_poc.server import endpoint

        app = original(*args, **kwargs)
        endpoint.attach_http(app)
        return app

    return build_app


def _init_app_state_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    async def init_app_state(engine_client: Any, *args: Any, **kwargs: Any) -> Any:
        from vllm_poc.server import endpoint

        result = await original(engine_client, *args, **kwargs)
        await endpoint.init_manager(engine_client, compat.find_app_state(args, kwargs))
        return result

    return init_app_state


WORKER_EXTENSION = Patch(
    name="worker-extension",
    target="vllm.engine.arg_utils.EngineArgs.create_engine_config",
    why=(
        "vLLM mixes extra worker methods in only through ParallelConfig.worker_extension_cls "
        "(--worker-extension-cls); setting it here keeps the operator's command to one "
        "environment variable, and keeps an extension class the operator set"
    ),
    removal=(
        "when every supported release lets a general plugin add worker methods itself "
        "(vLLM 0.33's init_worker_extension), use that seam on those releases"
    ),
    wanted=lambda: True,
    owners=lambda: [compat.engine_args_class()],
    wrappers={"create_engine_config": _engine_config_wrapper},
)

API_SERVER_APP = Patch(
    name="api-server-app",
    target="build_app and init_app_state, in the module of vLLM's API server that calls them",
    why=(
        "vLLM < 0.26 has no vllm.endpoint_plugins group, and later releases load endpoint "
        "plugins only when VLLM_PLUGINS names them; VLLM_POC_ENABLED=1 alone must add the routes"
    ),
    removal=(
        "when the oldest supported release has endpoint plugins and operators name vllm_poc in "
        "VLLM_PLUGINS (or vLLM loads endpoint plugins that a general plugin enables)"
    ),
    wanted=lambda: compat.is_api_server_process() and not compat.endpoint_plugins_load("vllm_poc"),
    owners=compat.api_server_modules,
    wrappers={"build_app": _build_app_wrapper, "init_app_state": _init_app_state_wrapper},
)

PATCHES = (WORKER_EXTENSION, API_SERVER_APP)
"""Applied in this order by ``plugin.register`` when PoC is enabled."""


@dataclass(frozen=True)
class ScopedChange:
    """A change to vLLM objects that lasts one PoC call (or wraps a route) and is undone or
    inert for everything else; declared here beside the patches so that the ledger is whole."""

    name: str
    target: str
    where: str
    """``module:function`` of the plugin that makes it."""
    why: str
    removal: str


SCOPED_CHANGES = (
    ScopedChange(
        name="scratch-kv-cache",
        target="each attention layer's kv_cache in the forward context",
        where="vllm_poc.compat.worker:swapped_kv_caches",
        why=(
            "the PoC forward writes K/V into a private zeroed tensor, so the engine's KV and "
            "prefix caches are never touched; vLLM has no per-call KV cache argument"
        ),
        removal="when vLLM's forward takes KV caches per call (none planned upstream)",
    ),
    ScopedChange(
        name="compiled-poc-forward",
        target="forward of the model's top-level modules (instance attribute)",
        where="vllm_poc.worker.compiled:EmbedsGraph.active",
        why=(
            "vLLM's compiled graph is traced with token ids; PoC feeds inputs_embeds, so its own "
            "graph of the same modules runs for PoC calls only"
        ),
        removal="when vLLM compiles an inputs_embeds graph beside the token-id graph",
    ),
    ScopedChange(
        name="layer-reflections",
        target="forward of every decoder layer (instance attribute)",
        where="vllm_poc.worker.reflections:Reflections.installed",
        why=(
            "the artifact protocol reflects each layer's output; vLLM has no per-layer hook "
            "that torch.compile traces into one graph"
        ),
        removal="when vLLM offers traced per-layer output hooks",
    ),
    ScopedChange(
        name="inference-pause",
        target="the ASGI app of each inference route (route.app)",
        where="vllm_poc.server.guards:guard_inference_routes",
        why=(
            "inference answers 503 while a round generates; vLLM >= 0.32 forbids middleware "
            "once the app is built"
        ),
        removal="when vLLM lets a plugin add middleware or pause serving through a contract",
    ),
)
"""Changes that are not patches: made around one PoC call, or on our own route wrappers."""
