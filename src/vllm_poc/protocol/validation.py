"""The validity and mismatch rule of the distance protocol, and the binomial fraud test.

Stated once here and used by the manager, the routes, the callbacks and the client:

- a nonce is **valid** when its distance is below ``r_target`` (NaN is never valid);
- a submitted nonce is a **mismatch** when its reported distance is not below ``r_target``, or
  its recomputed distance is above ``r_target + tolerance``, or either is non-finite;
- a batch is **fraud** when ``binomtest(mismatches, n, p_mismatch, "greater")`` gives a p-value
  below ``fraud_threshold``.

``tolerance`` absorbs the differences between honest nodes (hardware, kernels, batch size,
parallelism): without it every honest nonce near ``r_target`` can flip. The defaults here are
the first protocol's (no tolerance, ``p_mismatch`` 5e-4); ``RECOMMENDED_TOLERANCE`` is the value
the honest-noise measurement supports (docs/validation.md), with which the default
``p_mismatch`` stays the right one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PROBABILITY_MISMATCH = 5e-4
"""Default ``p_mismatch``: the probability that an honest node's nonce fails re-validation."""

FRAUD_THRESHOLD = 0.01
"""Default ``fraud_threshold``: the p-value under which a batch is fraud."""

RECOMMENDED_TOLERANCE = 3e-4
"""Distance units. The rule (docs/validation.md): twice the largest difference measured between
honest configurations (batch size, eager/compiled, TP, DP, bf16/float16/float32) of the model,
rounded up to one significant digit: 1.01e-4 on the Qwen3-0.6B shape. The figure belongs to
the model (the tiny test model needs 1e-3): networks measure theirs with
``benchmarks/honest_noise.py``."""


def is_valid(distance: float, r_target: float) -> bool:
    return distance < r_target


def is_mismatch(
    reported: float, recomputed: float, r_target: float, tolerance: float = 0.0
) -> bool:
    if not (math.isfinite(reported) and math.isfinite(recomputed)):
        return True
    return not reported < r_target or recomputed > r_target + tolerance


def mismatches(
    reported: Sequence[float], recomputed: Sequence[float], r_target: float, tolerance: float = 0.0
) -> list[bool]:
    return [
        is_mismatch(r, c, r_target, tolerance) for r, c in zip(reported, recomputed, strict=True)
    ]


@dataclass(frozen=True)
class Verdict:
    """The binomial test of ``n_mismatch`` mismatches among ``n`` nonces."""

    probability_honest: float
    fraud_detected: bool


def fraud_test(
    n_mismatch: int,
    n: int,
    fraud_threshold: float = FRAUD_THRESHOLD,
    p_mismatch: float = PROBABILITY_MISMATCH,
) -> Verdict:
    """p-value of at least ``n_mismatch`` mismatches from an honest node; -1 for no nonces."""
    if n == 0:
        return Verdict(probability_honest=-1.0, fraud_detected=False)
    p = p_value(n_mismatch, n, p_mismatch)
    return Verdict(probability_honest=p, fraud_detected=p < fraud_threshold)


def p_value(n_mismatch: int, n: int, p_mismatch: float) -> float:
    """``P[X >= n_mismatch]`` for ``X ~ Binomial(n, p_mismatch)``: the exact one-sided test both
    protocols use."""
    # Imported here: scipy.stats costs ~0.3 s, and every vLLM process imports the plugin while
    # only the API server validates.
    from scipy.stats import binomtest

    return float(binomtest(k=n_mismatch, n=n, p=p_mismatch, alternative="greater").pvalue)
