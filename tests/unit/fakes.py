"""A fake of the engine client's ``collective_rpc`` for manager and route tests."""

from __future__ import annotations

import asyncio
from typing import Any


def fake_distance(nonce: int) -> float:
    """A deterministic distance in [0, 2) per nonce."""
    return (nonce * 0.37) % 2.0


class FakeEngine:
    """Answers ``poc_distances`` and ``poc_max_batch_size`` like a set of workers would, and
    records every call."""

    def __init__(self, *, workers: int = 1, delay: float = 0.0, answering: int = 0) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.kwargs: list[dict[str, Any] | None] = []
        self.workers = workers
        self.answering = answering
        self.delay = delay
        self.error: BaseException | None = None
        self.max_batch_sizes: list[int | None] = [64] * workers
        """Each worker's answer to ``poc_max_batch_size``."""

    async def collective_rpc(
        self,
        method: str,
        timeout: float | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]:
        self.calls.append((method, args))
        self.kwargs.append(kwargs)
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        if method == "poc_max_batch_size":
            return list(self.max_batch_sizes)
        assert method == "poc_distances"
        _, _, nonces, _ = args
        answer = [fake_distance(n) for n in nonces]
        return [answer if rank == self.answering else None for rank in range(self.workers)]

    @property
    def checked(self) -> list[int]:
        return [n for _, args in self.calls for n in args[2]]
