"""The compiled PoC forward: vLLM's prompt-embeds input path, opened for PoC only.

vLLM compiles the model's forward (and on GPUs captures CUDA graphs of it) as traced with
token ids, and that graph refuses ``inputs_embeds``: the PoC forward, whose inputs are random
embeddings, had to run the model uncompiled (~2.5x slower for the 0.6B shape on an H100).
With the model config's ``enable_prompt_embeds`` the graph is traced with ``inputs_embeds`` and
the PoC forward runs compiled. The flag also lets clients send ``prompt_embeds`` to the
completions and chat APIs, which the operator did not ask for, so the inference guard
(``server.guards``) refuses such requests (400) unless the operator passed
``--enable-prompt-embeds`` themselves. ``VLLM_POC_COMPILED_FORWARD=0`` leaves the flag alone.
"""

from __future__ import annotations

from typing import Any

from vllm_poc import compat, envs
from vllm_poc.log import get_logger

logger = get_logger(__name__)

OPERATOR_SET = "vllm_poc_operator_enabled_prompt_embeds"
"""Key in ``VllmConfig.additional_config`` (vLLM's place for plugins' settings): whether the
operator enabled prompt embeds, when the plugin enabled them too."""


def prepare(config: Any) -> None:
    """Enable prompt embeds in a new engine config when that makes the PoC forward compiled."""
    model = config.model_config
    if model.enable_prompt_embeds or not envs.get("VLLM_POC_COMPILED_FORWARD"):
        return
    if model.is_encoder_decoder or not compat.compiles_model(config):
        return  # no compiled graph to gain, or no inputs_embeds at all
    if not isinstance(config.additional_config, dict):
        logger.warning("vllm-poc: additional_config is not a dict; PoC forward stays eager")
        return
    config.additional_config[OPERATOR_SET] = False
    model.enable_prompt_embeds = True
    logger.info(
        "vllm-poc: prompt-embeds input path enabled so that the PoC forward runs compiled; "
        "client prompt_embeds stay refused (pass --enable-prompt-embeds to allow them)"
    )


def clients_may_send_prompt_embeds(config: Any) -> bool:
    """False when only the plugin enabled prompt embeds."""
    additional = config.additional_config
    if isinstance(additional, dict) and OPERATOR_SET in additional:
        return bool(additional[OPERATOR_SET])
    return bool(config.model_config.enable_prompt_embeds)


def poc_forward_compiled(config: Any) -> bool:
    """Whether the PoC forward of this engine runs the compiled model (``/version``)."""
    return compat.compiles_model(config) and bool(config.model_config.enable_prompt_embeds)
