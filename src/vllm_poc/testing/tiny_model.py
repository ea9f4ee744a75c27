"""A tiny random-weight Qwen3 model folder that vLLM and transformers load offline.

The end-to-end tests cannot download a model, so they make one: a 2-layer Qwen3 (hidden 128,
head_dim 64, vocab 512, bf16) with weights from ``torch.manual_seed(0)`` and a byte-level BPE
tokenizer trained here with the ``tokenizers`` library.

``architecture`` picks another family in the same spirit: ``qwen3-moe`` (4 experts, 2 per
token), ``deepseek-v2`` (MLA attention with the 576-wide latent cache vLLM's CPU kernels take,
one dense and one MoE layer), ``mistral-swa`` (sliding-window attention over 4 tokens) or
``granite-hybrid`` (a Mamba-2 layer and an attention layer: a hybrid with recurrent state).

With ``shape="0.6b"`` or ``shape="8b"`` it writes instead the same tokenizer and the
``config.json`` of a real Qwen3 shape, without weights: load it with ``load_format="dummy"``
(random weights made by vLLM), so nothing big is written to disk (``benchmarks/bench_poc.py``).

Usage: ``python -m vllm_poc.testing.tiny_model DIR [--shape 0.6b|8b]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MODEL_SHAPE = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "intermediate_size": 256,
    "tie_word_embeddings": False,
}
REAL_SHAPES: dict[str, dict[str, object]] = {
    "0.6b": {
        "vocab_size": 151936,
        "hidden_size": 1024,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 3072,
        "tie_word_embeddings": True,
    },
    "8b": {
        "vocab_size": 151936,
        "hidden_size": 4096,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 12288,
        "tie_word_embeddings": False,
    },
    "30b-a3b": {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "tie_word_embeddings": False,
    },
}
"""Real shapes that ``make_tiny_model(dir, shape=...)`` writes as a config only: Qwen3 dense,
and the Qwen3-MoE shape of Qwen3-30B-A3B (a shape with ``num_experts`` is a Qwen3-MoE)."""
DENSE_SHAPES = [name for name, shape in REAL_SHAPES.items() if "num_experts" not in shape]
"""The shapes whose FLOPs are 2 x parameters (``bench_poc``'s MFU)."""
_DONE_MARKER = ".complete"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_CONFIG_ONLY_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def _corpus(n_lines: int = 2000) -> list[str]:
    """A deterministic pseudo-text corpus for training the tokenizer."""
    rng = random.Random(0)
    sylls = ["ka", "to", "ri", "mu", "se", "la", "no", "vi", "de", "po", "the", "and", "ing"]
    words = ["".join(rng.choice(sylls) for _ in range(rng.randint(1, 4))) for _ in range(2000)]
    tail = " Hello world, the quick brown fox jumps over the lazy dog. 0123456789"
    return [" ".join(rng.choice(words) for _ in range(30)) + tail for _ in range(n_lines)]


def _write_tokenizer(out_dir: Path) -> int:
    """Train and save a byte-level BPE tokenizer; returns the id of ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    if tok.get_vocab_size() > VOCAB_SIZE:
        raise RuntimeError(f"tokenizer vocab {tok.get_vocab_size()} exceeds {VOCAB_SIZE}")
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    eos = tok.token_to_id("<|endoftext|>")
    assert eos is not None
    return eos


def _qwen3_config(eos_id: int, **shape: Any) -> Any:
    """A Qwen3 config of ``shape``; a Qwen3-MoE one when the shape names ``num_experts``."""
    from transformers import Qwen3Config, Qwen3MoeConfig

    common: dict[str, Any] = {
        "max_position_embeddings": 4096,
        "rope_theta": 1000000.0,  # transformers 5 turns it into rope_parameters
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
    }
    config: Any
    if "num_experts" in shape:
        config = Qwen3MoeConfig(**common, **shape)
        config.architectures = ["Qwen3MoeForCausalLM"]
    else:
        config = Qwen3Config(**common, **shape)
        config.architectures = ["Qwen3ForCausalLM"]
    return config


ARCHITECTURES: dict[str, tuple[str, dict[str, object]]] = {
    "qwen3": ("Qwen3ForCausalLM", {}),
    "qwen3-moe": (
        "Qwen3MoeForCausalLM",
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64},
    ),
    "deepseek-v2": (
        "DeepseekV2ForCausalLM",
        {
            "num_key_value_heads": 2,
            "kv_lora_rank": 512,
            "q_lora_rank": None,
            "qk_nope_head_dim": 32,
            "qk_rope_head_dim": 64,
            "v_head_dim": 32,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "n_shared_experts": 1,
            "moe_intermediate_size": 64,
            "first_k_dense_replace": 1,
            "topk_method": "greedy",
            "n_group": 1,
            "topk_group": 1,
        },
    ),
    "mistral-swa": ("MistralForCausalLM", {"sliding_window": 4}),
    "granite-hybrid": (
        "GraniteMoeHybridForCausalLM",
        {
            "layer_types": ["mamba", "attention"],
            "num_local_experts": 0,
            "shared_intermediate_size": 256,
            "mamba_n_heads": 4,
            "mamba_d_head": 64,
            "mamba_d_state": 16,
            "mamba_chunk_size": 64,
        },
    ),
}
"""Tiny random-weight families: transformers class and what differs from ``MODEL_SHAPE``."""


def _write_model(out_dir: Path, eos_id: int, architecture: str) -> None:
    """Save the random-weight bf16 model as safetensors plus its config."""
    import torch
    import transformers

    name, extra = ARCHITECTURES[architecture]
    model_class = getattr(transformers, name)
    shape = {**MODEL_SHAPE, **extra}
    if architecture == "qwen3":
        config = _qwen3_config(eos_id, vocab_size=VOCAB_SIZE, **shape)
    else:
        config = model_class.config_class(
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            **shape,
        )
        config.architectures = [name]
    torch.manual_seed(0)
    model_class(config).to(torch.bfloat16).save_pretrained(str(out_dir))


def _write_config_only(out_dir: Path, eos_id: int, shape: str) -> None:
    """Save only the bf16 config of a real shape (weights: ``load_format="dummy"``)."""
    config = _qwen3_config(eos_id, torch_dtype="bfloat16", **REAL_SHAPES[shape])
    config.save_pretrained(str(out_dir))


def _shape_marker(shape: str) -> str:
    return f"shape={shape}\n"


def is_complete(out_dir: Path, shape: str | None = None) -> bool:
    """Whether ``out_dir`` holds a finished model folder made by :func:`make_tiny_model`."""
    marker = out_dir / _DONE_MARKER
    if shape is None:
        return marker.is_file() and all((out_dir / name).is_file() for name in _REQUIRED_FILES)
    return (
        marker.is_file()
        and marker.read_text() == _shape_marker(shape)
        and all((out_dir / name).is_file() for name in _CONFIG_ONLY_FILES)
    )


def make_tiny_model(out_dir: Path, shape: str | None = None, architecture: str = "qwen3") -> Path:
    """Write the tiny model to ``out_dir`` (reused when already complete); returns the path.

    ``shape`` (a key of ``REAL_SHAPES``) writes that shape's config and the tokenizer instead,
    without weights. ``architecture`` is a key of ``ARCHITECTURES``.
    """
    if shape is not None and shape not in REAL_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(REAL_SHAPES)}")
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}"
        )
    out_dir = Path(out_dir).resolve()
    if is_complete(out_dir, shape):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and rename, so a crash never leaves a half-made model.
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        eos_id = _write_tokenizer(tmp)
        if shape is None:
            _write_model(tmp, eos_id, architecture)
            (tmp / _DONE_MARKER).write_text("ok\n")
        else:
            _write_config_only(tmp, eos_id, shape)
            (tmp / _DONE_MARKER).write_text(_shape_marker(shape))
        # Test processes run side by side (xdist workers, the end-to-end tier): one that built
        # the same model first keeps its copy, which a server may be reading already.
        if out_dir.exists() and not is_complete(out_dir, shape):
            shutil.rmtree(out_dir)
        with contextlib.suppress(OSError):  # a non-empty out_dir: the other process's copy
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not is_complete(out_dir, shape):
        raise RuntimeError(f"tiny model at {out_dir} is incomplete")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m vllm_poc.testing.tiny_model DIR [--shape NAME]`` (``REAL_SHAPES``)."""
    args = sys.argv[1:] if argv is None else argv
    shape = None
    if len(args) == 3 and args[1] == "--shape" and args[2] in REAL_SHAPES:
        shape, args = args[2], args[:1]
    if len(args) != 1 or args[0].startswith("-"):
        shapes = "|".join(REAL_SHAPES)
        usage = f"usage: python -m vllm_poc.testing.tiny_model DIR [--shape {shapes}]"
        print(usage, file=sys.stderr)
        return 2
    path = make_tiny_model(Path(args[0]), shape)
    print(f"tiny model ready at {path}: {sorted(p.name for p in path.iterdir())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
