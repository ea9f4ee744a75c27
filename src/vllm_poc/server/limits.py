"""The server's own limits on rounds and requests (the operator's ``VLLM_POC_*`` settings and
the model's length), checked in one place before any work is done."""

from __future__ import annotations

from urllib.parse import urlsplit

from vllm_poc import envs
from vllm_poc.protocol.round import PoCConfig
from vllm_poc.server.errors import BadValue, TooLarge


def check_seq_len(seq_len: int, max_model_len: int) -> None:
    if seq_len > max_model_len:
        raise BadValue(f"seq_len {seq_len} exceeds the model's max length {max_model_len}")


def check_round(config: PoCConfig, max_model_len: int) -> None:
    """A round this server can run: its length, its tokens per forward, its callback host."""
    check_seq_len(config.seq_len, max_model_len)
    max_tokens = envs.get("VLLM_POC_MAX_TOKENS_PER_FORWARD")
    if config.batch_size * config.seq_len > max_tokens:
        raise BadValue(
            f"batch_size x seq_len = {config.batch_size * config.seq_len} exceeds "
            f"VLLM_POC_MAX_TOKENS_PER_FORWARD={max_tokens}"
        )
    allowed = {h.strip().lower() for h in envs.get("VLLM_POC_CALLBACK_ALLOWED_HOSTS").split(",")}
    allowed.discard("")
    if config.callback_url and allowed:
        host = (urlsplit(config.callback_url).hostname or "").lower()
        if host not in allowed:
            raise BadValue(f"callback host {host!r} is not in VLLM_POC_CALLBACK_ALLOWED_HOSTS")


def check_count(count: int, noun: str, setting: str) -> None:
    """``count`` items of a request against the operator's limit ``setting`` (413 above)."""
    limit = envs.get(setting)
    if count > limit:
        raise TooLarge(f"{count} {noun} exceed {setting}={limit}")
