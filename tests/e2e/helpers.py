"""Small helpers shared by the end-to-end tests: the PoC HTTP calls and polling with deadlines."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from vllm_poc.client import POW_PREFIX, send

POW = POW_PREFIX
LIMITS = httpx.Limits(keepalive_expiry=2.0)
"""Drop idle connections before uvicorn's 5 s keep-alive timeout closes them: reusing one just as
the server closes it fails as "Server disconnected without sending a response"."""


def round_body(**overrides: Any) -> dict[str, Any]:
    """An /init body with small, fast defaults (node 0 of 1, every finite distance valid)."""
    body: dict[str, Any] = {
        "block_hash": "e2e-block",
        "block_height": 100,
        "public_key": "e2e-node",
        "r_target": 2.0,
        "fraud_threshold": 0.01,
        "node_id": 0,
        "node_count": 1,
        "batch_size": 4,
        "seq_len": 16,
    }
    body.update(overrides)
    return body


def ok(response: httpx.Response) -> dict[str, Any]:
    """The JSON of a 200 response (assertion with the body otherwise)."""
    assert response.status_code == 200, (
        f"{response.request.url}: {response.status_code} " + (response.text[:2000])
    )
    return response.json()


def post_ok(client: httpx.Client, path: str, json: Any = None) -> dict[str, Any]:
    data = ok(send(client, "POST", path, json))
    assert data["status"] == "OK", data
    assert isinstance(data["pow_status"], dict), data
    return data


def status(client: httpx.Client) -> dict[str, Any]:
    return ok(send(client, "GET", "/status"))


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


def wait_checked(client: httpx.Client, at_least: int, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the round has checked ``at_least`` nonces; returns that status."""

    def check() -> dict[str, Any] | None:
        s = status(client)
        assert s["error"] is None, f"round failed: {s['error']}"
        assert s["state"] == "GENERATING", s["state"]
        return s if s["total_checked"] >= at_least else None

    return wait_until(check, timeout, f"total_checked >= {at_least}")


def generate(client: httpx.Client, at_least: int, **overrides: Any) -> dict[str, Any]:
    """Run a generation round until ``at_least`` nonces are checked, stop it, return /status."""
    post_ok(client, "/init/generate", round_body(**overrides))
    wait_checked(client, at_least)
    post_ok(client, "/stop")
    final = status(client)
    assert final["state"] == "STOPPED", final
    return final


@dataclass
class Window:
    """A few seconds of a running round, from the server's own counters."""

    rate: float  # nonces checked per second
    batches: int
    posts: int  # callback POSTs that ended meanwhile (sent or failed)
    samples: list[dict[str, Any]]  # the /status answers, one every 0.25 s


def measure_round(
    client: httpx.Client, body: dict[str, Any], seconds: float = 4.0, min_samples: int = 4
) -> Window:
    """Start a round, measure it over ``seconds`` after its first batch, stop it."""
    post_ok(client, "/init/generate", body)
    s0 = wait_checked(client, 1)
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < seconds or len(samples) < min_samples:
        time.sleep(0.25)  # polling also keeps the keep-alive connection warm
        samples.append(status(client))
        assert samples[-1]["state"] == "GENERATING" and samples[-1]["error"] is None, samples[-1]
    s1, t1 = samples[-1], time.monotonic()
    post_ok(client, "/stop")

    def posts(s: dict[str, Any]) -> int:
        return s["callbacks"]["sent"] + s["callbacks"]["failed_attempts"]

    checked = s1["total_checked"] - s0["total_checked"]
    return Window(
        checked / (t1 - t0), checked // body["batch_size"], posts(s1) - posts(s0), samples
    )


def is_4xx(response: httpx.Response) -> bool:
    return 400 <= response.status_code < 500
