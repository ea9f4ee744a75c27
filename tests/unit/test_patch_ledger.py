"""The patch ledger names every change the plugin makes to vLLM, at places that exist."""

from __future__ import annotations

import importlib

import pytest

from vllm_poc.patches import PATCHES, SCOPED_CHANGES, ScopedChange


@pytest.mark.parametrize("change", SCOPED_CHANGES, ids=lambda c: c.name)
def test_each_scoped_change_names_the_code_that_makes_it(change: ScopedChange) -> None:
    module, _, path = change.where.partition(":")
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    assert callable(obj), change.where
    assert change.why and change.removal and change.target


def test_every_entry_has_its_own_name() -> None:
    names = [p.name for p in PATCHES] + [c.name for c in SCOPED_CHANGES]
    assert len(names) == len(set(names))
    assert all(p.why and p.removal for p in PATCHES)
