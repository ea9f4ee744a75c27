"""The artifact protocol's forward in a real vLLM engine (the worker method its HTTP API calls):
artifacts equal an independent transformers computation with reflections after every decoder
layer, do not depend on the batch, and differ for another key or block. On the compiled engine
(tiny Qwen3, as operators run it) the compiled graph with the reflections inside agrees with the
eager reference on every one of 1,024 nonces and compiles once for two rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.testing.startup_env import with_cpu_startup
from vllm_poc.testing.tiny_model import make_tiny_model

from .conftest import REPO_ROOT, _require_installed_plugin
from .helpers import record_start
from .reference import reference_artifacts

pytestmark = pytest.mark.e2e

BLOCK = "artifact-block"
KEY = "artifact-prover"
SEQ_LEN = 24
NONCES = list(range(8))
L2_TOL = 0.05
"""Per nonce, bf16 engine against the float32 reference (the issue's bound)."""
MANY = list(range(1024))
"""Nonces of the compiled-against-eager comparison."""
BATCH = 128
COMPILED_TOL = 0.02
"""Compiled against eager, per nonce: the protocol's own mismatch distance (``DIST_THRESHOLD``)."""


def _engine_artifacts(
    model: Path, job: dict[str, Any], log: Path, pythonpath: Path | None = None
) -> dict[str, Any]:
    """The answers of ``tests.e2e.artifact_engine`` on ``model`` (``pythonpath``: a folder put
    first on the engine's path, for a ``sitecustomize`` of the test). The engine runs in that
    one process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: engine core and worker in the caller's
    process, as an in-process ``LLM`` on a single GPU), so vLLM is imported once, not thrice."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_POC_")}
    env.update(VLLM_POC_ENABLED="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    env = with_cpu_startup(env, fork=False)  # ahead of the test's own, which it runs next
    command = [sys.executable, "-m", "tests.e2e.artifact_engine", str(model), json.dumps(job)]
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    record_start(f"artifact-engine {model.name}")
    log.write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ARTIFACTS ")]
    assert done.returncode == 0 and lines, f"engine failed (log: {log}):\n{done.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("ARTIFACTS "))


def _calls(compiled: bool) -> dict[str, Any]:
    """On the compiled engine, two rounds of 1,024 nonces (compiled and eager) first, then the
    graphs compiled by then, then the calls both engines answer."""
    calls: dict[str, Any] = {}
    if compiled:
        for block in ("round-one", "round-two"):
            for first in range(0, len(MANY), BATCH):
                args = [block, KEY, MANY[first : first + BATCH], SEQ_LEN]
                calls[f"{block} {first}"] = args
                calls[f"{block} {first} eager"] = {"args": args, "eager": True}
        calls["compilations"] = []
    return calls | {
        "batch": [BLOCK, KEY, NONCES, SEQ_LEN],
        "singles": [BLOCK, KEY, NONCES[:1], SEQ_LEN],
        "other_key": [BLOCK, "someone-else", NONCES, SEQ_LEN],
        "other_block": ["another-block", KEY, NONCES, SEQ_LEN],
    }


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The tiny Qwen3 on a compiled engine (as operators run it), the tiny Qwen3-MoE on an
    eager one: each model folder with the engine's answers."""
    _require_installed_plugin()
    logs = tmp_path_factory.mktemp("artifact-engine")
    out = {}
    for architecture, compiled in (("qwen3", True), ("qwen3-moe", False)):
        name = "tiny-qwen3" if architecture == "qwen3" else f"tiny-{architecture}"
        model = make_tiny_model(REPO_ROOT / ".models" / name, architecture=architecture)
        job = {"eager": not compiled, "calls": _calls(compiled)}
        out[architecture] = (model, _engine_artifacts(model, job, logs / f"{architecture}.log"))
    return out


@pytest.fixture(params=["qwen3", "qwen3-moe"])
def served(request: pytest.FixtureRequest, engines: dict[str, Any]) -> Any:
    return engines[request.param]


def _decoded(rows: list[str]) -> torch.Tensor:
    return torch.tensor([artifact.decode(r).tolist() for r in rows])


def test_artifacts_match_the_independent_reference(served: Any) -> None:
    model, got = served
    engine = _decoded(got["batch"])
    ref = reference_artifacts(model, BLOCK, KEY, NONCES, SEQ_LEN)
    l2 = (engine - ref).norm(dim=1)
    print(
        f"\n[e2e] {model.name}: artifact L2 engine vs reference: max {l2.max():.4f} "
        f"(mean {l2.mean():.4f}, tolerance {L2_TOL})"
    )
    assert float(l2.max()) <= L2_TOL, l2.tolist()
    assert all(len(r) == 32 for r in got["batch"])


def test_artifacts_do_not_depend_on_the_batch(served: Any) -> None:
    _, got = served
    l2 = (_decoded(got["singles"]) - _decoded(got["batch"][:1])).norm(dim=1)
    assert float(l2.max()) <= L2_TOL


def test_another_key_or_block_gives_other_artifacts(served: Any) -> None:
    """What a validator catches: far above the chain's 0.2 for every nonce."""
    _, got = served
    mine = _decoded(got["batch"])
    for other in ("other_key", "other_block"):
        assert float((_decoded(got[other]) - mine).norm(dim=1).min()) > 0.2, other


def test_the_compiled_graph_agrees_with_the_eager_reference_on_every_nonce(
    engines: dict[str, Any],
) -> None:
    model, got = engines["qwen3"]
    worst = 0.0
    for block in ("round-one", "round-two"):
        for first in range(0, len(MANY), BATCH):
            compiled, eager = got[f"{block} {first}"], got[f"{block} {first} eager"]
            assert len(compiled) == len(eager) == min(BATCH, len(MANY) - first)
            worst = max(worst, float((_decoded(compiled) - _decoded(eager)).norm(dim=1).max()))
    print(
        f"\n[e2e] {model.name}: compiled vs eager artifacts over 2 x {len(MANY)} nonces: "
        f"largest L2 {worst:.5f} (tolerance {COMPILED_TOL})"
    )
    assert worst <= COMPILED_TOL


def test_a_new_round_never_recompiles(engines: dict[str, Any]) -> None:
    """Two rounds (block hashes) of one shape: the reflection vectors are data of one graph."""
    _, got = engines["qwen3"]
    assert got["compilations"] == {"distance": 0, "artifact": 1}, got["compilations"]
