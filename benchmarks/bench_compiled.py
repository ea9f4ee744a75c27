#!/usr/bin/env python
"""What the compiled PoC forward costs inference and gains PoC, on the command operators run.

Three compiled servers (no ``--enforce-eager``) with the plugin: as shipped (the PoC forward
compiles its own graph, ``worker.compiled``), with ``VLLM_POC_COMPILED_FORWARD=0`` (the PoC
forward runs uncompiled: the baseline), and with vLLM's ``--enable-prompt-embeds`` (vLLM's own
graph traced with embeddings, used by PoC too: the design not taken). They are measured one
after the other, in alternating repetitions, never at the same time:

- inference latency: sequential greedy completions (median seconds per request);
- inference throughput: concurrent completions (generated tokens per second);
- PoC: nonces per second of a generating round.

    .venv/bin/python benchmarks/bench_compiled.py                  # tiny model, ~10 minutes
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
BASELINE = "VLLM_POC_COMPILED_FORWARD=0"
VARIANTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "as shipped": ({}, []),
    BASELINE: ({"VLLM_POC_COMPILED_FORWARD": "0"}, []),
    "--enable-prompt-embeds": ({"VLLM_POC_COMPILED_FORWARD": "0"}, ["--enable-prompt-embeds"]),
}


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
    """Generated tokens per second of ``--waves`` rounds of ``--concurrency`` completions at
    once (one wave alone varied 3x from run to run on the 2-core machine)."""
    t0 = time.perf_counter()
    tokens = 0
    with ThreadPoolExecutor(args.concurrency) as pool:
        for wave in range(args.waves):
            tokens += sum(
                pool.map(
                    lambda i, w=wave: completion(
                        client, model, args.max_tokens, (salt * 100 + w) * 100 + i
                    ),
                    range(args.concurrency),
                )
            )
    return tokens / (time.perf_counter() - t0)


def round_body(args: argparse.Namespace, salt: int) -> dict[str, Any]:
    return {
        "block_hash": f"bench-compiled-{salt}",
        "block_height": 1,
        "public_key": "bench",
        "r_target": 2.0,
        "node_id": 0,
        "node_count": 1,
        "batch_size": args.poc_batch,
        "seq_len": args.seq_len,
    }


def warm_poc(client: httpx.Client, args: argparse.Namespace) -> None:
    """Run the round shape until a batch is done: the first one compiles the PoC graph."""
    client.post("/api/v1/pow/init/generate", json=round_body(args, -1)).raise_for_status()
    deadline = time.monotonic() + 600
    while client.get("/api/v1/pow/status").json()["total_checked"] == 0:
        if time.monotonic() > deadline:
            raise TimeoutError("no PoC batch in 600 s")
        time.sleep(0.5)
    client.post("/api/v1/pow/stop").raise_for_status()


def poc_rate(client: httpx.Client, args: argparse.Namespace, salt: int) -> float:
    """Nonces per second of a generating round, after a warm-up."""
    client.post("/api/v1/pow/init/generate", json=round_body(args, salt)).raise_for_status()
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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--waves", type=int, default=4)
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
        for i, (name, (env, extra_args)) in enumerate(VARIANTS.items()):
            servers[name] = LocalServer(
                model,
                logs / f"variant-{i}.log",
                device=args.device,
                extra_args=extra_args,
                extra_env=env,
                enforce_eager=False,
            ).start()
        clients = {n: httpx.Client(base_url=s.base_url, timeout=600.0) for n, s in servers.items()}
        for name, client in clients.items():
            version = client.get("/api/v1/pow/version").json()
            print(f"# {name}: compiled_poc_forward={version['options']['compiled_poc_forward']}")
            completion(client, str(model), args.max_tokens, 0)  # warm
            warm_poc(client, args)
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
    """Medians, and each variant's ratio to the baseline in parentheses."""
    names = list(figures)
    print(f"\n| median of {args.repeats} (ratio to {BASELINE}) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for key, label in [
        ("latency", f"completion latency, s ({args.max_tokens} tokens; lower is better)"),
        ("throughput", f"completion tokens/s ({args.concurrency} at once)"),
        ("poc", f"PoC nonces/s (batch {args.poc_batch} x seq_len {args.seq_len})"),
    ]:
        base = statistics.median(figures[BASELINE][key])
        cells: list[Any] = []
        for name in names:
            value = statistics.median(figures[name][key])
            cells.append(f"{value:.4g} ({value / base:.3f})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
