"""Every ``VLLM_POC_*`` setting in one place: name, default, parser and meaning.

Read lazily (each access reads the environment), so tests and operators can change them
without re-importing anything. The README's settings table is checked against ``SETTINGS``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _batch_size(value: str) -> int | str:
    """``auto`` or a positive integer."""
    if value.strip().lower() == "auto":
        return "auto"
    size = int(value)
    if size < 1:
        raise ValueError(f"VLLM_POC_BATCH_SIZE must be 'auto' or >= 1, got {value!r}")
    return size


def _auto_bool(value: str) -> bool | str:
    """``auto`` or a boolean."""
    return "auto" if value.strip().lower() == "auto" else _bool(value)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(value: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks (an address is a network of one)."""
    parts = [part.strip() for part in value.split(",")]
    return tuple(ipaddress.ip_network(part, strict=False) for part in parts if part)


def _networks(value: str) -> str:
    """``networks``, checked, written back as text (``10.0.0.0/8,127.0.0.1/32``)."""
    return ",".join(str(network) for network in networks(value))


def _protocol(value: str) -> str:
    name = value.strip().lower()
    if name not in ("distance", "artifact"):
        raise ValueError(f"VLLM_POC_PROTOCOL must be 'distance' or 'artifact', got {value!r}")
    return name


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str

    def get(self) -> Any:
        raw = os.environ.get(self.name)
        return self.default if raw is None or raw.strip() == "" else self.parse(raw)


def _by_name(settings: list[Setting]) -> dict[str, Setting]:
    """The settings by name; a name declared twice is a mistake (one would hide the other)."""
    names = [s.name for s in settings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"settings declared twice: {twice}")
    return {s.name: s for s in settings}


SETTINGS: dict[str, Setting] = _by_name(
    [
        Setting("VLLM_POC_ENABLED", False, _bool, "Turn the plugin on (1/true/yes/on)."),
        Setting(
            "VLLM_POC_PROTOCOL",
            "distance",
            _protocol,
            "`distance` (the API above) or `artifact` (gonka's artifact protocol and the API "
            "its MLNode calls; see docs/protocol.md Part II).",
        ),
        Setting(
            "VLLM_POC_BATCH_SIZE",
            "auto",
            _batch_size,
            "Nonces per forward when a round gives none: a number, or `auto` (largest that "
            "fits the forward's token budget and free memory; see README).",
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
            65536,
            int,
            "Most tokens (batch_size x seq_len) one PoC forward may run (400 above).",
        ),
        Setting(
            "VLLM_POC_INFERENCE_DURING_VALIDATION",
            "auto",
            _auto_bool,
            "Serve inference while the node validates (it is always paused while generating): "
            "`auto` is on for the artifact protocol (as the network's nodes do; `/versions` "
            "says `poc_validation_inference`), off for the distance protocol.",
        ),
        Setting(
            "VLLM_POC_API_KEY",
            "",
            str,
            "Bearer key for /api/v1/pow/* (empty: none). vLLM's --api-key guards only vLLM's "
            "own routes, as gonka's MLNode expects.",
        ),
        Setting(
            "VLLM_POC_ALLOWED_CLIENTS",
            "",
            _networks,
            "Comma-separated addresses or CIDR networks that may call /api/v1/pow/* (empty: "
            "any; others get 403).",
        ),
        Setting(
            "VLLM_POC_MAX_BODY_BYTES", 1048576, int, "Largest request body to /api/v1/pow/* (413)."
        ),
        Setting(
            "VLLM_POC_MAX_CALIBRATION_SAMPLES",
            4096,
            int,
            "Most nonces one /calibrate request may sample (413 above).",
        ),
        Setting(
            "VLLM_POC_CALLBACK_ALLOWED_HOSTS",
            "",
            str,
            "Comma-separated hosts a callback_url may name (empty: any host).",
        ),
        Setting("VLLM_POC_RPC_TIMEOUT", 300.0, float, "Seconds one PoC forward RPC may take."),
        Setting(
            "VLLM_POC_MAX_BAD_BATCHES",
            3,
            int,
            "Batches in a row that stop the round as a likely GPU fault: of one engine, whose "
            "distances are all non-finite (NaN or inf); artifact protocol: rejected as non-finite.",
        ),
        Setting(
            "VLLM_POC_COMPILED_FORWARD",
            True,
            _bool,
            "Compile the PoC forward (its own torch.compile graph, traced with input "
            "embeddings) when vLLM compiles the model; inference keeps vLLM's graph.",
        ),
        Setting(
            "VLLM_POC_CUDA_GRAPHS",
            False,
            _bool,
            "Capture the PoC forward of a round's shape as a CUDA graph and replay it for every "
            "batch (CUDA, no pipeline parallelism; not yet measured on a GPU).",
        ),
        Setting(
            "VLLM_POC_WEIGHTS_FINGERPRINT",
            True,
            _bool,
            "Hash the loaded weights once after start-up for `/version` (`weights`); 0 skips "
            "it (it reads every weight once).",
        ),
        Setting("VLLM_POC_CALLBACK_TIMEOUT", 10.0, float, "Seconds one callback POST may take."),
        Setting(
            "VLLM_POC_CALLBACK_MAX_RETRIES",
            5,
            int,
            "Retries of a failed callback before dropping it.",
        ),
        Setting(
            "VLLM_POC_CALLBACK_BACKOFF_BASE",
            0.5,
            float,
            "Seconds before the first retry; doubles with each further retry.",
        ),
        Setting("VLLM_POC_CALLBACK_BACKOFF_MAX", 30.0, float, "Longest wait between retries."),
        Setting(
            "VLLM_POC_CALLBACK_QUEUE_SIZE",
            1000,
            int,
            "Most callbacks waiting for delivery; the oldest is dropped (and counted) above.",
        ),
        Setting(
            "VLLM_POC_MAX_QUEUED_NONCES",
            100000,
            int,
            "Artifact protocol: most nonces of queued /generate jobs (429 above).",
        ),
        Setting(
            "VLLM_POC_GENERATE_RESULT_TTL",
            300.0,
            float,
            "Artifact protocol: seconds a finished /generate job stays readable.",
        ),
        Setting(
            "VLLM_POC_CALLBACK_INTERVAL",
            5.0,
            float,
            "Artifact protocol: least seconds between two posts of generated artifacts.",
        ),
        Setting(
            "VLLM_POC_CALLBACK_MAX_ARTIFACTS",
            1_000_000,
            int,
            "Artifact protocol: most generated artifacts waiting for the next post; the oldest "
            "are dropped (and counted) above.",
        ),
        Setting(
            "VLLM_POC_EXIT_ON_BAD_BATCHES",
            False,
            _bool,
            "Artifact protocol: exit the process (status 1) instead, for a supervisor to restart.",
        ),
    ]
)


def get(name: str) -> Any:
    """The current value of a registered setting (KeyError for an unknown name)."""
    return SETTINGS[name].get()


def enabled() -> bool:
    return bool(get("VLLM_POC_ENABLED"))


def inference_during_validation() -> bool:
    """``VLLM_POC_INFERENCE_DURING_VALIDATION``, ``auto`` resolved for the protocol served."""
    value = get("VLLM_POC_INFERENCE_DURING_VALIDATION")
    return get("VLLM_POC_PROTOCOL") == "artifact" if value == "auto" else bool(value)


def markdown_table() -> str:
    """The README's settings table (``python -m vllm_poc.envs`` prints it)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS.values():
        default = str(s.default).lower() if isinstance(s.default, bool) else str(s.default)
        rows.append(f"| `{s.name}` | `{default}` | {s.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
