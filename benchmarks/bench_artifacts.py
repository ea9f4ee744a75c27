#!/usr/bin/env python
"""The artifact protocol's speed, as the operator is paid for it: a served round's nonces per
second against the bare compiled forward of the same shape, measured in one run and one engine.

One vLLM ``AsyncLLM`` with the plugin enabled (compiled as operators run it, unless
``--enforce-eager``); each of ``--rounds`` passes, in turn:

1. the worker's profile (``poc_profile_artifacts``, median of ``--reps``, order alternating):
   the bare forward of the same shape compiled and eager, the artifact batch compiled (the
   reflections inside the graph; and captured as a CUDA graph on a GPU) and eager, the distance
   batch, and the largest L2 between compiled and eager artifacts of the profiled nonces;
2. a served round: the plugin's own ``ArtifactNode`` over the engine (the code path of the
   server's ``/init/generate``, without the HTTP front, which is not on the round's path) posts
   to a real HTTP callback receiver; the rate is the artifacts that arrived there in
   ``--seconds`` after ``--warmup`` seconds;
3. vLLM's own prefill of the same tokens (``--batch`` prompts of ``--seq-len`` random token
   ids, one output token each), for the nonces/min an inference server would manage.

The last line, ``artifact round vs bare forward: R``, is the served round's nonces/s over the
bare compiled forward's (medians), for scripts to read.

    .venv/bin/python benchmarks/bench_artifacts.py                       # tiny model, CPU
    .venv/bin/python benchmarks/bench_artifacts.py --shape 0.6b --seq-len 64 --batch 4

On a GPU (vLLM installed as in the GPU notes of benchmarks/README.md), the network's seq_len:

    python benchmarks/bench_artifacts.py --shape 0.6b --batch 32 --seq-len 1024
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench_poc import device_name, leftover_children, model_dir, shutdown

from vllm_poc.testing.tiny_model import REAL_SHAPES

PROFILE_ROWS = (
    ("bare forward, compiled", "bare_forward"),
    ("bare forward, eager", "bare_forward_eager"),
    ("artifact batch, compiled", "artifacts"),
    ("artifact batch, CUDA graph", "artifacts_cuda_graph"),
    ("artifact batch, eager", "artifacts_eager"),
    ("distance batch", "distances"),
)


async def served_rate(engine: Any, receiver: Any, args: argparse.Namespace, round_no: int) -> float:
    """Artifacts per second that reached ``receiver`` during a served round's window."""
    from vllm_poc.protocol.artifact.wire import InitGenerate
    from vllm_poc.server.artifact.node import ArtifactNode
    from vllm_poc.server.callbacks import PoCCallbackSender
    from vllm_poc.server.engine_rpc import EngineRPC
    from vllm_poc.server.engines import Engines

    node = ArtifactNode(Engines([EngineRPC(engine)]), ["bench"], PoCCallbackSender())
    body = InitGenerate(
        block_hash=f"bench-round-{round_no}",
        block_height=round_no + 1,
        public_key="bench-node",
        node_id=0,
        node_count=1,
        params={"model": "bench", "seq_len": args.seq_len},
        batch_size=args.batch,
        url=f"{receiver.url}/round-{round_no}",
    )
    path = f"/round-{round_no}/generated"
    await node.init_generate(body)
    await asyncio.sleep(args.warmup)
    first = len(receiver.records(path))
    await asyncio.sleep(args.seconds)
    window = receiver.records(path)[first:]  # before the flush of the stop
    await node.stop()
    if len(window) < 2:
        raise RuntimeError("the served round posted fewer than two batches of artifacts")
    counted = sum(len(p.body["artifacts"]) for p in window[1:])
    return counted / (window[-1].at - window[0].at)


async def prefill_rate(engine: Any, args: argparse.Namespace, vocab: int) -> float:
    """Prompts of ``seq_len`` tokens per second through vLLM's own prefill (one output token)."""
    from vllm import SamplingParams

    rng = random.Random(0)
    params = SamplingParams(max_tokens=1, temperature=0.0)

    async def one(i: int) -> None:
        prompt = {"prompt_token_ids": [rng.randrange(vocab) for _ in range(args.seq_len)]}
        async for _ in engine.generate(prompt, params, request_id=f"prefill-{time.time()}-{i}"):
            pass

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(args.batch)))
    return args.batch / (time.perf_counter() - start)


async def run(args: argparse.Namespace, model: Path, cuda: bool) -> dict[str, Any]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from vllm_poc.testing.receiver import CallbackReceiver

    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(
            model=str(model),
            dtype="bfloat16",
            max_model_len=max(512, args.seq_len + 1),  # prefill: the prompt and one token
            enforce_eager=args.enforce_eager,
            load_format=args.load_format or ("auto" if args.shape == "tiny" else "dummy"),
            kv_cache_dtype=args.kv_cache_dtype,
            **({"gpu_memory_utilization": 0.85} if cuda else {}),
        )
    )
    vocab = engine.model_config.get_vocab_size()
    samples: dict[str, list[float]] = {}
    receiver = CallbackReceiver()
    try:
        await prefill_rate(engine, args, vocab)  # warm-up (and vLLM's own compilation)
        for round_no in range(args.rounds):
            answers = await engine.collective_rpc(
                "poc_profile_artifacts", args=(args.batch, args.seq_len, args.reps)
            )
            ms = next(a for a in answers if a)
            served = await served_rate(engine, receiver, args, round_no)
            prefill = await prefill_rate(engine, args, vocab)
            for name, value in {**ms, "served": served, "prefill": prefill}.items():
                samples.setdefault(name, []).append(value)
            bare = args.batch / ms["bare_forward"] * 1e3
            print(f"# round {round_no + 1}: served {served:.1f} nonces/s, bare {bare:.1f}")
    finally:
        receiver.close()
        shutdown(engine)
        # Something keeps this frame alive after return; without this AsyncLLM.__del__ runs
        # its shutdown again at interpreter exit, when vLLM's module globals are gone.
        engine = None
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", *REAL_SHAPES], default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5, help="profile repetitions per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    parser.add_argument("--seconds", type=float, default=10.0, help="served round window")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--model-cache", default=".models", help="where models are made")
    parser.add_argument("--model", type=Path, help="a model folder instead of --shape")
    parser.add_argument("--load-format", help="auto (weights) or dummy; default: by --shape")
    parser.add_argument("--kv-cache-dtype", default="auto", help="fp8 for DeepSeek-V4 on CUDA")
    args = parser.parse_args()

    os.environ["VLLM_POC_ENABLED"] = "1"  # before vLLM loads its plugins
    os.environ.setdefault("VLLM_POC_CALLBACK_INTERVAL", "0.5")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; read only by the CPU backend
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm.platforms import current_platform

    cuda = current_platform.is_cuda()
    model = args.model.resolve() if args.model else model_dir(args.shape, Path(args.model_cache))
    ms = asyncio.run(run(args, model, cuda))
    device = device_name(cuda)
    mode = "eager" if args.enforce_eager else "compiled"
    name = args.model.name if args.model else f"{args.shape} shape"
    print(
        f"\n{name}, {device}, {time.strftime('%Y-%m-%d')}, batch {args.batch} x "
        f"seq_len {args.seq_len}, vLLM {mode}; medians of {args.rounds} rounds "
        f"({args.reps} profile repetitions each)"
    )
    print(f"{'path':<30} {'ms/batch':>10} {'nonces/s':>10} {'nonces/min':>11} {'vs bare':>8}")
    bare = args.batch / ms["bare_forward"] * 1e3
    rates = {key: args.batch / ms[key] * 1e3 for _, key in PROFILE_ROWS if key in ms}
    rows = [(title, ms[key], rates[key]) for title, key in PROFILE_ROWS if key in ms]
    rows += [("served artifact round", None, ms["served"]), ("vLLM prefill", None, ms["prefill"])]
    for title, batch_ms, rate in rows:
        shown = f"{batch_ms:>10.2f}" if batch_ms is not None else f"{'':>10}"
        print(f"{title:<30} {shown} {rate:>10.1f} {rate * 60:>11.0f} {rate / bare:>8.3f}")
    print(f"compiled vs eager artifacts: largest L2 {ms['compiled_vs_eager_l2']:.5f}")
    left = leftover_children()
    if left:
        print(f"# WARNING: processes left after shutdown: {', '.join(left)}")
    print(f"artifact round vs bare forward: {ms['served'] / bare:.3f}")


if __name__ == "__main__":
    main()
