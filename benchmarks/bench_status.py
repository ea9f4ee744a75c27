"""``GET /status`` of a long round: the whole response against a page (``?since=N``).

Builds the real routes and round manager in-process (FastAPI's test client; no engine is
called), puts ``--valid`` valid nonces into the round as a long generation would, and times
``/status`` (every valid nonce) against ``/status?since=N`` with N a poll interval's worth of
nonces before the end. Prints a table (date) and writes JSON (--json).
Run: python benchmarks/bench_status.py [--valid 1000000] [--page 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from vllm_poc.protocol import POW_PREFIX
from vllm_poc.protocol.distance.round import PoCConfig
from vllm_poc.server import protocols
from vllm_poc.server.distance.manager import PoCManager
from vllm_poc.server.engine_rpc import EngineRPC
from vllm_poc.server.engines import Engines


class NoEngine:
    """Nothing here reaches the engine: ``/status`` reads the manager only."""

    async def collective_rpc(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise AssertionError("the engine was called")


def timed(client: TestClient, path: str, repeats: int) -> dict[str, float]:
    seconds, size = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        response = client.get(POW_PREFIX + path)
        seconds.append(time.perf_counter() - t0)
        assert response.status_code == 200, response.text[:500]
        size = len(response.content)
    return {"bytes": size, "median_ms": statistics.median(seconds) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--valid", type=int, default=1_000_000, help="valid nonces in the round")
    parser.add_argument("--page", type=int, default=1000, help="nonces found since the last poll")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    app = FastAPI()
    protocols.attach(app)
    manager = PoCManager(Engines([EngineRPC(NoEngine())]), max_model_len=256)
    manager.init_round(PoCConfig(block_hash="b", block_height=1, public_key="k", r_target=1.4))
    manager.generation.valid_nonces = list(range(0, 3 * args.valid, 3))
    manager.generation.valid_distances = [1.0 + (n % 997) / 2500 for n in range(args.valid)]
    app.state.poc_manager = manager
    with TestClient(app) as client:
        full = timed(client, "/status", args.repeats)
        page = timed(client, f"/status?since={args.valid - args.page}", args.repeats)
    print(
        f"# /status with {args.valid:,} valid nonces, {datetime.date.today().isoformat()}, "
        f"median of {args.repeats}\n"
        f"{'request':<28}{'bytes':>14}{'ms':>10}\n"
        f"{'/status':<28}{full['bytes']:>14,}{full['median_ms']:>10.1f}\n"
        f"{f'/status?since=N ({args.page:,} new)':<28}{page['bytes']:>14,}"
        f"{page['median_ms']:>10.1f}"
    )
    if args.json:
        args.json.write_text(json.dumps({"valid": args.valid, "full": full, "page": page}))


if __name__ == "__main__":
    main()
