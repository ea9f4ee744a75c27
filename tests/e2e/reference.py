"""An independent reference for PoC distances: transformers' model in float32, plain torch math.

Written from docs/protocol.md without the plugin's forward or distance code. Only the
random parts (inputs, permutations, target) come from ``vllm_poc.protocol.distance``, whose own unit
tests pin them to the spec's test vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, partial
from pathlib import Path

import torch

from vllm_poc.protocol.distance.math import generate_permutations, generate_target
from vllm_poc.protocol.inputs import generate_inputs
from vllm_poc.protocol.token_ids import TOKEN_ROUTED_MODEL_TYPES


@lru_cache(maxsize=2)
def load_model(model_dir: str, config: tuple[tuple[str, object], ...] = ()) -> torch.nn.Module:
    """The model folder loaded by transformers in float32, eval mode, eager attention;
    ``config`` overrides entries of its config (to show what a setting changes)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", **dict(config)
    )
    return model.eval()


def last_logits(
    model_dir: Path | str,
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    seq_len: int,
    seed_derivation: str = "v1",
    config: tuple[tuple[str, object], ...] = (),
) -> torch.Tensor:
    """Float32 full-vocabulary logits at the last position of each nonce's sequence."""
    model = load_model(str(model_dir), config)
    hidden = model.config.hidden_size
    # The server feeds bf16 inputs to a bf16 model: round the inputs the same way.
    embeds = generate_inputs(
        block_hash,
        public_key,
        list(nonces),
        hidden,
        seq_len,
        dtype=torch.bfloat16,
        seed_derivation=seed_derivation,
    ).float()
    rows = []
    with torch.no_grad():
        for i in range(len(nonces)):  # each nonce its own sequence: no padding, no batching
            positions = torch.arange(seq_len).unsqueeze(0)
            out = model(inputs_embeds=embeds[i : i + 1], position_ids=positions, use_cache=False)
            rows.append(out.logits[0, -1].float())
    return torch.stack(rows)


def distances_from_logits(
    logits: torch.Tensor, block_hash: str, public_key: str, nonces: Sequence[int]
) -> list[float]:
    """``|| normalize(logits[perm]) - target ||`` per nonce, spelled out in plain torch ops."""
    vocab = logits.shape[1]
    perms = generate_permutations(block_hash, public_key, list(nonces), vocab)
    target = generate_target(block_hash, vocab).float()
    out = []
    for row, perm in zip(logits, perms, strict=True):
        x = row.float()[perm]  # x[j] = logits[perm[j]]
        x = x / torch.sqrt(torch.sum(x * x))
        out.append(float(torch.sqrt(torch.sum((x - target) ** 2))))
    return out


def reference_distances(
    model_dir: Path | str,
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    seq_len: int,
    seed_derivation: str = "v1",
    config: tuple[tuple[str, object], ...] = (),
) -> list[float]:
    """The distance of each nonce, computed independently of the plugin."""
    logits = last_logits(
        model_dir, block_hash, public_key, nonces, seq_len, seed_derivation, config
    )
    return distances_from_logits(logits, block_hash, public_key, nonces)


class TokenRoutedMoe(torch.nn.Module):
    """Layer 0 of the token-routed test model, from its weights: the experts of a token are
    ``tid2eid[token_id]``, weighted by ``sqrt(softplus(logits))`` renormalized (DeepSeek-V4's
    hash layers); ``ids`` is set before each forward."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.w = {k: v if k.endswith("tid2eid") else v.float() for k, v in weights.items()}
        self.ids: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.ids is not None
        flat = x.reshape(-1, x.shape[-1])
        chosen = self.w["gate.tid2eid"][self.ids.reshape(-1).long()].long()
        logits = flat @ self.w["gate.weight"].t()
        weights = torch.nn.functional.softplus(logits).sqrt().gather(1, chosen)
        weights = weights / weights.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for token in range(flat.shape[0]):
            for slot, e in enumerate(chosen[token].tolist()):
                h = flat[token]
                act = torch.nn.functional.silu(self.w["w_gate"][e] @ h) * (self.w["w_up"][e] @ h)
                out[token] += weights[token, slot] * (self.w["w_down"][e] @ act)
        return out.reshape(x.shape)


def _token_routed_layer(model_dir: str, model: torch.nn.Module) -> TokenRoutedMoe | None:
    """Layer 0 replaced by ``TokenRoutedMoe`` where the folder holds a token-routed layer 0."""
    from safetensors.torch import load_file

    first = model.model.layers[0]
    if not hasattr(first, "mlp"):  # no MLP of that name (Granite's hybrid layers): not routed
        return None
    if isinstance(first.mlp, TokenRoutedMoe):
        return first.mlp
    prefix = "model.layers.0.mlp."
    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    if prefix + "gate.tid2eid" not in weights:
        return None
    first.mlp = TokenRoutedMoe(
        {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    )
    return first.mlp


def reference_artifacts(
    model_dir: Path | str,
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    seq_len: int,
    token_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[n, 12]`` float32 artifacts: transformers in float32 with ``x - 2 (w . x) w`` applied to
    every decoder layer's output, then the protocol's artifact math (pinned by its vectors).
    ``token_ids`` (``[n, seq_len]``): what routes a token-routed model's layer 0, or, for a
    model transformers routes by id itself (DeepSeek-V4's hash layers), its forward's ids."""
    from vllm_poc.protocol.artifact import math as artifact

    model = load_model(str(model_dir))
    routed = _token_routed_layer(str(model_dir), model)
    native = model.config.model_type in TOKEN_ROUTED_MODEL_TYPES
    assert (routed is None and not native) == (token_ids is None), "ids go with a routed model"
    layers = model.model.layers
    hidden = model.config.hidden_size
    vectors = artifact.layer_vectors(block_hash, list(range(len(layers))), hidden)

    def hook(w: torch.Tensor, module: torch.nn.Module, args: object, output: object) -> object:
        x = output[0] if isinstance(output, tuple) else output
        y = x - 2 * (x @ w).unsqueeze(-1) * w
        return (y, *output[1:]) if isinstance(output, tuple) else y

    embeds = generate_inputs(
        block_hash, public_key, list(nonces), hidden, seq_len, dtype=torch.bfloat16
    ).float()
    handles = [
        layer.register_forward_hook(partial(hook, w))
        for layer, w in zip(layers, vectors, strict=True)
    ]
    row = 0
    if native:  # the model takes ids or embeds: it gets the ids, its embedding gives our rows
        embedding = model.model.embed_tokens
        handles.append(embedding.register_forward_hook(lambda *_: embeds[row : row + 1]))
    try:
        with torch.no_grad():
            rows = []
            for row in range(len(nonces)):
                if routed is not None and token_ids is not None:
                    routed.ids = token_ids[row]
                inputs = (
                    {"input_ids": token_ids[row : row + 1].long()}
                    if native and token_ids is not None
                    else {"inputs_embeds": embeds[row : row + 1]}
                )
                out = model.model(
                    **inputs, position_ids=torch.arange(seq_len).unsqueeze(0), use_cache=False
                )
                rows.append(out.last_hidden_state[0, -1])
    finally:
        for handle in handles:
            handle.remove()
    return artifact.artifacts(torch.stack(rows), block_hash, public_key, list(nonces)).float()


def l2_with_and_without_ids(
    engine: torch.Tensor,
    model_dir: Path | str,
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    seq_len: int,
    vocab_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per nonce, the L2 of the engine's artifacts to the reference fed the pseudo token ids
    and to the reference fed id 0 everywhere (what a node that drops the ids computes); and
    the ids."""
    from vllm_poc.protocol.token_ids import pseudo_token_ids

    ids = pseudo_token_ids(block_hash, public_key, list(nonces), seq_len, vocab_size)
    runs = [
        reference_artifacts(model_dir, block_hash, public_key, nonces, seq_len, given)
        for given in (ids, torch.zeros_like(ids))
    ]
    with_ids, dropped = ((engine - ref).norm(dim=1) for ref in runs)
    return with_ids, dropped, ids
