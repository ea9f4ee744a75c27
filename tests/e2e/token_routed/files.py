"""The tiny token-routed model's folder: the tiny Qwen3-MoE with layer 0's MoE replaced by a
token-routed one (``token_routed_model.HashRoutedMoe``: gate, ``gate.tid2eid``, experts)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..derived_models import derived_model

ARCHITECTURE = "PocTokenRoutedMoeForCausalLM"
FIRST = "model.layers.0.mlp."
HASH_EXPERTS = 16
"""Experts of the token-routed layer (choose 2): enough that a token's id nearly always
decides which experts run."""
FOLDER = Path(__file__).parent
"""Put on a process's ``PYTHONPATH``: its ``sitecustomize`` registers the architecture."""


def make_token_routed_model(out_dir: Path) -> Path:
    """Write the model to ``out_dir`` (reused when complete); returns the path."""
    return derived_model(out_dir, _route_layer_zero_by_id, architecture="qwen3-moe")


def _route_layer_zero_by_id(base: Path, _: Path) -> None:
    config = json.loads((base / "config.json").read_text())
    config.update(
        architectures=[ARCHITECTURE], mlp_only_layers=[0], hash_layer_experts=HASH_EXPERTS
    )
    (base / "config.json").write_text(json.dumps(config, indent=2))
    kept = load_file(base / "model.safetensors").items()
    weights = {k: v for k, v in kept if not k.startswith(FIRST)}
    weights.update(_first_layer(config))
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})


def _first_layer(config: dict) -> dict[str, torch.Tensor]:
    """Random weights with a clear effect: which experts run changes the layer's output."""
    g = torch.Generator().manual_seed(1)
    experts, hidden = config["hash_layer_experts"], config["hidden_size"]
    inner, top_k = config["moe_intermediate_size"], config["num_experts_per_tok"]
    vocab = config["vocab_size"]

    def normal(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    return {
        FIRST + "gate.weight": normal(experts, hidden, std=0.1),
        FIRST + "gate.tid2eid": torch.stack(
            [torch.randperm(experts, generator=g)[:top_k] for _ in range(vocab)]
        ).to(torch.int32),
        FIRST + "w_gate": normal(experts, inner, hidden, std=0.3),
        FIRST + "w_up": normal(experts, inner, hidden, std=0.3),
        FIRST + "w_down": normal(experts, hidden, inner, std=0.3),
    }
