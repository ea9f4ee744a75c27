"""Every ``VLLM_POC_*`` setting in one place: name, default, parser, what it allows and means.

Read as typed module attributes (``envs.VLLM_POC_RPC_TIMEOUT``), lazily: each access reads the
environment, so tests and operators can change them without re-importing anything. ``check``
parses every one that is set when the plugin registers, so a bad value stops the server at start
with its name, its value and what is allowed. The README's settings table is checked against
``SETTINGS``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from vllm_poc.setting import (
    Setting,
    auto_bool,
    batch_size,
    boolean,
    by_name,
    networks_text,
    protocol,
)

SETTINGS: dict[str, Setting] = by_name(
    [
        Setting("VLLM_POC_ENABLED", False, boolean, "Turn the plugin on (1/true/yes/on)."),
        Setting(
            "VLLM_POC_PROTOCOL",
            "distance",
            protocol,
            "`distance` (the API above) or `artifact` (gonka's artifact protocol and the API "
            "its MLNode calls; see docs/protocol.md Part II).",
        ),
        Setting(
            "VLLM_POC_BATCH_SIZE",
            "auto",
            batch_size,
            "Nonces per forward when a round gives none: a number, or `auto` (largest that "
            "fits the forward's token budget and free memory; see README).",
        ),
        Setting("VLLM_POC_SEQ_LEN", 256, int, "Default sequence length when a round gives none."),
        Setting(
            "VLLM_POC_MAX_VALIDATE_NONCES",
            4096,
            int,
            "Most nonces one request answered inline may carry: a /validate, or an artifact "
            "/generate with `wait` (413 above).",
        ),
        Setting(
            "VLLM_POC_MAX_BATCH_SIZE",
            4096,
            int,
            "Largest batch_size a request may ask for (413 above).",
        ),
        Setting(
            "VLLM_POC_MAX_TOKENS_PER_FORWARD",
            65536,
            int,
            "Most tokens one PoC forward runs: a batch of more (batch_size x seq_len, or vLLM's "
            "max_num_batched_tokens) is computed in several forwards, the same results.",
        ),
        Setting(
            "VLLM_POC_INFERENCE_DURING_VALIDATION",
            "auto",
            auto_bool,
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
            networks_text,
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
            boolean,
            "Compile the PoC forward (its own torch.compile graph, traced with input "
            "embeddings) when vLLM compiles the model; inference keeps vLLM's graph.",
        ),
        Setting(
            "VLLM_POC_CUDA_GRAPHS",
            False,
            boolean,
            "Capture the PoC forward of a round's shape as a CUDA graph and replay it for every "
            "batch (CUDA, no pipeline parallelism; not yet measured on a GPU).",
        ),
        Setting(
            "VLLM_POC_WEIGHTS_FINGERPRINT",
            True,
            boolean,
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
            boolean,
            "Artifact protocol: exit the process (status 1) instead, for a supervisor to restart.",
        ),
    ]
)


def get(name: str) -> Any:
    """The current value of a registered setting (KeyError for an unknown name)."""
    return SETTINGS[name].get()


def check() -> list[str]:
    """Parse every setting that is set (``BadSetting`` names the first that does not parse);
    the ``VLLM_POC_*`` variables that name no setting, likely typos, are returned."""
    for setting in SETTINGS.values():
        setting.get()
    return sorted(n for n in os.environ if n.startswith("VLLM_POC_") and n not in SETTINGS)


def __getattr__(name: str) -> Any:
    if name in SETTINGS:
        return SETTINGS[name].get()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # the settings as typed attributes (a test keeps this list equal to SETTINGS)
    VLLM_POC_ENABLED: bool
    VLLM_POC_PROTOCOL: str
    VLLM_POC_BATCH_SIZE: int | str
    VLLM_POC_SEQ_LEN: int
    VLLM_POC_MAX_VALIDATE_NONCES: int
    VLLM_POC_MAX_BATCH_SIZE: int
    VLLM_POC_MAX_TOKENS_PER_FORWARD: int
    VLLM_POC_INFERENCE_DURING_VALIDATION: bool | str
    VLLM_POC_API_KEY: str
    VLLM_POC_ALLOWED_CLIENTS: str
    VLLM_POC_MAX_BODY_BYTES: int
    VLLM_POC_MAX_CALIBRATION_SAMPLES: int
    VLLM_POC_CALLBACK_ALLOWED_HOSTS: str
    VLLM_POC_RPC_TIMEOUT: float
    VLLM_POC_MAX_BAD_BATCHES: int
    VLLM_POC_COMPILED_FORWARD: bool
    VLLM_POC_CUDA_GRAPHS: bool
    VLLM_POC_WEIGHTS_FINGERPRINT: bool
    VLLM_POC_CALLBACK_TIMEOUT: float
    VLLM_POC_CALLBACK_MAX_RETRIES: int
    VLLM_POC_CALLBACK_BACKOFF_BASE: float
    VLLM_POC_CALLBACK_BACKOFF_MAX: float
    VLLM_POC_CALLBACK_QUEUE_SIZE: int
    VLLM_POC_MAX_QUEUED_NONCES: int
    VLLM_POC_GENERATE_RESULT_TTL: float
    VLLM_POC_CALLBACK_INTERVAL: float
    VLLM_POC_CALLBACK_MAX_ARTIFACTS: int
    VLLM_POC_EXIT_ON_BAD_BATCHES: bool


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
