"""``PoCClient`` against an in-process node (``httpx.MockTransport``)."""

from __future__ import annotations

import httpx
import pytest

from vllm_poc.client import PoCClient, PoCError, RoundParams

STATUS = {"status": "OK", "pow_status": {"state": "GENERATING"}}


class DroppingNode:
    """Closes the connection without an answer on the first ``drops`` requests, then answers."""

    def __init__(self, drops: int = 1) -> None:
        self.drops = drops
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if len(self.requests) <= self.drops:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json=STATUS)


def client(node: DroppingNode) -> PoCClient:
    return PoCClient("http://node.test", api_key="", transport=httpx.MockTransport(node))


@pytest.mark.parametrize(
    ("call", "path"),
    [(lambda c: c.status(), "/api/v1/pow/status"), (lambda c: c.stop(), "/api/v1/pow/stop")],
)
def test_a_call_that_is_safe_to_repeat_is_sent_again_once(call, path):
    node = DroppingNode(drops=1)
    with client(node) as c:
        assert call(c) == STATUS
    assert [p for _, p in node.requests] == [path, path]


def test_a_second_disconnect_is_raised():
    node = DroppingNode(drops=2)
    with client(node) as c, pytest.raises(httpx.RemoteProtocolError):
        c.status()
    assert len(node.requests) == 2


def test_a_call_that_changes_the_node_is_never_repeated():
    # The first /init/generate may have started the round: sending it again could fail or
    # start a second one, so the caller decides.
    node = DroppingNode(drops=1)
    params = RoundParams(block_hash="b", block_height=1, public_key="k", r_target=1.0)
    with client(node) as c, pytest.raises(httpx.RemoteProtocolError):
        c.init_generate(params)
    assert node.requests == [("POST", "/api/v1/pow/init/generate")]


def test_http_errors_are_poc_errors_with_the_detail():
    def node(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"detail": "already generating"})

    transport = httpx.MockTransport(node)
    with (
        PoCClient("http://node.test", api_key="", transport=transport) as c,
        pytest.raises(PoCError, match="already generating") as error,
    ):
        c.status()
    assert error.value.status_code == 409


def test_the_client_wraps_every_endpoint():
    from vllm_poc import ProofBatch
    from vllm_poc.protocol.distance.round import CalibrationRequest

    seen: list[tuple[str, str]] = []

    def node(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path.removeprefix("/api/v1/pow")))
        if (
            request.url.path.endswith("/validate")
            and request.method == "POST"
            and (b"nonces" in request.content)
        ):
            verdict = {"nonces": [1], "distances": [None], "valid": [False], "mismatch": [True]}
            return httpx.Response(
                200,
                json={**verdict, "n_invalid": 1, "probability_honest": 0.0, "fraud_detected": True},
            )
        return httpx.Response(200, json=STATUS)

    params = RoundParams(block_hash="b", block_height=1, public_key="k", r_target=1.0)
    batch = ProofBatch("k", "b", 1, [1], [0.5], 0)
    with PoCClient("http://node.test", api_key="", transport=httpx.MockTransport(node)) as c:
        c.init(params)
        c.init_generate(params)
        c.init_validate(params)
        c.phase_generate()
        c.phase_validate()
        c.status()
        c.stop()
        verdict = c.validate(batch)
        c.calibrate(CalibrationRequest(block_hash="b", valid_rate=0.5))
        c.version()
    assert set(seen) == {
        ("POST", "/init"),
        ("POST", "/init/generate"),
        ("POST", "/init/validate"),
        ("POST", "/phase/generate"),
        ("POST", "/phase/validate"),
        ("GET", "/status"),
        ("POST", "/stop"),
        ("POST", "/validate"),
        ("POST", "/calibrate"),
        ("GET", "/version"),
    }
    assert verdict.mismatch == [True] and verdict.fraud_detected
    assert verdict.distances[0] != verdict.distances[0]  # null -> NaN


def test_watch_fetches_only_the_nonces_found_since_the_last_poll():
    found = [[0, 1, 2], [3, 4], []]  # what each poll finds; the round stops at the third
    asked: list[int] = []

    def node(request: httpx.Request) -> httpx.Response:
        since = int(request.url.params["since"])
        asked.append(since)
        poll = len(asked) - 1
        total = sum(len(f) for f in found[: poll + 1])
        status = {
            "state": "GENERATING" if poll < 2 else "STOPPED",
            "valid_nonces": [n for f in found[: poll + 1] for n in f][since:],
            "total_checked": 10 * total,
            "total_valid": total,
            "rate_per_second": 1.0,
            "elapsed_seconds": 1.0,
            "next": total,
        }
        return httpx.Response(200, json=status)

    with PoCClient("http://node.test", api_key="", transport=httpx.MockTransport(node)) as c:
        last = c.watch(60.0, interval=0.0)
    assert asked == [0, 3, 5]
    assert last.state == "STOPPED" and last.total_valid == 5 and last.raw["valid_nonces"] == []


def test_a_batch_from_status_states_the_rounds_parameters():
    from vllm_poc.client import batch_from_status

    status = {
        "block_height": 9,
        "valid_nonces": [3, 5],
        "valid_distances": [0.1, 0.2],
        "config": {"seq_len": 64, "random_projection": True, "seed_derivation": "strong"},
    }
    batch = batch_from_status(status, block_hash="b", public_key="k", node_id=2)
    assert (batch.nonces, batch.dist, batch.block_height) == ([3, 5], [0.1, 0.2], 9)
    assert batch.parameters() == {
        "seq_len": 64,
        "random_projection": True,
        "seed_derivation": "strong",
    }


def test_batch_files_keep_the_stated_parameters_and_read_older_ones(tmp_path):
    import json

    from vllm_poc import ProofBatch
    from vllm_poc.client import load_batch, save_batch

    stated = ProofBatch("k", "b", 1, [1], [0.5], 0, seq_len=32, seed_derivation="v1", model="m")
    assert load_batch(save_batch(stated, tmp_path / "new.json")) == stated
    older = {"public_key": "k", "block_hash": "b", "block_height": 1, "nonces": [1], "dist": [0.5]}
    (tmp_path / "old.json").write_text(json.dumps({**older, "node_id": 0}))
    assert load_batch(tmp_path / "old.json").parameters() == {}
