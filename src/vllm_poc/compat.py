"""Every vLLM-version-specific lookup of the plugin, in one place.

Supported releases and their seams (checked by ``tests/compat``):

- API server: ``build_app`` and ``init_app_state`` are called from the globals of
  ``vllm.entrypoints.launchers.api_server.entry`` (0.32) or ``vllm.entrypoints.openai.api_server``
  (0.26, which ``python -m`` runs as ``__main__``).
- Attention metadata of one group: ``group.build_metadata(...)`` (0.32) or
  ``group.get_metadata_builder().build(...)`` (0.26).
- ``CommonAttentionMetadata``: 0.26 also needs ``_seq_lens_cpu`` and ``_num_computed_tokens_cpu``.

Functions here take and return plain objects; nothing else in the package imports vLLM
internals directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch

API_SERVER_MODULES = (
    "vllm.entrypoints.launchers.api_server.entry",  # 0.32
    "vllm.entrypoints.openai.api_server",  # <= 0.26 (also re-exports in 0.32, unused there)
)
"""Modules whose globals ``build_app`` and ``init_app_state`` are called from, newest first."""


def vllm_version() -> str:
    import vllm

    return getattr(vllm, "__version__", "unknown")


def api_server_module() -> ModuleType | None:
    """The loaded module that serves HTTP by calling ``build_app`` then ``init_app_state``.

    ``python -m vllm.entrypoints.openai.api_server`` runs that module as ``__main__`` in old
    releases, so ``__main__`` counts when its spec names one of the modules.
    """
    main = sys.modules.get("__main__")
    main_name = getattr(getattr(main, "__spec__", None), "name", None)
    if getattr(main, "__name__", None) == "__mp_main__":
        main_name = None  # a spawned child re-imports the server module; it serves nothing
    # ``__main__`` counts only if it calls the seams itself: in 0.32 it merely re-exports them.
    if main_name in API_SERVER_MODULES and _has_app_seams(main) and _calls_seams(main):
        return main
    for name in API_SERVER_MODULES:
        module = sys.modules.get(name)
        if module is not None and _has_app_seams(module) and _calls_seams(module):
            return module
    return None


def _has_app_seams(module: Any) -> bool:
    return callable(getattr(module, "build_app", None)) and callable(
        getattr(module, "init_app_state", None)
    )


def _calls_seams(module: Any) -> bool:
    """True when the module itself builds the app (not a mere re-export, as in 0.32)."""
    serve = getattr(module, "build_and_serve", None) or getattr(module, "run_server_worker", None)
    if serve is None or getattr(serve, "__module__", None) != module.__name__:
        return False
    try:
        return "build_app" in inspect.getsource(serve)
    except (OSError, TypeError):
        return False


def declare_environment_variables(getters: dict[str, Any]) -> None:
    """Add names to vLLM's registry of environment variables (``vllm.envs``)."""
    import vllm.envs

    for name, getter in getters.items():
        vllm.envs.environment_variables.setdefault(name, getter)


def engine_args_class() -> type:
    from vllm.engine.arg_utils import EngineArgs

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
