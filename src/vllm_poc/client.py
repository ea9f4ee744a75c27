"""A small synchronous HTTP client for a PoC node's ``/api/v1/pow`` routes.

The chain side of a round (start it, watch it, stop it, validate someone's batch) is a handful of
HTTP calls; this module keeps them in one place so the examples in ``examples/`` and
``python -m vllm_poc.demo`` drive a node the same way an operator's own tooling would. It needs
only ``httpx`` and the plain dataclasses of :mod:`vllm_poc.data`: it never imports vLLM or torch,
so it runs on a machine that has no model at all.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from vllm_poc.data import ProofBatch

POW_PREFIX = "/api/v1/pow"
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


DEFAULT_SAMPLE_SIZE = 200
"""How many nonces a validator recomputes from one batch (all of them when there are fewer)."""


class PoCError(RuntimeError):
    """The node answered a PoC call with an error status; ``detail`` is its message."""

    def __init__(self, method: str, path: str, status_code: int, detail: str) -> None:
        super().__init__(f"{method} {path} -> {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


@dataclass
class RoundParams:
    """The body of ``/init``, ``/init/generate`` and ``/init/validate`` (see README, "Round body").

    The chain gives every node the same ``block_hash``, ``block_height`` and ``r_target``;
    ``seq_len`` must match between the node that generated and the node that validates, or every
    recomputed distance differs and an honest batch looks forged.
    """

    block_hash: str
    block_height: int
    public_key: str
    r_target: float
    node_id: int = 0
    node_count: int = 1
    batch_size: int | None = None
    """None leaves it to the node (``VLLM_POC_BATCH_SIZE``, by default sized from its memory)."""
    seq_len: int = 32
    fraud_threshold: float = 0.01
    callback_url: str | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body; unset ``batch_size`` and ``callback_url`` are left out (node default)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Verdict:
    """The node's answer to ``/validate``: recomputed distances and the binomial-test result."""

    nonces: list[int]
    distances: list[float]
    valid: list[bool]
    n_invalid: int
    probability_honest: float
    fraud_detected: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        # The node sends ``null`` for a distance the model made non-finite; keep it a float.
        return cls(
            nonces=list(data["nonces"]),
            distances=[math.nan if d is None else float(d) for d in data["distances"]],
            valid=list(data["valid"]),
            n_invalid=int(data["n_invalid"]),
            probability_honest=float(data["probability_honest"]),
            fraud_detected=bool(data["fraud_detected"]),
        )

    @property
    def label(self) -> str:
        return "FRAUD" if self.fraud_detected else "honest"


@dataclass
class Progress:
    """One ``/status`` snapshot, reduced to what a person watching a round wants to see."""

    state: str
    total_checked: int
    total_valid: int
    rate_per_second: float
    elapsed_seconds: float
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> Progress:
        return cls(
            state=str(status["state"]),
            total_checked=int(status["total_checked"]),
            total_valid=int(status["total_valid"]),
            rate_per_second=float(status["rate_per_second"]),
            elapsed_seconds=float(status["elapsed_seconds"]),
            error=status.get("error"),
            raw=status,
        )

    def line(self) -> str:
        """A one-line summary, e.g. for a progress display that rewrites itself."""
        text = (
            f"{self.state:<10} checked {self.total_checked:>7}  valid {self.total_valid:>6}  "
            f"{self.rate_per_second:8.1f} nonces/s  {self.elapsed_seconds:6.1f} s"
        )
        return text + (f"  error: {self.error}" if self.error else "")


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

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def progress(self) -> Progress:
        return Progress.from_status(self.status())

    def validate(self, batch: ProofBatch) -> Verdict:
        """Have the node recompute ``batch``'s distances under its current round and judge it."""
        return Verdict.from_json(self._call("POST", "/validate", asdict(batch)))

    # ------------------------------------------------------------------ helpers

    def watch(
        self,
        seconds: float,
        on_progress: Callable[[Progress], None] | None = None,
        interval: float = 0.5,
    ) -> Progress:
        """Poll ``/status`` for ``seconds`` (or until the round stops itself); the last snapshot.

        A round only ends when the chain says so, so generation runs until the caller stops it;
        this is the "let it work for a while" part of a round.
        """
        deadline = time.monotonic() + seconds
        while True:
            snapshot = self.progress()
            if on_progress is not None:
                on_progress(snapshot)
            if snapshot.state != "GENERATING" or time.monotonic() >= deadline:
                return snapshot
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def progress_printer(
    stream: TextIO | None = None, prefix: str = "  "
) -> Callable[[Progress | None], None]:
    """A callback for :meth:`PoCClient.watch` that shows progress without flooding logs.

    On a terminal it rewrites one line in place; elsewhere (CI logs, pipes) it prints at most one
    line per second. Call it with ``None`` at the end to finish the line.
    """
    out = stream if stream is not None else sys.stdout
    tty = out.isatty()
    last = [0.0]

    def show(progress: Progress | None) -> None:
        if progress is None:
            if tty:
                out.write("\n")
                out.flush()
            return
        now = time.monotonic()
        if tty:
            out.write("\r" + prefix + progress.line())
        elif now - last[0] >= 1.0:
            out.write(prefix + progress.line() + "\n")
            last[0] = now
        else:
            return
        out.flush()

    return show


# ---------------------------------------------------------------------- batches


def batch_from_status(
    status: dict[str, Any], *, block_hash: str, public_key: str, node_id: int
) -> ProofBatch:
    """The ProofBatch a node would submit: its valid nonces and distances from ``/status``.

    ``/status`` does not repeat the round's block hash or public key, so the caller supplies
    them (the chain knows both).
    """
    height = status.get("block_height")
    return ProofBatch(
        public_key=public_key,
        block_hash=block_hash,
        block_height=int(height) if height is not None else 0,
        nonces=[int(n) for n in status["valid_nonces"]],
        dist=[float(d) for d in status["valid_distances"]],
        node_id=node_id,
    )


def sample_batch(batch: ProofBatch, k: int = DEFAULT_SAMPLE_SIZE, seed: int = 0) -> ProofBatch:
    """A random sample of ``k`` nonces of ``batch`` (all of them when it has no more than ``k``).

    Validators recompute a sample instead of every nonce: the binomial test only needs enough
    draws to catch a cheater who forged a noticeable fraction, and recomputing costs as much as
    generating did. A fixed ``seed`` makes the sample reproducible; the original order is kept.
    """
    if k < 0:
        raise ValueError(f"sample size must be >= 0, got {k}")
    if len(batch) <= k:
        picked = list(range(len(batch)))
    else:
        picked = sorted(random.Random(seed).sample(range(len(batch)), k))
    return ProofBatch(
        public_key=batch.public_key,
        block_hash=batch.block_hash,
        block_height=batch.block_height,
        nonces=[batch.nonces[i] for i in picked],
        dist=[batch.dist[i] for i in picked],
        node_id=batch.node_id,
    )


def forge_batch(batch: ProofBatch, nonces: Iterable[int], claimed_dist: float) -> ProofBatch:
    """``batch`` with ``nonces`` claimed at ``claimed_dist``: what a cheating node would submit.

    Pass nonces that are NOT valid and a ``claimed_dist`` below ``r_target``; a validator that
    recomputes them finds distances above ``r_target`` and flags the batch.
    """
    nonces = list(nonces)
    return ProofBatch(
        public_key=batch.public_key,
        block_hash=batch.block_hash,
        block_height=batch.block_height,
        nonces=nonces,
        dist=[claimed_dist] * len(nonces),
        node_id=batch.node_id,
    )


def load_batch(path: Path | str) -> ProofBatch:
    """Read a ProofBatch from a JSON file (the fields of :class:`vllm_poc.data.ProofBatch`)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (a ProofBatch)")
    missing = {"public_key", "block_hash", "block_height", "nonces", "dist", "node_id"} - set(data)
    if missing:
        raise ValueError(f"{path}: missing ProofBatch fields {sorted(missing)}")
    return ProofBatch(
        public_key=str(data["public_key"]),
        block_hash=str(data["block_hash"]),
        block_height=int(data["block_height"]),
        nonces=[int(n) for n in data["nonces"]],
        dist=[float(d) for d in data["dist"]],
        node_id=int(data["node_id"]),
    )


def save_batch(batch: ProofBatch, path: Path | str) -> Path:
    """Write ``batch`` as JSON (readable by :func:`load_batch` and the examples)."""
    path = Path(path)
    path.write_text(json.dumps(asdict(batch), indent=1) + "\n")
    return path


__all__ = [
    "DEFAULT_SAMPLE_SIZE",
    "POW_PREFIX",
    "PoCClient",
    "PoCError",
    "Progress",
    "RoundParams",
    "Verdict",
    "batch_from_status",
    "forge_batch",
    "load_batch",
    "progress_printer",
    "sample_batch",
    "save_batch",
]
