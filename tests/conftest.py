"""The test tiers, as pytest markers from where a test lives (``-m`` selects them):

- ``unit``: tests/unit, the plugin's code with fakes; no vLLM process;
- ``contract``: tests/compat, vLLM's seams on every release's sources and the installed one;
- ``e2e``: tests/e2e, real vLLM servers over HTTP (minutes each).

``make test-fast`` runs ``-m "not e2e"``; ``make test`` runs all three.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = {"unit": "unit", "compat": "contract", "e2e": "e2e"}
"""The folder under tests/ -> its marker."""
HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: the plugin's code with fakes, no vLLM process")
    config.addinivalue_line("markers", "contract: vLLM's seams, no server (tests/compat)")
    config.addinivalue_line("markers", "e2e: against real vLLM server processes (slow)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(HERE).parts
        marker = TIERS.get(parts[0]) if len(parts) > 1 else None
        if marker:
            item.add_marker(getattr(pytest.mark, marker))
