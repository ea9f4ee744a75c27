"""Small helpers shared by the end-to-end tests: the PoC HTTP calls and polling with deadlines."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from vllm_poc.client import POW_PREFIX, send
from vllm_poc.testing.server import LocalServer

POW = POW_PREFIX
LIMITS = httpx.Limits(keepalive_expiry=2.0)
"""Drop idle connections before uvicorn's 5 s keep-alive timeout closes them: reusing one just as
the server closes it fails as "Server disconnected without sending a response"."""


def stop_round(server: LocalServer, headers: dict[str, str] | None = None) -> None:
    """``POST /stop`` on a fresh connection, sent up to three times (it is idempotent).

    A teardown must not leave a round generating: on this 2-core machine a generating engine
    leaves other processes almost no CPU (vLLM's engine core polls for its worker's answer), so
    the next server to start was measured not printing a line in 300 s.
    """
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.base_url, timeout=60.0, headers=headers, limits=fresh) as c:
        for attempt in range(3):
            try:
                ok(c.post(POW + "/stop"))
                return
            except httpx.TransportError:
                if attempt == 2:
                    raise


_STARTED: list[tuple[LocalServer, dict[str, str]]] = []


def start_server(server: LocalServer, headers: dict[str, str] | None = None) -> LocalServer:
    """Start ``server`` after stopping any round still generating on the session's other servers
    (see ``stop_round``), so that a failed teardown cannot starve every later start. Every
    start is counted (``record_start``), a refused one too."""
    for other, other_headers in _STARTED:
        if not other.alive() or other.headless or not other.poc_enabled:
            continue
        with httpx.Client(base_url=other.base_url, timeout=60.0, headers=other_headers) as c:
            now = status(c)
        if "GENERATING" in (now.get("state"), now.get("status")):
            print(f"\n[e2e] a round was left generating on {other.base_url}; stopping it")
            stop_round(other, other_headers)
    try:
        server.start()
    finally:
        record_start(server.log_path.stem, server.startup_seconds or 0.0)
    _STARTED.append((server, dict(headers or {})))
    if not server.headless:
        print(f"\n[e2e] {server.log_path.stem} healthy after {server.startup_seconds:.1f} s")
    return server


STARTS_FILE_ENV = "E2E_SERVER_STARTS_FILE"
"""Where the session appends one JSON line per vLLM start (``.ci/run`` counts them)."""
STARTS: list[tuple[str, float]] = []
"""Every vLLM start of the session (servers and engines the tests start), with its seconds."""


def record_start(what: str, seconds: float = 0.0) -> None:
    """Count a vLLM start: in ``STARTS``, and in ``$E2E_SERVER_STARTS_FILE`` if set."""
    STARTS.append((what, seconds))
    path = os.environ.get(STARTS_FILE_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"what": what, "seconds": round(seconds, 1)}) + "\n")


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


def wait_every_engine(
    client: httpx.Client, at_least: int, timeout: float = 120.0
) -> dict[str, Any]:
    """Wait until every data-parallel engine has checked ``at_least`` nonces (engines start
    their first batch at different times); returns that status."""

    def check() -> dict[str, Any] | None:
        s = status(client)
        assert s["error"] is None, f"round failed: {s['error']}"
        assert s["state"] == "GENERATING", s["state"]
        return s if all(e["checked"] >= at_least for e in s["engines"]) else None

    return wait_until(check, timeout, f"every engine to check {at_least} nonces")


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


def first_nonces(final: dict[str, Any], n: int = 64) -> dict[str, Any]:
    """``final`` (a /status) with its first ``n`` valid nonces only: a fast engine reports
    thousands before /stop lands, more than one /validate body may carry."""
    return {**final, **{k: final[k][:n] for k in ("valid_nonces", "valid_distances")}}


def is_4xx(response: httpx.Response) -> bool:
    return 400 <= response.status_code < 500


def proof_body(
    block: str, key: str, nonces: list[int] | range, dist: list[float]
) -> dict[str, Any]:
    """A ProofBatch body of node 0 at height 100."""
    return {
        "public_key": key,
        "block_hash": block,
        "block_height": 100,
        "nonces": list(nonces),
        "dist": list(dist),
        "node_id": 0,
    }


def validate_claimed(
    client: httpx.Client, block: str, key: str, nonces: list[int], claimed: float = 1.0
) -> dict[str, Any]:
    """``/validate`` of ``nonces`` claimed at one distance: the recomputed distances."""
    body = proof_body(block, key, nonces, [claimed] * len(nonces))
    return ok(client.post(POW + "/validate", json=body))


def generated(client: httpx.Client, at_least: int, **overrides: Any) -> dict[int, float]:
    """nonce -> distance of a round (r_target 2: every finite distance is reported)."""
    post_ok(client, "/init/generate", round_body(**overrides))
    wait_checked(client, at_least)
    post_ok(client, "/stop")
    final = status(client)
    assert final["state"] == "STOPPED" and final["error"] is None, final
    assert final["total_valid"] == final["total_checked"] >= at_least, final
    return dict(zip(final["valid_nonces"], final["valid_distances"], strict=True))


COUNTERS = {
    "batches": ("vllm_poc_batches_total", ""),
    "sent": ("vllm_poc_callbacks_total", 'result="sent"'),
    "failed": ("vllm_poc_callbacks_total", 'result="failed"'),
    "dropped": ("vllm_poc_callbacks_total", 'result="dropped"'),
}


def metric_total(text: str, name: str, label: str = "") -> float:
    """The sum of the series ``name`` whose labels include ``label`` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        base, _, labels = series.partition("{")
        if base == name and label in labels:
            total += float(value)
    return total


def poc_counters(client: httpx.Client) -> dict[str, float]:
    """The plugin's Prometheus counters from ``/metrics`` (small whatever the round's size),
    summed over the data-parallel ranks."""
    text = ok_text(client.get("/metrics"))
    return {key: metric_total(text, *series) for key, series in COUNTERS.items()}


def ok_text(response: httpx.Response) -> str:
    assert response.status_code == 200, f"{response.request.url}: {response.status_code}"
    return response.text


def version_weights(client: httpx.Client) -> dict[str, Any]:
    """``/version``'s ``weights`` once the fingerprint is computed."""

    def ready() -> dict[str, Any] | None:
        weights = ok(client.get(POW + "/version"))["weights"]
        assert weights["state"] in ("computing", "ready"), weights
        return weights if weights["state"] == "ready" else None

    return wait_until(ready, 60.0, "weights fingerprint ready")


@contextlib.contextmanager
def live_client(server: LocalServer) -> Iterator[httpx.Client]:
    """A client of ``server`` for one test, which then fails if the server died during it."""
    with httpx.Client(base_url=server.base_url, timeout=120.0, limits=LIMITS) as c:
        yield c
        assert server.alive(), f"server died; log tail:\n{server.log_tail()}"
