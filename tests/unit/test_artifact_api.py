"""The artifact protocol's HTTP API on an in-process node (real routes, node, jobs and guards; a
fake engine): the bodies gonka's MLNode and DAPI send, verbatim, and every status it answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.fakes import FakeEngine, fake_artifact
from tests.unit.node import vllm_like_app
from vllm_poc.protocol import POW_PREFIX
from vllm_poc.server import protocols
from vllm_poc.server.artifact.node import ArtifactNode
from vllm_poc.server.artifact.stream import ArtifactStream
from vllm_poc.server.callbacks import Delivery
from vllm_poc.server.engine_rpc import EngineRPC
from vllm_poc.server.engines import Engines

MODEL = "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"
INIT = {  # what DAPI sends through MLNode (which adds group_id / n_groups)
    "block_hash": "9234F66FD723CBB537E6B1E21DCA303B562D31704E9D9C309F0C452A2B99A8DB",
    "block_height": 1200,
    "public_key": "02deac65dda7f42a12feb1a7d410628b5085dd27475bcef509ea6642b504984ec6",
    "node_id": 0,
    "node_count": 3,
    "params": {"model": MODEL, "seq_len": 1024},
    "url": "http://dapi.local:9100/v2/poc-batches",
}


class Sender:
    """Records what the node hands to the callback sender; with ``hold``, nothing finishes."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.deliveries: list[Delivery] = []
        self.hold = False

    def submit(self, url: str, payload: dict[str, Any]) -> Delivery:
        self.posts.append((url, payload))
        self.deliveries.append(Delivery(url, payload, finished=not self.hold))
        return self.deliveries[-1]


class Node:
    def __init__(self, client: TestClient, node: ArtifactNode, engine: FakeEngine) -> None:
        self.client, self.node, self.engine = client, node, engine
        self.sender: Sender = node.sender  # type: ignore[assignment]

    def post(self, path: str, body: Any = None) -> Any:
        return self.client.post(POW_PREFIX + path, json=body)

    def get(self, path: str) -> Any:
        return self.client.get(POW_PREFIX + path)

    def artifact_calls(self) -> list[list[int]]:
        return [list(w.nonces) for w in self.engine.work("artifacts")]


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    monkeypatch.setenv("VLLM_POC_PROTOCOL", "artifact")
    monkeypatch.setenv("VLLM_POC_CALLBACK_INTERVAL", "0")
    engine = FakeEngine(delay=0.001)
    app = vllm_like_app()
    protocols.attach(app)
    state = ArtifactNode(Engines([EngineRPC(engine)]), [MODEL, "/models/qwen"], Sender())  # type: ignore[arg-type]
    app.state.poc_manager = state
    with TestClient(app) as client:
        yield Node(client, state, engine)
        client.post(POW_PREFIX + "/stop", json={})


def _wait(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_idle_status(node: Node) -> None:
    assert node.get("/status").json() == {"status": "IDLE", "config": None, "stats": None}


def test_a_generation_round_from_dapis_body(node: Node) -> None:
    body = {**INIT, "group_id": 1, "n_groups": 2}
    r = node.post("/init/generate", body)
    assert r.status_code == 200 and r.json() == {
        "status": "OK",
        "pow_status": {"status": "GENERATING"},
    }
    status = _wait(
        lambda: (s := node.get("/status").json())["stats"]["total_processed"] >= 64 and s
    )
    assert status["status"] == "GENERATING"
    assert status["config"] == {
        "block_hash": INIT["block_hash"],
        "block_height": 1200,
        "public_key": INIT["public_key"],
        "node_id": 0,
        "node_count": 3,
        "group_id": 1,
        "n_groups": 2,
        "seq_len": 1024,
        "k_dim": 12,
    }
    assert node.client.post("/v1/completions").status_code == 503
    again = node.post("/init/generate", body)
    assert again.status_code == 409 and again.json()["detail"] == "Already generating"
    assert node.post("/stop", {}).json() == {"status": "OK", "pow_status": {"status": "STOPPED"}}
    assert node.get("/status").json()["status"] == "IDLE"
    assert node.client.post("/v1/completions").status_code == 200
    # Striding: offset node_id + group_id * node_count = 3, stride n_groups * node_count = 6.
    first = node.artifact_calls()[0]
    assert first == [3 + 6 * x for x in range(32)]
    posted = [a["nonce"] for _, p in node.sender.posts for a in p["artifacts"]]
    assert posted and len(posted) == len(set(posted)), "every artifact posted exactly once"
    assert all(n % 6 == 3 for n in posted)
    url, payload = node.sender.posts[0]
    assert url == INIT["url"] + "/generated"
    assert set(payload) == {
        "public_key",
        "block_hash",
        "block_height",
        "node_id",
        "artifacts",
        "encoding",
    }
    assert payload["encoding"] == {"dtype": "f16", "k_dim": 12, "endian": "le"}
    assert payload["artifacts"][0] == {"nonce": 3, "vector_b64": fake_artifact(3)}


def test_params_of_another_model_answer_409_with_both_sides(node: Node) -> None:
    r = node.post("/init/generate", {**INIT, "params": {"model": "other", "seq_len": 256}})
    assert r.status_code == 409
    assert r.json()["detail"] == {
        "error": "params mismatch",
        "requested": {"model": "other", "seq_len": 256, "k_dim": 12},
        "deployed": {"model": [MODEL, "/models/qwen"], "seq_len": None, "k_dim": None},
    }
    assert node.get("/status").json()["status"] == "IDLE"


@pytest.mark.parametrize(
    "body",
    [
        {**INIT, "params": {**INIT["params"], "extra": 1}},
        {k: v for k, v in INIT.items() if k != "public_key"},
        {**INIT, "node_id": "zero"},
        {**INIT, "params": {"model": MODEL}},
    ],
    ids=["unknown params key", "missing key", "wrong type", "no seq_len"],
)
def test_malformed_bodies_answer_422_and_change_nothing(node: Node, body: dict) -> None:
    assert node.post("/init/generate", body).status_code == 422
    assert node.get("/status").json()["status"] == "IDLE"


def _generate(**extra: Any) -> dict[str, Any]:
    return {
        "block_hash": INIT["block_hash"],
        "block_height": 1200,
        "public_key": INIT["public_key"],
        "node_id": 0,
        "node_count": 3,
        "nonces": [5, 1, 9, 2],
        "params": {"model": MODEL, "seq_len": 1024},
        "batch_size": 2,
        **extra,
    }


def test_generate_inline(node: Node) -> None:
    r = node.post("/generate", _generate(wait=True, unknown_top_level_key=1))
    body = r.json()
    assert r.status_code == 200 and body["status"] == "completed"
    assert body["artifacts"] == [{"nonce": n, "vector_b64": fake_artifact(n)} for n in [5, 1, 9, 2]]
    assert body["encoding"] == {"dtype": "f16", "k_dim": 12, "endian": "le"}
    assert node.artifact_calls() == [[5, 1], [9, 2]]


def test_a_validators_job_with_dapis_body(node: Node) -> None:
    """§12.2's body: queued, polled to completion, verdict posted to /validated."""
    received = [{"nonce": n, "vector_b64": fake_artifact(n)} for n in [5, 1, 9]]
    received.append({"nonce": 2, "vector_b64": fake_artifact(3)})  # another nonce's artifact
    body = _generate(
        url="http://dapi.local:9100/v2/poc-batches",
        validation={"artifacts": received},
        stat_test={"dist_threshold": 0.2, "p_mismatch": 0.1, "p_value_threshold": 0.05},
    )
    queued = node.post("/generate", body).json()
    assert queued["status"] == "queued" and queued["queued_count"] == 4
    done = _wait(
        lambda: (
            (j := node.get(f"/generate/{queued['request_id']}").json())["status"] == "completed"
            and j
        )
    )
    assert done["n_total"] == 4 and done["n_mismatch"] == 1 and done["mismatch_nonces"] == [2]
    assert done["fraud_detected"] is False and 0 < done["p_value"] < 1
    url, payload = _wait(lambda: node.sender.posts and node.sender.posts[-1])
    assert url.endswith("/v2/poc-batches/validated")
    assert payload["request_id"] == queued["request_id"] and payload["n_mismatch"] == 1


def test_generate_bad_input(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    other = node.post("/generate", _generate(validation={"artifacts": []}))
    assert other.status_code == 400
    assert other.json()["detail"] == "validation.artifacts nonces must match nonces field"
    assert node.get("/generate/unknown").status_code == 404
    monkeypatch.setenv("VLLM_POC_MAX_QUEUED_NONCES", "3")
    full = node.post("/generate", _generate())
    assert full.status_code == 429 and "Queue full" in full.json()["detail"]
    assert node.node.jobs.records == {}
    wrong = node.post("/generate", _generate(params={"model": "x", "seq_len": 8}))
    assert wrong.status_code == 409


@pytest.mark.parametrize(
    ("nonce", "vector"),
    [(5, "not base64"), (1, fake_artifact(1)[:8])],
    ids=["not base64", "too short"],
)
def test_an_undecodable_received_artifact_is_refused_before_any_work(
    node: Node, nonce: int, vector: str
) -> None:
    """The reference node fails such a job and posts no verdict: here it never starts."""
    received = [
        {"nonce": nonce, "vector_b64": vector},
        {"nonce": 2, "vector_b64": fake_artifact(2)},
    ]
    body = _generate(wait=True, nonces=[nonce, 2], validation={"artifacts": received})
    r = node.post("/generate", body)
    assert r.status_code == 400, r.text
    assert (
        f"nonce {nonce}" in r.json()["detail"] and f"nonce {nonce}" in r.json()["error"]["message"]
    )
    assert node.artifact_calls() == [] and node.sender.posts == []


def test_non_finite_received_halves_mismatch_and_empty_ones_are_skipped(node: Node) -> None:
    received = [
        {"nonce": 5, "vector_b64": ""},  # skipped: neither computed nor counted
        {"nonce": 9, "vector_b64": "AP4A/gD+AP4A/gD+AP4A/gD+AP4A/gD+"},  # NaN halves
        {"nonce": 2, "vector_b64": fake_artifact(2)},
    ]
    body = _generate(wait=True, nonces=[5, 9, 2], validation={"artifacts": received})
    r = node.post("/generate", body)
    assert r.status_code == 200, r.text
    assert r.json()["mismatch_nonces"] == [9] and r.json()["n_total"] == 2
    assert sorted(n for call in node.artifact_calls() for n in call) == [2, 9]


@pytest.mark.parametrize("wait", [True, False])
def test_no_nonces_is_a_200_with_nothing_computed(node: Node, wait: bool) -> None:
    validation = {"artifacts": []}
    for extra in ({}, {"validation": validation}):
        r = node.post("/generate", _generate(wait=wait, nonces=[], **extra))
        assert r.status_code == 200, r.text
        if not wait:
            assert r.json()["queued_count"] == 0
            r = node.get(f"/generate/{r.json()['request_id']}")
            assert r.status_code == 200 and r.json()["status"] == "completed"
        result = r.json()
        assert result.get("artifacts", []) == [] and result.get("n_total", 0) == 0
    assert node.artifact_calls() == [] and node.node.jobs.queued_nonces == 0


def test_non_finite_batches_are_rejected_whole_then_stop_the_round(node: Node) -> None:
    node.engine.nonfinite = set(range(10_000))
    node.post("/init/generate", INIT)
    final = _wait(lambda: (s := node.get("/status").json())["status"] == "IDLE" and s)
    assert "3 batches in a row rejected as non-finite" in final["error"]
    assert node.sender.posts == []


def test_the_operator_can_make_the_process_exit_instead(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Exited(Exception):
        pass

    def exit_(status: int) -> None:
        raise Exited(status)

    monkeypatch.setenv("VLLM_POC_EXIT_ON_BAD_BATCHES", "1")
    monkeypatch.setattr("vllm_poc.server.bad_batches.os._exit", exit_)
    node.engine.nonfinite = {1}
    for _ in range(2):
        r = node.post("/generate", _generate(wait=True, nonces=[1], batch_size=1))
        assert r.status_code == 200 and r.json()["artifacts"] == []
    with pytest.raises(Exited, match="1"):
        node.post("/generate", _generate(wait=True, nonces=[1], batch_size=1))


def test_without_the_exit_setting_a_generate_answers_503(node: Node) -> None:
    node.engine.nonfinite = {1}
    answers = [
        node.post("/generate", _generate(wait=True, nonces=[1], batch_size=1)) for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 503]
    assert "batches in a row rejected" in answers[-1].json()["detail"]


def test_instances_of_a_participant_never_share_a_nonce() -> None:
    from vllm_poc.protocol.artifact.wire import InitGenerate

    seen: set[int] = set()
    for node_id in range(3):
        for group_id in range(2):
            body = InitGenerate(**{**INIT, "node_id": node_id, "group_id": group_id, "n_groups": 2})
            mine = {body.nonce(x) for x in range(100)}
            assert not mine & seen
            seen |= mine
    assert seen == set(range(600))


def _counter(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_two_engines_compute_distinct_nonces_of_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Data parallelism: each engine takes the round's next chunk of ``batch_size`` nonces as it
    frees up (one call queued behind the running one, naming the chunk after it), so the engines
    compute disjoint chunks at the same time; the per-engine series count each engine's share."""
    monkeypatch.setenv("VLLM_POC_PROTOCOL", "artifact")
    engines = [FakeEngine(delay=0.001), FakeEngine(delay=0.001)]
    checked = "vllm_poc_nonces_checked_total"
    before = [_counter(checked, dp_rank=str(r)) for r in (0, 1)]
    validated_before = _counter("vllm_poc_validated_nonces_total")
    app = vllm_like_app()
    protocols.attach(app)
    rpcs = [EngineRPC(e, r) for r, e in enumerate(engines)]  # type: ignore[arg-type]
    node = ArtifactNode(Engines(rpcs), [MODEL], Sender())  # type: ignore[arg-type]
    app.state.poc_manager = node
    with TestClient(app) as client:
        assert client.post(POW_PREFIX + "/init/generate", json=INIT).status_code == 200
        _wait(lambda: client.get(POW_PREFIX + "/status").json()["stats"]["total_processed"] >= 128)
        client.post(POW_PREFIX + "/stop", json={})
        validation = {"artifacts": [{"nonce": 0, "vector_b64": fake_artifact(0)}]}
        r = client.post(
            POW_PREFIX + "/generate",
            json=_generate(wait=True, nonces=[0], validation=validation),
        )
        assert r.status_code == 200 and r.json()["n_mismatch"] == 0
    units = [e.work("artifacts") for e in engines]
    calls = [[list(w.nonces) for w in mine] for mine in units]
    # Node 0 of 3: chunks of 32 consecutive positions x, nonces 3x; engine 0 starts with the
    # first, each engine's call names its next chunk.
    assert calls[0][0] == [3 * x for x in range(32)]
    for mine in units:
        assert all(len(w.nonces) == 32 and w.nonces[1] - w.nonces[0] == 3 for w in mine[:-1])
        computed = {w.nonces for w in mine}
        # A call names the engine's own next chunk (absent only if /stop came first).
        assert all(w.next_nonces in computed for w in mine[:-3]), mine
    assert calls[0][-1] == [0], "one nonce to validate: one chunk, on the first engine"
    nonces = [n for c in calls[0][:-1] + calls[1] for n in c]
    assert len(nonces) == len(set(nonces)), "no nonce computed twice in the round"
    after = [_counter(checked, dp_rank=str(r)) for r in (0, 1)]
    assert after[0] - before[0] >= 64 and after[1] - before[1] >= 64
    assert _counter("vllm_poc_validated_nonces_total") - validated_before == 1


def _posted(sender: Sender) -> list[list[int]]:
    return [[a["nonce"] for a in p["artifacts"]] for _, p in sender.posts]


def test_one_stream_post_at_a_time_the_rest_waits_for_the_next(node: Node) -> None:
    """While a post is still being delivered, new artifacts wait and go out together next."""
    node.sender.hold = True
    assert node.post("/init/generate", INIT).status_code == 200
    _wait(lambda: node.sender.posts)
    _wait(lambda: node.get("/status").json()["stats"]["total_processed"] >= 256)
    assert len(node.sender.posts) == 1, "a second post while the first is unfinished"
    node.sender.deliveries[0].finished = True
    _wait(lambda: len(node.sender.posts) >= 2)
    node.post("/stop", {})
    posted = _posted(node.sender)
    nonces = [n for p in posted for n in p]
    assert len(posted[1]) >= 256 - len(posted[0]), "the second post carries the backlog"
    assert nonces == [3 * x for x in range(len(nonces))], "every artifact once, in order"


def test_a_full_stream_buffer_drops_the_oldest_and_counts_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vllm_poc.protocol.artifact.wire import InitGenerate

    monkeypatch.setenv("VLLM_POC_CALLBACK_MAX_ARTIFACTS", "40")
    sender = Sender()
    stream = ArtifactStream(sender, InitGenerate(**INIT))  # type: ignore[arg-type]
    before = _counter("vllm_poc_artifacts_dropped_total")
    for start in range(0, 100, 25):
        stream.add([{"nonce": n, "vector_b64": fake_artifact(n)} for n in range(start, start + 25)])
    stream.flush()
    stream.flush()  # nothing left: no empty post
    assert _posted(sender) == [list(range(60, 100))]
    assert stream.dropped == 60
    assert _counter("vllm_poc_artifacts_dropped_total") - before == 60
