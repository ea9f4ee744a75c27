"""What a ``VLLM_POC_*`` setting is: its name, default, parser and meaning, and how values
parse (strictly: a value that does not parse is refused with what is allowed, never guessed).
The settings themselves are listed in ``envs``."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def boolean(value: str) -> bool:
    word = value.strip().lower()
    if word not in TRUE + FALSE:
        raise ValueError(f"{value!r} is not a boolean")
    return word in TRUE


def batch_size(value: str) -> int | str:
    """``auto`` or a positive integer."""
    if value.strip().lower() == "auto":
        return "auto"
    size = int(value)
    if size < 1:
        raise ValueError(f"VLLM_POC_BATCH_SIZE must be 'auto' or >= 1, got {value!r}")
    return size


def auto_bool(value: str) -> bool | str:
    """``auto`` or a boolean."""
    return "auto" if value.strip().lower() == "auto" else boolean(value)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(value: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks (an address is a network of one)."""
    parts = [part.strip() for part in value.split(",")]
    return tuple(ipaddress.ip_network(part, strict=False) for part in parts if part)


def networks_text(value: str) -> str:
    """``networks``, checked, written back as text (``10.0.0.0/8,127.0.0.1/32``)."""
    return ",".join(str(network) for network in networks(value))


def protocol(value: str) -> str:
    name = value.strip().lower()
    if name not in ("distance", "artifact"):
        raise ValueError(f"VLLM_POC_PROTOCOL must be 'distance' or 'artifact', got {value!r}")
    return name


ALLOWED: dict[Callable[[str], Any], str] = {
    boolean: "1, 0, true, false, yes, no, on or off",
    int: "an integer",
    float: "a number",
    str: "any text",
    batch_size: "auto or an integer >= 1",
    auto_bool: "auto or a boolean (1, 0, true, false, yes, no, on or off)",
    networks_text: "comma-separated addresses or CIDR networks",
    protocol: "distance or artifact",
}
"""What each parser takes, as an operator reads it when a value is refused."""


class BadSetting(ValueError):
    """A ``VLLM_POC_*`` value that does not parse: the server does not start with it."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str

    def get(self) -> Any:
        raw = os.environ.get(self.name)
        if raw is None or raw.strip() == "":
            return self.default
        try:
            return self.parse(raw)
        except ValueError as e:
            raise BadSetting(
                f"vllm-poc: {self.name}={raw!r} is not valid ({e}); allowed: {ALLOWED[self.parse]}"
            ) from e


def by_name(settings: list[Setting]) -> dict[str, Setting]:
    """The settings by name; a name declared twice is a mistake (one would hide the other)."""
    names = [s.name for s in settings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"settings declared twice: {twice}")
    return {s.name: s for s in settings}
