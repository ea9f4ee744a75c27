"""Loggers that print through vLLM's logging setup.

vLLM configures handlers for the ``vllm`` logger only; a child of it inherits them, so the
plugin's lines look like vLLM's (and honour ``VLLM_LOGGING_LEVEL``) without importing vLLM.
"""

import logging

_AT_LOAD: list[str] = []


def get_logger(module_name: str) -> logging.Logger:
    return logging.getLogger(f"vllm.{module_name}")


def info_at_load(logger: logging.Logger, msg: str, *args: object) -> None:
    """``logger.info`` for what the plugin does when vLLM loads it, kept for ``said_at_load``.

    vLLM 0.32 configures its logging only after its API server has loaded plugins: there these
    lines reach no handler, and a process vLLM forks from it (the EngineCore, on GPUs) does not
    load plugins again. The API server says them again once its logging is set.
    """
    _AT_LOAD.append((msg % args).removeprefix("vllm-poc: "))
    logger.info(msg, *args)


def said_at_load() -> list[str]:
    """What ``info_at_load`` logged in this process, in order."""
    return list(_AT_LOAD)
