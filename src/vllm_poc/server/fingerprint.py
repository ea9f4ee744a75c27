"""A fingerprint of the weights the node serves, for ``/version``.

A chain can tell which weights a node loaded (a cheaper quantisation or a pruned model gives
another fingerprint) without trusting the model's name. It is the sha256 of the sorted lines
``"{worker} {parameter} {sha256 of its bytes}"`` over the workers of one engine (worker = its
index in the engine's ``collective_rpc`` answers); data-parallel replicas with equal weights
add nothing. The shards a worker holds depend on the tensor and pipeline layout, so nodes with
the same weights and the same layout agree; other layouts give other fingerprints.

Hashing reads every weight once (seconds for small models, minutes for the largest), so it
runs in the background after start-up, where it holds the engine like a long forward;
``/version`` reports ``null`` until it is done. ``VLLM_POC_WEIGHTS_FINGERPRINT=0`` skips it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from vllm_poc import envs
from vllm_poc.log import get_logger
from vllm_poc.server.engines import Engines

logger = get_logger(__name__)

METHOD = "sha256 of per-worker parameter digests (vLLM's weight checksums)"


def combine(per_engine: list[list[dict[str, str]]]) -> str:
    """The fingerprint of every engine's workers' digests."""
    lines = {
        f"{worker} {name} {digest}"
        for workers in per_engine
        for worker, digests in enumerate(workers)
        for name, digest in digests.items()
    }
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


class WeightsFingerprint:
    """Computed once per server; ``figures`` is what ``/version`` shows."""

    def __init__(self, engines: Engines) -> None:
        self.engines = engines
        self.value: str | None = None
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if envs.VLLM_POC_WEIGHTS_FINGERPRINT:
            self._task = asyncio.ensure_future(self._compute())

    async def _compute(self) -> None:
        t0 = time.monotonic()
        try:
            self.value = combine(await self.engines.weight_digests())
        except Exception as e:  # logged and shown; the server serves without a fingerprint
            self.error = f"{type(e).__name__}: {e}"
            logger.error("vllm-poc: weights fingerprint failed: %s", self.error)
            return
        logger.info("vllm-poc: weights fingerprint %s (%.1f s)", self.value, time.monotonic() - t0)

    def figures(self) -> dict[str, Any]:
        state = "off" if self._task is None else "ready" if self.value else "computing"
        if self.error:
            state = "failed"
        return {"fingerprint": self.value, "method": METHOD, "state": state, "error": self.error}
