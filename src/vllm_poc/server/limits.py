"""The one admission layer: what a request asks the node to run, whatever its protocol, checked
against the operator's ``VLLM_POC_*`` limits and the model before any work is done.

Both protocols describe their requests as ``Requested`` and call ``admit``; what is left to them
is their own body shapes and status codes for malformed bodies. A batch larger than one forward
may hold is not refused: the workers split it into forwards that fit (``worker/forward.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from vllm_poc import envs
from vllm_poc.server.errors import BadValue, TooLarge
from vllm_poc.work import MAX_INT

MAX_COUNT = 2**31
"""Most nodes or groups a round may stride over."""


@dataclass(frozen=True)
class Requested:
    """What a request asks for; ``None`` where it does not say."""

    seq_len: int
    batch_size: int | None = None
    nonces: Sequence[int] = ()
    inline: bool = False
    """The nonces are answered in the request itself (capped by
    ``VLLM_POC_MAX_VALIDATE_NONCES``)."""
    callback_url: str | None = None
    node: tuple[int, int] | None = None
    """``(node_id, node_count)`` of a generation round."""
    group: tuple[int, int] | None = None
    """``(group_id, n_groups)`` of a generation round."""
    block_height: int | None = None


def admit(requested: Requested, max_model_len: int) -> None:
    """Refuse what this node cannot run: 400 for a value, 413 above one of the operator's
    limits."""
    check_seq_len(requested.seq_len, max_model_len)
    if requested.batch_size is not None:
        check_count(requested.batch_size, "nonces per batch", "VLLM_POC_MAX_BATCH_SIZE")
        if requested.batch_size < 1:
            raise BadValue(f"batch_size must be >= 1, got {requested.batch_size}")
    if requested.inline:
        check_count(len(requested.nonces), "nonces", "VLLM_POC_MAX_VALIDATE_NONCES")
    outside = [n for n in requested.nonces if not -MAX_INT <= n <= MAX_INT]
    if outside:
        raise BadValue(f"nonces must lie within +-2^62, got {outside[0]}")
    if requested.block_height is not None and not 0 <= requested.block_height <= MAX_INT:
        raise BadValue(f"block_height must lie in [0, 2^62], got {requested.block_height}")
    for name, pair in (("node", requested.node), ("group", requested.group)):
        if pair is not None:
            _check_index(name, *pair)
    if requested.callback_url is not None:
        check_callback_url(requested.callback_url)


def _check_index(name: str, index: int, count: int) -> None:
    counted = "node_count" if name == "node" else "n_groups"
    if not 1 <= count <= MAX_COUNT:
        raise BadValue(f"{counted} must lie in [1, 2^31], got {count}")
    if not 0 <= index < count:
        raise BadValue(f"{name}_id must lie in [0, {counted}), got {index} of {count}")


def check_seq_len(seq_len: int, max_model_len: int) -> None:
    if seq_len < 1:
        raise BadValue(f"seq_len must be >= 1, got {seq_len}")
    if seq_len > max_model_len:
        raise BadValue(f"seq_len {seq_len} exceeds the model's max length {max_model_len}")


def check_callback_url(url: str) -> None:
    """http(s) with a host, and the host within ``VLLM_POC_CALLBACK_ALLOWED_HOSTS`` if set: the
    operator's guard against a request making the node post elsewhere."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadValue(f"the callback url must be an http(s) URL with a host, got {url!r}")
    allowed = {h.strip().lower() for h in envs.VLLM_POC_CALLBACK_ALLOWED_HOSTS.split(",")}
    allowed.discard("")
    if allowed and parts.hostname.lower() not in allowed:
        raise BadValue(
            f"callback host {parts.hostname.lower()!r} is not in VLLM_POC_CALLBACK_ALLOWED_HOSTS"
        )


def check_count(count: int, noun: str, setting: str) -> None:
    """``count`` items of a request against the operator's limit ``setting`` (413 above)."""
    limit = envs.get(setting)
    if count > limit:
        raise TooLarge(f"{count} {noun} exceed {setting}={limit}")
