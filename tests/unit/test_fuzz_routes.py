"""Many fuzzed requests (``tests/fuzzing.py``) on an in-process node: real routes, guards and
manager, fake engine. ``VLLM_POC_FUZZ_EXAMPLES`` per endpoint (default 200)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import ENDPOINTS, Tracker, requests
from tests.unit.node import Node, running_node

EXAMPLES = int(os.environ.get("VLLM_POC_FUZZ_EXAMPLES", "200"))


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with running_node() as n:
        yield n


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_fuzzed_requests_never_break_the_node(
    node: Node, endpoint: str, data: st.DataObject
) -> None:
    method, path, content, headers = data.draw(requests(endpoint), label="request")
    tracker = Tracker(node.client)
    tracker.start_example()
    tracker.send(method, path, content, headers)
