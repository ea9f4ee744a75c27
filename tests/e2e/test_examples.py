"""The operator examples (``examples/``) and ``python -m vllm_poc.demo`` against a real node.

Every test drives the session's PoC server through the scripts' own ``main`` functions, with
short rounds (seq_len 16, batch 4), and leaves the node stopped.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from vllm_poc import demo
from vllm_poc.client import (
    PoCClient,
    RoundParams,
    batch_from_status,
    forge_batch,
    load_batch,
    sample_batch,
    save_batch,
)
from vllm_poc.protocol.distance.batches import ProofBatch
from vllm_poc.testing.ports import free_port
from vllm_poc.testing.server import LocalServer

from .helpers import stop_round

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEQ_LEN, BATCH = 16, 4
R_TARGET = 1.41
"""About half of the tiny model's nonces are below it at seq_len 16."""
SHORT = ["--seq-len", str(SEQ_LEN), "--batch-size", str(BATCH)]


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (the folder is scripts, not a package)."""
    module_name = f"poc_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def node(poc_server: LocalServer) -> Iterator[str]:
    """The PoC server's URL; stops any round afterwards and checks the server survived."""
    yield poc_server.base_url
    alive = poc_server.alive()
    if alive:
        stop_round(poc_server)
    assert alive, f"the vLLM server died during the test; log tail:\n{poc_server.log_tail()}"


def params(block: str, key: str = "prover", **overrides: object) -> RoundParams:
    p = RoundParams(
        block_hash=block,
        block_height=7,
        public_key=key,
        r_target=R_TARGET,
        batch_size=BATCH,
        seq_len=SEQ_LEN,
    )
    for name, value in overrides.items():
        setattr(p, name, value)
    return p


def generate_batch(url: str, block: str, key: str = "prover", at_least: int = 48) -> ProofBatch:
    """Generate until ``at_least`` nonces are checked, stop, return the node's ProofBatch."""
    with PoCClient(url) as c:
        c.init_generate(params(block, key))
        deadline = time.monotonic() + 60
        while c.progress().total_checked < at_least:
            assert time.monotonic() < deadline, "generation too slow"
            time.sleep(0.1)
        c.stop()
        status = c.status()
    batch = batch_from_status(status, block_hash=block, public_key=key, node_id=0)
    assert 0 < len(batch) < status["total_checked"], "R_TARGET should split the nonces"
    return batch


def forged_batch(url: str, block: str, key: str = "prover", n: int = 48) -> ProofBatch:
    """Nonces that are NOT valid (recomputed on the node), claimed just below R_TARGET."""
    with PoCClient(url) as c:
        c.init_validate(params(block, "probe", r_target=2.0))
        probe = ProofBatch(key, block, 7, list(range(n)), [0.0] * n, 0)
        verdict = c.validate(probe)
        c.stop()
    invalid = [
        nonce for nonce, d in zip(verdict.nonces, verdict.distances, strict=True) if d > R_TARGET
    ]
    assert len(invalid) >= 5, verdict.distances
    return forge_batch(probe, invalid, R_TARGET - 0.01)


def node_state(url: str) -> str:
    with PoCClient(url) as c:
        return c.status()["state"]


def test_sampling_and_forging_helpers(tmp_path: Path) -> None:
    """No server needed: the sample is seeded, ordered, and the whole batch when it is small."""
    batch = ProofBatch("k", "b", 1, list(range(0, 1000, 2)), [1.0 + i / 1e4 for i in range(500)], 0)
    a, b = sample_batch(batch, 50, seed=3), sample_batch(batch, 50, seed=3)
    assert a == b and len(a) == 50 and a.nonces == sorted(a.nonces)
    assert all(
        batch.dist[batch.nonces.index(n)] == d for n, d in zip(a.nonces, a.dist, strict=True)
    )
    assert sample_batch(batch, 50, seed=4) != a
    assert sample_batch(batch, 500) == batch and sample_batch(batch, 10_000) == batch
    forged = forge_batch(batch, [1, 3], 1.2)
    assert (forged.nonces, forged.dist) == ([1, 3], [1.2, 1.2])
    assert load_batch(save_batch(forged, tmp_path / "f.json")) == forged
    forged = demo.forge(a, checked=200, r_target=1.4, share=0.25, seed=0)
    fake = sorted(set(forged.nonces) - set(a.nonces))
    assert len(fake) == round(len(a) / 3) and all(n < 200 and n not in a.nonces for n in fake)
    assert forged.nonces == sorted(forged.nonces)


# ---------------------------------------------------------------------- round_driver.py


def test_round_driver_generates_validates_and_stops(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    driver = load_example("round_driver")
    saved = tmp_path / "batch.json"
    argv = ["--url", node, "--seconds", "1.5", "--r-target", str(R_TARGET), "--block-height", "3"]
    assert driver.main([*argv, *SHORT, "--save-batch", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "GENERATING" in out and "nonces checked" in out, out
    assert "honest" in out, out
    batch = load_batch(saved)
    assert len(batch) > 0
    assert (batch.block_hash, batch.block_height, batch.public_key) == (
        "example-block",
        3,
        "example-node",
    )
    assert all(d < R_TARGET for d in batch.dist)
    assert node_state(node) == "STOPPED"


def test_round_driver_flags_another_nodes_forged_batch(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    driver = load_example("round_driver")
    block = "driver-forged-block"
    theirs = save_batch(forged_batch(node, block, key="cheater"), tmp_path / "theirs.json")
    argv = ["--url", node, "--seconds", "1", "--block-hash", block, "--r-target", str(R_TARGET)]
    argv += [*SHORT, "--batch-file", str(theirs), "--validate-via", "init"]
    assert driver.main(argv) == 1
    out = capsys.readouterr().out
    assert "FRAUD" in out and "'cheater'" in out, out
    assert node_state(node) == "STOPPED"


def test_round_driver_reports_node_errors(node: str, capsys: pytest.CaptureFixture[str]) -> None:
    driver = load_example("round_driver")
    assert driver.main(["--url", node, "--seconds", "1", "--seq-len", "100000"]) == 2
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------------- callback_receiver.py


def test_callback_receiver_stores_and_lists_batches(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    receiver = load_example("callback_receiver")
    out = tmp_path / "callbacks.jsonl"
    batch = {"public_key": "k", "block_hash": "b", "block_height": 1, "nonces": [1], "dist": [1.0]}
    with TestClient(receiver.create_app(out)) as c:
        assert c.post("/generated", json=batch).json() == {"ok": True, "seq": 0}
        assert c.post("/validated", json={**batch, "fraud_detected": False}).status_code == 200
        assert c.post("/generated", json={"no": "nonces"}).status_code == 400
        assert c.post("/generated", content=b"not json").status_code == 400
        assert [r["kind"] for r in c.get("/batches").json()] == ["generated", "validated"]
        assert [r["batch"] for r in c.get("/batches", params={"kind": "generated"}).json()] == [
            batch
        ]
        assert c.get("/batches", params={"kind": "other"}).status_code == 422
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["kind"] for r in lines] == ["generated", "validated"]
        assert c.delete("/batches").status_code == 200
        assert c.get("/batches").json() == []
        # A retried post (same Idempotency-Key) is kept and marked as a repeat.
        for _ in range(2):
            c.post("/generated", json=batch, headers={"Idempotency-Key": "k1"})
        c.post("/generated", json=batch, headers={"Idempotency-Key": "k2"})
        records = c.get("/batches").json()
        assert [(r["idempotency_key"], r["repeat"]) for r in records] == [
            ("k1", False),
            ("k1", True),
            ("k2", False),
        ]


@pytest.fixture
def receiver_url(tmp_path: Path) -> Iterator[str]:
    """examples/callback_receiver.py served by a real uvicorn in a thread."""
    import uvicorn

    receiver = load_example("callback_receiver")
    app = receiver.create_app(tmp_path / "callbacks.jsonl")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "receiver did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_callback_receiver_gets_the_nodes_callbacks(node: str, receiver_url: str) -> None:
    driver = load_example("round_driver")
    block = "receiver-block"
    argv = ["--url", node, "--seconds", "1", "--block-hash", block, "--r-target", str(R_TARGET)]
    assert driver.main([*argv, *SHORT, "--callback-url", receiver_url, "--sample", "20"]) == 0

    def batches(kind: str) -> list[dict]:
        return httpx.get(f"{receiver_url}/batches", params={"kind": kind}).json()

    deadline = time.monotonic() + 30
    while not (batches("generated") and batches("validated")):
        assert time.monotonic() < deadline, "callbacks did not arrive"
        time.sleep(0.2)
    for record in batches("generated"):
        assert len(record["idempotency_key"]) == 32
        assert record["batch"]["block_hash"] == block
        assert all(d < R_TARGET for d in record["batch"]["dist"])
    verdict = batches("validated")[0]["batch"]
    assert len(verdict["nonces"]) == 20
    assert verdict["fraud_detected"] is False


# ---------------------------------------------------------------------- validator.py


def test_validator_exit_codes_honest_forged_and_error(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    validator = load_example("validator")
    block = "validator-block"
    honest = generate_batch(node, block)
    common = ["--node", node, "--r-target", str(R_TARGET), *SHORT, "--sample", "30"]

    # Straight from the prover's /status (before anything re-initialises that node).
    from_node = ["--from-node", node, "--block-hash", block, "--prover-key", "prover"]
    assert validator.main([*common, *from_node]) == 0
    assert "honest" in capsys.readouterr().out

    honest_file = save_batch(honest, tmp_path / "honest.json")
    assert validator.main([*common, "--batch-file", str(honest_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_invalid"] == 0 and report["sampled"] == min(30, len(honest))

    forged_file = save_batch(forged_batch(node, block), tmp_path / "forged.json")
    assert validator.main([*common, "--batch-file", str(forged_file)]) == 1
    assert "FRAUD" in capsys.readouterr().out
    assert node_state(node) == "STOPPED"

    # A validator with another seq_len: the batch states its own, so the node refuses (409)
    # instead of judging; a batch that states nothing (an older node's) reads as forged.
    wrong = ["--node", node, "--r-target", str(R_TARGET), "--seq-len", "24"]
    assert validator.main([*wrong, "--batch-file", str(honest_file)]) == 2
    assert "409" in capsys.readouterr().err
    unstated = save_batch(replace(honest, seq_len=None), tmp_path / "unstated.json")
    assert validator.main([*wrong, "--batch-file", str(unstated)]) == 1
    capsys.readouterr()

    # Errors: with --no-init the node's round (this block) refuses a batch of another block.
    elsewhere = ProofBatch("prover", "another-block", 7, honest.nonces, honest.dist, 0)
    elsewhere_file = save_batch(elsewhere, tmp_path / "elsewhere.json")
    assert validator.main([*common, "--batch-file", str(elsewhere_file), "--no-init"]) == 2
    assert "error:" in capsys.readouterr().err
    assert validator.main([*common, "--batch-file", str(tmp_path / "missing.json")]) == 2


# ---------------------------------------------------------------------- vllm_poc.demo


def test_demo_against_a_running_node(node: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--url", node, "--seconds", "1.5", *SHORT, "--calibration", "64"]) == 0
    out = capsys.readouterr().out
    assert "PoC round summary" in out, out
    assert "-> honest" in out and "-> FRAUD" in out, out
    assert node_state(node) == "STOPPED"
