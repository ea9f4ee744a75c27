"""Loggers that print through vLLM's logging setup.

vLLM configures handlers for the ``vllm`` logger only; a child of it inherits them, so the
plugin's lines look like vLLM's (and honour ``VLLM_LOGGING_LEVEL``) without importing vLLM.
"""

import logging


def get_logger(module_name: str) -> logging.Logger:
    return logging.getLogger(f"vllm.{module_name}")
