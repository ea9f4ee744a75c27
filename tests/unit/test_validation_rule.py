"""``/validate`` with a tolerance and statistical parameters per round and per request, batches
that state their parameters (409 when they differ), the strong seed derivation on the wire and
the weights fingerprint of ``/version`` (real routes and manager, fake engine)."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.fakes import FakeEngine, fake_distance
from tests.unit.node import running_node
from vllm_poc.server.engine_rpc import EngineRPC
from vllm_poc.server.engines import Engines
from vllm_poc.server.fingerprint import WeightsFingerprint, combine

R_TARGET = 0.5
INIT = {
    "block_hash": "hash1",
    "block_height": 100,
    "public_key": "node1",
    "r_target": R_TARGET,
    "batch_size": 8,
    "seq_len": 16,
}
NEAR = [14, 15]
"""Nonces whose fake distance is 0.18 and 1.55 (``fake_distance``)."""


def batch(nonces: list[int], dist: list[float], **extra: object) -> dict[str, object]:
    return {
        "public_key": "node1",
        "block_hash": "hash1",
        "block_height": 100,
        "nonces": nonces,
        "dist": dist,
        "node_id": 0,
        **extra,
    }


@pytest.fixture
def node():
    with running_node() as n:
        yield n


def stable(status: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in status.items() if k not in ("elapsed_seconds", "rate_per_second")}


def validating(node, **round_fields: object) -> None:
    response = node.post("/init/validate", json={**INIT, **round_fields})
    assert response.status_code == 200, response.text


def nonce_just_above(r_target: float) -> tuple[int, float]:
    """A nonce whose recomputed (fake) distance is the smallest one above ``r_target``."""
    above = [(fake_distance(n) - r_target, n) for n in range(1000) if fake_distance(n) > r_target]
    gap, nonce = min(above)
    return nonce, gap


class TestTolerance:
    def test_without_the_new_fields_the_answer_is_the_first_protocols(self, node):
        validating(node)
        nonce, _ = nonce_just_above(R_TARGET)
        data = node.post("/validate", json=batch([nonce], [0.49])).json()
        assert data["mismatch"] == [True] and data["n_invalid"] == 1
        assert (data["tolerance"], data["p_mismatch"], data["fraud_threshold"]) == (
            0.0,
            5e-4,
            0.01,
        )

    def test_a_request_tolerance_forgives_a_recomputed_distance_just_above(self, node):
        validating(node)
        nonce, gap = nonce_just_above(R_TARGET)
        inside = node.post("/validate", json=batch([nonce], [0.49], tolerance=gap * 2)).json()
        outside = node.post("/validate", json=batch([nonce], [0.49], tolerance=gap / 2)).json()
        assert inside["mismatch"] == [False] and inside["tolerance"] == gap * 2
        assert outside["mismatch"] == [True]

    def test_the_round_gives_the_defaults_and_a_request_overrides_them(self, node):
        nonce, gap = nonce_just_above(R_TARGET)
        validating(node, tolerance=gap * 2, p_mismatch=0.25, fraud_threshold=0.5)
        by_round = node.post("/validate", json=batch([nonce], [0.49])).json()
        assert by_round["mismatch"] == [False]
        assert (by_round["p_mismatch"], by_round["fraud_threshold"]) == (0.25, 0.5)
        strict = node.post("/validate", json=batch([nonce], [0.49], tolerance=0.0)).json()
        assert strict["mismatch"] == [True] and strict["p_mismatch"] == 0.25

    def test_p_mismatch_and_fraud_threshold_decide_the_verdict(self, node):
        validating(node, r_target=2.0)
        nonces = list(range(200))
        honest = [fake_distance(n) for n in nonces]
        forged = [*honest[:-2], 2.5, 2.5]  # two reported distances not below r_target
        strict = node.post("/validate", json=batch(nonces, forged)).json()
        loose = node.post("/validate", json=batch(nonces, forged, p_mismatch=1e-3)).json()
        lenient = node.post("/validate", json=batch(nonces, forged, fraud_threshold=1e-7)).json()
        assert strict["n_invalid"] == loose["n_invalid"] == 2
        assert strict["fraud_detected"] and not loose["fraud_detected"]
        assert loose["probability_honest"] == pytest.approx(0.0174575, abs=1e-7)
        assert not lenient["fraud_detected"]

    @pytest.mark.parametrize(
        "extra",
        [
            {"tolerance": -0.001},
            {"tolerance": "0.1"},
            {"p_mismatch": 0},
            {"p_mismatch": 1},
            {"p_mismatch": -0.5},
            {"fraud_threshold": 0},
            {"fraud_threshold": 1.5},
            {"seed_derivation": "v3"},
            {"seq_len": 0},
        ],
    )
    def test_impossible_values_are_400_and_change_nothing(self, node, extra):
        validating(node)
        before = node.get("/status").json()
        calls = len(node.engine.calls)
        response = node.post("/validate", json=batch([1], [0.37], **extra))
        assert response.status_code == 400, response.text
        assert len(node.engine.calls) == calls
        assert stable(node.get("/status").json()) == stable(before)

    @pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
    def test_non_finite_tolerance_is_400(self, node, raw):
        validating(node)
        body = '{"public_key": "node1", "block_hash": "hash1", "block_height": 100, '
        body += f'"nonces": [1], "dist": [0.37], "node_id": 0, "tolerance": {raw}}}'
        headers = {"content-type": "application/json"}
        assert node.post("/validate", content=body, headers=headers).status_code == 400

    @pytest.mark.parametrize(
        "extra",
        [{"tolerance": -1}, {"p_mismatch": 1}, {"fraud_threshold": 2}, {"seed_derivation": "x"}],
    )
    def test_a_round_with_impossible_rules_is_400(self, node, extra):
        response = node.post("/init", json={**INIT, **extra})
        assert response.status_code == 400, response.text
        assert node.manager.config is None


class TestStatedParameters:
    @pytest.mark.parametrize(
        ("stated", "named"),
        [
            ({"seq_len": 32}, "seq_len: batch 32, this node 16"),
            ({"random_projection": True}, "random_projection: batch True, this node False"),
            ({"seed_derivation": "strong"}, "seed_derivation: batch 'strong', this node 'v1'"),
            ({"model": "other-model"}, "model: batch 'other-model', this node 'tiny'"),
        ],
    )
    def test_a_batch_made_under_other_parameters_is_409(self, node, stated, named):
        validating(node)
        before = node.get("/status").json()
        calls = len(node.engine.calls)
        response = node.post("/validate", json=batch([1], [0.37], **stated))
        assert response.status_code == 409, response.text
        assert named in response.json()["detail"]
        assert len(node.engine.calls) == calls
        assert stable(node.get("/status").json()) == stable(before)

    def test_every_difference_is_named(self, node):
        validating(node)
        detail = node.post("/validate", json=batch([1], [0.37], seq_len=32, model="other")).json()[
            "detail"
        ]
        assert "seq_len" in detail and "model" in detail

    def test_matching_parameters_validate(self, node):
        validating(node)
        stated = {"seq_len": 16, "random_projection": False, "seed_derivation": "v1"}
        data = node.post("/validate", json=batch([1], [0.37], model="tiny", **stated)).json()
        assert data["n_invalid"] == 0

    def test_generated_batches_state_the_round_and_model(self, node):
        node.post("/init/generate", json={**INIT, "node_id": 0, "node_count": 1})
        config = node.manager.config
        generation = node.manager.generation
        made = generation.record(
            config, node.manager.round_id, [0, 1], [0.1, 0.9], 0.1, generation.engine_stats[0]
        )
        assert made.parameters() == {
            "seq_len": 16,
            "random_projection": False,
            "seed_derivation": "v1",
            "model": "tiny",
        }


class TestStrongSeeds:
    def test_the_rounds_derivation_reaches_the_workers(self, node):
        validating(node, seed_derivation="strong")
        assert node.post("/validate", json=batch([1], [0.37])).status_code == 200
        assert node.engine.work()[-1].seed_derivation == "strong"
        assert node.get("/status").json()["config"]["seed_derivation"] == "strong"

    def test_v1_sends_no_option(self, node):
        validating(node)
        node.post("/validate", json=batch([1], [0.37]))
        assert "seed_derivation" not in node.engine.calls[-1][1][0]

    def test_calibration_follows_the_derivation(self, node):
        body = {"block_hash": "b", "valid_rate": 0.5, "n_samples": 4, "batch_size": 4}
        assert node.post("/calibrate", json={**body, "seed_derivation": "strong"}).is_success
        assert node.engine.work()[-1].seed_derivation == "strong"


class TestWeightsFingerprint:
    def test_data_parallel_replicas_with_equal_weights_add_nothing(self):
        one = [[{"a": "1", "b": "2"}]]
        assert combine(one) == combine(one * 4)
        assert combine(one) != combine([[{"a": "1", "b": "3"}]])
        assert combine([[{"a": "1"}, {"a": "2"}]]) != combine([[{"a": "2"}, {"a": "1"}]])

    def test_computed_in_the_background_from_every_worker(self):
        async def compute() -> WeightsFingerprint:
            fingerprint = WeightsFingerprint(Engines([EngineRPC(FakeEngine(workers=2))]))
            assert fingerprint.figures()["state"] == "off"
            fingerprint.start()
            assert fingerprint.figures()["state"] == "computing"
            assert fingerprint._task is not None
            await fingerprint._task
            return fingerprint

        fingerprint = asyncio.run(compute())
        figures = fingerprint.figures()
        assert figures["state"] == "ready" and figures["error"] is None
        expected = [[{"layer.weight": "digest-of-rank-0"}, {"layer.weight": "digest-of-rank-1"}]]
        assert figures["fingerprint"] == combine(expected)
        assert len(figures["fingerprint"]) == 64 and "sha256" in figures["method"]

    def test_a_failure_is_shown_not_raised(self):
        async def compute() -> WeightsFingerprint:
            engine = FakeEngine()
            engine.error = RuntimeError("worker died")
            fingerprint = WeightsFingerprint(Engines([EngineRPC(engine)]))
            fingerprint.start()
            assert fingerprint._task is not None
            await fingerprint._task
            return fingerprint

        figures = asyncio.run(compute()).figures()
        assert figures["state"] == "failed" and "worker died" in figures["error"]

    def test_switched_off(self, monkeypatch):
        monkeypatch.setenv("VLLM_POC_WEIGHTS_FINGERPRINT", "0")

        async def start() -> dict[str, object]:
            fingerprint = WeightsFingerprint(Engines([EngineRPC(FakeEngine())]))
            fingerprint.start()
            return fingerprint.figures()

        assert asyncio.run(start())["state"] == "off"
