#!/usr/bin/env python
"""What the compiled PoC forward costs inference and gains PoC, on the command operators run.

Two compiled servers (no ``--enforce-eager``) with the plugin: one as shipped (the plugin
enables vLLM's prompt-embeds input path so that the PoC forward runs compiled), one with
``VLLM_POC_COMPILED_FORWARD=0`` (no prompt embeds: the PoC forward runs the model uncompiled,
inference is vLLM's own). They are measured one after the other, in alternating repetitions,
never at the same time:

- inference latency: sequential greedy completions (median seconds per request);
- inference throughput: concurrent completions (generated tokens per second);
- PoC: nonces per second of a generating round.

    .venv/bin/python benchmarks/bench_compiled.py                  # tiny model, ~6 minutes
    .venv/bin/python benchmarks/bench_compiled.py --shape 0.6b     # random Qwen3-0.6B shape

On a GPU (vLLM installed as in the GPU notes of benchmarks/README.md):

    python benchmarks/bench_compiled.py --shape 0.6b --device cuda --poc-batch 128 --seq-len 256
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from vllm_poc.testing.server import LocalServer
from vllm_poc.testing.tiny_model import make_tiny_model

PROMPT = "the quick brown fox jumps over the lazy dog kato rimuse lano vide po " * 6
VARIANTS = {"compiled PoC forward (default)": "1", "VLLM_POC_COMPILED_FORWARD=0": "0"}


def completion(client: httpx.Client, model: str, max_tokens: int, salt: int) -> int:
    """One greedy completion; the number of tokens it generated."""
    body = {
        "model": model,
        "prompt": f"{salt} {PROMPT}",
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    response = client.post("/v1/completions", json=body)
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


def latency(client: httpx.Client, model: str, args: argparse.Namespace, salt: int) -> float:
    """Median seconds of ``--requests`` sequential completions."""
    seconds = []
    for i in range(args.requests):
        t0 = time.perf_counter()
        completion(client, model, args.max_tokens, salt * 1000 + i)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def throughput(client: httpx.Client, model: str, args: argparse.Namespace, salt: int) -> float:
    """Generated tokens per second of ``--concurrency`` completions at once."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        tokens = sum(
            pool.map(
                lambda i: completion(client, model, args.max_tokens, salt * 1000 + i),
                range(args.concurrency),
            )
        )
    return tokens / (time.perf_counter() - t0)


def poc_rate(client: httpx.Client, args: argparse.Namespace, salt: int) -> float:
    """Nonces per second of a generating round, after a warm-up."""
    body = {
        "block_hash": f"bench-compiled-{salt}",
        "block_height": 1,
        "public_key": "bench",
        "r_target": 2.0,
        "node_id": 0,
        "node_count": 1,
        "batch_size": args.poc_batch,
        "seq_len": args.seq_len,
    }
    client.post("/api/v1/pow/init/generate", json=body).raise_for_status()
    time.sleep(args.warmup)
    first, t0 = client.get("/api/v1/pow/status").json(), time.monotonic()
    time.sleep(args.seconds)
    last, t1 = client.get("/api/v1/pow/status").json(), time.monotonic()
    client.post("/api/v1/pow/stop").raise_for_status()
    if last["error"]:
        raise RuntimeError(f"the round failed: {last['error']}")
    return (last["total_checked"] - first["total_checked"]) / (t1 - t0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", help="a random-weight model of this real shape (e.g. 0.6b)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--poc-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)

    if args.shape:
        from honest_noise import real_shape_model

        model = real_shape_model(args.shape)
    else:
        model = make_tiny_model(Path(".models/tiny-qwen3"))
    logs = Path(tempfile.mkdtemp(prefix="bench-compiled-"))
    print(f"# model {model.name}, logs in {logs}", flush=True)
    servers: dict[str, LocalServer] = {}
    figures: dict[str, dict[str, list[float]]] = {
        name: {"latency": [], "throughput": [], "poc": []} for name in VARIANTS
    }
    try:
        for name, setting in VARIANTS.items():
            log = logs / f"{setting}.log"
            env = {"VLLM_POC_COMPILED_FORWARD": setting}
            servers[name] = LocalServer(
                model, log, device=args.device, extra_env=env, enforce_eager=False
            ).start()
        clients = {n: httpx.Client(base_url=s.base_url, timeout=600.0) for n, s in servers.items()}
        for name, client in clients.items():
            version = client.get("/api/v1/pow/version").json()
            print(f"# {name}: compiled_poc_forward={version['options']['compiled_poc_forward']}")
            completion(client, str(model), args.max_tokens, 0)  # warm
        for repeat in range(args.repeats):
            for name, client in clients.items():
                figures[name]["latency"].append(latency(client, str(model), args, repeat))
                figures[name]["throughput"].append(throughput(client, str(model), args, repeat))
                figures[name]["poc"].append(poc_rate(client, args, repeat))
            print(f"# repeat {repeat + 1} of {args.repeats} done", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    report(figures, args)
    return 0


def report(figures: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    (ours, ours_f), (off, off_f) = figures.items()
    rows: list[tuple[str, Any, Any, str]] = []
    for key, label, better in [
        ("latency", f"completion latency, s ({args.max_tokens} tokens)", "lower"),
        ("throughput", f"completion throughput, tokens/s ({args.concurrency} at once)", "higher"),
        ("poc", f"PoC nonces/s (batch {args.poc_batch} x seq_len {args.seq_len})", "higher"),
    ]:
        a, b = statistics.median(ours_f[key]), statistics.median(off_f[key])
        rows.append((label, a, b, f"{a / b:.3f} ({better} is better)"))
    print(f"\n| median of {args.repeats} | {ours} | {off} | ratio |")
    print("|---|---|---|---|")
    for label, a, b, ratio in rows:
        print(f"| {label} | {a:.4g} | {b:.4g} | {ratio} |")


if __name__ == "__main__":
    raise SystemExit(main())
