"""vLLM's distributed deployments beyond one engine process group on one host, with every
process on this machine: data-parallel engines on two "hosts" behind one API server. Each test
starts its own processes and stops them; they fork vLLM's engine processes as GPU hosts do
(``LocalServer(fork=True)``) and are forked from the session's zygote, like the registry's
servers.

Configurations vLLM itself cannot run here are recorded with vLLM's exact error, so that the
day one works, a test says so: the Ray executor (refused on CPU), and external load balancing
(an API server per data-parallel rank), which vLLM accepts for MoE models only; PoC refuses MoE
models with data parallelism for now (unit-tested in tests/unit/test_data_parallel.py, as is
the striding of an API server fronting some of the ranks).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from vllm_poc.testing.ports import free_port
from vllm_poc.testing.server import LocalServer

from .helpers import (
    LIMITS,
    post_ok,
    round_body,
    start_server,
    status,
    wait_checked,
    wait_every_engine,
)
from .reference import reference_distances
from .servers import Servers
from .test_correctness import DIST_TOL

pytestmark = pytest.mark.e2e

SEQ_LEN = 16


@contextmanager
def running(servers: Servers, processes: Sequence[LocalServer]) -> Iterator[list[httpx.Client]]:
    """Start the processes at once (the ranks of one deployment wait for each other, forked
    from the session's zygote) once the session's idle servers left them room, yield a client
    for each API server, stop them all."""
    servers.make_room()
    for server in processes:
        server.zygote = servers.zygote(server)
    try:
        with ThreadPoolExecutor(len(processes)) as pool:
            for started in [pool.submit(start_server, server) for server in processes]:
                started.result()
        clients = [
            httpx.Client(base_url=server.base_url, timeout=120.0, limits=LIMITS)
            for server in processes
            if not server.headless
        ]
        try:
            yield clients
        finally:
            for client in clients:
                client.close()
        for server in processes:
            assert server.alive(), f"{server.log_path} died; log tail:\n{server.log_tail()}"
    finally:
        for server in processes:
            server.stop()


def test_engines_on_two_hosts_behind_one_api_server(
    servers: Servers, tiny_model: Path, tmp_path: Path
) -> None:
    """``--data-parallel-size 2 --data-parallel-size-local 1`` on "host 0" (API server and rank
    0) and ``vllm serve --headless --data-parallel-start-rank 1`` on "host 1": the API server
    gives the remote engine its own share of the round, and its distances are the model's."""
    common = [
        *("--data-parallel-size", "2", "--data-parallel-size-local", "1"),
        *("--data-parallel-address", "127.0.0.1", "--data-parallel-rpc-port", str(free_port())),
    ]
    host0 = LocalServer(
        tiny_model,
        tmp_path / "host-0.log",
        extra_args=common,
        extra_env={"VLLM_CPU_OMP_THREADS_BIND": "0"},
        fork=True,
    )
    host1 = LocalServer(
        tiny_model,
        tmp_path / "host-1.log",
        extra_args=[*common, "--data-parallel-start-rank", "1"],
        extra_env={"VLLM_CPU_OMP_THREADS_BIND": "1"},
        headless=True,
        fork=True,
    )
    body = round_body(block_hash="two-hosts", node_id=0, node_count=1, seq_len=SEQ_LEN)
    with running(servers, [host1, host0]) as (c,):
        post_ok(c, "/init/generate", body)
        wait_every_engine(c, 16)
        post_ok(c, "/stop")
        final = status(c)
    assert final["error"] is None, final["error"]
    engines = final["engines"]
    print(f"\n[e2e] two hosts: {final['total_checked']} nonces, engines {engines}")
    assert [e["dp_rank"] for e in engines] == [0, 1]
    assert all(e["checked"] > 0 for e in engines), engines
    nonces = final["valid_nonces"]
    assert len(set(nonces)) == len(nonces) == final["total_checked"]
    found = dict(zip(nonces, final["valid_distances"], strict=True))
    sample = sorted(found)[:8]
    ref = reference_distances(tiny_model, body["block_hash"], body["public_key"], sample, SEQ_LEN)
    assert max(abs(found[n] - r) for n, r in zip(sample, ref, strict=True)) <= DIST_TOL


def test_one_engine_spread_over_two_hosts(
    servers: Servers, tiny_model: Path, tmp_path: Path
) -> None:
    """Tensor parallelism over two "hosts" with vLLM's multiprocessing executor
    (``--nnodes 2 --node-rank 0|1 --master-addr``; node 1 runs headless): both hosts' workers
    take part in every PoC forward, and the distances are the model's."""
    common = [
        *("--tensor-parallel-size", "2", "--nnodes", "2"),
        *("--master-addr", "127.0.0.1", "--master-port", str(free_port())),
    ]
    host0 = LocalServer(
        tiny_model,
        tmp_path / "node-0.log",
        extra_args=[*common, "--node-rank", "0"],
        extra_env={"VLLM_CPU_OMP_THREADS_BIND": "0"},
        fork=True,
    )
    host1 = LocalServer(
        tiny_model,
        tmp_path / "node-1.log",
        extra_args=[*common, "--node-rank", "1"],
        extra_env={"VLLM_CPU_OMP_THREADS_BIND": "1"},
        headless=True,
        fork=True,
    )
    body = round_body(block_hash="tp-two-hosts", node_id=0, node_count=1, seq_len=SEQ_LEN)
    with running(servers, [host1, host0]) as (c,):
        post_ok(c, "/init/generate", body)
        wait_checked(c, 16)
        post_ok(c, "/stop")
        final = status(c)
    assert final["error"] is None, final["error"]
    assert [e["dp_rank"] for e in final["engines"]] == [0]
    found = dict(zip(final["valid_nonces"], final["valid_distances"], strict=True))
    sample = sorted(found)[:8]
    ref = reference_distances(tiny_model, body["block_hash"], body["public_key"], sample, SEQ_LEN)
    assert max(abs(found[n] - r) for n, r in zip(sample, ref, strict=True)) <= DIST_TOL


REFUSED_BY_VLLM = {
    "ray-executor": (
        ["--tensor-parallel-size", "2", "--distributed-executor-backend", "ray"],
        "current platform cpu does not support ray",
    ),
    "external-load-balancing": (
        ["--data-parallel-size", "2", "--data-parallel-rank", "0"],
        "Non-MoE models do not support external data parallel mode",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED_BY_VLLM))
def test_configurations_vllm_cannot_run_on_cpu(
    name: str, servers: Servers, tiny_model: Path, tmp_path: Path
) -> None:
    args, error = REFUSED_BY_VLLM[name]
    servers.make_room()
    server = LocalServer(
        tiny_model,
        tmp_path / f"{name}.log",
        extra_args=args,
        extra_env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"},
        fork=True,
    )
    server.zygote = servers.zygote(server)
    with pytest.raises(RuntimeError, match="before it was healthy"):
        start_server(server)  # stops what it started when it fails
    log = server.log_path.read_text()
    assert error in log, f"vLLM failed otherwise than recorded; log tail:\n{log[-3000:]}"
