"""vLLM seams of the worker processes: KV caches, attention metadata, the forward context and
the model's forward on each pipeline stage."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch


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


def weight_digests(model: torch.nn.Module) -> dict[str, str]:
    """sha256 of every parameter's bytes, by name: vLLM's own ``compute_tensor_digests``
    (0.32 and later, which also opens quantised tensor subclasses), else the same digest over
    ``named_parameters``, so that both give one fingerprint for plain weights."""
    try:
        from vllm.model_executor.model_loader.weight_checksum import compute_tensor_digests
    except ImportError:
        return {
            name: hashlib.sha256(_raw_bytes(param)).hexdigest()
            for name, param in model.named_parameters()
        }
    return compute_tensor_digests(model)


def _raw_bytes(tensor: torch.Tensor) -> Any:
    return tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()


@contextlib.contextmanager
def graph_capture(device: torch.device) -> Iterator[Any]:
    """vLLM's ``graph_capture`` (it readies the tensor-parallel all-reduce for CUDA graphs);
    yields the stream to capture on."""
    from vllm.distributed.parallel_state import graph_capture as vllm_graph_capture

    with vllm_graph_capture(device) as context:
        yield context.stream


def compiled_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules that vLLM compiles (``@support_torch_compile`` with compilation on)."""
    return [m for m in model.modules() if getattr(m, "do_not_compile", True) is False]
