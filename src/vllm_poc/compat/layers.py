"""Which layer kinds the PoC forward computes, judged from the model runner's KV-cache groups
and its layers' caches: a kind it does not compute is refused by name, never computed wrong."""

from __future__ import annotations

from typing import Any

from vllm_poc.compat.base import vllm_version
from vllm_poc.compat.releases import minor_number
from vllm_poc.compat.worker import current_cache

SUPPORTED_KV_SPECS = (
    "FullAttentionSpec",
    "MLAAttentionSpec",
    "SlidingWindowSpec",
    "SlidingWindowMLASpec",
    "MambaSpec",
)
"""KV-cache kinds the PoC forward computes (exact class names; subclasses such as sink or
circular-buffer attention change what a kernel reads and are refused until tested). A
``MambaSpec`` only of the kind ``recurrent_refusal`` accepts.

DeepSeek-V4's kinds are among them: its sliding-window cache (``SlidingWindowMLASpec``), its
compressor states (the same class, a few tokens per block) and its compressed and indexer
caches (``MLAAttentionSpec`` holding one entry per ``tokens_per_state`` tokens). Like vLLM's
model runner, the PoC forward addresses every group in tokens, in blocks of the group's
builder's size, and the compressed layers' kernels divide by the ratio themselves."""

RECURRENT_FROM = (0, 32)
"""The first release whose Mamba metadata keeps a sequence's first chunk a prefill whatever its
length, so the PoC forward's recurrent layers start from a zero state (the one release the
suite runs them on; earlier ones refuse them)."""


def recurrent_refusal(spec: Any, version: str) -> str | None:
    """Why a recurrent layer of ``spec`` cannot run PoC here (None: it can).

    Every sequence of a PoC batch is a first prefill: the kernels start from a zero state and
    write the final state into the sequence's own slots of the scratch (``batch_shape``), with
    prefix caching of the state (``align``, vLLM's default with prefix caching) or without it
    (``none``). Tested end to end: Mamba-2 mixers, no speculative decoding."""
    mamba_type = getattr(spec, "mamba_type", "unknown")
    kind = getattr(mamba_type, "name", str(mamba_type)).upper()
    if kind != "MAMBA2":
        return f"recurrent layers of kind {kind} are not tested yet"
    if getattr(spec, "mamba_cache_mode", "none") not in ("none", "align"):
        return f"mamba_cache_mode {spec.mamba_cache_mode!r}"
    if getattr(spec, "num_speculative_blocks", 0):
        return "speculative decoding state blocks"
    if minor_number(version) < RECURRENT_FROM:
        return f"recurrent layers run PoC on vLLM >= {'.'.join(map(str, RECURRENT_FROM))}"
    return None


def holds_state(spec: Any) -> bool:
    """The KV-cache group of ``spec`` holds a recurrent state per sequence, not tokens."""
    return type(spec).__name__ == "MambaSpec"


def unsupported_layers(model_runner: Any) -> list[str]:
    """What in this model the PoC forward cannot compute, one line per kind (empty: none).

    Judged from the KV-cache groups (cross- or encoder-only attention, recurrent kinds
    ``recurrent_refusal`` turns down, ...) and from the layers' caches (a tuple of state
    tensors where no recurrent group names the layer).
    """
    context = model_runner.vllm_config.compilation_config.static_forward_context
    kinds: dict[str, list[str]] = {}
    covered: set[str] = set()
    for group in model_runner.kv_cache_config.kv_cache_groups:
        per_layer = getattr(group.kv_cache_spec, "kv_cache_specs", None) or dict.fromkeys(
            group.layer_names, group.kv_cache_spec
        )
        for name, spec in per_layer.items():
            kind = type(spec).__name__
            why = None if kind in SUPPORTED_KV_SPECS else ""
            if holds_state(spec):
                why = recurrent_refusal(spec, vllm_version())
            if why is not None or holds_state(spec):
                covered.add(name)  # its group explains it: not reported again as a state tuple
            if why is not None:
                layer = type(context[name]).__name__ if name in context else "layer"
                label = f"{layer} ({kind}{': ' + why if why else ''})"
                kinds.setdefault(label, []).append(name)
    for name, layer in context.items():
        state = isinstance(current_cache(getattr(layer, "kv_cache", None)), tuple)
        if state and name not in covered:
            kinds.setdefault(f"{type(layer).__name__} (state tuple)", []).append(name)
    return [
        f"{kind}: {len(names)} layer(s), e.g. {names[0]}" for kind, names in sorted(kinds.items())
    ]
