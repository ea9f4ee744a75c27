"""A real local HTTP receiver for PoC callbacks (``{callback_url}/generated``, ``/validated``):
for the end-to-end tests and the soak benchmark."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vllm_poc.testing.ports import free_port

MODES = ("ok", "error", "slow")


@dataclass
class Received:
    """One POST the receiver got."""

    seq: int
    path: str
    body: Any
    at: float
    key: str | None = None
    """The ``Idempotency-Key`` header: the same on every attempt at one payload."""


class CallbackReceiver:
    """ThreadingHTTPServer on 127.0.0.1 that records POSTed JSON by path, in arrival order.

    ``mode``: "ok" answers 200, "error" answers 500, "slow" sleeps ``slow_seconds`` then 200.
    Requests are recorded in every mode (on arrival). ``port`` (0: a free one) brings a receiver
    up where a ``dead_url`` was, so that a node's retries to it end at once.
    """

    def __init__(self, mode: str = "ok", slow_seconds: float = 5.0, port: int = 0) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._records: list[Received] = []
        self.set_mode(mode, slow_seconds)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                mode, slow = receiver._record(self.path, body, self.headers.get("Idempotency-Key"))
                if mode == "slow":
                    time.sleep(slow)
                code = 500 if mode == "error" else 200
                payload = b'{"ok": true}' if code == 200 else b'{"error": "receiver says no"}'
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up first (its timeout): what "slow" is there for

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def set_mode(self, mode: str, slow_seconds: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._lock:
            self.mode = mode
            if slow_seconds is not None:
                self.slow_seconds = slow_seconds

    def _record(self, path: str, body: Any, key: str | None) -> tuple[str, float]:
        with self._cond:
            self._records.append(Received(len(self._records), path, body, time.monotonic(), key))
            self._cond.notify_all()
            return self.mode, self.slow_seconds

    def records(self, path: str | None = None) -> list[Received]:
        """Everything received so far (only ``path`` when given), in arrival order."""
        with self._lock:
            return [r for r in self._records if path is None or r.path == path]

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.records(path)]

    def unique_bodies(self, path: str) -> list[Any]:
        """``bodies`` without the repeats of an ``Idempotency-Key`` (the node's retries of a post
        whose answer it did not get): what a receiver that drops seen keys keeps."""
        seen: set[str] = set()
        kept = []
        for r in self.records(path):
            if r.key is None or r.key not in seen:
                kept.append(r.body)
            if r.key is not None:
                seen.add(r.key)
        return kept

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def wait_for(self, path: str, count: int = 1, timeout: float = 30.0) -> list[Received]:
        """Block until ``count`` POSTs to ``path`` arrived; returns them (TimeoutError if not)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r for r in self._records if r.path == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({r.path for r in self._records})
                    raise TimeoutError(f"{len(got)}/{count} POSTs to {path} (paths seen: {seen})")
                self._cond.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CallbackReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a free port, closed again)."""
    return f"http://127.0.0.1:{free_port()}"
