#!/usr/bin/env python
"""Judge another node's ProofBatch the way validators on the network do.

A validator does not trust the distances a node reports: it recomputes a random sample of the
nonces on its own copy of the model and counts those that are not valid after all. Honest nodes
fail almost never (numerical noise, which ``--tolerance`` absorbs), so a binomial test on that
count tells an unlucky honest node from one that made nonces up. Sampling keeps the cost low:
checking 200 nonces catches a node that forged 5% of its batch (docs/validation.md).

    # the batch as a JSON file (the ProofBatch fields), e.g. from round_driver.py --save-batch
    python examples/validator.py --node http://validator:8000 --batch-file batch.json \\
        --r-target 1.40 --seq-len 32

    # or read what a node found from its /status (which omits block hash and public key)
    python examples/validator.py --node http://validator:8000 --from-node http://prover:8000 \\
        --block-hash example-block --prover-key example-node --r-target 1.40 --seq-len 32

The validator node is put into ``VALIDATING`` for the batch's block (``/init/validate``) and
stopped afterwards, unless ``--no-init`` says it is already validating that round.

Exit status: 0 honest, 1 fraud detected, 2 error (bad input, a node refused or is unreachable).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import httpx

from vllm_poc import ProofBatch
from vllm_poc.client import (
    DEFAULT_SAMPLE_SIZE,
    PoCClient,
    PoCError,
    RoundParams,
    Verdict,
    batch_from_status,
    load_batch,
    sample_batch,
)
from vllm_poc.protocol.validation import PROBABILITY_MISMATCH, RECOMMENDED_TOLERANCE

EXIT_HONEST, EXIT_FRAUD, EXIT_ERROR = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Sample a ProofBatch, have a validator node recompute it, report the verdict.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--node", default="http://127.0.0.1:8000", help="validator node URL")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--batch-file", type=Path, help="ProofBatch JSON file to judge")
    source.add_argument("--from-node", help="judge the valid nonces in this node's /status")
    prover = parser.add_argument_group("prover (with --from-node; /status does not say)")
    prover.add_argument("--prover-key", help="public key the prover generated with")
    prover.add_argument("--prover-node-id", type=int, default=0)
    round_ = parser.add_argument_group("round (must match the one the batch was generated in)")
    round_.add_argument("--block-hash", help="default: the batch file's")
    round_.add_argument("--block-height", type=int, help="default: the batch's")
    round_.add_argument("--r-target", type=float, required=True)
    round_.add_argument("--seq-len", type=int, help="default: the batch's, else 32")
    round_.add_argument(
        "--seed-derivation", choices=["v1", "strong"], help="default: the batch's, else v1"
    )
    round_.add_argument("--random-projection", action="store_true", help="or the batch says so")
    round_.add_argument("--batch-size", type=int, default=8, help="nonces per forward")
    rule = parser.add_argument_group("validation rule (docs/validation.md)")
    rule.add_argument("--fraud-threshold", type=float, default=0.01)
    rule.add_argument("--tolerance", type=float, default=RECOMMENDED_TOLERANCE)
    rule.add_argument("--p-mismatch", type=float, default=PROBABILITY_MISMATCH)
    round_.add_argument("--public-key", default="validator", help="the validator's own key")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE_SIZE, help="nonces to check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument(
        "--no-init",
        action="store_true",
        help="the validator node is already VALIDATING this round: neither init nor stop it",
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    return parser


def load_source(args: argparse.Namespace) -> ProofBatch:
    """The batch to judge: a file as the prover submitted it, or rebuilt from its ``/status``."""
    if args.batch_file is not None:
        return load_batch(args.batch_file)
    if not args.block_hash or not args.prover_key:
        raise ValueError("--from-node needs --block-hash and --prover-key")
    with PoCClient(args.from_node) as prover:
        status = prover.status()
    return batch_from_status(
        status,
        block_hash=args.block_hash,
        public_key=args.prover_key,
        node_id=args.prover_node_id,
    )


def round_params(args: argparse.Namespace, batch: ProofBatch) -> RoundParams:
    """The validator's round: the batch's block and the parameters it states (unless given),
    our key, the rule's values; ``node_id`` is unused when validating."""
    return RoundParams(
        block_hash=args.block_hash or batch.block_hash,
        block_height=args.block_height if args.block_height is not None else batch.block_height,
        public_key=args.public_key,
        r_target=args.r_target,
        batch_size=args.batch_size,
        seq_len=args.seq_len or batch.seq_len or 32,
        seed_derivation=args.seed_derivation or batch.seed_derivation or "v1",
        random_projection=args.random_projection or bool(batch.random_projection),
        fraud_threshold=args.fraud_threshold,
        tolerance=args.tolerance,
        p_mismatch=args.p_mismatch,
    )


def judge(
    node: PoCClient, batch: ProofBatch, params: RoundParams | None, sample: int, seed: int
) -> tuple[ProofBatch, Verdict]:
    """Validate a sample of ``batch``; with ``params`` the node is set up and stopped around it."""
    picked = sample_batch(batch, sample, seed)
    if params is None:
        return picked, node.validate(picked)
    node.init_validate(params)
    try:
        return picked, node.validate(picked)
    finally:
        node.stop()  # VALIDATING pauses the validator's inference; end it


def report(batch: ProofBatch, picked: ProofBatch, verdict: Verdict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"batch_size": len(batch), "sampled": len(picked), **asdict(verdict)}))
        return
    print(
        f"batch of {batch.public_key!r} (node {batch.node_id}) at block "
        f"{batch.block_hash!r}/{batch.block_height}: {len(batch)} nonces, {len(picked)} sampled"
    )
    print(f"  invalid:            {verdict.n_invalid}")
    print(f"  probability honest: {verdict.probability_honest:.3g}")
    print(f"  verdict:            {verdict.label}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        batch = load_source(args)
        if len(batch) == 0:
            print("the batch has no nonces: nothing to validate")
            return EXIT_HONEST
        params = None if args.no_init else round_params(args, batch)
        with PoCClient(args.node) as node:
            picked, verdict = judge(node, batch, params, args.sample, args.seed)
    except (PoCError, httpx.HTTPError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    report(batch, picked, verdict, args.json)
    return EXIT_FRAUD if verdict.fraud_detected else EXIT_HONEST


if __name__ == "__main__":
    sys.exit(main())
