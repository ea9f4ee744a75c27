"""``worker.compiled.EmbedsGraph``: the modules vLLM compiles get a graph of their own for the
PoC forward, swapped in only inside ``active()``; inference's path is left as it was."""

from __future__ import annotations

import torch

from vllm_poc.worker import compiled


class Backbone(torch.nn.Module):
    """Stands for a ``@support_torch_compile`` module: vLLM sets ``do_not_compile``."""

    def __init__(self, do_not_compile: bool) -> None:
        super().__init__()
        self.do_not_compile = do_not_compile
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return self.proj(inputs_embeds)


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = Backbone(do_not_compile=False)
        self.head = Backbone(do_not_compile=True)  # compilation off: not ours to compile


def test_only_inside_active_does_the_poc_graph_run(monkeypatch):
    compiled_calls = []

    def fake_compile(fn, backend=None):
        def graph(*args, **kwargs):
            compiled_calls.append(args)
            return fn(*args, **kwargs)

        return graph

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = Model()
    graph = compiled.EmbedsGraph(model)
    assert graph.modules == [model.model]
    x = torch.randn(2, 4)
    expected = model.model(x)
    with graph.active():
        assert torch.equal(model.model.forward(x), expected)
    assert len(compiled_calls) == 1
    assert torch.equal(model.model.forward(x), expected)  # the class's forward again
    assert "forward" not in vars(model.model)
    assert len(compiled_calls) == 1


def test_restored_when_the_forward_fails(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, backend=None: fn)
    model = Model()
    graph = compiled.EmbedsGraph(model)
    try:
        with graph.active():
            raise RuntimeError("a batch failed")
    except RuntimeError:
        pass
    assert "forward" not in vars(model.model)


def test_a_real_compile_gives_the_eager_numbers():
    model = Model()
    graph = compiled.EmbedsGraph(model)
    x = torch.randn(3, 4)
    with torch.no_grad(), graph.active():
        got = model.model.forward(x)
    torch.testing.assert_close(got, model.model(x).detach(), rtol=1e-5, atol=1e-6)
