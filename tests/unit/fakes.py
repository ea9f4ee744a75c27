"""A fake of the engine client's ``collective_rpc`` for manager and route tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from vllm_poc.work import Work


def fake_distance(nonce: int) -> float:
    """A deterministic distance in [0, 2) per nonce."""
    return (nonce * 0.37) % 2.0


def fake_artifact(nonce: int) -> str:
    """A deterministic, well-formed artifact per nonce (12 float16 values, base64)."""
    import torch

    from vllm_poc.protocol.artifact import math as artifact

    values = torch.sin(torch.arange(12, dtype=torch.float32) + nonce)
    return artifact.encode(values / values.norm())


class FakeEngine:
    """Answers ``poc_run``, ``poc_max_batch_size`` and ``poc_ready`` like a set of workers
    would, and records every call."""

    def __init__(self, *, workers: int = 1, delay: float = 0.0, answering: int = 0) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.kwargs: list[dict[str, Any] | None] = []
        self.workers = workers
        self.answering = answering
        self.delay = delay
        self.error: BaseException | None = None
        self.max_batch_sizes: list[int | None] = [64] * workers
        """Each worker's answer to ``poc_max_batch_size``."""
        self.nonfinite: set[int] = set()
        """Nonces whose artifact batch the workers reject as non-finite."""
        self.unsupported: list[str] = []
        """Every worker's answer to ``poc_unsupported``."""
        self.running = 0
        self.most_running = 0
        self.vllm_config = _parallel_config(1)
        self._waiters: list[tuple[Callable[[FakeEngine], bool], asyncio.Future[None]]] = []

    async def until(self, condition: Callable[[FakeEngine], bool], guard: float = 60.0) -> None:
        """Return once ``condition(self)`` holds, checked whenever a call starts or ends.

        ``guard`` only keeps a broken test from hanging; nothing here waits on the clock.
        """
        if condition(self):
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((condition, future))
        await asyncio.wait_for(future, guard)

    def _notify(self) -> None:
        for waiter in list(self._waiters):
            condition, future = waiter
            if not future.done() and condition(self):
                future.set_result(None)
                self._waiters.remove(waiter)

    async def collective_rpc(
        self,
        method: str,
        timeout: float | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]:
        self.calls.append((method, args))
        self.kwargs.append(kwargs)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self._notify()
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
            self._notify()
        if self.error is not None:
            raise self.error
        if method == "poc_max_batch_size":
            return list(self.max_batch_sizes)
        if method == "poc_ready":
            return ["fake"] * self.workers
        if method == "poc_unsupported":
            return [list(self.unsupported) for _ in range(self.workers)]
        if method == "poc_weight_digests":
            return [{"layer.weight": f"digest-of-rank-{rank}"} for rank in range(self.workers)]
        assert method == "poc_run", method
        work = Work.from_payload(args[0])
        if work.kind == "artifacts":
            rejected = set(work.nonces) & self.nonfinite
            answer: list[Any] = [] if rejected else [fake_artifact(n) for n in work.nonces]
        else:
            answer = [fake_distance(n) for n in work.nonces]
        return [answer if rank == self.answering else None for rank in range(self.workers)]

    def work(self, kind: str | None = None) -> list[Work]:
        """Every ``poc_run`` unit received (of ``kind``, if given), in order."""
        units = [Work.from_payload(args[0]) for method, args in self.calls if method == "poc_run"]
        return [w for w in units if kind is None or w.kind == kind]

    @property
    def checked(self) -> list[int]:
        return [n for w in self.work() for n in w.nonces]


def _parallel_config(dp_size: int, moe: bool = False) -> SimpleNamespace:
    """The parts of a ``VllmConfig`` the plugin reads: an eager engine."""
    return SimpleNamespace(
        parallel_config=SimpleNamespace(data_parallel_size=dp_size),
        model_config=SimpleNamespace(is_moe=moe, enable_prompt_embeds=False, enforce_eager=True),
        compilation_config=SimpleNamespace(mode=0),
    )


class FakeDataParallelClient:
    """vLLM's engine client of a data-parallel deployment over ``FakeEngine``s: the seams that
    ``compat.data_parallel_engines`` reads (``core_engines`` identities, per-engine utility
    calls). ``ranks`` are the global ranks this API server fronts (all of them by default)."""

    def __init__(
        self,
        engines: Sequence[FakeEngine],
        dp_size: int | None = None,
        ranks: Sequence[int] = (),
        moe: bool = False,
    ) -> None:
        ranks = list(ranks) or list(range(len(engines)))
        self.by_rank = dict(zip(ranks, engines, strict=True))
        self.vllm_config = _parallel_config(dp_size or len(engines), moe)
        self.engine_core = SimpleNamespace(
            core_engines=[rank.to_bytes(2, "little") for rank in ranks],
            _call_utility_async=self._call_utility_async,
        )

    async def _call_utility_async(self, method: str, *args: Any, engine: bytes) -> Any:
        assert method == "collective_rpc"
        rpc_method, timeout, rpc_args, kwargs = args
        fake = self.by_rank[int.from_bytes(engine, "little")]
        return await fake.collective_rpc(rpc_method, timeout, rpc_args, kwargs)

    async def collective_rpc(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise AssertionError("PoC must address each engine, never the first one only")
