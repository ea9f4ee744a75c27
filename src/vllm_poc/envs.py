"""Every ``VLLM_POC_*`` setting in one place: name, default, parser and meaning.

Read lazily (each access reads the environment), so tests and operators can change them
without re-importing anything. The README's settings table is checked against ``SETTINGS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str

    def get(self) -> Any:
        raw = os.environ.get(self.name)
        return self.default if raw is None or raw.strip() == "" else self.parse(raw)


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("VLLM_POC_ENABLED", False, _bool, "Turn the plugin on (1/true/yes/on)."),
        Setting(
            "VLLM_POC_BATCH_SIZE", 32, int, "Default nonces per forward when a round gives none."
        ),
        Setting("VLLM_POC_SEQ_LEN", 256, int, "Default sequence length when a round gives none."),
        Setting(
            "VLLM_POC_MAX_VALIDATE_NONCES",
            4096,
            int,
            "Most nonces one /validate request may carry (413 above).",
        ),
        Setting(
            "VLLM_POC_MAX_TOKENS_PER_FORWARD",
            32768,
            int,
            "Most tokens (batch x seq_len) one PoC forward may run; larger requests are split.",
        ),
        Setting("VLLM_POC_RPC_TIMEOUT", 300.0, float, "Seconds one PoC forward RPC may take."),
        Setting("VLLM_POC_CALLBACK_TIMEOUT", 10.0, float, "Seconds one callback POST may take."),
    ]
}


def get(name: str) -> Any:
    """The current value of a registered setting (KeyError for an unknown name)."""
    return SETTINGS[name].get()


def enabled() -> bool:
    return bool(get("VLLM_POC_ENABLED"))
