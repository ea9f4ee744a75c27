"""The artifact protocol's generation stream (docs/protocol.md §A.6): a round's computed
artifacts are buffered and posted to ``{url}/generated`` in one payload at most every
``VLLM_POC_CALLBACK_INTERVAL`` seconds.

One post at a time, as the network's nodes do: while a post is still being delivered (or
retried), new artifacts wait in the buffer and go out together in the next one, so a receiver
that is down costs one payload in the sender and a buffer bounded by
``VLLM_POC_CALLBACK_MAX_ARTIFACTS`` (the oldest artifacts dropped, counted and logged above).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from typing import Any

from vllm_poc import envs
from vllm_poc.log import get_logger
from vllm_poc.protocol.artifact.wire import InitGenerate, encoding
from vllm_poc.server import metrics
from vllm_poc.server.callbacks import DROP_LOG_INTERVAL_S, Delivery, PoCCallbackSender

logger = get_logger(__name__)

TICK_S = 0.1
"""How often the stream looks whether a post is due."""


class ArtifactStream:
    """The buffer and the posts of one generation round with a ``url``."""

    def __init__(self, sender: PoCCallbackSender, config: InitGenerate) -> None:
        assert config.url, "a stream needs the round's url"
        self.sender, self.config = sender, config
        self.url = f"{config.url.rstrip('/')}/generated"
        cap = envs.VLLM_POC_CALLBACK_MAX_ARTIFACTS
        self.buffer: collections.deque[dict[str, Any]] = collections.deque(maxlen=cap)
        self.dropped = 0
        self._posting: Delivery | None = None
        self._unlogged = 0
        self._logged_at = -math.inf

    def add(self, items: list[dict[str, Any]]) -> None:
        """Buffer computed artifacts; above the cap the oldest ones go (counted)."""
        over = len(self.buffer) + len(items) - (self.buffer.maxlen or 0)
        self.buffer.extend(items)
        if over > 0:
            self.dropped += over
            self._unlogged += over
            metrics.ARTIFACTS_DROPPED.inc(over)
            if time.monotonic() - self._logged_at >= DROP_LOG_INTERVAL_S:
                logger.warning(
                    "vllm-poc: artifact buffer full (%d) while %s is not taking posts: %d oldest "
                    "artifacts dropped since the last report (%d in this round)",
                    self.buffer.maxlen,
                    self.url,
                    self._unlogged,
                    self.dropped,
                )
                self._unlogged, self._logged_at = 0, time.monotonic()

    async def run(self) -> None:
        """Post the buffer whenever the interval has passed and the last post is finished."""
        interval = envs.VLLM_POC_CALLBACK_INTERVAL
        last = -math.inf
        while True:
            await asyncio.sleep(TICK_S)
            busy = self._posting is not None and not self._posting.finished
            if self.buffer and not busy and time.monotonic() - last >= interval:
                self.flush()
                last = time.monotonic()

    def flush(self) -> None:
        """Hand everything buffered to the sender as one post (the round's last, at its end)."""
        if not self.buffer:
            return
        items = list(self.buffer)
        self.buffer.clear()
        payload = self.config.model_dump(
            include={"public_key", "block_hash", "block_height", "node_id"}
        )
        payload |= {"artifacts": items, "encoding": encoding(self.config.params.k_dim)}
        self._posting = self.sender.submit(self.url, payload)
