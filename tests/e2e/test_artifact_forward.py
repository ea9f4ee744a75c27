"""The artifact protocol's forward in a real vLLM engine (the worker method its HTTP API will
call): artifacts equal an independent transformers computation with reflections after every
decoder layer, do not depend on the batch, and differ for another key or block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from vllm_poc.protocol import artifact
from vllm_poc.testing.tiny_model import make_tiny_model

from .conftest import REPO_ROOT, _require_installed_plugin
from .reference import reference_artifacts

pytestmark = pytest.mark.e2e

BLOCK = "artifact-block"
KEY = "artifact-prover"
SEQ_LEN = 24
NONCES = list(range(8))
L2_TOL = 0.05
"""Per nonce, bf16 engine against the float32 reference (the issue's bound)."""


def _engine_artifacts(model: Path, job: dict[str, list[Any]], log: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_POC_")}
    env.update(VLLM_POC_ENABLED="1", VLLM_CPU_KVCACHE_SPACE="1")
    command = [sys.executable, "-m", "tests.e2e.artifact_engine", str(model), json.dumps(job)]
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    log.write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ARTIFACTS ")]
    assert done.returncode == 0 and lines, f"engine failed (log: {log}):\n{done.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("ARTIFACTS "))


@pytest.fixture(scope="module", params=["qwen3", "qwen3-moe"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    _require_installed_plugin()
    name = "tiny-qwen3" if request.param == "qwen3" else f"tiny-{request.param}"
    model = make_tiny_model(REPO_ROOT / ".models" / name, architecture=request.param)
    job = {
        "batch": [BLOCK, KEY, NONCES, SEQ_LEN],
        "singles": [BLOCK, KEY, NONCES[:1], SEQ_LEN],
        "other_key": [BLOCK, "someone-else", NONCES, SEQ_LEN],
        "other_block": ["another-block", KEY, NONCES, SEQ_LEN],
    }
    log = tmp_path_factory.mktemp("artifact-engine") / f"{request.param}.log"
    return model, _engine_artifacts(model, job, log)


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
