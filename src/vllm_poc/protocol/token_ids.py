"""Pseudo token ids: what a token-id-routed MoE model (DeepSeek-V4) gets as ``input_ids`` beside
the PoC forward's ``inputs_embeds``.

Such a model picks the experts of its first layers by token id (``gate.tid2eid[id]``), and a
PoC row has no tokens; the network fixes ids per nonce so that the experts vary from nonce to
nonce and every validator recomputes the same ones (docs/protocol.md, "Token-id-routed
models"). The ids are not embedded: the embeddings stay those of ``inputs``. They depend on
neither the layer, the batch, the rank nor the inputs' seed derivation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vllm_poc.protocol.randomness import inputs_string, murmur_hash, seed_from_string

TOKEN_ROUTED_MODEL_TYPES = frozenset({"deepseek_v4"})
"""Model types whose integer routing table the network has given pseudo ids for; a model with
such a table and another type is refused (wrong ids would be silently wrong artifacts)."""


def pseudo_ids_seed(block_hash: str, public_key: str, nonce: int) -> int:
    """``seed32(block_hash + "_" + public_key + "_nonce" + nonce + "_input_ids")``."""
    return seed_from_string(inputs_string(block_hash, public_key, nonce) + "_input_ids")


def pseudo_token_ids(
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    seq_len: int,
    vocab_size: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``id[n, t] = H(t, seed_n) mod vocab_size``: int32 of shape ``[len(nonces), seq_len]``,
    rows in the order of ``nonces`` (flattened, the order of the forward's rows)."""
    if seq_len < 1 or vocab_size < 1:
        raise ValueError(f"seq_len and vocab_size must be >= 1, got {seq_len}, {vocab_size}")
    seeds = torch.tensor(
        [pseudo_ids_seed(block_hash, public_key, n) for n in nonces], dtype=torch.int64
    ).to(device)
    positions = torch.arange(seq_len, device=device)
    hashes = murmur_hash(positions.unsqueeze(0), seeds.unsqueeze(1))
    return hashes.remainder_(vocab_size).to(torch.int32)
