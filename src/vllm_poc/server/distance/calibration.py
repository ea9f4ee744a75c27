"""What ``/calibrate`` answers: the quantiles of a block's distances and the ``r_target`` that
gives a wanted share of valid nonces."""

from __future__ import annotations

import math
from typing import Any

from vllm_poc.server.errors import EngineFailure

PROBABILITIES = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9)


def summary(block_hash: str, dist: list[float], valid_rate: float) -> dict[str, Any]:
    """Statistics of ``dist``; non-finite distances are counted and left out."""
    finite = sorted(d for d in dist if math.isfinite(d))
    if not finite:
        raise EngineFailure("the model produced no finite distance")
    return {
        "block_hash": block_hash,
        "n_samples": len(dist),
        "n_nonfinite": len(dist) - len(finite),
        "min": finite[0],
        "max": finite[-1],
        "mean": sum(finite) / len(finite),
        "quantiles": {str(p): quantile(finite, p) for p in PROBABILITIES},
        "valid_rate": valid_rate,
        "r_target": quantile(finite, valid_rate),
    }


def quantile(sorted_values: list[float], p: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values."""
    position = p * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)
