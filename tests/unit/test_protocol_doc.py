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

from vllm_poc.protocol import inputs, randomness, validation
from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.protocol.distance import math as distance

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _inputs(block: str, key: str, nonce: int, seq_len: int, hidden: int) -> torch.Tensor:
    return inputs.generate_inputs(block, key, [nonce], hidden, seq_len)[0]


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
    "strong_inputs": lambda block, key, nonce, seq_len, hidden: inputs.generate_inputs(
        block, key, [nonce], hidden, seq_len, seed_derivation="strong"
    )[0],
}


def _artifact(block: str, key: str, nonce: int, hidden: list[float] | torch.Tensor) -> str:
    row = torch.as_tensor(hidden, dtype=torch.float32).view(1, -1)
    return artifact.encode(artifact.artifacts(row, block, key, [nonce])[0])


def _fixed_hidden(row: int, hidden: int) -> torch.Tensor:
    i = torch.arange(hidden, dtype=torch.float64)
    return (torch.sin(1 + 0.01 * i + 0.7 * row) * (1 + (i % 7) / 10)).to(torch.float32)


def _artifact_mismatch(computed: str, received: str, dist_threshold: float) -> bool:
    mine = artifact.decode(computed)
    assert mine is not None
    return artifact.is_mismatch(mine, received, dist_threshold)


FUNCTIONS.update(
    {
        "layer_vector": lambda block, layer, hidden: artifact.layer_vectors(block, [layer], hidden)[
            0
        ],
        "reflect_bf16": lambda x, w: artifact.reflect(torch.tensor(x, dtype=torch.bfloat16), w),
        "coordinates": lambda block, key, nonce, hidden: artifact.coordinates(
            block, key, [nonce], hidden
        )[0],
        "artifact": _artifact,
        "decode": artifact.decode,
        "artifact_mismatch": _artifact_mismatch,
        "p_value": lambda mismatches, n, p_mismatch: (
            artifact.binomial_test(mismatches, n, p_mismatch).p_value
        ),
    }
)
HELPERS: dict[str, Callable[..., Any]] = {"fixed_hidden": _fixed_hidden}
"""Functions the vectors use inside arguments only."""
EXACT = {
    "seed",
    "H",
    "permutation",
    "seeds8",
    "mismatch",
    "reflect_bf16",
    "coordinates",
    "artifact",
    "artifact_mismatch",
}


def _evaluate(node: ast.expr) -> Any:
    """A literal, or a call of a documented function (a vector may use one in its arguments)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        function = {**FUNCTIONS, **HELPERS}[node.func.id]
        args = [_evaluate(a) for a in node.args]
        return function(*args, **{k.arg: _evaluate(k.value) for k in node.keywords})
    return ast.literal_eval(node)


def _vectors() -> list[tuple[str, str, list[ast.expr], dict[str, ast.expr], Any]]:
    text = DOC.read_text()
    blocks = re.findall(r"```(?:vectors|artifact-vectors)\n(.*?)```", text, re.S)
    assert len(blocks) == 2, f"expected the vectors of both protocols in {DOC}"
    out = []
    for line in "\n".join(b.strip() for b in blocks).splitlines():
        call, _, expected = line.partition(" = ")
        node = ast.parse(call, mode="eval").body
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name), line
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        out.append((line, node.func.id, node.args, kwargs, ast.literal_eval(expected)))
    return out


VECTORS = _vectors()


def test_every_function_of_the_document_is_covered() -> None:
    assert {name for _, name, *_ in VECTORS} == set(FUNCTIONS)


@pytest.mark.parametrize(
    ("line", "name", "args", "kwargs", "expected"), VECTORS, ids=[v[0][:60] for v in VECTORS]
)
def test_vector(
    line: str, name: str, args: list[ast.expr], kwargs: dict[str, ast.expr], expected: Any
) -> None:
    got = FUNCTIONS[name](*map(_evaluate, args), **{k: _evaluate(v) for k, v in kwargs.items()})
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
