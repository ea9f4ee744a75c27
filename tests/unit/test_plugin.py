"""``register()``: the toggle, the engine-config patch, idempotence, and never raising.

Every test runs under ``restore_patches``, which puts back every attribute ``register`` may
replace, so no patch leaks from one test into another.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from types import SimpleNamespace
from typing import Any

import pytest
from vllm.engine.arg_utils import EngineArgs

from tests.unit import operator_extension
from vllm_poc import compat, plugin
from vllm_poc.worker import PoCWorkerExtension, extension_qualname

OURS = "vllm_poc.worker.PoCWorkerExtension"
MARKER = "__vllm_poc_original__"


def _unpatched(function: Any) -> Any:
    while hasattr(function, MARKER):
        function = getattr(function, MARKER)
    return function


@pytest.fixture(autouse=True)
def restore_patches(monkeypatch):
    """Start from unpatched attributes and restore them after the test, whatever it did."""
    original = _unpatched(EngineArgs.__dict__["create_engine_config"])
    monkeypatch.setattr(EngineArgs, "create_engine_config", original)
    for name in compat.API_SERVER_MODULES:
        module = sys.modules.get(name)
        for attr in ("build_app", "init_app_state"):
            if module is not None and hasattr(module, attr):
                monkeypatch.setattr(module, attr, _unpatched(getattr(module, attr)))
    # vLLM calls register() itself from the first EngineArgs(); keep it to the test's calls.
    import vllm.plugins

    monkeypatch.setattr(vllm.plugins, "plugins_loaded", True)
    monkeypatch.delenv("VLLM_POC_ENABLED", raising=False)


@pytest.fixture
def records():
    """Log records of the plugin's logger (vLLM's logger may not propagate to the root)."""
    captured: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = captured.append
    logger = logging.getLogger(plugin.logger.name)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield captured
    logger.removeHandler(handler)
    logger.setLevel(old_level)


class FakeEngineArgs:
    """Stands for ``EngineArgs``: its config is a namespace, so creating one costs nothing."""

    def __init__(self, worker_extension_cls: str = "") -> None:
        self.worker_extension_cls = worker_extension_cls
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def create_engine_config(self, *args: Any, **kwargs: Any) -> Any:
        """The original docstring."""
        self.calls.append((args, kwargs))
        return SimpleNamespace(
            parallel_config=SimpleNamespace(worker_extension_cls=self.worker_extension_cls),
            other="untouched",
        )


@pytest.fixture
def fake_engine_args(monkeypatch):
    cls = type("FakeEngineArgs", (FakeEngineArgs,), {})  # a fresh class per test
    monkeypatch.setattr(compat, "engine_args_class", lambda: cls)
    return cls


@pytest.fixture
def no_api_server(monkeypatch):
    for name in compat.API_SERVER_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert compat.api_server_module() is None


# ---------------------------------------------------------------- the toggle


@pytest.mark.parametrize("value", [None, "", "0", "false", "no", "off"])
def test_disabled_patches_nothing(monkeypatch, fake_engine_args, value):
    if value is not None:
        monkeypatch.setenv("VLLM_POC_ENABLED", value)
    original = fake_engine_args.create_engine_config
    plugin.register()
    assert fake_engine_args.create_engine_config is original
    assert not hasattr(fake_engine_args.create_engine_config, MARKER)
    config = fake_engine_args().create_engine_config()
    assert config.parallel_config.worker_extension_cls == ""


def test_disabled_does_not_touch_the_real_engine_args():
    original = EngineArgs.create_engine_config
    plugin.register()
    assert EngineArgs.create_engine_config is original


# ---------------------------------------------------------------- the engine-config patch


@pytest.mark.parametrize("value", ["1", "true", "yes", "on"])
def test_enabled_names_our_extension(monkeypatch, fake_engine_args, no_api_server, value):
    monkeypatch.setenv("VLLM_POC_ENABLED", value)
    original = fake_engine_args.create_engine_config
    plugin.register()
    patched = fake_engine_args.create_engine_config
    assert patched is not original
    assert getattr(patched, MARKER) is original
    assert patched.__doc__ == original.__doc__  # functools.update_wrapper
    config = fake_engine_args().create_engine_config()
    assert config.parallel_config.worker_extension_cls == OURS
    assert config.other == "untouched"


def test_enabled_passes_arguments_through(monkeypatch, fake_engine_args, no_api_server):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    plugin.register()
    args = fake_engine_args()
    args.create_engine_config("ctx", headless=True)
    assert args.calls == [(("ctx",), {"headless": True})]


def test_enabled_composes_with_the_operators_extension(
    monkeypatch, fake_engine_args, no_api_server
):
    from vllm.utils.import_utils import resolve_obj_by_qualname

    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    plugin.register()
    config = fake_engine_args(operator_extension.QUALNAME).create_engine_config()
    qualname = config.parallel_config.worker_extension_cls
    assert qualname == extension_qualname(operator_extension.QUALNAME)
    combined = resolve_obj_by_qualname(qualname)
    assert issubclass(combined, PoCWorkerExtension)
    assert issubclass(combined, operator_extension.OperatorExtension)


def test_register_twice_patches_once(monkeypatch, fake_engine_args, no_api_server, records):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    original = fake_engine_args.create_engine_config
    plugin.register()
    first = fake_engine_args.create_engine_config
    plugin.register()
    plugin.register()
    assert fake_engine_args.create_engine_config is first
    assert getattr(first, MARKER) is original
    replaced = [r for r in records if "replaced" in r.getMessage()]
    assert len(replaced) == 1
    assert "create_engine_config" in replaced[0].getMessage()


def test_register_never_raises(monkeypatch, records):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")

    def broken() -> type:
        raise RuntimeError("boom")

    monkeypatch.setattr(compat, "engine_args_class", broken)
    assert plugin.register() is None
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "registration failed" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)
    assert str(errors[0].exc_info[1]) == "boom"


def test_register_never_raises_when_the_toggle_is_broken(monkeypatch, records):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    from vllm_poc import envs

    def broken() -> bool:
        raise ValueError("bad setting")

    monkeypatch.setattr(envs, "enabled", broken)
    plugin.register()
    assert any(r.levelno >= logging.ERROR for r in records)


# ---------------------------------------------------------------- the API server patches


def test_without_an_api_server_module_only_the_engine_config_is_patched(
    monkeypatch, fake_engine_args, no_api_server
):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    patched: list[tuple[Any, str]] = []
    real_patch = plugin._patch

    def spy(owner: Any, name: str, make: Any) -> None:
        patched.append((owner, name))
        real_patch(owner, name, make)

    monkeypatch.setattr(plugin, "_patch", spy)
    plugin.register()
    assert patched == [(fake_engine_args, "create_engine_config")]
    for name in compat.API_SERVER_MODULES:
        assert name not in sys.modules  # register() did not import an API server module


@pytest.fixture
def fake_api_server(monkeypatch):
    """A ``python -m vllm.entrypoints.openai.api_server`` process (how <= 0.26 runs)."""
    module = types.ModuleType("__main__")
    module.__spec__ = SimpleNamespace(name="vllm.entrypoints.openai.api_server")
    module.apps = []

    def build_app(*args: Any, **kwargs: Any) -> Any:
        app = SimpleNamespace(args=args, kwargs=kwargs)
        module.apps.append(app)
        return app

    async def init_app_state(engine_client: Any, *args: Any, **kwargs: Any) -> str:
        return "initialised"

    async def build_and_serve(*args: Any) -> None:
        build_app(*args)

    build_and_serve.__module__ = "__main__"
    module.build_app = build_app
    module.init_app_state = init_app_state
    module.build_and_serve = build_and_serve
    monkeypatch.setitem(sys.modules, "__main__", module)
    assert compat.api_server_module() is module
    return module


def test_api_server_seams_are_patched_once(monkeypatch, fake_engine_args, fake_api_server):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    build_app, init_app_state = fake_api_server.build_app, fake_api_server.init_app_state
    plugin.register()
    plugin.register()
    assert getattr(fake_api_server.build_app, MARKER) is build_app
    assert getattr(fake_api_server.init_app_state, MARKER) is init_app_state
    assert hasattr(fake_engine_args.create_engine_config, MARKER)


def test_patched_build_app_attaches_the_routes(monkeypatch, fake_engine_args, fake_api_server):
    from vllm_poc import routes

    attached = []
    monkeypatch.setattr(routes, "attach", lambda app: attached.append(app) or ["/v1/completions"])
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    plugin.register()
    app = fake_api_server.build_app("args", flag=1)
    assert fake_api_server.apps == [app]
    assert app.args == ("args",) and app.kwargs == {"flag": 1}
    assert attached == [app]


def test_patched_init_app_state_creates_the_manager(monkeypatch, fake_engine_args, fake_api_server):
    from starlette.datastructures import State

    from vllm_poc import manager

    made = []

    class FakeManager:
        def __init__(self, engine: Any, max_model_len: int, model_name: str) -> None:
            made.append((engine, max_model_len, model_name))

    monkeypatch.setattr(manager, "PoCManager", FakeManager)
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    plugin.register()
    engine = SimpleNamespace(
        model_config=SimpleNamespace(max_model_len=4096, served_model_name="tiny", model="/m")
    )
    state = State()
    result = asyncio.run(fake_api_server.init_app_state(engine, "vllm_config", state))
    assert result == "initialised"
    assert made == [(engine, 4096, "tiny")]
    assert isinstance(state.poc_manager, FakeManager)


# ---------------------------------------------------------------- through vLLM's EngineArgs


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from vllm_poc.testing.tiny_model import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3"))


def test_real_engine_args_disabled(tiny_model):
    plugin.register()
    config = EngineArgs(model=tiny_model).create_engine_config()
    assert config.parallel_config.worker_extension_cls == ""


def test_real_engine_args_enabled(monkeypatch, tiny_model, no_api_server):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    plugin.register()
    assert hasattr(EngineArgs.create_engine_config, MARKER)
    config = EngineArgs(model=tiny_model).create_engine_config()
    assert config.parallel_config.worker_extension_cls == OURS
    operator = EngineArgs(model=tiny_model, worker_extension_cls=operator_extension.QUALNAME)
    config = operator.create_engine_config()
    assert config.parallel_config.worker_extension_cls == extension_qualname(
        operator_extension.QUALNAME
    )


def test_settings_are_declared_to_vllm_when_set(monkeypatch, fake_engine_args, no_api_server):
    import vllm.envs

    from vllm_poc import envs as poc_envs

    for name in poc_envs.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    registry = {
        k: v for k, v in vllm.envs.environment_variables.items() if not k.startswith("VLLM_POC_")
    }
    monkeypatch.setattr(vllm.envs, "environment_variables", registry)
    plugin.register()
    assert "VLLM_POC_ENABLED" not in registry  # nothing set: nothing declared
    monkeypatch.setenv("VLLM_POC_BATCH_SIZE", "8")
    plugin.register()
    from vllm_poc import envs as poc_envs

    assert set(poc_envs.SETTINGS) <= set(registry)
    assert registry["VLLM_POC_BATCH_SIZE"]() == 8


def test_a_main_that_only_re_exports_the_seams_is_not_patched(monkeypatch):
    """vLLM 0.32 runs ``python -m vllm.entrypoints.openai.api_server`` as a ``__main__`` that
    re-exports ``build_app``; the server calls them from ``launchers.api_server.entry``."""
    import importlib

    entry = importlib.import_module("vllm.entrypoints.launchers.api_server.entry")
    module = types.ModuleType("__main__")
    module.__spec__ = SimpleNamespace(name="vllm.entrypoints.openai.api_server")
    module.build_app = entry.build_app
    module.init_app_state = entry.init_app_state
    module.build_and_serve = entry.build_and_serve
    monkeypatch.setitem(sys.modules, "__main__", module)
    assert compat.api_server_module() is entry
