#!/usr/bin/env python
"""Play the chain's side of one PoC round against a node, over plain HTTP.

On the real network the chain tells every node when a round starts (block hash, height, target
distance), lets them generate for a fixed window, then switches them to validation, where each
node recomputes samples of the others' batches. This script does the same against one node so an
operator can see the whole cycle before wiring the node to a chain:

    python examples/round_driver.py --url http://localhost:8000 --seconds 10 --r-target 1.40

It starts the round (``/init/generate``), shows ``/status`` progress, stops, switches the node to
validation (``/phase/validate``, or ``/init/validate`` with ``--validate-via init`` as a node that
did not generate would), validates a sample of the batch it just found (or another node's batch
from ``--batch-file``), prints the verdict and stops the node again, so inference resumes.

Exit status: 0 the batch looks honest (or there was nothing to validate), 1 fraud detected,
2 an error (the node refused a call, is unreachable, or the batch file is unreadable).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
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
    progress_printer,
    sample_batch,
    save_batch,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Drive one PoC round (generate, then validate) against a vLLM PoC node.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the node's base URL")
    round_ = parser.add_argument_group("round (what the chain announces)")
    round_.add_argument("--block-hash", default="example-block")
    round_.add_argument("--block-height", type=int, default=1)
    round_.add_argument("--public-key", default="example-node", help="this node's public key")
    round_.add_argument(
        "--r-target",
        type=float,
        default=1.40,
        help="nonces with a distance below this are valid (1.40 keeps about a third on the "
        "repository's tiny test model; a real chain sets it)",
    )
    round_.add_argument("--node-id", type=int, default=0)
    round_.add_argument("--node-count", type=int, default=1)
    round_.add_argument("--batch-size", type=int, default=8, help="nonces per forward")
    round_.add_argument(
        "--seq-len", type=int, default=32, help="tokens per nonce (validators must use the same)"
    )
    round_.add_argument("--fraud-threshold", type=float, default=0.01)
    round_.add_argument(
        "--callback-url", help="let the node push batches here (see examples/callback_receiver.py)"
    )
    flow = parser.add_argument_group("flow")
    flow.add_argument("--seconds", type=float, default=10.0, help="how long to generate")
    flow.add_argument(
        "--validate-via",
        choices=("phase", "init"),
        default="phase",
        help="switch to validation with /phase/validate (same round) or /init/validate",
    )
    flow.add_argument(
        "--batch-file",
        type=Path,
        help="validate this ProofBatch JSON (another node's batch) instead of our own",
    )
    flow.add_argument(
        "--save-batch", type=Path, help="write the batch this node found to a JSON file"
    )
    flow.add_argument("--sample", type=int, default=DEFAULT_SAMPLE_SIZE, help="nonces to check")
    flow.add_argument("--seed", type=int, default=0, help="seed of the validation sample")
    return parser


def params_from_args(args: argparse.Namespace) -> RoundParams:
    return RoundParams(
        block_hash=args.block_hash,
        block_height=args.block_height,
        public_key=args.public_key,
        r_target=args.r_target,
        node_id=args.node_id,
        node_count=args.node_count,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        fraud_threshold=args.fraud_threshold,
        callback_url=args.callback_url,
    )


def generate(client: PoCClient, params: RoundParams, seconds: float) -> ProofBatch:
    """Run the generation phase for ``seconds`` and return the batch the node found.

    The round is stopped before ``/status`` is read for the batch, so the counters and the nonce
    list are frozen and agree with each other.
    """
    print(
        f"round: block {params.block_hash!r} height {params.block_height}, "
        f"r_target {params.r_target}, node {params.node_id}/{params.node_count}, "
        f"batch {params.batch_size} x seq_len {params.seq_len}"
    )
    client.init_generate(params)
    show = progress_printer()
    last = client.watch(seconds, on_progress=show)
    show(None)
    client.stop()
    if last.error:
        raise RuntimeError(f"the round failed on the node: {last.error}")
    status = client.status()
    final = batch_from_status(
        status, block_hash=params.block_hash, public_key=params.public_key, node_id=params.node_id
    )
    print(
        f"generated: {status['total_checked']} nonces checked, {status['total_valid']} valid, "
        f"{status['rate_per_second']:.1f} nonces/s over {status['elapsed_seconds']:.1f} s"
    )
    return final


def enter_validation(client: PoCClient, params: RoundParams, via: str) -> None:
    """Put the node in VALIDATING: in the same round, or in a round it is told about afresh."""
    if via == "phase":
        client.phase_validate()
    else:
        client.init_validate(params)
    print(f"node switched to validation (/{via}/validate)")


def validate(client: PoCClient, batch: ProofBatch, sample: int, seed: int) -> Verdict:
    picked = sample_batch(batch, sample, seed)
    verdict = client.validate(picked)
    print_verdict(batch, picked, verdict)
    return verdict


def print_verdict(batch: ProofBatch, picked: ProofBatch, verdict: Verdict) -> None:
    print(
        f"verdict on {batch.public_key!r} (node {batch.node_id}): {verdict.label}; "
        f"{verdict.n_invalid} of {len(picked)} sampled nonces invalid "
        f"({len(batch)} in the batch), probability honest {verdict.probability_honest:.3g}"
    )


def run(args: argparse.Namespace) -> int:
    params = params_from_args(args)
    theirs = load_batch(args.batch_file) if args.batch_file else None
    with PoCClient(args.url) as client:
        try:
            ours = generate(client, params, args.seconds)
            if args.save_batch:
                print(f"batch written to {save_batch(ours, args.save_batch)}")
            batch = theirs if theirs is not None else ours
            if len(batch) == 0:
                print("nothing to validate: the batch has no nonces (raise --r-target?)")
                return 0
            enter_validation(client, params, args.validate_via)
            verdict = validate(client, batch, args.sample, args.seed)
            return 1 if verdict.fraud_detected else 0
        finally:
            # Leave the node stopped whatever happened: GENERATING/VALIDATING pause inference.
            try:
                client.stop()
            except (PoCError, httpx.HTTPError) as e:
                print(f"warning: could not stop the round: {e}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (PoCError, httpx.HTTPError, RuntimeError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
