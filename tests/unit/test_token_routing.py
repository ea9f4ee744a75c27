"""Which models get pseudo token ids (``worker.token_routing``): a 2-D integer table on a MoE
gate and a model type on the network's list; such a table elsewhere is refused; every other
model gets no ids at all."""

from __future__ import annotations

import torch
from torch import nn

from vllm_poc.protocol.token_ids import pseudo_token_ids
from vllm_poc.work import Work
from vllm_poc.worker.forward import PoCForward
from vllm_poc.worker.token_routing import TokenRouting, routing_tables

VOCAB = 50


class _Moe(nn.Module):
    def __init__(self, table: torch.Tensor | None) -> None:
        super().__init__()
        self.gate = nn.Linear(4, 8, bias=False)
        if table is not None:
            self.gate.tid2eid = nn.Parameter(table, requires_grad=False)
        self.gate.register_buffer("counts", torch.zeros(8, dtype=torch.int64))  # 1-D: not a table


class _Model(nn.Module):
    def __init__(self, table: torch.Tensor | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Moe(table), _Moe(None)])


TABLE = torch.randint(0, 8, (VOCAB, 2), dtype=torch.int32)
WORK = Work("artifacts", "hash", "key", (3, 11), 6)


def test_a_gate_table_on_the_list_gets_the_protocols_ids() -> None:
    routing = TokenRouting.of(_Model(TABLE), "deepseek_v4", VOCAB)
    assert routing.refusal is None
    ids = routing.ids(WORK, torch.device("cpu"))
    assert ids is not None and ids.dtype == torch.int32
    assert torch.equal(ids, pseudo_token_ids("hash", "key", [3, 11], 6, VOCAB).view(-1))


def test_a_gate_table_off_the_list_is_refused_by_name() -> None:
    routing = TokenRouting.of(_Model(TABLE), "qwen3_moe", VOCAB)
    assert routing.vocab_size is None
    assert routing.refusal is not None
    assert "layers.0.gate.tid2eid" in routing.refusal and "qwen3_moe" in routing.refusal


def test_other_models_get_no_ids() -> None:
    for model in (_Model(None), _Model(TABLE.float())):
        assert routing_tables(model) == []
        routing = TokenRouting.of(model, "deepseek_v4", VOCAB)
        assert routing == TokenRouting() and routing.ids(WORK, torch.device("cpu")) is None


def test_a_forward_of_another_model_gets_no_ids_at_all() -> None:
    """``input_ids`` stay absent (None), so every other model's results are unchanged."""
    forward = PoCForward.__new__(PoCForward)
    forward.device = torch.device("cpu")
    forward.inputs = lambda work: torch.zeros(len(work.nonces) * work.seq_len, 4)
    forward.routing = TokenRouting()
    assert set(forward.nonce_inputs(WORK)) == {"inputs"}
    forward.routing = TokenRouting(vocab_size=VOCAB)
    made = forward.nonce_inputs(WORK)
    assert made["token_ids"].shape == (len(WORK.nonces) * WORK.seq_len,)
