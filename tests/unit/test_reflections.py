"""The artifact protocol's layer reflections in the worker: found by global layer index (pipeline
placeholders keep the indices), applied to both residual-stream tensors, only inside the PoC
forward, and read as data by a compiled graph (a new round's vectors, no recompilation)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm.model_executor.models.utils import PPMissingLayer

from vllm_poc import compat
from vllm_poc.protocol.artifact.math import layer_vectors, reflect
from vllm_poc.work import Work
from vllm_poc.worker.artifacts import ArtifactForward, NoDecoderLayers
from vllm_poc.worker.compiled import EmbedsGraph
from vllm_poc.worker.reflections import Reflections, reflect_output

DIM = 8


class Layer(torch.nn.Module):
    """Returns vLLM's ``(hidden, residual)`` pair, plus an extra entry left alone."""

    def forward(self, h: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return h + 1, r - 1, torch.ones(1)


class Backbone(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([Layer(), PPMissingLayer(), Layer()])


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = Backbone()


def test_decoder_layers_keep_global_indices_under_pipeline_parallelism():
    model = Model()
    layers = compat.decoder_layers(model, num_layers=3)
    assert [(i, m) for i, m in layers] == [(0, model.model.layers[0]), (2, model.model.layers[2])]
    assert compat.decoder_layers(model, num_layers=4) == []


def test_both_tensors_are_reflected_inside_the_forward_only():
    model = Model()
    layers = compat.decoder_layers(model, 3)
    reflections = Reflections(layers, DIM, "cpu")
    reflections.load("block")
    vectors = layer_vectors("block", [i for i, _ in layers], DIM)
    assert torch.equal(reflections.vectors, vectors)
    h = torch.randn(4, DIM, dtype=torch.bfloat16)
    r = torch.randn(4, DIM, dtype=torch.bfloat16)
    layer = model.model.layers[2]
    plain = layer(h, r)
    with reflections.installed():
        hooked = layer(h, r)
    assert torch.equal(hooked[0], reflect(plain[0], vectors[1]))
    assert torch.equal(hooked[1], reflect(plain[1], vectors[1]))
    assert hooked[2] is not plain[2] and torch.equal(hooked[2], plain[2])
    after = layer(h, r)
    assert all(torch.equal(a, b) for a, b in zip(after, plain, strict=True))
    assert not torch.equal(hooked[0], plain[0])
    assert "forward" not in vars(layer)


def test_a_new_round_overwrites_the_vectors_in_place():
    """A graph compiled (or captured) with the reflections reads them where they are."""
    layers = compat.decoder_layers(Model(), 3)
    reflections = Reflections(layers, DIM, "cpu")
    where = reflections.vectors.data_ptr()
    reflections.load("block one")
    first = reflections.vectors.clone()
    reflections.load("block two")
    assert reflections.vectors.data_ptr() == where
    assert not torch.equal(reflections.vectors, first)
    assert torch.equal(reflections.vectors, layer_vectors("block two", [0, 2], DIM))


class Dense(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(DIM, DIM)

    def forward(self, h: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lin(h), r + h


class Stack(torch.nn.Module):
    """Stands for a ``@support_torch_compile`` backbone over its decoder layers."""

    def __init__(self) -> None:
        super().__init__()
        self.do_not_compile = False
        self.layers = torch.nn.ModuleList([Dense() for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, r = x, x
        for layer in self.layers:
            h, r = layer(h, r)
        return h + r


def test_the_compiled_graph_reflects_every_round_without_recompiling():
    torch.manual_seed(0)
    stack = Stack()
    reflections = Reflections(compat.decoder_layers(stack, 3), DIM, "cpu")
    graph = EmbedsGraph(stack, "artifact")
    plain_graph = EmbedsGraph(stack)
    x = torch.randn(5, DIM)
    with torch.no_grad():
        with plain_graph.active():
            bare = stack.forward(x)
        for block in ("one", "two", "three"):
            reflections.load(block)
            with reflections.installed():
                eager = stack.forward(x)
                with graph.active():
                    compiled = stack.forward(x)
            torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
            assert not torch.allclose(compiled, bare, atol=1e-3)
        with plain_graph.active():
            torch.testing.assert_close(stack.forward(x), bare)  # never the reflected graph
    assert (graph.compilations, plain_graph.compilations) == (1, 1)


def test_bare_tensors_and_missing_residuals():
    w = layer_vectors("block", [0], DIM)[0]
    x = torch.randn(3, DIM)
    assert torch.equal(reflect_output(w, x), reflect(x, w))
    out = reflect_output(w, (x, None))
    assert torch.equal(out[0], reflect(x, w)) and out[1] is None


def test_a_multi_stream_residual_is_reflected_stream_by_stream():
    """DeepSeek-V4's mHC residual ``[tokens, streams, hidden]``: along the last dimension, each
    stream as a row of its own; a third entry of the output is left alone."""
    w = layer_vectors("block", [0], DIM)[0].to(torch.bfloat16)
    hidden = torch.randn(3, DIM, dtype=torch.bfloat16)
    streams = torch.randn(3, 4, DIM, dtype=torch.bfloat16)
    extra = torch.randn(2)
    out = reflect_output(w, (hidden, streams, extra))
    assert torch.equal(out[0], reflect(hidden, w))
    rows = torch.stack([reflect(streams[:, j], w) for j in range(4)], dim=1)
    assert torch.equal(out[1], rows) and out[2] is extra


def test_the_reflection_is_an_involution_up_to_rounding():
    w = layer_vectors("block", [3], 64)[0]
    x = torch.randn(5, 64, dtype=torch.float32)
    assert torch.allclose(reflect(reflect(x, w), w), x, atol=1e-5)
    assert torch.allclose(reflect(x, w).norm(dim=1), x.norm(dim=1), rtol=1e-5)


def test_a_model_without_a_decoder_layer_list_is_refused_never_computed_bare():
    config = SimpleNamespace(hf_text_config=SimpleNamespace(num_hidden_layers=5))
    forward = SimpleNamespace(
        vllm_config=SimpleNamespace(model_config=config),
        runner=SimpleNamespace(get_model=Model),  # 3 layers where the config says 5
    )
    artifacts = ArtifactForward(forward)  # type: ignore[arg-type]
    with pytest.raises(NoDecoderLayers, match="reflection after every decoder layer"):
        artifacts.artifacts(Work("artifacts", "block", "key", [0], 8))
