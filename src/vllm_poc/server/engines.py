"""The data-parallel engines behind this API server, and how one request's work is split.

Distance generation gives every engine its own loop (``generation``); validation, calibration
and the artifact protocol's steps are cut into equal chunks that the engines compute at the same
time, answered in nonce order.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from vllm_poc import compat
from vllm_poc.server.engine_rpc import EngineRPC
from vllm_poc.server.errors import EngineFailure

T = TypeVar("T")


async def _all(calls: Iterable[Awaitable[T]]) -> list[T]:
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
        versions = set(await _all(rpc.ready() for rpc in self.rpcs))
        if len(versions) != 1:
            raise EngineFailure(f"engines run different vllm-poc versions: {sorted(versions)}")
        return versions.pop()

    async def unsupported(self) -> list[str]:
        """What any worker of any engine cannot compute; empty when PoC can run."""
        return sorted(
            {r for reasons in await _all(rpc.unsupported() for rpc in self.rpcs) for r in reasons}
        )

    async def max_batch_size(self, seq_len: int, max_tokens: int) -> int:
        """The smallest engine's ``auto`` batch size: one round runs one shape everywhere."""
        return min(await _all(rpc.max_batch_size(seq_len, max_tokens) for rpc in self.rpcs))

    async def weight_digests(self) -> list[list[dict[str, str]]]:
        """Every engine's per-worker parameter digests (``fingerprint``), in rank order."""
        return await _all(rpc.weight_digests() for rpc in self.rpcs)

    async def distances(
        self,
        block_hash: str,
        public_key: str,
        nonces: list[int],
        seq_len: int,
        batch_size: int,
        random_projection: bool = False,
        seed_derivation: str = "v1",
    ) -> list[float]:
        """Distances of ``nonces`` in order, in forwards of at most ``batch_size``, spread over
        the engines (``spread``)."""

        def call(rpc: EngineRPC, chunk: list[int]) -> Awaitable[list[float]]:
            return rpc.distances(
                block_hash, public_key, chunk, seq_len, random_projection, seed_derivation
            )

        return [d for _, chunk in await self.spread(nonces, batch_size, call) for d in chunk]

    async def artifacts(
        self,
        block_hash: str,
        public_key: str,
        nonces: list[int],
        seq_len: int,
        batch_size: int,
        stronger_rng: bool = False,
        k_dim: int = 12,
        on_chunk: Callable[[int, list[int], list[str], float], None] | None = None,
    ) -> list[tuple[list[int], list[str]]]:
        """Artifact-protocol vectors per chunk of ``nonces``, in order (``spread``); a chunk
        that the worker rejected as non-finite has ``[]``. ``on_chunk(dp_rank, chunk, vectors,
        seconds)`` hears of each chunk as soon as its engine is done with it."""

        async def call(rpc: EngineRPC, chunk: list[int]) -> list[str]:
            start = time.monotonic()
            vectors = await rpc.artifacts(
                block_hash, public_key, chunk, seq_len, stronger_rng, k_dim
            )
            if on_chunk is not None:
                on_chunk(rpc.dp_rank, chunk, vectors, time.monotonic() - start)
            return vectors

        return await self.spread(nonces, batch_size, call)

    async def spread(
        self,
        nonces: list[int],
        batch_size: int,
        call: Callable[[EngineRPC, list[int]], Awaitable[list[T]]],
    ) -> list[tuple[list[int], list[T]]]:
        """``call`` on chunks of at most ``batch_size`` nonces spread over the engines (chunk
        ``i`` on engine ``i mod n``; each engine runs its chunks in turn): each chunk with its
        result, in order."""
        per_chunk = max(1, min(batch_size, math.ceil(len(nonces) / len(self.rpcs))))
        chunks = [nonces[i : i + per_chunk] for i in range(0, len(nonces), per_chunk)]

        async def run(engine: int) -> list[list[T]]:
            return [await call(self.rpcs[engine], c) for c in chunks[engine :: len(self.rpcs)]]

        per_engine = await _all(run(e) for e in range(min(len(chunks), len(self.rpcs))))
        n = len(self.rpcs)
        return [(chunk, per_engine[i % n][i // n]) for i, chunk in enumerate(chunks)]
