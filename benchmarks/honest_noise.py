#!/usr/bin/env python
"""How much honest nodes disagree: the same nonces recomputed under the configurations in which
honest nodes really differ, against a reference prover.

Every configuration is a real vLLM server with the plugin; the distances come from
``/validate`` (a batch of the nonces with placeholder distances: the answer carries the
recomputed ones). The reference is the prover's configuration: eager, bf16, one engine,
``--batch-size`` nonces per forward. Reported per configuration: max and p99 of |distance
difference| and the share of nonces whose validity flips at the ``r_target`` that makes 1%, 10%
and 30% of the reference's nonces valid.

    .venv/bin/python benchmarks/honest_noise.py --out honest-noise.json
    .venv/bin/python benchmarks/honest_noise.py --shape 0.6b --nonces 256 --out real-shape.json

The defaults take about 10 minutes on the 2-core test machine (one server start per
configuration; the compiled one takes longest). The table of the last run is in
docs/validation.md; ``benchmarks/validation_simulation.py`` turns it into conviction and
detection rates.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from vllm_poc.testing.server import LocalServer
from vllm_poc.testing.tiny_model import make_tiny_model

BLOCK, KEY = "honest-noise-block", "honest-noise-node"
VALID_SHARES = (0.01, 0.10, 0.30)
MAX_PER_REQUEST = 4096


@dataclass
class Server:
    """One server configuration and the batch sizes to recompute the nonces with on it."""

    name: str
    batch_sizes: Sequence[int]
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    eager: bool = True


def configurations(prover_batch: int, validator_batch: int) -> list[Server]:
    both = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    return [
        Server("eager bf16", [prover_batch, 1, validator_batch]),
        Server("compiled bf16", [prover_batch], eager=False),
        Server("TP=2 eager bf16", [prover_batch], ["--tensor-parallel-size", "2"], both),
        Server("DP=2 eager bf16", [prover_batch], ["--data-parallel-size", "2"], both),
        Server("eager float16", [prover_batch], ["--dtype", "float16"]),
        Server("eager float32", [prover_batch], ["--dtype", "float32"]),
    ]


def real_shape_model(shape: str) -> Path:
    """A random-weight bf16 Qwen3 of a real shape (``tiny_model.REAL_SHAPES``), made once:
    the tiny model's differences need not be a real model's."""
    import torch
    from transformers import AutoConfig, Qwen3ForCausalLM

    folder = make_tiny_model(Path(f".models/random-qwen3-{shape}"), shape)
    if not (folder / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(AutoConfig.from_pretrained(folder)).to(torch.bfloat16)
        model.save_pretrained(str(folder))
    return folder


def recompute(client: httpx.Client, nonces: list[int], seq_len: int, batch: int) -> np.ndarray:
    """The node's distances of ``nonces`` in a validation round of ``batch`` per forward."""
    round_body = {
        "block_hash": BLOCK,
        "block_height": 1,
        "public_key": "validator",
        "r_target": 2.0,
        "seq_len": seq_len,
        "batch_size": batch,
    }
    client.post("/api/v1/pow/init/validate", json=round_body).raise_for_status()
    out: list[float] = []
    for start in range(0, len(nonces), MAX_PER_REQUEST):
        chunk = nonces[start : start + MAX_PER_REQUEST]
        body = {
            "public_key": KEY,
            "block_hash": BLOCK,
            "block_height": 1,
            "nonces": chunk,
            "dist": [0.0] * len(chunk),
            "node_id": 0,
        }
        answer = client.post("/api/v1/pow/validate", json=body)
        answer.raise_for_status()
        out.extend(np.nan if d is None else d for d in answer.json()["distances"])
    client.post("/api/v1/pow/stop").raise_for_status()
    return np.asarray(out, dtype=np.float64)


def measure(
    model: Path, logs: Path, config: Server, nonces: list[int], seq_len: int, device: str
) -> dict[int, np.ndarray]:
    log = logs / (config.name.replace(" ", "-").replace("=", "") + ".log")
    server = LocalServer(
        model,
        log,
        device=device,
        extra_args=config.args,
        extra_env=config.env,
        enforce_eager=config.eager,
    )
    t0 = time.monotonic()
    with server, httpx.Client(base_url=server.base_url, timeout=600.0) as client:
        results = {b: recompute(client, nonces, seq_len, b) for b in config.batch_sizes}
    print(f"# {config.name}: {time.monotonic() - t0:.0f} s", flush=True)
    return results


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    diff = np.abs(other - reference)
    row = {
        "max_abs_diff": float(np.nanmax(diff)),
        "p99_abs_diff": float(np.nanpercentile(diff, 99)),
    }
    for share in VALID_SHARES:
        r_target = float(np.quantile(reference, share))
        flips = np.count_nonzero((reference < r_target) != (other < r_target))
        row[f"flip_rate_at_{share:.0%}_valid"] = flips / len(reference)
    return row


def table(rows: list[dict[str, object]]) -> str:
    shares = [f"{s:.0%}" for s in VALID_SHARES]
    lines = [
        "| configuration | max abs diff | p99 abs diff | "
        + " | ".join(f"flips at {s} valid" for s in shares)
        + " |",
        "|---|---|---|" + "---|" * len(shares),
    ]
    for row in rows:
        flips = " | ".join(f"{row[f'flip_rate_at_{s}_valid']:.2%}" for s in shares)
        lines.append(
            f"| {row['configuration']} | {row['max_abs_diff']:.2e} | {row['p99_abs_diff']:.2e} "
            f"| {flips} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="default: the tiny test model")
    parser.add_argument("--shape", help="a random-weight model of this real shape (e.g. 0.6b)")
    parser.add_argument("--nonces", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--prover-batch", type=int, default=8)
    parser.add_argument("--validator-batch", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="names of the configurations to run")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (TP/DP need 2 GPUs)")
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    args = parser.parse_args(argv)

    if args.shape:
        model = real_shape_model(args.shape)
    else:
        model = args.model or make_tiny_model(Path(".models/tiny-qwen3"))
    nonces = list(range(args.nonces))
    configs = configurations(args.prover_batch, args.validator_batch)
    if args.only:
        configs = [c for c in configs if c.name in args.only]
    logs = Path(tempfile.mkdtemp(prefix="honest-noise-"))
    print(f"# model {model}, {args.nonces} nonces, seq_len {args.seq_len}; logs in {logs}")
    measured: dict[str, np.ndarray] = {}
    for config in configs:
        for batch, dist in measure(model, logs, config, nonces, args.seq_len, args.device).items():
            measured[f"{config.name}, batch {batch}"] = dist
    reference_name, reference = next(iter(measured.items()))
    rows = [
        {"configuration": name, **compare(reference, dist)}
        for name, dist in measured.items()
        if name != reference_name
    ]
    spread = float(np.nanstd(reference))
    print(f"\nreference: {reference_name} (std of its distances {spread:.4f})\n")
    print(table(rows))
    if args.out:
        figures = {
            "date": time.strftime("%Y-%m-%d"),
            "model": model.name,
            "nonces": args.nonces,
            "seq_len": args.seq_len,
            "reference": reference_name,
            "reference_std": spread,
            "rows": rows,
        }
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
