"""The data-parallel engines behind this API server, and how one request's work is split.

Generation gives every engine its own loop (``generation``, ``artifact_node``); validation,
calibration and ``/generate`` jobs are cut into equal chunks that the engines compute at the
same time, answered in nonce order.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from vllm_poc import compat
from vllm_poc.server.engine_rpc import EngineRPC
from vllm_poc.server.errors import EngineFailure
from vllm_poc.work import Work

T = TypeVar("T")

PIPELINE_DEPTH = 2
"""Calls in flight per engine: one running in the engine, one queued behind it."""
INTERLEAVED_DEPTH = 1
"""Calls in flight per engine while the server also serves inference: vLLM's engine core
handles every queued request before it runs a scheduler step, so with a PoC call always queued
a completion would wait for the whole job; with one in flight, a step runs between two calls
(the worker still prepares the next call's inputs during each forward)."""

ChunkDone = Callable[[int, list[int], list[Any], float], None]
"""Called with ``(dp_rank, nonces, answer, seconds)`` as an engine finishes a chunk."""


async def every(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Every result, in order; when one call fails, the others are cancelled."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


class Engines:
    """The engines this API server fronts (one without data parallelism)."""

    def __init__(self, rpcs: Sequence[EngineRPC], dp_size: int | None = None) -> None:
        if not rpcs:
            raise ValueError("no engine")
        self.rpcs = sorted(rpcs, key=lambda rpc: rpc.dp_rank)
        self.dp_size = dp_size or len(self.rpcs)
        """The deployment's data-parallel size (more than ``rpcs`` with external balancing)."""

    @classmethod
    def of(cls, engine_client: Any) -> Engines:
        engines, dp_size = compat.data_parallel_engines(engine_client)
        return cls([EngineRPC(engine, rank) for rank, engine in engines.items()], dp_size)

    @property
    def ranks(self) -> list[int]:
        return [rpc.dp_rank for rpc in self.rpcs]

    async def ready(self) -> str:
        """The plugin version every worker of every engine runs."""
        versions = set(await every(rpc.ready() for rpc in self.rpcs))
        if len(versions) != 1:
            raise EngineFailure(f"engines run different vllm-poc versions: {sorted(versions)}")
        return versions.pop()

    async def unsupported(self) -> list[str]:
        """What any worker of any engine cannot compute; empty when PoC can run."""
        return sorted(
            {r for reasons in await every(rpc.unsupported() for rpc in self.rpcs) for r in reasons}
        )

    async def max_batch_size(self, seq_len: int, max_tokens: int) -> int:
        """The smallest engine's ``auto`` batch size: one round runs one shape everywhere."""
        return min(await every(rpc.max_batch_size(seq_len, max_tokens) for rpc in self.rpcs))

    async def weight_digests(self) -> list[list[dict[str, str]]]:
        """Every engine's per-worker parameter digests (``fingerprint``), in rank order."""
        return await every(rpc.weight_digests() for rpc in self.rpcs)

    async def run(
        self,
        work: Work,
        batch_size: int,
        on_chunk: ChunkDone | None = None,
        *,
        interleave: bool = False,
    ) -> list[tuple[list[int], list[Any]]]:
        """``work`` on chunks of at most ``batch_size`` of its nonces spread over the engines
        (chunk ``i`` on engine ``i mod n``): each chunk with its answer (``EngineRPC.run``), in
        order. Each engine keeps ``PIPELINE_DEPTH`` of its chunks in flight, each naming the
        next, so its worker prepares a chunk's inputs during the forward before it.
        ``on_chunk(dp_rank, chunk, answer, seconds)`` hears of each chunk as soon as its engine
        is done with it. ``interleave``: inference is served meanwhile, so each engine keeps
        ``INTERLEAVED_DEPTH`` calls in flight instead."""
        nonces = list(work.nonces)
        depth = INTERLEAVED_DEPTH if interleave else PIPELINE_DEPTH
        per_chunk = max(1, min(batch_size, math.ceil(len(nonces) / len(self.rpcs))))
        chunks = [nonces[i : i + per_chunk] for i in range(0, len(nonces), per_chunk)]
        n = len(self.rpcs)

        async def engine(e: int) -> list[list[Any]]:
            rpc, mine = self.rpcs[e], chunks[e::n]
            last_done = time.monotonic()

            async def one(unit: Work) -> list[Any]:
                nonlocal last_done
                start = time.monotonic()
                answer = await rpc.run(unit)
                now = time.monotonic()  # the engine's time for it: not the wait behind another
                seconds, last_done = now - max(start, last_done), now
                if on_chunk is not None:
                    on_chunk(rpc.dp_rank, list(unit.nonces), answer, seconds)
                return answer

            nexts = [*mine[1:], []]
            units = (work.with_nonces(c, m) for c, m in zip(mine, nexts, strict=True))
            return await pipelined((one(unit) for unit in units), depth)

        per_engine = await every(engine(e) for e in range(min(len(chunks), n)))
        return [(chunk, per_engine[i % n][i // n]) for i, chunk in enumerate(chunks)]


async def pipelined(calls: Iterable[Awaitable[T]], depth: int = 0) -> list[T]:
    """``calls`` in order, at most ``depth`` (default ``PIPELINE_DEPTH``) running at once: the
    engine runs one RPC at a time, the next one queued behind it starts as soon as it ends.
    When one fails, the others are cancelled."""
    depth = depth or PIPELINE_DEPTH
    pending: collections.deque[asyncio.Future[T]] = collections.deque()
    results: list[T] = []
    try:
        for call in calls:
            pending.append(asyncio.ensure_future(call))
            if len(pending) >= depth:
                results.append(await pending.popleft())
        while pending:
            results.append(await pending.popleft())
    finally:
        for future in pending:
            future.cancel()
    return results


async def endless(
    rpc: EngineRPC,
    work: Work,
    take: Callable[[], list[int]],
    done: ChunkDone,
    running: Callable[[], bool] = lambda: True,
) -> None:
    """A generation loop on one engine: ``work`` on the next ``take()`` nonces, with
    ``PIPELINE_DEPTH`` calls in flight, each naming the nonces of the one behind it; ``done``
    hears of each call in order, with the engine's seconds for it. Runs while ``running()``
    (until cancelled); a failure ends it, the calls in flight cancelled."""
    in_flight: collections.deque[tuple[list[int], asyncio.Future[list[Any]]]] = collections.deque()
    upcoming = take()
    last_done = time.monotonic()
    try:
        while running():
            while len(in_flight) < PIPELINE_DEPTH:
                nonces, upcoming = upcoming, take()
                call = asyncio.ensure_future(rpc.run(work.with_nonces(nonces, upcoming)))
                in_flight.append((nonces, call))
            nonces, oldest = in_flight.popleft()
            answer = await oldest
            now = time.monotonic()
            done(rpc.dp_rank, nonces, answer, now - last_done)
            last_done = now
    finally:
        for _, pending in in_flight:
            pending.cancel()
