"""The layout keeps its promises: the protocol and the client load without vLLM (the client
without torch either), and no module grows into two jobs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "vllm_poc"


def _loaded_after(imports: str) -> set[str]:
    code = f"import sys; {imports}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_protocol_imports_nothing_from_vllm() -> None:
    loaded = _loaded_after(
        "from vllm_poc.protocol import inputs, randomness, state, validation; "
        "from vllm_poc.protocol.distance import batches, math, round, wire; "
        "from vllm_poc.protocol.artifact import math, wire"
    )
    assert not {m for m in loaded if m == "vllm" or m.startswith("vllm.")}


def test_the_client_needs_neither_vllm_nor_torch() -> None:
    loaded = _loaded_after("import vllm_poc.client")
    assert "torch" not in loaded
    assert not {m for m in loaded if m == "vllm" or m.startswith("vllm.")}


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_is_over_300_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 300


def _imports(path: Path, module: str) -> set[str]:
    """Every ``vllm_poc`` module ``path`` imports, anywhere in it (type-only and lazy imports
    too): the imported module itself, or the submodule a ``from package import name`` names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vllm_poc")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("vllm_poc"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return found - {module}


MODULES = {
    ".".join(("vllm_poc", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
    for p in SRC.rglob("*.py")
}


def test_no_import_cycle_inside_the_package() -> None:
    """Modules import each other in one direction only: a cycle (even through an import made
    for type checking) means two modules that are one job, or a job in the wrong place."""
    graph = {
        ".".join(("vllm_poc", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): p
        for p in SRC.rglob("*.py")
    }
    edges = {m: _imports(p, m) & MODULES for m, p in graph.items()}
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError(" -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        path.append(module)
        for target in sorted(edges[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)
