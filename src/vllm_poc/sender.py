"""Callback delivery: valid batches and validation verdicts POSTed to the round's receiver.

Posting never sits on the generation loop: ``submit`` only enqueues. One background task
delivers the queue in order; a failed post is retried with exponential backoff up to a retry
budget, the queue is bounded (the oldest item is dropped when full) and every drop is logged and
counted, so a receiver that is down costs bounded memory and never slows generation.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import httpx

from vllm_poc import metrics
from vllm_poc.data import ProofBatch, ValidatedBatch, to_json_dict
from vllm_poc.log import get_logger

logger = get_logger(__name__)


@dataclass
class SenderStats:
    sent: int = 0
    failed_attempts: int = 0
    dropped: int = 0


@dataclass
class _Item:
    url: str
    payload: dict[str, Any]
    attempts: int = 0


class PoCCallbackSender:
    """Delivers callback payloads in order, with bounded retries and a bounded queue."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        queue_size: int = 1000,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stats = SenderStats()
        self._queue: collections.deque[_Item] = collections.deque()
        self._queue_size = queue_size
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: _Item | None = None

    @property
    def pending(self) -> int:
        """Posts waiting or in flight."""
        return len(self._queue) + (self._in_flight is not None)

    def submit_generated(self, callback_url: str, batch: ProofBatch, r_target: float) -> None:
        """Queue the valid nonces of ``batch`` for ``{callback_url}/generated`` (if any)."""
        valid = batch.sub_batch(r_target)
        if len(valid) > 0:
            self._submit(f"{callback_url.rstrip('/')}/generated", to_json_dict(valid))

    def submit_validated(self, callback_url: str, batch: ValidatedBatch) -> None:
        """Queue a verdict for ``{callback_url}/validated``."""
        self._submit(f"{callback_url.rstrip('/')}/validated", to_json_dict(batch))

    def _submit(self, url: str, payload: dict[str, Any]) -> None:
        if len(self._queue) >= self._queue_size:
            dropped = self._queue.popleft()
            self.stats.dropped += 1
            metrics.CALLBACKS.labels(result="dropped").inc()
            logger.warning(
                "vllm-poc: callback queue full (%d); dropped the oldest post to %s",
                self._queue_size,
                dropped.url,
            )
        self._queue.append(_Item(url, payload))
        self._ensure_running()
        self._wakeup.set()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._deliver_forever())

    async def _deliver_forever(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # The item in flight leaves the queue, so overflow never drops it mid-post.
            self._in_flight = self._queue.popleft()
            ok = await self._post(self._in_flight)
            item, self._in_flight = self._in_flight, None
            if ok:
                self.stats.sent += 1
                metrics.CALLBACKS.labels(result="sent").inc()
            elif item.attempts > self.max_retries:
                self.stats.dropped += 1
                metrics.CALLBACKS.labels(result="dropped").inc()
                logger.error(
                    "vllm-poc: dropped a callback to %s after %d attempts", item.url, item.attempts
                )
            else:
                self._queue.appendleft(item)
                # New submissions don't cut the wait short: backoff and order both hold.
                await asyncio.sleep(
                    min(self.backoff_max, self.backoff_base * 2 ** (item.attempts - 1))
                )

    async def _post(self, item: _Item) -> bool:
        item.attempts += 1
        start = time.monotonic()
        try:
            response = await self._client.post(item.url, json=item.payload)
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        else:
            if response.is_success:
                return True
            error = f"HTTP {response.status_code}"
        self.stats.failed_attempts += 1
        metrics.CALLBACKS.labels(result="failed").inc()
        logger.warning(
            "vllm-poc: callback to %s failed (attempt %d, %.2fs): %s",
            item.url,
            item.attempts,
            time.monotonic() - start,
            error,
        )
        return False

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()
