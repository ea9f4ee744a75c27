"""``register()``: the toggle, the patch ledger, idempotence, and failing loudly.

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
from vllm_poc.compat import frontend
from vllm_poc.worker.extension import PoCWorkerExtension, extension_qualname

OURS = "vllm_poc.worker.extension.PoCWorkerExtension"
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
        for attr in compat.APP_SEAMS:
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
    logger = logging.getLogger("vllm.vllm_poc")
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
    """An engine-core or worker process: no API server module loaded."""
    monkeypatch.setattr(compat, "is_api_server_process", lambda: False)


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


def test_a_missing_engine_seam_fails_loudly(monkeypatch):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")

    class NoSeam:
        pass

    import vllm.engine.arg_utils

    monkeypatch.setattr(vllm.engine.arg_utils, "EngineArgs", NoSeam)
    with pytest.raises(compat.SeamNotFound, match=r"EngineArgs\.create_engine_config") as e:
        plugin.register()
    assert compat.vllm_version() in str(e.value)


# ---------------------------------------------------------------- the API server side


def test_without_an_api_server_only_the_engine_config_is_patched(
    monkeypatch, fake_engine_args, no_api_server, records
):
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    plugin.register()
    replaced = [r.getMessage() for r in records if "replaced" in r.getMessage()]
    assert len(replaced) == 1 and "create_engine_config" in replaced[0]


def test_a_hidden_app_seam_fails_loudly_in_the_api_server(monkeypatch, fake_engine_args):
    """An API server whose build_app/init_app_state the plugin cannot find must not start."""
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    monkeypatch.setattr(compat, "is_api_server_process", lambda: True)
    monkeypatch.setattr(frontend, "API_SERVER_MODULES", ("nowhere.entry", "nowhere.api_server"))
    with pytest.raises(compat.SeamNotFound, match="build_app and init_app_state") as e:
        plugin.register()
    assert f"vLLM {compat.vllm_version()}" in str(e.value)
    assert "nowhere.entry" in str(e.value)


def test_the_endpoint_plugin_replaces_the_app_patch(monkeypatch, fake_engine_args, records):
    """With VLLM_PLUGINS naming vllm_poc, vLLM's endpoint-plugin contract adds the routes."""
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    monkeypatch.setenv("VLLM_PLUGINS", "vllm_poc")
    monkeypatch.setattr(compat, "is_api_server_process", lambda: True)
    monkeypatch.setattr(compat, "api_server_modules", lambda: pytest.fail("app patched"))
    plugin.register()
    assert compat.endpoint_plugins_load("vllm_poc")
    monkeypatch.setenv("VLLM_PLUGINS", "other,vllm_poc_x")
    assert not compat.endpoint_plugins_load("vllm_poc")


@pytest.fixture
def fake_api_server(monkeypatch):
    """A ``python -m vllm.entrypoints.openai.api_server`` process (how <= 0.28 runs)."""
    module = types.ModuleType("__main__")
    module.__spec__ = SimpleNamespace(name="vllm.entrypoints.openai.api_server")
    module.apps = []

    def build_app(*args: Any, **kwargs: Any) -> Any:
        app = SimpleNamespace(args=args, kwargs=kwargs)
        module.apps.append(app)
        return app

    async def init_app_state(engine_client: Any, *args: Any, **kwargs: Any) -> str:
        return "initialised"

    module.build_app = build_app
    module.init_app_state = init_app_state
    monkeypatch.setitem(sys.modules, "__main__", module)
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    monkeypatch.setattr(
        frontend, "API_SERVER_MODULES", ("nowhere.entry", "vllm.entrypoints.openai.api_server")
    )
    # In this release openai.api_server only re-exports: keep the test to the fake __main__.
    monkeypatch.setattr(frontend, "_import", lambda name: None)
    assert compat.is_api_server_process()
    assert compat.api_server_modules() == [module]
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
    from vllm_poc.server import endpoint

    attached = []
    monkeypatch.setattr(endpoint, "attach_http", attached.append)
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    plugin.register()
    app = fake_api_server.build_app("args", flag=1)
    assert fake_api_server.apps == [app]
    assert app.args == ("args",) and app.kwargs == {"flag": 1}
    assert attached == [app]


def test_patched_init_app_state_creates_the_manager(monkeypatch, fake_engine_args, fake_api_server):
    from starlette.datastructures import State

    from vllm_poc.server import endpoint

    made = []

    async def init_manager(engine: Any, state: Any) -> None:
        made.append((engine, state))

    monkeypatch.setattr(endpoint, "init_manager", init_manager)
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    plugin.register()
    state = State()
    result = asyncio.run(fake_api_server.init_app_state("engine", "vllm_config", state))
    assert result == "initialised"
    assert made == [("engine", state)]


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
    """vLLM >= 0.29 runs ``python -m vllm.entrypoints.openai.api_server`` as a ``__main__`` that
    re-exports ``build_app``; the server calls them from ``launchers.api_server.entry``."""
    import importlib

    entry = importlib.import_module("vllm.entrypoints.launchers.api_server.entry")
    module = types.ModuleType("__main__")
    module.__spec__ = SimpleNamespace(name="vllm.entrypoints.openai.api_server")
    module.build_app = entry.build_app
    module.init_app_state = entry.init_app_state
    monkeypatch.setitem(sys.modules, "__main__", module)
    assert compat.api_server_modules() == [entry]
