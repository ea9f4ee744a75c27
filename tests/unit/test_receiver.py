"""The test receiver keeps every POST with its ``Idempotency-Key`` and can drop the repeats."""

from __future__ import annotations

import httpx
import pytest

from vllm_poc.testing.receiver import CallbackReceiver, dead_url


def test_unique_bodies_drop_repeated_keys_and_keep_arrival_order() -> None:
    with CallbackReceiver() as receiver:
        for body, key in [({"n": 1}, "a"), ({"n": 1}, "a"), ({"n": 2}, "b"), ({"n": 3}, None)]:
            headers = {"Idempotency-Key": key} if key else {}
            httpx.post(f"{receiver.url}/generated", json=body, headers=headers).raise_for_status()
        assert [r.key for r in receiver.records("/generated")] == ["a", "a", "b", None]
        assert receiver.unique_bodies("/generated") == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert receiver.unique_bodies("/validated") == []


def test_a_receiver_comes_up_where_a_dead_url_was() -> None:
    down = dead_url()
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{down}/generated", json={})
    with CallbackReceiver(port=int(down.rsplit(":", 1)[1])) as receiver:
        assert receiver.url == down
        httpx.post(f"{down}/generated", json={"n": 1}).raise_for_status()
        assert receiver.bodies("/generated") == [{"n": 1}]
