"""What the client sends and reads: the round body, the verdict of ``/validate``, progress."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from vllm_poc.protocol.distance.round import NodeField, RoundRequest, SeqLen


class RoundParams(RoundRequest):
    """The body of ``/init``, ``/init/generate`` and ``/init/validate`` (see README, "Round body"),
    checked here as the node checks it, with a client's defaults: node 0 of 1, ``seq_len`` 32.

    The chain gives every node the same ``block_hash``, ``block_height`` and ``r_target``;
    ``seq_len`` must match between the node that generated and the node that validates, or every
    recomputed distance differs and an honest batch looks forged.
    """

    node_id: NodeField = 0
    node_count: NodeField = 1
    seq_len: SeqLen | None = 32

    def body(self) -> dict[str, Any]:
        """The JSON body; unset ``batch_size`` and ``callback_url`` are left out (node default)."""
        return self.model_dump(exclude_none=True)


@dataclass
class Verdict:
    """The node's answer to ``/validate``: recomputed distances and the binomial-test result."""

    nonces: list[int]
    distances: list[float]
    valid: list[bool]
    """Per nonce: the recomputed distance is below ``r_target``."""
    mismatch: list[bool]
    """Per nonce: it counts against the node (``n_invalid`` counts these)."""
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
            mismatch=list(data["mismatch"]),
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
