"""Callback delivery: valid batches and validation verdicts POSTed to the round's receiver.

Posting never sits on the generation loop: ``submit`` only enqueues. One background task
delivers the queue in order; a failed post is retried with exponential backoff up to a retry
budget (one that cannot be made at all, say a payload that is not JSON, is dropped at once and
logged with its traceback), the queue is bounded (the oldest item is dropped when full) and
every drop is logged and counted (overflow drops in one warning per receiver every
``DROP_LOG_INTERVAL_S``), so a receiver that is down costs bounded memory and log space and
never slows generation.

Delivery is at least once: a post the receiver took but whose answer did not come back in time
(a timeout, a dropped connection) is sent again. Every attempt at one payload carries the same
``Idempotency-Key`` header, so a receiver can drop the repeats.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from vllm_poc import envs
from vllm_poc.log import get_logger
from vllm_poc.protocol.distance.batches import ProofBatch, ValidatedBatch, to_json_dict
from vllm_poc.server import metrics

logger = get_logger(__name__)

DROP_LOG_INTERVAL_S = 10.0
"""At most one warning per receiver this often about posts dropped from a full queue."""

IDEMPOTENCY_HEADER = "Idempotency-Key"
"""Header naming one payload: the same on each attempt at it, different between payloads."""


class _Attempt(enum.Enum):
    SENT = "sent"
    FAILED = "failed"
    """The receiver or the network failed: worth another attempt."""
    UNSENDABLE = "unsendable"
    """The post could not be made at all (a payload that is not JSON, a malformed URL): another
    attempt would fail the same way."""


@dataclass
class SenderStats:
    sent: int = 0
    failed_attempts: int = 0
    dropped: int = 0


@dataclass
class Delivery:
    """One payload on its way to one URL; ``finished`` once it was delivered or dropped."""

    url: str
    payload: dict[str, Any]
    attempts: int = 0
    idempotency_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    finished: bool = False


@dataclass
class _Lane:
    """The ordered queue of one receiver (scheme, host and port) and its delivery task."""

    queue: collections.deque[Delivery] = field(default_factory=collections.deque)
    task: asyncio.Task[None] | None = None
    in_flight: Delivery | None = None
    unlogged_drops: int = 0
    drops_logged_at: float = -math.inf


class PoCCallbackSender:
    """Delivers callback payloads in order per receiver, with bounded retries and queues.

    Each receiver has its own lane, so a receiver that is down (say, the last round's) never
    delays posts to another one.
    """

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
        self._queue_size = queue_size
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._lanes: dict[str, _Lane] = {}

    @classmethod
    def from_settings(cls) -> PoCCallbackSender:
        """A sender configured by the ``VLLM_POC_CALLBACK_*`` settings."""
        return cls(
            timeout=envs.VLLM_POC_CALLBACK_TIMEOUT,
            max_retries=envs.VLLM_POC_CALLBACK_MAX_RETRIES,
            backoff_base=envs.VLLM_POC_CALLBACK_BACKOFF_BASE,
            backoff_max=envs.VLLM_POC_CALLBACK_BACKOFF_MAX,
            queue_size=envs.VLLM_POC_CALLBACK_QUEUE_SIZE,
        )

    def figures(self) -> dict[str, int]:
        """What ``/status`` reports under ``callbacks``."""
        return {
            "sent": self.stats.sent,
            "failed_attempts": self.stats.failed_attempts,
            "pending": self.pending,
            "dropped": self.stats.dropped,
        }

    @property
    def pending(self) -> int:
        """Posts waiting or in flight, over all receivers."""
        return sum(len(lane.queue) + (lane.in_flight is not None) for lane in self._lanes.values())

    def submit_generated(self, callback_url: str, valid: ProofBatch) -> None:
        """Queue a batch's valid nonces for ``{callback_url}/generated`` (none: no post)."""
        if len(valid):
            self.submit(f"{callback_url.rstrip('/')}/generated", to_json_dict(valid))

    def submit_validated(self, callback_url: str, batch: ValidatedBatch) -> None:
        """Queue a verdict for ``{callback_url}/validated``."""
        self.submit(f"{callback_url.rstrip('/')}/validated", to_json_dict(batch))

    def submit(self, url: str, payload: dict[str, Any]) -> Delivery:
        """Queue any JSON payload for ``url`` (in order per receiver, retried, bounded)."""
        key = urlsplit(url).netloc
        lane = self._lanes.setdefault(key, _Lane())
        if len(lane.queue) >= self._queue_size:
            lane.queue.popleft().finished = True
            self.stats.dropped += 1
            metrics.CALLBACKS.labels(result="dropped").inc()
            lane.unlogged_drops += 1
            if time.monotonic() - lane.drops_logged_at >= DROP_LOG_INTERVAL_S:
                self._log_drops(key, lane)
        delivery = Delivery(url, payload)
        lane.queue.append(delivery)
        if lane.task is None or lane.task.done():
            lane.task = asyncio.get_running_loop().create_task(self._deliver(key, lane))
        return delivery

    async def _deliver(self, key: str, lane: _Lane) -> None:
        """Deliver one lane in order until it is empty, then retire it."""
        while lane.queue:
            # The item in flight leaves the queue, so overflow never drops it mid-post.
            lane.in_flight = lane.queue.popleft()
            attempt = await self._post(lane.in_flight)
            item, lane.in_flight = lane.in_flight, None
            ok = attempt is _Attempt.SENT
            item.finished = ok or attempt is _Attempt.UNSENDABLE or item.attempts > self.max_retries
            if ok:
                self.stats.sent += 1
                metrics.CALLBACKS.labels(result="sent").inc()
                continue
            self.stats.failed_attempts += 1
            metrics.CALLBACKS.labels(result="failed").inc()
            if item.finished:
                self.stats.dropped += 1
                metrics.CALLBACKS.labels(result="dropped").inc()
                logger.error(
                    "vllm-poc: dropped a callback to %s after %d attempts", item.url, item.attempts
                )
            else:
                lane.queue.appendleft(item)
                # New submissions don't cut the wait short: backoff and order both hold.
                await asyncio.sleep(
                    min(self.backoff_max, self.backoff_base * 2 ** (item.attempts - 1))
                )
        self._log_drops(key, lane)
        if self._lanes.get(key) is lane:
            del self._lanes[key]

    def _log_drops(self, key: str, lane: _Lane) -> None:
        """One warning for the overflow drops of a lane since the last one, if any (one per
        batch of a fast round would flood the log while a receiver is down)."""
        if not lane.unlogged_drops:
            return
        logger.warning(
            "vllm-poc: callback queue full (%d) for %s: %d posts dropped since the last report, "
            "oldest first (%d dropped in all)",
            self._queue_size,
            key,
            lane.unlogged_drops,
            self.stats.dropped,
        )
        lane.unlogged_drops = 0
        lane.drops_logged_at = time.monotonic()

    async def _post(self, item: Delivery) -> _Attempt:
        """One attempt at ``item``, logged when it fails; ``_deliver`` counts its outcome."""
        item.attempts += 1
        start = time.monotonic()
        try:
            response = await self._client.post(
                item.url, json=item.payload, headers={IDEMPOTENCY_HEADER: item.idempotency_key}
            )
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        except Exception:
            # Our side, not the receiver's: logged with its traceback, never retried, and never
            # allowed to end the lane's task (which would strand the lane's queue).
            logger.exception("vllm-poc: cannot post a callback to %s", item.url)
            return _Attempt.UNSENDABLE
        else:
            if response.is_success:
                return _Attempt.SENT
            error = f"HTTP {response.status_code}"
        logger.warning(
            "vllm-poc: callback to %s failed (attempt %d, %.2fs): %s",
            item.url,
            item.attempts,
            time.monotonic() - start,
            error,
        )
        return _Attempt.FAILED

    async def aclose(self) -> None:
        for key, lane in self._lanes.items():
            self._log_drops(key, lane)
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()
