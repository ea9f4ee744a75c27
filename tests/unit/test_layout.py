"""The layout keeps its promises: the protocol and the client load without vLLM (the client
without torch either), and no module grows into two jobs."""

from __future__ import annotations

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
    modules = "distance, randomness, round, batches, validation, wire"
    loaded = _loaded_after(f"from vllm_poc.protocol import {modules}")
    assert not {m for m in loaded if m == "vllm" or m.startswith("vllm.")}


def test_the_client_needs_neither_vllm_nor_torch() -> None:
    loaded = _loaded_after("import vllm_poc.client")
    assert "torch" not in loaded
    assert not {m for m in loaded if m == "vllm" or m.startswith("vllm.")}


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_is_over_about_300_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 310
