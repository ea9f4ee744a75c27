"""Timings of the PoC stages inside one worker, for ``benchmarks/bench_poc.py`` and
``benchmarks/bench_artifacts.py``.

Measured where the work happens, with the device synchronised around each stage, so the
benchmark can split a PoC batch into input generation, forward, logits and permutation plus
distance, and compare it with a bare forward of the same shape (random inputs, no PoC math).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from vllm_poc.log import get_logger
from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.protocol.distance import math as distance
from vllm_poc.work import Work
from vllm_poc.worker.artifacts import ArtifactForward
from vllm_poc.worker.cuda_graphs import PoCGraphs
from vllm_poc.worker.forward import PoCForward

logger = get_logger(__name__)


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


class _Stopwatch:
    """Milliseconds per named stage, the device synchronised around each."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.ms: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.ms[stage] += (time.perf_counter() - start) * 1e3


@torch.inference_mode()
def profile_stages(
    forward: PoCForward, batch: int, seq_len: int, reps: int, random_projection: bool = False
) -> dict[str, float]:
    """Median milliseconds per stage of a PoC batch, and of a bare forward of the same shape.

    With ``random_projection`` the pre and post projections of a round that uses them are one
    more stage, ``projection`` (the forward and the logits then run on projected tensors).
    """
    sync = _synchronizer(forward.device)
    nonces = list(range(batch))
    bare_inputs = torch.randn(batch * seq_len, forward.hidden_size, device=forward.device).to(
        forward.dtype
    )
    profiled = Work("distances", "profile", "pk", tuple(nonces), seq_len)
    ids = forward.routing.ids(profiled, forward.device)
    samples: dict[str, list[float]] = defaultdict(list)

    def bare(stage: _Stopwatch) -> None:
        with stage("bare_forward_and_logits"):
            bare_last = forward.last_hidden(bare_inputs, batch, seq_len, token_ids=ids)
            if bare_last is not None:
                forward.runner.get_model().compute_logits(bare_last)

    for rep in range(reps + 1):  # the first repetition warms up
        stage = _Stopwatch(sync)
        # Alternating which runs first keeps what one leaves in caches from favouring the other.
        if rep % 2:
            bare(stage)
        with stage("inputs"):
            inputs = forward.inputs(profiled)
        if random_projection:
            with stage("projection"):
                inputs = distance.apply_projection(inputs, forward.projection("profile", "pre"))
        with stage("forward"):
            last = forward.last_hidden(inputs, batch, seq_len, token_ids=ids)
        if last is not None:
            if random_projection:
                with stage("projection"):
                    last = distance.apply_projection(last, forward.projection("profile", "post"))
            with stage("logits"):
                logits = forward.head(last, "profile")
            assert logits is not None, "a rank with the last hidden states has the logits"
            with stage("permutation_distance"):
                vocab = logits.shape[-1]
                perms = distance.generate_permutations(
                    "profile", "pk", nonces, vocab, forward.device
                )
                target = forward.target("profile", vocab)
                distance.compute_distances(logits, perms, target).tolist()
        if not rep % 2:
            bare(stage)
        if rep > 0:
            for name, ms in stage.ms.items():
                samples[name].append(ms)
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


@torch.inference_mode()
def profile_artifacts(
    forward: PoCForward, artifacts: ArtifactForward, batch: int, seq_len: int, reps: int
) -> dict[str, float]:
    """Median milliseconds of one batch of: artifacts (inputs, reflected forward and the pick)
    as configured, eager, and (on CUDA, where the forward compiles) replayed from a CUDA graph;
    the distance protocol's batch; and bare forwards of the same shape (the distance protocol's
    forward of prepared inputs and metadata: compiled where it compiles) as configured and
    eager; alternating the order repetition by repetition. Also the largest L2 between the
    compiled and the eager artifacts of the profiled nonces (``compiled_vs_eager_l2``)."""
    sync = _synchronizer(forward.device)
    work = Work("artifacts", "profile", "pk", tuple(range(batch)), seq_len)
    inputs = forward.inputs(work)
    ids = forward.routing.ids(work, forward.device)
    shape = forward.prepare(batch, seq_len)
    out: dict[str, object] = {}
    runs: dict[str, Callable[[], object]] = {
        "artifacts": lambda: artifacts.artifacts(work),
        "artifacts_eager": lambda: artifacts.artifacts(dataclasses.replace(work, eager=True)),
        "distances": lambda: forward.distances(dataclasses.replace(work, kind="distances")),
        "bare_forward_eager": lambda: forward.run(shape, inputs, token_ids=ids),
        "bare_forward": lambda: forward.run_distance(shape, inputs, ids),
    }
    if forward.device.type == "cuda" and artifacts.graph is not None:
        captured = artifacts.cuda_graphs or PoCGraphs(forward.shapes, artifacts.run)
        try:
            _with_graphs(artifacts, captured, work)  # captures: a failure drops only this row
            runs["artifacts_cuda_graph"] = lambda: _with_graphs(artifacts, captured, work)
        except Exception:
            logger.exception("vllm-poc: profiling without the CUDA graph of the artifact batch")
    samples: dict[str, list[float]] = defaultdict(list)
    for rep in range(reps + 1):  # the first repetition warms up (and compiles)
        order = list(runs) if rep % 2 else list(reversed(runs))
        stage = _Stopwatch(sync)
        for name in order:
            with stage(name):
                out[name] = runs[name]()
        if rep > 0:
            for name, ms in stage.ms.items():
                samples[name].append(ms)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    compiled, eager = out["artifacts"], out["artifacts_eager"]
    assert isinstance(compiled, list) and isinstance(eager, list)
    medians["compiled_vs_eager_l2"] = _largest_l2(compiled, eager)
    return medians


def _with_graphs(artifacts: ArtifactForward, graphs: PoCGraphs, work: Work) -> object:
    saved, artifacts.cuda_graphs = artifacts.cuda_graphs, graphs
    try:
        return artifacts.artifacts(work)
    finally:
        artifacts.cuda_graphs = saved


def _largest_l2(a: list[str], b: list[str]) -> float:
    """Largest L2 between two lists of base64 artifacts (0 for rejected batches)."""
    if not a or not b:
        return 0.0
    distances = []
    for x, y in zip(a, b, strict=True):
        left, right = artifact.decode(x), artifact.decode(y)
        assert left is not None and right is not None, "an artifact this worker made decodes"
        distances.append(float(np.linalg.norm(left - right)))
    return max(distances)
