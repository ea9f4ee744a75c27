"""The rule that sizes a round's batch when the request leaves it to the server."""

import pytest
import torch

from vllm_poc.worker import auto_batch


def test_bytes_per_nonce_counts_scratch_inputs_and_vocabulary_math():
    # Qwen3-0.6B shape in bf16, seq_len 256, one layer's K/V (1 KiB per token) of scratch.
    per_nonce = auto_batch.bytes_per_nonce(256, 1024, 151936, 2, 256 * 1024)
    assert per_nonce == 256 * 1024 + 256 * 1024 * (2 + 8) + 151936 * (2 + 4 + 8 + 12)


@pytest.mark.parametrize(
    ("token_budget", "seq_len", "free", "per_nonce", "expected"),
    [
        (8192, 256, 10**12, 10**6, 32),  # the token budget binds
        (8192, 100, 10**12, 10**6, 81),  # no rounding to powers of two
        (10**6, 256, 10 * 2**20, 2**20, 8),  # memory binds: 80% of 10 MiB at 1 MiB a nonce
        (100, 256, 10**12, 10**6, 1),  # never below one nonce
        (8192, 256, 0, 10**6, 1),
    ],
)
def test_choose_batch_size(token_budget, seq_len, free, per_nonce, expected):
    assert auto_batch.choose_batch_size(token_budget, seq_len, free, per_nonce) == expected


def test_free_memory_of_the_cpu_is_positive():
    assert auto_batch.free_memory_bytes(torch.device("cpu")) > 0
