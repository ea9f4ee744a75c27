"""PoC nonces/s through the real plugin path against the bare forward of the same model.

In one run, on one engine: a vLLM ``AsyncLLM`` with ``VLLM_POC_ENABLED=1`` (the plugin adds its
worker extension itself) is driven by a real ``PoCManager`` generation loop for each batch size;
then ``collective_rpc("poc_profile")`` times, inside the worker, the PoC stages and a bare forward
(random ``inputs_embeds`` + last-token logits, no PoC work) of the same batch shape, and a dense
matmul for the MFU denominator. Prints a table and writes JSON (--json).

Model: on CPU the tiny test model (``make_tiny_model``); on GPU a random-weight model of a real
Qwen3 shape (--shape 0.6b, default, or 8b; config only, ``load_format="dummy"``).
Run: python benchmarks/bench_poc.py [--batches 1 4 16 64] [--seq-len 256] [--json out.json]
See benchmarks/README.md for the columns and formulas.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import inspect
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from vllm_poc.testing.tiny_model import DENSE_SHAPES

CPU_BATCHES = [1, 4, 16, 64]
GPU_BATCHES = [32, 64, 128, 256]
STAGES = ("inputs", "projection", "forward", "logits", "permutation_distance")
FLOPS_FORMULA = (
    "FLOPs/nonce = 2 x N_nonemb x L + 2 x L^2 x heads x head_dim x layers + 2 x vocab x hidden; "
    "N_nonemb = layers x (q,k,v,o + MLP gate,up,down + 2 RMSNorms + q/k norms) + final norm; "
    "causal attention = QK^T and PV, L^2/2 x heads x head_dim multiply-adds each per layer; "
    "lm_head counted for the last position only (the only logits PoC computes)"
)


# ---------------------------------------------------------------- model and FLOPs


def model_dir(shape: str, cache: Path) -> Path:
    """The model folder: the tiny model with weights, or a real shape's config only."""
    from vllm_poc.testing.tiny_model import make_tiny_model

    if shape == "tiny":
        return make_tiny_model(cache / "tiny-qwen3")
    return make_tiny_model(cache / f"qwen3-{shape}-shape", shape=shape)


def flops_per_nonce(config: dict[str, Any], seq_len: int) -> dict[str, float]:
    """Forward FLOPs of one nonce (``FLOPS_FORMULA``) from a Qwen3 ``config.json``."""
    h = config["hidden_size"]
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_heads = config["num_key_value_heads"]
    head_dim = config.get("head_dim") or h // heads
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    per_layer = (
        h * heads * head_dim  # q_proj
        + 2 * h * kv_heads * head_dim  # k_proj, v_proj
        + heads * head_dim * h  # o_proj
        + 3 * h * inter  # gate, up, down
        + 2 * h  # input and post-attention RMSNorm
        + 2 * head_dim  # q_norm, k_norm
    )
    non_embedding = layers * per_layer + h  # + final norm
    dense = 2 * non_embedding * seq_len
    attention = 2 * seq_len**2 * heads * head_dim * layers
    lm_head = 2 * vocab * h
    return {
        "non_embedding_params": non_embedding,
        "dense": dense,
        "attention": attention,
        "lm_head_last_token": lm_head,
        "total": dense + attention + lm_head,
    }


# ---------------------------------------------------------------- measurements


async def poc_rate(
    manager: Any,
    batch: int,
    seq_len: int,
    warmup: int,
    seconds: float,
    min_batches: int,
    random_projection: bool = False,
) -> dict[str, float]:
    """Nonces/s of the manager's generation loop, timed between batch completions.

    The generation's ``record`` is wrapped on the instance only to time-stamp each recorded
    batch (no polling, which would take CPU from the worker on a small machine).
    """
    from vllm_poc.protocol.distance.round import PoCConfig
    from vllm_poc.protocol.state import PoCState

    config = PoCConfig(
        block_hash=f"bench-{batch}-{seq_len}",
        block_height=1,
        public_key="bench-node",
        r_target=1.0,
        batch_size=batch,
        seq_len=seq_len,
        random_projection=random_projection,
    )
    stamps: list[tuple[float, int]] = []  # (time, total checked) after each batch
    enough = asyncio.Event()
    original = manager.generation.record
    warmup = max(warmup, 1)  # the first stamp starts the clock

    def timed_record(*args: Any) -> Any:
        result = original(*args)
        stamps.append((time.perf_counter(), manager.stats.total_checked))
        timed = len(stamps) - warmup
        if timed >= min_batches and stamps[-1][0] - stamps[warmup - 1][0] >= seconds:
            enough.set()
        return result

    manager.generation.record = timed_record
    manager.init_round(config)
    manager.start_generate()
    try:
        deadline = time.monotonic() + 600 + 10 * seconds
        while not enough.is_set():
            if manager.state != PoCState.GENERATING:
                raise RuntimeError(f"generation stopped: {manager.error}")
            if time.monotonic() > deadline:
                raise TimeoutError("PoC generation too slow or stalled")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), timeout=1.0)
    finally:
        manager.stop_round()
        del manager.generation.record  # back to the class's method
    (t0, c0), (t1, c1) = stamps[warmup - 1], stamps[-1]
    return {
        "poc_nonces_per_s": (c1 - c0) / (t1 - t0),
        "poc_ms_per_batch": (t1 - t0) / ((c1 - c0) // batch) * 1e3,
        "poc_batches_timed": (c1 - c0) // batch,
        "poc_seconds_timed": t1 - t0,
    }


async def profile(
    engine: Any, batch: int, seq_len: int, reps: int, random_projection: bool
) -> dict[str, float]:
    """The first worker's ``poc_profile`` answer (median ms per stage, peak TFLOP/s)."""
    answers = await engine.collective_rpc(
        "poc_profile", args=(batch, seq_len, reps, random_projection)
    )
    answers = [a for a in answers if a]
    if not answers:
        raise RuntimeError("no worker answered poc_profile")
    return answers[0]


def summarize(batch: int, seq_len: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from a batch size's rounds (medians over rounds).

    Each round pairs a PoC window with the profile taken right after it; the ratio and the
    RPC-and-Python share are computed per round and their medians reported, so a load change on
    a shared machine between rounds does not mix a fast PoC window with a slow profile.
    """
    for s in samples:
        s.setdefault("projection", 0.0)  # profiled only for --random-projection
        s["bare_nonces_per_s"] = batch / (s["bare_forward_and_logits"] / 1e3)
        s["ratio"] = s["poc_nonces_per_s"] / s["bare_nonces_per_s"]
        s["stage_sum_ms"] = sum(s[k] for k in STAGES)
        s["rpc_and_python"] = s["poc_ms_per_batch"] - s["stage_sum_ms"]
    keys = (
        "poc_nonces_per_s",
        "poc_ms_per_batch",
        "bare_nonces_per_s",
        "ratio",
        *STAGES,
        "bare_forward_and_logits",
        "stage_sum_ms",
        "rpc_and_python",
    )
    row: dict[str, Any] = {"batch": batch}
    row.update({k: statistics.median(s[k] for s in samples) for k in keys})
    row["bare_tokens_per_s"] = row["bare_nonces_per_s"] * seq_len
    row["poc_batches_timed"] = sum(s["poc_batches_timed"] for s in samples)
    row["peak_tflops"] = max(s["peak_tflops"] for s in samples)
    row["rounds"] = samples
    return row


def shutdown(engine: Any, timeout: float = 60.0) -> None:
    """Stop the engine, giving EngineCore time to exit (vLLM's default 5 s can be too short)."""
    if "timeout" in inspect.signature(engine.shutdown).parameters:
        engine.shutdown(timeout=timeout)
    else:
        engine.shutdown()


# ---------------------------------------------------------------- report


def device_name(cuda: bool) -> str:
    if cuda:
        import torch

        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core CPU ({name})"


COLUMNS = (
    ("batch", "batch", "{:>6d}"),
    ("PoC n/s", "poc_nonces_per_s", "{:>10.1f}"),
    ("bare n/s", "bare_nonces_per_s", "{:>10.1f}"),
    ("bare tok/s", "bare_tokens_per_s", "{:>11.0f}"),
    ("PoC/bare", "ratio", "{:>9.1%}"),
    ("MFU PoC", "mfu_poc", "{:>8.1%}"),
    ("MFU bare", "mfu_bare", "{:>9.1%}"),
    ("PoC ms", "poc_ms_per_batch", "{:>9.2f}"),
    ("bare ms", "bare_forward_and_logits", "{:>9.2f}"),
    ("inputs", "inputs", "{:>8.2f}"),
    ("proj", "projection", "{:>7.2f}"),
    ("forward", "forward", "{:>8.2f}"),
    ("logits", "logits", "{:>8.2f}"),
    ("perm+dist", "permutation_distance", "{:>10.2f}"),
    ("RPC+Py", "rpc_and_python", "{:>8.2f}"),
)


def print_table(rows: list[dict[str, Any]]) -> None:
    widths = [len(fmt.format(0)) for _, _, fmt in COLUMNS]
    print("".join(f"{title:>{w}}" for (title, _, _), w in zip(COLUMNS, widths, strict=True)))
    for row in rows:
        print("".join(fmt.format(row[key]) for _, key, fmt in COLUMNS))


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    import torch
    import vllm
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from vllm_poc.server.distance.manager import PoCManager
    from vllm_poc.server.engine_rpc import EngineRPC
    from vllm_poc.server.engines import Engines

    shape = args.shape or ("0.6b" if cuda else "tiny")
    batches = args.batches or (GPU_BATCHES if cuda else CPU_BATCHES)
    seq_len = args.seq_len
    path = model_dir(shape, Path(args.model_cache))
    config = json.loads((path / "config.json").read_text())
    flops = flops_per_nonce(config, seq_len)
    engine_args = AsyncEngineArgs(
        model=str(path),
        dtype="bfloat16",
        max_model_len=seq_len,
        max_num_batched_tokens=max(max(batches) * seq_len, seq_len),
        enforce_eager=not cuda,
        enable_prompt_embeds=cuda,  # the compiled model then runs the PoC forward
        load_format="auto" if shape == "tiny" else "dummy",
        **({"gpu_memory_utilization": args.gpu_memory_utilization} if cuda else {}),
    )
    started = time.perf_counter()
    engine = AsyncLLM.from_engine_args(engine_args)
    try:
        startup = time.perf_counter() - started
        manager = PoCManager(Engines([EngineRPC(engine)]), max_model_len=seq_len)
        meta = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": device_name(cuda),
            "torch": torch.__version__,
            "vllm": vllm.__version__,
            "model": shape,
            "model_config": {k: config.get(k) for k in _SHAPE_KEYS},
            "seq_len": seq_len,
            "engine_startup_s": round(startup, 1),
            "flops_per_nonce": flops,
            "flops_formula": FLOPS_FORMULA,
            # What a round without batch_size would get on this engine (VLLM_POC_BATCH_SIZE).
            "default_batch_size": await manager.default_batch_size(seq_len),
        }
        print(
            f"# PoC vs bare forward, {meta['device']}, {meta['date']}, torch {meta['torch']}, "
            f"vLLM {meta['vllm']}\n# model {shape} ({flops['non_embedding_params'] / 1e6:.2f}M "
            f"non-embedding params), seq_len {seq_len}, "
            f"{flops['total'] / 1e9:.3f} GFLOP/nonce; engine start {startup:.0f}s; "
            f"default batch_size {meta['default_batch_size']}",
            flush=True,
        )
        # Rounds alternate PoC windows and profiles, so load drifts (a shared CPU) hit both.
        samples: dict[int, list[dict[str, Any]]] = {b: [] for b in batches}
        for round_no in range(args.rounds):
            for batch in batches:
                poc = await poc_rate(
                    manager,
                    batch,
                    seq_len,
                    args.warmup_batches,
                    args.seconds,
                    args.min_batches,
                    args.random_projection,
                )
                prof = await profile(engine, batch, seq_len, args.reps, args.random_projection)
                samples[batch].append({**poc, **prof})
                print(
                    f"#   round {round_no + 1} batch {batch}: {poc['poc_nonces_per_s']:.1f} PoC "
                    f"nonces/s over {poc['poc_batches_timed']} batches, bare "
                    f"{batch / (prof['bare_forward_and_logits'] / 1e3):.1f} nonces/s",
                    flush=True,
                )
        rows = [summarize(batch, seq_len, samples[batch]) for batch in batches]
    finally:
        shutdown(engine)
        # Something keeps this frame alive after return; without this AsyncLLM.__del__ runs
        # its shutdown again at interpreter exit, when vLLM's module globals are gone.
        engine = manager = None
    # MFU against the best matmul measured in this run (each profile call measures one).
    peak = max(r["peak_tflops"] for r in rows) * 1e12
    for r in rows:
        r["mfu_poc"] = r["poc_nonces_per_s"] * flops["total"] / peak
        r["mfu_bare"] = r["bare_nonces_per_s"] * flops["total"] / peak
    meta["peak_tflops"] = peak / 1e12
    return {**meta, "rows": rows}


_SHAPE_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
)


def leftover_children(timeout: float = 10.0) -> list[str]:
    """Child processes (EngineCore, workers) alive after shutdown, waiting up to ``timeout``."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in psutil.Process().children(recursive=True) if p.is_running()]
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        # multiprocessing's resource tracker is not vLLM's: it exits with this process.
        alive = [p for p in alive if "resource_tracker" not in " ".join(p.cmdline())]
        if not alive or time.monotonic() > deadline:
            return [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in alive]
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", help="default: 1 4 16 64 / GPU 32..256")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument(
        "--shape", choices=["tiny", *DENSE_SHAPES], help="default: tiny on CPU, 0.6b on GPU"
    )
    parser.add_argument("--model-cache", default=".models", help="where models are made")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the batch sizes")
    parser.add_argument("--seconds", type=float, default=3.0, help="PoC timing per window")
    parser.add_argument("--min-batches", type=int, default=3, help="at least this many timed")
    parser.add_argument("--warmup-batches", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7, help="poc_profile repetitions")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument(
        "--random-projection",
        action="store_true",
        help="PoC rounds with random projections (their overhead against the bare forward)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    # Before vLLM is imported: the plugin registers itself only when enabled.
    os.environ["VLLM_POC_ENABLED"] = "1"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; read only by the CPU backend
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm.platforms import current_platform

    from vllm_poc import envs

    cuda = current_platform.is_cuda()
    largest = max(args.batches or (GPU_BATCHES if cuda else CPU_BATCHES)) * args.seq_len
    if largest > envs.VLLM_POC_MAX_TOKENS_PER_FORWARD:
        os.environ["VLLM_POC_MAX_TOKENS_PER_FORWARD"] = str(largest)

    result = asyncio.run(run(args, cuda))
    gc.collect()
    print(f"# measured peak matmul: {result['peak_tflops']:.3f} TFLOP/s; {FLOPS_FORMULA}")
    print_table(result["rows"])
    left = leftover_children()
    result["leftover_processes"] = left
    if left:
        print(f"# WARNING: processes left after shutdown: {', '.join(left)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
