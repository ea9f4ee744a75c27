"""A small synchronous HTTP client for a PoC node's ``/api/v1/pow`` routes.

The chain side of a round (start it, watch it, stop it, validate someone's batch) is a handful of
HTTP calls; this package keeps them in one place so the examples in ``examples/`` and
``python -m vllm_poc.demo`` drive a node the same way an operator's own tooling would. It needs
only ``httpx`` and the messages of :mod:`vllm_poc.protocol` (pydantic and plain dataclasses): it
never imports vLLM or torch, so it runs on a machine that has no model at all.
"""

from vllm_poc.client.batches import (
    DEFAULT_SAMPLE_SIZE,
    batch_from_status,
    forge_batch,
    load_batch,
    sample_batch,
    save_batch,
)
from vllm_poc.client.http import PoCClient, PoCError, send
from vllm_poc.client.messages import Progress, RoundParams, Verdict, progress_printer
from vllm_poc.protocol import POW_PREFIX

__all__ = [
    "DEFAULT_SAMPLE_SIZE",
    "POW_PREFIX",
    "PoCClient",
    "PoCError",
    "Progress",
    "RoundParams",
    "Verdict",
    "batch_from_status",
    "forge_batch",
    "load_batch",
    "progress_printer",
    "sample_batch",
    "save_batch",
    "send",
]
