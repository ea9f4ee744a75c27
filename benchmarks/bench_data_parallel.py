"""PoC nonces/s of a data-parallel server against its engines run alone, in one run.

Starts real vLLM API servers (``vllm_poc.testing.server.LocalServer``) on the tiny model, on the
same N cores, and runs a PoC round on each; after ``--warmup`` seconds the nonces checked over
``--seconds`` (from ``/status``) give its rate:

1. alone: for each core c, a one-engine server confined to c (every process of it: API server,
   engine core, worker; CPU affinity inherited from this process while it starts them), alone
   on the machine;
2. side by side: the N confined one-engine servers at once (what the machine gives N independent
   engines: shared caches, memory bandwidth and hypervisor);
3. data-parallel: one server with ``--data-parallel-size N`` on the N cores, one bound to each
   engine (``VLLM_CPU_OMP_THREADS_BIND=0|1|...``).

``scaling`` = data-parallel rate / sum of the alone rates (target >= 0.9); ``vs side by side``
= data-parallel rate / side-by-side rate (what data parallelism itself costs). Prints a table
(date, cores) and writes JSON (--json).
Run: python benchmarks/bench_data_parallel.py [--engines 2] [--seconds 10] [--rounds 1]
[--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from vllm_poc.protocol import POW_PREFIX as POW
from vllm_poc.testing.server import LocalServer
from vllm_poc.testing.tiny_model import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def measure(server: LocalServer, args: argparse.Namespace) -> dict[str, Any]:
    """One generation round: nonces/s over the window, in total and per engine."""
    round_body = {
        "block_hash": "bench-dp-block",
        "block_height": 1,
        "public_key": "bench-node",
        "r_target": 1e-6,  # (almost) nothing valid: /status stays small
        "node_id": 0,
        "node_count": 1,
        "seq_len": args.seq_len,
    }
    if args.batch_size:
        round_body["batch_size"] = args.batch_size
    with httpx.Client(base_url=server.base_url + POW, timeout=120.0) as c:
        started = c.post("/init/generate", json=round_body)
        if started.status_code != 200:
            raise RuntimeError(f"/init/generate: {started.status_code} {started.text}")
        time.sleep(args.warmup)
        first, t0 = c.get("/status").json(), time.monotonic()
        time.sleep(args.seconds)
        last, t1 = c.get("/status").json(), time.monotonic()
        c.post("/stop").raise_for_status()
    if last["error"]:
        raise RuntimeError(f"the round failed: {last['error']}")
    seconds = t1 - t0
    engines = {
        e["dp_rank"]: (e["checked"] - before["checked"]) / seconds
        for e, before in zip(last["engines"], first["engines"], strict=True)
    }
    return {
        "nonces_per_s": (last["total_checked"] - first["total_checked"]) / seconds,
        "per_engine": engines,
        "batch_size": last["config"]["batch_size"],
    }


def start_server(model: Path, logs: Path, name: str, cores: list[int]) -> LocalServer:
    """A server on ``cores`` only: one engine per core, data-parallel when there are several."""
    extra_args = ["--data-parallel-size", str(len(cores))] if len(cores) > 1 else []
    env = {"VLLM_CPU_OMP_THREADS_BIND": "|".join(str(c) for c in cores)}
    log = logs / f"{name.replace(' ', '-').replace(',', '')}.log"
    server = LocalServer(model, log, extra_args=extra_args, extra_env=env)
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)  # the server's processes inherit it
    try:
        return server.start()
    finally:
        os.sched_setaffinity(0, everything)


def run_servers(
    model: Path, logs: Path, names: list[str], cores: list[list[int]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Start the servers, then measure them all at once."""
    servers: list[LocalServer] = []
    try:
        for name, own in zip(names, cores, strict=True):
            servers.append(start_server(model, logs, name, own))
        with ThreadPoolExecutor(len(servers)) as pool:
            results = list(pool.map(lambda server: measure(server, args), servers))
    finally:
        for server in servers:
            server.stop()
    for result, name, own in zip(results, names, cores, strict=True):
        result.update(name=name, cores=own)
        print(f"# {name}: {result['nonces_per_s']:.1f} nonces/s", flush=True)
    return results


def one_round(
    model: Path, logs: Path, cores: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """The three phases, one after the other."""
    alone = [
        run_servers(model, logs, [f"1 engine, core {c} only, alone"], [[c]], args)[0] for c in cores
    ]
    names = [f"1 engine, core {c} only, side by side" for c in cores]
    side = run_servers(model, logs, names, [[c] for c in cores], args)
    dp = run_servers(model, logs, [f"{len(cores)} data-parallel engines"], [cores], args)[0]
    sum_alone = sum(r["nonces_per_s"] for r in alone)
    sum_side = sum(r["nonces_per_s"] for r in side)
    return {
        "alone": alone,
        "side_by_side": side,
        "dp": dp,
        "sum_alone": sum_alone,
        "sum_side_by_side": sum_side,
        "scaling": dp["nonces_per_s"] / sum_alone,
        "vs_side_by_side": dp["nonces_per_s"] / sum_side,
    }


def table(meta: dict[str, Any], result: dict[str, Any]) -> str:
    lines = [
        f"# data-parallel PoC, {meta['date']}, {meta['cpus']} CPUs, tiny model, "
        f"seq_len {meta['seq_len']}, {meta['seconds']} s windows",
        f"{'server':<38}{'cores':<8}{'batch':>6}{'nonces/s':>11}  per engine",
    ]
    for r in [*result["alone"], *result["side_by_side"], result["dp"]]:
        per = ", ".join(f"dp{k}: {v:.1f}" for k, v in r["per_engine"].items())
        cores = "|".join(str(c) for c in r["cores"])
        lines.append(
            f"{r['name']:<38}{cores:<8}{r['batch_size']:>6}{r['nonces_per_s']:>11.1f}  {per}"
        )
    dp = result["dp"]["nonces_per_s"]
    lines.append(
        f"scaling: {dp:.1f} / {result['sum_alone']:.1f} alone = {result['scaling']:.3f} "
        f"(target >= 0.9); vs side by side: {dp:.1f} / {result['sum_side_by_side']:.1f} "
        f"= {result['vs_side_by_side']:.3f}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=int, default=2, help="data-parallel size (cores)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window per server")
    parser.add_argument("--warmup", type=float, default=3.0, help="untimed seconds first")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the auto rule")
    parser.add_argument("--model-cache", type=Path, default=REPO_ROOT / ".models")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the three phases")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.engines > (os.cpu_count() or 1):
        parser.error(f"--engines {args.engines} is more than this machine's cores")
    model = make_tiny_model(args.model_cache / "tiny-qwen3")
    logs = Path(tempfile.mkdtemp(prefix="bench-dp-"))
    print(f"# server logs: {logs}", flush=True)
    cores = list(range(args.engines))
    meta = {
        "date": datetime.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "seq_len": args.seq_len,
        "seconds": args.seconds,
    }
    rounds = []
    for round_no in range(args.rounds):
        rounds.append(one_round(model, logs / f"round-{round_no}", cores, args))
        print(table(meta, rounds[-1]), flush=True)
    meta["scaling_median"] = statistics.median(r["scaling"] for r in rounds)
    meta["vs_side_by_side_median"] = statistics.median(r["vs_side_by_side"] for r in rounds)
    print(
        f"median over {len(rounds)} rounds: scaling {meta['scaling_median']:.3f}, "
        f"vs side by side {meta['vs_side_by_side_median']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
