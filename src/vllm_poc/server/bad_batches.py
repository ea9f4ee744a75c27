"""The non-finite policy of both protocols: batches an engine answers with nothing usable (the
distance protocol: only non-finite distances; the artifact protocol: rejected whole for a
non-finite value) counted per engine, ``VLLM_POC_MAX_BAD_BATCHES`` in a row stop the round as a
likely GPU fault (``BadBatches``), or with ``VLLM_POC_EXIT_ON_BAD_BATCHES`` exit the process for
a supervisor to restart, as the network's own nodes do."""

from __future__ import annotations

import os

from vllm_poc import envs
from vllm_poc.log import get_logger
from vllm_poc.server.errors import BadBatches

logger = get_logger(__name__)


class BadBatchStreaks:
    """Batches in a row without a usable value, per engine (``dp_rank``)."""

    def __init__(self, what: str) -> None:
        self.what = what
        """How a protocol's bad batch is said (in the error and the log)."""
        self.bad = 0
        """Bad batches of the round so far, of every engine."""
        self._streaks: dict[int, int] = {}

    def record(self, dp_rank: int, bad: bool, where: str) -> None:
        """Count one finished batch of engine ``dp_rank``; ``where`` names it in the log."""
        streak = self._streaks.get(dp_rank, 0) + 1 if bad else 0
        self._streaks[dp_rank] = streak
        if not bad:
            return
        self.bad += 1
        limit = envs.VLLM_POC_MAX_BAD_BATCHES
        logger.error(
            "vllm-poc: a batch %s (%s, dp_rank=%d; %d in a row, VLLM_POC_MAX_BAD_BATCHES=%d)",
            self.what,
            where,
            dp_rank,
            streak,
            limit,
        )
        if streak < limit:
            return
        if envs.VLLM_POC_EXIT_ON_BAD_BATCHES:
            logger.critical("vllm-poc: exiting after %d bad batches in a row", streak)
            os._exit(1)
        raise BadBatches(
            f"{streak} batches in a row {self.what} (VLLM_POC_MAX_BAD_BATCHES={limit}): likely a "
            "GPU fault"
        )
