#!/usr/bin/env python
"""How far honest nodes' artifacts lie apart: the same nonces computed by vLLM engines that
differ the way honest nodes do (batch size, compiled or eager, tensor parallelism, activation
dtype), L2 between each configuration's artifacts and the first one's (the network's validation
bound is 0.2).

Each engine runs in its own process (vLLM's ``LLM`` with the plugin enabled; configurations that
differ only in their batch size share one) through the worker method the artifact API calls:

    .venv/bin/python benchmarks/artifact_noise.py                        # tiny model, CPU
    .venv/bin/python benchmarks/artifact_noise.py --shape 0.6b --nonces 64

On a GPU:

    python benchmarks/artifact_noise.py --shape 0.6b --seq-len 1024 --nonces 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.testing.tiny_model import REAL_SHAPES, make_tiny_model

CONFIGS: dict[str, dict[str, object]] = {
    "batch 32, bf16": {"batch": 32},
    "batch 8, bf16": {"batch": 8},
    "eager, batch 32, bf16": {"batch": 32, "eager": True},
    "batch 1, bf16": {"batch": 1},
    "TP=2, batch 32, bf16": {"batch": 32, "tp": 2, "env": {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}},
    "batch 32, float16": {"batch": 32, "dtype": "float16"},
}
BLOCK, KEY = "noise-block", "noise-key"


def engine_of(config: dict[str, object]) -> str:
    """What makes an engine (everything but the batch size): configurations that differ only
    in their batch size share one engine."""
    return json.dumps({k: v for k, v in config.items() if k != "batch"}, sort_keys=True)


def run(
    model: Path,
    config: dict[str, object],
    batches: list[int],
    nonces: int,
    seq_len: int,
    shape: str,
) -> list[list[str]]:
    """The artifacts of ``nonces``, in nonce order, from one engine of ``config`` (its batch
    size aside) at each of ``batches``."""
    code = (
        "import json, sys; from vllm import LLM\n"
        "c = json.loads(sys.argv[1])\n"
        "llm = LLM(model=c['model'], dtype=c.get('dtype', 'bfloat16'), max_model_len=max(512,"
        " c['seq_len']), tensor_parallel_size=c.get('tp', 1), load_format=c['load'],"
        " enforce_eager=c.get('eager', False))\n"
        "runs = []\n"
        "for batch in c['batches']:\n"
        "    out = []\n"
        "    for i in range(0, c['nonces'], batch):\n"
        "        chunk = list(range(i, min(i + batch, c['nonces'])))\n"
        "        work = {'kind': 'artifacts', 'block_hash': c['block'], 'public_key': c['key'],"
        " 'nonces': chunk, 'seq_len': c['seq_len']}\n"
        "        answers = llm.collective_rpc('poc_run', args=(work,))\n"
        "        out += next(a for a in answers if a is not None)\n"
        "    runs.append(out)\n"
        "print('ARTIFACTS ' + json.dumps(runs), flush=True)\n"
    )
    spec = {
        **{k: v for k, v in config.items() if k != "batch"},
        "batches": batches,
        "model": str(model),
        "nonces": nonces,
        "seq_len": seq_len,
        "load": "auto" if shape == "tiny" else "dummy",
        "block": BLOCK,
        "key": KEY,
    }
    env = {**os.environ, "VLLM_POC_ENABLED": "1", **spec.pop("env", {})}  # type: ignore[dict-item]
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)], env=env, capture_output=True, text=True
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("ARTIFACTS ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{config} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("ARTIFACTS "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", *REAL_SHAPES], default="tiny")
    parser.add_argument("--nonces", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="configurations to run")
    parser.add_argument(
        "--eager",
        action="store_true",
        help="run every configuration eager (a quick check of the script: no compilation)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shape = None if args.shape == "tiny" else args.shape
        model = make_tiny_model(Path(tmp) / "model", shape=shape)
        names = args.only or list(CONFIGS)
        engines: dict[str, list[str]] = {}
        for name in names:
            engines.setdefault(engine_of(CONFIGS[name]), []).append(name)
        results = {}
        for group in engines.values():
            batches = [int(CONFIGS[name]["batch"]) for name in group]  # type: ignore[call-overload]
            config = {**CONFIGS[group[0]], **({"eager": True} if args.eager else {})}
            runs = run(model, config, batches, args.nonces, args.seq_len, args.shape)
            results.update(zip(group, runs, strict=True))
        print(f"{len(names)} configurations on {len(engines)} engine(s)", flush=True)
    rows = {
        name: torch.tensor([artifact.decode(v).tolist() for v in r]) for name, r in results.items()
    }
    base_name, base = names[0], rows[names[0]]
    print(
        f"\n{args.shape} shape, {args.nonces} nonces, seq_len {args.seq_len}; L2 to {base_name!r}"
    )
    print(f"{'configuration':<24} {'max L2':>8} {'mean L2':>8} {'> 0.2':>6}")
    for name in names[1:]:
        l2 = (rows[name] - base).norm(dim=1)
        print(f"{name:<24} {l2.max():>8.4f} {l2.mean():>8.4f} {int((l2 > 0.2).sum()):>6}")


if __name__ == "__main__":
    main()
