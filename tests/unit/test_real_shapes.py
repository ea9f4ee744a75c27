"""The real shapes the GPU benchmarks run (``tiny_model.REAL_SHAPES``): each config-only folder is
a model vLLM resolves to the intended architecture, with the published sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm.engine.arg_utils import EngineArgs

from vllm_poc.testing.tiny_model import DENSE_SHAPES, REAL_SHAPES, make_tiny_model

EXPECTED = {
    "0.6b": ("Qwen3ForCausalLM", 28, None),
    "8b": ("Qwen3ForCausalLM", 36, None),
    "30b-a3b": ("Qwen3MoeForCausalLM", 48, (128, 8)),
}
"""architecture, layers, (experts, experts per token) of each shape."""


def test_every_shape_is_named_here() -> None:
    assert sorted(REAL_SHAPES) == sorted(EXPECTED)
    dense = [name for name, (_, _, moe) in EXPECTED.items() if moe is None]
    assert dense == DENSE_SHAPES


@pytest.mark.parametrize("shape", sorted(EXPECTED))
def test_vllm_reads_the_shape_as_published(shape: str, tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / shape, shape=shape)
    config = EngineArgs(
        model=str(model), load_format="dummy", max_model_len=1024
    ).create_model_config()
    architecture, layers, moe = EXPECTED[shape]
    assert config.architectures == [architecture]
    assert config.hf_config.num_hidden_layers == layers
    assert config.dtype.is_floating_point and str(config.dtype) == "torch.bfloat16"
    if moe is not None:
        assert (config.hf_config.num_experts, config.hf_config.num_experts_per_tok) == moe
