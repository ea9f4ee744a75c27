"""``VLLM_POC_INFERENCE_DURING_VALIDATION``: inference answers while a node validates, with
results identical to a quiet server's, and a soak of concurrent validations and completions (on
the ``tuned_server``, which has the setting on)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from vllm_poc.testing.server import LocalServer

from .conftest import TUNED_ENV
from .helpers import (
    POW,
    ok,
    post_ok,
    proof_body,
    round_body,
    status,
    validate_claimed,
    wait_checked,
)

pytestmark = pytest.mark.e2e

MAX_VALIDATE = int(TUNED_ENV["VLLM_POC_MAX_VALIDATE_NONCES"])
REQUEST_TIMEOUT = 120.0


VAL_BLOCK = "validation-block"
VAL_KEY = "validation-someone"
VAL_NONCES = list(range(MAX_VALIDATE))  # the tuned limit: 64 nonces
# Batch 1 at seq_len 512 (the server's max length): 64 separate PoC forwards of ~20 ms each on
# a 2-core CPU, so one /validate is in flight for about a second and inference interleaves.
VAL_BATCH = 1
VAL_SEQ_LEN = 512
PROMPT = "Hello world, the quick brown fox"
OVERLAP_TOKENS = 2
"""Tokens of the completions sent while a /validate runs: each takes a fraction of it."""


def _completion_body(server: LocalServer, prompt: str = PROMPT, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(server.model_dir),
        "prompt": prompt,
        "max_tokens": 16,
        "temperature": 0.0,
        **extra,
    }


def _greedy_text(client: httpx.Client, server: LocalServer) -> str:
    data = ok(client.post("/v1/completions", json=_completion_body(server)))
    return data["choices"][0]["text"]


def _init_validation(client: httpx.Client) -> None:
    post_ok(
        client,
        "/init/validate",
        round_body(block_hash=VAL_BLOCK, batch_size=VAL_BATCH, seq_len=VAL_SEQ_LEN),
    )
    assert status(client)["state"] == "VALIDATING"


@pytest.fixture(scope="module")
def quiet_distances(tuned_module_client: httpx.Client) -> list[float]:
    """Distances of ``VAL_NONCES`` from a /validate with no other traffic on the server."""
    _init_validation(tuned_module_client)
    res = validate_claimed(tuned_module_client, VAL_BLOCK, VAL_KEY, VAL_NONCES)
    assert len(res["distances"]) == len(VAL_NONCES)
    return res["distances"]


class _Timed:
    """The outcome of one request made in a thread, with its wall-clock interval."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.status_code: int | None = None
        self.json: Any = None
        self.error: str | None = None


def _timed_post(client: httpx.Client, path: str, body: Any) -> _Timed:
    t = _Timed()
    t.start = time.monotonic()
    try:
        r = client.post(path, json=body, timeout=REQUEST_TIMEOUT)
        t.status_code = r.status_code
        t.json = (
            r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        )
    except Exception as e:  # reported by the assertions
        t.error = f"{type(e).__name__}: {e}"
    t.end = time.monotonic()
    return t


def test_inference_answers_during_validation_with_identical_results(
    tuned_client: httpx.Client, tuned_server: LocalServer, quiet_distances: list[float]
) -> None:
    c = tuned_client
    before = _greedy_text(c, tuned_server)
    assert before, "the greedy completion should produce text"
    # Completions short enough that several fit inside one /validate (~0.5 s on a fast machine),
    # compared with the same completion on the quiet server.
    short_body = _completion_body(tuned_server, max_tokens=OVERLAP_TOKENS)
    short = ok(c.post("/v1/completions", json=short_body))["choices"][0]["text"]
    _init_validation(c)
    assert _greedy_text(c, tuned_server) == before, "completions answer while VALIDATING"

    proof = proof_body(VAL_BLOCK, VAL_KEY, VAL_NONCES, [1.0] * len(VAL_NONCES))
    overlapped: list[_Timed] = []
    completions: list[_Timed] = []
    validations: list[_Timed] = []
    # One validating client for every attempt, made before the first: the attempts time the
    # requests, not the making of a client.
    with httpx.Client(base_url=tuned_server.base_url, headers=dict(c.headers)) as own:
        for _attempt in range(5):  # one attempt is plenty unless the machine stalls badly
            holder: list[_Timed] = []

            def validate_once(out: list[_Timed] = holder) -> None:
                out.append(_timed_post(own, POW + "/validate", proof))

            worker = threading.Thread(target=validate_once, daemon=True)
            worker.start()
            time.sleep(0.05)
            while worker.is_alive():
                completions.append(_timed_post(c, "/v1/completions", short_body))
            worker.join(REQUEST_TIMEOUT)
            assert holder, "the /validate thread returned nothing"
            v = holder[0]
            validations.append(v)
            assert v.error is None and v.status_code == 200, (v.error, v.status_code, v.json)
            overlapped += [t for t in completions if v.start < t.start and t.end < v.end]
            if overlapped:
                break

    assert overlapped, (
        "no completion completed while a /validate was in flight: "
        f"{[(round(v.start, 3), round(v.end, 3)) for v in validations]} vs "
        f"{[(round(t.start, 3), round(t.end, 3), t.status_code) for t in completions]}"
    )
    print(
        f"\n[e2e] {len(overlapped)} of {len(completions)} completions completed inside a "
        f"/validate of {len(VAL_NONCES)} nonces ({v.end - v.start:.2f} s)"
    )
    for t in completions:
        assert t.error is None and t.status_code == 200, (t.error, t.status_code, t.json)
        assert t.json["choices"][0]["text"] == short, "greedy output changed during validation"
    for v in validations:
        # Exactly the distances of a quiet server: inference never mixes into PoC forwards.
        assert v.json["distances"] == quiet_distances

    assert _greedy_text(c, tuned_server) == before, "greedy output changed after validation"
    post_ok(c, "/stop")
    assert _greedy_text(c, tuned_server) == before

    # GENERATING still pauses inference, even with inference during validation on.
    post_ok(c, "/init/generate", round_body(block_hash=VAL_BLOCK))
    wait_checked(c, 1)
    r = c.post("/v1/completions", json=_completion_body(tuned_server))
    assert r.status_code == 503, (r.status_code, r.text[:500])
    assert status(c)["state"] == "GENERATING"
    post_ok(c, "/stop")
    assert _greedy_text(c, tuned_server) == before


SOAK_SECONDS = 20.0
SOAK_VALIDATORS = 2
SOAK_INFERENCE = 3


def test_concurrency_soak_validate_and_inference(
    tuned_client: httpx.Client, tuned_server: LocalServer, quiet_distances: list[float]
) -> None:
    """Validators and inference clients post side by side for ``SOAK_SECONDS``: nothing fails,
    nothing hangs, distances stay those of a quiet server.

    The soak's clock starts once every thread is ready, and each thread posts at least once
    (the deadline is checked after a request, not before), so a machine that stalls for a while
    makes the soak longer, never emptier."""
    c = tuned_client
    _init_validation(c)
    proof = proof_body(VAL_BLOCK, VAL_KEY, VAL_NONCES, [1.0] * len(VAL_NONCES))
    results: dict[str, list[_Timed]] = {"validate": [], "completion": [], "chat": []}
    lock = threading.Lock()
    deadline: list[float] = []
    ready = threading.Barrier(
        SOAK_VALIDATORS + SOAK_INFERENCE,
        action=lambda: deadline.append(time.monotonic() + SOAK_SECONDS),
        timeout=REQUEST_TIMEOUT,
    )

    def keep_posting(
        client: httpx.Client, next_request: Callable[[int], tuple[str, str, Any]]
    ) -> None:
        ready.wait()
        i = 0
        while True:
            i += 1
            kind, path, body = next_request(i)
            t = _timed_post(client, path, body)
            with lock:
                results[kind].append(t)
            if time.monotonic() >= deadline[0]:
                return

    def validator() -> None:
        with httpx.Client(base_url=tuned_server.base_url, headers=dict(c.headers)) as own:
            keep_posting(own, lambda i: ("validate", POW + "/validate", proof))

    def inference_request(worker: int, i: int) -> tuple[str, str, Any]:
        if i % 3 == 0:
            body: dict[str, Any] = {
                "model": str(tuned_server.model_dir),
                "messages": [{"role": "user", "content": f"hi {worker} {i}"}],
                "max_tokens": 8,
            }
            return "chat", "/v1/chat/completions", body
        body = _completion_body(tuned_server, prompt=f"{PROMPT} {worker} {i}", temperature=0.8)
        return "completion", "/v1/completions", body

    def inference(worker: int) -> None:
        with httpx.Client(base_url=tuned_server.base_url) as own:
            keep_posting(own, lambda i: inference_request(worker, i))

    threads = [threading.Thread(target=validator, daemon=True) for _ in range(SOAK_VALIDATORS)]
    threads += [
        threading.Thread(target=inference, args=(w,), daemon=True) for w in range(SOAK_INFERENCE)
    ]
    # Every thread is ready within the barrier's timeout and ends within one request after the
    # deadline, or something hangs: one limit for all of them, so a hang is reported then.
    hang_by = time.monotonic() + REQUEST_TIMEOUT + SOAK_SECONDS + 2 * REQUEST_TIMEOUT
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, hang_by - time.monotonic()))
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"requests did not return (deadlock?): {hung}"

    counts = {k: len(v) for k, v in results.items()}
    slowest = {
        k: round(max((t.end - t.start for t in v), default=0.0), 2) for k, v in results.items()
    }
    print(f"\n[e2e] soak {SOAK_SECONDS:.0f} s: requests {counts}, slowest (s) {slowest}")
    for kind, outcomes in results.items():
        bad = [
            (t.error, t.status_code, str(t.json)[:300]) for t in outcomes if t.status_code != 200
        ]
        assert not bad, (kind, bad[:5])
    assert counts["validate"] >= SOAK_VALIDATORS and counts["completion"] >= SOAK_INFERENCE, counts
    mixed = [
        t
        for t in results["completion"] + results["chat"]
        if any(v.start < t.end and t.start < v.end for v in results["validate"])
    ]
    assert mixed, f"no inference request was in flight beside a /validate: {counts}"
    for t in results["validate"]:
        assert t.json["distances"] == quiet_distances, "distances changed under load"

    assert tuned_server.alive(), tuned_server.log_tail()
    assert c.get("/health").status_code == 200
    s = status(c)
    assert s["state"] == "VALIDATING" and s["error"] is None, s
    assert _greedy_text(c, tuned_server)
