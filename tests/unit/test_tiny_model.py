"""``make_tiny_model`` beside another test process building the same model (xdist workers, the
end-to-end tier): the copy finished first stays, since a server may be reading it."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_poc.testing import tiny_model
from vllm_poc.testing.tiny_model import make_tiny_model


def test_a_model_another_process_finished_first_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = make_tiny_model(tmp_path / "m", shape="0.6b")
    inode = (theirs / "config.json").stat().st_ino
    complete, looked = tiny_model.is_complete, []

    def not_yet_at_first_look(out_dir: Path, shape: str | None = None) -> bool:
        looked.append(out_dir)
        return len(looked) > 1 and complete(out_dir, shape)

    monkeypatch.setattr(tiny_model, "is_complete", not_yet_at_first_look)
    assert make_tiny_model(tmp_path / "m", shape="0.6b") == theirs
    assert (theirs / "config.json").stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # our copy is gone


def test_an_unfinished_folder_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    model = make_tiny_model(tmp_path / "m", shape="0.6b")
    assert tiny_model.is_complete(model, "0.6b")
