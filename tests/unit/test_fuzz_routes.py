"""Many fuzzed requests (``tests/fuzzing.py``) on an in-process node of each protocol: real
routes, guards and node, fake engine. ``VLLM_POC_FUZZ_EXAMPLES`` per endpoint (default 200)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import ENDPOINTS, Tracker, artifact_endpoints, requests
from tests.unit.node import ARTIFACT_MODEL, Node, running_artifact_node, running_node

EXAMPLES = int(os.environ.get("VLLM_POC_FUZZ_EXAMPLES", "200"))


ARTIFACT_ENDPOINTS = artifact_endpoints(ARTIFACT_MODEL)
SURFACES = [("distance", e) for e in ENDPOINTS] + [("artifact", e) for e in ARTIFACT_ENDPOINTS]


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with running_node() as n:
        yield n


@pytest.fixture(scope="module")
def artifact_node() -> Iterator[Node]:
    with running_artifact_node() as n:
        yield n


@pytest.fixture
def trackers(node: Node, artifact_node: Node) -> dict[str, Tracker]:
    """One ``Tracker`` per protocol for the examples of one test: it resets the node only after
    an example that did not end cleanly, as in the end-to-end fuzzing (hypothesis shares a
    function-scoped fixture across the examples of a test)."""
    return {
        "distance": Tracker(node.client, "distance"),
        "artifact": Tracker(artifact_node.client, "artifact"),
    }


@pytest.mark.parametrize(("protocol", "endpoint"), SURFACES)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_fuzzed_requests_never_break_the_node(
    trackers: dict[str, Tracker], protocol: str, endpoint: str, data: st.DataObject
) -> None:
    endpoints = ENDPOINTS if protocol == "distance" else ARTIFACT_ENDPOINTS
    method, path, content, headers = data.draw(requests(endpoint, endpoints), label="request")
    tracker = trackers[protocol]
    tracker.start_example()
    tracker.send(method, path, content, headers)
