"""``/generate`` jobs of the artifact protocol: computed inline (``wait``) or queued FIFO behind
any generation round, kept readable for ``VLLM_POC_GENERATE_RESULT_TTL`` seconds, results
posted to ``{url}/generated`` or ``{url}/validated``."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from vllm_poc import envs
from vllm_poc.log import get_logger
from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.protocol.artifact.wire import Generate, Round, StatTest, encoding
from vllm_poc.server.callbacks import PoCCallbackSender
from vllm_poc.server.errors import BadValue, Busy, NotFound

logger = get_logger(__name__)


class Owner(Protocol):
    """What the jobs use of the node that owns them (``ArtifactNode``)."""

    sender: PoCCallbackSender
    validations: int

    @property
    def generating(self) -> bool: ...

    def admit(self, body: Round, **asked: Any) -> None: ...

    async def compute(
        self, body: Round, nonces: list[int], *, validating: bool = False
    ) -> list[dict[str, Any]]: ...


WAIT_TICK_S = 0.1
"""How often a job waiting for a generation round to end looks again."""


@dataclass
class Job:
    body: Generate
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: str = "queued"
    result: dict[str, Any] | None = None
    error: str | None = None
    finished: float | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "request_id": self.id}
        if self.result is not None:
            out |= self.result
        if self.error is not None:
            out["error"] = self.error
        return out


class Jobs:
    def __init__(self, node: Owner) -> None:
        self.node = node
        self.records: dict[str, Job] = {}
        self._queue: collections.deque[Job] = collections.deque()
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued_nonces(self) -> int:
        return sum(len(job.body.nonces) for job in self._queue)

    def check(self, body: Generate) -> None:
        """Refused before any work: what the admission layer refuses, received artifacts for
        other nonces than ``nonces``, or one that does not decode (the reference node fails the
        job and posts no verdict). Negative nonces are computed, as the reference does."""
        self.node.admit(body, nonces=body.nonces, inline=body.wait)
        if body.validation is None:
            return
        if {a.nonce for a in body.validation.artifacts} != set(body.nonces):
            raise BadValue("validation.artifacts nonces must match nonces field")
        for item in body.validation.artifacts:
            if item.vector_b64 and artifact.decode(item.vector_b64, body.params.k_dim) is None:
                raise BadValue(
                    f"validation.artifacts: the vector_b64 of nonce {item.nonce} is not "
                    f"{body.params.k_dim} float16 values in base64"
                )

    async def run_inline(self, body: Generate) -> dict[str, Any]:
        """``wait=true``: after any generation round, computed now and answered."""
        while self.node.generating:
            await asyncio.sleep(WAIT_TICK_S)
        return await self.result(body, str(uuid.uuid4()))

    def submit(self, body: Generate) -> dict[str, Any]:
        """``wait=false``: queued (429 above ``VLLM_POC_MAX_QUEUED_NONCES``, nothing changed);
        no nonces: nothing to queue, the empty result is readable at once."""
        if not body.nonces:
            job = Job(body, status="completed", finished=time.monotonic())
            job.result = self.empty(body, job.id)
            self.records[job.id] = job
            return {"status": "queued", "request_id": job.id, "queued_count": 0}
        limit = envs.VLLM_POC_MAX_QUEUED_NONCES
        if self.queued_nonces + len(body.nonces) > limit:
            raise Busy(
                f"Queue full: {self.queued_nonces} nonces queued, {len(body.nonces)} more would "
                f"exceed VLLM_POC_MAX_QUEUED_NONCES={limit}"
            )
        job = Job(body)
        self.records[job.id] = job
        self._queue.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        return {"status": "queued", "request_id": job.id, "queued_count": len(body.nonces)}

    def get(self, request_id: str) -> dict[str, Any]:
        self._expire()
        job = self.records.get(request_id)
        if job is None:
            raise NotFound(f"Request {request_id} not found")
        return job.record()

    async def cancel_all(self) -> None:
        """``/stop``: queued jobs cancelled, every record cleared, the worker stopped."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for job in self._queue:
            job.status = "cancelled"
        self._queue.clear()
        self.records.clear()

    def _expire(self) -> None:
        ttl = envs.VLLM_POC_GENERATE_RESULT_TTL
        now = time.monotonic()
        for key in [k for k, j in self.records.items() if j.finished and now - j.finished > ttl]:
            del self.records[key]

    async def _work(self) -> None:
        while self._queue:
            job = self._queue[0]
            while self.node.generating:
                await asyncio.sleep(WAIT_TICK_S)
            self._queue.popleft()
            job.status = "running"
            try:
                job.result = await self.result(job.body, job.id)
                job.status = "completed"
            except Exception as e:
                logger.error("vllm-poc: /generate job %s failed: %s", job.id, e)
                job.status, job.error = "failed", f"{type(e).__name__}: {e}"
            job.finished = time.monotonic()
            if job.status == "completed" and job.body.url:
                self._post(job)

    def _post(self, job: Job) -> None:
        assert job.result is not None
        body = job.body
        kind = "generated" if body.validation is None else "validated"
        payload = {"request_id": job.id}
        payload |= body.model_dump(include={"block_hash", "block_height", "public_key", "node_id"})
        payload |= {k: v for k, v in job.result.items() if k not in ("status", "request_id")}
        self.node.sender.submit(f"{str(body.url).rstrip('/')}/{kind}", payload)

    @staticmethod
    def empty(body: Generate, request_id: str) -> dict[str, Any]:
        """The result of a request without nonces: nothing computed, nothing judged."""
        done = {"status": "completed", "request_id": request_id}
        if body.validation is None:
            return done | {"artifacts": [], "encoding": encoding(body.params.k_dim)}
        test = artifact.binomial_test(0, 0)
        return done | {
            "n_total": 0,
            "n_mismatch": 0,
            "mismatch_nonces": [],
            "p_value": test.p_value,
            "fraud_detected": test.fraud_detected,
        }

    async def result(self, body: Generate, request_id: str) -> dict[str, Any]:
        """A job's result: its artifacts, or the verdict on the received ones (§A.4). A
        received artifact that is empty is skipped, as the reference node does: neither
        computed nor counted in ``n_total``."""
        if body.validation is None:
            items = await self.node.compute(body, body.nonces)
            done = {"status": "completed", "request_id": request_id}
            return done | {"artifacts": items, "encoding": encoding(body.params.k_dim)}
        received = {a.nonce: a.vector_b64 for a in body.validation.artifacts if a.vector_b64}
        judged = [n for n in body.nonces if n in received]
        if not judged:
            return self.empty(body, request_id)
        self.node.validations += 1
        try:
            items = await self.node.compute(body, judged, validating=True)
        finally:
            self.node.validations -= 1
        done = {"status": "completed", "request_id": request_id}
        stat = body.stat_test or StatTest()
        mismatches = [
            item["nonce"]
            for item in items
            if artifact.is_mismatch(
                _decoded(item["vector_b64"], body.params.k_dim),
                received[item["nonce"]],
                stat.dist_threshold,
            )
        ]
        test = artifact.binomial_test(
            len(mismatches), len(judged), stat.p_mismatch, stat.fraud_threshold
        )
        return done | {
            "n_total": test.n_total,
            "n_mismatch": test.n_mismatch,
            "mismatch_nonces": mismatches,
            "p_value": test.p_value,
            "fraud_detected": test.fraud_detected,
        }


def _decoded(vector_b64: str, k: int) -> Any:
    values = artifact.decode(vector_b64, k)
    assert values is not None, "an artifact this node computed does not decode"
    return values
