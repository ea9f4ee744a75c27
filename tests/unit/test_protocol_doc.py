"""Every test vector written in ``docs/protocol.md`` equals what the code computes: the document
an independent validator reads cannot drift from the package."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from vllm_poc.protocol import distance, randomness, validation

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _inputs(block: str, key: str, nonce: int, seq_len: int, hidden: int) -> torch.Tensor:
    return distance.generate_inputs(block, key, [nonce], hidden, seq_len)[0]


def _distance(block: str, key: str, nonce: int, logits: list[float]) -> float:
    row = torch.tensor([logits], dtype=torch.float32)
    perm = distance.generate_permutations(block, key, [nonce], len(logits))
    target = distance.generate_target(block, len(logits))
    return float(distance.compute_distances(row, perm, target)[0])


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "seed": randomness.seed_from_string,
    "H": lambda indices, seed: randomness.murmur_hash(torch.tensor(indices), seed),
    "U": randomness.uniforms,
    "N": randomness.normals,
    "inputs": _inputs,
    "permutation": lambda block, key, nonce, vocab: distance.generate_permutations(
        block, key, [nonce], vocab
    )[0],
    "target": lambda block, vocab: distance.generate_target(block, vocab),
    "distance": _distance,
    "P_pre": lambda block, hidden: distance.generate_projection(block, "pre", hidden),
    "P_post": lambda block, hidden: distance.generate_projection(block, "post", hidden),
    "project_inputs": lambda block, key, nonce, seq_len, hidden: distance.apply_projection(
        _inputs(block, key, nonce, seq_len, hidden),
        distance.generate_projection(block, "pre", hidden),
    ),
    "probability_honest": lambda mismatches, n, p_mismatch=validation.PROBABILITY_MISMATCH: (
        validation.fraud_test(mismatches, n, 0.01, p_mismatch).probability_honest
    ),
    "mismatch": validation.is_mismatch,
    "seeds8": randomness.seeds_x8_from_string,
    "strong_inputs": lambda block, key, nonce, seq_len, hidden: distance.generate_inputs(
        block, key, [nonce], hidden, seq_len, seed_derivation="strong"
    )[0],
}
EXACT = {"seed", "H", "permutation", "seeds8", "mismatch"}


def _vectors() -> list[tuple[str, str, list[Any], dict[str, Any], Any]]:
    blocks = re.findall(r"```vectors\n(.*?)```", DOC.read_text(), re.S)
    assert blocks, f"no vectors block in {DOC}"
    out = []
    for line in blocks[0].strip().splitlines():
        call, _, expected = line.partition(" = ")
        node = ast.parse(call, mode="eval").body
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name), line
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        out.append((line, node.func.id, args, kwargs, ast.literal_eval(expected)))
    return out


VECTORS = _vectors()


def test_every_function_of_the_document_is_covered() -> None:
    assert {name for _, name, *_ in VECTORS} == set(FUNCTIONS)


@pytest.mark.parametrize(
    ("line", "name", "args", "kwargs", "expected"), VECTORS, ids=[v[0][:60] for v in VECTORS]
)
def test_vector(
    line: str, name: str, args: list[Any], kwargs: dict[str, Any], expected: Any
) -> None:
    got = FUNCTIONS[name](*args, **kwargs)
    if isinstance(got, torch.Tensor):
        got = got.tolist()
    if name in EXACT:
        assert got == expected
    else:
        torch.testing.assert_close(
            torch.tensor(got, dtype=torch.float64),
            torch.tensor(expected, dtype=torch.float64),
            rtol=0,
            atol=1e-6,
        )
