#!/usr/bin/env python
"""What the artifact protocol's forward costs: nonces per second of an artifact batch (eager,
with a reflection after every decoder layer) against a bare forward of the same shape (eager and
as configured) and against the distance protocol's batch, measured in one worker in alternating
repetitions (``worker.profiling.profile_artifacts``).

The model runs in vLLM's own engine (``LLM``) with the plugin enabled, compiled as operators run
it unless ``--enforce-eager``:

    .venv/bin/python benchmarks/bench_artifacts.py                       # tiny model, CPU
    .venv/bin/python benchmarks/bench_artifacts.py --shape 0.6b --seq-len 64

On a GPU (vLLM installed as in the GPU notes of benchmarks/README.md), the network's seq_len:

    python benchmarks/bench_artifacts.py --shape 0.6b --device cuda --batch 32 --seq-len 1024
    python benchmarks/bench_artifacts.py --shape 8b --device cuda --batch 32 --seq-len 1024
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from vllm_poc.testing.tiny_model import make_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", "0.6b", "8b"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--enforce-eager", action="store_true")
    args = parser.parse_args()

    os.environ["VLLM_POC_ENABLED"] = "1"  # before vLLM loads its plugins
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM

    with tempfile.TemporaryDirectory() as tmp:
        shape = None if args.shape == "tiny" else args.shape
        model = make_tiny_model(Path(tmp) / "model", shape=shape)
        llm = LLM(
            model=str(model),
            dtype="bfloat16",
            max_model_len=max(512, args.seq_len),
            enforce_eager=args.enforce_eager,
            load_format="auto" if shape is None else "dummy",
        )
        answers = llm.collective_rpc(
            "poc_profile_artifacts", args=(args.batch, args.seq_len, args.reps)
        )
        ms = next(a for a in answers if a is not None)
    mode = "eager" if args.enforce_eager else "compiled"
    print(
        f"\n{args.shape} shape, {args.device}, batch {args.batch} x seq_len {args.seq_len}, "
        f"vLLM {mode}, median of {args.reps}"
    )
    print(f"{'stage':<22} {'ms/batch':>10} {'nonces/s':>10} {'vs bare':>8}")
    bare = ms["bare_forward"]
    for name in ("bare_forward", "bare_forward_eager", "distances", "artifacts"):
        rate = args.batch / ms[name] * 1e3
        print(f"{name:<22} {ms[name]:>10.2f} {rate:>10.1f} {bare / ms[name]:>8.2f}")


if __name__ == "__main__":
    main()
