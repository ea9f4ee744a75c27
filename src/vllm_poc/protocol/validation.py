"""The validity and mismatch rule of the distance protocol, and the binomial fraud test.

Stated once here and used by the manager, the routes, the callbacks and the client:

- a nonce is **valid** when its distance is below ``r_target`` (NaN is never valid);
- a submitted nonce is a **mismatch** when its reported distance is not below ``r_target`` or
  its recomputed distance is above it (NaN on either side is a mismatch);
- a batch is **fraud** when ``binomtest(mismatches, n, PROBABILITY_MISMATCH, "greater")``
  gives a p-value below the round's ``fraud_threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PROBABILITY_MISMATCH = 5e-4
"""Probability that an honest node's nonce fails re-validation (numerical noise across devices)."""


def is_valid(distance: float, r_target: float) -> bool:
    return distance < r_target


def is_mismatch(reported: float, recomputed: float, r_target: float) -> bool:
    return not reported < r_target or not recomputed <= r_target


def mismatches(
    reported: Sequence[float], recomputed: Sequence[float], r_target: float
) -> list[bool]:
    return [is_mismatch(r, c, r_target) for r, c in zip(reported, recomputed, strict=True)]


@dataclass(frozen=True)
class Verdict:
    """The binomial test of ``n_mismatch`` mismatches among ``n`` nonces."""

    probability_honest: float
    fraud_detected: bool


def fraud_test(n_mismatch: int, n: int, fraud_threshold: float) -> Verdict:
    """p-value of at least ``n_mismatch`` mismatches from an honest node; -1 for no nonces."""
    if n == 0:
        return Verdict(probability_honest=-1.0, fraud_detected=False)
    # Imported here: scipy.stats costs ~0.3 s, and every vLLM process imports the plugin while
    # only the API server validates.
    from scipy.stats import binomtest

    p = float(binomtest(k=n_mismatch, n=n, p=PROBABILITY_MISMATCH, alternative="greater").pvalue)
    return Verdict(probability_honest=p, fraud_detected=p < fraud_threshold)
