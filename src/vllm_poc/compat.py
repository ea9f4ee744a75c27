"""Every vLLM-version-specific lookup of the plugin, in one place.

Supported releases and their seams (checked by ``tests/compat``):

- API server: the ``vllm.endpoint_plugins`` group (>= 0.26, loaded when ``VLLM_PLUGINS`` names
  the plugin); otherwise ``build_app`` and ``init_app_state`` are called from the globals of
  ``vllm.entrypoints.launchers.api_server.entry`` (>= 0.29) or
  ``vllm.entrypoints.openai.api_server`` (<= 0.28, which ``python -m`` runs as ``__main__``).
- Attention metadata of one group: ``group.build_metadata(...)`` (0.32) or
  ``group.get_metadata_builder().build(...)`` (0.26).
- Data-parallel engines: ``engine_client.engine_core.core_engines`` (their ZMQ identities) and
  ``engine_core._call_utility_async(..., engine=identity)``.
- ``CommonAttentionMetadata``: 0.26 also needs ``_seq_lens_cpu`` and ``_num_computed_tokens_cpu``.

Functions here take and return plain objects; nothing else in the package imports vLLM
internals directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch

API_SERVER_MODULES = (
    "vllm.entrypoints.launchers.api_server.entry",  # >= 0.29
    "vllm.entrypoints.openai.api_server",  # <= 0.28 (a mere re-export from 0.29 on)
)
"""Modules whose globals ``build_app`` and ``init_app_state`` are called from, newest first."""

APP_SEAMS = ("build_app", "init_app_state")


class SeamNotFound(RuntimeError):
    """A vLLM seam the plugin needs is missing from this release: PoC cannot run."""

    def __init__(self, seam: str, detail: str) -> None:
        super().__init__(
            f"vllm-poc: VLLM_POC_ENABLED is set but {seam} was not found in vLLM "
            f"{vllm_version()} ({detail}); refusing to serve without PoC. Install a supported "
            "vLLM release (see the README) or unset VLLM_POC_ENABLED."
        )
        self.seam = seam


def vllm_version() -> str:
    import vllm

    return getattr(vllm, "__version__", "unknown")


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


# ---------------------------------------------------------------- worker side


def layer_kv_caches(vllm_config: Any) -> dict[str, torch.Tensor]:
    """The engine's KV-cache tensor of every attention layer, by layer name."""
    caches = {}
    for name, layer in vllm_config.compilation_config.static_forward_context.items():
        kv = getattr(layer, "kv_cache", None)
        if isinstance(kv, list | tuple):  # one tensor per virtual engine in older releases
            kv = kv[0] if kv else None
        if isinstance(kv, torch.Tensor) and kv.numel() > 0:
            caches[name] = kv
    return caches


@contextlib.contextmanager
def swapped_kv_caches(vllm_config: Any, replacement: dict[str, torch.Tensor]) -> Iterator[None]:
    """Point the named layers at other KV tensors for the duration of the block."""
    context = vllm_config.compilation_config.static_forward_context
    saved = {name: context[name].kv_cache for name in replacement}
    try:
        for name, tensor in replacement.items():
            old = saved[name]
            context[name].kv_cache = [tensor] * len(old) if isinstance(old, list) else tensor
        yield
    finally:
        for name, old in saved.items():
            context[name].kv_cache = old


def group_block_size(model_runner: Any, group_id: int, groups: list[Any]) -> int:
    if groups and getattr(groups[0], "kernel_block_size", None):
        raise NotImplementedError("vllm-poc: attention groups with kernel block sizes")
    spec = model_runner.kv_cache_config.kv_cache_groups[group_id].kv_cache_spec
    return int(spec.block_size)


def common_attn_metadata(
    batch: int,
    seq_len: int,
    block_table: torch.Tensor,
    slot_mapping: torch.Tensor,
    positions: torch.Tensor,
    device: torch.device,
) -> Any:
    """``CommonAttentionMetadata`` for ``batch`` independent causal prefills of ``seq_len``."""
    from vllm.v1.attention.backend import CommonAttentionMetadata

    query_start_loc_cpu = torch.arange(batch + 1, dtype=torch.int32) * seq_len
    seq_lens_cpu = torch.full((batch,), seq_len, dtype=torch.int32)
    values = dict(
        query_start_loc=query_start_loc_cpu.to(device),
        query_start_loc_cpu=query_start_loc_cpu,
        seq_lens=seq_lens_cpu.to(device),
        num_reqs=batch,
        num_actual_tokens=batch * seq_len,
        max_query_len=seq_len,
        max_seq_len=seq_len,
        block_table_tensor=block_table,
        slot_mapping=slot_mapping,
        causal=True,
        positions=positions,
        is_prefilling=torch.ones(batch, dtype=torch.bool, device=device),
        seq_lens_cpu_upper_bound=seq_lens_cpu,
        # <= 0.26
        _seq_lens_cpu=seq_lens_cpu,
        _num_computed_tokens_cpu=torch.zeros(batch, dtype=torch.int32),
    )
    names = {f.name for f in dataclasses.fields(CommonAttentionMetadata)}
    return CommonAttentionMetadata(**{k: v for k, v in values.items() if k in names})


def build_group_metadata(group: Any, common: Any) -> Any:
    if hasattr(group, "build_metadata"):  # >= 0.32
        return group.build_metadata(common)
    return group.get_metadata_builder().build(common_prefix_len=0, common_attn_metadata=common)


def forward_context(attn_metadata: Any, vllm_config: Any, **kwargs: Any) -> Any:
    from vllm.forward_context import set_forward_context

    accepted = inspect.signature(set_forward_context).parameters
    if "skip_compiled" not in accepted and kwargs.get("skip_compiled"):
        raise RuntimeError("this vLLM cannot run the model uncompiled (no skip_compiled)")
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return set_forward_context(attn_metadata, vllm_config, **kwargs)


def run_model(
    model_runner: Any, model: Any, positions: torch.Tensor, inputs_embeds: torch.Tensor
) -> torch.Tensor | None:
    """Run the model's forward on this pipeline stage; None on all but the last stage."""
    from vllm.distributed.parallel_state import get_pp_group, get_tp_group
    from vllm.sequence import IntermediateTensors

    pp = get_pp_group()
    intermediate = None
    if not pp.is_first_rank:
        received = pp.recv_tensor_dict(all_gather_group=get_tp_group())
        intermediate = IntermediateTensors(received)
    out = model(
        input_ids=None,
        positions=positions,
        intermediate_tensors=intermediate,
        inputs_embeds=inputs_embeds if pp.is_first_rank else None,
    )
    if not pp.is_last_rank:
        pp.send_tensor_dict(out.tensors, all_gather_group=get_tp_group())
        return None
    return out


# ---------------------------------------------------------------- API server side


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
