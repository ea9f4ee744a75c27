"""The endpoint plugin: what vLLM's ``vllm.endpoint_plugins`` contract calls, and the checks
that keep a node from serving without PoC."""

from __future__ import annotations

import asyncio
from argparse import Namespace
from types import SimpleNamespace

import pytest
from starlette.datastructures import State

from tests.unit.fakes import FakeEngine
from tests.unit.node import vllm_like_app
from vllm_poc import compat
from vllm_poc.protocol import POW_PREFIX
from vllm_poc.server.distance.manager import PoCManager
from vllm_poc.server.endpoint import PoCEndpointPlugin


def _engine(**kwargs) -> FakeEngine:
    engine = FakeEngine(**kwargs)
    engine.model_config = SimpleNamespace(
        max_model_len=2048, served_model_name=["tiny"], model="/m"
    )
    return engine


def _pow_paths(app) -> set[str]:
    return {r.path for r in app.router.routes if getattr(r, "path", "").startswith(POW_PREFIX)}


def test_skips_servers_without_generation():
    assert PoCEndpointPlugin().required_tasks == ("generate",)


def test_attach_router_adds_routes_and_pauses_inference(monkeypatch):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    app = vllm_like_app()
    PoCEndpointPlugin().attach_router(app)
    assert f"{POW_PREFIX}/status" in _pow_paths(app)
    assert len(_pow_paths(app)) == 11
    completions = next(r for r in app.router.routes if r.path == "/v1/completions")
    assert hasattr(completions.app, "__wrapped__")


def test_named_in_vllm_plugins_but_disabled_adds_nothing(monkeypatch):
    monkeypatch.delenv("VLLM_POC_ENABLED", raising=False)
    app = vllm_like_app()
    plugin = PoCEndpointPlugin()
    plugin.attach_router(app)
    state = State()
    asyncio.run(plugin.init_state(_engine(), state, Namespace()))
    assert _pow_paths(app) == set()
    assert getattr(state, "poc_manager", None) is None


def test_init_state_creates_the_manager(monkeypatch):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    engine, state = _engine(workers=2), State()
    asyncio.run(PoCEndpointPlugin().init_state(engine, state, Namespace()))
    assert isinstance(state.poc_manager, PoCManager)
    assert (state.poc_manager.max_model_len, state.poc_manager.model_name) == (2048, "tiny")
    assert state.poc_manager.unsupported == []
    assert [m for m, _ in engine.calls] == ["poc_ready", "poc_unsupported"]


def test_a_model_with_layers_poc_cannot_compute_starts_with_them_named(monkeypatch, caplog):
    """Inference is served; the manager refuses every round with the workers' reasons."""
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    engine, state = _engine(workers=2), State()
    engine.unsupported = ["MambaMixer2 (MambaSpec) ...: 2 layer(s), e.g. model.layers.0.mixer"]
    asyncio.run(PoCEndpointPlugin().init_state(engine, state, Namespace()))
    assert state.poc_manager.unsupported == engine.unsupported
    assert "cannot run PoC (MambaMixer2 (MambaSpec)" in caplog.text


def test_workers_without_the_extension_stop_the_server(monkeypatch):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    engine = _engine()
    engine.error = AttributeError("'Worker' object has no attribute 'poc_ready'")
    state = State()
    with pytest.raises(compat.SeamNotFound, match="PoC worker extension") as e:
        asyncio.run(PoCEndpointPlugin().init_state(engine, state, Namespace()))
    assert "poc_ready" in str(e.value) and compat.vllm_version() in str(e.value)
    assert getattr(state, "poc_manager", None) is None


def test_a_server_without_an_engine_is_refused(monkeypatch):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    with pytest.raises(RuntimeError, match="no engine"):
        asyncio.run(PoCEndpointPlugin().init_state(None, State(), Namespace()))


def test_several_api_servers_are_refused_at_start(monkeypatch):
    """A node's PoC state lives in one API server process: two would run two rounds."""
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    state = State()
    with pytest.raises(RuntimeError, match="--api-server-count 2"):
        asyncio.run(PoCEndpointPlugin().init_state(_engine(), state, Namespace(api_server_count=2)))
    assert getattr(state, "poc_manager", None) is None


@pytest.mark.parametrize(
    ("host", "env", "warned"),
    [
        (None, {}, True),
        ("0.0.0.0", {}, True),
        ("10.1.2.3", {}, True),
        ("127.0.0.1", {}, False),
        ("0.0.0.0", {"VLLM_POC_API_KEY": "k"}, False),
        ("0.0.0.0", {"VLLM_POC_ALLOWED_CLIENTS": "127.0.0.1"}, False),
    ],
)
def test_open_pow_routes_are_said_once_at_start(monkeypatch, caplog, host, env, warned):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    state = State()
    asyncio.run(PoCEndpointPlugin().init_state(_engine(), state, Namespace(host=host)))
    said = [r for r in caplog.records if "open to every client" in r.getMessage()]
    assert len(said) == (1 if warned else 0)
    if warned:
        assert "VLLM_POC_API_KEY" in said[0].getMessage()
        assert "VLLM_POC_ALLOWED_CLIENTS" in said[0].getMessage()
