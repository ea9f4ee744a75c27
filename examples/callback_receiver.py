#!/usr/bin/env python
"""A minimal receiver for a PoC node's callbacks, to see what the node pushes and when.

With ``callback_url`` set in a round, the node POSTs each batch's valid nonces to
``{callback_url}/generated`` (a ProofBatch) and each validation verdict to
``{callback_url}/validated`` (a ValidatedBatch). Pushing saves the chain-side software from
polling ``/status``; this receiver is the smallest thing that accepts those POSTs, so an operator
can check the wiring (firewalls, hostnames, payloads) before pointing a node at real software:

    python examples/callback_receiver.py --port 9000 --output callbacks.jsonl
    python examples/round_driver.py --url http://localhost:8000 \\
        --callback-url http://localhost:9000
    curl localhost:9000/batches

Batches are kept in memory (read them back with ``GET /batches``, optionally ``?kind=generated``
or ``?kind=validated``) and, with ``--output``, appended to a JSON Lines file so they survive a
restart of the receiver.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request

Kind = Literal["generated", "validated"]
KINDS: tuple[Kind, ...] = ("generated", "validated")


class BatchStore:
    """Received batches in arrival order, in memory and optionally in a JSONL file.

    The node delivers from a background queue with retries, so a POST may arrive more than once
    after a timeout; every attempt at one batch carries the same ``Idempotency-Key`` header.
    Records keep every arrival with its key and mark the repeats (``repeat``) rather than
    dropping them, which is what a debugging tool should show; real software drops repeats.
    """

    def __init__(self, output: Path | None = None) -> None:
        self.output = output
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self._keys: set[str] = set()

    def add(self, kind: Kind, body: Any, key: str | None = None) -> dict[str, Any]:
        with self._lock:
            record = {
                "seq": len(self._records),
                "kind": kind,
                "received_at": time.time(),
                "idempotency_key": key,
                "repeat": key is not None and key in self._keys,
                "batch": body,
            }
            if key is not None:
                self._keys.add(key)
            self._records.append(record)
            if self.output is not None:
                with self.output.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            return record

    def list(self, kind: Kind | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self._records if kind is None or r["kind"] == kind]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._keys.clear()


def create_app(output: Path | None = None, store: BatchStore | None = None) -> FastAPI:
    """The receiver app; pass ``store`` to share it with the caller (tests, embedding)."""
    app = FastAPI(title="PoC callback receiver")
    app.state.store = store if store is not None else BatchStore(output)

    async def receive(kind: Kind, request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as e:
            raise HTTPException(status_code=400, detail=f"body is not JSON: {e}") from e
        if not isinstance(body, dict) or "nonces" not in body:
            raise HTTPException(status_code=400, detail="expected a batch object with 'nonces'")
        record = app.state.store.add(kind, body, request.headers.get("Idempotency-Key"))
        print(
            f"[receiver] {kind}{' (repeat)' if record['repeat'] else ''}: "
            f"{len(body['nonces'])} nonces from "
            f"{body.get('public_key')!r} at height {body.get('block_height')}",
            flush=True,
        )
        return {"ok": True, "seq": record["seq"]}

    @app.post("/generated")
    async def generated(request: Request) -> dict[str, Any]:
        """A ProofBatch: the valid nonces of one generation batch."""
        return await receive("generated", request)

    @app.post("/validated")
    async def validated(request: Request) -> dict[str, Any]:
        """A ValidatedBatch: a verdict on someone's ProofBatch."""
        return await receive("validated", request)

    @app.get("/batches")
    async def batches(kind: Kind | None = None) -> list[dict[str, Any]]:
        """Everything received so far, oldest first."""
        return app.state.store.list(kind)

    @app.delete("/batches")
    async def clear() -> dict[str, Any]:
        app.state.store.clear()
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Receive and store a PoC node's /generated and /validated callbacks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept remote nodes")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--output", type=Path, help="also append every batch to this JSONL file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    print(f"callback URL for the node: http://{args.host}:{args.port}", flush=True)
    uvicorn.run(create_app(args.output), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
