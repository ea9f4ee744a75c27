"""GPU only: the PoC forward captured as a CUDA graph (``VLLM_POC_CUDA_GRAPHS=1``) gives the
distances of the same compiled server without graphs, leaves inference untouched, and reports
both rates. Skipped without CUDA; on a GPU session it is one call:

    .venv/bin/python -m pytest -s tests/e2e/test_cuda_graphs.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from vllm_poc.testing.server import LocalServer

from .conftest import _require_installed_plugin
from .helpers import LIMITS, POW, ok, post_ok, round_body, start_server, status, wait_checked
from .test_correctness import DIST_TOL

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (PoC CUDA graphs)"),
]

SHAPE = {"batch_size": 64, "seq_len": 128}


@pytest.fixture(scope="module")
def servers(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, LocalServer]]:
    _require_installed_plugin()
    logs = tmp_path_factory.mktemp("vllm-logs")
    started: dict[str, LocalServer] = {}
    try:
        for name, graphs in (("graphs", "1"), ("plain", "0")):
            server = LocalServer(
                tiny_model,
                logs / f"cuda-{name}.log",
                device="cuda",
                extra_args=["--gpu-memory-utilization", "0.3"],
                extra_env={"VLLM_POC_CUDA_GRAPHS": graphs},
                enforce_eager=False,
            )
            started[name] = start_server(server)
        yield started
    finally:
        for server in started.values():
            server.stop()


def _round(client: httpx.Client, at_least: int) -> tuple[dict[int, float], float]:
    post_ok(client, "/init/generate", round_body(block_hash="cuda-graphs", **SHAPE))
    wait_checked(client, SHAPE["batch_size"])  # the first batch captures the graph
    first, t0 = status(client), time.monotonic()
    wait_checked(client, first["total_checked"] + at_least)
    last, t1 = status(client), time.monotonic()
    post_ok(client, "/stop")
    final = status(client)
    rate = (last["total_checked"] - first["total_checked"]) / (t1 - t0)
    return dict(zip(final["valid_nonces"], final["valid_distances"], strict=True)), rate


def _greedy(client: httpx.Client, server: LocalServer) -> str:
    body = {"model": str(server.model_dir), "prompt": "Hello " * 40, "max_tokens": 16}
    body.update(temperature=0, logprobs=3)
    return json.dumps(ok(client.post("/v1/completions", json=body))["choices"], sort_keys=True)


def test_graphs_give_the_same_distances_and_leave_inference_alone(
    servers: dict[str, LocalServer],
) -> None:
    found: dict[str, dict[int, float]] = {}
    rates: dict[str, float] = {}
    for name, server in servers.items():
        with httpx.Client(base_url=server.base_url, timeout=600.0, limits=LIMITS) as c:
            assert ok(c.get(POW + "/version"))["options"]["compiled_poc_forward"] is True
            before = _greedy(c, server)
            found[name], rates[name] = _round(c, 20 * SHAPE["batch_size"])
            assert _greedy(c, server) == before
    print(
        f"\n[gpu] PoC nonces/s with CUDA graphs {rates['graphs']:.0f}, without {rates['plain']:.0f}"
    )
    common = sorted(set(found["graphs"]) & set(found["plain"]))
    assert len(common) >= SHAPE["batch_size"]
    worst = max(abs(found["graphs"][n] - found["plain"][n]) for n in common)
    print(f"[gpu] max |distance difference| over {len(common)} nonces: {worst:.3e}")
    assert worst <= DIST_TOL
