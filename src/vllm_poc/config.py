"""Round configuration and round states (seed Phase 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

NODE_UNSET = -1
"""The init request's sentinel for "node id / node count not given" (the seed's routes use it)."""


class PoCState(Enum):
    IDLE = "IDLE"
    GENERATING = "GENERATING"
    VALIDATING = "VALIDATING"
    STOPPED = "STOPPED"


@dataclass
class PoCConfig:
    """Everything a node needs to run one PoC round; rejects impossible values at construction."""

    block_hash: str
    block_height: int
    public_key: str
    r_target: float
    fraud_threshold: float = 0.01
    node_id: int = 0
    node_count: int = 1
    batch_size: int = 32
    seq_len: int = 256
    callback_url: str | None = None
    random_projection: bool = False
    """Apply the round's random residual projections around the forward (Phase 6.1)."""

    def __post_init__(self) -> None:
        if not self.block_hash:
            raise ValueError("block_hash must be a non-empty string")
        if not self.public_key:
            raise ValueError("public_key must be a non-empty string")
        if self.block_height < 0:
            raise ValueError(f"block_height must be >= 0, got {self.block_height}")
        if not math.isfinite(self.r_target) or not 0.0 < self.r_target <= 2.0:
            raise ValueError(f"r_target must be a finite number in (0, 2], got {self.r_target}")
        if not math.isfinite(self.fraud_threshold) or not 0.0 < self.fraud_threshold <= 1.0:
            raise ValueError(
                f"fraud_threshold must be a finite number in (0, 1], got {self.fraud_threshold}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}")
        if self.node_count != NODE_UNSET and self.node_count < 1:
            raise ValueError(f"node_count must be >= 1 (or -1 for unset), got {self.node_count}")
        if self.node_id != NODE_UNSET and self.node_id < 0:
            raise ValueError(f"node_id must be >= 0 (or -1 for unset), got {self.node_id}")
        if self.callback_url is not None:
            url = urlsplit(self.callback_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(
                    f"callback_url must be an http(s) URL with a host, got {self.callback_url!r}"
                )
        if self.has_node and not self.node_id < self.node_count:
            raise ValueError(
                f"node_id must be in [0, node_count={self.node_count}), got {self.node_id}"
            )

    @property
    def has_node(self) -> bool:
        """True when both node_id and node_count are set, as generation requires."""
        return self.node_id != NODE_UNSET and self.node_count != NODE_UNSET
