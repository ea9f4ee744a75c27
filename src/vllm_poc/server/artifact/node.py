"""One server's artifact-protocol node (``VLLM_POC_PROTOCOL=artifact``): a generation round
with its callback stream, ``/generate`` jobs (``artifact_jobs``), and the non-finite policy.

Inference is paused while a round generates: the routes' guard reads ``state`` as it does for
the distance protocol's manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from vllm_poc.log import get_logger
from vllm_poc.protocol.artifact.wire import (
    InitGenerate,
    Params,
    Round,
)
from vllm_poc.protocol.state import PoCState
from vllm_poc.server import limits, metrics
from vllm_poc.server.artifact.jobs import Jobs
from vllm_poc.server.artifact.stream import ArtifactStream
from vllm_poc.server.bad_batches import BadBatchStreaks
from vllm_poc.server.callbacks import PoCCallbackSender
from vllm_poc.server.engines import Engines, endless, every
from vllm_poc.server.errors import Conflict, EngineFailure, ParamsMismatch, Unsupported
from vllm_poc.server.node import pausing

logger = get_logger(__name__)

REJECTED = "rejected as non-finite"


class ArtifactNode:
    """The artifact protocol's node: one generation round at a time, ``/generate`` jobs, the
    stream of generated artifacts and the non-finite policy."""

    state = metrics.GaugedState()

    def __init__(
        self,
        engines: Engines,
        served_models: list[str],
        sender: PoCCallbackSender | None = None,
        unsupported: list[str] | None = None,
        max_model_len: int = 2**20,
    ) -> None:
        self.engines = engines
        self.max_model_len = max_model_len
        self.unsupported = list(unsupported or [])
        self.served_models = served_models
        self.sender = sender or PoCCallbackSender.from_settings()
        self.state = PoCState.IDLE
        self.config: InitGenerate | None = None
        self.error: str | None = None
        self.total_processed = 0
        self.validations = 0
        """``/generate`` validations being computed."""
        self.bad_batches = BadBatchStreaks(REJECTED)
        self._started = 0.0
        self._stream: ArtifactStream | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.jobs = Jobs(self)

    def check_params(self, params: Params) -> None:
        """409 for another model; 422 for a model whose layers PoC cannot compute."""
        if self.unsupported:
            raise Unsupported(self.unsupported)
        if params.model not in self.served_models:
            raise ParamsMismatch(params.model_dump(), self.served_models)

    @property
    def generating(self) -> bool:
        return self.state == PoCState.GENERATING

    @property
    def validating(self) -> bool:
        return self.validations > 0

    def admit(self, body: Round, **asked: Any) -> None:
        """The round's request through the one admission layer (``limits``)."""
        requested = limits.Requested(
            seq_len=body.params.seq_len,
            batch_size=body.batch_size,
            callback_url=body.url,
            block_height=body.block_height,
            **asked,
        )
        limits.admit(requested, self.max_model_len)

    async def init_generate(self, body: InitGenerate) -> dict[str, Any]:
        self.check_params(body.params)
        self.admit(body, node=(body.node_id, body.node_count), group=(body.group_id, body.n_groups))
        if self.generating:
            raise Conflict("Already generating")
        self.state = PoCState.GENERATING  # before the loop starts: inference answers 503 now
        await self._cancel_tasks()  # a stream left by a round that failed
        self.config, self.error, self.total_processed = body, None, 0
        self.bad_batches = BadBatchStreaks(REJECTED)
        self._started = time.monotonic()
        self._stream = ArtifactStream(self.sender, body) if body.url else None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._generate(body))]
        if self._stream is not None:
            self._tasks.append(loop.create_task(self._stream.run()))
        return {"status": "OK", "pow_status": {"status": "GENERATING"}}

    def status(self) -> dict[str, Any]:
        if not self.generating or self.config is None:
            idle: dict[str, Any] = {"status": "IDLE", "config": None, "stats": None}
            return idle | ({"error": self.error} if self.error else {})
        c = self.config
        elapsed = max(time.monotonic() - self._started, 1e-9)
        config = c.model_dump(
            include={"block_hash", "block_height", "public_key", "node_id", "node_count"}
        )
        config |= {"group_id": c.group_id, "n_groups": c.n_groups}
        config |= {"seq_len": c.params.seq_len, "k_dim": c.params.k_dim}
        stats = {
            "total_processed": self.total_processed,
            "nonces_per_second": self.total_processed / elapsed,
            "rejected_batches": self.bad_batches.bad,
        }
        return {"status": "GENERATING", "config": config, "stats": stats}

    async def stop(self) -> dict[str, Any]:
        """Cancel the round and the jobs; artifacts already computed are still delivered."""
        await self._cancel_tasks()
        if self._stream is not None:
            self._stream.flush()
        self.state = PoCState.IDLE
        await self.jobs.cancel_all()
        return {"status": "OK", "pow_status": {"status": "STOPPED"}}

    async def _cancel_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def compute(
        self, body: Round, nonces: list[int], *, validating: bool = False
    ) -> list[dict[str, Any]]:
        """Artifacts of ``nonces`` in nonce order; rejected batches' nonces are absent.
        Computed ones count in the per-engine series, recomputed ones as validated."""

        def done(dp_rank: int, chunk: list[int], vectors: list[str], seconds: float) -> None:
            self._count(body, dp_rank, chunk, vectors, seconds, validating=validating)

        work = body.work().with_nonces(nonces)
        interleave = pausing(self) is None
        chunks = await self.engines.run(work, body.batch_size, done, interleave=interleave)
        return [item for chunk, vectors in chunks for item in _items(chunk, vectors)]

    def _count(
        self,
        body: Round,
        dp_rank: int,
        chunk: list[int],
        vectors: list[str],
        seconds: float,
        *,
        validating: bool,
    ) -> None:
        """One engine's finished chunk in the metrics; the non-finite policy if rejected."""
        if validating:
            metrics.VALIDATED_NONCES.inc(len(chunk))
        else:
            rejected = len(chunk) - len(vectors)
            metrics.record_batch(dp_rank, len(chunk), len(vectors), rejected, seconds)
        where = f"block_height={body.block_height}, nonces {chunk[0]}..{chunk[-1]}"
        self.bad_batches.record(dp_rank, not vectors, where)

    async def _generate(self, config: InitGenerate) -> None:
        """The round: every engine takes the next ``batch_size`` nonces as it frees up, with a
        call queued behind the running one (``engines.endless``), so a faster engine does more.
        Each chunk is counted and buffered for the stream as soon as it is done, so a ``/stop``
        abandons only chunks still in flight."""

        def done(dp_rank: int, chunk: list[int], vectors: list[str], seconds: float) -> None:
            self.total_processed += len(chunk)
            self._count(config, dp_rank, chunk, vectors, seconds, validating=False)
            if self._stream is not None:
                self._stream.add(_items(chunk, vectors))

        taken = 0

        def take() -> list[int]:
            nonlocal taken
            first, taken = taken, taken + config.batch_size
            return [config.nonce(x) for x in range(first, taken)]

        work = config.work()
        try:
            await every(endless(rpc, work, take, done) for rpc in self.engines.rpcs)
        except asyncio.CancelledError:
            raise
        except EngineFailure as e:
            self._fail(config, str(e))
        except Exception as e:
            logger.exception("vllm-poc: artifact generation failed")
            self._fail(config, f"{type(e).__name__}: {e}")

    def _fail(self, config: InitGenerate, error: str) -> None:
        logger.error(
            "vllm-poc: artifact generation stopped at block_height=%d: %s",
            config.block_height,
            error,
        )
        self.error = f"generation failed: {error}"
        if self._stream is not None:
            self._stream.flush()
        self.state = PoCState.IDLE


def _items(chunk: list[int], vectors: list[str]) -> list[dict[str, Any]]:
    """A computed chunk as the protocol's ``Artifact`` objects (none for a rejected chunk)."""
    return (
        [{"nonce": n, "vector_b64": v} for n, v in zip(chunk, vectors, strict=True)]
        if vectors
        else []
    )


def node(
    engines: Engines, model_config: Any, served: list[str], unsupported: list[str]
) -> ArtifactNode:
    """The artifact protocol's node (``protocols``), answering for every served model name."""
    return ArtifactNode(
        engines, served, unsupported=unsupported, max_model_len=int(model_config.max_model_len)
    )
