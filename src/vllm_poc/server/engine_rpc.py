"""The one way from the API server to the workers of an engine: ``collective_rpc`` on the
``poc_*`` methods.

Every TP rank answers the same; with PP only the last stage answers distances; ranks without an
answer return None. The timeout is enforced here, not in the engine: a ``collective_rpc``
timeout inside the engine is fatal to vLLM's engine core, while a late answer here only fails
this call. Every failure becomes ``EngineFailure``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from vllm_poc import envs
from vllm_poc.server.errors import EngineFailure
from vllm_poc.work import Work

READY_TIMEOUT_S = 120.0
"""How long the start-up check waits for the workers (they are idle then)."""
DIGESTS_TIMEOUT_S = 3600.0
"""How long hashing every weight may take (minutes for the largest models)."""


class EngineClient(Protocol):
    """The part of vLLM's engine client used here."""

    async def collective_rpc(
        self,
        method: str,
        timeout: float | None = None,
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]: ...


class EngineRPC:
    """Typed calls of the worker extension's methods on one engine (one data-parallel rank)."""

    def __init__(self, engine: EngineClient, dp_rank: int = 0) -> None:
        self.engine = engine
        self.dp_rank = dp_rank

    async def answers(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        what: str | None = None,
    ) -> list[Any]:
        """The workers' non-None answers (at least one), within ``timeout`` (default
        ``VLLM_POC_RPC_TIMEOUT``); errors name the call as ``what`` (default ``method``)."""
        what = what or method
        limit = timeout or envs.VLLM_POC_RPC_TIMEOUT
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                results = await self.engine.collective_rpc(method, args=args, kwargs=kwargs)
        except Exception as e:
            if deadline.expired():
                setting = "" if timeout else "VLLM_POC_RPC_TIMEOUT="
                raise EngineFailure(f"{what} took over {setting}{limit} s") from e
            raise EngineFailure(f"{what} failed in the engine: {type(e).__name__}: {e}") from e
        answers = [r for r in results if r is not None]
        if not answers:
            raise EngineFailure(f"no worker answered {what}")
        return answers

    async def run(self, work: Work) -> list[Any]:
        """One forward's answer in the order of ``work.nonces``: distances (floats), or
        artifacts (base64 strings; ``[]`` for a batch the worker rejected as non-finite)."""
        answers = await self.answers("poc_run", (work.payload(),), what=f"poc_run({work.kind})")
        answer = answers[0]
        if work.kind == "artifacts":
            if answer and len(answer) != len(work.nonces):
                raise EngineFailure(f"worker returned no artifacts for {len(work.nonces)} nonces")
            return [str(a) for a in answer]
        if len(answer) != len(work.nonces):
            raise EngineFailure(f"worker returned no distances for {len(work.nonces)} nonces")
        return [float(d) for d in answer]

    async def max_batch_size(self, seq_len: int, max_tokens: int) -> int:
        """The smallest of the workers' ``auto`` batch sizes: the batch must fit every rank."""
        sizes = await self.answers("poc_max_batch_size", (seq_len, max_tokens))
        return min(int(size) for size in sizes)

    async def weight_digests(self) -> list[dict[str, str]]:
        """Every worker's parameter digests, in worker order."""
        return await self.answers("poc_weight_digests", (), timeout=DIGESTS_TIMEOUT_S)

    async def unsupported(self) -> list[str]:
        """What any worker reports it cannot compute (``PoCForward.unsupported``)."""
        answers = await self.answers("poc_unsupported", (), timeout=READY_TIMEOUT_S)
        return sorted({reason for answer in answers for reason in answer})

    async def ready(self) -> str:
        """The plugin version every worker runs (EngineFailure if the extension is missing).

        Not bound by ``VLLM_POC_RPC_TIMEOUT``, which sizes PoC forwards: a small value there must
        not keep the server from starting.
        """
        return str((await self.answers("poc_ready", (), timeout=READY_TIMEOUT_S))[0])
