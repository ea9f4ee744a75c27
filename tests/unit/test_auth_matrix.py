"""Every PoC route of both protocols refuses every kind of wrong key, before it reads the body,
and changes nothing (in-process nodes; a sample of the same matrix runs on a real server)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.catalog import pow_routes, wrong_auth
from tests.e2e.helpers import round_body
from tests.fuzzing import artifact_endpoints
from tests.unit.node import ARTIFACT_MODEL, Node, running_artifact_node, running_node

KEY = "unit-secret"
BLOCK, HEIGHT = "auth-block", 777
ROUTES = pow_routes(BLOCK, HEIGHT)
ARTIFACT_ROUTES = [(m, p, b) for m, p, b in artifact_endpoints(ARTIFACT_MODEL).values()]
WRONG_AUTH = wrong_auth(KEY)
VOLATILE = ("elapsed_seconds", "rate_per_second")


@pytest.fixture(scope="module")
def keyed() -> Iterator[Node]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_POC_API_KEY", KEY)
        with running_node() as node:
            yield node


def _status(node: Node) -> dict[str, Any]:
    answer = node.get("/status", headers={"Authorization": f"Bearer {KEY}"}).json()
    return {k: v for k, v in answer.items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def keyed_artifact() -> Iterator[Node]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_POC_API_KEY", KEY)
        with running_artifact_node() as node:
            yield node


def _served(node: Node) -> set[tuple[str, str]]:
    return {
        (method, route.path.removeprefix("/api/v1/pow"))
        for route in node.app.router.routes
        if getattr(route, "path", "").startswith("/api/v1/pow")
        for method in route.methods
    }


def test_the_routes_are_all_the_pow_routes(keyed: Node, keyed_artifact: Node) -> None:
    assert _served(keyed) == {(m, p) for m, p, _ in ROUTES}
    artifact = {
        (m, p.replace("/generate/0", "/generate/{request_id}")) for m, p, _ in ARTIFACT_ROUTES
    }
    assert _served(keyed_artifact) == artifact


@pytest.mark.parametrize("auth", list(WRONG_AUTH))
@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m}{p}" for m, p, _ in ROUTES])
def test_every_route_refuses_every_wrong_key(
    keyed: Node, method: str, path: str, body: Any, auth: str
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    init = keyed.post(
        "/init", json=round_body(block_hash=BLOCK, block_height=HEIGHT), headers=headers
    )
    assert init.status_code == 200, init.text
    before, calls = _status(keyed), len(keyed.engine.calls)
    kwargs: dict[str, Any] = {"headers": WRONG_AUTH[auth]}
    if body is not None:
        kwargs["json"] = body
    r = keyed.client.request(method, "/api/v1/pow" + path, **kwargs)
    assert r.status_code == 401, (r.status_code, r.text[:500])
    assert "API key" in r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert _status(keyed) == before
    assert len(keyed.engine.calls) == calls


@pytest.mark.parametrize("auth", list(WRONG_AUTH))
@pytest.mark.parametrize(
    ("method", "path", "body"), ARTIFACT_ROUTES, ids=[f"{m}{p}" for m, p, _ in ARTIFACT_ROUTES]
)
def test_every_artifact_route_refuses_every_wrong_key(
    keyed_artifact: Node, method: str, path: str, body: Any, auth: str
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    before = keyed_artifact.get("/status", headers=headers).json()
    calls = len(keyed_artifact.engine.calls)
    kwargs: dict[str, Any] = {"headers": WRONG_AUTH[auth]}
    if body is not None:
        kwargs["json"] = body
    r = keyed_artifact.client.request(method, "/api/v1/pow" + path, **kwargs)
    assert r.status_code == 401, (r.status_code, r.text[:500])
    assert "API key" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert keyed_artifact.get("/status", headers=headers).json() == before
    assert len(keyed_artifact.engine.calls) == calls
