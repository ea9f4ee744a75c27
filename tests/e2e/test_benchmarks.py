"""The GPU benchmarks run end to end here (``bench_poc.py``: its FLOPs agree with the GPU
baseline; ``bench_artifacts.py``, ``artifact_noise.py``).

A benchmark is what a GPU session runs in its few minutes of device time, so it must not rot
between GPU loans: each runs for real on the tiny model (short windows, every stage) and the
figures it reports are checked complete and consistent. No speed is asserted; the benchmark
itself is where speed is read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from vllm_poc.testing.startup_env import with_cpu_startup
from vllm_poc.testing.tiny_model import REAL_SHAPES

from .helpers import record_start
from .servers import Servers

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_POC = REPO_ROOT / "benchmarks" / "bench_poc.py"
FORKING = "vLLM forks its engine processes"
"""What the start-up hook says in a process whose engine forks (``testing/cpu_startup``)."""


def forking_env() -> dict[str, str]:
    """The environment of a benchmark whose vLLM engine forks its processes, as vLLM does on the
    GPUs the benchmarks are for, through the test servers' start-up hook: no engine process
    imports vLLM again. The scripts run no torch operation before their engine starts (a
    process forked after one would inherit libgomp's threads' state)."""
    return with_cpu_startup(os.environ, fork=True)


@pytest.fixture(scope="module")
def bench_poc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_poc", BENCH_POC)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "shape, non_embedding_params, gflop_per_token",
    # The GPU baseline measured on an H100 (benchmarks/README.md): 0.910 and 13.97 GFLOP per
    # token at seq_len 256, counted as 2 x non-embedding parameters + causal attention.
    [("0.6b", 440.47e6, 0.910), ("8b", 6946.08e6, 13.97)],
)
def test_flops_per_nonce_match_the_gpu_baseline(
    bench_poc: ModuleType, shape: str, non_embedding_params: float, gflop_per_token: float
) -> None:
    flops = bench_poc.flops_per_nonce(REAL_SHAPES[shape], 256)
    assert flops["non_embedding_params"] == pytest.approx(non_embedding_params, rel=1e-4)
    per_token = (flops["dense"] + flops["attention"]) / 256
    assert per_token / 1e9 == pytest.approx(gflop_per_token, abs=0.005)
    hidden, vocab = REAL_SHAPES[shape]["hidden_size"], REAL_SHAPES[shape]["vocab_size"]
    assert flops["total"] == flops["dense"] + flops["attention"] + 2 * hidden * vocab


def test_bench_poc_reports_every_stage(
    bench_poc: ModuleType, servers: Servers, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "poc.json"
    batches = [1, 4]
    # bench_poc makes (or reuses) the tiny model as <model-cache>/tiny-qwen3.
    cmd = [
        sys.executable,
        str(BENCH_POC),
        "--batches",
        *map(str, batches),
        "--seq-len",
        "32",
        "--rounds",
        "1",
        "--seconds",
        "0.3",
        "--min-batches",
        "2",
        "--warmup-batches",
        "1",
        "--reps",
        "2",
        "--random-projection",
        "--model-cache",
        str(tiny_model.parent),
        "--json",
        str(out),
    ]
    servers.make_room()
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=forking_env()
    )
    record_start("bench_poc")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "PoC/bare" in run.stdout and FORKING in run.stderr

    result = json.loads(out.read_text())
    assert result["leftover_processes"] == []
    assert result["model"] == "tiny" and result["seq_len"] == 32
    assert result["default_batch_size"] >= 1
    assert result["peak_tflops"] > 0
    assert [row["batch"] for row in result["rows"]] == batches
    for row in result["rows"]:
        for stage in bench_poc.STAGES:  # with random projections, every stage runs
            assert row[stage] > 0, (row["batch"], stage, row[stage])
        assert row["poc_batches_timed"] >= 2
        assert row["poc_nonces_per_s"] > 0 and row["bare_nonces_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["poc_nonces_per_s"] / row["bare_nonces_per_s"])
        assert row["mfu_poc"] > 0 and row["mfu_bare"] > 0
        assert row["stage_sum_ms"] == pytest.approx(sum(row[s] for s in bench_poc.STAGES))


def _run_benchmark(
    servers: Servers, script: str, *args: str, engines: int = 1
) -> subprocess.CompletedProcess[str]:
    """Run a benchmark script that starts ``engines`` vLLM engines, forking (once the session's
    idle servers left them room)."""
    servers.make_room()
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=forking_env()
    )
    for _ in range(engines):
        record_start(script)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def _table(stdout: str, names: list[str]) -> dict[str, list[float]]:
    """The numbers of each named row of a benchmark's printed table."""
    rows = {}
    for line in stdout.splitlines():
        for name in names:
            if line.startswith(name + " "):
                rows[name] = [float(x) for x in line[len(name) :].split()]
    return rows


def test_bench_artifacts_reports_every_path_and_the_ratio(
    servers: Servers, tiny_model: Path
) -> None:
    """The artifact protocol's GPU benchmark, on the tiny model: the worker's paths, a served
    round at a real receiver and vLLM's prefill, in one run; the last line is the ratio."""
    profiled = [
        "bare forward, compiled",
        "bare forward, eager",
        "artifact batch, compiled",
        "artifact batch, eager",
        "distance batch",
    ]
    served = ["served artifact round", "vLLM prefill"]
    run = _run_benchmark(
        servers,
        "bench_artifacts.py",
        *("--batch", "2", "--seq-len", "16", "--reps", "1", "--rounds", "1"),
        *("--warmup", "1", "--seconds", "2", "--model-cache", str(tiny_model.parent)),
    )
    out = run.stdout
    assert FORKING in run.stderr, run.stderr[-2000:]
    rows = _table(out, profiled + served)
    assert sorted(rows) == sorted(profiled + served), out[-2000:]
    # The columns agree up to the digits they are printed with (ms 2, nonces/s 1, nonces/min 0,
    # the ratio 3): a printed x stands for anything within half its last digit.
    for name in profiled:
        ms, rate, per_minute, ratio = rows[name]
        assert ms > 0 and ratio > 0, name
        assert 2e3 / (ms + 0.005) - 0.05 <= rate <= 2e3 / (ms - 0.005) + 0.05, name
        assert 60 * (rate - 0.05) - 0.5 <= per_minute <= 60 * (rate + 0.05) + 0.5, name
    bare = rows["bare forward, compiled"][1]
    for name in served:
        rate, per_minute, ratio = rows[name]
        assert rate > 0, name
        lowest, highest = (rate - 0.05) / (bare + 0.05), (rate + 0.05) / (bare - 0.05)
        assert lowest - 0.0005 <= ratio <= highest + 0.0005, (name, rate, bare, ratio)
    last = out.strip().splitlines()[-1]
    assert last.startswith("artifact round vs bare forward: "), last
    assert float(last.split(": ")[1]) == pytest.approx(rows["served artifact round"][2], abs=2e-3)
    (l2,) = [float(line.split()[-1]) for line in out.splitlines() if "largest L2" in line]
    assert 0 <= l2 <= 0.02


def test_artifact_noise_reports_the_l2_between_configurations(servers: Servers) -> None:
    configs = ["batch 32, bf16", "batch 1, bf16"]  # one engine: they differ in the batch only
    out = _run_benchmark(
        servers,
        "artifact_noise.py",
        *("--nonces", "4", "--seq-len", "16", "--eager", "--only", *configs),
    ).stdout
    assert "2 configurations on 1 engine(s)" in out, out[-2000:]
    (max_l2, mean_l2, above) = _table(out, configs[1:])[configs[1]]
    assert 0 <= mean_l2 <= max_l2 <= 0.2 and above == 0, out[-2000:]
