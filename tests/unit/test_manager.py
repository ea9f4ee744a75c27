"""PoCManager: states, striding, the generation loop, validation and status (the design's
manager tests, on ``EngineRPC`` over a fake engine)."""

import asyncio
import time

import pytest

from tests.unit.fakes import FakeEngine, fake_distance
from vllm_poc.protocol.distance.round import PoCConfig
from vllm_poc.protocol.state import PoCState
from vllm_poc.server.distance.generation import PoCStats
from vllm_poc.server.distance.manager import PoCManager
from vllm_poc.server.engine_rpc import EngineRPC
from vllm_poc.server.engines import PIPELINE_DEPTH, Engines
from vllm_poc.server.errors import EngineFailure, TooLarge
from vllm_poc.work import Work


def _config(**overrides):
    fields = dict(block_hash="hash1", block_height=100, public_key="node1", r_target=0.5)
    fields.update(overrides)
    return PoCConfig(**fields)


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def manager(engine):
    return PoCManager(Engines([EngineRPC(engine)]), max_model_len=512)


def run(coro):
    return asyncio.run(coro)


async def _generate_for(manager, config, min_calls=3):
    """Generate until the round has started ``min_calls`` RPCs, then stop (events, no clock).

    With two batches in flight, a third RPC starts only after the first batch was recorded.
    """
    engine = manager.engines.rpcs[0].engine
    before = len(engine.calls)
    manager.init_round(config)
    manager.start_generate()
    await engine.until(lambda e: len(e.calls) >= before + min_calls)
    manager.stop_round()


class TestPoCStats:
    def test_initial_state(self):
        stats = PoCStats()
        assert stats.total_checked == 0
        assert stats.total_valid == 0
        assert stats.elapsed == 0.0
        assert stats.rate == 0.0

    def test_elapsed_calculation(self):
        stats = PoCStats(total_checked=100, start_time=time.time() - 10)
        assert 10 <= stats.elapsed < 11

    def test_rate_calculation(self):
        stats = PoCStats(total_checked=100, start_time=time.time() - 10)
        assert 9 <= stats.rate <= 11

    def test_elapsed_freezes_at_end_time(self):
        now = time.time()
        stats = PoCStats(total_checked=100, start_time=now - 10, end_time=now - 5)
        assert stats.elapsed == pytest.approx(5.0)


class TestStateTransitions:
    def test_initial_state(self, manager):
        assert manager.state == PoCState.IDLE
        assert manager.config is None
        assert manager.valid_nonces == []
        assert manager.valid_distances == []

    def test_init_round_sets_config(self, manager):
        config = _config()
        manager.init_round(config)
        assert manager.state == PoCState.IDLE
        assert manager.config == config

    def test_start_generate_sets_state(self, manager):
        async def scenario():
            manager.init_round(_config())
            manager.start_generate()
            state = manager.state
            manager.stop_round()
            return state

        assert run(scenario()) == PoCState.GENERATING

    def test_start_validate_sets_state(self, manager):
        manager.init_round(_config())
        manager.start_validate()
        assert manager.state == PoCState.VALIDATING

    def test_init_round_resets_counters(self, manager):
        manager.valid_nonces = [1, 2, 3]
        manager.valid_distances = [0.1, 0.2, 0.3]
        manager.stats.total_checked = 100
        manager.error = "old"
        manager.init_round(_config())
        assert manager.valid_nonces == []
        assert manager.valid_distances == []
        assert manager.stats.total_checked == 0
        assert manager.error is None

    def test_init_round_raises_if_already_generating(self, manager):
        async def scenario():
            manager.init_round(_config())
            manager.start_generate()
            try:
                with pytest.raises(RuntimeError, match="Round already in progress"):
                    manager.init_round(_config())
                with pytest.raises(RuntimeError, match="Round already in progress"):
                    manager.start_generate()
            finally:
                manager.stop_round()

        run(scenario())

    def test_start_generate_requires_init(self, manager):
        with pytest.raises(RuntimeError, match="Round not initialized"):
            manager.start_generate()

    def test_start_generate_requires_node(self, manager):
        manager.init_round(_config(node_id=-1, node_count=-1))
        with pytest.raises(RuntimeError, match="Node ID and node count must be set"):
            manager.start_generate()

    def test_start_validate_requires_init(self, manager):
        with pytest.raises(RuntimeError, match="Round not initialized"):
            manager.start_validate()

    def test_stop_round(self, manager):
        async def scenario():
            manager.init_round(_config())
            manager.start_generate()
            manager.stop_round()

        run(scenario())
        assert manager.state == PoCState.STOPPED

    def test_rejects_seq_len_above_model_length(self, manager):
        with pytest.raises(ValueError, match="max length 512"):
            manager.init_round(_config(seq_len=513))
        assert manager.config is None

    def test_a_batch_over_the_token_budget_is_run_not_refused(self, manager, monkeypatch):
        """The workers split it into forwards that fit (``PoCForward.in_forwards``)."""
        monkeypatch.setenv("VLLM_POC_MAX_TOKENS_PER_FORWARD", "1000")
        manager.init_round(_config(batch_size=8, seq_len=256))
        assert manager.config is not None and manager.config.batch_size == 8

    def test_rejects_a_batch_over_the_operators_cap(self, manager, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_BATCH_SIZE", "64")
        with pytest.raises(TooLarge, match="VLLM_POC_MAX_BATCH_SIZE=64"):
            manager.init_round(_config(batch_size=65))
        assert manager.config is None


class TestNonceStriding:
    @pytest.mark.parametrize(
        "node_id, node_count, first, second",
        [
            (0, 1, [0, 1, 2, 3], [4, 5, 6, 7]),
            (0, 3, [0, 3, 6, 9], [12, 15, 18, 21]),
            (1, 3, [1, 4, 7, 10], [13, 16, 19, 22]),
            (2, 3, [2, 5, 8, 11], [14, 17, 20, 23]),
        ],
    )
    def test_node_gets_its_stride(self, manager, node_id, node_count, first, second):
        manager.init_round(_config(node_id=node_id, node_count=node_count, batch_size=4))
        assert manager.get_next_nonces() == first
        assert manager.get_next_nonces() == second

    def test_nodes_never_overlap_and_never_repeat(self):
        seen: dict[int, int] = {}
        for node_id in range(3):
            engine = FakeEngine()
            manager = PoCManager(Engines([EngineRPC(engine)]), max_model_len=512)
            config = _config(node_id=node_id, node_count=3, batch_size=5, r_target=2.0)
            run(_generate_for(manager, config))
            assert engine.checked, "the loop checked nothing"
            assert len(set(engine.checked)) == len(engine.checked)
            for n in engine.checked:
                assert n % 3 == node_id
                assert seen.setdefault(n, node_id) == node_id


class TestGenerationLoop:
    def test_collects_valid_nonces_and_counts(self, engine, manager):
        run(_generate_for(manager, _config(batch_size=4, r_target=0.9)))
        # the batches in flight at stop (PIPELINE_DEPTH of 4 nonces) are discarded
        checked = engine.checked[: manager.stats.total_checked]
        assert len(engine.checked) - 4 * PIPELINE_DEPTH <= len(checked) and checked
        expected = [n for n in checked if fake_distance(n) < 0.9]
        assert manager.valid_nonces == expected
        assert manager.valid_distances == [fake_distance(n) for n in expected]
        assert manager.stats.total_valid == len(expected)

    def test_rpc_carries_round_parameters(self, engine, manager):
        run(_generate_for(manager, _config(batch_size=2, seq_len=16)))
        method, (payload,) = engine.calls[0]
        assert method == "poc_run"
        assert payload == {
            "kind": "distances",
            "block_hash": "hash1",
            "public_key": "node1",
            "nonces": [0, 1],
            "seq_len": 16,
            "next_nonces": [2, 3],
        }

    def test_stop_freezes_counters(self, engine, manager):
        async def scenario():
            engine.delay = 0.01
            await _generate_for(manager, _config(batch_size=2))
            frozen = (manager.stats.total_checked, list(manager.valid_nonces))
            rate = manager.stats.rate
            await asyncio.sleep(0.05)
            return frozen, rate

        (checked, valid), rate = run(scenario())
        assert manager.stats.total_checked == checked
        assert manager.valid_nonces == valid
        assert manager.stats.rate == rate

    def test_stop_discards_batch_in_flight(self, engine, manager):
        async def scenario():
            engine.delay = 0.2
            manager.init_round(_config(batch_size=2))
            manager.start_generate()
            await engine.until(lambda e: len(e.calls) >= 1)  # first RPCs in flight
            manager.stop_round()
            await manager.generation.stopped()
            await engine.until(lambda e: e.running == 0)  # the RPCs in flight have ended

        run(scenario())
        assert manager.stats.total_checked == 0
        assert manager.state == PoCState.STOPPED

    def test_pipeline_keeps_order_and_depth(self):
        class UnevenEngine(FakeEngine):
            """Every other RPC is slow, so later batches finish before earlier ones."""

            async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
                self.delay = 0.02 if len(self.calls) % 2 == 0 else 0.0
                return await super().collective_rpc(method, timeout, args, kwargs)

        engine = UnevenEngine()
        manager = PoCManager(Engines([EngineRPC(engine)]), max_model_len=512)
        run(_generate_for(manager, _config(batch_size=3, r_target=2.0), min_calls=6))
        assert engine.most_running == PIPELINE_DEPTH
        assert manager.valid_nonces == list(range(len(manager.valid_nonces)))
        assert len(manager.valid_nonces) >= 12

    def test_loop_does_not_block_event_loop(self, engine, manager):
        async def scenario():
            engine.delay = 0.001
            manager.init_round(_config(batch_size=2))
            manager.start_generate()
            ticks = 0
            while len(engine.calls) < 20:
                await asyncio.sleep(0)
                ticks += 1
            manager.stop_round()
            return ticks

        # other coroutines run between every batch, not only after the loop ends
        assert run(scenario()) >= 20

    def test_engine_error_stops_round_with_error(self, engine, manager):
        async def scenario():
            engine.error = RuntimeError("engine died")
            manager.init_round(_config())
            manager.start_generate()
            await manager.generation.stopped()

        run(scenario())
        assert manager.state == PoCState.STOPPED
        assert "engine died" in manager.get_status()["error"]

    def test_new_round_after_engine_error(self, engine, manager):
        async def scenario():
            engine.error = RuntimeError("engine died")
            manager.init_round(_config())
            manager.start_generate()
            await manager.generation.stopped()
            engine.error = None
            await _generate_for(manager, _config(block_hash="hash2"))

        run(scenario())
        assert manager.error is None
        assert manager.stats.total_checked > 0

    def test_rpc_timeout_stops_round(self, engine, manager, monkeypatch):
        monkeypatch.setenv("VLLM_POC_RPC_TIMEOUT", "0.01")

        async def scenario():
            engine.delay = 1.0
            manager.init_round(_config())
            manager.start_generate()
            await manager.generation.stopped()

        run(scenario())
        assert manager.state == PoCState.STOPPED
        assert "poc_run(distances) took over VLLM_POC_RPC_TIMEOUT=0.01 s" in manager.error

    def test_tensor_parallel_ranks_use_one_answer(self):
        engine = FakeEngine(workers=4, answering=3)
        manager = PoCManager(Engines([EngineRPC(engine)]), max_model_len=512)
        run(_generate_for(manager, _config(batch_size=3, r_target=2.0)))
        assert manager.valid_distances == [fake_distance(n) for n in manager.valid_nonces]

    def test_generated_batches_go_to_the_sender(self, engine):
        class RecordingSender:
            def __init__(self):
                self.generated = []

            def submit_generated(self, url, valid):
                self.generated.append((url, valid))

        sender = RecordingSender()
        manager = PoCManager(Engines([EngineRPC(engine)]), max_model_len=512, sender=sender)
        config = _config(batch_size=4, callback_url="http://receiver")
        run(_generate_for(manager, config))
        assert sender.generated
        url, valid = sender.generated[0]
        assert url == "http://receiver"
        assert valid.nonces == [0, 1]  # distances 0, 0.37, 0.74, 1.11 against r_target 0.5


class TestValidation:
    def test_validate_recomputes_in_batches(self, engine, manager):
        manager.init_round(_config(batch_size=3))
        manager.start_validate()
        distances, valid = run(manager.validate(list(range(7)), "other"))
        assert distances == [fake_distance(n) for n in range(7)]
        assert valid == [d < 0.5 for d in distances]
        assert [len(w.nonces) for w in engine.work()] == [3, 3, 1]
        assert {w.public_key for w in engine.work()} == {"other"}
        assert [w.next_nonces for w in engine.work()] == [(3, 4, 5), (6,), ()]

    def test_validate_requires_round(self, manager):
        with pytest.raises(RuntimeError, match="No round configured"):
            run(manager.validate([1], "pk"))

    def test_validate_batch_judges_forged_distances(self, manager):
        from vllm_poc.protocol.distance.batches import ProofBatch

        manager.init_round(_config(r_target=0.5))
        nonces = [n for n in range(200) if fake_distance(n) >= 0.5][:20]
        forged = ProofBatch("pk", "hash1", 100, nonces, [0.1] * len(nonces), 1)
        verdict = run(manager.validate_batch(forged))
        assert verdict.n_invalid == len(nonces)
        assert verdict.fraud_detected is True

        honest_nonces = [n for n in range(200) if fake_distance(n) < 0.5][:20]
        honest = ProofBatch(
            "pk", "hash1", 100, honest_nonces, [fake_distance(n) for n in honest_nonces], 1
        )
        verdict = run(manager.validate_batch(honest))
        assert verdict.n_invalid == 0
        assert verdict.fraud_detected is False


class TestStatus:
    def test_get_status_idle(self, manager):
        status = manager.get_status()
        assert status["state"] == "IDLE"
        assert status["valid_nonces"] == []
        assert status["valid_distances"] == []
        assert status["total_checked"] == 0
        assert status["total_valid"] == 0
        assert status["error"] is None
        assert status["callbacks"] == {"sent": 0, "failed_attempts": 0, "pending": 0, "dropped": 0}

    def test_get_status_with_data(self, manager):
        manager.valid_nonces = [1, 2, 3]
        manager.valid_distances = [0.1, 0.2, 0.3]
        manager.stats.total_checked = 100
        manager.stats.total_valid = 3
        status = manager.get_status()
        assert status["valid_nonces"] == [1, 2, 3]
        assert status["valid_distances"] == [0.1, 0.2, 0.3]
        assert status["total_checked"] == 100
        assert status["total_valid"] == 3

    def test_status_carries_the_round_settings(self, manager):
        assert manager.get_status()["config"] is None
        manager.init_round(_config(seq_len=64, node_id=1, node_count=2))
        config = manager.get_status()["config"]
        assert (config["seq_len"], config["node_id"], config["node_count"]) == (64, 1, 2)
        assert config["block_hash"] == "hash1"


class TestRandomProjectionOption:
    def test_off_by_default_keeps_the_plain_rpc(self, engine, manager):
        run(_generate_for(manager, _config(batch_size=2)))
        assert "random_projection" not in engine.calls[0][1][0]

    def test_on_is_passed_to_the_workers(self, engine, manager):
        run(_generate_for(manager, _config(batch_size=2, random_projection=True)))
        assert engine.calls[0][1][0]["random_projection"] is True


class TestCalibration:
    def test_quantiles_and_r_target(self, engine, manager):
        result = run(manager.calibrate(_config(batch_size=16), n_samples=100, valid_rate=0.25))
        dist = sorted(fake_distance(n) for n in range(100))
        assert result["n_samples"] == 100
        assert result["min"] == dist[0] and result["max"] == dist[-1]
        valid_share = sum(d < result["r_target"] for d in dist) / 100
        assert 0.2 <= valid_share <= 0.3
        assert result["quantiles"]["0.5"] == pytest.approx((dist[49] + dist[50]) / 2)
        assert manager.state == PoCState.IDLE and manager.config is None

    def test_refused_while_generating(self, manager):
        async def scenario():
            manager.init_round(_config())
            manager.start_generate()
            try:
                with pytest.raises(RuntimeError, match="while generating"):
                    await manager.calibrate(_config(), 10, 0.5)
            finally:
                manager.stop_round()

        run(scenario())


class TestNonFiniteDistances:
    def test_never_valid_and_counted(self):
        class NanEngine(FakeEngine):
            async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
                results = await super().collective_rpc(method, timeout, args, kwargs)
                return [
                    [
                        float("nan") if n % 2 else d
                        for n, d in zip(self.work()[-1].nonces, results[0], strict=True)
                    ]
                ]

        manager = PoCManager(Engines([EngineRPC(NanEngine())]), max_model_len=512)
        run(_generate_for(manager, _config(batch_size=4, r_target=2.0)))
        assert manager.total_nonfinite == manager.stats.total_checked // 2 > 0
        assert all(n % 2 == 0 for n in manager.valid_nonces)
        assert manager.get_status()["total_nonfinite"] == manager.total_nonfinite

    @staticmethod
    def _broken_after(good_batches: int, bad: float = float("nan")) -> FakeEngine:
        """An engine whose batches are all ``bad`` after its first ``good_batches``."""

        class BrokenEngine(FakeEngine):
            async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
                results = await super().collective_rpc(method, timeout, args, kwargs)
                if method != "poc_run" or len(self.work()) <= good_batches:
                    return results
                return [[bad] * len(self.work()[-1].nonces)]

        return BrokenEngine()

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_batches_in_a_row_without_a_finite_distance_stop_the_round(self, bad, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_BAD_BATCHES", "3")
        manager = PoCManager(Engines([EngineRPC(self._broken_after(2, bad))]), max_model_len=512)

        async def scenario():
            manager.init_round(_config(batch_size=4, r_target=2.0))
            manager.start_generate()
            await manager.generation.stopped()

        run(scenario())
        status = manager.get_status()
        assert status["state"] == PoCState.STOPPED.value
        assert "3 batches in a row gave only non-finite distances" in status["error"]
        assert "likely a GPU fault" in status["error"]
        # two good batches, then three bad ones counted before the stop
        assert status["total_checked"] == 5 * 4 and status["total_nonfinite"] == 3 * 4
        assert status["total_valid"] == 2 * 4

    def test_a_finite_batch_resets_the_count(self, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_BAD_BATCHES", "2")

        class Alternating(FakeEngine):
            answered = 0

            async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
                results = await super().collective_rpc(method, timeout, args, kwargs)
                if method != "poc_run":
                    return results
                self.answered += 1
                nonces = Work.from_payload(args[0]).nonces
                return [[float("nan")] * len(nonces)] if self.answered % 2 else results

        engine = Alternating()
        manager = PoCManager(Engines([EngineRPC(engine)]), max_model_len=512)
        run(_generate_for(manager, _config(batch_size=4, r_target=2.0), min_calls=8))
        assert manager.error is None and manager.total_nonfinite > 0


class TestDefaultBatchSize:
    def test_a_number_in_the_setting_is_used_without_asking_the_workers(
        self, manager, engine, monkeypatch
    ):
        monkeypatch.setenv("VLLM_POC_BATCH_SIZE", "12")
        assert run(manager.default_batch_size(256)) == 12
        assert engine.calls == []

    def test_auto_asks_every_worker_and_takes_the_smallest(self, monkeypatch):
        monkeypatch.setenv("VLLM_POC_MAX_TOKENS_PER_FORWARD", "4096")
        engine = FakeEngine(workers=3)
        engine.max_batch_sizes = [48, None, 16]
        manager = PoCManager(Engines([EngineRPC(engine)]), max_model_len=512)
        assert run(manager.default_batch_size(256)) == 16
        assert engine.calls == [("poc_max_batch_size", (256, 4096))]

    def test_auto_refuses_a_seq_len_above_the_model_without_an_rpc(self, manager, engine):
        with pytest.raises(ValueError, match="max length"):
            run(manager.default_batch_size(513))
        assert engine.calls == []

    def test_auto_without_an_answer_is_an_error(self, engine, manager):
        engine.max_batch_sizes = [None]
        with pytest.raises(RuntimeError, match="no worker"):
            run(manager.default_batch_size(64))

    def test_auto_engine_errors_propagate(self, engine, manager):
        engine.error = TimeoutError("rpc")
        with pytest.raises(EngineFailure, match=r"poc_max_batch_size failed .*TimeoutError: rpc"):
            run(manager.default_batch_size(64))
