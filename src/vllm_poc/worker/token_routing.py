"""Token-id-routed MoE models: which ones they are, and the pseudo token ids their PoC forward
gets beside the input embeddings.

DeepSeek-V4 picks the experts of its first layers by token id through an integer table on the
gate (``gate.tid2eid[vocab, top_k]``); a PoC row has no tokens, so the network fixes pseudo ids
per nonce (``protocol.token_ids``). A model is token-routed when a MoE gate carries a 2-D
integer parameter or buffer AND its model type is on the network's list; such a table on a
model off the list is refused (computing it with wrong ids would be silently wrong). Every
other model keeps ``input_ids`` absent, so its results are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_poc.protocol import token_ids
from vllm_poc.work import Work

INTEGER_DTYPES = (torch.int32, torch.int64)


def routing_tables(model: torch.nn.Module) -> list[str]:
    """Names of the 2-D integer tensors held by the model's MoE gates (router modules)."""
    found = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf != "gate" and "Gate" not in type(module).__name__:
            continue
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        found += [
            f"{name}.{t_name}"
            for t_name, t in tensors
            if t is not None and t.dim() == 2 and t.dtype in INTEGER_DTYPES
        ]
    return found


@dataclass(frozen=True)
class TokenRouting:
    """How a model's PoC forward gets token ids: ``vocab_size`` when it needs pseudo ids,
    ``refusal`` when it has routing tables the network gave no ids for."""

    vocab_size: int | None = None
    refusal: str | None = None

    @classmethod
    def of(cls, model: torch.nn.Module, model_type: str, vocab_size: int) -> TokenRouting:
        tables = routing_tables(model)
        if not tables:
            return cls()
        known = token_ids.TOKEN_ROUTED_MODEL_TYPES
        if model_type in known:
            return cls(vocab_size=vocab_size)
        return cls(
            refusal=(
                f"MoE gates route by token id ({', '.join(tables[:3])}) and model type "
                f"{model_type!r} has no pseudo token ids in the protocol (known: "
                f"{', '.join(sorted(known))})"
            )
        )

    def ids(self, work: Work, device: torch.device) -> torch.Tensor | None:
        """Flat ``[batch * seq_len]`` int32 pseudo ids of ``work``, nonce-major as the rows of
        its inputs; None for a model that routes by hidden state alone."""
        if self.vocab_size is None:
            return None
        ids = token_ids.pseudo_token_ids(
            work.block_hash, work.public_key, work.nonces, work.seq_len, self.vocab_size, device
        )
        return ids.view(-1)
