"""Data-parallel engines: which nonces each engine checks, how requests are split, and what
happens when one engine fails (fake engines behind vLLM's per-engine utility seam)."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace

import pytest

from tests.unit.fakes import FakeDataParallelClient, FakeEngine, fake_distance
from vllm_poc import compat
from vllm_poc.protocol.distance.round import PoCConfig
from vllm_poc.protocol.state import PoCState
from vllm_poc.server.distance.manager import PoCManager
from vllm_poc.server.distance.striding import NonceSchedule
from vllm_poc.server.engine_rpc import EngineRPC
from vllm_poc.server.engines import PIPELINE_DEPTH, Engines, endless
from vllm_poc.server.errors import EngineFailure
from vllm_poc.work import Work


def _config(**overrides: object) -> PoCConfig:
    fields = dict(block_hash="h", block_height=7, public_key="k", r_target=1.0, batch_size=4)
    fields.update(overrides)
    return PoCConfig(**fields)


def _manager(*fakes: FakeEngine, dp_size: int | None = None, ranks: tuple[int, ...] = ()):
    client = FakeDataParallelClient(fakes, dp_size, ranks)
    return PoCManager(Engines.of(client), max_model_len=512)


def _distances(engines: Engines, nonces: list[int], batch_size: int) -> list[float]:
    work = Work("distances", "h", "k", nonces, 8)
    return [d for _, chunk in asyncio.run(engines.run(work, batch_size)) for d in chunk]


def _owned(fake: FakeEngine) -> list[int]:
    return [n for w in fake.work("distances") for n in w.nonces]


# ------------------------------------------------------------------ striding


class TestNonceSchedule:
    def test_every_rank_is_the_node_stride(self) -> None:
        schedule = NonceSchedule(node_id=3, node_count=5, ranks=[0, 1], dp_size=2)
        assert schedule.take(3) + schedule.take(2) == [3, 8, 13, 18, 23]

    def test_servers_of_one_deployment_split_the_stride(self) -> None:
        # Four engines, two API servers fronting two each (external or hybrid balancing).
        halves = [NonceSchedule(1, 3, ranks, 4).take(50) for ranks in ([0, 1], [2, 3])]
        assert not set(halves[0]) & set(halves[1])
        assert sorted(halves[0] + halves[1]) == [1 + 3 * k for k in range(100)]
        assert halves[1][:4] == [1 + 3 * 2, 1 + 3 * 3, 1 + 3 * 6, 1 + 3 * 7]

    def test_one_engine_per_server(self) -> None:
        assert NonceSchedule(0, 1, [1], 2).take(4) == [1, 3, 5, 7]

    @pytest.mark.parametrize("ranks", [[], [2], [-1]])
    def test_ranks_outside_the_deployment_are_refused(self, ranks: list[int]) -> None:
        with pytest.raises(ValueError, match="data-parallel ranks"):
            NonceSchedule(0, 1, ranks, 2)


# ------------------------------------------------------------------ the engines seam


class TestDataParallelEngines:
    def test_one_engine_is_the_engine_client_itself(self) -> None:
        fake = FakeEngine()
        assert compat.data_parallel_engines(fake) == ({0: fake}, 1)

    def test_each_engine_is_addressed_by_its_identity(self) -> None:
        fakes = [FakeEngine(), FakeEngine()]
        engines = Engines.of(FakeDataParallelClient(fakes, dp_size=4, ranks=[2, 3]))
        assert engines.ranks == [2, 3] and engines.dp_size == 4
        asyncio.run(engines.rpcs[1].run(Work("distances", "h", "k", [9], 8)))
        assert fakes[1].work() == [Work("distances", "h", "k", [9], 8)] and not fakes[0].calls

    def test_moe_models_with_data_parallelism_refuse_to_start(self) -> None:
        # Their expert layers join every data-parallel engine in each forward: engines running
        # their own PoC batches would wait on each other forever.
        client = FakeDataParallelClient([FakeEngine(), FakeEngine()], moe=True)
        with pytest.raises(RuntimeError, match="MoE models with data parallelism"):
            Engines.of(client)

    def test_several_engines_without_the_seam_refuse_to_start(self) -> None:
        client = SimpleNamespace(
            vllm_config=SimpleNamespace(
                parallel_config=SimpleNamespace(data_parallel_size=2),
                model_config=SimpleNamespace(is_moe=False),
            ),
            engine_core=SimpleNamespace(),
        )
        with pytest.raises(compat.SeamNotFound, match="per-engine utility calls"):
            compat.data_parallel_engines(client)


class TestSplitRequests:
    def test_validation_is_split_in_order(self) -> None:
        fakes = [FakeEngine(), FakeEngine()]
        engines = Engines([EngineRPC(f, rank) for rank, f in enumerate(fakes)])
        nonces = list(range(100, 111))
        distances = _distances(engines, nonces, batch_size=4)
        assert distances == [fake_distance(n) for n in nonces]
        # chunks of at most 4, alternating: engine 0 gets chunks 0 and 2, engine 1 chunk 1
        assert _owned(fakes[0]) == nonces[0:4] + nonces[8:11]
        assert _owned(fakes[1]) == nonces[4:8]

    def test_small_requests_use_every_engine(self) -> None:
        fakes = [FakeEngine() for _ in range(3)]
        engines = Engines([EngineRPC(f, rank) for rank, f in enumerate(fakes)])
        assert _distances(engines, [5, 6], batch_size=64) == [
            fake_distance(5),
            fake_distance(6),
        ]
        assert [_owned(f) for f in fakes] == [[5], [6], []]

    def test_one_failure_cancels_the_other_engines(self) -> None:
        slow, broken = FakeEngine(delay=60.0), FakeEngine()
        broken.error = RuntimeError("GPU fell off the bus")
        engines = Engines([EngineRPC(slow, 0), EngineRPC(broken, 1)])
        with pytest.raises(EngineFailure, match="GPU fell off the bus"):
            _distances(engines, list(range(8)), batch_size=4)
        assert slow.running == 0

    @pytest.mark.parametrize(("interleave", "depth"), [(False, PIPELINE_DEPTH), (True, 1)])
    def test_jobs_beside_inference_keep_one_call_in_flight(
        self, interleave: bool, depth: int
    ) -> None:
        # vLLM's engine core handles every queued call before a scheduler step: a second PoC
        # call always queued would hold inference back for the whole job.
        fake = FakeEngine(delay=0.001)
        work = Work("distances", "h", "k", list(range(12)), 8)
        asyncio.run(Engines([EngineRPC(fake)]).run(work, 2, interleave=interleave))
        assert fake.most_running == depth
        assert [list(w.nonces) for w in fake.work()] == [
            [0, 1],
            [2, 3],
            [4, 5],
            [6, 7],
            [8, 9],
            [10, 11],
        ]

    def test_auto_batch_size_is_the_smallest_engines(self) -> None:
        fakes = [FakeEngine(), FakeEngine()]
        fakes[1].max_batch_sizes = [24]
        engines = Engines([EngineRPC(f, rank) for rank, f in enumerate(fakes)])
        assert asyncio.run(engines.max_batch_size(16, 4096)) == 24

    def test_engines_with_different_plugin_versions_are_refused(self) -> None:
        class OldEngine(FakeEngine):
            async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
                return ["0.0.1"] if method == "poc_ready" else await super().collective_rpc(method)

        engines = Engines([EngineRPC(FakeEngine(), 0), EngineRPC(OldEngine(), 1)])
        with pytest.raises(EngineFailure, match="different vllm-poc versions"):
            asyncio.run(engines.ready())


# ------------------------------------------------------------------ rounds


class TestDataParallelRounds:
    def test_engines_check_disjoint_nonces_and_status_adds_up(self) -> None:
        fakes = [FakeEngine(), FakeEngine()]
        manager = _manager(*fakes)
        config = _config(node_id=1, node_count=3)

        async def scenario() -> None:
            manager.init_round(config)
            manager.start_generate()
            await asyncio.gather(*(f.until(lambda e: len(e.calls) >= 4) for f in fakes))
            manager.stop_round()
            await manager.generation.stopped()

        asyncio.run(scenario())
        owned = [_owned(f) for f in fakes]
        assert owned[0] and owned[1] and not set(owned[0]) & set(owned[1])
        stride = {1 + 3 * k for k in range(1000)}
        assert set(owned[0]) | set(owned[1]) <= stride
        status = manager.get_status()
        engines = status["engines"]
        assert [e["dp_rank"] for e in engines] == [0, 1]
        assert sum(e["checked"] for e in engines) == status["total_checked"] > 0
        assert sum(e["valid"] for e in engines) == status["total_valid"]
        assert all(e["error"] is None for e in engines)
        # recorded distances are those of their nonces, whichever engine computed them
        valid = dict(zip(status["valid_nonces"], status["valid_distances"], strict=True))
        assert valid and all(d == fake_distance(n) for n, d in valid.items())

    def test_a_server_fronting_some_ranks_checks_only_their_positions(self) -> None:
        fakes = [FakeEngine(), FakeEngine()]
        manager = _manager(*fakes, dp_size=4, ranks=(2, 3))

        async def scenario() -> None:
            manager.init_round(_config(node_id=0, node_count=1))
            manager.start_generate()
            await asyncio.gather(*(f.until(lambda e: len(e.calls) >= 3) for f in fakes))
            manager.stop_round()
            await manager.generation.stopped()

        asyncio.run(scenario())
        checked = _owned(fakes[0]) + _owned(fakes[1])
        assert checked and all(n % 4 in (2, 3) for n in checked)
        assert [e["dp_rank"] for e in manager.get_status()["engines"]] == [2, 3]

    def test_one_engine_failing_stops_the_round_and_every_engine(self) -> None:
        slow, broken = FakeEngine(delay=60.0), FakeEngine()
        broken.error = RuntimeError("CUDA error: an illegal memory access")
        manager = _manager(slow, broken)

        async def scenario() -> None:
            manager.init_round(_config(node_id=0, node_count=1))
            manager.start_generate()
            await manager.generation.stopped()

        asyncio.run(scenario())
        status = manager.get_status()
        assert status["state"] == PoCState.STOPPED.value
        assert status["error"] == (
            "generation failed on dp_rank 1: poc_run(distances) failed in the engine: "
            "RuntimeError: CUDA error: an illegal memory access"
        )
        assert [e["error"] is None for e in status["engines"]] == [True, False]
        assert slow.running == 0, "the healthy engine must not keep running PoC batches"

        async def next_round() -> None:
            broken.error = None
            slow.delay = 0.0
            before = len(broken.calls)
            manager.init_round(_config(block_hash="h2", node_id=0, node_count=1))
            manager.start_generate()
            await broken.until(lambda e: len(e.calls) >= before + 3)  # a batch was recorded
            manager.stop_round()
            await manager.generation.stopped()

        asyncio.run(next_round())
        status = manager.get_status()
        assert status["error"] is None and status["total_checked"] > 0
        assert all(e["error"] is None for e in status["engines"])

    def test_validation_uses_every_engine(self) -> None:
        fakes = [FakeEngine(), FakeEngine()]
        manager = _manager(*fakes)
        manager.init_round(_config(batch_size=2))
        distances, _ = asyncio.run(manager.validate([4, 5, 6, 7, 8], "other"))
        assert distances == [fake_distance(n) for n in (4, 5, 6, 7, 8)]
        assert _owned(fakes[0]) and _owned(fakes[1])

    @pytest.mark.parametrize(("setting", "depth"), [("0", PIPELINE_DEPTH), ("1", 1)])
    def test_validation_interleaves_where_inference_is_served(
        self, monkeypatch: pytest.MonkeyPatch, setting: str, depth: int
    ) -> None:
        monkeypatch.setenv("VLLM_POC_INFERENCE_DURING_VALIDATION", setting)
        fake = FakeEngine(delay=0.001)
        manager = PoCManager(Engines([EngineRPC(fake)]), max_model_len=512)
        manager.init_round(_config(batch_size=2))
        manager.start_validate()
        asyncio.run(manager.validate(list(range(10)), "other"))
        assert fake.most_running == depth


class TestEndlessLoop:
    """``engines.endless``: one engine's generation loop, two calls in flight, each naming the
    nonces of the call behind it (which its worker prepares during the forward before)."""

    def test_each_call_names_the_next_and_results_arrive_in_order(self) -> None:
        fake = FakeEngine(delay=0.001)
        rpc = EngineRPC(fake)
        taken = iter(range(0, 10_000, 4))
        done: list[list[int]] = []

        def take() -> list[int]:
            first = next(taken)
            return list(range(first, first + 4))

        async def scenario() -> None:
            work = Work("distances", "h", "k", [], 8)
            loop = asyncio.ensure_future(
                endless(rpc, work, take, lambda rank, n, answer, s: done.append(n))
            )
            await fake.until(lambda f: len(done) >= 6)
            loop.cancel()
            with pytest.raises(asyncio.CancelledError):
                await loop

        asyncio.run(scenario())
        units = fake.work()
        assert [list(w.nonces) for w in units[: len(done)]] == done
        assert [list(w.nonces) for w in units] == [
            list(range(i, i + 4)) for i in range(0, 4 * len(units), 4)
        ]
        assert all(a.next_nonces == b.nonces for a, b in itertools.pairwise(units))
        assert fake.most_running <= PIPELINE_DEPTH
        assert fake.running == 0, "calls in flight are cancelled with the loop"
