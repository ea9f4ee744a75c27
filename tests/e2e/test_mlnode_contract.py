"""gonka's MLNode and DAPI against a real artifact-protocol server, every call shaped exactly as
they send it (docs/mlnode.md): a round as node 0 of 2 in group 1 of 3 with ``/status`` polled
every 2 s with a 2 s timeout, ``/stop`` with ``{}`` and with no body, queued ``/generate`` jobs
with and without validation, ``/versions``; every callback decoded strictly against the fields
of DAPI's structs (a field more or less fails). Twice: on a server as operators start it, and on
one whose OpenAI API is protected by ``VLLM_API_KEY`` (MLNode sends no key to the PoC routes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from vllm_poc.protocol.artifact import math as artifact
from vllm_poc.testing.receiver import CallbackReceiver
from vllm_poc.testing.server import LocalServer

from .helpers import POW, ok, wait_until
from .servers import Config, Servers
from .test_artifact_api import ARTIFACT

pytestmark = pytest.mark.e2e

OPENAI_KEY = "secret"
KEYED = Config.of(env={**dict(ARTIFACT.env), "VLLM_API_KEY": OPENAI_KEY})
"""The artifact server with vLLM's OpenAI API behind ``VLLM_API_KEY``."""
SEQ_LEN = 16
GENERATED = {"block_hash", "block_height", "public_key", "node_id", "artifacts", "encoding"}
"""DAPI's ``/generated`` struct (``request_id`` besides, for a ``/generate`` job's post)."""
VALIDATED = {
    "request_id",
    "block_hash",
    "block_height",
    "public_key",
    "node_id",
    "n_total",
    "n_mismatch",
    "mismatch_nonces",
    "p_value",
    "fraud_detected",
}
ENCODING = {"dtype": "f16", "k_dim": 12, "endian": "le"}
MODEL_PATH = "Qwen%252FQwen3-0.6B"
"""MLNode's relay url ends in the model name percent-encoded twice: kept byte for byte."""


@pytest.fixture(scope="module", params=["open", "openai-key"])
def node(request: pytest.FixtureRequest, servers: Servers) -> Iterator[LocalServer]:
    config = ARTIFACT if request.param == "open" else KEYED
    with servers.shared(f"mlnode-{request.param}", config) as server:
        yield server


@pytest.fixture(scope="module")
def mlnode(node: LocalServer) -> Iterator[httpx.Client]:
    """MLNode's client of a backend: no Authorization header."""
    with httpx.Client(base_url=node.base_url + POW, timeout=60.0) as c:
        yield c


def _strict(body: dict[str, Any], fields: set[str], optional: set[str] = frozenset()) -> None:
    assert fields <= set(body) <= fields | optional, sorted(set(body) ^ fields)


def _decoded_artifacts(body: dict[str, Any]) -> dict[int, str]:
    assert body["encoding"] == ENCODING
    for item in body["artifacts"]:
        assert set(item) == {"nonce", "vector_b64"} and -(2**31) <= item["nonce"] < 2**31
        assert artifact.decode(item["vector_b64"]) is not None
    return {item["nonce"]: item["vector_b64"] for item in body["artifacts"]}


def _round_body(node: LocalServer, url: str) -> dict[str, Any]:
    return {
        "block_hash": "mlnode-block",
        "block_height": 4242,
        "public_key": "02" + "cd" * 32,
        "node_id": 0,
        "node_count": 2,
        "batch_size": 32,
        "params": {"model": str(node.model_dir), "seq_len": SEQ_LEN, "k_dim": 12},
        "url": url,
        "poc_stronger_rng": False,
        "group_id": 1,
        "n_groups": 3,
    }


class _StatusPoller:
    """MLNode's health loop: ``GET /status`` every 2 s with a 2 s timeout."""

    def __init__(self, base_url: str) -> None:
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url,), daemon=True)
        self._thread.start()

    def _run(self, base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=2.0) as c:
            while not self._stop.is_set():
                try:
                    self.answers.append(ok(c.get("/status"))["status"])
                except (httpx.HTTPError, AssertionError) as e:
                    self.failures.append(repr(e))
                self._stop.wait(2.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def round_posts(node: LocalServer, mlnode: httpx.Client) -> dict[str, Any]:
    """A generation round driven as MLNode drives it; what the receiver got, strictly decoded."""
    with CallbackReceiver() as receiver:
        url = f"{receiver.url}/relay/{MODEL_PATH}"
        poller = _StatusPoller(str(mlnode.base_url))
        try:
            started = ok(mlnode.post("/init/generate", json=_round_body(node, url)))
            assert started["status"] == "OK"
            path = f"/relay/{MODEL_PATH}/generated"
            wait_until(
                lambda: sum(len(b["artifacts"]) for b in receiver.bodies(path)) >= 96,
                120,
                "96 artifacts at MLNode's relay",
            )
            # The round may reach 96 artifacts before the poller's first answer on a fast
            # machine: the round goes on until /stop, so wait for a poll that saw it.
            wait_until(
                lambda: "GENERATING" in poller.answers or poller.failures,
                30,
                "a /status poll during the round",
            )
        finally:
            poller.stop()
        stopped = [mlnode.post("/stop", json={}), mlnode.post("/stop")]
        bodies = receiver.unique_bodies(path)
        paths = {r.path for r in receiver.records()}
    return {"bodies": bodies, "paths": paths, "poller": poller, "stopped": stopped}


def test_versions_say_what_mlnode_reads(mlnode: httpx.Client) -> None:
    versions = ok(mlnode.get("/versions"))
    assert isinstance(versions["vllm_version"], str) and versions["vllm_version"]
    assert versions["poc_validation_inference"] is True
    assert versions["protocol"] == "artifact"


def test_a_round_as_mlnode_drives_it(round_posts: dict[str, Any]) -> None:
    assert all(r.status_code == 200 for r in round_posts["stopped"]), round_posts["stopped"]
    poller = round_posts["poller"]
    assert not poller.failures and set(poller.answers) <= {"GENERATING", "IDLE"}
    assert "GENERATING" in poller.answers
    assert round_posts["paths"] == {f"/relay/{MODEL_PATH}/generated"}, "the url byte for byte"
    nonces: list[int] = []
    for body in round_posts["bodies"]:
        _strict(body, GENERATED)
        assert body["node_id"] == 0 and body["block_height"] == 4242
        nonces += list(_decoded_artifacts(body))
    assert len(nonces) == len(set(nonces)) >= 96
    # node 0 of 2, group 1 of 3: nonces 2 + 6 k
    assert all(n % 6 == 2 for n in nonces), sorted(nonces)[:10]


def _job(mlnode: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """A queued ``/generate`` as DAPI makes it through MLNode, polled until it is done."""
    queued = ok(mlnode.post("/generate", json=body))
    assert queued["status"] == "queued", queued
    return wait_until(
        lambda: (
            (r := ok(mlnode.get(f"/generate/{queued['request_id']}")))["status"]
            in ("completed", "failed")
            and r
        ),
        120,
        "the queued job",
    )


def test_queued_jobs_and_their_callbacks(
    node: LocalServer, mlnode: httpx.Client, round_posts: dict[str, Any]
) -> None:
    generated = {}
    for body in round_posts["bodies"]:
        generated |= _decoded_artifacts(body)
    nonces = sorted(generated)[:8]
    received = {n: generated[n] for n in nonces}
    forged = nonces[:2]
    for n in forged:
        values = artifact.decode(received[n])
        received[n] = artifact.encode(-torch.tensor(values.tolist()))  # L2 2 away
    round_fields = {
        k: v for k, v in _round_body(node, "").items() if k not in ("url", "group_id", "n_groups")
    }
    with CallbackReceiver() as receiver:
        url = f"{receiver.url}/relay/{MODEL_PATH}"
        validation = {
            **round_fields,
            "url": url,
            "nonces": nonces,
            "wait": False,
            "validation": {"artifacts": [{"nonce": n, "vector_b64": received[n]} for n in nonces]},
            "stat_test": {"dist_threshold": 0.2, "p_mismatch": 0.1, "fraud_threshold": 0.01},
        }
        verdict = _job(mlnode, validation)
        assert verdict["status"] == "completed", verdict
        assert verdict["n_total"] == len(nonces) and verdict["mismatch_nonces"] == forged
        plain = _job(mlnode, {**round_fields, "url": url, "nonces": nonces[:3], "wait": False})
        assert [a["nonce"] for a in plain["artifacts"]] == nonces[:3]
        posted = receiver.wait_for(f"/relay/{MODEL_PATH}/validated")[0].body
        again = receiver.wait_for(f"/relay/{MODEL_PATH}/generated")[0].body
    _strict(posted, VALIDATED)
    assert posted["mismatch_nonces"] == forged and posted["n_total"] == len(nonces)
    _strict(again, GENERATED, optional={"request_id"})
    assert again["request_id"] == plain["request_id"]
    assert _decoded_artifacts(again) == {n: generated[n] for n in nonces[:3]}


def test_the_openai_key_guards_only_vllms_routes(node: LocalServer, mlnode: httpx.Client) -> None:
    keyed = node.extra_env.get("VLLM_API_KEY") == OPENAI_KEY
    models = httpx.get(f"{node.base_url}/v1/models", timeout=30)
    assert models.status_code == (401 if keyed else 200), models.text
    if keyed:
        headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
        assert httpx.get(f"{node.base_url}/v1/models", headers=headers).status_code == 200
    assert mlnode.get("/status").status_code == 200
    assert ok(mlnode.get("/versions"))["auth"] == {"api_key": False, "allowed_clients": []}
