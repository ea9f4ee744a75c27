"""PoCManager: one node's rounds, states and results, in the API server process.

The manager alone decides state transitions and builds rounds from requests; it reaches the
model only through ``Engines`` (one ``EngineRPC`` per data-parallel engine, faked in unit
tests). Generation runs as tracked asyncio tasks (``generation``) that await RPCs and never block
the event loop.
"""

from __future__ import annotations

import time
from typing import Any

from vllm_poc import compat, envs
from vllm_poc.log import get_logger
from vllm_poc.protocol import validation
from vllm_poc.protocol.distance.batches import ProofBatch, ValidatedBatch
from vllm_poc.protocol.distance.round import PoCConfig
from vllm_poc.protocol.state import PoCState
from vllm_poc.server import limits, metrics
from vllm_poc.server.callbacks import PoCCallbackSender
from vllm_poc.server.distance import calibration, proofs
from vllm_poc.server.distance.generation import Generation, PoCStats
from vllm_poc.server.engines import Engines
from vllm_poc.server.errors import BadValue, ForbiddenInState, Unsupported
from vllm_poc.server.node import pausing

logger = get_logger(__name__)


class PoCManager:
    """One node's PoC rounds: IDLE -> GENERATING / VALIDATING -> STOPPED."""

    state = metrics.GaugedState()

    def __init__(
        self,
        engines: Engines,
        max_model_len: int,
        sender: PoCCallbackSender | None = None,
        model_name: str = "",
        unsupported: list[str] | None = None,
    ) -> None:
        self.engines = engines
        self.unsupported = list(unsupported or [])
        """Why the model cannot run PoC (found at start); every round is refused with it."""
        self.max_model_len = max_model_len
        self.model_name = model_name
        self.state = PoCState.IDLE
        self.config: PoCConfig | None = None
        self.sender = sender or PoCCallbackSender.from_settings()
        self.error: str | None = None
        self._round = 0
        self.generation = Generation(self)

    @property
    def stats(self) -> PoCStats:
        return self.generation.stats

    @property
    def valid_nonces(self) -> list[int]:
        return self.generation.valid_nonces

    @valid_nonces.setter
    def valid_nonces(self, value: list[int]) -> None:
        self.generation.valid_nonces = value

    @property
    def valid_distances(self) -> list[float]:
        return self.generation.valid_distances

    @valid_distances.setter
    def valid_distances(self, value: list[float]) -> None:
        self.generation.valid_distances = value

    @property
    def total_nonfinite(self) -> int:
        return self.generation.total_nonfinite

    @property
    def validating(self) -> bool:
        return self.state == PoCState.VALIDATING

    @property
    def served_models(self) -> list[str]:
        return [self.model_name]

    @property
    def round_id(self) -> int:
        """Increases with every round, so late answers of an old round can be told apart."""
        return self._round

    # ------------------------------------------------------------------ state machine

    def switch_phase(self, phase: PoCState) -> None:
        """``/phase/generate`` or ``/phase/validate`` in the current round."""
        if self.config is None:
            raise ForbiddenInState("PoC not initialized")
        if phase == PoCState.GENERATING:
            self.start_generate()
        else:
            self.start_validate()

    def refuse_while_generating(self, message: str = "Round already in progress") -> None:
        if self.state == PoCState.GENERATING:
            raise ForbiddenInState(message)

    def refuse_unsupported(self) -> None:
        if self.unsupported:
            raise Unsupported(self.unsupported)

    async def default_batch_size(self, seq_len: int) -> int:
        """``VLLM_POC_BATCH_SIZE``; when ``auto``, the smallest answer of all workers."""
        setting = envs.VLLM_POC_BATCH_SIZE
        if isinstance(setting, int):
            return setting
        limits.check_seq_len(seq_len, self.max_model_len)
        max_tokens = envs.VLLM_POC_MAX_TOKENS_PER_FORWARD
        return await self.engines.max_batch_size(seq_len, max_tokens)

    def check_config(self, config: PoCConfig) -> None:
        """Reject a round this server cannot run (BadValue)."""
        requested = limits.Requested(
            config.seq_len,
            config.batch_size,
            callback_url=config.callback_url,
            block_height=config.block_height,
        )
        limits.admit(requested, self.max_model_len)

    def init_round(self, config: PoCConfig) -> None:
        """Set the round's config and reset results. Does not start generating."""
        self.refuse_while_generating()
        self.check_config(config)
        self.generation.cancel()
        self._round += 1
        self.config = config
        self.error = None
        self.generation.reset(config)
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
            raise ForbiddenInState("Round not initialized")
        self.refuse_while_generating()
        if not self.config.has_node:
            raise ForbiddenInState("Node ID and node count must be set")
        self.state = PoCState.GENERATING
        self.generation.start(self._round)

    def start_validate(self) -> None:
        """Switch to VALIDATING (stops generation)."""
        if self.config is None:
            raise ForbiddenInState("Round not initialized")
        self.generation.cancel()
        self.state = PoCState.VALIDATING

    def stop_round(self) -> None:
        """Stop the round; counters freeze at once, an RPC in flight is discarded."""
        self.generation.cancel()
        self.state = PoCState.STOPPED

    def fail_round(self, round_id: int, error: str) -> None:
        """The engine failed during ``round_id``: stop it with the error for ``/status``."""
        if round_id == self._round:
            self.error = error
            self.stats.end_time = time.time()
            self.state = PoCState.STOPPED

    # ------------------------------------------------------------------ distances

    def get_next_nonces(self) -> list[int]:
        """The next ``batch_size`` nonces of this node: ``node_id + k * node_count``."""
        return self.generation.next_nonces()

    async def compute_distances(
        self, config: PoCConfig, public_key: str, nonces: list[int]
    ) -> list[float]:
        """Distances of ``nonces`` under ``config``'s block, in forwards of at most
        ``batch_size`` spread over the engines."""
        work = config.work(public_key).with_nonces(nonces)
        interleave = pausing(self) is None
        chunks = await self.engines.run(work, config.batch_size, interleave=interleave)
        return [d for _, chunk in chunks for d in chunk]

    # ------------------------------------------------------------------ validation

    async def validate(self, nonces: list[int], public_key: str) -> tuple[list[float], list[bool]]:
        """Recompute distances of another node's nonces under the current round, and which are
        valid (the original API; ``/validate`` uses ``validate_batch``)."""
        config = self.round_to_validate()
        distances = await self._recompute(config, nonces, public_key)
        return distances, [validation.is_valid(d, config.r_target) for d in distances]

    def round_to_validate(self) -> PoCConfig:
        if self.config is None:
            raise ForbiddenInState("No round configured")
        return self.config

    async def _recompute(
        self, config: PoCConfig, nonces: list[int], public_key: str
    ) -> list[float]:
        distances = await self.compute_distances(config, public_key, nonces)
        metrics.VALIDATED_NONCES.inc(len(nonces))
        return distances

    async def validate_batch(
        self, batch: ProofBatch, statistics: dict[str, float] | None = None
    ) -> ValidatedBatch:
        """Recompute ``batch`` and judge it; push the verdict to the callback if configured."""
        config = self.round_to_validate()
        distances = await self._recompute(config, batch.nonces, batch.public_key)
        verdict = proofs.judge(batch, distances, config, self.model_name, statistics or {})
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

    # ------------------------------------------------------------------ status, calibration

    def get_status(self, since: int | None = None) -> dict[str, Any]:
        """``/status``; with ``since``, only the valid nonces from that index on, and ``next``
        (the index to ask for next), so that polling a long round stays small."""
        paged: dict[str, Any] = {}
        if since is not None:
            found = len(self.valid_nonces)
            if not 0 <= since <= found:
                raise BadValue(f"since must be in [0, {found}] (valid nonces so far), got {since}")
            paged = {"next": found}
        return {
            "state": self.state.value,
            **self.generation.status(since or 0),
            **paged,
            "block_height": self.config.block_height if self.config else None,
            "config": self.config.model_dump() if self.config else None,
            "error": self.error,
            "callbacks": self.sender.figures(),
        }

    async def calibrate(
        self, config: PoCConfig, n_samples: int, valid_rate: float
    ) -> dict[str, Any]:
        """Sample the distance distribution of a block and derive ``r_target`` for a valid rate.

        Uses nonces ``0 .. n_samples-1`` of ``config.public_key``; refused while generating,
        since it would compete with the round for the engine.
        """
        self.refuse_while_generating("Cannot calibrate while generating")
        self.check_config(config)
        dist = await self.compute_distances(config, config.public_key, list(range(n_samples)))
        return calibration.summary(config.block_hash, dist, valid_rate)


def node(
    engines: Engines, model_config: Any, served: list[str], unsupported: list[str]
) -> PoCManager:
    """The distance protocol's node (``protocols``): the round manager of the served model."""
    return PoCManager(
        engines,
        max_model_len=int(model_config.max_model_len),
        model_name=compat.served_model_name(model_config),
        unsupported=unsupported,
    )
