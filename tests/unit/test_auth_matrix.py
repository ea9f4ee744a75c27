"""Every PoC route refuses every kind of wrong key, before it reads the body, and changes
nothing (in-process node; a sample of the same matrix runs on a real server)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.catalog import pow_routes, wrong_auth
from tests.e2e.helpers import round_body
from tests.unit.node import Node, running_node

KEY = "unit-secret"
BLOCK, HEIGHT = "auth-block", 777
ROUTES = pow_routes(BLOCK, HEIGHT)
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


def test_the_routes_are_all_the_pow_routes(keyed: Node) -> None:
    served = {
        (method, route.path.removeprefix("/api/v1/pow"))
        for route in keyed.app.router.routes
        if getattr(route, "path", "").startswith("/api/v1/pow")
        for method in route.methods
    }
    assert served == {(m, p) for m, p, _ in ROUTES}


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
