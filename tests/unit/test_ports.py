"""Test servers' ports come from below the kernel's ephemeral range, free when chosen."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from vllm_poc.testing import ports


def test_a_port_below_the_ephemeral_range_that_nothing_holds() -> None:
    end = ports.ephemeral_start()
    drawn = {ports.free_port() for _ in range(20)}
    assert all(ports.LOWEST <= port < end for port in drawn), (drawn, end)
    assert len(drawn) > 1, "drawn at random, not the same port every time"
    for port in drawn:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


class _Draws:
    def __init__(self, values: list[int]) -> None:
        self.values: Iterator[int] = iter(values)

    def randrange(self, start: int, stop: int) -> int:
        return next(self.values)


def test_a_port_in_use_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", ports.free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        free = ports.free_port()
        monkeypatch.setattr(ports, "_DRAW", _Draws([taken, free]))
        assert ports.free_port() == free
