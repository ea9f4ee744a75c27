"""The next work unit's nonce-only tensors, made on a side CUDA stream while the current
forward runs.

Inputs (and the distance protocol's permutations, the artifact protocol's pick) depend on the
nonces alone, so a worker told which nonces come next (``Work.next_nonces``) makes them during
the current forward instead of between two forwards. The side stream waits only for what the
main stream had queued before the forward (round tensors the next work may read), never for the
forward itself. Off CUDA (one set of cores for everything) nothing is made ahead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from vllm_poc.work import Work

Tensors = dict[str, torch.Tensor]


class Prefetch:
    """At most one prepared work unit: taken by the next call if it is that work."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._stream: torch.cuda.Stream | None = None
        self._ready: tuple[Work, Tensors, torch.cuda.Event] | None = None

    def take(self, work: Work) -> Tensors | None:
        """The tensors made ahead for ``work``, usable on the current stream; None if none."""
        ready, self._ready = self._ready, None
        if ready is None or ready[0] != work:
            return None
        _, tensors, done = ready
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        for tensor in tensors.values():
            tensor.record_stream(current)
        return tensors

    @contextlib.contextmanager
    def behind(self, work: Work | None, make: Callable[[Work], Tensors]) -> Iterator[None]:
        """Run the block (the forward's launch), then start ``make(work)`` on the side stream."""
        if work is None or self.device.type != "cuda":
            yield
            return
        current = torch.cuda.current_stream(self.device)
        before = current.record_event()
        yield
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        self._stream.wait_event(before)
        with torch.cuda.stream(self._stream):
            tensors = make(work)
            done = self._stream.record_event()
        self._ready = (work, tensors, done)
