"""The generation side of a round: one pipelined loop per engine, counters and results.

Owned by the manager, which decides when it starts and stops; this module only runs batches
and records what they found.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from vllm_poc.log import get_logger
from vllm_poc.protocol.distance.batches import ProofBatch
from vllm_poc.protocol.distance.round import PoCConfig
from vllm_poc.protocol.state import PoCState
from vllm_poc.server import metrics
from vllm_poc.server.bad_batches import BadBatchStreaks
from vllm_poc.server.callbacks import PoCCallbackSender
from vllm_poc.server.distance import proofs
from vllm_poc.server.distance.striding import NonceSchedule
from vllm_poc.server.engine_rpc import EngineRPC
from vllm_poc.server.engines import Engines, endless
from vllm_poc.server.errors import EngineFailure

logger = get_logger(__name__)


class Owner(Protocol):
    """What the generation loop reads of the round manager that owns it (``PoCManager``)."""

    engines: Engines
    config: PoCConfig | None
    state: PoCState
    model_name: str
    sender: PoCCallbackSender

    @property
    def round_id(self) -> int: ...

    def fail_round(self, round_id: int, error: str) -> None: ...


NONFINITE = "gave only non-finite distances (NaN or inf)"


@dataclass
class PoCStats:
    total_checked: int = 0
    total_valid: int = 0
    start_time: float = 0.0
    end_time: float = 0.0
    """Set when generation stops, so elapsed time and rate freeze with the counters."""

    @property
    def elapsed(self) -> float:
        if self.start_time <= 0:
            return 0.0
        return (self.end_time or time.time()) - self.start_time

    @property
    def rate(self) -> float:
        return self.total_checked / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class EngineStats:
    """One data-parallel engine's share of the round, for ``/status``."""

    dp_rank: int
    checked: int = 0
    valid: int = 0
    error: str | None = None


class Generation:
    """Results of the current round's generation, and the tasks that produce them: one loop
    per data-parallel engine, all taking nonces from the round's ``NonceSchedule``."""

    def __init__(self, manager: Owner) -> None:
        self.manager = manager
        self.stats = PoCStats()
        self.engine_stats = [EngineStats(rank) for rank in manager.engines.ranks]
        self.valid_nonces: list[int] = []
        self.valid_distances: list[float] = []
        self.total_nonfinite = 0
        self.schedule: NonceSchedule | None = None
        self.bad_batches = BadBatchStreaks(NONFINITE)
        self._task: asyncio.Task[None] | None = None

    def reset(self, config: PoCConfig) -> None:
        engines = self.manager.engines
        self.stats = PoCStats(start_time=time.time())
        self.engine_stats = [EngineStats(rank) for rank in engines.ranks]
        self.valid_nonces = []
        self.valid_distances = []
        self.total_nonfinite = 0
        self.bad_batches = BadBatchStreaks(NONFINITE)
        self.schedule = NonceSchedule(
            config.node_id, config.node_count, engines.ranks, engines.dp_size
        )

    def start(self, round_id: int) -> None:
        if self.stats.total_checked == 0:
            self.stats.start_time = time.time()
        self.stats.end_time = 0.0
        self._task = asyncio.get_running_loop().create_task(
            self._run(round_id), name=f"vllm-poc-generate-{round_id}"
        )

    def cancel(self) -> None:
        """Stop generating: counters freeze now, batches in flight are discarded."""
        if self.manager.state == PoCState.GENERATING:
            self.stats.end_time = time.time()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def stopped(self) -> None:
        """Return once the generation tasks have ended (stopped, failed or replaced)."""
        if self._task is not None:
            await asyncio.wait([self._task])

    def status(self, since: int = 0) -> dict[str, Any]:
        """The counters, and the valid nonces and distances from index ``since`` on."""
        return {
            "valid_nonces": self.valid_nonces[since:] if since else self.valid_nonces,
            "valid_distances": self.valid_distances[since:] if since else self.valid_distances,
            "total_checked": self.stats.total_checked,
            "total_valid": self.stats.total_valid,
            "elapsed_seconds": self.stats.elapsed,
            "rate_per_second": self.stats.rate,
            "total_nonfinite": self.total_nonfinite,
            "engines": [dataclasses.asdict(e) for e in self.engine_stats],
        }

    def next_nonces(self) -> list[int]:
        """The next ``batch_size`` nonces of this server (see ``striding``)."""
        config = self.manager.config
        assert config is not None and self.schedule is not None
        return self.schedule.take(config.batch_size)

    def record(
        self,
        config: PoCConfig,
        round_id: int,
        nonces: list[int],
        dist: list[float],
        seconds: float,
        engine: EngineStats,
    ) -> ProofBatch:
        """Count a finished batch, keep its valid nonces and queue its callback.

        A batch that finishes after its round was stopped or replaced is discarded.
        """
        manager = self.manager
        if round_id != manager.round_id or manager.state != PoCState.GENERATING:
            return ProofBatch.empty()
        batch = proofs.proof_batch(config, manager.model_name, nonces, dist)
        valid = batch.sub_batch(config.r_target)
        nonfinite = sum(1 for d in dist if not math.isfinite(d))
        self.stats.total_checked += len(nonces)
        self.stats.total_valid += len(valid)
        engine.checked += len(nonces)
        engine.valid += len(valid)
        self.total_nonfinite += nonfinite
        self.valid_nonces.extend(valid.nonces)
        self.valid_distances.extend(valid.dist)
        metrics.record_batch(engine.dp_rank, len(nonces), len(valid), nonfinite, seconds)
        where = f"block_height={config.block_height}, nonces {nonces[0]}..{nonces[-1]}"
        self.bad_batches.record(engine.dp_rank, 0 < len(nonces) == nonfinite, where)
        if nonfinite:
            logger.warning(
                "vllm-poc: block_height=%d dp_rank=%d: %d of %d distances are not finite "
                "(never valid)",
                config.block_height,
                engine.dp_rank,
                nonfinite,
                len(nonces),
            )
        logger.debug(
            "vllm-poc: block_height=%d dp_rank=%d batch of %d nonces in %.3fs, %d valid",
            config.block_height,
            engine.dp_rank,
            len(nonces),
            seconds,
            len(valid),
        )
        if config.callback_url:
            manager.sender.submit_generated(config.callback_url, valid)
        return batch

    async def _run(self, round_id: int) -> None:
        """Every engine's loop; when one fails, the others are cancelled with it."""
        rpcs = self.manager.engines.rpcs
        try:
            async with asyncio.TaskGroup() as group:
                for rpc, engine in zip(rpcs, self.engine_stats, strict=True):
                    group.create_task(self._loop(round_id, rpc, engine))
        except* EngineLoopFailed:
            pass  # reported by the failing loop

    async def _loop(self, round_id: int, rpc: EngineRPC, engine: EngineStats) -> None:
        """One engine's share of the round (``engines.endless``): batches recorded in order.

        The engine runs one RPC at a time; with the next one already queued it starts at once
        when the previous one ends, so the RPC and Python time of the API process is hidden.
        """
        manager = self.manager
        config = manager.config
        assert config is not None

        def record(dp_rank: int, nonces: list[int], dist: list[Any], seconds: float) -> None:
            self.record(config, round_id, nonces, dist, seconds, engine)

        def running() -> bool:
            return manager.state == PoCState.GENERATING and round_id == manager.round_id

        try:
            await endless(rpc, config.work(), self.next_nonces, record, running)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.exception(
                "vllm-poc: generation failed at block_height=%d on dp_rank=%d",
                config.block_height,
                engine.dp_rank,
            )
            reason = str(e) if isinstance(e, EngineFailure) else f"{type(e).__name__}: {e}"
            engine.error = reason
            where = f" on dp_rank {engine.dp_rank}" if len(self.engine_stats) > 1 else ""
            manager.fail_round(round_id, f"generation failed{where}: {reason}")
            raise EngineLoopFailed from e


class EngineLoopFailed(Exception):
    """One engine's generation loop failed (already reported); its siblings stop with it."""
