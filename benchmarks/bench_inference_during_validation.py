"""Inference during validation: completion and /validate latency, quiet vs. contended.

Starts a real vLLM API server (``vllm_poc.testing.server.LocalServer``, as the end-to-end tests
do) with ``VLLM_POC_ENABLED=1`` and ``VLLM_POC_INFERENCE_DURING_VALIDATION=1`` on the tiny model
(``vllm_poc.testing.tiny_model.make_tiny_model``), puts it in a VALIDATING round and measures:

- completion latency with no other traffic, and while /validate requests run back to back;
- /validate latency with no other traffic, and while threads send completions back to back.

Prints a table (date, device) and writes JSON (--json).
Run: python benchmarks/bench_inference_during_validation.py [--completions 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from vllm_poc.protocol import POW_PREFIX as POW

REPO_ROOT = Path(__file__).resolve().parents[1]
BLOCK = "bench-validation-block"


def percentile(values: list[float], p: float) -> float:
    """Linear-interpolation percentile (numpy's default), ``p`` in [0, 100]."""
    s = sorted(values)
    pos = p / 100 * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(latencies_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in latencies_s]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "mean_ms": statistics.fmean(ms),
        "max_ms": max(ms),
    }


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception:
        pass
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model} ({os.cpu_count()} cores)"


class Bench:
    def __init__(self, base_url: str, model: str, args: argparse.Namespace) -> None:
        self.base_url = base_url
        self.model = model
        self.args = args
        self.proof = {
            "public_key": "bench-prover",
            "block_hash": BLOCK,
            "block_height": 1,
            "nonces": list(range(args.nonces)),
            "dist": [1.0] * args.nonces,
            "node_id": 0,
        }

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=300.0)

    def completion(self, c: httpx.Client, i: int = 0) -> float:
        body = {
            "model": self.model,
            "prompt": f"The quick brown fox number {i} jumps over",
            "max_tokens": self.args.max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
        }
        t = time.perf_counter()
        r = c.post("/v1/completions", json=body)
        dt = time.perf_counter() - t
        if r.status_code != 200:
            raise RuntimeError(f"completion answered {r.status_code}: {r.text[:300]}")
        return dt

    def validate(self, c: httpx.Client) -> float:
        t = time.perf_counter()
        r = c.post(POW + "/validate", json=self.proof)
        dt = time.perf_counter() - t
        if r.status_code != 200:
            raise RuntimeError(f"/validate answered {r.status_code}: {r.text[:300]}")
        return dt

    def with_background(
        self, work: Callable[[httpx.Client, int], float], n_threads: int, fn: Callable[[], Any]
    ) -> tuple[Any, int]:
        """Run ``fn`` while ``n_threads`` threads repeat ``work``; returns (result, work done)."""
        stop = threading.Event()
        done = [0] * n_threads
        errors: list[BaseException] = []

        def loop(k: int) -> None:
            with self.client() as c:
                while not stop.is_set():
                    try:
                        work(c, k)
                    except BaseException as e:
                        errors.append(e)
                        return
                    done[k] += 1

        threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(n_threads)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # let the background work get going
        try:
            result = fn()
        finally:
            stop.set()
            for t in threads:
                t.join(600)
        if errors:
            raise RuntimeError(f"background work failed: {errors[0]!r}")
        return result, sum(done)

    def run(self) -> dict[str, Any]:
        a = self.args
        with self.client() as c:
            r = c.post(
                POW + "/init/validate",
                json={
                    "block_hash": BLOCK,
                    "block_height": 1,
                    "public_key": "bench-validator",
                    "r_target": 1.5,
                    "batch_size": a.batch_size,
                    "seq_len": a.seq_len,
                },
            )
            r.raise_for_status()
            assert c.get(POW + "/status").json()["state"] == "VALIDATING"
            for i in range(a.warmup):
                self.completion(c, i)
                self.validate(c)

            print("completions, quiet ...", flush=True)
            quiet_c = [self.completion(c, i) for i in range(a.completions)]
            print("completions, during /validate ...", flush=True)
            busy_c, n_val_bg = self.with_background(
                lambda bc, _k: self.validate(bc),
                1,
                lambda: [self.completion(c, i) for i in range(a.completions)],
            )
            print("/validate, quiet ...", flush=True)
            quiet_v = [self.validate(c) for _ in range(a.validations)]
            print("/validate, under completion load ...", flush=True)
            busy_v, n_comp_bg = self.with_background(
                self.completion,
                a.load_threads,
                lambda: [self.validate(c) for _ in range(a.validations)],
            )
            c.post(POW + "/stop")
        return {
            "completion": {"quiet": summary(quiet_c), "during_validate": summary(busy_c)},
            "validate": {"quiet": summary(quiet_v), "under_completion_load": summary(busy_v)},
            "background_requests": {
                "validates_during_completions": n_val_bg,
                "completions_during_validates": n_comp_bg,
            },
        }


def table(meta: dict[str, Any], res: dict[str, Any]) -> str:
    lines = [
        f"# Inference during validation, {meta['device']}, {meta['date']}, vLLM "
        f"{meta['vllm']}, tiny model",
        f"# /validate: {meta['nonces']} nonces x seq_len {meta['seq_len']} (batch "
        f"{meta['batch_size']}); completion: {meta['max_tokens']} tokens, greedy; "
        f"{meta['load_threads']} completion threads as load; 1-min load average "
        f"{meta['load_average_1min']['start']:.1f} -> {meta['load_average_1min']['end']:.1f} "
        f"on {os.cpu_count()} cores",
        "",
        "| request | condition | n | p50 ms | p95 ms | mean ms | max ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind, conds in (("completion", res["completion"]), ("/validate", res["validate"])):
        for cond, s in conds.items():
            lines.append(
                f"| {kind} | {cond.replace('_', ' ')} | {s['n']} | {s['p50_ms']:.1f} | "
                f"{s['p95_ms']:.1f} | {s['mean_ms']:.1f} | {s['max_ms']:.1f} |"
            )
    bg = res["background_requests"]
    lines.append("")
    lines.append(
        f"background: {bg['validates_during_completions']} /validate during the completions, "
        f"{bg['completions_during_validates']} completions during the /validate requests"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--completions", type=int, default=40, help="completions per condition")
    parser.add_argument("--validations", type=int, default=15, help="/validate per condition")
    parser.add_argument("--nonces", type=int, default=64, help="nonces per /validate")
    parser.add_argument("--batch-size", type=int, default=4, help="the round's batch_size")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per completion")
    parser.add_argument("--load-threads", type=int, default=2, help="completion load threads")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--model-cache", default=str(REPO_ROOT / ".models"))
    parser.add_argument(
        "--json",
        default=str(Path(tempfile.gettempdir()) / "bench_inference_during_validation.json"),
        help="where to write the results",
    )
    args = parser.parse_args()

    from vllm_poc import compat
    from vllm_poc.testing.server import LocalServer
    from vllm_poc.testing.tiny_model import make_tiny_model

    model = make_tiny_model(Path(args.model_cache) / "tiny-qwen3")
    log = Path(tempfile.mkdtemp(prefix="bench-idv-")) / "server.log"
    server = LocalServer(
        model, log, poc_enabled=True, extra_env={"VLLM_POC_INFERENCE_DURING_VALIDATION": "1"}
    )
    print(f"starting the server (log: {log}) ...", flush=True)
    load_before = os.getloadavg()[0]
    with server:
        print(f"healthy after {server.startup_seconds:.1f} s", flush=True)
        res = Bench(server.base_url, str(model), args).run()

    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(),
        "vllm": compat.vllm_version(),
        "python": platform.python_version(),
        "model": "tiny-qwen3 (make_tiny_model)",
        "nonces": args.nonces,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "max_tokens": args.max_tokens,
        "load_threads": args.load_threads,
        "completions": args.completions,
        "validations": args.validations,
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
    }
    print()
    print(table(meta, res))
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "results": res}, f, indent=2)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
