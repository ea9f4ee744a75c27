#!/usr/bin/env python
"""Is the validation rule safe for honest nodes and sharp against cheaters? A Monte Carlo of the
chain's check: a validator samples nonces of a node's batch, recomputes them, and convicts on
the binomial test (docs/protocol.md, section 4).

Distances of a block are modelled as normal with spread ``sigma``; ``r_target`` makes a share
``q`` of nonces valid. An honest node reports its valid nonces; the validator's recomputation
differs from the prover's by honest noise, uniform in ``[-noise, noise]`` (``noise`` is the
largest difference ``honest_noise.py`` measured: a pessimistic model, its p99 is far smaller).
A cheater replaces a share ``f`` of its valid nonces with invented ones (claimed valid, their
real distance drawn from the whole distribution). Reported: how often an honest node is
convicted, how often a cheater is caught, and what the tolerance gives away (the nonces just
above ``r_target`` that a cheater may claim unpunished, as a share of the valid ones).

    .venv/bin/python benchmarks/validation_simulation.py --noise-from honest-noise.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import binom, norm

from vllm_poc.protocol.validation import (
    PROBABILITY_MISMATCH,
    RECOMMENDED_TOLERANCE,
)

VALID_SHARES = (0.01, 0.10, 0.30)
THRESHOLDS = (0.01, 1e-7)
FAKE_SHARES = (0.01, 0.05, 0.20)
CHUNK = 10_000


def critical_count(n: int, p_mismatch: float, threshold: float) -> int:
    """The fewest mismatches among ``n`` whose p-value is below ``threshold``."""
    k = np.arange(n + 1)
    p_values = binom.sf(k - 1, n, p_mismatch)  # P(X >= k)
    return int(np.argmax(p_values < threshold)) if (p_values < threshold).any() else n + 1


def mismatches(
    rng: np.random.Generator,
    trials: int,
    samples: int,
    q: float,
    fake_share: float,
    tolerance: float,
    noise: float,
) -> np.ndarray:
    """Mismatches among ``samples`` sampled nonces, per trial (in units of ``sigma`` = 1)."""
    r_target = norm.ppf(q)
    fake = rng.random((trials, samples)) < fake_share
    honest = norm.ppf(rng.random((trials, samples)) * q)  # a valid nonce's distance
    invented = rng.standard_normal((trials, samples))  # what a fake nonce really gives
    recomputed = np.where(fake, invented, honest) + rng.uniform(-noise, noise, (trials, samples))
    return np.count_nonzero(recomputed > r_target + tolerance, axis=1)


def rate(
    rng: np.random.Generator,
    args: argparse.Namespace,
    q: float,
    fake_share: float,
    tolerance: float,
    p_mismatch: float,
    threshold: float,
) -> float:
    """Share of trials convicted."""
    needed = critical_count(args.samples, p_mismatch, threshold)
    convicted = 0
    for start in range(0, args.trials, CHUNK):
        n = min(CHUNK, args.trials - start)
        found = mismatches(
            rng, n, args.samples, q, fake_share, tolerance / args.sigma, args.noise / args.sigma
        )
        convicted += int(np.count_nonzero(found >= needed))
    return convicted / args.trials


def header(first: str) -> list[str]:
    cells = [f"{q:.0%} valid, threshold {t:g}" for q in VALID_SHARES for t in THRESHOLDS]
    return [f"| {first} | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise-from", type=Path, help="honest_noise.py's JSON (--noise else)")
    parser.add_argument("--noise", type=float, default=1.3e-4, help="largest honest |diff|")
    parser.add_argument("--sigma", type=float, help="spread of distances (default: measured)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=RECOMMENDED_TOLERANCE)
    parser.add_argument("--p-mismatch", type=float, default=PROBABILITY_MISMATCH)
    args = parser.parse_args(argv)
    if args.noise_from:
        figures = json.loads(args.noise_from.read_text())
        args.noise = max(r["max_abs_diff"] for r in figures["rows"])
        args.sigma = args.sigma or figures["reference_std"]
    args.sigma = args.sigma or 0.032
    rng = np.random.default_rng(args.seed)
    rules = [
        ("first protocol", 0.0, PROBABILITY_MISMATCH),
        ("recommended", args.tolerance, args.p_mismatch),
    ]
    print(
        f"# sigma {args.sigma:.4g}, honest noise up to {args.noise:.3g}, {args.samples} samples, "
        f"{args.trials} trials\n"
    )
    print("Honest nodes convicted (target 0):\n")
    print("\n".join(header("rule (tolerance, p_mismatch)")))
    for name, tolerance, p_mismatch in rules:
        cells = [
            f"{rate(rng, args, q, 0.0, tolerance, p_mismatch, t):.3%}"
            for q in VALID_SHARES
            for t in THRESHOLDS
        ]
        print(f"| {name} ({tolerance:g}, {p_mismatch:g}) | " + " | ".join(cells) + " |")
    print("\nCheaters caught with the recommended rule (target >= 90% at 5%):\n")
    print("\n".join(header("faked share of valid nonces")))
    for fake_share in FAKE_SHARES:
        cells = [
            f"{rate(rng, args, q, fake_share, args.tolerance, args.p_mismatch, t):.1%}"
            for q in VALID_SHARES
            for t in THRESHOLDS
        ]
        print(f"| {fake_share:.0%} | " + " | ".join(cells) + " |")
    print("\nWhat the tolerance gives away: nonces in (r_target, r_target + tolerance], as a")
    print("share of the valid ones (a cheater may claim them unpunished):\n")
    print("| valid share | " + " | ".join(f"{q:.0%}" for q in VALID_SHARES) + " |")
    print("|---|" + "---|" * len(VALID_SHARES))
    given = [(norm.cdf(norm.ppf(q) + args.tolerance / args.sigma) - q) / q for q in VALID_SHARES]
    print("| extra claimable | " + " | ".join(f"{g:.2%}" for g in given) + " |")
    print("\nMismatches needed to convict among", args.samples, "samples:")
    for p_mismatch in sorted({p for _, _, p in rules}):
        needed = [critical_count(args.samples, p_mismatch, t) for t in THRESHOLDS]
        print(
            f"  p_mismatch {p_mismatch:g}: "
            + ", ".join(f"{k} at threshold {t:g}" for k, t in zip(needed, THRESHOLDS, strict=True))
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
