"""The batch size of a round that leaves it to the server (``VLLM_POC_BATCH_SIZE=auto``).

Rule: the most nonces whose tokens fit the engine's own forward budget, and whose PoC-only
memory fits in ``HEADROOM`` of the device's free memory:

    batch = max(1, min(token_budget // seq_len, HEADROOM * free_bytes // bytes_per_nonce))

``token_budget`` is ``min(max_num_batched_tokens, VLLM_POC_MAX_TOKENS_PER_FORWARD)``. vLLM
profiled the forward's activation memory for ``max_num_batched_tokens`` tokens when it sized the
KV cache, and the compiled model covers up to that many, so a PoC forward within it needs no
activation memory beyond what vLLM reserved. What vLLM did not reserve is counted per nonce by
``bytes_per_nonce``: the scratch KV cache, the inputs, and the vocabulary-sized math.
"""

from __future__ import annotations

import torch

HEADROOM = 0.8
"""Share of the free memory a PoC batch may plan to use (allocator fragmentation, others)."""


def bytes_per_nonce(
    seq_len: int, hidden: int, vocab: int, dtype_bytes: int, scratch_kv_bytes: int
) -> int:
    """Memory one more nonce in a batch needs beyond vLLM's own reservations.

    ``scratch_kv_bytes``: the nonce's scratch KV cache. Inputs: the model-dtype embeddings plus
    two float32 copies when the random projection applies. Vocabulary math: the logits in the
    model dtype and in float32, the int64 permutation, and three float32 rows of the distance.
    """
    inputs = seq_len * hidden * (dtype_bytes + 8)
    vocab_math = vocab * (dtype_bytes + 4 + 8 + 3 * 4)
    return scratch_kv_bytes + inputs + vocab_math


def choose_batch_size(token_budget: int, seq_len: int, free_bytes: int, per_nonce: int) -> int:
    """The rule of the module docstring."""
    by_tokens = token_budget // seq_len
    by_memory = int(free_bytes * HEADROOM) // max(1, per_nonce)
    return max(1, min(by_tokens, by_memory))


def free_memory_bytes(device: torch.device) -> int:
    """Memory a new allocation on ``device`` can use: free plus the allocator's cached blocks."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    import psutil

    return int(psutil.virtual_memory().available)
