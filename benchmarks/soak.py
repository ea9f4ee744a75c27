"""Bounded soak: a real PoC server on the tiny model, rounds after rounds for N minutes.

Starts ``python -m vllm.entrypoints.openai.api_server`` with the plugin on the tiny local model
(``vllm_poc.testing``: ``LocalServer``, ``make_tiny_model``) and repeats, until the time is up:

1. ``/calibrate`` the round's block (an r_target giving about ``--valid-rate`` valid nonces);
2. ``/init/generate`` (with a local callback receiver) and generate ``--round-seconds`` while
   polling ``/status``;
3. ``/phase/validate`` and ``/validate`` a sample of the round's own valid nonces (honest: no
   fraud expected) and a forged batch (fraud expected);
4. ``/stop`` and a few ``/v1/completions`` and ``/v1/chat/completions`` between rounds.

It samples the RSS of the server's process tree (API server + EngineCore + workers, with psutil)
and reports: RSS at start, after warm-up, at the end and its maximum, with a bound (growth after
warm-up below ``max(--rss-bound-pct of the warm RSS, --rss-bound-mib)``), the error count (HTTP
errors, failed rounds, wrong verdicts: must be 0), nonces/s per minute (min/max/mean) and the
number of rounds, validations and completions. Prints a table, writes JSON, and exits 1 on FAIL.

Not part of the test suite. Run: python benchmarks/soak.py [--minutes 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from vllm_poc.protocol import POW_PREFIX as POW
from vllm_poc.testing.receiver import CallbackReceiver
from vllm_poc.testing.server import LocalServer

REPO_ROOT = Path(__file__).resolve().parents[1]

MIB = 2**20


@dataclass
class Soak:
    """Everything measured during the run (the JSON report is built from it)."""

    started: float = field(default_factory=time.time)
    rss: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since start, RSS of the process tree in bytes)."""
    rss_by_process_start: dict[str, int] = field(default_factory=dict)
    rss_by_process_end: dict[str, int] = field(default_factory=dict)
    rate_samples: list[tuple[float, float, int]] = field(default_factory=list)
    """(seconds since start, seconds of generation, nonces checked) between two polls."""
    errors: list[str] = field(default_factory=list)
    rounds: int = 0
    nonces_checked: int = 0
    nonces_valid: int = 0
    validations: int = 0
    validated_nonces: int = 0
    fraud_checks: int = 0
    calibrations: int = 0
    completions: int = 0
    status_polls: int = 0
    callbacks_received: int = 0
    round_rates: list[float] = field(default_factory=list)
    callback_stats: dict[str, int] = field(default_factory=dict)

    def now(self) -> float:
        return time.time() - self.started

    def error(self, what: str) -> None:
        self.errors.append(f"{self.now():8.1f}s {what}")
        print(f"[soak] ERROR {what}", flush=True)


def tree_rss(pid: int) -> dict[str, int]:
    """RSS in bytes of ``pid`` and all its descendants, by ``name(pid)``."""
    out: dict[str, int] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            out[f"{p.name()}({p.pid})"] = p.memory_info().rss
    return out


class Driver:
    def __init__(self, args: argparse.Namespace, server: LocalServer, receiver: CallbackReceiver):
        self.args = args
        self.server = server
        self.receiver = receiver
        self.client = httpx.Client(base_url=server.base_url, timeout=args.http_timeout)
        self.soak = Soak()
        self.deadline = time.monotonic() + args.minutes * 60
        self._last_rss = 0.0

    # ------------------------------------------------------------------ helpers

    def sample_rss(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_rss < self.args.rss_interval:
            return
        self._last_rss = time.monotonic()
        by_proc = tree_rss(self.server.proc.pid)  # type: ignore[union-attr]
        self.soak.rss.append((self.soak.now(), sum(by_proc.values())))

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        """One request; anything but a 200 counts as an error (None returned)."""
        try:
            r = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            self.soak.error(f"{method} {path}: {type(e).__name__}: {e}")
            return None
        if r.status_code != 200:
            self.soak.error(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
            return None
        return r.json()

    def status(self) -> dict[str, Any] | None:
        self.soak.status_polls += 1
        return self.call("GET", POW + "/status")

    def alive(self) -> bool:
        if self.server.alive():
            return True
        self.soak.error("the server process died")
        return False

    # ------------------------------------------------------------------ one round

    def run_round(self, k: int) -> None:
        a, s = self.args, self.soak
        block = f"soak-block-{k}"
        cal = self.call(
            "POST",
            POW + "/calibrate",
            json={
                "block_hash": block,
                "public_key": "soak-node",
                "valid_rate": a.valid_rate,
                "n_samples": a.calibration_samples,
                "batch_size": a.batch_size,
                "seq_len": a.seq_len,
            },
        )
        if cal is None:
            return
        s.calibrations += 1
        body = {
            "block_hash": block,
            "block_height": k,
            "public_key": "soak-node",
            "r_target": cal["r_target"],
            "node_id": 0,
            "node_count": 1,
            "batch_size": a.batch_size,
            "seq_len": a.seq_len,
            "callback_url": self.receiver.url,
        }
        if self.call("POST", POW + "/init/generate", json=body) is None:
            return
        s.rounds += 1
        round_end = min(self.deadline, time.monotonic() + a.round_seconds)
        last: tuple[float, int] | None = None
        st: dict[str, Any] | None = None
        while time.monotonic() < round_end:
            time.sleep(a.poll_interval)
            self.sample_rss()
            st = self.status()
            if st is None:
                continue
            if st["state"] != "GENERATING" or st["error"]:
                s.error(f"round {k} left GENERATING: {st['state']} {st['error']}")
                break
            point = (st["elapsed_seconds"], st["total_checked"])
            if last is not None and point[0] > last[0]:
                s.rate_samples.append((s.now(), point[0] - last[0], point[1] - last[1]))
            last = point
        if self.call("POST", POW + "/phase/validate") is None:
            return
        st = self.status()
        if st is None:
            return
        s.nonces_checked += st["total_checked"]
        s.nonces_valid += st["total_valid"]
        s.round_rates.append(st["rate_per_second"])
        self.validate_sample(block, k, st)
        self.call("POST", POW + "/stop")
        self.inference()

    def validate_sample(self, block: str, k: int, st: dict[str, Any]) -> None:
        a, s = self.args, self.soak
        n = min(a.validate_samples, len(st["valid_nonces"]))
        if n == 0:
            s.error(f"round {k}: no valid nonce to validate")
            return
        honest = {
            "public_key": "soak-node",
            "block_hash": block,
            "block_height": k,
            "nonces": st["valid_nonces"][:n],
            "dist": st["valid_distances"][:n],
            "node_id": 0,
        }
        verdict = self.call("POST", POW + "/validate", json=honest)
        if verdict is not None:
            s.validations += 1
            s.validated_nonces += n
            if verdict["fraud_detected"] or verdict["n_invalid"] > 0:
                s.error(f"round {k}: honest batch judged {verdict['n_invalid']}/{n} invalid")
        # A forged batch: nonces the node never found valid, claimed with a tiny distance.
        valid = set(st["valid_nonces"])
        forged_nonces = [x for x in range(st["total_checked"]) if x not in valid][:n]
        forged = dict(honest, nonces=forged_nonces, dist=[1e-3] * len(forged_nonces))
        verdict = self.call("POST", POW + "/validate", json=forged)
        if verdict is not None:
            s.validations += 1
            s.fraud_checks += 1
            s.validated_nonces += len(forged_nonces)
            if not verdict["fraud_detected"]:
                s.error(f"round {k}: forged batch of {len(forged_nonces)} nonces not flagged")

    def inference(self) -> None:
        model = str(self.server.model_dir)
        for i in range(self.args.completions):
            out = self.call(
                "POST",
                "/v1/completions",
                json={"model": model, "prompt": f"Hello {i}", "max_tokens": 16},
            )
            if out is not None and out.get("choices"):
                self.soak.completions += 1
        out = self.call(
            "POST",
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 16,
            },
        )
        if out is not None and out.get("choices"):
            self.soak.completions += 1

    # ------------------------------------------------------------------ the run

    def run(self) -> Soak:
        s = self.soak
        s.rss_by_process_start = tree_rss(self.server.proc.pid)  # type: ignore[union-attr]
        self.sample_rss(force=True)
        k = 0
        while time.monotonic() < self.deadline and self.alive():
            k += 1
            self.run_round(k)
            self.sample_rss(force=True)
            print(
                f"[soak] {s.now():7.1f}s round {k}: checked {s.nonces_checked}, "
                f"rss {s.rss[-1][1] / MIB:.0f} MiB, errors {len(s.errors)}",
                flush=True,
            )
        self.alive()
        s.callbacks_received = len(self.receiver.records())
        st = self.status()
        if st is not None:
            s.callback_stats = st["callbacks"]
            print(f"[soak] callbacks: {s.callback_stats}", flush=True)
        s.rss_by_process_end = tree_rss(self.server.proc.pid)  # type: ignore[union-attr]
        self.sample_rss(force=True)
        return s


def per_minute_rates(samples: list[tuple[float, float, int]]) -> list[float]:
    """Nonces/s in each full minute of the run (generation time only)."""
    buckets: dict[int, list[float]] = {}
    for t, seconds, checked in samples:
        b = buckets.setdefault(int(t // 60), [0.0, 0.0])
        b[0] += seconds
        b[1] += checked
    return [checked / secs for _, (secs, checked) in sorted(buckets.items()) if secs > 5]


def report(args: argparse.Namespace, s: Soak, startup: float) -> dict[str, Any]:
    rss = [v for _, v in s.rss]
    warm_at = args.warmup_seconds
    after_warm = [v for t, v in s.rss if t >= warm_at] or rss[-1:]
    warm = after_warm[0]
    end = rss[-1]
    growth = end - warm
    bound = max(args.rss_bound_pct / 100 * warm, args.rss_bound_mib * MIB)
    rss_ok = growth <= bound and max(after_warm) - warm <= bound
    # Trend over the second half of the run, MiB per minute (least squares).
    half = [(t, v) for t, v in s.rss if t >= s.rss[-1][0] / 2]
    slope = 0.0
    if len(half) >= 3:
        tm = statistics.fmean(t for t, _ in half)
        vm = statistics.fmean(v for _, v in half)
        den = sum((t - tm) ** 2 for t, _ in half)
        if den > 0:
            slope = sum((t - tm) * (v - vm) for t, v in half) / den * 60 / MIB
    minutes = per_minute_rates(s.rate_samples)
    passed = rss_ok and not s.errors
    return {
        "verdict": "PASS" if passed else "FAIL",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "cpus": psutil.cpu_count()},
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"
        },
        "server_startup_seconds": round(startup, 1),
        "duration_seconds": round(s.now(), 1),
        "rss": {
            "start_mib": round(rss[0] / MIB, 1),
            "after_warmup_mib": round(warm / MIB, 1),
            "end_mib": round(end / MIB, 1),
            "max_mib": round(max(rss) / MIB, 1),
            "growth_after_warmup_mib": round(growth / MIB, 1),
            "max_over_warmup_mib": round((max(after_warm) - warm) / MIB, 1),
            "bound_mib": round(bound / MIB, 1),
            "bound": f"growth after warm-up <= max({args.rss_bound_pct}% of warm RSS, "
            f"{args.rss_bound_mib} MiB)",
            "trend_second_half_mib_per_min": round(slope, 2),
            "ok": rss_ok,
            "samples": len(rss),
            "by_process_start_mib": {
                k: round(v / MIB, 1) for k, v in s.rss_by_process_start.items()
            },
            "by_process_end_mib": {k: round(v / MIB, 1) for k, v in s.rss_by_process_end.items()},
        },
        "errors": {"count": len(s.errors), "first": s.errors[:20]},
        "throughput_nonces_per_s": {
            "per_minute": [round(r, 1) for r in minutes],
            "min": round(min(minutes), 1) if minutes else None,
            "max": round(max(minutes), 1) if minutes else None,
            "mean": round(statistics.fmean(minutes), 1) if minutes else None,
            "cv_percent": round(100 * statistics.pstdev(minutes) / statistics.fmean(minutes), 1)
            if len(minutes) > 1
            else None,
            "per_round": [round(r, 1) for r in s.round_rates],
        },
        "callbacks_at_end": s.callback_stats,
        "counts": {
            k: getattr(s, k)
            for k in (
                "rounds",
                "nonces_checked",
                "nonces_valid",
                "validations",
                "validated_nonces",
                "fraud_checks",
                "calibrations",
                "completions",
                "status_polls",
                "callbacks_received",
            )
        },
    }


def print_table(r: dict[str, Any]) -> None:
    rss, thr, cnt = r["rss"], r["throughput_nonces_per_s"], r["counts"]
    rows = [
        (
            "duration",
            f"{r['duration_seconds']:.0f} s (server start {r['server_startup_seconds']} s)",
        ),
        (
            "RSS start / warm / end",
            f"{rss['start_mib']} / {rss['after_warmup_mib']} / {rss['end_mib']} MiB",
        ),
        ("RSS max", f"{rss['max_mib']} MiB"),
        (
            "RSS growth after warm-up",
            f"{rss['growth_after_warmup_mib']} MiB (max "
            f"{rss['max_over_warmup_mib']}; bound {rss['bound_mib']} MiB) -> "
            f"{'PASS' if rss['ok'] else 'FAIL'}",
        ),
        ("RSS trend (2nd half)", f"{rss['trend_second_half_mib_per_min']} MiB/min"),
        ("errors", f"{r['errors']['count']} -> {'PASS' if r['errors']['count'] == 0 else 'FAIL'}"),
        (
            "nonces/s per minute",
            f"min {thr['min']} / max {thr['max']} / mean {thr['mean']} "
            f"(cv {thr['cv_percent']}%, {len(thr['per_minute'])} minutes)",
        ),
    ]
    rows += [(k, str(v)) for k, v in cnt.items()]
    rows.append(("verdict", r["verdict"]))
    width = max(len(k) for k, _ in rows)
    print("\n" + "-" * (width + 50))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("-" * (width + 50))
    print(
        "RSS by process at the end: "
        + ", ".join(f"{k} {v} MiB" for k, v in rss["by_process_end_mib"].items())
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--round-seconds", type=float, default=45.0, help="generation per round")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--valid-rate", type=float, default=0.1, help="for /calibrate's r_target")
    p.add_argument("--calibration-samples", type=int, default=128)
    p.add_argument("--validate-samples", type=int, default=32)
    p.add_argument("--completions", type=int, default=3, help="per pause between rounds")
    p.add_argument("--poll-interval", type=float, default=1.0)
    p.add_argument("--rss-interval", type=float, default=5.0)
    p.add_argument("--warmup-seconds", type=float, default=90.0)
    p.add_argument("--rss-bound-pct", type=float, default=10.0)
    p.add_argument("--rss-bound-mib", type=float, default=200.0)
    p.add_argument("--http-timeout", type=float, default=120.0)
    p.add_argument("--model-dir", type=Path, default=REPO_ROOT / ".models" / "tiny-qwen3")
    p.add_argument("--log", type=Path, default=None, help="server log (default: a temp file)")
    p.add_argument("--json", type=Path, default=None, help="report (default: a temp file)")
    args = p.parse_args(argv)

    from vllm_poc.testing.tiny_model import make_tiny_model

    model = make_tiny_model(args.model_dir)
    tmp = Path(tempfile.mkdtemp(prefix="vllm-poc-soak-"))
    log = args.log or tmp / "server.log"
    out = args.json or tmp / "soak.json"
    server = LocalServer(model, log, poc_enabled=True)
    print(f"[soak] starting the server (log: {log})", flush=True)
    server.start()
    print(
        f"[soak] healthy after {server.startup_seconds:.1f} s; soaking {args.minutes} min",
        flush=True,
    )
    try:
        with CallbackReceiver() as receiver:
            soak = Driver(args, server, receiver).run()
    finally:
        server.stop()
    result = report(args, soak, server.startup_seconds or 0.0)
    result["server_log"] = str(log)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"[soak] report: {out}")
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
