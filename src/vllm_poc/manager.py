"""PoCManager: rounds, states, nonce striding and statistics, in the API server process.

The manager reaches the model only through the worker extension (``collective_rpc``), so it can
be tested with a fake engine client. Generation runs as one tracked asyncio task that awaits
RPCs and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from vllm_poc import envs, metrics
from vllm_poc.config import PoCConfig, PoCState
from vllm_poc.data import ProofBatch, ValidatedBatch
from vllm_poc.log import get_logger
from vllm_poc.sender import PoCCallbackSender

logger = get_logger(__name__)

PIPELINE_DEPTH = 2
"""Generation batches in flight at once (one running in the engine, one queued behind it)."""


class EngineClient(Protocol):
    """The part of vLLM's engine client the manager uses."""

    async def collective_rpc(
        self,
        method: str,
        timeout: float | None = None,
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]: ...


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


class PoCManager:
    """One node's PoC rounds: IDLE -> GENERATING / VALIDATING -> STOPPED."""

    def __init__(
        self,
        engine: EngineClient,
        max_model_len: int,
        sender: PoCCallbackSender | None = None,
        model_name: str = "",
    ) -> None:
        self.engine = engine
        self.max_model_len = max_model_len
        self.model_name = model_name
        self.state = PoCState.IDLE
        self.config: PoCConfig | None = None
        self.stats = PoCStats()
        self.valid_nonces: list[int] = []
        self.valid_distances: list[float] = []
        self.total_nonfinite = 0
        self.error: str | None = None
        self.sender = sender or PoCCallbackSender(
            timeout=envs.get("VLLM_POC_CALLBACK_TIMEOUT"),
            max_retries=envs.get("VLLM_POC_CALLBACK_MAX_RETRIES"),
            backoff_base=envs.get("VLLM_POC_CALLBACK_BACKOFF_BASE"),
            backoff_max=envs.get("VLLM_POC_CALLBACK_BACKOFF_MAX"),
            queue_size=envs.get("VLLM_POC_CALLBACK_QUEUE_SIZE"),
        )
        self._nonce_counter = 0
        self._round = 0
        self._generation_task: asyncio.Task[None] | None = None

    @property
    def state(self) -> PoCState:
        return self._state

    @state.setter
    def state(self, value: PoCState) -> None:
        self._state = value
        metrics.set_state(value)

    # ------------------------------------------------------------------ state machine

    def check_config(self, config: PoCConfig) -> None:
        """Reject a round this server cannot run (ValueError)."""
        self._check_seq_len(config.seq_len)
        max_tokens = envs.get("VLLM_POC_MAX_TOKENS_PER_FORWARD")
        if config.batch_size * config.seq_len > max_tokens:
            raise ValueError(
                f"batch_size x seq_len = {config.batch_size * config.seq_len} exceeds "
                f"VLLM_POC_MAX_TOKENS_PER_FORWARD={max_tokens}"
            )

    def _check_seq_len(self, seq_len: int) -> None:
        if seq_len > self.max_model_len:
            raise ValueError(
                f"seq_len {seq_len} exceeds the model's max length {self.max_model_len}"
            )

    async def default_batch_size(self, seq_len: int) -> int:
        """``VLLM_POC_BATCH_SIZE``; when ``auto``, the smallest answer of the workers.

        Every worker applies ``auto_batch``'s rule to its own device (TP and PP ranks differ
        in free memory and cache layout), and the batch must fit all of them.
        """
        setting = envs.get("VLLM_POC_BATCH_SIZE")
        if setting != "auto":
            return setting
        self._check_seq_len(seq_len)
        max_tokens = envs.get("VLLM_POC_MAX_TOKENS_PER_FORWARD")
        sizes = await self._rpc_answers("poc_max_batch_size", (seq_len, max_tokens))
        return min(int(size) for size in sizes)

    def init_round(self, config: PoCConfig) -> None:
        """Set the round's config and reset results. Does not start generating."""
        if self.state == PoCState.GENERATING:
            raise RuntimeError("Round already in progress")
        self.check_config(config)
        self._cancel_generation()
        self._round += 1
        self.config = config
        self.stats = PoCStats(start_time=time.time())
        self.valid_nonces = []
        self.valid_distances = []
        self.total_nonfinite = 0
        self.error = None
        self._nonce_counter = max(config.node_id, 0)
        self.state = PoCState.IDLE
        logger.info(
            "vllm-poc: round initialised, block_height=%d node=%d/%d batch_size=%d seq_len=%d",
            config.block_height,
            config.node_id,
            config.node_count,
            config.batch_size,
            config.seq_len,
        )

    def start_generate(self) -> None:
        """Switch to GENERATING and start the generation loop."""
        if self.config is None:
            raise RuntimeError("Round not initialized")
        if self.state == PoCState.GENERATING:
            raise RuntimeError("Round already in progress")
        if not self.config.has_node:
            raise RuntimeError("Node ID and node count must be set")
        self.state = PoCState.GENERATING
        if self.stats.total_checked == 0:
            self.stats.start_time = time.time()
        self.stats.end_time = 0.0
        self._generation_task = asyncio.get_running_loop().create_task(
            self._generation_loop(self._round), name=f"vllm-poc-generate-{self._round}"
        )

    def start_validate(self) -> None:
        """Switch to VALIDATING (stops generation)."""
        if self.config is None:
            raise RuntimeError("Round not initialized")
        self._cancel_generation()
        self.state = PoCState.VALIDATING

    def stop_round(self) -> None:
        """Stop the round; counters freeze at once, an RPC in flight is discarded."""
        self._cancel_generation()
        self.state = PoCState.STOPPED

    def _cancel_generation(self) -> None:
        if self.state == PoCState.GENERATING:
            self.stats.end_time = time.time()
        if self._generation_task is not None and not self._generation_task.done():
            self._generation_task.cancel()
        self._generation_task = None

    # ------------------------------------------------------------------ generation

    def get_next_nonces(self) -> list[int]:
        """The next ``batch_size`` nonces of this node: ``node_id + k * node_count``."""
        assert self.config is not None
        step = self.config.node_count
        start = self._nonce_counter
        self._nonce_counter += step * self.config.batch_size
        return list(range(start, self._nonce_counter, step))

    async def compute_distances(
        self, config: PoCConfig, public_key: str, nonces: list[int]
    ) -> list[float]:
        """Distances of ``nonces`` under ``config``'s block, in forwards of ``batch_size``."""
        size = config.batch_size
        out: list[float] = []
        for i in range(0, len(nonces), size):
            out.extend(await self._rpc_distances(config, public_key, nonces[i : i + size]))
        return out

    async def _rpc_distances(
        self, config: PoCConfig, public_key: str, nonces: list[int]
    ) -> list[float]:
        answers = await self._rpc_answers(
            "poc_distances",
            (config.block_hash, public_key, nonces, config.seq_len),
            {"random_projection": True} if config.random_projection else None,
        )
        if len(answers[0]) != len(nonces):
            raise RuntimeError(f"worker returned no distances for {len(nonces)} nonces")
        return [float(d) for d in answers[0]]

    async def _rpc_answers(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
    ) -> list[Any]:
        """The workers' non-None answers to a ``poc_*`` method (at least one, or RuntimeError).

        Every TP rank computes the same answer; with PP only the last stage answers distances.
        The timeout is enforced here only: a collective_rpc timeout inside the engine is fatal
        to vLLM's engine core, while a late answer here just fails this call.
        """
        results = await asyncio.wait_for(
            self.engine.collective_rpc(method, args=args, kwargs=kwargs),
            timeout=envs.get("VLLM_POC_RPC_TIMEOUT"),
        )
        answers = [r for r in results if r is not None]
        if not answers:
            raise RuntimeError(f"no worker answered {method}")
        return answers

    async def run_batch(self) -> ProofBatch:
        """Check the next batch of nonces and record the valid ones."""
        if self.state != PoCState.GENERATING or self.config is None:
            return ProofBatch.empty()
        config, round_id = self.config, self._round
        nonces = self.get_next_nonces()
        started = time.monotonic()
        dist = await self.compute_distances(config, config.public_key, nonces)
        return self._record_batch(config, round_id, nonces, dist, time.monotonic() - started)

    def _record_batch(
        self, config: PoCConfig, round_id: int, nonces: list[int], dist: list[float], seconds: float
    ) -> ProofBatch:
        """Count a finished batch, keep its valid nonces and queue its callback.

        A batch that finishes after its round was stopped or replaced is discarded.
        """
        if round_id != self._round or self.state != PoCState.GENERATING:
            return ProofBatch.empty()
        batch = ProofBatch(
            public_key=config.public_key,
            block_hash=config.block_hash,
            block_height=config.block_height,
            nonces=nonces,
            dist=dist,
            node_id=config.node_id,
        )
        valid = batch.sub_batch(config.r_target)
        nonfinite = sum(1 for d in dist if not math.isfinite(d))
        self.stats.total_checked += len(nonces)
        self.stats.total_valid += len(valid)
        self.total_nonfinite += nonfinite
        self.valid_nonces.extend(valid.nonces)
        self.valid_distances.extend(valid.dist)
        metrics.BATCHES.inc()
        metrics.BATCH_SECONDS.observe(seconds)
        metrics.NONCES_CHECKED.inc(len(nonces))
        metrics.NONCES_VALID.inc(len(valid))
        if nonfinite:
            metrics.NONCES_INVALID_NUMBER.inc(nonfinite)
            logger.warning(
                "vllm-poc: block_height=%d: %d of %d distances are not finite (never valid)",
                config.block_height,
                nonfinite,
                len(nonces),
            )
        logger.debug(
            "vllm-poc: block_height=%d batch of %d nonces in %.3fs, %d valid",
            config.block_height,
            len(nonces),
            seconds,
            len(valid),
        )
        if config.callback_url:
            self.sender.submit_generated(config.callback_url, batch, config.r_target)
        return batch

    async def _generation_loop(self, round_id: int) -> None:
        """Keep ``PIPELINE_DEPTH`` batches in flight, record them in order.

        The engine runs one RPC at a time; with the next one already queued it starts at once
        when the previous one ends, so the RPC and Python time of the API process is hidden.
        """
        assert self.config is not None
        config = self.config
        in_flight: collections.deque[tuple[list[int], asyncio.Task[list[float]]]] = (
            collections.deque()
        )
        last_done = time.monotonic()
        try:
            while self.state == PoCState.GENERATING and round_id == self._round:
                while len(in_flight) < PIPELINE_DEPTH:
                    nonces = self.get_next_nonces()
                    task = asyncio.ensure_future(
                        self.compute_distances(config, config.public_key, nonces)
                    )
                    in_flight.append((nonces, task))
                nonces, task = in_flight.popleft()
                dist = await task
                now = time.monotonic()
                self._record_batch(config, round_id, nonces, dist, now - last_done)
                last_done = now
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.exception("vllm-poc: generation failed at block_height=%d", config.block_height)
            if round_id == self._round:
                self.error = f"generation failed: {type(e).__name__}: {e}"
                self.stats.end_time = time.time()
                self.state = PoCState.STOPPED
        finally:
            for _, task in in_flight:
                task.cancel()

    # ------------------------------------------------------------------ validation

    async def validate(self, nonces: list[int], public_key: str) -> tuple[list[float], list[bool]]:
        """Recompute distances of another node's nonces under the current round."""
        if self.config is None:
            raise RuntimeError("No round configured")
        config = self.config
        distances = await self.compute_distances(config, public_key, nonces)
        metrics.VALIDATED_NONCES.inc(len(nonces))
        return distances, [d < config.r_target for d in distances]

    async def validate_batch(self, batch: ProofBatch) -> ValidatedBatch:
        """Recompute ``batch`` and judge it; push the verdict to the callback if configured."""
        if self.config is None:
            raise RuntimeError("No round configured")
        config = self.config
        distances, _ = await self.validate(batch.nonces, batch.public_key)
        verdict = ValidatedBatch(
            public_key=batch.public_key,
            block_hash=batch.block_hash,
            block_height=batch.block_height,
            nonces=batch.nonces,
            received_dist=batch.dist,
            dist=distances,
            r_target=config.r_target,
            fraud_threshold=config.fraud_threshold,
            node_id=batch.node_id,
        )
        logger.info(
            "vllm-poc: validated %d nonces of %s at block_height=%d: %d invalid, fraud=%s",
            len(batch),
            batch.public_key,
            batch.block_height,
            verdict.n_invalid,
            verdict.fraud_detected,
        )
        if config.callback_url:
            self.sender.submit_validated(config.callback_url, verdict)
        return verdict

    # ------------------------------------------------------------------ status

    def get_status(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "valid_nonces": self.valid_nonces,
            "valid_distances": self.valid_distances,
            "total_checked": self.stats.total_checked,
            "total_valid": self.stats.total_valid,
            "elapsed_seconds": self.stats.elapsed,
            "rate_per_second": self.stats.rate,
            "block_height": self.config.block_height if self.config else None,
            "config": dataclasses.asdict(self.config) if self.config else None,
            "error": self.error,
            "total_nonfinite": self.total_nonfinite,
            "callbacks": {
                "sent": self.sender.stats.sent,
                "failed_attempts": self.sender.stats.failed_attempts,
                "pending": self.sender.pending,
                "dropped": self.sender.stats.dropped,
            },
        }

    # ------------------------------------------------------------------ calibration

    async def calibrate(
        self, config: PoCConfig, n_samples: int, valid_rate: float
    ) -> dict[str, Any]:
        """Sample the distance distribution of a block and derive ``r_target`` for a valid rate.

        Uses nonces ``0 .. n_samples-1`` of ``config.public_key``; refused while generating,
        since it would compete with the round for the engine.
        """
        if self.state == PoCState.GENERATING:
            raise RuntimeError("Cannot calibrate while generating")
        self.check_config(config)
        dist = await self.compute_distances(config, config.public_key, list(range(n_samples)))
        finite = sorted(d for d in dist if math.isfinite(d))
        if not finite:
            raise RuntimeError("the model produced no finite distance")
        probabilities = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9)
        return {
            "block_hash": config.block_hash,
            "n_samples": n_samples,
            "n_nonfinite": n_samples - len(finite),
            "min": finite[0],
            "max": finite[-1],
            "mean": sum(finite) / len(finite),
            "quantiles": {str(p): _quantile(finite, p) for p in probabilities},
            "valid_rate": valid_rate,
            "r_target": _quantile(finite, valid_rate),
        }


def _quantile(sorted_values: list[float], p: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values."""
    position = p * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)
