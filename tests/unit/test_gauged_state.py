"""Both protocols' nodes mirror their state in the ``vllm_poc_state`` gauge."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from tests.unit.fakes import FakeEngine
from vllm_poc.protocol.state import PoCState
from vllm_poc.server.artifact.node import ArtifactNode
from vllm_poc.server.distance.manager import PoCManager
from vllm_poc.server.engine_rpc import EngineRPC
from vllm_poc.server.engines import Engines


def _gauge() -> dict[str, float]:
    value = REGISTRY.get_sample_value
    return {s.value: value("vllm_poc_state", {"state": s.value}) for s in PoCState}


@pytest.mark.parametrize("node", [PoCManager, ArtifactNode])
def test_every_state_assignment_sets_the_gauge(node: type) -> None:
    second = 512 if node is PoCManager else ["m"]  # max_model_len, or the served models
    made = node(Engines([EngineRPC(FakeEngine())]), second, sender=object())  # type: ignore[arg-type]
    assert made.state is PoCState.IDLE and _gauge()[PoCState.IDLE.value] == 1
    made.state = PoCState.GENERATING
    assert made.state is PoCState.GENERATING
    assert _gauge() == {s.value: float(s is PoCState.GENERATING) for s in PoCState}
