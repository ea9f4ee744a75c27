"""``PoCClient``: a small synchronous HTTP client of one node's ``/api/v1/pow`` routes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import httpx

from vllm_poc.client.messages import Progress, RoundParams, Verdict
from vllm_poc.protocol import POW_PREFIX
from vllm_poc.protocol.distance.batches import ProofBatch
from vllm_poc.protocol.distance.round import CalibrationRequest

_REPEATABLE_POSTS = frozenset({"/stop"})
"""POSTs whose repetition changes nothing on the node (GETs never change anything)."""


def send(http: httpx.Client, method: str, path: str, body: Any = None) -> httpx.Response:
    """One PoC call (``path`` under ``/api/v1/pow``), sent again once if safe and needed.

    The server may close a kept-alive connection as the request goes out: uvicorn drops one 5 s
    after it queued the last response, which a client polling at about that period, or reading
    late on a loaded machine, can meet. Only a call that is harmless to repeat is sent again:
    the first one may have arrived.
    """
    try:
        return http.request(method, POW_PREFIX + path, json=body)
    except httpx.RemoteProtocolError:
        if not (method == "GET" or path in _REPEATABLE_POSTS):
            raise
        return http.request(method, POW_PREFIX + path, json=body)


class PoCError(RuntimeError):
    """The node answered a PoC call with an error status; ``detail`` is its message."""

    def __init__(self, method: str, path: str, status_code: int, detail: str) -> None:
        super().__init__(f"{method} {path} -> {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class PoCClient:
    """``httpx`` wrapper for one node; every method is one HTTP call (``PoCError`` on 4xx/5xx).

    Use it as a context manager so the connection pool is closed. ``api_key`` (default: the
    ``VLLM_POC_API_KEY`` environment variable) is sent as ``Authorization: Bearer`` for nodes
    that protect their PoC routes. ``transport`` lets tests plug in an ``httpx.MockTransport``
    instead of a real server.
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 120.0,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get("VLLM_POC_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=headers, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PoCClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = send(self._http, method, path, body)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise PoCError(method, path, response.status_code, str(detail))
        return response.json()

    def healthy(self) -> bool:
        """Whether vLLM's ``/health`` answers 200 (False while the server is still starting)."""
        try:
            return self._http.get("/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    # ------------------------------------------------------------------ round control

    def init(self, params: RoundParams) -> dict[str, Any]:
        """Set the round without starting anything (state ``IDLE``)."""
        return self._call("POST", "/init", params.body())

    def init_generate(self, params: RoundParams) -> dict[str, Any]:
        """Set the round and start generating at once (needs ``node_id`` / ``node_count``)."""
        return self._call("POST", "/init/generate", params.body())

    def init_validate(self, params: RoundParams) -> dict[str, Any]:
        """Set a round and switch to ``VALIDATING``: for a node that did not generate it."""
        return self._call("POST", "/init/validate", params.body())

    def phase_generate(self) -> dict[str, Any]:
        return self._call("POST", "/phase/generate")

    def phase_validate(self) -> dict[str, Any]:
        """Switch the current round to ``VALIDATING``: for the node that just generated it."""
        return self._call("POST", "/phase/validate")

    def stop(self) -> dict[str, Any]:
        """Stop the round; also ends the inference pause that GENERATING/VALIDATING impose."""
        return self._call("POST", "/stop")

    def status(self, since: int | None = None) -> dict[str, Any]:
        """The round's state and results; with ``since``, only the valid nonces and distances
        from that index on, and ``next``, the index to ask for next."""
        return self._call("GET", "/status" if since is None else f"/status?since={since}")

    def progress(self) -> Progress:
        return Progress.from_status(self.status())

    def validate(self, batch: ProofBatch) -> Verdict:
        """Have the node recompute ``batch``'s distances under its current round and judge it."""
        return Verdict.from_json(self._call("POST", "/validate", asdict(batch)))

    def calibrate(self, request: CalibrationRequest) -> dict[str, Any]:
        """The quantiles of a block's distances and the ``r_target`` for a wanted valid rate."""
        return self._call("POST", "/calibrate", request.model_dump(exclude_none=True))

    def version(self) -> dict[str, Any]:
        """Plugin, protocol and vLLM versions, the served model and the enabled options."""
        return self._call("GET", "/version")

    # ------------------------------------------------------------------ helpers

    def watch(
        self,
        seconds: float,
        on_progress: Callable[[Progress], None] | None = None,
        interval: float = 0.5,
    ) -> Progress:
        """Poll ``/status`` for ``seconds`` (or until the round stops itself); the last snapshot.

        A round only ends when the chain says so, so generation runs until the caller stops it;
        this is the "let it work for a while" part of a round. Each poll fetches only the valid
        nonces found since the previous one (``/status?since``): the snapshot's ``raw`` holds
        the last page, ``status()`` gives them all.
        """
        deadline = time.monotonic() + seconds
        since = 0
        while True:
            page = self.status(since)
            since = int(page["next"])
            snapshot = Progress.from_status(page)
            if on_progress is not None:
                on_progress(snapshot)
            if snapshot.state != "GENERATING" or time.monotonic() >= deadline:
                return snapshot
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
