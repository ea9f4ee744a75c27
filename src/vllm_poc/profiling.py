"""Timings of the PoC stages inside one worker, for ``benchmarks/bench_poc.py``.

Measured where the work happens, with the device synchronised around each stage, so the
benchmark can split a PoC batch into input generation, forward, logits and permutation plus
distance, and compare it with a bare forward of the same shape (random inputs, no PoC math).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch

from vllm_poc import gpu_random
from vllm_poc.forward import PoCForward


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


@torch.inference_mode()
def profile_stages(forward: PoCForward, batch: int, seq_len: int, reps: int) -> dict[str, float]:
    """Median milliseconds per stage of a PoC batch, and of a bare forward of the same shape."""
    sync = _synchronizer(forward.device)
    nonces = list(range(batch))
    bare_inputs = torch.randn(batch * seq_len, forward.hidden_size, device=forward.device).to(
        forward.dtype
    )
    samples: dict[str, list[float]] = defaultdict(list)
    for rep in range(reps + 1):  # the first repetition warms up
        sync()
        t0 = time.perf_counter()
        inputs = forward.inputs("profile", "pk", nonces, seq_len)
        sync()
        t1 = time.perf_counter()
        last = forward.last_hidden(inputs, batch, seq_len)
        sync()
        t2 = time.perf_counter()
        logits = forward.head(last, "profile") if last is not None else None
        sync()
        t3 = time.perf_counter()
        if logits is not None:
            vocab = logits.shape[-1]
            perms = gpu_random.generate_permutations("profile", "pk", nonces, vocab, forward.device)
            gpu_random.compute_distances(logits, perms, forward.target("profile", vocab)).tolist()
        sync()
        t4 = time.perf_counter()
        bare_last = forward.last_hidden(bare_inputs, batch, seq_len)
        if bare_last is not None:
            forward.runner.get_model().compute_logits(bare_last)
        sync()
        t5 = time.perf_counter()
        if rep == 0:
            continue
        for name, seconds in (
            ("inputs", t1 - t0),
            ("forward", t2 - t1),
            ("logits", t3 - t2),
            ("permutation_distance", t4 - t3),
            ("bare_forward_and_logits", t5 - t4),
        ):
            samples[name].append(seconds * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


@torch.inference_mode()
def peak_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, reps: int = 5) -> float:
    """Measured dense matmul throughput, the denominator of MFU."""
    sync = _synchronizer(device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    seconds = (time.perf_counter() - start) / reps
    return 2 * size**3 / seconds / 1e12
