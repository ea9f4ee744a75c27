"""A batch over the token budget runs in several forwards (``PoCForward.in_forwards``): the
same last hidden states as one forward, each forward within ``VLLM_POC_MAX_TOKENS_PER_FORWARD``
and vLLM's ``max_num_batched_tokens``."""

from __future__ import annotations

import pytest
import torch

from vllm_poc.worker.forward import PoCForward

SEQ_LEN, HIDDEN = 8, 4


def _forward(max_batched_tokens: int) -> PoCForward:
    forward = PoCForward.__new__(PoCForward)
    forward.max_compiled_tokens = max_batched_tokens
    return forward


def _last_rows(inputs: torch.Tensor, rows: int) -> torch.Tensor:
    """A stand-in for the model: each sequence's last row, doubled."""
    return inputs.view(rows, SEQ_LEN, HIDDEN)[:, -1] * 2


@pytest.mark.parametrize(
    ("budget", "batched", "sizes"),
    [(100, 10_000, [12, 12, 1]), (10_000, 40, [5, 5, 5, 5, 5]), (10_000, 10_000, [25])],
    ids=["the operator's budget", "vLLM's token budget", "fits in one"],
)
def test_the_rows_are_those_of_one_forward(
    monkeypatch: pytest.MonkeyPatch, budget: int, batched: int, sizes: list[int]
) -> None:
    monkeypatch.setenv("VLLM_POC_MAX_TOKENS_PER_FORWARD", str(budget))
    forward = _forward(batched)
    batch = 25
    inputs = torch.randn(batch * SEQ_LEN, HIDDEN)
    token_ids = torch.arange(batch * SEQ_LEN, dtype=torch.int32)
    seen: list[int] = []

    def run(part: torch.Tensor, rows: int, ids: torch.Tensor | None) -> torch.Tensor:
        assert part.shape == (rows * SEQ_LEN, HIDDEN)
        assert ids is not None and ids.shape == (rows * SEQ_LEN,)
        first = sum(seen) * SEQ_LEN
        assert torch.equal(ids, token_ids[first : first + rows * SEQ_LEN]), "ids follow their rows"
        seen.append(rows)
        return _last_rows(part, rows)

    got = forward.in_forwards(inputs, batch, SEQ_LEN, run, token_ids)
    assert seen == sizes
    assert torch.equal(got, _last_rows(inputs, batch))


def test_ranks_without_hidden_states_answer_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_POC_MAX_TOKENS_PER_FORWARD", "16")
    inputs = torch.randn(5 * SEQ_LEN, HIDDEN)
    assert _forward(10_000).in_forwards(inputs, 5, SEQ_LEN, lambda part, rows, ids: None) is None


def test_a_sequence_longer_than_the_budget_still_runs_alone(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VLLM_POC_MAX_TOKENS_PER_FORWARD", "4")
    assert _forward(10_000).rows_per_forward(SEQ_LEN) == 1
