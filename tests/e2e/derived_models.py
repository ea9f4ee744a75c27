"""Test models made from the tiny model: its tokenizer and folder, another config and weights."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from vllm_poc.testing.tiny_model import is_complete, make_tiny_model


def derived_model(
    out_dir: Path, change: Callable[[Path, Path], None], architecture: str = "qwen3"
) -> Path:
    """The tiny model of ``architecture`` changed by ``change(folder, scratch)`` (``scratch``: a
    folder for its own files), written to ``out_dir`` (reused when complete); returns the path.
    Built beside ``out_dir`` and renamed, so a crash never leaves a half-made model."""
    out_dir = out_dir.resolve()
    if is_complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        base = make_tiny_model(tmp / "base", architecture=architecture)
        change(base, tmp)
        base.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
