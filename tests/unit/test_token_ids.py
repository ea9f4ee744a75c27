"""Pseudo token ids against the network's published vectors (bit for bit)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from vllm_poc.protocol import token_ids
from vllm_poc.protocol.token_ids import pseudo_ids_seed, pseudo_token_ids

VECTORS = json.loads((Path(__file__).parent / "data" / "moe-routing-vectors.json").read_text())


def _digest(ids: torch.Tensor) -> str:
    return hashlib.sha256(
        ids.to(torch.int32).contiguous().numpy().astype("<i4").tobytes()
    ).hexdigest()


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: f"n{c['nonce']}-s{c['seq_len']}")
def test_each_published_case(case: dict[str, Any]) -> None:
    seed = pseudo_ids_seed(case["block_hash"], case["public_key"], case["nonce"])
    assert seed == case["seed_u32"]
    ids = pseudo_token_ids(
        case["block_hash"], case["public_key"], [case["nonce"]], case["seq_len"], case["vocab_size"]
    )
    assert ids.dtype == torch.int32 and ids.shape == (1, case["seq_len"])
    row = ids[0].tolist()
    assert row[:16] == case["ids_head"] and row[-16:] == case["ids_tail"]
    assert _digest(ids) == case["sha256_int32_le"]


def test_a_batch_is_nonce_major() -> None:
    b = VECTORS["batch"]
    ids = pseudo_token_ids(
        b["block_hash"], b["public_key"], b["nonces"], b["seq_len"], b["vocab_size"]
    )
    assert ids.shape == (len(b["nonces"]), b["seq_len"])
    assert ids.flatten().tolist() == b["ids"]
    assert _digest(ids) == b["sha256_int32_le"]


def test_rows_do_not_depend_on_the_batch() -> None:
    alone = [pseudo_token_ids("h", "k", [n], 32, 1000) for n in (5, 9)]
    together = pseudo_token_ids("h", "k", [5, 9], 32, 1000)
    assert torch.equal(torch.cat(alone), together)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        pseudo_token_ids("h", "k", [0], 8, 0)


def test_importable_from_the_protocol_package() -> None:
    from vllm_poc import protocol

    assert protocol.pseudo_token_ids is token_ids.pseudo_token_ids
