"""Which nonces one API server checks in a round, and in what order.

The node's nonces are ``node_id + k * node_count`` for ``k = 0, 1, 2, ...``. A vLLM deployment
with ``data_parallel_size`` D owns position ``k`` on the engine of global data-parallel rank
``k mod D``'s API server: an API server that fronts every engine (vLLM's internal load balancer)
checks every position; one that fronts a subset (external or hybrid load balancing) checks the
positions of its ranks, so the API servers of one deployment given the same round never check a
nonce twice. Within an API server the engines take the next owned positions in batches as they
free up, so a faster engine does more and the checked nonces stay close to a prefix.
"""

from __future__ import annotations

from collections.abc import Sequence


class NonceSchedule:
    """Hands out the nonces this API server owns in a round, in increasing order."""

    def __init__(self, node_id: int, node_count: int, ranks: Sequence[int], dp_size: int) -> None:
        if not ranks or any(not 0 <= r < dp_size for r in ranks):
            raise ValueError(f"data-parallel ranks {list(ranks)} outside 0..{dp_size - 1}")
        self.node_id = max(node_id, 0)
        self.node_count = max(node_count, 1)
        self.ranks = sorted(set(ranks))
        self.dp_size = dp_size
        self._taken = 0
        """How many owned positions were handed out."""

    def position(self, index: int) -> int:
        """The node position ``k`` of this server's ``index``-th owned position."""
        cycle, slot = divmod(index, len(self.ranks))
        return cycle * self.dp_size + self.ranks[slot]

    def take(self, count: int) -> list[int]:
        """The next ``count`` owned nonces."""
        start, self._taken = self._taken, self._taken + count
        return [
            self.node_id + self.position(i) * self.node_count for i in range(start, self._taken)
        ]
