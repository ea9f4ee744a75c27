"""``PoCCallbackSender`` against an in-process receiver (``httpx.MockTransport``, no network).

pytest-asyncio is not installed: each test is a sync function running a coroutine with
``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from vllm_poc.protocol.distance.batches import ProofBatch, ValidatedBatch
from vllm_poc.server import callbacks as sender_module
from vllm_poc.server.callbacks import PoCCallbackSender

URL = "http://receiver.test/callback"


# ---------------------------------------------------------------- helpers

Answer = Callable[[httpx.Request, int], Awaitable[httpx.Response]]


class Receiver:
    """Records every request; ``answer`` decides the response (or raises, or hangs)."""

    def __init__(self, answer: Answer | None = None):
        self.requests: list[httpx.Request] = []
        self.delivered: list[tuple[str, Any]] = []  # (path, json) of the 2xx answers
        self._answer = answer

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self._answer is None:
            response = httpx.Response(200)
        else:
            response = await self._answer(request, len(self.requests))
        if response.is_success:
            self.delivered.append((request.url.path, json.loads(request.content)))
        return response

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


def failing_first(n: int, failure: str = "500"):
    """An answer that fails the first ``n`` requests (HTTP 500 or a connection error)."""

    async def answer(request: httpx.Request, number: int) -> httpx.Response:
        if number <= n:
            if failure == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            if failure == "timeout":
                raise httpx.ReadTimeout("timed out", request=request)
            return httpx.Response(int(failure))
        return httpx.Response(200)

    return answer


class Hang:
    """An answer that waits until ``release`` is called."""

    def __init__(self) -> None:
        self.released = asyncio.Event()

    def release(self) -> None:
        self.released.set()

    async def __call__(self, request: httpx.Request, number: int) -> httpx.Response:
        await self.released.wait()
        return httpx.Response(200)


async def until(condition: Callable[[], bool], guard: float = 60.0) -> None:
    """Yield to the sender's tasks until ``condition`` holds.

    The sender has no hook to wait on, so this re-checks after every turn of the event loop;
    ``guard`` only keeps a broken test from hanging (a loaded machine never reaches it).
    """

    async def turns() -> None:
        while not condition():
            await asyncio.sleep(0)

    try:
        await asyncio.wait_for(turns(), guard)
    except TimeoutError:
        raise AssertionError(f"condition not reached in {guard} s") from None


async def close(s: PoCCallbackSender) -> None:
    """``aclose`` that fails the test instead of hanging (shielded: a timeout can't finish it)."""
    await asyncio.wait_for(asyncio.shield(s.aclose()), 2.0)


def batch(nonces: list[int], dist: list[float], height: int = 7) -> ProofBatch:
    return ProofBatch(
        public_key="pk", block_hash="bh", block_height=height, nonces=nonces, dist=dist, node_id=0
    )


def verdict(height: int = 7) -> ValidatedBatch:
    return ValidatedBatch(
        public_key="pk",
        block_hash="bh",
        block_height=height,
        nonces=[1, 2, 3],
        received_dist=[0.1, 0.2, 0.3],
        dist=[0.1, 0.25, 0.9],
        r_target=0.5,
        fraud_threshold=0.01,
        node_id=0,
    )


class FakeSleep:
    """Records the delays the sender asks ``asyncio.sleep`` for; waits only while ``hold``."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.hold = False

    async def __call__(self, delay: float, *args: Any, **kwargs: Any) -> None:
        self.delays.append(delay)
        await REAL_SLEEP(0)
        while self.hold:
            await REAL_SLEEP(0.001)


REAL_SLEEP = asyncio.sleep


@pytest.fixture
def fake_sleep(monkeypatch) -> FakeSleep:
    """Replaces ``asyncio.sleep`` for the sender module only; the tests' own sleeps stay real."""
    fake = FakeSleep()
    fake_asyncio = SimpleNamespace(
        **{name: getattr(asyncio, name) for name in dir(asyncio) if not name.startswith("__")}
    )
    fake_asyncio.sleep = fake
    monkeypatch.setattr(sender_module, "asyncio", fake_asyncio)
    return fake


@pytest.fixture
def sleeps(fake_sleep) -> list[float]:
    """The delays the sender asked to sleep for (each returns at once)."""
    return fake_sleep.delays


@pytest.fixture
def records():
    """Log records of the sender's logger (vLLM's logger may not propagate to the root)."""
    captured: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = captured.append
    logger = logging.getLogger(sender_module.logger.name)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield captured
    logger.removeHandler(handler)
    logger.setLevel(old_level)


# ---------------------------------------------------------------- what is posted where


def test_generated_posts_only_the_valid_nonces():
    receiver = Receiver()

    async def main():
        s = PoCCallbackSender(client=receiver.client())
        s.submit_generated(URL, batch([1, 2, 3, 4], [0.1, 0.9, 0.3, 0.5]).sub_batch(0.5))
        await until(lambda: s.stats.sent == 1)
        await close(s)
        return s

    s = asyncio.run(main())
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.method == "POST"
    assert str(request.url) == f"{URL}/generated"
    assert receiver.delivered == [
        ("/callback/generated", asdict(batch([1, 3], [0.1, 0.3]))),
    ]
    assert s.stats == sender_module.SenderStats(sent=1, failed_attempts=0, dropped=0)


@pytest.mark.parametrize("dist", [[0.6, 0.9], [0.5], [float("nan")], []])
def test_nothing_is_posted_for_a_batch_without_valid_nonces(dist):
    receiver = Receiver()

    async def main():
        s = PoCCallbackSender(client=receiver.client())
        s.submit_generated(URL, batch(list(range(len(dist))), dist).sub_batch(0.5))
        assert s.pending == 0
        # A later valid batch is delivered, so the sender did run in between.
        s.submit_generated(URL, batch([9], [0.1], height=8).sub_batch(0.5))
        await until(lambda: s.stats.sent == 1)
        await close(s)

    asyncio.run(main())
    assert [body["block_height"] for _, body in receiver.delivered] == [8]


def test_trailing_slash_on_the_url():
    receiver = Receiver()

    async def main():
        s = PoCCallbackSender(client=receiver.client())
        s.submit_generated(URL + "/", batch([1], [0.1]).sub_batch(0.5))
        s.submit_validated(URL + "/", verdict())
        await until(lambda: s.stats.sent == 2)
        await close(s)

    asyncio.run(main())
    assert [str(r.url) for r in receiver.requests] == [f"{URL}/generated", f"{URL}/validated"]


def test_validated_payload_is_the_dataclass_as_dict():
    receiver = Receiver()
    vb = verdict()
    assert vb.n_invalid == 1  # computed in __post_init__: part of the payload

    async def main():
        s = PoCCallbackSender(client=receiver.client())
        s.submit_validated(URL, vb)
        await until(lambda: s.stats.sent == 1)
        await close(s)

    asyncio.run(main())
    assert [str(r.url) for r in receiver.requests] == [f"{URL}/validated"]
    assert receiver.delivered == [("/callback/validated", asdict(vb))]


def test_delivery_follows_submission_order():
    receiver = Receiver()

    async def main():
        s = PoCCallbackSender(client=receiver.client())
        for height in range(10):
            if height % 3 == 0:
                s.submit_validated(URL, verdict(height))
            else:
                s.submit_generated(URL, batch([height], [0.1], height).sub_batch(0.5))
        await until(lambda: s.stats.sent == 10)
        await close(s)

    asyncio.run(main())
    assert [body["block_height"] for _, body in receiver.delivered] == list(range(10))
    assert [path.rsplit("/", 1)[1] for path, _ in receiver.delivered] == [
        "validated" if h % 3 == 0 else "generated" for h in range(10)
    ]


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize("failures", [0, 1, 2, 3])
def test_failing_receiver_gets_every_item_once_and_in_order(failures):
    receiver = Receiver(failing_first(failures))

    async def main():
        s = PoCCallbackSender(client=receiver.client(), max_retries=3, backoff_base=0.001)
        for height in range(4):
            s.submit_generated(URL, batch([height], [0.1], height).sub_batch(0.5))
        await until(lambda: s.stats.sent + s.stats.dropped == 4)
        await close(s)
        return s

    s = asyncio.run(main())
    assert [body["block_height"] for _, body in receiver.delivered] == [0, 1, 2, 3]
    assert len(receiver.requests) == 4 + failures
    # Every retry is the first item again: nothing overtakes a failing post.
    assert [json.loads(r.content)["block_height"] for r in receiver.requests[:failures]] == [
        0
    ] * failures
    assert s.stats == sender_module.SenderStats(sent=4, failed_attempts=failures, dropped=0)
    assert s.pending == 0


def test_every_attempt_at_a_payload_carries_its_one_idempotency_key(sleeps):
    """A receiver that took a post whose answer timed out gets it again: the repeat names the
    same key, so it can be dropped; two payloads never share one."""
    receiver = Receiver(failing_first(2, "timeout"))

    async def main():
        s = PoCCallbackSender(client=receiver.client(), max_retries=5)
        s.submit_generated(URL, batch([1], [0.1]).sub_batch(0.5))
        s.submit_generated(URL, batch([2], [0.1]).sub_batch(0.5))
        await until(lambda: s.stats.sent == 2)
        await close(s)

    asyncio.run(main())
    keys = [r.headers[sender_module.IDEMPOTENCY_HEADER] for r in receiver.requests]
    nonces = [json.loads(r.content)["nonces"] for r in receiver.requests]
    assert nonces == [[1], [1], [1], [2]]
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert all(len(k) == 32 for k in keys)


def test_a_delivery_is_finished_once_sent_dropped_after_retries_or_overflowed(sleeps):
    receiver = Receiver(failing_first(2))

    async def main():
        s = PoCCallbackSender(client=receiver.client(), max_retries=1, queue_size=1)
        overflowed = s.submit(URL + "/generated", {"n": 1})  # pushed out by the next
        given_up = s.submit(URL + "/generated", {"n": 2})  # 2 attempts, both refused
        assert overflowed.finished and not given_up.finished
        await until(lambda: given_up.finished)
        sent = s.submit(URL + "/generated", {"n": 3})
        assert not sent.finished
        await until(lambda: sent.finished)
        await close(s)
        return s

    s = asyncio.run(main())
    assert s.stats == sender_module.SenderStats(sent=1, failed_attempts=2, dropped=2)
    assert [body for _, body in receiver.delivered] == [{"n": 3}]


@pytest.mark.parametrize("failure", ["500", "503", "404", "connect", "timeout"])
def test_http_errors_and_connection_errors_are_failures(sleeps, failure):
    receiver = Receiver(failing_first(2, failure))

    async def main():
        s = PoCCallbackSender(client=receiver.client(), max_retries=5)
        s.submit_validated(URL, verdict())
        await until(lambda: s.stats.sent == 1)
        await close(s)
        return s

    s = asyncio.run(main())
    assert s.stats == sender_module.SenderStats(sent=1, failed_attempts=2, dropped=0)
    assert len(receiver.requests) == 3
    assert len(receiver.delivered) == 1
    assert len(sleeps) == 2


def test_backoff_doubles_up_to_the_maximum(sleeps):
    receiver = Receiver(failing_first(10**6))

    async def main():
        s = PoCCallbackSender(
            client=receiver.client(), max_retries=6, backoff_base=0.5, backoff_max=3.0
        )
        s.submit_validated(URL, verdict())
        await until(lambda: s.stats.dropped == 1)
        await close(s)

    asyncio.run(main())
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_item_is_dropped_after_one_plus_max_retries_attempts(sleeps, records):
    receiver = Receiver(failing_first(4, "connect"))

    async def main():
        s = PoCCallbackSender(client=receiver.client(), max_retries=3)
        s.submit_generated(URL, batch([1], [0.1], height=1).sub_batch(0.5))
        s.submit_generated(URL, batch([2], [0.1], height=2).sub_batch(0.5))
        await until(lambda: s.stats.sent + s.stats.dropped == 2)
        await close(s)
        return s

    s = asyncio.run(main())
    heights = [json.loads(r.content)["block_height"] for r in receiver.requests]
    assert heights == [1, 1, 1, 1, 2]  # 1 + max_retries attempts, then the next item
    assert s.stats == sender_module.SenderStats(sent=1, failed_attempts=4, dropped=1)
    assert [body["block_height"] for _, body in receiver.delivered] == [2]
    assert len(sleeps) == 3  # no wait after the last attempt of a dropped item
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "dropped" in errors[0].getMessage()
    assert f"{URL}/generated" in errors[0].getMessage()
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 4  # one per failed attempt


def test_a_post_that_cannot_be_made_is_dropped_at_once_and_the_lane_goes_on(sleeps, records):
    """A payload httpx cannot send (NaN is not JSON) is our failure, not the receiver's: one
    attempt, an error with its traceback, and the items behind it still go out."""
    receiver = Receiver()

    async def main():
        s = PoCCallbackSender(client=receiver.client(), max_retries=5)
        unsendable = s.submit(URL, {"x": float("nan")})
        s.submit(URL, {"n": 2})
        await until(lambda: s.stats.sent + s.stats.dropped == 2)
        await close(s)
        return s, unsendable

    s, unsendable = asyncio.run(main())
    assert unsendable.finished and unsendable.attempts == 1
    assert s.stats == sender_module.SenderStats(sent=1, failed_attempts=1, dropped=1)
    assert s.pending == 0
    assert [body for _, body in receiver.delivered] == [{"n": 2}]
    assert sleeps == []
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert [r.exc_info is not None for r in errors] == [True, False]
    assert "cannot post a callback" in errors[0].getMessage()
    assert "dropped" in errors[1].getMessage() and URL in errors[1].getMessage()


def test_zero_retries_means_one_attempt(sleeps):
    receiver = Receiver(failing_first(1))

    async def main():
        s = PoCCallbackSender(client=receiver.client(), max_retries=0)
        s.submit_validated(URL, verdict())
        await until(lambda: s.stats.dropped == 1)
        await close(s)
        return s

    s = asyncio.run(main())
    assert len(receiver.requests) == 1
    assert s.stats == sender_module.SenderStats(sent=0, failed_attempts=1, dropped=1)
    assert sleeps == []


# ---------------------------------------------------------------- bounded queue


def test_full_queue_drops_the_oldest_waiting_items(records):
    hang = Hang()
    receiver = Receiver(hang)
    queue_size = 3

    async def main():
        s = PoCCallbackSender(client=receiver.client(), queue_size=queue_size)
        s.submit_generated(URL, batch([0], [0.1], height=0).sub_batch(0.5))
        await until(lambda: len(receiver.requests) == 1)  # item 0 is in flight
        assert s.pending == 1
        for height in range(1, 8):
            s.submit_generated(URL, batch([height], [0.1], height).sub_batch(0.5))
            assert s.pending <= queue_size + 1
        assert s.pending == queue_size + 1
        assert s.stats.dropped == 7 - queue_size
        hang.release()
        await until(lambda: s.pending == 0)
        await close(s)
        return s

    s = asyncio.run(main())
    # The item in flight survives; of the waiting ones the newest queue_size survive.
    assert [body["block_height"] for _, body in receiver.delivered] == [0, 5, 6, 7]
    assert s.stats == sender_module.SenderStats(sent=4, failed_attempts=0, dropped=4)
    # Every drop is in the log: the first at once, the others when the lane drained.
    assert _logged_drops(records) == [1, 3]


def _logged_drops(records: list[logging.LogRecord]) -> list[int]:
    """The drop counts of the "queue full" warnings, in order."""
    full = [r for r in records if "queue full" in r.getMessage()]
    assert all(r.levelno == logging.WARNING for r in full)
    return [int(re.search(r": (\d+) posts dropped", r.getMessage())[1]) for r in full]


def test_overflow_drops_are_logged_at_most_once_per_interval(records, monkeypatch):
    hang = Hang()
    receiver = Receiver(hang)

    async def main():
        s = PoCCallbackSender(client=receiver.client(), queue_size=1)
        s.submit_generated(URL, batch([0], [0.1], height=0).sub_batch(0.5))
        await until(lambda: len(receiver.requests) == 1)
        monkeypatch.setattr(sender_module, "DROP_LOG_INTERVAL_S", 3600.0)
        for height in range(1, 102):  # 100 drops, the first logged at once
            s.submit_generated(URL, batch([height], [0.1], height).sub_batch(0.5))
        assert _logged_drops(records) == [1]
        monkeypatch.setattr(sender_module, "DROP_LOG_INTERVAL_S", 0.0)  # the interval is over
        s.submit_generated(URL, batch([102], [0.1], 102).sub_batch(0.5))
        assert _logged_drops(records) == [1, 100]
        monkeypatch.setattr(sender_module, "DROP_LOG_INTERVAL_S", 3600.0)
        s.submit_generated(URL, batch([103], [0.1], 103).sub_batch(0.5))
        await close(s)  # shutting down reports what is left
        return s

    s = asyncio.run(main())
    assert s.stats.dropped == 102
    assert _logged_drops(records) == [1, 100, 1]


def test_an_item_waiting_for_its_retry_is_queued_and_can_be_dropped(fake_sleep):
    # Between attempts the item is back at the head of the queue (not in flight): it counts
    # toward queue_size and, being the oldest, is the one an overflow drops.
    receiver = Receiver(failing_first(1))
    fake_sleep.hold = True

    async def main():
        s = PoCCallbackSender(client=receiver.client(), queue_size=2, max_retries=3)
        s.submit_generated(URL, batch([0], [0.1], height=0).sub_batch(0.5))
        await until(lambda: len(fake_sleep.delays) == 1)  # item 0 failed, backing off
        assert s.pending == 1
        s.submit_generated(URL, batch([1], [0.1], height=1).sub_batch(0.5))
        assert s.stats.dropped == 0
        s.submit_generated(URL, batch([2], [0.1], height=2).sub_batch(0.5))
        assert s.stats.dropped == 1
        assert s.pending == 2
        fake_sleep.hold = False
        await until(lambda: s.pending == 0)
        await close(s)
        return s

    s = asyncio.run(main())
    assert [body["block_height"] for _, body in receiver.delivered] == [1, 2]
    assert s.stats == sender_module.SenderStats(sent=2, failed_attempts=1, dropped=1)


def test_submit_returns_immediately_while_the_receiver_hangs():
    assert not inspect.iscoroutinefunction(PoCCallbackSender.submit_generated)
    assert not inspect.iscoroutinefunction(PoCCallbackSender.submit_validated)
    hang = Hang()
    receiver = Receiver(hang)

    async def main():
        s = PoCCallbackSender(client=receiver.client(), queue_size=10_000)
        s.submit_validated(URL, verdict(0))
        await until(lambda: len(receiver.requests) == 1)
        turns: list[int] = []
        asyncio.get_running_loop().call_soon(turns.append, 1)
        for height in range(1, 501):
            s.submit_generated(URL, batch([height], [0.1], height).sub_batch(0.5))
        # The 500 submits ended without the event loop turning once: none of them waited on
        # the hanging receiver, or on anything else.
        assert turns == []
        assert s.pending == 501
        assert len(receiver.requests) == 1  # nothing else was posted meanwhile
        hang.release()
        await until(lambda: s.pending == 0)
        await close(s)
        return s

    s = asyncio.run(main())
    assert s.stats.sent == 501


# ---------------------------------------------------------------- shutdown


def test_aclose_cancels_the_delivery_task_cleanly():
    hang = Hang()
    receiver = Receiver(hang)

    async def main():
        client = receiver.client()
        s = PoCCallbackSender(client=client)
        s.submit_validated(URL, verdict())
        await until(lambda: len(receiver.requests) == 1)
        (lane,) = s._lanes.values()
        task = lane.task
        assert task is not None and not task.done()
        await close(s)
        assert task.cancelled()
        assert client.is_closed
        assert s.stats.sent == 0
        return s

    asyncio.run(main())


def test_aclose_without_any_submission():
    receiver = Receiver()

    async def main():
        client = receiver.client()
        s = PoCCallbackSender(client=client)
        await close(s)
        assert client.is_closed

    asyncio.run(main())
    assert receiver.requests == []


def test_aclose_while_waiting_for_work():
    receiver = Receiver()

    async def main():
        s = PoCCallbackSender(client=receiver.client())
        s.submit_validated(URL, verdict())
        await until(lambda: s.stats.sent == 1)
        await asyncio.sleep(0.01)  # the lane is empty: its task has ended and retired it
        assert s._lanes == {}
        await close(s)

    asyncio.run(main())


def test_a_dead_receiver_does_not_delay_another_one():
    """Posts to a receiver that is down (say, last round's) wait in their own lane."""
    receiver = Receiver()

    async def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "dead":
            raise httpx.ConnectError("down", request=request)
        return await receiver(request)

    async def main():
        s = PoCCallbackSender(
            client=httpx.AsyncClient(transport=httpx.MockTransport(route)),
            max_retries=50,
            backoff_base=10.0,
        )
        s.submit_validated("http://dead:1/cb", verdict())
        s.submit_validated(URL, verdict())
        await until(lambda: s.stats.sent == 1)
        assert s.pending == 1  # the dead receiver's post, backing off
        await close(s)

    asyncio.run(main())
