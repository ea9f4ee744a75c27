"""PoCConfig, PoCState, ProofBatch and ValidatedBatch (the design's tests, import path
``vllm_poc``), the mismatch rule, JSON round-trips and bad input."""

import json
import math
from dataclasses import asdict

import pytest

from vllm_poc import PoCConfig, PoCState, ProofBatch, ValidatedBatch


def _config(**overrides):
    fields = dict(block_hash="hash1", block_height=100, public_key="node1", r_target=0.5)
    fields.update(overrides)
    return PoCConfig(**fields)


class TestPoCConfig:
    def test_defaults(self):
        config = _config()
        assert config.batch_size == 32
        assert config.seq_len == 256
        assert config.fraud_threshold == 0.01
        assert config.node_id == 0
        assert config.node_count == 1
        assert config.callback_url is None

    def test_all_fields(self):
        config = _config(
            fraud_threshold=0.05,
            node_id=2,
            node_count=4,
            batch_size=64,
            seq_len=128,
            callback_url="http://localhost:8080/callback",
        )
        assert config.node_id == 2
        assert config.node_count == 4
        assert config.callback_url == "http://localhost:8080/callback"

    def test_unset_node_sentinel_is_allowed(self):
        config = _config(node_id=-1, node_count=-1)
        assert not config.has_node

    @pytest.mark.parametrize(
        "overrides, message",
        [
            ({"block_hash": ""}, "block_hash"),
            ({"public_key": ""}, "public_key"),
            ({"block_height": -3}, "block_height"),
            ({"r_target": 0.0}, "r_target"),
            ({"r_target": 2.5}, "r_target"),
            ({"r_target": -0.1}, "r_target"),
            ({"r_target": math.nan}, "r_target"),
            ({"r_target": math.inf}, "r_target"),
            ({"fraud_threshold": math.nan}, "fraud_threshold"),
            ({"fraud_threshold": 0.0}, "fraud_threshold"),
            ({"batch_size": 0}, "batch_size"),
            ({"seq_len": 0}, "seq_len"),
            ({"node_count": 0}, "node_count"),
            ({"node_id": -2}, "node_id"),
            ({"node_id": 3, "node_count": 3}, "node_id"),
            ({"node_id": 5, "node_count": 2}, "node_id"),
        ],
    )
    def test_rejects_impossible_values(self, overrides, message):
        with pytest.raises(ValueError, match=message):
            _config(**overrides)

    def test_r_target_two_is_allowed(self):
        assert _config(r_target=2.0).r_target == 2.0


class TestPoCState:
    def test_states_exist(self):
        assert PoCState.IDLE.value == "IDLE"
        assert PoCState.GENERATING.value == "GENERATING"
        assert PoCState.VALIDATING.value == "VALIDATING"
        assert PoCState.STOPPED.value == "STOPPED"


def _proof(nonces, dist):
    return ProofBatch(
        public_key="node1",
        block_hash="hash1",
        block_height=100,
        nonces=nonces,
        dist=dist,
        node_id=0,
    )


def _validated(received, computed, nonces=None, **overrides):
    fields = dict(
        public_key="node1",
        block_hash="hash1",
        block_height=100,
        nonces=list(range(len(received))) if nonces is None else nonces,
        received_dist=received,
        dist=computed,
        r_target=0.5,
        fraud_threshold=0.01,
        node_id=0,
    )
    fields.update(overrides)
    return ValidatedBatch(**fields)


class TestProofBatch:
    def test_empty(self):
        batch = ProofBatch.empty()
        assert len(batch) == 0
        assert batch.nonces == []
        assert batch.dist == []

    def test_len(self):
        assert len(_proof([1, 2, 3], [0.1, 0.2, 0.3])) == 3

    def test_sub_batch_filters_correctly(self):
        filtered = _proof([1, 2, 3, 4], [0.3, 0.6, 0.4, 0.8]).sub_batch(r_target=0.5)
        assert filtered.nonces == [1, 3]
        assert filtered.dist == [0.3, 0.4]
        assert filtered.public_key == "node1"
        assert filtered.block_hash == "hash1"

    def test_sub_batch_empty_result(self):
        assert len(_proof([1, 2], [0.6, 0.8]).sub_batch(r_target=0.5)) == 0

    def test_sub_batch_all_pass(self):
        assert len(_proof([1, 2, 3], [0.1, 0.2, 0.3]).sub_batch(r_target=0.5)) == 3

    def test_sub_batch_never_keeps_nan(self):
        assert _proof([1, 2], [math.nan, 0.1]).sub_batch(r_target=0.5).nonces == [2]

    def test_length_mismatch_rejected(self):
        with pytest.raises(ValueError, match="same length"):
            _proof([1, 2, 3], [0.1, 0.2])

    def test_json_round_trip(self):
        batch = _proof([1, 5, 9], [0.25, 0.5, 1.75])
        assert ProofBatch(**json.loads(json.dumps(asdict(batch)))) == batch


class TestValidatedBatch:
    def test_fraud_detection_all_valid(self):
        batch = _validated([0.3, 0.4, 0.45], [0.3, 0.4, 0.45])
        assert batch.n_invalid == 0
        assert batch.fraud_detected is False

    def test_fraud_detection_received_invalid(self):
        assert _validated([0.3, 0.6, 0.45], [0.3, 0.4, 0.45]).n_invalid == 1

    def test_fraud_detection_computed_invalid(self):
        assert _validated([0.3, 0.4, 0.45], [0.3, 0.4, 0.55]).n_invalid == 1

    def test_empty_batch_no_fraud(self):
        batch = _validated([], [])
        assert batch.n_invalid == 0
        assert batch.fraud_detected is False

    def test_boundaries(self):
        # received == r_target is invalid, computed == r_target is still valid (seed semantics)
        assert _validated([0.5], [0.3]).n_invalid == 1
        assert _validated([0.3], [0.5]).n_invalid == 0

    def test_nan_distances_are_invalid(self):
        assert _validated([math.nan, 0.1], [0.1, math.nan]).n_invalid == 2

    def test_many_mismatches_flag_fraud(self):
        batch = _validated([0.1] * 20, [0.9] * 10 + [0.1] * 10)
        assert batch.n_invalid == 10
        assert batch.probability_honest < 1e-10
        assert batch.fraud_detected is True

    def test_one_mismatch_in_many_is_noise(self):
        batch = _validated([0.1] * 100, [0.9] + [0.1] * 99)
        assert batch.n_invalid == 1
        assert 0.01 < batch.probability_honest < 1.0
        assert batch.fraud_detected is False

    def test_length_mismatch_rejected(self):
        with pytest.raises(ValueError, match="received_dist"):
            _validated([0.1, 0.2], [0.1, 0.2], nonces=[1])
        with pytest.raises(ValueError, match="dist"):
            _validated([0.1, 0.2], [0.1])

    def test_json_round_trip(self):
        batch = _validated([0.1] * 20, [0.9] * 10 + [0.1] * 10)
        again = ValidatedBatch(**json.loads(json.dumps(asdict(batch))))
        assert again == batch
        assert again.fraud_detected is True


class TestJsonDict:
    def test_non_finite_distances_become_null(self):
        from vllm_poc.protocol.distance.batches import to_json_dict

        batch = _validated([math.nan, 0.1], [0.1, math.inf])
        out = to_json_dict(batch)
        assert out["received_dist"] == [None, 0.1]
        assert out["dist"] == [0.1, None]
        json.dumps(out, allow_nan=False)


class TestTolerance:
    """``tolerance`` forgives a recomputed distance just above ``r_target``, never a reported
    one; ``p_mismatch`` is the binomial test's honest rate."""

    def test_recomputed_within_tolerance_is_no_mismatch(self):
        assert _validated([0.49], [0.5005]).n_invalid == 1
        assert _validated([0.49], [0.5005], tolerance=1e-3).n_invalid == 0
        assert _validated([0.49], [0.5015], tolerance=1e-3).n_invalid == 1

    def test_reported_at_r_target_is_a_mismatch_whatever_the_tolerance(self):
        assert _validated([0.5], [0.1], tolerance=1.0).n_invalid == 1

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    def test_non_finite_on_either_side_is_a_mismatch(self, bad):
        assert _validated([bad], [0.1], tolerance=1.0).n_invalid == 1
        assert _validated([0.1], [bad], tolerance=1.0).n_invalid == 1

    def test_p_mismatch_sets_the_binomial_rate(self):
        strict = _validated([0.1] * 200, [0.9] * 2 + [0.1] * 198)
        loose = _validated([0.1] * 200, [0.9] * 2 + [0.1] * 198, p_mismatch=1e-3)
        assert strict.fraud_detected and not loose.fraud_detected
        assert loose.probability_honest == pytest.approx(0.0174575, abs=1e-7)

    def test_defaults_are_the_first_protocols(self):
        batch = _validated([0.3], [0.3])
        assert (batch.tolerance, batch.p_mismatch) == (0.0, 5e-4)


class TestStatedParameters:
    def test_select_keeps_the_parameters(self):
        batch = ProofBatch(
            public_key="k",
            block_hash="h",
            block_height=1,
            nonces=[1, 2, 3],
            dist=[0.1, 0.2, 0.3],
            node_id=0,
            seq_len=64,
            random_projection=True,
            seed_derivation="strong",
            model="m",
        )
        picked = batch.select([2, 0])
        assert picked.nonces == [3, 1] and picked.dist == [0.3, 0.1]
        assert picked.parameters() == {
            "seq_len": 64,
            "random_projection": True,
            "seed_derivation": "strong",
            "model": "m",
        }

    def test_an_older_batch_states_nothing(self):
        assert _proof([1], [0.1]).parameters() == {}

    @pytest.mark.parametrize(
        "overrides",
        [{"tolerance": -1e-3}, {"tolerance": math.nan}, {"p_mismatch": 0.0}, {"p_mismatch": 1.0}],
    )
    def test_config_rejects_impossible_rules(self, overrides):
        with pytest.raises(ValueError):
            _config(**overrides)

    def test_config_rejects_an_unknown_seed_derivation(self):
        with pytest.raises(ValueError, match="seed_derivation"):
            _config(seed_derivation="v3")
