"""Time the PoC protocol math at Qwen3-0.6B dimensions (hidden 1024, vocab 151936, seq_len 256).

Prints milliseconds per call of each function for batch 32 and 128, on CPU and on CUDA when
present; writes the same figures as JSON with --json. Run: python benchmarks/bench_math.py

It also times the dot-product form of the distance, ``sqrt(2 - 2 <x_perm, t> / ||x||)`` (exact
in real numbers since ``||t|| = 1``), and reports its largest difference from the reference
form ``||x_perm / ||x|| - t||`` over logits whose distances spread across [0, 2]: the reference
stays the protocol unless the dot form is both faster and equal within float32 noise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from vllm_poc.protocol import distance as gr

HIDDEN, VOCAB, SEQ_LEN = 1024, 151936, 256


def _time_ms(fn: Callable[[], object], device: str, reps: int) -> float:
    fn()
    samples = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def dot_form_distances(
    logits: torch.Tensor, permutations: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """The candidate form: no normalised copy of the logits, no difference vector."""
    x = torch.gather(logits.to(torch.float32), 1, permutations)
    cos = (x @ target) / torch.linalg.vector_norm(x, dim=1)
    return torch.sqrt(torch.clamp_min(2.0 - 2.0 * cos, 0.0))


def spread_logits(permutations: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logits whose permuted rows mix the target and noise in varying shares: distances from
    near 0 (the cancellation-prone end of the dot form) to near 2."""
    batch, vocab = permutations.shape
    share = torch.linspace(-1.0, 1.0, batch, device=target.device).unsqueeze(1)
    noise = torch.randn(batch, vocab, device=target.device) / vocab**0.5
    permuted = share * target + (1 - share.abs()) * noise
    return torch.empty_like(permuted).scatter_(1, permutations, permuted)


def dot_form_error(
    logits: torch.Tensor, permutations: torch.Tensor, target: torch.Tensor
) -> dict[str, float]:
    """Largest |dot form - reference| overall, and where the reference distance is >= 0.5."""
    reference = gr.compute_distances(logits, permutations, target)
    diff = (dot_form_distances(logits, permutations, target) - reference).abs()
    return {
        "dot_form_max_abs_diff": float(diff.max()),
        "dot_form_max_abs_diff_dist_ge_0.5": float(diff[reference >= 0.5].max()),
    }


def bench(device: str, batch: int, reps: int) -> dict[str, float]:
    nonces = list(range(batch))
    dtype = torch.bfloat16
    perms = gr.generate_permutations("blk", "pk", nonces, VOCAB, device)
    target = gr.generate_target("blk", VOCAB, device)
    logits = torch.randn(batch, VOCAB, device=device)
    spread = spread_logits(perms, target)
    return {
        "inputs": _time_ms(
            lambda: gr.generate_inputs("blk", "pk", nonces, HIDDEN, SEQ_LEN, device, dtype),
            device,
            reps,
        ),
        "permutations": _time_ms(
            lambda: gr.generate_permutations("blk", "pk", nonces, VOCAB, device), device, reps
        ),
        "target": _time_ms(lambda: gr.generate_target("blk", VOCAB, device), device, reps),
        "distances": _time_ms(lambda: gr.compute_distances(logits, perms, target), device, reps),
        "distances_dot_form": _time_ms(
            lambda: dot_form_distances(logits, perms, target), device, reps
        ),
        **dot_form_error(spread, perms, target),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    names = {"cpu": platform.processor() or platform.machine()}
    if "cuda" in devices:
        names["cuda"] = torch.cuda.get_device_name()
    print(
        f"# PoC math, hidden={HIDDEN} vocab={VOCAB} seq_len={SEQ_LEN}, "
        f"{datetime.date.today()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    header = ("device", "batch", "inputs ms", "perms ms", "target ms", "dist ms", "dot dist ms")
    print("".join(f"{h:>12}" for h in header) + "  dot form max |diff| (all / dist >= 0.5)")
    results = []
    for device in devices:
        for batch in args.batches:
            r = bench(device, batch, args.reps)
            results.append({"device": device, "device_name": names[device], "batch": batch, **r})
            row = (device, batch, r["inputs"], r["permutations"], r["target"], r["distances"])
            row += (r["distances_dot_form"],)
            errors = r["dot_form_max_abs_diff"], r["dot_form_max_abs_diff_dist_ge_0.5"]
            print(
                "".join(f"{v:>12.2f}" if isinstance(v, float) else f"{v:>12}" for v in row)
                + "  {:.2e} / {:.2e}".format(*errors)
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": str(datetime.date.today()), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
